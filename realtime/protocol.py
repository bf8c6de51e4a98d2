"""The enginel.v1 WebSocket protocol: close codes, error codes, limits, and the shapes of client messages.

Subprotocols: ``enginel.v1.json`` (text frames; the default when the client offers none) and
``enginel.v1.msgpack`` (binary frames). Both carry the same documents.

Client -> server: every message is an object ``{"type": str, "id": int, ...}`` whose ``id`` is larger
than the previous message's. The server answers each with ``{"type": "result", "id", "result": {...}}``
or ``{"type": "error", "id", "error": {"code", "message", "field_errors"?}}``. Types:

=================  =====================================================================================
auth               ``{token}`` or ``{api_key}``; only as the first message, within ``auth_timeout``
subscribe          ``{channel, since?: {epoch, offset}}`` -> ``{channel, epoch, offset, recovered?, replayed?}``;
                   with ``since`` the missed events follow the result, in order, then live events
unsubscribe        ``{channel}``
presence           ``{channel}`` -> ``{channel, members: [...]}`` across every server process
presence.update    ``{channel, camera?, cursor?, selection?}``
ping               ``{}`` -> ``{ts}``
<command>          ``markup.create``, ``markup.update``, ``markup.resolve``, ``markup.dismiss``, ``review.vote``:
                   the message minus ``type``/``id`` is the payload given to the same models/ code as REST;
                   the markup a command acts on is ``markup_id``, the review a vote is cast in ``review_id``.
                   Each command is charged to the caller's REST request budget (RATE_LIMIT_EXCEEDED)
=================  =====================================================================================

Error codes: VALIDATION_ERROR (with ``field_errors``), UNKNOWN_TYPE, AUTHENTICATION_FAILED, ALREADY_SUBSCRIBED,
NOT_SUBSCRIBED, TOO_MANY_SUBSCRIPTIONS, SUBSCRIPTION_ENDED, RATE_LIMIT_EXCEEDED, TOO_MANY_CONNECTIONS,
SERVICE_UNAVAILABLE, INTERNAL_ERROR, and the REST codes the access policy and commands raise (PERMISSION_DENIED,
ITAR_VIOLATION, RESOURCE_NOT_FOUND, CONFLICT, ...).

Server -> client pushes: ``{"type": "event", "channel", "epoch", "offset", "event", "data", "ts"}``.
Durable events (everything models/ publishes) have an offset that increases by one per event within
an epoch; ephemeral events (``presence.join``/``presence.leave``/``presence.update``,
``subscription.ended``) have ``epoch`` and ``offset`` null and are never replayed. ``subscription.ended``
carries ``{reason, code}``: the access policy refused the channel again (``access_changed``), access was
revoked (``access_revoked`` or the caller's reason), or the server lost events it could not replay
(``events_lost``: subscribe again with ``since`` to learn ``recovered: false``). After authenticating, the
server sends ``{"type": "welcome", "connection", "user", "protocol", "limits"}``.

Close codes:

====  ==================================================================================================
1000  normal closure; with reason "ping timed out" when the client missed a keepalive pong
1001  going away: the server is shutting down; reconnect (to another process) and recover with ``since``
1009  message too big: an inbound message exceeded ``max_message_bytes``
1011  internal error: the connection's access could not be checked again after an access change; reconnect
1013  try again later: the connection caps could not be counted (the rate limiter's store is unavailable)
4000  protocol error: too many malformed messages
4001  authentication failed, timed out, or the credentials were revoked or the user disabled
4002  unsupported subprotocol: the client offered subprotocols but none of enginel.v1.json/msgpack
4003  origin not allowed: the browser's Origin is not this site and not in ``allowed_origins``
4008  slow consumer: the client did not read fast enough and its outbound buffer passed ``max_pending_bytes``
4029  too many connections: the user's open sockets, or this address's unauthenticated ones, are at their cap
====  ==================================================================================================
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Annotated, Any

from pydantic import Field

from models.schema import Input
from realtime.events import CHANNEL_KINDS

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011
CLOSE_TRY_AGAIN = 1013
CLOSE_PROTOCOL_ERROR = 4000
CLOSE_AUTH_FAILED = 4001
CLOSE_BAD_SUBPROTOCOL = 4002
CLOSE_FORBIDDEN_ORIGIN = 4003
CLOSE_SLOW_CONSUMER = 4008
CLOSE_TOO_MANY_CONNECTIONS = 4029

# Error codes in error replies; policy errors reuse the REST codes (PERMISSION_DENIED, ITAR_VIOLATION, ...).
VALIDATION_ERROR = "VALIDATION_ERROR"
UNKNOWN_TYPE = "UNKNOWN_TYPE"
AUTHENTICATION_FAILED = "AUTHENTICATION_FAILED"
ALREADY_SUBSCRIBED = "ALREADY_SUBSCRIBED"
NOT_SUBSCRIBED = "NOT_SUBSCRIBED"
SUBSCRIPTION_ENDED = "SUBSCRIPTION_ENDED"
TOO_MANY_SUBSCRIPTIONS = "TOO_MANY_SUBSCRIPTIONS"
RATE_LIMIT_EXCEEDED = "RATE_LIMIT_EXCEEDED"
TOO_MANY_CONNECTIONS = "TOO_MANY_CONNECTIONS"
SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"
INTERNAL_ERROR = "INTERNAL_ERROR"

MAX_ID = 2**53 - 1  # ids survive a round trip through JavaScript numbers
RESERVED_TYPES = frozenset({"auth", "subscribe", "unsubscribe", "presence", "presence.update", "ping"})


@dataclass(frozen=True)
class RealtimeConfig:
    """Every realtime knob; server.py maps ENGINEL_REALTIME_* settings onto it."""

    allowed_origins: tuple[str, ...] = ()  # cross-origin browsers allowed besides same-origin; "*" = any
    trusted_proxies: tuple[str, ...] = ()  # peers whose X-Forwarded-For names the client (per-address caps)
    auth_timeout: float = 5.0  # seconds to send {"type": "auth"} when no header/cookie credential
    session_cookie: str = "enginel_session"  # cookie carrying a browser session
    max_message_bytes: int = 65_536  # largest inbound message (close 1009 above)
    max_subscriptions: int = 100  # channels per connection
    commands_per_second: float = 20.0  # sustained inbound messages per connection
    command_burst: int = 40  # ... and the burst allowed above that rate
    max_pending_bytes: int = 4 * 1024 * 1024  # outbound buffer per connection before close 4008
    max_inflight: int = 16  # inbound messages queued per connection before reading pauses
    max_invalid_messages: int = 20  # malformed messages tolerated before close 4000
    drain_timeout: float = 30.0  # seconds a history replay may wait for the client to read
    ping_interval: float = 20.0  # WebSocket ping every N seconds (0 disables)
    ping_timeout: float = 20.0  # close if the pong is later than this (<= ping_interval)
    presence_kinds: frozenset[str] = frozenset({"review"})  # channel kinds that track who is in them
    channel_kinds: frozenset[str] = CHANNEL_KINDS

    def limits(self) -> dict[str, Any]:
        """What a client may need to know, sent in the welcome message."""
        keys = (
            "max_message_bytes",
            "max_subscriptions",
            "commands_per_second",
            "command_burst",
            "max_pending_bytes",
            "ping_interval",
        )
        values = asdict(self)
        return {key: values[key] for key in keys}


@dataclass
class TokenBucket:
    """Commands per second with a burst; refilled lazily so idle connections cost nothing."""

    rate: float
    burst: float
    tokens: float = field(default=0.0)
    stamp: float = field(default=0.0)

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class ProtocolError(Exception):
    """An error reply for one message; the connection stays open."""

    def __init__(self, code: str, message: str, field_errors: dict[str, list[str]] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field_errors = field_errors or {}


def result(msg_id: int, value: dict[str, Any]) -> dict[str, Any]:
    return {"type": "result", "id": msg_id, "result": value}


def error(
    msg_id: int | None, code: str, message: str, field_errors: dict[str, list[str]] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if field_errors:
        body["field_errors"] = field_errors
    return {"type": "error", "id": msg_id, "error": body}


# --- client message bodies (validated without the envelope's type and id)
Vector3 = Annotated[list[float], Field(min_length=3, max_length=3)]


class Since(Input):
    epoch: Annotated[str, Field(min_length=1, max_length=64)]
    offset: Annotated[int, Field(ge=0)]


class ChannelIn(Input):
    channel: Annotated[str, Field(max_length=100)]


class SubscribeIn(ChannelIn):
    since: Since | None = None


class AuthIn(Input):
    token: Annotated[str, Field(min_length=1, max_length=512)] | None = None
    api_key: Annotated[str, Field(min_length=1, max_length=512)] | None = None


class Camera(Input):
    position: Vector3
    target: Vector3
    up: Vector3 | None = None
    fov: Annotated[float, Field(gt=0, lt=180)] | None = None
    zoom: Annotated[float, Field(gt=0)] | None = None


class PresenceUpdateIn(ChannelIn):
    camera: Camera | None = None
    cursor: Vector3 | None = None
    selection: Annotated[list[Annotated[str, Field(max_length=128)]], Field(max_length=1000)] | None = None


class EmptyIn(Input):
    pass
