"""A fixed-size pool of spawned worker processes that survives crashed workers and streams job progress."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import importlib
import inspect
import itertools
import logging
import multiprocessing
import os
import pickle
import resource
import signal
import struct
import sys
import traceback
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

__all__ = [
    "JobCancelled",
    "JobTimeout",
    "PoolBusy",
    "PoolClosed",
    "PoolError",
    "ProcessPool",
    "WorkerCrashed",
    "WorkerError",
]

log = logging.getLogger("enginel.pool")

ProgressCallback = Callable[[int, int, str], Awaitable[None] | None]

MAX_PENDING_PROGRESS = 256
_MAX_TEXT = 10_000  # characters kept of a remote exception message
_MAX_TRACEBACK = 50_000
_READ_CHUNK = 1 << 20


class PoolError(Exception):
    """Base class of everything ``ProcessPool.run`` raises about the job rather than from it."""


class WorkerCrashed(PoolError):
    """The worker process died while running the job (segfault, ``os._exit``, OOM killer, ...)."""

    def __init__(self, message: str, *, pid: int | None = None, exitcode: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid
        self.exitcode = exitcode
        self.signal = _signal_name(-exitcode) if exitcode is not None and exitcode < 0 else None


class JobTimeout(PoolError):
    """The job ran longer than its timeout; its worker was killed and replaced."""


class JobCancelled(PoolError):
    """The job was cancelled with ``ProcessPool.cancel``; if it was running, its worker was killed."""


class PoolBusy(PoolError):
    """Every worker is busy and the waiting queue is full; retry later."""


class PoolClosed(PoolError):
    """The pool is closed (or closed while the job waited or ran)."""


class WorkerError(PoolError):
    """The worker function raised; carries the remote exception's type, message and traceback text."""

    def __init__(self, remote_type: str, remote_message: str, remote_traceback: str = "") -> None:
        super().__init__(f"{remote_type}: {remote_message}" if remote_message else remote_type)
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback

    @property
    def out_of_memory(self) -> bool:
        """The job ran out of memory (its worker's limit, see ``memory_limit_mb``); its worker was replaced."""
        return _out_of_memory(self.remote_type, self.remote_message)


def _out_of_memory(remote_type: str, message: str) -> bool:
    # Python's MemoryError, OpenCascade's Standard_OutOfMemory, or a C++ std::bad_alloc translated by the binding.
    return remote_type == "MemoryError" or "OutOfMemory" in remote_type or "bad_alloc" in message[:200]


# -- child side --------------------------------------------------------------------------------------


def _worker_main(
    jobs: Connection,
    results: Connection,
    preload: tuple[str, ...],
    max_bytes: int,
    parent_pid: int,
    memory_limit_mb: int = 0,
) -> None:
    """Entry point of a worker process: run jobs from ``jobs`` one at a time until the parent goes away, or until
    a job runs out of memory (the next job gets a fresh process)."""
    # Ctrl-C reaches the whole process group; the parent decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(parent_pid)
    if memory_limit_mb > 0:
        # Before the preload, so everything this process maps counts. A job past it gets MemoryError (or
        # std::bad_alloc inside OpenCascade) instead of pushing the host into swap and the OOM killer.
        limit = memory_limit_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    for name in preload:
        importlib.import_module(name)
    results.send_bytes(pickle.dumps(("ready", None, os.getpid())))
    while True:
        try:
            data = jobs.recv_bytes()
        except (EOFError, OSError):
            return  # the parent closed the pipe (pool.close) or died
        job_id, target, args, kwargs, with_progress = pickle.loads(data)

        def progress(current: int, total: int, message: str = "", _job: str = job_id) -> None:
            update = (int(current), int(total), str(message)[:1000])
            results.send_bytes(pickle.dumps(("progress", _job, update)))

        try:
            function = _resolve(target)
            if with_progress:
                kwargs = {**kwargs, "progress": progress}
            payload = pickle.dumps(("result", job_id, function(*args, **kwargs)), pickle.HIGHEST_PROTOCOL)
            if len(payload) > max_bytes:
                raise ValueError(f"result of {len(payload)} bytes exceeds the pool's limit of {max_bytes}")
        except BaseException as exc:  # noqa: B902 - SystemExit from a job must not end the worker either
            info = (_type_name(exc), str(exc)[:_MAX_TEXT], traceback.format_exc()[-_MAX_TRACEBACK:])
            payload = pickle.dumps(("error", job_id, info))
            if _out_of_memory(info[0], info[1]):
                # A heap that ran out mid-build may be left fragmented or inconsistent: report, then retire.
                results.send_bytes(payload)
                return
        results.send_bytes(payload)


