"""OpenCascade work between two revisions: the geometric diff of matched parts (a GLB of it) and markup re-anchoring."""

from __future__ import annotations

import contextlib
import ctypes
import math
import multiprocessing
import os
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from OCP.Bnd import Bnd_Box
from OCP.BRep import BRep_Builder, BRep_Tool
from OCP.BRepAdaptor import BRepAdaptor_Surface
from OCP.BRepAlgoAPI import BRepAlgoAPI_Cut
from OCP.BRepBndLib import BRepBndLib
from OCP.BRepBuilderAPI import BRepBuilderAPI_MakeVertex
from OCP.BRepClass import BRepClass_FaceClassifier
from OCP.BRepExtrema import BRepExtrema_DistShapeShape
from OCP.BRepGProp import BRepGProp
from OCP.BRepTools import BRepTools
from OCP.GeomAPI import GeomAPI_ProjectPointOnSurf
from OCP.gp import gp_Pnt, gp_Pnt2d
from OCP.GProp import GProp_GProps
from OCP.TopAbs import TopAbs_EDGE, TopAbs_FACE, TopAbs_IN, TopAbs_ON, TopAbs_SOLID, TopAbs_VERTEX
from OCP.TopLoc import TopLoc_Location
from OCP.TopoDS import TopoDS, TopoDS_Compound, TopoDS_Face, TopoDS_Shape

from processing.cad import DEFAULT_MAX_TRIANGLES, DEFAULT_RELATIVE_DEFLECTION, parse_scene
from processing.compare import row_keys
from processing.viewable import ScenePart, _faces, mesh_within_budget, write_glb

__all__ = ["DIFF_FORMAT", "carry_markups", "geometric_diff"]

Progress = Callable[[int, int, str], None]

DIFF_FORMAT = "enginel-diff-1"
#: Seconds one part's two boolean cuts may take before the part is reported as too complex.
DEFAULT_PART_SECONDS = 60.0
#: Instances followed per revision; a hostile assembly of millions of occurrences stops here.
MAX_INSTANCES = 50_000
ADDED_COLOR = (0.13, 0.65, 0.25)
REMOVED_COLOR = (0.85, 0.18, 0.12)
# Relative agreement of two parts' mass properties under which they are taken as the same geometry.
_SAME = 1e-9


def _no_progress(current: int, total: int, message: str) -> None:
    return None


# -- the two revisions as rows of located instances ---------------------------------------------------


@dataclass
class _Row:
    path: str
    name: str
    number: str
    shape: TopoDS_Shape | None  # the row's own faces in its frame (viewer face indices count in it)
    instances: list[TopLoc_Location] = field(default_factory=list)

    def located(self) -> list[TopoDS_Shape]:
        return [] if self.shape is None else [self.shape.Moved(loc) for loc in self.instances]


@dataclass
class _Revision:
    whole: TopoDS_Shape
    rows: dict[str, _Row]
    keys: dict[str, str]  # path -> match key
    by_key: dict[str, str]  # match key -> path


def _revision(path: str, fmt: str | None, name: str | None) -> _Revision:
    whole, _, scene = parse_scene(path, fmt, display_name=name)
    rows: dict[str, _Row] = {}
    budget = [MAX_INSTANCES]

    def walk(part: ScenePart, location: TopLoc_Location) -> None:
        row = rows.get(part.path)
        if row is None:
            row = rows[part.path] = _Row(part.path, part.name, part.part_number, part.shape)
        if budget[0] <= 0:
            return
        budget[0] -= 1
        if part.shape is not None:
            row.instances.append(location)
        for child, placements in part.children:
            for child_location, _ in placements:
                walk(child, location.Multiplied(child_location))

    walk(scene, TopLoc_Location())
    keys = row_keys([{"path": r.path, "part_name": r.name, "part_number": r.number} for r in rows.values()])
    return _Revision(whole, rows, keys, {k: p for p, k in keys.items()})


def _compound(shapes: list[TopoDS_Shape]) -> TopoDS_Compound:
    compound = TopoDS_Compound()
    builder = BRep_Builder()
    builder.MakeCompound(compound)
    for shape in shapes:
        builder.Add(compound, shape)
    return compound


def _volume(shape: TopoDS_Shape) -> float:
    props = GProp_GProps()
    BRepGProp.VolumeProperties_s(shape, props)
    value = props.Mass()
    return abs(value) if math.isfinite(value) else 0.0


