"""Unit conversion over a fixed whitelist of length, area, volume and mass units, computed by pint."""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import pint

from models.errors import ValidationFailed

# Our spelling -> (dimension, pint expression). Nothing outside this table reaches pint's parser.
UNITS: dict[str, tuple[str, str]] = {
    "mm": ("length", "millimeter"),
    "cm": ("length", "centimeter"),
    "m": ("length", "meter"),
    "in": ("length", "inch"),
    "ft": ("length", "foot"),
    "mm2": ("area", "millimeter ** 2"),
    "cm2": ("area", "centimeter ** 2"),
    "m2": ("area", "meter ** 2"),
    "in2": ("area", "inch ** 2"),
    "ft2": ("area", "foot ** 2"),
    "mm3": ("volume", "millimeter ** 3"),
    "cm3": ("volume", "centimeter ** 3"),
    "m3": ("volume", "meter ** 3"),
    "in3": ("volume", "inch ** 3"),
    "ft3": ("volume", "foot ** 3"),
    "g": ("mass", "gram"),
    "kg": ("mass", "kilogram"),
    "lb": ("mass", "pound"),
    "oz": ("mass", "ounce"),  # pint's are avoirdupois: 0.45359237 kg, lb/16
}
# Results are rounded to this many significant digits: far beyond any CAD measurement, and it removes the
# binary floating-point noise of pint's route through base units (1 lb is 0.45359237 kg, not ...0000001).
SIGNIFICANT_DIGITS = 12
_MAX_UNIT_LENGTH = 20


@lru_cache(maxsize=1)
def registry() -> pint.UnitRegistry:
    """The one registry, built on first use (~0.7 s here: call it at start-up, off the event loop)."""
    return pint.UnitRegistry()


def _significant(value: float, digits: int = SIGNIFICANT_DIGITS) -> float:
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def _allowed() -> str:
    groups: dict[str, list[str]] = {}
    for name, (dimension, _) in UNITS.items():
        groups.setdefault(dimension, []).append(name)
    return "; ".join(f"{dimension}: {', '.join(names)}" for dimension, names in groups.items())


def _unit(value: Any, field: str) -> str:
    """The canonical spelling of a whitelisted unit, ignoring case and surrounding spaces ("MM", " in")."""
    name = value.strip().lower() if isinstance(value, str) and len(value) <= _MAX_UNIT_LENGTH else None
    if name in UNITS:
        return name
    shown = repr(value[:_MAX_UNIT_LENGTH]) if isinstance(value, str) else type(value).__name__
    message = f"Unknown unit {shown}. Supported units are {_allowed()}."
    raise ValidationFailed(message, field_errors={field: [message]})


def convert(value: float, from_unit: str, to_unit: str) -> dict[str, Any]:
    """``value`` from one unit to another of the same dimension, as the convert-units endpoint returns it.

    ``converted_value`` and ``conversion_factor`` are rounded to SIGNIFICANT_DIGITS significant digits.
    Raises ValidationFailed (400) for an unknown unit, a dimension mismatch or a non-finite value.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        message = "Must be a finite number."
        raise ValidationFailed("The value to convert is not a finite number.", field_errors={"value": [message]})
    source, target = _unit(from_unit, "from_unit"), _unit(to_unit, "to_unit")
    (source_dim, source_expr), (target_dim, target_expr) = UNITS[source], UNITS[target]
    if source_dim != target_dim:
        message = f"Cannot convert {source_dim} ({source}) to {target_dim} ({target})."
        raise ValidationFailed(message, field_errors={"to_unit": [message]})
    ureg = registry()
    factor = float(ureg.Quantity(1.0, source_expr).to(target_expr).magnitude)
    converted = value * factor
    if not math.isfinite(converted):
        message = "The converted value is too large to represent."
        raise ValidationFailed(message, field_errors={"value": [message]})
    return {
        "original_value": value,
        "from_unit": source,
        "to_unit": target,
        "converted_value": _significant(converted),
        "conversion_factor": _significant(factor),
    }
