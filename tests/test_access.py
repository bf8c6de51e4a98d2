"""Organizations, users and the access policy over real HTTP: role matrix, escalation, tenancy, classification."""

from __future__ import annotations

import itertools
import uuid
from typing import Any

import pytest

from models.audit import Actor
from models.errors import ITARViolation, PermissionDenied
from models.organizations import MemberIn
from models.policy import (
    Clearance,
    Principal,
    Role,
    can,
    check_classification,
    classification_allows,
    classification_filter,
)
from tests.helpers import Caller, World, assert_envelope

ROLES = ["OWNER", "ADMIN", "MEMBER", "VIEWER"]


async def team(world: World, slug: str = "acme", is_us: bool = False) -> tuple[dict[str, Any], dict[str, Caller]]:
    people = {role: await world.user(f"{slug}-{role.lower()}") for role in ROLES}
    org = await world.org(slug, members={c: r for r, c in people.items()}, is_us=is_us)
    return org, people


# ---------------------------------------------------------------- organizations


@pytest.mark.gen_test
async def test_org_lists_show_only_own_organizations(world: World) -> None:
    acme, a = await team(world, "acme")
    other, b = await team(world, "globex")
    listed = (await a["VIEWER"].api.get("/api/organizations/")).json
    assert listed["count"] == 1 and listed["results"][0]["slug"] == "acme"
    assert listed["results"][0]["member_count"] == 4
    for path in (f"/api/organizations/{other['_id']}/", f"/api/organizations/{other['_id']}/members/"):
        assert_envelope(await a["OWNER"].api.get(path), 404, "RESOURCE_NOT_FOUND")
    assert_envelope(
        await a["OWNER"].api.patch(f"/api/organizations/{other['_id']}/", {"name": "pwned"}), 404, "RESOURCE_NOT_FOUND"
    )
    assert_envelope(await a["OWNER"].api.delete(f"/api/organizations/{other['_id']}/"), 404, "RESOURCE_NOT_FOUND")
    assert_envelope(await a["OWNER"].api.get(f"/api/organizations/{uuid.uuid4()}/"), 404, "RESOURCE_NOT_FOUND")


# Expected outcome of each action for each role: True allowed, False refused with 403.
MATRIX = {
    "read": {"OWNER": True, "ADMIN": True, "MEMBER": True, "VIEWER": True},
    "members": {"OWNER": True, "ADMIN": True, "MEMBER": True, "VIEWER": True},
    "update": {"OWNER": True, "ADMIN": True, "MEMBER": False, "VIEWER": False},
    "add_member": {"OWNER": True, "ADMIN": True, "MEMBER": False, "VIEWER": False},
    "change_role": {"OWNER": True, "ADMIN": True, "MEMBER": False, "VIEWER": False},
    "remove": {"OWNER": True, "ADMIN": True, "MEMBER": False, "VIEWER": False},
    "make_owner": {"OWNER": True, "ADMIN": False, "MEMBER": False, "VIEWER": False},
    "delete": {"OWNER": True, "ADMIN": False, "MEMBER": False, "VIEWER": False},
}


@pytest.mark.gen_test(timeout=120)
@pytest.mark.parametrize("role", ROLES)
async def test_role_matrix(world: World, db: Any, role: str) -> None:
    org, people = await team(world)
    me = people[role]
    outsider = await world.user("newcomer")
    target = await world.user("target")
    await world.services.orgs.add_member(
        await world.staff_principal(), org["_id"], MemberIn(user_id=target.id, role=Role.VIEWER), Actor.system()
    )
    base = f"/api/organizations/{org['_id']}/"
    calls = {
        "read": lambda: me.api.get(base),
        "members": lambda: me.api.get(base + "members/"),
        "update": lambda: me.api.patch(base, {"description": f"by {role}"}),
        "add_member": lambda: me.api.post(base + "add_member/", {"user_id": outsider.id, "role": "VIEWER"}),
        "change_role": lambda: me.api.patch(base + f"members/{target.id}/", {"role": "MEMBER"}),
        "remove": lambda: me.api.delete(base + f"members/{target.id}/"),
        "make_owner": lambda: me.api.patch(base + f"members/{people['VIEWER'].id}/", {"role": "OWNER"}),
        "delete": lambda: me.api.delete(base),
    }
    for action, call in calls.items():
        resp = await call()
        if MATRIX[action][role]:
            # add_member by an OWNER/ADMIN is an invitation (202); only platform staff add directly.
            assert resp.status in (200, 201, 202, 204), (action, role, resp.status, resp.body)
        else:
            assert_envelope(resp, 403, "PERMISSION_DENIED")
            if action == "update":
                assert (await db.organizations.find_one({"_id": org["_id"]}))["description"] == ""
            if action == "delete":
                assert await db.organizations.count_documents({"_id": org["_id"]}) == 1
        if action == "members" and MATRIX[action][role]:
            assert {m["username"] for m in resp.json} >= {"acme-owner", "acme-viewer"}


