"""The audit trail: hash chain integrity under concurrency, tamper detection, visibility, search and export."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from typing import Any

import pytest

from models import audit
from tests.helpers import Api, World, assert_envelope, cad, open_review, ready_design, review_team, team, upload


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


MARKUP = {
    "position": {"x": 25.5, "y": 12.3, "z": 8.7},
    "camera_position": {"x": 100, "y": 100, "z": 100},
    "camera_target": {"x": 25.5, "y": 12.3, "z": 8.7},
    "severity": "MAJOR",
}


async def _every_read(admin: Api, owner_view: list[dict[str, Any]]) -> str:
    """What an ADMIN gets from every way of reading the trail (list, search, each entry, both exports), as one
    text to look for leaks in; also checks that the list's count is exactly what it shows."""
    listing = (await admin.get("/api/audit-logs/?page_size=100")).json
    assert listing["count"] == len(listing["results"]) < 100, listing["count"]
    parts = [json.dumps(listing)]
    for query in ("resource_type=Markup", "resource_type=ReviewSession", "resource_type=DesignAsset"):
        page = (await admin.get(f"/api/audit-logs/?{query}")).json
        assert page["count"] == len(page["results"]), query
        parts.append(json.dumps(page))
    parts.append((await admin.get("/api/audit-logs/search/?q=Markup")).body.decode())
    for entry in owner_view:
        one = await admin.get(f"/api/audit-logs/{entry['id']}/")
        parts.append(one.body.decode() if one.status == 200 else "")
    parts.append((await admin.get("/api/audit-logs/export/?format=json")).body.decode())
    parts.append((await admin.get("/api/audit-logs/export/?format=csv")).body.decode())
    return "\n".join(parts)


@pytest.mark.gen_test(timeout=120)
async def test_entries_follow_the_designs_current_classification(world: World, db: Any, api: Api) -> None:
    """Issue 10 #4: once a design is raised to SECRET, an ADMIN cleared only for CONFIDENTIAL no longer reads
    its filename, markup texts or review entries anywhere in the trail, and the counts say so too; lowered
    again, they are back. The hash chain verifies throughout."""
    _, p, series_id = await review_team(world)
    await db.users.update_one({"_id": p["admin"].id}, {"$set": {"security_clearance_level": "CONFIDENTIAL"}})
    design = await upload(p["author"], series_id, "xj9-blade.igs", cad("plate.igs"))
    await db.designs.update_one({"_id": design["id"]}, {"$set": {"status": "READY"}})
    review = await open_review(p["author"], design["id"], [p["r1"], p["r2"]])
    made = await p["r1"].api.post(
        "/api/markups/", {"review_session": review["id"], "annotation_text": "XJ9 crack at the fillet", **MARKUP}
    )
    assert made.status == 201, made.body
    reply = await p["r2"].api.post(f"/api/markups/{made.json['id']}/replies/", {"text": "XJ9 seen too"})
    assert reply.status == 201, reply.body
    vote = await p["r1"].api.post(f"/api/reviews/{review['id']}/approve/", {"comments": "XJ9 acceptable"})
    assert vote.status == 200, vote.body
    admin, owner = p["admin"].api, p["owner"].api
    assert "XJ9" in await _every_read(admin, [])  # readable while the design is UNCLASSIFIED

    raised = await owner.patch(f"/api/designs/{design['id']}/", {"classification": "SECRET"})
    assert raised.status == 200, raised.body
    # Written after the change: labelled SECRET from the start.
    later = await p["r1"].api.post(
        "/api/markups/", {"review_session": review["id"], "annotation_text": "XJ9 second look", **MARKUP}
    )
    assert later.status == 201, later.body
    owner_view = (await owner.get(f"/api/audit-logs/?page_size=100&organization={design['organization']}")).json
    ids = {design["id"], review["id"], str(made.json["id"]), str(later.json["id"])}
    about = [e for e in owner_view["results"] if e["resource_id"] in ids]
    kinds = {(e["resource_type"], e["action"]) for e in about}
    assert {("DesignAsset", "CREATE"), ("ReviewSession", "CREATE"), ("ReviewSession", "APPROVE")} <= kinds
    assert {("Markup", "CREATE"), ("Markup", "REPLY"), ("DesignAsset", "UPDATE")} <= kinds
    seen = await _every_read(admin, about)
    for secret in ("XJ9", "xj9-blade", design["id"], review["id"]):
        assert secret not in seen, secret
    # Each says which design it is about and the label that governs it now.
    assert all(e["design"] == design["id"] and e["current_classification"] == "SECRET" for e in about)
    by_design = (await owner.get(f"/api/audit-logs/?design={design['id']}&page_size=100")).json
    assert {e["id"] for e in by_design["results"]} == {e["id"] for e in about}
    assert (await admin.get(f"/api/audit-logs/?design={design['id']}")).json["count"] == 0

    # Reclassifying rewrote only labels outside the hashed content: the chain is intact.
    assert await audit.verify_chain(db) == (True, None)
    staff = await world.staff_principal()
    token = (await world.services.identity.open_session(staff.user, device="t", ip=None))["access_token"]
    assert (await api.as_token(token).get("/api/audit-logs/verify/")).json["intact"] is True

    lowered = await owner.patch(f"/api/designs/{design['id']}/", {"classification": "UNCLASSIFIED"})
    assert lowered.status == 200, lowered.body
    back = await _every_read(admin, about)
    assert "XJ9 crack at the fillet" in back and "XJ9 second look" in back and "xj9-blade" in back
    assert await audit.verify_chain(db) == (True, None)


