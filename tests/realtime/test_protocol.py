"""The protocol without a socket: a Session over a fake transport, codecs, frames, credentials and limits."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import msgpack
import pytest

from models.errors import PermissionDenied
from realtime import protocol as p
from realtime.broker import InProcessBroker
from realtime.codec import JSON, MSGPACK, build_frame, select_protocol
from realtime.events import Event, parse_channel
from realtime.gateway import Gateway
from realtime.session import Credential, credential_from
from tests.realtime.standins import ALICE, Policy, make_commands


class FakeTransport:
    """Collects frames; `pending` simulates bytes the client has not read yet."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.closed: tuple[int, str] | None = None
        self.pending = 0

    def write_frame(self, frame: bytes) -> int:
        if self.closed:
            raise ConnectionError("closed")
        self.frames.append(frame)
        return self.pending

    async def drain(self) -> None:
        return None

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def messages(self, codec: Any = JSON) -> list[dict[str, Any]]:
        return [
            codec.decode(payload_of(frame).decode() if codec is JSON else payload_of(frame)) for frame in self.frames
        ]


def payload_of(frame: bytes) -> bytes:
    size = frame[1] & 0x7F
    return frame[2 if size < 126 else 4 if size == 126 else 10 :]


def make_gateway(**config: Any) -> Gateway:
    policy = Policy()
    ref: list[Gateway] = []
    gateway = Gateway(
        InProcessBroker(),
        authenticate=policy.authenticate,
        authorize=policy.authorize,
        commands=make_commands(policy, ref),
        config=p.RealtimeConfig(**config),
    )
    ref.append(gateway)
    return gateway


async def open_session(gateway: Gateway, codec: Any = JSON, token: str = "alice-token") -> tuple[Any, FakeTransport]:
    transport = FakeTransport()
    session = gateway.open_session(transport, codec, credential=Credential("token", token))
    await session.open()
    return session, transport


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)
    await asyncio.sleep(0.01)


def test_credentials_come_from_the_authorization_header_or_the_session_cookie() -> None:
    assert credential_from("Token abc", None) == Credential("token", "abc")
    assert credential_from("Bearer abc", "cookie") == Credential("bearer", "abc")
    assert credential_from("ApiKey k1", None) == Credential("api_key", "k1")
    assert credential_from(None, "sess") == Credential("session", "sess")
    assert credential_from(None, None) is None
    # A header that is present but unusable fails instead of silently falling back to the cookie.
    assert credential_from("Basic dXNlcg==", "sess") == Credential("token", "")


def test_subprotocol_selection() -> None:
    assert select_protocol([]) == (None, JSON)
    assert select_protocol(["enginel.v1.msgpack", "enginel.v1.json"]) == ("enginel.v1.msgpack", MSGPACK)
    assert select_protocol(["graphql-ws"]) == (None, None)


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
def test_frames_carry_the_right_length_header(size: int) -> None:
    frame = build_frame(0x1, b"a" * size)
    assert frame[0] == 0x81
    if size < 126:
        assert frame[1] == size and len(frame) == size + 2
    elif size <= 0xFFFF:
        assert frame[1] == 126 and int.from_bytes(frame[2:4], "big") == size
    else:
        assert frame[1] == 127 and int.from_bytes(frame[2:10], "big") == size


def test_an_event_is_encoded_once_per_codec_and_identically_in_both() -> None:
    event = Event("review:1", "ep", 7, "markup.created", {"id": 5, "text": "Ø 12 mm"}, ts=0.5)
    assert event.frame(JSON) is event.frame(JSON)
    assert event.frame(MSGPACK) is event.frame(MSGPACK)
    as_json = json.loads(payload_of(event.frame(JSON)).decode())
    as_msgpack = msgpack.unpackb(payload_of(event.frame(MSGPACK)))
    assert (
        as_json
        == as_msgpack
        == {
            "type": "event",
            "channel": "review:1",
            "epoch": "ep",
            "offset": 7,
            "event": "markup.created",
            "data": {"id": 5, "text": "Ø 12 mm"},
            "ts": "1970-01-01T00:00:00.500Z",
        }
    )


