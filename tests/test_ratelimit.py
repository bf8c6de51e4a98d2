"""Rate limits per caller: headers on every response, 429 past the burst, one budget across processes; and the
capped leases behind the socket caps."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from models.ratelimit import MemoryRateLimiter, RateLimiter, RedisRateLimiter
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


@pytest.fixture(params=["memory", "redis"])
def limiter(request: pytest.FixtureRequest, io_loop: Any) -> Iterator[RateLimiter]:
    if request.param == "memory":
        yield MemoryRateLimiter()
        return
    client = aioredis.from_url(request.getfixturevalue("redis_url"))
    yield RedisRateLimiter(client, prefix=f"t{uuid.uuid4().hex[:8]}:")
    io_loop.run_sync(client.aclose)


@pytest.mark.gen_test
async def test_leases_cap_holders_free_on_release_and_expire_unless_renewed(limiter: RateLimiter) -> None:
    """The store behind the socket caps: `limit` holders per key, re-acquiring is idempotent, release frees
    a slot, and a holder not renewed within its ttl (its process died) stops counting."""
    assert [await limiter.acquire("k", h, 2, 30) for h in ("a", "b", "c")] == [True, True, False]
    assert await limiter.acquire("k", "a", 2, 30)  # already counted: no second slot
    assert await limiter.acquire("other", "c", 2, 30)  # another key's cap
    await limiter.release("k", "b")
    assert await limiter.acquire("k", "c", 2, 30)
    assert not await limiter.acquire("k", "d", 2, 30)
    await limiter.release("k", "a")
    await limiter.release("k", "c")
    assert await limiter.acquire("k", "short", 1, 0.3)
    assert await limiter.acquire("r", "renewed", 1, 0.3)
    await asyncio.sleep(0.2)
    await limiter.renew([("r", "renewed"), ("k", "never-acquired")], 30)
    await asyncio.sleep(0.2)
    assert await limiter.acquire("k", "next", 1, 30), "an expired holder must not count"
    assert not await limiter.acquire("r", "next", 1, 30), "a renewed holder still counts"
    assert not await limiter.acquire("k", "never-acquired", 1, 30)  # renew adds no holder
