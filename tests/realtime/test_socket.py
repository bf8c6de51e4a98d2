"""The gateway over real sockets against a live server, with the in-process and the Redis broker alike."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from tornado.web import create_signed_value

from handlers import websocket
from handlers.base import unmarked_methods
from realtime import protocol as p
from tests.realtime.client import Client, masked_frame, raw_socket_client, read_frame


async def until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


# --- authentication, origin, subprotocols
def test_the_upgrade_is_explicitly_public_because_the_protocol_authenticates() -> None:
    assert unmarked_methods(websocket.routes) == []
    assert websocket.RealtimeSocketHandler.get.__enginel_auth__ == "public"  # type: ignore[attr-defined]


@pytest.mark.gen_test
async def test_every_credential_form_authenticates(make_node, broker_kind) -> None:
    node = await make_node(broker_kind)
    token = await Client.connect(node.url, token="alice-token")
    assert token.welcome is not None and token.welcome["user"] == {"id": 1, "username": "alice"}
    bearer = await Client.connect(node.url, headers={"Authorization": "Bearer alice-bearer"}, wait_welcome=False)
    api_key = await Client.connect(node.url, headers={"Authorization": "ApiKey bob-key"}, wait_welcome=False)
    cookie = await Client.connect(node.url, headers={"Cookie": "enginel_session=carol-session"}, wait_welcome=False)
    assert (await bearer.next())["user"]["username"] == "alice"
    assert (await api_key.next())["user"]["username"] == "bob"
    assert (await cookie.next())["user"]["username"] == "carol"

    by_message = await Client.connect(node.url)
    reply = await by_message.request("auth", token="bob-token")
    assert reply == {"type": "result", "id": 1, "result": {"user": {"id": 2, "username": "bob"}}}
    assert (await by_message.next())["type"] == "welcome"
    assert (await by_message.ok("ping"))["ts"].endswith("Z")


@pytest.mark.gen_test
async def test_with_a_cookie_secret_only_a_signed_session_cookie_counts(make_node) -> None:
    node = await make_node(cookie_secret="s3cret", auth_timeout=0.3)
    signed = create_signed_value("s3cret", "enginel_session", "carol-session").decode()
    good = await Client.connect(node.url, headers={"Cookie": f"enginel_session={signed}"}, wait_welcome=False)
    assert (await good.next())["user"]["username"] == "carol"
    forged = await Client.connect(node.url, headers={"Cookie": "enginel_session=carol-session"}, wait_welcome=False)
    assert await forged.closed() == (p.CLOSE_AUTH_FAILED, "authentication timeout")


@pytest.mark.gen_test
async def test_authentication_failures_close_with_4001(make_node, broker_kind) -> None:
    node = await make_node(broker_kind, auth_timeout=0.3)
    wrong = await Client.connect(node.url, token="stolen", wait_welcome=False)
    assert await wrong.closed() == (p.CLOSE_AUTH_FAILED, "AUTHENTICATION_FAILED")

    silent = await Client.connect(node.url)
    started = time.monotonic()
    assert await silent.closed() == (p.CLOSE_AUTH_FAILED, "authentication timeout")
    assert 0.25 < time.monotonic() - started < 3

    bad_message = await Client.connect(node.url)
    reply = await bad_message.request("auth", token="nope")
    assert reply["type"] == "error" and reply["error"]["code"] == "AUTHENTICATION_FAILED"
    assert (await bad_message.closed())[0] == p.CLOSE_AUTH_FAILED

    eager = await Client.connect(node.url)
    reply = await eager.request("subscribe", channel="review:1")
    assert reply["error"]["code"] == "AUTHENTICATION_FAILED"
    assert await eager.closed() == (p.CLOSE_AUTH_FAILED, "authentication required")
    await until(lambda: node.gateway.stats()["connections"] == 0)


@pytest.mark.gen_test
async def test_origin_allow_list(make_node) -> None:
    node = await make_node(allowed_origins=("https://viewer.example.com",))
    evil = await Client.connect(
        node.url, token="alice-token", wait_welcome=False, headers={"Origin": "https://evil.example.com"}
    )
    assert await evil.closed() == (p.CLOSE_FORBIDDEN_ORIGIN, "origin not allowed")
    allowed = await Client.connect(node.url, token="alice-token", headers={"Origin": "https://viewer.example.com"})
    same_site = await Client.connect(node.url, token="alice-token", headers={"Origin": f"http://127.0.0.1:{node.port}"})
    no_origin = await Client.connect(node.url, token="alice-token")  # not a browser
    for client in (allowed, same_site, no_origin):
        assert client.welcome is not None


@pytest.mark.gen_test
async def test_subprotocol_negotiation(make_node) -> None:
    node = await make_node()
    default = await Client.connect(node.url, token="alice-token", subprotocols=[])
    assert default.welcome is not None and default.welcome["protocol"] == "enginel.v1.json"
    binary = await Client.connect(node.url, codec="msgpack", token="alice-token")
    assert binary.conn.selected_subprotocol == "enginel.v1.msgpack"
    assert binary.welcome is not None and binary.welcome["protocol"] == "enginel.v1.msgpack"
    foreign = await Client.connect(node.url, token="alice-token", subprotocols=["graphql-ws"], wait_welcome=False)
    assert await foreign.closed() == (p.CLOSE_BAD_SUBPROTOCOL, "unsupported subprotocol")


# --- subscriptions and events
@pytest.mark.gen_test
async def test_subscribe_receive_unsubscribe(make_node, broker_kind) -> None:
    node = await make_node(broker_kind)
    client = await Client.connect(node.url, token="alice-token")
    result = await client.ok("subscribe", channel="design:1")
    assert result["channel"] == "design:1" and result["offset"] == 0 and result["epoch"]
    epoch, offset = await node.publish("design:1", "design.updated", {"name": "bracket"})
    event = await client.next_event()
    assert event["channel"] == "design:1" and event["epoch"] == epoch and event["offset"] == offset == 1
    assert event["event"] == "design.updated" and event["data"] == {"name": "bracket"}
    assert event["ts"].endswith("Z")
    assert await client.ok("unsubscribe", channel="design:1") == {"channel": "design:1"}
    await node.publish("design:1", "design.updated", {"name": "ignored"})
    assert await client.quiet() == []
    again = await client.request("unsubscribe", channel="design:1")
    assert again["error"]["code"] == "NOT_SUBSCRIBED"
    bad = await client.request("subscribe", channel="printer:1")
    assert bad["error"]["code"] == "VALIDATION_ERROR" and "channel" in bad["error"]["field_errors"]
    await until(lambda: node.gateway.stats() == {"connections": 1, "channels": 0, "subscriptions": 0})


@pytest.mark.gen_test
async def test_unauthorized_subscriptions_are_refused_with_the_policy_code(make_node, broker_kind) -> None:
    node = await make_node(broker_kind)
    client = await Client.connect(node.url, token="alice-token")
    refusals = {
        "review:itar": "ITAR_VIOLATION",
        "design:elsewhere": "RESOURCE_NOT_FOUND",
        "user:2": "PERMISSION_DENIED",
    }
    for channel, code in refusals.items():
        reply = await client.request("subscribe", channel=channel)
        assert reply["type"] == "error" and reply["error"]["code"] == code, reply
        await node.publish(channel, "secret", {"x": 1})
    assert (await client.ok("subscribe", channel="user:1"))["channel"] == "user:1"
    assert await client.quiet() == []
    assert node.gateway.stats()["subscriptions"] == 1


@pytest.mark.gen_test
async def test_json_and_msgpack_clients_in_one_channel_see_the_same_events(make_node, broker_kind) -> None:
    node = await make_node(broker_kind)
    text = await Client.connect(node.url, codec="json", token="alice-token")
    binary = await Client.connect(node.url, codec="msgpack", token="bob-token")
    for client in (text, binary):
        await client.ok("subscribe", channel="design:3")
    payloads = [
        {"text": "Ø 12 mm ± 0.1", "nested": {"list": [1, 2.5, None, True]}},
        {"big": 2**40, "neg": -7, "empty": {}},
        {"markup": {"id": 9, "anchor": [0.5, 1.0, -2.25]}},
    ]
    for data in payloads:
        await node.publish("design:3", "markup.created", data)
    seen_text = await text.events(3)
    seen_binary = await binary.events(3)
    assert seen_text == seen_binary
    assert [e["data"] for e in seen_text] == payloads
    assert [e["offset"] for e in seen_text] == [1, 2, 3]


@pytest.mark.gen_test
async def test_commands_go_through_the_registry_and_their_events_reach_subscribers(make_node, broker_kind) -> None:
    node = await make_node(broker_kind)
    reviewer = await Client.connect(node.url, token="bob-token")
    await reviewer.ok("subscribe", channel="review:8")
    author = await Client.connect(node.url, codec="msgpack", token="alice-token")
    result = await author.ok("markup.create", channel="review:8", data={"text": "chamfer edge"})
    assert result["offset"] >= 1
    event = await reviewer.next_event("markup.created")
    assert event["data"] == {"by": 1, "text": "chamfer edge"} and event["offset"] == result["offset"]
    failure = await author.request("test.invalid")
    assert failure["error"]["field_errors"] == {"anchor": ["This field is required."]}
    assert (await author.request("review.teleport"))["error"]["code"] == "UNKNOWN_TYPE"


# --- access changes
@pytest.mark.gen_test
async def test_access_revoked_mid_session_ends_only_the_affected_subscription(make_node, broker_kind) -> None:
    node = await make_node(broker_kind)
    alice = await Client.connect(node.url, token="alice-token")
    for channel in ("review:1", "review:2", "design:1"):
        await alice.ok("subscribe", channel=channel)
    node.policy.denied.add((1, "review:1"))
    assert await node.gateway.reauthorize(user_id=1) == 1
    ended = await alice.next_event("subscription.ended")
    assert ended["channel"] == "review:1" and ended["offset"] is None
    assert ended["data"] == {"reason": "access_changed", "code": "PERMISSION_DENIED"}
    await node.publish("review:1", "markup.created", {"n": 1})
    await node.publish("review:2", "markup.created", {"n": 2})
    assert (await alice.next_event("markup.created"))["channel"] == "review:2"
    assert (await alice.request("subscribe", channel="review:1"))["error"]["code"] == "PERMISSION_DENIED"

    assert await node.gateway.revoke(1, "review:*", reason="removed_from_organization") == 1
    ended = await alice.next_event("subscription.ended")
    assert ended["channel"] == "review:2" and ended["data"]["reason"] == "removed_from_organization"
    await node.publish("design:1", "design.updated", {})
    assert (await alice.next_event())["channel"] == "design:1"
    assert node.gateway.stats()["subscriptions"] == 1


@pytest.mark.gen_test
async def test_a_disabled_user_is_disconnected(make_node, broker_kind) -> None:
    node = await make_node(broker_kind)
    alice = await Client.connect(node.url, token="alice-token")
    await alice.ok("subscribe", channel="design:1")
    node.policy.active.discard(1)
    await node.gateway.reauthorize(user_id=1)
    assert await alice.closed() == (p.CLOSE_AUTH_FAILED, "credentials revoked")
    bob = await Client.connect(node.url, token="bob-token")
    await node.gateway.disconnect_user(2, "logged out")
    assert await bob.closed() == (p.CLOSE_AUTH_FAILED, "logged out")


# --- presence
@pytest.mark.gen_test
async def test_presence_join_update_list_and_leave(make_node, broker_kind) -> None:
    node = await make_node(broker_kind)
    alice = await Client.connect(node.url, token="alice-token")
    await alice.ok("subscribe", channel="review:1")
    assert (await alice.next_event("presence.join"))["data"]["user"]["username"] == "alice"
    bob = await Client.connect(node.url, codec="msgpack", token="bob-token")
    await bob.ok("subscribe", channel="review:1")
    joined = await alice.next_event("presence.join")
    assert joined["data"]["user"] == {"id": 2, "username": "bob"} and joined["offset"] is None
    members = (await alice.ok("presence", channel="review:1"))["members"]
    assert sorted(m["user"]["username"] for m in members) == ["alice", "bob"]

    camera = {"position": [1.0, 2.0, 3.0], "target": [0.0, 0.0, 0.0], "fov": 45.0}
    assert await bob.ok("presence.update", channel="review:1", camera=camera, selection=["face-12"]) == {}
    update = await alice.next_event("presence.update")
    assert update["data"]["client"] == joined["data"]["client"]
    assert update["data"]["camera"] == camera
    assert update["data"]["selection"] == ["face-12"]
    bad = await bob.request("presence.update", channel="review:1", camera={"position": [1, 2]})
    assert bad["error"]["code"] == "VALIDATION_ERROR"

    bob.close()
    left = await alice.next_event("presence.leave")
    assert left["data"]["user"]["username"] == "bob" and left["data"]["reason"] == "disconnected"
    members = (await alice.ok("presence", channel="review:1"))["members"]
    assert [m["user"]["username"] for m in members] == ["alice"]
    assert (await alice.request("presence.update", channel="review:2"))["error"]["code"] == "NOT_SUBSCRIBED"
    await alice.ok("subscribe", channel="design:1")
    assert (await alice.request("presence", channel="design:1"))["error"]["code"] == "VALIDATION_ERROR"


# --- history and recovery
@pytest.mark.gen_test(timeout=60)
async def test_recovery_replays_exactly_the_missed_events_then_continues_live(make_node, broker_kind) -> None:
    node = await make_node(broker_kind, history_size=6000)
    channel = "review:42"
    first = await Client.connect(node.url, token="alice-token")
    await first.ok("subscribe", channel=channel)
    for n in range(3):
        await node.publish(channel, "markup.updated", {"n": n})
    seen = await first.events(3, "markup.updated")
    position = {"epoch": seen[-1]["epoch"], "offset": seen[-1]["offset"]}
    first.close()
    await until(lambda: node.gateway.stats()["connections"] == 0)

    for n in range(3, 5003):  # 5,000 events while the client is away
        await node.publish(channel, "markup.updated", {"n": n})

    async def keep_publishing() -> None:
        # Live events race the history read: none may be lost or delivered twice at the seam.
        for n in range(5003, 5203):
            await node.publish(channel, "markup.updated", {"n": n})
            await asyncio.sleep(0)

    racing = asyncio.ensure_future(keep_publishing())
    again = await Client.connect(node.url, token="alice-token")
    result = await again.ok("subscribe", channel=channel, since=position)
    assert result["recovered"] is True and result["replayed"] >= 5000
    await racing
    events = await again.events(5200, "markup.updated")
    assert [e["data"]["n"] for e in events] == list(range(3, 5203))
    assert [e["offset"] for e in events] == list(range(position["offset"] + 1, position["offset"] + 5201))
    assert {e["epoch"] for e in events} == {position["epoch"]}
    await node.publish(channel, "markup.updated", {"n": "live"})
    assert (await again.next_event("markup.updated"))["data"] == {"n": "live"}
    assert [m for m in await again.quiet() if m.get("event") == "markup.updated"] == []


@pytest.mark.gen_test(timeout=30)
async def test_a_replay_larger_than_the_outbound_bound_is_paced_by_the_reader(make_node, broker_kind) -> None:
    node = await make_node(broker_kind, max_pending_bytes=64 * 1024)
    client = await Client.connect(node.url, token="alice-token")
    start = await client.ok("subscribe", channel="design:4")
    client.close()
    for n in range(400):  # ~800 KB of history against a 64 KiB bound
        await node.publish("design:4", "design.updated", {"n": n, "blob": "z" * 2000})
    again = await Client.connect(node.url, token="alice-token")
    result = await again.ok("subscribe", channel="design:4", since={"epoch": start["epoch"], "offset": 0})
    assert result["recovered"] is True and result["replayed"] == 400
    assert [e["data"]["n"] for e in await again.events(400)] == list(range(400))


@pytest.mark.gen_test
async def test_a_gap_older_than_the_history_says_recovered_false(make_node, broker_kind) -> None:
    node = await make_node(broker_kind, history_size=10)
    client = await Client.connect(node.url, token="alice-token")
    start = await client.ok("subscribe", channel="job:1")
    client.close()
    for n in range(25):
        await node.publish("job:1", "job.progress", {"percent": n * 4})
    again = await Client.connect(node.url, token="alice-token")
    result = await again.ok("subscribe", channel="job:1", since={"epoch": start["epoch"], "offset": 0})
    assert result == {"channel": "job:1", "epoch": start["epoch"], "offset": 25, "recovered": False, "replayed": 0}
    unknown = await again.ok("subscribe", channel="job:2", since={"epoch": "gone", "offset": 3})
    assert unknown["recovered"] is False
    await node.publish("job:1", "job.progress", {"percent": 100})
    event = await again.next_event()
    assert event["offset"] == 26 and event["data"] == {"percent": 100}


@pytest.mark.gen_test
async def test_a_live_subscription_survives_its_channel_restarting_in_a_new_epoch(make_node, broker_kind) -> None:
    node = await make_node(broker_kind, history_ttl=0.2)
    client = await Client.connect(node.url, token="alice-token")
    await client.ok("subscribe", channel="org:1")
    await node.publish("org:1", "org.updated", {"n": 1})
    before = await client.next_event()
    await asyncio.sleep(0.3)  # idle past the history's age: the stream is dropped
    await node.publish("org:1", "org.updated", {"n": 2})
    after = await client.next_event()
    assert after["epoch"] != before["epoch"] and after["offset"] == 1 and after["data"] == {"n": 2}
    assert node.gateway.stats()["subscriptions"] == 1


# --- flow control and limits
@pytest.mark.gen_test(timeout=60)
async def test_a_slow_client_is_cut_off_while_a_fast_one_keeps_receiving(make_node, broker_kind) -> None:
    node = await make_node(broker_kind, max_pending_bytes=256 * 1024)
    fast = await Client.connect(node.url, token="alice-token")
    await fast.ok("subscribe", channel="design:7")
    reader, writer = await raw_socket_client(node.port, "bob-token")
    assert json.loads((await read_frame(reader))[1])["type"] == "welcome"
    writer.write(masked_frame(json.dumps({"type": "subscribe", "id": 1, "channel": "design:7"}).encode()))
    assert json.loads((await read_frame(reader))[1])["type"] == "result"
    assert node.gateway.stats()["connections"] == 2

    blob = "x" * 16384
    sent = 0
    for n in range(800):  # ~13 MB: past every kernel buffer and the bound
        await node.publish("design:7", "design.updated", {"n": n, "blob": blob})
        assert (await fast.next_event("design.updated"))["data"]["n"] == n
        sent = n + 1
        if node.gateway.stats()["connections"] == 1:
            break
    assert node.gateway.stats()["connections"] == 1, "the slow consumer was never cut off"
    for n in range(sent, sent + 20):  # the fast one is unaffected
        await node.publish("design:7", "design.updated", {"n": n})
        assert (await fast.next_event("design.updated"))["data"]["n"] == n

    # The slow client finally reads: what was queued, then the documented close code.
    while True:
        opcode, payload = await asyncio.wait_for(read_frame(reader), 10)
        if opcode == 8:
            break
    assert int.from_bytes(payload[:2], "big") == p.CLOSE_SLOW_CONSUMER
    assert payload[2:] == b"slow consumer"
    writer.close()


@pytest.mark.gen_test
async def test_oversized_messages_close_with_1009(make_node) -> None:
    node = await make_node(max_message_bytes=1024)
    client = await Client.connect(node.url, token="alice-token")
    await client.send({"type": "test.echo", "id": 1, "blob": "x" * 2000})
    code, _ = await client.closed()
    assert code == p.CLOSE_TOO_BIG


@pytest.mark.gen_test
async def test_server_pings_and_drops_a_peer_that_never_answers(make_node) -> None:
    node = await make_node(ping_interval=0.1, ping_timeout=0.1)
    lively = await Client.connect(node.url, token="alice-token")  # Tornado's client answers pings
    reader, writer = await raw_socket_client(node.port, "bob-token")
    frames = []
    while True:
        opcode, payload = await asyncio.wait_for(read_frame(reader), 5)
        frames.append(opcode)
        if opcode == 8:
            break
    assert 9 in frames  # it was pinged, never answered, and was closed
    assert await lively.ok("ping")
    writer.close()


@pytest.mark.gen_test
async def test_close_all_says_going_away_and_refuses_newcomers(make_node, broker_kind) -> None:
    node = await make_node(broker_kind)
    clients = [await Client.connect(node.url, token="alice-token") for _ in range(3)]
    await clients[0].ok("subscribe", channel="review:1")
    assert node.gateway.close_all() == 3
    for client in clients:
        assert await client.closed() == (p.CLOSE_GOING_AWAY, "server shutting down")
    late = await Client.connect(node.url, token="alice-token", wait_welcome=False)
    assert await late.closed() == (p.CLOSE_GOING_AWAY, "server shutting down")
