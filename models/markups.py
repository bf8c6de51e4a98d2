"""Markups: 3D annotations in review sessions, their threads of replies, resolution, and who may touch them."""

from __future__ import annotations

import math
from collections.abc import Mapping
from enum import Enum
from typing import Any, Literal

from pydantic import Field
from pymongo import IndexModel, ReturnDocument

from models import audit
from models.collections import BOM_NODES, DESIGNS, MARKUP_REPLIES, MARKUPS, REVIEWS, USERS
from models.database import Db, next_id, register_indexes, utcnow
from models.errors import Conflict, NotFound, PermissionDenied, ValidationFailed
from models.events import Publisher, announce
from models.listing import Filter, Kind, ListSpec, QueryArgs, parse_list_query, run_list
from models.policy import Principal, check_document, documents_filter, require_write
from models.reviews import Reviews
from models.schema import Input, RequiredText, Text, Uuid, refuse_nulls

MAX_REPLIES = 500
MAX_COORDINATE = 1e9  # mm: a thousand kilometres is beyond any model; bigger values are garbage
MAX_FACE_INDEX = 10_000_000

register_indexes(
    MARKUPS,
    [
        IndexModel([("review_id", 1), ("created_at", 1)]),
        IndexModel([("design_id", 1), ("created_at", 1)]),
        IndexModel([("organization_id", 1), ("created_at", -1)]),
        IndexModel([("author_id", 1), ("created_at", -1)]),
    ],
)


class Severity(str, Enum):
    INFO = "INFO"
    MINOR = "MINOR"
    MAJOR = "MAJOR"
    CRITICAL = "CRITICAL"


SEVERITY_RANK = {Severity.INFO.value: 0, Severity.MINOR.value: 1, Severity.MAJOR.value: 2, Severity.CRITICAL.value: 3}


class MarkupStatus(str, Enum):
    OPEN = "OPEN"
    RESOLVED = "RESOLVED"
    DISMISSED = "DISMISSED"


class Vec3(Input):
    """A point or direction in model units (mm)."""

    x: float = Field(ge=-MAX_COORDINATE, le=MAX_COORDINATE)
    y: float = Field(ge=-MAX_COORDINATE, le=MAX_COORDINATE)
    z: float = Field(ge=-MAX_COORDINATE, le=MAX_COORDINATE)


class CameraIn(Input):
    """The view the author saw: perspective (`fov`, degrees) or orthographic (`orthographic_scale`)."""

    position: Vec3
    target: Vec3
    up: Vec3 = Vec3(x=0.0, y=1.0, z=0.0)  # glTF, which the viewer renders, is Y-up
    fov: float | None = Field(None, gt=0, lt=180)
    orthographic_scale: float | None = Field(None, gt=0, le=MAX_COORDINATE)


class MarkupIn(Input):
    review_session: Uuid
    design_asset: Uuid | None = None
    position: Vec3
    camera: CameraIn | None = None
    camera_position: Vec3 | None = None  # a flat form of camera.position / camera.target, also accepted
    camera_target: Vec3 | None = None
    bom_node: int | None = Field(None, ge=1, le=2**53)
    face_index: int | None = Field(None, ge=0, le=MAX_FACE_INDEX)
    annotation_text: RequiredText
    severity: Severity = Severity.INFO


class MarkupPatch(Input):
    position: Vec3 | None = None
    camera: CameraIn | None = None
    camera_position: Vec3 | None = None
    camera_target: Vec3 | None = None
    bom_node: int | None = Field(None, ge=1, le=2**53)
    face_index: int | None = Field(None, ge=0, le=MAX_FACE_INDEX)
    annotation_text: RequiredText | None = None
    severity: Severity | None = None
    status: Literal["OPEN"] | None = None  # reopening; resolve/ and dismiss/ close a markup


class ResolveIn(Input):
    resolution_notes: Text = ""


class DismissIn(Input):
    reason: RequiredText


class ReplyIn(Input):
    text: RequiredText


