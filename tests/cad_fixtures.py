"""CAD inputs the tests build themselves with OpenCascade, cached by a hash of this file, and the analytic
figures each one must yield."""

from __future__ import annotations

import functools
import hashlib
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from OCP.BRep import BRep_Builder, BRep_Tool
from OCP.BRepAlgoAPI import BRepAlgoAPI_Cut
from OCP.BRepBuilderAPI import BRepBuilderAPI_MakeFace, BRepBuilderAPI_MakePolygon
from OCP.BRepMesh import BRepMesh_IncrementalMesh
from OCP.BRepPrimAPI import BRepPrimAPI_MakeBox, BRepPrimAPI_MakeCylinder, BRepPrimAPI_MakePrism
from OCP.BRepTools import BRepTools
from OCP.gp import gp_Pnt, gp_Trsf, gp_Vec
from OCP.IFSelect import IFSelect_ReturnStatus
from OCP.IGESCAFControl import IGESCAFControl_Writer
from OCP.Interface import Interface_Static
from OCP.Message import Message, Message_Gravity
from OCP.StepBasic import StepBasic_Product
from OCP.STEPCAFControl import STEPCAFControl_Writer
from OCP.STEPControl import STEPControl_StepModelType, STEPControl_Writer
from OCP.StlAPI import StlAPI_Writer
from OCP.TCollection import TCollection_ExtendedString, TCollection_HAsciiString
from OCP.TDataStd import TDataStd_Name
from OCP.TDF import TDF_Label
from OCP.TDocStd import TDocStd_Document
from OCP.TopAbs import TopAbs_FACE, TopAbs_VERTEX
from OCP.TopExp import TopExp_Explorer
from OCP.TopLoc import TopLoc_Location
from OCP.TopoDS import TopoDS, TopoDS_Shape, TopoDS_Shell
from OCP.XCAFDoc import XCAFDoc_DocumentTool

# Bump to regenerate without editing anything else (the cache key is this file's bytes).
GENERATOR_VERSION = 1
CACHE_PREFIX = "enginel-cad-fixtures-"

# -- the parts, with their analytic figures ------------------------------------------------------------

BOX = (10.0, 20.0, 30.0)  # mm
CYLINDER = (5.0, 20.0)  # radius, height
INCH_BOX = (1.0, 2.0, 3.0)  # inches
PLATE = (120.0, 80.0, 6.0)
BRACKET = (40.0, 30.0, 5.0)
BOLT = (3.0, 30.0)
ROD = (4.0, 100.0)
NUT = (5.0, 5.0, 3.0)  # hexagon circumradius (= side), height, bore radius
LOOSE_FACE = (40.0, 25.0)  # the single planar face of plate.igs
WIRE = ((0.0, 0.0, 0.0), (40.0, 0.0, 0.0), (40.0, 25.0, 0.0), (0.0, 25.0, 10.0))  # a closed polyline
# Revision B of the assembly: a hole through the base plate (radius, centre x, y; through its thickness), the rod
# removed from the rod assembly, and a third nut on it. Revision B of the box: 10 % longer in x.
HOLE = (5.0, 100.0, 60.0)
ROD_NUTS_B = (10.0, 50.0, 85.0)
LONG_BOX = (11.0, 20.0, 30.0)


def box_volume(a: float, b: float, c: float) -> float:
    return a * b * c


def box_area(a: float, b: float, c: float) -> float:
    return 2 * (a * b + a * c + b * c)


def cylinder_volume(r: float, h: float) -> float:
    return math.pi * r * r * h


def cylinder_area(r: float, h: float) -> float:
    return 2 * math.pi * r * h + 2 * math.pi * r * r


def _hexagon_area(side: float) -> float:
    return 3 * math.sqrt(3) / 2 * side * side


def nut_volume(side: float, h: float, bore: float) -> float:
    return (_hexagon_area(side) - math.pi * bore * bore) * h


def nut_area(side: float, h: float, bore: float) -> float:
    cap = _hexagon_area(side) - math.pi * bore * bore
    return 2 * cap + 6 * side * h + 2 * math.pi * bore * h