def _count(shape: TopoDS_Shape, kind: Any) -> int:
    from OCP.TopExp import TopExp_Explorer

    explorer, n = TopExp_Explorer(shape, kind), 0
    while explorer.More():
        n += 1
        explorer.Next()
    return n


def _fingerprint(shape: TopoDS_Shape) -> tuple[float, ...]:
    """Mass properties, bounding box and topology counts: equal fingerprints mean the same placed geometry."""
    volume, surface = GProp_GProps(), GProp_GProps()
    BRepGProp.VolumeProperties_s(shape, volume)
    BRepGProp.SurfaceProperties_s(shape, surface)
    centre = surface.CentreOfMass()
    box = Bnd_Box()
    BRepBndLib.Add_s(shape, box, False)
    corners: tuple[float, ...] = ()
    if not box.IsVoid():
        low, high = box.CornerMin(), box.CornerMax()
        corners = (low.X(), low.Y(), low.Z(), high.X(), high.Y(), high.Z())
    moments = tuple(surface.MatrixOfInertia().Value(r, c) for r in (1, 2, 3) for c in (1, 2, 3))
    counts = tuple(float(_count(shape, k)) for k in (TopAbs_SOLID, TopAbs_FACE, TopAbs_EDGE, TopAbs_VERTEX))
    return (volume.Mass(), surface.Mass(), centre.X(), centre.Y(), centre.Z(), *corners, *moments, *counts)


def _same(a: tuple[float, ...], b: tuple[float, ...], scale: float) -> bool:
    if len(a) != len(b):
        return False
    return all(abs(x - y) <= _SAME * max(abs(x), abs(y), scale) for x, y in zip(a, b, strict=True))


# -- the boolean cuts, in a forked child with a deadline per part ------------------------------------


def _die_with_parent() -> None:
    # A child left running after the worker was killed (job timeout, cancel) would keep a core busy.
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def _cut_part(index: int, old: TopoDS_Shape, new: TopoDS_Shape, folder: str) -> dict[str, Any]:
    """Material removed (old minus new) and added (new minus old) of one part, written as BREP files."""
    out: dict[str, Any] = {}
    for kind, first, second in (("removed", old, new), ("added", new, old)):
        cut = BRepAlgoAPI_Cut(first, second)
        cut.Build()
        if not cut.IsDone():
            raise RuntimeError(f"the boolean cut ({kind}) did not complete")
        shape = cut.Shape()
        volume = _volume(shape)
        out[f"{kind}_volume_mm3"] = volume
        out[f"{kind}_file"] = None
        if volume > 0.0 and _count(shape, TopAbs_FACE):
            target = os.path.join(folder, f"{kind}-{index}.brep")
            BRepTools.Write_s(shape, target)
            out[f"{kind}_file"] = target
    return out


def _child(tasks: list[tuple[TopoDS_Shape, TopoDS_Shape]], start: int, folder: str, tx: Connection) -> None:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for index in range(start, len(tasks)):
        tx.send(("start", index, None))
        began = time.perf_counter()
        try:
            result = _cut_part(index, *tasks[index], folder)
            result["seconds"] = time.perf_counter() - began
            tx.send(("done", index, result))
        except Exception as exc:  # noqa: BLE001 - one part's failure is reported, the others go on
            tx.send(("error", index, f"{type(exc).__name__}: {exc}"[:500]))
    tx.send(("end", None, None))


def _run_cuts(
    tasks: list[tuple[TopoDS_Shape, TopoDS_Shape]],
    part_seconds: float,
    folder: str,
    report: Callable[[int, str], None],
) -> list[dict[str, Any]]:
    """Each task's cut in a forked child that works through them in order. A part that runs past
    ``part_seconds`` has its child killed (OpenCascade cannot be interrupted from Python) and is reported as
    too complex; a crash of the kernel on one part is reported for that part. A new child takes the rest."""
    results: list[dict[str, Any]] = [{} for _ in tasks]
    context = multiprocessing.get_context("fork")
    index = 0
    while index < len(tasks):
        rx, tx = context.Pipe(duplex=False)
        pid = os.fork()
        if pid == 0:  # the child: never returns into the worker's code
            code = 0
            try:
                rx.close()
                _child(tasks, index, folder, tx)
            except BaseException:  # noqa: B902 - whatever happens, the child must not continue the worker
                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)
        tx.close()
        current: int | None = None
        deadline = math.inf
        try:
            while True:
                wait = max(0.0, deadline - time.monotonic()) if current is not None else None
                if wait is not None and not rx.poll(wait):
                    results[current] = {"status": "too_complex", "seconds": part_seconds}  # type: ignore[index]
                    index = (current or 0) + 1
                    break
                try:
                    kind, at, body = rx.recv()
                except EOFError:
                    if current is not None:
                        results[current] = {"status": "failed", "message": "the geometry kernel crashed on it"}
                        index = current + 1
                    else:
                        index = len(tasks)  # nothing started: every part was done
                    break
                if kind == "start":
                    current, deadline = at, time.monotonic() + part_seconds
                    report(at, "cutting")
                elif kind == "done":
                    results[at] = {"status": "compared", **body}
                    current = None
                elif kind == "error":
                    results[at] = {"status": "failed", "message": body}
                    current = None
                else:  # end
                    index = len(tasks)
                    break
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            rx.close()
    return results