# WebSocket payloads: the REST body plus the markup's id.
# Socket commands name their markup `markup_id`: the envelope's `id` is the message id (realtime/protocol.py).
class MarkupUpdateCommand(MarkupPatch):
    markup_id: int = Field(ge=1, le=2**53)


class MarkupResolveCommand(ResolveIn):
    markup_id: int = Field(ge=1, le=2**53)


class MarkupDismissCommand(DismissIn):
    markup_id: int = Field(ge=1, le=2**53)


MARKUP_FIELDS = frozenset(
    {
        "id",
        "design_asset",
        "review_session",
        "organization",
        "classification",
        "author",
        "author_username",
        "position",
        "camera",
        "camera_position",
        "camera_target",
        "bom_node",
        "face_index",
        "annotation_text",
        "severity",
        "status",
        "resolution_notes",
        "resolved_by",
        "resolved_at",
        "dismiss_reason",
        "dismissed_by",
        "dismissed_at",
        "reply_count",
        "carried_from",
        "carry",
        "created_at",
        "updated_at",
        "version",
    }
)

MARKUP_LIST = ListSpec(
    filters={
        "design_asset": Filter(Kind.UUID, "design_id"),
        "review_session": Filter(Kind.UUID, "review_id"),
        "organization": Filter(Kind.UUID, "organization_id"),
        "author": Filter(Kind.INT, "author_id"),
        "severity": Filter(Kind.ENUM, "severity", choices=frozenset(s.value for s in Severity)),
        "status": Filter(Kind.ENUM, "status", choices=frozenset(s.value for s in MarkupStatus)),
        "bom_node": Filter(Kind.INT, "bom_node", nullable=True),
        "created_at": Filter(Kind.DATETIME, "created_at", ranges=True),
    },
    search=("annotation_text",),
    ordering={
        "created_at": "created_at",
        "updated_at": "updated_at",
        "severity": "severity_rank",
        "status": "status",
        "id": "_id",
    },
    default_ordering="created_at",
    fields=MARKUP_FIELDS,
)


def _vec(v: Vec3 | None) -> dict[str, float] | None:
    return None if v is None else {"x": v.x, "y": v.y, "z": v.z}


def _camera(camera: CameraIn | None, position: Vec3 | None, target: Vec3 | None) -> dict[str, Any] | None:
    """One stored camera from either the nested form or the flat camera_position/camera_target."""
    if camera is not None and (position is not None or target is not None):
        raise ValidationFailed(
            "Give either camera or camera_position/camera_target, not both.",
            field_errors={"camera": ["Conflicts with camera_position/camera_target."]},
        )
    if camera is None:
        if position is None and target is None:
            return None
        if position is None or target is None:
            missing = "camera_target" if position is not None else "camera_position"
            raise ValidationFailed(
                "camera_position and camera_target go together.",
                field_errors={missing: ["Required with the other camera field."]},
            )
        camera = CameraIn(position=position, target=target, fov=None, orthographic_scale=None)
    if camera.fov is not None and camera.orthographic_scale is not None:
        raise ValidationFailed(
            "A camera is perspective (fov) or orthographic (orthographic_scale), not both.",
            field_errors={"camera": ["Give fov or orthographic_scale, not both."]},
        )
    view = (
        camera.target.x - camera.position.x,
        camera.target.y - camera.position.y,
        camera.target.z - camera.position.z,
    )
    up = (camera.up.x, camera.up.y, camera.up.z)
    if math.hypot(*view) == 0:
        raise ValidationFailed(
            "The camera's position and target coincide.", field_errors={"camera": ["position and target must differ."]}
        )
    cross = (view[1] * up[2] - view[2] * up[1], view[2] * up[0] - view[0] * up[2], view[0] * up[1] - view[1] * up[0])
    if math.hypot(*up) == 0 or math.hypot(*cross) == 0:
        raise ValidationFailed(
            "The camera's up vector is zero or along the line of sight.",
            field_errors={"camera": ["up must be non-zero and not parallel to the view."]},
        )
    return {
        "position": _vec(camera.position),
        "target": _vec(camera.target),
        "up": _vec(camera.up),
        "fov": camera.fov,
        "orthographic_scale": camera.orthographic_scale,
    }


