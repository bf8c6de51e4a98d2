"""Design assets: signed uploads, versions, classification, status transitions, downloads and analysis results."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import re
import uuid
from collections.abc import Mapping
from datetime import timedelta
from enum import Enum
from typing import Any, Protocol

from pydantic import Field
from pymongo import IndexModel, ReturnDocument
from pymongo.errors import DuplicateKeyError

from models import audit
from models.cadformat import FormatSniffer, format_for_filename, sanitize_filename
from models.collections import BOM_NODES, DESIGNS, JOBS, MARKUPS, REVIEWS, SERIES, UPLOAD_SLOTS, UPLOADS, USERS
from models.content import ContentStore
from models.database import Db, register_indexes, utcnow
from models.errors import Conflict, PermissionDenied, RateLimited, Unprocessable, ValidationFailed
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
from models.quota import StorageQuota
from models.schema import Input, Uuid
from models.series import Series
from models.storage import FileTooLarge, Storage, StorageWriter, StoredFile, parse_file_hash
from models.transfers import Transfer, audited_range, byte_range
from models.viewables import render_viewable

UPLOAD_TTL = timedelta(hours=1)
# How long one upload body may take to arrive (the HTTP server's body timeout is an hour); an upload still
# RECEIVING after this belongs to a process that died, and the purge releases what it reserved.
RECEIVE_WINDOW = timedelta(hours=2)
PURGE_BATCH = 500  # expired uploads one purge pass handles; the next pass takes the rest

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
register_indexes(
    UPLOADS,
    [
        IndexModel("expires_at"),
        IndexModel("receive_deadline", sparse=True),
        IndexModel([("user_id", 1), ("status", 1)]),
    ],
)


class UploadStatus(str, Enum):
    PENDING = "PENDING"  # URL issued, bytes not sent yet
    RECEIVING = "RECEIVING"  # a request is streaming the body (counts against the concurrent-upload cap)
    RECEIVED = "RECEIVED"  # stored, holding a content reference, waiting to become a design
    USED = "USED"  # a design holds its content and quota now
    FAILED = "FAILED"  # the body was refused; nothing stored or reserved


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
    # Where the design will go: the caller's right to add designs there is checked before the URL is issued, and
    # the bytes count against that organization's quota from then on. Optional when there is only one candidate.
    series: Uuid | None = None
    organization: Uuid | None = None


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
        "validation_findings",
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
    """One file on its way into storage: the declared size (or, undeclared, the writer's limit) is a hard bound,
    the content must match its format from the first bytes on, and nothing is left behind unless finish()
    succeeds; the stored file then comes with one content reference, which the caller owns."""

    def __init__(self, writer: StorageWriter, contents: ContentStore, fmt: str, declared_size: int | None) -> None:
        self.writer: StorageWriter | None = writer
        self.contents = contents
        self.sniffer = FormatSniffer(fmt)
        self.declared_size = declared_size
        self.received = 0

    async def feed(self, chunk: bytes) -> None:
        assert self.writer is not None, "feed() after finish() or abort()"
        self.received += len(chunk)
        if self.declared_size is not None and self.received > self.declared_size:
            raise FileTooLarge(f"The body is longer than the {self.declared_size} bytes declared.")
        self.sniffer.feed(chunk)
        await self.writer.write(chunk)

    async def finish(self) -> StoredFile:
        assert self.writer is not None, "finish() after finish() or abort()"
        try:
            if self.declared_size is not None and self.received != self.declared_size:
                raise ValidationFailed(
                    f"Received {self.received} bytes but {self.declared_size} were declared.",
                    field_errors={"file_size": ["Does not match the body."]},
                )
            self.sniffer.finish(self.received)
            stored = await self.contents.commit(self.writer)
        except BaseException:
            await self.abort()
            raise
        self.writer = None
        return stored

    async def abort(self) -> None:
        writer, self.writer = self.writer, None
        if writer is not None:
            await writer.abort()


class DirectUpload:
    """A one-request (multipart) upload between its file part's first and last byte: authorized, reserved and
    counted as in progress before the first byte is stored (Designs.open_direct)."""

    def __init__(
        self,
        designs: Designs,
        principal: Principal,
        series: dict[str, Any],
        upload: dict[str, Any],
        receiver: ContentReceiver,
        form: MultipartDesignIn,
    ) -> None:
        self.designs = designs
        self.principal = principal
        self.series = series
        self.upload = upload
        self.receiver: ContentReceiver | None = receiver
        self.form = form

    async def feed(self, chunk: bytes) -> None:
        assert self.receiver is not None, "feed() after finish() or abort()"
        await self.receiver.feed(chunk)

    async def finish(self, actor: audit.Actor) -> dict[str, Any]:
        """Store the file, create the design and start its analysis; on any failure nothing is left behind."""
        receiver, self.receiver = self.receiver, None
        assert receiver is not None, "finish() after finish() or abort()"
        try:
            stored = await receiver.finish()
        except BaseException:
            await asyncio.shield(self.designs._drop_upload({"_id": self.upload["_id"]}))
            raise
        return await self.designs.complete_direct(self, stored, actor)

    async def abort(self) -> None:
        """The request failed or the client went away: remove what was written and give the reservation back."""
        receiver, self.receiver = self.receiver, None
        if receiver is not None:
            await receiver.abort()
            await self.designs._drop_upload({"_id": self.upload["_id"], "status": UploadStatus.RECEIVING.value})


class DesignDependant(Protocol):
    """Another repository's records about designs (models.revisions: diffs between versions, carried markups)."""

    async def design_removed(self, design_id: str) -> None: ...

    async def design_relabelled(self, design_id: str) -> None: ...


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
        contents: ContentStore,
        quota: StorageQuota,
        upload_ttl: timedelta = UPLOAD_TTL,
        max_concurrent_uploads: int = 4,
    ) -> None:
        self.db = db
        self.storage = storage
        self.publisher = publisher
        self.secret = secret
        self.max_upload_bytes = max_upload_bytes
        self.series = series
        self.materials = materials
        self.contents = contents
        self.quota = quota
        self.upload_ttl = upload_ttl
        self.max_concurrent_uploads = max_concurrent_uploads
        self.dependants: list[DesignDependant] = []  # told when a design goes or is relabelled

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
        """Step 1: a signed, single-use URL for one file, issued only to someone who may add designs where it
        is going, and counted against that organization's storage quota until it is used or expires."""
        self.storage.require_usable()  # no URL this process could not honour
        filename = sanitize_filename(data.filename)
        fmt = format_for_filename(filename)
        if data.file_size > self.max_upload_bytes:
            raise FileTooLarge(f"The file is {data.file_size} bytes; the limit is {self.max_upload_bytes}.")
        org_id, series_id = await self._upload_target(principal, data)
        now = utcnow()
        expires_at = now + self.upload_ttl
        expires = int(expires_at.timestamp())
        upload: dict[str, Any] = {
            "_id": str(uuid.uuid4()),
            "user_id": principal.id,
            "organization_id": org_id,
            "series_id": series_id,
            "kind": "url",
            "filename": filename,
            "format": fmt,
            "declared_size": data.file_size,
            "content_type": data.content_type,
            "status": UploadStatus.PENDING.value,
            "created_at": now,
            "expires_at": expires_at,
            "reserved_bytes": data.file_size,
            "sha256": None,
            "size": None,
        }
        await self.quota.reserve(org_id, data.file_size)
        try:
            await self.db[UPLOADS].insert_one(upload)
        except BaseException:
            await self.quota.release(org_id, data.file_size)
            raise
        sig = _sign(self.secret, upload["_id"], expires)
        return {
            "upload_url": f"{base_url}/api/uploads/{upload['_id']}/?expires={expires}&signature={sig}",
            "upload_id": upload["_id"],
            "expires_at": expires_at,
            "max_bytes": data.file_size,
            "organization": org_id,
            "series": series_id,
        }

    async def _upload_target(self, principal: Principal, data: UploadUrlIn) -> tuple[str, str | None]:
        """The organization (and series, if named) an upload URL is for, once the caller may add designs there."""
        if data.series is not None:
            series = await self.series.get_visible(principal, data.series)
            org_id = str(series["organization_id"])
            if data.organization is not None and data.organization != org_id:
                raise ValidationFailed(
                    "The series belongs to another organization.",
                    field_errors={"organization": ["Not the series' organization."]},
                )
            require(principal, "design.create", org_id)
            return org_id, str(series["_id"])
        if data.organization is not None:
            require(principal, "design.create", data.organization)
            return data.organization, None
        candidates = [org for org in principal.memberships if can(principal, "design.create", org)]
        if len(candidates) == 1:
            return candidates[0], None
        if not candidates:
            raise PermissionDenied("You may not add designs to any organization, so you cannot upload files.")
        raise ValidationFailed(
            "Name the series (or organization) the file is for: you may add designs to several organizations.",
            field_errors={"series": ["Required when you may upload to several organizations."]},
        )

    async def begin_receive(
        self, upload_id: str, expires: str, signature: str, content_length: int | None
    ) -> dict[str, Any]:
        """Check the signed URL and claim the upload for this one request (single use), within the uploader's
        cap on concurrent uploads."""
        # ASCII digits only, and few of them: int() of thousands of digits raises, and "²".isdigit() is true.
        if not re.fullmatch(r"[0-9]{1,12}", expires):
            raise ValidationFailed(
                "The upload URL's expiry is not a Unix timestamp.", field_errors={"expires": ["Not a timestamp."]}
            )
        if not hmac.compare_digest(_sign(self.secret, upload_id, int(expires)).encode(), signature.encode()):
            raise PermissionDenied("The upload URL signature is not valid.")
        now = utcnow()
        if int(expires) < now.timestamp():
            raise PermissionDenied("The upload URL has expired.")
        self.storage.require_usable()  # before the claim, so the same URL still works on a process that can store
        upload = await self.db[UPLOADS].find_one_and_update(
            {"_id": upload_id, "status": UploadStatus.PENDING.value},
            {
                "$set": {
                    "status": UploadStatus.RECEIVING.value,
                    "receiving_at": now,
                    "receive_deadline": now + RECEIVE_WINDOW,
                }
            },
            return_document=ReturnDocument.AFTER,
        )
        if upload is None:
            raise Conflict("This upload URL was already used.")
        if content_length is not None and content_length > upload["declared_size"]:
            await self.fail_receive(upload)
            raise FileTooLarge(f"The body is {content_length} bytes but {upload['declared_size']} were declared.")
        try:
            await self._take_slot(upload)
        except RateLimited:
            # The URL stays good: the caller may send it again once another upload has finished.
            await self.db[UPLOADS].update_one(
                {"_id": upload_id, "status": UploadStatus.RECEIVING.value},
                {"$set": {"status": UploadStatus.PENDING.value}, "$unset": {"receive_deadline": ""}},
            )
            raise
        return upload

    async def _take_slot(self, upload: dict[str, Any]) -> None:
        """One of the uploader's ``max_concurrent_uploads`` slots for this upload, or RateLimited (429).

        The slots are one array per user, grown only while shorter than the cap (a single conditional update, so
        racing uploads can never take more); an entry lives until its upload leaves RECEIVING or, if its process
        died, until its receive deadline."""
        user_id, cap = upload["user_id"], self.max_concurrent_uploads
        entry = {"id": upload["_id"], "until": upload["receive_deadline"]}
        slots = self.db[UPLOAD_SLOTS]
        for _ in range(3):
            try:
                taken = await slots.update_one(
                    {"_id": user_id, f"active.{cap - 1}": {"$exists": False}}, {"$push": {"active": entry}}, upsert=True
                )
                if taken.modified_count or taken.upserted_id is not None:
                    return
            except DuplicateKeyError:
                pass  # full, or another first upload created the document just now
            await slots.update_one({"_id": user_id}, {"$pull": {"active": {"until": {"$lt": utcnow()}}}})
            doc = await slots.find_one({"_id": user_id})
            if doc is not None and len(doc.get("active", [])) >= cap:
                break
        raise RateLimited(
            f"You already have {cap} uploads in progress, the most one user may send at once. "
            "Send this one when another has finished.",
            headers={"Retry-After": "5"},
            extra={"retry_after": 5},
        )

    async def _free_slot(self, upload: dict[str, Any]) -> None:
        await self.db[UPLOAD_SLOTS].update_one({"_id": upload["user_id"]}, {"$pull": {"active": {"id": upload["_id"]}}})

    async def finish_receive(self, upload: dict[str, Any], stored: StoredFile) -> dict[str, Any]:
        """The body arrived whole: the upload holds the content (and its reservation) until a design takes it."""
        now = utcnow()
        done = await self.db[UPLOADS].update_one(
            {"_id": upload["_id"], "status": UploadStatus.RECEIVING.value},
            {
                "$set": {
                    "status": UploadStatus.RECEIVED.value,
                    "sha256": stored.sha256,
                    "size": stored.size,
                    "received_at": now,
                    "expires_at": now + self.upload_ttl,
                },
                "$unset": {"receive_deadline": ""},
            },
        )
        await self._free_slot(upload)
        if not done.matched_count:
            await self.contents.release(stored.sha256)
            raise Conflict("The upload expired while its body was arriving; ask for a new upload URL.")
        return {"upload_id": upload["_id"], "file_hash": stored.file_hash, "file_size": stored.size}

    async def fail_receive(self, upload: dict[str, Any]) -> None:
        """The body was refused or abandoned: nothing stored, and the organization's reservation is returned."""
        failed = await self.db[UPLOADS].find_one_and_update(
            {"_id": upload["_id"], "status": UploadStatus.RECEIVING.value},
            {"$set": {"status": UploadStatus.FAILED.value, "reserved_bytes": 0}, "$unset": {"receive_deadline": ""}},
        )
        await self._free_slot(upload)
        if failed is not None and failed.get("organization_id"):
            await self.quota.release(failed["organization_id"], int(failed.get("reserved_bytes") or 0))

    async def receiver(self, fmt: str, declared_size: int | None, max_size: int | None = None) -> ContentReceiver:
        limit = declared_size if declared_size is not None else max_size
        return ContentReceiver(await self.contents.writer(max_size=limit), self.contents, fmt, declared_size)

    async def purge_expired_uploads(self, limit: int = PURGE_BATCH) -> int:
        """Remove up to ``limit`` uploads that expired unused or were abandoned mid-body, returning their quota
        reservations and content references (content nothing else holds is deleted). Returns how many."""
        now = utcnow()
        stale = await (
            self.db[UPLOADS]
            .find(
                {
                    "$or": [
                        {"status": {"$ne": UploadStatus.RECEIVING.value}, "expires_at": {"$lt": now}},
                        {"status": UploadStatus.RECEIVING.value, "receive_deadline": {"$lt": now}},
                    ]
                },
                {"_id": 1, "status": 1},
            )
            .limit(limit)
            .to_list()
        )
        purged = 0
        for doc in stale:
            # Matching the status seen makes the removal lose any race with a transition made meanwhile.
            if await self._drop_upload({"_id": doc["_id"], "status": doc["status"]}):
                purged += 1
        return purged

    async def _drop_upload(self, match: Mapping[str, Any]) -> bool:
        """Delete one upload document and give back what it held: its reservation and, once received, its content
        reference. Whoever deletes the document gives them back, so each is returned exactly once."""
        doc = await self.db[UPLOADS].find_one_and_delete(dict(match))
        if doc is None:
            return False
        if doc["status"] == UploadStatus.RECEIVING.value:
            await self._free_slot(doc)
        if doc.get("organization_id"):
            await self.quota.release(doc["organization_id"], int(doc.get("reserved_bytes") or 0))
        if doc["status"] == UploadStatus.RECEIVED.value and doc.get("sha256"):
            await self.contents.release(doc["sha256"])
        return True

    async def create(self, principal: Principal, data: DesignIn, actor: audit.Actor) -> dict[str, Any]:
        """Step 3: the asset exists (UPLOADING) once its bytes have arrived; nothing is analysed yet."""
        upload = await self.db[UPLOADS].find_one({"_id": data.upload_id, "user_id": principal.id})
        if upload is None or upload["status"] != UploadStatus.RECEIVED.value or upload["expires_at"] < utcnow():
            raise ValidationFailed(
                "No finished upload with this id.", field_errors={"upload_id": ["Upload the file to its URL first."]}
            )
        series = await self._authorize_create(principal, data.series, data.classification.value)
        if upload.get("organization_id") != series["organization_id"]:
            raise ValidationFailed(
                "The upload was issued for another organization than this series'.",
                field_errors={"upload_id": ["Ask for an upload URL naming this series."]},
            )
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
        )

    async def authorize_direct(self, principal: Principal, series_id: str) -> dict[str, Any]:
        """The early check of a one-request upload that names its series in the URL: before any body byte."""
        series = await self.series.get_visible(principal, series_id)
        require(principal, "design.create", series["organization_id"])
        return series

    async def _authorize_create(self, principal: Principal, series_id: str, classification: str) -> dict[str, Any]:
        """The series the caller may add a version of, at a classification they could read themselves."""
        series = await self.authorize_direct(principal, series_id)
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
    ) -> dict[str, Any]:
        """The design document of a received upload, claimed once: the upload's content reference and quota
        reservation pass to the design. Its version is allocated, and it is audited and announced."""
        series_id = series["_id"]
        org_id = series["organization_id"]
        if format_for_filename(filename) != fmt:
            raise ValidationFailed(
                "The filename's extension does not match the uploaded file.",
                field_errors={"filename": [f"Expected a {fmt} file name."]},
            )
        density = await self.materials.density(org_id, material) if material else None
        claimed = await self.db[UPLOADS].find_one_and_update(
            {"_id": upload["_id"], "status": UploadStatus.RECEIVED.value},
            {"$set": {"status": UploadStatus.USED.value, "reserved_bytes": 0, "used_at": utcnow()}},
        )
        if claimed is None:
            raise Conflict("This upload was already used for another design.")
        now = utcnow()
        doc = {
            "_id": str(uuid.uuid4()),
            "organization_id": org_id,
            "series_id": series_id,
            "part_number": series["part_number"],
            "version_number": 0,
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
        try:
            doc["version_number"] = await self.series.allocate_version(series_id)
            await self.db[DESIGNS].insert_one(doc)
        except BaseException:
            # The upload keeps what it held (content and reservation) and can be used again.
            await asyncio.shield(
                self.db[UPLOADS].update_one(
                    {"_id": upload["_id"], "status": UploadStatus.USED.value},
                    {"$set": {"status": UploadStatus.RECEIVED.value, "reserved_bytes": claimed["reserved_bytes"]}},
                )
            )
            raise
        await audit.record(
            self.db,
            actor,
            "CREATE",
            "DesignAsset",
            doc["_id"],
            organization_id=org_id,
            classification=classification,
            design_id=doc["_id"],
            changes={
                "filename": filename,
                "classification": classification,
                "version_number": doc["version_number"],
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
            design_id=doc["_id"],
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

    async def open_direct(
        self, principal: Principal, data: MultipartDesignIn, filename: str, bound: int
    ) -> DirectUpload:
        """The one-request upload, opened when its file part begins: permission, classification, quota and the
        concurrent-upload cap are all settled before a byte of the file is stored. ``bound`` is the most the file
        can be (the request's length); it is reserved now and the unused part given back at the end."""
        filename = sanitize_filename(filename)
        fmt = format_for_filename(filename)
        series = await self._authorize_create(principal, data.series, data.classification.value)
        org_id = series["organization_id"]
        bound = min(bound, self.max_upload_bytes)
        now = utcnow()
        upload: dict[str, Any] = {
            "_id": str(uuid.uuid4()),
            "user_id": principal.id,
            "organization_id": org_id,
            "series_id": series["_id"],
            "kind": "direct",
            "filename": filename,
            "format": fmt,
            "declared_size": None,
            "content_type": "multipart/form-data",
            "status": UploadStatus.RECEIVING.value,
            "created_at": now,
            "receiving_at": now,
            "receive_deadline": now + RECEIVE_WINDOW,
            "expires_at": now + RECEIVE_WINDOW,
            "reserved_bytes": bound,
            "sha256": None,
            "size": None,
        }
        await self.quota.reserve(org_id, bound)
        try:
            await self.db[UPLOADS].insert_one(upload)
        except BaseException:
            await self.quota.release(org_id, bound)
            raise
        try:
            await self._take_slot(upload)
            receiver = await self.receiver(fmt, None, max_size=bound)
        except BaseException:
            await asyncio.shield(self._drop_upload({"_id": upload["_id"]}))
            raise
        return DirectUpload(self, principal, series, upload, receiver, data)

    async def complete_direct(self, direct: DirectUpload, stored: StoredFile, actor: audit.Actor) -> dict[str, Any]:
        """Steps 3 and 4 of a one-request upload whose file is stored: the design, then its analysis."""
        upload = direct.upload
        now = utcnow()
        received = await self.db[UPLOADS].update_one(
            {"_id": upload["_id"], "status": UploadStatus.RECEIVING.value},
            {
                "$set": {
                    "status": UploadStatus.RECEIVED.value,
                    "sha256": stored.sha256,
                    "size": stored.size,
                    "reserved_bytes": stored.size,
                    "received_at": now,
                    "expires_at": now + self.upload_ttl,
                },
                "$unset": {"receive_deadline": ""},
            },
        )
        await self._free_slot(upload)
        if not received.matched_count:
            await self.contents.release(stored.sha256)
            raise Conflict("The upload took too long and was purged; send it again.")
        await self.quota.release(upload["organization_id"], int(upload["reserved_bytes"]) - stored.size)
        data = direct.form
        try:
            doc = await self._create(
                direct.principal,
                direct.series,
                filename=upload["filename"],
                fmt=upload["format"],
                upload={**upload, "size": stored.size, "sha256": stored.sha256},
                revision=data.revision,
                classification=data.classification.value,
                material=data.material,
                actor=actor,
            )
        except BaseException:
            await asyncio.shield(self._drop_upload({"_id": upload["_id"], "status": UploadStatus.RECEIVED.value}))
            raise
        result = await self._start_processing(direct.principal, doc, actor)
        return {**doc, "status": result["status"], "analysis_job_id": result["analysis_job_id"]}

    # ------------------------------------------------------------------ reads

    async def download(
        self, principal: Principal, design_id: str, actor: audit.Actor, range_header: str | None
    ) -> Transfer:
        """The original file, whole or the one range asked for; audited with the range as parsed."""
        doc = await self.get_visible(principal, design_id)
        if doc["status"] == DesignStatus.UPLOADING.value:
            raise Conflict("The upload of this design is not finalized yet.")
        size = doc["file_size_bytes"]
        wanted = byte_range(range_header, size)
        await audit.record(
            self.db,
            actor,
            "DOWNLOAD",
            "DesignAsset",
            design_id,
            organization_id=doc["organization_id"],
            classification=doc["classification"],
            design_id=design_id,
            changes=audited_range(wanted),
        )
        start, end = wanted or (0, size)
        return Transfer(self, principal, actor, doc, doc["content_sha256"], start, end, wanted is not None, "original")

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
                "errors": messages(doc.get("validation_errors")),
                "warnings": messages(doc.get("warnings")),
                "findings": findings(doc),
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
            # So do the audit entries about it: who may read them follows the design's label from now on.
            await audit.relabel(self.db, design_id, changes["classification"]["new"])
            for hook in self.dependants:
                await hook.design_relabelled(design_id)
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
            design_id=design_id,
            changes=changes,
        )
        if "classification" in changes:
            # Live subscriptions to this design, its reviews and jobs are checked again under the new label before
            # the change is announced: a listener no longer cleared must not see the event that announces it.
            await access_changed(self.publisher, None, "classification_changed")
        await self._announce(updated, "design.updated", {"changes": list(changes)})
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
            design_id=design_id,
            changes={"filename": doc["filename"], "version_number": doc["version_number"]},
        )
        await self._announce(doc, "design.deleted")

    async def remove(self, doc: dict[str, Any]) -> None:
        """Delete a design and its dependants, then give back its quota and its content references (the stored
        file goes with the last reference). Of two concurrent removals only the one that deleted it releases."""
        removed = await self.db[DESIGNS].find_one_and_delete({"_id": doc["_id"]})
        if removed is None:
            return
        await self.db[JOBS].update_many(
            {"design_id": doc["_id"], "status": {"$in": ["PENDING", "PROCESSING"]}},
            {"$set": {"cancel_requested": True}},
        )
        for dependant in (BOM_NODES, REVIEWS, MARKUPS):
            await self.db[dependant].delete_many({"design_id": doc["_id"]})
        for hook in self.dependants:
            await hook.design_removed(doc["_id"])
        await self.quota.release(removed["organization_id"], int(removed.get("file_size_bytes") or 0))
        if removed.get("content_sha256"):
            await self.release_content(removed["content_sha256"])
        if (removed.get("viewable") or {}).get("sha256"):
            await self.release_content(removed["viewable"]["sha256"])

    async def release_content(self, sha: str) -> None:
        """Drop one reference to stored content (a design's file or viewer GLB, a received upload); the last one
        deletes it."""
        await self.contents.release(sha)

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


class FindingSeverity(str, Enum):
    ERROR = "ERROR"  # the geometry is not valid (is_valid_geometry is false)
    WARNING = "WARNING"  # worth knowing, not invalid (a unitless format, a mesh-only file)


def messages(items: list[Any] | None) -> list[str]:
    """Findings in the reference's shape: their messages, as strings."""
    return [item["message"] if isinstance(item, dict) else str(item) for item in items or []]


def findings(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every finding of the analysis in the structured shape, errors first: {code, message, severity}."""
    out = []
    for severity, key in ((FindingSeverity.ERROR, "validation_errors"), (FindingSeverity.WARNING, "warnings")):
        for item in doc.get(key) or []:
            code, message = (item.get("code"), item.get("message")) if isinstance(item, dict) else (None, str(item))
            out.append({"code": code, "message": message, "severity": severity.value})
    return out


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
        "validation_errors": messages(doc.get("validation_errors")),
        "warnings": messages(doc.get("warnings")),
        "validation_findings": findings(doc),
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
