"""Revisions that explain themselves: compare, geometric diff, markups carried to the next version, review gates on
property deltas, the review's replay and its BCF export, on the generated assembly and its revision B."""

from __future__ import annotations

import asyncio
import math
import zipfile
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from OCP.Bnd import Bnd_Box
from OCP.BRepBndLib import BRepBndLib

from processing.cad import parse_scene
from processing.geodiff import geometric_diff
from processing.viewable import ScenePart, _faces
from tests import cad_fixtures
from tests.cad_fixtures import FILES, HOLE_VOLUME, NUT, nut_volume
from tests.helpers import (
    RUNNING,
    Caller,
    World,
    assert_envelope,
    cad,
    open_review,
    read_glb,
    ready_design,
    review_team,
    upload,
    wait_job,
)
from tests.realtime.client import Client

A, B = "assembly.step", "assembly-b.step"
MATERIAL = "Aluminium 6061-T6"  # 2700 kg/m³
ROD = "demo-assembly/rod-assembly/rod"
ROD_NUT = "demo-assembly/rod-assembly/nut"


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return dict(RUNNING)


# Tests that set designs READY by hand (tests.helpers.ready_design) run no workers: an analysis would race them.
NO_WORKERS = pytest.mark.parametrize("settings_overrides", [{}])


async def analysed(caller: Caller, series_id: str, name: str, **fields: Any) -> dict[str, Any]:
    """A generated file uploaded and analysed by the real workers; the design as the API renders it then."""
    design = await upload(caller, series_id, name, cad(name), **fields)
    job = await wait_job(caller.api, design["finalize"]["analysis_job_id"], timeout=120)
    assert job["status"] == "SUCCESS", job
    resp = await caller.api.get(f"/api/designs/{design['id']}/")
    assert resp.status == 200 and resp.json["status"] == "READY", resp.body
    return resp.json  # type: ignore[no-any-return]


def rows_of(scene: ScenePart) -> dict[str, ScenePart]:
    out = {scene.path: scene}
    for child, _ in scene.children:
        out.update(rows_of(child))
    return out


def face_at_height(name: str, path: str, z: float) -> int:
    """The viewer's index of the face of BOM row `path` (in its own frame) lying flat at height `z`."""
    _, _, scene = parse_scene(str(cad_fixtures.files().path(name)))
    faces = _faces(rows_of(scene)[path].shape)
    for i in range(faces.Extent()):
        box = Bnd_Box()
        BRepBndLib.Add_s(faces.FindKey(i + 1), box, False)
        if abs(box.CornerMin().Z() - z) < 1e-6 and abs(box.CornerMax().Z() - z) < 1e-6:
            return i
    raise AssertionError(f"no face at z={z} in {path}")


async def node_id(caller: Caller, design_id: str, path: str) -> int:
    resp = await caller.api.get(f"/api/bom-nodes/?design_asset={design_id}&page_size=100")
    return next(n["id"] for n in resp.json["results"] if n["path"] == path)


# ---------------------------------------------------------------- compare


