"""BOM nodes through the running server: an assembly's tree from a real analysis, totals, corrections, policy."""

from __future__ import annotations

from typing import Any

import pytest

from models.bom import BomNodes
from processing.cad import analyze_file
from tests import cad_fixtures, corpus
from tests.helpers import RUNNING, Caller, World, assert_envelope, cad, team, upload, wait_job

ASSEMBLY = "assembly.step"
EXPECTED = cad_fixtures.FILES[ASSEMBLY]
ALUMINIUM = 2700.0


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {**RUNNING, "workers": 1}


def shape(node: dict[str, Any]) -> tuple[Any, ...]:
    """(name, quantity, children...) of a rendered tree, for comparing structure at a glance."""
    return (node["part_name"], node["quantity"], *[shape(c) for c in node["children"]])


async def analysed(member: Caller, series_id: str, name: str = ASSEMBLY, **fields: Any) -> dict[str, Any]:
    """A design uploaded and analysed by this server's workers."""
    data = corpus.read(name) if name in corpus.FILES else cad(name)
    design = await upload(member, series_id, name, data, **fields)
    job = await wait_job(member.api, design["finalize"]["analysis_job_id"])
    assert job["status"] == "SUCCESS", job
    return design


@pytest.mark.gen_test(timeout=90)
async def test_assembly_tree_totals_and_corrections(world: World, services: Any, db: Any) -> None:
    """The generated assembly's tree, totals and filters, then manual corrections and a re-analysis."""
    _, people, series_id = await team(world)
    member = people["member"]
    design = await analysed(member, series_id, material="Aluminium 6061-T6")
    bom = (await member.api.get(f"/api/designs/{design['id']}/bom/")).json
    assert EXPECTED.bom is not None and EXPECTED.volume_mm3 is not None
    assert [shape(root) for root in bom["tree"]] == [EXPECTED.bom.shape()]
    assert bom["total_parts"] == EXPECTED.part_count == 14
    assert bom["node_count"] == EXPECTED.node_count == 10 and bom["mass_complete"] is True
    # Leaves once, each times the quantities above it: the whole model's volume and mass.
    assert bom["total_volume_mm3"] == pytest.approx(EXPECTED.volume_mm3, rel=1e-9)
    assert bom["total_mass_kg"] == pytest.approx(EXPECTED.volume_mm3 * 1e-9 * ALUMINIUM, rel=1e-9)
    detail = (await member.api.get(f"/api/designs/{design['id']}/")).json
    assert bom["total_mass_kg"] == pytest.approx(detail["mass_kg"], rel=1e-9)
    root = bom["tree"][0]
    assert root["parent"] is None and root["path"] == "0001" and root["depth"] == 1 and root["is_assembly"]
    assert (root["part_name"], root["part_number"]) == ("demo-assembly", "DA-100")
    bracket = root["children"][1]
    assert bracket["reference_designator"] == "bracket-assembly_1, bracket-assembly_2"
    assert bracket["parent"] == root["id"] and bracket["path"] == "0001.0002" and bracket["depth"] == 2
    plate = root["children"][0]
    assert plate["part_name"] == "base-plate" and plate["volume_mm3"] == pytest.approx(
        cad_fixtures.PART_VOLUMES["base-plate"], rel=1e-9
    )
    assert plate["mass_kg"] == pytest.approx(plate["volume_mm3"] * 1e-9 * ALUMINIUM)
    assert all(isinstance(n["id"], int) for n in [root, bracket, plate])

    # The list's filters.
    api = member.api
    nodes = (await api.get(f"/api/bom-nodes/?design_asset={design['id']}")).json
    assert nodes["count"] == 10
    assert [n["path"] for n in nodes["results"]][:3] == ["0001", "0001.0001", "0001.0002"]
    assert [n["id"] for n in (await api.get("/api/bom-nodes/?parent=null")).json["results"]] == [root["id"]]
    children = (await api.get(f"/api/bom-nodes/?parent={root['id']}")).json["results"]
    assert [n["part_name"] for n in children] == ["base-plate", "bracket-assembly", "rod-assembly"]
    nuts = (await api.get("/api/bom-nodes/?part_number=nt-m6")).json["results"]
    assert [(n["part_name"], n["quantity"], n["instance_names"]) for n in nuts] == [
        ("nut", 1, ["nut_1"]),
        ("nut", 2, ["nut_1", "nut_2"]),
    ]
    assert {n["part_name"] for n in (await api.get("/api/bom-nodes/?search=bracket")).json["results"]} == {
        "bracket-assembly",
        "bracket",
    }
    for bad in ("parent=x", "design_asset=1", "colour=red", "ordering=mass_kg"):
        assert_envelope(await api.get(f"/api/bom-nodes/?{bad}"), 400, "VALIDATION_ERROR")

    # Manual corrections: create under a node, patch, cascade delete; totals follow.
    created = await api.post(
        "/api/bom-nodes/",
        {
            "design_asset": design["id"],
            "parent": plate["id"],
            "part_name": "Bolt",
            "part_number": "HW-M8-20",
            "quantity": 12,
            "unit_of_measure": "EA",
            "reference_designator": "B1-B12",
        },
    )
    assert created.status == 201, created.body
    bolt = created.json
    assert bolt["parent"] == plate["id"] and bolt["path"] == "0001.0001.0001" and bolt["depth"] == 3
    assert bolt["source"] == "manual" and bolt["volume_mm3"] is None
    second = (
        await api.post("/api/bom-nodes/", {"design_asset": design["id"], "parent": plate["id"], "part_name": "Washer"})
    ).json
    assert second["path"] == "0001.0001.0002" and second["quantity"] == 1 and second["unit_of_measure"] == "EA"
    patched = await api.patch(f"/api/bom-nodes/{bolt['id']}/", {"quantity": 10, "notes": "counted on the bench"})
    assert patched.status == 200 and patched.json["quantity"] == 10 and patched.json["notes"] == "counted on the bench"
    assert (await api.get(f"/api/bom-nodes/{bolt['id']}/")).json["quantity"] == 10
    bom = (await api.get(f"/api/designs/{design['id']}/bom/")).json
    # The plate is now an assembly of 10 bolts and a washer; the new parts have no volume yet.
    assert bom["total_parts"] == 14 - 1 + 10 + 1 and bom["mass_complete"] is False and bom["total_mass_kg"] is None
    rod_assembly = root["children"][2]
    assert shape(rod_assembly) == ("rod-assembly", 1, ("rod", 1), ("nut", 2))
    assert (await api.delete(f"/api/bom-nodes/{rod_assembly['id']}/")).status == 204
    assert_envelope(await api.get(f"/api/bom-nodes/{rod_assembly['children'][0]['id']}/"), 404, "RESOURCE_NOT_FOUND")
    bom = (await api.get(f"/api/designs/{design['id']}/bom/")).json
    assert bom["node_count"] == 12 - 3 and bom["total_parts"] == 24 - 3
    assert await db.audit_log.count_documents({"resource_type": "AssemblyNode"}) == 4

    for body, field in (
        ({"design_asset": design["id"], "parent": 999999, "part_name": "x"}, "parent"),
        ({"design_asset": design["id"], "part_name": ""}, "part_name"),
        ({"design_asset": design["id"], "part_name": "x", "quantity": 0}, "quantity"),
        ({"design_asset": design["id"], "part_name": "x", "mass": 1}, "mass"),
    ):
        err = assert_envelope(await api.post("/api/bom-nodes/", body), 400, "VALIDATION_ERROR")
        assert field in err["field_errors"], err
    assert_envelope(await api.patch(f"/api/bom-nodes/{bolt['id']}/", {"parent": 1}), 400, "VALIDATION_ERROR")

    # A new analysis replaces the extracted tree (manual nodes included) rather than adding to it.
    stored = await db.designs.find_one({"_id": design["id"]})
    result = analyze_file(str(cad_fixtures.files().path(ASSEMBLY)))
    assert await BomNodes(db, services.designs, services.publisher).replace_from_analysis(stored, result["bom"]) == 10
    assert (await api.get(f"/api/bom-nodes/?design_asset={design['id']}")).json["count"] == 10


