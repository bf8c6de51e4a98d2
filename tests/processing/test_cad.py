"""processing.cad against real OpenCascade: generated shapes against their analytic figures, and the real-world
corpus against OpenCascade's reference figures."""

from __future__ import annotations

import json
import math
import pickle
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from OCP.BRepBuilderAPI import BRepBuilderAPI_Transform
from OCP.BRepPrimAPI import BRepPrimAPI_MakeBox
from OCP.gp import gp_Ax1, gp_Dir, gp_Pnt, gp_Trsf

from processing.cad import (
    ANALYSIS_STAGES,
    CadFileError,
    UnsupportedFormat,
    analyze_file,
    detect_format,
    tessellate_to_glb,
)
from tests import cad_fixtures, corpus
from tests.cad_fixtures import CadFiles, Part, write_brep, write_step

# The reference figures are rounded to 3 decimals, so a relative 1e-6 alone is too strict near zero.
REL, ROUNDING, BBOX_ABS = 1e-6, 5e-4 + 1e-9, 1e-3
# Analytic figures are exact: OpenCascade integrates planes and cylinders to rounding error.
EXACT = 1e-9

Analyze = Callable[[str], dict[str, Any]]


@pytest.fixture(scope="module")
def analyzed() -> Iterator[Analyze]:
    """Each corpus file is analysed once per module, on first use, however many tests look at it."""
    cache: dict[str, dict[str, Any]] = {}

    def get(name: str) -> dict[str, Any]:
        if name not in cache:
            cache[name] = analyze_file(str(corpus.path(name)))
        return cache[name]

    yield get


@pytest.fixture(scope="module")
def generated(cad_files: CadFiles) -> Iterator[Analyze]:
    """Each generated file analysed once per module, on first use."""
    cache: dict[str, dict[str, Any]] = {}

    def get(name: str) -> dict[str, Any]:
        if name not in cache:
            cache[name] = analyze_file(str(cad_files.path(name)))
        return cache[name]

    yield get


def close(actual: float | None, expected: float, abs_tol: float = ROUNDING) -> bool:
    return actual is not None and math.isclose(actual, expected, rel_tol=REL, abs_tol=abs_tol)


def xyz(point: dict[str, float]) -> list[float]:
    return [point["x"], point["y"], point["z"]]


def codes(items: list[dict[str, str]]) -> set[str]:
    return {item["code"] for item in items}