@pytest.mark.gen_test(timeout=300)
async def test_compare_reports_exactly_the_changes_of_revision_b(world: World) -> None:
    """A hole in the plate, the rod removed, a third nut on the rod assembly: the BOM diff lists exactly the rod as
    removed and that nut row's quantity 2 -> 3; volume, area, mass, faces and the bounding box change by their
    analytic amounts, each with its absolute and relative change; nothing else is reported."""
    org, p, series_id = await review_team(world)
    a = await analysed(p["author"], series_id, A, material=MATERIAL)
    b = await analysed(p["author"], series_id, B, material=MATERIAL)
    resp = await p["r1"].api.get(f"/api/designs/{a['id']}/compare/?to={b['id']}")
    assert resp.status == 200, resp.body
    body = resp.json
    assert body["from"]["id"] == a["id"] and body["to"]["id"] == b["id"]
    bom = body["bom"]
    assert bom["counts"] == {"added": 0, "removed": 1, "quantity_changed": 1, "unchanged": 8}, bom["counts"]
    assert bom["added"] == []
    (removed,) = bom["removed"]
    assert (removed["name_path"], removed["part_number"], removed["quantity"]) == (ROD, "RD-8-100", 1)
    assert removed["bom_node"] == await node_id(p["r1"], a["id"], removed["path"])
    (changed,) = bom["quantity_changed"]
    assert (changed["name_path"], changed["part_number"]) == (ROD_NUT, "NT-M6")
    assert changed["quantity"] == {"from": 2, "to": 3, "absolute": 1, "relative": 0.5}
    assert changed["from"]["path"] == "0001.0003.0002" and changed["to"]["path"] == "0001.0003.0001"

    props = body["properties"]
    va, vb = FILES[A].volume_mm3, FILES[B].volume_mm3
    assert props["volume_mm3"]["from"] == pytest.approx(va, rel=1e-6)
    assert props["volume_mm3"]["absolute"] == pytest.approx(vb - va, rel=1e-6)
    assert props["volume_mm3"]["relative"] == pytest.approx((vb - va) / va, rel=1e-6)
    sa, sb = FILES[A].surface_area_mm2, FILES[B].surface_area_mm2
    assert props["surface_area_mm2"]["absolute"] == pytest.approx(sb - sa, rel=1e-6)
    # Mass follows the volume at the material's density: the same relative change.
    assert props["mass_kg"]["relative"] == pytest.approx((vb - va) / va, rel=1e-6)
    assert props["mass_kg"]["absolute"] == pytest.approx((vb - va) * 1e-9 * 2700, rel=1e-6)
    assert props["topology"]["faces"]["absolute"] == FILES[B].faces - FILES[A].faces == 7
    assert props["topology"]["solids"]["absolute"] == 0
    # The rod's top (z 106) was the highest point; in B the top nut (5 mm high, placed at z 91) ends at z 96.
    assert props["bounding_box"]["size"]["z"]["absolute"] == pytest.approx(-10.0, abs=1e-3)
    assert props["bounding_box"]["size"]["x"]["absolute"] == pytest.approx(0.0, abs=1e-6)
    shift = math.dist(*(tuple(d["center_of_mass"][k] for k in "xyz") for d in (a, b)))
    assert props["center_of_mass"]["shift_mm"] == pytest.approx(shift, rel=1e-9) and shift > 0.1
    assert props["validity"]["errors"]["appeared"] == [] and props["validity"]["errors"]["disappeared"] == []
    assert body["digest"].startswith("sha256:") and len(body["digest"]) == 71
    assert body["geometric_diff"]["status"] == "NOT_STARTED"

    # The other way round, the rod is added and the nut row goes from 3 to 2.
    back = (await p["r1"].api.get(f"/api/designs/{b['id']}/compare/?to={a['id']}")).json["bom"]
    assert [r["name_path"] for r in back["added"]] == [ROD] and back["removed"] == []
    assert back["quantity_changed"][0]["quantity"]["absolute"] == -1

    # Bad requests: no `to`, a malformed one, the same version, another series.
    assert_envelope(await p["r1"].api.get(f"/api/designs/{a['id']}/compare/"), 400, "VALIDATION_ERROR")
    assert_envelope(await p["r1"].api.get(f"/api/designs/{a['id']}/compare/?to=x"), 400, "VALIDATION_ERROR")
    assert_envelope(await p["r1"].api.get(f"/api/designs/{a['id']}/compare/?to={a['id']}"), 400, "VALIDATION_ERROR")
    other = await p["author"].api.post("/api/series/", {"organization": org["_id"], "part_number": "X-2", "name": "x"})
    c = await upload(p["author"], other.json["id"], "box.step", cad("box.step"))
    body = assert_envelope(
        await p["r1"].api.get(f"/api/designs/{a['id']}/compare/?to={c['id']}"), 400, "VALIDATION_ERROR"
    )
    assert "to" in body["field_errors"]
    # Another organization's member sees neither version: 404, as for the design itself.
    assert_envelope(
        await p["outsider"].api.get(f"/api/designs/{a['id']}/compare/?to={b['id']}"), 404, "RESOURCE_NOT_FOUND"
    )


# ---------------------------------------------------------------- geometric diff


