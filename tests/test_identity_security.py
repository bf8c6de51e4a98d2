"""Identity and administration attacks over real HTTP (issue 10: #1, #3, #8, #9, #10, #11, the lockout and XSRF
findings, the API-key cap) and the cross-organization administration matrix: each is the attacker's requests."""

from __future__ import annotations

import json
import statistics
import time
from datetime import timedelta
from typing import Any

import pytest
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from models.database import utcnow
from tests.helpers import PASSWORD, Api, Caller, Recorder, Response, World, assert_envelope, ready_design

PRIVILEGED_PATCHES = (
    {"security_clearance_level": "TOP_SECRET"},
    {"is_us_person": True},
    {"is_active": False},
)


async def staff_api(world: World) -> Api:
    """The platform admin of `world`, signed in (all scopes)."""
    staff = await world.staff_principal()
    tokens = await world.services.identity.open_session(staff.user, device="pytest", ip="127.0.0.1")
    return world.api.as_token(tokens["access_token"])


async def user_doc(db: Any, user_id: int) -> dict[str, Any]:
    doc = await db.users.find_one({"_id": user_id}, projection={"password_hash": 0})
    assert doc is not None
    return doc  # type: ignore[no-any-return]


def stripped(resp: Response, *keys: str) -> Any:
    """A response body without the fields that differ between any two answers (ids, times, request id)."""
    body = resp.json

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in keys and k != "request_id"}
        return value

    return strip(body)


# ---------------------------------------------------------------- #1: add_member is an invitation


@pytest.mark.gen_test(timeout=120)
async def test_admin_of_one_org_cannot_pull_in_and_escalate_a_user_of_another(world: World, db: Any) -> None:
    """The two-request attack of issue 10 #1: add B's VIEWER to A, then raise them to read B's TOP_SECRET and ITAR
    designs; and disable B's OWNER and a platform admin the same way."""
    b_owner = await world.user("b-owner", is_us_person=True, security_clearance_level="TOP_SECRET")
    b_viewer = await world.user("b-viewer")
    bravo = await world.org("bravo", is_us=True, members={b_owner: "OWNER", b_viewer: "VIEWER"})
    series = await b_owner.api.post(
        "/api/series/", {"organization": bravo["_id"], "part_number": "B-1", "name": "Bravo part"}
    )
    top = await ready_design(db, b_owner, series.json["id"], "TOP_SECRET")
    itar = await ready_design(db, b_owner, series.json["id"], "ITAR", filename="box.step")
    attacker = await world.user("a-admin")
    alpha = await world.org("alpha", members={attacker: "ADMIN"})
    staff_id = (await world.staff_principal()).id
    before = {uid: await user_doc(db, uid) for uid in (b_viewer.id, b_owner.id, staff_id)}

    add = f"/api/organizations/{alpha['_id']}/add_member/"
    invited = await attacker.api.post(add, {"user_id": b_viewer.id, "role": "VIEWER"})
    assert invited.status == 202, invited.body
    assert invited.json["invitation"]["invitee"] == {"user_id": b_viewer.id}
    for secret in ("b-viewer", "b-viewer@example.com", "bravo", "Bravo"):
        assert secret not in invited.body.decode()
    # The same answer for an id nobody has: the inviter cannot even probe which ids exist.
    nobody = await attacker.api.post(add, {"user_id": 987654, "role": "VIEWER"})
    assert nobody.status == 202
    assert stripped(nobody, "id", "created_at", "expires_at", "user_id") == stripped(
        invited, "id", "created_at", "expires_at", "user_id"
    )
    assert await db.memberships.count_documents({"organization_id": alpha["_id"], "user_id": b_viewer.id}) == 0

    raise_ = {"security_clearance_level": "TOP_SECRET", "is_us_person": True}
    assert_envelope(await attacker.api.patch(f"/api/users/{b_viewer.id}/", raise_), 404, "RESOURCE_NOT_FOUND")
    for victim in (b_owner.id, staff_id):
        disable = await attacker.api.patch(f"/api/users/{victim}/", {"is_active": False})
        assert_envelope(disable, 404, "RESOURCE_NOT_FOUND")
    for design in (top, itar):
        assert (await b_viewer.api.get(f"/api/designs/{design['_id']}/")).status == 403
    for uid, doc in before.items():
        assert await user_doc(db, uid) == doc

    # Even once the user consents and joins A, A's admin does not administer B: still refused, and B sees it.
    mine = await b_viewer.api.get("/api/invitations/")
    assert [(i["organization"]["name"], i["role"]) for i in mine.json["results"]] == [("Alpha", "VIEWER")]
    joined = await b_viewer.api.post(f"/api/invitations/{mine.json['results'][0]['id']}/accept/")
    assert joined.status == 200, joined.body
    refused = await attacker.api.patch(f"/api/users/{b_viewer.id}/", raise_)
    assert_envelope(refused, 403, "PERMISSION_DENIED")
    assert "bravo" not in refused.body.decode().lower()
    assert await user_doc(db, b_viewer.id) == before[b_viewer.id]
    denied = [e async for e in db.audit_log.find({"action": "ESCALATION_DENIED", "resource_id": str(b_viewer.id)})]
    assert sorted(e["organization_id"] for e in denied) == sorted([alpha["_id"], bravo["_id"]])
    # B's OWNER administers B but not A: refused as well. Platform staff may, audited in both organizations.
    assert_envelope(await b_owner.api.patch(f"/api/users/{b_viewer.id}/", raise_), 403, "PERMISSION_DENIED")
    staff = await staff_api(world)
    assert (await staff.patch(f"/api/users/{b_viewer.id}/", {"security_clearance_level": "SECRET"})).status == 200
    granted = [e async for e in db.audit_log.find({"action": "UPDATE_PRIVILEGES", "resource_id": str(b_viewer.id)})]
    assert sorted(e["organization_id"] for e in granted) == sorted([alpha["_id"], bravo["_id"]])
    assert all(e["changes"]["security_clearance_level"] == {"old": "UNCLASSIFIED", "new": "SECRET"} for e in granted)


