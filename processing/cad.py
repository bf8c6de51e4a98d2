"""OpenCascade analysis of one CAD file: mass properties, topology, validity, units and BOM, as plain data."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from OCP.Bnd import Bnd_Box
from OCP.BRep import BRep_Builder, BRep_Tool
from OCP.BRepBndLib import BRepBndLib
from OCP.BRepCheck import BRepCheck_Analyzer
from OCP.BRepGProp import BRepGProp
from OCP.BRepTools import BRepTools
from OCP.collections import (
    IndexedDataMap_TopoDS_Shape_List_TopoDS_Shape_TopTools_ShapeMapHasher,
    IndexedMap_TopoDS_Shape_TopTools_ShapeMapHasher,
    Sequence_TCollection_AsciiString,
    Sequence_TDF_Label,
)
from OCP.GProp import GProp_GProps
from OCP.IFSelect import IFSelect_ReturnStatus
from OCP.IGESCAFControl import IGESCAFControl_Reader
from OCP.Message import Message, Message_Gravity
from OCP.Quantity import Quantity_Color
from OCP.StepBasic import StepBasic_Product, StepBasic_ProductDefinition
from OCP.STEPCAFControl import STEPCAFControl_Reader
from OCP.STEPConstruct import STEPConstruct_Tool
from OCP.StepRepr import StepRepr_NextAssemblyUsageOccurrence
from OCP.StlAPI import StlAPI_Reader
from OCP.TCollection import TCollection_AsciiString, TCollection_ExtendedString
from OCP.TDataStd import TDataStd_Name
from OCP.TDF import TDF_Label, TDF_Tool
from OCP.TDocStd import TDocStd_Document
from OCP.TopAbs import TopAbs_EDGE, TopAbs_FACE, TopAbs_ShapeEnum, TopAbs_SHELL, TopAbs_SOLID, TopAbs_VERTEX
from OCP.TopExp import TopExp
from OCP.TopLoc import TopLoc_Location
from OCP.TopoDS import TopoDS, TopoDS_Compound, TopoDS_Shape
from OCP.XCAFDoc import XCAFDoc_ColorTool, XCAFDoc_ColorType, XCAFDoc_DocumentTool, XCAFDoc_ShapeTool

from processing.viewable import ScenePart, mesh_within_budget, write_glb

__all__ = [
    "ANALYSIS_STAGES",
    "CadError",
    "CadFileError",
    "UnsupportedFormat",
    "analyze_file",
    "detect_format",
    "parse_scene",
    "tessellate_to_glb",
]

Progress = Callable[[int, int, str], None]

#: Stages reported through ``progress(current, ANALYSIS_STAGES, message)``; one more when a GLB is written.
ANALYSIS_STAGES = 5
#: Triangles the viewer GLB may draw (instances counted) before the mesh is coarsened.
DEFAULT_MAX_TRIANGLES = 500_000
#: Chord deflection of the viewer mesh as a fraction of the bounding-box diagonal.
DEFAULT_RELATIVE_DEFLECTION = 0.001
#: Bigger BOMs are cut (warning BOM_TRUNCATED): one hostile file must not produce a huge job result.
MAX_BOM_NODES = 10_000
MAX_BOM_DEPTH = 32
MAX_NAME_CHARS = 255
MAX_INSTANCE_NAMES = 100

_FORMATS = {
    "step": "STEP",
    "stp": "STEP",
    "p21": "STEP",
    "iges": "IGES",
    "igs": "IGES",
    "stl": "STL",
    "brep": "BREP",
    "brp": "BREP",
}

# (canonical name, symbol, mm per unit), keyed by the lower-cased spellings STEP and IGES writers use.
_UNIT_TABLE: dict[str, tuple[str, str, float]] = {}
for _names, _unit in (
    (("millimetre", "millimeter", "mm"), ("millimetre", "mm", 1.0)),
    (("centimetre", "centimeter", "cm"), ("centimetre", "cm", 10.0)),
    (("decimetre", "decimeter", "dm"), ("decimetre", "dm", 100.0)),
    (("metre", "meter", "m", "meters", "metres"), ("metre", "m", 1000.0)),
    (("kilometre", "kilometer", "km"), ("kilometre", "km", 1_000_000.0)),
    (("micrometre", "micrometer", "micron", "microns", "um"), ("micrometre", "um", 0.001)),
    (("nanometre", "nanometer", "nm"), ("nanometre", "nm", 1e-6)),
    (("inch", "inches", "in"), ("inch", "in", 25.4)),
    (("foot", "feet", "ft"), ("foot", "ft", 304.8)),
    (("yard", "yd"), ("yard", "yd", 914.4)),
    (("mile", "miles", "mi"), ("mile", "mi", 1_609_344.0)),
    (("mil", "mils", "thou"), ("mil", "mil", 0.0254)),
    (("microinch", "microinches", "uin"), ("microinch", "uin", 2.54e-5)),
):
    for _name in _names:
        _UNIT_TABLE[_name] = _unit
# IGES global section, field 14 (unit flag), when the unit name (field 15) is not one we know.
_IGES_UNIT_FLAGS = {
    1: "inch",
    2: "mm",
    4: "foot",
    5: "mile",
    6: "metre",
    7: "km",
    8: "mil",
    9: "micron",
    10: "cm",
    11: "microinch",
}


class CadError(Exception):
    """Base class of the analysis errors a caller can show to a user."""


class UnsupportedFormat(CadError):
    """The format (or file extension) is not one of STEP, IGES, STL, BREP."""


class CadFileError(CadError):
    """The file is missing, unreadable, corrupt, or holds no shape at all."""


@dataclass
class _Issues:
    errors: list[dict[str, str]] = field(default_factory=list)
    warnings: list[dict[str, str]] = field(default_factory=list)

    def error(self, code: str, message: str) -> None:
        self.errors.append({"code": code, "message": message})

    def warn(self, code: str, message: str) -> None:
        self.warnings.append({"code": code, "message": message})


@dataclass
class _Loaded:
    """One parsed file: the whole shape and, for STEP and IGES, the XCAF document with names and structure."""

    fmt: str
    shape: TopoDS_Shape
    doc: TDocStd_Document | None = None
    free_labels: list[TDF_Label] = field(default_factory=list)
    # STEP only: component labels that are real product occurrences (NAUO); other XCAF components are
    # sub-shapes of one product's representation and belong to that part, not to the BOM.
    occurrences: set[str] | None = None
    product_ids: dict[str, str] = field(default_factory=dict)
    designators: dict[str, str] = field(default_factory=dict)
    unit_names: list[str] = field(default_factory=list)


def detect_format(path: str, fmt: str | None = None) -> str:
    """Return "STEP", "IGES", "STL" or "BREP" from an explicit format name or the file extension."""
    key = (fmt or Path(path).suffix).lower().lstrip(".")
    try:
        return _FORMATS[key]
    except KeyError:
        raise UnsupportedFormat(
            f"unsupported CAD format {fmt or Path(path).suffix or '(none)'!r}; expected STEP, IGES, STL or BREP"
        ) from None


def analyze_file(
    path: str,
    fmt: str | None = None,
    progress: Progress | None = None,
    *,
    display_name: str | None = None,
    glb_path: str | None = None,
    max_triangles: int = DEFAULT_MAX_TRIANGLES,
    relative_deflection: float = DEFAULT_RELATIVE_DEFLECTION,
) -> dict[str, Any]:
    """Parse ``path`` once and return its geometry, topology, validation, units and BOM as plain data.

    ``display_name`` names the BOM root when the file carries no product name (STL, BREP, bare IGES);
    it defaults to the file's stem. With ``glb_path`` the same parsed document is also tessellated to a
    binary glTF there (one more progress stage; see processing.viewable for its layout), with a chord
    deflection of ``relative_deflection`` times the bounding-box diagonal, coarsened until at most
    ``max_triangles`` triangles are drawn. Raises UnsupportedFormat or CadFileError; an invalid shape is a
    result (``validation.is_valid_geometry`` false), not an error.
    """
    kind = detect_format(path, fmt)
    total = ANALYSIS_STAGES + (1 if glb_path else 0)
    report = progress or _no_progress
    name = display_name or Path(path).stem or Path(path).name
    timings: dict[str, float] = {}
    _quiet_occt()
    started = clock = time.perf_counter()

    report(0, total, f"Reading {kind} file")
    loaded = _load(path, kind)
    timings["parse"], clock = _lap(clock)
    topology = _topology(loaded.shape)
    report(1, total, f"Parsed {kind} file: {topology['solids']} solids, {topology['faces']} faces")

    geometry = _geometry(loaded.shape, has_faces=topology["faces"] > 0)
    timings["geometry"], clock = _lap(clock)
    report(2, total, "Computed mass properties")

    issues = _Issues()
    brep_valid = _validate(loaded, topology, geometry["volume_mm3"], issues)
    timings["validation"], clock = _lap(clock)
    report(
        3, total, "Validated geometry" if not issues.errors else f"Validated geometry: {len(issues.errors)} problems"
    )

    unit = _source_unit(loaded, issues)
    bom, bom_stats, walk = _bom(loaded, name, geometry["volume_mm3"], issues)
    timings["bom"], clock = _lap(clock)
    report(4, total, f"Extracted bill of materials: {bom_stats['part_count']} parts")

    glb: dict[str, Any] | None = None
    if glb_path:
        report(5, total, "Tessellating for the viewer")
        glb = _write_glb(loaded, walk, bom[0], glb_path, geometry["bounding_box"], max_triangles, relative_deflection)
        timings["glb"], clock = _lap(clock)
    timings["total"] = round(time.perf_counter() - started, 4)

    result: dict[str, Any] = {
        "format": kind,
        "length_unit": "mm",
        "source_length_unit": unit[0] if unit else None,
        "source_length_unit_symbol": unit[1] if unit else None,
        "source_length_unit_mm": unit[2] if unit else None,
        "geometry": geometry,
        "topology": topology,
        "validation": {
            "is_valid_geometry": not issues.errors,
            "brepcheck_valid": brep_valid,
            "validation_errors": issues.errors,
            "warnings": issues.warnings,
        },
        "bom": bom,
        "bom_part_count": bom_stats["part_count"],
        "bom_node_count": bom_stats["node_count"],
        "glb": glb,
        "timings": timings,
    }
    report(total, total, "Done")
    return result


def tessellate_to_glb(
    path: str,
    fmt: str | None,
    out_path: str,
    *,
    progress: Progress | None = None,
    display_name: str | None = None,
    max_triangles: int = DEFAULT_MAX_TRIANGLES,
    relative_deflection: float = DEFAULT_RELATIVE_DEFLECTION,
) -> dict[str, Any]:
    """Parse ``path`` and write only its viewer GLB to ``out_path``, as ``analyze_file(glb_path=...)`` does
    (for designs analysed before viewables existed). Returns the GLB summary (path, bytes, triangles, ...)."""
    kind = detect_format(path, fmt)
    report = progress or _no_progress
    name = display_name or Path(path).stem or Path(path).name
    _quiet_occt()
    report(0, 3, f"Reading {kind} file")
    loaded = _load(path, kind)
    report(1, 3, "Reading the assembly structure")
    # The BOM walk names the nodes exactly as the analysis did; its volumes are not needed here.
    bom, _, walk = _bom(loaded, name, None, _Issues())
    report(2, 3, "Tessellating for the viewer")
    glb = _write_glb(loaded, walk, bom[0], out_path, _bounding_box(loaded.shape), max_triangles, relative_deflection)
    report(3, 3, "Done")
    return glb


def parse_scene(
    path: str, fmt: str | None = None, *, display_name: str | None = None
) -> tuple[TopoDS_Shape, dict[str, Any], ScenePart]:
    """Parse ``path`` into its whole shape, its BOM tree (named and numbered exactly as the analysis names them)
    and the viewer's scene of those rows: each row's own faces and the placements of its children. The revision
    diff and the markup carry (processing.geodiff) work on this."""
    kind = detect_format(path, fmt)
    _quiet_occt()
    loaded = _load(path, kind)
    bom, _, walk = _bom(loaded, display_name or Path(path).stem or Path(path).name, None, _Issues())
    return loaded.shape, bom[0], _scene(walk, bom[0], loaded.shape)


# -- parsing -----------------------------------------------------------------------------------------


def _load(path: str, kind: str) -> _Loaded:
    if not os.path.isfile(path):
        raise CadFileError(f"file not found: {path}")
    if os.path.getsize(path) == 0:
        raise CadFileError("file is empty")
    try:
        if kind == "STEP":
            loaded = _load_step(path)
        elif kind == "IGES":
            loaded = _load_iges(path)
        elif kind == "STL":
            loaded = _load_single(kind, _read_stl(path))
        else:
            loaded = _load_single(kind, _read_brep(path))
    except CadError:
        raise
    except Exception as exc:  # OpenCascade raises Standard_Failure subclasses on corrupt input
        raise CadFileError(f"cannot read {kind} file: {type(exc).__name__}: {exc}") from exc
    if loaded.shape.IsNull():
        raise CadFileError(f"the {kind} file holds no shape")
    return loaded


def _new_document() -> TDocStd_Document:
    return TDocStd_Document(TCollection_ExtendedString("XmlOcaf"))


def _free_labels(doc: TDocStd_Document) -> list[TDF_Label]:
    seq = Sequence_TDF_Label()
    XCAFDoc_DocumentTool.ShapeTool_s(doc.Main()).GetFreeShapes(seq)
    return [seq.Value(i) for i in range(1, seq.Length() + 1)]


def _combined_shape(labels: list[TDF_Label]) -> TopoDS_Shape:
    if len(labels) == 1:
        return XCAFDoc_ShapeTool.GetShape_s(labels[0])
    compound = TopoDS_Compound()
    builder = BRep_Builder()
    builder.MakeCompound(compound)
    for label in labels:
        builder.Add(compound, XCAFDoc_ShapeTool.GetShape_s(label))
    return compound


def _load_step(path: str) -> _Loaded:
    doc = _new_document()
    reader = STEPCAFControl_Reader()
    reader.SetNameMode(True)
    reader.SetColorMode(True)
    reader.SetLayerMode(False)
    status = reader.ReadFile(path)
    if status != IFSelect_ReturnStatus.IFSelect_RetDone:
        raise CadFileError(f"not a readable STEP file: the parser rejected it ({status.name}); corrupt or truncated?")
    if not reader.Transfer(doc):
        raise CadFileError("the STEP file holds no transferable shape")
    labels = _free_labels(doc)
    if not labels:
        raise CadFileError("the STEP file holds no shape")
    loaded = _Loaded("STEP", _combined_shape(labels), doc, labels, occurrences=set())
    _step_products(reader, doc, loaded)
    names = Sequence_TCollection_AsciiString()
    reader.Reader().FileUnits(names, Sequence_TCollection_AsciiString(), Sequence_TCollection_AsciiString())
    loaded.unit_names = [names.Value(i).ToCString() for i in range(1, names.Length() + 1)]
    return loaded


def _step_products(reader: STEPCAFControl_Reader, doc: TDocStd_Document, loaded: _Loaded) -> None:
    """Map XCAF labels to STEP products: which components are product occurrences; ids; designators."""
    assert loaded.occurrences is not None
    ws = reader.Reader().WS()
    model = reader.Reader().StepModel()
    shape_tool = XCAFDoc_DocumentTool.ShapeTool_s(doc.Main())
    tool = STEPConstruct_Tool(ws)
    label_map = reader.GetShapeLabelMap()
    # One pass over the model. isinstance on the bound types is cheap (~2 us an entity); IsKind and
    # WorkSession.GiveList("step-type(...)") are not usable: the first is slow, the second segfaults on
    # some valid files (face_recognition_sample_part.stp).
    nauos: list[StepRepr_NextAssemblyUsageOccurrence] = []
    definitions: list[StepBasic_ProductDefinition] = []
    for i in range(1, model.NbEntities() + 1):
        entity = model.Value(i)
        if isinstance(entity, StepRepr_NextAssemblyUsageOccurrence):
            nauos.append(entity)
        elif isinstance(entity, StepBasic_ProductDefinition):
            definitions.append(entity)
    # Products by identity: the bindings hand back one Python object per entity, and the model's own
    # Number() answers 0 for every entity of a model read this way, which made every product look like a child.
    child_products: set[StepBasic_Product] = set()
    for nauo in nauos:
        try:
            product = nauo.RelatedProductDefinition().Formation().OfProduct()
            child_products.add(product)
            component = STEPCAFControl_Reader.FindInstance_s(nauo, shape_tool, tool, label_map)
        except Exception:  # a dangling reference in a damaged file: that occurrence stays unnamed
            continue
        if component.IsNull():
            continue
        entry = _entry(component)
        loaded.occurrences.add(entry)
        referred = TDF_Label()
        if XCAFDoc_ShapeTool.GetReferredShape_s(component, referred):
            product_id = _hstring(product.Id())
            if product_id:
                loaded.product_ids[_entry(referred)] = product_id
        if nauo.HasReferenceDesignator():
            designator = _hstring(nauo.ReferenceDesignator())
            if designator:
                loaded.designators[entry] = designator
    # Root products are never the child of an occurrence; match them to free labels by name.
    roots: list[tuple[str, str]] = []
    for definition in definitions:
        try:
            product = definition.Formation().OfProduct()
        except Exception:
            continue
        if product not in child_products:
            roots.append((_hstring(product.Id()), _hstring(product.Name())))
    for label in loaded.free_labels:
        entry = _entry(label)
        if entry in loaded.product_ids:
            continue
        name = _label_name(label)
        matches = [pid for pid, pname in roots if name and name in (pid, pname)]
        if len(matches) == 1 or (len(roots) == 1 and len(loaded.free_labels) == 1):
            product_id = matches[0] if matches else roots[0][0]
            if product_id:
                loaded.product_ids[entry] = product_id


def _load_iges(path: str) -> _Loaded:
    doc = _new_document()
    reader = IGESCAFControl_Reader()
    reader.SetNameMode(True)
    reader.SetColorMode(True)
    reader.SetLayerMode(False)
    status = reader.ReadFile(path)
    if status != IFSelect_ReturnStatus.IFSelect_RetDone:
        raise CadFileError(f"not a readable IGES file: the parser rejected it ({status.name}); corrupt or truncated?")
    if not reader.Transfer(doc):
        raise CadFileError("the IGES file holds no transferable shape")
    labels = _free_labels(doc)
    if not labels:
        raise CadFileError("the IGES file holds no shape")
    loaded = _Loaded("IGES", _combined_shape(labels), doc, labels)
    section = reader.IGESModel().GlobalSection()
    unit_name = _hstring(section.UnitName()) if section.UnitName() is not None else ""
    if unit_name.lower() in _UNIT_TABLE:
        loaded.unit_names = [unit_name]
    elif section.UnitFlag() in _IGES_UNIT_FLAGS:
        loaded.unit_names = [_IGES_UNIT_FLAGS[section.UnitFlag()]]
    elif unit_name:
        loaded.unit_names = [unit_name]
    return loaded


def _read_stl(path: str) -> TopoDS_Shape:
    shape = TopoDS_Shape()
    if not StlAPI_Reader().Read(shape, path) or shape.IsNull():
        raise CadFileError("not a readable STL file")
    return shape


def _read_brep(path: str) -> TopoDS_Shape:
    shape = TopoDS_Shape()
    if not BRepTools.Read_s(shape, path, BRep_Builder()) or shape.IsNull():
        raise CadFileError("not a readable OpenCascade BREP file")
    return shape


def _load_single(kind: str, shape: TopoDS_Shape) -> _Loaded:
    return _Loaded(kind, shape)


# -- geometry ----------------------------------------------------------------------------------------


def _count(shape: TopoDS_Shape, kind: TopAbs_ShapeEnum) -> int:
    # An indexed map counts each sub-shape once even when several faces or solids share it; instances of
    # one part at different locations are different sub-shapes, as they are in the assembled product.
    found = IndexedMap_TopoDS_Shape_TopTools_ShapeMapHasher()
    TopExp.MapShapes_s(shape, kind, found)
    return found.Extent()


def _topology(shape: TopoDS_Shape) -> dict[str, int]:
    return {
        "solids": _count(shape, TopAbs_SOLID),
        "shells": _count(shape, TopAbs_SHELL),
        "faces": _count(shape, TopAbs_FACE),
        "edges": _count(shape, TopAbs_EDGE),
        "vertices": _count(shape, TopAbs_VERTEX),
    }


def _geometry(shape: TopoDS_Shape, *, has_faces: bool) -> dict[str, Any]:
    volume_props = GProp_GProps()
    BRepGProp.VolumeProperties_s(shape, volume_props)
    surface_props = GProp_GProps()
    BRepGProp.SurfaceProperties_s(shape, surface_props)
    volume = _num(volume_props.Mass())
    geometry: dict[str, Any] = {
        "volume_mm3": volume,
        "surface_area_mm2": _num(surface_props.Mass()),
        "center_of_mass": None,
        "bounding_box": _bounding_box(shape),
        "inertia_tensor": None,
        "principal_moments": None,
        "principal_axes": None,
    }
    # Without faces the volume integral is empty and OpenCascade's centre of mass is arbitrary.
    if has_faces and volume != 0.0:
        centre = volume_props.CentreOfMass()
        geometry["center_of_mass"] = _point(centre.X(), centre.Y(), centre.Z())
        matrix = volume_props.MatrixOfInertia()
        geometry["inertia_tensor"] = [[_num(matrix.Value(r, c)) for c in (1, 2, 3)] for r in (1, 2, 3)]
        principal = volume_props.PrincipalProperties()
        geometry["principal_moments"] = [_num(m) for m in principal.Moments()]
        geometry["principal_axes"] = [
            [_num(axis.X()), _num(axis.Y()), _num(axis.Z())]
            for axis in (
                principal.FirstAxisOfInertia(),
                principal.SecondAxisOfInertia(),
                principal.ThirdAxisOfInertia(),
            )
        ]
    return geometry


def _bounding_box(shape: TopoDS_Shape) -> dict[str, Any] | None:
    box = Bnd_Box()
    BRepBndLib.Add_s(shape, box, True)
    if box.IsVoid():
        return None
    low, high = box.CornerMin(), box.CornerMax()
    return {
        "min": _point(low.X(), low.Y(), low.Z()),
        "max": _point(high.X(), high.Y(), high.Z()),
        "size": _point(high.X() - low.X(), high.Y() - low.Y(), high.Z() - low.Z()),
    }


# -- validation --------------------------------------------------------------------------------------


def _validate(loaded: _Loaded, topology: dict[str, int], volume: float | None, issues: _Issues) -> bool:
    """Record why the shape is not a valid closed solid (or is a mesh); returns BRepCheck_Analyzer's verdict."""
    shape = loaded.shape
    brep_valid = bool(BRepCheck_Analyzer(shape).IsValid())
    if not brep_valid:
        issues.error("BREPCHECK_FAILED", "OpenCascade's BRepCheck_Analyzer reports invalid topology or geometry.")
    is_mesh = loaded.fmt == "STL"
    if topology["faces"] == 0:
        issues.error("NO_FACES", "The model has no faces: it holds only curves or points, so it encloses no volume.")
    if topology["solids"] == 0:
        if is_mesh:
            issues.warn(
                "MESH_ONLY",
                "STL holds a triangle mesh, not a B-rep solid; closedness and volume were checked on the mesh.",
            )
        else:
            issues.error("NO_SOLID", "The model has no solid body (only surfaces, wires or curves).")
    if topology["faces"] == 0:
        return brep_valid

    shells = IndexedMap_TopoDS_Shape_TopTools_ShapeMapHasher()
    TopExp.MapShapes_s(shape, TopAbs_SHELL, shells)
    open_shells = sum(1 for i in range(1, shells.Extent() + 1) if not BRep_Tool.IsClosed_s(shells.FindKey(i)))
    if open_shells:
        issues.error("OPEN_SHELL", f"{open_shells} of {shells.Extent()} shells are open (not watertight).")

    edge_faces = IndexedDataMap_TopoDS_Shape_List_TopoDS_Shape_TopTools_ShapeMapHasher()
    TopExp.MapShapesAndAncestors_s(shape, TopAbs_EDGE, TopAbs_FACE, edge_faces)
    free_edges = 0
    for i in range(1, edge_faces.Extent() + 1):
        # A seam edge is listed twice for its one face, so only a single entry marks a boundary.
        if edge_faces.FindFromIndex(i).Size() == 1 and not BRep_Tool.Degenerated_s(TopoDS.Edge(edge_faces.FindKey(i))):
            free_edges += 1
    if free_edges:
        issues.error(
            "FREE_EDGES",
            f"{free_edges} edges bound only one face: the surface has gaps or "
            f"boundaries and does not enclose a volume.",
        )
    if volume is None or volume <= 0.0:
        issues.error(
            "NON_POSITIVE_VOLUME",
            f"The computed volume is {volume} mm³; a closed, correctly oriented solid has a positive volume.",
        )
    if topology["solids"] and topology["faces"] > _faces_in_solids(shape):
        issues.warn("LOOSE_FACES", "Some faces do not belong to any solid; they add area but no volume.")
    return brep_valid


