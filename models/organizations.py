"""Organizations and memberships: tenancy, roles, limits, and the last-owner rule."""

from __future__ import annotations

import uuid
from enum import Enum
from typing import Any

from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError
from pymongo import IndexModel
from pymongo.errors import DuplicateKeyError

from models import audit
from models.collections import DESIGNS, INVITATIONS, MEMBERSHIPS, ORGANIZATIONS, SERIES, USERS
from models.database import Db, next_id, register_indexes, utcnow
from models.errors import Conflict, LimitExceeded, NotFound, PermissionDenied, ValidationFailed
from models.events import NullPublisher, Publisher, access_changed
from models.listing import Filter, Kind, ListSpec, QueryArgs, parse_list_query, run_list
from models.policy import Principal, Role, require
from models.schema import EMAIL_PATTERN, Input

register_indexes(ORGANIZATIONS, [IndexModel("slug", unique=True), IndexModel("name")])

SLUG_PATTERN = r"^[a-z0-9-]{2,64}$"


class Tier(str, Enum):
    STARTER = "STARTER"
    PROFESSIONAL = "PROFESSIONAL"
    ENTERPRISE = "ENTERPRISE"


class OrganizationIn(Input):
    name: str = Field(min_length=1, max_length=200)
    slug: str = Field(pattern=SLUG_PATTERN)
    description: str = Field("", max_length=5000)
    is_active: bool = True
    is_us_organization: bool = False
    subscription_tier: Tier = Tier.STARTER
    max_users: int = Field(25, ge=1, le=100_000)
    max_storage_gb: int = Field(100, ge=1, le=1_000_000)
    contact_email: str | None = Field(None, pattern=EMAIL_PATTERN, max_length=254)
    contact_phone: str = Field("", max_length=50)
    require_password_to_sign: bool = False
    allow_self_approval: bool = False


class OrganizationPatch(Input):
    name: str | None = Field(None, min_length=1, max_length=200)
    slug: str | None = Field(None, pattern=SLUG_PATTERN)
    description: str | None = Field(None, max_length=5000)
    is_active: bool | None = None
    is_us_organization: bool | None = None
    subscription_tier: Tier | None = None
    max_users: int | None = Field(None, ge=1, le=100_000)
    max_storage_gb: int | None = Field(None, ge=1, le=1_000_000)
    contact_email: str | None = Field(None, pattern=EMAIL_PATTERN, max_length=254)
    contact_phone: str | None = Field(None, max_length=50)
    require_password_to_sign: bool | None = None
    allow_self_approval: bool | None = None


# What only platform staff may set: the export-control attestation and the commercial limits.
STAFF_ONLY_FIELDS = frozenset({"is_us_organization", "subscription_tier", "max_users", "max_storage_gb", "is_active"})


class MemberIn(Input):
    """Whom to add: an existing user's id, or an e-mail address to invite; exactly one of them."""

    user_id: int | None = Field(None, ge=1, le=2**53)
    email: str | None = Field(None, pattern=EMAIL_PATTERN, max_length=254)
    role: Role = Role.MEMBER

    @model_validator(mode="after")
    def _one_invitee(self) -> MemberIn:
        if (self.user_id is None) == (self.email is None):
            raise PydanticCustomError("one_invitee", "Give either user_id or email.")
        return self


class MemberPatch(Input):
    role: Role


ORG_LIST = ListSpec(
    filters={
        "is_active": Filter(Kind.BOOL, "is_active"),
        "is_us_organization": Filter(Kind.BOOL, "is_us_organization"),
        "subscription_tier": Filter(Kind.ENUM, "subscription_tier", choices=frozenset(t.value for t in Tier)),
    },
    search=("name", "slug", "description"),
    ordering={"name": "name", "slug": "slug", "created_at": "created_at", "updated_at": "updated_at"},
    default_ordering="name",
    fields=frozenset(
        {
            "id",
            "name",
            "slug",
            "description",
            "is_active",
            "is_us_organization",
            "subscription_tier",
            "max_users",
            "max_storage_gb",
            "member_count",
            "storage_used_gb",
            "contact_email",
            "contact_phone",
            "require_password_to_sign",
            "allow_self_approval",
            "created_at",
            "updated_at",
        }
    ),
)


def list_filter(principal: Principal) -> dict[str, Any]:
    return {} if principal.is_staff else {"_id": {"$in": sorted(principal.memberships)}}


