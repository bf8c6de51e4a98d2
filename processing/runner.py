"""The durable job runner: claims analysis jobs from MongoDB under a lease, runs them in the pool, records outcomes."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import socket
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.bom import BomNodes
from models.collections import DESIGNS
from models.database import Db
from models.designs import Designs
from models.errors import ServiceUnavailable
from models.events import Publisher
from models.jobs import (
    GEOMETRY_EXTRACTION_FAILED,
    INVALID_FILE_FORMAT,
    JobQueue,
    JobStatus,
    JobType,
    announce_job,
    progress_doc,
    status_event,
)
from models.revisions import Revisions
from models.storage import ContentNotFound, Storage
from models.viewables import Viewables, viewable_record
from processing.pool import JobCancelled, JobTimeout, PoolBusy, PoolClosed, ProcessPool, WorkerCrashed, WorkerError

log = logging.getLogger("enginel.runner")

PROGRESS_INTERVAL = 0.2  # at most five progress writes (and events) per second per job
STOP_TIMEOUT = 15.0
CANCEL_WAIT = 10.0
# Exceptions from processing.cad that describe the file, not the worker: no retry will change them.
_FILE_ERRORS = {
    "processing.cad.CadError": GEOMETRY_EXTRACTION_FAILED,
    "processing.cad.CadFileError": GEOMETRY_EXTRACTION_FAILED,
    "processing.cad.UnsupportedFormat": INVALID_FILE_FORMAT,
}


@dataclass(frozen=True)
class WorkerCall:
    """What a worker process runs for one attempt: a "module:function" and plain, picklable arguments."""

    target: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    progress: bool = True  # the function accepts progress(current, total, message) as a keyword
    outputs: tuple[str, ...] = ()  # files the worker writes; the runner stores what it needs, then removes them


MakeCall = Callable[[dict[str, Any], str, dict[str, Any]], WorkerCall]


@dataclass(frozen=True)
class ViewableOptions:
    """How the viewer's GLB is meshed (ENGINEL_VIEWABLE_* settings)."""

    max_triangles: int = 500_000
    relative_deflection: float = 0.001


@dataclass(frozen=True)
class RevisionOptions:
    """How versions are diffed and markups carried (ENGINEL_DIFF_* and ENGINEL_MARKUP_* settings)."""

    part_seconds: float = 60.0
    tolerance_mm: float = 0.01
    orphan_distance_mm: float = 5.0


def revision_call(
    job: dict[str, Any],
    design: dict[str, Any],
    path: str,
    other: dict[str, Any],
    other_path: str,
    markups: list[dict[str, Any]],
    options: RevisionOptions,
    viewable: ViewableOptions,
) -> WorkerCall:
    """A job over two versions. GEOMETRIC_DIFF: from the job's design to the other, writing the diff GLB.
    MARKUP_CARRY: the other (previous) version's markups onto the job's design."""
    names = {
        "old_name": Path(design.get("filename") or "").stem or None,
        "new_name": Path(other.get("filename") or "").stem or None,
    }
    if job.get("job_type") == JobType.GEOMETRIC_DIFF.value:
        glb = os.path.join(
            tempfile.gettempdir(), f"enginel-diff-{job['_id']}-{job.get('task_id') or uuid.uuid4().hex}.glb"
        )
        return WorkerCall(
            "processing.geodiff:geometric_diff",
            (path, design["file_format"], other_path, other["file_format"], glb),
            {
                **names,
                "part_seconds": options.part_seconds,
                "max_triangles": viewable.max_triangles,
                "relative_deflection": viewable.relative_deflection,
            },
            outputs=(glb,),
        )
    snap = ((other.get("viewable") or {}).get("linear_deflection_mm") or 0.0) * 2 or None
    return WorkerCall(
        "processing.geodiff:carry_markups",
        (other_path, other["file_format"], path, design["file_format"], markups),
        {
            "old_name": names["new_name"],
            "new_name": names["old_name"],
            "tolerance_mm": options.tolerance_mm,
            "orphan_distance_mm": options.orphan_distance_mm,
            "snap_distance_mm": snap,
        },
    )


