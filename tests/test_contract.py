"""The API reference walked section by section with its own example requests (ids filled in): documented statuses,
field names and types, enum values and the pagination shape, each deliberate departure an explicit exception that
the README's "Departures from the API reference" lists one to one."""

from __future__ import annotations

import hashlib
import inspect
import os
import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from models.database import utcnow
from tests.helpers import (
    PASSWORD,
    Api,
    Caller,
    Response,
    World,
    assert_envelope,
    cad,
    due,
    open_review,
    put_bytes,
    ready_design,
    review_team,
    upload,
    wait_job,
)

REPO = Path(__file__).resolve().parents[1]
# The reference itself, when it is beside the project (or named by ENGINEL_API_REFERENCE): the walk below is a
# transcription of it, and test_the_walk_covers_the_reference checks the transcription against the text.
REFERENCE = Path(
    os.environ.get("ENGINEL_API_REFERENCE") or REPO.parent / "shared" / "seeds" / "enginel-api-reference.md"
)

# ---------------------------------------------------------------- departures

# Every deliberate difference from the reference, by the title the README's list gives it. Each is exercised below
# where it happens, marked by departure("<title>") and a comment; the README lists exactly these titles.
DEPARTURES = {
    "Timestamps in milliseconds": "2025-12-16T10:30:45.123Z, the database's precision; the reference's example "
    "shows microseconds.",
    "Null until there is a value": "geometry before analysis, a job's times before it runs, a user's organization "
    "when they have none, an unset contact e-mail.",
    "Session cookie and XSRF header": "enginel_session, not sessionid; writes with it send X-XSRF-Token.",
    "Organizations are created by platform staff": "403 for everyone else unless ENGINEL_SELF_SERVICE_ORGANIZATIONS.",
    "Deleting an organization that holds series": "409 CONFLICT, not 204.",
    "Adding a member is an invitation": "OWNER/ADMIN get 202 and an invitation; platform staff add directly (201).",
    "Deleting a series that holds designs": "409 CONFLICT unless ?force=true (ADMIN/OWNER).",
    "READY and FAILED design statuses": "the analysis's outcome, beside the reference's six.",
    "The four-step upload": "upload-url, PUT the bytes to it, create the design, finalize; file_path is ignored.",
    "Upload URL names its target": "series or organization in the body when the caller may add designs in several "
    "organizations (400 otherwise).",
    "Storage quota": "413 STORAGE_QUOTA_EXCEEDED past max_storage_gb, not ORGANIZATION_LIMIT_EXCEEDED.",
    "Design PATCH refuses status changes": "APPROVED/REJECTED/IN_REVIEW come from reviews; such a PATCH is a 409 and "
    "changes nothing.",
    "TESSELLATION jobs": "a fifth job_type.",
    "Cancelling a job another process runs": "202 with cancel_requested.",
    "Rejection reasons are a closed list": "reason is one of INCORRECT_DIMENSIONS, TOLERANCE_ISSUE, ...",
    "More audit actions": "the trail records more than CREATE/UPDATE/DELETE/APPROVE/REJECT.",
    "Audit export in csv and json": "format=pdf is a 400.",
    "Detailed health keys": "checks are database, redis, workers (no celery), plus checked_at and cluster; 503 when "
    "degraded.",
    "Monitoring endpoints not yet": "/api/monitoring/dashboard/, errors/, performance/ answer 404.",
}


def departure(title: str) -> str:
    """Mark the exception that follows as the listed departure `title`."""
    assert title in DEPARTURES, title
    return title


# ---------------------------------------------------------------- value types, as the reference's data models give them

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
TIMESTAMP_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
Check = Callable[[Any], bool]


def uuid_(v: Any) -> bool:
    return isinstance(v, str) and bool(UUID_RE.match(v))