@pytest.mark.gen_test(timeout=300)
async def test_geometric_diff_job_volumes_and_glb(world: World, db: Any, services: Any) -> None:
    """The diff runs as a GEOMETRIC_DIFF job: 202 with the job while it computes, then the GLB with `added` and
    `removed` nodes; the plate's removed material is the hole's analytic volume within 1e-6, the rod-assembly
    nut row gained exactly one nut, the rod is removed whole; fetching the GLB is audited like a download."""
    org, p, series_id = await review_team(world)
    a = await analysed(p["author"], series_id, A)
    b = await analysed(p["author"], series_id, B)
    url = f"/api/designs/{a['id']}/compare/{b['id']}/viewable/"
    first = await p["r1"].api.get(url)
    assert first.status == 202, first.body
    assert first.json["job_type"] == "GEOMETRIC_DIFF" and first.headers["Location"].startswith("/api/analysis-jobs/")
    again = await p["r2"].api.get(url)  # a second request joins the same job
    assert again.status == 202 and again.json["job_id"] == first.json["job_id"]
    job = await wait_job(p["r1"].api, first.json["job_id"], timeout=120)
    assert job["status"] == "SUCCESS" and job["progress"]["percent"] == 100, job
    assert job["result"]["removed_volume_mm3"] == pytest.approx(HOLE_VOLUME, rel=1e-6)

    glb = await p["r1"].api.get(url)
    assert glb.status == 200 and glb.headers["Content-Type"] == "model/gltf-binary"
    doc, _ = read_glb(glb.body)
    named = {n["name"]: n for n in doc["nodes"]}
    assert {"added", "removed"} <= set(named)
    removed_parts = {doc["nodes"][i]["name"] for i in named["removed"].get("children", [])}
    added_parts = {doc["nodes"][i]["name"] for i in named["added"].get("children", [])}
    assert removed_parts == {"base-plate", "rod"} and added_parts == {"nut"}
    cached = await p["r1"].api.get(url, headers={"If-None-Match": glb.headers["ETag"]})
    assert cached.status == 304

    result = (await p["r1"].api.get(f"/api/designs/{a['id']}/compare/?to={b['id']}")).json["geometric_diff"]
    assert result["status"] == "SUCCESS"
    parts = {part["name_path"]: part for part in result["result"]["parts"]}
    plate = parts["demo-assembly/base-plate"]
    assert plate["status"] == "compared" and plate["added_volume_mm3"] == 0.0
    assert abs(plate["removed_volume_mm3"] - HOLE_VOLUME) <= 1e-6 * HOLE_VOLUME, (plate, HOLE_VOLUME)
    nut = parts[ROD_NUT]
    assert nut["instances"] == {"from": 2, "to": 3}
    assert nut["added_volume_mm3"] == pytest.approx(nut_volume(*NUT), rel=1e-6) and nut["removed_volume_mm3"] == 0.0
    assert {k: v["status"] for k, v in parts.items() if k not in ("demo-assembly/base-plate", ROD_NUT)} == {
        "demo-assembly/bracket-assembly/bracket": "identical",
        "demo-assembly/bracket-assembly/bolt-assembly/bolt": "identical",
        "demo-assembly/bracket-assembly/bolt-assembly/nut": "identical",
    }
    (rod,) = result["result"]["unmatched"]["removed"]
    assert rod["name_path"] == ROD and rod["volume_mm3"] == pytest.approx(math.pi * 16 * 100, rel=1e-6)
    downloads = [
        e async for e in db.audit_log.find({"action": "DOWNLOAD", "design_id": a["id"], "changes.artifact": "diff"})
    ]
    assert len(downloads) == 2 and downloads[0]["changes"]["other_design_id"] == b["id"]
    # A VIEWER reads the stored diff like any other reader of both versions.
    assert (await p["viewer"].api.get(url)).status == 200
    # Deleting a version takes its diff with it, and the diff GLB's content reference: the bytes are gone.
    sha = glb.headers["ETag"].strip('"')
    assert await services.storage.exists(sha)
    assert (await p["author"].api.delete(f"/api/designs/{b['id']}/")).status == 204
    assert await db.revision_diffs.count_documents({}) == 0
    assert not await services.storage.exists(sha)


def test_a_part_over_its_time_budget_is_reported_too_complex(tmp_path: Path) -> None:
    """A part whose boolean cuts do not finish within the per-part budget is reported `too_complex` (its child
    process killed), not failed silently, and the parts that did finish are still reported."""
    files = cad_fixtures.files()
    result = geometric_diff(
        str(files.path(A)), "STEP", str(files.path(B)), "STEP", str(tmp_path / "d.glb"), part_seconds=1e-4
    )
    statuses = {p["name_path"]: p["status"] for p in result["parts"]}
    assert statuses["demo-assembly/base-plate"] == "too_complex" and statuses[ROD_NUT] == "too_complex"
    plate = next(p for p in result["parts"] if p["part_name"] == "base-plate")
    assert plate["removed_volume_mm3"] is None and "did not finish within" in plate["message"]
    assert result["totals"]["too_complex"] == 2 and result["totals"]["removed_volume_mm3"] is None
    assert statuses["demo-assembly/bracket-assembly/bracket"] == "identical"
    assert (tmp_path / "d.glb").stat().st_size > 0
    generous = geometric_diff(str(files.path(A)), "STEP", str(files.path(B)), "STEP", str(tmp_path / "e.glb"))
    assert generous["totals"]["too_complex"] == 0 and generous["totals"]["removed_volume_mm3"] == pytest.approx(
        HOLE_VOLUME, rel=1e-9
    )


@pytest.mark.gen_test(timeout=300)
async def test_a_crashing_diff_worker_is_retried_then_failed(world: World, services: Any, monkeypatch: Any) -> None:
    """Crash safety as for analysis: a worker that dies on the diff is replaced, the job retried and finally
    failed with the cause; the server keeps serving and both designs keep their status."""
    import processing.runner as runner_module
    from processing.runner import WorkerCall

    org, p, series_id = await review_team(world)
    a = await analysed(p["author"], series_id, A)
    b = await analysed(p["author"], series_id, B)
    monkeypatch.setattr(
        runner_module, "revision_call", lambda *a, **k: WorkerCall("tests.processing.workers:segfault", progress=False)
    )
    resp = await p["r1"].api.get(f"/api/designs/{a['id']}/compare/{b['id']}/viewable/")
    job = await wait_job(p["r1"].api, resp.json["job_id"], timeout=120)
    assert job["status"] == "FAILURE" and job["retry_count"] == 2, job
    assert "crashed" in job["error_message"], job
    assert (await p["r1"].api.get(f"/api/designs/{a['id']}/")).json["status"] == "READY"
    again = await p["r1"].api.get(f"/api/designs/{a['id']}/compare/{b['id']}/viewable/")
    assert_envelope(again, 409, "DIFF_FAILED")


