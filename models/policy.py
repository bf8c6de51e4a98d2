"""The access policy: roles as data, one permission function, and the classification/ITAR rule."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from models.errors import ITARViolation, NotFound, PermissionDenied


class Role(str, Enum):
    OWNER = "OWNER"
    ADMIN = "ADMIN"
    MEMBER = "MEMBER"
    VIEWER = "VIEWER"


class Clearance(str, Enum):
    UNCLASSIFIED = "UNCLASSIFIED"
    CONFIDENTIAL = "CONFIDENTIAL"
    SECRET = "SECRET"
    TOP_SECRET = "TOP_SECRET"


class Classification(str, Enum):
    UNCLASSIFIED = "UNCLASSIFIED"
    CONFIDENTIAL = "CONFIDENTIAL"
    SECRET = "SECRET"
    TOP_SECRET = "TOP_SECRET"
    ITAR = "ITAR"


LEVEL = {Clearance.UNCLASSIFIED: 0, Clearance.CONFIDENTIAL: 1, Clearance.SECRET: 2, Clearance.TOP_SECRET: 3}

_READ = {"org.read", "member.read", "design.read", "review.read", "markup.read", "job.read", "audit.read.own"}
_WRITE = {"design.create", "design.update", "review.create", "markup.create", "bom.edit", "job.create"}
_ADMIN = {
    "org.update",
    "member.manage",
    "user.attributes",
    "user.create",
    "webhook.manage",
    "audit.read",
    "design.archive",
    "design.lower_classification",
    "design.delete_any",
    "review.manage",
    "material.manage",
    "series.delete",
}

# Roles are data: what each role may do inside its organization. One function below reads it.
ROLE_ACTIONS: Mapping[Role, frozenset[str]] = {
    Role.VIEWER: frozenset(_READ),
    Role.MEMBER: frozenset(_READ | _WRITE),
    Role.ADMIN: frozenset(_READ | _WRITE | _ADMIN),
    Role.OWNER: frozenset(_READ | _WRITE | _ADMIN | {"org.delete", "member.manage_owner"}),
}
# Actions an API key may only perform with the `admin` scope (besides being allowed by the owner's role).
ADMIN_SCOPE_ACTIONS = frozenset(_ADMIN | {"org.delete", "member.manage_owner"})
# Who outranks whom inside one organization: nobody administers a user who outranks them there.
RANK: Mapping[Role, int] = {Role.VIEWER: 0, Role.MEMBER: 1, Role.ADMIN: 2, Role.OWNER: 3}


@dataclass
class Principal:
    """Who is asking: the user, how they authenticated, and their role in each organization."""

    user: dict[str, Any]
    memberships: dict[str, Role] = field(default_factory=dict)  # active organization id -> role
    us_orgs: frozenset[str] = frozenset()  # visible US organizations (where ITAR may be readable)
    via: str = "token"  # token | api_key | cookie
    scopes: frozenset[str] = frozenset({"read", "write", "admin"})
    session_id: str | None = None
    api_key_id: str | None = None
    xsrf: str | None = None  # the session's XSRF token, which a cookie-authenticated write must echo

    @property
    def id(self) -> int:
        return int(self.user["_id"])

    @property
    def username(self) -> str:
        return str(self.user["username"])

    @property
    def is_staff(self) -> bool:
        return bool(self.user.get("is_staff"))

    @property
    def is_platform_admin(self) -> bool:
        """Staff acting with the `admin` scope: a staff API key without it gets no administrative shortcut."""
        return self.is_staff and "admin" in self.scopes

    @property
    def is_us_person(self) -> bool:
        return bool(self.user.get("is_us_person"))

    @property
    def clearance(self) -> Clearance:
        return Clearance(self.user.get("security_clearance_level", "UNCLASSIFIED"))


def can(principal: Principal, action: str, org_id: str | None = None) -> bool:
    """The one answer to "may this caller do this here?" used by REST, WebSocket and jobs alike."""
    if action in ADMIN_SCOPE_ACTIONS and "admin" not in principal.scopes:
        return False
    if principal.is_staff:
        return True
    if org_id is None:
        return False
    role = principal.memberships.get(org_id)
    return role is not None and action in ROLE_ACTIONS[role]


def require(principal: Principal, action: str, org_id: str | None = None, *, hide: bool = True) -> None:
    """Raise unless `can`; a non-member gets 404 (the organization's data does not exist for them)."""
    if can(principal, action, org_id):
        return
    if hide and org_id is not None and not principal.is_staff and org_id not in principal.memberships:
        raise NotFound("Not found.")
    if action in ADMIN_SCOPE_ACTIONS and "admin" not in principal.scopes:
        raise PermissionDenied("This API key lacks the 'admin' scope.")
    raise PermissionDenied(f"Your role does not allow '{action}'.")


def require_write(principal: Principal) -> None:
    """A read-only API key may not change anything, whichever way the write arrives (REST, socket, job)."""
    if principal.via == "api_key" and "write" not in principal.scopes:
        raise PermissionDenied("This API key is read-only.")


def allowed_classifications(clearance: Clearance) -> list[str]:
    return [c.value for c in Clearance if LEVEL[c] <= LEVEL[clearance]]


def classification_allows(clearance: Clearance, is_us_person: bool, classification: str, org_is_us: bool) -> bool:
    """The classification rule for one document: clearance levels are ordered; ITAR needs a US person
    in a US organization (export control is about nationality, not clearance level)."""
    if classification == Classification.ITAR.value:
        return is_us_person and org_is_us
    try:
        needed = Clearance(classification)
    except ValueError:
        return False  # an unknown label is never readable
    return LEVEL[clearance] >= LEVEL[needed]


def check_classification(principal: Principal, classification: str, org_is_us: bool) -> None:
    """Raise the documented 403 for a visible organization's design the caller is not cleared for."""
    # Platform staff administer; they are not thereby cleared: their own clearance counts like anyone's.
    if classification_allows(principal.clearance, principal.is_us_person, classification, org_is_us):
        return
    if classification == Classification.ITAR.value:
        raise ITARViolation("Access denied: ITAR-controlled designs require US person status in a US organization.")
    raise PermissionDenied(
        f"Access denied: this design is {classification}; your clearance is {principal.clearance.value}."
    )


def classification_filter(
    principal: Principal, field_name: str = "classification", org_field: str = "organization_id"
) -> dict[str, Any]:
    """The same rule as a Mongo filter, so lists and counts never include what the caller may not see."""
    allowed: dict[str, Any] = {field_name: {"$in": allowed_classifications(principal.clearance)}}
    if principal.is_us_person and principal.us_orgs:
        itar = {field_name: Classification.ITAR.value, org_field: {"$in": sorted(principal.us_orgs)}}
        return {"$or": [allowed, itar]}
    return allowed


def documents_filter(principal: Principal) -> dict[str, Any]:
    """Tenancy and classification as one query filter, for every kind of document that carries its
    organization and classification (designs, jobs, BOM nodes, reviews, markups)."""
    return combine(visible_orgs_filter(principal), classification_filter(principal))


def check_document(principal: Principal, doc: dict[str, Any] | None, action: str, what: str) -> dict[str, Any]:
    """The same rule for one such document: missing or another organization's is 404; one's own
    organization's above one's clearance is 403 (ITAR_VIOLATION or PERMISSION_DENIED)."""
    if doc is None or not can(principal, action, doc["organization_id"]):
        raise NotFound(f"{what} not found.")
    check_classification(principal, doc["classification"], doc["organization_id"] in principal.us_orgs)
    return doc


def visible_orgs_filter(principal: Principal, org_field: str = "organization_id") -> dict[str, Any]:
    """Tenancy as a filter: members see their organizations' data; platform staff see all."""
    if principal.is_staff:
        return {}
    return {org_field: {"$in": sorted(principal.memberships)}}


def combine(*filters: dict[str, Any]) -> dict[str, Any]:
    parts = [f for f in filters if f]
    if not parts:
        return {}
    return parts[0] if len(parts) == 1 else {"$and": parts}
