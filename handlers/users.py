"""User endpoints: the directory, one's own profile, and administration of access attributes."""

from __future__ import annotations

from typing import Any

from handlers.base import LIST, APIHandler, authenticated
from models.policy import Principal
from models.users import UserAdminPatch, UserCreate, Users


class UsersHandler(APIHandler):
    """GET: the users who share an organization with the caller; POST: create a user (staff, ADMIN/OWNER)."""

    query_params = LIST

    @authenticated
    async def get(self) -> None:
        page = await self.services.users.list_visible(
            self.require_principal(), self.request.query_arguments, self.absolute_url(self.request.path)
        )
        self.write_json(page)

    @authenticated
    async def post(self) -> None:
        principal = self.require_principal()
        body = self.parse_body(UserCreate)
        user = await self.services.users.create(principal, body, self.actor)
        self.write_json((await self.services.users.render_many(principal, [user]))[0], status=201)


class MeHandler(APIHandler):
    """The caller's own profile: read, and edit what a user may change about themself."""

    @authenticated
    async def get(self) -> None:
        principal = self.require_principal()
        self.write_json((await self.services.users.render_many(principal, [principal.user]))[0])

    @authenticated
    async def patch(self) -> None:
        principal = self.require_principal()
        # The admin model, so an attempt at self-escalation is refused as such (403, audited), not as a typo.
        body = self.parse_body(UserAdminPatch)
        user, sessions_ended = await self.services.users.update(principal, principal.id, body, self.actor)
        self.write_json(await render_updated(self.services.users, principal, user, sessions_ended))


class UserHandler(APIHandler):
    """One user: read, and administer (clearance, US-person status, activation) as staff or ADMIN/OWNER."""

    @authenticated
    async def get(self, user_id: str) -> None:
        principal = self.require_principal()
        user = await self.services.users.get_visible(principal, int(user_id))
        self.write_json((await self.services.users.render_many(principal, [user]))[0])

    @authenticated
    async def patch(self, user_id: str) -> None:
        principal = self.require_principal()
        body = self.parse_body(UserAdminPatch)
        user, sessions_ended = await self.services.users.update(principal, int(user_id), body, self.actor)
        self.write_json(await render_updated(self.services.users, principal, user, sessions_ended))


async def render_updated(
    users: Users, principal: Principal, user: dict[str, Any], sessions_ended: int | None
) -> dict[str, Any]:
    """The user after an edit; after a password change, also how many other sessions it ended (API keys are
    independent of the password and stay)."""
    rendered = (await users.render_many(principal, [user]))[0]
    if sessions_ended is not None:
        rendered["sessions_ended"] = sessions_ended
    return rendered


routes = [
    (r"/api/users/", UsersHandler),
    (r"/api/users/me/", MeHandler),
    (r"/api/users/([0-9]{1,12})/", UserHandler),
]
