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

    def as_token(self, token: str | None) -> "Api":
        return Api(self.client, self.base_url, token)

    async def request(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
                      headers: dict[str, str] | None = None, **kwargs: Any) -> Response:
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
        resp: HTTPResponse = await self.client.fetch(url, method=method, body=data, headers=hdrs,
                                                     raise_error=False, allow_nonstandard_methods=True,
                                                     request_timeout=60, **kwargs)
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
