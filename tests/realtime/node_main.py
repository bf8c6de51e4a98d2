"""A realtime server process for the cross-process tests: `python -m tests.realtime.node_main --port P --redis URL`."""

from __future__ import annotations

import argparse
import asyncio
import signal
from types import SimpleNamespace

import tornado.web
from tornado.httpserver import HTTPServer

from handlers import websocket
from realtime import BrokerConfig, Gateway, RealtimeConfig
from realtime.redis_broker import RedisBroker
from tests.realtime.standins import Policy, make_commands


async def serve(port: int, redis_url: str, prefix: str, presence_ttl: float, history_size: int) -> None:
    policy = Policy()
    ref: list[Gateway] = []
    config = BrokerConfig(presence_ttl=presence_ttl, history_size=history_size)
    broker = RedisBroker(redis_url, prefix=prefix, config=config)
    gateway = Gateway(
        broker,
        authenticate=policy.authenticate,
        authorize=policy.authorize,
        commands=make_commands(policy, ref),
        config=RealtimeConfig(),
    )
    ref.append(gateway)
    await gateway.start()
    server = HTTPServer(tornado.web.Application(websocket.routes, services=SimpleNamespace(realtime=gateway)))
    server.listen(port, "127.0.0.1")
    print("ready", flush=True)
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    await stopping.wait()
    server.stop()
    await gateway.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--presence-ttl", type=float, default=60.0)
    parser.add_argument("--history-size", type=int, default=2000)
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.redis, args.prefix, args.presence_ttl, args.history_size))
