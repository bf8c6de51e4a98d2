"""A review's replay: the ordered log of what happened in it (from the audit trail), and durable room joins."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pymongo import IndexModel
from pymongo.errors import DuplicateKeyError

from models import audit
from models.collections import AUDIT_LOG, MARKUPS, REVIEW_JOINS
from models.database import Db, register_indexes, utcnow
from models.errors import ValidationFailed
from models.listing import QueryArgs
from models.policy import Principal
from models.reviews import Reviews

DEFAULT_LIMIT = 200
MAX_LIMIT = 1000
MAX_MARKUPS = 20_000  # markups of one review followed into the log

# One document per (review, user): the first time that user joined the review room. Presence itself is
# ephemeral (realtime); this is bounded by the organization's members and is all the replay needs.
register_indexes(REVIEW_JOINS, [IndexModel([("review_id", 1), ("user_id", 1)], unique=True)])

# Audit actions on a review or its markups, as the replay names them; anything else (SIGNATURE_FAILED, a
# download) is not part of the review's story.
_REVIEW_EVENTS = {
    "CREATE": "review.created",
    "UPDATE": "review.updated",
    "VOTE": "vote",
    "APPROVE": "vote",
    "REJECT": "vote",
    "COMPLETE": "review.completed",
    "CANCEL": "review.cancelled",
    "OVERRIDE": "review.overridden",
    "JOIN": "joined",
}
_MARKUP_EVENTS = {
    "CREATE": "markup.created",
    "UPDATE": "markup.updated",
    "REPLY": "markup.reply",
    "RESOLVE": "markup.resolved",
    "DISMISS": "markup.dismissed",
    "REOPEN": "markup.reopened",
    "DELETE": "markup.deleted",
}


def _int(args: QueryArgs, name: str, default: int, low: int, high: int) -> int:
    values = args.get(name) or []
    if not values:
        return default
    raw = values[0].decode() if isinstance(values[0], bytes) else str(values[0])
    if len(values) != 1 or not raw.isascii() or not raw.isdigit() or len(raw) > 12 or not low <= int(raw) <= high:
        raise ValidationFailed(
            f"Invalid value for '{name}'.", field_errors={name: [f"An integer from {low} to {high}."]}
        )
    return int(raw)


def render_event(entry: Mapping[str, Any]) -> dict[str, Any] | None:
    """One audit entry as a replay event: who, when, what (never the client's address or agent)."""
    changes = entry.get("changes") or {}
    markup_id: int | None = None
    if entry["resource_type"] == "Markup":
        kind = _MARKUP_EVENTS.get(entry["action"])
        markup_id = int(entry["resource_id"])
        if kind == "markup.created" and changes.get("carried_from") is not None:
            kind = "markup.carried"
    else:
        kind = _REVIEW_EVENTS.get(entry["action"])
        if kind == "vote" and entry["action"] in ("APPROVE", "REJECT"):
            changes = {"decision": entry["action"], **changes}
    if kind is None:
        return None
    return {
        "seq": entry["_id"],
        "at": entry["timestamp"],
        "type": kind,
        "actor": {"id": entry.get("actor_id"), "username": entry.get("actor_username")},
        "markup_id": markup_id,
        "data": changes,
    }


class Timeline:
    """The replay of a review and the joins it shows; readable by whoever may read the review."""

    def __init__(self, db: Db, reviews: Reviews) -> None:
        self.db = db
        self.reviews = reviews

    async def joined(self, principal: Principal, review_id: str) -> bool:
        """Record the caller's first join of a review room (the realtime channel authorizer calls this after the
        policy allowed the subscription). True the first time, which is also audited as JOIN."""
        doc = await self.reviews.get_visible(principal, review_id)
        try:
            await self.db[REVIEW_JOINS].insert_one(
                {"review_id": review_id, "user_id": principal.id, "username": principal.username, "at": utcnow()}
            )
        except DuplicateKeyError:
            return False
        await audit.record(
            self.db,
            audit.Actor(principal.id, principal.username, None, "websocket"),
            "JOIN",
            "ReviewSession",
            review_id,
            organization_id=doc["organization_id"],
            classification=doc["classification"],
            design_id=doc["design_id"],
            changes={"first_join": True},
        )
        return True

    async def _markup_ids(self, review: Mapping[str, Any]) -> list[str]:
        """Every markup that was ever in the review: the current ones and, from their audit entries, deleted ones."""
        ids = {
            m["_id"] async for m in self.db[MARKUPS].find({"review_id": review["_id"]}, {"_id": 1}, limit=MAX_MARKUPS)
        }
        async for entry in self.db[AUDIT_LOG].find(
            {
                "design_id": review["design_id"],
                "resource_type": "Markup",
                "action": "CREATE",
                "changes.review_id": review["_id"],
            },
            {"resource_id": 1},
            limit=MAX_MARKUPS,
        ):
            ids.add(int(entry["resource_id"]))
        return [str(i) for i in sorted(ids)]

    async def timeline(self, principal: Principal, review_id: str, args: QueryArgs) -> dict[str, Any]:
        """GET /api/reviews/{id}/timeline/?after=&limit=: events in the order they happened, a page at a time
        (``next_after`` continues; the audit trail's sequence orders them)."""
        review = await self.reviews.get_visible(principal, review_id)
        unknown = set(args) - {"after", "limit"}
        if unknown:
            name = sorted(unknown)[0]
            raise ValidationFailed(f"Unknown parameter '{name}'.", field_errors={name: ["Not a parameter here."]})
        after = _int(args, "after", 0, 0, 2**53)
        limit = _int(args, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        query = {
            "design_id": review["design_id"],
            "_id": {"$gt": after},
            "$or": [
                {"resource_type": "ReviewSession", "resource_id": review["_id"]},
                {"resource_type": "Markup", "resource_id": {"$in": await self._markup_ids(review)}},
            ],
        }
        events: list[dict[str, Any]] = []
        last = after
        more = False
        # Entries that are not review events (a failed signature) are skipped without ending the page early.
        cursor = self.db[AUDIT_LOG].find(query, sort=[("_id", 1)], batch_size=min(limit + 1, MAX_LIMIT))
        async for entry in cursor:
            if len(events) == limit and render_event(entry) is not None:
                more = True
                break
            last = entry["_id"]
            event = render_event(entry)
            if event is not None:
                events.append(event)
        await cursor.close()
        joins = [
            {"user": j["user_id"], "username": j.get("username"), "at": j["at"]}
            async for j in self.db[REVIEW_JOINS].find({"review_id": review["_id"]}, sort=[("at", 1)], limit=1000)
        ]
        return {
            "review": review["_id"],
            "design_asset": review["design_id"],
            "status": review["status"],
            "after": after,
            "next_after": last if more else None,
            "results": events,
            "joined": joins,
        }
