"""Design assets: signed uploads, versions, classification, status transitions, downloads and analysis results."""

from __future__ import annotations

import hashlib
import hmac
import math
import uuid
from datetime import timedelta
from enum import Enum
from typing import Any

from pydantic import Field
from pymongo import IndexModel, ReturnDocument

from models import audit
from models.cadformat import FormatSniffer, format_for_filename, sanitize_filename
from models.collections import BOM_NODES, DESIGNS, JOBS, MARKUPS, REVIEWS, SERIES, UPLOADS, USERS
from models.database import Db, register_indexes, utcnow
from models.errors import Conflict, PermissionDenied, Unprocessable, ValidationFailed
from models.events import Publisher, access_changed, announce
from models.jobs import JobType, create_job
from models.listing import Filter, Kind, ListSpec, QueryArgs, parse_list_query, run_list
from models.materials import Materials, mass_kg
from models.policy import (
    LEVEL,
    Classification,
    Clearance,
    Principal,
    can,
    check_classification,
    check_document,
    documents_filter,
    require,
)
from models.schema import Input, Uuid
from models.series import Series
from models.storage import FileTooLarge, Storage, StorageWriter, StoredFile, parse_file_hash
from models.viewables import render_viewable

UPLOAD_TTL = timedelta(hours=1)

register_indexes(
    DESIGNS,
    [
        IndexModel([("series_id", 1), ("version_number", 1)], unique=True),
        IndexModel([("organization_id", 1), ("created_at", -1)]),
        IndexModel([("organization_id", 1), ("classification", 1)]),
        IndexModel("content_sha256"),
        IndexModel("status"),
    ],
)
register_indexes(UPLOADS, [IndexModel("expires_at")])


class DesignStatus(str, Enum):
    UPLOADING = "UPLOADING"
    PROCESSING = "PROCESSING"
    READY = "READY"  # analysed, ready for review
    FAILED = "FAILED"  # analysis failed; the job says why
    IN_REVIEW = "IN_REVIEW"
    APPROVED = "APPROVED"
    REJECTED = "REJECTED"
    ARCHIVED = "ARCHIVED"


# Status changes a PATCH may make; IN_REVIEW/APPROVED/REJECTED belong to the review workflow alone.
PATCH_TRANSITIONS = {
    DesignStatus.ARCHIVED.value: {
        DesignStatus.READY.value,
        DesignStatus.FAILED.value,
        DesignStatus.APPROVED.value,
        DesignStatus.REJECTED.value,
    },
    DesignStatus.READY.value: {DesignStatus.ARCHIVED.value},  # un-archive
}

CONTENT_TYPES = {
    "STEP": "application/step",
    "IGES": "model/iges",
    "STL": "model/stl",
    "BREP": "application/octet-stream",
}


class UploadUrlIn(Input):
    filename: str = Field(min_length=1, max_length=1000)
    file_size: int = Field(ge=1)
    content_type: str = Field("application/octet-stream", max_length=200)


class DesignIn(Input):
    series: Uuid
    filename: str = Field(min_length=1, max_length=1000)
    upload_id: Uuid
    revision: str = Field("", max_length=50)
    classification: Classification = Classification.UNCLASSIFIED
    material: str = Field("", max_length=200)
    file_path: str | None = Field(None, max_length=1000)  # older clients send it; ignored


class MultipartDesignIn(Input):
    series: Uuid
    revision: str = Field("", max_length=50)
    classification: Classification = Classification.UNCLASSIFIED
    material: str = Field("", max_length=200)


class FinalizeIn(Input):
    file_hash: str = Field(min_length=64, max_length=80)


class DesignPatch(Input):
    revision: str | None = Field(None, max_length=50)
    material: str | None = Field(None, max_length=200)
    classification: Classification | None = None
    status: DesignStatus | None = None


DESIGN_FIELDS = frozenset(
    {
        "id",
        "series",
        "organization",
        "part_number",
        "series_name",
        "version_number",
        "filename",
        "file_format",
        "file_size_bytes",
        "file_hash",
        "revision",
        "classification",
        "status",
        "is_valid_geometry",
        "validation_errors",
        "warnings",
        "bounding_box",
        "volume_cubic_mm",
        "surface_area_sq_mm",
        "center_of_mass",
        "mass_kg",
        "material",
        "density_kg_m3",
        "length_unit",
        "analysis_job_id",
        "viewable",
        "uploaded_by",
        "uploaded_by_username",
        "created_at",
        "updated_at",
        "version",
    }
)

