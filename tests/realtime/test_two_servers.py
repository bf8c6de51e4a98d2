"""Two real server.py processes sharing MongoDB and Redis act as one: a write on one reaches sockets on both."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient

from tests.helpers import ROOT_PASSWORD, cad, shared_servers
from tests.realtime.client import Client


@pytest.fixture
def two_servers(mongo_uri: str, redis_url: str, tmp_path: Path) -> Iterator[list[int]]:
    with shared_servers(mongo_uri, redis_url, tmp_path) as ports:
        yield ports


async def call(port: int, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Token {token}"} if token else {})}
    resp = await AsyncHTTPClient().fetch(
        f"http://127.0.0.1:{port}{path}",
        method=method,
        headers=headers,
        body=json.dumps(body) if body is not None else None,
        raise_error=False,
    )
    assert resp.code < 300, (resp.code, resp.body)
    return json.loads(resp.body) if resp.body else None


@pytest.mark.gen_test(timeout=90)
async def test_a_write_on_one_process_reaches_sockets_on_both(two_servers: list[int]) -> None:
    a, b = two_servers
    token = (await call(a, "POST", "/api/auth/login/", {"username": "root", "password": ROOT_PASSWORD}))["access_token"]
    org = await call(a, "POST", "/api/organizations/", {"name": "Two", "slug": "two"}, token)
    series = await call(
        a, "POST", "/api/series/", {"organization": org["id"], "part_number": "T-1", "name": "t"}, token
    )
    listeners = [await Client.connect(f"ws://127.0.0.1:{port}/ws/", token=token) for port in (a, b)]
    for client in listeners:
        await client.ok("subscribe", channel=f"org:{org['id']}")
    await call(b, "PATCH", f"/api/series/{series['id']}/", {"name": "renamed"}, token)  # a write on B, no event
    data = cad("wire.brep")
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="series"\r\n\r\n{series["id"]}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="w.brep"\r\n\r\n'
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    resp = await AsyncHTTPClient().fetch(
        f"http://127.0.0.1:{a}/api/designs/",
        method="POST",
        body=body,
        headers={"Authorization": f"Token {token}", "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    design = json.loads(resp.body)
    got = await asyncio.gather(*[c.next_event("design.created") for c in listeners])
    assert [e["data"]["design_id"] for e in got] == [design["id"], design["id"]]
    assert got[0]["offset"] == got[1]["offset"] and got[0]["epoch"] == got[1]["epoch"]
    for client in listeners:
        client.close()
