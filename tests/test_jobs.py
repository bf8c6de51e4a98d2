"""Analysis jobs through the running server: generated and real CAD files in the pool, crashes, timeouts, cancel,
leases, API."""

from __future__ import annotations

import asyncio
import math
import os
import signal
from datetime import timedelta
from typing import Any

import pytest

from models.database import utcnow
from processing.runner import WorkerCall, analysis_call
from tests import cad_fixtures, corpus
from tests.cad_fixtures import CadFiles
from tests.helpers import RUNNING, Api, Recorder, World, alive, assert_envelope, cad, team, upload, wait_job

# The corpus files without a closed solid: analysed successfully, reported invalid.
CORPUS_INVALID = {"splinecage.stp", "surf114.igs", "curve_geom_plate.igs", "wire.brep"}
# The reference figures are rounded to 3 decimals: relative 1e-6, or half the last digit near zero; boxes 1e-3 mm.
REL, ROUNDING, BBOX_ABS = 1e-6, 5e-4 + 1e-9, 1e-3
EXACT = 1e-9
WORKERS = "tests.processing.workers"
ASSEMBLY = "assembly.step"
# Generated files the upload accepts: the readable ones are analysed, the others (corrupt.step, truncated.brep)
# pass the upload's check and fail in OpenCascade.
ANALYSABLE = cad_fixtures.names(readable=True)
BROKEN = cad_fixtures.names(readable=False, sniffs=True)


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return dict(RUNNING)


