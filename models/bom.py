"""Bill-of-materials nodes: one design's assembly tree, saved from its analysis and corrected by hand."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any

from pydantic import Field
from pymongo import IndexModel, ReturnDocument
from pymongo.errors import DuplicateKeyError

from models import audit
from models.collections import BOM_NODES, COUNTERS, DESIGNS
from models.database import Db, next_id, register_indexes, utcnow
from models.designs import Designs
from models.errors import Conflict, NotFound, ValidationFailed
from models.events import Publisher, announce
from models.listing import Filter, Kind, ListSpec, QueryArgs, parse_list_query, run_list
from models.materials import mass_kg
from models.policy import Principal, documents_filter, require
from models.schema import Input, Uuid

SEQUENCE = BOM_NODES  # node ids come from the counter named after the collection, like every next_id() sequence
MAX_NODES = 10_000  # per design, as processing.cad caps an extracted tree
MAX_DEPTH = 32
MAX_SIBLINGS = 9999  # a path segment has four digits
INSERT_BATCH = 1000
_SEGMENT = 4

register_indexes(
    BOM_NODES,
    [
        IndexModel([("design_id", 1), ("path", 1)], unique=True),  # tree order; one node per position
        IndexModel([("design_id", 1), ("parent_id", 1)]),
        IndexModel([("organization_id", 1), ("classification", 1)]),
        IndexModel("part_number"),
    ],
)

NODE_FIELDS = frozenset(
    {
        "id",
        "design_asset",
        "parent",
        "path",
        "depth",
        "part_name",
        "part_number",
        "quantity",
        "unit_of_measure",
        "reference_designator",
        "notes",
        "instance_names",
        "volume_mm3",
        "mass_kg",
        "source",
        "created_at",
        "updated_at",
    }
)

BOM_LIST = ListSpec(
    filters={
        "design_asset": Filter(Kind.UUID, "design_id"),
        "parent": Filter(Kind.INT, "parent_id", nullable=True),
        "part_number": Filter(Kind.STR, "part_number", case_insensitive=True),
        "depth": Filter(Kind.INT, "depth", ranges=True),
    },
    search=("part_name", "part_number"),
    ordering={
        "design_asset": "design_id",
        "path": "path",
        "id": "_id",
        "part_name": "part_name",
        "part_number": "part_number",
        "quantity": "quantity",
        "depth": "depth",
        "created_at": "created_at",
    },
    default_ordering="design_asset,path",
    fields=NODE_FIELDS,
)


class BomNodeIn(Input):
    design_asset: Uuid
    parent: int | None = Field(None, ge=1)
    part_name: str = Field(min_length=1, max_length=255)
    part_number: str = Field("", max_length=255)
    quantity: int = Field(1, ge=1, le=1_000_000)
    unit_of_measure: str = Field("EA", min_length=1, max_length=20)
    reference_designator: str = Field("", max_length=255)
    notes: str = Field("", max_length=2000)


class BomNodePatch(Input):
    part_name: str | None = Field(None, min_length=1, max_length=255)
    part_number: str | None = Field(None, max_length=255)
    quantity: int | None = Field(None, ge=1, le=1_000_000)
    unit_of_measure: str | None = Field(None, min_length=1, max_length=20)
    reference_designator: str | None = Field(None, max_length=255)
    notes: str | None = Field(None, max_length=2000)


def _mass(volume: float | None, density: float | None) -> float | None:
    if volume is None or density is None or not math.isfinite(volume) or volume <= 0:
        return None
    return mass_kg(volume, density)


def _segment(index: int) -> str:
    return f"{index:0{_SEGMENT}d}"


def render_node(doc: dict[str, Any], density: float | None) -> dict[str, Any]:
    """Mass follows the design's current material, like the design's own mass does."""
    volume = doc.get("volume_mm3")
    return {
        "id": doc["_id"],
        "design_asset": doc["design_id"],
        "parent": doc.get("parent_id"),
        "path": doc["path"],
        "depth": doc["depth"],
        "part_name": doc["part_name"],
        "part_number": doc.get("part_number", ""),
        "quantity": doc["quantity"],
        "unit_of_measure": doc.get("unit_of_measure", "EA"),
        "reference_designator": doc.get("reference_designator", ""),
        "notes": doc.get("notes", ""),
        "instance_names": doc.get("instance_names", []),
        "volume_mm3": volume,
        "mass_kg": _mass(volume, density) if density is not None else doc.get("mass_kg"),
        "source": doc.get("source", "manual"),
        "created_at": doc["created_at"],
        "updated_at": doc["updated_at"],
    }


class BomNodes:
    """Repository of BOM nodes; every read and edit goes through the design's access policy."""

    def __init__(self, db: Db, designs: Designs, publisher: Publisher) -> None:
        self.db = db
        self.designs = designs
        self.publisher = publisher
        self.nodes = db[BOM_NODES]

    def visible_filter(self, principal: Principal) -> dict[str, Any]:
        """Organization and classification are copied onto each node, so lists filter without a join."""
        return documents_filter(principal)

    async def list_visible(self, principal: Principal, args: QueryArgs, base_url: str) -> dict[str, Any]:
        query = parse_list_query(BOM_LIST, args)
        return await run_list(
            self.nodes, self.visible_filter(principal), query, render=self.render_many, base_url=base_url, args=args
        )

    async def get_visible(self, principal: Principal, node_id: int) -> tuple[dict[str, Any], dict[str, Any]]:
        node = await self.nodes.find_one({"_id": node_id})
        if node is None:
            raise NotFound("BOM node not found.")
        try:
            design = await self.designs.get_visible(principal, node["design_id"])
        except NotFound:
            raise NotFound("BOM node not found.") from None
        return node, design

    async def render_many(self, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        ids = list({d["design_id"] for d in docs})
        density = {
            d["_id"]: d.get("density_kg_m3")
            async for d in self.db[DESIGNS].find({"_id": {"$in": ids}}, projection={"density_kg_m3": 1})
        }
        return [render_node(d, density.get(d["design_id"])) for d in docs]

    # ------------------------------------------------------------------ from analysis

    async def replace_from_analysis(self, design: dict[str, Any], roots: list[dict[str, Any]]) -> int:
        """Replace a design's nodes with the tree an analysis extracted; returns how many were saved."""
        flat = list(_flatten(roots))[:MAX_NODES]
        if not flat:
            await self.nodes.delete_many({"design_id": design["_id"]})
            return 0
        # One counter round trip for the whole tree, from the same sequence next_id() uses.
        counter = await self.db[COUNTERS].find_one_and_update(
            {"_id": SEQUENCE}, {"$inc": {"value": len(flat)}}, upsert=True, return_document=ReturnDocument.AFTER
        )
        assert counter is not None  # an upsert always returns the document
        first = int(counter["value"]) - len(flat) + 1
        ids_by_path: dict[str, int] = {}
        now = utcnow()
        density = design.get("density_kg_m3")
        docs = []
        for offset, (node, parent_path) in enumerate(flat):
            node_id = first + offset
            ids_by_path[node["path"]] = node_id
            volume = node.get("volume_mm3")
            docs.append(
                {
                    "_id": node_id,
                    "design_id": design["_id"],
                    "organization_id": design["organization_id"],
                    "classification": design["classification"],
                    "parent_id": ids_by_path.get(parent_path) if parent_path else None,
                    "path": node["path"],
                    "depth": node["depth"],
                    "part_name": node.get("part_name") or "unnamed",
                    "part_number": node.get("part_number") or "",
                    "quantity": int(node.get("quantity") or 1),
                    "unit_of_measure": node.get("unit_of_measure") or "EA",
                    "reference_designator": node.get("reference_designator") or "",
                    "instance_names": list(node.get("instance_names") or [])[:100],
                    "volume_mm3": volume,
                    "mass_kg": _mass(volume, density),
                    "notes": "",
                    "source": "analysis",
                    "created_at": now,
                    "updated_at": now,
                }
            )
        await self.nodes.delete_many({"design_id": design["_id"]})
        for start in range(0, len(docs), INSERT_BATCH):
            await self.nodes.insert_many(docs[start : start + INSERT_BATCH], ordered=True)
        return len(docs)

    # ------------------------------------------------------------------ manual corrections

    async def create(self, principal: Principal, data: BomNodeIn, actor: audit.Actor) -> dict[str, Any]:
        """A manual node under `parent` (or a new root), at the next free position among its siblings."""
        design = await self.designs.get_visible(principal, data.design_asset)
        require(principal, "bom.edit", design["organization_id"], hide=False)
        parent = None
        if data.parent is not None:
            parent = await self.nodes.find_one({"_id": data.parent, "design_id": design["_id"]})
            if parent is None:
                raise ValidationFailed(
                    "The parent node is not part of this design.",
                    field_errors={"parent": ["No node with this id in this design."]},
                )
            if parent["depth"] >= MAX_DEPTH:
                raise ValidationFailed(
                    f"A BOM tree is at most {MAX_DEPTH} levels deep.", field_errors={"parent": ["Too deep."]}
                )
        if await self.nodes.count_documents({"design_id": design["_id"]}) >= MAX_NODES:
            raise ValidationFailed(
                f"A design's BOM holds at most {MAX_NODES} nodes.",
                field_errors={"design_asset": ["This design's BOM is full."]},
            )
        prefix = parent["path"] + "." if parent else ""
        now = utcnow()
        node_id = await next_id(self.db, SEQUENCE)
        doc = {
            "_id": node_id,
            "design_id": design["_id"],
            "organization_id": design["organization_id"],
            "classification": design["classification"],
            "parent_id": parent["_id"] if parent else None,
            "depth": parent["depth"] + 1 if parent else 1,
            "part_name": data.part_name,
            "part_number": data.part_number,
            "quantity": data.quantity,
            "unit_of_measure": data.unit_of_measure,
            "reference_designator": data.reference_designator,
            "instance_names": [],
            "volume_mm3": None,
            "mass_kg": None,
            "notes": data.notes,
            "source": "manual",
            "created_at": now,
            "updated_at": now,
        }
        for _ in range(10):  # a concurrent sibling may take the same position: the unique index says so
            last = await self.nodes.find_one(
                {"design_id": design["_id"], "parent_id": doc["parent_id"]}, sort=[("path", -1)], projection={"path": 1}
            )
            index = int(last["path"].rsplit(".", 1)[-1]) + 1 if last else 1
            if index > MAX_SIBLINGS:
                raise ValidationFailed(
                    f"A BOM node holds at most {MAX_SIBLINGS} children.",
                    field_errors={"parent": ["This node has no room for more children."]},
                )
            doc["path"] = prefix + _segment(index)
            try:
                await self.nodes.insert_one(doc)
                break
            except DuplicateKeyError:
                continue
        else:
            raise Conflict("The BOM changed concurrently; retry.")
        await audit.record(
            self.db,
            actor,
            "CREATE",
            "AssemblyNode",
            node_id,
            organization_id=design["organization_id"],
            classification=design["classification"],
            design_id=design["_id"],
            changes={
                "design_asset": design["_id"],
                "parent": doc["parent_id"],
                "part_name": data.part_name,
                "part_number": data.part_number,
                "quantity": data.quantity,
            },
        )
        await self._announce(design, "bom.changed", {"created": [node_id]})
        return doc

    async def update(
        self, principal: Principal, node_id: int, patch: BomNodePatch, actor: audit.Actor
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        node, design = await self.get_visible(principal, node_id)
        require(principal, "bom.edit", design["organization_id"], hide=False)
        values = patch.model_dump(exclude_unset=True)
        changes = {k: {"old": node.get(k), "new": v} for k, v in values.items() if v is not None and v != node.get(k)}
        if not changes:
            return node, design
        updated = await self.nodes.find_one_and_update(
            {"_id": node_id},
            {"$set": {**{k: c["new"] for k, c in changes.items()}, "updated_at": utcnow()}},
            return_document=ReturnDocument.AFTER,
        )
        if updated is None:
            raise NotFound("BOM node not found.")
        await audit.record(
            self.db,
            actor,
            "UPDATE",
            "AssemblyNode",
            node_id,
            organization_id=design["organization_id"],
            classification=design["classification"],
            design_id=design["_id"],
            changes=changes,
        )
        await self._announce(design, "bom.changed", {"updated": [node_id]})
        return updated, design

    async def delete(self, principal: Principal, node_id: int, actor: audit.Actor) -> int:
        """Delete a node and everything below it; returns how many nodes went."""
        node, design = await self.get_visible(principal, node_id)
        require(principal, "bom.edit", design["organization_id"], hide=False)
        below = {"design_id": design["_id"], "path": {"$regex": "^" + re.escape(node["path"] + ".")}}
        removed = await self.nodes.delete_many({"$or": [{"_id": node_id}, below]})
        await audit.record(
            self.db,
            actor,
            "DELETE",
            "AssemblyNode",
            node_id,
            organization_id=design["organization_id"],
            classification=design["classification"],
            design_id=design["_id"],
            changes={"part_name": node["part_name"], "path": node["path"], "nodes_removed": removed.deleted_count},
        )
        await self._announce(design, "bom.changed", {"deleted": [node_id]})
        return int(removed.deleted_count)

    # ------------------------------------------------------------------ the tree

    async def tree(self, principal: Principal, design_id: str) -> dict[str, Any]:
        """The nested tree with totals: parts count every instance (quantities multiply down the tree);
        mass and volume sum the leaves only, so an assembly's parts are never counted twice."""
        design = await self.designs.get_visible(principal, design_id)
        density = design.get("density_kg_m3")
        cursor = self.nodes.find({"design_id": design_id}, sort=[("path", 1)], limit=MAX_NODES)
        by_path: dict[str, dict[str, Any]] = {}
        roots: list[dict[str, Any]] = []
        for doc in [d async for d in cursor]:
            item = {**render_node(doc, density), "children": []}
            by_path[doc["path"]] = item
            parent = by_path.get(doc["path"].rpartition(".")[0]) if "." in doc["path"] else None
            (parent["children"] if parent is not None else roots).append(item)
        parts, volume, complete = 0, 0.0, True
        stack = [(root, 1) for root in roots]
        while stack:
            item, multiplier = stack.pop()
            count = multiplier * item["quantity"]
            item["is_assembly"] = bool(item["children"])
            if item["children"]:
                stack.extend((child, count) for child in item["children"])
                continue
            parts += count
            if item["volume_mm3"] is None or not math.isfinite(item["volume_mm3"]) or item["volume_mm3"] < 0:
                complete = False
            else:
                volume += item["volume_mm3"] * count
        has_volume = complete and bool(by_path)
        return {
            "design_asset": design_id,
            "status": design["status"],
            "material": design.get("material") or None,
            "density_kg_m3": density,
            "node_count": len(by_path),
            "total_parts": parts,
            "total_volume_mm3": volume if has_volume else None,
            "total_mass_kg": _mass(volume, density) if has_volume else None,
            "mass_complete": complete,
            "tree": roots,
        }

    async def _announce(self, design: dict[str, Any], event: str, data: dict[str, Any]) -> None:
        await announce(self.publisher, [f"design:{design['_id']}"], event, {"design_id": design["_id"], **data})


def _flatten(roots: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], str | None]]:
    """Depth-first, parents before children, with each node's parent path; iterative, so depth is no risk."""
    stack: list[tuple[dict[str, Any], str | None]] = [(root, None) for root in reversed(roots)]
    while stack:
        node, parent_path = stack.pop()
        yield node, parent_path
        stack.extend((child, node["path"]) for child in reversed(node.get("children") or []))
