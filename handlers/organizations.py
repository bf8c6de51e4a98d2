"""Organization endpoints: CRUD, members, roles."""

from __future__ import annotations

from typing import Any

from handlers.base import LIST, UUID, APIHandler, authenticated
from models.invitations import render_added
from models.organizations import MemberIn, MemberPatch, OrganizationIn, OrganizationPatch


class OrganizationsHandler(APIHandler):
    """GET: the caller's organizations; POST: a new one (platform staff, or anyone with self-service)."""

    query_params = LIST

    @authenticated
    async def get(self) -> None:
        page = await self.services.orgs.list_visible(
            self.require_principal(), self.request.query_arguments, self.absolute_url(self.request.path)
        )
        self.write_json(page)

    @authenticated
    async def post(self) -> None:
        body = self.parse_body(OrganizationIn)
        doc = await self.services.orgs.create(self.require_principal(), body, self.actor)
        self.write_json((await self.services.orgs.render_many([doc]))[0], status=201)


class OrganizationHandler(APIHandler):
    """One organization: read, edit (PATCH/PUT), delete (OWNER)."""

    async def _render(self, doc: dict[str, Any]) -> dict[str, Any]:
        return (await self.services.orgs.render_many([doc]))[0]

    @authenticated
    async def get(self, org_id: str) -> None:
        doc = await self.services.orgs.get_visible(self.require_principal(), org_id)
        self.write_json(await self._render(doc))

    @authenticated
    async def patch(self, org_id: str) -> None:
        body = self.parse_body(OrganizationPatch)
        doc = await self.services.orgs.update(
            self.require_principal(), org_id, body.model_dump(exclude_unset=True, mode="json"), self.actor
        )
        self.write_json(await self._render(doc))

    @authenticated
    async def put(self, org_id: str) -> None:
        body = self.parse_body(OrganizationIn)
        doc = await self.services.orgs.update(
            self.require_principal(), org_id, body.model_dump(mode="json"), self.actor
        )
        self.write_json(await self._render(doc))

    @authenticated
    async def delete(self, org_id: str) -> None:
        await self.services.orgs.delete(self.require_principal(), org_id, self.actor)
        self.no_content()


class MembersHandler(APIHandler):
    """GET: the organization's members and their roles."""

    @authenticated
    async def get(self, org_id: str) -> None:
        self.write_json(await self.services.orgs.members(self.require_principal(), org_id))


class AddMemberHandler(APIHandler):
    """POST: platform staff add a user with a role (201, the membership); an OWNER/ADMIN invites a user id or an
    e-mail address (202, the invitation, the same whether or not the user exists)."""

    @authenticated
    async def post(self, org_id: str) -> None:
        body = self.parse_body(MemberIn)
        added = await self.services.invitations.add_member(self.require_principal(), org_id, body, self.actor)
        status, rendered = render_added(added)
        self.write_json(rendered, status=status)


class MemberHandler(APIHandler):
    """One membership: change its role (PATCH) or remove it (DELETE); an organization keeps an OWNER."""

    @authenticated
    async def patch(self, org_id: str, user_id: str) -> None:
        body = self.parse_body(MemberPatch)
        member = await self.services.orgs.change_role(self.require_principal(), org_id, int(user_id), body, self.actor)
        self.write_json(member)

    @authenticated
    async def delete(self, org_id: str, user_id: str) -> None:
        await self.services.orgs.remove_member(self.require_principal(), org_id, int(user_id), self.actor)
        self.no_content()


routes = [
    (r"/api/organizations/", OrganizationsHandler),
    (rf"/api/organizations/{UUID}/", OrganizationHandler),
    (rf"/api/organizations/{UUID}/members/", MembersHandler),
    (rf"/api/organizations/{UUID}/add_member/", AddMemberHandler),
    (rf"/api/organizations/{UUID}/members/([0-9]{{1,12}})/", MemberHandler),
]
