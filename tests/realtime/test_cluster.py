"""Several server processes sharing one Redis act as one: fan-out, presence, revocation and recovery across them."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from models.database import free_port
from realtime import protocol as p
from tests.realtime.client import Client
from tests.realtime.standins import Policy

REPO = Path(__file__).resolve().parents[2]


async def until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def pair(make_node: Any, **config: Any) -> tuple[Any, Any]:
    # Two gateways with separate Redis connections and node ids: two processes as far as the protocol knows.
    policy = Policy()
    return (await make_node("redis", policy=policy, **config), await make_node("redis", policy=policy, **config))


@pytest.mark.gen_test
async def test_a_publish_on_one_process_reaches_subscribers_on_both(make_node) -> None:
    one, two = await pair(make_node)
    here = await Client.connect(one.url, codec="json", token="alice-token")
    there = await Client.connect(two.url, codec="msgpack", token="bob-token")
    for client in (here, there):
        await client.ok("subscribe", channel="design:5")
    await one.publish("design:5", "design.updated", {"from": "one"})
    await two.publish("design:5", "design.updated", {"from": "two"})
    by_command = await here.ok("markup.create", channel="design:5", data={"from": "command"})
    assert by_command["offset"] == 3
    seen_here, seen_there = await here.events(3), await there.events(3)
    assert seen_here == seen_there
    assert [(e["offset"], e["data"]["from"]) for e in seen_here] == [(1, "one"), (2, "two"), (3, "command")]


@pytest.mark.gen_test
async def test_presence_spans_processes(make_node) -> None:
    one, two = await pair(make_node)
    alice = await Client.connect(one.url, token="alice-token")
    await alice.ok("subscribe", channel="review:3")
    bob = await Client.connect(two.url, token="bob-token")
    await bob.ok("subscribe", channel="review:3")
    assert (await alice.next_event("presence.join"))["data"]["user"]["username"] == "alice"
    assert (await alice.next_event("presence.join"))["data"]["user"]["username"] == "bob"
    for client in (alice, bob):
        members = (await client.ok("presence", channel="review:3"))["members"]
        assert sorted(m["user"]["username"] for m in members) == ["alice", "bob"]
    await bob.ok("presence.update", channel="review:3", cursor=[1.0, 2.0, 3.0])
    assert (await alice.next_event("presence.update"))["data"]["cursor"] == [1.0, 2.0, 3.0]
    bob.close()
    assert (await alice.next_event("presence.leave"))["data"]["user"]["username"] == "bob"
    assert [m["user"]["username"] for m in (await alice.ok("presence", channel="review:3"))["members"]] == ["alice"]


@pytest.mark.gen_test
async def test_revocation_on_one_process_ends_subscriptions_on_the_other(make_node) -> None:
    one, two = await pair(make_node)
    alice = await Client.connect(two.url, token="alice-token")
    for channel in ("review:1", "review:2", "design:1"):
        await alice.ok("subscribe", channel=channel)
    assert await one.gateway.revoke(1, "review:1") == 0  # nothing of alice's on this process
    ended = await alice.next_event("subscription.ended")
    assert ended["channel"] == "review:1" and ended["data"]["code"] == "PERMISSION_DENIED"

    one.policy.denied.add((1, "design:1"))
    await one.gateway.reauthorize(channels="design:*")
    ended = await alice.next_event("subscription.ended")
    assert ended["channel"] == "design:1" and ended["data"]["reason"] == "access_changed"
    await until(lambda: two.gateway.stats()["subscriptions"] == 1)

    await one.gateway.disconnect_user(1)
    assert (await alice.closed())[0] == p.CLOSE_AUTH_FAILED


@pytest.mark.gen_test(timeout=30)
async def test_recovery_on_another_process(make_node) -> None:
    one, two = await pair(make_node)
    client = await Client.connect(one.url, token="alice-token")
    start = await client.ok("subscribe", channel="review:9")
    client.close()
    for n in range(300):
        await one.publish("review:9", "markup.created", {"n": n})
    moved = await Client.connect(two.url, token="alice-token")
    result = await moved.ok("subscribe", channel="review:9", since={"epoch": start["epoch"], "offset": 0})
    assert result["recovered"] is True and result["replayed"] == 300
    assert [e["data"]["n"] for e in await moved.events(300, "markup.created")] == list(range(300))


@pytest.mark.gen_test(timeout=30)
async def test_no_event_is_lost_when_the_pubsub_connection_drops(make_node, redis_url: str) -> None:
    one, two = await pair(make_node)
    client = await Client.connect(two.url, token="bob-token")
    await client.ok("subscribe", channel="design:8")
    admin = redis.Redis.from_url(redis_url)
    try:
        for n in range(60):
            if n in (10, 30):
                # Drop every pub/sub connection: live delivery stops until redis-py reconnects and
                # re-subscribes; the gateway then reads what it missed from the history.
                admin.client_kill_filter(_type="pubsub")
            await one.publish("design:8", "design.updated", {"n": n})
            await asyncio.sleep(0.005)
    finally:
        admin.close()
    events = await client.events(60, "design.updated", timeout=15)
    assert [e["data"]["n"] for e in events] == list(range(60))
    assert [e["offset"] for e in events] == list(range(1, 61))


@pytest.fixture
def subprocess_node(redis_url: str, key_prefix: str) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.realtime.node_main",
            "--port",
            str(port),
            "--redis",
            redis_url,
            "--prefix",
            key_prefix,
            "--presence-ttl",
            "0.6",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None and b"ready" in proc.stdout.readline()
    yield port, proc
    if proc.poll() is None:
        proc.terminate()
        proc.wait(10)


@pytest.mark.gen_test(timeout=30)
async def test_a_real_second_process(make_node, subprocess_node: tuple[int, subprocess.Popen[bytes]]) -> None:
    port, proc = subprocess_node
    here = await make_node("redis", presence_ttl=0.6)
    remote_url = f"ws://127.0.0.1:{port}/ws/"
    alice = await Client.connect(here.url, token="alice-token")
    bob = await Client.connect(remote_url, codec="msgpack", token="bob-token")
    for client in (alice, bob):
        await client.ok("subscribe", channel="review:77")
    await here.publish("review:77", "markup.created", {"from": "here"})
    await bob.ok("markup.create", channel="review:77", data={"from": "there"})
    for client in (alice, bob):
        events = await client.events(2, "markup.created")
        assert [e["data"]["from"] for e in events] == ["here", "there"]
    members = (await alice.ok("presence", channel="review:77"))["members"]
    assert sorted(m["user"]["username"] for m in members) == ["alice", "bob"]

    # A process that dies without a goodbye: its presence entries expire and someone announces the leave.
    proc.kill()
    proc.wait(10)
    left = await alice.next_event("presence.leave", timeout=10)
    assert left["data"]["user"]["username"] == "bob" and left["data"]["reason"] == "timeout"
