"""Upload content checks: allowed CAD extensions, safe filenames and a streaming sniffer of the bytes."""

from __future__ import annotations

import os
import re
import struct
import unicodedata
from collections.abc import Mapping
from types import MappingProxyType

from models.errors import APIError, ValidationFailed

FORMATS = ("STEP", "IGES", "STL", "BREP")
ALLOWED_EXTENSIONS: Mapping[str, str] = MappingProxyType(
    {".step": "STEP", ".stp": "STEP", ".iges": "IGES", ".igs": "IGES", ".stl": "STL", ".brep": "BREP"}
)
# For a download's Content-Type: the IANA model/* types where registered; BREP has none.
MEDIA_TYPES: Mapping[str, str] = MappingProxyType(
    {"STEP": "model/step", "IGES": "model/iges", "STL": "model/stl", "BREP": "application/octet-stream"}
)
MAX_FILENAME_BYTES = 255
_MAX_EXTENSION_BYTES = 16  # a longer "extension" is part of the name, and is truncated like it
_ALLOWED_LIST = "STEP (.step, .stp), IGES (.iges, .igs), STL (.stl) or BREP (.brep)"
# Characters Windows refuses in names, and the quote that would end a Content-Disposition parameter.
_RESERVED_CHARS = str.maketrans({c: "_" for c in '<>:"|?*'})
_WINDOWS_DEVICES = frozenset(
    {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}
)
# Control, format (e.g. U+202E right-to-left override, which disguises "exe.step" as "pets.exe"),
# line/paragraph separators, lone surrogates (not encodable) and private use.
_DROPPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})

HEAD_BYTES = 4096  # what the sniffer keeps of the start of a file ...
TAIL_BYTES = 4096  # ... and of its end; everything else is counted and scanned, never kept
_BOM = b"\xef\xbb\xbf"
_WHITESPACE = b" \t\r\n\f\v"
STEP_MAGIC = b"ISO-10303-21;"
STEP_END = b"END-ISO-10303-21;"
_BREP_HEADER = re.compile(rb"(?:DBRep_DrawableShape\s+)?(?:Open )?CASCADE Topology V\d")
_IGES_SEQUENCE = re.compile(rb" *\d{1,7}")
_IGES_SECTIONS = b"SGDPT"


class InvalidFileFormat(APIError):
    status = 400
    code = "INVALID_FILE_FORMAT"
    title = "Invalid file format"


def format_for_filename(name: str) -> str:
    """ "STEP", "IGES", "STL" or "BREP" from the extension (any case); InvalidFileFormat (400) otherwise.

    Give it the sanitized name: trailing dots and spaces are not stripped here.
    """
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    extension = os.path.splitext(base)[1].lower()
    fmt = ALLOWED_EXTENSIONS.get(extension)
    if fmt is not None:
        return fmt
    if not extension:
        message = f"The filename has no extension: upload a {_ALLOWED_LIST} file."
    else:
        shown = extension if len(extension) <= 20 else extension[:20] + "…"
        message = f"Unsupported file type {shown!r}: upload a {_ALLOWED_LIST} file."
    raise InvalidFileFormat(message, field_errors={"filename": [message]})


def sanitize_filename(name: str) -> str:
    """A name safe to store and offer back in Content-Disposition: the last path component, without control
    or format characters, Windows-reserved characters replaced by "_", no leading/trailing dots or spaces,
    at most 255 UTF-8 bytes with the extension kept. ValidationFailed (field ``filename``) if nothing is left.
    """
    if not isinstance(name, str):
        raise ValidationFailed("The filename must be a string.", field_errors={"filename": ["Must be a string."]})
    text = unicodedata.normalize("NFC", name)
    # Tabs and line breaks separate words, so they become spaces; other invisible characters just go.
    text = "".join(
        " " if c.isspace() else c for c in text if c.isspace() or unicodedata.category(c) not in _DROPPED_CATEGORIES
    )
    # Separators are looked for after control characters are gone, so "a\x00/../b" cannot hide one.
    text = text.replace("\\", "/").rsplit("/", 1)[-1]
    text = text.translate(_RESERVED_CHARS)
    text = " ".join(text.split())  # every run of Unicode whitespace becomes one space
    text = text.strip(" .")
    stem, extension = os.path.splitext(text)
    if stem.split(".", 1)[0].upper() in _WINDOWS_DEVICES:
        text, stem = "_" + text, "_" + stem
    if len(text.encode()) > MAX_FILENAME_BYTES:
        if not extension or len(extension.encode()) > _MAX_EXTENSION_BYTES:
            stem, extension = text, ""
        budget = MAX_FILENAME_BYTES - len(extension.encode())
        # Cut on a byte budget, dropping a character the cut splits, then tidy the new end.
        stem = stem.encode()[:budget].decode("utf-8", "ignore").rstrip(" .")
        text = stem + extension if stem else ""
    if not text:
        message = "The filename is empty once directories and unsafe characters are removed."
        raise ValidationFailed(message, field_errors={"filename": [message]})
    return text