def _faces_in_solids(shape: TopoDS_Shape) -> int:
    faces = IndexedMap_TopoDS_Shape_TopTools_ShapeMapHasher()
    solids = IndexedMap_TopoDS_Shape_TopTools_ShapeMapHasher()
    TopExp.MapShapes_s(shape, TopAbs_SOLID, solids)
    for i in range(1, solids.Extent() + 1):
        TopExp.MapShapes_s(solids.FindKey(i), TopAbs_FACE, faces)
    return faces.Extent()


def _source_unit(loaded: _Loaded, issues: _Issues) -> tuple[str, str, float | None] | None:
    if not loaded.unit_names:
        if loaded.fmt in ("STL", "BREP"):
            issues.warn("UNITLESS_FORMAT", f"{loaded.fmt} files carry no length unit; millimetres assumed.")
        return None
    known = []
    for raw in loaded.unit_names:
        entry = _UNIT_TABLE.get(raw.strip().lower())
        known.append(entry if entry else (raw.strip().lower(), raw.strip(), None))
    if len({k[0] for k in known}) > 1:
        issues.warn(
            "MIXED_UNITS",
            "The file uses several length units: "
            + ", ".join(sorted({k[0] for k in known}))
            + "; the reader converted each to millimetres.",
        )
    return known[0]