# ---------------------------------------------------------------- markups follow revisions


@pytest.mark.gen_test(timeout=300)
async def test_open_markups_follow_the_next_version(world: World, db: Any) -> None:
    """When revision B is analysed, the open markups of A's latest review are re-anchored on it: the one on the
    bracket's top face (which still exists) carries with moved false and its face followed; the one on the rod is
    orphaned. A review on B started with carry_markups copies them with their threads, linked to the originals."""
    org, p, series_id = await review_team(world)
    a = await analysed(p["author"], series_id, A)
    review = await open_review(p["author"], a["id"], [p["r1"], p["r2"]])
    bracket_node = await node_id(p["r1"], a["id"], "0001.0002.0001")
    rod_node = await node_id(p["r1"], a["id"], "0001.0003.0001")
    top = face_at_height(A, "0001.0002.0001", 5.0)
    camera = {"position": {"x": 200, "y": -150, "z": 180}, "target": {"x": 30, "y": 25, "z": 11}, "fov": 45}
    on_bracket = await p["r1"].api.post(
        "/api/markups/",
        {
            "review_session": review["id"],
            # The first bracket sits at (10, 10, 6); its top face is at z 11. A pick lies on the mesh, 0.0004 off.
            "position": {"x": 30.0, "y": 25.0, "z": 11.0004},
            "bom_node": bracket_node,
            "face_index": top,
            "camera": camera,
            "annotation_text": "Chamfer this edge",
            "severity": "MAJOR",
        },
    )
    assert on_bracket.status == 201, on_bracket.body
    on_rod = await p["r2"].api.post(
        "/api/markups/",
        {
            "review_session": review["id"],
            "position": {"x": 64.0, "y": 60.0, "z": 56.0},
            "bom_node": rod_node,
            "annotation_text": "Rod too slender",
        },
    )
    closed = await p["r2"].api.post(
        "/api/markups/", {"review_session": review["id"], "position": {"x": 1, "y": 1, "z": 6}, "annotation_text": "ok"}
    )
    reply = await p["r2"].api.post(f"/api/markups/{on_bracket.json['id']}/replies/", {"text": "Agreed, 1 mm"})
    assert reply.status == 201
    assert (await p["r1"].api.post(f"/api/markups/{closed.json['id']}/resolve/", {})).status == 200

    b = await analysed(p["author"], series_id, B)
    offer: dict[str, Any] = {}
    for _ in range(600):
        offer = (await p["r1"].api.get(f"/api/designs/{b['id']}/carried-markups/")).json
        if offer["status"] in ("READY", "FAILURE"):
            break
        await asyncio.sleep(0.1)
    assert offer["status"] == "READY", offer
    assert offer["from_design"]["id"] == a["id"] and offer["from_review"] == review["id"]
    by_id = {m["markup"]["id"]: m for m in offer["markups"]}
    assert set(by_id) == {on_bracket.json["id"], on_rod.json["id"]}  # the resolved one stays behind
    bracket = by_id[on_bracket.json["id"]]["carry"]
    assert bracket["moved"] is False and bracket["orphaned"] is False and bracket["face_followed"] is True
    assert bracket["distance_mm"] == pytest.approx(0.0, abs=1e-9)
    assert bracket["face_index"] == face_at_height(B, "0001.0002.0001", 5.0)
    assert bracket["bom_node"] == await node_id(p["r1"], b["id"], "0001.0002.0001")
    assert bracket["position"]["z"] == pytest.approx(11.0, abs=1e-9)
    rod = by_id[on_rod.json["id"]]["carry"]
    assert rod["orphaned"] is True and rod["reason"] == "part_removed" and rod["position"] is None

    started = await p["author"].api.post(
        f"/api/designs/{b['id']}/start_review/",
        {"reviewer_ids": [p["r1"].id, p["r2"].id], "carry_markups": True},
    )
    assert started.status == 201, started.body
    new_review = started.json["review_session_id"]
    carried = (await p["r1"].api.get(f"/api/markups/?review_session={new_review}")).json["results"]
    assert len(carried) == 2
    copy = next(m for m in carried if m["carried_from"]["markup_id"] == on_bracket.json["id"])
    assert copy["carried_from"]["review_id"] == review["id"] and copy["carried_from"]["design_id"] == a["id"]
    assert (
        copy["annotation_text"] == "Chamfer this edge" and copy["severity"] == "MAJOR" and copy["author"] == p["r1"].id
    )
    assert copy["carry"]["moved"] is False and copy["face_index"] == bracket["face_index"]
    assert copy["camera"]["fov"] == 45 and copy["design_asset"] == b["id"]
    thread = (await p["r1"].api.get(f"/api/markups/{copy['id']}/replies/")).json["results"]
    assert [r["text"] for r in thread] == ["Agreed, 1 mm"]
    orphan = next(m for m in carried if m["carried_from"]["markup_id"] == on_rod.json["id"])
    assert orphan["carry"]["orphaned"] is True and orphan["bom_node"] is None
    original = await db.markups.find_one({"_id": on_bracket.json["id"]})
    assert original["carried_to"][0]["markup_id"] == copy["id"]
    assert (await p["r1"].api.get(f"/api/designs/{b['id']}/carried-markups/")).json["carried_into"] == new_review
    # Naming a markup that was not offered is refused, and nothing is opened.
    c = await analysed(p["author"], series_id, B)
    resp = await p["author"].api.post(
        f"/api/designs/{c['id']}/start_review/", {"reviewer_ids": [p["r1"].id], "carry_markups": [closed.json["id"]]}
    )
    assert resp.status in (400, 409), resp.body
    assert (await p["author"].api.get(f"/api/designs/{c['id']}/")).json["status"] == "READY"


