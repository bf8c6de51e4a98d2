"""Engineering materials: the built-in table (density, category, aliases), organizations' own, and mass from volume."""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from pydantic import Field
from pymongo import IndexModel

from models import audit
from models.collections import MATERIALS, ORGANIZATIONS
from models.database import Db, register_indexes
from models.errors import NotFound
from models.policy import Principal, require
from models.schema import Input, Uuid

_MAX_NAME_LENGTH = 200
MAX_OWN_MATERIALS = 1000  # listed per caller

register_indexes(MATERIALS, [IndexModel([("organization_id", 1), ("name_key", 1)], unique=True)])


@dataclass(frozen=True, slots=True)
class Material:
    name: str
    density_kg_m3: float
    category: str
    aliases: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "density_kg_m3": self.density_kg_m3, "category": self.category}


# Nominal room-temperature densities from the alloy and resin datasheets (MatWeb, ASM, producers' data).
# Aliases are matched like names: case, spaces and punctuation do not matter ("SS-304" == "ss 304"). An
# alias names the same material, never a neighbour of equal density (304L is not 304): stored names stay true.
BUILTIN_MATERIALS: tuple[Material, ...] = (
    Material(
        "Ti-6Al-4V",
        4430,
        "titanium alloy",
        (
            "Ti-6Al-4V Grade 5",
            "Ti 6-4",
            "Ti64",
            "Ti Grade 5",
            "Titanium Grade 5",
            "Grade 5 titanium",
            "UNS R56400",
            "3.7165",
        ),
    ),
    Material(
        "Titanium Grade 2", 4510, "titanium", ("CP titanium", "CP Ti Grade 2", "Ti Grade 2", "UNS R50400", "3.7035")
    ),
    Material(
        "Aluminium 6061-T6",
        2700,
        "aluminium alloy",
        (
            "6061-T6",
            "6061",
            "Al 6061",
            "Al 6061-T6",
            "Aluminum 6061-T6",
            "Aluminum 6061",
            "Aluminium 6061",
            "AlMg1SiCu",
            "UNS A96061",
        ),
    ),
    Material(
        "Aluminium 7075-T6",
        2810,
        "aluminium alloy",
        (
            "7075-T6",
            "7075",
            "Al 7075",
            "Al 7075-T6",
            "Aluminum 7075-T6",
            "Aluminum 7075",
            "Aluminium 7075",
            "AlZn5.5MgCu",
            "UNS A97075",
        ),
    ),
    Material(
        "Aluminium 2024-T3",
        2780,
        "aluminium alloy",
        (
            "2024-T3",
            "2024",
            "Al 2024",
            "Al 2024-T3",
            "Aluminum 2024-T3",
            "Aluminum 2024",
            "Aluminium 2024",
            "UNS A92024",
        ),
    ),
    Material(
        "Stainless 304",
        8000,
        "stainless steel",
        (
            "Stainless Steel 304",
            "SS304",
            "304 stainless",
            "304 stainless steel",
            "AISI 304",
            "SUS304",
            "1.4301",
            "UNS S30400",
        ),
    ),
    Material(
        "Stainless 316",
        8000,
        "stainless steel",
        (
            "Stainless Steel 316",
            "SS316",
            "316 stainless",
            "316 stainless steel",
            "AISI 316",
            "SUS316",
            "1.4401",
            "UNS S31600",
        ),
    ),
    Material(
        "Steel 1018",
        7870,
        "carbon steel",
        ("AISI 1018", "SAE 1018", "1018", "1018 steel", "C1018", "mild steel 1018", "UNS G10180"),
    ),
    Material(
        "Steel 4140",
        7850,
        "alloy steel",
        ("AISI 4140", "SAE 4140", "4140", "4140 steel", "42CrMo4", "1.7225", "UNS G41400"),
    ),
    Material("Inconel 718", 8190, "nickel alloy", ("Alloy 718", "IN718", "Inconel718", "2.4668", "UNS N07718")),
    Material(
        "Brass C360",
        8500,
        "copper alloy",
        ("C360", "C36000", "Brass 360", "free-cutting brass", "free machining brass", "UNS C36000"),
    ),
    Material(
        "Copper C110",
        8890,
        "copper",
        ("C110", "C11000", "Copper 110", "ETP copper", "electrolytic tough pitch copper", "UNS C11000"),
    ),
    Material("ABS", 1050, "thermoplastic", ("acrylonitrile butadiene styrene",)),
    Material("PLA", 1240, "thermoplastic", ("polylactic acid", "polylactide")),
    Material("Nylon 6/6", 1140, "thermoplastic", ("Nylon 66", "Nylon 6,6", "PA66", "PA 6.6", "polyamide 66")),
    Material("PEEK", 1300, "thermoplastic", ("polyether ether ketone", "polyetheretherketone")),
    Material("Polycarbonate", 1200, "thermoplastic", ("PC",)),
    Material(
        "Acetal (POM)", 1420, "thermoplastic", ("POM", "Delrin", "acetal", "polyoxymethylene", "acetal homopolymer")
    ),
)