@pytest.mark.gen_test(timeout=60)
async def test_entries_written_before_labels_take_their_designs_label(world: World, db: Any) -> None:
    """Entries from before labels existed (no `label`, no `design_id`) get both at start-up from the resource
    they are about, so the rule above covers the existing trail too."""
    _, p, series_id = await review_team(world)
    design = await ready_design(db, p["author"], series_id)
    review = await open_review(p["author"], design["_id"], [p["r1"], p["r2"]])
    made = await p["r1"].api.post("/api/markups/", {"review_session": review["id"], "annotation_text": "x", **MARKUP})
    assert made.status == 201
    # As an older server left them: the design raised since, its entries still saying UNCLASSIFIED.
    await db.audit_log.update_many({}, {"$unset": {"label": "", "design_id": ""}})
    await db.meta.delete_one({"_id": audit.LABELS_MARKER})  # as on the first start after the upgrade
    await db.designs.update_one({"_id": design["_id"]}, {"$set": {"classification": "SECRET"}})
    assert await audit.label_legacy_entries(db) > 0
    for kind, rid in (("DesignAsset", design["_id"]), ("ReviewSession", review["id"]), ("Markup", made.json["id"])):
        entry = await db.audit_log.find_one({"resource_type": kind, "resource_id": str(rid)})
        assert entry["design_id"] == design["_id"] and entry["label"] == "SECRET", entry
    assert await db.audit_log.count_documents({"label": {"$exists": False}}) == 0
    assert await audit.label_legacy_entries(db) == 0  # done once; later start-ups skip the scan
    assert await audit.verify_chain(db) == (True, None)


