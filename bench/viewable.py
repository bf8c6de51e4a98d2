"""Viewer GLB cost: generation time and size per corpus file, beside the analysis time, and OpenCascade's own writer.

Usage: .venv/bin/python bench/viewable.py [--corpus DIR] [--rounds 3] [--max-triangles N]

For every CAD file of the real-world corpus (default $ENGINEL_CAD_CORPUS or ../shared/cad-samples, the folder the
test suite's corpus tier uses), `--rounds` times each, in this one process:
  analysis   processing.cad.analyze_file without a GLB (parse, mass properties, validation, BOM)
  +glb       the same call writing the viewer GLB from the same parse; "glb" is that extra stage alone
             (meshing within the triangle budget, then Enginel's writer: nodes per BOM occurrence, face ranges)
  occt       the peer: OpenCascade's RWGltf_CafWriter on the same parsed document, meshed with the same
             deflection (what DESIGN.md names as the obvious way), for its time and size
Prints median and range (min-max) per file, the GLB's size and triangle count, and the ratio glb/analysis.
Not a test: figures only.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from OCP.BRepMesh import BRepMesh_IncrementalMesh  # noqa: E402
from OCP.BRepTools import BRepTools  # noqa: E402
from OCP.collections import IndexedDataMap_TCollection_AsciiString_TCollection_AsciiString  # noqa: E402
from OCP.Message import Message_ProgressRange  # noqa: E402
from OCP.RWGltf import RWGltf_CafWriter  # noqa: E402
from OCP.TCollection import TCollection_AsciiString  # noqa: E402
from OCP.XCAFDoc import XCAFDoc_DocumentTool, XCAFDoc_ShapeTool  # noqa: E402

from processing import cad  # noqa: E402

CORPUS = Path(os.environ.get("ENGINEL_CAD_CORPUS") or REPO.parent / "shared" / "cad-samples")
FORMATS = {".step", ".stp", ".iges", ".igs", ".stl", ".brep", ".brp"}


def corpus(samples: Path) -> list[Path]:
    return sorted(p for p in samples.iterdir() if p.suffix.lower() in FORMATS)


def occt_writer(path: Path, out: str) -> tuple[float, int]:
    """Parse, then time meshing (same relative deflection) and RWGltf_CafWriter; returns (seconds, bytes)."""
    loaded = cad._load(str(path), cad.detect_format(str(path)))
    box = cad._bounding_box(loaded.shape)
    corners = [list(box["min"].values()), list(box["max"].values())] if box else []
    diagonal = math.dist(*corners) if corners else 1.0
    started = time.perf_counter()
    doc = loaded.doc
    if doc is None:
        doc = cad._new_document()
        XCAFDoc_DocumentTool.ShapeTool_s(doc.Main()).AddShape(loaded.shape, False)
    BRepTools.Clean_s(loaded.shape)
    for label in cad._free_labels(doc):
        BRepMesh_IncrementalMesh(XCAFDoc_ShapeTool.GetShape_s(label), max(diagonal * 1e-3, 1e-4), False, 0.5, False)
    writer = RWGltf_CafWriter(TCollection_AsciiString(out), True)
    writer.Perform(doc, IndexedDataMap_TCollection_AsciiString_TCollection_AsciiString(), Message_ProgressRange())
    return time.perf_counter() - started, os.path.getsize(out)


def measure(path: Path, rounds: int, max_triangles: int, scratch: str) -> dict[str, Any]:
    plain, total, glb, occt = [], [], [], []
    summary: dict[str, Any] = {}
    occt_bytes = 0
    for _ in range(rounds):
        started = time.perf_counter()
        cad.analyze_file(str(path))
        plain.append(time.perf_counter() - started)
        started = time.perf_counter()
        result = cad.analyze_file(str(path), glb_path=f"{scratch}/enginel.glb", max_triangles=max_triangles)
        total.append(time.perf_counter() - started)
        glb.append(result["timings"]["glb"])
        summary = result["glb"]
        seconds, occt_bytes = occt_writer(path, f"{scratch}/occt.glb")
        occt.append(seconds)
    return {"plain": plain, "total": total, "glb": glb, "occt": occt, "summary": summary, "occt_bytes": occt_bytes}


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def main() -> None:
    """Measure every file of the corpus and print the table the README quotes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--corpus",
        "--samples",
        dest="corpus",
        type=Path,
        default=CORPUS,
        help="folder of CAD files (default: $ENGINEL_CAD_CORPUS or ../shared/cad-samples)",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-triangles", type=int, default=cad.DEFAULT_MAX_TRIANGLES)
    args = parser.parse_args()
    if not args.corpus.is_dir():
        parser.error(f"no CAD corpus at {args.corpus}: put the real-world samples there, or pass --corpus DIR")
    files = corpus(args.corpus)
    if not files:
        sys.exit(f"no CAD files in {args.corpus}")
    cad._quiet_occt()
    print(
        f"# {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, {args.rounds} rounds, budget {args.max_triangles} triangles"
    )
    print(
        "| file | analysis s | +glb s | glb stage s | glb/analysis | GLB size | triangles | occt writer s | occt size |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    sums = {"plain": 0.0, "glb": 0.0, "occt": 0.0, "bytes": 0, "occt_bytes": 0}
    with tempfile.TemporaryDirectory(prefix="enginel-bench-") as scratch:
        for path in files:
            try:
                m = measure(path, args.rounds, args.max_triangles, scratch)
            except cad.CadError as exc:
                print(f"| {path.name} | fails: {exc} | | | | | | | |")
                continue
            s = m["summary"]
            ratio = statistics.median(m["glb"]) / statistics.median(m["plain"])
            print(
                f"| {path.name} | {spread(m['plain'])} | {spread(m['total'])} | {spread(m['glb'])} | {ratio:.2f} "
                f"| {s['bytes'] / 1024:.0f} KiB | {s['triangles']:,} | {spread(m['occt'])} "
                f"| {m['occt_bytes'] / 1024:.0f} KiB |"
            )
            sums["plain"] += statistics.median(m["plain"])
            sums["glb"] += statistics.median(m["glb"])
            sums["occt"] += statistics.median(m["occt"])
            sums["bytes"] += s["bytes"]
            sums["occt_bytes"] += m["occt_bytes"]
    print(
        f"| **all** | {sums['plain']:.3f} | | {sums['glb']:.3f} | {sums['glb'] / sums['plain']:.2f} "
        f"| {sums['bytes'] / 1024:.0f} KiB | | {sums['occt']:.3f} | {sums['occt_bytes'] / 1024:.0f} KiB |"
    )


if __name__ == "__main__":
    main()
