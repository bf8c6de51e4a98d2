"""models.materials: the built-in table, name and alias lookup, and mass from volume and density."""

from __future__ import annotations

import math

import pytest

from models.materials import BUILTIN_MATERIALS, Material, build_index, find_builtin, mass_kg, normalize_name

REQUIRED = {
    "Ti-6Al-4V": 4430,
    "Aluminium 6061-T6": 2700,
    "Aluminium 7075-T6": 2810,
    "Stainless 304": 8000,
    "Stainless 316": 8000,
    "Steel 1018": 7870,
    "Brass C360": 8500,
    "Copper C110": 8890,
    "ABS": 1050,
    "PLA": 1240,
    "Nylon 6/6": 1140,
}


def test_required_materials_and_densities() -> None:
    table = {m.name: m for m in BUILTIN_MATERIALS}
    for name, density in REQUIRED.items():
        assert table[name].density_kg_m3 == density
        assert find_builtin(name) is table[name]


def test_table_is_sane() -> None:
    names = [m.name for m in BUILTIN_MATERIALS]
    assert len(names) == len(set(names))
    for material in BUILTIN_MATERIALS:
        assert 500 < material.density_kg_m3 < 25_000 and material.category
        assert material.as_dict() == {
            "name": material.name,
            "density_kg_m3": material.density_kg_m3,
            "category": material.category,
        }


@pytest.mark.parametrize(
    "query, name",
    [
        ("ti-6al-4v", "Ti-6Al-4V"),
        ("TI-6AL-4V", "Ti-6Al-4V"),
        ("Ti-6Al-4V Grade 5", "Ti-6Al-4V"),
        ("Ti64", "Ti-6Al-4V"),
        ("ti 6al 4v", "Ti-6Al-4V"),
        ("6061-T6", "Aluminium 6061-T6"),
        ("Aluminum 6061-T6", "Aluminium 6061-T6"),
        ("al6061", "Aluminium 6061-T6"),
        ("7075", "Aluminium 7075-T6"),
        ("SS304", "Stainless 304"),
        ("ss-304", "Stainless 304"),
        ("AISI 316", "Stainless 316"),
        ("1018", "Steel 1018"),
        ("C36000", "Brass C360"),
        ("copper 110", "Copper C110"),
        ("nylon 66", "Nylon 6/6"),
        ("PA66", "Nylon 6/6"),
        ("  abs  ", "ABS"),
        ("Polylactic Acid", "PLA"),
        ("\uff34\uff49-6Al-4V", "Ti-6Al-4V"),
    ],
)  # full-width letters, as some keyboards type them
def test_lookup_by_name_and_alias(query: str, name: str) -> None:
    found = find_builtin(query)
    assert found is not None and found.name == name


@pytest.mark.parametrize("query", ["", "   ", "unobtainium", "steel", "304L", "-", "ti" * 200])
def test_unknown_names(query: str) -> None:
    assert find_builtin(query) is None


def test_normalize_name() -> None:
    assert normalize_name("Ti-6Al-4V Grade 5") == "ti6al4vgrade5"
    assert normalize_name("Nylon 6/6") == "nylon66"


def test_ambiguous_aliases_are_a_table_error() -> None:
    with pytest.raises(ValueError, match="names both"):
        build_index([Material("A", 1000, "x", ("shared",)), Material("B", 2000, "x", ("Shared",))])
    with pytest.raises(ValueError):
        build_index([Material("--", 1000, "x")])


def test_mass() -> None:
    assert math.isclose(mass_kg(125_000, 4430), 0.55375)  # a 125 cm³ part in Ti-6Al-4V
    assert math.isclose(mass_kg(1e9, 1000), 1000)  # a cubic metre of water
    assert mass_kg(0, 2700) == 0
    for volume, density in [(-1, 2700), (math.nan, 2700), (math.inf, 2700), (1, 0), (1, -5), (1, math.nan)]:
        with pytest.raises(ValueError):
            mass_kg(volume, density)