# -- what a file must yield ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """One expected BOM row: name, part number, quantity under its parent, instance names, children."""

    name: str
    number: str
    quantity: int = 1
    instances: tuple[str, ...] = ()
    children: tuple[Part, ...] = ()

    def shape(self) -> tuple[object, ...]:
        """(name, quantity, children...) for comparing a tree at a glance."""
        return (self.name, self.quantity, *[child.shape() for child in self.children])

    def leaves(self, multiplier: int = 1) -> Iterator[tuple[Part, int]]:
        """Each leaf part with its total number of instances in the whole product."""
        count = multiplier * self.quantity
        if not self.children:
            yield self, count
        for child in self.children:
            yield from child.leaves(count)

    def rows(self) -> Iterator[Part]:
        yield self
        for child in self.children:
            yield from child.rows()

    def occurrences(self, path: str = "0001", multiplier: int = 1) -> Iterator[tuple[str, Part, int]]:
        """(BOM path, row, its instances in the whole product) for this row and every row below, in tree order:
        the viewer GLB has one node per instance of each row."""
        count = multiplier * self.quantity
        yield path, self, count
        for index, child in enumerate(self.children, start=1):
            yield from child.occurrences(f"{path}.{index:04d}", count)


@dataclass(frozen=True)
class Expected:
    """The figures one generated file must yield; None means "not asserted" (see the note on each file)."""

    format: str  # STEP | IGES | STL | BREP
    readable: bool = True  # False: OpenCascade refuses it with CadFileError
    sniffs: bool = True  # False: the upload's format check refuses it (a truncated file)
    solids: int | None = None
    shells: int | None = None
    faces: int | None = None
    volume_mm3: float | None = None
    surface_area_mm2: float | None = None
    center_of_mass: tuple[float, float, float] | None = None
    bbox_min: tuple[float, float, float] | None = None
    bbox_max: tuple[float, float, float] | None = None
    valid: bool | None = None
    errors: frozenset[str] = frozenset()
    warnings: frozenset[str] = frozenset()
    unit: str | None = None  # source_length_unit
    bom: Part | None = None

    @property
    def part_count(self) -> int | None:
        return None if self.bom is None else sum(count for _, count in self.bom.leaves())

    @property
    def node_count(self) -> int | None:
        return None if self.bom is None else len(list(self.bom.rows()))


def _nut_row(instances: tuple[str, ...]) -> Part:
    return Part("nut", "NT-M6", len(instances), instances)


ASSEMBLY_BOM = Part(
    "demo-assembly",
    "DA-100",
    children=(
        Part("base-plate", "PL-120-80", 1, ("base-plate_1",)),
        Part(
            "bracket-assembly",
            "BA-200",
            2,
            ("bracket-assembly_1", "bracket-assembly_2"),
            (
                Part("bracket", "BR-40-30", 1, ("bracket_1",)),
                Part(
                    "bolt-assembly",
                    "BL-300",
                    2,
                    ("bolt-assembly_1", "bolt-assembly_2"),
                    (Part("bolt", "BT-M6-30", 1, ("bolt_1",)), _nut_row(("nut_1",))),
                ),
            ),
        ),
        Part(
            "rod-assembly",
            "RA-400",
            1,
            ("rod-assembly_1",),
            (Part("rod", "RD-8-100", 1, ("rod_1",)), _nut_row(("nut_1", "nut_2"))),
        ),
    ),
)
PART_VOLUMES = {
    "base-plate": box_volume(*PLATE),
    "bracket": box_volume(*BRACKET),
    "bolt": cylinder_volume(*BOLT),
    "nut": nut_volume(*NUT),
    "rod": cylinder_volume(*ROD),
}
PART_AREAS = {
    "base-plate": box_area(*PLATE),
    "bracket": box_area(*BRACKET),
    "bolt": cylinder_area(*BOLT),
    "nut": nut_area(*NUT),
    "rod": cylinder_area(*ROD),
}
PART_FACES = {"base-plate": 6, "bracket": 6, "bolt": 3, "nut": 9, "rod": 3}  # a hexagonal nut: 6 sides, 2 caps, bore


def instances(bom: Part) -> dict[str, int]:
    """How many times each leaf part occurs in the whole product."""
    counts: dict[str, int] = {}
    for part, count in bom.leaves():
        counts[part.name] = counts.get(part.name, 0) + count
    return counts


ASSEMBLY_INSTANCES = instances(ASSEMBLY_BOM)