@pytest.mark.gen_test
async def test_last_owner_is_protected(world: World) -> None:
    org, people = await team(world)
    owner = people["OWNER"]
    base = f"/api/organizations/{org['_id']}/members/{owner.id}/"
    assert_envelope(await owner.api.patch(base, {"role": "ADMIN"}), 409, "CONFLICT")
    assert_envelope(await owner.api.delete(base), 409, "CONFLICT")
    # An ADMIN may not touch an OWNER at all.
    assert_envelope(await people["ADMIN"].api.delete(base), 403, "PERMISSION_DENIED")
    # With a second owner, the first may step down.
    promote = await owner.api.patch(f"/api/organizations/{org['_id']}/members/{people['ADMIN'].id}/", {"role": "OWNER"})
    assert promote.status == 200 and promote.json["role"] == "OWNER"
    assert (await owner.api.patch(base, {"role": "MEMBER"})).status == 200


@pytest.mark.gen_test
async def test_max_users_is_enforced(world: World) -> None:
    owner = await world.user("boss")
    org = await world.org("tiny", members={owner: "OWNER"}, max_users=2)
    one, two, three = await world.user("one"), await world.user("two"), await world.user("three")
    base = f"/api/organizations/{org['_id']}/add_member/"
    first = await owner.api.post(base, {"user_id": one.id, "role": "MEMBER"})
    second = await owner.api.post(base, {"user_id": two.id, "role": "MEMBER"})
    assert first.status == second.status == 202
    joined = await one.api.post(f"/api/invitations/{first.json['invitation']['id']}/accept/")
    assert joined.status == 200, joined.body
    # Full now: the second invitee cannot join, and no one else can be invited.
    late = await two.api.post(f"/api/invitations/{second.json['invitation']['id']}/accept/")
    assert_envelope(late, 403, "ORGANIZATION_LIMIT_EXCEEDED")
    assert_envelope(
        await owner.api.post(base, {"user_id": three.id, "role": "MEMBER"}), 403, "ORGANIZATION_LIMIT_EXCEEDED"
    )
    assert_envelope(await owner.api.post(base, {"user_id": one.id, "role": "MEMBER"}), 409, "CONFLICT")


@pytest.mark.gen_test
async def test_create_organization_rules(world: World, api: Any) -> None:
    user = await world.user("plain")
    body = {"name": "New Co", "slug": "new-co"}
    assert_envelope(await user.api.post("/api/organizations/", body), 403, "PERMISSION_DENIED")
    staff = await world.staff_principal()
    tokens = await world.services.identity.open_session(staff.user, device="t", ip=None)
    admin = api.as_token(tokens["access_token"])
    created = await admin.post("/api/organizations/", {**body, "is_us_organization": True})
    assert created.status == 201 and created.json["is_us_organization"] is True
    assert created.json["member_count"] == 1 and created.json["storage_used_gb"] == 0
    assert "slug" in assert_envelope(await admin.post("/api/organizations/", body), 409, "CONFLICT")["field_errors"]
    bad = await admin.post("/api/organizations/", {"name": "X", "slug": "Bad Slug!"})
    assert "slug" in assert_envelope(bad, 400, "VALIDATION_ERROR")["field_errors"]


class TestSelfService:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {"self_service_organizations": True}

    @pytest.mark.gen_test
    async def test_any_user_creates_and_owns_but_cannot_attest_us_status(self, world: World) -> None:
        user = await world.user("founder")
        refused = await user.api.post(
            "/api/organizations/", {"name": "Us", "slug": "us-co", "is_us_organization": True}
        )
        assert_envelope(refused, 403, "PERMISSION_DENIED")
        created = await user.api.post("/api/organizations/", {"name": "Mine", "slug": "mine"})
        assert created.status == 201
        members = (await user.api.get(f"/api/organizations/{created.json['id']}/members/")).json
        assert [(m["username"], m["role"]) for m in members] == [("founder", "OWNER")]
        flip = await user.api.patch(f"/api/organizations/{created.json['id']}/", {"is_us_organization": True})
        assert_envelope(flip, 403, "PERMISSION_DENIED")


# ---------------------------------------------------------------- users


@pytest.mark.gen_test
async def test_user_directory_is_limited_to_shared_organizations(world: World) -> None:
    _, a = await team(world, "acme")
    _, b = await team(world, "globex")
    listed = (await a["VIEWER"].api.get("/api/users/")).json
    assert listed["count"] == 4
    assert {u["username"] for u in listed["results"]} == {f"acme-{r.lower()}" for r in ROLES}
    assert listed["results"][0]["organizations"][0]["role"] in ROLES
    assert_envelope(await a["OWNER"].api.get(f"/api/users/{b['OWNER'].id}/"), 404, "RESOURCE_NOT_FOUND")
    searched = (await a["VIEWER"].api.get("/api/users/?search=OWN")).json
    assert [u["username"] for u in searched["results"]] == ["acme-owner"]