def test_channel_names_are_validated() -> None:
    assert parse_channel("review:3f2a-11") == ("review", "3f2a-11")
    for bad in ("review", "reviews:1", "review:", "review:a b", "x" * 200, 5, "design:1:2"):
        with pytest.raises(ValueError):
            parse_channel(bad)


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = p.TokenBucket(rate=10, burst=3, tokens=3, stamp=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.1) is True and bucket.take(0.1) is False


def test_commands_cannot_shadow_protocol_types() -> None:
    gateway = make_gateway()
    with pytest.raises(ValueError):
        gateway.add_command("subscribe", make_commands(Policy(), [])["test.echo"])


@pytest.mark.gen_test
async def test_welcome_then_replies_carry_the_request_id() -> None:
    gateway = make_gateway()
    session, transport = await open_session(gateway)
    session.receive(json.dumps({"type": "ping", "id": 1}))
    session.receive(json.dumps({"type": "test.echo", "id": 2, "x": [1, 2]}))
    await settle()
    welcome, pong, echo = transport.messages()
    assert welcome["type"] == "welcome" and welcome["user"] == {"id": ALICE.id, "username": "alice"}
    assert welcome["protocol"] == "enginel.v1.json" and welcome["limits"]["max_subscriptions"] == 100
    assert pong["type"] == "result" and pong["id"] == 1 and pong["result"]["ts"].endswith("Z")
    assert echo == {"type": "result", "id": 2, "result": {"user": ALICE.id, "payload": {"x": [1, 2]}}}


@pytest.mark.gen_test
async def test_malformed_messages_get_error_replies_and_many_close_the_connection() -> None:
    gateway = make_gateway(max_invalid_messages=6)
    session, transport = await open_session(gateway)
    for raw in (
        "{not json",
        "[1,2]",
        json.dumps({"type": "ping"}),
        json.dumps({"type": "ping", "id": "1"}),
        b"binary on a text protocol",
    ):
        session.receive(raw)
    session.receive(json.dumps({"type": "ping", "id": 5}))
    session.receive(json.dumps({"type": "ping", "id": 5}))  # not increasing
    await settle()
    replies = transport.messages()[1:]
    # Rejections are immediate; the valid ping's result comes from the message worker, so ids pair them.
    assert [r["id"] for r in replies if r["type"] == "error"] == [None, None, None, None, None, 5]
    assert all(r["error"]["code"] == "VALIDATION_ERROR" for r in replies if r["type"] == "error")
    assert "greater" in replies[5]["error"]["message"]
    assert [r["id"] for r in replies if r["type"] == "result"] == [5]
    assert transport.closed is None
    session.receive("{")
    assert transport.closed == (p.CLOSE_PROTOCOL_ERROR, "too many invalid messages")


@pytest.mark.gen_test
async def test_unknown_types_and_command_errors_map_to_error_replies() -> None:
    gateway = make_gateway()
    session, transport = await open_session(gateway, MSGPACK)
    for msg_id, kind in enumerate(["no.such.thing", "test.invalid", "test.crash"], start=1):
        session.receive(msgpack.packb({"type": kind, "id": msg_id}))
    session.receive(msgpack.packb({"type": "subscribe", "id": 4, "channel": "review:1", "bogus": 1}))
    await settle()
    unknown, invalid, crash, bad_field = transport.messages(MSGPACK)[1:]
    assert unknown["error"]["code"] == "UNKNOWN_TYPE"
    assert invalid["error"] == {
        "code": "VALIDATION_ERROR",
        "message": "The markup is not valid.",
        "field_errors": {"anchor": ["This field is required."]},
    }
    assert crash["error"]["code"] == "INTERNAL_ERROR" and "boom" not in crash["error"]["message"]
    assert bad_field["error"]["field_errors"] == {"bogus": ["Unknown field."]}


@pytest.mark.gen_test
async def test_commands_per_second_are_bounded() -> None:
    gateway = make_gateway(commands_per_second=1, command_burst=3)
    session, transport = await open_session(gateway)
    for msg_id in range(1, 6):
        session.receive(json.dumps({"type": "ping", "id": msg_id}))
    await settle()
    codes = [m["error"]["code"] if m["type"] == "error" else "ok" for m in transport.messages()[1:]]
    assert sorted(codes) == ["RATE_LIMIT_EXCEEDED", "RATE_LIMIT_EXCEEDED", "ok", "ok", "ok"]


