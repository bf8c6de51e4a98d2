"""Invitations to join an organization: nobody becomes a member without consent, and the inviter learns nothing
about the invitee until they accept."""

from __future__ import annotations

import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pydantic import Field
from pymongo import IndexModel

from models import audit
from models.collections import INVITATIONS, MEMBERSHIPS, ORGANIZATIONS, USERS
from models.database import Db, register_indexes, utcnow
from models.errors import Conflict, LimitExceeded, NotFound
from models.identity import sha256
from models.organizations import MemberIn, Organizations, render_member
from models.policy import Principal, Role, require
from models.schema import Input

INVITATION_TOKEN_PREFIX = "eit_"
MAX_LISTED = 100  # an invitee's list and an organization's pending list are bounded by the caps, this is the wall

register_indexes(
    INVITATIONS,
    [
        IndexModel([("organization_id", 1), ("expires_at", 1)]),
        IndexModel([("user_id", 1), ("expires_at", 1)]),
        IndexModel("token_hash", sparse=True),
    ],
)


class TokenIn(Input):
    token: str = Field(min_length=1, max_length=200)


@dataclass
class InvitationConfig:
    """The invitation knobs, taken from Settings by server.py."""

    ttl_seconds: int = 7 * 86400
    max_pending_per_org: int = 100


@dataclass
class Added:
    """What add_member did: staff provisioning made a member; anyone else's request made an invitation (and, for
    an e-mail address, the one-time token to hand the invitee)."""

    member: dict[str, Any] | None = None
    invitation: dict[str, Any] | None = None
    token: str | None = None