# ---------------------------------------------------------------- gates


async def rule(admin: Caller, org_id: str, **fields: Any) -> dict[str, Any]:
    resp = await admin.api.post(f"/api/organizations/{org_id}/review-rules/", fields)
    assert resp.status == 201, resp.body
    return resp.json  # type: ignore[no-any-return]


@pytest.mark.gen_test(timeout=300)
async def test_a_ten_percent_mass_change_trips_a_five_percent_rule(world: World, db: Any) -> None:
    """Rules are set by ADMIN/OWNER (audited). A version 10 % heavier than the last trips "mass over 5 % needs one
    more approver" but not a 15 % rule: the review shows which rule and why and needs two approvals under ANY;
    every vote records the file hash and the deltas digest, and a vote on other deltas is refused."""
    org, p, series_id = await review_team(world)
    body = {"name": "Mass +5 %", "metric": "mass_kg", "threshold": 5, "effect": "EXTRA_APPROVALS", "extra_approvals": 1}
    refused = await p["member"].api.post(f"/api/organizations/{org['_id']}/review-rules/", body)
    assert_envelope(refused, 403, "PERMISSION_DENIED")
    assert_envelope(
        await p["outsider"].api.post(f"/api/organizations/{org['_id']}/review-rules/", body), 404, "RESOURCE_NOT_FOUND"
    )
    bad = await p["admin"].api.post(f"/api/organizations/{org['_id']}/review-rules/", {**body, "extra_approvals": None})
    assert_envelope(bad, 400, "VALIDATION_ERROR")
    five = await rule(p["admin"], org["_id"], **body)
    fifteen = await rule(
        p["owner"], org["_id"], name="Mass +15 %", metric="mass_kg", threshold=15, effect="ADMIN_OVERRIDE"
    )
    listed = (await p["viewer"].api.get(f"/api/organizations/{org['_id']}/review-rules/")).json["results"]
    assert [r["id"] for r in listed] == [five["id"], fifteen["id"]]
    audited = [e async for e in db.audit_log.find({"resource_type": "ReviewGateRule", "action": "CREATE"})]
    assert {e["resource_id"] for e in audited} == {five["id"], fifteen["id"]}

    v1 = await analysed(p["author"], series_id, "box.step", material=MATERIAL)
    v2 = await analysed(p["author"], series_id, "box-long.step", material=MATERIAL)
    compare = (await p["r1"].api.get(f"/api/designs/{v1['id']}/compare/?to={v2['id']}")).json
    assert compare["properties"]["mass_kg"]["relative"] == pytest.approx(0.10, rel=1e-9)

    # ANY needs 1 approval; the rule adds one, so one reviewer cannot make it.
    short = await p["author"].api.post(
        f"/api/designs/{v2['id']}/start_review/", {"reviewer_ids": [p["r1"].id], "decision_rule": "ANY"}
    )
    body = assert_envelope(short, 400, "VALIDATION_ERROR")
    assert "Mass +5 %" in body["detail"] and "reviewers" in body["field_errors"]
    started = await p["author"].api.post(
        f"/api/designs/{v2['id']}/start_review/", {"reviewer_ids": [p["r1"].id, p["r2"].id], "decision_rule": "ANY"}
    )
    assert started.status == 201, started.body
    review = started.json["review"]
    gates = review["gates"]
    assert [t["name"] for t in gates["tripped"]] == ["Mass +5 %"], gates
    assert "+10.00 %" in gates["tripped"][0]["reason"] and "version 1" in gates["tripped"][0]["reason"]
    assert gates["extra_approvals"] == 1 and review["required_approvals"] == 2
    assert gates["override_required"] is False and gates["deltas_digest"] == compare["digest"]

    wrong = await p["r1"].api.post(f"/api/reviews/{review['id']}/approve/", {"deltas_digest": "sha256:" + "0" * 64})
    assert_envelope(wrong, 409, "CONFLICT")
    wrong_file = await p["r1"].api.post(f"/api/reviews/{review['id']}/approve/", {"file_hash": "sha256:" + "1" * 64})
    assert_envelope(wrong_file, 409, "CONFLICT")
    one = await p["r1"].api.post(
        f"/api/reviews/{review['id']}/approve/", {"deltas_digest": compare["digest"], "file_hash": v2["file_hash"]}
    )
    assert one.status == 200 and one.json["status"] == "IN_PROGRESS", one.body  # one approval of two
    vote = next(v for v in one.json["votes"] if v["reviewer"] == p["r1"].id)
    assert vote["file_hash"] == v2["file_hash"] and vote["deltas_digest"] == compare["digest"] and not vote["stale"]
    two = await p["r2"].api.post(f"/api/reviews/{review['id']}/approve/", {})
    assert two.json["status"] == "COMPLETED" and two.json["outcome"] == "APPROVED", two.body
    entry = await db.audit_log.find_one(
        {"resource_id": review["id"], "changes.deltas_digest": compare["digest"], "action": {"$ne": "CREATE"}}
    )
    assert entry is not None