# Revision B (see HOLE): the changes a revision compare must report, and nothing else.
HOLE_VOLUME = cylinder_volume(HOLE[0], PLATE[2])
ASSEMBLY_B_BOM = replace(
    ASSEMBLY_BOM,
    children=(
        ASSEMBLY_BOM.children[0],
        ASSEMBLY_BOM.children[1],
        replace(ASSEMBLY_BOM.children[2], children=(_nut_row(("nut_1", "nut_2", "nut_3")),)),
    ),
)
PART_VOLUMES_B = {**PART_VOLUMES, "base-plate": box_volume(*PLATE) - HOLE_VOLUME}
PART_AREAS_B = {
    **PART_AREAS,
    "base-plate": box_area(*PLATE) - 2 * math.pi * HOLE[0] ** 2 + 2 * math.pi * HOLE[0] * PLATE[2],
}
PART_FACES_B = {**PART_FACES, "base-plate": 7}  # the hole's wall is one more face
ASSEMBLY_B_INSTANCES = instances(ASSEMBLY_B_BOM)

_BOX_CENTRE = (BOX[0] / 2, BOX[1] / 2, BOX[2] / 2)
BOX_SOLID = Expected(
    "STEP",
    solids=1,
    shells=1,
    faces=6,
    volume_mm3=box_volume(*BOX),
    surface_area_mm2=box_area(*BOX),
    center_of_mass=_BOX_CENTRE,
    bbox_min=(0.0, 0.0, 0.0),
    bbox_max=BOX,
    valid=True,
)
# A mesh of the box: its 12 planar triangles give the exact volume and area, but there is no solid.
BOX_MESH = replace(
    BOX_SOLID, format="STL", solids=0, shells=0, faces=12, warnings=frozenset({"MESH_ONLY", "UNITLESS_FORMAT"})
)
WIRE_BOX = replace(
    Expected("BREP"),
    solids=0,
    shells=0,
    faces=0,
    volume_mm3=0.0,
    surface_area_mm2=0.0,
    bbox_min=(min(p[0] for p in WIRE), min(p[1] for p in WIRE), min(p[2] for p in WIRE)),
    bbox_max=(max(p[0] for p in WIRE), max(p[1] for p in WIRE), max(p[2] for p in WIRE)),
    valid=False,
    errors=frozenset({"NO_FACES", "NO_SOLID"}),
)
UNITLESS = frozenset({"UNITLESS_FORMAT"})
INCH = 25.4

