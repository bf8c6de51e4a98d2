"""Test helpers: a small JSON client over real HTTP."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPResponse


@dataclass
class Response:
    status: int
    headers: Any
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class Api:
    """Sends requests to the live test server and never raises on HTTP errors, so tests assert statuses."""

    def __init__(self, client: AsyncHTTPClient, base_url: str, token: str | None = None) -> None:
        self.client = client
        self.base_url = base_url
        self.token = token

    def as_token(self, token: str | None) -> Api:
        return Api(self.client, self.base_url, token)

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> Response:
        hdrs = dict(headers or {})
        if self.token and "Authorization" not in hdrs:
            hdrs["Authorization"] = f"Token {self.token}"
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        if data is None and method in ("POST", "PUT", "PATCH"):
            data = b""
        url = path if path.startswith("http") else self.base_url + path
        resp: HTTPResponse = await self.client.fetch(
            url,
            method=method,
            body=data,
            headers=hdrs,
            raise_error=False,
            allow_nonstandard_methods=True,
            request_timeout=60,
            **kwargs,
        )
        return Response(resp.code, resp.headers, resp.body or b"")

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


def assert_envelope(resp: Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status == status, (resp.status, resp.body)
    body = resp.json
    assert set(body) >= {"error", "detail", "code", "field_errors"}, body
    assert body["code"] == code, body
    assert resp.headers.get("Content-Type", "").startswith("application/json")
    return body


PASSWORD = "correct-horse-battery"


@dataclass(eq=False)
class Caller:
    """A user with a live session token and a client that sends it."""

    user: dict[str, Any]
    token: str
    api: Api

    @property
    def id(self) -> int:
        return int(self.user["_id"])


class World:
    """Builds users and organizations straight through the models, then talks to the server over HTTP."""

    def __init__(self, services: Any, api: Api) -> None:
        self.services = services
        self.api = api
        self._staff: Any = None

    async def user(self, username: str, *, password: str = PASSWORD, **attrs: Any) -> Caller:
        user = await self.services.identity.create_user(
            username=username, password=password, email=attrs.pop("email", f"{username}@example.com"), **attrs
        )
        tokens = await self.services.identity.open_session(user, device="pytest", ip="127.0.0.1")
        return Caller(user, tokens["access_token"], self.api.as_token(tokens["access_token"]))

    async def staff_principal(self) -> Any:
        if self._staff is None:
            admin = await self.services.identity.create_user(
                username="platform-admin",
                password=PASSWORD,
                is_staff=True,
                is_us_person=True,
                security_clearance_level="TOP_SECRET",
            )
            self._staff = await self.services.identity.principal_for(admin["_id"])
        return self._staff

    async def org(
        self, slug: str, *, members: dict[Caller, str] | None = None, is_us: bool = False, **attrs: Any
    ) -> dict[str, Any]:
        from models import audit
        from models.organizations import MemberIn, OrganizationIn
        from models.policy import Role

        staff = await self.staff_principal()
        org = await self.services.orgs.create(
            staff, OrganizationIn(name=slug.title(), slug=slug, is_us_organization=is_us, **attrs), audit.Actor.system()
        )
        for caller, role in (members or {}).items():
            await self.services.orgs.add_member(
                staff, org["_id"], MemberIn(user_id=caller.id, role=Role(role)), audit.Actor.system()
            )
        # The staff creator is its first OWNER; leave it so tests see only the members they asked for.
        await self.services.db.memberships.delete_one({"organization_id": org["_id"], "user_id": staff.id})
        return org