@pytest.mark.gen_test
async def test_without_credentials_only_auth_is_accepted_and_only_for_a_while() -> None:
    gateway = make_gateway(auth_timeout=0.05)
    transport = FakeTransport()
    session = gateway.open_session(transport, JSON, credential=None)
    await session.open()
    session.receive(json.dumps({"type": "subscribe", "id": 1, "channel": "review:1"}))
    await settle()  # checked when processed, in order behind any auth message
    assert transport.closed == (p.CLOSE_AUTH_FAILED, "authentication required")
    assert transport.messages()[0]["error"]["code"] == "AUTHENTICATION_FAILED"

    transport = FakeTransport()
    session = gateway.open_session(transport, JSON, credential=None)
    await session.open()
    await asyncio.sleep(0.1)
    assert transport.closed == (p.CLOSE_AUTH_FAILED, "authentication timeout")
    assert gateway.stats()["connections"] == 0


@pytest.mark.gen_test
async def test_auth_message_authenticates_and_a_wrong_one_closes() -> None:
    gateway = make_gateway()
    transport = FakeTransport()
    session = gateway.open_session(transport, JSON, credential=None)
    await session.open()
    session.receive(json.dumps({"type": "auth", "id": 1, "token": "alice-token"}))
    await settle()
    result, welcome = transport.messages()
    assert result == {"type": "result", "id": 1, "result": {"user": {"id": 1, "username": "alice"}}}
    assert welcome["type"] == "welcome" and session.principal == ALICE

    transport = FakeTransport()
    session = gateway.open_session(transport, JSON, credential=None)
    await session.open()
    session.receive(json.dumps({"type": "auth", "id": 1, "api_key": "wrong"}))
    await settle()
    assert transport.messages()[0]["error"]["code"] == "AUTHENTICATION_FAILED"
    assert transport.closed == (p.CLOSE_AUTH_FAILED, "AUTHENTICATION_FAILED")


@pytest.mark.gen_test
async def test_a_subscriber_past_the_outbound_bound_is_closed_as_slow_consumer() -> None:
    gateway = make_gateway(max_pending_bytes=1000)
    slow, slow_transport = await open_session(gateway)
    fast, fast_transport = await open_session(gateway)
    for session in (slow, fast):
        session.receive(json.dumps({"type": "subscribe", "id": 1, "channel": "design:1"}))
    await settle()
    slow_transport.pending = 5000  # the client stopped reading
    await gateway.publish("design:1", "design.updated", {"n": 1})
    assert slow_transport.closed == (p.CLOSE_SLOW_CONSUMER, "slow consumer")
    await gateway.publish("design:1", "design.updated", {"n": 2})
    events = [m for m in fast_transport.messages() if m["type"] == "event"]
    assert [e["data"]["n"] for e in events] == [1, 2]
    assert gateway.stats() == {"connections": 1, "channels": 1, "subscriptions": 1}


@pytest.mark.gen_test
async def test_subscriptions_per_connection_are_bounded_and_not_duplicated() -> None:
    gateway = make_gateway(max_subscriptions=2)
    session, transport = await open_session(gateway)
    for msg_id, channel in enumerate(["design:1", "design:1", "design:2", "design:3"], start=1):
        session.receive(json.dumps({"type": "subscribe", "id": msg_id, "channel": channel}))
    await settle()
    replies = [m for m in transport.messages() if m["type"] in ("result", "error")]
    assert [r["type"] for r in replies] == ["result", "error", "result", "error"]
    assert replies[1]["error"]["code"] == "ALREADY_SUBSCRIBED"
    assert replies[3]["error"]["code"] == "TOO_MANY_SUBSCRIPTIONS"


@pytest.mark.gen_test
async def test_a_policy_change_racing_a_subscribe_is_not_missed() -> None:
    gate = asyncio.Event()
    denied: set[tuple[int, str]] = set()

    async def authorize(principal: Any, channel: str) -> None:
        allowed = (principal.id, channel) not in denied  # decided before the change below...
        await gate.wait()  # ...and answered after it
        if not allowed:
            raise PermissionDenied("no")

    gateway = Gateway(InProcessBroker(), authenticate=Policy().authenticate, authorize=authorize)
    session, transport = await open_session(gateway)
    session.receive(json.dumps({"type": "subscribe", "id": 1, "channel": "design:1"}))
    await settle()
    denied.add((ALICE.id, "design:1"))
    assert await gateway.reauthorize(user_id=ALICE.id) == 0  # nothing subscribed yet to re-check
    gate.set()
    await settle()
    kinds = [(m["type"], m.get("event")) for m in transport.messages()[1:]]
    assert kinds == [("result", None), ("event", "subscription.ended")]
    assert gateway.stats()["subscriptions"] == 0