FILES: dict[str, Expected] = {
    "box.step": replace(BOX_SOLID, unit="millimetre", bom=Part("box", "BX-10-20-30")),
    "box.brep": replace(BOX_SOLID, format="BREP", warnings=UNITLESS, bom=Part("box", "box")),
    "box.igs": replace(BOX_SOLID, format="IGES", unit="millimetre", bom=Part("box", "box")),
    "box-ascii.stl": replace(BOX_MESH, bom=Part("box-ascii", "box-ascii")),
    "box-binary.stl": replace(BOX_MESH, bom=Part("box-binary", "box-binary")),
    "box-inch.step": replace(
        BOX_SOLID,
        volume_mm3=box_volume(*(INCH * d for d in INCH_BOX)),
        surface_area_mm2=box_area(*(INCH * d for d in INCH_BOX)),
        center_of_mass=(INCH * INCH_BOX[0] / 2, INCH * INCH_BOX[1] / 2, INCH * INCH_BOX[2] / 2),
        bbox_max=(INCH * INCH_BOX[0], INCH * INCH_BOX[1], INCH * INCH_BOX[2]),
        unit="inch",
        bom=Part("inch-box", "IB-1-2-3"),
    ),
    "cylinder.brep": Expected(
        "BREP",
        solids=1,
        shells=1,
        faces=3,
        volume_mm3=cylinder_volume(*CYLINDER),
        surface_area_mm2=cylinder_area(*CYLINDER),
        center_of_mass=(0.0, 0.0, CYLINDER[1] / 2),
        bbox_min=(-CYLINDER[0], -CYLINDER[0], 0.0),
        bbox_max=(CYLINDER[0], CYLINDER[0], CYLINDER[1]),
        valid=True,
        warnings=UNITLESS,
        bom=Part("cylinder", "cylinder"),
    ),
    "assembly.step": Expected(
        "STEP",
        solids=sum(ASSEMBLY_INSTANCES.values()),
        shells=sum(ASSEMBLY_INSTANCES.values()),
        faces=sum(PART_FACES[name] * n for name, n in ASSEMBLY_INSTANCES.items()),
        volume_mm3=sum(PART_VOLUMES[name] * n for name, n in ASSEMBLY_INSTANCES.items()),
        surface_area_mm2=sum(PART_AREAS[name] * n for name, n in ASSEMBLY_INSTANCES.items()),
        valid=True,
        unit="millimetre",
        bom=ASSEMBLY_BOM,
    ),
    "assembly-b.step": Expected(
        "STEP",
        solids=sum(ASSEMBLY_B_INSTANCES.values()),
        shells=sum(ASSEMBLY_B_INSTANCES.values()),
        faces=sum(PART_FACES_B[name] * n for name, n in ASSEMBLY_B_INSTANCES.items()),
        volume_mm3=sum(PART_VOLUMES_B[name] * n for name, n in ASSEMBLY_B_INSTANCES.items()),
        surface_area_mm2=sum(PART_AREAS_B[name] * n for name, n in ASSEMBLY_B_INSTANCES.items()),
        valid=True,
        unit="millimetre",
        bom=ASSEMBLY_B_BOM,
    ),
    "box-long.step": replace(
        BOX_SOLID,
        volume_mm3=box_volume(*LONG_BOX),
        surface_area_mm2=box_area(*LONG_BOX),
        center_of_mass=(LONG_BOX[0] / 2, LONG_BOX[1] / 2, LONG_BOX[2] / 2),
        bbox_max=LONG_BOX,
        unit="millimetre",
        bom=Part("box", "BX-10-20-30"),
    ),
    # The box without its top face. OpenCascade still integrates a "volume" over an open shell; that figure is
    # an artefact of its formula, so only the area is asserted.
    "open-shell.brep": Expected(
        "BREP",
        solids=0,
        shells=1,
        faces=5,
        surface_area_mm2=box_area(*BOX) - BOX[0] * BOX[1],
        bbox_min=(0.0, 0.0, 0.0),
        bbox_max=BOX,
        valid=False,
        errors=frozenset({"NO_SOLID", "OPEN_SHELL", "FREE_EDGES"}),
        warnings=UNITLESS,
        bom=Part("open-shell", "open-shell"),
    ),
    "plate.igs": Expected(
        "IGES",
        solids=0,
        shells=0,
        faces=1,
        volume_mm3=0.0,
        surface_area_mm2=LOOSE_FACE[0] * LOOSE_FACE[1],
        bbox_min=(0.0, 0.0, 0.0),
        bbox_max=(LOOSE_FACE[0], LOOSE_FACE[1], 0.0),
        valid=False,
        errors=frozenset({"NO_SOLID", "FREE_EDGES", "NON_POSITIVE_VOLUME"}),
        unit="millimetre",
        bom=Part("plate", "plate"),
    ),
    "wire.brep": replace(WIRE_BOX, warnings=UNITLESS, bom=Part("wire", "wire")),
    "curves.igs": replace(WIRE_BOX, format="IGES", unit="millimetre", bom=Part("curves", "curves")),
    # Cut in the middle: no END-ISO-10303-21 terminator, so the upload's check refuses it as well.
    "truncated.step": Expected("STEP", readable=False, sniffs=False),
    # The assembly cut inside a string, then a terminator: the upload accepts it, OpenCascade does not.
    "corrupt.step": Expected("STEP", readable=False),
    # Everything before the topology table: BREP has no end marker, so only OpenCascade can tell.
    "truncated.brep": Expected("BREP", readable=False),
}
FORMATS = ("STEP", "IGES", "STL", "BREP")


def names(*, fmt: str | None = None, readable: bool | None = None, sniffs: bool | None = None) -> list[str]:
    """Generated file names, optionally only those of one format, (un)readable or (not) passing the upload check."""
    return [
        name
        for name, exp in FILES.items()
        if (fmt is None or exp.format == fmt)
        and (readable is None or exp.readable is readable)
        and (sniffs is None or exp.sniffs is sniffs)
    ]


