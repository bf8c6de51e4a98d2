"""The gateway: this process's connections and channel subscriptions, fan-out, recovery, presence and revocation."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, Protocol

from realtime import protocol as p
from realtime.broker import Broker, InProcessBroker
from realtime.codec import CODECS
from realtime.events import Event, History, Position, iso, parse_channel
from realtime.protocol import RealtimeConfig
from realtime.session import Credential, Principal, Session
from realtime.transport import Flusher

log = logging.getLogger("enginel.realtime")

Authenticator = Callable[[Credential], Awaitable[Any]]
Authorizer = Callable[[Any, str], Awaitable[None]]
Command = Callable[[Any, dict[str, Any]], Awaitable[Any]]
PrincipalRefresher = Callable[[Any], Awaitable[Any]]
# Whether one subscriber may receive one event: the last line of the policy, for events on a shared channel
# (an organization's feed) that concern a design above some subscribers' clearance.
EventFilter = Callable[[Any, Event], bool]


class Limits(Protocol):
    """Connection caps and the per-caller budget commands spend; models/ratelimit.SocketLimits implements it over
    the rate limiter's store, so with Redis the counts are shared by every process."""

    async def acquire(self, kind: str, ident: str, holder: str, ttl: float) -> bool:
        """Count `holder` among the connections of `kind` ("address" or "user") `ident`; False at the cap."""

    async def release(self, kind: str, ident: str, holder: str) -> None: ...

    async def renew(self, held: list[tuple[str, str, str]], ttl: float) -> None:
        """Keep (kind, ident, holder) counted; a crashed process's connections stop counting after `ttl`."""

    async def charge(self, principal: Any) -> None:
        """Spend one request of the caller's budget; raises (RATE_LIMIT_EXCEEDED) when it is spent."""


class Subscription:
    """One connection's interest in one channel, and the position of the last durable event it was given.

    Exactly-once delivery rests on one rule, applied by _place(): a durable event reaches a subscription only
    if it is the next one after `epoch`/`offset` (offset + 1, or offset 1 of a new epoch); an event at or below
    that position is dropped, and an event past it waits until the hole is filled from history. Between the
    history read and the live fan-out the subscription is "joining": while its replay (or a history fill) is
    being written, live events wait in `buffer`; after that, with `buffer` None, it takes each event by its
    own position until it stands where the channel stands, and then it moves to the channel's live fan-out,
    where the channel's position is its position (see ChannelState).
    """

    __slots__ = ("session", "channel", "epoch", "offset", "buffer", "buffered_bytes")

    def __init__(self, session: Session, channel: str) -> None:
        self.session = session
        self.channel = channel
        self.epoch: str | None = None  # set from `since` or the tip once the history is read
        self.offset = 0
        self.buffer: list[Event] | None = []  # live events held while history is written to this connection
        self.buffered_bytes = 0


class ChannelState:
    """This process's view of one channel: who listens here and the last offset delivered to the live fan-out.

    Invariant: every subscription in `live` has been given exactly the events up to (`epoch`, `offset`), and
    the channel delivers durable events only in offset order without holes (on_event fills a hole from
    history before delivering past it). So the hot fan-out path compares nothing per subscriber: a
    subscription enters `live` only when its own position equals the channel's (Gateway._promote).
    """

    __slots__ = ("name", "epoch", "offset", "live", "joining", "ready", "pending")

    def __init__(self, name: str) -> None:
        self.name = name
        self.epoch: str | None = None
        self.offset = 0
        # One dict per codec, so a frame is built once per codec and written to every session in it.
        self.live: tuple[dict[Session, Subscription], ...] = tuple({} for _ in CODECS)
        self.joining: dict[Session, Subscription] = {}
        self.ready: asyncio.Future[None] | None = None
        self.pending: list[Event] | None = None  # events held while a gap is fetched from history

    def empty(self) -> bool:
        return not self.joining and not any(self.live)


