"""User directory and administration: who may see whom, and who may change clearance and US-person status."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from models import audit
from models.collections import MEMBERSHIPS, ORGANIZATIONS, USERS
from models.database import Db
from models.errors import LimitExceeded, NotFound, PermissionDenied, ValidationFailed
from models.events import NullPublisher, Publisher, access_changed, user_disabled
from models.identity import Identity
from models.listing import Filter, Kind, ListSpec, QueryArgs, parse_list_query, run_list
from models.organizations import Organizations
from models.policy import RANK, Clearance, Principal, Role, can
from models.schema import EMAIL_PATTERN, Input

USER_FIELDS = frozenset(
    {
        "id",
        "username",
        "email",
        "first_name",
        "last_name",
        "is_us_person",
        "security_clearance_level",
        "organization",
        "phone_number",
        "date_joined",
        "organizations",
        "is_active",
        "is_staff",
    }
)

USER_LIST = ListSpec(
    filters={
        "is_us_person": Filter(Kind.BOOL, "is_us_person"),
        "security_clearance_level": Filter(
            Kind.ENUM, "security_clearance_level", choices=frozenset(c.value for c in Clearance)
        ),
        "is_active": Filter(Kind.BOOL, "is_active"),
    },
    search=("username", "email", "first_name", "last_name"),
    ordering={"id": "_id", "username": "username_lower", "date_joined": "date_joined"},
    default_ordering="id",
    fields=USER_FIELDS,
)

# Attributes that grant access: never settable by the user they describe.
PRIVILEGED = ("is_us_person", "security_clearance_level", "is_active")


class ProfilePatch(Input):
    first_name: str | None = Field(None, max_length=150)
    last_name: str | None = Field(None, max_length=150)
    email: str | None = Field(None, pattern=EMAIL_PATTERN, max_length=254)
    phone_number: str | None = Field(None, max_length=50)
    current_password: str | None = Field(None, max_length=256)
    new_password: str | None = Field(None, max_length=256)


class UserAdminPatch(ProfilePatch):
    is_us_person: bool | None = None
    security_clearance_level: Clearance | None = None
    is_active: bool | None = None


class UserCreate(Input):
    username: str = Field(min_length=2, max_length=150)
    password: str = Field(min_length=1, max_length=256)
    email: str | None = Field(None, pattern=EMAIL_PATTERN, max_length=254)
    first_name: str = Field("", max_length=150)
    last_name: str = Field("", max_length=150)
    phone_number: str = Field("", max_length=50)
    is_us_person: bool = False
    security_clearance_level: Clearance = Clearance.UNCLASSIFIED
    is_staff: bool = False
    organization: str | None = None  # add the new user to this organization
    role: Role = Role.MEMBER


class Users:
    """The user directory and administration of users' access attributes."""

    def __init__(self, db: Db, identity: Identity, orgs: Organizations, publisher: Publisher | None = None) -> None:
        self.db = db
        self.identity = identity
        self.orgs = orgs
        self.publisher: Publisher = publisher or NullPublisher()

    async def list_visible(self, principal: Principal, args: QueryArgs, base_url: str) -> dict[str, Any]:
        query = parse_list_query(USER_LIST, args)
        return await run_list(
            self.db[USERS],
            await self.visible_filter(principal),
            query,
            render=lambda docs: self.render_many(principal, docs),
            base_url=base_url,
            args=args,
        )

    async def visible_filter(self, principal: Principal) -> dict[str, Any]:
        """Users who share an organization with the caller (the caller included); staff see everyone."""
        if principal.is_staff:
            return {}
        ids = {
            m["user_id"]
            async for m in self.db[MEMBERSHIPS].find(
                {"organization_id": {"$in": sorted(principal.memberships)}}, projection={"user_id": 1}
            )
        }
        ids.add(principal.id)
        return {"_id": {"$in": sorted(ids)}}

    async def get_visible(self, principal: Principal, user_id: int) -> dict[str, Any]:
        doc = await self.db[USERS].find_one({"$and": [{"_id": user_id}, await self.visible_filter(principal)]})
        if doc is None:
            raise NotFound("User not found.")
        return doc

    async def _organizations_of(self, user_id: int) -> dict[str, Role]:
        return {m["organization_id"]: Role(m["role"]) async for m in self.db[MEMBERSHIPS].find({"user_id": user_id})}

    @staticmethod
    def _refusal(principal: Principal, user: dict[str, Any], orgs: dict[str, Role]) -> str | None:
        """Why the caller may not administer this user, or None: platform staff may; otherwise only an OWNER/ADMIN
        of every organization the user belongs to, outranked by the user in none of them, and never for staff."""
        if principal.is_platform_admin:
            return None
        if user.get("is_staff"):
            return "Only platform administrators administer a platform administrator."
        administers_all = bool(orgs) and all(
            can(principal, "user.attributes", org_id) and RANK[role] <= RANK[principal.memberships[org_id]]
            for org_id, role in orgs.items()
        )
        if administers_all:
            return None
        return (
            "Only platform administrators, or an OWNER or ADMIN of every organization this user belongs to "
            "whom the user does not outrank, administer this user."
        )

    async def _audit_user(
        self, actor: audit.Actor, action: str, user_id: int, orgs: dict[str, Role], changes: dict[str, Any]
    ) -> None:
        """One entry per organization the user belongs to, so each organization's admins see what was done."""
        targets: list[str | None] = [*sorted(orgs)] or [None]
        for org_id in targets:
            await audit.record(self.db, actor, action, "User", user_id, organization_id=org_id, changes=changes)

    async def update(
        self, principal: Principal, user_id: int, patch: UserAdminPatch, actor: audit.Actor
    ) -> tuple[dict[str, Any], int | None]:
        """Edit a profile or administer access attributes; the user as stored after, and how many other sessions a
        password change ended (None when the password did not change)."""
        user = await self.get_visible(principal, user_id)
        values = patch.model_dump(exclude_unset=True, mode="json")
        privileged = {k: values[k] for k in PRIVILEGED if k in values}
        orgs = await self._organizations_of(user_id)
        if user_id == principal.id and not principal.is_platform_admin:
            refusal = "You cannot change your own US-person status, clearance or activation." if privileged else None
        else:
            refusal = self._refusal(principal, user, orgs)
        if refusal is not None:
            if privileged:
                attempted = {k: {"old": user.get(k), "new": v} for k, v in privileged.items()}
                await self._audit_user(actor, "ESCALATION_DENIED", user_id, orgs, attempted)
            raise PermissionDenied(refusal)
        return await self._apply(principal, user, orgs, values, actor)

    async def _apply(
        self,
        principal: Principal,
        user: dict[str, Any],
        orgs: dict[str, Role],
        values: dict[str, Any],
        actor: audit.Actor,
    ) -> tuple[dict[str, Any], int | None]:
        """Write an allowed edit: a password change ends the user's other sessions; access changes reach sockets."""
        current, new = values.pop("current_password", None), values.pop("new_password", None)
        sessions_ended = None
        if new is not None:
            if user["_id"] != principal.id:
                raise PermissionDenied("Users change their own passwords.")
            if current is None or not await self.identity.passwords.verify(
                (await self.db[USERS].find_one({"_id": user["_id"]}) or {}).get("password_hash"), current
            ):
                await audit.record(self.db, actor, "PASSWORD_CHANGE_DENIED", "User", user["_id"])
                raise PermissionDenied("The current password is wrong.")
            await self.identity.set_password(user["_id"], new)
            # Whoever knew the old password may hold a session made with it: only the caller's own survives.
            sessions_ended = await self.identity.end_other_sessions(
                user["_id"], principal.session_id, "password changed"
            )
            await audit.record(
                self.db, actor, "PASSWORD_CHANGE", "User", user["_id"], changes={"sessions_ended": sessions_ended}
            )
        elif current is not None:
            raise ValidationFailed(
                "Give new_password with current_password.", field_errors={"new_password": ["This field is required."]}
            )
        if "email" in values:
            values["email_lower"] = (values["email"] or "").lower()
        changes = {
            k: {"old": user.get(k), "new": v} for k, v in values.items() if k != "email_lower" and user.get(k) != v
        }
        if changes:
            await self.db[USERS].update_one({"_id": user["_id"]}, {"$set": values})
            action = "UPDATE_PRIVILEGES" if any(k in PRIVILEGED for k in changes) else "UPDATE"
            await self._audit_user(actor, action, user["_id"], orgs, changes)
            if changes.get("is_active", {}).get("new") is False:
                await user_disabled(self.publisher, user["_id"], "account disabled")
            elif action == "UPDATE_PRIVILEGES":
                await access_changed(self.publisher, user["_id"], "clearance_changed")
        return await self.db[USERS].find_one({"_id": user["_id"]}) or user, sessions_ended

    async def create(self, principal: Principal, data: UserCreate, actor: audit.Actor) -> dict[str, Any]:
        """A user created by staff, or by an OWNER/ADMIN into their organization within its user limit."""
        org: dict[str, Any] = {}
        if data.organization is None:
            if not can(principal, "user.create"):
                raise PermissionDenied("Only platform administrators create users outside an organization.")
        else:
            org = await self.orgs.get_visible(principal, data.organization)
            if not can(principal, "user.create", data.organization):
                raise PermissionDenied("Only an OWNER or ADMIN creates users in this organization.")
            if data.role is Role.OWNER and not can(principal, "member.manage_owner", data.organization):
                raise PermissionDenied("Only an OWNER makes another OWNER.")
            if await self.db[MEMBERSHIPS].count_documents({"organization_id": data.organization}) >= org["max_users"]:
                raise LimitExceeded(f"The organization has reached its limit of {org['max_users']} users.")
        if data.is_staff and not principal.is_platform_admin:
            raise PermissionDenied("Only platform administrators create platform administrators.")
        user = await self.identity.create_user(
            username=data.username,
            password=data.password,
            email=data.email,
            first_name=data.first_name,
            last_name=data.last_name,
            phone_number=data.phone_number,
            is_us_person=data.is_us_person,
            security_clearance_level=data.security_clearance_level.value,
            is_staff=data.is_staff,
        )
        await audit.record(
            self.db,
            actor,
            "CREATE",
            "User",
            user["_id"],
            organization_id=data.organization,
            changes={
                "username": user["username"],
                "is_us_person": user["is_us_person"],
                "security_clearance_level": user["security_clearance_level"],
                "is_staff": user["is_staff"],
            },
        )
        if data.organization is not None:
            # A user made here has no other organization yet: joining needs no consent from anyone else.
            await self.orgs.enroll(org, user["_id"], data.role, actor, "ADD_MEMBER")
        return user

    async def render_many(self, principal: Principal, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Users with the memberships the caller may see: those in the caller's own organizations (staff: all)."""
        ids = [d["_id"] for d in docs]
        query: dict[str, Any] = {"user_id": {"$in": ids}}
        if not principal.is_staff:
            query["organization_id"] = {"$in": sorted(principal.memberships)}
        members = [m async for m in self.db[MEMBERSHIPS].find(query, sort=[("_id", 1)])]
        org_names = {
            o["_id"]: o["name"]
            async for o in self.db[ORGANIZATIONS].find(
                {"_id": {"$in": list({m["organization_id"] for m in members})}}, projection={"name": 1}
            )
        }
        by_user: dict[int, list[dict[str, Any]]] = {}
        for m in members:
            by_user.setdefault(m["user_id"], []).append(
                {
                    "organization_id": m["organization_id"],
                    "organization_name": org_names.get(m["organization_id"]),
                    "role": m["role"],
                }
            )
        return [render_user(d, by_user.get(d["_id"], [])) for d in docs]


def render_user(doc: dict[str, Any], organizations: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": doc["_id"],
        "username": doc["username"],
        "email": doc.get("email", ""),
        "first_name": doc.get("first_name", ""),
        "last_name": doc.get("last_name", ""),
        "is_us_person": doc.get("is_us_person", False),
        "security_clearance_level": doc.get("security_clearance_level", "UNCLASSIFIED"),
        "organization": organizations[0]["organization_name"] if organizations else None,
        "phone_number": doc.get("phone_number", ""),
        "date_joined": doc["date_joined"],
        "organizations": organizations,
        "is_active": doc.get("is_active", True),
        "is_staff": doc.get("is_staff", False),
    }