def int_(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def string(v: Any) -> bool:
    return isinstance(v, str)


def boolean(v: Any) -> bool:
    return isinstance(v, bool)


def timestamp(v: Any) -> bool:
    # The reference: ISO 8601 in UTC. Its example has microseconds; Enginel's precision is the database's.
    departure("Timestamps in milliseconds")
    return isinstance(v, str) and bool(TIMESTAMP_RE.match(v))


def obj(v: Any) -> bool:
    return isinstance(v, dict)


def point(v: Any) -> bool:
    return isinstance(v, dict) and set(v) >= {"x", "y", "z"} and all(number(v[k]) for k in "xyz")


def box(v: Any) -> bool:
    return isinstance(v, dict) and point(v.get("min")) and point(v.get("max"))


def nullable(check: Check) -> Check:
    return lambda v: v is None or check(v)


def list_of(check: Check) -> Check:
    return lambda v: isinstance(v, list) and all(check(i) for i in v)


def one_of(*values: str) -> Check:
    return lambda v: v in values


def conforms(value: Any, model: dict[str, Check], where: str) -> dict[str, Any]:
    """`value` has every field of `model`, each of its type."""
    assert isinstance(value, dict), (where, value)
    missing = sorted(set(model) - set(value))
    assert not missing, f"{where}: missing {missing}"
    wrong = {k: value[k] for k, check in model.items() if not check(value[k])}
    assert not wrong, f"{where}: wrong types {wrong}"
    return value


# Enums as the reference lists them.
TIERS = ("STARTER", "PROFESSIONAL", "ENTERPRISE")
CLEARANCES = ("UNCLASSIFIED", "CONFIDENTIAL", "SECRET", "TOP_SECRET")
CLASSIFICATIONS = (*CLEARANCES, "ITAR")
ROLES = ("OWNER", "ADMIN", "MEMBER", "VIEWER")
DESIGN_STATUSES = ("UPLOADING", "PROCESSING", "APPROVED", "IN_REVIEW", "REJECTED", "ARCHIVED")
JOB_TYPES = ("PROCESSING", "VALIDATION", "BOM_EXTRACTION", "EXPORT")
JOB_STATUSES = ("PENDING", "PROCESSING", "SUCCESS", "FAILURE", "CANCELLED")
REVIEW_STATUSES = ("PENDING", "IN_PROGRESS", "COMPLETED", "CANCELLED")
SEVERITIES = ("INFO", "MINOR", "MAJOR", "CRITICAL")
MARKUP_STATUSES = ("OPEN", "RESOLVED", "DISMISSED")
AUDIT_ACTIONS = ("CREATE", "UPDATE", "DELETE", "APPROVE", "REJECT")
ERROR_CODES = (
    "AUTHENTICATION_FAILED",
    "TOKEN_EXPIRED",
    "PERMISSION_DENIED",
    "RESOURCE_NOT_FOUND",
    "VALIDATION_ERROR",
    "ITAR_VIOLATION",
    "ORGANIZATION_LIMIT_EXCEEDED",
    "FILE_TOO_LARGE",
    "INVALID_FILE_FORMAT",
    "GEOMETRY_EXTRACTION_FAILED",
)

# The data models (the reference's "Data Models" and each list example's extra fields).
ORGANIZATION = {
    "id": uuid_,
    "name": string,
    "slug": string,
    "description": string,
    "is_active": boolean,
    "is_us_organization": boolean,
    "subscription_tier": one_of(*TIERS),
    "max_users": number,
    "max_storage_gb": number,
    "member_count": number,
    "storage_used_gb": number,
    "contact_email": string,
    "contact_phone": string,
    "created_at": timestamp,
    "updated_at": timestamp,
}
MEMBER = {"id": int_, "user": int_, "username": string, "email": string, "role": one_of(*ROLES), "joined_at": timestamp}
MEMBERSHIP = {"organization_id": uuid_, "organization_name": string, "role": one_of(*ROLES)}
USER = {
    "id": int_,
    "username": string,
    "email": string,
    "first_name": string,
    "last_name": string,
    "is_us_person": boolean,
    "security_clearance_level": one_of(*CLEARANCES),
    "organization": string,
    "phone_number": string,
    "date_joined": timestamp,
    "organizations": list_of(lambda m: bool(conforms(m, MEMBERSHIP, "membership"))),
}
SERIES = {
    "id": uuid_,
    "organization": uuid_,
    "organization_name": string,
    "part_number": string,
    "name": string,
    "description": string,
    "category": string,
    "created_by": int_,
    "created_by_username": string,
    "created_at": timestamp,
    "updated_at": timestamp,
}
SERIES_VERSION = {"id": uuid_, "version_number": int_, "filename": string, "status": string}
DESIGN = {
    "id": uuid_,
    "series": uuid_,
    "part_number": string,
    "series_name": string,
    "version_number": int_,
    "filename": string,
    "file_size_bytes": int_,
    "file_hash": lambda v: isinstance(v, str) and bool(re.fullmatch(r"sha256:[0-9a-f]{64}", v)),
    "revision": string,
    "classification": one_of(*CLASSIFICATIONS),
    # Departure "READY and FAILED design statuses" (exercised in test_design_assets): two more values.
    "status": one_of(*DESIGN_STATUSES, "READY", "FAILED"),
    "is_valid_geometry": boolean,
    "validation_errors": list_of(string),
    "bounding_box": box,
    "volume_cubic_mm": number,
    "surface_area_sq_mm": number,
    "center_of_mass": point,
    "mass_kg": number,
    "material": string,
    "uploaded_by": int_,
    "uploaded_by_username": string,
    "created_at": timestamp,
    "updated_at": timestamp,
}
# "Null until there is a value": the hash before finalize, geometry before the analysis has run, mass without a
# material of known density.
DESIGN_UNSET = {
    **DESIGN,
    **{
        k: nullable(DESIGN[k])
        for k in (
            "file_hash",
            "is_valid_geometry",
            "bounding_box",
            "volume_cubic_mm",
            "surface_area_sq_mm",
            "center_of_mass",
            "mass_kg",
        )
    },
}
UPLOAD_URL = {"upload_url": string, "upload_id": string, "expires_at": timestamp}
FINALIZED = {"status": one_of("PROCESSING"), "analysis_job_id": string, "message": string}
METADATA = {"geometry": obj, "material": obj, "validation": obj}
METADATA_GEOMETRY = {
    "bounding_box": box,
    "volume_cubic_mm": number,
    "surface_area_sq_mm": number,
    "center_of_mass": point,
}
METADATA_MATERIAL = {"name": string, "density_kg_m3": number, "mass_kg": number}
METADATA_VALIDATION = {"is_valid": boolean, "errors": list_of(string), "warnings": list_of(string)}
CONVERSION = {
    "original_value": number,
    "from_unit": string,
    "to_unit": string,
    "converted_value": number,
    "conversion_factor": number,
}
BOM_NODE = {
    "id": int_,
    "design_asset": uuid_,
    "parent": nullable(int_),
    "path": string,
    "depth": int_,
    "part_name": string,
    "part_number": string,
    "quantity": number,
    "unit_of_measure": string,
    "reference_designator": string,
    "notes": string,
    "created_at": timestamp,
}
JOB = {
    "id": string,
    "design_asset": uuid_,
    "job_type": one_of(*JOB_TYPES),
    "status": one_of(*JOB_STATUSES),
    "celery_task_id": string,
    "started_at": timestamp,
    "completed_at": timestamp,
    "duration_seconds": number,
    "result": obj,
    "error_message": nullable(string),
    "retry_count": int_,
}
JOB_STATUS = {"status": one_of(*JOB_STATUSES), "state": string, "result": nullable(obj), "error": nullable(string)}
CELERY_INFO = {"task_id": string, "name": string, "args": list_of(string), "kwargs": obj, "worker": string}
PROGRESS = {"current": int_, "total": int_, "percent": number, "status_message": string}
ACTIVE_TASK = {"task_id": string, "name": string, "args": list_of(string), "worker": string, "time_start": number}
METRICS = {
    "job_type": string,
    "total_count": int_,
    "success_count": int_,
    "failure_count": int_,
    "success_rate": number,
    "avg_duration_seconds": number,
    "min_duration_seconds": number,
    "max_duration_seconds": number,
}
FAILURES = {"total_failures": int_, "top_errors": list_of(obj), "failures": list_of(obj)}
REVIEW = {
    "id": uuid_,
    "design_asset": uuid_,
    "reviewers": list_of(int_),
    "status": one_of(*REVIEW_STATUSES),
    "due_date": timestamp,
    "notes": string,
    "created_by": int_,
    "created_at": timestamp,
    "completed_at": nullable(timestamp),
}
MARKUP = {
    "id": int_,
    "design_asset": uuid_,
    "review_session": uuid_,
    "author": int_,
    "author_username": string,
    "position": point,
    "camera_position": point,
    "camera_target": point,
    "annotation_text": string,
    "severity": one_of(*SEVERITIES),
    "status": one_of(*MARKUP_STATUSES),
    "created_at": timestamp,
    "resolved_at": nullable(timestamp),
}
AUDIT_ENTRY = {
    "id": int_,
    "actor_id": nullable(int_),
    "actor_username": nullable(string),
    "action": string,
    "action_display": string,
    "resource_type": string,
    "resource_id": string,
    "ip_address": nullable(string),
    "user_agent": nullable(string),
    "changes": obj,
    "timestamp": timestamp,
}
TOKENS = {"access_token": string, "refresh_token": string, "expires_in": int_, "token_type": one_of("Bearer")}
ENVELOPE = {"error": string, "detail": string, "code": string, "field_errors": obj}
# Request bodies and keys of the reference's examples that are not fields of the models above.
OTHER_KEYS = {
    "count",
    "next",
    "previous",
    "results",
    "username",
    "password",
    "file_size",
    "content_type",
    "file_path",
    "reviewer_ids",
    "review_session_id",
    "celery_info",
    "kwargs",
    "retries",
    "tasks",
    "time_start",
    "geometry_extracted",
    "bom_items",
    "validation_passed",
    "force",
    "comments",
    "approved",
    "reason",
    "resolution_notes",
    "checks",
    "database",
    "redis",
    "celery",
    "service",
    "timestamp",
    "min",
    "max",
    "x",
    "y",
    "z",
    "density_kg_m3",
    "is_valid",
    "errors",
    "warnings",
    "geometry",
    "validation",
    "error",
    "retry_after",
    "field_name",
    "user_id",
}


def pages(body: Any, where: str) -> list[dict[str, Any]]:
    """The reference's list envelope: count, next, previous (absolute links or null) and results."""
    assert isinstance(body, dict) and set(body) >= {"count", "next", "previous", "results"}, (where, body)
    assert int_(body["count"]) and isinstance(body["results"], list), where
    for link in ("next", "previous"):
        assert body[link] is None or body[link].startswith("http"), (where, body[link])
    return body["results"]  # type: ignore[no-any-return]


# ---------------------------------------------------------------- walking the reference

ID_SEGMENT = re.compile(r"^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9]+)$")


def endpoint(method: str, path: str) -> str:
    """ "METHOD /api/route/" as the reference writes it: ids as {id}, no query string."""
    path = path.split("?", 1)[0]
    if path.startswith("http"):
        path = "/" + path.split("/", 3)[3]
    return method.upper() + " " + "/".join("{id}" if ID_SEGMENT.match(s) else s for s in path.split("/"))


class Walk:
    """The requests one section sends, remembered as reference endpoints so the section can show it walked each."""

    def __init__(self) -> None:
        self.sent: set[str] = set()

    def by(self, caller: Caller | Api) -> Client:
        return Client(self, caller.api if isinstance(caller, Caller) else caller)

    def covered(self, expected: set[str]) -> None:
        missing = sorted(expected - self.sent)
        assert not missing, f"not walked: {missing}"


class Client:
    def __init__(self, walk: Walk, api: Api) -> None:
        self.walk, self.api = walk, api

    async def request(self, method: str, path: str, body: Any = None, **kw: Any) -> Response:
        self.walk.sent.add(endpoint(method, path))
        return await self.api.request(method, path, body, **kw)

    async def get(self, path: str, **kw: Any) -> Response:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, body: Any = None, **kw: Any) -> Response:
        return await self.request("POST", path, body, **kw)

    async def put(self, path: str, body: Any = None, **kw: Any) -> Response:
        return await self.request("PUT", path, body, **kw)

    async def patch(self, path: str, body: Any = None, **kw: Any) -> Response:
        return await self.request("PATCH", path, body, **kw)

    async def delete(self, path: str, **kw: Any) -> Response:
        return await self.request("DELETE", path, **kw)


def ok(resp: Response, status: int = 200) -> Any:
    assert resp.status == status, (resp.status, resp.body[:500])
    return resp.json


# Each section's endpoints, as the reference lists them; every one is walked by that section's test, and together
# with the endpoints not built yet they are exactly the reference's (test_the_walk_covers_the_reference).
SECTIONS: dict[str, set[str]] = {
    "Organizations": {
        "GET /api/organizations/",
        "POST /api/organizations/",
        "GET /api/organizations/{id}/",
        "PUT /api/organizations/{id}/",
        "PATCH /api/organizations/{id}/",
        "DELETE /api/organizations/{id}/",
        "GET /api/organizations/{id}/members/",
        "POST /api/organizations/{id}/add_member/",
    },
    "Users": {"GET /api/users/", "GET /api/users/{id}/", "GET /api/users/me/"},
    "Design Series": {
        "GET /api/series/",
        "POST /api/series/",
        "GET /api/series/{id}/",
        "PUT /api/series/{id}/",
        "PATCH /api/series/{id}/",
        "DELETE /api/series/{id}/",
        "GET /api/series/{id}/designs/",
    },
    "Design Assets": {
        "GET /api/designs/",
        "POST /api/designs/upload-url/",
        "POST /api/designs/",
        "POST /api/designs/{id}/finalize_upload/",
        "GET /api/designs/{id}/",
        "PATCH /api/designs/{id}/",
        "DELETE /api/designs/{id}/",
        "GET /api/designs/{id}/download/",
        "GET /api/designs/{id}/metadata/",
        "POST /api/designs/{id}/start_review/",
        "POST /api/designs/{id}/approve/",
        "GET /api/designs/convert-units/",
    },
    "Assembly Nodes (BOM)": {
        "GET /api/bom-nodes/",
        "POST /api/bom-nodes/",
        "GET /api/bom-nodes/{id}/",
        "PATCH /api/bom-nodes/{id}/",
        "DELETE /api/bom-nodes/{id}/",
    },
    "Analysis Jobs": {
        "GET /api/analysis-jobs/",
        "GET /api/analysis-jobs/{id}/",
        "GET /api/analysis-jobs/{id}/status/",
        "GET /api/analysis-jobs/{id}/progress/",
        "POST /api/analysis-jobs/{id}/cancel/",
        "GET /api/analysis-jobs/active/",
        "GET /api/analysis-jobs/metrics/",
        "GET /api/analysis-jobs/failures/",
    },
    "Review Sessions": {
        "GET /api/reviews/",
        "POST /api/reviews/",
        "GET /api/reviews/{id}/",
        "PATCH /api/reviews/{id}/",
        "POST /api/reviews/{id}/approve/",
        "POST /api/reviews/{id}/reject/",
    },
    "Markups": {
        "GET /api/markups/",
        "POST /api/markups/",
        "GET /api/markups/{id}/",
        "PATCH /api/markups/{id}/",
        "DELETE /api/markups/{id}/",
        "POST /api/markups/{id}/resolve/",
        "POST /api/markups/{id}/dismiss/",
    },
    "Audit Logs": {
        "GET /api/audit-logs/",
        "GET /api/audit-logs/{id}/",
        "GET /api/audit-logs/search/",
        "GET /api/audit-logs/export/",
    },
    "Authentication": {
        "POST /api/auth/login/",
        "POST /api/auth/logout/",
        "POST /api/auth/refresh/",
        "GET /api/auth/verify/",
        "GET /api/auth/sessions/",
        "GET /api/auth/api-keys/",
        "POST /api/auth/api-keys/",
        "DELETE /api/auth/api-keys/{id}/",
    },
    "Health & Monitoring": {"GET /api/health/", "GET /api/health/detailed/"},
}
NOT_YET = {
    "GET /api/monitoring/dashboard/",
    "GET /api/monitoring/errors/",
    "GET /api/monitoring/performance/",
}


