"""Revision compare and geometric diff cost on the corpus pair as1-oc-214.stp / as1_pe_203.stp, beside analysis.

Usage: .venv/bin/python bench/compare.py [--corpus DIR] [--rounds 3] [--workers 2] [--no-server]

The pair is two exports (OpenCascade's and another system's) of the same AS1 assembly, compared as two versions of
one series. Default corpus: $ENGINEL_CAD_CORPUS or ../shared/cad-samples. Each figure is measured `--rounds` times
(median and min-max), in the same run as its peer, the analysis of the two files:
  in one process
    analysis   processing.cad.analyze_file of each file (parse, mass properties, validation, BOM)
    compare    processing.compare.compare_revisions on the two analyses (BOM diff, property deltas, digest)
    diff       processing.geodiff.geometric_diff old -> new (both parsed again, per-part cuts, the GLB written)
  through server.py (embedded database, `--workers` pool processes), each round a fresh pair of versions
    analysis   the two PROCESSING jobs' duration_seconds
    compare    GET /api/designs/{a}/compare/?to={b} over HTTP (stored figures and BOM rows read, compared)
    diff       the GEOMETRIC_DIFF job's duration_seconds, and the wall time from the first GET of the diff's
               viewable/ (202) to the GLB being served
The corpus pair's exports name their parts differently, so few rows match; the same in-process figures are also
printed for the suite's generated pair (tests/cad_fixtures: assembly.step -> assembly-b.step, where two parts
are cut), unless --no-generated.
Not a test: figures only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tornado.httpclient import AsyncHTTPClient  # noqa: E402

from models.database import free_port  # noqa: E402
from processing import cad, geodiff  # noqa: E402
from processing.compare import compare_revisions, rows_from_tree  # noqa: E402

CORPUS = Path(os.environ.get("ENGINEL_CAD_CORPUS") or REPO.parent / "shared" / "cad-samples")
PAIR = ("as1-oc-214.stp", "as1_pe_203.stp")
PASSWORD = "bench-password-123"


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def revision_input(result: dict[str, Any], name: str) -> dict[str, Any]:
    """What the server hands processing.compare, built from an analysis result instead of stored documents."""
    geometry = result["geometry"]
    validation = result["validation"]
    return {
        "design": {"id": name, "file_hash": name},
        "properties": {
            "volume_mm3": geometry["volume_mm3"],
            "surface_area_mm2": geometry["surface_area_mm2"],
            "mass_kg": None,
            "center_of_mass": geometry["center_of_mass"],
            "bounding_box": geometry["bounding_box"],
            "topology": result["topology"],
            "validation": {
                "is_valid": validation["is_valid_geometry"],
                "errors": validation["validation_errors"],
                "warnings": validation["warnings"],
            },
        },
        "bom": rows_from_tree(result["bom"]),
    }


def in_process(old: Path, new: Path, rounds: int) -> dict[str, Any]:
    analysis: dict[str, list[float]] = {old.name: [], new.name: []}
    compare_times, diff_times = [], []
    last: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for _ in range(rounds):
            results = {}
            for path in (old, new):
                started = time.perf_counter()
                results[path.name] = cad.analyze_file(str(path))
                analysis[path.name].append(time.perf_counter() - started)
            inputs = [revision_input(results[p.name], p.name) for p in (old, new)]
            started = time.perf_counter()
            last["compare"] = compare_revisions(*inputs)
            compare_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            last["diff"] = geodiff.geometric_diff(str(old), None, str(new), None, f"{scratch}/diff.glb")
            diff_times.append(time.perf_counter() - started)
    return {"analysis": analysis, "compare_s": compare_times, "diff_s": diff_times, **last}


async def through_server(old: Path, new: Path, rounds: int, workers: int) -> dict[str, Any]:
    """A server.py with its embedded database; each round uploads the pair as two new versions of one series."""
    port = free_port()
    out: dict[str, list[float]] = {
        "analysis_old": [],
        "analysis_new": [],
        "compare": [],
        "diff_job": [],
        "diff_wall": [],
    }
    with tempfile.TemporaryDirectory() as data_dir:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINEL_")}
        env.update(
            ENGINEL_BOOTSTRAP_ADMIN=f"bench:{PASSWORD}",
            ENGINEL_WORKERS=str(workers),
            ENGINEL_LOG_LEVEL="WARNING",
            ENGINEL_RATE_LIMIT_PER_MINUTE="1000000",
            ENGINEL_RATE_LIMIT_PER_HOUR="1000000",
            ENGINEL_UPLOADS_PER_HOUR="1000000",
            ENGINEL_JOB_POLL_INTERVAL="0.05",
        )
        proc = subprocess.Popen(
            [sys.executable, "server.py", "--port", str(port), "--data-dir", data_dir], cwd=REPO, env=env
        )
        client = AsyncHTTPClient()
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(600):
                try:
                    if (await client.fetch(base + "/api/health/detailed/", raise_error=False)).code == 200:
                        break
                except OSError:
                    pass
                await asyncio.sleep(0.1)

            async def call(method: str, path: str, body: Any = None, raw: tuple[bytes, str] | None = None) -> Any:
                headers = {"Content-Type": raw[1] if raw else "application/json"}
                if token:
                    headers["Authorization"] = f"Token {token}"
                data = raw[0] if raw else (json.dumps(body) if body is not None else None)
                resp = await client.fetch(
                    base + path, method=method, headers=headers, body=data, request_timeout=600, raise_error=False
                )
                return resp.code, (json.loads(resp.body) if resp.body and resp.body[:1] in b"{[" else resp.body)

            token = None
            _, login = await call("POST", "/api/auth/login/", {"username": "bench", "password": PASSWORD})
            token = login["access_token"]
            _, org = await call("POST", "/api/organizations/", {"name": "Bench", "slug": "bench"})
            _, series = await call(
                "POST", "/api/series/", {"organization": org["id"], "part_number": "AS1", "name": "AS1"}
            )

            async def job_done(job_id: str) -> dict[str, Any]:
                while True:
                    _, job = await call("GET", f"/api/analysis-jobs/{job_id}/")
                    if job["status"] in ("SUCCESS", "FAILURE", "CANCELLED"):
                        return job  # type: ignore[no-any-return]
                    await asyncio.sleep(0.05)

            for _ in range(rounds):
                ids = []
                for path, key in ((old, "analysis_old"), (new, "analysis_new")):
                    boundary = uuid.uuid4().hex
                    form = (
                        (
                            f'--{boundary}\r\nContent-Disposition: form-data; name="series"\r\n\r\n{series["id"]}\r\n'
                            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
                            "Content-Type: application/octet-stream\r\n\r\n"
                        ).encode()
                        + path.read_bytes()
                        + f"\r\n--{boundary}--\r\n".encode()
                    )
                    _, design = await call(
                        "POST", "/api/designs/", raw=(form, f"multipart/form-data; boundary={boundary}")
                    )
                    job = await job_done(design["analysis_job_id"])
                    out[key].append(job["duration_seconds"])
                    ids.append(design["id"])
                started = time.perf_counter()
                status, compared = await call("GET", f"/api/designs/{ids[0]}/compare/?to={ids[1]}")
                out["compare"].append(time.perf_counter() - started)
                assert status == 200, compared
                started = time.perf_counter()
                status, pending = await call("GET", f"/api/designs/{ids[0]}/compare/{ids[1]}/viewable/")
                assert status == 202, pending
                job = await job_done(pending["job_id"])
                assert job["status"] == "SUCCESS", job
                status, glb = await call("GET", f"/api/designs/{ids[0]}/compare/{ids[1]}/viewable/")
                assert status == 200
                out["diff_wall"].append(time.perf_counter() - started)
                out["diff_job"].append(job["duration_seconds"])
            out["bom_counts"] = compared["bom"]["counts"]  # type: ignore[assignment]
            out["glb_bytes"] = len(glb)  # type: ignore[assignment]
            return out
        finally:
            client.close()
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)


def report_local(title: str, local: dict[str, Any]) -> None:
    print(f"{title}:")
    for name, times in local["analysis"].items():
        print(f"  analysis {name:<16} {spread(times)}")
    print(f"  compare (pure)            {spread(local['compare_s'])}")
    print(f"  geometric diff            {spread(local['diff_s'])}")
    analysis_sum = statistics.median([a + b for a, b in zip(*local["analysis"].values(), strict=True)])
    print(
        f"  diff / analysis of both   {statistics.median(local['diff_s']) / analysis_sum:.2f}x; "
        f"compare / analysis of both {statistics.median(local['compare_s']) / analysis_sum:.5f}x"
    )
    counts = local["compare"]["bom"]["counts"]
    totals = local["diff"]["totals"]
    print(f"  BOM: {counts}")
    print(
        f"  diff: {totals['matched_parts']} matched parts, {totals['changed_parts']} cut, "
        f"{totals['too_complex']} too complex, {totals['failed']} failed; added {totals['added_volume_mm3']} mm³, "
        f"removed {totals['removed_volume_mm3']} mm³; unmatched +{totals['unmatched_added_volume_mm3']:.1f} / "
        f"-{totals['unmatched_removed_volume_mm3']:.1f} mm³; GLB {local['diff']['glb']['bytes']} bytes"
    )
    for part in local["diff"]["parts"]:
        if part["status"] not in ("identical",):
            print(f"    {part['name_path']}: {part['status']} {part.get('message') or ''}".rstrip())


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="times each figure is measured (at least 3)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="server analysis workers")
    parser.add_argument("--no-server", action="store_true", help="only the in-process figures")
    parser.add_argument("--no-generated", action="store_true", help="skip the generated assembly pair")
    parser.add_argument(
        "--corpus",
        dest="corpus",
        type=Path,
        default=CORPUS,
        help="folder holding the corpus files (default: $ENGINEL_CAD_CORPUS or ../shared/cad-samples)",
    )
    args = parser.parse_args()
    old, new = (args.corpus / name for name in PAIR)
    if not old.is_file() or not new.is_file():
        parser.error(f"{PAIR[0]} and {PAIR[1]} not found in {args.corpus}: pass --corpus DIR")
    rounds = max(3, args.rounds)
    print(
        f"{datetime.now(UTC):%Y-%m-%d %H:%M}Z, {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; {PAIR[0]} -> {PAIR[1]}, {rounds} rounds; median (min-max) seconds"
    )
    pairs = [("in one process", old, new)]
    if not args.no_generated:
        from tests import cad_fixtures

        generated = cad_fixtures.files()
        pairs.append(
            ("generated pair, in one process", generated.path("assembly.step"), generated.path("assembly-b.step"))
        )
    for title, first, second in pairs:
        report_local(title, in_process(first, second, rounds))
    if args.no_server:
        return
    server = await through_server(old, new, rounds, args.workers)
    print(f"through server.py ({args.workers} workers):")
    print(f"  analysis job {PAIR[0]:<13} {spread(server['analysis_old'])}")
    print(f"  analysis job {PAIR[1]:<13} {spread(server['analysis_new'])}")
    print(f"  GET compare/              {spread(server['compare'])}")
    print(f"  diff job                  {spread(server['diff_job'])}")
    print(f"  diff, 202 to GLB served   {spread(server['diff_wall'])}")
    both = statistics.median([a + b for a, b in zip(server["analysis_old"], server["analysis_new"], strict=True)])
    print(
        f"  diff job / analysis jobs  {statistics.median(server['diff_job']) / both:.2f}x; "
        f"compare / analysis jobs {statistics.median(server['compare']) / both:.3f}x; GLB {server['glb_bytes']} bytes"
    )


if __name__ == "__main__":
    asyncio.run(main())