# -- bill of materials -------------------------------------------------------------------------------


@dataclass
class _BomWalk:
    loaded: _Loaded
    whole_volume: float | None
    issues: _Issues
    volumes: dict[str, float | None] = field(default_factory=dict)
    nodes: int = 0
    truncated: bool = False
    # For the viewer: each BOM path's label and its non-product components, and each child path's occurrences.
    labels: dict[str, tuple[TDF_Label, list[TDF_Label]]] = field(default_factory=dict)
    occurrences: dict[str, list[TDF_Label]] = field(default_factory=dict)


@dataclass(frozen=True)
class _Place:
    """Where a product sits in the tree: its position and how often its parent uses it, under which names."""

    path: str
    depth: int
    quantity: int = 1
    designator: str = ""
    instances: tuple[str, ...] = ()


ROOT = _Place("0001", 1)


def _bom(
    loaded: _Loaded, display_name: str, whole_volume: float | None, issues: _Issues
) -> tuple[list[dict[str, Any]], dict[str, int], _BomWalk]:
    walk = _BomWalk(loaded, whole_volume, issues)
    labels = loaded.free_labels
    if not labels or (
        loaded.fmt == "IGES" and len(labels) > 1 and not any(XCAFDoc_ShapeTool.IsAssembly_s(label) for label in labels)
    ):
        # STL/BREP, and IGES made of loose entities, are one part: the file is the product.
        walk.nodes = 1
        root = _node(display_name, display_name, ROOT, volume=whole_volume, children=[])
    elif len(labels) == 1:
        root = _label_node(walk, labels[0], ROOT, single_root=True)
    else:
        walk.nodes = 1
        children = [
            _label_node(walk, label, _Place(f"0001.{i:04d}", 2), single_root=False)
            for i, label in enumerate(labels[:MAX_BOM_NODES], start=1)
        ]
        root = _node(display_name, display_name, ROOT, volume=whole_volume, children=children)
    if walk.truncated:
        issues.warn("BOM_TRUNCATED", f"The assembly tree was cut at {MAX_BOM_NODES} nodes or depth {MAX_BOM_DEPTH}.")
    return [root], {"part_count": _part_count(root), "node_count": walk.nodes}, walk