class LaggingBroker(InProcessBroker):
    """The in-process broker with the Redis broker's timing made explicit: a publish is in the history at once,
    but this process sees it live only on release() (the pub/sub reader lagging the history reply), and a
    history read may be answered late (`late`: its snapshot is taken when asked, like the Lua script's)."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[Event] = []
        self.late: asyncio.Event | None = None
        self._gateway: Any = None

    def attach(self, handler: Any) -> None:
        self._gateway = handler
        super().attach(self)

    def on_event(self, event: Event) -> None:
        self.held.append(event)

    def on_control(self, message: dict[str, Any]) -> None:
        self._gateway.on_control(message)

    def on_resync(self, channel: str) -> None:
        self._gateway.on_resync(channel)

    def release(self) -> None:
        held, self.held = self.held, []
        for event in held:
            self._gateway.on_event(event)

    async def history(self, channel: str, since: Any = None) -> Any:
        answer = await super().history(channel, since)
        late, self.late = self.late, None
        if late is not None:
            await late.wait()
        return answer


def lagging_gateway() -> tuple[Gateway, LaggingBroker]:
    broker = LaggingBroker()
    policy = Policy()
    return Gateway(broker, authenticate=policy.authenticate, authorize=policy.authorize), broker


def offsets(transport: FakeTransport, channel: str) -> list[int]:
    return [m["offset"] for m in transport.messages() if m["type"] == "event" and m["channel"] == channel]


@pytest.mark.gen_test
async def test_history_ahead_of_the_live_stream_is_not_delivered_twice() -> None:
    gateway, broker = lagging_gateway()
    observer, watched = await open_session(gateway, token="bob-token")
    observer.receive(json.dumps({"type": "subscribe", "id": 1, "channel": "design:1"}))
    await settle()
    for n in range(10):
        epoch, _ = await gateway.publish("design:1", "design.updated", {"n": n})
    broker.release()
    for n in range(10, 15):  # in the history, not yet seen live here
        await gateway.publish("design:1", "design.updated", {"n": n})
    session, transport = await open_session(gateway)
    since = {"epoch": epoch, "offset": 3}
    session.receive(json.dumps({"type": "subscribe", "id": 1, "channel": "design:1", "since": since}))
    await settle()
    assert offsets(transport, "design:1") == list(range(4, 16))  # replayed up to the tip, 15
    broker.release()  # 11..15 arrive live: the observer needs them, the recovered subscriber has them
    for n in range(15, 18):
        await gateway.publish("design:1", "design.updated", {"n": n})
    broker.release()
    assert offsets(transport, "design:1") == list(range(4, 19))
    assert offsets(watched, "design:1") == list(range(1, 19))


@pytest.mark.gen_test
async def test_a_subscriber_whose_history_is_older_than_the_channel_catches_up_from_history() -> None:
    gateway, broker = lagging_gateway()
    for n in range(5):
        epoch, _ = await gateway.publish("design:2", "design.updated", {"n": n})
    broker.release()  # nobody listens yet
    late = broker.late = asyncio.Event()
    first, slow = await open_session(gateway)
    since = {"epoch": epoch, "offset": 2}
    first.receive(json.dumps({"type": "subscribe", "id": 1, "channel": "design:2", "since": since}))
    await settle()  # its history (tip 5) is read but not yet answered
    for n in range(5, 8):
        await gateway.publish("design:2", "design.updated", {"n": n})
    second, fresh = await open_session(gateway, token="bob-token")
    second.receive(json.dumps({"type": "subscribe", "id": 1, "channel": "design:2"}))
    await settle()  # answered first: the channel starts at its tip, 8
    late.set()
    await settle()
    broker.release()  # 6..8 arrive live only now
    await gateway.publish("design:2", "design.updated", {"n": 8})
    broker.release()
    assert offsets(slow, "design:2") == list(range(3, 10))  # 6..8 came from history, none twice
    assert offsets(fresh, "design:2") == [9]