# -- writing ------------------------------------------------------------------------------------------


def _quiet() -> None:
    # The STEP and IGES writers print transfer statistics to stdout.
    for printer in Message.DefaultMessenger_s().Printers():
        printer.SetTraceLevel(Message_Gravity.Message_Fail)


def write_brep(shape: TopoDS_Shape, path: Path) -> Path:
    assert BRepTools.Write_s(shape, str(path)), path
    return path


def write_step(shape: TopoDS_Shape, path: Path, unit: str = "MM") -> Path:
    """One shape as a STEP file without product structure, in `unit` (MM, INCH, ...)."""
    _quiet()
    previous = Interface_Static.CVal_s("write.step.unit")
    Interface_Static.SetCVal_s("write.step.unit", unit)
    try:
        writer = STEPControl_Writer()
        writer.Transfer(shape, STEPControl_StepModelType.STEPControl_AsIs)
        assert writer.Write(str(path)) == IFSelect_ReturnStatus.IFSelect_RetDone, path
    finally:
        Interface_Static.SetCVal_s("write.step.unit", previous)
    return path


def write_stl(shape: TopoDS_Shape, path: Path, *, ascii: bool) -> Path:
    BRepMesh_IncrementalMesh(shape, 0.1)
    writer = StlAPI_Writer()
    writer.ASCIIMode = ascii
    assert writer.Write(shape, str(path)), path
    return path


def _location(x: float, y: float, z: float) -> TopLoc_Location:
    move = gp_Trsf()
    move.SetTranslation(gp_Vec(x, y, z))
    return TopLoc_Location(move)


def _name(label: TDF_Label, text: str) -> None:
    TDataStd_Name.Set_s(label, TCollection_ExtendedString(text))


class _Document:
    """An XCAF document: named products (shapes or assemblies) and named, placed instances of them."""

    def __init__(self) -> None:
        self.doc = TDocStd_Document(TCollection_ExtendedString("XmlOcaf"))
        self.tool = XCAFDoc_DocumentTool.ShapeTool_s(self.doc.Main())
        self.numbers: dict[str, str] = {}  # product name -> part number, written as the STEP product id

    def part(self, name: str, shape: TopoDS_Shape, number: str | None = None) -> TDF_Label:
        label = self.tool.AddShape(shape, False)
        _name(label, name)
        self.numbers[name] = number or name
        return label

    def assembly(self, name: str, number: str, *members: tuple[TDF_Label, tuple[float, float, float]]) -> TDF_Label:
        label = self.tool.NewShape()
        _name(label, name)
        self.numbers[name] = number
        counts: dict[str, int] = {}
        for member, (x, y, z) in members:
            product = _label_text(member)
            counts[product] = counts.get(product, 0) + 1
            _name(self.tool.AddComponent(label, member, _location(x, y, z)), f"{product}_{counts[product]}")
        return label

    def write_step(self, path: Path) -> Path:
        _quiet()
        writer = STEPCAFControl_Writer()
        writer.SetNameMode(True)
        self.tool.UpdateAssemblies()
        assert writer.Transfer(self.doc, STEPControl_StepModelType.STEPControl_AsIs)
        # XCAF names a STEP product after its label; its id is where STEP keeps the part number.
        model = writer.Writer().Model()
        for index in range(1, model.NbEntities() + 1):
            entity = model.Value(index)
            if isinstance(entity, StepBasic_Product):
                number = self.numbers.get(entity.Name().ToCString())
                if number:
                    entity.SetId(TCollection_HAsciiString(number))
        assert writer.Write(str(path)) == IFSelect_ReturnStatus.IFSelect_RetDone, path
        return path

    def write_iges(self, path: Path, *, solids: bool = True) -> Path:
        _quiet()
        IGESCAFControl_Writer()  # registers the IGES settings, which do not exist before
        previous = Interface_Static.IVal_s("write.iges.brep.mode")
        Interface_Static.SetIVal_s("write.iges.brep.mode", 1 if solids else 0)
        try:
            writer = IGESCAFControl_Writer()
            writer.SetNameMode(True)
            assert writer.Transfer(self.doc)
            assert writer.Write(str(path)), path
        finally:
            Interface_Static.SetIVal_s("write.iges.brep.mode", previous)
        return path