def _read_brep(path: str | None) -> TopoDS_Shape | None:
    if not path:
        return None
    shape = TopoDS_Shape()
    return shape if BRepTools.Read_s(shape, path, BRep_Builder()) and not shape.IsNull() else None


# -- the diff -----------------------------------------------------------------------------------------


def _diagonal(*shapes: TopoDS_Shape) -> float:
    box = Bnd_Box()
    for shape in shapes:
        BRepBndLib.Add_s(shape, box, False)
    if box.IsVoid():
        return 1.0
    low, high = box.CornerMin(), box.CornerMax()
    return max(math.dist((low.X(), low.Y(), low.Z()), (high.X(), high.Y(), high.Z())), 1e-6)


def _name_path(revision: _Revision, path: str) -> str:
    names = []
    while path in revision.rows:
        names.append(revision.rows[path].name)
        path = path.rpartition(".")[0]
    return "/".join(reversed(names))


def geometric_diff(
    old_path: str,
    old_fmt: str | None,
    new_path: str,
    new_fmt: str | None,
    glb_path: str,
    *,
    progress: Progress | None = None,
    old_name: str | None = None,
    new_name: str | None = None,
    part_seconds: float = DEFAULT_PART_SECONDS,
    max_triangles: int = DEFAULT_MAX_TRIANGLES,
    relative_deflection: float = DEFAULT_RELATIVE_DEFLECTION,
) -> dict[str, Any]:
    """Material removed and added between two revisions, part by part, and a GLB of it at ``glb_path``.

    Parts are BOM rows matched as processing.compare matches them; each side is the union of the row's own
    geometry at every place it occurs in the product (so a changed quantity shows as material too). Rows with
    equal mass properties, bounding box and topology are reported identical without a boolean; the others get
    ``BRepAlgoAPI_Cut`` both ways, each part within ``part_seconds`` or reported ``too_complex``. Rows only in
    one revision are listed as unmatched and drawn whole. The GLB (processing.viewable's writer) has two named
    nodes, ``added`` and ``removed``, with one child per part.
    """
    report = progress or _no_progress
    report(0, 4, "Reading the first revision")
    old = _revision(old_path, old_fmt, old_name)
    report(1, 4, "Reading the second revision")
    new = _revision(new_path, new_fmt, new_name)
    scale = _diagonal(old.whole, new.whole)

    parts: list[dict[str, Any]] = []
    tasks: list[tuple[TopoDS_Shape, TopoDS_Shape]] = []
    task_of: list[int] = []  # parts index of each task
    for key, old_row_path in sorted(old.by_key.items(), key=lambda kv: kv[1]):
        new_row_path = new.by_key.get(key)
        if new_row_path is None:
            continue
        row_old, row_new = old.rows[old_row_path], new.rows[new_row_path]
        shapes_old, shapes_new = row_old.located(), row_new.located()
        if not shapes_old and not shapes_new:
            continue  # an assembly row without geometry of its own
        entry: dict[str, Any] = {
            "name_path": _name_path(new, new_row_path),
            "part_name": row_new.name,
            "part_number": row_new.number,
            "from_path": old_row_path,
            "to_path": new_row_path,
            "instances": {"from": len(shapes_old), "to": len(shapes_new)},
            "added_volume_mm3": 0.0,
            "removed_volume_mm3": 0.0,
        }
        compound_old, compound_new = _compound(shapes_old), _compound(shapes_new)
        if _same(_fingerprint(compound_old), _fingerprint(compound_new), scale):
            entry["status"] = "identical"
        else:
            entry["status"] = "pending"
            tasks.append((compound_old, compound_new))
            task_of.append(len(parts))
        parts.append(entry)

    total = 4 + len(tasks)
    report(2, total, f"{len(parts)} matched parts, {len(tasks)} to cut")
    added: list[tuple[dict[str, Any], TopoDS_Shape]] = []
    removed: list[tuple[dict[str, Any], TopoDS_Shape]] = []
    with tempfile.TemporaryDirectory(prefix="enginel-diff-") as folder:

        def on_part(index: int, _: str) -> None:
            report(2 + index, total, f"Comparing part {index + 1} of {len(tasks)}")

        for index, outcome in enumerate(_run_cuts(tasks, part_seconds, folder, on_part)):
            entry = parts[task_of[index]]
            entry["status"] = outcome.get("status", "failed")
            entry["seconds"] = outcome.get("seconds")
            if entry["status"] == "too_complex":
                entry["added_volume_mm3"] = entry["removed_volume_mm3"] = None
                entry["message"] = f"The boolean cuts of this part did not finish within {part_seconds:g} s."
                continue
            if entry["status"] == "failed":
                entry["added_volume_mm3"] = entry["removed_volume_mm3"] = None
                entry["message"] = outcome.get("message")
                continue
            entry["added_volume_mm3"] = outcome["added_volume_mm3"]
            entry["removed_volume_mm3"] = outcome["removed_volume_mm3"]
            for kind, bucket in (("added", added), ("removed", removed)):
                shape = _read_brep(outcome.get(f"{kind}_file"))
                if shape is not None:
                    bucket.append((entry, shape))
            if not entry["added_volume_mm3"] and not entry["removed_volume_mm3"]:
                entry["status"] = "unchanged"

    unmatched: dict[str, list[dict[str, Any]]] = {"added": [], "removed": []}
    for side, revision, other, bucket in (("removed", old, new, removed), ("added", new, old, added)):
        for key, row_path in sorted(revision.by_key.items(), key=lambda kv: kv[1]):
            if key in other.by_key:
                continue
            row = revision.rows[row_path]
            shapes = row.located()
            shape = _compound(shapes) if shapes else None
            entry = {
                "name_path": _name_path(revision, row_path),
                "part_name": row.name,
                "part_number": row.number,
                "path": row_path,
                "instances": len(shapes),
                "volume_mm3": _volume(shape) if shape is not None else 0.0,
            }
            unmatched[side].append(entry)
            if shape is not None:
                bucket.append(({**entry, "to_path": row_path, "from_path": row_path}, shape))

    report(total - 1, total, "Writing the difference model")
    glb = _write_diff(added, removed, glb_path, scale, max_triangles, relative_deflection)
    report(total, total, "Done")

    def total_of(key: str) -> float | None:
        values = [p[key] for p in parts]
        return None if any(v is None for v in values) else float(sum(values))

    return {
        "format": DIFF_FORMAT,
        "parts": parts,
        "unmatched": unmatched,
        "totals": {
            "matched_parts": len(parts),
            "changed_parts": sum(1 for p in parts if p["status"] == "compared"),
            "too_complex": sum(1 for p in parts if p["status"] == "too_complex"),
            "failed": sum(1 for p in parts if p["status"] == "failed"),
            "added_volume_mm3": total_of("added_volume_mm3"),
            "removed_volume_mm3": total_of("removed_volume_mm3"),
            "unmatched_added_volume_mm3": sum(u["volume_mm3"] for u in unmatched["added"]),
            "unmatched_removed_volume_mm3": sum(u["volume_mm3"] for u in unmatched["removed"]),
        },
        "part_seconds": part_seconds,
        "glb": glb,
    }