def _place(sub: Subscription, event: Event) -> int:
    """Where `event` stands for `sub`: -1 already given (drop), 0 the next one (deliver), 1 past a hole."""
    if event.offset is None:
        return 0  # ephemeral (presence): no position, delivered as it comes
    if event.epoch == sub.epoch:
        if event.offset <= sub.offset:
            return -1
        return 0 if event.offset == sub.offset + 1 else 1
    # Another epoch (the channel's history was lost and restarted): only its first event continues the stream.
    return 0 if event.offset == 1 else 1


def _matches(pattern: str, channel: str) -> bool:
    if pattern in ("*", ""):
        return True
    if pattern.endswith("*"):
        return channel.startswith(pattern[:-1])
    return channel == pattern


class Gateway:
    """Owns every connection of this process; a Broker makes several processes act as one."""

    def __init__(
        self,
        broker: Broker | None = None,
        *,
        authenticate: Authenticator,
        authorize: Authorizer,
        commands: Mapping[str, Command] | None = None,
        refresh_principal: PrincipalRefresher | None = None,
        event_visible: EventFilter | None = None,
        limits: Limits | None = None,
        config: RealtimeConfig | None = None,
    ) -> None:
        self.broker = broker or InProcessBroker()
        self.config = config or RealtimeConfig()
        self._authenticate = authenticate
        self._authorize = authorize
        self._refresh_principal = refresh_principal
        self._event_visible = event_visible
        self._limits = limits
        self.commands: dict[str, Command] = {}
        for name, command in (commands or {}).items():
            self.add_command(name, command)
        self.accepting = True
        self._sessions: set[Session] = set()
        self._by_user: dict[int, set[Session]] = {}
        self._channels: dict[str, ChannelState] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._heartbeat: asyncio.Task[None] | None = None
        # Counts the revocations and access changes this process has seen (its own and other processes'): a
        # connection compares it across its credential lookup, which no sweep can see (Session._authenticated).
        self.revocations = 0
        self.flusher = Flusher()
        self.broker.attach(self)

    # --- wiring
    def add_command(self, name: str, command: Command) -> None:
        """Register a WebSocket command (markup.create, review.vote, ...) that mirrors a REST write."""
        if name in p.RESERVED_TYPES:
            raise ValueError(f"{name} is a protocol message type")
        self.commands[name] = command

    async def publish(self, channel: str, event: str, data: dict[str, Any]) -> tuple[str, int]:
        """The publisher models/ uses; the broker assigns the offset."""
        return await self.broker.publish(channel, event, data)

    async def start(self) -> None:
        await self.broker.start()
        self._heartbeat = asyncio.create_task(self._presence_heartbeat(), name="enginel-presence-heartbeat")

    def close_all(self, code: int = p.CLOSE_GOING_AWAY, reason: str = "server shutting down") -> int:
        """Stop accepting and close every connection (shutdown: 1001 "going away"); returns how many."""
        self.accepting = False
        sessions = list(self._sessions)
        for session in sessions:
            session.close(code, reason)
        return len(sessions)

    async def stop(self, grace: float = 2.0) -> None:
        """Shutdown: close every connection (1001), let their presence leaves reach the broker, disconnect."""
        self.close_all()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.broker.close()

    def stats(self) -> dict[str, int]:
        return {
            "connections": len(self._sessions),
            "channels": len(self._channels),
            "subscriptions": sum(len(s.subscriptions) for s in self._sessions),
        }

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("realtime background task failed", exc_info=task.exception())

    # --- connections
    def open_session(
        self,
        transport: Any,
        codec: Any,
        *,
        credential: Credential | None,
        origin_allowed: bool = True,
        remote: str = "",
    ) -> Session:
        return Session(self, transport, codec, credential=credential, origin_allowed=origin_allowed, remote=remote)

    def origin_allowed(self, origin: str) -> bool:
        """For cross-origin handshakes only (same-origin ones never ask): the configured allow-list."""
        allowed = self.config.allowed_origins
        return "*" in allowed or origin.rstrip("/").lower() in {o.rstrip("/").lower() for o in allowed}

    def register(self, session: Session) -> None:
        self._sessions.add(session)

    def authenticated(self, session: Session) -> None:
        assert session.principal is not None
        self._by_user.setdefault(session.principal.id, set()).add(session)
        for lease in [lease for lease in session.leases if lease[0] == "address"]:
            session.leases.remove(lease)  # authenticated sockets count against their user, not their address
            self._spawn(self._release(session, *lease))

    async def admit(self, session: Session, kind: str, ident: str) -> bool:
        """Count `session` under the cap of `kind` ("address" while unauthenticated, then "user"); False when
        the cap is full or the session closed meanwhile. A store that cannot count closes it (1013)."""
        if self._limits is None:
            return not session.closed
        try:
            admitted = await self._limits.acquire(kind, ident, session.id, self.broker.config.presence_ttl)
        except Exception as exc:
            log.warning("realtime connection cap unavailable: %r", exc)
            session.close(p.CLOSE_TRY_AGAIN, "try again later")
            return False
        if admitted:
            session.leases.append((kind, ident))
            if session.closed:  # detach ran while we waited and released nothing of this lease
                session.leases.remove((kind, ident))
                self._spawn(self._release(session, kind, ident))
                return False
        return admitted and not session.closed

    async def _release(self, session: Session, kind: str, ident: str) -> None:
        if self._limits is not None:
            try:
                await self._limits.release(kind, ident, session.id)
            except Exception as exc:  # the lease then expires on its own
                log.warning("realtime could not release a connection slot: %r", exc)

    async def charge(self, principal: Any) -> None:
        """A command spends one request of the caller's REST budget (the same key and windows as REST)."""
        if self._limits is not None:
            await self._limits.charge(principal)

    async def refresh(self, principal: Any) -> Any:
        """The same caller with current attributes, or None when their session, key or account is gone."""
        if self._refresh_principal is None:
            return principal
        return await self._refresh_principal(principal)

    async def authenticate(self, credential: Credential) -> tuple[Any, str]:
        """(principal, "") or (None, error code); the injected authenticator may return None or raise."""
        if not credential.secret:
            return None, p.AUTHENTICATION_FAILED
        try:
            principal = await self._authenticate(credential)
        except Exception as exc:
            code = getattr(exc, "code", None)
            if not isinstance(code, str):
                log.exception("realtime authenticator failed")
                code = p.AUTHENTICATION_FAILED
            return None, code
        return (principal, "") if principal is not None else (None, p.AUTHENTICATION_FAILED)

    def drop(self, session: Session) -> None:
        """A push failed: the socket is gone, or the client stopped reading and passed the bound."""
        if not session.closed:
            session.close(p.CLOSE_SLOW_CONSUMER, "slow consumer")

    def detach(self, session: Session) -> None:
        self._sessions.discard(session)
        leases, session.leases = session.leases, []
        for lease in leases:
            self._spawn(self._release(session, *lease))
        if session.principal is not None:
            users = self._by_user.get(session.principal.id)
            if users is not None:
                users.discard(session)
                if not users:
                    del self._by_user[session.principal.id]
        for channel in list(session.subscriptions):
            self._leave(session, channel, "disconnected")

    # --- subscriptions
    def _channel_name(self, channel: str) -> str:
        try:
            parse_channel(channel, self.config.channel_kinds)
        except ValueError as exc:
            raise p.ProtocolError(p.VALIDATION_ERROR, str(exc), {"channel": [str(exc)]}) from None
        return channel

    async def _check(self, session: Session, channel: str) -> None:
        principal = await session.current_principal()  # never older than the last access change signalled
        if principal is None:
            raise p.ProtocolError(p.AUTHENTICATION_FAILED, "The connection is closed.")
        await self._authorize(principal, channel)

    async def subscribe(self, session: Session, msg_id: int, channel: str, since: Any) -> None:
        """Authorize, join the channel, replay what `since` missed, then go live, with no gap or duplicate."""
        self._channel_name(channel)
        if channel in session.subscriptions:
            raise p.ProtocolError(p.ALREADY_SUBSCRIBED, f"Already subscribed to {channel}.")
        if len(session.subscriptions) >= self.config.max_subscriptions:
            raise p.ProtocolError(
                p.TOO_MANY_SUBSCRIPTIONS, f"At most {self.config.max_subscriptions} subscriptions per connection."
            )
        generation = session.policy_generation
        await self._check(session, channel)  # raises with the policy's code (PERMISSION_DENIED, ...)
        if session.closed:
            return
        state = self._channels.get(channel)
        if state is None:
            state = self._channels[channel] = ChannelState(channel)
            state.ready = asyncio.ensure_future(self.broker.listen(channel))
        sub = Subscription(session, channel)
        state.joining[session] = sub
        session.subscriptions[channel] = sub
        try:
            # Listening starts before the history read, so every event is in the history or arrives live
            # (buffered in sub.buffer); _catch_up merges the two by this subscription's own offset.
            assert state.ready is not None
            await asyncio.shield(state.ready)
            history = await self.broker.history(channel, Position(since.epoch, since.offset) if since else None)
        except Exception as exc:
            if session.subscriptions.get(channel) is sub:
                self._leave(session, channel, None)
            if isinstance(exc, p.ProtocolError):
                raise
            log.warning("realtime subscribe to %s failed: %r", channel, exc)
            raise p.ProtocolError(p.SERVICE_UNAVAILABLE, "The realtime backplane is unavailable; retry.") from None
        if session.closed:
            return
        if session.subscriptions.get(channel) is not sub:
            raise p.ProtocolError(
                p.SUBSCRIPTION_ENDED, "The subscription ended while starting; the subscription.ended event says why."
            )
        tip = history.position
        if state.epoch is None:
            # No live event has reached this channel yet: it starts at the tip, and live events at or below
            # it are dropped. A subscription that read an older tip is then behind and catches up from history.
            state.epoch, state.offset = tip.epoch, tip.offset
        reply: dict[str, Any] = {"channel": channel, **tip.as_dict()}
        if since is not None:
            reply["recovered"] = bool(history.recovered)
            reply["replayed"] = len(history.events)
        session.send(p.result(msg_id, reply))
        start = Position(since.epoch, since.offset) if since is not None and history.recovered else tip
        sub.epoch, sub.offset = start.epoch, start.offset
        if not await self._write(sub, history.events):
            return
        await self._catch_up(state, sub)
        if not self._current(sub):
            return
        if session.policy_generation != generation:
            await self._recheck(session, channel, "access_changed")
        if channel.partition(":")[0] in self.config.presence_kinds and self._current(sub):
            await self._presence_join(session, channel)

    @staticmethod
    def _current(sub: Subscription) -> bool:
        """Whether `sub` is still its connection's subscription (checked after every await)."""
        return not sub.session.closed and sub.session.subscriptions.get(sub.channel) is sub

    async def _write(self, sub: Subscription, events: list[Event]) -> bool:
        """Write history events to a joining subscription by its position, paced by the client's reading;
        False once the subscription has ended."""
        session = sub.session
        assert session.codec is not None
        codec = session.codec
        half = self.config.max_pending_bytes // 2
        for event in events:
            place = _place(sub, event)
            if place < 0:
                continue
            if place > 0:
                # A broker's history is contiguous after `since`; a hole means events are gone for good.
                self.end_subscription(session, sub.channel, "events_lost", "EVENTS_LOST")
                return False
            sub.epoch, sub.offset = event.epoch, event.offset or 0
            if not self.visible(session, event):
                continue
            try:
                pending = session.transport.write_frame(event.frame(codec))
            except Exception:
                session.transport_closed()
                return False
            if pending > half:
                # A long replay is paced by the client's reading, not buffered whole in memory; live events
                # meanwhile wait in sub.buffer.
                try:
                    await session.drain()
                except Exception:
                    self.drop(session)
                    return False
                if not self._current(sub):
                    return False
        return self._current(sub)

    async def _catch_up(self, state: ChannelState, sub: Subscription) -> None:
        """Bring a joining subscription from its replayed position to the channel's live position.

        The history read and the live pub/sub stream are two sources that race: the history's tip may be
        ahead of what this process has received live (the pub/sub reader lags the history reply), behind it
        (another subscription's newer tip started the channel), or the buffered live events may have a hole.
        Each pass writes the buffered events in order by the subscription's own position, then: equal to the
        channel's position, it joins the live fan-out; ahead (or in another epoch), it waits for the channel in
        _deliver_joining, which drops what it was already given; behind or at a hole, history fills the hole.
        """
        session = sub.session
        while self._current(sub):
            assert sub.buffer is not None
            hole = self._drain_buffer(sub)
            if not self._current(sub):
                return
            if hole is None:
                if sub.epoch != state.epoch or sub.offset > state.offset:
                    sub.buffer, sub.buffered_bytes = None, 0
                    return
                if sub.offset == state.offset:
                    self._promote(state, sub)
                    return
                since = Position(sub.epoch or "", sub.offset)  # behind: the channel delivered what we never saw
            elif hole.epoch == sub.epoch:
                since = Position(sub.epoch or "", sub.offset)
            else:
                since = Position(hole.epoch or "", 0)  # a new epoch began: fill it from its first event
            try:
                history: History | None = await self.broker.history(sub.channel, since)
            except Exception as exc:
                log.warning("realtime history for %s unavailable: %r", sub.channel, exc)
                history = None
            if not self._current(sub):
                return
            if history is None or not history.recovered:
                self.end_subscription(session, sub.channel, "events_lost", "EVENTS_LOST")
                return
            before = (sub.epoch, sub.offset)
            if since.epoch != sub.epoch:
                sub.epoch, sub.offset = since.epoch, since.offset
            if not await self._write(sub, history.events):
                return
            if (sub.epoch, sub.offset) == before:
                # The history has nothing past this subscription, yet the live stream does: they disagree
                # (the channel's store was reset). Ending it beats looping; the client resubscribes with since.
                self.end_subscription(session, sub.channel, "events_lost", "EVENTS_LOST")
                return

    def _drain_buffer(self, sub: Subscription) -> Event | None:
        """Deliver buffered live events by `sub`'s position; returns the first one past a hole (kept)."""
        buffered = sub.buffer
        assert buffered is not None and sub.session.codec is not None
        session, codec = sub.session, sub.session.codec
        for index, event in enumerate(buffered):
            place = _place(sub, event)
            if place > 0:
                del buffered[:index]
                sub.buffered_bytes = sum(len(e.frame(codec)) for e in buffered)
                return event
            if place == 0:
                if event.offset is not None:
                    sub.epoch, sub.offset = event.epoch, event.offset
                if self.visible(session, event):
                    session.send_event(event)
                    if session.closed:
                        return None
        buffered.clear()
        sub.buffered_bytes = 0
        return None

    def _promote(self, state: ChannelState, sub: Subscription) -> None:
        """Move a joining subscription that stands exactly at the channel's position into the live fan-out."""
        session = sub.session
        assert session.codec is not None and sub.epoch == state.epoch and sub.offset == state.offset
        sub.buffer, sub.buffered_bytes = None, 0
        del state.joining[session]
        state.live[session.codec.index][session] = sub

    def unsubscribe(self, session: Session, channel: str) -> None:
        self._leave(session, channel, "unsubscribed")

    def _leave(self, session: Session, channel: str, reason: str | None) -> None:
        sub = session.subscriptions.pop(channel, None)
        state = self._channels.get(channel)
        if state is not None and sub is not None:
            state.joining.pop(session, None)
            if session.codec is not None:
                state.live[session.codec.index].pop(session, None)
            if state.empty():
                del self._channels[channel]
                self._spawn(self._unlisten(state))
        member = session.presence.pop(channel, None)
        if member is not None:
            self._spawn(self._presence_leave(channel, member, reason or "left"))

    async def _unlisten(self, state: ChannelState) -> None:
        if state.ready is None:
            return
        try:
            await state.ready
        except Exception:
            return  # never listened, nothing to undo
        await self.broker.unlisten(state.name)

    def end_subscription(self, session: Session, channel: str, reason: str, code: str) -> None:
        """End one subscription and tell the client why (access revoked, history lost)."""
        if channel not in session.subscriptions:
            return
        self._leave(session, channel, reason)
        session.send_event(Event(channel, None, None, "subscription.ended", {"reason": reason, "code": code}))

    # --- fan-out
    def on_event(self, event: Event) -> None:
        """The one ordered source of a channel's events in this process (the broker calls it in publish order).

        Durable events reach the live fan-out strictly by offset: at or below the channel's position they are
        dropped (a resync or refill overlapped), past a hole they wait until _refill has delivered the hole
        from history. Joining subscriptions apply the same rule to their own position (_deliver_joining)."""
        state = self._channels.get(event.channel)
        if state is None:
            return
        if state.pending is not None:
            state.pending.append(event)
            return
        if event.offset is not None:
            if event.epoch == state.epoch:
                if event.offset <= state.offset:
                    return  # already delivered (a resync overlapped)
                if event.offset != state.offset + 1:
                    self._fill_gap(state, event, Position(event.epoch or "", state.offset))
                    return
            elif state.epoch is not None and event.offset != 1:
                self._fill_gap(state, event, Position(event.epoch or "", 0))
                return
            state.epoch, state.offset = event.epoch, event.offset
        self._deliver(state, event)

    def visible(self, session: Session, event: Event) -> bool:
        return self._event_visible is None or self._event_visible(session.principal, event)

    def _deliver(self, state: ChannelState, event: Event) -> None:
        dropped: list[Session] | None = None
        restricted = self._event_visible is not None
        for index, sessions in enumerate(state.live):
            if not sessions:
                continue
            frame = event.frame(CODECS[index])
            for session in sessions:
                if restricted and not self.visible(session, event):
                    continue
                if not session.push(frame):
                    if dropped is None:
                        dropped = []
                    dropped.append(session)
        if state.joining:
            joining_dropped = self._deliver_joining(state, event)
            if joining_dropped:
                dropped = (dropped or []) + joining_dropped
        if dropped:
            # After the loops: closing a session changes the dicts being iterated.
            for session in dropped:
                self.drop(session)

    def _deliver_joining(self, state: ChannelState, event: Event) -> list[Session]:
        """Joining subscriptions take each event by their own position (Subscription); returns slow consumers."""
        dropped: list[Session] = []
        promoted: list[Subscription] = []
        limit = self.config.max_pending_bytes
        for session, sub in state.joining.items():
            assert session.codec is not None
            if sub.buffer is not None:
                sub.buffer.append(event)
                sub.buffered_bytes += len(event.frame(session.codec))
                if sub.buffered_bytes > limit:
                    dropped.append(session)
                continue
            place = _place(sub, event)
            if place > 0:
                # The channel delivers without holes, so this subscription's own position is off (another
                # epoch): hold live events again and fill the hole from history before going further.
                sub.buffer, sub.buffered_bytes = [event], len(event.frame(session.codec))
                self._spawn(self._catch_up(state, sub))
                continue
            if place == 0:
                if event.offset is not None:
                    sub.epoch, sub.offset = event.epoch, event.offset
                if self.visible(session, event) and not session.push(event.frame(session.codec)):
                    dropped.append(session)
                    continue
            if sub.epoch == state.epoch and sub.offset == state.offset:
                promoted.append(sub)
        for sub in promoted:
            self._promote(state, sub)
        return dropped

    def _fill_gap(self, state: ChannelState, event: Event, since: Position) -> None:
        state.pending = [event]
        self._spawn(self._refill(state, since))

    def on_resync(self, channel: str) -> None:
        """The broker may have missed live events (it reconnected): fetch whatever came after our offset."""
        state = self._channels.get(channel)
        if state is not None and state.pending is None and state.epoch is not None:
            state.pending = []
            self._spawn(self._refill(state, Position(state.epoch, state.offset)))

    async def _refill(self, state: ChannelState, since: Position) -> None:
        try:
            history = await self.broker.history(state.name, since)
        except Exception as exc:
            log.warning("realtime history for %s unavailable: %r", state.name, exc)
            history = None
        if self._channels.get(state.name) is not state:
            return
        pending, state.pending = state.pending or [], None
        if history is None or not history.recovered:
            # Live subscribers would silently miss events: end their subscriptions, so clients resubscribe
            # with `since` and learn recovered: false.
            log.warning("realtime channel %s lost events beyond its history", state.name)
            for session in [*state.joining, *(s for live in state.live for s in live)]:
                self.end_subscription(session, state.name, "events_lost", "EVENTS_LOST")
            return
        if since.epoch != state.epoch:
            # A new epoch: the live fan-out continues from its first event. Within an epoch `since` is the
            # channel's own position (nothing moves it while `pending` holds events), so nothing is rewound.
            state.epoch, state.offset = since.epoch, since.offset
        for event in history.events:
            self.on_event(event)
        for event in pending:
            self.on_event(event)

    # --- presence
    def _member(self, session: Session, channel: str) -> dict[str, Any]:
        now = iso(time.time())
        return {
            "client": session.id,
            "user": session.user_info(),
            "camera": None,
            "cursor": None,
            "selection": [],
            "joined_at": now,
            "updated_at": now,
        }

    async def _presence_join(self, session: Session, channel: str) -> None:
        member = self._member(session, channel)
        session.presence[channel] = member
        try:
            await self.broker.presence_set(channel, session.id, member)
            await self.broker.publish_ephemeral(channel, "presence.join", member)
        except Exception as exc:
            log.warning("realtime presence join on %s failed: %r", channel, exc)

    async def _presence_leave(self, channel: str, member: dict[str, Any], reason: str) -> None:
        if await self.broker.presence_remove(channel, member["client"]):
            await self.broker.publish_ephemeral(
                channel, "presence.leave", {"client": member["client"], "user": member["user"], "reason": reason}
            )

    async def presence(self, session: Session, channel: str) -> list[dict[str, Any]]:
        self._channel_name(channel)
        if channel not in session.subscriptions:
            raise p.ProtocolError(p.NOT_SUBSCRIBED, f"Subscribe to {channel} first.")
        if channel.partition(":")[0] not in self.config.presence_kinds:
            raise p.ProtocolError(p.VALIDATION_ERROR, f"{channel} does not track presence.")
        return await self.broker.presence_list(channel)

    async def presence_update(self, session: Session, update: p.PresenceUpdateIn) -> None:
        member = session.presence.get(update.channel)
        if member is None:
            raise p.ProtocolError(p.NOT_SUBSCRIBED, f"Subscribe to {update.channel} (a review) first.")
        changes = update.model_dump(exclude={"channel"}, exclude_unset=True)
        member.update(changes, updated_at=iso(time.time()))
        await self.broker.presence_set(update.channel, session.id, member)
        await self.broker.publish_ephemeral(update.channel, "presence.update", member)

    async def _presence_heartbeat(self) -> None:
        interval = self.broker.config.presence_ttl / 3
        while True:
            await asyncio.sleep(interval)
            try:
                if self._limits is not None:
                    held = [(kind, ident, s.id) for s in list(self._sessions) for kind, ident in s.leases]
                    if held:
                        await self._limits.renew(held, self.broker.config.presence_ttl)
                channels: set[str] = set()
                for session in list(self._sessions):
                    for channel, member in list(session.presence.items()):
                        await self.broker.presence_set(channel, session.id, member)
                        channels.add(channel)
                # Entries of a process that died are removed here, by whichever process sees them first.
                for channel in channels:
                    for member in await self.broker.presence_expire(channel):
                        await self.broker.publish_ephemeral(
                            channel,
                            "presence.leave",
                            {"client": member["client"], "user": member["user"], "reason": "timeout"},
                        )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("realtime presence heartbeat failed: %r", exc)

    # --- access changes
    async def revoke(
        self, user_id: int, channels: str = "*", reason: str = "access_revoked", code: str = "PERMISSION_DENIED"
    ) -> int:
        """End `user_id`'s subscriptions matching `channels` ("*", "review:*" or "review:<id>") in every
        process, without asking the policy; returns how many ended in this process."""
        count = self._revoke(user_id, channels, reason, code)
        await self.broker.control(
            {
                "op": "revoke",
                "node": self.broker.node_id,
                "user": user_id,
                "channels": channels,
                "reason": reason,
                "code": code,
            }
        )
        return count

    async def reauthorize(self, user_id: int | None = None, channels: str = "*", reason: str = "access_changed") -> int:
        """Re-run the access policy for subscriptions (of one user, or everyone's on `channels`) in every
        process and end the refused ones; call after membership, clearance or classification changes.

        Before anything awaits, every affected connection's principal is marked stale, so no subscribe or
        command authorizes with attributes read before the change; the sweep then reads each subscribed
        connection's principal again and re-checks its subscriptions, here before this returns (the request
        that made the change answers after it) and in other processes when the control message arrives."""
        self._mark(user_id)
        count = await self._reauthorize(user_id, channels, reason)
        await self.broker.control(
            {"op": "reauthorize", "node": self.broker.node_id, "user": user_id, "channels": channels, "reason": reason}
        )
        return count

    async def disconnect_user(self, user_id: int, reason: str = "credentials revoked") -> int:
        """Close every connection of a user in every process (4001), e.g. on logout or deactivation."""
        count = self._disconnect(user_id, reason)
        await self.broker.control({"op": "disconnect", "node": self.broker.node_id, "user": user_id, "reason": reason})
        return count

    async def access_changed(self, user_id: int | None, reason: str = "access_changed") -> None:
        """The models' hook (models/events.py): a membership, clearance or classification changed, so the
        affected subscriptions are checked again against the policy, here and in every other process."""
        await self.reauthorize(user_id, "*", reason)

    async def user_disabled(self, user_id: int, reason: str = "account disabled") -> None:
        await self.disconnect_user(user_id, reason)

    def on_control(self, message: dict[str, Any]) -> None:
        if message.get("node") == self.broker.node_id:
            return  # applied locally before broadcasting
        op = message.get("op")
        if op == "revoke":
            self._revoke(message["user"], message["channels"], message["reason"], message["code"])
        elif op == "reauthorize":
            self._mark(message["user"])  # at once, as it arrives: the sweep below awaits the database
            self._spawn(self._reauthorize(message["user"], message["channels"], message["reason"]))
        elif op == "disconnect":
            self._disconnect(message["user"], message["reason"])

    def _mark(self, user_id: int | None) -> None:
        """Mark the principals of `user_id`'s connections (everyone's when None) stale, synchronously."""
        self.revocations += 1
        sessions = self._sessions if user_id is None else self._by_user.get(user_id, ())
        for session in sessions:
            if session.principal is not None:
                session.policy_generation += 1

    def _revoke(self, user_id: int, channels: str, reason: str, code: str) -> int:
        count = 0
        self.revocations += 1
        for session in list(self._by_user.get(user_id, ())):
            session.policy_generation += 1
            for channel in [c for c in session.subscriptions if _matches(channels, c)]:
                self.end_subscription(session, channel, reason, code)
                count += 1
        return count

    async def _reauthorize(self, user_id: int | None, channels: str, reason: str) -> int:
        """The sweep after _mark(): a user's connections are all read again (a revoked session or disabled
        account closes them, subscribed or not); on a change for everyone, those with matching subscriptions
        (the rest read their principal again before their next subscribe or command)."""
        if user_id is not None:
            sessions = list(self._by_user.get(user_id, ()))
        else:
            sessions = [
                s
                for s in self._sessions
                if s.principal is not None and any(_matches(channels, c) for c in s.subscriptions)
            ]
        count = 0
        for session in sessions:
            try:
                if await session.current_principal() is None:
                    continue  # closed: its credentials were revoked or its account disabled
            except Exception:
                # Fail closed: a connection whose access cannot be checked again must not keep it.
                log.exception("realtime could not re-read the principal of connection %s", session.id)
                session.close(p.CLOSE_INTERNAL_ERROR, "could not check access again; reconnect")
                continue
            for channel in [c for c in session.subscriptions if _matches(channels, c)]:
                count += await self._recheck(session, channel, reason)
        return count

    async def _recheck(self, session: Session, channel: str, reason: str) -> int:
        try:
            await self._check(session, channel)
        except Exception as exc:
            code = getattr(exc, "code", None)
            if not isinstance(code, str):
                log.exception("realtime authorizer failed for %s", channel)
                code = p.INTERNAL_ERROR
            self.end_subscription(session, channel, reason, code)
            return 1
        return 0

    def _disconnect(self, user_id: int, reason: str) -> int:
        self.revocations += 1
        sessions = list(self._by_user.get(user_id, ()))
        for session in sessions:
            session.close(p.CLOSE_AUTH_FAILED, reason)
        return len(sessions)


__all__ = ["Gateway", "Limits", "Principal", "Subscription"]
