"""The viewer's GLB: its nodes are the BOM's occurrences, its mesh respects the budget, and the endpoint the policy."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import pytest

from processing.cad import analyze_file, tessellate_to_glb
from tests import cad_fixtures
from tests.cad_fixtures import CadFiles
from tests.helpers import RUNNING, World, assert_envelope, read_glb, team, upload, wait_job
from tests.realtime.client import Client

ASSEMBLY = "assembly.step"
# (BOM path, row, instances in the whole product) of the generated assembly: the GLB's nodes, one per instance.
OCCURRENCES = list(cad_fixtures.ASSEMBLY_BOM.occurrences())
NUTS = cad_fixtures.ASSEMBLY_INSTANCES["nut"]  # 6, over 2 BOM rows


def occurrence_nodes(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [n for n in doc["nodes"] if "bom_path" in n.get("extras", {})]


def rendered_triangles(doc: dict[str, Any]) -> int:
    counts = [sum(doc["accessors"][p["indices"]]["count"] // 3 for p in m["primitives"]) for m in doc["meshes"]]
    return sum(counts[n["mesh"]] for n in occurrence_nodes(doc) if "mesh" in n)


def flatten(tree: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [row for node in tree for row in [node, *flatten(node["children"])]]


@pytest.fixture
def assembly(cad_files: CadFiles) -> Path:
    return cad_files.path(ASSEMBLY)


# ---------------------------------------------------------------- the GLB itself


def test_glb_nodes_are_the_bom_occurrences(assembly: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.glb"
    result = analyze_file(str(assembly), glb_path=str(out))
    rows = flatten(result["bom"])
    assert [(r["path"], r["part_name"], r["quantity"]) for r in rows] == [
        (path, part.name, part.quantity) for path, part, _ in OCCURRENCES
    ]
    doc, binary = read_glb(out.read_bytes())
    nodes = occurrence_nodes(doc)
    # Every node names its BOM row, and every row has as many nodes as it has placements in the whole assembly,
    # each carrying one of the row's instance names.
    assert {(n["extras"]["bom_path"], n["name"]) for n in nodes} == {(r["path"], r["part_name"]) for r in rows}
    for path, part, count in OCCURRENCES:
        placed = [n for n in nodes if n["extras"]["bom_path"] == path]
        assert len(placed) == count, path
        assert {n["extras"].get("instance_name") for n in placed} == (set(part.instances) or {None}), path
        assert {n["extras"]["part_number"] for n in placed} == {part.number}, path
    nuts = [n for n in nodes if n["name"] == "nut"]
    assert len(nuts) == NUTS == 6 and len({n["extras"]["bom_path"] for n in nuts}) == 2
    assert len({n["mesh"] for n in nuts}) == 1  # one product in two rows: one mesh, instanced six times
    # The scene's root converts to glTF's metres and Y up; below it, millimetres as in the file.
    root = doc["nodes"][doc["scenes"][0]["nodes"][0]]
    assert root["name"] == "model" and root["matrix"][0] == 0.001 and root["matrix"][6] == -0.001
    assert doc["asset"]["extras"]["length_unit"] == "mm"
    plate = next(n for n in nodes if n["name"] == "base-plate")
    position = doc["accessors"][doc["meshes"][plate["mesh"]]["primitives"][0]["attributes"]["POSITION"]]
    assert position["min"] == [0, 0, 0] and position["max"] == list(cad_fixtures.PLATE)
    # Face anchors: triangles are grouped by face, one start per B-rep face of the part.
    for name, faces in cad_fixtures.PART_FACES.items():
        node = next(n for n in nodes if n["name"] == name)
        starts = doc["meshes"][node["mesh"]]["extras"]["face_triangle_starts"]
        assert len(starts) == faces and starts == sorted(starts) and starts[0] == 0, name
    assert len(binary) == doc["buffers"][0]["byteLength"]
    assert result["glb"]["triangles"] == rendered_triangles(doc) == result["glb"]["triangles"]
    assert result["glb"]["within_budget"] is True and result["glb"]["bytes"] == out.stat().st_size


def test_the_triangle_budget_coarsens_the_mesh(assembly: Path, tmp_path: Path) -> None:
    fine = tessellate_to_glb(str(assembly), None, str(tmp_path / "fine.glb"))
    budget = 800  # between the planar faces' floor (about 650) and the default mesh (about 1300)
    assert fine["triangles"] > budget  # the default mesh is finer than the budget tested here
    coarse = tessellate_to_glb(str(assembly), None, str(tmp_path / "coarse.glb"), max_triangles=budget)
    doc, _ = read_glb((tmp_path / "coarse.glb").read_bytes())
    assert rendered_triangles(doc) == coarse["triangles"] <= budget
    assert coarse["within_budget"] is True and coarse["mesh_attempts"] > 1
    assert coarse["linear_deflection_mm"] > fine["linear_deflection_mm"]
    # The same nodes as the fine model: coarsening changes the mesh, never the structure.
    fine_doc, _ = read_glb((tmp_path / "fine.glb").read_bytes())
    assert [n["name"] for n in doc["nodes"]] == [n["name"] for n in fine_doc["nodes"]]


# ---------------------------------------------------------------- the endpoint


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {**RUNNING, "workers": 1}


@pytest.mark.gen_test(timeout=120)
async def test_viewable_endpoint_serves_the_glb_under_the_design_policy(world: World, db: Any, assembly: Path) -> None:
    """200 with ETag and private caching, 304, audit entries, 403/404 by policy, storage released on delete."""
    org, people, series_id = await team(world)
    member = people["member"]
    design = await upload(member, series_id, ASSEMBLY, assembly.read_bytes())
    job = await wait_job(member.api, design["finalize"]["analysis_job_id"])
    assert job["status"] == "SUCCESS" and job["result"]["viewable"]["triangles"] > 0, job
    url = f"/api/designs/{design['id']}/viewable/"

    resp = await member.api.get(url)
    assert resp.status == 200, resp.body
    digest = hashlib.sha256(resp.body).hexdigest()
    assert resp.headers["Content-Type"] == "model/gltf-binary"
    assert resp.headers["ETag"] == f'"{digest}"' and resp.headers["Content-Length"] == str(len(resp.body))
    assert resp.headers["Cache-Control"] == "private, no-cache"
    doc, _ = read_glb(resp.body)
    bom = (await member.api.get(f"/api/designs/{design['id']}/bom/")).json
    assert {n["extras"]["bom_path"] for n in occurrence_nodes(doc)} == {r["path"] for r in flatten(bom["tree"])}
    detail = (await member.api.get(f"/api/designs/{design['id']}/")).json
    assert detail["viewable"]["etag"] == f'"{digest}"' and detail["viewable"]["bytes"] == len(resp.body)

    again = await member.api.get(url, headers={"If-None-Match": f'"{digest}"'})
    assert again.status == 304 and again.body == b"" and again.headers["ETag"] == f'"{digest}"'
    stale = await member.api.get(url, headers={"If-None-Match": '"0000"'})
    assert stale.status == 200 and stale.body == resp.body
    entries = await db.audit_log.find({"action": "DOWNLOAD", "resource_id": design["id"]}).to_list(None)
    assert [e["changes"].get("artifact") for e in entries] == ["viewable"] * 3
    assert [e["changes"].get("not_modified", False) for e in entries] == [False, True, False]

    # The design's policy: above one's clearance 403 with its reason, another organization 404.
    secret = await upload(member, series_id, "secret.step", assembly.read_bytes(), classification="SECRET")
    itar = await upload(member, series_id, "itar.step", assembly.read_bytes(), classification="ITAR")
    for d in (secret, itar):
        assert (await wait_job(member.api, d["finalize"]["analysis_job_id"]))["status"] == "SUCCESS"
    assert_envelope(await people["viewer"].api.get(f"/api/designs/{secret['id']}/viewable/"), 403, "PERMISSION_DENIED")
    assert_envelope(await people["foreign"].api.get(f"/api/designs/{itar['id']}/viewable/"), 403, "ITAR_VIOLATION")
    outsider = await world.user("outsider", is_us_person=True, security_clearance_level="TOP_SECRET")
    await world.org("other", members={outsider: "OWNER"}, is_us=True)
    assert_envelope(await outsider.api.get(url), 404, "RESOURCE_NOT_FOUND")
    assert await db.audit_log.count_documents({"action": "DOWNLOAD", "actor_id": outsider.id}) == 0

    # Content-addressed: deleting the design releases its GLB unless another design shares it.
    assert (await member.api.delete(f"/api/designs/{design['id']}/")).status == 204
    assert await world.services.storage.exists(digest)  # the SECRET and ITAR copies have the same GLB
    for d in (secret, itar):
        assert (await member.api.delete(f"/api/designs/{d['id']}/")).status == 204
    assert not await world.services.storage.exists(digest)


@pytest.mark.gen_test(timeout=120)
async def test_a_design_analysed_before_viewables_gets_one_by_a_job(world: World, db: Any, assembly: Path) -> None:
    org, people, series_id = await team(world)
    member = people["member"]
    design = await upload(member, series_id, ASSEMBLY, assembly.read_bytes())
    assert (await wait_job(member.api, design["finalize"]["analysis_job_id"]))["status"] == "SUCCESS"
    # As if analysed by an earlier release: no GLB recorded (and none stored).
    record = (await db.designs.find_one({"_id": design["id"]}))["viewable"]
    await db.designs.update_one({"_id": design["id"]}, {"$unset": {"viewable": ""}})
    await world.services.storage.delete(record["sha256"])
    url = f"/api/designs/{design['id']}/viewable/"

    first, second = await asyncio.gather(member.api.get(url), people["viewer"].api.get(url))
    assert first.status == 202 and second.status == 202, (first.body, second.body)
    pending = first.json
    assert pending["job_type"] == "TESSELLATION" and pending["status"] in ("PENDING", "PROCESSING")
    assert set(pending) == {"status", "job_id", "job_type", "progress", "retry_after", "detail"}
    assert second.json["job_id"] == pending["job_id"]  # one job, however many ask
    assert first.headers["Retry-After"] == "2"
    assert first.headers["Location"] == f"/api/analysis-jobs/{pending['job_id']}/"
    assert await db.analysis_jobs.count_documents({"design_id": design["id"], "job_type": "TESSELLATION"}) == 1

    job = await wait_job(member.api, pending["job_id"])
    assert job["status"] == "SUCCESS" and job["progress"]["percent"] == 100, job
    resp = await member.api.get(url)
    assert resp.status == 200
    doc, _ = read_glb(resp.body)
    assert sum(1 for n in occurrence_nodes(doc) if n["name"] == "nut") == NUTS
    # The design kept its status: a viewer model never moves a design through its workflow.
    assert (await member.api.get(f"/api/designs/{design['id']}/")).json["status"] == "READY"
    metrics = (await member.api.get("/api/analysis-jobs/metrics/?job_type=TESSELLATION")).json
    assert metrics["success_count"] == 1


@pytest.mark.gen_test(timeout=120)
async def test_job_status_reaches_the_org_feed_only_for_the_cleared(
    world: World, base_url: str, assembly: Path
) -> None:
    org, people, series_id = await team(world)
    url = base_url.replace("http://", "ws://") + "/ws/"
    owner = await Client.connect(url, token=people["owner"].token)
    viewer = await Client.connect(url, token=people["viewer"].token)
    for client in (owner, viewer):
        await client.ok("subscribe", channel=f"org:{org['_id']}")
    secret = await upload(people["member"], series_id, "secret.step", assembly.read_bytes(), classification="SECRET")
    job_id = secret["finalize"]["analysis_job_id"]
    statuses = []
    while not statuses or statuses[-1]["status"] != "SUCCESS":
        event = await owner.next_event("job.status", timeout=60)
        assert event["data"]["job_id"] == job_id
        statuses.append(event["data"])
    assert [s["status"] for s in statuses] == ["PROCESSING", "SUCCESS"]
    assert statuses[-1]["classification"] == "SECRET" and statuses[-1]["job_type"] == "PROCESSING"
    # The uncleared viewer heard nothing of the SECRET job; an UNCLASSIFIED one reaches them.
    plain = await upload(people["member"], series_id, "plain.step", assembly.read_bytes())
    first = await viewer.next_event("job.status", timeout=60)
    assert first["data"]["job_id"] == plain["finalize"]["analysis_job_id"], first
    for client in (owner, viewer):
        client.close()
