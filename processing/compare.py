"""Revision compare as plain data: BOM rows matched by name path and part number, property deltas, their digest."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "MAX_LISTED",
    "bom_diff",
    "compare_revisions",
    "deltas_digest",
    "delta",
    "row_keys",
]

#: Rows listed per BOM change kind; the counts are always complete, the lists say when they were cut.
MAX_LISTED = 1000
_SEP = "\x1f"  # joins key segments: a control character no part name or number contains after sanitising
_SCALARS = ("volume_mm3", "surface_area_mm2", "mass_kg")
_TOPOLOGY = ("solids", "shells", "faces", "edges", "vertices")
_AXES = ("x", "y", "z")


def delta(old: float | None, new: float | None) -> dict[str, Any]:
    """One change with its absolute and relative size; relative is None where the old value is 0 or unknown."""
    if old is None or new is None or not _finite(old) or not _finite(new):
        return {"from": old, "to": new, "absolute": None, "relative": None}
    absolute = new - old
    relative = absolute / abs(old) if old != 0 else None
    return {"from": old, "to": new, "absolute": absolute, "relative": relative}


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# -- BOM ----------------------------------------------------------------------------------------------


def row_keys(rows: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Each row's match key from its ``path``, ``part_name`` and ``part_number`` (rows of one tree).

    A row is the same part in two revisions when the names from the root down to it and its part number agree
    (case and runs of white space aside);
    the root always matches the root (files name it after themselves). Siblings sharing name and number are told
    apart by their order. The geometric diff and the markup carry use the same keys.
    """
    by_path = {str(r["path"]): r for r in rows}
    keys: dict[str, str] = {}
    seen: dict[tuple[str, str], int] = {}
    for path in sorted(by_path, key=lambda p: (p.count("."), p)):
        row = by_path[path]
        parent = path.rpartition(".")[0]
        if not parent or parent not in keys:
            keys[path] = ""  # a root (or an orphan row whose parent is missing: matched as a root)
            continue
        segment = f"{_clean(row.get('part_name'))}#{_clean(row.get('part_number'))}"
        ordinal = seen.get((parent, segment), 0)
        seen[(parent, segment)] = ordinal + 1
        if ordinal:
            segment += f"~{ordinal}"
        keys[path] = f"{keys[parent]}{_SEP}{segment}" if keys[parent] else segment
    return keys


def _clean(value: Any) -> str:
    # Case does not make another part ("NUT" from one exporter is "nut" from another), as part numbers of a
    # series are case-insensitive.
    return " ".join(str(value or "").replace(_SEP, " ").replace("#", "＃").split()).casefold()


def _name_path(rows_by_path: Mapping[str, Mapping[str, Any]], path: str) -> str:
    names = []
    current = path
    while current:
        row = rows_by_path.get(current)
        if row is None:
            break
        names.append(str(row.get("part_name") or ""))
        current = current.rpartition(".")[0]
    return "/".join(reversed(names))


