"""The broker contract, run against both implementations: offsets, history, recovery bounds, presence, control."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from realtime.broker import Broker
from realtime.events import Event, Position


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.control: list[dict[str, Any]] = []
        self.resyncs: list[str] = []

    def on_event(self, event: Event) -> None:
        self.events.append(event)

    def on_control(self, message: dict[str, Any]) -> None:
        self.control.append(message)

    def on_resync(self, channel: str) -> None:
        self.resyncs.append(channel)


async def started(make_broker: Callable[..., Broker], kind: str, **config: Any) -> tuple[Broker, Recorder]:
    broker = make_broker(kind, **config)
    recorder = Recorder()
    broker.attach(recorder)
    await broker.start()
    return broker, recorder


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


@pytest.mark.gen_test
async def test_offsets_increase_within_an_epoch_and_history_replays_in_order(make_broker, broker_kind) -> None:
    broker, recorder = await started(make_broker, broker_kind)
    try:
        tip = (await broker.history("review:1")).position
        assert tip.offset == 0 and tip.epoch
        await broker.listen("review:1")
        results = [await broker.publish("review:1", "markup.created", {"n": n}) for n in range(1, 6)]
        assert results == [(tip.epoch, n) for n in range(1, 6)]
        await until(lambda: len(recorder.events) == 5)
        assert [(e.channel, e.epoch, e.offset, e.data) for e in recorder.events] == [
            ("review:1", tip.epoch, n, {"n": n}) for n in range(1, 6)
        ]

        history = await broker.history("review:1", Position(tip.epoch, 2))
        assert history.recovered is True and history.position == Position(tip.epoch, 5)
        assert [(e.offset, e.event, e.data) for e in history.events] == [
            (n, "markup.created", {"n": n}) for n in (3, 4, 5)
        ]
        assert (await broker.history("review:1", Position(tip.epoch, 5))).events == []
        assert (await broker.history("review:1", Position(tip.epoch, 5))).recovered is True
    finally:
        await broker.close()


@pytest.mark.gen_test
async def test_a_gap_outside_the_history_is_not_recovered(make_broker, broker_kind) -> None:
    broker, _ = await started(make_broker, broker_kind, history_size=3)
    try:
        for n in range(6):
            epoch, _ = await broker.publish("job:9", "job.progress", {"n": n})
        assert (await broker.history("job:9", Position(epoch, 3))).recovered is True
        lost = await broker.history("job:9", Position(epoch, 2))  # offset 3 was trimmed
        assert lost.recovered is False and lost.events == [] and lost.position == Position(epoch, 6)
        assert (await broker.history("job:9", Position("other", 6))).recovered is False  # epoch changed
        assert (await broker.history("job:9", Position(epoch, 7))).recovered is False  # from the future
    finally:
        await broker.close()


@pytest.mark.gen_test
async def test_history_expires_with_age(make_broker, broker_kind) -> None:
    broker, _ = await started(make_broker, broker_kind, history_ttl=0.3)
    try:
        epoch, _ = await broker.publish("design:1", "design.updated", {})
        await broker.publish("design:1", "design.updated", {})
        assert (await broker.history("design:1", Position(epoch, 0))).recovered is True
        await asyncio.sleep(0.45)
        assert (await broker.history("design:1", Position(epoch, 0))).recovered is False
    finally:
        await broker.close()


@pytest.mark.gen_test
async def test_ephemeral_events_have_no_offset_and_no_history(make_broker, broker_kind) -> None:
    broker, recorder = await started(make_broker, broker_kind)
    try:
        await broker.listen("review:2")
        tip = (await broker.history("review:2")).position
        await broker.publish_ephemeral("review:2", "presence.update", {"client": "c"})
        await until(lambda: len(recorder.events) == 1)
        assert recorder.events[0].offset is None and recorder.events[0].epoch is None
        assert (await broker.history("review:2")).position == tip
    finally:
        await broker.close()


@pytest.mark.gen_test
async def test_publish_refuses_bad_names_unserialisable_and_oversized_data(make_broker, broker_kind) -> None:
    broker, _ = await started(make_broker, broker_kind, max_event_bytes=1000)
    try:
        with pytest.raises(ValueError):
            await broker.publish("review:1", "Bad Name", {})
        with pytest.raises(TypeError):
            await broker.publish("review:1", "ok", {"x": object()})
        with pytest.raises(ValueError):
            await broker.publish("review:1", "ok", {"x": float("nan")})  # JSON clients could not parse it
        with pytest.raises(ValueError):
            await broker.publish("review:1", "ok", {"x": "y" * 2000})
        assert (await broker.history("review:1")).position.offset == 0
    finally:
        await broker.close()


@pytest.mark.gen_test
async def test_presence_entries_list_remove_and_expire(make_broker, broker_kind) -> None:
    broker, _ = await started(make_broker, broker_kind, presence_ttl=0.3)
    try:
        await broker.presence_set("review:1", "a", {"client": "a", "user": {"id": 1}})
        await broker.presence_set("review:1", "b", {"client": "b", "user": {"id": 2}})
        assert sorted(m["client"] for m in await broker.presence_list("review:1")) == ["a", "b"]
        assert await broker.presence_remove("review:1", "a") is True
        assert await broker.presence_remove("review:1", "a") is False
        await asyncio.sleep(0.2)
        await broker.presence_set("review:1", "c", {"client": "c", "user": {"id": 3}})
        await asyncio.sleep(0.15)
        assert [m["client"] for m in await broker.presence_list("review:1")] == ["c"]  # b expired
        assert [m["client"] for m in await broker.presence_expire("review:1")] == ["b"]
        assert await broker.presence_expire("review:1") == []  # removed once
    finally:
        await broker.close()


@pytest.mark.gen_test
async def test_control_messages_reach_every_broker(make_broker, broker_kind) -> None:
    broker, recorder = await started(make_broker, broker_kind)
    try:
        await broker.control({"op": "revoke", "user": 1})
        await until(lambda: recorder.control == [{"op": "revoke", "user": 1}])
    finally:
        await broker.close()


@pytest.mark.gen_test
async def test_redis_brokers_share_offsets_and_fan_out_only_where_listened(make_broker) -> None:
    one, first = await started(make_broker, "redis")
    two, second = await started(make_broker, "redis")
    try:
        await two.listen("review:5")
        await one.publish("review:5", "a", {})
        await two.publish("review:5", "b", {})
        await one.publish("review:6", "c", {})
        await until(lambda: len(second.events) == 2)
        assert [(e.event, e.offset) for e in second.events] == [("a", 1), ("b", 2)]
        await two.unlisten("review:5")
        await one.publish("review:5", "d", {})
        await one.control({"op": "x"})
        await until(lambda: {"op": "x"} in second.control)
        assert len(second.events) == 2 and first.events == []
    finally:
        await one.close()
        await two.close()


@pytest.mark.gen_test
async def test_redis_listen_and_unlisten_converge_whatever_their_order(make_broker) -> None:
    broker, recorder = await started(make_broker, "redis")
    try:
        # An unlisten that runs after a newer listen must not drop the channel the newer one wants.
        await asyncio.gather(broker.listen("review:7"), broker.unlisten("review:7"), broker.listen("review:7"))
        await broker.publish("review:7", "still.listening", {})
        await until(lambda: len(recorder.events) == 1)
    finally:
        await broker.close()


@pytest.mark.gen_test
async def test_an_idle_channel_is_dropped_and_restarts_in_a_new_epoch(make_broker, broker_kind) -> None:
    broker, _ = await started(make_broker, broker_kind, history_ttl=0.2)
    try:
        first, offset = await broker.publish("org:1", "org.updated", {})
        assert offset == 1
        await asyncio.sleep(0.3)
        second, offset = await broker.publish("org:1", "org.updated", {})
        assert second != first and offset == 1
        assert (await broker.history("org:1", Position(first, 1))).recovered is False
    finally:
        await broker.close()
