"""The tamper-evident audit trail: append-only entries chained by SHA-256, and its verification."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from pymongo import DESCENDING, IndexModel
from pymongo.asynchronous.cursor import AsyncCursor
from pymongo.errors import DuplicateKeyError

from models.collections import AUDIT_LOG, BOM_NODES, DESIGNS, JOBS, MARKUPS, META, REVIEWS
from models.database import Db, register_indexes, to_millis, utcnow
from models.errors import NotFound, PermissionDenied, ValidationFailed
from models.listing import Filter, Kind, ListSpec, QueryArgs, each, parse_list_query, run_list
from models.policy import Principal, can, classification_filter, combine

GENESIS = "0" * 64
MAX_APPEND_RETRIES = 50
# Fields kept outside the hashed content: `label` is the classification that governs who may read an entry
# now (its design's current one), `design_id` what keeps it current. Reclassifying a design rewrites them
# without breaking the chain; `classification`, as written, stays hashed.
UNHASHED = frozenset({"hash", "label", "design_id", "search_text"})
# Every entry is bounded whatever a caller sends: strings, lists and nesting in `changes`, and each field.
MAX_TEXT = 1000
MAX_ITEMS = 100
MAX_DEPTH = 6
LABELS_MARKER = "audit_labels"  # meta document: entries written before labels existed have been labelled
# `search_text`: the text values of an entry's changes (a filename, a part number, a comment), kept unhashed beside
# it so /search/ finds them with one bounded regex instead of walking every entry's nested changes.
MAX_SEARCH_TEXT = 2000
SEARCH_TEXT_MARKER = "audit_search_text"  # meta document: entries written before search_text existed have theirs

register_indexes(
    AUDIT_LOG,
    [
        IndexModel([("organization_id", 1), ("timestamp", DESCENDING)]),
        IndexModel([("resource_type", 1), ("resource_id", 1)]),
        IndexModel([("actor_id", 1), ("timestamp", DESCENDING)]),
        IndexModel([("action", 1)]),
        IndexModel([("design_id", 1)], sparse=True),
    ],
)


class AuditAction(str, Enum):
    """Every `action` an entry may record; `?action=` refuses anything else. The reference's five first."""

    CREATE = "CREATE"
    UPDATE = "UPDATE"
    DELETE = "DELETE"
    APPROVE = "APPROVE"  # a reviewer's approving vote (ReviewSession; the vote's details in `changes`)
    REJECT = "REJECT"  # a reviewer's rejecting vote, likewise
    # Designs and uploads
    FINALIZE = "FINALIZE"  # an upload's hash confirmed and its analysis queued
    DOWNLOAD = "DOWNLOAD"  # the original file or the viewer model (`changes.artifact`)
    DOWNLOAD_REVOKED = "DOWNLOAD_REVOKED"  # a download ended mid-stream by a re-check of the policy
    DOWNGRADE_CLASSIFICATION = "DOWNGRADE_CLASSIFICATION"  # an UPDATE that lowered a design's classification
    STATUS_CHANGE = "STATUS_CHANGE"  # a design's status moved by its review (IN_REVIEW, APPROVED, REJECTED, READY)
    # Reviews and markups
    COMPLETE = "COMPLETE"  # a review session's decision rule was met (`changes.outcome`)
    CANCEL = "CANCEL"  # a review session or an analysis job cancelled
    SIGNATURE_FAILED = "SIGNATURE_FAILED"  # a vote whose password signature was wrong
    VOTE = "VOTE"  # votes written before APPROVE/REJECT existed (entries are hashed: never rewritten)
    RESOLVE = "RESOLVE"
    DISMISS = "DISMISS"
    REOPEN = "REOPEN"
    REPLY = "REPLY"
    JOIN = "JOIN"  # a user's first entry into a review room (the timeline's "who joined")
    OVERRIDE = "OVERRIDE"  # an ADMIN released an approval held by a review rule
    # Materials and the trail itself
    UPSERT = "UPSERT"  # an organization's material added or redefined
    EXPORT = "EXPORT"  # an audit export
    # Identity
    LOGIN = "LOGIN"
    LOGIN_FAILED = "LOGIN_FAILED"
    LOGIN_LOCKED = "LOGIN_LOCKED"  # an attempt on an account locked for that address
    LOCKOUT = "LOCKOUT"  # the failure that locked it
    LOGOUT = "LOGOUT"
    END_SESSION = "END_SESSION"
    TOKEN_REUSE = "TOKEN_REUSE"  # a spent refresh token came back: the session was ended
    PASSWORD_CHANGE = "PASSWORD_CHANGE"
    PASSWORD_CHANGE_DENIED = "PASSWORD_CHANGE_DENIED"
    UPDATE_PRIVILEGES = "UPDATE_PRIVILEGES"  # clearance, US-person status or activation changed
    ESCALATION_DENIED = "ESCALATION_DENIED"  # a refused attempt to change those
    # Organizations and invitations
    ADD_MEMBER = "ADD_MEMBER"
    CHANGE_ROLE = "CHANGE_ROLE"
    REMOVE_MEMBER = "REMOVE_MEMBER"
    INVITE_MEMBER = "INVITE_MEMBER"
    ACCEPT_INVITATION = "ACCEPT_INVITATION"
    DECLINE_INVITATION = "DECLINE_INVITATION"
    REVOKE_INVITATION = "REVOKE_INVITATION"


