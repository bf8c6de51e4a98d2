"""The corpus tier: real-world CAD files that tests use when the folder exists and skip, saying where to put it,
when it does not."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import pytest

ENV = "ENGINEL_CAD_CORPUS"
DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "cad-samples"
# The files the corpus holds (its SHA256SUMS pins their bytes); named here so the tests parametrized over them
# are collected, and counted as skipped, even where the folder is absent.
FILES = (
    "11752.stp",
    "Motor-c.brep",
    "Ventilator.stp",
    "as1-oc-214.stp",
    "as1_pe_203.stp",
    "curve_geom_plate.igs",
    "face_recognition_sample_part.stp",
    "fan.stl",
    "splinecage.stp",
    "surf114.igs",
    "torus_default_resolution.stl",
    "wire.brep",
)
MARKER = "corpus"
mark = pytest.mark.corpus


def folder() -> Path:
    """ENGINEL_CAD_CORPUS when set, else ../shared/cad-samples beside the project."""
    return Path(os.environ.get(ENV) or DEFAULT)


def available() -> bool:
    return (folder() / "SHA256SUMS").is_file()


def skip_reason() -> str:
    return f"no CAD corpus at {folder()}: put the real-world samples there, or set {ENV} to their folder"


def path(name: str) -> Path:
    if name not in FILES and name not in ("SHA256SUMS", "reference-properties.json"):
        raise KeyError(f"{name} is not a corpus file")
    return folder() / name


def read(name: str) -> bytes:
    return path(name).read_bytes()


@functools.cache
def reference() -> dict[str, dict[str, Any]]:
    """What OpenCascade reports for each file loaded whole (reference-properties.json, rounded to 3 decimals)."""
    return json.loads(path("reference-properties.json").read_text())  # type: ignore[no-any-return]


@functools.cache
def sha256sums() -> dict[str, str]:
    lines = path("SHA256SUMS").read_text().splitlines()
    return {line.split()[1].lstrip("*"): line.split()[0] for line in lines if line.strip()}