REVISION_JOBS = frozenset({JobType.GEOMETRIC_DIFF.value, JobType.MARKUP_CARRY.value})


def analysis_call(
    job: dict[str, Any], path: str, design: dict[str, Any], options: ViewableOptions = ViewableOptions()
) -> WorkerCall:
    """The production call: OpenCascade analysis of the stored file, named after the uploaded file, writing the
    viewer GLB from the same parse; a TESSELLATION job writes only the GLB."""
    kwargs: dict[str, Any] = {
        "display_name": Path(design.get("filename") or "").stem or None,
        "max_triangles": options.max_triangles,
        "relative_deflection": options.relative_deflection,
    }
    glb = os.path.join(tempfile.gettempdir(), f"enginel-{job['_id']}-{job.get('task_id') or uuid.uuid4().hex}.glb")
    if job.get("job_type") == JobType.TESSELLATION.value:
        return WorkerCall(
            "processing.cad:tessellate_to_glb", (path, design["file_format"], glb), kwargs, outputs=(glb,)
        )
    return WorkerCall(
        "processing.cad:analyze_file", (path, design["file_format"]), {**kwargs, "glb_path": glb}, outputs=(glb,)
    )


@dataclass(eq=False)
class _Attempt:
    job: dict[str, Any]
    task_id: str
    stop_reason: str | None = None  # cancel | shutdown | lost
    done: asyncio.Event = field(default_factory=asyncio.Event)
    latest: dict[str, Any] | None = None  # progress not written yet
    written_at: float = -math.inf
    flush: asyncio.Task[None] | None = None
    finished: bool = False

    @property
    def job_id(self) -> str:
        return str(self.job["_id"])


