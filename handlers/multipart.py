"""Streaming multipart/form-data: a request's parts as events while its body arrives, bounded, never held whole."""

from __future__ import annotations

from dataclasses import dataclass

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from models.errors import ValidationFailed

MAX_FIELD_BYTES = 4096  # one form field's value; the file part is the only large one
MAX_PARTS = 32
MAX_HEADER_BYTES = 2048  # one part header line
MAX_HEADERS = 8  # header lines per part
MAX_BOUNDARY = 70  # RFC 2046


@dataclass(frozen=True, slots=True)
class FieldPart:
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class FileStart:
    name: str
    filename: str
    content_type: str


@dataclass(frozen=True, slots=True)
class FileData:
    data: bytes


@dataclass(frozen=True, slots=True)
class FileEnd:
    name: str


Event = FieldPart | FileStart | FileData | FileEnd


def _refuse(detail: str, field: str = "body", reason: str | None = None) -> ValidationFailed:
    return ValidationFailed(detail, field_errors={field: [reason or detail]}, title="Malformed multipart body")


def _text(raw: bytes, what: str, field: str) -> str:
    """Header parameter bytes as text: UTF-8 (what browsers send), with no control characters (NUL included)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _refuse(f"The {what} is not valid UTF-8.", field) from None
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise _refuse(f"The {what} contains control characters.", field)
    return text


class MultipartReader:
    """Feed body chunks in order; each feed() returns the events the chunk completed: whole fields (at most
    MAX_FIELD_BYTES each), and a file part as FileStart, FileData pieces no larger than the chunk, FileEnd.

    python-multipart does the byte-level parsing; this class turns its callbacks into events and refuses, with a
    400 in the API's envelope, everything a form should not contain: no boundary, parts without a form-data
    disposition or name, names or filenames with control characters (a NUL in a filename included) or invalid
    UTF-8, oversized fields or headers, too many parts, and a body that ends before its closing boundary.
    """

    def __init__(self, content_type: str) -> None:
        ctype, params = parse_options_header(content_type)
        if ctype != b"multipart/form-data":
            raise _refuse("The body must be multipart/form-data.", "Content-Type")
        boundary = params.get(b"boundary", b"")
        if not boundary or len(boundary) > MAX_BOUNDARY or any(b < 32 or b > 126 for b in boundary):
            raise _refuse(
                "The multipart Content-Type needs a boundary of 1 to 70 printable characters.", "Content-Type"
            )
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
                "on_end": self._end,
            },
            max_header_count=MAX_HEADERS,
            max_header_size=MAX_HEADER_BYTES,
        )
        self._events: list[Event] = []
        self._parts = 0
        self._field = bytearray()
        self._value = bytearray()
        self._data = bytearray()  # a form field's value
        self._headers: dict[str, bytes] = {}
        self._name = ""
        self._is_file = False
        self._ended = False

    def feed(self, chunk: bytes) -> list[Event]:
        self._events = []
        if self._ended:
            return []  # an epilogue after the closing boundary is ignored, as RFC 2046 says
        try:
            self._parser.write(chunk)
        except FormParserError as exc:
            raise _refuse(f"The multipart body is malformed: {exc}.") from None
        return self._events

    def close(self) -> None:
        """The body is complete: raise unless the closing boundary was seen."""
        if not self._ended:
            raise _refuse("The multipart body ended before its closing boundary.")

    # -- python-multipart callbacks (synchronous, during write())

    def _part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise _refuse(f"The form has more than {MAX_PARTS} parts.")
        self._headers = {}
        self._field.clear()
        self._value.clear()
        self._data.clear()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[bytes(self._field).decode("latin-1").strip().lower()] = bytes(self._value).strip()
        self._field.clear()
        self._value.clear()

    def _headers_finished(self) -> None:
        kind, params = parse_options_header(self._headers.get("content-disposition", b""))
        if kind != b"form-data" or b"name" not in params:
            raise _refuse("Each part needs a 'Content-Disposition: form-data' header with a name.")
        self._name = _text(params[b"name"], "part name", "body")
        if not self._name:
            raise _refuse("A part has an empty name.")
        self._is_file = b"filename" in params
        if self._is_file:
            filename = _text(params[b"filename"], "filename", self._name)
            ctype = _text(self._headers.get("content-type", b"application/octet-stream"), "content type", self._name)
            self._events.append(FileStart(self._name, filename, ctype))

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._is_file:
            if end > start:
                self._events.append(FileData(bytes(data[start:end])))
            return
        if len(self._data) + end - start > MAX_FIELD_BYTES:
            raise _refuse(f"The form field is longer than {MAX_FIELD_BYTES} bytes.", self._name)
        self._data += data[start:end]

    def _part_end(self) -> None:
        if self._is_file:
            self._events.append(FileEnd(self._name))
            return
        try:
            value = bytes(self._data).decode("utf-8")
        except UnicodeDecodeError:
            raise _refuse("The form field is not valid UTF-8.", self._name) from None
        self._data.clear()
        self._events.append(FieldPart(self._name, value))

    def _end(self) -> None:
        self._ended = True
