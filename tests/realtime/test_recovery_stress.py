"""Exactly-once recovery under stress: subscribe-with-since cycles race a live publisher on a loaded machine."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from models.database import free_port
from tests.realtime.client import Client

REPO = Path(__file__).resolve().parents[2]
# Seconds each scenario keeps cycling; `make stress-realtime` raises it (see the Makefile).
SECONDS = float(os.environ.get("REALTIME_STRESS_SECONDS", "2"))
MIN_CYCLES = 20  # ... and at least this many cycles, however slow the machine
LIVE = 6  # live events a recovering client receives after its replay before it leaves again
CHANNEL = "review:stress"

Publish = Callable[[str, str, dict[str, Any]], Awaitable[tuple[str, int]]]


@contextlib.contextmanager
def cpu_load() -> Iterator[None]:
    """A busy process on one core and a busy thread in this process, whose event loop serves the in-process
    servers: reads from sockets are then delayed unevenly, which is what widens the races at the seam."""
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            sum(range(1000))

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        burner.kill()
        burner.wait()


class Publisher:
    """Publishes {"n": 1}, {"n": 2}, ... to a fresh channel as fast as the broker takes them: event n has offset n."""

    def __init__(self, publish: Publish, pause_every: int) -> None:
        self.publish = publish
        self.pause_every = pause_every
        self.count = 0
        self.running = True
        self.task: asyncio.Future[None] | None = None

    async def _run(self) -> None:
        while self.running:
            _, offset = await self.publish(CHANNEL, "markup.updated", {"n": self.count + 1})
            self.count += 1
            assert offset == self.count, (offset, self.count)
            # An in-process publish costs no round trip: short pauses keep the clients (read in this same
            # process) from falling behind and being dropped as slow consumers.
            await asyncio.sleep(0.002 if self.pause_every and self.count % self.pause_every == 0 else 0)

    def start(self) -> None:
        self.task = asyncio.ensure_future(self._run())

    async def stop(self) -> int:
        self.running = False
        assert self.task is not None
        await self.task
        return self.count


def first_difference(got: list[int], expected: list[int]) -> str:
    pairs = zip(got, expected, strict=False)
    index = next((i for i, (a, b) in enumerate(pairs) if a != b), min(len(got), len(expected)))
    window = slice(max(0, index - 3), index + 4)
    return f"offsets differ at index {index}: got {got[window]}, expected {expected[window]}"


async def recover(client: Client, position: dict[str, Any]) -> dict[str, Any]:
    """Subscribe with `since` while the publisher races: every later event exactly once, in offset order,
    first the replay and then live ones, with no gap or duplicate at the hand-over; returns the new position."""
    reply = await client.ok("subscribe", channel=CHANNEL, since=position)
    assert reply["recovered"] is True and reply["epoch"] == position["epoch"], reply
    assert reply["replayed"] == reply["offset"] - position["offset"], reply
    target = reply["offset"] + LIVE
    events: list[dict[str, Any]] = []
    while not events or events[-1]["offset"] < target:
        events.append(await client.next_event("markup.updated", timeout=30))
    offsets = [e["offset"] for e in events]
    expected = list(range(position["offset"] + 1, target + 1))
    assert offsets == expected, f"{first_difference(offsets, expected)}; subscribe replied {reply}"
    assert [e["data"]["n"] for e in events] == offsets
    assert {e["epoch"] for e in events} == {position["epoch"]}
    return {"epoch": position["epoch"], "offset": target}


async def leave(client: Client, cycle: int) -> Client | None:
    """Alternately unsubscribe (the connection stays) and disconnect: both end the subscription."""
    if cycle % 2:
        client.close()
        return None
    await client.ok("unsubscribe", channel=CHANNEL)
    client.stash.clear()  # events pushed before the unsubscribe reply belong to the finished cycle
    return client


async def observe(client: Client, upto: list[int]) -> int:
    """A subscriber that stays: reads every event as it comes, each exactly once and in order."""
    offset = 0
    while upto[0] == 0 or offset < upto[0]:
        event = await client.next_event("markup.updated", timeout=30)
        assert event["offset"] == offset + 1, f"observer: offset {event['offset']} after {offset}"
        assert event["data"]["n"] == event["offset"]
        offset = event["offset"]
    return offset


async def run_cycles(urls: list[str], publish: Publish, observer_url: str | None = None, pause_every: int = 0) -> int:
    """Subscribe-with-since cycles against `urls` in turn until SECONDS and MIN_CYCLES have both passed."""
    first = await Client.connect(urls[0], token="alice-token")
    start = await first.ok("subscribe", channel=CHANNEL)  # creates the channel's epoch
    assert start["offset"] == 0
    first.close()
    position = {"epoch": start["epoch"], "offset": 0}
    upto = [0]
    watcher = None
    if observer_url is not None:
        observer = await Client.connect(observer_url, token="bob-token")
        assert (await observer.ok("subscribe", channel=CHANNEL))["offset"] == 0
        watcher = asyncio.ensure_future(observe(observer, upto))
    publisher = Publisher(publish, pause_every)
    publisher.start()
    deadline = time.monotonic() + SECONDS
    cycle = connections = 0
    client: Client | None = None
    try:
        while cycle < MIN_CYCLES or time.monotonic() < deadline:
            if watcher is not None and watcher.done():
                watcher.result()  # the observer failed: raise its assertion here
            if client is None:
                client = await Client.connect(urls[connections % len(urls)], token="alice-token")
                connections += 1
            try:
                position = await recover(client, position)
            except AssertionError as exc:
                raise AssertionError(f"cycle {cycle} on {client.conn.request.url}: {exc}") from None
            client = await leave(client, cycle)
            cycle += 1
    finally:
        total = await publisher.stop()
    if watcher is not None:
        upto[0] = total
        assert await asyncio.wait_for(watcher, 60) == total
    return cycle


@pytest.mark.gen_test(timeout=SECONDS * 4 + 120)
async def test_recovery_is_exact_under_a_racing_publisher_on_one_server(make_node, broker_kind) -> None:
    node = await make_node(broker_kind, history_size=100_000)
    with cpu_load():
        cycles = await run_cycles([node.url], node.publish, pause_every=4 if broker_kind == "memory" else 0)
    assert cycles >= MIN_CYCLES


@contextlib.contextmanager
def server_processes(redis_url: str, prefix: str, count: int) -> Iterator[list[str]]:
    """`count` realtime server processes (tests/realtime/node_main.py) on one Redis key space."""
    procs: list[subprocess.Popen[bytes]] = []
    urls = []
    try:
        for _ in range(count):
            port = free_port()
            command = [sys.executable, "-m", "tests.realtime.node_main", "--port", str(port), "--redis", redis_url]
            command += ["--prefix", prefix, "--history-size", "100000"]
            procs.append(subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE))
            assert procs[-1].stdout is not None and b"ready" in procs[-1].stdout.readline()
            urls.append(f"ws://127.0.0.1:{port}/ws/")
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def two_processes(redis_url: str, key_prefix: str) -> Iterator[list[str]]:
    with server_processes(redis_url, key_prefix, 2) as urls:
        yield urls


@pytest.mark.gen_test(timeout=SECONDS * 4 + 120)
async def test_recovery_is_exact_across_two_server_processes_sharing_redis(make_node, two_processes) -> None:
    # The publisher is a third gateway on the same Redis; clients recover alternately on either process,
    # while an observer that never leaves checks the live path of the first process.
    publisher = await make_node("redis", history_size=100_000)
    with cpu_load():
        cycles = await run_cycles(two_processes, publisher.publish, observer_url=two_processes[0])
    assert cycles >= MIN_CYCLES