def walk(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node["children"]:
        yield from walk(child)


def bom_rows(node: dict[str, Any]) -> tuple[Any, ...]:
    """(name, part number, quantity, instance names, children...) of an extracted tree."""
    return (
        node["part_name"],
        node["part_number"],
        node["quantity"],
        tuple(node["instance_names"]),
        *[bom_rows(child) for child in node["children"]],
    )


def expected_rows(part: Part) -> tuple[Any, ...]:
    return (part.name, part.number, part.quantity, part.instances, *[expected_rows(c) for c in part.children])


# -- generated files against their analytic figures ------------------------------------------------


@pytest.mark.parametrize("name", cad_fixtures.names(readable=True))
def test_generated_file_yields_its_analytic_figures(generated: Analyze, cad_files: CadFiles, name: str) -> None:
    expected = cad_files.expected[name]
    result = generated(name)
    topology, geometry, validation = result["topology"], result["geometry"], result["validation"]
    assert result["format"] == expected.format
    assert (topology["solids"], topology["shells"], topology["faces"]) == (
        expected.solids,
        expected.shells,
        expected.faces,
    )
    for key, wanted in (("volume_mm3", expected.volume_mm3), ("surface_area_mm2", expected.surface_area_mm2)):
        if wanted is not None:
            assert math.isclose(geometry[key], wanted, rel_tol=EXACT, abs_tol=1e-9), (key, geometry[key], wanted)
    if expected.center_of_mass is not None:
        assert xyz(geometry["center_of_mass"]) == pytest.approx(list(expected.center_of_mass), abs=1e-9)
    if expected.bbox_min is not None and expected.bbox_max is not None:
        box = geometry["bounding_box"]
        assert xyz(box["min"]) == pytest.approx(list(expected.bbox_min), abs=BBOX_ABS)
        assert xyz(box["max"]) == pytest.approx(list(expected.bbox_max), abs=BBOX_ABS)
    assert validation["is_valid_geometry"] is expected.valid
    assert codes(validation["validation_errors"]) == expected.errors
    assert codes(validation["warnings"]) == expected.warnings
    assert result["source_length_unit"] == expected.unit and result["length_unit"] == "mm"
    assert expected.bom is not None and len(result["bom"]) == 1
    assert bom_rows(result["bom"][0]) == expected_rows(expected.bom)
    assert (result["bom_part_count"], result["bom_node_count"]) == (expected.part_count, expected.node_count)
    # Plain data only: the result crosses a process boundary and is stored as JSON.
    json.dumps(result, allow_nan=False)
    pickle.loads(pickle.dumps(result))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", cad_fixtures.names(readable=False))
def test_unreadable_generated_file_is_a_clear_error(cad_files: CadFiles, name: str) -> None:
    fmt = cad_files.expected[name].format
    with pytest.raises(CadFileError, match=f"not a readable {'OpenCascade BREP' if fmt == 'BREP' else fmt} file"):
        analyze_file(str(cad_files.path(name)))


def test_assembly_bom_nodes(generated: Analyze, cad_files: CadFiles) -> None:
    """Per-node figures of the generated assembly: volumes per product, sums per assembly, the part numbers."""
    result = generated("assembly.step")
    root = result["bom"][0]
    nodes = list(walk(root))
    for node in nodes:
        assert node["unit_of_measure"] == "EA" and node["depth"] == node["path"].count(".") + 1
        assert node["is_assembly"] is bool(node["children"])
        if not node["children"]:
            wanted = cad_fixtures.PART_VOLUMES[node["part_name"]]
            assert math.isclose(node["volume_mm3"], wanted, rel_tol=EXACT), node["part_name"]
    by_path = {node["path"]: node for node in nodes}
    # The nut is one product wherever it is used, so one volume; its rows are counted per parent.
    nuts = [node for node in nodes if node["part_name"] == "nut"]
    assert [n["quantity"] for n in nuts] == [1, 2] and len({n["volume_mm3"] for n in nuts}) == 1
    assert by_path["0001.0003.0002"]["reference_designator"] == "nut_1, nut_2"
    assert cad_fixtures.ASSEMBLY_INSTANCES["nut"] == 6
    # An assembly's volume is the sum of its children's, counted by quantity; the root's is the file's.
    for node in nodes[1:]:
        if node["children"]:
            total = sum(c["volume_mm3"] * c["quantity"] for c in node["children"])
            assert math.isclose(node["volume_mm3"], total, rel_tol=1e-9)
    assert root["volume_mm3"] == result["geometry"]["volume_mm3"]
    assert math.isclose(
        sum(c["volume_mm3"] * c["quantity"] for c in root["children"]), root["volume_mm3"], rel_tol=1e-9
    )
    # The root's part number is its STEP product id, not its name, like every other node's.
    assert (root["part_name"], root["part_number"]) == ("demo-assembly", "DA-100")


# -- the corpus against OpenCascade's own figures -----------------------------------------------------


@corpus.mark
@pytest.mark.parametrize("name", corpus.FILES)
def test_corpus_file_matches_reference_figures(analyzed: Analyze, name: str) -> None:
    expected = corpus.reference()[name]
    result = analyzed(name)
    topology, geometry = result["topology"], result["geometry"]
    assert (topology["solids"], topology["shells"], topology["faces"]) == (
        expected["solids"],
        expected["shells"],
        expected["faces"],
    )
    assert close(geometry["volume_mm3"], expected["volume_mm3"]), geometry["volume_mm3"]
    assert close(geometry["surface_area_mm2"], expected["surface_area_mm2"]), geometry["surface_area_mm2"]
    assert result["validation"]["brepcheck_valid"] is expected["brepcheck_valid"]
    box = geometry["bounding_box"]
    for actual, wanted in zip(
        xyz(box["min"]) + xyz(box["max"]), expected["bbox_min"] + expected["bbox_max"], strict=True
    ):
        assert math.isclose(actual, wanted, abs_tol=BBOX_ABS), (box, expected)
    if expected["faces"]:
        for actual, wanted in zip(xyz(geometry["center_of_mass"]), expected["center_of_mass"], strict=True):
            assert close(actual, wanted), (geometry["center_of_mass"], expected["center_of_mass"])
    else:
        # Without faces OpenCascade's centre of mass is arbitrary (wire.brep's lies far outside its box).
        assert geometry["center_of_mass"] is None and geometry["inertia_tensor"] is None
    # Plain data only: the result crosses a process boundary and is stored as JSON.
    json.dumps(result, allow_nan=False)
    pickle.loads(pickle.dumps(result))


@corpus.mark
@pytest.mark.parametrize(
    "name",
    [
        "11752.stp",
        "Motor-c.brep",
        "Ventilator.stp",
        "as1-oc-214.stp",
        "as1_pe_203.stp",
        "face_recognition_sample_part.stp",
    ],
)
def test_closed_solids_are_valid(analyzed: Analyze, name: str) -> None:
    validation = analyzed(name)["validation"]
    assert validation["is_valid_geometry"] is True
    assert validation["validation_errors"] == []


@corpus.mark
@pytest.mark.parametrize("name", ["fan.stl", "torus_default_resolution.stl"])
def test_closed_meshes_are_valid_with_a_mesh_warning(analyzed: Analyze, name: str) -> None:
    validation = analyzed(name)["validation"]
    assert validation["is_valid_geometry"] is True
    assert {"MESH_ONLY", "UNITLESS_FORMAT"} <= codes(validation["warnings"])


@corpus.mark
@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("splinecage.stp", {"NO_SOLID", "OPEN_SHELL", "FREE_EDGES", "NON_POSITIVE_VOLUME"}),
        ("surf114.igs", {"NO_SOLID", "FREE_EDGES"}),
        ("curve_geom_plate.igs", {"NO_FACES", "NO_SOLID"}),
        ("wire.brep", {"NO_FACES", "NO_SOLID"}),
    ],
)
def test_models_without_a_closed_solid_are_reported_invalid(analyzed: Analyze, name: str, expected: set[str]) -> None:
    validation = analyzed(name)["validation"]
    assert validation["is_valid_geometry"] is False
    assert codes(validation["validation_errors"]) == expected
    # BRepCheck_Analyzer accepts all of them: it says nothing about closedness.
    assert validation["brepcheck_valid"] is True
    assert all(item["message"] for item in validation["validation_errors"])