def _label_node(walk: _BomWalk, label: TDF_Label, place: _Place, *, single_root: bool) -> dict[str, Any]:
    """The BOM node of one XCAF product at `place`, with its children grouped by product and counted."""
    walk.nodes += 1
    loaded = walk.loaded
    entry = _entry(label)
    name = _label_name(label) or "unnamed"
    part_number = loaded.product_ids.get(entry) or name
    groups: dict[str, list[TDF_Label]] = {}
    referred_of: dict[str, TDF_Label] = {}
    extra: list[TDF_Label] = []  # components that are geometry of this part, not product occurrences
    components = Sequence_TDF_Label()
    XCAFDoc_ShapeTool.GetComponents_s(label, components, False)
    for i in range(1, components.Length() + 1):
        component = components.Value(i)
        referred = TDF_Label()
        is_occurrence = loaded.occurrences is None or _entry(component) in loaded.occurrences
        if not is_occurrence or not XCAFDoc_ShapeTool.GetReferredShape_s(component, referred):
            extra.append(component)
            continue
        key = _entry(referred)
        referred_of.setdefault(key, referred)
        groups.setdefault(key, []).append(component)  # dicts keep first-occurrence order

    walk.labels[place.path] = (label, extra)
    children: list[dict[str, Any]] = []
    if groups and (place.depth >= MAX_BOM_DEPTH or walk.nodes >= MAX_BOM_NODES):
        walk.truncated = True
        groups = {}
    for index, (key, occurrences) in enumerate(groups.items(), start=1):
        if walk.nodes >= MAX_BOM_NODES:
            walk.truncated = True
            break
        walk.occurrences[f"{place.path}.{index:04d}"] = occurrences
        names = [_label_name(c) for c in occurrences]
        explicit = [loaded.designators[_entry(c)] for c in occurrences if _entry(c) in loaded.designators]
        child = _Place(
            path=f"{place.path}.{index:04d}",
            depth=place.depth + 1,
            quantity=len(occurrences),
            designator=_designator(explicit or names),
            instances=tuple(n for n in names if n)[:MAX_INSTANCE_NAMES],
        )
        children.append(_label_node(walk, referred_of[key], child, single_root=False))

    if single_root:
        volume = walk.whole_volume  # one instance of the root is the whole file, already integrated
    elif not children:
        volume = _label_volume(walk, entry, label)
    else:
        volume = _sum_volumes(
            [(c["volume_mm3"], c["quantity"]) for c in children]
            + [(_label_volume(walk, _entry(c), c), 1) for c in extra]
        )
    return _node(name, part_number, place, volume=volume, children=children)


