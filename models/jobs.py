"""Analysis jobs as MongoDB documents: creation, status machine, visibility, and rendering."""
from __future__ import annotations

import uuid
from enum import Enum
from typing import Any

from pymongo import IndexModel

from models.database import register_indexes, utcnow

JOBS = "analysis_jobs"


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


FINAL = frozenset({JobStatus.SUCCESS.value, JobStatus.FAILURE.value, JobStatus.CANCELLED.value})

register_indexes(JOBS, [
    IndexModel([("status", 1), ("created_at", 1)]),          # claiming the oldest pending job
    IndexModel([("status", 1), ("lease_expires_at", 1)]),    # reclaiming expired leases
    IndexModel("design_id"),
    IndexModel([("organization_id", 1), ("created_at", -1)]),
])


def new_job(design: dict[str, Any], job_type: JobType = JobType.PROCESSING, *, created_by: int | None,
            max_retries: int = 2) -> dict[str, Any]:
    """A PENDING job for one design; the denormalised organization and classification let lists filter
    jobs by the same policy as their designs without a join."""
    now = utcnow()
    return {
        "_id": str(uuid.uuid4()), "design_id": design["_id"], "organization_id": design["organization_id"],
        "classification": design["classification"], "job_type": job_type.value,
        "status": JobStatus.PENDING.value, "created_at": now, "created_by": created_by,
        "started_at": None, "completed_at": None, "duration_seconds": None, "result": None,
        "error_message": None, "error_code": None, "retry_count": 0, "max_retries": max_retries,
        "worker": None, "task_id": None, "lease_expires_at": None, "cancel_requested": False,
        "progress": {"current": 0, "total": 0, "percent": 0, "status_message": "Queued"},
    }


async def create_job(db: Any, design: dict[str, Any], job_type: JobType = JobType.PROCESSING, *,
                     created_by: int | None, max_retries: int = 2) -> dict[str, Any]:
    job = new_job(design, job_type, created_by=created_by, max_retries=max_retries)
    await db[JOBS].insert_one(job)
    return job
