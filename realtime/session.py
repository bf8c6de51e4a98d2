"""One WebSocket connection's protocol state: authentication, message validation, rate limits and replies."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import ValidationError

from models.errors import field_errors_from
from realtime import protocol as p
from realtime.codec import Codec, DecodeError
from realtime.events import Event, iso

if TYPE_CHECKING:
    from realtime.gateway import Gateway, Subscription

log = logging.getLogger("enginel.realtime")


class Principal(Protocol):
    """The authenticated user as the identity module provides it; realtime reads only these two fields."""

    id: int
    username: str


@dataclass(frozen=True)
class Credential:
    """A credential as presented; the injected authenticator decides what it is worth."""

    kind: Literal["token", "bearer", "api_key", "session"]
    secret: str


_SCHEMES: dict[str, Literal["token", "bearer", "api_key"]] = {
    "token": "token",
    "bearer": "bearer",
    "apikey": "api_key",
    "api-key": "api_key",
}


def credential_from(authorization: str | None, session_cookie: str | None) -> Credential | None:
    """The handshake's credential: an Authorization header wins over the session cookie."""
    if authorization:
        scheme, _, secret = authorization.strip().partition(" ")
        kind = _SCHEMES.get(scheme.lower())
        secret = secret.strip()
        if kind is not None and secret:
            return Credential(kind, secret[:512])
        return Credential("token", "")  # present but unusable: fails rather than falling back
    if session_cookie:
        return Credential("session", session_cookie[:512])
    return None