def _write_diff(
    added: list[tuple[dict[str, Any], TopoDS_Shape]],
    removed: list[tuple[dict[str, Any], TopoDS_Shape]],
    glb_path: str,
    diagonal: float,
    max_triangles: int,
    relative_deflection: float,
) -> dict[str, Any]:
    identity = [(TopLoc_Location(), "")]
    groups = []
    shapes: list[TopoDS_Shape] = []
    for name, items, color in (("added", added, ADDED_COLOR), ("removed", removed, REMOVED_COLOR)):
        group = ScenePart(name, name, "", name, None)
        for entry, shape in items:
            path = entry["to_path"] if name == "added" else entry["from_path"]
            part = ScenePart(path, entry["part_name"], entry["part_number"], f"{name}:{path}", shape, color=color)
            group.children.append((part, identity))
            shapes.append(shape)
        groups.append((group, identity))
    root = ScenePart("diff", "difference", "", "diff", None, children=groups)
    info = mesh_within_budget(_compound(shapes), root, diagonal, relative_deflection, max_triangles)
    return write_glb(root, glb_path, info)


# -- markups follow revisions -------------------------------------------------------------------------


def _point(value: Any) -> gp_Pnt:
    return gp_Pnt(float(value["x"]), float(value["y"]), float(value["z"]))


