"""Shared pydantic bases: strict input models that refuse unknown fields, and common value types."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Input(BaseModel):
    """A request body: exact types (no "5" for 5), unknown fields refused, strings trimmed of nothing."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Point3D(Input):
    x: float
    y: float
    z: float
