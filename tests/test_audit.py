"""The audit trail: hash chain integrity under concurrency, tamper detection, visibility, search and export."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from typing import Any

import pytest

from models import audit
from tests.helpers import World, assert_envelope, cad, team, upload


@pytest.mark.gen_test
async def test_chain_holds_under_concurrent_appends_and_detects_tampering(db: Any) -> None:
    actor = audit.Actor(1, "tester")
    await asyncio.gather(*[audit.record(db, actor, "UPDATE", "Thing", i) for i in range(40)])
    ids = [e["_id"] async for e in db.audit_log.find({}, sort=[("_id", 1)])]
    assert ids == list(range(1, 41))
    assert await audit.verify_chain(db) == (True, None)
    await db.audit_log.update_one({"_id": 17}, {"$set": {"changes": {"forged": True}}})
    assert await audit.verify_chain(db) == (False, 17)
    await db.audit_log.update_one({"_id": 17}, {"$set": {"changes": {}}})
    assert await audit.verify_chain(db) == (True, None)
    await db.audit_log.delete_one({"_id": 30})
    assert await audit.verify_chain(db) == (False, 31)


@pytest.mark.gen_test(timeout=60)
async def test_visibility_follows_roles_and_classification(world: World, db: Any) -> None:
    org, people, series_id = await team(world)
    data = cad("wire.brep")
    itar = await upload(people["member"], series_id, "itar.brep", data, classification="ITAR")
    await upload(people["member"], series_id, "open.brep", data)
    # An ADMIN who is not a US person sees the organization's trail, but nothing about the ITAR design.
    await world.services.db.users.update_one({"_id": people["admin"].id}, {"$set": {"is_us_person": False}})
    admin_view = (await people["admin"].api.get(f"/api/audit-logs/?organization={org['_id']}&page_size=100")).json
    assert admin_view["count"] > 0
    assert itar["id"] not in json.dumps(admin_view)
    owner_view = (await people["owner"].api.get(f"/api/audit-logs/?resource_id={itar['id']}")).json
    assert {e["action"] for e in owner_view["results"]} == {"CREATE", "FINALIZE"}
    # A MEMBER sees only their own actions.
    member_view = (await people["viewer"].api.get("/api/audit-logs/?page_size=100")).json
    assert all(e["actor_id"] == people["viewer"].id for e in member_view["results"])
    # Another organization's admin sees none of it, not even by id.
    stranger = await world.user("stranger", is_us_person=True, security_clearance_level="TOP_SECRET")
    await world.org("elsewhere", members={stranger: "OWNER"}, is_us=True)
    entry_id = owner_view["results"][0]["id"]
    assert_envelope(await stranger.api.get(f"/api/audit-logs/{entry_id}/"), 404, "RESOURCE_NOT_FOUND")
    assert (await stranger.api.get(f"/api/audit-logs/?resource_id={itar['id']}")).json["count"] == 0
    detail = await people["owner"].api.get(f"/api/audit-logs/{entry_id}/")
    assert detail.status == 200 and len(detail.json["hash"]) == 64


@pytest.mark.gen_test(timeout=60)
async def test_search_export_and_verify(world: World, api: Any) -> None:
    org, people, series_id = await team(world)
    await upload(people["member"], series_id, "a.brep", cad("wire.brep"))
    owner = people["owner"].api
    found = (await owner.get("/api/audit-logs/search/?q=finalize&resource_type=DesignAsset")).json
    assert found["count"] == 1 and found["results"][0]["action"] == "FINALIZE"
    exported = await owner.get("/api/audit-logs/export/?format=csv&start_date=2020-01-01")
    rows = list(csv.reader(io.StringIO(exported.body.decode())))
    assert rows[0][:5] == ["id", "timestamp", "actor_id", "actor_username", "action"]
    assert any(r[4] == "FINALIZE" for r in rows[1:])
    as_json = (await owner.get("/api/audit-logs/export/?format=json")).json
    assert {e["action"] for e in as_json} >= {"CREATE", "FINALIZE"}
    assert_envelope(await owner.get("/api/audit-logs/export/?format=pdf"), 400, "VALIDATION_ERROR")
    assert_envelope(await owner.get("/api/audit-logs/verify/"), 403, "PERMISSION_DENIED")
    staff = await world.staff_principal()
    token = (await world.services.identity.open_session(staff.user, device="t", ip=None))["access_token"]
    verified = (await api.as_token(token).get("/api/audit-logs/verify/")).json
    assert verified["intact"] is True and verified["entries"] > 5