async def wait_worker_pid(api: Api, job_id: str, timeout: float = 30.0) -> int:
    """The sleeping test worker announces its pid as its first progress message."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        progress = (await api.get(f"/api/analysis-jobs/{job_id}/progress/")).json
        if progress["status_message"].isdigit():
            return int(progress["status_message"])
        assert asyncio.get_running_loop().time() < deadline, progress
        await asyncio.sleep(0.05)


async def wait_gone(pid: int, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while alive(pid):
        assert asyncio.get_running_loop().time() < deadline, f"worker {pid} still alive"
        await asyncio.sleep(0.05)


def sleeping(seconds: float = 30.0) -> WorkerCall:
    return WorkerCall(f"{WORKERS}:sleep", (seconds,))


def close(actual: float | None, expected: float, abs_tol: float = ROUNDING) -> bool:
    return actual is not None and math.isclose(actual, expected, rel_tol=REL, abs_tol=abs_tol)


def xyz(point: dict[str, float]) -> list[float]:
    return [point["x"], point["y"], point["z"]]


# ---------------------------------------------------------------- every file, end to end


@pytest.mark.gen_test(timeout=120)
async def test_every_generated_file_is_analysed_by_the_running_server(
    world: World, services: Any, recorder: Recorder, cad_files: CadFiles
) -> None:
    """Upload, job, pool, stored result: each design ends READY with its analytic figures, or FAILED."""
    _, people, series_id = await team(world)
    member = people["member"]
    names = ANALYSABLE + BROKEN
    designs = {name: await upload(member, series_id, name, cad_files.read(name)) for name in names}
    jobs = {name: await wait_job(member.api, d["finalize"]["analysis_job_id"]) for name, d in designs.items()}

    for name in ANALYSABLE:
        job, design_id, expected = jobs[name], designs[name]["id"], cad_files.expected[name]
        assert job["status"] == "SUCCESS", (name, job)
        assert job["retry_count"] == 0 and job["error_message"] is None and job["duration_seconds"] > 0
        assert job["result"]["geometry_extracted"] is True
        assert job["result"]["bom_part_count"] == expected.part_count, name
        design = (await member.api.get(f"/api/designs/{design_id}/")).json
        assert design["status"] == "READY", (name, design)
        # Invalid geometry is a successful analysis that says so.
        assert design["is_valid_geometry"] is expected.valid, (name, design["validation_errors"])
        meta = (await member.api.get(f"/api/designs/{design_id}/metadata/")).json["geometry"]
        topology = meta["topology"]
        assert (topology["solids"], topology["shells"], topology["faces"]) == (
            expected.solids,
            expected.shells,
            expected.faces,
        ), name
        for key, wanted in (
            ("volume_cubic_mm", expected.volume_mm3),
            ("surface_area_sq_mm", expected.surface_area_mm2),
        ):
            if wanted is not None:
                assert math.isclose(meta[key], wanted, rel_tol=EXACT, abs_tol=1e-9), (name, key, meta[key])
        if expected.bbox_min is not None and expected.bbox_max is not None:
            box = meta["bounding_box"]
            assert xyz(box["min"]) == pytest.approx(list(expected.bbox_min), abs=BBOX_ABS), name
            assert xyz(box["max"]) == pytest.approx(list(expected.bbox_max), abs=BBOX_ABS), name
        if expected.center_of_mass is not None:
            assert xyz(meta["center_of_mass"]) == pytest.approx(list(expected.center_of_mass), abs=1e-9), name

    for name in BROKEN:
        job = jobs[name]
        assert job["status"] == "FAILURE" and job["error_code"] == "GEOMETRY_EXTRACTION_FAILED", job
        assert job["retry_count"] == 0  # a file OpenCascade cannot read is not retried
        assert job["error_message"].startswith("Could not read the CAD file: not a readable"), job["error_message"]
        assert (await member.api.get(f"/api/designs/{designs[name]['id']}/")).json["status"] == "FAILED"

    # Progress: stored, and published on the job's and the design's channels, ending at 100 %.
    assembly = jobs[ASSEMBLY]
    for channel in (f"job:{assembly['id']}", f"design:{assembly['design_asset']}"):
        progress = recorder.data(channel, "job.progress")
        assert len(progress) >= 2, recorder.events
        percents = [p["percent"] for p in progress]
        assert percents == sorted(percents) and percents[-1] == 100
        assert {"current", "total", "percent", "status_message", "job_id", "design_id"} <= set(progress[0])
        assert [s["status"] for s in recorder.data(channel, "job.status")][-1] == "SUCCESS"
    assert (await member.api.get(f"/api/analysis-jobs/{assembly['id']}/progress/")).json == {
        "current": 1,
        "total": 1,
        "percent": 100,
        "status_message": "Completed",
        "status": "SUCCESS",
    }
    status = (await member.api.get(f"/api/analysis-jobs/{assembly['id']}/status/")).json
    nodes = cad_files.expected[ASSEMBLY].node_count
    assert status["state"] == "SUCCESS" and status["error"] is None and status["result"]["bom_items"] == nodes
    assert status["celery_info"]["args"] == [assembly["design_asset"]] and status["celery_info"]["worker"]

    # Lists, metrics and failures over what just ran.
    failed = (await member.api.get("/api/analysis-jobs/?status=FAILURE")).json
    assert failed["count"] == len(BROKEN) and {j["id"] for j in failed["results"]} == {jobs[n]["id"] for n in BROKEN}
    one = (await member.api.get(f"/api/analysis-jobs/?design_asset={assembly['design_asset']}")).json
    assert [j["id"] for j in one["results"]] == [assembly["id"]]
    assert (await member.api.get("/api/analysis-jobs/")).json["count"] == len(designs)
    metrics = (await member.api.get("/api/analysis-jobs/metrics/?job_type=PROCESSING")).json
    assert metrics["total_count"] == len(designs) and metrics["success_count"] == len(ANALYSABLE)
    assert metrics["failure_count"] == len(BROKEN)
    assert metrics["success_rate"] == round(100 * len(ANALYSABLE) / len(designs), 2)
    durations = [jobs[n]["duration_seconds"] for n in ANALYSABLE]
    assert metrics["min_duration_seconds"] == min(durations) and metrics["max_duration_seconds"] == max(durations)
    assert metrics["avg_duration_seconds"] == pytest.approx(sum(durations) / len(durations), abs=1e-3)
    overall = (await member.api.get("/api/analysis-jobs/metrics/")).json
    assert overall["job_type"] is None and [m["job_type"] for m in overall["by_job_type"]] == ["PROCESSING"]
    failures = (await member.api.get("/api/analysis-jobs/failures/?days=7")).json
    assert failures["total_failures"] == len(BROKEN) and len(failures["failures"]) == len(BROKEN)
    assert sum(e["count"] for e in failures["top_errors"]) == len(BROKEN)
    assert all(e["error_code"] == "GEOMETRY_EXTRACTION_FAILED" for e in failures["top_errors"])
    assert (await member.api.get("/api/analysis-jobs/active/")).json == {"count": 0, "tasks": []}


@corpus.mark
@pytest.mark.gen_test(timeout=180)
async def test_every_corpus_file_is_analysed_to_its_reference_figures(world: World) -> None:
    """The real-world files through the running server, against what OpenCascade reports for each."""
    _, people, series_id = await team(world)
    member = people["member"]
    reference = corpus.reference()
    designs = {name: await upload(member, series_id, name, corpus.read(name)) for name in corpus.FILES}
    for name, design in designs.items():
        job = await wait_job(member.api, design["finalize"]["analysis_job_id"])
        assert job["status"] == "SUCCESS" and job["retry_count"] == 0, (name, job)
        detail = (await member.api.get(f"/api/designs/{design['id']}/")).json
        assert detail["status"] == "READY" and detail["is_valid_geometry"] is (name not in CORPUS_INVALID), name
        expected = reference[name]
        meta = (await member.api.get(f"/api/designs/{design['id']}/metadata/")).json["geometry"]
        topology = meta["topology"]
        assert (topology["solids"], topology["shells"], topology["faces"]) == (
            expected["solids"],
            expected["shells"],
            expected["faces"],
        ), name
        assert close(meta["volume_cubic_mm"], expected["volume_mm3"]), (name, meta["volume_cubic_mm"])
        assert close(meta["surface_area_sq_mm"], expected["surface_area_mm2"]), name
        box = meta["bounding_box"]
        for actual, wanted in zip(
            xyz(box["min"]) + xyz(box["max"]), expected["bbox_min"] + expected["bbox_max"], strict=True
        ):
            assert math.isclose(actual, wanted, abs_tol=BBOX_ABS), (name, box)
        if expected["faces"]:
            assert all(
                close(a, w) for a, w in zip(xyz(meta["center_of_mass"]), expected["center_of_mass"], strict=True)
            ), name


# ---------------------------------------------------------------- robustness


@pytest.mark.gen_test(timeout=120)
async def test_crashing_workers_fail_or_retry_while_the_api_keeps_answering(
    world: World, services: Any, api: Api
) -> None:
    """A segfaulting worker fails its job after the retries, a killed one is retried; the API answers throughout."""
    runner = services.runner

    def call(job: dict[str, Any], path: str, design: dict[str, Any]) -> WorkerCall:
        if design["filename"] == "segv.stp":
            return WorkerCall(f"{WORKERS}:segfault", progress=False)
        if design["filename"] == "killed.stp" and job["retry_count"] == 0:
            return sleeping()
        return analysis_call(job, path, design)

    runner.make_call = call

    health: list[int] = []
    polling = True

    async def poll_health() -> None:
        while polling:
            health.append((await api.get("/api/health/")).status)
            await asyncio.sleep(0.02)

    poller = asyncio.ensure_future(poll_health())

    _, people, series_id = await team(world)
    member = people["member"]
    segv = await upload(member, series_id, "segv.stp", cad(ASSEMBLY))
    killed = await upload(member, series_id, "killed.stp", cad(ASSEMBLY))
    pid = await wait_worker_pid(member.api, killed["finalize"]["analysis_job_id"])
    os.kill(pid, signal.SIGKILL)  # a worker dies mid-job, as under the out-of-memory killer

    crashed = await wait_job(member.api, segv["finalize"]["analysis_job_id"])
    assert crashed["status"] == "FAILURE" and crashed["error_code"] == "GEOMETRY_EXTRACTION_FAILED"
    assert crashed["retry_count"] == 2
    assert crashed["error_message"] == ("The analysis worker crashed (killed by SIGSEGV) (gave up after 3 attempts).")
    assert (await member.api.get(f"/api/designs/{segv['id']}/")).json["status"] == "FAILED"

    retried = await wait_job(member.api, killed["finalize"]["analysis_job_id"])
    assert retried["status"] == "SUCCESS" and retried["retry_count"] == 1, retried
    assert (await member.api.get(f"/api/designs/{killed['id']}/")).json["status"] == "READY"

    after = await upload(member, series_id, "after.stp", cad(ASSEMBLY))
    assert (await wait_job(member.api, after["finalize"]["analysis_job_id"]))["status"] == "SUCCESS"
    polling = False
    await poller
    assert len(health) > 20 and set(health) == {200}
    stats = services.pool.stats()
    assert stats["crashed"] >= 4 and stats["alive"] == 2 and pid not in stats["pids"]


class TestTimeout:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {**RUNNING, "workers": 1, "job_timeout_seconds": 1, "job_max_retries": 1}

    @pytest.mark.gen_test(timeout=60)
    async def test_a_stuck_worker_is_killed_and_the_job_fails_after_its_retries(
        self, world: World, services: Any
    ) -> None:
        services.runner.make_call = lambda job, path, design: sleeping()
        _, people, series_id = await team(world)
        member = people["member"]
        design = await upload(member, series_id, "stuck.stp", cad(ASSEMBLY))
        job_id = design["finalize"]["analysis_job_id"]
        first = await wait_worker_pid(member.api, job_id)
        job = await wait_job(member.api, job_id)
        assert job["status"] == "FAILURE" and job["retry_count"] == 1
        assert job["error_code"] == "GEOMETRY_EXTRACTION_FAILED"
        assert job["error_message"] == "Geometry extraction timed out after 1 s (gave up after 2 attempts)."
        assert not alive(first)
        assert (await member.api.get(f"/api/designs/{design['id']}/")).json["status"] == "FAILED"
        services.runner.make_call = analysis_call  # the replaced worker serves the next job
        ok = await upload(member, series_id, "fine.stp", cad(ASSEMBLY))
        assert (await wait_job(member.api, ok["finalize"]["analysis_job_id"]))["status"] == "SUCCESS"


@pytest.mark.gen_test(timeout=90)
async def test_cancel_stops_the_worker_for_real(world: World, services: Any, db: Any) -> None:
    """Cancel kills the running worker here, is acted on at the next renewal elsewhere, and settles pending jobs."""
    services.runner.make_call = lambda job, path, design: sleeping()
    _, people, series_id = await team(world)
    member = people["member"]
    running = await upload(member, series_id, "a.stp", cad(ASSEMBLY))
    job_id = running["finalize"]["analysis_job_id"]
    pid = await wait_worker_pid(member.api, job_id)
    assert_envelope(
        await people["viewer"].api.post(f"/api/analysis-jobs/{job_id}/cancel/", {}), 403, "PERMISSION_DENIED"
    )
    assert_envelope(
        await member.api.post(f"/api/analysis-jobs/{job_id}/cancel/", {"force": "yes"}), 400, "VALIDATION_ERROR"
    )
    active = (await member.api.get("/api/analysis-jobs/active/")).json
    assert active["count"] == 1 and active["tasks"][0]["job_id"] == job_id and active["tasks"][0]["time_start"]

    resp = await member.api.post(f"/api/analysis-jobs/{job_id}/cancel/", {"force": False})
    assert resp.status == 200 and resp.json == {"message": "Job cancelled successfully", "status": "CANCELLED"}
    await wait_gone(pid)
    assert pid not in services.pool.stats()["pids"]
    job = (await member.api.get(f"/api/analysis-jobs/{job_id}/")).json
    assert job["status"] == "CANCELLED" and job["cancel_requested"] and job["completed_at"]
    assert (await member.api.get(f"/api/designs/{running['id']}/")).json["status"] == "FAILED"
    assert_envelope(await member.api.post(f"/api/analysis-jobs/{job_id}/cancel/", {}), 409, "CONFLICT")
    assert await db.audit_log.count_documents({"action": "CANCEL", "resource_id": job_id}) == 1

    # A cancel issued on another process only sets the flag; this process's lease renewal acts on it.
    other = await upload(member, series_id, "b.stp", cad(ASSEMBLY))
    other_id = other["finalize"]["analysis_job_id"]
    other_pid = await wait_worker_pid(member.api, other_id)
    await db.analysis_jobs.update_one({"_id": other_id}, {"$set": {"cancel_requested": True}})
    assert (await wait_job(member.api, other_id, timeout=10))["status"] == "CANCELLED"
    await wait_gone(other_pid)

    # A pending job is cancelled before it ever runs.
    await services.runner.stop()
    pending = await upload(member, series_id, "c.stp", cad(ASSEMBLY))
    pending_id = pending["finalize"]["analysis_job_id"]
    resp = await member.api.post(f"/api/analysis-jobs/{pending_id}/cancel/", {})
    assert resp.status == 200 and resp.json["status"] == "CANCELLED"
    job = (await member.api.get(f"/api/analysis-jobs/{pending_id}/")).json
    assert job["started_at"] is None and job["worker"] is None

    # A job held by a process that does not answer: 202 unless forced.
    ghost = await upload(member, series_id, "d.stp", cad(ASSEMBLY))
    ghost_id = ghost["finalize"]["analysis_job_id"]
    await db.analysis_jobs.update_one(
        {"_id": ghost_id},
        {
            "$set": {
                "status": "PROCESSING",
                "worker": "ghost:1",
                "task_id": "t",
                "started_at": utcnow(),
                "lease_expires_at": utcnow() + timedelta(hours=1),
            }
        },
    )
    resp = await member.api.post(f"/api/analysis-jobs/{ghost_id}/cancel/", {})
    assert resp.status == 202 and resp.json["status"] == "PROCESSING" and resp.json["cancel_requested"] is True
    resp = await member.api.post(f"/api/analysis-jobs/{ghost_id}/cancel/", {"force": True})
    assert resp.status == 200 and resp.json["status"] == "CANCELLED"
    assert (await member.api.get(f"/api/designs/{ghost['id']}/")).json["status"] == "FAILED"


@pytest.mark.gen_test(timeout=60)
async def test_an_expired_lease_is_reclaimed_and_a_live_one_is_not(world: World, services: Any, db: Any) -> None:
    runner = services.runner
    await runner.stop()
    _, people, series_id = await team(world)
    member = people["member"]
    orphan = await upload(member, series_id, "orphan.stp", cad(ASSEMBLY))
    held = await upload(member, series_id, "held.stp", cad(ASSEMBLY))
    # A node that died mid-job (its lease ran out) and one that is alive (its lease is current).
    await db.analysis_jobs.update_one(
        {"_id": orphan["finalize"]["analysis_job_id"]},
        {
            "$set": {
                "status": "PROCESSING",
                "worker": "dead-node:41",
                "task_id": "gone",
                "started_at": utcnow(),
                "lease_expires_at": utcnow() - timedelta(seconds=5),
            }
        },
    )
    await db.analysis_jobs.update_one(
        {"_id": held["finalize"]["analysis_job_id"]},
        {
            "$set": {
                "status": "PROCESSING",
                "worker": "live-node:42",
                "task_id": "mine",
                "started_at": utcnow(),
                "lease_expires_at": utcnow() + timedelta(hours=1),
            }
        },
    )
    await runner.start()
    job = await wait_job(member.api, orphan["finalize"]["analysis_job_id"], timeout=30)
    assert job["status"] == "SUCCESS" and job["retry_count"] == 1 and job["worker"] == runner.name
    assert (await member.api.get(f"/api/designs/{orphan['id']}/")).json["status"] == "READY"
    still = (await member.api.get(f"/api/analysis-jobs/{held['finalize']['analysis_job_id']}/")).json
    assert still["status"] == "PROCESSING" and still["worker"] == "live-node:42"


@pytest.mark.gen_test(timeout=60)
async def test_shutdown_requeues_running_jobs(world: World, services: Any, db: Any) -> None:
    runner = services.runner
    runner.make_call = lambda job, path, design: sleeping()
    _, people, series_id = await team(world)
    member = people["member"]
    design = await upload(member, series_id, "a.stp", cad(ASSEMBLY))
    job_id = design["finalize"]["analysis_job_id"]
    pid = await wait_worker_pid(member.api, job_id)
    await runner.stop()
    stored = await db.analysis_jobs.find_one({"_id": job_id})
    assert stored["status"] == "PENDING" and stored["worker"] is None and stored["lease_expires_at"] is None
    assert stored["retry_count"] == 0  # the job did nothing wrong: not counted as an attempt
    await wait_gone(pid)
    runner.make_call = analysis_call
    await runner.start()
    assert (await wait_job(member.api, job_id))["status"] == "SUCCESS"
    assert (await member.api.get(f"/api/designs/{design['id']}/")).json["status"] == "READY"


# ---------------------------------------------------------------- the API without workers


class TestJobsApi:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {**RUNNING, "workers": 0}

    @pytest.mark.gen_test(timeout=60)
    async def test_jobs_follow_their_designs_policy(self, world: World, db: Any) -> None:
        """Job lists, details, filters and metrics follow the design policy; unknown parameters are refused."""
        org, people, series_id = await team(world)
        member, viewer = people["member"], people["viewer"]
        plain = await upload(member, series_id, "plain.stp", cad(ASSEMBLY))
        secret = await upload(member, series_id, "secret.stp", cad(ASSEMBLY), classification="SECRET")
        itar = await upload(member, series_id, "itar.stp", cad(ASSEMBLY), classification="ITAR")
        ids = {n: d["finalize"]["analysis_job_id"] for n, d in (("plain", plain), ("secret", secret), ("itar", itar))}
        # No workers in this process: nothing claims the jobs.
        assert await db.analysis_jobs.count_documents({"status": "PENDING"}) == 3

        listed = (await member.api.get("/api/analysis-jobs/")).json
        assert listed["count"] == 3 and {j["id"] for j in listed["results"]} == set(ids.values())
        job = listed["results"][0]
        assert set(job) >= {
            "id",
            "design_asset",
            "job_type",
            "status",
            "celery_task_id",
            "started_at",
            "completed_at",
            "duration_seconds",
            "result",
            "error_message",
            "retry_count",
            "worker",
            "task_id",
            "progress",
        }
        # The viewer is a US person without clearance; the foreign member is cleared to SECRET.
        seen = {j["id"] for j in (await viewer.api.get("/api/analysis-jobs/")).json["results"]}
        assert seen == {ids["plain"], ids["itar"]}
        seen = {j["id"] for j in (await people["foreign"].api.get("/api/analysis-jobs/")).json["results"]}
        assert seen == {ids["plain"], ids["secret"]}
        assert_envelope(await viewer.api.get(f"/api/analysis-jobs/{ids['secret']}/"), 403, "PERMISSION_DENIED")
        assert_envelope(
            await people["foreign"].api.get(f"/api/analysis-jobs/{ids['itar']}/progress/"), 403, "ITAR_VIOLATION"
        )
        outsider = await world.user("outsider", security_clearance_level="TOP_SECRET", is_us_person=True)
        await world.org("other", members={outsider: "OWNER"}, is_us=True)
        assert (await outsider.api.get("/api/analysis-jobs/")).json["count"] == 0
        assert_envelope(await outsider.api.get(f"/api/analysis-jobs/{ids['plain']}/status/"), 404, "RESOURCE_NOT_FOUND")
        assert_envelope(
            await outsider.api.post(f"/api/analysis-jobs/{ids['plain']}/cancel/", {}), 404, "RESOURCE_NOT_FOUND"
        )
        assert (await outsider.api.get("/api/analysis-jobs/metrics/")).json["total_count"] == 0
        assert (await viewer.api.get("/api/analysis-jobs/metrics/")).json["pending_count"] == 2

        # Reclassifying the design reclassifies its job.
        assert (
            await people["admin"].api.patch(f"/api/designs/{secret['id']}/", {"classification": "UNCLASSIFIED"})
        ).status == 200
        assert (await viewer.api.get(f"/api/analysis-jobs/{ids['secret']}/")).status == 200

        # Filters, ordering and projection; unknown parameters are refused.
        assert (await member.api.get("/api/analysis-jobs/?status=PENDING&job_type=PROCESSING")).json["count"] == 3
        assert (await member.api.get("/api/analysis-jobs/?status=SUCCESS")).json["count"] == 0
        assert (await member.api.get("/api/analysis-jobs/?started_at__gte=2020-01-01T00:00:00Z")).json["count"] == 0
        fields = (await member.api.get("/api/analysis-jobs/?fields=id,status&ordering=created_at")).json
        assert [set(j) for j in fields["results"]] == [{"id", "status"}] * 3
        assert [j["id"] for j in fields["results"]] == [ids["plain"], ids["secret"], ids["itar"]]
        for bad in ("status=DONE", "job_type=X", "nope=1", "ordering=worker", "started_at__gte=yesterday"):
            assert_envelope(await member.api.get(f"/api/analysis-jobs/?{bad}"), 400, "VALIDATION_ERROR")
        for bad in ("metrics/?job_type=X", "failures/?days=0", "failures/?days=abc", "active/?x=1"):
            assert_envelope(await member.api.get(f"/api/analysis-jobs/{bad}"), 400, "VALIDATION_ERROR")
        assert_envelope(
            await member.api.get("/api/analysis-jobs/00000000-0000-0000-0000-000000000000/"), 404, "RESOURCE_NOT_FOUND"
        )
        assert_envelope(
            await Api(member.api.client, member.api.base_url).get("/api/analysis-jobs/"), 401, "AUTHENTICATION_FAILED"
        )