@corpus.mark
def test_splinecage_reports_counts_in_its_messages(analyzed: Analyze) -> None:
    errors = analyzed("splinecage.stp")["validation"]["validation_errors"]
    messages = {e["code"]: e["message"] for e in errors}
    assert messages["OPEN_SHELL"].startswith("4 of 4 shells")
    assert "-6.57" in messages["NON_POSITIVE_VOLUME"]


@corpus.mark
@pytest.mark.parametrize(
    ("name", "unit", "symbol", "mm"),
    [
        ("as1_pe_203.stp", "inch", "in", 25.4),
        ("11752.stp", "inch", "in", 25.4),
        ("as1-oc-214.stp", "millimetre", "mm", 1.0),
        ("surf114.igs", "inch", "in", 25.4),
        ("curve_geom_plate.igs", "millimetre", "mm", 1.0),
        ("fan.stl", None, None, None),
        ("Motor-c.brep", None, None, None),
    ],
)
def test_source_length_unit(
    analyzed: Analyze, name: str, unit: str | None, symbol: str | None, mm: float | None
) -> None:
    result = analyzed(name)
    assert (result["source_length_unit"], result["source_length_unit_symbol"], result["source_length_unit_mm"]) == (
        unit,
        symbol,
        mm,
    )
    assert result["length_unit"] == "mm"


@corpus.mark
def test_inch_assembly_is_reported_in_millimetres(analyzed: Analyze) -> None:
    # The same AS1 plate, 5 x 6 inches in the AP203 file: the reader's conversion gives 127 x 152.4 mm.
    pe = analyzed("as1_pe_203.stp")
    box = pe["geometry"]["bounding_box"]
    assert math.isclose(box["max"]["x"] - box["min"]["x"], 5080.0, abs_tol=BBOX_ABS)
    assert pe["bom_part_count"] == pe["topology"]["solids"] == 18


# -- bill of materials ------------------------------------------------------------------------------


