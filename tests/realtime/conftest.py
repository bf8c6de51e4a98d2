"""Live realtime servers for socket tests: real Tornado, sockets and Redis; only identity and policy are stand-ins."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
import tornado.netutil
import tornado.web
from tornado.httpserver import HTTPServer

from handlers import websocket
from realtime import BrokerConfig, Gateway, InProcessBroker, RealtimeConfig
from realtime.broker import Broker
from realtime.redis_broker import RedisBroker
from tests.realtime.standins import Policy, make_commands


@dataclass
class Node:
    """One live server: its gateway, port and ws:// URL."""

    gateway: Gateway
    port: int
    server: HTTPServer
    policy: Policy

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/"

    async def publish(self, channel: str, event: str, data: dict[str, Any]) -> tuple[str, int]:
        return await self.gateway.publish(channel, event, data)


@pytest.fixture(params=["memory", "redis"])
def broker_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def key_prefix() -> str:
    """One Redis key space per test: the redis-server is shared by the session."""
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
def make_broker(redis_url: str, key_prefix: str) -> Callable[..., Broker]:
    def factory(kind: str, **config: Any) -> Broker:
        broker_config = BrokerConfig(**config)
        if kind == "redis":
            return RedisBroker(redis_url, prefix=key_prefix, config=broker_config)
        return InProcessBroker(broker_config)

    return factory


@pytest.fixture
def make_node(io_loop: Any, make_broker: Callable[..., Broker]) -> Iterator[Callable[..., Any]]:
    """`await make_node(kind, broker=..., **realtime_config)`: a started server on a free port."""
    nodes: list[Node] = []

    async def factory(
        kind: str = "memory",
        *,
        broker: Broker | None = None,
        policy: Policy | None = None,
        history_size: int = 2000,
        history_ttl: float = 600.0,
        presence_ttl: float = 60.0,
        cookie_secret: str | None = None,
        **config: Any,
    ) -> Node:
        policy = policy or Policy()
        broker = broker or make_broker(
            kind, history_size=history_size, history_ttl=history_ttl, presence_ttl=presence_ttl
        )
        ref: list[Gateway] = []
        gateway = Gateway(
            broker,
            authenticate=policy.authenticate,
            authorize=policy.authorize,
            commands=make_commands(policy, ref),
            refresh_principal=policy.refresh,
            config=RealtimeConfig(**config),
        )
        ref.append(gateway)
        await gateway.start()
        # Only what the handler reads (services.realtime); the real Services needs a database.
        services = SimpleNamespace(realtime=gateway)
        app = tornado.web.Application(websocket.routes, services=services, cookie_secret=cookie_secret)
        server = HTTPServer(app)
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        server.add_sockets(sockets)
        node = Node(gateway, sockets[0].getsockname()[1], server, policy)
        nodes.append(node)
        return node

    yield factory

    async def stop() -> None:
        for node in nodes:
            node.server.stop()
            await node.gateway.stop()

    io_loop.run_sync(stop, timeout=30)