@pytest.mark.gen_test(timeout=90)
async def test_bom_nodes_follow_their_designs_policy(world: World, db: Any) -> None:
    """BOM nodes are exactly as visible and editable as their design, classification changes included."""
    _, people, series_id = await team(world)
    member, viewer = people["member"], people["viewer"]
    design = await analysed(member, series_id)
    nodes = (await member.api.get(f"/api/bom-nodes/?design_asset={design['id']}")).json["results"]
    node = nodes[0]
    assert (await viewer.api.get("/api/bom-nodes/")).json["count"] == 10
    assert (await viewer.api.get(f"/api/designs/{design['id']}/bom/")).status == 200
    assert_envelope(await viewer.api.patch(f"/api/bom-nodes/{node['id']}/", {"notes": "x"}), 403, "PERMISSION_DENIED")
    assert_envelope(await viewer.api.delete(f"/api/bom-nodes/{node['id']}/"), 403, "PERMISSION_DENIED")
    assert_envelope(
        await viewer.api.post("/api/bom-nodes/", {"design_asset": design["id"], "part_name": "x"}),
        403,
        "PERMISSION_DENIED",
    )

    # Classification is copied onto the nodes and kept in sync: lists hide, detail refuses.
    assert (
        await people["admin"].api.patch(f"/api/designs/{design['id']}/", {"classification": "SECRET"})
    ).status == 200
    assert await db.bom_nodes.count_documents({"design_id": design["id"], "classification": "SECRET"}) == 10
    assert (await viewer.api.get("/api/bom-nodes/")).json["count"] == 0
    assert (await viewer.api.get(f"/api/bom-nodes/?design_asset={design['id']}&parent=null")).json["count"] == 0
    assert_envelope(await viewer.api.get(f"/api/bom-nodes/{node['id']}/"), 403, "PERMISSION_DENIED")
    assert_envelope(await viewer.api.get(f"/api/designs/{design['id']}/bom/"), 403, "PERMISSION_DENIED")
    assert (await member.api.get("/api/bom-nodes/")).json["count"] == 10

    outsider = await world.user("outsider", security_clearance_level="TOP_SECRET", is_us_person=True)
    await world.org("other", members={outsider: "OWNER"}, is_us=True)
    assert (await outsider.api.get("/api/bom-nodes/")).json["count"] == 0
    assert_envelope(await outsider.api.get(f"/api/bom-nodes/{node['id']}/"), 404, "RESOURCE_NOT_FOUND")
    assert_envelope(await outsider.api.delete(f"/api/bom-nodes/{node['id']}/"), 404, "RESOURCE_NOT_FOUND")
    assert_envelope(await outsider.api.get(f"/api/designs/{design['id']}/bom/"), 404, "RESOURCE_NOT_FOUND")
    assert_envelope(
        await outsider.api.post("/api/bom-nodes/", {"design_asset": design["id"], "part_name": "x"}),
        404,
        "RESOURCE_NOT_FOUND",
    )

    # Deleting the design deletes its nodes.
    assert (await member.api.delete(f"/api/designs/{design['id']}/")).status == 204
    assert await db.bom_nodes.count_documents({"design_id": design["id"]}) == 0


@corpus.mark
@pytest.mark.gen_test(timeout=90)
async def test_as1_tree_from_the_corpus(world: World) -> None:
    """The classic AS1 assembly from another exporter: the same tree rules on a file nobody here wrote."""
    _, people, series_id = await team(world)
    member = people["member"]
    design = await analysed(member, series_id, "as1-oc-214.stp")
    bom = (await member.api.get(f"/api/designs/{design['id']}/bom/")).json
    assert [shape(root) for root in bom["tree"]] == [
        (
            "as1",
            1,
            ("rod-assembly", 1, ("nut", 2), ("rod", 1)),
            ("l-bracket-assembly", 2, ("nut-bolt-assembly", 3, ("bolt", 1), ("nut", 1)), ("l-bracket", 1)),
            ("plate", 1),
        )
    ]
    assert bom["total_parts"] == 18 and bom["node_count"] == 10 and bom["mass_complete"] is True
    # Each part is integrated on its own, unplaced, so the sum differs from the whole file's in the 6th digit.
    reference = corpus.reference()["as1-oc-214.stp"]["volume_mm3"]
    assert bom["total_volume_mm3"] == pytest.approx(reference, rel=1e-5)
