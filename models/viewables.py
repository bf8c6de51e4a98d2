"""Viewer models (GLB) of designs: who may fetch one, how it is recorded, and the job that makes a missing one."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from pymongo import IndexModel, ReturnDocument
from pymongo.errors import DuplicateKeyError

from models import audit
from models.collections import DESIGNS, JOBS
from models.database import Db, register_indexes, utcnow
from models.errors import Conflict
from models.events import Publisher
from models.jobs import JobStatus, JobType, announce_job, new_job, status_event
from models.policy import Principal
from models.transfers import Transfer

if TYPE_CHECKING:
    from models.designs import Designs  # which renders a design's viewable with this module, so imports it

#: A failed viewable job is reported as such for this long; after it, asking again starts a new attempt.
FAILED_RETRY_AFTER = timedelta(minutes=15)
#: Seconds a client is told to wait before asking again while the GLB is being made.
RETRY_AFTER_SECONDS = 2
ACTIVE = (JobStatus.PENDING.value, JobStatus.PROCESSING.value)

register_indexes(DESIGNS, [IndexModel("viewable.sha256", sparse=True)])


@dataclass(frozen=True)
class Ready:
    """The design's GLB is stored: stream ``sha256`` (``size`` bytes), or answer 304 when not ``modified``."""

    design: dict[str, Any]
    sha256: str
    size: int
    modified: bool
    transfer: Transfer  # the bytes on their way out, re-checked like a download while they stream


@dataclass(frozen=True)
class Pending:
    """No GLB yet: ``job`` (the design's analysis, or a tessellation job) is making it."""

    job: dict[str, Any]


def viewable_record(glb: dict[str, Any], sha256: str, size: int) -> dict[str, Any]:
    """What a design keeps about its GLB: where it is stored and how it was meshed (the worker's summary)."""
    keys = (
        "format",
        "triangles",
        "unique_triangles",
        "max_triangles",
        "within_budget",
        "nodes",
        "nodes_truncated",
        "linear_deflection_mm",
        "angular_deflection_rad",
        "mesh_attempts",
    )
    return {"sha256": sha256, "bytes": size, "generated_at": utcnow(), **{k: glb.get(k) for k in keys}}


def render_viewable(record: dict[str, Any] | None) -> dict[str, Any] | None:
    if not record:
        return None
    return {
        "bytes": record.get("bytes"),
        "etag": f'"{record["sha256"]}"',
        "triangles": record.get("triangles"),
        "max_triangles": record.get("max_triangles"),
        "within_budget": record.get("within_budget"),
        "nodes": record.get("nodes"),
        "linear_deflection_mm": record.get("linear_deflection_mm"),
        "generated_at": record.get("generated_at"),
    }


def render_pending(job: dict[str, Any]) -> dict[str, Any]:
    """The documented 202 body: which job makes the GLB, how far it is, and when to ask again."""
    progress = job.get("progress") or {}
    return {
        "status": job["status"],
        "job_id": job["_id"],
        "job_type": job["job_type"],
        "progress": {
            "current": progress.get("current", 0),
            "total": progress.get("total", 0),
            "percent": progress.get("percent", 0),
            "status_message": progress.get("status_message", ""),
        },
        "retry_after": RETRY_AFTER_SECONDS,
        "detail": "The viewer model is being generated. Follow job:<job_id> on the WebSocket, or ask again.",
    }


class Viewables:
    """The GLB of a design follows the design's access policy; fetching one is audited like a download."""

    def __init__(self, db: Db, designs: Designs, publisher: Publisher, *, max_retries: int = 2) -> None:
        self.db = db
        self.designs = designs
        self.publisher = publisher
        self.max_retries = max_retries

    async def get(
        self, principal: Principal, design_id: str, actor: audit.Actor, if_none_match: str | None
    ) -> Ready | Pending:
        """The stored GLB, or the job making it (started here for a design analysed before GLBs existed)."""
        doc = await self.designs.get_visible(principal, design_id)
        status = doc["status"]
        if status == "UPLOADING":
            raise Conflict("The upload of this design is not finalized yet.")
        record = doc.get("viewable")
        if record and await self.designs.storage.exists(record["sha256"]):
            modified = not etag_matches(if_none_match, record["sha256"])
            await audit.record(
                self.db,
                actor,
                "DOWNLOAD",
                "DesignAsset",
                design_id,
                organization_id=doc["organization_id"],
                classification=doc["classification"],
                design_id=design_id,
                changes={"artifact": "viewable", "format": "glb", **({} if modified else {"not_modified": True})},
            )
            size = int(record["bytes"])
            transfer = Transfer(self.designs, principal, actor, doc, record["sha256"], 0, size, False, "viewable")
            return Ready(doc, record["sha256"], size, modified, transfer)
        if status == "PROCESSING" and doc.get("analysis_job_id"):
            job = await self.db[JOBS].find_one({"_id": doc["analysis_job_id"]})
            if job is not None and job["status"] in ACTIVE:
                return Pending(job)
        if status == "FAILED":
            raise Conflict(
                "The analysis of this design failed, so there is no model to show: "
                + (doc.get("processing_error") or "see its analysis job.")
            )
        return Pending(await self._job(principal, doc))

    async def _job(self, principal: Principal, doc: dict[str, Any]) -> dict[str, Any]:
        """The design's tessellation job: the running one, or a new one; at most one is active per design."""
        seen = doc.get("viewable_job_id")
        if seen is not None:
            job = await self.db[JOBS].find_one({"_id": seen})
            if job is not None and job["status"] in ACTIVE:
                return job
            if (
                job is not None
                and job["status"] == JobStatus.FAILURE.value
                and job.get("completed_at") is not None
                and utcnow() - job["completed_at"] < FAILED_RETRY_AFTER
            ):
                raise Conflict(
                    "The viewer model could not be generated: " + (job.get("error_message") or "unknown error.")
                )
        job = new_job(doc, JobType.TESSELLATION, created_by=principal.id, max_retries=self.max_retries)
        # Requests racing for the same missing GLB derive the same job id, so exactly one insert wins.
        job["_id"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"enginel:viewable:{doc['_id']}:{seen}"))
        try:
            await self.db[JOBS].insert_one(job)
        except DuplicateKeyError:
            return await self.db[JOBS].find_one({"_id": job["_id"]}) or job
        finally:
            await self.db[DESIGNS].update_one({"_id": doc["_id"]}, {"$set": {"viewable_job_id": job["_id"]}})
        await announce_job(self.publisher, job, "job.status", status_event(job))
        return job

    async def attach(self, design_id: str, record: dict[str, Any]) -> bool:
        """Record a stored GLB on its design (job runner); the one it replaces is released. False when the
        design is gone, and then the caller releases the new one."""
        before = await self.db[DESIGNS].find_one_and_update(
            {"_id": design_id},
            {"$set": {"viewable": record}},
            projection={"viewable": 1},
            return_document=ReturnDocument.BEFORE,
        )
        if before is None:
            return False
        old = (before.get("viewable") or {}).get("sha256")
        if old and old != record["sha256"]:
            await self.designs.release_content(old)
        return True


def etag_matches(header: str | None, sha256: str) -> bool:
    if not header:
        return False
    tags = [t.strip() for t in header.split(",")]
    return "*" in tags or any(t.removeprefix("W/").strip('"') == sha256 for t in tags)