def _preview(data: bytes) -> str:
    shown = data[:24]
    return repr(shown)[1:] + ("…" if len(data) > len(shown) else "")


def _guess(head: bytes) -> str | None:
    """What the content recognisably is, for the error message ("It looks like an IGES file")."""
    text = head.removeprefix(_BOM).lstrip(_WHITESPACE)
    if text.startswith(STEP_MAGIC):
        return "a STEP file"
    if len(head) >= 80 and head[72:73] == b"S" and _IGES_SEQUENCE.fullmatch(head[73:80]):
        return "an IGES file"
    if _BREP_HEADER.match(text):
        return "a BREP file"
    if text[:5].lower() == b"solid":
        return "an STL file"
    if head.startswith(b"PK\x03\x04"):
        return "a ZIP archive"
    return None


def _invalid(fmt: str, reason: str, head: bytes = b"") -> InvalidFileFormat:
    message = f"The file is not a valid {fmt} file: {reason}"
    guess = _guess(head) if head else None
    if guess and f" {fmt} " not in guess:
        message += f" It looks like {guess}: check the file and its extension."
    return InvalidFileFormat(message, field_errors={"file": [message]})


class _Scanner:
    """Whether a token occurs anywhere in a stream, holding only len(token) - 1 bytes across chunk edges."""

    def __init__(self, token: bytes, fold_case: bool = False) -> None:
        self.token = token.lower() if fold_case else token
        self.fold_case = fold_case
        self.found = False
        self._carry = b""

    def feed(self, chunk: bytes) -> None:
        if self.found:
            return
        if self.fold_case:
            chunk = chunk.lower()
        keep = len(self.token) - 1
        if self.token in self._carry + chunk[:keep] or self.token in chunk:
            self.found = True
            self._carry = b""
        else:
            self._carry = (self._carry + chunk[-keep:])[-keep:] if keep else b""