@pytest.mark.gen_test(timeout=300)
async def test_override_and_votes_on_changed_deltas(world: World, db: Any) -> None:
    """A rule that blocks approval holds it until an ADMIN overrides (audited; a MEMBER may not). When the deltas
    change under an open review (the previous version's material), the gates are evaluated again and the votes
    cast on the old deltas stop counting: a vote never silently applies to other figures."""
    org, p, series_id = await review_team(world)
    await rule(p["admin"], org["_id"], name="Any mass change", metric="mass_kg", threshold=5, effect="ADMIN_OVERRIDE")
    await rule(
        p["admin"],
        org["_id"],
        name="Two more eyes",
        metric="volume_mm3",
        threshold=5,
        effect="EXTRA_APPROVALS",
        extra_approvals=1,
    )
    v1 = await analysed(p["author"], series_id, "box.step", material=MATERIAL)
    v2 = await analysed(p["author"], series_id, "box-long.step", material=MATERIAL)
    started = await p["author"].api.post(
        f"/api/designs/{v2['id']}/start_review/", {"reviewer_ids": [p["r1"].id, p["r2"].id], "decision_rule": "ANY"}
    )
    review = started.json["review"]
    assert review["gates"]["override_required"] is True and review["required_approvals"] == 2
    first = await p["r1"].api.post(f"/api/reviews/{review['id']}/approve/", {})
    assert first.json["tally"]["approved"] == 1
    # The previous version's material changes: the mass delta (and its digest) with it; the volume does not.
    patched = await p["admin"].api.patch(f"/api/designs/{v1['id']}/", {"material": "Ti-6Al-4V"})
    assert patched.status == 200, patched.body
    second = await p["r2"].api.post(f"/api/reviews/{review['id']}/approve/", {})
    assert second.status == 200, second.body
    votes = {v["reviewer"]: v for v in second.json["votes"]}
    assert votes[p["r1"].id]["stale"] is True and votes[p["r2"].id]["stale"] is False
    assert second.json["tally"]["approved"] == 1 and second.json["status"] == "IN_PROGRESS"
    assert second.json["gates"]["deltas_digest"] != review["gates"]["deltas_digest"]
    again = await p["r1"].api.post(f"/api/reviews/{review['id']}/approve/", {})
    assert again.json["tally"]["approved"] == 2 and again.json["status"] == "IN_PROGRESS"
    assert again.json["gates"]["awaiting_override"] is True  # approvals met, approval held
    refused = await p["member"].api.post(f"/api/reviews/{review['id']}/override/", {"reason": "fine"})
    assert_envelope(refused, 403, "PERMISSION_DENIED")
    done = await p["admin"].api.post(f"/api/reviews/{review['id']}/override/", {"reason": "Material change agreed"})
    assert done.status == 200 and done.json["outcome"] == "APPROVED", done.body
    assert done.json["gates"]["override"]["username"] == "admin"
    entry = await db.audit_log.find_one({"action": "OVERRIDE", "resource_id": review["id"]})
    assert entry["changes"]["reason"] == "Material change agreed" and entry["changes"]["rules"] == ["Any mass change"]


# ---------------------------------------------------------------- replay and export