def shape_of(node: dict[str, Any]) -> tuple[Any, ...]:
    """(name, quantity, depth, path, children...) of an extracted tree."""
    return (
        node["part_name"],
        node["quantity"],
        node["depth"],
        node["path"],
        [shape_of(child) for child in node["children"]],
    )


@corpus.mark
def test_as1_bom_tree_is_pinned(analyzed: Analyze) -> None:
    """AS1's product structure, as the STEP file defines it: names, quantities, depths and paths."""
    result = analyzed("as1-oc-214.stp")
    assert len(result["bom"]) == 1
    assert shape_of(result["bom"][0]) == (
        "as1",
        1,
        1,
        "0001",
        [
            (
                "rod-assembly",
                1,
                2,
                "0001.0001",
                [
                    ("nut", 2, 3, "0001.0001.0001", []),
                    ("rod", 1, 3, "0001.0001.0002", []),
                ],
            ),
            (
                "l-bracket-assembly",
                2,
                2,
                "0001.0002",
                [
                    (
                        "nut-bolt-assembly",
                        3,
                        3,
                        "0001.0002.0001",
                        [
                            ("bolt", 1, 4, "0001.0002.0001.0001", []),
                            ("nut", 1, 4, "0001.0002.0001.0002", []),
                        ],
                    ),
                    ("l-bracket", 1, 3, "0001.0002.0002", []),
                ],
            ),
            ("plate", 1, 2, "0001.0003", []),
        ],
    )
    assert result["bom_part_count"] == 18 == result["topology"]["solids"]
    assert result["bom_node_count"] == 10


@corpus.mark
def test_as1_bom_node_fields(analyzed: Analyze) -> None:
    result = analyzed("as1-oc-214.stp")
    root = result["bom"][0]
    nodes = list(walk(root))
    for node in nodes:
        assert node["unit_of_measure"] == "EA"
        assert node["part_number"] == node["part_name"]  # PRODUCT('nut','nut',...): id equals name here
        assert node["is_assembly"] is bool(node["children"])
        assert node["volume_mm3"] > 0
    by_path = {node["path"]: node for node in nodes}
    assert by_path["0001.0001.0001"]["reference_designator"] == "nut_1, nut_2"
    assert by_path["0001.0001.0001"]["instance_names"] == ["nut_1", "nut_2"]
    assert by_path["0001.0002"]["instance_names"] == ["l-bracket-assembly_1", "l-bracket-assembly_2"]
    # The nut is one product wherever it is used, so one volume.
    assert by_path["0001.0001.0001"]["volume_mm3"] == by_path["0001.0002.0001.0002"]["volume_mm3"]
    # An assembly's volume is the sum of its children's, counted by quantity; the root's is the file's.
    for node in nodes[1:]:
        if node["children"]:
            total = sum(c["volume_mm3"] * c["quantity"] for c in node["children"])
            assert math.isclose(node["volume_mm3"], total, rel_tol=1e-9)
    assert root["volume_mm3"] == result["geometry"]["volume_mm3"]
    assert math.isclose(
        sum(c["volume_mm3"] * c["quantity"] for c in root["children"]), root["volume_mm3"], rel_tol=1e-5
    )


@corpus.mark
def test_ap203_bom_keeps_products_and_drops_representation_items(analyzed: Analyze) -> None:
    # Each AP203 part has a solid plus a construction-geometry compound; neither is a product.
    """The AP203 export of AS1 yields the same products, none of its construction geometry."""
    root = analyzed("as1_pe_203.stp")["bom"][0]
    assert shape_of(root) == (
        "AS1_PE_ASM",
        1,
        1,
        "0001",
        [
            ("PLATE", 1, 2, "0001.0001", []),
            (
                "L_BRACKET_ASSEMBLY_ASM",
                2,
                2,
                "0001.0002",
                [
                    ("L-BRACKET", 1, 3, "0001.0002.0001", []),
                    (
                        "NUT_BOLT_ASSEMBLY_ASM",
                        3,
                        3,
                        "0001.0002.0002",
                        [
                            ("BOLT", 1, 4, "0001.0002.0002.0001", []),
                            ("NUT", 1, 4, "0001.0002.0002.0002", []),
                        ],
                    ),
                ],
            ),
            (
                "ROD_ASM",
                1,
                2,
                "0001.0003",
                [
                    ("ROD", 1, 3, "0001.0003.0001", []),
                    ("NUT", 2, 3, "0001.0003.0002", []),
                ],
            ),
        ],
    )