def _node(
    name: str, part_number: str, place: _Place, *, volume: float | None, children: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "part_name": name[:MAX_NAME_CHARS],
        "part_number": part_number[:MAX_NAME_CHARS],
        "quantity": place.quantity,
        "unit_of_measure": "EA",
        "reference_designator": place.designator,
        "instance_names": list(place.instances),
        "path": place.path,
        "depth": place.depth,
        "is_assembly": bool(children),
        "volume_mm3": volume,
        "children": children,
    }


def _label_volume(walk: _BomWalk, entry: str, label: TDF_Label) -> float | None:
    # One computation per product: every instance of a part has the same volume wherever it is placed.
    if entry not in walk.volumes:
        props = GProp_GProps()
        BRepGProp.VolumeProperties_s(XCAFDoc_ShapeTool.GetShape_s(label), props)
        walk.volumes[entry] = _num(props.Mass())
    return walk.volumes[entry]


def _sum_volumes(parts: list[tuple[float | None, int]]) -> float | None:
    if any(v is None for v, _ in parts):
        return None
    return _num(sum((v or 0.0) * q for v, q in parts))


def _part_count(node: dict[str, Any]) -> int:
    if not node["children"]:
        return int(node["quantity"])
    return int(node["quantity"]) * sum(_part_count(child) for child in node["children"])


