"""The broker interface (publish, history and offsets, presence, control) and its in-process implementation."""

from __future__ import annotations

import abc
import secrets
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Protocol

import msgpack

from realtime.codec import JSON, MSGPACK
from realtime.events import EVENT_NAME_RE, Event, History, Position


@dataclass(frozen=True)
class BrokerConfig:
    """Bounds shared by every broker implementation."""

    history_size: int = 2000  # events kept per channel for recovery
    history_ttl: float = 600.0  # seconds an event stays recoverable; idle channels are dropped after it
    presence_ttl: float = 60.0  # seconds a presence entry lives without a heartbeat
    max_event_bytes: int = 1_048_576  # largest encoded event accepted by publish()

    def __post_init__(self) -> None:
        if min(self.history_size, self.history_ttl, self.presence_ttl, self.max_event_bytes) <= 0:
            raise ValueError("history_size, history_ttl, presence_ttl and max_event_bytes must be positive")


class BrokerHandler(Protocol):
    """What a broker calls back into (the gateway), always on the event loop, in channel order."""

    def on_event(self, event: Event) -> None: ...

    def on_control(self, message: dict[str, Any]) -> None: ...

    def on_resync(self, channel: str) -> None: ...


class Publisher(Protocol):
    """The one method models/ sees: publish a durable event and learn its (epoch, offset)."""

    async def publish(self, channel: str, event: str, data: dict[str, Any]) -> tuple[str, int]: ...


def new_epoch() -> str:
    return secrets.token_hex(6)


def pack_event(event: str, data: dict[str, Any], ts: float, limit: int) -> bytes:
    """The broker payload. Packing validates, once per event rather than in the fan-out loop, that `data`
    is representable in both wire codecs (JSON refuses NaN and infinities) and within the size bound."""
    if not isinstance(event, str) or not EVENT_NAME_RE.match(event):
        raise ValueError(f"invalid event name {event!r}")
    if not isinstance(data, dict):
        raise TypeError("event data must be a dict")
    JSON.encode(data)
    payload = MSGPACK.encode([event, data, ts])
    if len(payload) > limit:
        raise ValueError(f"event of {len(payload)} bytes exceeds the limit of {limit}")
    return payload


def unpack_event(payload: bytes) -> tuple[str, dict[str, Any], float]:
    event, data, ts = msgpack.unpackb(payload, raw=False)
    return event, data, ts


class Broker(abc.ABC):
    """Every implementation passes the same test suite (tests/realtime/test_broker.py)."""

    def __init__(self, config: BrokerConfig | None = None) -> None:
        self.config = config or BrokerConfig()
        self.node_id = uuid.uuid4().hex[:12]  # identifies this process on the control channel
        self._handler: BrokerHandler | None = None

    def attach(self, handler: BrokerHandler) -> None:
        self._handler = handler

    async def start(self) -> None:  # noqa: B027 - optional hook: the in-process broker has nothing to connect
        """Connect; after this returns, control messages from other processes arrive."""

    async def close(self) -> None:  # noqa: B027 - optional hook, as start()
        """Disconnect; publishing afterwards is an error."""

    @abc.abstractmethod
    async def publish(self, channel: str, event: str, data: dict[str, Any]) -> tuple[str, int]:
        """Append a durable event to the channel's history and fan it out to every process; (epoch, offset)."""

    @abc.abstractmethod
    async def publish_ephemeral(self, channel: str, event: str, data: dict[str, Any]) -> None:
        """Fan out without history or offset (presence traffic must not push real events out of history)."""

    @abc.abstractmethod
    async def listen(self, channel: str) -> None:
        """Deliver the channel's events to this process; returns once no later publish can be missed."""

    @abc.abstractmethod
    async def unlisten(self, channel: str) -> None:
        """Undo one listen()."""

    @abc.abstractmethod
    async def history(self, channel: str, since: Position | None = None) -> History:
        """The channel's tip (created with a fresh epoch if it has none) and, with `since`, every event after it."""

    @abc.abstractmethod
    async def presence_set(self, channel: str, client: str, member: dict[str, Any]) -> None:
        """Add or refresh one connection's presence entry; it expires after presence_ttl without a refresh."""

    @abc.abstractmethod
    async def presence_remove(self, channel: str, client: str) -> bool:
        """Remove an entry; True if it was there (only the remover announces the leave)."""

    @abc.abstractmethod
    async def presence_list(self, channel: str) -> list[dict[str, Any]]:
        """Live entries across all processes."""

    @abc.abstractmethod
    async def presence_expire(self, channel: str) -> list[dict[str, Any]]:
        """Remove entries whose process stopped refreshing them; returns those this call removed."""

    @abc.abstractmethod
    async def control(self, message: dict[str, Any]) -> None:
        """Broadcast a control message (revocations) to every process, this one included."""


