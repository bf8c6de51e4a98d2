"""Design series: part numbers unique per organization, and the version counter of their designs."""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import Field
from pymongo import IndexModel, ReturnDocument
from pymongo.errors import DuplicateKeyError

from models import audit
from models.collections import DESIGNS, ORGANIZATIONS, SERIES, USERS
from models.database import Db, register_indexes, utcnow
from models.errors import Conflict, NotFound, PermissionDenied
from models.listing import Filter, Kind, ListSpec, QueryArgs, parse_list_query, run_list
from models.policy import Principal, can, classification_filter, require, visible_orgs_filter
from models.schema import Input, Uuid

register_indexes(
    SERIES,
    [
        IndexModel([("organization_id", 1), ("part_number_lower", 1)], unique=True),
        IndexModel([("organization_id", 1), ("created_at", -1)]),
    ],
)


class SeriesIn(Input):
    organization: Uuid
    part_number: str = Field(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f]+$")
    name: str = Field(min_length=1, max_length=200)
    description: str = Field("", max_length=5000)
    category: str = Field("", max_length=100)


class SeriesPatch(Input):
    part_number: str | None = Field(None, min_length=1, max_length=100, pattern=r"^[^\x00-\x1f]+$")
    name: str | None = Field(None, min_length=1, max_length=200)
    description: str | None = Field(None, max_length=5000)
    category: str | None = Field(None, max_length=100)


SERIES_LIST = ListSpec(
    filters={
        "organization": Filter(Kind.UUID, "organization_id"),
        "part_number": Filter(Kind.STR, "part_number_lower", lowered=True),
        "category": Filter(Kind.STR, "category", case_insensitive=True),
        "created_by": Filter(Kind.INT, "created_by"),
        "created_at": Filter(Kind.DATETIME, "created_at", ranges=True),
    },
    search=("part_number", "name", "description"),
    ordering={
        "part_number": "part_number_lower",
        "name": "name",
        "created_at": "created_at",
        "updated_at": "updated_at",
    },
    default_ordering="part_number",
    fields=frozenset(
        {
            "id",
            "organization",
            "organization_name",
            "part_number",
            "name",
            "description",
            "category",
            "created_by",
            "created_by_username",
            "design_count",
            "latest_version",
            "created_at",
            "updated_at",
        }
    ),
)


def _duplicate() -> Conflict:
    return Conflict(
        "A series with this part number already exists in the organization.",
        field_errors={"part_number": ["Already used in this organization (case-insensitive)."]},
    )