class JobRunner:
    """One per server process that runs analysis workers.

    A claim loop takes the oldest PENDING job whenever a pool slot is free (find_one_and_update, so exactly one
    process gets it) with a lease; a lease loop renews the leases of the jobs running here, watches their
    cancel_requested flag, and requeues jobs of any process whose lease expired (a killed node loses no job).
    Worker crashes and timeouts are retried up to `max_retries`; a file OpenCascade cannot read fails at once.
    """

    def __init__(
        self,
        db: Db,
        pool: ProcessPool,
        storage: Storage,
        designs: Designs,
        *,
        bom: BomNodes,
        publisher: Publisher,
        timeout: float,
        max_retries: int,
        lease_seconds: float,
        poll_interval: float,
        concurrency: int | None = None,
        name: str | None = None,
        viewables: Viewables,
        viewable_options: ViewableOptions = ViewableOptions(),
        revisions: Revisions | None = None,
        revision_options: RevisionOptions = RevisionOptions(),
    ) -> None:
        self.db = db
        self.pool = pool
        self.storage = storage
        self.designs = designs
        self.bom = bom
        self.publisher = publisher
        self.timeout = timeout
        self.max_retries = max_retries
        self.lease_seconds = lease_seconds
        self.poll_interval = poll_interval
        self.concurrency = concurrency or pool.size
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.queue = JobQueue(db, self.name, lease_seconds)
        self.viewables = viewables
        # Tests swap this for crashing or sleeping functions; it decides what a worker runs for each attempt.
        self.make_call: MakeCall = functools.partial(analysis_call, options=viewable_options)
        self.revisions = revisions
        self.revision_options = revision_options
        self.viewable_options = viewable_options
        self._attempts: dict[str, _Attempt] = {}  # task id -> attempt running here
        self._tasks: set[asyncio.Task[None]] = set()
        self._claimer: asyncio.Task[None] | None = None
        self._leaser: asyncio.Task[None] | None = None
        self._slots = asyncio.Semaphore(self.concurrency)
        self._wake = asyncio.Event()
        self._stopping = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._claimer is not None:
            return
        self._stopping = False
        self._slots = asyncio.Semaphore(self.concurrency)
        self._wake = asyncio.Event()
        self._leaser = asyncio.create_task(self._lease_loop(), name="enginel-job-leases")
        self._claimer = asyncio.create_task(self._claim_loop(), name="enginel-job-claims")
        log.info("job runner %s started (%d slots, lease %gs)", self.name, self.concurrency, self.lease_seconds)

    async def stop(self) -> None:
        """Stop claiming; requeue the running jobs (their workers are killed: another process may take them
        at once, not after a lease expires). Call before the pool closes."""
        if self._claimer is None:
            return
        self._stopping = True
        claimer, self._claimer = self._claimer, None
        claimer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await claimer
        for attempt in list(self._attempts.values()):
            self._stop_attempt(attempt, "shutdown")
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=STOP_TIMEOUT)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        leaser, self._leaser = self._leaser, None
        if leaser is not None:
            leaser.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await leaser
        try:
            # A claim interrupted by the cancellation above has no attempt to requeue it.
            released = await self.queue.release_all("Requeued: the server running it stopped")
            if released:
                log.info("requeued %d job(s) on shutdown", released)
        except Exception:
            log.exception("could not requeue this process's jobs; their leases will expire")
        log.info("job runner %s stopped", self.name)

    def wake(self) -> None:
        """Look for pending work now rather than after the poll interval."""
        self._wake.set()

    async def cancel_local(self, job_id: str) -> bool:
        """Stop a job if it runs in this process (its worker is killed); True once it is settled here."""
        attempts = [a for a in self._attempts.values() if a.job_id == job_id]
        if not attempts:
            return False
        for attempt in attempts:
            self._stop_attempt(attempt, "cancel")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(a.done.wait() for a in attempts)), CANCEL_WAIT)
        return True

    def _stop_attempt(self, attempt: _Attempt, reason: str) -> None:
        if attempt.stop_reason is None and not attempt.finished:
            attempt.stop_reason = reason
            # Before the pool has it, _execute sees stop_reason and never starts it.
            self.pool.cancel(attempt.task_id)

    # ------------------------------------------------------------------ loops

    async def _idle(self) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self.poll_interval)
        self._wake.clear()

    async def _claim_loop(self) -> None:
        while not self._stopping:
            if self.storage.refusal is not None:
                # This process's file store is not the deployment's (models/cluster.py): its workers would find
                # no file, so the jobs are left to processes that can read them.
                await self._idle()
                continue
            await self._slots.acquire()
            try:
                job = await self.queue.claim(self.max_retries)
            except asyncio.CancelledError:
                self._slots.release()
                raise
            except Exception:
                log.exception("claiming a job failed; retrying")
                self._slots.release()
                await asyncio.sleep(self.poll_interval)
                continue
            if job is None:
                self._slots.release()
                await self._idle()
                continue
            attempt = _Attempt(job, job["task_id"])
            self._attempts[attempt.task_id] = attempt
            task = asyncio.create_task(self._run(attempt), name=f"enginel-job-{attempt.job_id}")
            self._tasks.add(task)
            task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()

    async def _lease_loop(self) -> None:
        interval = max(0.2, self.lease_seconds / 3)
        while True:
            try:
                await self._renew_all()
                await self._reclaim_expired()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("lease renewal failed; retrying")
            await asyncio.sleep(interval)

    async def _renew_all(self) -> None:
        for attempt in list(self._attempts.values()):
            if attempt.finished or attempt.stop_reason is not None:
                continue
            state = await self.queue.renew(attempt.job_id, attempt.task_id)
            if state is None:
                # Requeued after our lease lapsed, or force-cancelled: someone else decides now.
                log.warning("job %s is no longer ours; stopping its worker", attempt.job_id)
                self._stop_attempt(attempt, "lost")
            elif state.get("cancel_requested"):
                self._stop_attempt(attempt, "cancel")

    async def _reclaim_expired(self) -> None:
        for job in await self.queue.expired():
            if job.get("task_id") in self._attempts:
                continue  # ours and alive: the next renewal catches up
            updated = await self.queue.reclaim(job, self.max_retries)
            if updated is None:
                continue  # another process reclaimed it first
            log.warning("job %s: lease of %s expired; now %s", job["_id"], job.get("worker"), updated["status"])
            if updated["status"] == JobStatus.FAILURE.value and _decides_design(updated):
                await self.designs.mark_failed(updated["design_id"], updated["error_message"])
            else:
                self.wake()
            await announce_job(self.publisher, updated, "job.status", status_event(updated))

    # ------------------------------------------------------------------ one attempt

    async def _run(self, attempt: _Attempt) -> None:
        try:
            await self._execute(attempt)
        except Exception:
            log.exception("job %s: the runner failed", attempt.job_id)
            with contextlib.suppress(Exception):
                await self._fail(attempt, GEOMETRY_EXTRACTION_FAILED, "Internal error while running the analysis.")
        finally:
            attempt.finished = True
            if attempt.flush is not None:
                attempt.flush.cancel()
            self._attempts.pop(attempt.task_id, None)
            attempt.done.set()

    async def _execute(self, attempt: _Attempt) -> None:
        """Run one attempt in the pool and record its outcome; every pool error maps to a retry, requeue or failure."""
        job = attempt.job
        await announce_job(self.publisher, job, "job.status", status_event(job))
        design = await self.db[DESIGNS].find_one({"_id": job["design_id"]})
        if design is None:
            await self._cancelled(attempt, "The design was deleted.")
            return
        if job.get("cancel_requested"):
            await self._cancelled(attempt, "Analysis cancelled on request.")
            return
        other: dict[str, Any] | None = None
        if job.get("job_type") in REVISION_JOBS:
            other = await self.db[DESIGNS].find_one({"_id": job.get("other_design_id")})
            if other is None or self.revisions is None:
                await self._cancelled(attempt, "The other version was deleted.")
                return
        call: WorkerCall | None = None
        try:
            async with contextlib.AsyncExitStack() as files:
                path = await files.enter_async_context(self.storage.local_path(design["content_sha256"]))
                if attempt.stop_reason is not None:
                    raise JobCancelled("stopped before it started")
                if other is None:
                    call = self.make_call(job, str(path), design)
                else:
                    assert self.revisions is not None
                    other_path = await files.enter_async_context(self.storage.local_path(other["content_sha256"]))
                    markups = await self.revisions.carry_input(job)
                    call = revision_call(
                        job,
                        design,
                        str(path),
                        other,
                        str(other_path),
                        markups,
                        self.revision_options,
                        self.viewable_options,
                    )
                on_progress = functools.partial(self._on_progress, attempt) if call.progress else None
                result = await self.pool.run(
                    call.target,
                    *call.args,
                    job_id=attempt.task_id,
                    on_progress=on_progress,
                    timeout=self.timeout,
                    **call.kwargs,
                )
        except ContentNotFound:
            await self._fail(attempt, GEOMETRY_EXTRACTION_FAILED, "The stored CAD file is missing.")
        except ServiceUnavailable:
            # The file store was refused after this claim (models/cluster.py): another process can run it.
            await self._requeue(attempt, "Requeued: this process's file store is not the deployment's")
        except JobCancelled:
            await self._stopped(attempt)
        except (PoolClosed, PoolBusy) as exc:
            await self._requeue(attempt, f"Requeued: {exc}")
        except (WorkerCrashed, JobTimeout) as exc:
            await self._retry_or_fail(attempt, exc)
        except WorkerError as exc:
            code = _FILE_ERRORS.get(exc.remote_type)
            if exc.out_of_memory:
                # The worker hit its address-space bound; the same file would hit it again, so no retry.
                await self._fail(attempt, GEOMETRY_EXTRACTION_FAILED, self._memory_message())
            elif code is not None:
                await self._fail(attempt, code, f"Could not read the CAD file: {exc.remote_message}")
            else:
                log.error(
                    "job %s: the analysis raised %s: %s\n%s",
                    attempt.job_id,
                    exc.remote_type,
                    exc.remote_message,
                    exc.remote_traceback,
                )
                await self._fail(
                    attempt,
                    GEOMETRY_EXTRACTION_FAILED,
                    f"The analysis failed unexpectedly ({exc.remote_type.rsplit('.', 1)[-1]}: "
                    f"{exc.remote_message[:300]}).",
                )
        else:
            await self._succeed(attempt, result)
        finally:
            for output in call.outputs if call is not None else ():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(output)

    async def _succeed(self, attempt: _Attempt, result: Any) -> None:
        """Record a finished attempt (while its output files still exist)."""
        job = attempt.job
        if job.get("job_type") == JobType.TESSELLATION.value:
            await self._succeed_viewable(attempt, result)
            return
        if job.get("job_type") == JobType.GEOMETRIC_DIFF.value:
            await self._succeed_diff(attempt, result)
            return
        if job.get("job_type") == JobType.MARKUP_CARRY.value:
            await self._succeed_carry(attempt, result)
            return
        if not isinstance(result, dict) or not isinstance(result.get("geometry"), dict):
            await self._fail(attempt, GEOMETRY_EXTRACTION_FAILED, "The analysis returned no result.")
            return
        # The design as it is now: its classification or material may have changed during the analysis.
        design = await self.db[DESIGNS].find_one({"_id": job["design_id"]})
        if design is None:
            await self._cancelled(attempt, "The design was deleted.")
            return
        # A viewer model that could not be made or stored is made again on first request, by its own job.
        viewable = await self._store_glb(attempt, result.get("glb"))
        result = {**result, "glb": {k: v for k, v in (result.get("glb") or {}).items() if k != "path"} or None}
        # Design first, job last: if this process dies in between, the job is rerun and both writes repeat.
        saved = await self.bom.replace_from_analysis(design, result.get("bom") or [])
        applied = await self.designs.apply_analysis(design["_id"], result, viewable)
        if applied is None and viewable is not None:
            await self.designs.release_content(viewable["sha256"])
        summary = summarize(result, saved)
        summary["viewable"] = viewable and {"bytes": viewable["bytes"], "triangles": viewable["triangles"]}
        done = await self.queue.succeed(job, attempt.task_id, summary)
        if done is not None:
            log.info("job %s: SUCCESS in %ss", attempt.job_id, done.get("duration_seconds"))
            await announce_job(self.publisher, done, "job.progress", done["progress"])
            await announce_job(self.publisher, done, "job.status", status_event(done))
            if applied is not None and self.revisions is not None:
                await self._offer_markups(applied)

    async def _offer_markups(self, design: dict[str, Any]) -> None:
        """A new version is analysed: the previous version's open markups are re-anchored on it by a job."""
        assert self.revisions is not None
        try:
            if await self.revisions.analysed(design) is not None:
                self.wake()
        except Exception:
            log.exception("design %s: could not offer the previous version's markups", design["_id"])

    async def _succeed_diff(self, attempt: _Attempt, result: Any) -> None:
        """Store the diff GLB the way a viewer GLB is stored, then the per-part figures on the pair's record."""
        job = attempt.job
        assert self.revisions is not None
        if not isinstance(result, dict) or not isinstance(result.get("glb"), dict):
            await self._fail(attempt, GEOMETRY_EXTRACTION_FAILED, "The geometric diff returned no model.")
            return
        glb = await self._store_glb(attempt, result["glb"])
        if glb is None:
            await self._fail(attempt, GEOMETRY_EXTRACTION_FAILED, "The diff model could not be stored.")
            return
        figures = {k: v for k, v in result.items() if k != "glb"}
        if not await self.revisions.attach_diff(job, glb, figures):
            await self.designs.release_content(glb["sha256"])
            await self._cancelled(attempt, "A version of the pair was deleted.")
            return
        done = await self.queue.succeed(job, attempt.task_id, {**result["totals"], "glb_bytes": glb["bytes"]})
        if done is not None:
            log.info("job %s: diff stored in %ss", attempt.job_id, done.get("duration_seconds"))
            await announce_job(self.publisher, done, "job.progress", done["progress"])
            await announce_job(self.publisher, done, "job.status", status_event(done))

    async def _succeed_carry(self, attempt: _Attempt, result: Any) -> None:
        job = attempt.job
        assert self.revisions is not None
        if not isinstance(result, list):
            await self._fail(attempt, GEOMETRY_EXTRACTION_FAILED, "The markup carry returned no positions.")
            return
        if not await self.revisions.attach_carry(job, result):
            await self._cancelled(attempt, "The offer was replaced or its version deleted.")
            return
        summary = {
            "markups": len(result),
            "moved": sum(1 for r in result if r.get("moved")),
            "orphaned": sum(1 for r in result if r.get("orphaned")),
        }
        done = await self.queue.succeed(job, attempt.task_id, summary)
        if done is not None:
            await announce_job(self.publisher, done, "job.progress", done["progress"])
            await announce_job(self.publisher, done, "job.status", status_event(done))

    async def _succeed_viewable(self, attempt: _Attempt, result: Any) -> None:
        job = attempt.job
        if not isinstance(result, dict) or "path" not in result:
            await self._fail(attempt, GEOMETRY_EXTRACTION_FAILED, "The tessellation returned no model.")
            return
        viewable = await self._store_glb(attempt, result)
        if viewable is None:
            await self._fail(attempt, GEOMETRY_EXTRACTION_FAILED, "The viewer model could not be stored.")
            return
        if not await self.viewables.attach(job["design_id"], viewable):
            await self.designs.release_content(viewable["sha256"])
            await self._cancelled(attempt, "The design was deleted.")
            return
        summary = {k: v for k, v in viewable.items() if k not in ("sha256", "generated_at")}
        done = await self.queue.succeed(job, attempt.task_id, summary)
        if done is not None:
            log.info("job %s: viewable stored in %ss", attempt.job_id, done.get("duration_seconds"))
            await announce_job(self.publisher, done, "job.progress", done["progress"])
            await announce_job(self.publisher, done, "job.status", status_event(done))

    async def _store_glb(self, attempt: _Attempt, glb: Any) -> dict[str, Any] | None:
        """Move the worker's GLB file into content-addressed storage; None (logged) when there is none."""
        if not isinstance(glb, dict) or not glb.get("path"):
            if isinstance(glb, dict) and glb.get("error"):
                log.warning("job %s: no viewer model: %s", attempt.job_id, glb["error"])
            return None
        try:
            contents = self.designs.contents  # the GLB is committed holding a reference, like an upload
            async with await contents.writer() as writer:
                with open(glb["path"], "rb") as source:
                    while chunk := await asyncio.to_thread(source.read, 1 << 20):
                        await writer.write(chunk)
                stored = await contents.commit(writer)
        except Exception:
            log.exception("job %s: could not store the viewer model", attempt.job_id)
            return None
        return viewable_record(glb, stored.sha256, stored.size)

    async def _fail(self, attempt: _Attempt, code: str, message: str) -> None:
        # Job first: only the attempt that still owns the job may fail its design.
        done = await self.queue.fail(attempt.job, attempt.task_id, code, message)
        if done is not None:
            log.info("job %s: FAILURE (%s) %s", attempt.job_id, code, message)
            if _decides_design(done):
                await self.designs.mark_failed(done["design_id"], message)
            await announce_job(self.publisher, done, "job.status", status_event(done))

    async def _cancelled(self, attempt: _Attempt, message: str) -> None:
        done = await self.queue.cancelled(attempt.job, attempt.task_id, message)
        if done is not None:
            log.info("job %s: CANCELLED (%s)", attempt.job_id, message)
            if _decides_design(done):
                await self.designs.mark_failed(done["design_id"], "Analysis cancelled.")
            await announce_job(self.publisher, done, "job.status", status_event(done))

    async def _requeue(self, attempt: _Attempt, reason: str) -> None:
        done = await self.queue.requeue(attempt.job, attempt.task_id, reason)
        if done is not None:
            log.info("job %s: %s", attempt.job_id, reason)
            await announce_job(self.publisher, done, "job.status", status_event(done))

    async def _stopped(self, attempt: _Attempt) -> None:
        reason = attempt.stop_reason or "cancel"
        if reason == "shutdown":
            await self._requeue(attempt, "Requeued: the server running it is shutting down")
        elif reason == "cancel":
            await self._cancelled(attempt, "Analysis cancelled on request.")
        # "lost": the job belongs to whoever requeued or cancelled it; nothing to write.

    async def _retry_or_fail(self, attempt: _Attempt, exc: WorkerCrashed | JobTimeout) -> None:
        what = self._describe(exc)
        attempts = int(attempt.job.get("retry_count", 0)) + 1
        log.warning("job %s attempt %d: %s (%s)", attempt.job_id, attempts, what, exc)
        if attempts <= self.max_retries:
            done = await self.queue.retry(attempt.job, attempt.task_id, what)
            if done is not None:
                self.wake()
                await announce_job(self.publisher, done, "job.status", status_event(done))
            return
        await self._fail(attempt, GEOMETRY_EXTRACTION_FAILED, f"{what} (gave up after {attempts} attempts).")

    def _memory_message(self) -> str:
        limit = self.pool.memory_limit_mb
        bound = f"its limit of {limit} MiB (ENGINEL_WORKER_MEMORY_MB)" if limit else "the memory available"
        return f"The analysis needed more memory than {bound} allows a worker; the file is too large or too complex."

    def _describe(self, exc: WorkerCrashed | JobTimeout) -> str:
        # Stable wording (no pids or ids), so failures/ can group identical causes.
        if isinstance(exc, JobTimeout):
            return f"Geometry extraction timed out after {self.timeout:g} s"
        if exc.signal:
            how = f"killed by {exc.signal}"
            if exc.signal == "SIGKILL":
                how += ", possibly by the out-of-memory killer"
        elif exc.exitcode is not None:
            how = f"exited with code {exc.exitcode}"
        else:
            how = "vanished"
        return f"The analysis worker crashed ({how})"

    # ------------------------------------------------------------------ progress

    async def _on_progress(self, attempt: _Attempt, current: int, total: int, message: str) -> None:
        attempt.latest = progress_doc(current, total, message)
        wait = attempt.written_at + PROGRESS_INTERVAL - asyncio.get_running_loop().time()
        if wait <= 0:
            await self._write_progress(attempt)
        elif attempt.flush is None or attempt.flush.done():
            # Throttled, but the latest state still lands: written when the interval has passed.
            attempt.flush = asyncio.create_task(self._flush_later(attempt, wait))

    async def _flush_later(self, attempt: _Attempt, delay: float) -> None:
        await asyncio.sleep(delay)
        try:
            await self._write_progress(attempt)
        except Exception:
            log.exception("job %s: could not record progress", attempt.job_id)

    async def _write_progress(self, attempt: _Attempt) -> None:
        progress, attempt.latest = attempt.latest, None
        if progress is None or attempt.finished:
            return
        attempt.written_at = asyncio.get_running_loop().time()
        if await self.queue.progress(attempt.job_id, attempt.task_id, progress):
            attempt.job["progress"] = progress
            await announce_job(self.publisher, attempt.job, "job.progress", progress)


def _decides_design(job: dict[str, Any]) -> bool:
    # A failed viewer model leaves its analysed design as it is; only the analysis fails a design.
    return job.get("job_type", JobType.PROCESSING.value) == JobType.PROCESSING.value


def summarize(result: dict[str, Any], bom_items: int) -> dict[str, Any]:
    """The job's result: a bounded summary; the full analysis lives on the design."""
    geometry = result.get("geometry") or {}
    validation = result.get("validation") or {}
    return {
        "geometry_extracted": True,
        "validation_passed": bool(validation.get("is_valid_geometry")),
        "is_valid_geometry": validation.get("is_valid_geometry"),
        "bom_items": bom_items,
        "bom_part_count": result.get("bom_part_count"),
        "format": result.get("format"),
        "volume_mm3": geometry.get("volume_mm3"),
        "surface_area_mm2": geometry.get("surface_area_mm2"),
        "validation_errors": len(validation.get("validation_errors") or []),
        "warnings": len(validation.get("warnings") or []),
        "timings": result.get("timings"),
    }