@pytest.mark.gen_test(timeout=60)
async def test_who_may_change_which_user_attribute(world: World, db: Any) -> None:
    """Only staff, or an OWNER/ADMIN of every organization the user belongs to who is not outranked there; never a
    staff target. Each change is audited once per organization of the user."""
    owner, admin, admin2, member = [await world.user(n) for n in ("own", "adm", "adm2", "mem")]
    staff_member = await world.user("ops", is_staff=True)
    acme = await world.org(
        "acme", members={owner: "OWNER", admin: "ADMIN", admin2: "ADMIN", member: "MEMBER", staff_member: "MEMBER"}
    )
    for target, change in ((owner, {"is_active": False}), (staff_member, {"is_active": False})):
        resp = await admin.api.patch(f"/api/users/{target.id}/", change)
        assert_envelope(resp, 403, "PERMISSION_DENIED")
        assert (await user_doc(db, target.id))["is_active"] is True
    # Outranked or staff: the profile is not theirs to edit either.
    assert_envelope(await admin.api.patch(f"/api/users/{owner.id}/", {"first_name": "X"}), 403, "PERMISSION_DENIED")
    assert (await admin.api.patch(f"/api/users/{admin2.id}/", {"security_clearance_level": "SECRET"})).status == 200
    assert (await admin.api.patch(f"/api/users/{member.id}/", {"is_us_person": True})).status == 200
    entries = [e async for e in db.audit_log.find({"action": "UPDATE_PRIVILEGES", "resource_id": str(member.id)})]
    assert [e["organization_id"] for e in entries] == [acme["_id"]]
    # A second organization the admin also administers: allowed, and audited in both.
    globex = await world.org("globex", members={admin: "OWNER", member: "VIEWER"})
    assert (
        await admin.api.patch(f"/api/users/{member.id}/", {"security_clearance_level": "CONFIDENTIAL"})
    ).status == 200
    last = [
        e
        async for e in db.audit_log.find(
            {
                "action": "UPDATE_PRIVILEGES",
                "resource_id": str(member.id),
                "changes.security_clearance_level": {"$exists": True},
            }
        )
    ]
    assert sorted(e["organization_id"] for e in last) == sorted([acme["_id"], globex["_id"]])
    # The OWNER of acme does not administer globex, where the member also is.
    assert_envelope(await owner.api.patch(f"/api/users/{member.id}/", {"is_active": False}), 403, "PERMISSION_DENIED")
    # A user with no organization is platform staff's alone.
    loner = await world.user("loner")
    assert_envelope(await admin.api.patch(f"/api/users/{loner.id}/", {"is_us_person": True}), 404, "RESOURCE_NOT_FOUND")


