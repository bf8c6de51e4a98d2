"""Analysis throughput benchmark: the sample corpus through a running server (job runner, pool) against a plain loop.

Usage: .venv/bin/python bench/analysis.py [--rounds 5] [--workers N] [--corpus DIR]

The corpus is the folder of real-world CAD files with their SHA256SUMS: by default $ENGINEL_CAD_CORPUS, else
../shared/cad-samples beside the project (the same place the test suite's corpus tier looks).

Server side: starts server.py (embedded database, `--workers` analysis processes, default one per core) in a
temporary data directory, uploads every sample file `--rounds` times over HTTP (one multipart request per file)
and waits until every job has finished; the clock runs from the first upload to the last job's end, so HTTP,
storage, job claiming, progress writes and result persistence are all inside it. Plain side: one process calling
processing.cad.analyze_file on the same files the same number of times. Not a test: it prints both figures in
files/minute and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tornado.httpclient import AsyncHTTPClient

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models.database import free_port  # noqa: E402

CORPUS = Path(os.environ.get("ENGINEL_CAD_CORPUS") or REPO.parent / "shared" / "cad-samples")
PASSWORD = "bench-password-1"


def corpus(samples: Path) -> list[Path]:
    names = [line.split()[1].lstrip("*") for line in (samples / "SHA256SUMS").read_text().splitlines() if line]
    return [samples / name for name in sorted(names) if not name.endswith((".json", ".md"))]


def multipart(fields: dict[str, str], filename: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode()
        + data
        + b"\r\n"
    )
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


async def through_server(files: list[Path], rounds: int, workers: int) -> dict[str, Any]:
    """The server side: start server.py, upload every file `rounds` times, time until the last job ends."""
    port = free_port()
    with tempfile.TemporaryDirectory() as data_dir:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINEL_")}
        env.update(
            ENGINEL_BOOTSTRAP_ADMIN=f"bench:{PASSWORD}",
            ENGINEL_WORKERS=str(workers),
            ENGINEL_LOG_LEVEL="WARNING",
            ENGINEL_RATE_LIMIT_PER_MINUTE="1000000",
            ENGINEL_RATE_LIMIT_PER_HOUR="1000000",
            ENGINEL_UPLOADS_PER_HOUR="1000000",
        )
        proc = subprocess.Popen(
            [sys.executable, "server.py", "--port", str(port), "--data-dir", data_dir], cwd=REPO, env=env
        )
        client = AsyncHTTPClient()
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(600):
                try:
                    # Detailed health says "ok" for workers only once the pool has started them all.
                    resp = await client.fetch(base + "/api/health/detailed/", raise_error=False)
                    if resp.code == 200:
                        break
                except OSError:
                    pass
                await asyncio.sleep(0.1)

            async def call(
                method: str, path: str, body: Any = None, token: str | None = None, raw: tuple[bytes, str] | None = None
            ) -> Any:
                headers = {"Content-Type": raw[1] if raw else "application/json"}
                if token:
                    headers["Authorization"] = f"Token {token}"
                data = raw[0] if raw else (json.dumps(body) if body is not None else None)
                resp = await client.fetch(base + path, method=method, headers=headers, body=data, request_timeout=300)
                return json.loads(resp.body) if resp.body else {}

            token = (await call("POST", "/api/auth/login/", {"username": "bench", "password": PASSWORD}))[
                "access_token"
            ]
            org = await call("POST", "/api/organizations/", {"name": "Bench", "slug": "bench"}, token)
            series = await call(
                "POST", "/api/series/", {"organization": org["id"], "part_number": "B-1", "name": "bench"}, token
            )
            contents = [(path.name, path.read_bytes()) for path in files]
            total = len(contents) * rounds
            start = datetime.now(UTC)
            for _ in range(rounds):
                for name, data in contents:
                    await call(
                        "POST", "/api/designs/", token=token, raw=multipart({"series": series["id"]}, name, data)
                    )
            while True:
                # Polled slowly: the clock stops at the last job's completed_at, not at this loop's wake-up,
                # and frequent polls would take CPU from the workers being measured.
                metrics = await call("GET", "/api/analysis-jobs/metrics/", token=token)
                if metrics["success_count"] + metrics["failure_count"] >= total:
                    break
                await asyncio.sleep(0.5)
            last = await call(
                "GET", "/api/analysis-jobs/?ordering=-completed_at&page_size=1&fields=completed_at", token=token
            )
            finished = datetime.fromisoformat(last["results"][0]["completed_at"].replace("Z", "+00:00"))
            elapsed = (finished - start).total_seconds()
            return {
                "files": total,
                "seconds": elapsed,
                "failures": metrics["failure_count"],
                "avg_job_seconds": metrics["avg_duration_seconds"],
            }
        finally:
            client.close()
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)


def plain_loop(files: list[Path], rounds: int) -> dict[str, Any]:
    from processing.cad import analyze_file  # imported before the clock starts, as the pool preloads it

    start = time.perf_counter()
    for _ in range(rounds):
        for path in files:
            analyze_file(str(path))
    return {"files": len(files) * rounds, "seconds": time.perf_counter() - start}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="times the corpus is processed on each side")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="server analysis workers")
    parser.add_argument(
        "--corpus",
        "--samples",
        dest="corpus",
        type=Path,
        default=CORPUS,
        help="folder of CAD files listed in its SHA256SUMS (default: $ENGINEL_CAD_CORPUS or ../shared/cad-samples)",
    )
    args = parser.parse_args()
    if not (args.corpus / "SHA256SUMS").is_file():
        parser.error(f"no CAD corpus at {args.corpus}: put the real-world samples there, or pass --corpus DIR")
    files = corpus(args.corpus)
    print(
        f"{datetime.now(UTC):%Y-%m-%d %H:%M}Z, {platform.machine()}, {os.cpu_count()} cores, "
        f"{platform.processor() or platform.platform()}, Python {platform.python_version()}"
    )
    print(
        f"corpus: {len(files)} files, {sum(p.stat().st_size for p in files) / 2**20:.1f} MiB, "
        f"{args.rounds} rounds; server with {args.workers} workers"
    )
    plain = plain_loop(files, args.rounds)
    server = await through_server(files, args.rounds, args.workers)
    plain_rate = plain["files"] / plain["seconds"] * 60
    server_rate = server["files"] / server["seconds"] * 60
    print(f"plain single-process loop: {plain['files']} files in {plain['seconds']:.2f} s = {plain_rate:.0f} files/min")
    print(
        f"server (HTTP upload -> job -> pool -> stored result): {server['files']} files in "
        f"{server['seconds']:.2f} s = {server_rate:.0f} files/min "
        f"({server['failures']} failed; mean job {server['avg_job_seconds']} s)"
    )
    print(f"ratio server/plain: {server_rate / plain_rate:.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
