"""Analysis jobs as MongoDB documents: creation, the leased status machine, visibility, aggregates and rendering."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from enum import Enum
from typing import TYPE_CHECKING, Any

from pydantic import Field
from pymongo import IndexModel, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection

from models import audit
from models.collections import JOBS
from models.database import Db, register_indexes, utcnow
from models.errors import Conflict
from models.events import Publisher, announce
from models.listing import Filter, Kind, ListSpec, QueryArgs, each, parse_list_query, run_list
from models.policy import Principal, check_document, combine, documents_filter, require
from models.schema import Input

if TYPE_CHECKING:
    from models.designs import Designs  # which creates jobs, so imports this module

MAX_MESSAGE_CHARS = 2000
MAX_ACTIVE = 100
MAX_RECENT_FAILURES = 20
MAX_TOP_ERRORS = 10
MAX_FAILURE_DAYS = 365


class JobStatus(str, Enum):
    PENDING = "PENDING"
    PROCESSING = "PROCESSING"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    CANCELLED = "CANCELLED"


class JobType(str, Enum):
    PROCESSING = "PROCESSING"
    VALIDATION = "VALIDATION"
    BOM_EXTRACTION = "BOM_EXTRACTION"
    EXPORT = "EXPORT"
    TESSELLATION = "TESSELLATION"  # the viewer's GLB of a design analysed before viewables existed
    GEOMETRIC_DIFF = "GEOMETRIC_DIFF"  # material added and removed between two versions, and its GLB
    MARKUP_CARRY = "MARKUP_CARRY"  # the previous version's open markups re-anchored on a new version


FINAL = frozenset({JobStatus.SUCCESS.value, JobStatus.FAILURE.value, JobStatus.CANCELLED.value})
GEOMETRY_EXTRACTION_FAILED = "GEOMETRY_EXTRACTION_FAILED"
INVALID_FILE_FORMAT = "INVALID_FILE_FORMAT"
# Celery's task state names, which status/ shows beside our own status for clients written against Celery.
TASK_STATE = {
    "PENDING": "PENDING",
    "PROCESSING": "STARTED",
    "SUCCESS": "SUCCESS",
    "FAILURE": "FAILURE",
    "CANCELLED": "REVOKED",
}
TASK_NAME = "processing.cad.analyze_file"

register_indexes(
    JOBS,
    [
        IndexModel([("status", 1), ("created_at", 1)]),  # claiming the oldest pending job
        IndexModel([("status", 1), ("lease_expires_at", 1)]),  # reclaiming expired leases
        IndexModel("design_id"),
        IndexModel([("organization_id", 1), ("created_at", -1)]),
        IndexModel([("status", 1), ("completed_at", -1)]),  # failures/ of the last days
        IndexModel([("worker", 1), ("status", 1)]),  # a stopping process releasing its jobs
    ],
)


def new_job(
    design: dict[str, Any], job_type: JobType = JobType.PROCESSING, *, created_by: int | None, max_retries: int = 2
) -> dict[str, Any]:
    """A PENDING job for one design; the denormalised organization and classification let lists filter
    jobs by the same policy as their designs without a join."""
    now = utcnow()
    return {
        "_id": str(uuid.uuid4()),
        "design_id": design["_id"],
        "organization_id": design["organization_id"],
        "classification": design["classification"],
        "job_type": job_type.value,
        "status": JobStatus.PENDING.value,
        "created_at": now,
        "created_by": created_by,
        "started_at": None,
        "completed_at": None,
        "duration_seconds": None,
        "result": None,
        "error_message": None,
        "error_code": None,
        "retry_count": 0,
        "max_retries": max_retries,
        "worker": None,
        "task_id": None,
        "lease_expires_at": None,
        "cancel_requested": False,
        "progress": {"current": 0, "total": 0, "percent": 0, "status_message": "Queued"},
    }


async def create_job(
    db: Db,
    design: dict[str, Any],
    job_type: JobType = JobType.PROCESSING,
    *,
    created_by: int | None,
    max_retries: int = 2,
) -> dict[str, Any]:
    job = new_job(design, job_type, created_by=created_by, max_retries=max_retries)
    await db[JOBS].insert_one(job)
    return job


def progress_doc(current: int, total: int, message: str) -> dict[str, Any]:
    percent = 0 if total <= 0 else max(0, min(100, round(100 * current / total)))
    return {"current": int(current), "total": int(total), "percent": percent, "status_message": message[:500]}


def _duration(job: dict[str, Any], end: datetime) -> float | None:
    start = job.get("started_at")
    return None if start is None else round(max(0.0, (end - start).total_seconds()), 3)


async def announce_job(publisher: Publisher, job: dict[str, Any], event: str, data: dict[str, Any]) -> None:
    """Job events go to the job's own channel and its design's, where reviewers already listen. Status changes
    also reach the organization's feed (the live job dashboard), where each listener sees only the jobs of
    designs they are cleared for; progress stays off it, five events a second per job would flood it."""
    payload = {
        "job_id": job["_id"],
        "design_id": job["design_id"],
        "job_type": job.get("job_type"),
        "classification": job.get("classification"),
        **data,
    }
    channels = [f"job:{job['_id']}", f"design:{job['design_id']}"]
    if event == "job.status" and job.get("organization_id"):
        channels.append(f"org:{job['organization_id']}")
    await announce(publisher, channels, event, payload)


def status_event(job: dict[str, Any]) -> dict[str, Any]:
    return {
        "status": job["status"],
        "retry_count": job.get("retry_count", 0),
        "error_code": job.get("error_code"),
        "error_message": job.get("error_message"),
        "duration_seconds": job.get("duration_seconds"),
    }


# ---------------------------------------------------------------- the queue (used by the job runner)


class JobQueue:
    """The durable queue's transitions for one server process (`worker`). Every write about a running
    attempt is conditional on its task_id and PROCESSING status, so a process that lost its lease (or whose
    job was force-cancelled) can never overwrite what another process or the API decided since."""

    def __init__(self, db: Db, worker: str, lease_seconds: float) -> None:
        self.db = db
        self.worker = worker
        self.lease = timedelta(seconds=lease_seconds)
        self.jobs: AsyncCollection[dict[str, Any]] = db[JOBS]

    async def claim(self, max_retries: int) -> dict[str, Any] | None:
        """Atomically take the oldest PENDING job with a fresh lease; None when there is none."""
        now = utcnow()
        task_id = str(uuid.uuid4())
        job = await self.jobs.find_one_and_update(
            {"status": JobStatus.PENDING.value},
            {
                "$set": {
                    "status": JobStatus.PROCESSING.value,
                    "worker": self.worker,
                    "task_id": task_id,
                    "lease_expires_at": now + self.lease,
                    "attempt_started_at": now,
                    "max_retries": max_retries,
                    "progress": progress_doc(0, 0, "Starting"),
                }
            },
            sort=[("created_at", 1), ("_id", 1)],
            return_document=ReturnDocument.AFTER,
        )
        if job is not None and job.get("started_at") is None:
            # The first attempt's start stays: duration_seconds covers retries too.
            await self.jobs.update_one({"_id": job["_id"], "started_at": None}, {"$set": {"started_at": now}})
            job["started_at"] = now
        return job

    def _mine(self, job_id: str, task_id: str) -> dict[str, Any]:
        return {"_id": job_id, "task_id": task_id, "status": JobStatus.PROCESSING.value}

    async def renew(self, job_id: str, task_id: str) -> dict[str, Any] | None:
        """Extend the lease; None when this attempt no longer owns the job. The answer carries
        cancel_requested, so a cancel issued on any process reaches the one running the job."""
        return await self.jobs.find_one_and_update(
            self._mine(job_id, task_id),
            {"$set": {"lease_expires_at": utcnow() + self.lease}},
            projection={"cancel_requested": 1},
            return_document=ReturnDocument.AFTER,
        )

    async def progress(self, job_id: str, task_id: str, progress: dict[str, Any]) -> bool:
        result = await self.jobs.update_one(
            self._mine(job_id, task_id), {"$set": {"progress": progress, "progress_at": utcnow()}}
        )
        return bool(result.matched_count)

    async def _finish(
        self, job: dict[str, Any], task_id: str, status: JobStatus, values: dict[str, Any]
    ) -> dict[str, Any] | None:
        now = utcnow()
        update = {
            "status": status.value,
            "completed_at": now,
            "duration_seconds": _duration(job, now),
            "lease_expires_at": None,
            **values,
        }
        return await self.jobs.find_one_and_update(
            self._mine(job["_id"], task_id), {"$set": update}, return_document=ReturnDocument.AFTER
        )

    async def succeed(self, job: dict[str, Any], task_id: str, summary: dict[str, Any]) -> dict[str, Any] | None:
        done = progress_doc(1, 1, "Completed")
        return await self._finish(
            job,
            task_id,
            JobStatus.SUCCESS,
            {"result": summary, "progress": done, "error_message": None, "error_code": None},
        )

    async def fail(self, job: dict[str, Any], task_id: str, code: str, message: str) -> dict[str, Any] | None:
        progress = {**(job.get("progress") or progress_doc(0, 0, "")), "status_message": "Failed"}
        return await self._finish(
            job,
            task_id,
            JobStatus.FAILURE,
            {"error_code": code, "error_message": message[:MAX_MESSAGE_CHARS], "progress": progress},
        )

    async def cancelled(self, job: dict[str, Any], task_id: str, message: str) -> dict[str, Any] | None:
        return await self._finish(
            job,
            task_id,
            JobStatus.CANCELLED,
            {
                "error_message": message[:MAX_MESSAGE_CHARS],
                "cancel_requested": True,
                "progress": {**(job.get("progress") or progress_doc(0, 0, "")), "status_message": "Cancelled"},
            },
        )

    async def retry(self, job: dict[str, Any], task_id: str, message: str) -> dict[str, Any] | None:
        """Back to PENDING for another attempt (any process may take it), counting the attempt."""
        return await self.jobs.find_one_and_update(
            self._mine(job["_id"], task_id),
            {
                "$set": {
                    "status": JobStatus.PENDING.value,
                    "worker": None,
                    "lease_expires_at": None,
                    "last_error": message[:MAX_MESSAGE_CHARS],
                    "progress": progress_doc(0, 0, f"Retrying: {message}"[:500]),
                },
                "$inc": {"retry_count": 1},
            },
            return_document=ReturnDocument.AFTER,
        )

    async def requeue(self, job: dict[str, Any], task_id: str, reason: str) -> dict[str, Any] | None:
        """Back to PENDING without counting an attempt: the process stops, the job did nothing wrong."""
        return await self.jobs.find_one_and_update(
            self._mine(job["_id"], task_id),
            {
                "$set": {
                    "status": JobStatus.PENDING.value,
                    "worker": None,
                    "lease_expires_at": None,
                    "progress": progress_doc(0, 0, reason),
                }
            },
            return_document=ReturnDocument.AFTER,
        )

    async def release_all(self, reason: str) -> int:
        """Requeue whatever this process still holds (a claim interrupted by shutdown)."""
        result = await self.jobs.update_many(
            {"worker": self.worker, "status": JobStatus.PROCESSING.value},
            {
                "$set": {
                    "status": JobStatus.PENDING.value,
                    "worker": None,
                    "lease_expires_at": None,
                    "progress": progress_doc(0, 0, reason),
                }
            },
        )
        return int(result.modified_count)

    async def expired(self, limit: int = 50) -> list[dict[str, Any]]:
        """Running jobs whose process stopped renewing their lease (it died, or lost the database)."""
        cursor = self.jobs.find(
            {"status": JobStatus.PROCESSING.value, "lease_expires_at": {"$lt": utcnow()}},
            sort=[("lease_expires_at", 1)],
            limit=limit,
        )
        return [job async for job in cursor]

    async def reclaim(self, job: dict[str, Any], max_retries: int) -> dict[str, Any] | None:
        """Requeue one expired job (counted as an attempt: the job may be what killed its process), or fail
        it once its retries are spent. Conditional on the same expired lease, so one process wins."""
        condition = {
            "_id": job["_id"],
            "status": JobStatus.PROCESSING.value,
            "task_id": job.get("task_id"),
            "lease_expires_at": job.get("lease_expires_at"),
        }
        message = f"The server process running the analysis ({job.get('worker')}) stopped responding."
        if job.get("retry_count", 0) >= max_retries:
            now = utcnow()
            return await self.jobs.find_one_and_update(
                condition,
                {
                    "$set": {
                        "status": JobStatus.FAILURE.value,
                        "completed_at": now,
                        "duration_seconds": _duration(job, now),
                        "lease_expires_at": None,
                        "error_code": GEOMETRY_EXTRACTION_FAILED,
                        "error_message": "The server process running the analysis stopped responding "
                        f"(gave up after {job.get('retry_count', 0) + 1} attempts).",
                    }
                },
                return_document=ReturnDocument.AFTER,
            )
        return await self.jobs.find_one_and_update(
            condition,
            {
                "$set": {
                    "status": JobStatus.PENDING.value,
                    "worker": None,
                    "lease_expires_at": None,
                    "last_error": message,
                    "progress": progress_doc(0, 0, "Requeued: " + message),
                },
                "$inc": {"retry_count": 1},
            },
            return_document=ReturnDocument.AFTER,
        )


# ---------------------------------------------------------------- the API side

JOB_FIELDS = frozenset(
    {
        "id",
        "design_asset",
        "organization",
        "classification",
        "job_type",
        "status",
        "task_id",
        "celery_task_id",
        "worker",
        "created_at",
        "started_at",
        "completed_at",
        "duration_seconds",
        "result",
        "error_message",
        "error_code",
        "retry_count",
        "max_retries",
        "progress",
        "cancel_requested",
    }
)

JOB_LIST = ListSpec(
    filters={
        "design_asset": Filter(Kind.UUID, "design_id"),
        "job_type": Filter(Kind.ENUM, "job_type", choices=frozenset(t.value for t in JobType)),
        "status": Filter(Kind.ENUM, "status", choices=frozenset(s.value for s in JobStatus)),
        "started_at": Filter(Kind.DATETIME, "started_at", ranges=True),
        "created_at": Filter(Kind.DATETIME, "created_at", ranges=True),
    },
    ordering={
        "created_at": "created_at",
        "started_at": "started_at",
        "completed_at": "completed_at",
        "duration_seconds": "duration_seconds",
        "status": "status",
        "job_type": "job_type",
    },
    default_ordering="-created_at",
    fields=JOB_FIELDS,
)


def render_job(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": doc["_id"],
        "design_asset": doc["design_id"],
        "organization": doc["organization_id"],
        "classification": doc["classification"],
        "job_type": doc["job_type"],
        "status": doc["status"],
        "task_id": doc.get("task_id"),
        "celery_task_id": doc.get("task_id"),  # the same id under the name Celery-era clients read
        "worker": doc.get("worker"),
        "created_at": doc["created_at"],
        "started_at": doc.get("started_at"),
        "completed_at": doc.get("completed_at"),
        "duration_seconds": doc.get("duration_seconds"),
        "result": doc.get("result"),
        "error_message": doc.get("error_message"),
        "error_code": doc.get("error_code"),
        "retry_count": doc.get("retry_count", 0),
        "max_retries": doc.get("max_retries"),
        "progress": render_progress(doc),
        "cancel_requested": bool(doc.get("cancel_requested")),
    }


def render_progress(doc: dict[str, Any]) -> dict[str, Any]:
    progress = doc.get("progress") or {}
    return {
        "current": progress.get("current", 0),
        "total": progress.get("total", 0),
        "percent": progress.get("percent", 0),
        "status_message": progress.get("status_message", ""),
    }


def render_status(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "status": doc["status"],
        "state": TASK_STATE[doc["status"]],
        "result": doc.get("result"),
        "error": doc.get("error_message"),
        "error_code": doc.get("error_code"),
        "celery_info": {
            "task_id": doc.get("task_id"),
            "name": TASK_NAME,
            "args": [doc["design_id"]],
            "kwargs": {},
            "worker": doc.get("worker"),
            "retries": doc.get("retry_count", 0),
        },
    }


def render_active(doc: dict[str, Any]) -> dict[str, Any]:
    started = doc.get("attempt_started_at") or doc.get("started_at")
    return {
        "task_id": doc.get("task_id"),
        "job_id": doc["_id"],
        "name": TASK_NAME,
        "args": [doc["design_id"]],
        "worker": doc.get("worker"),
        "time_start": started.timestamp() if started else None,
        "progress": render_progress(doc),
    }


StopLocal = Callable[[str], Awaitable[bool]]


class JobCancelIn(Input):
    force: bool = Field(
        False,
        description="Mark the job CANCELLED now, without waiting for the process running it to confirm (it may be "
        "gone).",
    )


class Jobs:
    """Reads and the cancel rule for analysis jobs; a job is visible exactly when its design is."""

    def __init__(self, db: Db, designs: Designs, publisher: Publisher) -> None:
        self.db = db
        self.designs = designs
        self.publisher = publisher

    def visible_filter(self, principal: Principal) -> dict[str, Any]:
        return documents_filter(principal)

    async def list_visible(self, principal: Principal, args: QueryArgs, base_url: str) -> dict[str, Any]:
        query = parse_list_query(JOB_LIST, args)
        return await run_list(
            self.db[JOBS], self.visible_filter(principal), query, render=each(render_job), base_url=base_url, args=args
        )

    async def get_visible(self, principal: Principal, job_id: str) -> dict[str, Any]:
        """As for designs: another organization's job is 404, one above the caller's clearance 403."""
        return check_document(principal, await self.db[JOBS].find_one({"_id": job_id}), "job.read", "Analysis job")

    async def active(self, principal: Principal) -> dict[str, Any]:
        query = combine({"status": JobStatus.PROCESSING.value}, self.visible_filter(principal))
        count = await self.db[JOBS].count_documents(query)
        cursor = self.db[JOBS].find(query, sort=[("attempt_started_at", 1), ("_id", 1)], limit=MAX_ACTIVE)
        return {"count": count, "tasks": [render_active(d) async for d in cursor]}

    async def metrics(self, principal: Principal, job_type: str | None) -> dict[str, Any]:
        """Counts per status and duration figures of successful jobs, per job type and overall."""
        match = combine({"job_type": job_type} if job_type else {}, self.visible_filter(principal))
        pipeline = [
            {"$match": match},
            {
                "$group": {
                    "_id": {"job_type": "$job_type", "status": "$status"},
                    "count": {"$sum": 1},
                    "avg": {"$avg": "$duration_seconds"},
                    "min": {"$min": "$duration_seconds"},
                    "max": {"$max": "$duration_seconds"},
                    "sum": {"$sum": "$duration_seconds"},
                }
            },
        ]
        rows = await (await self.db[JOBS].aggregate(pipeline)).to_list(None)
        by_type: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_type.setdefault(row["_id"]["job_type"], []).append(row)
        overall = _metrics(job_type, rows)
        if job_type is None:
            overall["by_job_type"] = [_metrics(name, by_type[name]) for name in sorted(by_type)]
        return overall

    async def failures(self, principal: Principal, days: int) -> dict[str, Any]:
        since = utcnow() - timedelta(days=days)
        match = combine(
            {"status": JobStatus.FAILURE.value, "completed_at": {"$gte": since}}, self.visible_filter(principal)
        )
        total = await self.db[JOBS].count_documents(match)
        pipeline: list[dict[str, Any]] = [
            {"$match": match},
            {
                "$group": {
                    "_id": {"error": "$error_message", "code": "$error_code"},
                    "count": {"$sum": 1},
                    "last_seen": {"$max": "$completed_at"},
                }
            },
            {"$sort": {"count": -1, "last_seen": -1}},
            {"$limit": MAX_TOP_ERRORS},
        ]
        top = await (await self.db[JOBS].aggregate(pipeline)).to_list(None)
        recent = self.db[JOBS].find(match, sort=[("completed_at", -1), ("_id", 1)], limit=MAX_RECENT_FAILURES)
        return {
            "days": days,
            "since": since,
            "total_failures": total,
            "top_errors": [
                {
                    "error": row["_id"].get("error"),
                    "error_code": row["_id"].get("code"),
                    "count": row["count"],
                    "last_seen": row["last_seen"],
                }
                for row in top
            ],
            "failures": [render_job(d) async for d in recent],
        }

    async def cancel(
        self, principal: Principal, job_id: str, *, force: bool, actor: audit.Actor, stop_local: StopLocal | None
    ) -> tuple[dict[str, Any], bool]:
        """Cancel a job; returns (job, finished). A pending job is cancelled at once. A running one is flagged:
        the process running it kills its worker (at once when that is this process, else at its next lease
        renewal). `force` also marks it CANCELLED now without waiting for that process, which may be gone."""
        job = await self.get_visible(principal, job_id)
        require(principal, "job.create", job["organization_id"], hide=False)
        if job["status"] in FINAL:
            raise Conflict(f"The job already finished with status {job['status']}.")
        message = f"Cancelled by {principal.username}."
        now = utcnow()
        await self.db[JOBS].update_one(
            {"_id": job_id}, {"$set": {"cancel_requested": True, "cancel_requested_by": principal.id}}
        )
        done = await self.db[JOBS].find_one_and_update(
            {"_id": job_id, "status": JobStatus.PENDING.value},
            {
                "$set": {
                    "status": JobStatus.CANCELLED.value,
                    "completed_at": now,
                    "error_message": message,
                    "duration_seconds": _duration(job, now),
                }
            },
            return_document=ReturnDocument.AFTER,
        )
        settled_here = done is not None
        if done is None and stop_local is not None and await stop_local(job_id):
            done = await self.db[JOBS].find_one({"_id": job_id})
        if force and (done is None or done["status"] not in FINAL):
            forced = await self.db[JOBS].find_one_and_update(
                {"_id": job_id, "status": JobStatus.PROCESSING.value},
                {
                    "$set": {
                        "status": JobStatus.CANCELLED.value,
                        "completed_at": now,
                        "error_message": message,
                        "duration_seconds": _duration(job, now),
                        "lease_expires_at": None,
                    }
                },
                return_document=ReturnDocument.AFTER,
            )
            if forced is not None:
                done, settled_here = forced, True
        await audit.record(
            self.db,
            actor,
            "CANCEL",
            "AnalysisJob",
            job_id,
            organization_id=job["organization_id"],
            classification=job["classification"],
            design_id=job["design_id"],
            changes={"force": force, "status_before": job["status"]},
        )
        if settled_here and done is not None:
            # A runner that stops a job announces that itself; this is for what the API settled alone.
            await self.designs.mark_failed(job["design_id"], "Analysis cancelled.")
            await announce_job(self.publisher, done, "job.status", status_event(done))
        current = done or await self.db[JOBS].find_one({"_id": job_id}) or job
        return current, current["status"] in FINAL


def _metrics(job_type: str | None, rows: list[dict[str, Any]]) -> dict[str, Any]:
    counts = {s.value: 0 for s in JobStatus}
    for row in rows:
        counts[row["_id"]["status"]] = counts.get(row["_id"]["status"], 0) + row["count"]
    success = [r for r in rows if r["_id"]["status"] == JobStatus.SUCCESS.value and r["count"]]
    finished = counts["SUCCESS"] + counts["FAILURE"]
    n = sum(r["count"] for r in success)
    timed = [r for r in success if r["min"] is not None]
    return {
        "job_type": job_type,
        "total_count": sum(counts.values()),
        "success_count": counts["SUCCESS"],
        "failure_count": counts["FAILURE"],
        "cancelled_count": counts["CANCELLED"],
        "pending_count": counts["PENDING"],
        "processing_count": counts["PROCESSING"],
        # Over finished jobs: cancelled, queued and running ones have no verdict yet.
        "success_rate": round(100 * counts["SUCCESS"] / finished, 2) if finished else None,
        "avg_duration_seconds": round(sum(r["sum"] for r in timed) / n, 3) if timed and n else None,
        "min_duration_seconds": min((r["min"] for r in timed), default=None),
        "max_duration_seconds": max((r["max"] for r in timed), default=None),
    }