@NO_WORKERS
@pytest.mark.gen_test(timeout=120)
async def test_timeline_replays_the_review(world: World, db: Any, base_url: str) -> None:
    """Markups and their edits, replies, votes and who joined (first join per user, kept durably), in order."""
    org, p, series_id = await review_team(world)
    design = await ready_design(db, p["author"], series_id)
    review = await open_review(p["author"], design["_id"], [p["r1"], p["r2"]])
    url = base_url.replace("http://", "ws://") + "/ws/"
    for _ in range(2):  # joining twice is one join
        client = await Client.connect(url, token=p["r1"].token)
        await client.ok("subscribe", channel=f"review:{review['id']}")
        client.close()
    m = await p["r1"].api.post(
        "/api/markups/", {"review_session": review["id"], "position": {"x": 1, "y": 2, "z": 3}, "annotation_text": "A"}
    )
    mid = m.json["id"]
    assert (await p["r1"].api.patch(f"/api/markups/{mid}/", {"annotation_text": "A, edited"})).status == 200
    assert (await p["r2"].api.post(f"/api/markups/{mid}/replies/", {"text": "Seen"})).status == 201
    gone = await p["r2"].api.post(
        "/api/markups/", {"review_session": review["id"], "position": {"x": 0, "y": 0, "z": 0}, "annotation_text": "B"}
    )
    assert (await p["r2"].api.delete(f"/api/markups/{gone.json['id']}/")).status == 204
    assert (await p["r1"].api.post(f"/api/reviews/{review['id']}/approve/", {})).status == 200
    assert (await p["r2"].api.post(f"/api/reviews/{review['id']}/approve/", {})).status == 200

    resp = await p["viewer"].api.get(f"/api/reviews/{review['id']}/timeline/")
    assert resp.status == 200, resp.body
    events = resp.json["results"]
    kinds = [(e["type"], e["actor"]["username"]) for e in events]
    assert kinds == [
        ("review.created", "author"),
        ("joined", "r1"),
        ("markup.created", "r1"),
        ("markup.updated", "r1"),
        ("markup.reply", "r2"),
        ("markup.created", "r2"),
        ("markup.deleted", "r2"),
        ("vote", "r1"),
        ("vote", "r2"),
        ("review.completed", "r2"),
    ], kinds
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    assert events[4]["markup_id"] == mid and events[4]["data"]["text"] == "Seen"
    assert "ip_address" not in str(events) and "user_agent" not in str(events)
    assert [j["username"] for j in resp.json["joined"]] == ["r1"]
    page = (await p["viewer"].api.get(f"/api/reviews/{review['id']}/timeline/?limit=3")).json
    assert [e["type"] for e in page["results"]] == ["review.created", "joined", "markup.created"]
    rest = (await p["viewer"].api.get(f"/api/reviews/{review['id']}/timeline/?after={page['next_after']}")).json
    assert [e["seq"] for e in page["results"] + rest["results"]] == [e["seq"] for e in events]
    assert_envelope(
        await p["viewer"].api.get(f"/api/reviews/{review['id']}/timeline/?limit=0"), 400, "VALIDATION_ERROR"
    )
    assert_envelope(await p["outsider"].api.get(f"/api/reviews/{review['id']}/timeline/"), 404, "RESOURCE_NOT_FOUND")