@pytest.mark.gen_test(timeout=60)
async def test_invitations_are_accepted_declined_revoked_and_expire(world: World, db: Any) -> None:
    owner, admin, plain = await world.user("owner"), await world.user("admin"), await world.user("plain")
    org = await world.org("acme", members={owner: "OWNER", admin: "ADMIN", plain: "MEMBER"})
    base = f"/api/organizations/{org['_id']}/"
    pending = base + "invitations/"
    u, v, w = await world.user("uma"), await world.user("vic"), await world.user("wes")

    assert_envelope(await plain.api.post(base + "add_member/", {"user_id": u.id}), 403, "PERMISSION_DENIED")
    assert_envelope(await plain.api.get(pending), 403, "PERMISSION_DENIED")
    assert_envelope(
        await admin.api.post(base + "add_member/", {"user_id": u.id, "role": "OWNER"}), 403, "PERMISSION_DENIED"
    )
    both = await admin.api.post(base + "add_member/", {"user_id": u.id, "email": "uma@example.com"})
    assert_envelope(both, 400, "VALIDATION_ERROR")

    first = await admin.api.post(base + "add_member/", {"user_id": u.id, "role": "MEMBER"})
    assert first.status == 202
    again = await admin.api.post(base + "add_member/", {"user_id": u.id, "role": "MEMBER"})
    assert_envelope(again, 409, "CONFLICT")
    listed = (await admin.api.get(pending)).json
    assert [(i["invitee"], i["role"], i["status"]) for i in listed["results"]] == [
        ({"user_id": u.id}, "MEMBER", "PENDING")
    ]
    assert "uma" not in json.dumps(listed)
    received = (await u.api.get("/api/invitations/")).json["results"]
    assert received[0]["organization"] == {"id": org["_id"], "name": "Acme"}
    assert received[0]["invited_by_username"] == "admin"
    # Someone else cannot take it up.
    assert_envelope(await v.api.post(f"/api/invitations/{received[0]['id']}/accept/"), 404, "RESOURCE_NOT_FOUND")
    assert (await u.api.post(f"/api/invitations/{received[0]['id']}/decline/")).status == 204
    assert (await admin.api.get(pending)).json["count"] == 0
    # The decline is audited outside the organization's trail: its admins learn nothing of who declined.
    assert await db.audit_log.count_documents({"action": "DECLINE_INVITATION", "changes.organization": org["_id"]}) == 1
    assert (await admin.api.get("/api/audit-logs/?action=DECLINE_INVITATION")).json["count"] == 0
    assert (await u.api.get("/api/audit-logs/?action=DECLINE_INVITATION")).json["count"] == 1

    second = await owner.api.post(base + "add_member/", {"user_id": u.id, "role": "VIEWER"})
    accepted = await u.api.post(f"/api/invitations/{second.json['invitation']['id']}/accept/")
    assert accepted.status == 200, accepted.body
    assert accepted.json["membership"]["role"] == "VIEWER" and accepted.json["organization"]["id"] == org["_id"]
    assert (await u.api.get(base)).status == 200
    assert u.id in [m["user"] for m in (await owner.api.get(base + "members/")).json]

    revoked = await admin.api.post(base + "add_member/", {"user_id": v.id})
    inv_id = revoked.json["invitation"]["id"]
    assert (await admin.api.delete(pending + f"{inv_id}/")).status == 204
    assert (await v.api.get("/api/invitations/")).json["count"] == 0
    assert_envelope(await v.api.post(f"/api/invitations/{inv_id}/accept/"), 404, "RESOURCE_NOT_FOUND")

    expiring = await admin.api.post(base + "add_member/", {"user_id": w.id})
    await db.invitations.update_one(
        {"_id": expiring.json["invitation"]["id"]}, {"$set": {"expires_at": utcnow() - timedelta(seconds=1)}}
    )
    assert (await w.api.get("/api/invitations/")).json["count"] == 0
    gone = await w.api.post(f"/api/invitations/{expiring.json['invitation']['id']}/accept/")
    assert_envelope(gone, 404, "RESOURCE_NOT_FOUND")

    # By e-mail: the token shown once, plus the matching address, takes it up; nobody else can.
    eve, mallory = await world.user("eve"), await world.user("mallory")
    by_mail = await admin.api.post(base + "add_member/", {"email": "EVE@example.com", "role": "MEMBER"})
    assert by_mail.status == 202 and by_mail.json["token"].startswith("eit_")
    assert by_mail.json["invitation"]["invitee"] == {"email": "EVE@example.com"}
    token = by_mail.json["token"]
    assert_envelope(await mallory.api.post("/api/invitations/accept/", {"token": token}), 404, "RESOURCE_NOT_FOUND")
    assert_envelope(await eve.api.post("/api/invitations/accept/", {"token": "eit_forged"}), 404, "RESOURCE_NOT_FOUND")
    assert (await eve.api.post("/api/invitations/accept/", {"token": token})).status == 200
    assert token not in str([d async for d in db.invitations.find()])

    for action in ("INVITE_MEMBER", "REVOKE_INVITATION", "ACCEPT_INVITATION"):
        assert await db.audit_log.count_documents({"action": action, "organization_id": org["_id"]}) >= 1
    # Platform staff still provision directly.
    staff = await staff_api(world)
    direct = await staff.post(base + "add_member/", {"user_id": w.id, "role": "MEMBER"})
    assert direct.status == 201 and direct.json["username"] == "wes"