class Transport(Protocol):
    """The socket side of a session (handlers/websocket.py; a list in unit tests)."""

    def write_frame(self, frame: bytes) -> int:
        """Queue a complete frame; returns the bytes still waiting to be sent. Raises if closed."""

    async def drain(self) -> None:
        """Wait until everything queued so far has been handed to the kernel."""

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake; later frames are dropped."""


class Session:
    """Protocol logic for one connection; testable without a socket through a fake Transport."""

    def __init__(
        self,
        gateway: Gateway,
        transport: Transport,
        codec: Codec | None,
        *,
        credential: Credential | None = None,
        origin_allowed: bool = True,
        remote: str = "",
    ) -> None:
        self.gateway = gateway
        self.config = gateway.config
        self.transport = transport
        self.codec = codec
        self.id = uuid.uuid4().hex
        self.remote = remote
        self.principal: Principal | None = None  # set once authenticated
        self.subscriptions: dict[str, Subscription] = {}  # by channel
        self.presence: dict[str, dict[str, Any]] = {}
        self.closed = False
        self.close_code: int | None = None
        # Bumped by every access change signalled for this connection's user (or for everyone). The principal
        # was read at `principal_generation`; while the two differ it is stale and is read again before the
        # next subscribe or command is authorized (current_principal), and a subscribe that raced the change
        # is checked again.
        self.policy_generation = 0
        self.principal_generation = 0
        self.leases: list[tuple[str, str]] = []  # (kind, ident) of the connection caps this socket counts in
        self._credential = credential
        self._origin_allowed = origin_allowed
        self._last_id = 0
        self._invalid = 0
        self._bucket = p.TokenBucket(
            self.config.commands_per_second,
            self.config.command_burst,
            tokens=float(self.config.command_burst),
            stamp=time.monotonic(),
        )
        self._inbox: asyncio.Queue[tuple[int, str, dict[str, Any]]] = asyncio.Queue(self.config.max_inflight)
        self._worker: asyncio.Task[None] | None = None
        self._auth_timer: asyncio.TimerHandle | None = None
        self._max_pending = self.config.max_pending_bytes

    # --- lifecycle
    async def open(self) -> None:
        """Called once the upgrade is done: refuse, authenticate from the handshake, or await an auth message."""
        if not self._origin_allowed:
            self.close(p.CLOSE_FORBIDDEN_ORIGIN, "origin not allowed")
            return
        if self.codec is None:
            self.close(p.CLOSE_BAD_SUBPROTOCOL, "unsupported subprotocol")
            return
        if not self.gateway.accepting:
            self.close(p.CLOSE_GOING_AWAY, "server shutting down")
            return
        self.gateway.register(self)
        if not await self.gateway.admit(self, "address", self.remote or "unknown"):
            if not self.closed:
                self.close(p.CLOSE_TOO_MANY_CONNECTIONS, "too many unauthenticated sockets from this address")
            return
        if self._credential is None:
            self._auth_timer = asyncio.get_running_loop().call_later(self.config.auth_timeout, self._auth_expired)
            return
        revocations = self.gateway.revocations
        principal, code = await self.gateway.authenticate(self._credential)
        if self.closed:
            return
        if principal is None:
            self.close(p.CLOSE_AUTH_FAILED, code)
            return
        await self._authenticated(principal, revocations)

    def _auth_expired(self) -> None:
        if self.principal is None and not self.closed:
            self.close(p.CLOSE_AUTH_FAILED, "authentication timeout")

    async def _authenticated(self, principal: Principal, revocations: int, msg_id: int | None = None) -> bool:
        """Admit an authenticated connection under its user's socket cap, register it where logout,
        deactivation and access changes find it, and welcome it; False (and closed) when refused."""
        if self._auth_timer is not None:
            self._auth_timer.cancel()
            self._auth_timer = None
        if not await self.gateway.admit(self, "user", str(principal.id)):
            if not self.closed:
                if msg_id is not None:
                    self.send(p.error(msg_id, p.TOO_MANY_CONNECTIONS, "Too many open sockets for this user."))
                self.close(p.CLOSE_TOO_MANY_CONNECTIONS, "too many sockets for this user")
            return False
        self.principal = principal
        self.principal_generation = self.policy_generation
        self.gateway.authenticated(self)
        if self.gateway.revocations != revocations:
            # A logout, deactivation or access change was swept while the credential was being looked up, before
            # this connection was registered where the sweep looks: the lookup may predate it, so read again.
            self.policy_generation += 1
            if await self.current_principal() is None:
                return False
        if msg_id is not None:
            self.send(p.result(msg_id, {"user": self.user_info()}))
        assert self.codec is not None
        self.send(
            {
                "type": "welcome",
                "connection": self.id,
                "user": self.user_info(),
                "protocol": self.codec.name,
                "limits": self.config.limits(),
            }
        )
        return True

    async def current_principal(self) -> Principal | None:
        """The principal with attributes read after the last access change signalled to this connection, read
        again first if it is stale; None once the connection is closed (a refresh that fails closes it, 4001)."""
        while not self.closed and self.principal is not None and self.principal_generation != self.policy_generation:
            generation = self.policy_generation
            fresh = await self.gateway.refresh(self.principal)
            if self.closed:
                break
            if fresh is None:
                self.close(p.CLOSE_AUTH_FAILED, "credentials revoked")
                break
            if generation >= self.principal_generation:  # a later read (the sweep's) may have landed first
                self.principal, self.principal_generation = fresh, generation
        return None if self.closed else self.principal

    def user_info(self) -> dict[str, Any]:
        assert self.principal is not None, "user_info() before authentication"
        return {"id": self.principal.id, "username": self.principal.username}

    def close(self, code: int, reason: str) -> None:
        """Server-side close: stop delivering at once, then tell the client why."""
        if self.closed:
            return
        self.closed = True
        self.close_code = code
        if self._auth_timer is not None:
            self._auth_timer.cancel()
            self._auth_timer = None
        self.gateway.detach(self)
        try:
            self.transport.close(code, reason[:120])
        except Exception:  # the socket may already be gone; the close is then moot
            pass

    def transport_closed(self) -> None:
        """The socket closed (either side); forget everything about this connection."""
        if not self.closed:
            self.closed = True
            if self._auth_timer is not None:
                self._auth_timer.cancel()
                self._auth_timer = None
            self.gateway.detach(self)

    # --- outbound
    def push(self, frame: bytes) -> bool:
        """Hot path: queue a shared frame. False when the connection is gone or its buffer is past the bound."""
        try:
            return self.transport.write_frame(frame) <= self._max_pending
        except Exception:
            return False

    def send(self, message: dict[str, Any]) -> None:
        """A reply or notice for this connection only."""
        if self.closed or self.codec is None:
            return
        if not self.push(self.codec.frame(message)):
            self.gateway.drop(self)

    def send_event(self, event: Event) -> None:
        if self.closed or self.codec is None:
            return
        if not self.push(event.frame(self.codec)):
            self.gateway.drop(self)

    async def drain(self) -> None:
        await asyncio.wait_for(self.transport.drain(), self.config.drain_timeout)

    # --- inbound
    def receive(self, raw: str | bytes) -> Any:
        """One inbound message. Returns an awaitable only when the inbox is full, which pauses reading."""
        if self.closed or self.codec is None:
            return None
        try:
            message = self.codec.decode(raw)
        except DecodeError as exc:
            return self._reject(None, str(exc))
        if not isinstance(message, dict):
            return self._reject(None, "A message must be an object with type and id.")
        msg_id = message.get("id")
        if type(msg_id) is not int:
            return self._reject(None, "A message needs an integer id.")
        if not self._last_id < msg_id <= p.MAX_ID:
            return self._reject(msg_id, f"The id must be greater than the previous one ({self._last_id}).")
        self._last_id = msg_id
        kind = message.get("type")
        if not isinstance(kind, str):
            return self._reject(msg_id, "A message needs a string type.")
        if not self._bucket.take(time.monotonic()):
            self.send(
                p.error(
                    msg_id, p.RATE_LIMIT_EXCEEDED, f"At most {self.config.commands_per_second:g} messages per second."
                )
            )
            return None
        item = (msg_id, kind, message)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._work())
        if self._inbox.full():
            return self._inbox.put(item)
        self._inbox.put_nowait(item)
        return None

    def _reject(self, msg_id: int | None, message: str) -> None:
        self._invalid += 1
        self.send(p.error(msg_id, p.VALIDATION_ERROR, message))
        if self._invalid > self.config.max_invalid_messages:
            self.close(p.CLOSE_PROTOCOL_ERROR, "too many invalid messages")

    async def _work(self) -> None:
        # One message at a time per connection: replies keep request order and a subscribe completes
        # before a later unsubscribe; Tornado keeps reading (pongs) meanwhile.
        while not self._inbox.empty():
            msg_id, kind, message = self._inbox.get_nowait()
            if self.closed:
                continue
            if self.principal is None and kind != "auth":
                # Checked here, in order, not on arrival: a command sent in the same write as the auth message
                # waits for the auth result instead of finding the connection not yet authenticated.
                self.send(p.error(msg_id, p.AUTHENTICATION_FAILED, "Authenticate first."))
                self.close(p.CLOSE_AUTH_FAILED, "authentication required")
                continue
            await self.handle(msg_id, kind, message)

    async def handle(self, msg_id: int, kind: str, message: dict[str, Any]) -> None:
        """Run one validated message and reply; every failure becomes an error reply."""
        body = {key: value for key, value in message.items() if key not in ("id", "type")}
        try:
            value = await self._dispatch(msg_id, kind, body)
        except p.ProtocolError as exc:
            self.send(p.error(msg_id, exc.code, exc.message, exc.field_errors))
        except ValidationError as exc:
            self.send(p.error(msg_id, p.VALIDATION_ERROR, "The message is not valid.", field_errors_from(exc)))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            code = getattr(exc, "code", None)
            if isinstance(code, str):
                # Domain errors (models.errors.APIError and alike) keep their REST code and detail.
                self.send(
                    p.error(msg_id, code, str(getattr(exc, "detail", exc)), getattr(exc, "field_errors", None) or None)
                )
            else:
                log.exception("realtime %s failed for connection %s", kind, self.id)
                self.send(p.error(msg_id, p.INTERNAL_ERROR, "An unexpected error occurred."))
        else:
            if value is not None:
                self.send(p.result(msg_id, value))

    async def _dispatch(self, msg_id: int, kind: str, body: dict[str, Any]) -> dict[str, Any] | None:
        gateway = self.gateway
        if kind == "auth":
            return await self._auth(msg_id, p.AuthIn.model_validate(body))
        if kind == "subscribe":
            request = p.SubscribeIn.model_validate(body)
            await gateway.subscribe(self, msg_id, request.channel, request.since)
            return None  # the gateway replies itself: the result must precede the replayed events
        if kind == "unsubscribe":
            channel = p.ChannelIn.model_validate(body).channel
            if channel not in self.subscriptions:
                raise p.ProtocolError(p.NOT_SUBSCRIBED, f"Not subscribed to {channel}.")
            gateway.unsubscribe(self, channel)
            return {"channel": channel}
        if kind == "presence":
            channel = p.ChannelIn.model_validate(body).channel
            return {"channel": channel, "members": await gateway.presence(self, channel)}
        if kind == "presence.update":
            await gateway.presence_update(self, p.PresenceUpdateIn.model_validate(body))
            return {}
        if kind == "ping":
            p.EmptyIn.model_validate(body)
            return {"ts": iso(time.time())}
        command = gateway.commands.get(kind)
        if command is None:
            raise p.ProtocolError(p.UNKNOWN_TYPE, f"Unknown message type {kind[:64]!r}.")
        principal = await self.current_principal()
        if principal is None:
            return None  # closed: its access was revoked while the command waited
        await gateway.charge(principal)  # the caller's REST budget; raises RATE_LIMIT_EXCEEDED
        value = await command(principal, body)
        return value if isinstance(value, dict) else {"value": value}

    async def _auth(self, msg_id: int, request: p.AuthIn) -> dict[str, Any] | None:
        if self.principal is not None:
            raise p.ProtocolError(p.VALIDATION_ERROR, "Already authenticated.")
        if (request.token is None) == (request.api_key is None):
            raise p.ProtocolError(p.VALIDATION_ERROR, "Send exactly one of token or api_key.")
        credential = (
            Credential("token", request.token)
            if request.token is not None
            else Credential("api_key", request.api_key or "")
        )
        revocations = self.gateway.revocations
        principal, code = await self.gateway.authenticate(credential)
        if self.closed:
            return None
        if principal is None:
            self.send(p.error(msg_id, code, "Authentication failed."))
            self.close(p.CLOSE_AUTH_FAILED, code)
            return None
        await self._authenticated(principal, revocations, msg_id)
        return None