@corpus.mark
@pytest.mark.parametrize(
    ("name", "part_name", "part_number"),
    [
        ("11752.stp", "11752", "11752"),
        ("Ventilator.stp", "Part1", "Part1"),  # PRODUCT('Part1','',...): the id stands in for the name
        ("face_recognition_sample_part.stp", "part_parametric", "part_parametric"),
        ("splinecage.stp", "Document", "Document"),
        ("fan.stl", "fan", "fan"),
        ("Motor-c.brep", "Motor-c", "Motor-c"),
        ("surf114.igs", "surf114", "surf114"),
    ],
)
def test_single_part_files_yield_one_node(analyzed: Analyze, name: str, part_name: str, part_number: str) -> None:
    result = analyzed(name)
    assert len(result["bom"]) == 1
    node = result["bom"][0]
    assert (
        node["part_name"],
        node["part_number"],
        node["quantity"],
        node["path"],
        node["depth"],
        node["children"],
    ) == (part_name, part_number, 1, "0001", 1, [])
    assert node["volume_mm3"] == result["geometry"]["volume_mm3"]
    assert result["bom_part_count"] == 1 and result["bom_node_count"] == 1


# -- generated geometry with known answers -----------------------------------------------------------


def test_box_mass_properties_are_exact(tmp_path: Path) -> None:
    box = BRepPrimAPI_MakeBox(10.0, 20.0, 30.0).Shape()
    for path in (write_brep(box, tmp_path / "box.brep"), write_step(box, tmp_path / "box.step")):
        result = analyze_file(str(path), display_name="Box 10x20x30")
        geometry = result["geometry"]
        assert math.isclose(geometry["volume_mm3"], 6000.0, rel_tol=1e-9)
        assert math.isclose(geometry["surface_area_mm2"], 2200.0, rel_tol=1e-9)
        assert xyz(geometry["center_of_mass"]) == pytest.approx([5.0, 10.0, 15.0], abs=1e-9)
        # Solid box about its centre: I = V (b² + c²) / 12 and so on; unit density, so mm⁵.
        assert sum(geometry["inertia_tensor"], []) == pytest.approx(
            [650_000.0, 0.0, 0.0, 0.0, 500_000.0, 0.0, 0.0, 0.0, 250_000.0], abs=1e-3
        )
        assert sorted(geometry["principal_moments"]) == pytest.approx([250_000.0, 500_000.0, 650_000.0])
        assert xyz(geometry["bounding_box"]["min"]) == pytest.approx([0, 0, 0], abs=BBOX_ABS)
        assert xyz(geometry["bounding_box"]["max"]) == pytest.approx([10, 20, 30], abs=BBOX_ABS)
        assert result["topology"] == {"solids": 1, "shells": 1, "faces": 6, "edges": 12, "vertices": 8}
        assert result["validation"]["is_valid_geometry"] is True
        assert result["validation"]["validation_errors"] == []


def test_rotated_box_inertia_has_the_tensor_sign_convention(tmp_path: Path) -> None:
    # Rotating the box by θ about z turns diag(Ixx, Iyy) into R·I·Rᵀ; with the tensor convention the
    # off-diagonal term is -∫xy dV = (Iyy - Ixx) sinθ cosθ, not its opposite.
    theta = math.radians(30.0)
    rotation = gp_Trsf()
    rotation.SetRotation(gp_Ax1(gp_Pnt(0, 0, 0), gp_Dir(0, 0, 1)), theta)
    box = BRepBuilderAPI_Transform(BRepPrimAPI_MakeBox(10.0, 20.0, 30.0).Shape(), rotation, True).Shape()
    tensor = analyze_file(str(write_brep(box, tmp_path / "rotated.brep")))["geometry"]["inertia_tensor"]
    ixx, iyy = 650_000.0, 500_000.0
    c, s = math.cos(theta), math.sin(theta)
    assert tensor[0][0] == pytest.approx(ixx * c * c + iyy * s * s)
    assert tensor[1][1] == pytest.approx(ixx * s * s + iyy * c * c)
    assert tensor[0][1] == pytest.approx((ixx - iyy) * s * c)
    assert tensor[0][1] == tensor[1][0]
    assert tensor[2][2] == pytest.approx(250_000.0)