async def staff_token(world: World) -> Api:
    staff = await world.staff_principal()
    return world.api.as_token(
        (await world.services.identity.open_session(staff.user, device="t", ip=None))["access_token"]
    )


# Analysis runs in these sections' servers: one worker, quick polling, no rate limit on the polling.
ANALYSIS = {
    "workers": 1,
    "job_poll_interval": 0.05,
    "rate_limit_per_minute": 1_000_000,
    "rate_limit_per_hour": 1_000_000,
    "uploads_per_hour": 1000,
}


async def analysed(
    db: Any, author: Caller, series_id: str, filename: str = "box.step", **fields: Any
) -> dict[str, Any]:
    """A design through the four-step upload and its real analysis (the module's server runs one worker)."""
    design = await upload(author, series_id, filename, cad(filename), **fields)
    job = await wait_job(author.api, design["finalize"]["analysis_job_id"], timeout=120)
    assert job["status"] == "SUCCESS", job
    return await db.designs.find_one({"_id": design["id"]})  # type: ignore[no-any-return]


# ---------------------------------------------------------------- Authentication, Common Patterns


@pytest.mark.gen_test(timeout=120)
async def test_authentication_and_common_patterns(world: World, db: Any, api: Api) -> None:
    """The reference's Authentication, Getting Started, Common Patterns and Rate Limiting sections."""
    org, p, series_id = await review_team(world)
    walk = Walk()
    anonymous = walk.by(api)
    # Getting Started: log in with the e-mail address as the username; the token goes in "Authorization: Token".
    login = ok(await anonymous.post("/api/auth/login/", {"username": "author@example.com", "password": PASSWORD}))
    conforms(login, TOKENS, "login")
    assert login["expires_in"] == 86400
    author = walk.by(api.as_token(login["access_token"]))
    assert ok(await author.get("/api/designs/"))["count"] == 0
    bearer = await api.get("/api/users/me/", headers={"Authorization": f"Bearer {login['access_token']}"})
    assert ok(bearer)["username"] == "author"
    key = ok(await author.post("/api/auth/api-keys/", {"name": "service", "scopes": ["read"]}), 201)["key"]
    assert ok(await api.get("/api/users/me/", headers={"Authorization": f"ApiKey {key}"}))["username"] == "author"
    # Session authentication, for browsers.
    departure("Session cookie and XSRF header")
    browser = await api.post("/api/auth/login/", {"username": "author", "password": PASSWORD})
    cookies = "; ".join(c.split(";", 1)[0] for c in browser.headers.get_list("Set-Cookie"))
    assert "enginel_session=" in cookies and "sessionid=" not in cookies
    assert ok(await api.get("/api/users/me/", headers={"Cookie": cookies}))["username"] == "author"
    write = await api.post(
        "/api/series/", {"organization": org["_id"], "part_number": "C-1", "name": "c"}, headers={"Cookie": cookies}
    )
    assert_envelope(write, 403, "XSRF_FAILED")  # the session's xsrf_token goes in X-XSRF-Token

    # 401: no credentials, an unknown or malformed token, and an expired one.
    for headers in ({}, {"Authorization": "Token abc123def456"}, {"Authorization": "Token"}):
        assert_envelope(await api.get("/api/designs/", headers=headers), 401, "AUTHENTICATION_FAILED")
    await db.auth_sessions.update_one(
        {"_id": login["session_id"]}, {"$set": {"access_expires_at": utcnow() - timedelta(seconds=1)}}
    )
    assert_envelope(await author.get("/api/designs/"), 401, "TOKEN_EXPIRED")

    # Pagination: ?page=2&page_size=25 with absolute next/previous links; page_size at most 100.
    member = walk.by(p["member"])
    now = utcnow()
    await db.series.insert_many(  # sixty more series, as the repository stores them
        {
            "_id": f"00000000-0000-4000-8000-{n:012d}",
            "organization_id": org["_id"],
            "part_number": f"P-{n:03d}",
            "part_number_lower": f"p-{n:03d}",
            "name": "bulk",
            "description": "",
            "category": "",
            "created_by": p["member"].id,
            "created_at": now,
            "updated_at": now,
            "next_version": 0,
            "version": 1,
        }
        for n in range(60)
    )
    default = ok(await member.get("/api/series/"))
    assert len(pages(default, "series")) == 50 and default["count"] == 61  # page_size defaults to 50
    second = ok(await member.get("/api/series/?page=2&page_size=25"))
    assert len(pages(second, "page 2")) == 25
    assert "page=3" in second["next"] and "page=1" in second["previous"] and "page_size=25" in second["next"]
    capped = await member.get("/api/series/?page_size=1000")
    assert len(pages(ok(capped), "capped")) == 61 and capped.headers["X-Page-Size-Capped"] == "100"

    # Searching, ordering (several fields, - for descending) and field selection.
    assert ok(await member.get("/api/series/?search=turbine"))["count"] == 1
    ordered = pages(ok(await member.get("/api/series/?ordering=-part_number,created_at&page_size=3")), "ordered")
    assert [s["part_number"] for s in ordered] == ["TB-001", "P-059", "P-058"]
    picked = pages(ok(await member.get("/api/series/?fields=id,part_number,name&page_size=1")), "fields")
    assert list(picked[0]) == ["id", "part_number", "name"]
    # Rate limiting: the three headers on every answer.
    assert all(capped.headers.get(h) for h in ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"))
    assert_envelope(await member.get("/api/series/?zz=1"), 400, "VALIDATION_ERROR")  # never silently ignored


@pytest.mark.parametrize("settings_overrides", [{"rate_limit_per_minute": 3}])
@pytest.mark.gen_test(timeout=60)
async def test_rate_limit_answer(world: World) -> None:
    """Rate Limiting: past the budget, 429 with retry_after (and the envelope's code)."""
    user = await world.user("busy")
    for _ in range(3):
        assert (await user.api.get("/api/users/me/")).status == 200
    body = assert_envelope(await user.api.get("/api/users/me/"), 429, "RATE_LIMIT_EXCEEDED")
    assert int_(body["retry_after"]) and body["error"] == "Rate limit exceeded"


# ---------------------------------------------------------------- Organizations, Users


@pytest.mark.gen_test(timeout=120)
async def test_organizations(world: World, db: Any) -> None:
    walk = Walk()
    staff = walk.by(await staff_token(world))
    owner_user = await world.user("owner", is_us_person=True)
    admin_user = await world.user("admin")
    newcomer = await world.user("newcomer")
    # Create Organization: the reference's request, as platform staff.
    created = ok(
        await staff.post(
            "/api/organizations/",
            {
                "name": "New Company Inc",
                "slug": "new-company",
                "description": "Manufacturing and design",
                "is_us_organization": True,
                "subscription_tier": "PROFESSIONAL",
                "max_users": 50,
                "max_storage_gb": 500,
                "contact_email": "admin@newco.com",
                "contact_phone": "+1-555-0200",
            },
        ),
        201,
    )
    conforms(created, ORGANIZATION, "organization")
    assert created["subscription_tier"] == "PROFESSIONAL" and created["max_storage_gb"] == 500
    org_id = created["id"]
    departure("Organizations are created by platform staff")
    assert_envelope(
        await walk.by(owner_user).post("/api/organizations/", {"name": "Own", "slug": "own-co"}),
        403,
        "PERMISSION_DENIED",
    )

    # Add Organization Member {"user_id", "role"}: platform staff add at once.
    added = ok(
        await staff.post(f"/api/organizations/{org_id}/add_member/", {"user_id": owner_user.id, "role": "OWNER"}), 201
    )
    conforms(added, MEMBER, "added member")
    ok(await staff.post(f"/api/organizations/{org_id}/add_member/", {"user_id": admin_user.id, "role": "ADMIN"}), 201)
    owner, admin = walk.by(owner_user), walk.by(admin_user)
    # An OWNER or ADMIN (the reference's permission) invites: the user joins when they accept.
    departure("Adding a member is an invitation")
    invited = ok(
        await admin.post(f"/api/organizations/{org_id}/add_member/", {"user_id": newcomer.id, "role": "MEMBER"}), 202
    )
    assert invited["status"] == "invited" and invited["invitation"]["role"] == "MEMBER"
    assert ok(await newcomer.api.post(f"/api/invitations/{invited['invitation']['id']}/accept/")) is not None

    # List Organizations, with the reference's filters and search.
    listed = pages(ok(await owner.get("/api/organizations/")), "organizations")
    assert [o["id"] for o in listed] == [org_id]
    conforms(listed[0], ORGANIZATION, "listed organization")
    assert listed[0]["member_count"] == 4  # the staff creator is its first OWNER
    for query, expected in (
        ("is_active=true", 1),
        ("is_us_organization=true", 1),
        ("is_us_organization=false", 0),
        ("subscription_tier=PROFESSIONAL", 1),
        ("subscription_tier=STARTER", 0),
        ("search=manufacturing", 1),
    ):
        assert ok(await owner.get(f"/api/organizations/?{query}"))["count"] == expected, query
    assert_envelope(await owner.get("/api/organizations/?subscription_tier=GOLD"), 400, "VALIDATION_ERROR")

    conforms(ok(await owner.get(f"/api/organizations/{org_id}/")), ORGANIZATION, "get organization")
    # Update Organization, PUT (the whole writable body) and PATCH.
    put = {"name": "New Company Incorporated", "slug": "new-company", "description": "Design", "contact_phone": "+1"}
    replaced = ok(
        await owner.put(
            f"/api/organizations/{org_id}/",
            {
                **put,
                "is_us_organization": True,
                "subscription_tier": "PROFESSIONAL",
                "max_users": 50,
                "max_storage_gb": 500,
                "contact_email": "admin@newco.com",
            },
        )
    )
    assert replaced["name"] == "New Company Incorporated"
    patched = ok(await owner.patch(f"/api/organizations/{org_id}/", {"description": "Aerospace components"}))
    assert patched["description"] == "Aerospace components" and patched["updated_at"] >= created["updated_at"]

    # Get Organization Members: a bare array.
    members = ok(await owner.get(f"/api/organizations/{org_id}/members/"))
    assert isinstance(members, list) and {m["username"] for m in members} == {
        "platform-admin",
        "owner",
        "admin",
        "newcomer",
    }
    for m in members:
        conforms(m, MEMBER, "member")

    # Delete Organization: 204, once it holds nothing.
    series = ok(await owner.post("/api/series/", {"organization": org_id, "part_number": "X-1", "name": "x"}), 201)
    departure("Deleting an organization that holds series")
    assert_envelope(await owner.delete(f"/api/organizations/{org_id}/"), 409, "CONFLICT")
    assert (await owner.delete(f"/api/series/{series['id']}/")).status == 204
    deleted = await owner.delete(f"/api/organizations/{org_id}/")
    assert deleted.status == 204 and deleted.body == b""
    assert_envelope(await owner.get(f"/api/organizations/{org_id}/"), 404, "RESOURCE_NOT_FOUND")
    walk.covered(SECTIONS["Organizations"])


@pytest.mark.gen_test(timeout=120)
async def test_users(world: World) -> None:
    org, p, _ = await review_team(world)
    walk = Walk()
    admin = walk.by(p["admin"])
    users = pages(ok(await admin.get("/api/users/")), "users")
    for user in users:
        conforms(user, USER, f"user {user['username']}")
    me = conforms(ok(await admin.get("/api/users/me/")), USER, "me")
    assert me["organization"] == "Acme" and me["organizations"] == [
        {"organization_id": org["_id"], "organization_name": "Acme", "role": "ADMIN"}
    ]
    one = conforms(ok(await admin.get(f"/api/users/{p['r1'].id}/")), USER, "user")
    assert one["username"] == "r1" and one["security_clearance_level"] == "SECRET"
    for query, expected in (
        ("is_us_person=false", {"foreign"}),
        ("security_clearance_level=UNCLASSIFIED", {"low"}),
        ("search=r1@example", {"r1"}),
    ):
        found = pages(ok(await admin.get(f"/api/users/?{query}")), query)
        assert {u["username"] for u in found} == expected, query
    assert_envelope(await admin.get("/api/users/?security_clearance_level=SECRETISH"), 400, "VALIDATION_ERROR")
    # A user in no organization has none to name.
    loner = await world.user("loner")
    departure("Null until there is a value")
    assert ok(await loner.api.get("/api/users/me/"))["organization"] is None
    walk.covered(SECTIONS["Users"])


# ---------------------------------------------------------------- Design Series, Design Assets


@pytest.mark.gen_test(timeout=120)
async def test_design_series(world: World, db: Any) -> None:
    org, p, existing = await review_team(world)
    walk = Walk()
    member, admin = walk.by(p["author"]), walk.by(p["admin"])
    body = {
        "organization": org["_id"],
        "part_number": "TB-002",
        "name": "Turbine Blade Mark II",
        "description": "Improved blade design with better heat resistance",
        "category": "AEROSPACE",
    }
    created = conforms(ok(await member.post("/api/series/", body), 201), SERIES, "series")
    sid = created["id"]
    assert_envelope(await member.post("/api/series/", {**body, "part_number": "tb-002"}), 409, "CONFLICT")
    assert_envelope(
        await walk.by(p["viewer"]).post("/api/series/", {**body, "part_number": "V"}), 403, "PERMISSION_DENIED"
    )
    for item in pages(ok(await member.get("/api/series/")), "series"):
        conforms(item, SERIES, "listed series")
    for query, expected in (
        (f"organization={org['_id']}", {existing, sid}),
        ("part_number=TB-002", {sid}),  # exact, and as uniqueness is: whatever the case
        ("part_number=tb-002", {sid}),
        ("part_number=TB-00", set()),
        ("category=AEROSPACE", {sid}),
        (f"created_by={p['author'].id}", {existing, sid}),
        ("search=heat%20resistance", {sid}),
        ("search=TB-00", {existing, sid}),
    ):
        found = pages(ok(await member.get(f"/api/series/?{query}")), query)
        assert {s["id"] for s in found} == expected, query
    conforms(ok(await member.get(f"/api/series/{sid}/")), SERIES, "get series")
    put = ok(await member.put(f"/api/series/{sid}/", {**body, "name": "Turbine Blade Mk II"}))
    assert put["name"] == "Turbine Blade Mk II"
    assert ok(await member.patch(f"/api/series/{sid}/", {"category": "ENERGY"}))["category"] == "ENERGY"

    # Get Series Designs: a bare array of versions, oldest first.
    for n in (1, 2):
        await upload(p["author"], sid, f"turbine_blade_v{n}.brep", cad("box.brep"))
    versions = ok(await member.get(f"/api/series/{sid}/designs/"))
    assert [(v["version_number"], v["filename"]) for v in versions] == [
        (1, "turbine_blade_v1.brep"),
        (2, "turbine_blade_v2.brep"),
    ]
    for v in versions:
        conforms(v, SERIES_VERSION, "series version")
    departure("Deleting a series that holds designs")
    assert_envelope(await admin.delete(f"/api/series/{sid}/"), 409, "CONFLICT")
    assert (await admin.delete(f"/api/series/{sid}/?force=true")).status == 204
    empty = ok(await member.post("/api/series/", {**body, "part_number": "TB-003"}), 201)
    assert (await member.delete(f"/api/series/{empty['id']}/")).status == 204
    assert_envelope(await member.get(f"/api/series/{empty['id']}/"), 404, "RESOURCE_NOT_FOUND")
    walk.covered(SECTIONS["Design Series"])


@pytest.mark.parametrize("settings_overrides", [ANALYSIS])
@pytest.mark.gen_test(timeout=300)
async def test_design_assets(world: World, db: Any) -> None:
    org, p, series_id = await review_team(world)
    walk = Walk()
    author, owner = walk.by(p["author"]), walk.by(p["owner"])
    data = cad("box.step")
    digest = hashlib.sha256(data).hexdigest()

    # Get Upload URL: the reference's body, from someone who may add designs in one organization.
    url = conforms(
        ok(
            await author.post(
                "/api/designs/upload-url/",
                {"filename": "turbine_blade_v3.step", "file_size": len(data), "content_type": "application/step"},
            ),
            201,
        ),
        UPLOAD_URL,
        "upload url",
    )
    departure("The four-step upload")  # the bytes go to upload_url before the design is created
    assert ok(await put_bytes(p["author"].api, url["upload_url"], data))["file_hash"] == f"sha256:{digest}"
    # Create Design Asset: the reference's body (file_path is accepted and ignored).
    created = ok(
        await author.post(
            "/api/designs/",
            {
                "series": series_id,
                "filename": "turbine_blade_v3.step",
                "file_path": "/uploads/tmp_abc123.step",
                "upload_id": url["upload_id"],
                "revision": "Rev C",
                "classification": "UNCLASSIFIED",
                "material": "Ti-6Al-4V",
            },
        ),
        201,
    )
    assert created["status"] == "UPLOADING" and created["revision"] == "Rev C"
    departure("Null until there is a value")
    conforms(created, DESIGN_UNSET, "created design")
    assert (
        created["is_valid_geometry"] is None and created["bounding_box"] is None and created["volume_cubic_mm"] is None
    )
    design_id = created["id"]
    # Finalize Upload.
    final = conforms(
        ok(
            await author.post(
                f"/api/designs/{design_id}/finalize_upload/",
                {"file_hash": f"sha256:{digest}"},
            )
        ),
        FINALIZED,
        "finalize",
    )
    assert (await wait_job(p["author"].api, final["analysis_job_id"], timeout=120))["status"] == "SUCCESS"

    # Get Design Asset, analysed.
    design = ok(await author.get(f"/api/designs/{design_id}/"))
    departure("READY and FAILED design statuses")
    assert design["status"] == "READY"
    conforms(design, DESIGN, "design")
    assert design["is_valid_geometry"] is True and design["validation_errors"] == []
    assert design["mass_kg"] == pytest.approx(design["volume_cubic_mm"] * 1e-9 * 4430, rel=1e-6)
    # validation_errors are strings as in the reference; the structured findings sit beside them.
    invalid = await analysed(db, p["author"], series_id, "open-shell.brep")
    shown = ok(await author.get(f"/api/designs/{invalid['_id']}/"))
    assert shown["is_valid_geometry"] is False and shown["validation_errors"]
    assert all(isinstance(e, str) and e for e in shown["validation_errors"])
    findings = shown["validation_findings"]
    assert {f["code"] for f in findings if f["severity"] == "ERROR"} == {"NO_SOLID", "OPEN_SHELL", "FREE_EDGES"}
    assert [f["message"] for f in findings if f["severity"] == "ERROR"] == shown["validation_errors"]
    assert [f["message"] for f in findings if f["severity"] == "WARNING"] == shown["warnings"]

    # List Design Assets with the reference's filters, search, ordering and fields.
    for item in pages(ok(await author.get("/api/designs/")), "designs"):
        conforms(item, DESIGN if item["id"] == design_id else DESIGN_UNSET, "listed design")
    for query, expected in (
        ("status=APPROVED&classification=UNCLASSIFIED", set()),
        ("status=READY&classification=UNCLASSIFIED", {design_id, invalid["_id"]}),
        (f"series={series_id}", {design_id, invalid["_id"]}),
        ("part_number=tb-001", {design_id, invalid["_id"]}),
        ("version_number=1", {design_id}),
        ("is_valid_geometry=false", {invalid["_id"]}),
        ("material=ti-6al-4v", {design_id}),
        (f"uploaded_by={p['author'].id}", {design_id, invalid["_id"]}),
        ("created_at__gte=2020-01-01T00:00:00Z&created_at__lte=2999-01-01T00:00:00Z", {design_id, invalid["_id"]}),
        ("search=turbine", {design_id}),
    ):
        found = pages(ok(await author.get(f"/api/designs/?{query}")), query)
        assert {d["id"] for d in found} == expected, query
    ordered = pages(ok(await author.get("/api/designs/?ordering=-created_at,part_number")), "ordered")
    assert [d["id"] for d in ordered] == [invalid["_id"], design_id]
    by_part = pages(ok(await author.get("/api/designs/?ordering=part_number,-version_number")), "by part")
    assert [d["id"] for d in by_part] == [invalid["_id"], design_id]
    picked = pages(ok(await author.get("/api/designs/?fields=id,filename,status")), "fields")
    assert all(list(d) == ["id", "filename", "status"] for d in picked)

    # Get Design Metadata.
    meta = conforms(ok(await author.get(f"/api/designs/{design_id}/metadata/")), METADATA, "metadata")
    conforms(meta["geometry"], METADATA_GEOMETRY, "metadata geometry")
    conforms(meta["material"], METADATA_MATERIAL, "metadata material")
    conforms(meta["validation"], METADATA_VALIDATION, "metadata validation")
    assert meta["material"]["name"] == "Ti-6Al-4V" and meta["material"]["density_kg_m3"] == 4430
    bad_meta = ok(await author.get(f"/api/designs/{invalid['_id']}/metadata/"))["validation"]
    assert bad_meta["errors"] == shown["validation_errors"] and bad_meta["findings"] == findings

    # Download Design File.
    got = await author.get(f"/api/designs/{design_id}/download/")
    assert got.status == 200 and got.body == data and got.headers["Content-Type"] == "application/step"

    # Update Design Asset: the reference's example also sets status, which only the review workflow does.
    departure("Design PATCH refuses status changes")
    refused = await author.patch(f"/api/designs/{design_id}/", {"status": "APPROVED", "material": "Ti-6Al-4V Grade 5"})
    assert "status" in assert_envelope(refused, 409, "CONFLICT")["field_errors"]
    assert ok(await author.get(f"/api/designs/{design_id}/"))["material"] == "Ti-6Al-4V"  # nothing changed
    updated = ok(await author.patch(f"/api/designs/{design_id}/", {"material": "Ti-6Al-4V Grade 5"}))
    assert updated["material"] == "Ti-6Al-4V Grade 5" and updated["mass_kg"] is not None

    # Start Review, then Approve Design by an assigned reviewer.
    started = ok(
        await author.post(
            f"/api/designs/{design_id}/start_review/",
            {"reviewer_ids": [p["r1"].id], "due_date": due(4), "notes": "Please review before production"},
        ),
        201,
    )
    assert uuid_(started["review_session_id"]) and started["status"] == "IN_REVIEW"
    assert_envelope(
        await walk.by(p["r2"]).post(f"/api/designs/{design_id}/approve/", {"notes": "x"}), 403, "PERMISSION_DENIED"
    )
    approved = ok(
        await walk.by(p["r1"]).post(f"/api/designs/{design_id}/approve/", {"notes": "Design meets all requirements"})
    )
    assert approved["status"] == "COMPLETED"
    assert ok(await author.get(f"/api/designs/{design_id}/"))["status"] == "APPROVED"

    # Unit Conversion, every listed unit.
    conversion = ok(await author.get("/api/designs/convert-units/?value=100&from_unit=mm&to_unit=in"))
    conforms(conversion, CONVERSION, "conversion")
    assert conversion["converted_value"] == pytest.approx(3.937, abs=5e-4)
    assert conversion["conversion_factor"] == pytest.approx(0.03937, abs=5e-6)
    for units in (
        ("mm", "cm", "m", "in", "ft"),
        ("mm3", "cm3", "m3", "in3", "ft3"),
        ("g", "kg", "lb", "oz"),
        ("mm2", "cm2", "m2", "in2", "ft2"),
    ):
        for unit in units:
            query = f"value=1&from_unit={units[0]}&to_unit={unit}"
            converted = conforms(ok(await author.get(f"/api/designs/convert-units/?{query}")), CONVERSION, query)
            assert converted["converted_value"] > 0 and (unit != units[0] or converted["converted_value"] == 1)

    # Delete Design Asset.
    assert (await walk.by(p["owner"]).delete(f"/api/designs/{invalid['_id']}/")).status == 204
    assert_envelope(await author.get(f"/api/designs/{invalid['_id']}/"), 404, "RESOURCE_NOT_FOUND")
    walk.covered(SECTIONS["Design Assets"])

    # The upload URL's body has no target in the reference: enough while the caller adds designs in one place.
    departure("Upload URL names its target")
    await world.org("second", members={p["author"]: "MEMBER"}, is_us=True)
    two = await author.post("/api/designs/upload-url/", {"filename": "a.step", "file_size": 10})
    assert "series" in assert_envelope(two, 400, "VALIDATION_ERROR")["field_errors"]
    assert ok(
        await author.post("/api/designs/upload-url/", {"filename": "a.step", "file_size": 10, "series": series_id}), 201
    )
    # Past the organization's storage quota: 413 with its own code.
    departure("Storage quota")
    staff = await staff_token(world)
    ok(await staff.patch(f"/api/organizations/{org['_id']}/", {"max_storage_gb": 1}))
    over = await owner.post(
        "/api/designs/upload-url/", {"filename": "big.step", "file_size": 3 << 29, "series": series_id}
    )
    body = assert_envelope(over, 413, "STORAGE_QUOTA_EXCEEDED")
    assert body["quota_bytes"] == 1 << 30


# ---------------------------------------------------------------- Assembly Nodes, Analysis Jobs


@pytest.mark.gen_test(timeout=120)
async def test_assembly_nodes(world: World, db: Any) -> None:
    _, p, series_id = await review_team(world)
    design = await ready_design(db, p["author"], series_id)
    walk = Walk()
    author = walk.by(p["author"])
    top = ok(
        await author.post(
            "/api/bom-nodes/",
            {
                "design_asset": design["_id"],
                "part_name": "Turbine Assembly",
                "part_number": "TB-001-ASM",
                "quantity": 1,
                "unit_of_measure": "EA",
                "reference_designator": "A1",
                "notes": "Main assembly",
            },
        ),
        201,
    )
    conforms(top, BOM_NODE, "root node")
    # The reference's request: a node under a parent.
    bolt = ok(
        await author.post(
            "/api/bom-nodes/",
            {
                "design_asset": design["_id"],
                "parent": top["id"],
                "part_name": "Bolt",
                "part_number": "HW-M8-20",
                "quantity": 12,
                "unit_of_measure": "EA",
                "reference_designator": "B1-B12",
            },
        ),
        201,
    )
    conforms(bolt, BOM_NODE, "child node")
    assert bolt["parent"] == top["id"] and bolt["depth"] == top["depth"] + 1 and bolt["path"].startswith(top["path"])
    nodes = pages(ok(await author.get(f"/api/bom-nodes/?design_asset={design['_id']}")), "bom")
    for node in nodes:
        conforms(node, BOM_NODE, "listed node")
    for query, expected in (
        ("parent=null", {top["id"]}),
        (f"parent={top['id']}", {bolt["id"]}),
        ("part_number=hw-m8-20", {bolt["id"]}),
        ("search=bolt", {bolt["id"]}),
    ):
        found = pages(ok(await author.get(f"/api/bom-nodes/?design_asset={design['_id']}&{query}")), query)
        assert {n["id"] for n in found} == expected, query
    conforms(ok(await author.get(f"/api/bom-nodes/{bolt['id']}/")), BOM_NODE, "get node")
    assert ok(await author.patch(f"/api/bom-nodes/{bolt['id']}/", {"quantity": 16}))["quantity"] == 16
    # Deleting a parent deletes its children.
    assert (await author.delete(f"/api/bom-nodes/{top['id']}/")).status == 204
    assert_envelope(await author.get(f"/api/bom-nodes/{bolt['id']}/"), 404, "RESOURCE_NOT_FOUND")
    walk.covered(SECTIONS["Assembly Nodes (BOM)"])


@pytest.mark.parametrize("settings_overrides", [ANALYSIS])
@pytest.mark.gen_test(timeout=300)
async def test_analysis_jobs(world: World, db: Any) -> None:
    _, p, series_id = await review_team(world)
    design = await analysed(db, p["author"], series_id)
    broken = await upload(p["author"], series_id, "corrupt.step", cad("corrupt.step"))
    failed = await wait_job(p["author"].api, broken["finalize"]["analysis_job_id"], timeout=120)
    assert failed["status"] == "FAILURE" and failed["error_message"]
    walk = Walk()
    author = walk.by(p["author"])
    job_id = design["analysis_job_id"]
    listed = pages(ok(await author.get("/api/analysis-jobs/?status=SUCCESS&job_type=PROCESSING")), "jobs")
    assert [j["id"] for j in listed] == [job_id]
    job = conforms(listed[0], JOB, "job")
    assert job["result"]["geometry_extracted"] is True and job["result"]["validation_passed"] is True
    assert int_(job["result"]["bom_items"])
    for query, expected in (
        (f"design_asset={design['_id']}", {job_id}),
        ("status=FAILURE", {failed["id"]}),
        ("started_at__gte=2020-01-01T00:00:00Z&started_at__lte=2999-01-01T00:00:00Z", {job_id, failed["id"]}),
        ("started_at__lte=2020-01-01T00:00:00Z", set()),
    ):
        found = pages(ok(await author.get(f"/api/analysis-jobs/?{query}")), query)
        assert {j["id"] for j in found} == expected, query
    assert_envelope(await author.get("/api/analysis-jobs/?job_type=RENDER"), 400, "VALIDATION_ERROR")
    conforms(ok(await author.get(f"/api/analysis-jobs/{job_id}/")), JOB, "get job")
    status = conforms(ok(await author.get(f"/api/analysis-jobs/{job_id}/status/")), JOB_STATUS, "job status")
    conforms(status["celery_info"], CELERY_INFO, "celery_info")
    assert status["celery_info"]["args"] == [design["_id"]] and int_(status["celery_info"]["retries"])
    progress = conforms(ok(await author.get(f"/api/analysis-jobs/{job_id}/progress/")), PROGRESS, "progress")
    assert progress["percent"] == 100 and progress["current"] == progress["total"]
    assert_envelope(await author.post(f"/api/analysis-jobs/{job_id}/cancel/", {"force": False}), 409, "CONFLICT")
    metrics = conforms(ok(await author.get("/api/analysis-jobs/metrics/?job_type=PROCESSING")), METRICS, "metrics")
    assert (metrics["total_count"], metrics["success_count"], metrics["failure_count"]) == (2, 1, 1)
    assert metrics["success_rate"] == 50.0
    failures = conforms(ok(await author.get("/api/analysis-jobs/failures/?days=7")), FAILURES, "failures")
    assert failures["total_failures"] == 1 and failures["top_errors"][0]["count"] == 1
    assert string(failures["top_errors"][0]["error"]) and failures["failures"][0]["id"] == failed["id"]
    # A design analysed before viewer models existed gets its GLB from a job of a fifth type.
    departure("TESSELLATION jobs")
    await db.designs.update_one({"_id": design["_id"]}, {"$unset": {"viewable": ""}})
    pending = await author.get(f"/api/designs/{design['_id']}/viewable/")
    assert pending.status == 202 and pending.json["job_type"] == "TESSELLATION"
    tess = ok(await author.get("/api/analysis-jobs/?job_type=TESSELLATION"))
    assert [j["id"] for j in tess["results"]] == [pending.json["job_id"]]
    walk.covered(SECTIONS["Analysis Jobs"] - {"POST /api/analysis-jobs/{id}/cancel/", "GET /api/analysis-jobs/active/"})


@pytest.mark.gen_test(timeout=120)
async def test_analysis_job_cancel_and_active(world: World, db: Any) -> None:
    """Cancel Job and Get Active Jobs, without workers in this server: a job waits PENDING, and one that another
    server process claimed runs there."""
    _, p, series_id = await review_team(world)
    walk = Walk()
    author = walk.by(p["author"])
    waiting = await upload(p["author"], series_id, "a.step", cad("box.step"))
    cancelled = ok(
        await author.post(f"/api/analysis-jobs/{waiting['finalize']['analysis_job_id']}/cancel/", {"force": False})
    )
    assert cancelled == {"message": "Job cancelled successfully", "status": "CANCELLED"}
    elsewhere = await upload(p["author"], series_id, "b.step", cad("box.step"))
    job_id = elsewhere["finalize"]["analysis_job_id"]
    now = utcnow()
    # As another server process leaves a job it claimed: its worker, task id, lease and start.
    await db.analysis_jobs.update_one(
        {"_id": job_id},
        {
            "$set": {
                "status": "PROCESSING",
                "worker": "node-2:4242",
                "task_id": "t-node-2",
                "started_at": now,
                "attempt_started_at": now,
                "lease_expires_at": now + timedelta(seconds=30),
            }
        },
    )
    active = ok(await author.get("/api/analysis-jobs/active/"))
    assert active["count"] == 1
    conforms(active["tasks"][0], ACTIVE_TASK, "active task")
    assert active["tasks"][0]["args"] == [elsewhere["id"]]
    departure("Cancelling a job another process runs")
    requested = await author.post(f"/api/analysis-jobs/{job_id}/cancel/", {"force": False})
    assert requested.status == 202 and requested.json["cancel_requested"] is True
    assert requested.json["status"] == "PROCESSING" and string(requested.json["message"])
    forced = ok(await author.post(f"/api/analysis-jobs/{job_id}/cancel/", {"force": True}))
    assert forced["status"] == "CANCELLED"
    walk.covered({"POST /api/analysis-jobs/{id}/cancel/", "GET /api/analysis-jobs/active/"})


# ---------------------------------------------------------------- Review Sessions, Markups


@pytest.mark.gen_test(timeout=120)
async def test_review_sessions(world: World, db: Any) -> None:
    _, p, series_id = await review_team(world)
    design = await ready_design(db, p["author"], series_id)
    walk = Walk()
    author, r1, r2 = walk.by(p["author"]), walk.by(p["r1"]), walk.by(p["r2"])
    reviewers = [p["r1"].id, p["r2"].id, p["r3"].id]
    day = (utcnow() + timedelta(days=20)).date()
    due_date = f"{day.isoformat()}T00:00:00Z"
    created = ok(
        await author.post(
            "/api/reviews/",
            {
                "design_asset": design["_id"],
                "reviewers": reviewers,
                "due_date": due_date,
                "notes": "Focus on structural integrity",
            },
        ),
        201,
    )
    conforms(created, REVIEW, "review")
    assert created["status"] == "PENDING" and created["reviewers"] == reviewers
    assert created["due_date"] == f"{day.isoformat()}T00:00:00.000Z"
    rid = created["id"]
    for item in pages(ok(await author.get("/api/reviews/")), "reviews"):
        conforms(item, REVIEW, "listed review")
    for query, expected in (
        (f"design_asset={design['_id']}", {rid}),
        ("status=PENDING", {rid}),
        ("status=COMPLETED", set()),
        (f"reviewers={p['r2'].id}", {rid}),
        (f"reviewers={p['author'].id}", set()),
        (f"created_by={p['author'].id}", {rid}),
        (f"due_date__lte={day.isoformat()}T00:00:00Z", {rid}),
        (f"due_date__lte={(day - timedelta(days=1)).isoformat()}T00:00:00Z", set()),
    ):
        found = pages(ok(await author.get(f"/api/reviews/?{query}")), query)
        assert {r["id"] for r in found} == expected, query
    assert_envelope(await author.get("/api/reviews/?status=OPEN"), 400, "VALIDATION_ERROR")
    conforms(ok(await author.get(f"/api/reviews/{rid}/")), REVIEW, "get review")
    assert (
        ok(await author.patch(f"/api/reviews/{rid}/", {"notes": "Pre-production review"}))["notes"]
        == "Pre-production review"
    )
    voted = ok(await r1.post(f"/api/reviews/{rid}/approve/", {"comments": "All requirements met", "approved": True}))
    assert voted["status"] == "IN_PROGRESS"
    departure("Rejection reasons are a closed list")
    free_text = await r2.post(f"/api/reviews/{rid}/reject/", {"comments": "x", "reason": "Dimensions are off"})
    assert "reason" in assert_envelope(free_text, 400, "VALIDATION_ERROR")["field_errors"]
    done = ok(
        await r2.post(
            f"/api/reviews/{rid}/reject/",
            {"comments": "Dimensions do not match specification", "reason": "INCORRECT_DIMENSIONS"},
        )
    )
    conforms(done, REVIEW, "completed review")
    assert done["status"] == "COMPLETED" and timestamp(done["completed_at"])  # the default veto: one rejection ends it
    assert_envelope(await walk.by(p["author"]).post(f"/api/reviews/{rid}/approve/", {}), 403, "PERMISSION_DENIED")
    walk.covered(SECTIONS["Review Sessions"])


@pytest.mark.gen_test(timeout=120)
async def test_markups(world: World, db: Any) -> None:
    _, p, series_id = await review_team(world)
    design = await ready_design(db, p["author"], series_id)
    review = await open_review(p["author"], design["_id"], [p["r1"], p["r2"]])
    walk = Walk()
    r1 = walk.by(p["r1"])
    body = {
        "design_asset": design["_id"],
        "review_session": review["id"],
        "position": {"x": 25.5, "y": 12.3, "z": 8.7},
        "camera_position": {"x": 100, "y": 100, "z": 100},
        "camera_target": {"x": 25.5, "y": 12.3, "z": 8.7},
        "annotation_text": "Wall thickness appears insufficient",
        "severity": "MAJOR",
    }
    created = conforms(ok(await r1.post("/api/markups/", body), 201), MARKUP, "markup")
    assert created["status"] == "OPEN" and created["resolved_at"] is None
    assert created["camera_position"] == {"x": 100, "y": 100, "z": 100}
    other = ok(
        await walk.by(p["r2"]).post("/api/markups/", {**body, "severity": "MINOR", "annotation_text": "Fillet"}), 201
    )
    for item in pages(ok(await r1.get("/api/markups/")), "markups"):
        conforms(item, MARKUP, "listed markup")
    for query, expected in (
        (f"design_asset={design['_id']}", {created["id"], other["id"]}),
        (f"review_session={review['id']}", {created["id"], other["id"]}),
        (f"author={p['r1'].id}", {created["id"]}),
        ("severity=MAJOR", {created["id"]}),
        ("status=OPEN", {created["id"], other["id"]}),
    ):
        found = pages(ok(await r1.get(f"/api/markups/?{query}")), query)
        assert {m["id"] for m in found} == expected, query
    conforms(ok(await r1.get(f"/api/markups/{created['id']}/")), MARKUP, "get markup")
    edited = ok(await r1.patch(f"/api/markups/{created['id']}/", {"annotation_text": "Check tolerance here"}))
    assert edited["annotation_text"] == "Check tolerance here"
    resolved = ok(
        await r1.post(f"/api/markups/{created['id']}/resolve/", {"resolution_notes": "Increased wall thickness to 3mm"})
    )
    assert resolved["status"] == "RESOLVED" and timestamp(resolved["resolved_at"])
    dismissed = ok(
        await walk.by(p["r2"]).post(
            f"/api/markups/{other['id']}/dismiss/", {"reason": "Not applicable for this revision"}
        )
    )
    assert dismissed["status"] == "DISMISSED"
    assert ok(await r1.get("/api/markups/?status=RESOLVED"))["count"] == 1
    assert (await walk.by(p["r2"]).delete(f"/api/markups/{other['id']}/")).status == 204
    assert_envelope(await r1.get(f"/api/markups/{other['id']}/"), 404, "RESOURCE_NOT_FOUND")
    walk.covered(SECTIONS["Markups"])


# ---------------------------------------------------------------- Audit Logs, Authentication endpoints, Health


@pytest.mark.gen_test(timeout=120)
async def test_audit_logs(world: World, db: Any) -> None:
    _, p, series_id = await review_team(world)
    design = await upload(p["author"], series_id, "turbine_blade_v3.step", cad("box.step"))
    await db.designs.update_one({"_id": design["id"]}, {"$set": {"status": "READY"}})
    review = await open_review(p["author"], design["id"], [p["r1"]])
    assert (await p["r1"].api.post(f"/api/reviews/{review['id']}/approve/", {})).status == 200
    walk = Walk()
    owner = walk.by(p["owner"])
    entries = pages(ok(await owner.get("/api/audit-logs/?page_size=100")), "audit")
    for entry in entries:
        conforms(entry, AUDIT_ENTRY, "entry")
    # The reference's example filter, and each documented action.
    created = pages(ok(await owner.get("/api/audit-logs/?action=CREATE&resource_type=DesignAsset")), "create")
    assert [(e["resource_id"], e["action_display"]) for e in created] == [(design["id"], "Create")]
    assert created[0]["changes"]["filename"] == "turbine_blade_v3.step"
    assert created[0]["changes"]["classification"] == "UNCLASSIFIED"
    for action in AUDIT_ACTIONS:
        assert ok(await owner.get(f"/api/audit-logs/?action={action}")) is not None
    approval = pages(ok(await owner.get(f"/api/audit-logs/?action=APPROVE&resource_id={review['id']}")), "approve")
    assert [e["actor_id"] for e in approval] == [p["r1"].id]
    departure("More audit actions")
    assert {e["action"] for e in entries} - set(AUDIT_ACTIONS) >= {"FINALIZE", "COMPLETE", "STATUS_CHANGE"}
    assert_envelope(await owner.get("/api/audit-logs/?action=VOTED"), 400, "VALIDATION_ERROR")
    for query, check in (
        (f"actor_id={p['r1'].id}", lambda e: e["actor_id"] == p["r1"].id),
        (f"resource_id={design['id']}", lambda e: e["resource_id"] == design["id"]),
        ("timestamp__gte=2020-01-01T00:00:00Z&timestamp__lte=2999-01-01T00:00:00Z", lambda e: True),
    ):
        found = pages(ok(await owner.get(f"/api/audit-logs/?{query}")), query)
        assert found and all(check(e) for e in found), query
    one = conforms(ok(await owner.get(f"/api/audit-logs/{created[0]['id']}/")), AUDIT_ENTRY, "get entry")
    assert one["id"] == created[0]["id"]
    # Search Audit Logs: the reference's example finds the CREATE by the filename it recorded.
    found = pages(ok(await owner.get("/api/audit-logs/search/?q=turbine&resource_type=DesignAsset")), "search")
    assert [e["id"] for e in found] == [created[0]["id"]]
    exported = await owner.get("/api/audit-logs/export/?format=csv&start_date=2025-12-01")
    assert exported.status == 200 and exported.headers["Content-Type"].startswith("text/csv")
    assert b"turbine_blade_v3.step" in exported.body
    as_json = await owner.get("/api/audit-logs/export/?format=json&start_date=2025-12-01")
    assert {e["id"] for e in ok(as_json)} >= {created[0]["id"]}
    departure("Audit export in csv and json")
    assert_envelope(
        await owner.get("/api/audit-logs/export/?format=pdf&start_date=2025-12-01"), 400, "VALIDATION_ERROR"
    )
    walk.covered(SECTIONS["Audit Logs"])


@pytest.mark.gen_test(timeout=120)
async def test_authentication_endpoints(world: World, api: Api) -> None:
    await world.user("user", email="user@example.com")
    walk = Walk()
    anonymous = walk.by(api)
    tokens = conforms(
        ok(await anonymous.post("/api/auth/login/", {"username": "user@example.com", "password": PASSWORD})),
        TOKENS,
        "login",
    )
    user = walk.by(api.as_token(tokens["access_token"]))
    verified = ok(await user.get("/api/auth/verify/"))
    assert verified["valid"] is True and verified["user"]["username"] == "user"
    sessions = ok(await user.get("/api/auth/sessions/"))
    assert [s["id"] for s in sessions["results"] if s["current"]] == [tokens["session_id"]]
    refreshed = conforms(
        ok(await anonymous.post("/api/auth/refresh/", {"refresh_token": tokens["refresh_token"]})), TOKENS, "refresh"
    )
    assert refreshed["access_token"] != tokens["access_token"]
    assert_envelope(await user.get("/api/auth/verify/"), 401, "AUTHENTICATION_FAILED")  # replaced by the refresh
    fresh = walk.by(api.as_token(refreshed["access_token"]))
    key = ok(await fresh.post("/api/auth/api-keys/", {"name": "ci", "scopes": ["read"]}), 201)
    assert key["key"].startswith("ek_")
    keys = ok(await fresh.get("/api/auth/api-keys/"))
    assert [k["id"] for k in keys["results"]] == [key["id"]] and "key" not in keys["results"][0]
    assert (await fresh.delete(f"/api/auth/api-keys/{key['id']}/")).status == 204
    assert_envelope(
        await api.get("/api/auth/verify/", headers={"Authorization": f"ApiKey {key['key']}"}),
        401,
        "AUTHENTICATION_FAILED",
    )
    assert (await fresh.post("/api/auth/logout/")).status == 204
    assert_envelope(await fresh.get("/api/auth/verify/"), 401, "AUTHENTICATION_FAILED")
    bad = await anonymous.post("/api/auth/login/", {"username": "user", "password": "wrong"})
    assert_envelope(bad, 401, "AUTHENTICATION_FAILED")
    walk.covered(SECTIONS["Authentication"])


@pytest.mark.gen_test(timeout=60)
async def test_health_and_monitoring(world: World, api: Api) -> None:
    walk = Walk()
    anonymous = walk.by(api)
    assert ok(await anonymous.get("/api/health/")) == {"status": "ok", "service": "enginel"}
    detailed = ok(await anonymous.get("/api/health/detailed/"))
    assert detailed["status"] == "healthy" and timestamp(detailed["timestamp"])
    departure("Detailed health keys")
    assert set(detailed["checks"]) == {"database", "workers"}  # redis too when configured; no celery
    assert detailed["checks"]["database"] == "ok" and timestamp(detailed["checked_at"]) and "cluster" in detailed
    staff = await staff_token(world)
    departure("Monitoring endpoints not yet")
    for path in sorted(NOT_YET):
        assert_envelope(await staff.get(path.split(" ", 1)[1]), 404, "RESOURCE_NOT_FOUND")
    walk.covered(SECTIONS["Health & Monitoring"])


# ---------------------------------------------------------------- Error Responses


@pytest.mark.gen_test(timeout=120)
async def test_error_responses(world: World, db: Any, api: Api) -> None:
    """The envelope and the documented status codes and error codes, from requests that earn them."""
    org, p, series_id = await review_team(world)
    itar = await ready_design(db, p["author"], series_id, classification="ITAR")
    author = p["author"].api
    missing = assert_envelope(
        await author.post("/api/series/", {"organization": org["_id"], "name": "x"}), 400, "VALIDATION_ERROR"
    )
    assert missing["error"] == "Validation error" and missing["field_errors"] == {
        "part_number": ["This field is required."]
    }
    choice = await author.patch(f"/api/designs/{itar['_id']}/", {"classification": "PUBLIC"})
    assert "classification" in assert_envelope(choice, 400, "VALIDATION_ERROR")["field_errors"]
    conforms(assert_envelope(await api.get("/api/designs/"), 401, "AUTHENTICATION_FAILED"), ENVELOPE, "401")
    assert_envelope(await p["foreign"].api.get(f"/api/designs/{itar['_id']}/"), 403, "ITAR_VIOLATION")
    low = await ready_design(db, p["author"], series_id, classification="SECRET")
    assert_envelope(await p["low"].api.get(f"/api/designs/{low['_id']}/"), 403, "PERMISSION_DENIED")
    assert_envelope(await p["outsider"].api.get(f"/api/designs/{itar['_id']}/"), 404, "RESOURCE_NOT_FOUND")
    duplicate = await author.post("/api/series/", {"organization": org["_id"], "part_number": "tb-001", "name": "x"})
    assert_envelope(duplicate, 409, "CONFLICT")
    big = await author.post("/api/designs/upload-url/", {"filename": "x.step", "file_size": 1 << 40})
    assert_envelope(big, 413, "FILE_TOO_LARGE")
    wrong = await author.post("/api/designs/upload-url/", {"filename": "x.docx", "file_size": 10})
    assert_envelope(wrong, 400, "INVALID_FILE_FORMAT")
    staff = await staff_token(world)
    await staff.patch(f"/api/organizations/{org['_id']}/", {"max_users": 10})
    newcomer = await world.user("one-too-many")
    over = await p["owner"].api.post(f"/api/organizations/{org['_id']}/add_member/", {"user_id": newcomer.id})
    assert_envelope(over, 403, "ORGANIZATION_LIMIT_EXCEEDED")


# ---------------------------------------------------------------- Timestamps: one precision, create and read alike

LOOKS_LIKE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T")


def times(value: dict[str, Any]) -> dict[str, str]:
    return {k: v for k, v in value.items() if isinstance(v, str) and LOOKS_LIKE_TIME.match(v)}


def same_times(created: dict[str, Any], read: dict[str, Any], kind: str) -> None:
    """Every timestamp of a create (or edit) answer is in the one format and reads back as the same string."""
    shown = times(created)
    assert shown, f"{kind}: no timestamps"
    assert all(timestamp(v) for v in shown.values()), (kind, shown)
    assert {k: read.get(k) for k in shown} == shown, (kind, shown, times(read))


@pytest.mark.gen_test(timeout=120)
async def test_a_create_answer_and_a_later_read_show_the_same_timestamps(world: World, db: Any) -> None:
    """Issue 20: a create answered `...13.861215Z` and a later read `...13.861000Z`. Each kind of resource the API
    creates, as created and as read back, including a due date and an expiry sent with microseconds."""
    org, p, series_id = await review_team(world)
    staff = await staff_token(world)
    author = p["author"].api
    made = ok(await staff.post("/api/organizations/", {"name": "Timing", "slug": "timing"}), 201)
    same_times(made, ok(await staff.get(f"/api/organizations/{made['id']}/")), "organization")
    edited = ok(await staff.patch(f"/api/organizations/{made['id']}/", {"description": "later"}))
    same_times(edited, ok(await staff.get(f"/api/organizations/{made['id']}/")), "organization edit")
    user = ok(await staff.post("/api/users/", {"username": "timely", "password": "a-long-pass-phrase"}), 201)
    same_times(user, ok(await staff.get(f"/api/users/{user['id']}/")), "user")
    member = ok(await staff.post(f"/api/organizations/{made['id']}/add_member/", {"user_id": user["id"]}), 201)
    (listed,) = [m for m in ok(await staff.get(f"/api/organizations/{made['id']}/members/")) if m["user"] == user["id"]]
    same_times(member, listed, "membership")
    invited = ok(
        await p["owner"].api.post(f"/api/organizations/{org['_id']}/add_member/", {"user_id": user["id"]}), 202
    )
    (pending,) = ok(await p["owner"].api.get(f"/api/organizations/{org['_id']}/invitations/"))["results"]
    same_times(invited["invitation"], pending, "invitation")
    series = ok(await author.post("/api/series/", {"organization": org["_id"], "part_number": "T-1", "name": "t"}), 201)
    same_times(series, ok(await author.get(f"/api/series/{series['id']}/")), "series")
    data = cad("box.step")
    url = ok(await author.post("/api/designs/upload-url/", {"filename": "t.step", "file_size": len(data)}), 201)
    assert timestamp(url["expires_at"])
    assert ok(await put_bytes(author, url["upload_url"], data))
    body = {"series": series_id, "filename": "t.step", "upload_id": url["upload_id"]}
    design = ok(await author.post("/api/designs/", body), 201)
    same_times(design, ok(await author.get(f"/api/designs/{design['id']}/")), "design")
    digest = hashlib.sha256(data).hexdigest()
    final = ok(await author.post(f"/api/designs/{design['id']}/finalize_upload/", {"file_hash": f"sha256:{digest}"}))
    job = ok(await author.get(f"/api/analysis-jobs/{final['analysis_job_id']}/"))
    assert timestamp(job["created_at"])
    node = ok(await author.post("/api/bom-nodes/", {"design_asset": design["id"], "part_name": "t"}), 201)
    same_times(node, ok(await author.get(f"/api/bom-nodes/{node['id']}/")), "BOM node")
    await db.designs.update_one({"_id": design["id"]}, {"$set": {"status": "READY"}})
    due_date = (utcnow() + timedelta(days=3)).replace(microsecond=123456).isoformat().replace("+00:00", "Z")
    review = ok(
        await author.post(
            "/api/reviews/", {"design_asset": design["id"], "reviewers": [p["r1"].id], "due_date": due_date}
        ),
        201,
    )
    assert review["due_date"].endswith(".123Z")
    same_times(review, ok(await author.get(f"/api/reviews/{review['id']}/")), "review")
    markup = ok(
        await p["r1"].api.post(
            "/api/markups/",
            {"review_session": review["id"], "position": {"x": 1, "y": 2, "z": 3}, "annotation_text": "t"},
        ),
        201,
    )
    same_times(markup, ok(await author.get(f"/api/markups/{markup['id']}/")), "markup")
    reply = ok(await p["r1"].api.post(f"/api/markups/{markup['id']}/replies/", {"text": "t"}), 201)
    same_times(reply, ok(await author.get(f"/api/markups/{markup['id']}/replies/"))["results"][0], "reply")
    resolved = ok(await p["r1"].api.post(f"/api/markups/{markup['id']}/resolve/", {}))
    same_times(resolved, ok(await author.get(f"/api/markups/{markup['id']}/")), "resolved markup")
    voted = ok(await p["r1"].api.post(f"/api/reviews/{review['id']}/approve/", {}))
    same_times(voted, ok(await author.get(f"/api/reviews/{review['id']}/")), "completed review")
    expires = (utcnow() + timedelta(days=30)).replace(microsecond=654321).isoformat()
    key = ok(await author.post("/api/auth/api-keys/", {"name": "t", "expires_at": expires}), 201)
    (stored_key,) = ok(await author.get("/api/auth/api-keys/"))["results"]
    same_times({k: v for k, v in key.items() if k != "key"}, stored_key, "API key")
    material = ok(
        await p["owner"].api.post("/api/materials/", {"organization": org["_id"], "name": "Tm", "density_kg_m3": 9.0}),
        201,
    )
    if times(material):
        (listed_material,) = [m for m in ok(await author.get("/api/materials/"))["results"] if m["name"] == "Tm"]
        same_times(material, listed_material, "material")
    entry = pages(ok(await p["owner"].api.get("/api/audit-logs/?page_size=1")), "audit")[0]
    same_times(entry, ok(await p["owner"].api.get(f"/api/audit-logs/{entry['id']}/")), "audit entry")
    stored = await db.reviews.find_one({"_id": review["id"]})
    assert stored["due_date"].microsecond == 123000 and stored["created_at"].microsecond % 1000 == 0


# ---------------------------------------------------------------- the walk against the reference, the README


def reference_text() -> str:
    if not REFERENCE.is_file():
        pytest.skip(f"the API reference is not at {REFERENCE} (set ENGINEL_API_REFERENCE to its path)")
    return REFERENCE.read_text()


def test_the_walk_covers_the_reference() -> None:
    """Every endpoint the reference lists is walked above (or listed as not built yet), and the transcription holds
    every field, enum value, error code and export format the reference names: a reference that grows fails here."""
    text = reference_text()
    listed = {endpoint(m, path) for m, path in re.findall(r"^(GET|POST|PUT|PATCH|DELETE) (/api/\S*)", text, re.M)}
    walked = set().union(*SECTIONS.values())
    assert listed - walked - NOT_YET == set(), "endpoints the walk misses"
    assert walked | NOT_YET == listed, "endpoints the walk names that the reference does not"
    assert {s for s in SECTIONS} <= set(re.findall(r"^## (.+)$", text, re.M)) | {"Authentication"}

    models = (
        ORGANIZATION,
        MEMBER,
        MEMBERSHIP,
        USER,
        SERIES,
        SERIES_VERSION,
        DESIGN,
        UPLOAD_URL,
        FINALIZED,
        METADATA,
        METADATA_GEOMETRY,
        METADATA_MATERIAL,
        METADATA_VALIDATION,
        CONVERSION,
        BOM_NODE,
        JOB,
        JOB_STATUS,
        CELERY_INFO,
        PROGRESS,
        ACTIVE_TASK,
        METRICS,
        FAILURES,
        REVIEW,
        MARKUP,
        AUDIT_ENTRY,
        TOKENS,
        ENVELOPE,
    )
    known = set().union(*(set(m) for m in models)) | OTHER_KEYS
    keys = {k for block in re.findall(r"```json\n(.*?)```", text, re.S) for k in re.findall(r'"(\w+)"\s*:', block)}
    for block in re.findall(r"```typescript\n(.*?)```", text, re.S):
        keys |= set(re.findall(r"^\s*(\w+)\??:", block, re.M))
    assert keys - known == set(), "fields of the reference the walk does not know"

    enums = set(
        TIERS
        + CLEARANCES
        + CLASSIFICATIONS
        + ROLES
        + DESIGN_STATUSES
        + JOB_TYPES
        + JOB_STATUSES
        + REVIEW_STATUSES
        + SEVERITIES
        + MARKUP_STATUSES
        + AUDIT_ACTIONS
    )
    named = set()
    for line in re.findall(r"^- `\w+` - ([A-Z][A-Z_]+(?:, [A-Z][A-Z_]+)+)$", text, re.M):
        named |= set(line.split(", "))
    named |= set(re.findall(r"^- `([A-Z_]+)` - ", text, re.M)) - set(ERROR_CODES)  # the roles
    assert named - enums == set(), "enum values of the reference the walk does not know"
    codes = set(re.findall(r"^- `([A-Z_]+)` - ", text, re.M)) - set(ROLES)
    assert codes == set(ERROR_CODES)
    assert re.search(r"\*\*Formats:\*\* csv, json, pdf", text)  # pdf is a departure, tested above


def test_readme_lists_exactly_these_departures() -> None:
    """The README's "Departures from the API reference" and DEPARTURES name the same differences, one to one, and
    each is exercised by a departure(...) mark in this module."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("### Departures from the API reference", 1)[1].split("\n#", 1)[0]
    titles = re.findall(r"^- \*\*(.+?)\*\*", section, re.M)
    assert len(titles) == len(set(titles))
    assert set(titles) == set(DEPARTURES)
    source = inspect.getsource(inspect.getmodule(test_readme_lists_exactly_these_departures))
    for title in DEPARTURES:
        assert f'departure("{title}")' in source, f"no exception marks {title!r}"
