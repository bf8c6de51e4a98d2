"""Rate limits per caller: headers on every response, 429 past the burst, one budget across processes."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ROOT_PASSWORD, World, assert_envelope, shared_servers


class TestBurst:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {"rate_limit_per_minute": 5, "rate_limit_per_hour": 1000}

    @pytest.mark.gen_test
    async def test_headers_then_429_with_retry_after(self, world: World) -> None:
        alice = await world.user("alice")
        remaining = []
        for _ in range(5):
            resp = await alice.api.get("/api/users/me/")
            assert resp.status == 200
            assert resp.headers["X-RateLimit-Limit"] == "5"
            remaining.append(int(resp.headers["X-RateLimit-Remaining"]))
            assert int(resp.headers["X-RateLimit-Reset"]) > 0
        assert remaining == [4, 3, 2, 1, 0]
        limited = await alice.api.get("/api/users/me/")
        body = assert_envelope(limited, 429, "RATE_LIMIT_EXCEEDED")
        assert 1 <= body["retry_after"] <= 60
        assert limited.headers["X-RateLimit-Remaining"] == "0"
        # Budgets are per caller: another user is unaffected.
        bob = await world.user("bob")
        assert (await bob.api.get("/api/users/me/")).status == 200

    @pytest.mark.gen_test
    async def test_health_probes_are_not_limited(self, api: Any) -> None:
        for _ in range(8):
            assert (await api.get("/api/health/")).status == 200


def _request(
    port: int, path: str, token: str | None = None, body: dict[str, Any] | None = None
) -> tuple[int, Any, Any]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        method="POST" if body else "GET",
        data=json.dumps(body).encode() if body else None,
        headers={"Content-Type": "application/json", **({"Authorization": f"Token {token}"} if token else {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, err.headers, json.loads(err.read())


def test_two_processes_sharing_redis_share_one_budget(mongo_uri: str, redis_url: str, tmp_path: Path) -> None:
    with shared_servers(mongo_uri, redis_url, tmp_path, rate_limit_per_minute="6") as ports:
        status, _, tokens = _request(ports[0], "/api/auth/login/", body={"username": "root", "password": ROOT_PASSWORD})
        assert status == 200
        outcomes = []
        for i in range(8):
            status, headers, _ = _request(ports[i % 2], "/api/users/me/", tokens["access_token"])
            outcomes.append((status, headers.get("X-RateLimit-Remaining")))
        assert [s for s, _ in outcomes] == [200] * 6 + [429] * 2, outcomes
        assert [r for _, r in outcomes[:6]] == ["5", "4", "3", "2", "1", "0"]