@pytest.mark.gen_test
async def test_user_filters(world: World) -> None:
    us = await world.user("yank", is_us_person=True, security_clearance_level="SECRET")
    other = await world.user("brit")
    await world.org("mixed", members={us: "MEMBER", other: "MEMBER"})
    resp = (await us.api.get("/api/users/?is_us_person=true")).json
    assert [u["username"] for u in resp["results"]] == ["yank"]
    resp = (await us.api.get("/api/users/?security_clearance_level=SECRET")).json
    assert [u["username"] for u in resp["results"]] == ["yank"]
    assert_envelope(await us.api.get("/api/users/?security_clearance_level=COSMIC"), 400, "VALIDATION_ERROR")


@pytest.mark.gen_test
@pytest.mark.parametrize("path", ["/api/users/me/", "own-id"])
@pytest.mark.parametrize("change", [{"is_us_person": True}, {"security_clearance_level": "TOP_SECRET"}])
async def test_self_escalation_is_refused_and_audited(world: World, db: Any, path: str, change: dict[str, Any]) -> None:
    org, people = await team(world)
    me = people["OWNER"]  # even an OWNER cannot raise their own attributes
    url = f"/api/users/{me.id}/" if path == "own-id" else path
    assert_envelope(await me.api.patch(url, change), 403, "PERMISSION_DENIED")
    stored = await db.users.find_one({"_id": me.id})
    assert stored["is_us_person"] is False and stored["security_clearance_level"] == "UNCLASSIFIED"
    entry = await db.audit_log.find_one({"action": "ESCALATION_DENIED", "resource_id": str(me.id)})
    assert entry is not None and entry["actor_id"] == me.id


@pytest.mark.gen_test
async def test_admin_sets_attributes_with_audited_old_and_new(world: World, db: Any) -> None:
    org, people = await team(world)
    target = people["VIEWER"]
    for role in ("MEMBER", "VIEWER"):
        refused = await people[role].api.patch(f"/api/users/{people['OWNER'].id}/", {"is_us_person": True})
        assert_envelope(refused, 403, "PERMISSION_DENIED")
    resp = await people["ADMIN"].api.patch(
        f"/api/users/{target.id}/", {"is_us_person": True, "security_clearance_level": "SECRET"}
    )
    assert resp.status == 200
    assert resp.json["is_us_person"] is True and resp.json["security_clearance_level"] == "SECRET"
    entry = await db.audit_log.find_one({"action": "UPDATE_PRIVILEGES", "resource_id": str(target.id)})
    assert entry["changes"]["is_us_person"] == {"old": False, "new": True}
    assert entry["changes"]["security_clearance_level"] == {"old": "UNCLASSIFIED", "new": "SECRET"}
    assert entry["actor_id"] == people["ADMIN"].id
    # An admin of another organization cannot even see the user.
    _, other = await team(world, "globex")
    assert_envelope(
        await other["ADMIN"].api.patch(f"/api/users/{target.id}/", {"is_us_person": False}), 404, "RESOURCE_NOT_FOUND"
    )


@pytest.mark.gen_test
async def test_profile_and_password_change(world: World, api: Any) -> None:
    me = await world.user("pat")
    resp = await me.api.patch("/api/users/me/", {"first_name": "Pat", "phone_number": "+1-555-0100"})
    assert resp.status == 200 and resp.json["first_name"] == "Pat"
    wrong = await me.api.patch("/api/users/me/", {"current_password": "nope-nope-nope", "new_password": "x" * 12})
    assert_envelope(wrong, 403, "PERMISSION_DENIED")
    weak = await me.api.patch("/api/users/me/", {"current_password": "correct-horse-battery", "new_password": "short"})
    assert_envelope(weak, 400, "VALIDATION_ERROR")
    ok = await me.api.patch(
        "/api/users/me/", {"current_password": "correct-horse-battery", "new_password": "a-much-better-passphrase"}
    )
    assert ok.status == 200
    login = await api.post("/api/auth/login/", {"username": "pat", "password": "a-much-better-passphrase"})
    assert login.status == 200


