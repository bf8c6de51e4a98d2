"""processing.pool with real spawned processes: results, progress, crashes, timeouts, cancels, shutdown."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from processing.pool import JobCancelled, JobTimeout, PoolBusy, PoolClosed, ProcessPool, WorkerCrashed, WorkerError
from tests.cad_fixtures import CadFiles
from tests.processing import workers

REPO = Path(__file__).resolve().parents[2]
W = "tests.processing.workers:"
T = TypeVar("T")

pytestmark = pytest.mark.timeout(120)


def with_pool(test: Callable[[ProcessPool], Awaitable[T]], size: int = 2, **options: Any) -> T:
    """Run ``test`` against a started pool in a fresh event loop, always closing the pool."""

    async def main() -> T:
        pool = ProcessPool(size, **options)
        await pool.start()
        try:
            return await test(pool)
        finally:
            await pool.close()

    return asyncio.run(main())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def children() -> set[int]:
    """Live child processes of this process, read from /proc (a reaped child is gone from the list)."""
    found: set[int] = set()
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        with open(task / "children") as handle:
            found.update(int(pid) for pid in handle.read().split())
    return found


def sleep_and_report(pool: ProcessPool, pids: list[int]) -> Awaitable[Any]:
    """A 60 s job that first reports its worker's pid into ``pids``."""
    return pool.run(W + "sleep", 60, on_progress=lambda c, t, m: pids.append(int(m)))


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def test_results_come_back_by_name_or_function() -> None:
    async def test(pool: ProcessPool) -> None:
        assert await pool.run(W + "add", 2, 3, scale=10) == 50
        data = {"nested": [1, 2.5, "x", None]}
        assert await pool.run(workers.echo, data) == data
        assert await pool.run("tests.processing.workers.add", 1, 1) == 2
        pids = await asyncio.gather(*(pool.run(W + "pid") for _ in range(6)))
        assert set(pids) <= set(pool.stats()["pids"]) and os.getpid() not in pids
        stats = pool.stats()
        assert (stats["size"], stats["alive"], stats["busy"], stats["replaced"]) == (2, 2, 0, 0)
        assert stats["completed"] == 9

    with_pool(test)


def test_worker_functions_must_be_importable() -> None:
    async def test(pool: ProcessPool) -> None:
        with pytest.raises(ValueError, match="module-level"):
            await pool.run(lambda: 1)
        with pytest.raises(WorkerError) as missing:
            await pool.run(W + "no_such_function")
        assert missing.value.remote_type == "AttributeError"

    with_pool(test, size=1)


def test_progress_arrives_in_order_for_sync_and_async_callbacks() -> None:
    async def test(pool: ProcessPool) -> None:
        seen: list[tuple[int, int, str]] = []
        assert await pool.run(W + "count_up", 50, on_progress=lambda c, t, m: seen.append((c, t, m))) == 50
        assert seen == [(i, 50, f"step {i}") for i in range(1, 51)]

        slow: list[int] = []

        async def record(current: int, total: int, message: str) -> None:
            await asyncio.sleep(0.001)  # a slow consumer still sees every update, in order
            slow.append(current)

        await pool.run(W + "count_up", 30, on_progress=record)
        assert slow == list(range(1, 31))

        def broken(current: int, total: int, message: str) -> None:
            raise RuntimeError("sink down")

        assert await pool.run(W + "count_up", 3, on_progress=broken) == 3  # the job is not failed by it

    with_pool(test, size=1)


def test_remote_exception_becomes_worker_error() -> None:
    async def test(pool: ProcessPool) -> None:
        with pytest.raises(WorkerError) as raised:
            await pool.run(W + "fail", "bad flange")
        error = raised.value
        assert (error.remote_type, error.remote_message) == ("ValueError", "bad flange")
        assert "in fail" in error.remote_traceback and "raise ValueError" in error.remote_traceback
        assert pool.stats()["replaced"] == 0  # an exception does not cost the worker
        assert await pool.run(W + "echo", 1) == 1

    with_pool(test, size=1)


@pytest.mark.parametrize(
    ("job", "args", "expected"),
    [
        ("exit_now", (3,), "exited with code 3"),
        ("segfault", (), "SIGSEGV"),
    ],
)
def test_crashed_worker_is_reported_and_replaced(job: str, args: tuple[Any, ...], expected: str) -> None:
    async def test(pool: ProcessPool) -> None:
        before = set(pool.stats()["pids"])
        with pytest.raises(WorkerCrashed, match=expected) as raised:
            await pool.run(W + job, *args)
        crashed = raised.value.pid
        assert crashed is not None and crashed in before and not alive(crashed)
        assert raised.value.exitcode == (3 if job == "exit_now" else -11)
        # The pool keeps serving: the next jobs succeed on the survivor and on the replacement.
        results = await asyncio.gather(*(pool.run(W + "add", i, 1) for i in range(4)))
        assert results == [1, 2, 3, 4]
        await wait_for(lambda: pool.stats()["idle"] == 2)
        stats = pool.stats()
        assert stats["replaced"] == 1 and stats["crashed"] == 1 and stats["alive"] == 2
        assert raised.value.pid not in stats["pids"]

    with_pool(test)