def _die_with_parent(parent_pid: int) -> None:
    # Linux can kill the worker when the parent dies (even by SIGKILL), so no orphan keeps running a job.
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:
        os._exit(0)


def _resolve(target: str) -> Callable[..., Any]:
    module_name, _, attribute = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{target} is not callable")
    return obj


def _type_name(exc: BaseException) -> str:
    kind = type(exc)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def target_name(function: str | Callable[..., Any]) -> str:
    """Normalise a worker function to ``"module:qualname"``, the form sent to the worker."""
    if isinstance(function, str):
        if ":" in function:
            return function
        module_name, _, attribute = function.rpartition(".")
        if not module_name:
            raise ValueError(f"worker function {function!r} must be 'package.module:function'")
        return f"{module_name}:{attribute}"
    home: str | None = getattr(function, "__module__", None)
    qualname: str = getattr(function, "__qualname__", "")
    if not home or home == "__main__" or "<" in qualname:
        raise ValueError(
            f"worker function {function!r} must be a module-level function of an importable "
            f"module (not a lambda, a nested function or defined in __main__)"
        )
    return f"{home}:{qualname}"


# -- parent side -------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Job:
    job_id: str
    payload: bytes
    timeout: float | None
    progress: collections.deque[tuple[int, int, str]] = field(
        default_factory=lambda: collections.deque(maxlen=MAX_PENDING_PROGRESS)
    )
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)  # progress or outcome arrived
    done: asyncio.Event = field(default_factory=asyncio.Event)
    outcome: tuple[bool, Any] | None = None  # (True, value) or (False, exception)
    worker: _Worker | None = None
    kill_reason: PoolError | None = None  # why we killed its worker, reported instead of a crash
    timer: asyncio.TimerHandle | None = None

    def finish(self, ok: bool, value: Any) -> None:
        if self.outcome is None:
            self.outcome = (ok, value)
            if self.timer is not None:
                self.timer.cancel()
            self.wakeup.set()
            self.done.set()


@dataclass(eq=False)
class _Worker:
    number: int
    pid: int
    process: multiprocessing.process.BaseProcess
    jobs: Connection
    results: Connection
    state: str = "starting"  # starting -> idle <-> busy -> (retiring ->) dead
    job: _Job | None = None
    buffer: bytearray = field(default_factory=bytearray)
    exited: asyncio.Future[None] | None = None
    died_starting: bool = False

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.process.kill()