class _Stream:
    __slots__ = ("epoch", "offset", "events")

    def __init__(self, size: int) -> None:
        self.epoch = new_epoch()
        self.offset = 0
        self.events: deque[Event] = deque(maxlen=size)


class InProcessBroker(Broker):
    """A single process's broker: no Redis, same semantics; delivery happens inside publish()."""

    def __init__(self, config: BrokerConfig | None = None) -> None:
        super().__init__(config)
        # Ordered by last activity so idle channels can be dropped from the front in O(1) per publish.
        self._streams: OrderedDict[str, tuple[_Stream, float]] = OrderedDict()
        self._presence: dict[str, dict[str, tuple[float, dict[str, Any]]]] = {}
        self._closed = False

    def _stream(self, channel: str, create: bool) -> _Stream | None:
        now = time.monotonic()
        ttl = self.config.history_ttl
        while self._streams:
            oldest, (_, touched) = next(iter(self._streams.items()))
            if now - touched <= ttl:
                break
            del self._streams[oldest]
        entry = self._streams.get(channel)
        if entry is None:
            if not create:
                return None
            stream = _Stream(self.config.history_size)
        else:
            stream = entry[0]
        self._streams[channel] = (stream, now)
        self._streams.move_to_end(channel)
        return stream

    async def close(self) -> None:
        self._closed = True

    async def publish(self, channel: str, event: str, data: dict[str, Any]) -> tuple[str, int]:
        if self._closed:
            raise RuntimeError("broker is closed")
        ts = time.time()
        # Round-trip through msgpack: the same validation and the same snapshot of `data` as over Redis.
        name, data, ts = unpack_event(pack_event(event, data, ts, self.config.max_event_bytes))
        stream = self._stream(channel, True)
        assert stream is not None
        stream.offset += 1
        item = Event(channel, stream.epoch, stream.offset, name, data, ts)
        stream.events.append(item)
        if self._handler is not None:
            self._handler.on_event(item)
        return stream.epoch, stream.offset

    async def publish_ephemeral(self, channel: str, event: str, data: dict[str, Any]) -> None:
        name, data, ts = unpack_event(pack_event(event, data, time.time(), self.config.max_event_bytes))
        if self._handler is not None:
            self._handler.on_event(Event(channel, None, None, name, data, ts))

    async def listen(self, channel: str) -> None:
        return None

    async def unlisten(self, channel: str) -> None:
        return None

    async def history(self, channel: str, since: Position | None = None) -> History:
        stream = self._stream(channel, True)
        assert stream is not None
        tip = Position(stream.epoch, stream.offset)
        if since is None:
            return History(tip)
        missing = stream.offset - since.offset
        if since.epoch != stream.epoch or missing < 0:
            return History(tip, recovered=False)
        if missing == 0:
            return History(tip, recovered=True)
        events = stream.events
        if missing > len(events):
            return History(tip, recovered=False)
        start = len(events) - missing
        if events[start].ts < time.time() - self.config.history_ttl:
            return History(tip, recovered=False)
        return History(tip, recovered=True, events=[events[i] for i in range(start, len(events))])

    async def presence_set(self, channel: str, client: str, member: dict[str, Any]) -> None:
        self._presence.setdefault(channel, {})[client] = (time.time() + self.config.presence_ttl, member)

    async def presence_remove(self, channel: str, client: str) -> bool:
        members = self._presence.get(channel)
        if not members or client not in members:
            return False
        del members[client]
        if not members:
            del self._presence[channel]
        return True

    async def presence_list(self, channel: str) -> list[dict[str, Any]]:
        now = time.time()
        return [member for expires, member in self._presence.get(channel, {}).values() if expires > now]

    async def presence_expire(self, channel: str) -> list[dict[str, Any]]:
        now = time.time()
        members = self._presence.get(channel, {})
        gone = [members.pop(client)[1] for client, (expires, _) in list(members.items()) if expires <= now]
        if not members:
            self._presence.pop(channel, None)
        return gone

    async def control(self, message: dict[str, Any]) -> None:
        if self._handler is not None:
            self._handler.on_control(message)