class TestInvitationCap:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {"max_pending_invitations": 2}

    @pytest.mark.gen_test
    async def test_pending_invitations_per_organization_are_bounded(self, world: World) -> None:
        owner = await world.user("owner")
        org = await world.org("acme", members={owner: "OWNER"})
        add = f"/api/organizations/{org['_id']}/add_member/"
        assert (await owner.api.post(add, {"user_id": 1001})).status == 202
        assert (await owner.api.post(add, {"email": "x@example.com"})).status == 202
        assert_envelope(await owner.api.post(add, {"user_id": 1002}), 403, "ORGANIZATION_LIMIT_EXCEEDED")


# ---------------------------------------------------------------- #3: user records show only visible memberships


@pytest.mark.gen_test
async def test_user_records_show_only_memberships_the_caller_can_see(world: World, api: Api) -> None:
    a_admin, both = await world.user("a-admin"), await world.user("both")
    await world.org("alpha", members={a_admin: "ADMIN", both: "MEMBER"})
    await world.org("secret-project", members={both: "VIEWER"})
    one = await a_admin.api.get(f"/api/users/{both.id}/")
    listed = await a_admin.api.get("/api/users/?search=both")
    for body in (one.json, listed.json["results"][0]):
        assert [(o["organization_name"], o["role"]) for o in body["organizations"]] == [("Alpha", "MEMBER")]
    for resp in (one, listed):
        assert "Secret-Project" not in resp.body.decode() and "VIEWER" not in resp.body.decode()
    login = await api.post("/api/auth/login/", {"username": "both", "password": PASSWORD})
    own = [
        (await both.api.get("/api/users/me/")).json,
        (await both.api.get("/api/auth/verify/")).json["user"],
        login.json["user"],
        (await (await staff_api(world)).get(f"/api/users/{both.id}/")).json,
    ]
    for body in own:
        assert sorted(o["organization_name"] for o in body["organizations"]) == ["Alpha", "Secret-Project"]


# ---------------------------------------------------------------- #8: a deactivated organization grants nothing