class Invitations:
    """Pending invitations: created by an organization's OWNER/ADMIN, accepted or declined by the invitee, revoked
    by the organization, gone when they expire."""

    def __init__(self, db: Db, orgs: Organizations, config: InvitationConfig) -> None:
        self.db = db
        self.orgs = orgs
        self.config = config

    async def add_member(self, principal: Principal, org_id: str, data: MemberIn, actor: audit.Actor) -> Added:
        """POST add_member: platform staff provision an existing user directly; otherwise an invitation."""
        if principal.is_platform_admin and data.user_id is not None:
            return Added(member=await self.orgs.add_member(principal, org_id, data, actor))
        invitation, token = await self.invite(principal, org_id, data, actor)
        return Added(invitation=invitation, token=token)

    async def invite(
        self, principal: Principal, org_id: str, data: MemberIn, actor: audit.Actor
    ) -> tuple[dict[str, Any], str | None]:
        """A pending invitation of a user id or an e-mail address. The answer is the same whether or not that
        user exists: the stored flag that says so is never shown to the inviter."""
        org = await self.orgs.get_visible(principal, org_id)
        require(principal, "member.manage", org_id)
        if data.role is Role.OWNER:
            require(principal, "member.manage_owner", org_id)
        now = utcnow()
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)  # what MongoDB keeps, so answers read alike
        await self.db[INVITATIONS].delete_many({"organization_id": org_id, "expires_at": {"$lte": now}})
        if data.user_id is not None and await self.db[MEMBERSHIPS].count_documents(
            {"organization_id": org_id, "user_id": data.user_id}
        ):
            # Only an existing member answers differently, and the inviter already sees the member list.
            raise Conflict("The user is already a member.", field_errors={"user_id": ["Already a member."]})
        invitee: dict[str, Any] = (
            {"user_id": data.user_id} if data.user_id is not None else {"email_lower": (data.email or "").lower()}
        )
        if await self.db[INVITATIONS].count_documents({"organization_id": org_id, **invitee}, limit=1):
            field = "user_id" if data.user_id is not None else "email"
            raise Conflict("An invitation is already pending.", field_errors={field: ["Already invited."]})
        if await self.db[INVITATIONS].count_documents({"organization_id": org_id}) >= self.config.max_pending_per_org:
            raise LimitExceeded(
                f"The organization has {self.config.max_pending_per_org} pending invitations, the most it may "
                "have; revoke some or wait for answers."
            )
        if await self.db[MEMBERSHIPS].count_documents({"organization_id": org_id}) >= org["max_users"]:
            raise LimitExceeded(f"The organization has reached its limit of {org['max_users']} users.")
        token = None
        doc: dict[str, Any] = {
            "_id": str(uuid.uuid4()),
            "organization_id": org_id,
            "role": data.role.value,
            "invited_by": principal.id,
            "invited_by_username": principal.username,
            "created_at": now,
            "expires_at": now + timedelta(seconds=self.config.ttl_seconds),
            **invitee,
        }
        if data.user_id is not None:
            # Never shown: an invitation of an id nobody has (or has yet) is stored like any other and never offered.
            doc["target_exists"] = bool(await self.db[USERS].count_documents({"_id": data.user_id}, limit=1))
        else:
            # An address is not proof of identity (users edit their own): the invitee also needs this token.
            token = INVITATION_TOKEN_PREFIX + secrets.token_urlsafe(32)
            doc["email"] = data.email
            doc["token_hash"] = sha256(token)
        await self.db[INVITATIONS].insert_one(doc)
        await audit.record(
            self.db,
            actor,
            "INVITE_MEMBER",
            "Invitation",
            doc["_id"],
            organization_id=org_id,
            changes={**render_invitee(doc), "role": doc["role"], "expires_at": doc["expires_at"]},
        )
        return doc, token

    async def pending(self, principal: Principal, org_id: str) -> list[dict[str, Any]]:
        """An organization's pending invitations (OWNER/ADMIN)."""
        await self.orgs.get_visible(principal, org_id)
        require(principal, "member.manage", org_id)
        cursor = self.db[INVITATIONS].find(
            {"organization_id": org_id, "expires_at": {"$gt": utcnow()}}, sort=[("created_at", -1)], limit=MAX_LISTED
        )
        return [doc async for doc in cursor]

    async def revoke(self, principal: Principal, org_id: str, invitation_id: str, actor: audit.Actor) -> None:
        await self.orgs.get_visible(principal, org_id)
        require(principal, "member.manage", org_id)
        doc = await self.db[INVITATIONS].find_one_and_delete({"_id": invitation_id, "organization_id": org_id})
        if doc is None:
            raise NotFound("Invitation not found.")
        if doc["role"] == Role.OWNER.value:
            require(principal, "member.manage_owner", org_id)
        await audit.record(
            self.db,
            actor,
            "REVOKE_INVITATION",
            "Invitation",
            invitation_id,
            organization_id=org_id,
            changes={**render_invitee(doc), "role": doc["role"]},
        )

    # ------------------------------------------------------------------ the invitee's side

    async def mine(self, principal: Principal) -> list[dict[str, Any]]:
        """The caller's pending invitations (by user id; an e-mail invitation is taken up with its token), with the
        inviting organization's name."""
        cursor = self.db[INVITATIONS].find(
            {"user_id": principal.id, "target_exists": True, "expires_at": {"$gt": utcnow()}},
            sort=[("created_at", -1)],
            limit=MAX_LISTED,
        )
        docs = [doc async for doc in cursor]
        orgs = {
            o["_id"]: o
            async for o in self.db[ORGANIZATIONS].find(
                {"_id": {"$in": [d["organization_id"] for d in docs]}, "is_active": True}, projection={"name": 1}
            )
        }
        return [
            {**d, "organization_name": orgs[d["organization_id"]]["name"]} for d in docs if d["organization_id"] in orgs
        ]

    async def _take(self, principal: Principal, query: dict[str, Any]) -> dict[str, Any]:
        """Remove and return one live invitation addressed to the caller; anything else is the same 404."""
        doc = await self.db[INVITATIONS].find_one({**query, "expires_at": {"$gt": utcnow()}})
        if doc is None or not self._addressed_to(principal, doc):
            raise NotFound("Invitation not found.")
        taken = await self.db[INVITATIONS].find_one_and_delete({"_id": doc["_id"]})
        if taken is None:
            raise NotFound("Invitation not found.")  # answered or revoked meanwhile
        return taken

    @staticmethod
    def _addressed_to(principal: Principal, doc: dict[str, Any]) -> bool:
        if "user_id" in doc:
            return doc["user_id"] == principal.id and bool(doc.get("target_exists"))
        email = str(principal.user.get("email") or "").lower()
        return bool(email) and hmac.compare_digest(email, doc["email_lower"])

    @staticmethod
    def _query(invitation_id: str | None, token: str | None) -> dict[str, Any]:
        if token is not None:
            return {"token_hash": sha256(token)}
        return {"_id": invitation_id, "user_id": {"$exists": True}}

    async def accept(
        self, principal: Principal, actor: audit.Actor, *, invitation_id: str | None = None, token: str | None = None
    ) -> dict[str, Any]:
        """Join the organization with the invited role; the invitation is used up. A full organization keeps the
        invitation for a later try."""
        doc = await self._take(principal, self._query(invitation_id, token))
        org = await self.db[ORGANIZATIONS].find_one({"_id": doc["organization_id"]})
        if org is None or not org.get("is_active", True):
            raise NotFound("Invitation not found.")
        try:
            member = await self.orgs.enroll(org, principal.id, Role(doc["role"]), actor, "ACCEPT_INVITATION")
        except LimitExceeded:
            await self.db[INVITATIONS].insert_one(doc)
            raise
        principal.memberships[org["_id"]] = Role(doc["role"])
        return render_joined(org, member, principal.user)

    async def decline(
        self, principal: Principal, actor: audit.Actor, *, invitation_id: str | None = None, token: str | None = None
    ) -> None:
        doc = await self._take(principal, self._query(invitation_id, token))
        # Outside the organization's trail: its admins would otherwise learn who the invitee is without consent.
        await audit.record(
            self.db,
            actor,
            "DECLINE_INVITATION",
            "Invitation",
            doc["_id"],
            changes={"organization": doc["organization_id"], "role": doc["role"]},
        )


