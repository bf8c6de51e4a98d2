"""The tamper-evident audit trail: append-only entries chained by SHA-256, and its verification."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pymongo import DESCENDING, IndexModel
from pymongo.asynchronous.cursor import AsyncCursor
from pymongo.errors import DuplicateKeyError

from models.collections import AUDIT_LOG
from models.database import Db, register_indexes, utcnow
from models.errors import NotFound, PermissionDenied, ValidationFailed
from models.listing import Filter, Kind, ListSpec, QueryArgs, each, parse_list_query, run_list
from models.policy import Principal, can, classification_filter, combine

GENESIS = "0" * 64
MAX_APPEND_RETRIES = 50

register_indexes(
    AUDIT_LOG,
    [
        IndexModel([("organization_id", 1), ("timestamp", DESCENDING)]),
        IndexModel([("resource_type", 1), ("resource_id", 1)]),
        IndexModel([("actor_id", 1), ("timestamp", DESCENDING)]),
        IndexModel([("action", 1)]),
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

    body = {k: v for k, v in entry.items() if k != "hash"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), default=default).encode()


def entry_hash(entry: dict[str, Any]) -> str:
    return hashlib.sha256(_canonical(entry)).hexdigest()


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
) -> dict[str, Any]:
    """Append one entry. Its integer id is the chain position, so the unique _id index serialises
    concurrent writers: whoever loses the race re-reads the head and tries the next position."""
    now = utcnow()
    timestamp = now.replace(microsecond=now.microsecond // 1000 * 1000)  # what MongoDB keeps
    for _ in range(MAX_APPEND_RETRIES):
        head = await db[AUDIT_LOG].find_one({}, sort=[("_id", DESCENDING)], projection={"hash": 1})
        entry: dict[str, Any] = {
            "_id": (head["_id"] + 1) if head else 1,
            "prev_hash": head["hash"] if head else GENESIS,
            "timestamp": timestamp,
            "actor_id": actor.user_id,
            "actor_username": actor.username,
            "ip_address": actor.ip_address,
            "user_agent": (actor.user_agent or "")[:512] or None,
            "action": action,
            "resource_type": resource_type,
            "resource_id": str(resource_id),
            "organization_id": organization_id,
            "classification": classification,
            "changes": changes or {},
        }
        entry["hash"] = entry_hash(entry)
        try:
            await db[AUDIT_LOG].insert_one(entry)
            return entry
        except DuplicateKeyError:
            continue
    raise RuntimeError("could not append to the audit trail under contention")


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
        "prev_hash",
        "hash",
    }
)


def visible_filter(principal: Principal) -> dict[str, Any]:
    """Staff see the whole trail; ADMIN/OWNER see their organizations' entries; everyone sees their own.
    Entries about classified resources follow the same classification rule as the resources."""
    cleared = {"$or": [{"classification": None}, classification_filter(principal)]}
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