@dataclass(frozen=True)
class Actor:
    """Who acted and from where, as recorded in each entry."""

    user_id: int | None
    username: str | None
    ip_address: str | None = None
    user_agent: str | None = None

    @classmethod
    def system(cls) -> Actor:
        return cls(None, "system")


def _canonical(entry: dict[str, Any]) -> bytes:
    def default(value: Any) -> Any:
        if isinstance(value, datetime):
            return value.isoformat()
        return str(value)

    body = {k: v for k, v in entry.items() if k not in UNHASHED}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), default=default).encode()


def entry_hash(entry: dict[str, Any]) -> str:
    return hashlib.sha256(_canonical(entry)).hexdigest()


def bounded_text(value: Any, limit: int = MAX_TEXT) -> str | None:
    """A text field cut to `limit` characters (marked as cut), or None."""
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def bounded(value: Any, depth: int = 0) -> Any:
    """`changes` as stored: strings, lists, mappings and nesting bounded, so no request grows the trail
    (which can never shrink) by more than a known amount; datetimes as MongoDB keeps them."""
    if isinstance(value, str):
        return bounded_text(value)
    if isinstance(value, datetime):
        # As MongoDB will keep it (UTC, milliseconds): the hash is of what is stored, or the chain breaks.
        aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return to_millis(aware.astimezone(UTC))
    if isinstance(value, dict):
        if depth >= MAX_DEPTH:
            return bounded_text(value)
        items = list(value.items())
        kept = {bounded_text(k, 100): bounded(v, depth + 1) for k, v in items[:MAX_ITEMS]}
        if len(items) > MAX_ITEMS:
            kept["…"] = f"{len(items) - MAX_ITEMS} more"
        return kept
    if isinstance(value, (list, tuple, set, frozenset)):
        if depth >= MAX_DEPTH:
            return bounded_text(value)
        seq = list(value)
        kept_list = [bounded(v, depth + 1) for v in seq[:MAX_ITEMS]]
        if len(seq) > MAX_ITEMS:
            kept_list.append(f"… {len(seq) - MAX_ITEMS} more")
        return kept_list
    return value


def search_text(changes: Any) -> str:
    """The text values of `changes` (depth first, keys left out), joined and cut to MAX_SEARCH_TEXT."""
    parts: list[str] = []
    size = 0

    def walk(value: Any) -> None:
        nonlocal size
        if size >= MAX_SEARCH_TEXT:
            return
        if isinstance(value, str):
            parts.append(value)
            size += len(value) + 1
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(changes)
    return " ".join(parts)[:MAX_SEARCH_TEXT]