@pytest.mark.gen_test(timeout=60)
async def test_deactivated_organization_grants_nothing(world: World, db: Any, recorder: Recorder) -> None:
    owner = await world.user("owner")
    org = await world.org("acme", members={owner: "OWNER"})
    series = await owner.api.post("/api/series/", {"organization": org["_id"], "part_number": "P-1", "name": "Part"})
    design = await ready_design(db, owner, series.json["id"])
    staff = await staff_api(world)
    org_path = f"/api/organizations/{org['_id']}/"

    seen = len(recorder.access_changes)
    assert (await staff.patch(org_path, {"is_active": False})).status == 200
    assert recorder.access_changes[seen:] == [(None, "organization_changed")]  # signalled in the same request
    assert (await owner.api.get("/api/designs/")).json["count"] == 0
    assert_envelope(await owner.api.get(f"/api/designs/{design['_id']}/"), 404, "RESOURCE_NOT_FOUND")
    assert_envelope(await owner.api.get(org_path), 404, "RESOURCE_NOT_FOUND")
    made = await owner.api.post("/api/series/", {"organization": org["_id"], "part_number": "P-2", "name": "Another"})
    assert_envelope(made, 404, "RESOURCE_NOT_FOUND")
    assert_envelope(await owner.api.patch(org_path, {"is_active": True}), 404, "RESOURCE_NOT_FOUND")
    assert await db.series.count_documents({"organization_id": org["_id"]}) == 1
    assert (await staff.get(org_path)).status == 200  # staff are unaffected
    assert (await staff.patch(org_path, {"is_active": True})).status == 200
    assert (await owner.api.get("/api/designs/")).json["count"] == 1

    seen = len(recorder.access_changes)
    assert (await staff.patch(org_path, {"is_us_organization": True})).status == 200
    assert recorder.access_changes[seen:] == [(None, "organization_changed")]


# ---------------------------------------------------------------- #9: a password change ends the other sessions


@pytest.mark.gen_test(timeout=60)
async def test_password_change_ends_every_other_session_and_its_sockets(world: World, api: Api, base_url: str) -> None:
    pat = await world.user("pat")  # one session already (the "stolen" one), used by a socket too
    socket = await websocket_connect(
        HTTPRequest(base_url.replace("http", "ws") + "/ws/", headers={"Authorization": f"Token {pat.token}"}),
        subprotocols=["enginel.v1.json"],
    )
    assert json.loads(await socket.read_message())["type"] == "welcome"  # type: ignore[arg-type]
    login = await api.post("/api/auth/login/", {"username": "pat", "password": PASSWORD})
    mine = api.as_token(login.json["access_token"])
    key = (await mine.post("/api/auth/api-keys/", {"name": "ci", "scopes": ["read"]})).json["key"]

    changed = await mine.patch(
        "/api/users/me/", {"current_password": PASSWORD, "new_password": "a-brand-new-passphrase"}
    )
    assert changed.status == 200, changed.body
    assert changed.json["sessions_ended"] == 1
    assert_envelope(await pat.api.get("/api/users/me/"), 401, "AUTHENTICATION_FAILED")  # ended, not expired
    while await socket.read_message() is not None:
        pass
    assert socket.close_code == 4001
    assert (await mine.get("/api/users/me/")).status == 200  # the session that changed it stays
    # API keys are independent of the password (README): the key still works.
    assert (await api.get("/api/users/me/", headers={"Authorization": f"ApiKey {key}"})).status == 200
    sessions = (await mine.get("/api/auth/sessions/")).json
    assert [s["current"] for s in sessions["results"]] == [True]


# ---------------------------------------------------------------- #10: login timing


class TestLoginTiming:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {"login_attempts_per_minute": 100_000, "login_max_failures": 100_000}

    @pytest.mark.gen_test(timeout=180)
    async def test_unknown_and_known_usernames_take_the_same_time(self, world: World, api: Api) -> None:
        """Medians of 30 interleaved wrong-password attempts each. Before the fix the known user's failure also
        wrote the user and the audit chain: its median was 2.6-2.8x the unknown one's here (about 7 against
        2.6 ms); after it, 0.86-1.01x."""
        await world.user("known-user")
        timings: dict[str, list[float]] = {"known-user": [], "nobody-by-this-name": []}

        async def attempt(name: str) -> float:
            start = time.perf_counter()
            resp = await api.post("/api/auth/login/", {"username": name, "password": "not-the-password"})
            elapsed = time.perf_counter() - start
            assert resp.status == 401
            return elapsed

        for name in list(timings) * 3:  # warm both paths (indexes, caches, the audit chain's head)
            await attempt(name)
        for i in range(30):
            order = list(timings) if i % 2 == 0 else list(reversed(timings))
            for name in order:
                timings[name].append(await attempt(name))
        known, unknown = (statistics.median(t) for t in timings.values())
        ratio = known / unknown
        assert 0.65 < ratio < 1.55, f"known {known * 1000:.1f} ms, unknown {unknown * 1000:.1f} ms, ratio {ratio:.2f}"