@pytest.mark.gen_test(timeout=60)
async def test_csv_export_neutralizes_formulas(world: World) -> None:
    """Issue 10 #13: a material named =HYPERLINK(...) reaches the export as text, not as a formula."""
    org, people, _ = await team(world)
    name = '=HYPERLINK("http://evil.example/x","Open")'
    made = await people["admin"].api.post(
        "/api/materials/", {"organization": org["_id"], "name": name, "density_kg_m3": 1000.0}
    )
    assert made.status == 201, made.body
    exported = await people["owner"].api.get("/api/audit-logs/export/?format=csv")
    rows = list(csv.reader(io.StringIO(exported.body.decode())))
    cells = [cell for row in rows[1:] for cell in row]
    assert [c for c in cells if c.startswith("'=HYPERLINK(")], "the material's entry is not in the export"
    assert not [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")]
    # The JSON export keeps the value as it is: there it is data, not a cell.
    entries = (await people["owner"].api.get("/api/audit-logs/export/?format=json")).json
    assert any(e["resource_id"] == name for e in entries)


@pytest.mark.gen_test
async def test_entry_fields_are_bounded(db: Any) -> None:
    """Issue 10 #14: whatever a caller sends, an entry stays small: strings, lists and nesting in changes, and
    the user agent, are cut to known bounds."""
    actor = audit.Actor(1, "u" * 10_000, "1.2.3.4", "agent/" + "x" * 100_000)
    nested: dict[str, Any] = {"leaf": "y" * 50_000}
    for _ in range(20):
        nested = {"deeper": nested}
    entry = await audit.record(
        db,
        actor,
        "UPDATE",
        "Thing",
        "z" * 10_000,
        changes={"text": "t" * 1_000_000, "many": list(range(100_000)), "nested": nested, "k" * 5000: 1},
    )
    stored = await db.audit_log.find_one({"_id": entry["_id"]})
    assert len(json.dumps(stored, default=str)) < 20_000
    assert len(stored["user_agent"]) <= 512 and len(stored["resource_id"]) <= 200
    assert len(stored["changes"]["text"]) <= audit.MAX_TEXT and len(stored["changes"]["many"]) <= audit.MAX_ITEMS + 1
    assert await audit.verify_chain(db) == (True, None)


@pytest.mark.gen_test(timeout=90)
async def test_search_finds_what_an_entry_changed_within_what_the_caller_may_see(world: World, db: Any) -> None:
    """Issue 20: the reference's own example (`?q=turbine&resource_type=DesignAsset`) finds the CREATE whose changes
    hold `filename: turbine_blade_v3...`; a design above the searcher's clearance keeps its filename out of their
    results and count, and a reclassification moves it in or out at once."""
    _, people, series_id = await team(world)
    data = cad("wire.brep")
    shown = await upload(people["member"], series_id, "turbine_blade_v3.brep", data)
    hidden = await upload(people["owner"], series_id, "turbine_core_xq.brep", data, classification="TOP_SECRET")
    admin, owner = people["admin"].api, people["owner"].api  # the ADMIN is cleared for SECRET, the OWNER for all

    found = await admin.get("/api/audit-logs/search/?q=turbine&resource_type=DesignAsset")
    assert found.status == 200, found.body
    assert [(e["action"], e["resource_id"]) for e in found.json["results"]] == [("CREATE", shown["id"])]
    assert found.json["count"] == 1 and found.json["results"][0]["changes"]["filename"] == "turbine_blade_v3.brep"
    assert "turbine_core_xq" not in found.body.decode() and hidden["id"] not in found.body.decode()
    assert (await admin.get("/api/audit-logs/?search=core_xq")).json["count"] == 0
    assert (await admin.get("/api/audit-logs/search/?q=TURBINE_BLADE")).json["count"] == 1  # any case
    everything = (await owner.get("/api/audit-logs/search/?q=turbine&resource_type=DesignAsset")).json
    assert {e["resource_id"] for e in everything["results"]} == {shown["id"], hidden["id"]}
    # A regex is text here, not a pattern.
    assert (await owner.get("/api/audit-logs/search/?q=turbine.*v3")).json["count"] == 0

    lowered = await owner.patch(f"/api/designs/{hidden['id']}/", {"classification": "UNCLASSIFIED"})
    assert lowered.status == 200, lowered.body
    assert (await admin.get("/api/audit-logs/search/?q=core_xq&resource_type=DesignAsset")).json["count"] >= 1
    raised = await owner.patch(f"/api/designs/{shown['id']}/", {"classification": "TOP_SECRET"})
    assert raised.status == 200, raised.body
    gone = await admin.get("/api/audit-logs/search/?q=turbine_blade")
    assert gone.json["count"] == 0 and "turbine_blade" not in gone.body.decode()
    # The searchable text sits outside the hashed content: the chain still verifies.
    assert await audit.verify_chain(db) == (True, None)


@pytest.mark.gen_test(timeout=60)
async def test_entries_written_before_search_text_get_it_once(db: Any) -> None:
    await audit.record(db, audit.Actor(1, "t"), "CREATE", "DesignAsset", "d1", changes={"filename": "impeller.step"})
    await db.audit_log.update_many({}, {"$unset": {"search_text": ""}})
    await db.meta.delete_one({"_id": audit.SEARCH_TEXT_MARKER})  # as on the first start after the upgrade
    assert await audit.index_legacy_entries(db) == 1
    assert (await db.audit_log.find_one({"resource_id": "d1"}))["search_text"] == "impeller.step"
    assert await audit.index_legacy_entries(db) == 0
    assert await audit.verify_chain(db) == (True, None)
    # Bounded whatever the changes hold.
    many = {f"k{i}": "x" * 900 for i in range(50)}
    entry = await audit.record(db, audit.Actor(1, "t"), "UPDATE", "DesignAsset", "d1", changes=many)
    assert len(entry["search_text"]) == audit.MAX_SEARCH_TEXT


@pytest.mark.gen_test(timeout=90)
async def test_votes_are_recorded_as_approve_and_reject_and_the_vocabulary_is_closed(world: World, db: Any) -> None:
    """Issue 20: `?action=APPROVE` finds an approval (it was recorded as VOTE), REJECT a rejection, each with the
    vote in `changes`; an action outside the documented vocabulary is refused as a filter and as an entry."""
    _, p, series_id = await review_team(world)
    design = await ready_design(db, p["author"], series_id)
    review = await open_review(p["author"], design["_id"], [p["r1"], p["r2"]], decision_rule="ALL")
    assert (await p["r1"].api.post(f"/api/reviews/{review['id']}/approve/", {"comments": "fine"})).status == 200
    rejected = await p["r2"].api.post(f"/api/reviews/{review['id']}/reject/", {"reason": "OTHER", "comments": "no"})
    assert rejected.status == 200, rejected.body
    owner = p["owner"].api
    approvals = (await owner.get(f"/api/audit-logs/?action=APPROVE&design={design['_id']}")).json["results"]
    assert [(e["actor_id"], e["resource_type"], e["action_display"]) for e in approvals] == [
        (p["r1"].id, "ReviewSession", "Approve")
    ]
    assert approvals[0]["changes"]["decision"] == "APPROVE" and approvals[0]["changes"]["comments"] == "fine"
    rejections = (await owner.get("/api/audit-logs/?action=REJECT&resource_type=ReviewSession")).json["results"]
    assert [(e["actor_id"], e["changes"]["reason"]) for e in rejections] == [(p["r2"].id, "OTHER")]
    assert (await owner.get("/api/audit-logs/?action=VOTE")).json["count"] == 0  # documented, for older entries

    for bad in ("approve", "MAYBE", "VOTES"):
        body = assert_envelope(await owner.get(f"/api/audit-logs/?action={bad}"), 400, "VALIDATION_ERROR")
        assert "APPROVE" in body["field_errors"]["action"][0]
    before = await db.audit_log.count_documents({})
    with pytest.raises(ValueError):
        await audit.record(db, audit.Actor(1, "t"), "FROBNICATE", "DesignAsset", "x")
    assert await db.audit_log.count_documents({}) == before