def _label_text(label: TDF_Label) -> str:
    attribute = TDataStd_Name()
    assert label.FindAttribute(TDataStd_Name.GetID_s(), attribute)
    return str(attribute.Get().ToExtString())


def _box(a: float, b: float, c: float) -> TopoDS_Shape:
    return BRepPrimAPI_MakeBox(a, b, c).Shape()


def _cylinder(r: float, h: float) -> TopoDS_Shape:
    return BRepPrimAPI_MakeCylinder(r, h).Shape()


def _polygon(points: tuple[tuple[float, float, float], ...]) -> BRepBuilderAPI_MakePolygon:
    polygon = BRepBuilderAPI_MakePolygon()
    for x, y, z in points:
        polygon.Add(gp_Pnt(x, y, z))
    polygon.Close()
    return polygon


def _nut(side: float, height: float, bore: float) -> TopoDS_Shape:
    corners = tuple((side * math.cos(math.pi / 3 * i), side * math.sin(math.pi / 3 * i), 0.0) for i in range(6))
    hexagon = BRepBuilderAPI_MakeFace(_polygon(corners).Wire()).Face()
    prism = BRepPrimAPI_MakePrism(hexagon, gp_Vec(0, 0, height)).Shape()
    cut = BRepAlgoAPI_Cut(prism, _cylinder(bore, height))
    cut.Build()
    assert cut.IsDone()
    return cut.Shape()


def _open_shell() -> TopoDS_Shape:
    """The box's faces except its top one (z = height): a shell that is not closed."""
    shell = TopoDS_Shell()
    builder = BRep_Builder()
    builder.MakeShell(shell)
    explorer = TopExp_Explorer(_box(*BOX), TopAbs_FACE)
    while explorer.More():
        face = TopoDS.Face(explorer.Current())
        explorer.Next()
        corners = TopExp_Explorer(face, TopAbs_VERTEX)
        heights = set()
        while corners.More():
            heights.add(BRep_Tool.Pnt_s(TopoDS.Vertex(corners.Current())).Z())
            corners.Next()
        if heights != {BOX[2]}:
            builder.Add(shell, face)
    return shell


def _plate_with_hole() -> TopoDS_Shape:
    radius, x, y = HOLE
    drill = BRepPrimAPI_MakeCylinder(radius, PLATE[2]).Shape().Moved(_location(x, y, 0.0))
    cut = BRepAlgoAPI_Cut(_box(*PLATE), drill)
    cut.Build()
    assert cut.IsDone()
    return cut.Shape()


def _assembly(revision: str = "A") -> _Document:
    """The demo assembly; revision "B" drills HOLE through the plate, drops the rod and puts three nuts on."""
    doc = _Document()
    plate = doc.part("base-plate", _box(*PLATE) if revision == "A" else _plate_with_hole(), "PL-120-80")
    bracket = doc.part("bracket", _box(*BRACKET), "BR-40-30")
    bolt = doc.part("bolt", _cylinder(*BOLT), "BT-M6-30")
    nut = doc.part("nut", _nut(*NUT), "NT-M6")
    # Each bolt passes up through the plate and its bracket, and its nut sits on the bracket: every part shows in
    # a view from above (the viewer tests colour each BOM row's instances and look for them).
    bolt_assembly = doc.assembly("bolt-assembly", "BL-300", (bolt, (0, 0, 0)), (nut, (0, 0, 25)))
    bracket_assembly = doc.assembly(
        "bracket-assembly",
        "BA-200",
        (bracket, (0, 0, 0)),
        (bolt_assembly, (10, 15, -20)),
        (bolt_assembly, (30, 15, -20)),
    )
    if revision == "A":
        rod = doc.part("rod", _cylinder(*ROD), "RD-8-100")
        rod_assembly = doc.assembly("rod-assembly", "RA-400", (rod, (0, 0, 0)), (nut, (0, 0, 10)), (nut, (0, 0, 85)))
    else:
        rod_assembly = doc.assembly("rod-assembly", "RA-400", *((nut, (0, 0, z)) for z in ROD_NUTS_B))
    doc.assembly(
        "demo-assembly",
        "DA-100",
        (plate, (0, 0, 0)),
        (bracket_assembly, (10, 10, 6)),
        (bracket_assembly, (70, 10, 6)),
        (rod_assembly, (60, 60, 6)),
    )
    return doc