def _xyz(p: gp_Pnt) -> dict[str, float]:
    return {"x": p.X(), "y": p.Y(), "z": p.Z()}


def _nearest(point: gp_Pnt, shape: TopoDS_Shape) -> tuple[float, gp_Pnt] | None:
    """Distance from ``point`` to ``shape`` and the nearest point on it (BRepExtrema_DistShapeShape)."""
    vertex = BRepBuilderAPI_MakeVertex(point).Vertex()
    extrema = BRepExtrema_DistShapeShape(vertex, shape)
    if not extrema.IsDone() or extrema.NbSolution() == 0:
        return None
    return extrema.Value(), extrema.PointOnShape2(1)


def _samples(face: TopoDS_Face, count: int = 4) -> list[gp_Pnt]:
    """Points inside ``face`` from a grid over its parameter range."""
    umin, umax, vmin, vmax = BRepTools.UVBounds_s(face)
    surface = BRepAdaptor_Surface(face)
    points = []
    for i in range(1, count + 1):
        for j in range(1, count + 1):
            u = umin + (umax - umin) * i / (count + 1)
            v = vmin + (vmax - vmin) * j / (count + 1)
            state = BRepClass_FaceClassifier(face, gp_Pnt2d(u, v), 1e-7).State()
            if state in (TopAbs_IN, TopAbs_ON):
                points.append(surface.Value(u, v))
    return points


def _same_surface(old: TopoDS_Face, new: TopoDS_Face, tolerance: float, samples: list[gp_Pnt]) -> bool:
    """Whether ``new`` lies on the same surface as ``old``: same kind, and old's points lie on new's surface."""
    if BRepAdaptor_Surface(old).GetType() != BRepAdaptor_Surface(new).GetType():
        return False
    surface = BRep_Tool.Surface_s(new)
    for point in samples:
        projection = GeomAPI_ProjectPointOnSurf(point, surface)
        if projection.NbPoints() == 0 or projection.LowerDistance() > tolerance:
            return False
    return True


def _follow_face(
    point: gp_Pnt, old_row: _Row, new_row: _Row, face_index: int, tolerance: float
) -> tuple[int, float, gp_Pnt] | None:
    """The face of the new row that is the old anchor face where the markup sits: on the same surface and
    within ``tolerance`` of the point. Returns (face index in the new row's frame, distance, nearest point)."""
    if old_row.shape is None or new_row.shape is None:
        return None
    old_faces = _faces(old_row.shape)
    if not 0 <= face_index < old_faces.Extent():
        return None
    local = TopoDS.Face(old_faces.FindKey(face_index + 1))
    # The old instance the markup sits on is the one nearest to it.
    placed = [(loc, _nearest(point, local.Moved(loc))) for loc in old_row.instances]
    placed = [(loc, hit) for loc, hit in placed if hit is not None]
    if not placed:
        return None
    location, _ = min(placed, key=lambda item: item[1][0])  # type: ignore[index]
    old_face = TopoDS.Face(local.Moved(location))
    samples = _samples(old_face) + [_nearest(point, old_face)[1]]  # type: ignore[index]
    best: tuple[int, float, gp_Pnt] | None = None
    new_faces = _faces(new_row.shape)
    for index in range(new_faces.Extent()):
        candidate = TopoDS.Face(new_faces.FindKey(index + 1))
        for loc in new_row.instances:
            face = TopoDS.Face(candidate.Moved(loc))
            hit = _nearest(point, face)
            if hit is None or hit[0] > tolerance or (best is not None and hit[0] >= best[1]):
                continue
            if _same_surface(old_face, face, tolerance, samples):
                best = (index, hit[0], hit[1])
    return best


