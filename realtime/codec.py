"""Wire codecs (enginel.v1.json text frames, enginel.v1.msgpack binary frames) and server-side frame building."""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import Any

import msgpack

from models.schema import json_default

JSON_PROTOCOL = "enginel.v1.json"
MSGPACK_PROTOCOL = "enginel.v1.msgpack"

OP_TEXT = 0x1
OP_BINARY = 0x2
_FIN = 0x80
# No message of the protocol nests deeper than a few levels; a bound keeps deep documents (which only an
# attacker sends) away from every recursive consumer downstream (validation, re-encoding, logging).
MAX_DEPTH = 32


class DecodeError(ValueError):
    """An inbound message that is not a well-formed document in the connection's codec."""


def check_depth(value: Any, limit: int = MAX_DEPTH) -> Any:
    """Return `value` unless its lists and maps nest deeper than `limit` (walked without recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if depth > limit:
            raise DecodeError(f"the message nests deeper than {limit} levels")
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return value


def build_frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked, unfragmented server frame; built once and written to every subscriber's stream."""
    size = len(payload)
    if size < 126:
        return bytes((_FIN | opcode, size)) + payload
    if size <= 0xFFFF:
        return struct.pack("!BBH", _FIN | opcode, 126, size) + payload
    return struct.pack("!BBQ", _FIN | opcode, 127, size) + payload


class Codec:
    """Encodes documents to payloads and frames; decodes inbound payloads to documents."""

    name: str
    opcode: int
    index: int  # position in CODECS; events cache one frame per index

    def encode(self, value: Any) -> bytes:
        raise NotImplementedError

    def decode(self, raw: str | bytes) -> Any:
        raise NotImplementedError

    def frame(self, value: Any) -> bytes:
        return build_frame(self.opcode, self.encode(value))


class JsonCodec(Codec):
    name = JSON_PROTOCOL
    opcode = OP_TEXT
    index = 0

    def __init__(self) -> None:
        self._encoder = json.JSONEncoder(
            default=json_default, ensure_ascii=False, separators=(",", ":"), allow_nan=False, check_circular=False
        )

    def encode(self, value: Any) -> bytes:
        return self._encoder.encode(value).encode()

    def decode(self, raw: str | bytes) -> Any:
        if not isinstance(raw, str):
            raise DecodeError(f"{JSON_PROTOCOL} carries text frames; send JSON as text")
        try:
            value = json.loads(raw)
        except ValueError as exc:
            raise DecodeError(f"not valid JSON: {exc}") from None
        except RecursionError:
            # json's C scanner recurses per nesting level: 30,000 brackets exhaust the stack.
            raise DecodeError(f"the message nests deeper than {MAX_DEPTH} levels") from None
        return check_depth(value) if isinstance(value, (dict, list)) else value


def _reject_ext(code: int, data: bytes) -> Any:
    raise DecodeError(f"msgpack extension type {code} is not accepted")


class MsgpackCodec(Codec):
    name = MSGPACK_PROTOCOL
    opcode = OP_BINARY
    index = 1

    def encode(self, value: Any) -> bytes:
        packed: bytes = msgpack.packb(value, default=json_default, use_bin_type=True, datetime=False)
        return packed

    def decode(self, raw: str | bytes) -> Any:
        if not isinstance(raw, bytes):
            raise DecodeError(f"{MSGPACK_PROTOCOL} carries binary frames; send msgpack as binary")
        try:
            # timestamp=3 would build datetimes; ext types are refused so both codecs accept the same values.
            value = msgpack.unpackb(raw, raw=False, strict_map_key=True, ext_hook=_reject_ext, use_list=True)
        except DecodeError:
            raise
        except Exception as exc:  # msgpack raises several unrelated types (StackError when deep) for bad input
            raise DecodeError(f"not valid msgpack: {exc}") from None
        return check_depth(value) if isinstance(value, (dict, list)) else value


JSON = JsonCodec()
MSGPACK = MsgpackCodec()
CODECS: tuple[Codec, ...] = (JSON, MSGPACK)
BY_PROTOCOL: Mapping[str, Codec] = {codec.name: codec for codec in CODECS}


def select_protocol(offered: list[str]) -> tuple[str | None, Codec | None]:
    """(subprotocol to echo, codec): no offer means JSON; offers with none of ours mean no codec at all."""
    if not offered:
        return None, JSON
    for name in offered:
        codec = BY_PROTOCOL.get(name)
        if codec is not None:
            return name, codec
    return None, None