DESIGN_LIST = ListSpec(
    filters={
        "series": Filter(Kind.UUID, "series_id"),
        "organization": Filter(Kind.UUID, "organization_id"),
        "part_number": Filter(Kind.STR, "part_number", case_insensitive=True),
        "version_number": Filter(Kind.INT, "version_number", ranges=True),
        "classification": Filter(Kind.ENUM, "classification", choices=frozenset(c.value for c in Classification)),
        "status": Filter(Kind.ENUM, "status", choices=frozenset(s.value for s in DesignStatus)),
        "is_valid_geometry": Filter(Kind.BOOL, "is_valid_geometry"),
        "material": Filter(Kind.STR, "material", case_insensitive=True),
        "uploaded_by": Filter(Kind.INT, "uploaded_by"),
        "created_at": Filter(Kind.DATETIME, "created_at", ranges=True),
    },
    search=("filename", "part_number", "material"),
    ordering={
        "created_at": "created_at",
        "updated_at": "updated_at",
        "part_number": "part_number",
        "version_number": "version_number",
        "filename": "filename",
        "file_size_bytes": "file_size_bytes",
        "status": "status",
    },
    default_ordering="-created_at",
    fields=DESIGN_FIELDS,
)


class ContentReceiver:
    """One file on its way into storage: the declared size is a hard bound, the content must match its
    format from the first bytes on, and nothing is left behind unless finish() succeeds."""

    def __init__(self, writer: StorageWriter, fmt: str, declared_size: int) -> None:
        self.writer: StorageWriter | None = writer
        self.sniffer = FormatSniffer(fmt)
        self.declared_size = declared_size
        self.received = 0

    async def feed(self, chunk: bytes) -> None:
        assert self.writer is not None, "feed() after finish() or abort()"
        self.received += len(chunk)
        if self.received > self.declared_size:
            raise FileTooLarge(f"The body is longer than the {self.declared_size} bytes declared.")
        self.sniffer.feed(chunk)
        await self.writer.write(chunk)

    async def finish(self) -> StoredFile:
        assert self.writer is not None, "finish() after finish() or abort()"
        try:
            if self.received != self.declared_size:
                raise ValidationFailed(
                    f"Received {self.received} bytes but {self.declared_size} were declared.",
                    field_errors={"file_size": ["Does not match the body."]},
                )
            self.sniffer.finish(self.received)
            stored = await self.writer.commit()
        except BaseException:
            await self.abort()
            raise
        self.writer = None
        return stored

    async def abort(self) -> None:
        writer, self.writer = self.writer, None
        if writer is not None:
            await writer.abort()


def _sign(secret: str, upload_id: str, expires: int) -> str:
    return hmac.new(secret.encode(), f"upload:{upload_id}:{expires}".encode(), hashlib.sha256).hexdigest()