def _row_at(revision: _Revision, point: gp_Pnt) -> tuple[_Row | None, float]:
    best: tuple[_Row | None, float] = (None, math.inf)
    for row in revision.rows.values():
        for shape in row.located():
            hit = _nearest(point, shape)
            if hit is not None and hit[0] < best[1]:
                best = (row, hit[0])
    return best


def carry_markups(
    old_path: str,
    old_fmt: str | None,
    new_path: str,
    new_fmt: str | None,
    markups: list[dict[str, Any]],
    *,
    progress: Progress | None = None,
    old_name: str | None = None,
    new_name: str | None = None,
    tolerance_mm: float = 0.01,
    orphan_distance_mm: float = 5.0,
    snap_distance_mm: float | None = None,
) -> list[dict[str, Any]]:
    """Re-anchor markups of the old revision on the new one.

    Each markup is ``{"id", "position": {x, y, z} (mm), "bom_path": old row path or None, "face_index": index in
    that row's faces or None}``. The old position is first put back onto the old geometry (a pick lies on the
    viewer's mesh, not the exact surface: within ``snap_distance_mm``, by default the viewer's chord deflection
    of a thousandth of the model's diagonal); then, on the new revision, the anchor face is followed where a face
    on the same surface is still there, else the nearest point of the matched part (or, without a part anchor,
    of the whole model) is taken. A markup is ``moved`` beyond ``tolerance_mm`` and ``orphaned`` when its part
    is gone or nothing is within ``orphan_distance_mm``.
    """
    report = progress or _no_progress
    total = len(markups) + 2
    report(0, total, "Reading the previous revision")
    old = _revision(old_path, old_fmt, old_name)
    report(1, total, "Reading the new revision")
    new = _revision(new_path, new_fmt, new_name)
    snap = snap_distance_mm if snap_distance_mm is not None else DEFAULT_RELATIVE_DEFLECTION * _diagonal(old.whole)
    out = []
    for done, markup in enumerate(markups, start=2):
        out.append(_carry_one(old, new, markup, tolerance_mm, orphan_distance_mm, max(snap, tolerance_mm)))
        report(done, total, f"Re-anchored {done - 1} of {len(markups)} markups")
    return out


def _carry_one(
    old: _Revision, new: _Revision, markup: dict[str, Any], tolerance: float, orphan_distance: float, snap: float
) -> dict[str, Any]:
    """One markup's new anchor (see carry_markups)."""
    point = _point(markup["position"])
    result: dict[str, Any] = {
        "id": markup["id"],
        "old_position": _xyz(point),
        "position": None,
        "bom_path": None,
        "face_index": None,
        "face_followed": False,
        "distance_mm": None,
        "moved": False,
        "orphaned": False,
        "reason": None,
    }
    old_row = old.rows.get(markup.get("bom_path") or "")
    new_row: _Row | None = None
    if old_row is not None:
        new_path = new.by_key.get(old.keys[old_row.path])
        if new_path is None:
            result.update(orphaned=True, reason="part_removed")
            return result
        new_row = new.rows[new_path]
    old_target = _compound(old_row.located()) if old_row is not None and old_row.instances else old.whole
    snapped = _nearest(point, old_target)
    result["snap_mm"] = snapped[0] if snapped is not None else None
    if snapped is not None and snapped[0] <= snap:
        point = snapped[1]
    if old_row is not None and new_row is not None and markup.get("face_index") is not None:
        followed = _follow_face(point, old_row, new_row, int(markup["face_index"]), tolerance)
        if followed is not None:
            index, distance, nearest = followed
            result.update(
                position=_xyz(nearest),
                bom_path=new_row.path,
                face_index=index,
                face_followed=True,
                distance_mm=distance,
                moved=distance > tolerance,
            )
            return result
    if new_row is not None and new_row.instances:
        target, row = _compound(new_row.located()), new_row
    else:
        target, row = new.whole, None
    hit = _nearest(point, target)
    if hit is None or hit[0] > orphan_distance:
        result.update(orphaned=True, reason="nothing_near", distance_mm=None if hit is None else hit[0])
        return result
    distance, nearest = hit
    if row is None:
        row, _ = _row_at(new, nearest)
    result.update(
        position=_xyz(nearest),
        bom_path=row.path if row is not None else None,
        distance_mm=distance,
        moved=distance > tolerance,
        reason="face_gone" if markup.get("face_index") is not None else None,
    )
    return result