class FormatSniffer:
    """Checks that streamed content is what its declared format says: feed() every chunk in order, then
    finish(total_size). Keeps the first and last 4 KiB and a few flags, whatever the file's size.

    Raises InvalidFileFormat (400): from feed() as soon as the start of the file is enough to refuse it (so an
    upload can stop early), otherwise from finish().
    """

    def __init__(self, fmt: str) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown CAD format {fmt!r}; expected one of {', '.join(FORMATS)}")
        self.fmt = fmt
        self.size = 0
        self._head = bytearray()
        self._tail = b""
        self._head_checked = False
        self._finished = False
        self._scanners: list[_Scanner] = []
        if fmt == "STEP":
            self._scanners.append(_Scanner(STEP_END))
        elif fmt == "STL":
            self._scanners.append(_Scanner(b"facet", fold_case=True))

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        if self._finished:
            raise ValueError("feed() after finish()")
        data = bytes(chunk)
        if not data:
            return
        self.size += len(data)
        if len(self._head) < HEAD_BYTES:
            self._head += data[: HEAD_BYTES - len(self._head)]
        self._tail = data[-TAIL_BYTES:] if len(data) >= TAIL_BYTES else (self._tail + data)[-TAIL_BYTES:]
        for scanner in self._scanners:
            scanner.feed(data)
        if not self._head_checked and len(self._head) >= HEAD_BYTES:
            self._head_checked = True
            self._check_head(complete=False)

    def finish(self, total_size: int | None = None) -> None:
        """Final verdict once every byte was fed; total_size, if given, must equal the bytes fed."""
        if total_size is not None and total_size != self.size:
            raise ValueError(f"fed {self.size} bytes but total_size is {total_size}")
        self._finished = True
        if self.size == 0:
            raise _invalid(self.fmt, "the file is empty.")
        if not self._head_checked:
            self._head_checked = True
            self._check_head(complete=True)
        getattr(self, f"_finish_{self.fmt.lower()}")()

    # -- per format: the start of the file (complete: the head is the whole file) ---------------------------

    def _check_head(self, complete: bool) -> None:
        head = bytes(self._head)
        if self.fmt == "STEP":
            if not head.removeprefix(_BOM).lstrip(_WHITESPACE).startswith(STEP_MAGIC):
                raise _invalid("STEP", f"it must start with 'ISO-10303-21;' but starts with {_preview(head)}.", head)
        elif self.fmt == "IGES":
            self._check_iges_head(head.removeprefix(_BOM), complete)
        elif self.fmt == "BREP":
            if not _BREP_HEADER.match(head.removeprefix(_BOM).lstrip(_WHITESPACE)):
                raise _invalid(
                    "BREP",
                    "it must start with 'DBRep_DrawableShape' or an OpenCascade "
                    f"'CASCADE Topology V…' header but starts with {_preview(head)}.",
                    head,
                )
        # STL: binary or ASCII depends on the total size, so its verdict waits for finish().

    def _check_iges_head(self, head: bytes, complete: bool) -> None:
        if len(head) < 80 or head[72:73] != b"S":
            raise _invalid("IGES", "its first record must be 80 columns with 'S' (Start section) in column 73.", head)
        # Records are 80 columns, each followed by the same line ending (CRLF, LF, CR) or by nothing at all.
        separator = next((sep for sep in (b"\r\n", b"\n", b"\r") if head.startswith(sep, 80)), b"")
        width = 80 + len(separator)
        section = 0
        for number, offset in enumerate(range(0, len(head), width), start=1):
            record, ending = head[offset : offset + 80], head[offset + 80 : offset + width]
            if len(record) < 80 or len(ending) < len(separator):
                if not complete:
                    break  # cut off by the head window; the next records are not kept
                if not record.strip(_WHITESPACE + b"\x00\x1a"):
                    break  # trailing blank line or end-of-file mark
                if len(record) < 80:
                    raise _invalid(
                        "IGES", f"record {number} is not 80 columns long (IGES uses fixed 80-column records).", head
                    )
            elif ending != separator:
                raise _invalid(
                    "IGES", f"record {number} is not 80 columns long (IGES uses fixed 80-column records).", head
                )
            position = _IGES_SECTIONS.find(record[72:73])
            if position < section or not _IGES_SEQUENCE.fullmatch(record[73:80]):
                raise _invalid(
                    "IGES", f"record {number} has no valid section letter and sequence number in columns 73-80.", head
                )
            section = position

    # -- per format: the verdict once the whole file was seen -----------------------------------------------

    def _finish_step(self) -> None:
        if not self._scanners[0].found:
            raise _invalid("STEP", "it has no 'END-ISO-10303-21;' terminator (the upload may be truncated).")

    def _finish_iges(self) -> None:
        tail = self._tail.rstrip(_WHITESPACE + b"\x00\x1a")
        last = tail.splitlines()[-1] if b"\n" in tail or b"\r" in tail else tail[-80:]
        if len(last) != 80 or last[72:73] != b"T":
            raise _invalid(
                "IGES", "its last record is not a Terminate ('T' in column 73) record (the upload may be truncated)."
            )

    def _finish_brep(self) -> None:
        pass  # the header is all a BREP file has to recognise it by

    def _finish_stl(self) -> None:
        head = bytes(self._head)
        declared = struct.unpack_from("<I", head, 80)[0] if self.size >= 84 else None
        if declared is not None and self.size == 84 + 50 * declared:
            if declared == 0:
                raise _invalid("STL", "the binary STL contains no triangles.")
            return
        if head.removeprefix(_BOM).lstrip(_WHITESPACE)[:5].lower() != b"solid":
            why = (
                "it is shorter than a binary STL's 84-byte header"
                if declared is None
                else f"as a binary STL its header declares {declared} triangles, which makes "
                f"{84 + 50 * declared} bytes, not {self.size}"
            )
            raise _invalid("STL", f"{why}; and it does not start with 'solid' as an ASCII STL does.", head)
        if b"\x00" in head:
            raise _invalid(
                "STL",
                "it starts with 'solid' but holds binary data, and its size does not match "
                "the triangle count of a binary STL (the upload may be truncated).",
            )
        if not self._scanners[0].found:
            raise _invalid("STL", "the ASCII STL contains no 'facet'.")
        if b"endsolid" not in self._tail.lower():
            raise _invalid("STL", "the ASCII STL does not end with 'endsolid' (the upload may be truncated).")