def render_added(added: Added) -> tuple[int, dict[str, Any]]:
    """add_member's answer: 201 with the membership staff made, or 202 with the invitation (and an e-mail
    invitation's token, shown this once)."""
    if added.member is not None:
        return 201, added.member
    body: dict[str, Any] = {"status": "invited", "invitation": render_invitation(added.invitation or {})}
    if added.token is not None:
        body["token"] = added.token
    return 202, body


def render_joined(org: dict[str, Any], member: dict[str, Any], user: dict[str, Any]) -> dict[str, Any]:
    """An accepted invitation: the organization joined and the new membership."""
    return {"organization": {"id": org["_id"], "name": org["name"]}, "membership": render_member(member, user)}


def render_invitee(doc: dict[str, Any]) -> dict[str, Any]:
    """The invitee exactly as the inviter named them (an id or an address), nothing learned from the directory."""
    return {"user_id": doc["user_id"]} if "user_id" in doc else {"email": doc.get("email")}


def render_invitation(doc: dict[str, Any]) -> dict[str, Any]:
    """An invitation as its organization's OWNER/ADMIN sees it."""
    return {
        "id": doc["_id"],
        "organization": doc["organization_id"],
        "invitee": render_invitee(doc),
        "role": doc["role"],
        "status": "PENDING",
        "invited_by": doc["invited_by"],
        "created_at": doc["created_at"],
        "expires_at": doc["expires_at"],
    }


def render_received(doc: dict[str, Any]) -> dict[str, Any]:
    """An invitation as its invitee sees it: who asks them to join what, as which role, until when."""
    return {
        "id": doc["_id"],
        "organization": {"id": doc["organization_id"], "name": doc["organization_name"]},
        "role": doc["role"],
        "invited_by_username": doc["invited_by_username"],
        "created_at": doc["created_at"],
        "expires_at": doc["expires_at"],
    }
