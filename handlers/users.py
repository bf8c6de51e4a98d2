"""User endpoints: the directory, one's own profile, and administration of access attributes."""

from __future__ import annotations

from handlers.base import APIHandler, authenticated
from models.listing import parse_list_query, run_list
from models.users import USER_LIST, UserAdminPatch, UserCreate


class UsersHandler(APIHandler):
    @authenticated
    async def get(self) -> None:
        principal = self.require_principal()
        users = self.services.users
        query = parse_list_query(USER_LIST, self.request.query_arguments)
        page = await run_list(
            self.db.users,
            await users.visible_filter(principal),
            query,
            users.render_many,
            self.absolute_url(self.request.path),
            self.request.query_arguments,
        )
        self.write_json(page)

    @authenticated
    async def post(self) -> None:
        body = self.parse_body(UserCreate)
        user = await self.services.users.create(self.require_principal(), body, self.actor)
        self.write_json((await self.services.users.render_many([user]))[0], status=201)


class MeHandler(APIHandler):
    @authenticated
    async def get(self) -> None:
        principal = self.require_principal()
        self.write_json((await self.services.users.render_many([principal.user]))[0])

    @authenticated
    async def patch(self) -> None:
        principal = self.require_principal()
        # The admin model, so an attempt at self-escalation is refused as such (403, audited), not as a typo.
        body = self.parse_body(UserAdminPatch)
        user = await self.services.users.update(principal, principal.id, body, self.actor)
        self.write_json((await self.services.users.render_many([user]))[0])


class UserHandler(APIHandler):
    @authenticated
    async def get(self, user_id: str) -> None:
        user = await self.services.users.get_visible(self.require_principal(), int(user_id))
        self.write_json((await self.services.users.render_many([user]))[0])

    @authenticated
    async def patch(self, user_id: str) -> None:
        body = self.parse_body(UserAdminPatch)
        user = await self.services.users.update(self.require_principal(), int(user_id), body, self.actor)
        self.write_json((await self.services.users.render_many([user]))[0])


routes = [
    (r"/api/users/", UsersHandler),
    (r"/api/users/me/", MeHandler),
    (r"/api/users/([0-9]{1,12})/", UserHandler),
]
