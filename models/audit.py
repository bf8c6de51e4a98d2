"""The tamper-evident audit trail: append-only entries chained by SHA-256, and its verification."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pymongo import DESCENDING, IndexModel
from pymongo.asynchronous.cursor import AsyncCursor
from pymongo.errors import DuplicateKeyError

from models.collections import AUDIT_LOG, BOM_NODES, DESIGNS, JOBS, MARKUPS, META, REVIEWS
from models.database import Db, register_indexes, utcnow
from models.errors import NotFound, PermissionDenied, ValidationFailed
from models.listing import Filter, Kind, ListSpec, QueryArgs, each, parse_list_query, run_list
from models.policy import Principal, can, classification_filter, combine

GENESIS = "0" * 64
MAX_APPEND_RETRIES = 50
# Fields kept outside the hashed content: `label` is the classification that governs who may read an entry
# now (its design's current one), `design_id` what keeps it current. Reclassifying a design rewrites them
# without breaking the chain; `classification`, as written, stays hashed.
UNHASHED = frozenset({"hash", "label", "design_id"})
# Every entry is bounded whatever a caller sends: strings, lists and nesting in `changes`, and each field.
MAX_TEXT = 1000
MAX_ITEMS = 100
MAX_DEPTH = 6
LABELS_MARKER = "audit_labels"  # meta document: entries written before labels existed have been labelled

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
        return aware.astimezone(UTC).replace(microsecond=aware.microsecond // 1000 * 1000)
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


async def record(
    db: Db,
    actor: Actor,
    action: str,
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
    readability then follows the design's current classification (see relabel())."""
    now = utcnow()
    timestamp = now.replace(microsecond=now.microsecond // 1000 * 1000)  # what MongoDB keeps
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
            "action": bounded_text(action, 64),
            "resource_type": bounded_text(resource_type, 64),
            "resource_id": bounded_text(resource_id, 200),
            "organization_id": organization_id,
            "classification": classification,
            "changes": bounded(changes or {}),
        }
        entry["hash"] = entry_hash(entry)
        entry["label"] = classification
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
        "action": Filter(Kind.STR, "action"),
        "resource_type": Filter(Kind.STR, "resource_type"),
        "resource_id": Filter(Kind.STR, "resource_id"),
        "organization": Filter(Kind.UUID, "organization_id"),
        "design": Filter(Kind.UUID, "design_id"),  # the design and everything of it: reviews, markups, jobs
        "timestamp": Filter(Kind.DATETIME, "timestamp", ranges=True),
    },
    search=("action", "resource_type", "resource_id", "actor_username"),
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
