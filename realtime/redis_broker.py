"""Redis broker: pub/sub for live fan-out, a stream per channel for history and offsets, hashes for presence."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import msgpack
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from realtime.broker import Broker, BrokerConfig, new_epoch, pack_event, unpack_event
from realtime.events import Event, History, Position

log = logging.getLogger("enginel.realtime.redis")

# Offset assignment, history append and the live PUBLISH happen in one script, so pub/sub order is
# offset order and no process can see offset n+1 live before offset n exists in history.
_PUBLISH = """
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch, 'o', 0)
end
local offset = redis.call('HINCRBY', KEYS[1], 'o', 1)
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], '0-' .. offset, 'p', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('PUBLISH', ARGV[5], offset .. ':' .. epoch .. ':' .. ARGV[2])
return {epoch, offset}
"""

# Reads the tip and the missing range atomically; creates the epoch so a first subscriber can later recover.
_HISTORY = """
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[4]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch, 'o', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
end
local tip = tonumber(redis.call('HGET', KEYS[1], 'o'))
if ARGV[1] == '' then return {epoch, tip, -1} end
if ARGV[1] ~= epoch then return {epoch, tip, 0} end
local since = tonumber(ARGV[2])
local missing = tip - since
if missing == 0 then return {epoch, tip, 1} end
if missing < 0 or missing > tonumber(ARGV[3]) then return {epoch, tip, 0} end
local entries = redis.call('XRANGE', KEYS[2], '0-' .. (since + 1), '+', 'COUNT', missing)
if #entries ~= missing or entries[1][1] ~= ('0-' .. (since + 1)) then return {epoch, tip, 0} end
local payloads = {}
for i, entry in ipairs(entries) do payloads[i] = entry[2][2] end
return {epoch, tip, 1, payloads}
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisBroker(Broker):
    """Several server processes sharing one Redis act as one gateway."""

    def __init__(
        self,
        url: str | None = None,
        *,
        client: aioredis.Redis | None = None,
        prefix: str = "enginel:rt",
        config: BrokerConfig | None = None,
        listen_timeout: float = 10.0,
    ) -> None:
        super().__init__(config)
        if client is None:
            if url is None:
                raise ValueError("pass exactly one of url or client")
            # A dedicated connection pool: a blocked pub/sub reader must not starve the app's Redis calls.
            client = aioredis.from_url(url, decode_responses=False)
        elif url is not None:
            raise ValueError("pass exactly one of url or client")
        self._redis = client
        self._owns_client = client is None
        self.prefix = prefix
        self.listen_timeout = listen_timeout
        self._control_channel = f"{prefix}:ctl"
        self._event_prefix = f"{prefix}:e:"
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._refs: dict[str, int] = {}
        self._active: set[str] = set()
        self._confirm: dict[str, asyncio.Future[None]] = {}
        self._sub_lock = asyncio.Lock()
        self._publish_script = self._redis.register_script(_PUBLISH)
        self._history_script = self._redis.register_script(_HISTORY)
        self._ttl_ms = int(self.config.history_ttl * 1000)

    # --- keys
    def _meta(self, channel: str) -> str:
        return f"{self.prefix}:m:{channel}"

    def _stream(self, channel: str) -> str:
        return f"{self.prefix}:h:{channel}"

    def _presence(self, channel: str) -> str:
        return f"{self.prefix}:p:{channel}"

    # --- lifecycle
    async def start(self) -> None:
        self._pubsub = self._redis.pubsub()
        # The reader needs a subscribed connection to read from, so it starts after the first SUBSCRIBE.
        await self._subscribe(self._control_channel, before_wait=self._start_reader)

    def _start_reader(self) -> None:
        self._reader = asyncio.create_task(self._read_loop(), name="enginel-realtime-redis-reader")

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except BaseException:
                pass
            self._reader = None
        if self._pubsub is not None:
            try:
                await self._pubsub.aclose()
            except (RedisError, OSError):
                pass
            self._pubsub = None
        if self._owns_client:
            await self._redis.aclose()

    # --- publishing
    async def publish(self, channel: str, event: str, data: dict[str, Any]) -> tuple[str, int]:
        payload = pack_event(event, data, time.time(), self.config.max_event_bytes)
        epoch, offset = await self._publish_script(
            keys=[self._meta(channel), self._stream(channel)],
            args=[new_epoch(), payload, self.config.history_size, self._ttl_ms, self._event_prefix + channel],
        )
        return _text(epoch), int(offset)

    async def publish_ephemeral(self, channel: str, event: str, data: dict[str, Any]) -> None:
        payload = pack_event(event, data, time.time(), self.config.max_event_bytes)
        await self._redis.publish(self._event_prefix + channel, b"::" + payload)

    async def control(self, message: dict[str, Any]) -> None:
        await self._redis.publish(self._control_channel, msgpack.packb(message, use_bin_type=True))

    # --- subscriptions of this process
    async def listen(self, channel: str) -> None:
        self._refs[channel] = self._refs.get(channel, 0) + 1
        try:
            await self._sync(self._event_prefix + channel, channel)
        except BaseException:
            # A failed listen is never undone by an unlisten, so it must not keep its reference.
            self._drop_ref(channel)
            raise

    def _drop_ref(self, channel: str) -> None:
        count = self._refs.get(channel, 0) - 1
        if count > 0:
            self._refs[channel] = count
        else:
            self._refs.pop(channel, None)

    async def unlisten(self, channel: str) -> None:
        self._drop_ref(channel)
        await self._sync(self._event_prefix + channel, channel)

    async def _sync(self, name: str, channel: str) -> None:
        # listen/unlisten only adjust counts; this converges Redis to them, so an unlisten that runs
        # after a newer listen cannot drop a channel someone still wants.
        async with self._sub_lock:
            wanted = self._refs.get(channel, 0) > 0
            if wanted and name not in self._active:
                await self._subscribe(name)
            elif not wanted and name in self._active:
                self._active.discard(name)
                await self._pubsub.unsubscribe(name)

    async def _subscribe(self, name: str, before_wait: Any = None) -> None:
        future = asyncio.get_running_loop().create_future()
        self._confirm[name] = future
        try:
            await self._pubsub.subscribe(name)
            if before_wait is not None:
                before_wait()
            # The confirmation means Redis has registered us: every later PUBLISH reaches this process.
            await asyncio.wait_for(asyncio.shield(future), self.listen_timeout)
        finally:
            self._confirm.pop(name, None)
        self._active.add(name)

    async def _read_loop(self) -> None:
        delay = 0.05
        while True:
            try:
                message = await self._pubsub.get_message(timeout=None)
                delay = 0.05
                if message is not None:
                    self._dispatch(message)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                # redis-py reconnects and re-subscribes on the next read; on_resync then fills any gap.
                log.warning("realtime pub/sub connection lost (%s); reconnecting in %.2fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            except Exception:
                log.exception("realtime pub/sub message could not be handled")

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = _text(message["type"])
        name = _text(message["channel"]) if message.get("channel") is not None else ""
        if kind == "message":
            data: bytes = message["data"]
            if name == self._control_channel:
                if self._handler is not None:
                    self._handler.on_control(msgpack.unpackb(data, raw=False))
                return
            channel = name[len(self._event_prefix) :]
            offset, epoch, payload = data.split(b":", 2)
            event, body, ts = unpack_event(payload)
            item = Event(channel, epoch.decode() if epoch else None, int(offset) if offset else None, event, body, ts)
            if self._handler is not None:
                self._handler.on_event(item)
        elif kind == "subscribe":
            future = self._confirm.get(name)
            if future is not None and not future.done():
                future.set_result(None)
            elif name in self._active and name.startswith(self._event_prefix) and self._handler is not None:
                # A re-subscription after a reconnect: events published meanwhile must come from history.
                self._handler.on_resync(name[len(self._event_prefix) :])

    # --- history
    async def history(self, channel: str, since: Position | None = None) -> History:
        reply = await self._history_script(
            keys=[self._meta(channel), self._stream(channel)],
            args=[
                "" if since is None else since.epoch,
                0 if since is None else since.offset,
                self.config.history_size,
                new_epoch(),
                self._ttl_ms,
            ],
        )
        tip = Position(_text(reply[0]), int(reply[1]))
        status = int(reply[2])
        if status < 0:
            return History(tip)
        if status == 0:
            return History(tip, recovered=False)
        assert since is not None
        events = []
        for offset, payload in enumerate(reply[3] if len(reply) > 3 else [], start=since.offset + 1):
            name, data, ts = unpack_event(payload)
            events.append(Event(channel, tip.epoch, offset, name, data, ts))
        if events and events[0].ts < time.time() - self.config.history_ttl:
            return History(tip, recovered=False)
        return History(tip, recovered=True, events=events)

    # --- presence
    async def presence_set(self, channel: str, client: str, member: dict[str, Any]) -> None:
        expires = time.time() + self.config.presence_ttl
        key = self._presence(channel)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hset(key, client, msgpack.packb([expires, member], use_bin_type=True))
            pipe.pexpire(key, int(self.config.presence_ttl * 2000))
            await pipe.execute()

    async def presence_remove(self, channel: str, client: str) -> bool:
        return bool(await self._redis.hdel(self._presence(channel), client))

    async def _presence_entries(self, channel: str) -> dict[str, tuple[float, dict[str, Any]]]:
        raw = await self._redis.hgetall(self._presence(channel))
        out = {}
        for client, value in raw.items():
            expires, member = msgpack.unpackb(value, raw=False)
            out[_text(client)] = (float(expires), member)
        return out

    async def presence_list(self, channel: str) -> list[dict[str, Any]]:
        now = time.time()
        return [member for expires, member in (await self._presence_entries(channel)).values() if expires > now]

    async def presence_expire(self, channel: str) -> list[dict[str, Any]]:
        now = time.time()
        removed = []
        for client, (expires, member) in (await self._presence_entries(channel)).items():
            # HDEL's count decides which process announces the leave, so it is announced once.
            if expires <= now and await self._redis.hdel(self._presence(channel), client):
                removed.append(member)
        return removed
