"""Invitation endpoints: an organization's pending invitations, and the invitee's list, accept and decline."""

from __future__ import annotations

from handlers.base import UUID, APIHandler, authenticated
from models.invitations import TokenIn, render_invitation, render_received


class PendingHandler(APIHandler):
    """GET: the organization's pending invitations (OWNER/ADMIN)."""

    @authenticated
    async def get(self, org_id: str) -> None:
        docs = await self.services.invitations.pending(self.require_principal(), org_id)
        self.write_json({"count": len(docs), "results": [render_invitation(d) for d in docs]})


class PendingOneHandler(APIHandler):
    """DELETE: revoke a pending invitation (OWNER/ADMIN)."""

    @authenticated
    async def delete(self, org_id: str, invitation_id: str) -> None:
        await self.services.invitations.revoke(self.require_principal(), org_id, invitation_id, self.actor)
        self.no_content()


class ReceivedHandler(APIHandler):
    """GET: the caller's own pending invitations."""

    @authenticated
    async def get(self) -> None:
        docs = await self.services.invitations.mine(self.require_principal())
        self.write_json({"count": len(docs), "results": [render_received(d) for d in docs]})


class AcceptHandler(APIHandler):
    """POST: accept one of the caller's invitations (by id), or an e-mail invitation with its token (no id)."""

    @authenticated
    async def post(self, invitation_id: str | None = None) -> None:
        token = self.parse_body(TokenIn).token if invitation_id is None else None
        joined = await self.services.invitations.accept(
            self.require_principal(), self.actor, invitation_id=invitation_id, token=token
        )
        self.write_json(joined)


class DeclineHandler(APIHandler):
    """POST: decline one of the caller's invitations (by id), or an e-mail invitation with its token (no id)."""

    @authenticated
    async def post(self, invitation_id: str | None = None) -> None:
        token = self.parse_body(TokenIn).token if invitation_id is None else None
        await self.services.invitations.decline(
            self.require_principal(), self.actor, invitation_id=invitation_id, token=token
        )
        self.no_content()


routes = [
    (rf"/api/organizations/{UUID}/invitations/", PendingHandler),
    (rf"/api/organizations/{UUID}/invitations/{UUID}/", PendingOneHandler),
    (r"/api/invitations/", ReceivedHandler),
    (r"/api/invitations/accept/", AcceptHandler),
    (r"/api/invitations/decline/", DeclineHandler),
    (rf"/api/invitations/{UUID}/accept/", AcceptHandler),
    (rf"/api/invitations/{UUID}/decline/", DeclineHandler),
]
