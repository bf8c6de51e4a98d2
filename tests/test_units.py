"""models.units: the whitelisted conversions, their precision, and the errors a client sees."""

from __future__ import annotations

import math
from typing import Any

import pytest

from models.errors import ValidationFailed
from models.units import UNITS, convert, registry

# Exact definitions (inch 25.4 mm, pound 0.45359237 kg), so every factor is known independently of pint.
EXACT = {
    "mm": 1e-3,
    "cm": 1e-2,
    "m": 1.0,
    "in": 0.0254,
    "ft": 0.3048,
    "g": 1e-3,
    "kg": 1.0,
    "lb": 0.45359237,
    "oz": 0.45359237 / 16,
}


def exact_factor(unit: str) -> float:
    power = int(unit[-1]) if unit[-1] in "23" else 1
    return float(EXACT[unit[:-1] if power > 1 else unit] ** power)


def test_whitelist_is_exactly_the_documented_units() -> None:
    assert set(UNITS) == {
        "mm",
        "cm",
        "m",
        "in",
        "ft",
        "mm2",
        "cm2",
        "m2",
        "in2",
        "ft2",
        "mm3",
        "cm3",
        "m3",
        "in3",
        "ft3",
        "g",
        "kg",
        "lb",
        "oz",
    }


def test_the_documented_example() -> None:
    result = convert(100, "mm", "in")
    assert result["original_value"] == 100 and result["from_unit"] == "mm" and result["to_unit"] == "in"
    assert math.isclose(result["converted_value"], 3.937007874015748, rel_tol=1e-11)
    assert str(result["converted_value"]).startswith("3.937007874")
    assert math.isclose(result["conversion_factor"], 1 / 25.4, rel_tol=1e-11)
    assert set(result) == {"original_value", "from_unit", "to_unit", "converted_value", "conversion_factor"}


@pytest.mark.parametrize("source", sorted(UNITS))
def test_every_pair_of_the_same_dimension(source: str) -> None:
    for target, (dimension, _) in UNITS.items():
        if dimension != UNITS[source][0]:
            continue
        result = convert(2.5, source, target)
        factor = exact_factor(source) / exact_factor(target)
        assert math.isclose(result["conversion_factor"], factor, rel_tol=1e-11), (source, target)
        assert math.isclose(result["converted_value"], 2.5 * factor, rel_tol=1e-11), (source, target)


@pytest.mark.parametrize(
    "args, expected",
    [
        ((1, "ft", "in"), 12.0),
        ((1, "lb", "kg"), 0.45359237),
        ((1, "oz", "g"), 28.349523125),
        ((1, "in2", "mm2"), 645.16),
        ((1, "in3", "cm3"), 16.387064),
        ((1, "m3", "mm3"), 1e9),
        ((-3, "in", "mm"), -76.2),
        ((0, "kg", "lb"), 0.0),
        ((2.5, "m3", "cm3"), 2_500_000.0),
    ],
)
def test_clean_results(args: tuple[Any, ...], expected: float) -> None:
    # Rounded to 12 significant digits: no binary noise such as 0.4535923700000001.
    assert convert(*args)["converted_value"] == expected


def test_unit_spelling_is_forgiving_about_case_and_spaces() -> None:
    result = convert(1, " MM ", "IN")
    assert (result["from_unit"], result["to_unit"]) == ("mm", "in")


@pytest.mark.parametrize(
    "source, target, field",
    [
        ("furlong", "mm", "from_unit"),
        ("mm", "parsec", "to_unit"),
        ("", "mm", "from_unit"),
        ("meter", "mm", "from_unit"),
        ("mm^2", "m2", "from_unit"),
        ("1/mm", "m", "from_unit"),
        ("mm" * 100, "m", "from_unit"),
        ("__import__('os')", "m", "from_unit"),
    ],
)
def test_unknown_units(source: str, target: str, field: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        convert(1, source, target)
    error = caught.value
    assert error.status == 400 and error.code == "VALIDATION_ERROR"
    assert list(error.field_errors) == [field]
    assert "Unknown unit" in error.detail and "length: mm, cm, m, in, ft" in error.detail
    assert "mass: g, kg, lb, oz" in error.detail and len(error.detail) < 300


@pytest.mark.parametrize(
    "source, target, message",
    [
        ("mm", "kg", "Cannot convert length (mm) to mass (kg)."),
        ("mm2", "mm3", "Cannot convert area (mm2) to volume (mm3)."),
        ("lb", "ft", "Cannot convert mass (lb) to length (ft)."),
    ],
)
def test_dimension_mismatch(source: str, target: str, message: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        convert(1, source, target)
    assert caught.value.detail == message and caught.value.field_errors == {"to_unit": [message]}


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, True, "100", None])
def test_value_must_be_a_finite_number(value: Any) -> None:
    with pytest.raises(ValidationFailed) as caught:
        convert(value, "mm", "in")
    assert "value" in caught.value.field_errors


def test_overflow_is_an_error_not_infinity() -> None:
    with pytest.raises(ValidationFailed):
        convert(1e300, "m3", "mm3")


def test_registry_is_built_once() -> None:
    assert registry() is registry()