def _designator(names: list[str]) -> str:
    unique = list(dict.fromkeys(n for n in names if n))
    text = ", ".join(unique)
    return text if len(text) <= MAX_NAME_CHARS else text[: MAX_NAME_CHARS - 1] + "…"


# -- glTF --------------------------------------------------------------------------------------------


def _write_glb(
    loaded: _Loaded,
    walk: _BomWalk,
    bom_root: dict[str, Any],
    out_path: str,
    box: dict[str, Any] | None,
    max_triangles: int,
    relative_deflection: float,
) -> dict[str, Any]:
    root = _scene(walk, bom_root, loaded.shape)
    # Deflection relative to the model's size keeps a watch screw and a ship hull equally smooth.
    corners = [list(box["min"].values()), list(box["max"].values())] if box else []
    diagonal = math.dist(*corners) if corners and None not in corners[0] + corners[1] else 1.0
    info = mesh_within_budget(loaded.shape, root, diagonal, relative_deflection, max_triangles)
    return write_glb(root, out_path, info)


def _scene(walk: _BomWalk, node: dict[str, Any], whole: TopoDS_Shape) -> ScenePart:
    """The BOM row ``node`` and its subtree as viewer parts: the same rows, with geometry and placements."""
    path, children = node["path"], node["children"]
    found = walk.labels.get(path)
    if found is None:
        # A file without assembly structure is one part; several free shapes hang under a synthetic root.
        part = ScenePart(path, node["part_name"], node["part_number"], f"file:{path}", None if children else whole)
    else:
        label, extra = found
        if children:
            shape = _compound([XCAFDoc_ShapeTool.GetShape_s(c) for c in extra]) if extra else None
            key = _entry(label) + "/own"
        else:
            # A leaf, or a sub-assembly cut by the BOM limits: the whole shape belongs to this row.
            shape, key = XCAFDoc_ShapeTool.GetShape_s(label), _entry(label) + "/all"
        part = ScenePart(path, node["part_name"], node["part_number"], key, shape, color=_label_color(label))
    for child in children:
        components = walk.occurrences.get(child["path"])
        placements = (
            [(XCAFDoc_ShapeTool.GetLocation_s(c), _label_name(c)[:MAX_NAME_CHARS]) for c in components]
            if components
            else [(TopLoc_Location(), "")]
        )
        part.children.append((_scene(walk, child, whole), placements))
    return part


