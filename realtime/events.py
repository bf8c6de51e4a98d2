"""Channel names, stream positions and the Event a broker delivers, with its frames cached once per codec."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from realtime.codec import CODECS, Codec

CHANNEL_KINDS = frozenset({"review", "design", "job", "org", "user"})
# Ids are UUIDs or integers in the API; anything else in a channel name is a client error, not a lookup.
CHANNEL_RE = re.compile(r"^(?P<kind>[a-z]{1,16}):(?P<id>[A-Za-z0-9_-]{1,64})$")
EVENT_NAME_RE = re.compile(r"^[a-z][a-z0-9_.:-]{0,63}$")


def parse_channel(name: Any, kinds: frozenset[str] = CHANNEL_KINDS) -> tuple[str, str]:
    """(kind, id) of a channel name; ValueError with a user-facing message otherwise."""
    if not isinstance(name, str):
        raise ValueError("Channel must be a string such as review:<id>.")
    match = CHANNEL_RE.match(name)
    if match is None or match["kind"] not in kinds:
        raise ValueError(
            f"Unknown channel {name[:80]!r}; channels are " + ", ".join(f"{k}:<id>" for k in sorted(kinds)) + "."
        )
    return match["kind"], match["id"]


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Position:
    """Where a channel's stream stands: offsets increase by one per durable event within an epoch."""

    epoch: str
    offset: int

    def as_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "offset": self.offset}


@dataclass
class History:
    """A history read: the channel's tip and, when `since` was given, whether the gap could be filled."""

    position: Position
    recovered: bool | None = None
    events: list[Event] = field(default_factory=list)


class Event:
    """One pushed event. Durable events carry an epoch and offset; ephemeral ones (presence, notices) do not."""

    __slots__ = ("channel", "epoch", "offset", "event", "data", "ts", "_frames")

    def __init__(
        self,
        channel: str,
        epoch: str | None,
        offset: int | None,
        event: str,
        data: dict[str, Any],
        ts: float | None = None,
    ) -> None:
        self.channel = channel
        self.epoch = epoch
        self.offset = offset
        self.event = event
        self.data = data
        self.ts = time.time() if ts is None else ts
        self._frames: list[bytes | None] = [None] * len(CODECS)

    @property
    def durable(self) -> bool:
        return self.offset is not None

    def message(self) -> dict[str, Any]:
        return {
            "type": "event",
            "channel": self.channel,
            "epoch": self.epoch,
            "offset": self.offset,
            "event": self.event,
            "data": self.data,
            "ts": iso(self.ts),
        }

    def frame(self, codec: Codec) -> bytes:
        """The complete WebSocket frame for `codec`, encoded on first use and shared by every subscriber."""
        frame = self._frames[codec.index]
        if frame is None:
            frame = self._frames[codec.index] = codec.frame(self.message())
        return frame

    def __repr__(self) -> str:
        return f"Event({self.channel} {self.epoch}:{self.offset} {self.event})"
