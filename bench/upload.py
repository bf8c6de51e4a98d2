"""Benchmark: stream a large CAD upload and download through a running server; report throughput and peak RSS.

Usage: .venv/bin/python bench/upload.py [--sizes-mib 64,1024] [--backend filesystem]

Starts server.py (embedded database, no analysis workers) once per size so each size's peak memory
(VmHWM of the server process) is its own; the claim under test is that the server's memory does not
grow with the file size. Compared in the same run: `cat file > /dev/null`-style local disk throughput
of the same byte count, as the ceiling the server is working against.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tornado.httpclient import AsyncHTTPClient, HTTPRequest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models.database import free_port  # noqa: E402

CHUNK = 1 << 20
HEADER = b"ISO-10303-21;\nHEADER;\nFILE_DESCRIPTION(('bench'),'2;1');\nENDSEC;\nDATA;\n"
FOOTER = b"ENDSEC;\nEND-ISO-10303-21;\n"


def rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def make_chunk(offset: int, size: int) -> bytes:
    line = b"/* filler line of a synthetic STEP file for the upload benchmark */\n"
    body = (line * (size // len(line) + 1))[:size]
    return body


async def produce(write, total: int, digest: hashlib._Hash) -> None:  # type: ignore[name-defined]
    sent = 0
    await write(HEADER)
    digest.update(HEADER)
    sent += len(HEADER)
    middle = total - len(HEADER) - len(FOOTER)
    block = make_chunk(0, CHUNK)
    while middle > 0:
        piece = block if middle >= CHUNK else block[:middle]
        digest.update(piece)
        await write(piece)
        middle -= len(piece)
    digest.update(FOOTER)
    await write(FOOTER)


async def run_size(size: int, backend: str) -> dict[str, float]:
    """Upload and download one file of `size` bytes through the server and measure both against the ceiling."""
    port = free_port()
    with tempfile.TemporaryDirectory() as data_dir:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINEL_")}
        env.update(
            ENGINEL_BOOTSTRAP_ADMIN="bench:bench-password-1",
            ENGINEL_WORKERS="0",
            ENGINEL_LOG_LEVEL="WARNING",
            ENGINEL_STORAGE_BACKEND=backend,
            ENGINEL_RATE_LIMIT_PER_MINUTE="100000",
            ENGINEL_RATE_LIMIT_PER_HOUR="100000",
        )
        proc = subprocess.Popen(
            [sys.executable, "server.py", "--port", str(port), "--data-dir", data_dir], cwd=REPO, env=env
        )
        client = AsyncHTTPClient(max_body_size=4 * 1024**3, max_buffer_size=64 * 1024**2)
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(300):
                try:
                    await client.fetch(base + "/api/health/")
                    break
                except Exception:
                    await asyncio.sleep(0.1)

            async def call(method: str, path: str, body: dict | None = None, token: str | None = None) -> dict:
                headers = {"Content-Type": "application/json"}
                if token:
                    headers["Authorization"] = f"Token {token}"
                resp = await client.fetch(
                    base + path, method=method, headers=headers, body=json.dumps(body) if body is not None else None
                )
                return json.loads(resp.body) if resp.body else {}

            token = (await call("POST", "/api/auth/login/", {"username": "bench", "password": "bench-password-1"}))[
                "access_token"
            ]
            org = await call("POST", "/api/organizations/", {"name": "Bench", "slug": "bench"}, token)
            series = await call(
                "POST", "/api/series/", {"organization": org["id"], "part_number": "B-1", "name": "bench"}, token
            )
            url = await call("POST", "/api/designs/upload-url/", {"filename": "big.step", "file_size": size}, token)
            baseline_rss = rss_kib(proc.pid, "VmRSS")
            digest = hashlib.sha256()
            start = time.perf_counter()
            await client.fetch(
                HTTPRequest(
                    url["upload_url"],
                    method="PUT",
                    headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"},
                    body_producer=lambda write: produce(write, size, digest),
                    request_timeout=3600,
                )
            )
            upload_s = time.perf_counter() - start
            design = await call(
                "POST",
                "/api/designs/",
                {"series": series["id"], "filename": "big.step", "upload_id": url["upload_id"]},
                token,
            )
            await call(
                "POST",
                f"/api/designs/{design['id']}/finalize_upload/",
                {"file_hash": "sha256:" + digest.hexdigest()},
                token,
            )
            received = 0
            check = hashlib.sha256()

            def on_chunk(chunk: bytes) -> None:
                nonlocal received
                received += len(chunk)
                check.update(chunk)

            start = time.perf_counter()
            await client.fetch(
                HTTPRequest(
                    f"{base}/api/designs/{design['id']}/download/",
                    headers={"Authorization": f"Token {token}"},
                    streaming_callback=on_chunk,
                    request_timeout=3600,
                )
            )
            download_s = time.perf_counter() - start
            assert received == size and check.hexdigest() == digest.hexdigest(), "download differs from upload"
            return {
                "size_mib": size / 2**20,
                "upload_mib_s": size / 2**20 / upload_s,
                "download_mib_s": size / 2**20 / download_s,
                "baseline_rss_mib": baseline_rss / 1024,
                "peak_rss_mib": rss_kib(proc.pid, "VmHWM") / 1024,
            }
        finally:
            client.close()
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)


def disk_baseline(size: int) -> float:
    """Write and read back `size` bytes with hashing, no server: the ceiling on this machine."""
    with tempfile.NamedTemporaryFile(dir=REPO) as fh:
        block = make_chunk(0, CHUNK)
        start = time.perf_counter()
        digest = hashlib.sha256()
        written = 0
        while written < size:
            digest.update(block)
            fh.write(block)
            written += len(block)
        fh.flush()
        os.fsync(fh.fileno())
        return size / 2**20 / (time.perf_counter() - start)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mib", default="64,1024")
    parser.add_argument("--backend", default="filesystem", choices=["filesystem", "gridfs"])
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"backend {args.backend}"
    )
    for mib in (int(s) for s in args.sizes_mib.split(",")):
        size = mib * 2**20
        result = await run_size(size, args.backend)
        ceiling = disk_baseline(size)
        print(
            f"{mib:>6} MiB: upload {result['upload_mib_s']:.0f} MiB/s, "
            f"download {result['download_mib_s']:.0f} MiB/s, "
            f"local hash+write ceiling {ceiling:.0f} MiB/s (upload/ceiling {result['upload_mib_s'] / ceiling:.2f}); "
            f"server RSS before upload {result['baseline_rss_mib']:.0f} MiB, peak {result['peak_rss_mib']:.0f} MiB"
        )


if __name__ == "__main__":
    asyncio.run(main())
