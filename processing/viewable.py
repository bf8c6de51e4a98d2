"""Tessellation of a parsed model into a binary glTF (GLB) for the browser viewer: one node per BOM occurrence."""

from __future__ import annotations

import json
import math
import os
import struct
import sys
from array import array
from dataclasses import dataclass, field
from typing import Any

from OCP.BRep import BRep_Tool
from OCP.BRepLib import BRepLib_ToolTriangulatedShape
from OCP.BRepMesh import BRepMesh_IncrementalMesh
from OCP.BRepTools import BRepTools
from OCP.collections import IndexedMap_TopoDS_Shape_TopTools_ShapeMapHasher
from OCP.TopAbs import TopAbs_FACE, TopAbs_REVERSED
from OCP.TopExp import TopExp
from OCP.TopLoc import TopLoc_Location
from OCP.TopoDS import TopoDS, TopoDS_Shape

__all__ = ["GLB_FORMAT", "MAX_NODES", "ScenePart", "mesh_within_budget", "write_glb"]

#: Written into the GLB (asset.extras.format) and the stored summary; bumped when the layout changes.
GLB_FORMAT = "enginel-glb-1"
#: Expanded occurrences written as nodes; a hostile assembly of millions of instances stops here.
MAX_NODES = 50_000
#: Re-meshing rounds when the first mesh is over the triangle budget.
MAX_ATTEMPTS = 6
#: Angular deflection (radians) of the first mesh, and the coarsest one the budget may push it to.
ANGULAR_DEFLECTION = 0.5
MAX_ANGULAR_DEFLECTION = 1.2
DEFAULT_COLOR = (0.40, 0.45, 0.52)  # linear RGB: a neutral blue-grey for parts without a colour in the file

_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963
_FLOAT, _UNSIGNED_SHORT, _UNSIGNED_INT = 5126, 5123, 5125
# mm, Z up (CAD) -> metres, Y up (glTF): the root node carries this, the vertex data stays in millimetres.
_ROOT_MATRIX = [0.001, 0, 0, 0, 0, 0, -0.001, 0, 0, 0.001, 0, 0, 0, 0, 0, 1]


@dataclass(eq=False)
class ScenePart:
    """One BOM row as the viewer needs it: its own faces and where each occurrence of each child sits.

    ``key`` is shared by every row made of the same product, so its mesh is written once and instanced.
    ``shape`` holds the row's own faces in its local frame (a leaf part's whole shape; for an assembly, the
    geometry that is not a child product), or None.
    """

    path: str
    name: str
    part_number: str
    key: str
    shape: TopoDS_Shape | None
    color: tuple[float, float, float] | None = None
    children: list[tuple[ScenePart, list[tuple[TopLoc_Location, str]]]] = field(default_factory=list)


@dataclass
class _Mesh:
    positions: array  # float32 xyz, millimetres in the part's frame
    normals: array
    indices: array  # uint32 until packed
    face_starts: list[int]  # first triangle of each face, by face index
    triangles: int


def mesh_within_budget(
    shape: TopoDS_Shape, root: ScenePart, diagonal: float, relative_deflection: float, max_triangles: int
) -> dict[str, Any]:
    """Mesh ``shape`` with a chord deflection relative to its size, coarser until the rendered triangles of
    ``root`` (instances counted) fit ``max_triangles``; returns the deflections used and the counts."""
    deflection = max(diagonal * relative_deflection, 1e-4)
    angular = ANGULAR_DEFLECTION
    BRepTools.Clean_s(shape)  # a triangulation stored in the file would otherwise be kept as is
    rendered = 0
    attempts = 0
    for attempts in range(1, MAX_ATTEMPTS + 1):
        BRepMesh_IncrementalMesh(shape, deflection, False, angular, False)
        rendered = _rendered_triangles(root)
        if rendered <= max_triangles or attempts == MAX_ATTEMPTS:
            break
        # Triangles grow roughly as 1/deflection on curved faces; small round features are bound by the
        # angle instead, so both loosen. Planar faces have a floor no deflection removes.
        factor = rendered / max_triangles
        deflection *= factor * 1.5
        angular = min(MAX_ANGULAR_DEFLECTION, angular * math.sqrt(factor * 1.5))
        BRepTools.Clean_s(shape)
    return {
        "linear_deflection_mm": deflection,
        "angular_deflection_rad": angular,
        "mesh_attempts": attempts,
        "triangles": rendered,
        "max_triangles": max_triangles,
        "within_budget": rendered <= max_triangles,
    }


def _faces(shape: TopoDS_Shape) -> IndexedMap_TopoDS_Shape_TopTools_ShapeMapHasher:
    # The face index a markup anchors to is the position in this map: stable for a given file.
    faces = IndexedMap_TopoDS_Shape_TopTools_ShapeMapHasher()
    TopExp.MapShapes_s(shape, TopAbs_FACE, faces)
    return faces


