"""Shared pydantic bases: strict input models that refuse unknown fields, and common value types."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict


EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"


class Input(BaseModel):
    """A request body: exact types (no "5" for 5), unknown fields refused, strings trimmed of nothing."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False,
                              str_max_length=100_000)


class Point3D(Input):
    x: float
    y: float
    z: float