async def record(
    db: Db,
    actor: Actor,
    action: AuditAction | str,
    resource_type: str,
    resource_id: Any,
    *,
    organization_id: str | None = None,
    changes: dict[str, Any] | None = None,
    classification: str | None = None,
    design_id: str | None = None,
) -> dict[str, Any]:
    """Append one entry. Its integer id is the chain position, so the unique _id index serialises
    concurrent writers: whoever loses the race re-reads the head and tries the next position.

    An entry about a design or anything of it (review, markup, job, BOM node) names `design_id`: its
    readability then follows the design's current classification (see relabel()).
    `action` must be one of AuditAction: the vocabulary is documented and filterable, so a new kind of entry is
    added there first (an unknown one is a programming error, refused before anything is written)."""
    action = AuditAction(action).value
    timestamp = utcnow()  # at MongoDB's precision, so the hash is of what is stored
    for _ in range(MAX_APPEND_RETRIES):
        head = await db[AUDIT_LOG].find_one({}, sort=[("_id", DESCENDING)], projection={"hash": 1})
        entry: dict[str, Any] = {
            "_id": (head["_id"] + 1) if head else 1,
            "prev_hash": head["hash"] if head else GENESIS,
            "timestamp": timestamp,
            "actor_id": actor.user_id,
            "actor_username": bounded_text(actor.username, 150),
            "ip_address": bounded_text(actor.ip_address, 64),
            "user_agent": bounded_text(actor.user_agent or None, 512),
            "action": action,
            "resource_type": bounded_text(resource_type, 64),
            "resource_id": bounded_text(resource_id, 200),
            "organization_id": organization_id,
            "classification": classification,
            "changes": bounded(changes or {}),
        }
        entry["hash"] = entry_hash(entry)
        entry["label"] = classification
        entry["search_text"] = search_text(entry["changes"])
        if design_id is not None:
            entry["design_id"] = design_id
        try:
            await db[AUDIT_LOG].insert_one(entry)
        except DuplicateKeyError:
            continue
        if design_id is not None:
            await _follow_design(db, entry)
        return entry
    raise RuntimeError("could not append to the audit trail under contention")


async def _follow_design(db: Db, entry: dict[str, Any]) -> None:
    # A reclassification that relabelled the design's entries just before this insert missed this one; the
    # design is read after the insert, so one of the two always sees the other.
    design = await db[DESIGNS].find_one({"_id": entry["design_id"]}, projection={"classification": 1})
    if design is not None and design["classification"] != entry["label"]:
        await db[AUDIT_LOG].update_one({"_id": entry["_id"]}, {"$set": {"label": design["classification"]}})
        entry["label"] = design["classification"]


async def relabel(db: Db, design_id: str, classification: str) -> int:
    """After a design's reclassification: every entry about it or its reviews, markups, jobs and BOM now
    reads as `classification`. Only the unhashed label changes, so the chain still verifies."""
    result = await db[AUDIT_LOG].update_many(
        {"design_id": design_id, "label": {"$ne": classification}}, {"$set": {"label": classification}}
    )
    return int(result.modified_count)


async def label_legacy_entries(db: Db) -> int:
    """Give entries written before labels existed their label and design, once, at start-up: entries about a
    design, review, markup, job or BOM node take the design's current classification. Returns how many.
    A marker in the meta collection makes later start-ups skip the scan."""
    if await db[META].find_one({"_id": LABELS_MARKER}) is not None:
        return 0
    done = (
        await db[AUDIT_LOG].update_many(
            {"label": {"$exists": False}, "classification": None}, {"$set": {"label": None}}
        )
    ).modified_count
    designs: dict[str, str | None] = {}
    async for entry in db[AUDIT_LOG].find({"label": {"$exists": False}}):
        design_id = await _design_of(db, entry)
        if design_id is not None and design_id not in designs:
            design = await db[DESIGNS].find_one({"_id": design_id}, projection={"classification": 1})
            designs[design_id] = design["classification"] if design else None
        label = designs.get(design_id or "") or entry.get("classification")
        update: dict[str, Any] = {"label": label, **({"design_id": design_id} if design_id else {})}
        await db[AUDIT_LOG].update_one({"_id": entry["_id"]}, {"$set": update})
        done += 1
    await db[META].update_one({"_id": LABELS_MARKER}, {"$set": {"at": utcnow()}}, upsert=True)
    return int(done)