class Organizations:
    """Repository and rules for organizations and their members."""

    def __init__(self, db: Db, self_service: bool = False, publisher: Publisher | None = None) -> None:
        self.db = db
        self.self_service = self_service
        self.publisher: Publisher = publisher or NullPublisher()

    async def list_visible(self, principal: Principal, args: QueryArgs, base_url: str) -> dict[str, Any]:
        """The organizations the caller belongs to (every one, for platform staff)."""
        query = parse_list_query(ORG_LIST, args)
        return await run_list(
            self.db[ORGANIZATIONS], list_filter(principal), query, render=self.render_many, base_url=base_url, args=args
        )

    async def get_visible(self, principal: Principal, org_id: str) -> dict[str, Any]:
        doc = await self.db[ORGANIZATIONS].find_one({"_id": org_id})
        if doc is None or (not principal.is_staff and org_id not in principal.memberships):
            raise NotFound("Organization not found.")
        return doc

    async def create(self, principal: Principal, data: OrganizationIn, actor: audit.Actor) -> dict[str, Any]:
        if not principal.is_platform_admin:
            if not self.self_service:
                raise PermissionDenied("Only platform administrators create organizations here.")
            if "admin" not in principal.scopes:
                raise PermissionDenied("This API key lacks the 'admin' scope.")
            defaults = OrganizationIn.model_fields
            staff_set = [f for f in STAFF_ONLY_FIELDS if getattr(data, f) != defaults[f].default]
            if staff_set:
                raise PermissionDenied("Only platform administrators set " + ", ".join(sorted(staff_set)) + ".")
        now = utcnow()
        doc = {
            "_id": str(uuid.uuid4()),
            **data.model_dump(mode="json"),
            "created_at": now,
            "updated_at": now,
            "version": 1,
            "created_by": principal.id,
        }
        try:
            await self.db[ORGANIZATIONS].insert_one(doc)
        except DuplicateKeyError:
            raise Conflict(
                "An organization with this slug already exists.",
                field_errors={"slug": ["Already taken."]},
            ) from None
        await self._insert_member(doc["_id"], principal.id, Role.OWNER)
        principal.memberships[doc["_id"]] = Role.OWNER
        await audit.record(
            self.db,
            actor,
            "CREATE",
            "Organization",
            doc["_id"],
            organization_id=doc["_id"],
            changes={"name": doc["name"], "slug": doc["slug"]},
        )
        return doc

    async def update(
        self, principal: Principal, org_id: str, patch: dict[str, Any], actor: audit.Actor
    ) -> dict[str, Any]:
        doc = await self.get_visible(principal, org_id)
        require(principal, "org.update", org_id)
        staff_set = sorted(f for f in patch if f in STAFF_ONLY_FIELDS and patch[f] != doc.get(f))
        if staff_set and not principal.is_platform_admin:
            raise PermissionDenied("Only platform administrators change " + ", ".join(staff_set) + ".")
        changes = {k: {"old": doc.get(k), "new": v} for k, v in patch.items() if doc.get(k) != v}
        if not changes:
            return doc
        try:
            updated = await self.db[ORGANIZATIONS].find_one_and_update(
                {"_id": org_id},
                {"$set": {**patch, "updated_at": utcnow()}, "$inc": {"version": 1}},
                return_document=True,
            )
        except DuplicateKeyError:
            raise Conflict(
                "An organization with this slug already exists.",
                field_errors={"slug": ["Already taken."]},
            ) from None
        if updated is None:
            raise NotFound("Organization not found.")  # deleted meanwhile
        await audit.record(self.db, actor, "UPDATE", "Organization", org_id, organization_id=org_id, changes=changes)
        if changes.keys() & {"is_us_organization", "is_active"}:
            # Every member's ITAR access (and, inactive, all access) follows: live connections are checked again.
            await access_changed(self.publisher, None, "organization_changed")
        return updated

    async def delete(self, principal: Principal, org_id: str, actor: audit.Actor) -> None:
        doc = await self.get_visible(principal, org_id)
        require(principal, "org.delete", org_id)
        if await self.db[SERIES].count_documents({"organization_id": org_id}, limit=1):
            raise Conflict("The organization still holds design series; delete or move them first.")
        await self.db[MEMBERSHIPS].delete_many({"organization_id": org_id})
        await self.db[INVITATIONS].delete_many({"organization_id": org_id})
        await self.db[ORGANIZATIONS].delete_one({"_id": org_id})
        await audit.record(
            self.db,
            actor,
            "DELETE",
            "Organization",
            org_id,
            organization_id=org_id,
            changes={"name": doc["name"], "slug": doc["slug"]},
        )
        await access_changed(self.publisher, None, "organization_deleted")

    # ------------------------------------------------------------------ members

    async def _insert_member(self, org_id: str, user_id: int, role: Role) -> dict[str, Any]:
        member = {
            "_id": await next_id(self.db, MEMBERSHIPS),
            "organization_id": org_id,
            "user_id": user_id,
            "role": role.value,
            "joined_at": utcnow(),
        }
        try:
            await self.db[MEMBERSHIPS].insert_one(member)
        except DuplicateKeyError:
            raise Conflict("The user is already a member.", field_errors={"user_id": ["Already a member."]}) from None
        return member

    async def members(self, principal: Principal, org_id: str) -> list[dict[str, Any]]:
        await self.get_visible(principal, org_id)
        require(principal, "member.read", org_id)
        members = [m async for m in self.db[MEMBERSHIPS].find({"organization_id": org_id}, sort=[("_id", 1)])]
        users = {
            u["_id"]: u
            async for u in self.db[USERS].find(
                {"_id": {"$in": [m["user_id"] for m in members]}}, projection={"username": 1, "email": 1}
            )
        }
        return [render_member(m, users.get(m["user_id"], {})) for m in members]

    async def add_member(self, principal: Principal, org_id: str, data: MemberIn, actor: audit.Actor) -> dict[str, Any]:
        """Provisioning: platform staff add an existing user directly. Everyone else invites (models/invitations.py),
        so no organization can pull in a user without their consent."""
        org = await self.get_visible(principal, org_id)
        if not principal.is_platform_admin or data.user_id is None:
            raise PermissionDenied("Only platform administrators add a user directly; invite them instead.")
        user = await self.db[USERS].find_one({"_id": data.user_id}, projection={"username": 1, "email": 1})
        if user is None:
            raise ValidationFailed("No such user.", field_errors={"user_id": ["No such user."]})
        member = await self.enroll(org, data.user_id, data.role, actor, "ADD_MEMBER")
        return render_member(member, user)

    async def enroll(
        self, org: dict[str, Any], user_id: int, role: Role, actor: audit.Actor, action: str
    ) -> dict[str, Any]:
        """Make a user a member within the organization's user limit, audited; the caller has already checked that
        this may happen (staff provisioning, a user created into the organization, an accepted invitation)."""
        org_id = org["_id"]
        if await self.db[MEMBERSHIPS].count_documents({"organization_id": org_id, "user_id": user_id}):
            raise Conflict("The user is already a member.", field_errors={"user_id": ["Already a member."]})
        if await self.db[MEMBERSHIPS].count_documents({"organization_id": org_id}) >= org["max_users"]:
            raise LimitExceeded(f"The organization has reached its limit of {org['max_users']} users.")
        member = await self._insert_member(org_id, user_id, role)
        await audit.record(
            self.db,
            actor,
            action,
            "Organization",
            org_id,
            organization_id=org_id,
            changes={"user_id": user_id, "role": role.value},
        )
        await access_changed(self.publisher, user_id, "joined_organization")
        return member

    async def _membership(self, org_id: str, user_id: int) -> dict[str, Any]:
        member = await self.db[MEMBERSHIPS].find_one({"organization_id": org_id, "user_id": user_id})
        if member is None:
            raise NotFound("Membership not found.")
        return member

    async def _check_member_change(
        self, principal: Principal, org_id: str, member: dict[str, Any], new_role: Role | None
    ) -> None:
        require(principal, "member.manage", org_id)
        touches_owner = member["role"] == Role.OWNER.value or new_role is Role.OWNER
        if touches_owner:
            require(principal, "member.manage_owner", org_id)
        if member["role"] == Role.OWNER.value and new_role is not Role.OWNER:
            owners = await self.db[MEMBERSHIPS].count_documents({"organization_id": org_id, "role": Role.OWNER.value})
            if owners <= 1:
                raise Conflict("An organization must keep at least one OWNER.")

    async def change_role(
        self, principal: Principal, org_id: str, user_id: int, data: MemberPatch, actor: audit.Actor
    ) -> dict[str, Any]:
        await self.get_visible(principal, org_id)
        member = await self._membership(org_id, user_id)
        await self._check_member_change(principal, org_id, member, data.role)
        # The guard on the old role makes a concurrent demotion of the other last owner lose, not both win.
        result = await self.db[MEMBERSHIPS].find_one_and_update(
            {"_id": member["_id"], "role": member["role"]}, {"$set": {"role": data.role.value}}, return_document=True
        )
        if result is None:
            raise Conflict("The membership changed meanwhile; try again.")
        await self._recheck_owner(org_id, member)
        await audit.record(
            self.db,
            actor,
            "CHANGE_ROLE",
            "Organization",
            org_id,
            organization_id=org_id,
            changes={"user_id": user_id, "role": {"old": member["role"], "new": data.role.value}},
        )
        await access_changed(self.publisher, user_id, "role_changed")
        user = await self.db[USERS].find_one({"_id": user_id}, projection={"username": 1, "email": 1}) or {}
        return render_member(result, user)

    async def remove_member(self, principal: Principal, org_id: str, user_id: int, actor: audit.Actor) -> None:
        await self.get_visible(principal, org_id)
        member = await self._membership(org_id, user_id)
        await self._check_member_change(principal, org_id, member, None)
        await self.db[MEMBERSHIPS].delete_one({"_id": member["_id"]})
        await self._recheck_owner(org_id, member)
        await audit.record(
            self.db,
            actor,
            "REMOVE_MEMBER",
            "Organization",
            org_id,
            organization_id=org_id,
            changes={"user_id": user_id, "role": member["role"]},
        )
        await access_changed(self.publisher, user_id, "removed_from_organization")

    async def _recheck_owner(self, org_id: str, before: dict[str, Any]) -> None:
        # Two owners demoting each other at once could both pass the count check; undo ours if so.
        if before["role"] == Role.OWNER.value and not await self.db[MEMBERSHIPS].count_documents(
            {"organization_id": org_id, "role": Role.OWNER.value}
        ):
            await self.db[MEMBERSHIPS].replace_one({"_id": before["_id"]}, before, upsert=True)
            raise Conflict("An organization must keep at least one OWNER.")

    async def render_many(self, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Render a page of organizations with their computed counts in two queries, not two per item."""
        ids = [d["_id"] for d in docs]
        counts = {
            row["_id"]: row["n"]
            async for row in await self.db[MEMBERSHIPS].aggregate(
                [
                    {"$match": {"organization_id": {"$in": ids}}},
                    {"$group": {"_id": "$organization_id", "n": {"$sum": 1}}},
                ]
            )
        }
        sizes = {
            row["_id"]: row["bytes"]
            async for row in await self.db[DESIGNS].aggregate(
                [
                    {"$match": {"organization_id": {"$in": ids}}},
                    {"$group": {"_id": "$organization_id", "bytes": {"$sum": "$file_size_bytes"}}},
                ]
            )
        }
        return [render_org(d, counts.get(d["_id"], 0), sizes.get(d["_id"], 0)) for d in docs]


def render_org(doc: dict[str, Any], member_count: int, storage_bytes: int) -> dict[str, Any]:
    return {
        "id": doc["_id"],
        "name": doc["name"],
        "slug": doc["slug"],
        "description": doc.get("description", ""),
        "is_active": doc.get("is_active", True),
        "is_us_organization": doc.get("is_us_organization", False),
        "subscription_tier": doc.get("subscription_tier"),
        "max_users": doc.get("max_users"),
        "max_storage_gb": doc.get("max_storage_gb"),
        "member_count": member_count,
        "storage_used_gb": round(storage_bytes / 1024**3, 3),
        "contact_email": doc.get("contact_email"),
        "contact_phone": doc.get("contact_phone", ""),
        "require_password_to_sign": doc.get("require_password_to_sign", False),
        "allow_self_approval": doc.get("allow_self_approval", False),
        "created_at": doc["created_at"],
        "updated_at": doc["updated_at"],
    }


def render_member(member: dict[str, Any], user: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": member["_id"],
        "user": member["user_id"],
        "username": user.get("username"),
        "email": user.get("email"),
        "role": member["role"],
        "joined_at": member["joined_at"],
    }