def build(folder: Path) -> None:
    """Write every file of FILES into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    box = _box(*BOX)
    named_box = _Document()
    named_box.part("box", box, "BX-10-20-30")
    named_box.write_step(folder / "box.step")
    named_box.write_iges(folder / "box.igs")
    write_brep(box, folder / "box.brep")
    write_stl(box, folder / "box-ascii.stl", ascii=True)
    write_stl(_box(*BOX), folder / "box-binary.stl", ascii=False)
    inch = _Document()
    inch.part("inch-box", _box(*(25.4 * d for d in INCH_BOX)), "IB-1-2-3")
    previous = Interface_Static.CVal_s("write.step.unit")
    Interface_Static.SetCVal_s("write.step.unit", "INCH")
    try:
        inch.write_step(folder / "box-inch.step")
    finally:
        Interface_Static.SetCVal_s("write.step.unit", previous)
    write_brep(_cylinder(*CYLINDER), folder / "cylinder.brep")
    assembly = _assembly().write_step(folder / "assembly.step")
    _assembly("B").write_step(folder / "assembly-b.step")
    long_box = _Document()
    long_box.part("box", _box(*LONG_BOX), "BX-10-20-30")
    long_box.write_step(folder / "box-long.step")
    write_brep(_open_shell(), folder / "open-shell.brep")
    face = _Document()
    face.part(
        "plate", BRepBuilderAPI_MakeFace(_polygon(((0, 0, 0), (40, 0, 0), (40, 25, 0), (0, 25, 0))).Wire()).Face()
    )
    face.write_iges(folder / "plate.igs", solids=False)
    wire = _polygon(WIRE).Wire()
    write_brep(wire, folder / "wire.brep")
    curves = _Document()
    curves.part("curves", wire)
    curves.write_iges(folder / "curves.igs", solids=False)
    data = assembly.read_bytes()
    (folder / "truncated.step").write_bytes(data[: len(data) // 2])
    cut = data.index(b"PRODUCT('") + 12  # inside a quoted string, which then never ends
    (folder / "corrupt.step").write_bytes(data[:cut] + b"\nENDSEC;\nEND-ISO-10303-21;\n")
    brep = (folder / "box.brep").read_bytes()
    (folder / "truncated.brep").write_bytes(brep[: brep.index(b"\nTShapes") + 1])
    missing = sorted(set(FILES) - {p.name for p in folder.iterdir()})
    assert not missing, f"not generated: {missing}"


# -- the cache ----------------------------------------------------------------------------------------


def cache_key() -> str:
    """Changes whenever this generator or the OpenCascade build does."""
    import OCP

    digest = hashlib.sha256(Path(__file__).read_bytes())
    digest.update(str(getattr(OCP, "__version__", "")).encode())
    return digest.hexdigest()[:16]


def ensure(root: Path | None = None) -> Path:
    """The folder holding every generated file, built on first use and reused while the generator is unchanged.

    Several test runs may start at once: each builds in a private folder and renames it into place; a run that
    loses the race discards its copy and uses the winner's."""
    root = root or Path(tempfile.gettempdir())
    folder = root / f"{CACHE_PREFIX}{cache_key()}"
    if (folder / "COMPLETE").is_file():
        return folder
    staging = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=root))
    try:
        build(staging)
        (staging / "COMPLETE").write_text(f"generator {GENERATOR_VERSION}\n")
        if folder.exists() and not (folder / "COMPLETE").is_file():
            shutil.rmtree(folder, ignore_errors=True)  # a crashed build left it half done
        try:
            os.rename(staging, folder)
        except OSError:
            if not (folder / "COMPLETE").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


@dataclass
class CadFiles:
    """The generated files of one test session and their expectations."""

    folder: Path
    expected: dict[str, Expected] = field(default_factory=lambda: dict(FILES))

    def path(self, name: str) -> Path:
        if name not in self.expected:
            raise KeyError(f"{name} is not a generated CAD file; see tests/cad_fixtures.FILES")
        return self.folder / name

    def read(self, name: str) -> bytes:
        return self.path(name).read_bytes()


@functools.cache
def files() -> CadFiles:
    """The session's generated files (built on first call)."""
    return CadFiles(ensure())