class Designs:
    """Repository and rules for design assets; every read and write goes through the access policy."""

    def __init__(
        self,
        db: Db,
        storage: Storage,
        publisher: Publisher,
        *,
        secret: str,
        max_upload_bytes: int,
        series: Series,
        materials: Materials,
    ) -> None:
        self.db = db
        self.storage = storage
        self.publisher = publisher
        self.secret = secret
        self.max_upload_bytes = max_upload_bytes
        self.series = series
        self.materials = materials

    # ------------------------------------------------------------------ visibility

    def visible_filter(self, principal: Principal) -> dict[str, Any]:
        """Tenancy and classification in the query, so pages and counts never include a hidden design."""
        return documents_filter(principal)

    async def get_visible(self, principal: Principal, design_id: str) -> dict[str, Any]:
        return check_document(principal, await self.db[DESIGNS].find_one({"_id": design_id}), "design.read", "Design")

    async def list_visible(self, principal: Principal, args: QueryArgs, base_url: str) -> dict[str, Any]:
        query = parse_list_query(DESIGN_LIST, args)
        return await run_list(
            self.db[DESIGNS],
            self.visible_filter(principal),
            query,
            render=self.render_many,
            base_url=base_url,
            args=args,
        )

    async def _check_can_classify(self, principal: Principal, org_id: str, classification: str) -> None:
        # Nobody files a design they themselves could not open: that would hide it from its own author.
        try:
            check_classification(principal, classification, org_id in principal.us_orgs)
        except PermissionDenied as exc:
            raise type(exc)(f"You cannot classify a design as {classification}: {exc.detail}") from None

    # ------------------------------------------------------------------ upload flow

    async def create_upload(self, principal: Principal, data: UploadUrlIn, base_url: str) -> dict[str, Any]:
        self.storage.require_usable()  # no URL this process could not honour
        filename = sanitize_filename(data.filename)
        fmt = format_for_filename(filename)
        if data.file_size > self.max_upload_bytes:
            raise FileTooLarge(f"The file is {data.file_size} bytes; the limit is {self.max_upload_bytes}.")
        now = utcnow()
        expires_at = now + UPLOAD_TTL
        expires = int(expires_at.timestamp())
        upload: dict[str, Any] = {
            "_id": str(uuid.uuid4()),
            "user_id": principal.id,
            "filename": filename,
            "format": fmt,
            "declared_size": data.file_size,
            "content_type": data.content_type,
            "status": "PENDING",
            "created_at": now,
            "expires_at": expires_at,
            "sha256": None,
            "size": None,
        }
        await self.db[UPLOADS].insert_one(upload)
        sig = _sign(self.secret, upload["_id"], expires)
        return {
            "upload_url": f"{base_url}/api/uploads/{upload['_id']}/?expires={expires}&signature={sig}",
            "upload_id": upload["_id"],
            "expires_at": expires_at,
            "max_bytes": data.file_size,
        }

    async def begin_receive(
        self, upload_id: str, expires: str, signature: str, content_length: int | None
    ) -> dict[str, Any]:
        """Check the signed URL and claim the upload for this one request (single use)."""
        if not expires.isdigit() or not hmac.compare_digest(_sign(self.secret, upload_id, int(expires)), signature):
            raise PermissionDenied("The upload URL signature is not valid.")
        if int(expires) < utcnow().timestamp():
            raise PermissionDenied("The upload URL has expired.")
        self.storage.require_usable()  # before the claim, so the same URL still works on a process that can store
        upload = await self.db[UPLOADS].find_one_and_update(
            {"_id": upload_id, "status": "PENDING"},
            {"$set": {"status": "RECEIVING", "receiving_at": utcnow()}},
            return_document=ReturnDocument.AFTER,
        )
        if upload is None:
            raise Conflict("This upload URL was already used.")
        if content_length is not None and content_length > upload["declared_size"]:
            await self.db[UPLOADS].update_one({"_id": upload_id}, {"$set": {"status": "FAILED"}})
            raise FileTooLarge(f"The body is {content_length} bytes but {upload['declared_size']} were declared.")
        return upload

    async def finish_receive(self, upload: dict[str, Any], stored: StoredFile) -> dict[str, Any]:
        await self.db[UPLOADS].update_one(
            {"_id": upload["_id"]},
            {"$set": {"status": "RECEIVED", "sha256": stored.sha256, "size": stored.size, "received_at": utcnow()}},
        )
        return {"upload_id": upload["_id"], "file_hash": stored.file_hash, "file_size": stored.size}

    async def fail_receive(self, upload: dict[str, Any]) -> None:
        await self.db[UPLOADS].update_one({"_id": upload["_id"]}, {"$set": {"status": "FAILED"}})

    async def receiver(self, fmt: str, declared_size: int) -> ContentReceiver:
        return ContentReceiver(await self.storage.writer(max_size=declared_size), fmt, declared_size)

    async def create(self, principal: Principal, data: DesignIn, actor: audit.Actor) -> dict[str, Any]:
        """Step 3: the asset exists (UPLOADING) once its bytes have arrived; nothing is analysed yet."""
        upload = await self.db[UPLOADS].find_one({"_id": data.upload_id, "user_id": principal.id})
        if upload is None or upload["status"] not in ("RECEIVED",):
            raise ValidationFailed(
                "No finished upload with this id.", field_errors={"upload_id": ["Upload the file to its URL first."]}
            )
        series = await self._authorize_create(principal, data.series, data.classification.value)
        return await self._create(
            principal,
            series,
            filename=sanitize_filename(data.filename),
            fmt=upload["format"],
            upload=upload,
            revision=data.revision,
            classification=data.classification.value,
            material=data.material,
            actor=actor,
            claim_upload=data.upload_id,
        )

    async def _authorize_create(self, principal: Principal, series_id: str, classification: str) -> dict[str, Any]:
        """The series the caller may add a version of, at a classification they could read themselves."""
        series = await self.series.get_visible(principal, series_id)
        require(principal, "design.create", series["organization_id"])
        await self._check_can_classify(principal, series["organization_id"], classification)
        return series

    async def _create(
        self,
        principal: Principal,
        series: dict[str, Any],
        *,
        filename: str,
        fmt: str,
        upload: dict[str, Any],
        revision: str,
        classification: str,
        material: str,
        actor: audit.Actor,
        claim_upload: str | None,
    ) -> dict[str, Any]:
        """The design document of a stored upload (claimed once), its version allocated, audited and announced."""
        series_id = series["_id"]
        org_id = series["organization_id"]
        if format_for_filename(filename) != fmt:
            raise ValidationFailed(
                "The filename's extension does not match the uploaded file.",
                field_errors={"filename": [f"Expected a {fmt} file name."]},
            )
        density = await self.materials.density(org_id, material) if material else None
        if claim_upload is not None:
            claimed = await self.db[UPLOADS].find_one_and_update(
                {"_id": claim_upload, "status": "RECEIVED"}, {"$set": {"status": "USED"}}
            )
            if claimed is None:
                raise Conflict("This upload was already used for another design.")
        version = await self.series.allocate_version(series_id)
        now = utcnow()
        doc = {
            "_id": str(uuid.uuid4()),
            "organization_id": org_id,
            "series_id": series_id,
            "part_number": series["part_number"],
            "version_number": version,
            "filename": filename,
            "file_format": fmt,
            "file_size_bytes": upload["size"],
            "content_sha256": upload["sha256"],
            "file_hash": None,
            "revision": revision,
            "classification": classification,
            "status": DesignStatus.UPLOADING.value,
            "material": material,
            "density_kg_m3": density,
            "is_valid_geometry": None,
            "validation_errors": [],
            "warnings": [],
            "bounding_box": None,
            "volume_cubic_mm": None,
            "surface_area_sq_mm": None,
            "center_of_mass": None,
            "mass_kg": None,
            "analysis": None,
            "analysis_job_id": None,
            "uploaded_by": principal.id,
            "created_at": now,
            "updated_at": now,
            "version": 1,
        }
        await self.db[DESIGNS].insert_one(doc)
        await audit.record(
            self.db,
            actor,
            "CREATE",
            "DesignAsset",
            doc["_id"],
            organization_id=org_id,
            classification=classification,
            changes={
                "filename": filename,
                "classification": classification,
                "version_number": version,
                "file_size_bytes": upload["size"],
            },
        )
        await self._announce(doc, "design.created")
        return doc

    async def finalize(
        self, principal: Principal, design_id: str, file_hash: str, actor: audit.Actor
    ) -> dict[str, Any]:
        """Step 4: the client's hash must equal what the server received; then analysis is queued."""
        doc = await self.get_visible(principal, design_id)
        require(principal, "design.create", doc["organization_id"])
        if doc["status"] != DesignStatus.UPLOADING.value:
            raise Conflict("This upload is already finalized.")
        try:
            claimed = parse_file_hash(file_hash)
        except ValueError:
            raise ValidationFailed(
                "file_hash must be sha256:<64 hex digits>.",
                field_errors={"file_hash": ["Expected sha256:<64 hex digits>."]},
            ) from None
        if not hmac.compare_digest(claimed, doc["content_sha256"]):
            raise Unprocessable(
                "The file hash does not match the uploaded content; the upload stays unfinished.",
                field_errors={"file_hash": ["Does not match the received bytes."]},
            )
        return await self._start_processing(principal, doc, actor)

    async def _start_processing(self, principal: Principal, doc: dict[str, Any], actor: audit.Actor) -> dict[str, Any]:
        updated = await self.db[DESIGNS].find_one_and_update(
            {"_id": doc["_id"], "status": DesignStatus.UPLOADING.value},
            {
                "$set": {
                    "status": DesignStatus.PROCESSING.value,
                    "file_hash": f"sha256:{doc['content_sha256']}",
                    "updated_at": utcnow(),
                },
                "$inc": {"version": 1},
            },
            return_document=ReturnDocument.AFTER,
        )
        if updated is None:
            raise Conflict("This upload is already finalized.")
        job = await create_job(self.db, updated, JobType.PROCESSING, created_by=principal.id)
        await self.db[DESIGNS].update_one({"_id": doc["_id"]}, {"$set": {"analysis_job_id": job["_id"]}})
        await audit.record(
            self.db,
            actor,
            "FINALIZE",
            "DesignAsset",
            doc["_id"],
            organization_id=doc["organization_id"],
            classification=doc["classification"],
            changes={"file_hash": updated["file_hash"], "analysis_job_id": job["_id"]},
        )
        await self._announce(
            updated, "design.status", {"status": DesignStatus.PROCESSING.value, "analysis_job_id": job["_id"]}
        )
        return {
            "status": DesignStatus.PROCESSING.value,
            "analysis_job_id": job["_id"],
            "message": "File upload finalized, processing started",
            "id": doc["_id"],
        }

    async def create_direct(
        self, principal: Principal, data: MultipartDesignIn, filename: str, content: bytes, actor: audit.Actor
    ) -> dict[str, Any]:
        """The one-request upload: steps 2-4 at once for small files and scripts. Permission comes first,
        so a caller who may not add this design never gets a byte into storage."""
        filename = sanitize_filename(filename)
        fmt = format_for_filename(filename)
        series = await self._authorize_create(principal, data.series, data.classification.value)
        receiver = await self.receiver(fmt, len(content))
        try:
            await receiver.feed(content)
        except BaseException:
            await receiver.abort()
            raise
        stored = await receiver.finish()
        upload = {"size": stored.size, "sha256": stored.sha256}
        try:
            doc = await self._create(
                principal,
                series,
                filename=filename,
                fmt=fmt,
                upload=upload,
                revision=data.revision,
                classification=data.classification.value,
                material=data.material,
                actor=actor,
                claim_upload=None,
            )
        except BaseException:
            await self.release_content(stored.sha256)
            raise
        result = await self._start_processing(principal, doc, actor)
        return {**doc, "status": result["status"], "analysis_job_id": result["analysis_job_id"]}

    # ------------------------------------------------------------------ reads

    async def download(
        self, principal: Principal, design_id: str, actor: audit.Actor, byte_range: str | None
    ) -> dict[str, Any]:
        doc = await self.get_visible(principal, design_id)
        if doc["status"] == DesignStatus.UPLOADING.value:
            raise Conflict("The upload of this design is not finalized yet.")
        await audit.record(
            self.db,
            actor,
            "DOWNLOAD",
            "DesignAsset",
            design_id,
            organization_id=doc["organization_id"],
            classification=doc["classification"],
            changes={"range": byte_range} if byte_range else {},
        )
        return doc

    async def metadata(self, principal: Principal, design_id: str) -> dict[str, Any]:
        doc = await self.get_visible(principal, design_id)
        analysis = doc.get("analysis") or {}
        geometry = analysis.get("geometry") or {}
        analysed = doc["status"] not in (DesignStatus.UPLOADING.value, DesignStatus.PROCESSING.value) and analysis
        state = (
            "complete"
            if analysed
            else ("failed" if doc["status"] == DesignStatus.FAILED.value else doc["status"].lower())
        )
        return {
            "status": state,
            "geometry": {}
            if not analysed
            else {
                "bounding_box": doc.get("bounding_box"),
                "volume_cubic_mm": doc.get("volume_cubic_mm"),
                "surface_area_sq_mm": doc.get("surface_area_sq_mm"),
                "center_of_mass": doc.get("center_of_mass"),
                "inertia_tensor": geometry.get("inertia_tensor"),
                "principal_moments": geometry.get("principal_moments"),
                "topology": analysis.get("topology"),
                "length_unit": analysis.get("length_unit"),
                "source_length_unit": analysis.get("source_length_unit"),
            },
            "material": {
                "name": doc.get("material") or None,
                "density_kg_m3": doc.get("density_kg_m3"),
                "mass_kg": doc.get("mass_kg"),
            },
            "validation": {}
            if not analysed
            else {
                "is_valid": doc.get("is_valid_geometry"),
                "errors": doc.get("validation_errors", []),
                "warnings": doc.get("warnings", []),
            },
        }

    # ------------------------------------------------------------------ writes

    async def update(
        self, principal: Principal, design_id: str, patch: DesignPatch, actor: audit.Actor, if_match: str | None = None
    ) -> dict[str, Any]:
        """Revision, material (mass follows), classification (lowering needs ADMIN/OWNER) or archive status."""
        doc = await self.get_visible(principal, design_id)
        org_id = doc["organization_id"]
        require(principal, "design.update", org_id)
        if if_match is not None and if_match.strip('W/"') != str(doc["version"]):
            raise Conflict("The design changed since you read it (If-Match does not match).")
        values = patch.model_dump(exclude_unset=True, mode="json")
        changes: dict[str, Any] = {}
        new_class = values.get("classification")
        if new_class is not None and new_class != doc["classification"]:
            if _rank(new_class) < _rank(doc["classification"]):
                require(principal, "design.lower_classification", org_id, hide=False)
            await self._check_can_classify(principal, org_id, new_class)
            changes["classification"] = {"old": doc["classification"], "new": new_class}
        new_status = values.get("status")
        if new_status is not None and new_status != doc["status"]:
            if doc["status"] not in PATCH_TRANSITIONS.get(new_status, set()):
                raise Conflict(
                    f"Status cannot change from {doc['status']} to {new_status} here"
                    + (
                        " (the review workflow decides approval)."
                        if new_status in ("APPROVED", "REJECTED", "IN_REVIEW")
                        else "."
                    ),
                    field_errors={"status": [f"Not allowed from {doc['status']}."]},
                )
            require(principal, "design.archive", org_id, hide=False)
            changes["status"] = {"old": doc["status"], "new": new_status}
        for key in ("revision", "material"):
            if key in values and values[key] != doc.get(key):
                changes[key] = {"old": doc.get(key), "new": values[key]}
        if not changes:
            return doc
        update: dict[str, Any] = {k: v["new"] for k, v in changes.items()}
        if "material" in changes:
            # Mass follows the material without re-reading the file: volume is already known.
            density = await self.materials.density(org_id, values["material"]) if values["material"] else None
            update["density_kg_m3"] = density
            update["mass_kg"] = _mass(doc.get("volume_cubic_mm"), density)
        update["updated_at"] = utcnow()
        updated = await self.db[DESIGNS].find_one_and_update(
            {"_id": design_id, "version": doc["version"]},
            {"$set": update, "$inc": {"version": 1}},
            return_document=ReturnDocument.AFTER,
        )
        if updated is None:
            raise Conflict("The design changed meanwhile; read it again and retry.")
        if "classification" in changes:
            await self.db[JOBS].update_many(
                {"design_id": design_id}, {"$set": {"classification": changes["classification"]["new"]}}
            )
            # BOM nodes, reviews and markups carry their design's classification so lists filter in the query.
            for dependant in (BOM_NODES, REVIEWS, MARKUPS):
                await self.db[dependant].update_many(
                    {"design_id": design_id}, {"$set": {"classification": changes["classification"]["new"]}}
                )
        action = (
            "DOWNGRADE_CLASSIFICATION"
            if "classification" in changes
            and _rank(changes["classification"]["new"]) < _rank(changes["classification"]["old"])
            else "UPDATE"
        )
        await audit.record(
            self.db,
            actor,
            action,
            "DesignAsset",
            design_id,
            organization_id=org_id,
            classification=updated["classification"],
            changes=changes,
        )
        await self._announce(updated, "design.updated", {"changes": list(changes)})
        if "classification" in changes:
            # Live subscriptions to this design, its reviews and jobs are checked again under the new label.
            await access_changed(self.publisher, None, "classification_changed")
        return updated

    async def delete(self, principal: Principal, design_id: str, actor: audit.Actor) -> None:
        doc = await self.get_visible(principal, design_id)
        org_id = doc["organization_id"]
        if not (doc["uploaded_by"] == principal.id and can(principal, "design.create", org_id)):
            require(principal, "design.delete_any", org_id, hide=False)
        await self.remove(doc)
        await audit.record(
            self.db,
            actor,
            "DELETE",
            "DesignAsset",
            design_id,
            organization_id=org_id,
            classification=doc["classification"],
            changes={"filename": doc["filename"], "version_number": doc["version_number"]},
        )
        await self._announce(doc, "design.deleted")

    async def remove(self, doc: dict[str, Any]) -> None:
        """Delete a design and its dependants; the stored file goes when nothing else references it."""
        await self.db[DESIGNS].delete_one({"_id": doc["_id"]})
        await self.db[JOBS].update_many(
            {"design_id": doc["_id"], "status": {"$in": ["PENDING", "PROCESSING"]}},
            {"$set": {"cancel_requested": True}},
        )
        for dependant in (BOM_NODES, REVIEWS, MARKUPS):
            await self.db[dependant].delete_many({"design_id": doc["_id"]})
        if doc.get("content_sha256"):
            await self.release_content(doc["content_sha256"])
        if (doc.get("viewable") or {}).get("sha256"):
            await self.release_content(doc["viewable"]["sha256"])

    async def release_content(self, sha: str) -> None:
        """Delete stored content (an upload or a viewer GLB) that no design and no pending upload references."""
        for collection, query in (
            (DESIGNS, {"content_sha256": sha}),
            (DESIGNS, {"viewable.sha256": sha}),
            (UPLOADS, {"sha256": sha, "status": "RECEIVED"}),
        ):
            if await self.db[collection].count_documents(query, limit=1):
                return
        await self.storage.delete(sha)

    # ------------------------------------------------------------------ analysis results (job runner)

    async def apply_analysis(
        self, design_id: str, result: dict[str, Any], viewable: dict[str, Any] | None = None
    ) -> dict[str, Any] | None:
        """Store an analysis result (and the stored viewer GLB made with it) on its design; it becomes READY."""
        doc = await self.db[DESIGNS].find_one({"_id": design_id})
        if doc is None:
            return None
        geometry = result.get("geometry") or {}
        validation = result.get("validation") or {}
        volume = geometry.get("volume_mm3")
        update = {
            "analysis": result,
            "is_valid_geometry": validation.get("is_valid_geometry"),
            "validation_errors": validation.get("validation_errors", []),
            "warnings": validation.get("warnings", []),
            "bounding_box": {k: geometry["bounding_box"][k] for k in ("min", "max")}
            if geometry.get("bounding_box")
            else None,
            "volume_cubic_mm": volume,
            "surface_area_sq_mm": geometry.get("surface_area_mm2"),
            "center_of_mass": geometry.get("center_of_mass"),
            "length_unit": result.get("source_length_unit"),
            "mass_kg": _mass(volume, doc.get("density_kg_m3")),
            "status": DesignStatus.READY.value,
            "updated_at": utcnow(),
        }
        if viewable is not None:
            update["viewable"] = viewable
        updated = await self.db[DESIGNS].find_one_and_update(
            {"_id": design_id, "status": DesignStatus.PROCESSING.value},
            {"$set": update, "$inc": {"version": 1}},
            return_document=ReturnDocument.AFTER,
        )
        if updated is not None:
            await self._announce(updated, "design.status", {"status": updated["status"]})
        return updated

    async def mark_failed(self, design_id: str, message: str) -> None:
        updated = await self.db[DESIGNS].find_one_and_update(
            {"_id": design_id, "status": DesignStatus.PROCESSING.value},
            {
                "$set": {
                    "status": DesignStatus.FAILED.value,
                    "processing_error": message[:2000],
                    "updated_at": utcnow(),
                },
                "$inc": {"version": 1},
            },
            return_document=ReturnDocument.AFTER,
        )
        if updated is not None:
            await self._announce(updated, "design.status", {"status": updated["status"], "error": message[:500]})

    async def series_versions(self, principal: Principal, series_id: str) -> list[dict[str, Any]]:
        """The versions of a series the caller may see, oldest first."""
        await self.series.get_visible(principal, series_id)
        cursor = self.db[DESIGNS].find(
            {"$and": [{"series_id": series_id}, self.visible_filter(principal)]},
            sort=[("version_number", 1)],
            limit=10_000,
        )
        return await self.render_many([d async for d in cursor])

    async def delete_series(self, principal: Principal, series_id: str, actor: audit.Actor, *, force: bool) -> None:
        """A series and, when forced, its designs with their files, jobs and BOM (Series.delete decides)."""
        for design_id in await self.series.delete(principal, series_id, actor, force=force):
            doc = await self.db[DESIGNS].find_one({"_id": design_id})
            if doc is not None:
                await self.remove(doc)

    # ------------------------------------------------------------------ rendering and events

    async def render_many(self, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        series_ids = list({d["series_id"] for d in docs})
        user_ids = list({d["uploaded_by"] for d in docs})
        names = {
            s["_id"]: s["name"]
            async for s in self.db[SERIES].find({"_id": {"$in": series_ids}}, projection={"name": 1})
        }
        users = {
            u["_id"]: u["username"]
            async for u in self.db[USERS].find({"_id": {"$in": user_ids}}, projection={"username": 1})
        }
        return [render_design(d, names.get(d["series_id"]), users.get(d["uploaded_by"])) for d in docs]

    async def _announce(self, doc: dict[str, Any], event: str, extra: dict[str, Any] | None = None) -> None:
        data = {
            "design_id": doc["_id"],
            "series_id": doc["series_id"],
            "version_number": doc["version_number"],
            "status": doc["status"],
            "classification": doc["classification"],
            "organization_id": doc["organization_id"],
            **(extra or {}),
        }
        await announce(self.publisher, [f"design:{doc['_id']}", f"org:{doc['organization_id']}"], event, data)


def _rank(classification: str) -> int:
    if classification == Classification.ITAR.value:
        return len(LEVEL)  # export control ranks above every clearance level for lowering purposes
    return LEVEL[Clearance(classification)]


def _mass(volume_mm3: float | None, density: float | None) -> float | None:
    if volume_mm3 is None or density is None or not math.isfinite(volume_mm3) or volume_mm3 <= 0:
        return None
    return mass_kg(volume_mm3, density)


def render_design(doc: dict[str, Any], series_name: str | None, username: str | None) -> dict[str, Any]:
    return {
        "id": doc["_id"],
        "series": doc["series_id"],
        "organization": doc["organization_id"],
        "part_number": doc["part_number"],
        "series_name": series_name,
        "version_number": doc["version_number"],
        "filename": doc["filename"],
        "file_format": doc["file_format"],
        "file_size_bytes": doc["file_size_bytes"],
        "file_hash": doc.get("file_hash"),
        "revision": doc.get("revision", ""),
        "classification": doc["classification"],
        "status": doc["status"],
        "is_valid_geometry": doc.get("is_valid_geometry"),
        "validation_errors": doc.get("validation_errors", []),
        "warnings": doc.get("warnings", []),
        "bounding_box": doc.get("bounding_box"),
        "volume_cubic_mm": doc.get("volume_cubic_mm"),
        "surface_area_sq_mm": doc.get("surface_area_sq_mm"),
        "center_of_mass": doc.get("center_of_mass"),
        "mass_kg": doc.get("mass_kg"),
        "material": doc.get("material", ""),
        "density_kg_m3": doc.get("density_kg_m3"),
        "length_unit": doc.get("length_unit"),
        "analysis_job_id": doc.get("analysis_job_id"),
        "viewable": render_viewable(doc.get("viewable")),
        "uploaded_by": doc["uploaded_by"],
        "uploaded_by_username": username,
        "created_at": doc["created_at"],
        "updated_at": doc["updated_at"],
        "version": doc["version"],
    }
