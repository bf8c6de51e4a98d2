"""models.cadformat: extensions, hostile filenames, the sniffer on every generated and corpus file, and on
broken files."""

from __future__ import annotations

import struct
import tracemalloc
from pathlib import Path

import pytest
from OCP.BinTools import BinTools
from OCP.BRepPrimAPI import BRepPrimAPI_MakeBox
from OCP.BRepTools import BRepTools

from models.cadformat import (
    ALLOWED_EXTENSIONS,
    FORMATS,
    MAX_FILENAME_BYTES,
    FormatSniffer,
    InvalidFileFormat,
    format_for_filename,
    sanitize_filename,
)
from models.errors import ValidationFailed
from tests import cad_fixtures, corpus
from tests.cad_fixtures import CadFiles
from tests.helpers import cad

# Generated files the upload check must accept, and the corpus files (only where the corpus is).
SNIFFABLE = cad_fixtures.names(sniffs=True)
CORPUS_FILES = [name for name in corpus.FILES if Path(name).suffix.lower() in ALLOWED_EXTENSIONS]


def sniff(fmt: str, data: bytes, piece: int = 65536) -> None:
    sniffer = FormatSniffer(fmt)
    for offset in range(0, len(data), piece):
        sniffer.feed(data[offset : offset + piece])
    sniffer.finish(len(data))


def refused(fmt: str, data: bytes, piece: int = 65536) -> str:
    with pytest.raises(InvalidFileFormat) as caught:
        sniff(fmt, data, piece)
    error = caught.value
    assert error.status == 400 and error.code == "INVALID_FILE_FORMAT"
    assert error.body()["field_errors"] == {"file": [error.detail]}
    return error.detail


# ---------------------------------------------------------------- whole files


def passes_as_its_own_format_only(name: str, data: bytes) -> None:
    own = format_for_filename(name)
    sniff(own, data)
    sniff(own, data, piece=4093)  # chunking never changes the verdict
    for other in FORMATS:
        if other != own:
            detail = refused(other, data)
            assert f"not a valid {other} file" in detail


def test_every_format_is_generated() -> None:
    assert {format_for_filename(name) for name in SNIFFABLE} == set(FORMATS)
    # ASCII and binary STL both
    assert cad("box-ascii.stl").startswith(b"solid") and not cad("box-binary.stl").startswith(b"solid")


@pytest.mark.parametrize("name", SNIFFABLE)
def test_generated_file_passes_as_its_own_format_and_fails_as_every_other(cad_files: CadFiles, name: str) -> None:
    passes_as_its_own_format_only(name, cad_files.read(name))


@corpus.mark
@pytest.mark.parametrize("name", CORPUS_FILES)
def test_corpus_file_passes_as_its_own_format_and_fails_as_every_other(name: str) -> None:
    passes_as_its_own_format_only(name, corpus.read(name))


def test_small_file_fed_byte_by_byte() -> None:
    sniff("IGES", cad("curves.igs"), piece=1)


def test_generated_truncated_step_is_refused() -> None:
    assert "END-ISO-10303-21" in refused("STEP", cad("truncated.step"))