def _own_triangles(shape: TopoDS_Shape | None) -> int:
    if shape is None:
        return 0
    faces = _faces(shape)
    total = 0
    for i in range(1, faces.Extent() + 1):
        mesh = BRep_Tool.Triangulation_s(TopoDS.Face(faces.FindKey(i)), TopLoc_Location())
        if mesh is not None:
            total += mesh.NbTriangles()
    return total


def _rendered_triangles(root: ScenePart) -> int:
    own: dict[str, int] = {}
    budget = [MAX_NODES]

    def walk(part: ScenePart) -> int:
        budget[0] -= 1
        if part.key not in own:
            own[part.key] = _own_triangles(part.shape)
        total = own[part.key]
        for child, occurrences in part.children:
            for _ in occurrences:
                if budget[0] <= 0:
                    return total
                total += walk(child)
        return total

    return walk(root)


def _extract(shape: TopoDS_Shape) -> _Mesh:
    """The triangulation of every face of ``shape`` in its frame, faces in map order, outward normals."""
    positions, normals, indices = array("f"), array("f"), array("I")
    face_starts: list[int] = []
    triangles = 0
    faces = _faces(shape)
    for i in range(1, faces.Extent() + 1):
        face = TopoDS.Face(faces.FindKey(i))
        face_starts.append(triangles)
        location = TopLoc_Location()
        mesh = BRep_Tool.Triangulation_s(face, location)
        if mesh is None or mesh.NbTriangles() == 0:
            continue
        if not mesh.HasNormals():
            BRepLib_ToolTriangulatedShape.ComputeNormals_s(face, mesh)
        moved = not location.IsIdentity()
        trsf = location.Transformation()
        flip = face.Orientation() == TopAbs_REVERSED
        sign = -1.0 if flip else 1.0
        base = len(positions) // 3
        for n in range(1, mesh.NbNodes() + 1):
            point = mesh.Node(n)
            normal = mesh.Normal(n)
            if moved:
                point = point.Transformed(trsf)
                normal = normal.Transformed(trsf)
            positions.extend((point.X(), point.Y(), point.Z()))
            normals.extend((sign * normal.X(), sign * normal.Y(), sign * normal.Z()))
        for t in range(1, mesh.NbTriangles() + 1):
            a, b, c = mesh.Triangle(t).Get()
            if flip:  # a reversed face's triangles wind the other way round
                b, c = c, b
            indices.extend((base + a - 1, base + b - 1, base + c - 1))
        triangles += mesh.NbTriangles()
    return _Mesh(positions, normals, indices, face_starts, triangles)


def _matrix(location: TopLoc_Location) -> list[float] | None:
    if location.IsIdentity():
        return None
    trsf = location.Transformation()
    columns = [[trsf.Value(r, c) for r in (1, 2, 3)] + [0.0] for c in (1, 2, 3)]
    columns.append([trsf.Value(1, 4), trsf.Value(2, 4), trsf.Value(3, 4), 1.0])
    return [round(v, 12) for column in columns for v in column]


class _Builder:
    """Accumulates glTF JSON objects and the one binary buffer they point into."""

    def __init__(self) -> None:
        self.binary = bytearray()
        self.buffer_views: list[dict[str, Any]] = []
        self.accessors: list[dict[str, Any]] = []
        self.meshes: list[dict[str, Any]] = []
        self.materials: list[dict[str, Any]] = []
        self.nodes: list[dict[str, Any]] = []
        self._material_of: dict[tuple[float, ...], int] = {}

    def view(self, data: array, target: int) -> int:
        if sys.byteorder != "little":
            data = array(data.typecode, data)
            data.byteswap()
        while len(self.binary) % 4:
            self.binary.append(0)
        self.buffer_views.append(
            {"buffer": 0, "byteOffset": len(self.binary), "byteLength": len(data) * data.itemsize, "target": target}
        )
        self.binary += data.tobytes()
        return len(self.buffer_views) - 1

    def accessor(self, view: int, component: int, count: int, kind: str, **extra: Any) -> int:
        self.accessors.append({"bufferView": view, "componentType": component, "count": count, "type": kind, **extra})
        return len(self.accessors) - 1

    def material(self, color: tuple[float, float, float] | None) -> int:
        rgb = tuple(round(c, 4) for c in (color or DEFAULT_COLOR))
        if rgb not in self._material_of:
            self.materials.append(
                {
                    "name": "part" if color is None else f"rgb({rgb[0]:g},{rgb[1]:g},{rgb[2]:g})",
                    "pbrMetallicRoughness": {
                        "baseColorFactor": [*rgb, 1.0],
                        "metallicFactor": 0.1,
                        "roughnessFactor": 0.6,
                    },
                    "doubleSided": True,  # open shells and surface models are seen from both sides
                }
            )
            self._material_of[rgb] = len(self.materials) - 1
        return self._material_of[rgb]

    def mesh(self, name: str, mesh: _Mesh, color: tuple[float, float, float] | None) -> int | None:
        if mesh.triangles == 0:
            return None
        count = len(mesh.positions) // 3
        xs, ys, zs = mesh.positions[0::3], mesh.positions[1::3], mesh.positions[2::3]
        position = self.accessor(
            self.view(mesh.positions, _ARRAY_BUFFER),
            _FLOAT,
            count,
            "VEC3",
            min=[min(xs), min(ys), min(zs)],
            max=[max(xs), max(ys), max(zs)],
        )
        normal = self.accessor(self.view(mesh.normals, _ARRAY_BUFFER), _FLOAT, count, "VEC3")
        small = count <= 0xFFFF
        packed = array("H", mesh.indices) if small else mesh.indices
        indices = self.accessor(
            self.view(packed, _ELEMENT_ARRAY_BUFFER),
            _UNSIGNED_SHORT if small else _UNSIGNED_INT,
            len(mesh.indices),
            "SCALAR",
        )
        self.meshes.append(
            {
                "name": name,
                "primitives": [
                    {
                        "attributes": {"POSITION": position, "NORMAL": normal},
                        "indices": indices,
                        "material": self.material(color),
                        "mode": 4,
                    }
                ],
                # Triangles are grouped by face: triangle t lies on the last face whose start is <= t.
                "extras": {"face_triangle_starts": mesh.face_starts},
            }
        )
        return len(self.meshes) - 1

    def document(self, scene_root: int, asset_extras: dict[str, Any]) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "asset": {"version": "2.0", "generator": "Enginel (OpenCascade BRepMesh)", "extras": asset_extras},
            "scene": 0,
            "scenes": [{"name": "scene", "nodes": [scene_root]}],
            "nodes": self.nodes,
        }
        if self.meshes:
            doc.update(
                meshes=self.meshes,
                materials=self.materials,
                accessors=self.accessors,
                bufferViews=self.buffer_views,
                buffers=[{"byteLength": len(self.binary)}],
            )
        return doc


