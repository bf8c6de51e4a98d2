"""Shared pydantic bases: strict input models that refuse unknown fields, and common value types."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict

EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"


class Input(BaseModel):
    """A request body: exact types (no "5" for 5), unknown fields refused, strings trimmed of nothing."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False, str_max_length=100_000)


class Point3D(Input):
    x: float
    y: float
    z: float


def json_default(value: Any) -> Any:
    """How every response and every realtime message renders non-JSON values: REST, the JSON codec and the
    msgpack codec all call this, so one event reads the same whichever way it travels."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