def test_step_in_inches_is_converted_to_millimetres(tmp_path: Path) -> None:
    box = BRepPrimAPI_MakeBox(25.4, 50.8, 76.2).Shape()  # 1 x 2 x 3 inches
    result = analyze_file(str(write_step(box, tmp_path / "inch-box.stp", unit="INCH")))
    assert result["source_length_unit"] == "inch"
    assert math.isclose(result["geometry"]["volume_mm3"], 25.4 * 50.8 * 76.2, rel_tol=1e-6)


def test_display_name_names_an_unnamed_part(tmp_path: Path) -> None:
    path = write_brep(BRepPrimAPI_MakeBox(1.0, 1.0, 1.0).Shape(), tmp_path / "a1b2c3.brep")
    assert analyze_file(str(path), "BREP", display_name="Bracket")["bom"][0]["part_name"] == "Bracket"
    assert analyze_file(str(path), "BREP")["bom"][0]["part_name"] == "a1b2c3"


def test_progress_reports_each_stage_in_order(cad_files: CadFiles) -> None:
    seen: list[tuple[int, int, str]] = []
    analyze_file(str(cad_files.path("assembly.step")), "step", lambda c, t, m: seen.append((c, t, m)))
    assert [(c, t) for c, t, _ in seen] == [(i, ANALYSIS_STAGES) for i in range(ANALYSIS_STAGES + 1)]
    parts = cad_files.expected["assembly.step"].part_count
    assert seen[-1][2] == "Done" and f"{parts} parts" in seen[4][2]


def test_glb_is_written_from_the_same_parse(tmp_path: Path, cad_files: CadFiles) -> None:
    out = tmp_path / "assembly.glb"
    seen: list[tuple[int, int, str]] = []
    result = analyze_file(
        str(cad_files.path("assembly.step")), glb_path=str(out), progress=lambda c, t, m: seen.append((c, t, m))
    )
    data = out.read_bytes()
    assert data[:4] == b"glTF" and result["glb"]["bytes"] == len(data)
    # At least two triangles per face: the assembly's flat faces alone need that many.
    assert result["glb"]["triangles"] >= 2 * (cad_files.expected["assembly.step"].faces or 0)
    assert seen[-1][:2] == (ANALYSIS_STAGES + 1, ANALYSIS_STAGES + 1)
    box = write_brep(BRepPrimAPI_MakeBox(1.0, 2.0, 3.0).Shape(), tmp_path / "box.brep")
    standalone = tessellate_to_glb(str(box), None, str(tmp_path / "box.glb"))
    assert standalone["triangles"] == 12
    assert (tmp_path / "box.glb").read_bytes()[:4] == b"glTF"


# -- bad input ends with a clear error, never a hang or a crash ---------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("suffix", [".step", ".igs", ".stl", ".brep"])
def test_garbage_bytes_are_a_clear_error(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"garbage{suffix}"
    path.write_bytes(bytes((i * 7919 + 13) % 256 for i in range(4096)))
    with pytest.raises(CadFileError, match="not a readable"):
        analyze_file(str(path))


def test_empty_missing_and_shapeless_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.step"
    empty.write_bytes(b"")
    with pytest.raises(CadFileError, match="empty"):
        analyze_file(str(empty))
    with pytest.raises(CadFileError, match="not found"):
        analyze_file(str(tmp_path / "missing.stp"))
    shapeless = tmp_path / "shapeless.stp"
    shapeless.write_text("ISO-10303-21;\nHEADER;\nENDSEC;\nDATA;\nENDSEC;\nEND-ISO-10303-21;\n")
    with pytest.raises(CadFileError, match="no transferable shape"):
        analyze_file(str(shapeless))


def test_unsupported_formats(tmp_path: Path) -> None:
    assert [
        detect_format("a.STP"),
        detect_format("b.iges"),
        detect_format("c", "stl"),
        detect_format("d.x", "BREP"),
    ] == ["STEP", "IGES", "STL", "BREP"]
    with pytest.raises(UnsupportedFormat, match="obj"):
        analyze_file(str(tmp_path / "mesh.obj"))
    with pytest.raises(UnsupportedFormat):
        detect_format("no-extension")