# ---------------------------------------------------------------- #11: scopes bind staff API keys too


@pytest.mark.gen_test(timeout=60)
async def test_staff_api_key_without_admin_scope_administers_nothing(world: World, api: Api, db: Any) -> None:
    staff = await staff_api(world)
    owner, target = await world.user("owner"), await world.user("target")
    org = await world.org("acme", members={owner: "OWNER", target: "MEMBER"})
    outsider = await world.user("outsider")
    key = (await staff.post("/api/auth/api-keys/", {"name": "rw", "scopes": ["read", "write"]})).json["key"]
    rw = Api(api.client, api.base_url)
    auth = {"headers": {"Authorization": f"ApiKey {key}"}}
    base = f"/api/organizations/{org['_id']}/"
    attempts = {
        "create organization": rw.post(
            "/api/organizations/", {"name": "X", "slug": "x-co", "is_us_organization": True}, **auth
        ),
        "create user": rw.post("/api/users/", {"username": "minted", "password": "welcome-aboard-42"}, **auth),
        "create staff": rw.post(
            "/api/users/", {"username": "root2", "password": "welcome-aboard-42", "is_staff": True}, **auth
        ),
        "add member": rw.post(base + "add_member/", {"user_id": outsider.id, "role": "ADMIN"}, **auth),
        "change role": rw.patch(base + f"members/{target.id}/", {"role": "ADMIN"}, **auth),
        "remove member": rw.delete(base + f"members/{target.id}/", **auth),
        "raise clearance": rw.patch(f"/api/users/{target.id}/", {"security_clearance_level": "TOP_SECRET"}, **auth),
        "disable": rw.patch(f"/api/users/{target.id}/", {"is_active": False}, **auth),
        "us status": rw.patch(base, {"is_us_organization": True}, **auth),
        "deactivate org": rw.patch(base, {"is_active": False}, **auth),
    }
    for what, call in attempts.items():
        resp = await call
        assert resp.status == 403, (what, resp.status, resp.body)
    assert await db.organizations.count_documents({}) == 1
    assert await db.users.count_documents({"username": {"$in": ["minted", "root2"]}}) == 0
    assert await db.memberships.count_documents({"organization_id": org["_id"]}) == 2
    assert await db.invitations.count_documents({}) == 0
    stored = await user_doc(db, target.id)
    assert stored["security_clearance_level"] == "UNCLASSIFIED" and stored["is_active"] is True
    org_now = await db.organizations.find_one({"_id": org["_id"]})
    assert org_now["is_us_organization"] is False and org_now["is_active"] is True
    # With the admin scope the same key holder may.
    admin_key = (await staff.post("/api/auth/api-keys/", {"name": "adm", "scopes": ["read", "write", "admin"]})).json
    made = await rw.post(
        "/api/organizations/", {"name": "Y", "slug": "y-co"}, headers={"Authorization": f"ApiKey {admin_key['key']}"}
    )
    assert made.status == 201


# ---------------------------------------------------------------- lockout per account and address


class TestLockoutPerAddress:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {"login_max_failures": 3, "trusted_proxies": ["127.0.0.1"], "login_attempts_per_minute": 1000}

    @pytest.mark.gen_test(timeout=60)
    async def test_a_stranger_cannot_lock_anyone_out(self, world: World, api: Api, db: Any) -> None:
        await world.user("victim")
        await world.staff_principal()  # "platform-admin"
        attacker = {"X-Forwarded-For": "203.0.113.66"}
        for name in ("victim", "platform-admin"):
            for _ in range(4):
                resp = await api.post(
                    "/api/auth/login/", {"username": name, "password": "guess-guess"}, headers=attacker
                )
                assert_envelope(resp, 401, "AUTHENTICATION_FAILED")
            # The attacker's address is locked even with the right password...
            right = await api.post("/api/auth/login/", {"username": name, "password": PASSWORD}, headers=attacker)
            assert_envelope(right, 401, "AUTHENTICATION_FAILED")
            # ...and the owner, from their own address, signs in.
            home = {"X-Forwarded-For": "198.51.100.10"}
            assert (
                await api.post("/api/auth/login/", {"username": name, "password": PASSWORD}, headers=home)
            ).status == 200
        assert await db.audit_log.count_documents({"action": "LOCKOUT"}) == 2
        assert await db.audit_log.count_documents({"action": "LOGIN_LOCKED"}) >= 2