class Series:
    """Repository of design series; a series is visible to every member of its organization."""

    def __init__(self, db: Db) -> None:
        self.db = db

    def visible_filter(self, principal: Principal) -> dict[str, Any]:
        return visible_orgs_filter(principal)

    async def list_visible(self, principal: Principal, args: QueryArgs, base_url: str) -> dict[str, Any]:
        async def render(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return await self.render_many(docs, principal)

        query = parse_list_query(SERIES_LIST, args)
        return await run_list(
            self.db[SERIES], self.visible_filter(principal), query, render=render, base_url=base_url, args=args
        )

    async def get_visible(self, principal: Principal, series_id: str) -> dict[str, Any]:
        doc = await self.db[SERIES].find_one({"_id": series_id})
        if doc is None or not can(principal, "design.read", doc["organization_id"]):
            raise NotFound("Series not found.")
        return doc

    async def create(self, principal: Principal, data: SeriesIn, actor: audit.Actor) -> dict[str, Any]:
        org = await self.db[ORGANIZATIONS].find_one({"_id": data.organization})
        if org is None or not can(principal, "org.read", org["_id"]):
            raise NotFound("Organization not found.")
        require(principal, "design.create", org["_id"])
        now = utcnow()
        doc = {
            "_id": str(uuid.uuid4()),
            "organization_id": org["_id"],
            "part_number": data.part_number,
            "part_number_lower": data.part_number.lower(),
            "name": data.name,
            "description": data.description,
            "category": data.category,
            "created_by": principal.id,
            "created_at": now,
            "updated_at": now,
            "next_version": 0,
            "version": 1,
        }
        try:
            await self.db[SERIES].insert_one(doc)
        except DuplicateKeyError:
            raise _duplicate() from None
        await audit.record(
            self.db,
            actor,
            "CREATE",
            "DesignSeries",
            doc["_id"],
            organization_id=org["_id"],
            changes={"part_number": data.part_number, "name": data.name},
        )
        return doc

    async def update(
        self, principal: Principal, series_id: str, patch: dict[str, Any], actor: audit.Actor
    ) -> dict[str, Any]:
        doc = await self.get_visible(principal, series_id)
        require(principal, "design.update", doc["organization_id"])
        if "part_number" in patch:
            patch["part_number_lower"] = patch["part_number"].lower()
        changes = {
            k: {"old": doc.get(k), "new": v} for k, v in patch.items() if k != "part_number_lower" and doc.get(k) != v
        }
        if not changes:
            return doc
        try:
            updated = await self.db[SERIES].find_one_and_update(
                {"_id": series_id},
                {"$set": {**patch, "updated_at": utcnow()}, "$inc": {"version": 1}},
                return_document=ReturnDocument.AFTER,
            )
        except DuplicateKeyError:
            raise _duplicate() from None
        if updated is None:
            raise NotFound("Series not found.")  # deleted meanwhile
        if "part_number" in patch:  # designs carry the part number for search and filters
            await self.db[DESIGNS].update_many(
                {"series_id": series_id}, {"$set": {"part_number": patch["part_number"]}}
            )
        await audit.record(
            self.db, actor, "UPDATE", "DesignSeries", series_id, organization_id=doc["organization_id"], changes=changes
        )
        return updated

    async def delete(self, principal: Principal, series_id: str, actor: audit.Actor, *, force: bool) -> list[str]:
        """Delete a series; with designs it needs ADMIN/OWNER and force, and every design must be visible
        to the caller (a series never takes with it designs its deleter cannot see). Returns design ids."""
        doc = await self.get_visible(principal, series_id)
        org_id = doc["organization_id"]
        require(principal, "design.create", org_id)
        total = await self.db[DESIGNS].count_documents({"series_id": series_id})
        if total:
            if not can(principal, "series.delete", org_id):
                raise PermissionDenied("Deleting a series that holds designs needs ADMIN or OWNER.")
            if not force:
                raise Conflict(f"The series holds {total} design(s); repeat with ?force=true to delete them too.")
            visible = await self.db[DESIGNS].count_documents(
                {"$and": [{"series_id": series_id}, classification_filter(principal)]}
            )
            if visible != total:
                raise Conflict("The series holds designs you are not cleared to see; it cannot be deleted by you.")
        ids = [d["_id"] async for d in self.db[DESIGNS].find({"series_id": series_id}, projection={"_id": 1})]
        await self.db[SERIES].delete_one({"_id": series_id})
        await audit.record(
            self.db,
            actor,
            "DELETE",
            "DesignSeries",
            series_id,
            organization_id=org_id,
            changes={"part_number": doc["part_number"], "designs": len(ids)},
        )
        return ids

    async def allocate_version(self, series_id: str) -> int:
        """The next version number, atomic across processes: two simultaneous uploads get distinct numbers."""
        doc = await self.db[SERIES].find_one_and_update(
            {"_id": series_id}, {"$inc": {"next_version": 1}}, return_document=ReturnDocument.AFTER
        )
        if doc is None:
            raise NotFound("Series not found.")
        return int(doc["next_version"])

    async def render_many(self, docs: list[dict[str, Any]], principal: Principal) -> list[dict[str, Any]]:
        """Counts include only designs the caller may see: a count must not reveal a hidden design."""
        org_ids = list({d["organization_id"] for d in docs})
        user_ids = list({d["created_by"] for d in docs})
        orgs = {
            o["_id"]: o["name"]
            async for o in self.db[ORGANIZATIONS].find({"_id": {"$in": org_ids}}, projection={"name": 1})
        }
        users = {
            u["_id"]: u["username"]
            async for u in self.db[USERS].find({"_id": {"$in": user_ids}}, projection={"username": 1})
        }
        counts = {
            row["_id"]: row
            async for row in await self.db[DESIGNS].aggregate(
                [
                    {
                        "$match": {
                            "$and": [{"series_id": {"$in": [d["_id"] for d in docs]}}, classification_filter(principal)]
                        }
                    },
                    {"$group": {"_id": "$series_id", "n": {"$sum": 1}, "latest": {"$max": "$version_number"}}},
                ]
            )
        }
        return [
            {
                "id": d["_id"],
                "organization": d["organization_id"],
                "organization_name": orgs.get(d["organization_id"]),
                "part_number": d["part_number"],
                "name": d["name"],
                "description": d.get("description", ""),
                "category": d.get("category", ""),
                "created_by": d["created_by"],
                "created_by_username": users.get(d["created_by"]),
                "design_count": counts.get(d["_id"], {}).get("n", 0),
                "latest_version": counts.get(d["_id"], {}).get("latest"),
                "created_at": d["created_at"],
                "updated_at": d["updated_at"],
            }
            for d in docs
        ]