def _totals(rows_by_path: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
    """Instances of each row in the whole product: its quantity times its ancestors'."""
    totals: dict[str, int] = {}
    for path in sorted(rows_by_path, key=lambda p: (p.count("."), p)):
        parent = path.rpartition(".")[0]
        quantity = int(rows_by_path[path].get("quantity") or 1)
        totals[path] = quantity * totals.get(parent, 1)
    return totals


def _side(row: Mapping[str, Any], total: int) -> dict[str, Any]:
    return {
        "bom_node": row.get("id"),
        "path": row["path"],
        "quantity": int(row.get("quantity") or 1),
        "total_quantity": total,
    }


def bom_diff(old_rows: Sequence[Mapping[str, Any]], new_rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Rows added, removed and with a changed quantity (under their parent), matched by row_keys()."""
    old_by_path = {str(r["path"]): r for r in old_rows}
    new_by_path = {str(r["path"]): r for r in new_rows}
    old_keys, new_keys = row_keys(old_rows), row_keys(new_rows)
    old_by_key = {k: p for p, k in old_keys.items()}
    new_by_key = {k: p for p, k in new_keys.items()}
    old_totals, new_totals = _totals(old_by_path), _totals(new_by_path)

    def row_out(row: Mapping[str, Any], rows: Mapping[str, Mapping[str, Any]], total: int) -> dict[str, Any]:
        return {
            "name_path": _name_path(rows, str(row["path"])),
            "part_name": row.get("part_name"),
            "part_number": row.get("part_number"),
            **_side(row, total),
        }

    added = [
        row_out(new_by_path[p], new_by_path, new_totals[p])
        for p in sorted(new_by_path)
        if new_keys[p] not in old_by_key
    ]
    removed = [
        row_out(old_by_path[p], old_by_path, old_totals[p])
        for p in sorted(old_by_path)
        if old_keys[p] not in new_by_key
    ]
    changed = []
    unchanged = 0
    for path in sorted(new_by_path):
        old_path = old_by_key.get(new_keys[path])
        if old_path is None:
            continue
        old, new = old_by_path[old_path], new_by_path[path]
        q_old, q_new = int(old.get("quantity") or 1), int(new.get("quantity") or 1)
        if q_old == q_new:
            unchanged += 1
            continue
        changed.append(
            {
                "name_path": _name_path(new_by_path, path),
                "part_name": new.get("part_name"),
                "part_number": new.get("part_number"),
                "from": _side(old, old_totals[old_path]),
                "to": _side(new, new_totals[path]),
                "quantity": delta(q_old, q_new),
                "total_quantity": delta(old_totals[old_path], new_totals[path]),
            }
        )
    return {
        "matched_by": "name path and part number",
        "counts": {
            "added": len(added),
            "removed": len(removed),
            "quantity_changed": len(changed),
            "unchanged": unchanged,
        },
        "added": added[:MAX_LISTED],
        "removed": removed[:MAX_LISTED],
        "quantity_changed": changed[:MAX_LISTED],
        "truncated": any(len(x) > MAX_LISTED for x in (added, removed, changed)),
    }


# -- properties ---------------------------------------------------------------------------------------


def _point(value: Any) -> tuple[float, float, float] | None:
    if not isinstance(value, Mapping):
        return None
    coords = tuple(value.get(a) for a in _AXES)
    return coords if all(_finite(c) for c in coords) else None  # type: ignore[return-value]


def _diagonal(box: Any) -> float | None:
    if not isinstance(box, Mapping):
        return None
    low, high = _point(box.get("min")), _point(box.get("max"))
    return math.dist(low, high) if low and high else None


def _findings(validation: Mapping[str, Any], kind: str) -> dict[str, str]:
    return {
        str(f.get("code")): str(f.get("message") or "")
        for f in (validation.get(kind) or [])
        if isinstance(f, Mapping) and f.get("code")
    }


def property_deltas(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """Volume, area, mass, centre-of-mass shift, bounding box, topology and validity findings, old -> new."""
    out: dict[str, Any] = {name: delta(old.get(name), new.get(name)) for name in _SCALARS}
    com_old, com_new = _point(old.get("center_of_mass")), _point(new.get("center_of_mass"))
    if com_old and com_new:
        shift = math.dist(com_old, com_new)
        diagonal = _diagonal(old.get("bounding_box"))
        out["center_of_mass"] = {
            "from": dict(zip(_AXES, com_old, strict=True)),
            "to": dict(zip(_AXES, com_new, strict=True)),
            "shift_mm": shift,
            "absolute": {a: n - o for a, o, n in zip(_AXES, com_old, com_new, strict=True)},
            # A shift has no old value to divide by: it is relative to the old bounding box's diagonal.
            "relative": shift / diagonal if diagonal else None,
        }
    else:
        out["center_of_mass"] = {
            "from": old.get("center_of_mass"),
            "to": new.get("center_of_mass"),
            "shift_mm": None,
            "absolute": None,
            "relative": None,
        }
    box_old, box_new = old.get("bounding_box") or {}, new.get("bounding_box") or {}
    lows = (_point(box_old.get("min")), _point(box_new.get("min")))
    highs = (_point(box_old.get("max")), _point(box_new.get("max")))
    if all(lows) and all(highs):
        size_old = [h - lo for h, lo in zip(highs[0], lows[0], strict=True)]  # type: ignore[arg-type]
        size_new = [h - lo for h, lo in zip(highs[1], lows[1], strict=True)]  # type: ignore[arg-type]
        out["bounding_box"] = {
            "from": {"min": box_old.get("min"), "max": box_old.get("max")},
            "to": {"min": box_new.get("min"), "max": box_new.get("max")},
            "size": {a: delta(o, n) for a, o, n in zip(_AXES, size_old, size_new, strict=True)},
            "min": {a: delta(o, n) for a, o, n in zip(_AXES, lows[0], lows[1], strict=True)},  # type: ignore[arg-type]
            "max": {a: delta(o, n) for a, o, n in zip(_AXES, highs[0], highs[1], strict=True)},  # type: ignore[arg-type]
            "diagonal": delta(_diagonal(box_old), _diagonal(box_new)),
        }
    else:
        out["bounding_box"] = {"from": box_old or None, "to": box_new or None, "size": None, "diagonal": None}
    topo_old, topo_new = old.get("topology") or {}, new.get("topology") or {}
    out["topology"] = {k: delta(topo_old.get(k), topo_new.get(k)) for k in _TOPOLOGY}
    val_old, val_new = old.get("validation") or {}, new.get("validation") or {}
    validity: dict[str, Any] = {"from": val_old.get("is_valid"), "to": val_new.get("is_valid")}
    for kind in ("errors", "warnings"):
        before, after = _findings(val_old, kind), _findings(val_new, kind)
        validity[kind] = {
            "count": delta(len(before), len(after)),
            "appeared": [{"code": c, "message": after[c]} for c in sorted(set(after) - set(before))],
            "disappeared": [{"code": c, "message": before[c]} for c in sorted(set(before) - set(after))],
        }
    out["validity"] = validity
    return out


# -- the whole compare --------------------------------------------------------------------------------


def deltas_digest(result: Mapping[str, Any]) -> str:
    """sha256 of what a reviewer judges: both file hashes, the property deltas and the BOM changes. A vote carries
    it, so a vote given on one set of deltas never counts for another."""
    basis = {
        "from": (result.get("from") or {}).get("file_hash"),
        "to": (result.get("to") or {}).get("file_hash"),
        "properties": result.get("properties"),
        "bom": {k: v for k, v in (result.get("bom") or {}).items() if k != "matched_by"},
    }
    text = json.dumps(basis, sort_keys=True, separators=(",", ":"), default=str, allow_nan=True)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def compare_revisions(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """Compare two analysed revisions given as {"design": {...}, "properties": {...}, "bom": [rows]}. Without an
    old revision (a series' first version) there are no deltas, but the digest still pins the file."""
    result: dict[str, Any] = {
        "from": dict(old["design"]) if old else None,
        "to": dict(new["design"]),
        "properties": property_deltas(old["properties"], new["properties"]) if old else None,
        "bom": bom_diff(old["bom"], new["bom"]) if old else None,
    }
    result["digest"] = deltas_digest(result)
    return result


def rows_from_tree(roots: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Flat rows (path, part_name, part_number, quantity) of an analysis result's nested BOM tree."""
    out: list[dict[str, Any]] = []
    stack = list(roots)[::-1]
    while stack:
        node = stack.pop()
        out.append({k: node.get(k) for k in ("path", "part_name", "part_number", "quantity")})
        stack.extend(list(node.get("children") or [])[::-1])
    return out