# ---------------------------------------------------------------- XSRF bound to the session


@pytest.mark.gen_test
async def test_xsrf_token_is_bound_to_its_session(world: World, api: Api) -> None:
    await world.user("gina")
    await world.user("mallory")
    victim = await api.post("/api/auth/login/", {"username": "gina", "password": PASSWORD})
    attacker = await api.post("/api/auth/login/", {"username": "mallory", "password": PASSWORD})
    session_cookie = [
        c.split(";")[0] for c in victim.headers.get_list("Set-Cookie") if c.startswith("enginel_session=")
    ]
    planted = attacker.json["xsrf_token"]
    # The attacker plants their own (valid) XSRF token as the cookie and echoes it: a double-submit check passes it.
    forged = await api.patch(
        "/api/users/me/",
        {"first_name": "pwned"},
        headers={"Cookie": f"{session_cookie[0]}; enginel_xsrf={planted}", "X-XSRF-Token": planted},
    )
    assert_envelope(forged, 403, "XSRF_FAILED")
    assert (await api.as_token(victim.json["access_token"]).get("/api/users/me/")).json["first_name"] == ""
    ok = await api.patch(
        "/api/users/me/",
        {"first_name": "Gina"},
        headers={"Cookie": session_cookie[0], "X-XSRF-Token": victim.json["xsrf_token"]},
    )
    assert ok.status == 200 and ok.json["first_name"] == "Gina"


# ---------------------------------------------------------------- #7: API keys per user are capped


class TestApiKeyCap:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {"max_api_keys_per_user": 3}

    @pytest.mark.gen_test
    async def test_api_keys_per_user_are_capped(self, world: World, db: Any) -> None:
        me = await world.user("hoarder")
        keys = [await me.api.post("/api/auth/api-keys/", {"name": f"k{i}", "scopes": ["read"]}) for i in range(3)]
        assert [k.status for k in keys] == [201, 201, 201]
        over = await me.api.post("/api/auth/api-keys/", {"name": "k3", "scopes": ["read"]})
        assert_envelope(over, 403, "LIMIT_EXCEEDED")
        assert await db.api_keys.count_documents({"user_id": me.id}) == 3
        assert (await me.api.delete(f"/api/auth/api-keys/{keys[0].json['id']}/")).status == 204
        assert (await me.api.post("/api/auth/api-keys/", {"name": "k4", "scopes": ["read"]})).status == 201


# ---------------------------------------------------------------- the cross-organization matrix

ROLES = ("OWNER", "ADMIN", "MEMBER", "VIEWER")