@NO_WORKERS
@pytest.mark.gen_test(timeout=120)
async def test_bcf_archive_reads_back_with_bcf_client(world: World, db: Any, tmp_path: Path) -> None:
    """The review's markups as BCF 3.0, read by the IfcOpenShell project's bcf-client: one topic per markup with
    its title, description, priority, status and author, every reply as a comment, each camera (in metres) and
    the BOM node as a component; the download is audited."""
    from bcf.bcfxml import load

    org, p, series_id = await review_team(world)
    design = await ready_design(db, p["author"], series_id)
    node = await p["author"].api.post("/api/bom-nodes/", {"design_asset": design["_id"], "part_name": "bracket"})
    assert node.status == 201, node.body
    review = await open_review(p["author"], design["_id"], [p["r1"], p["r2"]])
    perspective = {"position": {"x": 1000, "y": -500, "z": 800}, "target": {"x": 0, "y": 0, "z": 0}, "fov": 50}
    first = await p["r1"].api.post(
        "/api/markups/",
        {
            "review_session": review["id"],
            "position": {"x": 0, "y": 0, "z": 0},
            "camera": perspective,
            "bom_node": node.json["id"],
            "annotation_text": "Fillet radius too small\nSee drawing 12",
            "severity": "CRITICAL",
        },
    )
    assert first.status == 201, first.body
    ortho = {
        "position": {"x": 0, "y": 0, "z": 500},
        "target": {"x": 0, "y": 0, "z": 0},
        "up": {"x": 0, "y": 1, "z": 0},
        "orthographic_scale": 250,
    }
    second = await p["r2"].api.post(
        "/api/markups/",
        {
            "review_session": review["id"],
            "position": {"x": 5, "y": 5, "z": 0},
            "camera": ortho,
            "annotation_text": "Hole",
        },
    )
    for who, text in ((p["r2"], "Agreed"), (p["r1"], "Will fix in rev C")):
        assert (await who.api.post(f"/api/markups/{first.json['id']}/replies/", {"text": text})).status == 201
    await p["r1"].api.post(f"/api/markups/{second.json['id']}/resolve/", {"resolution_notes": "Moved the hole"})

    resp = await p["viewer"].api.get(f"/api/reviews/{review['id']}/bcf/")
    assert resp.status == 200, resp.body
    assert (
        resp.headers["Content-Disposition"].startswith("attachment; filename=")
        and ".bcf" in resp.headers["Content-Disposition"]
    )
    path = tmp_path / "review.bcf"
    path.write_bytes(resp.body)
    assert zipfile.ZipFile(BytesIO(resp.body)).testzip() is None
    bcf = load(path)
    assert bcf.version.version_id == "3.0"
    topics = {t.topic.server_assigned_id: t for t in bcf.topics.values()}
    assert set(topics) == {str(first.json["id"]), str(second.json["id"])}
    one = topics[str(first.json["id"])]
    assert one.topic.title == "Fillet radius too small See drawing 12"
    assert one.topic.description == "Fillet radius too small\nSee drawing 12"
    assert one.topic.priority == "Critical" and one.topic.topic_status == "Open" and one.topic.creation_author == "r1"
    assert [(c.author, c.comment) for c in one.comments] == [("r2", "Agreed"), ("r1", "Will fix in rev C")]
    (vp,) = one.viewpoints.values()
    camera = vp.visualization_info.perspective_camera
    assert (camera.camera_view_point.x, camera.camera_view_point.y, camera.camera_view_point.z) == (1.0, -0.5, 0.8)
    norm = math.dist((0, 0, 0), (1000, -500, 800))
    assert camera.camera_direction.x == pytest.approx(-1000 / norm) and camera.field_of_view == 50
    (component,) = vp.visualization_info.components.selection.component
    assert (
        component.authoring_tool_id.endswith(f"/bom/{node.json['id']}/{node.json['path']}")
        and len(component.ifc_guid) == 22
    )
    assert all(c.viewpoint.guid == vp.guid for c in one.comments)
    two = topics[str(second.json["id"])]
    assert two.topic.topic_status == "Resolved" and [c.comment for c in two.comments] == ["Moved the hole"]
    (vp2,) = two.viewpoints.values()
    ortho_cam = vp2.visualization_info.orthogonal_camera
    assert ortho_cam.view_to_world_scale == pytest.approx(0.25) and ortho_cam.camera_up_vector.y == 1.0
    entry = await db.audit_log.find_one({"action": "DOWNLOAD", "changes.artifact": "bcf"})
    assert (
        entry["actor_username"] == "viewer" and entry["changes"]["topics"] == 2 and entry["design_id"] == design["_id"]
    )


# ---------------------------------------------------------------- the policy


@NO_WORKERS
@pytest.mark.gen_test(timeout=120)
async def test_a_non_us_user_gets_no_compare_diff_or_bcf_of_an_itar_design(world: World, db: Any) -> None:
    """ITAR versions: the foreign member gets 403 ITAR_VIOLATION from compare, the diff GLB, the carried markups,
    the timeline and the BCF export; another organization's user 404; a US member passes the policy."""
    org, p, series_id = await review_team(world)
    one = await ready_design(db, p["author"], series_id, "ITAR")
    two = await ready_design(db, p["author"], series_id, "ITAR")
    review = await open_review(p["author"], two["_id"], [p["r1"]])
    paths = [
        f"/api/designs/{one['_id']}/compare/?to={two['_id']}",
        f"/api/designs/{one['_id']}/compare/{two['_id']}/viewable/",
        f"/api/designs/{two['_id']}/carried-markups/",
        f"/api/reviews/{review['id']}/timeline/",
        f"/api/reviews/{review['id']}/bcf/",
    ]
    for path in paths:
        assert_envelope(await p["foreign"].api.get(path), 403, "ITAR_VIOLATION")
        assert_envelope(await p["outsider"].api.get(path), 404, "RESOURCE_NOT_FOUND")
    # A compare against an unclassified version still refuses: both versions pass the policy or nothing does.
    plain = await ready_design(db, p["author"], series_id)
    assert_envelope(
        await p["foreign"].api.get(f"/api/designs/{plain['_id']}/compare/?to={two['_id']}"), 403, "ITAR_VIOLATION"
    )
    assert (await p["r1"].api.get(paths[3])).status == 200
    assert (await p["r1"].api.get(paths[4])).status == 200
    assert not await db.audit_log.count_documents({"actor_username": "foreign", "action": "DOWNLOAD"})