def normalize_name(name: str) -> str:
    """The lookup key of a material name: case-folded letters and digits only ("Ti-6Al-4V" -> "ti6al4v")."""
    text = unicodedata.normalize("NFKC", name).casefold()
    return re.sub(r"[^0-9a-z]", "", text)


def build_index(materials: Iterable[Material]) -> Mapping[str, Material]:
    """Key -> material for names and aliases; two materials answering to the same key is a table error."""
    index: dict[str, Material] = {}
    for material in materials:
        for spelling in (material.name, *material.aliases):
            key = normalize_name(spelling)
            if not key:
                raise ValueError(f"material name {spelling!r} has no letters or digits")
            if index.setdefault(key, material) is not material:
                raise ValueError(f"{spelling!r} names both {index[key].name!r} and {material.name!r}")
    return MappingProxyType(index)


_INDEX = build_index(BUILTIN_MATERIALS)


def find_builtin(name: str) -> Material | None:
    """The built-in material a name or alias designates, ignoring case, spaces and punctuation, or None."""
    if not isinstance(name, str) or len(name) > _MAX_NAME_LENGTH:
        return None
    return _INDEX.get(normalize_name(name))


def mass_kg(volume_mm3: float, density_kg_m3: float) -> float:
    """Mass of a solid: 1 mm³ is 1e-9 m³. ValueError for a negative or non-finite volume (no closed solid:
    check validity first) or a density that is not a positive finite number."""
    if not math.isfinite(volume_mm3) or volume_mm3 < 0:
        raise ValueError(f"volume must be a finite, non-negative number of mm³, not {volume_mm3!r}")
    if not math.isfinite(density_kg_m3) or density_kg_m3 <= 0:
        raise ValueError(f"density must be a positive, finite number of kg/m³, not {density_kg_m3!r}")
    return volume_mm3 * density_kg_m3 / 1e9


class MaterialIn(Input):
    """An organization's own material: added or, under the same name, replaced."""

    organization: Uuid
    name: str = Field(min_length=1, max_length=_MAX_NAME_LENGTH)
    density_kg_m3: float = Field(gt=0, lt=30_000)
    category: str = Field("custom", max_length=100)


class Materials:
    """Repository of organizations' own materials, looked up before the built-in table."""

    def __init__(self, db: Db) -> None:
        self.db = db

    async def list_visible(self, principal: Principal) -> list[dict[str, Any]]:
        """Built-in materials, then the caller's organizations' own."""
        own = self.db[MATERIALS].find(
            {} if principal.is_staff else {"organization_id": {"$in": sorted(principal.memberships)}},
            sort=[("name", 1)],
            limit=MAX_OWN_MATERIALS,
        )
        results = [{**m.as_dict(), "organization": None, "builtin": True} for m in BUILTIN_MATERIALS]
        results += [render_material(m) async for m in own]
        return results

    async def add(self, principal: Principal, data: MaterialIn, actor: audit.Actor) -> dict[str, Any]:
        """ADMIN/OWNER add a material to their organization; the same name (as looked up) replaces it."""
        org_id = data.organization
        require(principal, "material.manage", org_id)
        if not await self.db[ORGANIZATIONS].count_documents({"_id": org_id}, limit=1):
            raise NotFound("Organization not found.")
        doc = {
            "organization_id": org_id,
            "name": data.name,
            "name_key": normalize_name(data.name),
            "density_kg_m3": data.density_kg_m3,
            "category": data.category,
        }
        await self.db[MATERIALS].update_one(
            {"organization_id": org_id, "name_key": doc["name_key"]}, {"$set": doc}, upsert=True
        )
        await audit.record(
            self.db,
            actor,
            "UPSERT",
            "Material",
            data.name,
            organization_id=org_id,
            changes={"density_kg_m3": data.density_kg_m3},
        )
        return render_material(doc)

    async def density(self, org_id: str, name: str) -> float | None:
        """An organization's own material first, then the built-in table; unknown names carry no mass."""
        own = await self.db[MATERIALS].find_one({"organization_id": org_id, "name_key": normalize_name(name)})
        if own is not None:
            return float(own["density_kg_m3"])
        builtin = find_builtin(name)
        return builtin.density_kg_m3 if builtin else None


def render_material(doc: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "name": doc["name"],
        "density_kg_m3": doc["density_kg_m3"],
        "category": doc["category"],
        "organization": doc["organization_id"],
        "builtin": False,
    }