@pytest.mark.gen_test
async def test_create_user_into_organization(world: World, db: Any) -> None:
    org, people = await team(world)
    body = {
        "username": "hire",
        "password": "welcome-aboard-42",
        "organization": org["_id"],
        "role": "MEMBER",
        "is_us_person": True,
    }
    assert_envelope(await people["MEMBER"].api.post("/api/users/", body), 403, "PERMISSION_DENIED")
    created = await people["ADMIN"].api.post("/api/users/", body)
    assert created.status == 201 and created.json["is_us_person"] is True
    assert created.json["organizations"][0]["role"] == "MEMBER"
    staff_attempt = await people["OWNER"].api.post("/api/users/", {**body, "username": "root2", "is_staff": True})
    assert_envelope(staff_attempt, 403, "PERMISSION_DENIED")
    loose = await people["OWNER"].api.post("/api/users/", {"username": "loose", "password": "welcome-aboard-42"})
    assert_envelope(loose, 403, "PERMISSION_DENIED")
    assert await db.users.count_documents({"username": {"$in": ["root2", "loose"]}}) == 0


@pytest.mark.gen_test
async def test_api_key_never_exceeds_its_owner(world: World, api: Any) -> None:
    org, people = await team(world)
    viewer = people["VIEWER"]
    key = (await viewer.api.post("/api/auth/api-keys/", {"name": "all", "scopes": ["read", "write", "admin"]})).json
    resp = await api.patch(
        f"/api/organizations/{org['_id']}/", {"description": "x"}, headers={"Authorization": f"ApiKey {key['key']}"}
    )
    assert_envelope(resp, 403, "PERMISSION_DENIED")
    # And an OWNER's key without the admin scope cannot do admin work.
    owner_api = people["OWNER"].api
    owner_key = (await owner_api.post("/api/auth/api-keys/", {"name": "rw", "scopes": ["read", "write"]})).json
    resp = await api.patch(
        f"/api/organizations/{org['_id']}/",
        {"description": "x"},
        headers={"Authorization": f"ApiKey {owner_key['key']}"},
    )
    assert_envelope(resp, 403, "PERMISSION_DENIED")


# ---------------------------------------------------------------- the classification rule

LEVELS = ["UNCLASSIFIED", "CONFIDENTIAL", "SECRET", "TOP_SECRET"]
LABELS = LEVELS + ["ITAR"]


def expected(clearance: str, us_person: bool, label: str) -> bool:
    """The rule written out independently of the implementation."""
    if label == "ITAR":
        return us_person
    return LEVELS.index(clearance) >= LEVELS.index(label)


def principal(clearance: str, us_person: bool, us_org: str | None) -> Principal:
    return Principal(
        user={"_id": 1, "username": "p", "security_clearance_level": clearance, "is_us_person": us_person},
        memberships={"org-us": Role.MEMBER, "org-foreign": Role.MEMBER},
        us_orgs=frozenset({us_org} if us_org else set()),
    )


@pytest.mark.parametrize("clearance,us_person,label", list(itertools.product(LEVELS, [False, True], LABELS)))
def test_classification_truth_table(clearance: str, us_person: bool, label: str) -> None:
    want = expected(clearance, us_person, label)
    assert classification_allows(Clearance(clearance), us_person, label, org_is_us=True) is want
    p = principal(clearance, us_person, "org-us")
    if want:
        check_classification(p, label, org_is_us=True)
    else:
        with pytest.raises(ITARViolation if label == "ITAR" else PermissionDenied) as info:
            check_classification(p, label, org_is_us=True)
        assert info.value.code == ("ITAR_VIOLATION" if label == "ITAR" else "PERMISSION_DENIED")
    # ITAR in an organization that is not a US organization is closed even to US persons.
    if label == "ITAR":
        assert classification_allows(Clearance(clearance), us_person, label, org_is_us=False) is False


@pytest.mark.gen_test
async def test_classification_filter_agrees_with_the_function_in_mongo(db: Any) -> None:
    docs = [
        {"_id": f"{org}-{label}", "classification": label, "organization_id": org}
        for org in ("org-us", "org-foreign")
        for label in LABELS
    ]
    await db.policy_probe.insert_many(docs)
    for clearance, us_person in itertools.product(LEVELS, [False, True]):
        p = principal(clearance, us_person, "org-us")
        found = {d["_id"] async for d in db.policy_probe.find(classification_filter(p))}
        want = {
            d["_id"]
            for d in docs
            if classification_allows(
                Clearance(clearance), us_person, d["classification"], org_is_us=d["organization_id"] == "org-us"
            )
        }
        assert found == want, (clearance, us_person)


def test_roles_are_data_and_one_function_answers() -> None:
    p = Principal(user={"_id": 1, "username": "x"}, memberships={"o": Role.VIEWER})
    assert can(p, "design.read", "o") and not can(p, "design.create", "o")
    assert not can(p, "design.read", "elsewhere")
    p.memberships["o"] = Role.ADMIN
    assert can(p, "member.manage", "o") and not can(p, "org.delete", "o")
    p.scopes = frozenset({"read", "write"})
    assert not can(p, "member.manage", "o"), "admin actions need the admin scope on an API key"