@pytest.mark.parametrize(
    "name", [n for n in SNIFFABLE if format_for_filename(n) != "BREP" and cad_fixtures.FILES[n].readable]
)
def test_truncated_generated_file_is_refused(cad_files: CadFiles, name: str) -> None:
    # BREP is left out: its files have no end marker to miss.
    data = cad_files.read(name)
    refused(format_for_filename(name), data[: len(data) * 2 // 3])


@corpus.mark
@pytest.mark.parametrize("name", [n for n in CORPUS_FILES if format_for_filename(n) != "BREP"])
def test_truncated_corpus_file_is_refused(name: str) -> None:
    data = corpus.read(name)
    refused(format_for_filename(name), data[: len(data) * 2 // 3])


# ---------------------------------------------------------------- STEP

STEP = (
    b"ISO-10303-21;\nHEADER;\nFILE_DESCRIPTION((''),'2;1');\nENDSEC;\nDATA;\n"
    b"#1=CARTESIAN_POINT('',(0.,0.,0.));\nENDSEC;\nEND-ISO-10303-21;\n"
)


def test_step_variants() -> None:
    sniff("STEP", STEP)
    sniff("STEP", b"\xef\xbb\xbf" + STEP)
    sniff("STEP", b"\r\n \t\n" + STEP)
    sniff("STEP", STEP.replace(b"\n", b"\r\n"))
    for piece in range(1, 20):  # the end marker split across every possible chunk boundary
        sniff("STEP", STEP, piece=piece)


def test_step_corruptions() -> None:
    assert "must start with 'ISO-10303-21;'" in refused("STEP", b"ISO-10303-21\n" + STEP[14:])
    assert "must start with" in refused("STEP", b"#" + STEP)
    assert "END-ISO-10303-21" in refused("STEP", STEP.replace(b"END-ISO-10303-21;", b""))
    assert "empty" in refused("STEP", b"")
    assert "It looks like a ZIP archive" in refused("STEP", b"PK\x03\x04" + bytes(5000))


def test_wrong_content_is_refused_early() -> None:
    sniffer = FormatSniffer("STEP")
    with pytest.raises(InvalidFileFormat):
        sniffer.feed(b"MZ" + bytes(5000))  # rejected before the rest of the upload arrives


# ---------------------------------------------------------------- IGES


def iges(lines: list[str], separator: bytes = b"\n") -> bytes:
    return b"".join(line.encode() + separator for line in lines)


def record(text: str, section: str, number: int) -> str:
    return f"{text:<72}{section}{number:>7}"


IGES_LINES = [
    record("", "S", 1),
    record("1H,,1H;,4HTEST;", "G", 1),
    record("     110       1       0       0       0       0       0       000000000", "D", 1),
    record("     110       0       0       1       0                               0", "D", 2),
    record("110,0.,0.,0.,1.,0.,0.;", "P", 1),
    record("S      1G      1D      2P      1", "T", 1),
]


def test_iges_line_endings() -> None:
    for separator in (b"\n", b"\r\n", b"\r", b""):
        sniff("IGES", iges(IGES_LINES, separator))
    sniff("IGES", iges(IGES_LINES, b"\r\n") + b"\r\n\x1a")  # blank line and DOS end-of-file mark
    data = cad("plate.igs")  # a file OpenCascade wrote, LF and CRLF
    sniff("IGES", data.replace(b"\n", b"\r\n"))


def test_iges_corruptions() -> None:
    short = [*IGES_LINES]
    short[1] = short[1][:30] + short[1][31:]  # a 79-column record
    assert "not 80 columns" in refused("IGES", iges(short))
    shifted = [" " + IGES_LINES[0][:-1], *IGES_LINES[1:]]
    assert "column 73" in refused("IGES", iges(shifted))
    disordered = [IGES_LINES[0], IGES_LINES[4], IGES_LINES[1], *IGES_LINES[2:4], IGES_LINES[5]]
    assert "section letter" in refused("IGES", iges(disordered))
    assert "Terminate" in refused("IGES", iges(IGES_LINES[:-1]))
    assert "column 73" in refused("IGES", b"S" * 79)
    mixed = iges(IGES_LINES[:3], b"\r\n") + iges(IGES_LINES[3:], b"\n")
    assert "not 80 columns" in refused("IGES", mixed)


# ---------------------------------------------------------------- STL


def binary_stl(triangles: int, header: bytes = b"binary STL from a test") -> bytes:
    facet = struct.pack("<12fH", 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0)
    return header.ljust(80, b" ") + struct.pack("<I", triangles) + facet * triangles


ASCII_STL = (
    b"solid part\n facet normal 0 0 1\n  outer loop\n   vertex 0 0 0\n   vertex 1 0 0\n"
    b"   vertex 0 1 0\n  endloop\n endfacet\nendsolid part\n"
)


def test_stl_variants() -> None:
    sniff("STL", binary_stl(3))
    # Binary files whose 80-byte header starts with "solid" are decided by the size rule, not the header.
    sniff("STL", binary_stl(1000, b"solid exported by a CAD system"))
    sniff("STL", ASCII_STL)
    sniff("STL", ASCII_STL.upper())
    sniff("STL", b"\xef\xbb\xbf  " + ASCII_STL.replace(b"\n", b"\r\n"))
    for piece in range(1, 12):
        sniff("STL", ASCII_STL, piece=piece)


def test_stl_corruptions() -> None:
    data = binary_stl(1000, b"solid exported by a CAD system")
    assert "binary data" in refused("STL", data[:-1])
    assert "binary data" in refused("STL", data + b"\n")
    detail = refused("STL", binary_stl(3)[:-7])
    assert "declares 3 triangles, which makes 234 bytes, not 227" in detail
    assert "no triangles" in refused("STL", binary_stl(0))
    assert "shorter than" in refused("STL", b"\x00" * 50)
    assert "no 'facet'" in refused("STL", b"solid empty\nendsolid empty\n")
    assert "endsolid" in refused("STL", ASCII_STL[:-15])


# ---------------------------------------------------------------- BREP


def test_brep_text_and_binary_from_opencascade(tmp_path: Path) -> None:
    box = BRepPrimAPI_MakeBox(1.0, 2.0, 3.0).Shape()
    BRepTools.Write_s(box, str(tmp_path / "box.brep"))
    BinTools.Write_s(box, str(tmp_path / "box.bin.brep"))
    text, binary = (tmp_path / "box.brep").read_bytes(), (tmp_path / "box.bin.brep").read_bytes()
    assert binary.lstrip().startswith(b"Open CASCADE Topology V")
    sniff("BREP", text)
    sniff("BREP", binary)
    for other in ("STEP", "IGES", "STL"):
        refused(other, text)
        refused(other, binary)


def test_brep_corruptions() -> None:
    assert "CASCADE Topology" in refused("BREP", b"DBRep_DrawableShape\n\nGarbage\n")
    refused("BREP", b"CASCADE Topology X1\n")
    refused("BREP", bytes(range(256)) * 20)


# ---------------------------------------------------------------- bounds and misuse


def test_sniffer_memory_is_bounded() -> None:
    block = b" facet normal 0 0 1\n  outer loop\n  endloop\n endfacet\n" * 20000  # ~1 MiB
    sniffer = FormatSniffer("STL")
    tracemalloc.start()
    try:
        sniffer.feed(b"solid big\n")
        for _ in range(48):
            sniffer.feed(block)
        sniffer.feed(b"endsolid big\n")
        sniffer.finish()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * len(block)  # a copy or two of the chunk being fed, never the stream
    assert len(sniffer._head) <= 4096 and len(sniffer._tail) <= 4096


def test_sniffer_misuse() -> None:
    with pytest.raises(ValueError):
        FormatSniffer("OBJ")
    sniffer = FormatSniffer("STEP")
    sniffer.feed(STEP)
    with pytest.raises(ValueError):
        sniffer.finish(len(STEP) + 1)
    sniffer.finish(len(STEP))
    with pytest.raises(ValueError):
        sniffer.feed(b"more")


# ---------------------------------------------------------------- filenames


@pytest.mark.parametrize(
    "name, fmt",
    [
        ("part.step", "STEP"),
        ("PART.STP", "STEP"),
        ("a.b.Iges", "IGES"),
        ("x.igs", "IGES"),
        ("mesh.stl", "STL"),
        ("shape.BREP", "BREP"),
        ("C:\\Users\\me\\bracket.stp", "STEP"),
        ("dir.stl/part.step", "STEP"),
    ],
)
def test_format_for_filename(name: str, fmt: str) -> None:
    assert format_for_filename(name) == fmt


@pytest.mark.parametrize(
    "name",
    [
        "part.exe",
        "part.step.exe",
        "part",
        ".step",
        "archive.tar.gz",
        "part.stpz",
        "model.obj",
        "part.step/",
        "x." + "y" * 500,
    ],
)
def test_format_for_filename_refuses(name: str) -> None:
    with pytest.raises(InvalidFileFormat) as caught:
        format_for_filename(name)
    assert caught.value.status == 400 and caught.value.code == "INVALID_FILE_FORMAT"
    assert "STEP (.step, .stp)" in caught.value.detail and "filename" in caught.value.field_errors
    assert len(caught.value.detail) < 200


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("bracket.step", "bracket.step"),
        ("../../etc/passwd.step", "passwd.step"),
        ("..\\..\\Windows\\System32\\evil.stp", "evil.stp"),
        ("/abs/path/to/part.igs", "part.igs"),
        ("a\x00b.step", "ab.step"),
        ("a\x00/../../b.step", "b.step"),
        ("line\r\nContent-Type: x.stl", "line Content-Type_ x.stl"),
        ('say "hi" <now>?.step', "say _hi_ _now__.step"),
        ("gpj\u202e.step", "gpj.step"),
        ("  ..hidden.step. . ", "hidden.step"),
        ("tab\tand   spaces.step", "tab and spaces.step"),
        ("CON.step", "_CON.step"),
        ("lpt1.stl", "_lpt1.stl"),
        ("console.step", "console.step"),
        ("Ventilator \u00e9t\u00e9.stp", "Ventilator \u00e9t\u00e9.stp"),
        ("e\u0301.step", "\u00e9.step"),
    ],
)
def test_sanitize_filename(raw: str, clean: str) -> None:
    assert sanitize_filename(raw) == clean


@pytest.mark.parametrize("raw", ["", "   ", "..", "../..", "/", "\\", "\x00\x01\x1f", "dir/", ". . ."])
def test_sanitize_filename_refuses_empty(raw: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        sanitize_filename(raw)
    assert caught.value.status == 400 and "filename" in caught.value.field_errors


@pytest.mark.parametrize("stem", ["a" * 400, "\u00e9" * 300, "\U0001f680" * 100, "x" * 250 + " ."])
def test_sanitize_filename_limits_bytes_and_keeps_the_extension(stem: str) -> None:
    clean = sanitize_filename(stem + ".step")
    assert len(clean.encode()) <= MAX_FILENAME_BYTES
    assert clean.endswith(".step") and format_for_filename(clean) == "STEP"
    assert clean[:-5] and stem.startswith(clean[:-5])


def test_sanitize_filename_long_fake_extension() -> None:
    clean = sanitize_filename("part." + "x" * 400)
    assert len(clean.encode()) == MAX_FILENAME_BYTES and clean.startswith("part.")
