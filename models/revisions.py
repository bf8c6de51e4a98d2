"""Revisions of a series side by side: what to compare and who may see it, the geometric diff job and its GLB, and
the previous version's open markups offered to (and carried into) the next version's review."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pymongo import IndexModel, ReturnDocument
from pymongo.errors import DuplicateKeyError

from models import audit
from models.collections import BOM_NODES, DESIGNS, JOBS, MARKUP_CARRIES, MARKUPS, REVIEWS, REVISION_DIFFS
from models.database import Db, next_id, register_indexes, utcnow
from models.designs import Designs, DesignStatus
from models.errors import APIError, Conflict, PermissionDenied, ValidationFailed
from models.events import Publisher, announce
from models.jobs import JobStatus, JobType, announce_job, new_job, status_event
from models.markups import SEVERITY_RANK, Markups, MarkupStatus
from models.policy import LEVEL, Classification, Clearance, Principal, require_write
from models.transfers import Transfer, audited_range
from models.viewables import ACTIVE, FAILED_RETRY_AFTER, Pending, Ready, etag_matches

log = logging.getLogger("enginel.revisions")

#: Open markups of one review offered to the next version; the oldest first, the rest stay behind.
MAX_CARRY = 500
MAX_BOM_ROWS = 10_000  # per design, as models.bom caps a tree

register_indexes(
    REVISION_DIFFS,
    [IndexModel("design_id"), IndexModel("other_design_id"), IndexModel("glb.sha256", sparse=True)],
)
register_indexes(MARKUP_CARRIES, [IndexModel("from_design_id")])

#: compare_revisions(old, new) of processing.compare; server.py hands it over (models/ imports no processing/).
CompareFn = Callable[[Mapping[str, Any] | None, Mapping[str, Any]], dict[str, Any]]


def comparable(a: str, b: str) -> bool:
    """Whether one label covers both: export control and a clearance level above UNCLASSIFIED are different
    rules, so a thing made from an ITAR version and a SECRET one could be labelled with neither."""
    itar = Classification.ITAR.value
    if (a == itar) == (b == itar):
        return True
    other = b if a == itar else a
    return other == Classification.UNCLASSIFIED.value


def stricter(a: str, b: str) -> str:
    """The label of something derived from two comparable designs (ITAR over UNCLASSIFIED, else the higher)."""
    if Classification.ITAR.value in (a, b):
        return Classification.ITAR.value
    return a if LEVEL[Clearance(a)] >= LEVEL[Clearance(b)] else b


def covers(label: str, other: str) -> bool:
    """Whether everyone cleared for ``label`` is cleared for ``other`` too (what may flow from other to label)."""
    if other == label or other == Classification.UNCLASSIFIED.value:
        return True
    if Classification.ITAR.value in (label, other):
        return False
    return LEVEL[Clearance(other)] <= LEVEL[Clearance(label)]


def _analysed(doc: Mapping[str, Any]) -> bool:
    return bool(doc.get("analysis")) and doc["status"] not in (
        DesignStatus.UPLOADING.value,
        DesignStatus.PROCESSING.value,
        DesignStatus.FAILED.value,
    )


def design_summary(doc: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": doc["_id"],
        "series": doc["series_id"],
        "version_number": doc["version_number"],
        "revision": doc.get("revision", ""),
        "filename": doc.get("filename"),
        "file_hash": doc.get("file_hash"),
        "classification": doc["classification"],
        "material": doc.get("material") or None,
        "status": doc["status"],
    }


@dataclass
class DiffTransfer(Transfer):
    """The diff GLB on its way out: re-checked against both versions and the diff still holding these bytes."""

    other_id: str = ""
    pair_id: str = ""

    async def still_allowed(self, sent: int, refresh: Callable[[Principal], Awaitable[Principal]]) -> bool:
        try:
            self.principal = await refresh(self.principal)
            await self.designs.get_visible(self.principal, self.design["_id"])
            await self.designs.get_visible(self.principal, self.other_id)
            record = await self.designs.db[REVISION_DIFFS].find_one({"_id": self.pair_id}, {"glb.sha256": 1})
            if ((record or {}).get("glb") or {}).get("sha256") != self.sha256:
                raise Conflict("The diff was made again during the download.")
        except APIError as exc:
            await audit.record(
                self.designs.db,
                self.actor,
                "DOWNLOAD_REVOKED",
                "DesignAsset",
                self.design["_id"],
                organization_id=self.design["organization_id"],
                classification=self.design["classification"],
                design_id=self.design["_id"],
                changes={
                    "artifact": self.artifact,
                    "other_design_id": self.other_id,
                    "reason": exc.code,
                    "bytes_sent": sent,
                    "bytes_total": self.length,
                    **audited_range(None),
                },
            )
            return False
        return True


class Revisions:
    """Compare, geometric diff and markup carry between versions of one series; both versions pass the policy."""

    def __init__(
        self,
        db: Db,
        designs: Designs,
        markups: Markups,
        publisher: Publisher,
        compare: CompareFn,
        *,
        max_retries: int = 2,
    ) -> None:
        self.db = db
        self.designs = designs
        self.markups = markups
        self.publisher = publisher
        self.compare_fn = compare
        self.max_retries = max_retries

    # ------------------------------------------------------------------ inputs

    async def pair(self, principal: Principal, design_id: str, other_id: str | None) -> tuple[dict[str, Any], ...]:
        """Two versions of one series the caller may both read (404 / 403 as for each alone)."""
        if not other_id:
            raise ValidationFailed(
                "Name the version to compare with.", field_errors={"to": ["This field is required."]}
            )
        design = await self.designs.get_visible(principal, design_id)
        other = await self.designs.get_visible(principal, other_id)
        if other["series_id"] != design["series_id"]:
            raise ValidationFailed(
                "Only versions of one series are compared.", field_errors={"to": ["Not a version of this series."]}
            )
        if other["_id"] == design["_id"]:
            raise ValidationFailed("A version compared with itself has no changes.", field_errors={"to": ["Same id."]})
        for doc in (design, other):
            if not _analysed(doc):
                raise Conflict(
                    f"Version {doc['version_number']} is {doc['status']}: it has no analysis to compare yet."
                )
        return design, other

    async def _input(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        """What processing.compare needs of one analysed version: its stored figures and BOM rows."""
        analysis = doc.get("analysis") or {}
        rows = [
            {"id": n["_id"], **{k: n.get(k) for k in ("path", "part_name", "part_number", "quantity")}}
            async for n in self.db[BOM_NODES].find(
                {"design_id": doc["_id"]},
                projection={"path": 1, "part_name": 1, "part_number": 1, "quantity": 1},
                sort=[("path", 1)],
                limit=MAX_BOM_ROWS,
            )
        ]
        return {
            "design": design_summary(doc),
            "properties": {
                "volume_mm3": doc.get("volume_cubic_mm"),
                "surface_area_mm2": doc.get("surface_area_sq_mm"),
                "mass_kg": doc.get("mass_kg"),
                "center_of_mass": doc.get("center_of_mass"),
                "bounding_box": doc.get("bounding_box"),
                "topology": analysis.get("topology"),
                "validation": {
                    "is_valid": doc.get("is_valid_geometry"),
                    "errors": doc.get("validation_errors") or [],
                    "warnings": doc.get("warnings") or [],
                },
            },
            "bom": rows,
        }

    async def compare_docs(self, old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
        """processing.compare on two stored versions (old None: a first version, which has no deltas)."""
        return self.compare_fn(await self._input(old) if old is not None else None, await self._input(new))

    async def previous_version(self, design: Mapping[str, Any]) -> dict[str, Any] | None:
        """The analysed version just below ``design`` in its series (not the caller's view: gates are policy)."""
        cursor = self.db[DESIGNS].find(
            {
                "series_id": design["series_id"],
                "version_number": {"$lt": design["version_number"]},
                "analysis": {"$ne": None},
                "status": {"$nin": [DesignStatus.UPLOADING.value, DesignStatus.PROCESSING.value, "FAILED"]},
            },
            sort=[("version_number", -1)],
            limit=1,
        )
        return next(iter([d async for d in cursor]), None)

    # ------------------------------------------------------------------ compare

    async def compare(self, principal: Principal, design_id: str, other_id: str | None) -> dict[str, Any]:
        """GET /api/designs/{id}/compare/?to=: BOM changes and property deltas from ``design_id`` to ``other_id``."""
        design, other = await self.pair(principal, design_id, other_id)
        result = await self.compare_docs(design, other)
        record = await self.db[REVISION_DIFFS].find_one({"_id": _pair_id(design["_id"], other["_id"])})
        result["geometric_diff"] = await self._render_diff(design, other, record)
        return result

    async def _render_diff(
        self, design: Mapping[str, Any], other: Mapping[str, Any], record: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        url = f"/api/designs/{design['_id']}/compare/{other['_id']}/viewable/"
        job = await self.db[JOBS].find_one({"_id": record["job_id"]}) if record and record.get("job_id") else None
        out: dict[str, Any] = {
            "viewable_url": url,
            "status": "NOT_STARTED" if job is None else job["status"],
            "job_id": job and job["_id"],
            "error_message": job and job.get("error_message"),
            "result": None,
        }
        if record and record.get("result") and (record.get("glb") or {}).get("sha256"):
            out["status"] = JobStatus.SUCCESS.value
            out["result"] = record["result"]
            out["generated_at"] = record.get("generated_at")
        return out

    # ------------------------------------------------------------------ geometric diff

    async def diff_viewable(
        self, principal: Principal, design_id: str, other_id: str, actor: audit.Actor, if_none_match: str | None
    ) -> Ready | Pending:
        """The stored diff GLB of the pair, or the job computing it (started here on first request)."""
        design, other = await self.pair(principal, design_id, other_id)
        pair = _pair_id(design["_id"], other["_id"])
        record = await self.db[REVISION_DIFFS].find_one({"_id": pair})
        glb = (record or {}).get("glb") or {}
        if glb.get("sha256") and await self.designs.storage.exists(glb["sha256"]):
            modified = not etag_matches(if_none_match, glb["sha256"])
            await audit.record(
                self.db,
                actor,
                "DOWNLOAD",
                "DesignAsset",
                design["_id"],
                organization_id=design["organization_id"],
                classification=stricter(design["classification"], other["classification"]),
                design_id=design["_id"],
                changes={
                    "artifact": "diff",
                    "format": "glb",
                    "other_design_id": other["_id"],
                    **({} if modified else {"not_modified": True}),
                },
            )
            size = int(glb["bytes"])
            transfer = DiffTransfer(
                self.designs, principal, actor, design, glb["sha256"], 0, size, False, "diff", other["_id"], pair
            )
            return Ready(design, glb["sha256"], size, modified, transfer)
        return Pending(await self._diff_job(principal, design, other, record))

    async def _diff_job(
        self,
        principal: Principal,
        design: Mapping[str, Any],
        other: Mapping[str, Any],
        record: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        """The pair's diff job: the running one, or a new one; at most one is active per ordered pair."""
        seen = (record or {}).get("job_id")
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
                    "The geometric diff could not be computed: " + (job.get("error_message") or "unknown error."),
                    code="DIFF_FAILED",
                )
        if not comparable(design["classification"], other["classification"]):
            raise Conflict(
                f"A geometric diff of a {design['classification']} and a {other['classification']} version would "
                "need two labels at once; compare their properties instead."
            )
        require_write(principal)
        job = self._revision_job(design, other, JobType.GEOMETRIC_DIFF, principal.id)
        pair = _pair_id(design["_id"], other["_id"])
        job["_id"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"enginel:diff:{pair}:{seen}"))
        try:
            await self.db[JOBS].insert_one(job)
        except DuplicateKeyError:
            return await self.db[JOBS].find_one({"_id": job["_id"]}) or job
        await self.db[REVISION_DIFFS].update_one(
            {"_id": pair},
            {
                "$set": {"job_id": job["_id"], "requested_at": utcnow()},
                "$setOnInsert": {
                    "design_id": design["_id"],
                    "other_design_id": other["_id"],
                    "organization_id": design["organization_id"],
                },
            },
            upsert=True,
        )
        await announce_job(self.publisher, job, "job.status", status_event(job))
        return job

    def _revision_job(
        self, design: Mapping[str, Any], other: Mapping[str, Any], kind: JobType, created_by: int | None
    ) -> dict[str, Any]:
        job = new_job(dict(design), kind, created_by=created_by, max_retries=self.max_retries)
        job["other_design_id"] = other["_id"]
        # Lists filter jobs by one label: the stricter of the two versions it reads.
        job["classification"] = stricter(design["classification"], other["classification"])
        return job

    async def attach_diff(self, job: Mapping[str, Any], glb: dict[str, Any], result: dict[str, Any]) -> bool:
        """Record a finished diff (job runner) with its stored GLB; the GLB it replaces is released. False when
        either version is gone (the caller then releases the new GLB)."""
        pair = _pair_id(job["design_id"], job["other_design_id"])
        if await self.db[DESIGNS].count_documents({"_id": {"$in": [job["design_id"], job["other_design_id"]]}}) < 2:
            return False
        before = await self.db[REVISION_DIFFS].find_one_and_update(
            {"_id": pair},
            {
                "$set": {
                    "glb": glb,
                    "result": result,
                    "job_id": job["_id"],
                    "generated_at": utcnow(),
                },
                "$setOnInsert": {
                    "design_id": job["design_id"],
                    "other_design_id": job["other_design_id"],
                    "organization_id": job["organization_id"],
                },
            },
            upsert=True,
            return_document=ReturnDocument.BEFORE,
        )
        old = ((before or {}).get("glb") or {}).get("sha256")
        if old and old != glb["sha256"]:
            await self._release(old)
        return True

    async def _release(self, sha: str) -> None:
        # The diff's GLB was committed holding one content reference (as a viewer GLB is): give it back; the
        # bytes go with the last reference, whoever else (another pair, a design) holds the same content.
        await self.designs.release_content(sha)

    # ------------------------------------------------------------------ designs going away or relabelled

    async def design_removed(self, design_id: str) -> None:
        """A deleted version takes its diffs (and their GLBs) and carry offers with it."""
        query = {"$or": [{"design_id": design_id}, {"other_design_id": design_id}]}
        async for record in self.db[REVISION_DIFFS].find(query, {"glb.sha256": 1}):
            await self.db[REVISION_DIFFS].delete_one({"_id": record["_id"]})
            sha = (record.get("glb") or {}).get("sha256")
            if sha:
                await self._release(sha)
        await self.db[MARKUP_CARRIES].delete_many({"$or": [{"_id": design_id}, {"from_design_id": design_id}]})
        await self.db[JOBS].update_many(
            {"other_design_id": design_id, "status": {"$in": list(ACTIVE)}}, {"$set": {"cancel_requested": True}}
        )

    async def design_relabelled(self, design_id: str) -> None:
        """Jobs made from two versions keep the stricter label of the two as either changes."""
        async for job in self.db[JOBS].find(
            {"$or": [{"design_id": design_id}, {"other_design_id": design_id}], "other_design_id": {"$exists": True}},
            {"design_id": 1, "other_design_id": 1},
        ):
            labels = [
                d["classification"]
                async for d in self.db[DESIGNS].find(
                    {"_id": {"$in": [job["design_id"], job["other_design_id"]]}}, {"classification": 1}
                )
            ]
            if len(labels) == 2:
                label = stricter(*labels) if comparable(*labels) else Classification.ITAR.value
                await self.db[JOBS].update_one({"_id": job["_id"]}, {"$set": {"classification": label}})

    # ------------------------------------------------------------------ markups follow revisions

    async def analysed(self, design: Mapping[str, Any]) -> dict[str, Any] | None:
        """A version finished analysis (job runner): offer the open markups of the previous version's latest
        review to its reviews, re-anchored by a MARKUP_CARRY job. Returns that job, or None when there is
        nothing to carry."""
        previous = await self.previous_version(design)
        if previous is None:
            return None
        reviews = self.db[REVIEWS].find({"design_id": previous["_id"]}, sort=[("created_at", -1)], limit=1)
        review = next(iter([r async for r in reviews]), None)
        if review is None:
            return None
        markups = [
            m
            async for m in self.db[MARKUPS].find(
                {"review_id": review["_id"], "status": MarkupStatus.OPEN.value},
                sort=[("created_at", 1), ("_id", 1)],
                limit=MAX_CARRY,
            )
        ]
        if not markups:
            return None
        if not comparable(design["classification"], previous["classification"]):
            log.info("design %s: markups of version %s not offered (labels)", design["_id"], previous["_id"])
            return None
        paths = await self._paths(previous["_id"], {m["bom_node"] for m in markups if m.get("bom_node")})
        job = self._revision_job(design, previous, JobType.MARKUP_CARRY, None)
        offer = {
            "_id": design["_id"],
            "from_design_id": previous["_id"],
            "from_review_id": review["_id"],
            "organization_id": design["organization_id"],
            "job_id": job["_id"],
            "markups": [
                {
                    "id": m["_id"],
                    "position": m["position"],
                    "bom_path": paths.get(m.get("bom_node")),  # type: ignore[arg-type]
                    "face_index": m.get("face_index"),
                }
                for m in markups
            ],
            "results": None,
            "carried_into": None,
            "created_at": utcnow(),
        }
        await self.db[JOBS].insert_one(job)
        await self.db[MARKUP_CARRIES].replace_one({"_id": design["_id"]}, offer, upsert=True)
        await announce_job(self.publisher, job, "job.status", status_event(job))
        return job

    async def _paths(self, design_id: str, node_ids: set[int]) -> dict[int, str]:
        """BOM paths of the given nodes, for nodes the analysis made (a hand-made node has no geometry)."""
        return {
            n["_id"]: n["path"]
            async for n in self.db[BOM_NODES].find(
                {"_id": {"$in": sorted(node_ids)}, "design_id": design_id, "source": "analysis"}, {"path": 1}
            )
        }

    async def carry_input(self, job: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The markups a MARKUP_CARRY job re-anchors (job runner)."""
        offer = await self.db[MARKUP_CARRIES].find_one({"_id": job["design_id"], "job_id": job["_id"]})
        return list((offer or {}).get("markups") or [])

    async def attach_carry(self, job: Mapping[str, Any], results: list[dict[str, Any]]) -> bool:
        """Store the re-anchored positions (job runner), with the new version's BOM node ids for their paths."""
        paths = {r["bom_path"] for r in results if r.get("bom_path")}
        nodes = {
            n["path"]: n["_id"]
            async for n in self.db[BOM_NODES].find(
                {"design_id": job["design_id"], "path": {"$in": sorted(paths)}}, {"path": 1}
            )
        }
        for result in results:
            result["bom_node"] = nodes.get(result.get("bom_path"))
        updated = await self.db[MARKUP_CARRIES].update_one(
            {"_id": job["design_id"], "job_id": job["_id"]}, {"$set": {"results": results, "anchored_at": utcnow()}}
        )
        return bool(updated.matched_count)

    async def carry_offer(self, principal: Principal, design_id: str) -> dict[str, Any]:
        """GET /api/designs/{id}/carried-markups/: what the previous version's review left open, re-anchored."""
        design = await self.designs.get_visible(principal, design_id)
        offer = await self.db[MARKUP_CARRIES].find_one({"_id": design["_id"]})
        if offer is None:
            return {"design": design["_id"], "status": "NONE", "markups": []}
        previous = await self.designs.get_visible(principal, offer["from_design_id"])
        job = await self.db[JOBS].find_one({"_id": offer["job_id"]})
        originals = {
            m["_id"]: m async for m in self.db[MARKUPS].find({"_id": {"$in": [m["id"] for m in offer["markups"]]}})
        }
        names = await self.markups._names({m["author_id"] for m in originals.values()})
        results = {r["id"]: r for r in offer.get("results") or []}
        listed = []
        for entry in offer["markups"]:
            original = originals.get(entry["id"])
            if original is None:
                continue  # deleted since
            listed.append(
                {
                    "markup": render_original(original, names.get(original["author_id"])),
                    "carry": render_carry(results.get(entry["id"])),
                }
            )
        status = "READY" if offer.get("results") is not None else (job["status"] if job is not None else "PENDING")
        return {
            "design": design["_id"],
            "from_design": design_summary(previous),
            "from_review": offer["from_review_id"],
            "status": status,
            "job_id": offer["job_id"],
            "carried_into": offer.get("carried_into"),
            "markups": listed,
        }

    async def plan_carry(
        self, principal: Principal, design: Mapping[str, Any], wanted: bool | list[int]
    ) -> list[dict[str, Any]]:
        """Before a review opens on ``design``: the offered markups it will carry (all, or the ids named), or a
        clear refusal. Nothing is written here."""
        if wanted is False:
            return []
        offer = await self.db[MARKUP_CARRIES].find_one({"_id": design["_id"]})
        if offer is None:
            raise ValidationFailed(
                "This version has no markups to carry from the previous one.",
                field_errors={"carry_markups": ["Nothing is offered to this version."]},
            )
        previous = await self.designs.get_visible(principal, offer["from_design_id"])
        if not covers(design["classification"], previous["classification"]):
            raise PermissionDenied(
                f"Markups of a {previous['classification']} version cannot move into a review of a "
                f"{design['classification']} version."
            )
        if offer.get("results") is None:
            job = await self.db[JOBS].find_one({"_id": offer["job_id"]}, {"status": 1, "error_message": 1}) or {}
            if job.get("status") in (JobStatus.FAILURE.value, JobStatus.CANCELLED.value):
                raise Conflict(
                    "The markups could not be re-anchored on this version: "
                    + (job.get("error_message") or job["status"].lower())
                )
            raise Conflict(f"The markups are still being re-anchored on this version (job {offer['job_id']}).")
        results = {r["id"]: r for r in offer["results"]}
        ids = [m["id"] for m in offer["markups"]] if wanted is True else list(dict.fromkeys(wanted))
        unknown = [i for i in ids if i not in results]
        if unknown:
            raise ValidationFailed(
                "Only offered markups can be carried.",
                field_errors={"carry_markups": [f"Not offered to this version: {unknown[:20]}"]},
            )
        found = {
            m["_id"]: m
            async for m in self.db[MARKUPS].find({"_id": {"$in": ids}, "review_id": offer["from_review_id"]})
        }
        return [{"original": found[i], "carry": results[i]} for i in ids if i in found]

    async def apply_carry(
        self, principal: Principal, review: Mapping[str, Any], plan: list[dict[str, Any]], actor: audit.Actor
    ) -> list[int]:
        """The new review's copies of the planned markups: same text, thread and author, re-anchored, linked
        back to the original (which records where it went). Returns the new markup ids."""
        if not plan:
            return []
        created = []
        now = utcnow()
        for item in plan:
            original, carry = item["original"], item["carry"]
            orphaned = bool(carry.get("orphaned"))
            doc = {
                "_id": await next_id(self.db, MARKUPS),
                "organization_id": review["organization_id"],
                "design_id": review["design_id"],
                "review_id": review["_id"],
                "classification": review["classification"],
                "author_id": original["author_id"],
                # An orphan keeps where it was, so it can still be looked at (and resolved or dismissed).
                "position": original["position"] if orphaned or carry.get("position") is None else carry["position"],
                "camera": original.get("camera"),
                "bom_node": None if orphaned else carry.get("bom_node"),
                "face_index": carry.get("face_index") if carry.get("face_followed") else None,
                "annotation_text": original["annotation_text"],
                "severity": original["severity"],
                "severity_rank": SEVERITY_RANK[original["severity"]],
                "status": MarkupStatus.OPEN.value,
                "resolution_notes": None,
                "resolved_by": None,
                "resolved_at": None,
                "dismiss_reason": None,
                "dismissed_by": None,
                "dismissed_at": None,
                "replies": list(original.get("replies") or []),
                "reply_count": int(original.get("reply_count") or 0),
                "carried_from": {
                    "markup_id": original["_id"],
                    "review_id": original["review_id"],
                    "design_id": original["design_id"],
                    "created_at": original["created_at"],
                },
                "carry": render_carry(carry),
                "created_at": now,
                "updated_at": now,
                "version": 1,
            }
            await self.db[MARKUPS].insert_one(doc)
            await self.db[MARKUPS].update_one(
                {"_id": original["_id"]},
                {"$push": {"carried_to": {"markup_id": doc["_id"], "review_id": review["_id"], "at": now}}},
            )
            await audit.record(
                self.db,
                actor,
                "CREATE",
                "Markup",
                doc["_id"],
                organization_id=doc["organization_id"],
                classification=doc["classification"],
                design_id=doc["design_id"],
                changes={
                    "review_id": doc["review_id"],
                    "severity": doc["severity"],
                    "annotation_text": doc["annotation_text"][:500],
                    "carried_from": original["_id"],
                    "moved": doc["carry"]["moved"],
                    "orphaned": doc["carry"]["orphaned"],
                    "distance_mm": doc["carry"]["distance_mm"],
                },
            )
            await announce(
                self.publisher,
                [f"review:{review['_id']}"],
                "markup.created",
                {
                    "markup_id": doc["_id"],
                    "review_id": review["_id"],
                    "design_id": review["design_id"],
                    "classification": review["classification"],
                    "markup": await self.markups.render_one(doc),
                },
            )
            created.append(doc["_id"])
        await self.db[MARKUP_CARRIES].update_one(
            {"_id": review["design_id"]}, {"$set": {"carried_into": review["_id"]}}
        )
        return created


def _pair_id(design_id: str, other_id: str) -> str:
    return f"{design_id}:{other_id}"


def render_carry(result: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """How one markup landed on the new version (processing.geodiff.carry_markups' answer)."""
    if result is None:
        return None
    return {
        "moved": bool(result.get("moved")),
        "orphaned": bool(result.get("orphaned")),
        "distance_mm": result.get("distance_mm"),
        "position": result.get("position"),
        "old_position": result.get("old_position"),
        "bom_node": result.get("bom_node"),
        "face_index": result.get("face_index"),
        "face_followed": bool(result.get("face_followed")),
        "reason": result.get("reason"),
    }


def render_original(doc: Mapping[str, Any], username: str | None) -> dict[str, Any]:
    return {
        "id": doc["_id"],
        "review_session": doc["review_id"],
        "design_asset": doc["design_id"],
        "author": doc["author_id"],
        "author_username": username,
        "annotation_text": doc["annotation_text"],
        "severity": doc["severity"],
        "status": doc["status"],
        "position": doc["position"],
        "bom_node": doc.get("bom_node"),
        "face_index": doc.get("face_index"),
        "reply_count": doc.get("reply_count", 0),
        "created_at": doc["created_at"],
    }