def test_timeout_kills_and_replaces_the_worker() -> None:
    async def test(pool: ProcessPool) -> None:
        pids: list[int] = []
        started = time.monotonic()
        with pytest.raises(JobTimeout, match="timeout of 0.5s"):
            await pool.run(W + "sleep", 60, timeout=0.5, on_progress=lambda c, t, m: pids.append(int(m)))
        assert time.monotonic() - started < 5
        assert not alive(pids[0])
        assert await pool.run(W + "echo", "after") == "after"
        await wait_for(lambda: pool.stats()["idle"] == 1)
        assert pool.stats()["timed_out"] == 1 and pool.stats()["replaced"] == 1
        # A job that finishes in time is unaffected by its timeout.
        assert await pool.run(W + "add", 1, 2, timeout=30) == 3

    with_pool(test, size=1)


def test_cancel_running_job_kills_its_process() -> None:
    async def test(pool: ProcessPool) -> None:
        running = asyncio.Event()
        pids: list[int] = []

        def started(current: int, total: int, message: str) -> None:
            pids.append(int(message))
            running.set()

        task = asyncio.ensure_future(pool.run(W + "sleep", 60, job_id="job-1", on_progress=started))
        await asyncio.wait_for(running.wait(), 30)
        assert alive(pids[0])
        assert pool.cancel("job-1") is True
        with pytest.raises(JobCancelled):
            await task
        assert not alive(pids[0])  # gone and reaped, not a zombie
        assert pool.cancel("job-1") is False
        assert pool.cancel("never-existed") is False
        assert await pool.run(W + "echo", 5) == 5
        assert pool.stats()["cancelled"] == 1

    with_pool(test, size=1)


def test_cancel_queued_job_and_caller_cancellation() -> None:
    async def test(pool: ProcessPool) -> None:
        pids: list[int] = []
        blocker = asyncio.ensure_future(sleep_and_report(pool, pids))
        await wait_for(lambda: bool(pids))
        queued = asyncio.ensure_future(pool.run(W + "echo", "never", job_id="queued"))
        await wait_for(lambda: pool.stats()["queued"] == 1)
        assert pool.cancel("queued")
        with pytest.raises(JobCancelled):
            await queued
        # Cancelling the awaiting task kills the worker running the job, too.
        blocker.cancel()
        with pytest.raises(asyncio.CancelledError):
            await blocker
        await wait_for(lambda: not alive(pids[0]))
        assert await pool.run(W + "echo", "next") == "next"

    with_pool(test, size=1)


def test_more_jobs_than_workers_queue_and_all_complete() -> None:
    async def test(pool: ProcessPool) -> None:
        results = await asyncio.gather(*(pool.run(W + "timed_sleep", 0.2) for _ in range(7)))
        assert len(results) == 7 and len({pid for pid, _, _ in results}) <= 2
        # Never more than two jobs at once: at each start, count the jobs running then.
        for _pid, start, _ in results:
            assert sum(1 for _, s, e in results if s <= start < e) <= 2

    with_pool(test)


def test_full_queue_raises_pool_busy() -> None:
    async def test(pool: ProcessPool) -> None:
        pids: list[int] = []
        running = asyncio.ensure_future(sleep_and_report(pool, pids))
        await wait_for(lambda: bool(pids))
        waiting = asyncio.ensure_future(pool.run(W + "echo", 1))
        await wait_for(lambda: pool.stats()["queued"] == 1)
        with pytest.raises(PoolBusy):
            await pool.run(W + "echo", 2)
        running.cancel()
        assert await waiting == 1
        with pytest.raises(ValueError, match="already"):
            await asyncio.gather(pool.run(W + "sleep", 0.2, job_id="same"), pool.run(W + "echo", 0, job_id="same"))

    with_pool(test, size=1, max_queued=1)


def test_oversized_messages_are_refused() -> None:
    async def test(pool: ProcessPool) -> None:
        with pytest.raises(ValueError, match="exceed"):
            await pool.run(W + "echo", b"x" * 200_000)
        with pytest.raises(WorkerError, match="exceeds the pool's limit"):
            await pool.run(W + "large_result", 200_000)
        assert len(await pool.run(W + "large_result", 50_000)) == 50_000

    with_pool(test, size=1, max_message_bytes=100_000)