class Markups:
    """Repository and rules for markups; REST handlers and WebSocket commands both call these."""

    def __init__(self, db: Db, publisher: Publisher, reviews: Reviews) -> None:
        self.db = db
        self.publisher = publisher
        self.reviews = reviews

    # ------------------------------------------------------------------ visibility

    def visible_filter(self, principal: Principal) -> dict[str, Any]:
        """A markup carries its design's organization and classification: hidden ones are never counted."""
        return documents_filter(principal)

    async def get_visible(self, principal: Principal, markup_id: int) -> dict[str, Any]:
        doc = await self.db[MARKUPS].find_one({"_id": markup_id}) if isinstance(markup_id, int) else None
        return check_document(principal, doc, "markup.read", "Markup")

    async def _session(self, principal: Principal, doc: Mapping[str, Any], what: str) -> dict[str, Any]:
        """The markup's review session, which must be open, and the caller must take part in it."""
        review = await self.db[REVIEWS].find_one({"_id": doc["review_id"]})
        if review is None:
            raise Conflict("The review session of this markup no longer exists.")
        if not (self.reviews.is_participant(principal, review) or self.reviews.may_moderate(principal, review)):
            raise PermissionDenied(f"Only the review's creator, its reviewers and ADMIN/OWNER may {what} markups.")
        self.reviews.require_open(review)
        return review

    async def _check_anchors(self, design_id: str, bom_node: int | None, face_index: int | None) -> None:
        if bom_node is not None and not await self.db[BOM_NODES].count_documents(
            {"_id": bom_node, "design_id": design_id}, limit=1
        ):
            raise ValidationFailed(
                "No such BOM node in this design.", field_errors={"bom_node": ["Not a BOM node of this design."]}
            )
        if face_index is not None:
            design = await self.db[DESIGNS].find_one({"_id": design_id}, projection={"analysis.topology.faces": 1})
            faces = (((design or {}).get("analysis") or {}).get("topology") or {}).get("faces")
            if isinstance(faces, int) and face_index >= faces:
                raise ValidationFailed(
                    "The face index is beyond the design's faces.",
                    field_errors={"face_index": [f"The design has {faces} faces (0-{faces - 1})."]},
                )

    # ------------------------------------------------------------------ writes

    async def create(self, principal: Principal, data: MarkupIn, actor: audit.Actor) -> dict[str, Any]:
        """A markup in an open session, by a participant or ADMIN/OWNER; the session moves to IN_PROGRESS."""
        require_write(principal)
        review = await self.reviews.get_visible(principal, data.review_session)
        if data.design_asset is not None and data.design_asset != review["design_id"]:
            raise ValidationFailed(
                "The markup's design_asset is not the design under review in review_session.",
                field_errors={"design_asset": ["Does not match the review session's design."]},
            )
        if not (self.reviews.is_participant(principal, review) or self.reviews.may_moderate(principal, review)):
            raise PermissionDenied("Only the review's creator, its reviewers and ADMIN/OWNER create markups.")
        self.reviews.require_open(review)
        camera = _camera(data.camera, data.camera_position, data.camera_target)
        await self._check_anchors(review["design_id"], data.bom_node, data.face_index)
        now = utcnow()
        doc = {
            "_id": await next_id(self.db, MARKUPS),
            "organization_id": review["organization_id"],
            "design_id": review["design_id"],
            "review_id": review["_id"],
            "classification": review["classification"],
            "author_id": principal.id,
            "position": _vec(data.position),
            "camera": camera,
            "bom_node": data.bom_node,
            "face_index": data.face_index,
            "annotation_text": data.annotation_text,
            "severity": data.severity.value,
            "severity_rank": SEVERITY_RANK[data.severity.value],
            "status": MarkupStatus.OPEN.value,
            "resolution_notes": None,
            "resolved_by": None,
            "resolved_at": None,
            "dismiss_reason": None,
            "dismissed_by": None,
            "dismissed_at": None,
            "replies": [],
            "reply_count": 0,
            "created_at": now,
            "updated_at": now,
            "version": 1,
        }
        await self.db[MARKUPS].insert_one(doc)
        await self.reviews.mark_in_progress(review)
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
            },
        )
        await self._announce(doc, "markup.created", {"markup": await self.render_one(doc)})
        return doc

    async def update(
        self, principal: Principal, markup_id: int, patch: MarkupPatch, actor: audit.Actor, if_match: str | None = None
    ) -> dict[str, Any]:
        """The author edits their own markup's content; any participant reopens (status OPEN)."""
        require_write(principal)
        doc = await self.get_visible(principal, markup_id)
        values = patch.model_dump(exclude_unset=True)
        content = set(values) - {"status"}
        if not values:
            return doc
        await self._session(principal, doc, "change")
        if content and doc["author_id"] != principal.id:
            raise PermissionDenied("Only the markup's author edits it.")
        if if_match is not None and if_match.strip('W/"') != str(doc["version"]):
            raise Conflict("The markup changed since you read it (If-Match does not match).")
        refuse_nulls(values, ("position", "annotation_text", "severity", "status"))
        changes: dict[str, Any] = {}
        if "position" in values:
            changes["position"] = _vec(patch.position)
        if content & {"camera", "camera_position", "camera_target"}:
            # Sending only nulls clears the camera; anything else replaces it whole.
            changes["camera"] = _camera(patch.camera, patch.camera_position, patch.camera_target)
        if "bom_node" in values or "face_index" in values:
            await self._check_anchors(doc["design_id"], values.get("bom_node"), values.get("face_index"))
            for key in ("bom_node", "face_index"):
                if key in values:
                    changes[key] = values[key]
        if "annotation_text" in values:
            changes["annotation_text"] = values["annotation_text"]
        if "severity" in values:
            changes["severity"] = patch.severity.value if patch.severity else None
            changes["severity_rank"] = SEVERITY_RANK[changes["severity"]]
        reopened = values.get("status") == MarkupStatus.OPEN.value and doc["status"] != MarkupStatus.OPEN.value
        if reopened:
            changes.update(
                status=MarkupStatus.OPEN.value,
                resolution_notes=None,
                resolved_by=None,
                resolved_at=None,
                dismiss_reason=None,
                dismissed_by=None,
                dismissed_at=None,
            )
        changes = {k: v for k, v in changes.items() if doc.get(k) != v}
        if not changes:
            return doc
        updated = await self.db[MARKUPS].find_one_and_update(
            {"_id": markup_id, "version": doc["version"]},
            {"$set": {**changes, "updated_at": utcnow()}, "$inc": {"version": 1}},
            return_document=ReturnDocument.AFTER,
        )
        if updated is None:
            raise Conflict("The markup changed meanwhile; read it again and retry.")
        audited = {
            k: {"old": doc.get(k), "new": v}
            for k, v in changes.items()
            if k not in ("severity_rank",) and not k.startswith(("resolved_", "dismissed_"))
        }
        await audit.record(
            self.db,
            actor,
            "REOPEN" if reopened else "UPDATE",
            "Markup",
            markup_id,
            organization_id=doc["organization_id"],
            classification=doc["classification"],
            design_id=doc["design_id"],
            changes=audited,
        )
        await self._announce(
            updated,
            "markup.updated",
            {"markup": await self.render_one(updated), "changes": sorted(audited), "reopened": reopened},
        )
        return updated

    async def _close(
        self,
        principal: Principal,
        markup_id: int,
        status: MarkupStatus,
        fields: dict[str, Any],
        actor: audit.Actor,
        event: str,
    ) -> dict[str, Any]:
        """Resolve or dismiss an OPEN markup (participants and ADMIN/OWNER), once, audited and announced."""
        require_write(principal)
        doc = await self.get_visible(principal, markup_id)
        await self._session(principal, doc, "resolve or dismiss")
        if doc["status"] != MarkupStatus.OPEN.value:
            raise Conflict(f"This markup is already {doc['status']}; reopen it first.")
        now = utcnow()
        who = "resolved" if status is MarkupStatus.RESOLVED else "dismissed"
        updated = await self.db[MARKUPS].find_one_and_update(
            {"_id": markup_id, "status": MarkupStatus.OPEN.value},
            {
                "$set": {
                    "status": status.value,
                    f"{who}_by": principal.id,
                    f"{who}_at": now,
                    **fields,
                    "updated_at": now,
                },
                "$inc": {"version": 1},
            },
            return_document=ReturnDocument.AFTER,
        )
        if updated is None:
            raise Conflict("This markup was resolved or dismissed meanwhile.")
        await audit.record(
            self.db,
            actor,
            "RESOLVE" if status is MarkupStatus.RESOLVED else "DISMISS",
            "Markup",
            markup_id,
            organization_id=doc["organization_id"],
            classification=doc["classification"],
            design_id=doc["design_id"],
            changes={"status": {"old": doc["status"], "new": status.value}, **fields},
        )
        await self._announce(updated, event, {"markup": await self.render_one(updated)})
        return updated

    async def resolve(
        self, principal: Principal, markup_id: int, data: ResolveIn, actor: audit.Actor
    ) -> dict[str, Any]:
        return await self._close(
            principal,
            markup_id,
            MarkupStatus.RESOLVED,
            {"resolution_notes": data.resolution_notes},
            actor,
            "markup.resolved",
        )

    async def dismiss(
        self, principal: Principal, markup_id: int, data: DismissIn, actor: audit.Actor
    ) -> dict[str, Any]:
        return await self._close(
            principal, markup_id, MarkupStatus.DISMISSED, {"dismiss_reason": data.reason}, actor, "markup.dismissed"
        )

    async def delete(self, principal: Principal, markup_id: int, actor: audit.Actor) -> None:
        """The author deletes their own markup; ADMIN/OWNER may remove anyone's."""
        require_write(principal)
        doc = await self.get_visible(principal, markup_id)
        review = await self._session(principal, doc, "delete")
        if doc["author_id"] != principal.id and not self.reviews.may_moderate(principal, review):
            raise PermissionDenied("Only the markup's author or an ADMIN/OWNER deletes it.")
        result = await self.db[MARKUPS].delete_one({"_id": markup_id})
        if not result.deleted_count:
            raise NotFound("Markup not found.")
        await audit.record(
            self.db,
            actor,
            "DELETE",
            "Markup",
            markup_id,
            organization_id=doc["organization_id"],
            classification=doc["classification"],
            design_id=doc["design_id"],
            changes={
                "author_id": doc["author_id"],
                "annotation_text": doc["annotation_text"][:500],
                "reply_count": doc.get("reply_count", 0),
            },
        )
        await self._announce(doc, "markup.deleted", {"markup_id": markup_id})

    async def reply(self, principal: Principal, markup_id: int, data: ReplyIn, actor: audit.Actor) -> dict[str, Any]:
        """Add to the markup's thread; participants and ADMIN/OWNER reply while the session is open."""
        require_write(principal)
        doc = await self.get_visible(principal, markup_id)
        await self._session(principal, doc, "reply to")
        now = utcnow()
        reply = {
            "id": await next_id(self.db, MARKUP_REPLIES),
            "author_id": principal.id,
            "text": data.text,
            "created_at": now,
        }
        result = await self.db[MARKUPS].update_one(
            {"_id": markup_id, "reply_count": {"$lt": MAX_REPLIES}},
            # Replies do not bump `version`: they never conflict with an edit of the markup itself.
            {"$push": {"replies": reply}, "$inc": {"reply_count": 1}, "$set": {"updated_at": now}},
        )
        if not result.modified_count:
            if await self.db[MARKUPS].count_documents({"_id": markup_id}, limit=1):
                raise Conflict(f"This thread has reached its limit of {MAX_REPLIES} replies.")
            raise NotFound("Markup not found.")
        await audit.record(
            self.db,
            actor,
            "REPLY",
            "Markup",
            markup_id,
            organization_id=doc["organization_id"],
            classification=doc["classification"],
            design_id=doc["design_id"],
            changes={"reply_id": reply["id"], "text": data.text[:500]},
        )
        rendered = render_reply(reply, principal.username)
        await self._announce(doc, "markup.reply", {"markup_id": markup_id, "reply": rendered})
        return rendered

    # ------------------------------------------------------------------ reads

    async def list_visible(self, principal: Principal, args: QueryArgs, base_url: str) -> dict[str, Any]:
        query = parse_list_query(MARKUP_LIST, args)
        return await run_list(
            self.db[MARKUPS],
            self.visible_filter(principal),
            query,
            render=self.render_many,
            base_url=base_url,
            args=args,
        )

    async def replies(self, principal: Principal, markup_id: int) -> list[dict[str, Any]]:
        doc = await self.get_visible(principal, markup_id)
        return (await self.render_detail(doc))["replies"]

    async def _names(self, ids: set[int]) -> dict[int, str]:
        return {
            u["_id"]: u["username"]
            async for u in self.db[USERS].find({"_id": {"$in": sorted(ids)}}, projection={"username": 1})
        }

    async def render_many(self, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        names = await self._names({d["author_id"] for d in docs})
        return [render_markup(d, names.get(d["author_id"])) for d in docs]

    async def render_one(self, doc: dict[str, Any]) -> dict[str, Any]:
        return (await self.render_many([doc]))[0]

    async def render_detail(self, doc: dict[str, Any]) -> dict[str, Any]:
        replies = doc.get("replies") or []
        names = await self._names({doc["author_id"], *(r["author_id"] for r in replies)})
        out = render_markup(doc, names.get(doc["author_id"]))
        out["replies"] = [render_reply(r, names.get(r["author_id"])) for r in replies]
        return out

    async def _announce(self, doc: Mapping[str, Any], event: str, extra: dict[str, Any]) -> None:
        data = {
            "markup_id": doc["_id"],
            "review_id": doc["review_id"],
            "design_id": doc["design_id"],
            "organization_id": doc["organization_id"],
            "classification": doc["classification"],
            **extra,
        }
        await announce(self.publisher, [f"review:{doc['review_id']}"], event, data)


def render_markup(doc: Mapping[str, Any], username: str | None) -> dict[str, Any]:
    camera = doc.get("camera")
    return {
        "id": doc["_id"],
        "design_asset": doc["design_id"],
        "review_session": doc["review_id"],
        "organization": doc["organization_id"],
        "classification": doc["classification"],
        "author": doc["author_id"],
        "author_username": username,
        "position": doc["position"],
        "camera": camera,
        "camera_position": camera["position"] if camera else None,
        "camera_target": camera["target"] if camera else None,
        "bom_node": doc.get("bom_node"),
        "face_index": doc.get("face_index"),
        "annotation_text": doc["annotation_text"],
        "severity": doc["severity"],
        "status": doc["status"],
        "resolution_notes": doc.get("resolution_notes"),
        "resolved_by": doc.get("resolved_by"),
        "resolved_at": doc.get("resolved_at"),
        "dismiss_reason": doc.get("dismiss_reason"),
        "dismissed_by": doc.get("dismissed_by"),
        "dismissed_at": doc.get("dismissed_at"),
        "reply_count": doc.get("reply_count", 0),
        # Set on a markup carried over from the previous version's review (models.revisions): where it came
        # from, and how it landed on this version (moved, with the distance, or orphaned).
        "carried_from": doc.get("carried_from"),
        "carry": doc.get("carry"),
        "created_at": doc["created_at"],
        "updated_at": doc["updated_at"],
        "version": doc["version"],
    }


def render_reply(reply: Mapping[str, Any], username: str | None) -> dict[str, Any]:
    return {
        "id": reply["id"],
        "author": reply["author_id"],
        "author_username": username,
        "text": reply["text"],
        "created_at": reply["created_at"],
    }
