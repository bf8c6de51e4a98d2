"""Rate limits per caller: headers on every response, 429 past the burst, one budget across processes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from models.database import free_port
from tests.helpers import World, assert_envelope
from tests.test_server_process import wait_healthy

REPO = Path(__file__).resolve().parents[1]


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


def _request(port: int, path: str, token: str | None = None, body: dict[str, Any] | None = None
             ) -> tuple[int, Any, Any]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method="POST" if body else "GET",
                                 data=json.dumps(body).encode() if body else None,
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": f"Token {token}"} if token else {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, err.headers, json.loads(err.read())


def test_two_processes_sharing_redis_share_one_budget(mongo_uri: str, redis_url: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINEL_")}
    env.update(ENGINEL_MONGODB_URI=mongo_uri, ENGINEL_MONGODB_DATABASE="rl" + uuid.uuid4().hex[:12],
               ENGINEL_REDIS_URL=redis_url.replace("/0", "/3"), ENGINEL_RATE_LIMIT_PER_MINUTE="6",
               ENGINEL_BOOTSTRAP_ADMIN="root:a-long-root-password", ENGINEL_WORKERS="0",
               ENGINEL_ARGON2_TIME_COST="1", ENGINEL_ARGON2_MEMORY_KIB="64", ENGINEL_LOG_LEVEL="WARNING",
               ENGINEL_DATA_DIR=str(tmp_path))
    ports = [free_port(), free_port()]
    procs = []
    try:
        for port in ports:
            procs.append(subprocess.Popen([sys.executable, "server.py", "--port", str(port)], cwd=REPO, env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            wait_healthy(port, procs[-1])
        status, _, tokens = _request(ports[0], "/api/auth/login/",
                                     body={"username": "root", "password": "a-long-root-password"})
        assert status == 200
        outcomes = []
        for i in range(8):
            status, headers, _ = _request(ports[i % 2], "/api/users/me/", tokens["access_token"])
            outcomes.append((status, headers.get("X-RateLimit-Remaining")))
        assert [s for s, _ in outcomes] == [200] * 6 + [429] * 2, outcomes
        assert [r for _, r in outcomes[:6]] == ["5", "4", "3", "2", "1", "0"]
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)