def _compound(shapes: list[TopoDS_Shape]) -> TopoDS_Compound:
    compound = TopoDS_Compound()
    builder = BRep_Builder()
    builder.MakeCompound(compound)
    for shape in shapes:
        builder.Add(compound, shape)
    return compound


def _label_color(label: TDF_Label) -> tuple[float, float, float] | None:
    color = Quantity_Color()
    for kind in (XCAFDoc_ColorType.XCAFDoc_ColorSurf, XCAFDoc_ColorType.XCAFDoc_ColorGen):
        if XCAFDoc_ColorTool.GetColor_s(label, kind, color):
            return (color.Red(), color.Green(), color.Blue())
    return None


# -- small helpers -----------------------------------------------------------------------------------


def _no_progress(current: int, total: int, message: str) -> None:
    return None


def _lap(since: float) -> tuple[float, float]:
    now = time.perf_counter()
    return round(now - since, 4), now


def _quiet_occt() -> None:
    # The readers print parse statistics to stdout; in a worker that is noise in the server's log.
    for printer in Message.DefaultMessenger_s().Printers():
        printer.SetTraceLevel(Message_Gravity.Message_Fail)


def _num(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _point(x: float, y: float, z: float) -> dict[str, float | None]:
    return {"x": _num(x), "y": _num(y), "z": _num(z)}


def _entry(label: TDF_Label) -> str:
    text = TCollection_AsciiString()
    TDF_Tool.Entry_s(label, text)
    return text.ToCString()


def _label_name(label: TDF_Label) -> str:
    attribute = TDataStd_Name()
    if label.FindAttribute(TDataStd_Name.GetID_s(), attribute):
        try:
            return attribute.Get().ToExtString().strip()
        except Exception:  # undecodable bytes in a name must not fail the analysis
            return ""
    return ""


def _hstring(value: Any) -> str:
    if value is None:
        return ""
    try:
        text = value.ToCString()
    except Exception:
        return ""
    return text.strip() if isinstance(text, str) else ""
