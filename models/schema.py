"""Shared input rules: strict pydantic bases, the common value types (ids, texts), and payload validation."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from enum import Enum
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from models.errors import ValidationFailed, field_errors_from

EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
# The one spelling of a UUID (lower-case, hyphenated, as every id Enginel issues): in bodies and in routes.
UUID_RE = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
UUID_PATTERN = rf"^{UUID_RE}$"
MAX_TEXT = 5000


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("May not be blank.")
    return value


Uuid = Annotated[str, Field(pattern=UUID_PATTERN)]
Text = Annotated[str, Field(max_length=MAX_TEXT)]
RequiredText = Annotated[str, Field(min_length=1, max_length=MAX_TEXT), AfterValidator(_not_blank)]
M = TypeVar("M", bound=BaseModel)


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, (list, tuple)):
        return any(_has_nul(v) for v in value)
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    return False  # numbers, enums, and nested inputs (which checked themselves)


class Input(BaseModel):
    """A request body: exact types (no "5" for 5), unknown fields refused, strings trimmed of nothing, and no
    NUL characters anywhere (no name, text or filename needs one, and C libraries, files and logs cut at it)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False, str_max_length=100_000)

    @field_validator("*")
    @classmethod
    def _refuse_nul(cls, value: Any) -> Any:
        if _has_nul(value):
            raise ValueError("May not contain NUL characters.")
        return value


def json_default(value: Any) -> Any:
    """How every response and every realtime message renders non-JSON values: REST, the JSON codec and the
    msgpack codec all call this, so one event reads the same whichever way it travels."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        # Always milliseconds (2025-12-16T10:30:45.123Z), MongoDB's precision, truncated as it truncates: a value
        # shows the same before it is stored and after it is read back, and every timestamp has one shape.
        return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
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


def parse_payload(model: type[M], payload: Mapping[str, Any]) -> M:
    """Validate a decoded WebSocket payload exactly as a REST body: through JSON, so strict enums and
    ISO datetimes behave the same and a validation failure is the same 400 with field_errors."""
    try:
        raw = json.dumps(payload, allow_nan=False)
    except (TypeError, ValueError):
        raise ValidationFailed(
            "The payload must be plain JSON data (finite numbers, strings, lists, objects)."
        ) from None
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise ValidationFailed("The payload is not valid.", field_errors=field_errors_from(exc)) from None


def refuse_nulls(values: Mapping[str, Any], keys: Sequence[str]) -> None:
    """A PATCH may set these fields but not clear them: an explicit null is a 400 naming each one."""
    nulls = [k for k in keys if k in values and values[k] is None]
    if nulls:
        raise ValidationFailed("These fields may not be null.", field_errors={k: ["May not be null."] for k in nulls})
