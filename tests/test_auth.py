"""Authentication over real HTTP: login, tokens, cookies, refresh rotation, sessions, API keys, lockout."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest

from models.database import utcnow
from tests.helpers import PASSWORD, Api, World, assert_envelope


async def login(api: Api, username: str, password: str = PASSWORD, **kw: Any) -> Any:
    return await api.post("/api/auth/login/", {"username": username, "password": password}, **kw)


@pytest.mark.gen_test
async def test_login_returns_tokens_and_user(world: World, api: Api) -> None:
    await world.user("alice", first_name="Alice")
    resp = await login(api, "alice")
    assert resp.status == 200
    body = resp.json
    assert body["expires_in"] == 86400 and body["token_type"] == "Bearer"
    assert body["access_token"].startswith("eat_") and body["refresh_token"].startswith("ert_")
    assert body["user"]["username"] == "alice" and body["user"]["first_name"] == "Alice"
    assert "password_hash" not in resp.body.decode()
    by_email = await login(api, "ALICE@example.com")
    assert by_email.status == 200


@pytest.mark.gen_test
async def test_wrong_password_and_unknown_user_answer_alike(world: World, api: Api) -> None:
    await world.user("bob")
    wrong = await login(api, "bob", "not-the-password")
    unknown = await login(api, "nobody-here", "not-the-password")
    for resp in (wrong, unknown):
        assert_envelope(resp, 401, "AUTHENTICATION_FAILED")
    strip = lambda b: {k: v for k, v in b.items() if k != "request_id"}  # noqa: E731
    assert strip(wrong.json) == strip(unknown.json)


@pytest.mark.gen_test
async def test_unknown_user_costs_a_password_hash_too(services: Any) -> None:
    from models.identity import Passwords

    passwords = Passwords(time_cost=2, memory_kib=8192)
    stored = await passwords.hash("some-password-123")
    timings: dict[str, list[float]] = {"wrong": [], "unknown": []}
    for _ in range(5):
        for kind, value in (("wrong", stored), ("unknown", None)):
            start = time.perf_counter()
            assert await passwords.verify(value, "guess-guess-guess") is False
            timings[kind].append(time.perf_counter() - start)
    wrong, unknown = sorted(timings["wrong"])[2], sorted(timings["unknown"])[2]
    # Same class: the unknown-user path does a full argon2 verification, not a fast early return.
    assert unknown > wrong * 0.4, (wrong, unknown)


@pytest.mark.gen_test
async def test_login_missing_fields_is_400(api: Api) -> None:
    body = assert_envelope(await api.post("/api/auth/login/", {"username": "x"}), 400, "VALIDATION_ERROR")
    assert body["field_errors"] == {"password": ["This field is required."]}
    injected = await api.post("/api/auth/login/", {"username": {"$ne": ""}, "password": {"$ne": ""}})
    assert_envelope(injected, 400, "VALIDATION_ERROR")


@pytest.mark.gen_test
async def test_token_bearer_and_missing_credentials(world: World, api: Api) -> None:
    alice = await world.user("alice")
    for scheme in ("Token", "Bearer"):
        resp = await api.get("/api/users/me/", headers={"Authorization": f"{scheme} {alice.token}"})
        assert resp.status == 200 and resp.json["username"] == "alice"
    assert_envelope(await api.get("/api/users/me/"), 401, "AUTHENTICATION_FAILED")
    # Issue 20: a token never issued is not an expired one (TOKEN_EXPIRED would tell the client to refresh).
    for forged in ("eat_forged", "not-even-our-format", "x" * 500):
        assert_envelope(
            await api.get("/api/users/me/", headers={"Authorization": f"Token {forged}"}), 401, "AUTHENTICATION_FAILED"
        )
    assert_envelope(
        await api.get("/api/users/me/", headers={"Authorization": "Basic abc"}), 401, "AUTHENTICATION_FAILED"
    )


@pytest.mark.gen_test
async def test_expired_access_token_is_token_expired(world: World, services: Any) -> None:
    alice = await world.user("alice")
    await services.db.auth_sessions.update_many(
        {"user_id": alice.id}, {"$set": {"access_expires_at": utcnow() - timedelta(seconds=1)}}
    )
    assert_envelope(await alice.api.get("/api/users/me/"), 401, "TOKEN_EXPIRED")


@pytest.mark.gen_test
async def test_several_sessions_and_logout_ends_only_one(world: World, api: Api) -> None:
    await world.user("carol")
    phone = (await login(api, "carol", headers={"User-Agent": "phone"})).json
    laptop = (await login(api, "carol", headers={"User-Agent": "laptop"})).json
    a, b = api.as_token(phone["access_token"]), api.as_token(laptop["access_token"])
    sessions = (await a.get("/api/auth/sessions/")).json
    devices = {s["device"] for s in sessions["results"]}
    assert {"phone", "laptop"} <= devices
    assert sum(1 for s in sessions["results"] if s["current"]) == 1
    assert (await a.post("/api/auth/logout/")).status == 204
    # Ended, not expired: refreshing would not help, so AUTHENTICATION_FAILED (sign in again).
    assert_envelope(await a.get("/api/users/me/"), 401, "AUTHENTICATION_FAILED")
    assert (await b.get("/api/users/me/")).status == 200
    # Ending another of one's own sessions by id.
    third = (await login(api, "carol")).json
    assert (await b.delete(f"/api/auth/sessions/{third['session_id']}/")).status == 204
    assert_envelope(await api.as_token(third["access_token"]).get("/api/users/me/"), 401, "AUTHENTICATION_FAILED")


@pytest.mark.gen_test
async def test_cannot_end_someone_elses_session(world: World, api: Api) -> None:
    await world.user("dave")
    mallory = await world.user("mallory")
    dave = (await login(api, "dave")).json
    resp = await mallory.api.delete(f"/api/auth/sessions/{dave['session_id']}/")
    assert_envelope(resp, 404, "RESOURCE_NOT_FOUND")
    assert (await api.as_token(dave["access_token"]).get("/api/users/me/")).status == 200


@pytest.mark.gen_test
async def test_refresh_rotates_and_reuse_revokes_the_chain(world: World, api: Api, db: Any) -> None:
    await world.user("erin")
    first = (await login(api, "erin")).json
    rotated = await api.post("/api/auth/refresh/", {"refresh_token": first["refresh_token"]})
    assert rotated.status == 200
    second = rotated.json
    assert second["refresh_token"] != first["refresh_token"] and second["access_token"] != first["access_token"]
    # The replaced access token is no longer known: AUTHENTICATION_FAILED, not TOKEN_EXPIRED.
    assert_envelope(await api.as_token(first["access_token"]).get("/api/users/me/"), 401, "AUTHENTICATION_FAILED")
    assert (await api.as_token(second["access_token"]).get("/api/users/me/")).status == 200
    # The first refresh token comes back (stolen copy): the whole session ends, legitimate holder included.
    replay = await api.post("/api/auth/refresh/", {"refresh_token": first["refresh_token"]})
    assert_envelope(replay, 401, "AUTHENTICATION_FAILED")
    assert_envelope(await api.as_token(second["access_token"]).get("/api/users/me/"), 401, "AUTHENTICATION_FAILED")
    assert_envelope(
        await api.post("/api/auth/refresh/", {"refresh_token": second["refresh_token"]}), 401, "AUTHENTICATION_FAILED"
    )
    assert await db.audit_log.count_documents({"action": "TOKEN_REUSE"}) == 1
    never = await api.post("/api/auth/refresh/", {"refresh_token": "ert_never-issued"})
    assert_envelope(never, 401, "AUTHENTICATION_FAILED")


@pytest.mark.gen_test
async def test_expired_refresh_token_is_token_expired(world: World, api: Api, db: Any) -> None:
    """Issue 20: TOKEN_EXPIRED only for a token Enginel issued whose time is up, the refresh token included."""
    await world.user("erin")
    first = (await login(api, "erin")).json
    await db.auth_sessions.update_many({}, {"$set": {"refresh_expires_at": utcnow() - timedelta(seconds=1)}})
    lapsed = await api.post("/api/auth/refresh/", {"refresh_token": first["refresh_token"]})
    assert_envelope(lapsed, 401, "TOKEN_EXPIRED")


@pytest.mark.gen_test
async def test_tokens_are_stored_only_as_hashes(world: World, api: Api, db: Any) -> None:
    await world.user("frank")
    tokens = (await login(api, "frank")).json
    owner = api.as_token(tokens["access_token"])
    key = (await owner.post("/api/auth/api-keys/", {"name": "ci", "scopes": ["read"]})).json["key"]
    dump = str([d async for d in db.auth_sessions.find()]) + str([d async for d in db.api_keys.find()])
    for secret in (tokens["access_token"], tokens["refresh_token"], key, key.split("_", 2)[2]):
        assert secret not in dump
    user = await db.users.find_one({"username": "frank"})
    assert user["password_hash"].startswith("$argon2id$")


@pytest.mark.gen_test
async def test_verify(world: World) -> None:
    alice = await world.user("alice")
    resp = await alice.api.get("/api/auth/verify/")
    assert resp.status == 200 and resp.json["valid"] is True and resp.json["user"]["id"] == alice.id


@pytest.mark.gen_test
async def test_cookie_session_needs_xsrf_for_writes(world: World, api: Api) -> None:
    await world.user("gina")
    resp = await login(api, "gina")
    cookies = [c.split(";")[0] for c in resp.headers.get_list("Set-Cookie")]
    cookie_header = "; ".join(cookies)
    session_cookie = [c for c in resp.headers.get_list("Set-Cookie") if c.startswith("enginel_session=")][0]
    assert "HttpOnly" in session_cookie and "SameSite=Strict" in session_cookie
    read = await api.get("/api/users/me/", headers={"Cookie": cookie_header})
    assert read.status == 200 and read.json["username"] == "gina"
    no_xsrf = await api.patch("/api/users/me/", {"first_name": "G"}, headers={"Cookie": cookie_header})
    assert_envelope(no_xsrf, 403, "XSRF_FAILED")
    xsrf = resp.json["xsrf_token"]
    ok = await api.patch("/api/users/me/", {"first_name": "G"}, headers={"Cookie": cookie_header, "X-XSRF-Token": xsrf})
    assert ok.status == 200 and ok.json["first_name"] == "G"
    # A token request needs no XSRF header: it cannot be forged by a browser.
    token_write = await api.as_token(resp.json["access_token"]).patch("/api/users/me/", {"last_name": "H"})
    assert token_write.status == 200


@pytest.mark.gen_test
async def test_api_keys_shown_once_scoped_and_revocable(world: World, api: Api) -> None:
    owner = await world.user("hank")
    created = await owner.api.post("/api/auth/api-keys/", {"name": "reader", "scopes": ["read"]})
    assert created.status == 201
    key = created.json["key"]
    assert key.startswith("ek_")
    listed = (await owner.api.get("/api/auth/api-keys/")).json["results"]
    assert listed[0]["name"] == "reader" and listed[0]["scopes"] == ["read"]
    assert "key" not in listed[0] and key not in str(listed) and listed[0]["prefix"].startswith(key[:11])
    reader = Api(api.client, api.base_url)
    headers = {"Authorization": f"ApiKey {key}"}
    assert (await reader.get("/api/users/me/", headers=headers)).status == 200
    denied = await reader.patch("/api/users/me/", {"first_name": "x"}, headers=headers)
    assert_envelope(denied, 403, "PERMISSION_DENIED")
    minted = await reader.post("/api/auth/api-keys/", {"name": "more", "scopes": ["read"]}, headers=headers)
    assert_envelope(minted, 403, "PERMISSION_DENIED")
    writer_key = (await owner.api.post("/api/auth/api-keys/", {"name": "w", "scopes": ["read", "write"]})).json
    wrote = await reader.patch(
        "/api/users/me/", {"first_name": "x"}, headers={"Authorization": f"ApiKey {writer_key['key']}"}
    )
    assert wrote.status == 200
    assert (await owner.api.delete(f"/api/auth/api-keys/{created.json['id']}/")).status == 204
    assert_envelope(await reader.get("/api/users/me/", headers=headers), 401, "AUTHENTICATION_FAILED")
    bad_scope = await owner.api.post("/api/auth/api-keys/", {"name": "x", "scopes": ["root"]})
    assert_envelope(bad_scope, 400, "VALIDATION_ERROR")


@pytest.mark.gen_test
async def test_expired_api_key_is_refused(world: World, api: Api) -> None:
    owner = await world.user("ivy")
    past = (utcnow() - timedelta(minutes=1)).isoformat()
    key = (await owner.api.post("/api/auth/api-keys/", {"name": "old", "scopes": ["read"], "expires_at": past})).json
    resp = await api.get("/api/users/me/", headers={"Authorization": f"ApiKey {key['key']}"})
    assert_envelope(resp, 401, "AUTHENTICATION_FAILED")


class TestLockout:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {"login_max_failures": 3, "login_lockout_seconds": 600}

    @pytest.mark.gen_test
    async def test_repeated_failures_lock_the_account_and_are_audited(self, world: World, api: Api, db: Any) -> None:
        user = await world.user("jack")
        for _ in range(3):
            assert_envelope(await login(api, "jack", "wrong-password"), 401, "AUTHENTICATION_FAILED")
        locked = await login(api, "jack")  # the right password, during the lock
        assert_envelope(locked, 401, "AUTHENTICATION_FAILED")
        assert await db.audit_log.count_documents({"action": "LOCKOUT", "resource_id": str(user.id)}) == 1
        assert await db.audit_log.count_documents({"action": "LOGIN_FAILED"}) == 2
        await db.login_failures.update_many({}, {"$set": {"locked_until": utcnow() - timedelta(seconds=1)}})
        assert (await login(api, "jack")).status == 200


class TestLoginThrottle:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {"login_attempts_per_minute": 3, "trusted_proxies": ["127.0.0.1"]}

    @pytest.mark.gen_test
    async def test_per_address_throttle_believes_only_trusted_proxies(self, world: World, api: Api) -> None:
        await world.user("kim")
        via = {"X-Forwarded-For": "203.0.113.7"}
        for _ in range(3):
            assert (await login(api, "kim", "bad-password", headers=via)).status == 401
        throttled = await login(api, "kim", headers=via)
        body = assert_envelope(throttled, 429, "RATE_LIMIT_EXCEEDED")
        assert body["retry_after"] >= 1 and throttled.headers["Retry-After"]
        # Another client behind the same proxy has its own budget.
        assert (await login(api, "kim", headers={"X-Forwarded-For": "203.0.113.8"})).status == 200


class TestUntrustedForwardedFor:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {"login_attempts_per_minute": 2}

    @pytest.mark.gen_test
    async def test_spoofed_forwarded_for_does_not_reset_the_budget(self, world: World, api: Api) -> None:
        await world.user("lee")
        for i in range(2):
            await login(api, "lee", "bad-password", headers={"X-Forwarded-For": f"198.51.100.{i}"})
        resp = await login(api, "lee", headers={"X-Forwarded-For": "198.51.100.99"})
        assert_envelope(resp, 429, "RATE_LIMIT_EXCEEDED")
