"""A small STEP assembly built with OpenCascade: nested sub-assemblies and a part "nut" placed four times."""

from __future__ import annotations

import math
from pathlib import Path

from OCP.BRepAlgoAPI import BRepAlgoAPI_Cut, BRepAlgoAPI_Fuse
from OCP.BRepBuilderAPI import BRepBuilderAPI_MakeFace, BRepBuilderAPI_MakePolygon
from OCP.BRepPrimAPI import BRepPrimAPI_MakeBox, BRepPrimAPI_MakeCylinder, BRepPrimAPI_MakePrism
from OCP.gp import gp_Ax2, gp_Dir, gp_Pnt, gp_Trsf, gp_Vec
from OCP.IFSelect import IFSelect_ReturnStatus
from OCP.STEPCAFControl import STEPCAFControl_Writer
from OCP.STEPControl import STEPControl_StepModelType
from OCP.TCollection import TCollection_ExtendedString
from OCP.TDataStd import TDataStd_Name
from OCP.TDF import TDF_Label
from OCP.TDocStd import TDocStd_Document
from OCP.TopLoc import TopLoc_Location
from OCP.TopoDS import TopoDS_Shape
from OCP.XCAFDoc import XCAFDoc_DocumentTool

#: The BOM this file yields: (path, part name, quantity under its parent).
EXPECTED_BOM = [
    ("0001", "bracket-assembly", 1),
    ("0001.0001", "base-plate", 1),
    ("0001.0002", "bracket", 2),
    ("0001.0003", "bolt-set", 2),
    ("0001.0003.0001", "bolt", 1),
    ("0001.0003.0002", "nut-stack", 1),
    ("0001.0003.0002.0001", "nut", 2),
]
NUT_INSTANCES = 4  # 2 bolt-sets x 1 stack x 2 nuts


def _hex_nut(across_flats: float, height: float, hole: float) -> TopoDS_Shape:
    radius = across_flats / math.sqrt(3)
    polygon = BRepBuilderAPI_MakePolygon()
    for k in range(6):
        angle = math.pi / 6 + k * math.pi / 3
        polygon.Add(gp_Pnt(radius * math.cos(angle), radius * math.sin(angle), 0))
    polygon.Close()
    prism = BRepPrimAPI_MakePrism(BRepBuilderAPI_MakeFace(polygon.Wire()).Face(), gp_Vec(0, 0, height)).Shape()
    bore = BRepPrimAPI_MakeCylinder(gp_Ax2(gp_Pnt(0, 0, -1), gp_Dir(0, 0, 1)), hole / 2, height + 2).Shape()
    return BRepAlgoAPI_Cut(prism, bore).Shape()


def _bolt(diameter: float, length: float) -> TopoDS_Shape:
    shank = BRepPrimAPI_MakeCylinder(gp_Ax2(gp_Pnt(0, 0, -length), gp_Dir(0, 0, 1)), diameter / 2, length).Shape()
    head = BRepPrimAPI_MakeCylinder(gp_Ax2(gp_Pnt(0, 0, 0), gp_Dir(0, 0, 1)), diameter * 0.85, diameter * 0.6).Shape()
    return BRepAlgoAPI_Fuse(shank, head).Shape()


def _at(x: float, y: float, z: float) -> TopLoc_Location:
    moved = gp_Trsf()
    moved.SetTranslation(gp_Vec(x, y, z))
    return TopLoc_Location(moved)


def _name(label: TDF_Label, name: str) -> None:
    TDataStd_Name.Set_s(label, TCollection_ExtendedString(name))


def write_assembly(path: Path) -> Path:
    """Write the assembly of EXPECTED_BOM to ``path`` (AP214, millimetres) and return the path."""
    doc = TDocStd_Document(TCollection_ExtendedString("XmlOcaf"))
    tool = XCAFDoc_DocumentTool.ShapeTool_s(doc.Main())

    def part(shape: TopoDS_Shape, name: str) -> TDF_Label:
        label = tool.AddShape(shape, False)
        _name(label, name)
        return label

    def assembly(name: str) -> TDF_Label:
        label = tool.NewShape()
        _name(label, name)
        return label

    def place(parent: TDF_Label, child: TDF_Label, location: TopLoc_Location, name: str) -> None:
        component = tool.AddComponent(parent, child, location)
        _name(component, name)

    plate = part(BRepPrimAPI_MakeBox(gp_Pnt(-80, -50, -8), 160, 100, 8).Shape(), "base-plate")
    bracket = part(BRepPrimAPI_MakeBox(gp_Pnt(-6, -30, 0), 12, 60, 45).Shape(), "bracket")
    bolt = part(_bolt(8, 30), "bolt")
    nut = part(_hex_nut(13, 6.5, 8), "nut")

    stack = assembly("nut-stack")
    place(stack, nut, _at(0, 0, 0), "nut:1")
    place(stack, nut, _at(0, 0, 7), "nut:2")
    bolt_set = assembly("bolt-set")
    place(bolt_set, bolt, _at(0, 0, 25), "bolt:1")
    place(bolt_set, stack, _at(0, 0, 0), "nut-stack:1")
    root = assembly("bracket-assembly")
    place(root, plate, _at(0, 0, 0), "base-plate:1")
    place(root, bracket, _at(-55, 0, 0), "bracket:1")
    place(root, bracket, _at(55, 0, 0), "bracket:2")
    place(root, bolt_set, _at(-20, 25, 0), "bolt-set:1")
    place(root, bolt_set, _at(20, -25, 0), "bolt-set:2")
    tool.UpdateAssemblies()

    writer = STEPCAFControl_Writer()
    writer.SetNameMode(True)
    if not writer.Transfer(doc, STEPControl_StepModelType.STEPControl_AsIs):
        raise RuntimeError("STEP transfer of the fixture assembly failed")
    if writer.Write(str(path)) != IFSelect_ReturnStatus.IFSelect_RetDone:
        raise RuntimeError(f"cannot write {path}")
    return path