async def index_legacy_entries(db: Db) -> int:
    """Give entries written before search_text existed theirs, once, at start-up; returns how many. A marker in the
    meta collection makes later start-ups skip the scan."""
    if await db[META].find_one({"_id": SEARCH_TEXT_MARKER}) is not None:
        return 0
    done = 0
    async for entry in db[AUDIT_LOG].find({"search_text": {"$exists": False}}, projection={"changes": 1}):
        await db[AUDIT_LOG].update_one(
            {"_id": entry["_id"]}, {"$set": {"search_text": search_text(entry.get("changes") or {})}}
        )
        done += 1
    await db[META].update_one({"_id": SEARCH_TEXT_MARKER}, {"$set": {"at": utcnow()}}, upsert=True)
    return done


async def _design_of(db: Db, entry: dict[str, Any]) -> str | None:
    """The design an entry written without `design_id` is about, from its resource (or its changes)."""
    kind, rid, changes = entry.get("resource_type"), entry.get("resource_id"), entry.get("changes") or {}
    if kind == "DesignAsset":
        return str(rid)
    found: str | None = changes.get("design_id") or changes.get("design_asset")
    if found is None and kind in _DEPENDANTS:
        key: Any = (
            int(str(rid)) if kind in ("Markup", "AssemblyNode") and str(rid).isascii() and str(rid).isdigit() else rid
        )
        doc = await db[_DEPENDANTS[kind]].find_one({"_id": key}, projection={"design_id": 1})
        found = doc.get("design_id") if doc else None
    return found if isinstance(found, str) else None


_DEPENDANTS = {"ReviewSession": REVIEWS, "Markup": MARKUPS, "AnalysisJob": JOBS, "AssemblyNode": BOM_NODES}


async def verify_chain(db: Db) -> tuple[bool, int | None]:
    """Walk the whole chain; returns (intact, id of the first bad entry)."""
    prev = GENESIS
    expected_id = 1
    async for entry in db[AUDIT_LOG].find({}, sort=[("_id", 1)]):
        if entry["_id"] != expected_id or entry["prev_hash"] != prev or entry_hash(entry) != entry["hash"]:
            return False, int(entry["_id"])
        prev = entry["hash"]
        expected_id += 1
    return True, None


AUDIT_FIELDS: frozenset[str] = frozenset(
    {
        "id",
        "actor_id",
        "actor_username",
        "action",
        "action_display",
        "resource_type",
        "resource_id",
        "organization",
        "ip_address",
        "user_agent",
        "changes",
        "timestamp",
        "classification",
        "current_classification",
        "design",
        "prev_hash",
        "hash",
    }
)


def cleared_filter(principal: Principal) -> dict[str, Any]:
    """The classification rule over entries: by their current label; an entry written by a server that
    kept no label (an older version, during an upgrade) by the classification it was written with."""
    return {
        "$or": [
            {"label": {"$exists": True, "$eq": None}},
            classification_filter(principal, "label"),
            {
                "label": {"$exists": False},
                "$or": [{"classification": None}, classification_filter(principal)],
            },
        ]
    }


def visible_filter(principal: Principal) -> dict[str, Any]:
    """Staff see the whole trail; ADMIN/OWNER see their organizations' entries; everyone sees their own.
    Entries about classified resources follow the same classification rule as the resources, by the
    resource's current classification."""
    cleared = cleared_filter(principal)
    if principal.is_staff and "admin" in principal.scopes:
        return cleared
    orgs = sorted(org for org in principal.memberships if can(principal, "audit.read", org))
    return {"$and": [{"$or": [{"organization_id": {"$in": orgs}}, {"actor_id": principal.id}]}, cleared]}


