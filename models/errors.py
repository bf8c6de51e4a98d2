"""Domain errors that every layer raises and the API renders in the one documented envelope."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import ValidationError


class APIError(Exception):
    """An error with an HTTP status, a stable code and a human message; rendered by handlers/base.py."""

    status: ClassVar[int] = 400
    code: ClassVar[str] = "VALIDATION_ERROR"
    title: ClassVar[str] = "Bad request"

    def __init__(
        self,
        detail: str,
        *,
        field_errors: dict[str, list[str]] | None = None,
        code: str | None = None,
        status: int | None = None,
        title: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field_errors = field_errors or {}
        self.headers = headers or {}
        self.extra = extra or {}
        if code is not None:
            self.code = code  # type: ignore[misc]
        if status is not None:
            self.status = status  # type: ignore[misc]
        if title is not None:
            self.title = title  # type: ignore[misc]

    def body(self) -> dict[str, Any]:
        return {
            "error": self.title,
            "detail": self.detail,
            "code": self.code,
            "field_errors": self.field_errors,
            **self.extra,
        }


class ValidationFailed(APIError):
    title = "Validation error"


class AuthenticationFailed(APIError):
    status = 401
    code = "AUTHENTICATION_FAILED"
    title = "Authentication failed"


class TokenExpired(AuthenticationFailed):
    code = "TOKEN_EXPIRED"
    title = "Token expired"


class PermissionDenied(APIError):
    status = 403
    code = "PERMISSION_DENIED"
    title = "Permission denied"


class ITARViolation(PermissionDenied):
    code = "ITAR_VIOLATION"
    title = "ITAR violation"


class NotFound(APIError):
    status = 404
    code = "RESOURCE_NOT_FOUND"
    title = "Not found"


class Conflict(APIError):
    status = 409
    code = "CONFLICT"
    title = "Conflict"


class PayloadTooLarge(APIError):
    status = 413
    code = "PAYLOAD_TOO_LARGE"
    title = "Request body too large"


class Unprocessable(APIError):
    status = 422
    code = "VALIDATION_ERROR"
    title = "Unprocessable entity"


class LimitExceeded(APIError):
    status = 403
    code = "ORGANIZATION_LIMIT_EXCEEDED"
    title = "Organization limit exceeded"


class RateLimited(APIError):
    status = 429
    code = "RATE_LIMIT_EXCEEDED"
    title = "Rate limit exceeded"


class ServiceUnavailable(APIError):
    status = 503
    code = "SERVICE_UNAVAILABLE"
    title = "Service unavailable"


def field_errors_from(exc: ValidationError) -> dict[str, list[str]]:
    """Pydantic's errors as {"dotted.field": [messages]}; unknown fields say so plainly."""
    out: dict[str, list[str]] = {}
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(part) for part in err["loc"]) or "body"
        if err["type"] == "extra_forbidden":
            message = "Unknown field."
        elif err["type"] == "missing":
            message = "This field is required."
        else:
            message = err["msg"]
        out.setdefault(loc, []).append(message)
    return out