def test_close_leaves_no_child_process() -> None:
    async def main() -> None:
        pool = ProcessPool(2)
        await pool.start()
        pids: list[int] = []
        running = asyncio.ensure_future(sleep_and_report(pool, pids))
        await wait_for(lambda: bool(pids))
        workers_pids = set(pool.stats()["pids"])
        assert workers_pids <= children()
        await pool.close()
        with pytest.raises(PoolClosed):
            await running
        assert not workers_pids & children()
        assert not any(alive(pid) for pid in workers_pids)
        assert pool.stats()["alive"] == 0
        with pytest.raises(PoolClosed):
            await pool.run(W + "echo", 1)

    asyncio.run(main())


def test_close_with_grace_lets_running_jobs_finish() -> None:
    async def main() -> None:
        pool = ProcessPool(1)
        await pool.start()
        job = asyncio.ensure_future(pool.run(W + "timed_sleep", 0.3))
        await wait_for(lambda: pool.stats()["busy"] == 1)
        await pool.close(grace=10)
        assert len(await job) == 3

    asyncio.run(main())


def test_workers_do_not_import_the_server(tmp_path: Path) -> None:
    # spawn re-imports the parent's __main__ in each child; a worker of `python server.py` must not load
    # Tornado and PyMongo. The control pool (import_main=True) shows the script would otherwise be imported.
    script = tmp_path / "server_like.py"
    script.write_text(
        textwrap.dedent(f"""
        import asyncio, json, sys
        sys.path.insert(0, {str(REPO)!r})
        import tornado.web, pymongo
        from processing.pool import ProcessPool

        async def main():
            for import_main in (False, True):
                async with ProcessPool(1, import_main=import_main) as pool:
                    print(json.dumps(await pool.run("tests.processing.workers:loaded_modules",
                                                    ["tornado", "pymongo"])))

        if __name__ == "__main__":
            asyncio.run(main())
    """)
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [
        '{"tornado":',
        "false,",
        '"pymongo":',
        "false}",
        '{"tornado":',
        "true,",
        '"pymongo":',
        "true}",
    ]


def test_analysis_runs_in_the_pool_with_progress(cad_files: CadFiles, tmp_path: Path) -> None:
    not_cad = tmp_path / "README.md"
    not_cad.write_text("# Not a CAD file\n")

    async def test(pool: ProcessPool) -> None:
        seen: list[tuple[int, int, str]] = []
        result = await pool.run(
            "processing.cad:analyze_file",
            str(cad_files.path("assembly.step")),
            "STEP",
            on_progress=lambda c, t, m: seen.append((c, t, m)),
            timeout=60,
        )
        assert result["bom_part_count"] == cad_files.expected["assembly.step"].part_count
        assert [c for c, _, _ in seen] == [0, 1, 2, 3, 4, 5]
        with pytest.raises(WorkerError) as raised:
            await pool.run("processing.cad:analyze_file", str(not_cad), "STEP", timeout=60)
        assert raised.value.remote_type == "processing.cad.CadFileError"

    with_pool(test, size=1, preload=("processing.cad",))


def test_a_job_past_the_memory_limit_fails_and_its_worker_is_replaced() -> None:
    async def test(pool: ProcessPool) -> None:
        first = await pool.run(W + "pid")
        with pytest.raises(WorkerError) as raised:
            await pool.run(W + "allocate", 1024)  # four times the worker's address space
        assert raised.value.remote_type == "MemoryError" and raised.value.out_of_memory
        await wait_for(lambda: pool.stats()["replaced"] == 1 and pool.stats()["idle"] == 1)
        assert not alive(first) and first not in pool.stats()["pids"]
        # The fresh worker is bound the same way and serves what fits.
        assert await pool.run(W + "allocate", 64) == 64 * 1024 * 1024
        with pytest.raises(WorkerError):
            await pool.run(W + "allocate", 1024)
        assert pool.stats()["failed"] == 2

    with_pool(test, size=1, memory_limit_mb=256)


def test_the_memory_limit_applies_to_the_worker_not_the_server() -> None:
    async def test(pool: ProcessPool) -> None:
        limits = await pool.run(W + "address_space_limit")
        assert limits == [256 * 1024 * 1024] * 2
        import resource

        assert resource.getrlimit(resource.RLIMIT_AS)[0] == resource.RLIM_INFINITY

    with_pool(test, size=1, memory_limit_mb=256)