def render(entry: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": entry["_id"],
        "actor_id": entry.get("actor_id"),
        "actor_username": entry.get("actor_username"),
        "action": entry["action"],
        "action_display": entry["action"].replace("_", " ").capitalize(),
        "resource_type": entry["resource_type"],
        "resource_id": entry["resource_id"],
        "organization": entry.get("organization_id"),
        "ip_address": entry.get("ip_address"),
        "user_agent": entry.get("user_agent"),
        "changes": entry.get("changes", {}),
        "timestamp": entry["timestamp"],
        "classification": entry.get("classification"),
        "current_classification": entry.get("label", entry.get("classification")),
        "design": entry.get("design_id"),
        "prev_hash": entry["prev_hash"],
        "hash": entry["hash"],
    }


AUDIT_LIST = ListSpec(
    filters={
        "actor_id": Filter(Kind.INT, "actor_id"),
        "action": Filter(Kind.ENUM, "action", choices=frozenset(a.value for a in AuditAction)),
        "resource_type": Filter(Kind.STR, "resource_type"),
        "resource_id": Filter(Kind.STR, "resource_id"),
        "organization": Filter(Kind.UUID, "organization_id"),
        "design": Filter(Kind.UUID, "design_id"),  # the design and everything of it: reviews, markups, jobs
        "timestamp": Filter(Kind.DATETIME, "timestamp", ranges=True),
    },
    # What an entry says and what it changed (search_text: a filename, a part number, a comment), never more than
    # the caller may see: the search runs inside the same visibility filter as the list.
    search=("action", "resource_type", "resource_id", "actor_username", "search_text"),
    ordering={"timestamp": "_id", "id": "_id"},
    default_ordering="-id",
    fields=AUDIT_FIELDS,
)


EXPORT_FORMATS = ("csv", "json")
MAX_EXPORT_ENTRIES = 100_000


class AuditTrail:
    """The trail as the API reads it: lists, one entry, exports and verification, each within what the caller
    may see. Writes go through record(), called by whichever repository made the change."""

    def __init__(self, db: Db) -> None:
        self.db = db

    async def list_visible(self, principal: Principal, args: QueryArgs, base_url: str) -> dict[str, Any]:
        query = parse_list_query(AUDIT_LIST, args)
        return await run_list(
            self.db[AUDIT_LOG], visible_filter(principal), query, render=each(render), base_url=base_url, args=args
        )

    async def search(self, principal: Principal, args: QueryArgs, base_url: str) -> dict[str, Any]:
        """The list's search under the name `q`."""
        renamed = {("search" if k == "q" else k): v for k, v in args.items()}
        return await self.list_visible(principal, renamed, base_url)

    async def get_visible(self, principal: Principal, entry_id: int) -> dict[str, Any]:
        entry = await self.db[AUDIT_LOG].find_one(combine({"_id": entry_id}, visible_filter(principal)))
        if entry is None:
            raise NotFound("Audit entry not found.")
        return entry

    async def export(
        self, principal: Principal, fmt: str, args: QueryArgs, actor: Actor
    ) -> AsyncCursor[dict[str, Any]]:
        """The caller's visible entries matching the list filters (and start_date/end_date), oldest first, as a
        cursor the caller streams; the export itself is recorded first."""
        if fmt not in EXPORT_FORMATS:
            raise ValidationFailed("format must be csv or json.", field_errors={"format": ["Use csv or json."]})
        filters = {k: v for k, v in args.items() if k not in ("format", "start_date", "end_date")}
        if "start_date" in args:
            filters["timestamp__gte"] = args["start_date"]
        if "end_date" in args:
            filters["timestamp__lte"] = args["end_date"]
        query = parse_list_query(AUDIT_LIST, filters)
        await record(self.db, actor, "EXPORT", "AuditLog", fmt, changes={"filter": str(query.filter)[:500]})
        return self.db[AUDIT_LOG].find(
            combine(visible_filter(principal), query.filter), sort=[("_id", 1)], limit=MAX_EXPORT_ENTRIES
        )

    async def verify(self, principal: Principal) -> dict[str, Any]:
        """Walk the whole chain (platform staff only)."""
        if not principal.is_staff:
            raise PermissionDenied("Only platform administrators verify the whole trail.")
        intact, first_bad = await verify_chain(self.db)
        entries = await self.db[AUDIT_LOG].estimated_document_count()
        return {"intact": intact, "first_bad_entry": first_bad, "entries": entries}