class TestCrossOrganizationMatrix:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {"rate_limit_per_minute": 100_000, "rate_limit_per_hour": 100_000}

    @pytest.mark.gen_test(timeout=300)
    async def test_nobody_administers_the_other_organization(self, world: World, db: Any, api: Api) -> None:
        """Every role of two organizations, an org-less user and a staff API key without the admin scope, against
        every user and membership of the other organization (and the staff account): refused, and the answer is
        the one an id nobody has gets, so it names no one."""
        people: dict[str, dict[str, Caller]] = {}
        orgs: dict[str, dict[str, Any]] = {}
        for slug in ("alpha", "bravo"):
            people[slug] = {r: await world.user(f"{slug}-{r.lower()}", is_us_person=True) for r in ROLES}
            orgs[slug] = await world.org(slug, members={c: r for r, c in people[slug].items()})
        loner = await world.user("loner")
        staff = await staff_api(world)
        staff_id = (await world.staff_principal()).id
        key = (await staff.post("/api/auth/api-keys/", {"name": "rw", "scopes": ["read", "write"]})).json["key"]
        staff_key = {"Authorization": f"ApiKey {key}"}
        users_before = {d["_id"]: d async for d in db.users.find({}, projection={"password_hash": 0})}
        members_before = sorted([(m["organization_id"], m["user_id"], m["role"]) async for m in db.memberships.find()])

        attackers: list[tuple[str, Api, dict[str, str], list[str]]] = [
            (f"{slug}-{r}", people[slug][r].api, {}, ["bravo" if slug == "alpha" else "alpha"])
            for slug in ("alpha", "bravo")
            for r in ROLES
        ]
        attackers.append(("org-less", loner.api, {}, ["alpha", "bravo"]))
        # Platform staff read everything with a read key; without the admin scope they administer nothing.
        attackers.append(("staff key without admin", Api(api.client, api.base_url), staff_key, ["alpha", "bravo"]))
        unknown_user, unknown_org = 999_999, "00000000-0000-4000-8000-000000000000"

        def actions(org_id: str, user_id: int) -> dict[str, tuple[str, str, Any]]:
            base = f"/api/organizations/{org_id}/"
            return {
                "read user": ("GET", f"/api/users/{user_id}/", None),
                "list members": ("GET", base + "members/", None),
                "list invitations": ("GET", base + "invitations/", None),
                "add member": ("POST", base + "add_member/", {"user_id": user_id, "role": "OWNER"}),
                "invite by mail": ("POST", base + "add_member/", {"email": "someone@example.com"}),
                "change role": ("PATCH", base + f"members/{user_id}/", {"role": "VIEWER"}),
                "remove member": ("DELETE", base + f"members/{user_id}/", None),
                "profile": ("PATCH", f"/api/users/{user_id}/", {"first_name": "pwned"}),
                **{
                    f"patch {next(iter(change))}": ("PATCH", f"/api/users/{user_id}/", change)
                    for change in PRIVILEGED_PATCHES
                },
            }

        # What an id nobody has, in an organization nobody has, gets: the reference answer of each action.
        reference: dict[str, tuple[int, Any]] = {}
        probe = people["alpha"]["ADMIN"]
        for name, (method, path, body) in actions(unknown_org, unknown_user).items():
            resp = await probe.api.request(method, path, body)
            reference[name] = (resp.status, stripped(resp))
        assert reference["read user"][0] == 404 and reference["add member"][0] == 404

        # The first step of the attack: each organization's ADMIN adds the other organization's people (and the
        # platform admin) to their own. It only invites, and answers exactly as for ids nobody has.
        ignore = ("id", "created_at", "expires_at", "user_id")
        for slug, other in (("alpha", "bravo"), ("bravo", "alpha")):
            add = f"/api/organizations/{orgs[slug]['_id']}/add_member/"
            admin = people[slug]["ADMIN"]
            for n, victim in enumerate([*(c.id for c in people[other].values()), staff_id]):
                victim_resp = await admin.api.post(add, {"user_id": victim, "role": "ADMIN"})
                ghost_resp = await admin.api.post(add, {"user_id": unknown_user + n, "role": "ADMIN"})
                assert victim_resp.status == ghost_resp.status == 202, victim_resp.body
                assert stripped(victim_resp, *ignore) == stripped(ghost_resp, *ignore)
                assert not any(c.user["username"] in victim_resp.body.decode() for c in people[other].values())

        refused = 0
        for label, attacker, headers, victims in attackers:
            is_staff_key = bool(headers)
            names = {c.user["username"] for slug in victims for c in people[slug].values()}
            for slug in victims:
                org_id = orgs[slug]["_id"]
                targets: list[int | None] = [c.id for c in people[slug].values()]
                if not is_staff_key:
                    targets.append(None)  # the platform admin's own account, which no organization administers
                for target in targets:
                    for name, (method, path, body) in actions(org_id, target or staff_id).items():
                        if target is None and "/organizations/" in path:
                            continue  # the staff account is no member: its rows are the user record
                        if is_staff_key and method == "GET":
                            continue
                        resp = await attacker.request(method, path, body, headers=headers)
                        text = resp.body.decode()
                        if is_staff_key:
                            assert_envelope(resp, 403, "PERMISSION_DENIED")
                        else:
                            assert (resp.status, stripped(resp)) == reference[name], (label, name, slug, text)
                        assert not any(n in text for n in names | {"platform-admin"}), (label, name, text)
                        assert "@example.com" not in text, (label, name, text)
                        refused += 1
        assert refused > 500
        assert {d["_id"]: d async for d in db.users.find({}, projection={"password_hash": 0})} == users_before
        assert (
            sorted([(m["organization_id"], m["user_id"], m["role"]) async for m in db.memberships.find()])
            == members_before
        )
        assert await db.invitations.count_documents({}) == 20  # the first step's, still pending