def write_glb(root: ScenePart, out_path: str, mesh_info: dict[str, Any]) -> dict[str, Any]:
    """Write the meshed scene under ``root`` to ``out_path`` (whole, then renamed); returns its summary."""
    builder = _Builder()
    meshes: dict[str, int | None] = {}
    unique_triangles = 0
    truncated = False
    remaining = [MAX_NODES]

    def node(part: ScenePart, location: TopLoc_Location | None, instance: int, instance_name: str) -> int:
        nonlocal unique_triangles, truncated
        remaining[0] -= 1
        if part.key not in meshes:
            mesh = _extract(part.shape) if part.shape is not None else None
            meshes[part.key] = builder.mesh(part.name, mesh, part.color) if mesh is not None else None
            unique_triangles += mesh.triangles if mesh is not None else 0
        extras: dict[str, Any] = {"bom_path": part.path, "part_number": part.part_number, "instance": instance}
        if instance_name:
            extras["instance_name"] = instance_name
        entry: dict[str, Any] = {"name": part.name, "extras": extras}
        matrix = _matrix(location) if location is not None else None
        if matrix is not None:
            entry["matrix"] = matrix
        if meshes[part.key] is not None:
            entry["mesh"] = meshes[part.key]
        index = len(builder.nodes)
        builder.nodes.append(entry)
        children: list[int] = []
        for child, occurrences in part.children:
            for number, (child_location, child_name) in enumerate(occurrences, start=1):
                if remaining[0] <= 0:
                    truncated = True
                    break
                children.append(node(child, child_location, number, child_name))
        if children:
            entry["children"] = children
        return index

    top = node(root, None, 1, "")
    builder.nodes.append(
        {
            "name": "model",
            "matrix": _ROOT_MATRIX,
            "children": [top],
            "extras": {"note": "Vertex data is in millimetres with Z up; this node scales to metres, Y up."},
        }
    )
    doc = builder.document(
        len(builder.nodes) - 1,
        {"format": GLB_FORMAT, "length_unit": "mm", "up_axis": "Z", "bom_root": root.path},
    )
    _write_file(out_path, doc, builder.binary)
    return {
        **mesh_info,
        "format": GLB_FORMAT,
        "path": out_path,
        "bytes": os.path.getsize(out_path),
        "unique_triangles": unique_triangles,
        "nodes": len(builder.nodes) - 1,
        "nodes_truncated": truncated,
    }


def _write_file(out_path: str, doc: dict[str, Any], binary: bytearray) -> None:
    text = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
    text += b" " * (-len(text) % 4)
    binary += b"\0" * (-len(binary) % 4)
    chunks = struct.pack("<II", len(text), 0x4E4F534A) + text
    if binary:
        chunks += struct.pack("<II", len(binary), 0x004E4942) + binary
    tmp = out_path + ".part"
    try:
        with open(tmp, "wb") as out:
            out.write(struct.pack("<III", 0x46546C67, 2, 12 + len(chunks)))
            out.write(chunks)
        os.replace(tmp, out_path)  # readers never see a half-written file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