class ProcessPool:
    """Fixed-size pool of spawned worker processes, driven from one asyncio event loop.

    Why not ``concurrent.futures.ProcessPoolExecutor``: one segfaulting worker breaks the whole executor,
    a running job cannot be cancelled or timed out (its process cannot be killed), and there is no channel
    for progress. Here each worker is one ``spawn``-ed process with two pipes: jobs go down one, progress
    and the result come back on the other, which the event loop watches with ``add_reader`` (non-blocking
    reads and our own framing, so a half-written message never blocks the loop). The process sentinel
    tells the loop when a worker dies; its job fails with a typed error and a fresh worker takes its place.

    Bounds: ``size`` processes; at most ``max_queued`` jobs waiting for a worker (beyond that ``run``
    raises PoolBusy at once rather than queueing without limit: the durable job queue lives in MongoDB,
    this is only the hand-off); messages (arguments, results) up to ``max_message_bytes``; progress
    updates not yet delivered to a slow ``on_progress`` callback are capped, the oldest dropped first.

    Worker functions are named ``"package.module:function"`` (or passed as a module-level function,
    which is sent by name) and must live in a module importable in a fresh interpreter. With
    ``on_progress``, the function gets an extra keyword argument ``progress(current, total, message)``.
    """

    def __init__(
        self,
        size: int | None = None,
        *,
        max_queued: int = 256,
        max_message_bytes: int = 64 << 20,
        preload: tuple[str, ...] = (),
        import_main: bool = False,
        start_timeout: float = 60.0,
        memory_limit_mb: int = 0,
    ) -> None:
        """``preload``: modules every worker imports before its first job (e.g. ``("processing.cad",)`` so
        OpenCascade loads once per worker, not inside the first job's timeout). ``import_main``: let the
        spawned workers import the parent's ``__main__`` module, which multiprocessing does by default;
        off, so a worker of ``python server.py`` does not load Tornado, PyMongo and the whole server.
        ``memory_limit_mb``: each worker's address-space bound (RLIMIT_AS), 0 for none; a job that needs more
        raises WorkerError("MemoryError") and its worker is replaced.
        """
        self.size = size if size is not None else (os.cpu_count() or 1)
        if self.size < 1:
            raise ValueError("pool size must be at least 1")
        if max_queued < 0:
            raise ValueError("max_queued must be >= 0")
        self.max_queued = max_queued
        self.max_message_bytes = max_message_bytes
        self.preload = tuple(preload)
        self.import_main = import_main
        self.start_timeout = start_timeout
        if memory_limit_mb < 0:
            raise ValueError("memory_limit_mb must be >= 0")
        self.memory_limit_mb = memory_limit_mb
        self._context = multiprocessing.get_context("spawn")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._workers: list[_Worker] = []
        self._queue: collections.deque[_Job] = collections.deque()
        self._jobs: dict[str, _Job] = {}
        self._numbers = itertools.count(1)
        self._started = False
        self._closed = False
        self._closing: asyncio.Task[None] | None = None
        self._start_failures = 0
        self._counters = {"replaced": 0, "completed": 0, "failed": 0, "crashed": 0, "timed_out": 0, "cancelled": 0}

    # -- public API ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Spawn the workers and wait until each has imported its preload modules."""
        if self._closed:
            raise PoolClosed("pool is closed")
        if self._started:
            return
        self._started = True
        self._loop = asyncio.get_running_loop()
        for _ in range(self.size):
            self._spawn()
        deadline = self._loop.time() + self.start_timeout
        while any(w.state == "starting" for w in self._workers):
            if self._start_failures >= 3 or self._loop.time() > deadline:
                await self.close()
                limit = self.memory_limit_mb
                hint = f" (is their memory limit of {limit} MiB too low?)" if limit else ""
                raise PoolError("analysis workers failed to start" + hint)
            await asyncio.sleep(0.01)

    async def run(
        self,
        function: str | Callable[..., Any],
        *args: Any,
        job_id: str | None = None,
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run ``function(*args, **kwargs)`` in a worker and return its result.

        ``timeout`` counts from the moment a worker takes the job (waiting in the queue is not
        counted). Raises JobTimeout, JobCancelled, WorkerCrashed, WorkerError, PoolBusy or PoolClosed;
        ValueError for a duplicate ``job_id`` or an oversized message. Cancelling the awaiting task
        kills the worker running the job.
        """
        if self._closed:
            raise PoolClosed("pool is closed")
        if not self._started:
            await self.start()
        job_id = job_id or uuid.uuid4().hex
        if job_id in self._jobs:
            raise ValueError(f"job {job_id!r} is already queued or running")
        if timeout is not None and timeout <= 0:
            raise ValueError("timeout must be positive")
        payload = pickle.dumps(
            (job_id, target_name(function), args, kwargs, on_progress is not None), pickle.HIGHEST_PROTOCOL
        )
        if len(payload) > self.max_message_bytes:
            raise ValueError(f"job arguments of {len(payload)} bytes exceed {self.max_message_bytes}")
        if len(self._queue) >= self.max_queued and not self._idle_worker():
            raise PoolBusy(f"all {self.size} workers are busy and {len(self._queue)} jobs are waiting")
        job = _Job(job_id, payload, timeout)
        self._jobs[job_id] = job
        self._queue.append(job)
        self._dispatch()
        try:
            return await self._wait(job, on_progress)
        except asyncio.CancelledError:
            self._abandon(job, JobCancelled(f"job {job_id} was cancelled by its caller"))
            raise
        finally:
            self._jobs.pop(job_id, None)

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job: its ``run`` raises JobCancelled once any worker running it is
        dead (killed with SIGKILL: OpenCascade does not poll for cancellation). False if unknown or done."""
        job = self._jobs.get(job_id)
        if job is None or job.outcome is not None:
            return False
        self._abandon(job, JobCancelled(f"job {job_id} was cancelled"))
        return True

    def stats(self) -> dict[str, Any]:
        """Size, live and busy workers, queue length, worker pids and lifetime counters."""
        alive = [w for w in self._workers if w.state != "dead"]
        return {
            "size": self.size,
            "alive": sum(1 for w in alive if w.process.is_alive()),
            "busy": sum(1 for w in alive if w.state == "busy"),
            "idle": sum(1 for w in alive if w.state == "idle"),
            "starting": sum(1 for w in alive if w.state == "starting"),
            "queued": len(self._queue),
            "pids": [w.pid for w in alive],
            "closed": self._closed,
            **self._counters,
        }

    async def close(self, grace: float = 0.0) -> None:
        """Stop the pool: queued jobs fail with PoolClosed; running jobs get ``grace`` seconds to finish,
        then their workers are killed. Returns once every worker process has exited and been reaped."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close(grace))
        await asyncio.shield(self._closing)

    async def __aenter__(self) -> ProcessPool:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- jobs ----------------------------------------------------------------------------------------

    async def _wait(self, job: _Job, on_progress: ProgressCallback | None) -> Any:
        while True:
            while job.progress:
                current, total, message = job.progress.popleft()
                if on_progress is not None:
                    await self._deliver(on_progress, job.job_id, current, total, message)
            if job.outcome is not None and not job.progress:
                ok, value = job.outcome
                if ok:
                    return value
                raise value
            job.wakeup.clear()
            if not job.progress and job.outcome is None:
                await job.wakeup.wait()

    @staticmethod
    async def _deliver(callback: ProgressCallback, job_id: str, current: int, total: int, message: str) -> None:
        try:
            outcome = callback(current, total, message)
            if inspect.isawaitable(outcome):
                await outcome
        except Exception:  # a failing progress sink must not fail the analysis it reports on
            log.exception("progress callback of job %s failed", job_id)

    def _abandon(self, job: _Job, reason: PoolError) -> None:
        if job.outcome is not None:
            return
        if job.worker is None:
            with contextlib.suppress(ValueError):
                self._queue.remove(job)
            self._count_failure(reason)
            job.finish(False, reason)
        elif job.kill_reason is None:
            job.kill_reason = reason
            job.worker.kill()  # the exit handler reports the reason once the process is reaped

    def _expire(self, job: _Job) -> None:
        if job.outcome is None and job.worker is not None:
            self._abandon(
                job,
                JobTimeout(
                    f"job {job.job_id} exceeded its timeout of {job.timeout}s (worker pid {job.worker.pid} killed)"
                ),
            )

    def _idle_worker(self) -> _Worker | None:
        return next((w for w in self._workers if w.state == "idle"), None)

    def _dispatch(self) -> None:
        while self._queue:
            worker = self._idle_worker()
            if worker is None:
                return
            job = self._queue.popleft()
            try:
                worker.jobs.send_bytes(job.payload)
            except OSError:
                # The worker died between jobs; its exit handler replaces it. The job never started.
                worker.state = "dead"
                self._queue.appendleft(job)
                continue
            worker.state, worker.job, job.worker = "busy", job, worker
            if job.timeout is not None:
                assert self._loop is not None
                job.timer = self._loop.call_later(job.timeout, self._expire, job)

    def _count_failure(self, error: BaseException) -> None:
        key = {JobTimeout: "timed_out", JobCancelled: "cancelled", WorkerCrashed: "crashed"}.get(type(error))
        self._counters[key or "failed"] += 1

    # -- workers -------------------------------------------------------------------------------------

    def _spawn(self) -> None:
        assert self._loop is not None
        jobs_reader, jobs_writer = self._context.Pipe(duplex=False)
        results_reader, results_writer = self._context.Pipe(duplex=False)
        number = next(self._numbers)
        process = self._context.Process(
            target=_worker_main,
            name=f"enginel-worker-{number}",
            daemon=True,
            args=(
                jobs_reader,
                results_writer,
                self.preload,
                self.max_message_bytes,
                os.getpid(),
                self.memory_limit_mb,
            ),
        )
        with _hidden_main(not self.import_main):
            process.start()
        jobs_reader.close()
        results_writer.close()
        assert process.pid is not None
        worker = _Worker(number, process.pid, process, jobs_writer, results_reader, exited=self._loop.create_future())
        os.set_blocking(results_reader.fileno(), False)
        self._loop.add_reader(results_reader.fileno(), self._on_readable, worker)
        self._loop.add_reader(process.sentinel, self._on_exit, worker)
        self._workers.append(worker)

    def _on_readable(self, worker: _Worker) -> None:
        if self._read_available(worker) and worker.state != "dead":
            # EOF: the process is exiting; the sentinel handler takes it from here.
            with contextlib.suppress(Exception):
                assert self._loop is not None
                self._loop.remove_reader(worker.results.fileno())

    def _read_available(self, worker: _Worker, max_chunks: int | None = 16) -> bool:
        """Read what the pipe holds without blocking and handle whole messages; True at end of file.

        At most ``max_chunks`` reads per call, so a worker that writes without pause cannot hold the event
        loop; the loop calls again while data remains. Draining a dead worker (None) reads to the end.
        """
        eof = False
        for _ in itertools.count() if max_chunks is None else range(max_chunks):
            try:
                chunk = os.read(worker.results.fileno(), _READ_CHUNK)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                eof = True
                break
            if not chunk:
                eof = True
                break
            worker.buffer += chunk
            if not self._parse(worker):
                break
        return eof

    def _parse(self, worker: _Worker) -> bool:
        """Handle each complete frame (multiprocessing.Connection framing); False on a protocol breach."""
        buffer = worker.buffer
        while len(buffer) >= 4:
            (size,), header = struct.unpack("!i", buffer[:4]), 4
            if size == -1:
                if len(buffer) < 12:
                    return True
                (size,), header = struct.unpack("!Q", buffer[4:12]), 12
            if size < 0 or size > self.max_message_bytes:
                self._breach(worker, f"message of {size} bytes exceeds the limit of {self.max_message_bytes}")
                return False
            if len(buffer) < header + size:
                return True
            payload = bytes(buffer[header : header + size])
            del buffer[: header + size]
            try:
                message = pickle.loads(payload)
                kind, job_id, body = message
            except Exception as exc:
                self._breach(worker, f"unreadable message from worker: {exc}")
                return False
            self._on_message(worker, kind, job_id, body)
        return True

    def _breach(self, worker: _Worker, reason: str) -> None:
        log.error("worker pid %s: %s; killing it", worker.pid, reason)
        worker.buffer.clear()
        if worker.job is not None and worker.job.kill_reason is None:
            worker.job.kill_reason = WorkerError("ProtocolError", reason)
        worker.kill()

    def _on_message(self, worker: _Worker, kind: str, job_id: str | None, body: Any) -> None:
        if kind == "ready":
            if worker.state == "starting":
                worker.state = "idle"
                self._start_failures = 0
                self._dispatch()
            return
        job = worker.job
        if job is None or job.job_id != job_id or job.outcome is not None:
            return  # late output of a job already settled (e.g. killed for a timeout)
        if kind == "progress":
            job.progress.append(body)
            job.wakeup.set()
            return
        if job.kill_reason is not None:
            return  # we already decided to kill it; report that, not a result racing the kill
        worker.job, job.worker = None, None
        if worker.state == "busy":
            # A worker that ran out of memory exits after reporting it; its replacement takes the next job.
            out_of_memory = kind == "error" and _out_of_memory(body[0], body[1])
            worker.state = "retiring" if out_of_memory else "idle"
        if kind == "result":
            self._counters["completed"] += 1
            job.finish(True, body)
        else:
            self._counters["failed"] += 1
            job.finish(False, WorkerError(*body))
        self._dispatch()

    def _on_exit(self, worker: _Worker, attempt: int = 0) -> None:
        """A worker process ended: fail its job, then replace it (backing off while workers cannot start)."""
        assert self._loop is not None
        if attempt == 0:
            self._loop.remove_reader(worker.process.sentinel)
            with contextlib.suppress(Exception):
                self._loop.remove_reader(worker.results.fileno())
            worker.died_starting = worker.state == "starting"
            worker.state = "dead"  # first, so nothing is dispatched to it while draining
            self._read_available(worker, None)  # a result written just before the exit still counts
        # The sentinel can fire a moment before the kernel makes the exit status available.
        exitcode = worker.process.exitcode
        if exitcode is None and attempt < 100:
            self._loop.call_later(0.01, self._on_exit, worker, attempt + 1)
            return
        if exitcode is None:
            worker.process.join(1.0)
            exitcode = worker.process.exitcode
        with contextlib.suppress(Exception):
            worker.process.close()
        with contextlib.suppress(Exception):
            worker.jobs.close()
        with contextlib.suppress(Exception):
            worker.results.close()
        self._workers.remove(worker)
        if worker.exited is not None and not worker.exited.done():
            worker.exited.set_result(None)

        job, worker.job = worker.job, None
        if job is not None and job.outcome is None:
            error = job.kill_reason or WorkerCrashed(
                f"worker process {worker.pid} {_describe_exit(exitcode)} while running job {job.job_id}",
                pid=worker.pid,
                exitcode=exitcode,
            )
            if job.kill_reason is None:
                log.error("%s", error)
            self._count_failure(error)
            job.finish(False, error)
        if self._closed:
            return
        self._counters["replaced"] += 1
        if worker.died_starting:
            self._start_failures += 1
            log.error("worker pid %s %s before it was ready", worker.pid, _describe_exit(exitcode))
            if self._start_failures >= 3 and not any(w.state in ("idle", "busy") for w in self._workers):
                # Workers cannot start at all (broken install, bad preload): fail the waiting jobs.
                while self._queue:
                    waiting = self._queue.popleft()
                    self._count_failure(WorkerCrashed(""))
                    waiting.finish(
                        False,
                        WorkerCrashed(
                            f"analysis workers fail to start ({_describe_exit(exitcode)})", exitcode=exitcode
                        ),
                    )
            self._loop.call_later(min(0.05 * 2**self._start_failures, 5.0), self._respawn)
        else:
            self._spawn()
        self._dispatch()

    def _respawn(self) -> None:
        if not self._closed:
            self._spawn()

    async def _close(self, grace: float) -> None:
        self._closed = True
        while self._queue:
            job = self._queue.popleft()
            self._count_failure(PoolClosed(""))
            job.finish(False, PoolClosed("pool closed before the job started"))
        running = [w.job for w in self._workers if w.job is not None]
        if grace > 0 and running:
            waiters = [asyncio.ensure_future(job.done.wait()) for job in running]
            await asyncio.wait(waiters, timeout=grace)
            for waiter in waiters:
                waiter.cancel()
        exits = [w.exited for w in self._workers if w.exited is not None]
        for worker in list(self._workers):
            if worker.job is not None and worker.job.outcome is None:
                worker.job.kill_reason = worker.job.kill_reason or PoolClosed("pool closed while the job ran")
                worker.kill()
            else:
                with contextlib.suppress(Exception):
                    worker.jobs.close()  # end of file: the idle worker leaves its loop and exits
        if exits:
            _, pending = await asyncio.wait(exits, timeout=5.0)
            if pending:
                for worker in list(self._workers):
                    worker.kill()
                await asyncio.wait(pending, timeout=5.0)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "vanished"
    if exitcode < 0:
        return f"was killed by {_signal_name(-exitcode)} (exit code {exitcode})"
    return f"exited with code {exitcode}"


@contextlib.contextmanager
def _hidden_main(hide: bool) -> Iterator[None]:
    """While a worker is spawned, hide ``__main__``'s file and spec from multiprocessing.

    spawn re-imports the parent's main module in every child (as ``__mp_main__``) so that functions
    defined there can be unpickled; worker functions here are sent by module name, so that import is pure
    cost. The change lasts only for the synchronous ``Process.start()`` call on the event loop thread.
    """
    main = sys.modules.get("__main__")
    if not hide or main is None:
        yield
        return
    names = ("__file__", "__spec__")
    saved: dict[str, Any] = {name: main.__dict__[name] for name in names if name in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__dict__["__spec__"] = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)
