"""Realtime: broker (in-process, Redis), channels, presence, history and recovery, and the WebSocket protocol."""

from realtime.broker import Broker, BrokerConfig, InProcessBroker, Publisher
from realtime.events import Event, History, Position
from realtime.gateway import Gateway
from realtime.protocol import RealtimeConfig
from realtime.session import Credential, Principal, Session

__all__ = [
    "Broker",
    "BrokerConfig",
    "Credential",
    "Event",
    "Gateway",
    "History",
    "InProcessBroker",
    "Position",
    "Principal",
    "Publisher",
    "RealtimeConfig",
    "RedisBroker",
    "Session",
]


def __getattr__(name: str) -> object:
    # redis is imported only by processes that use it.
    if name == "RedisBroker":
        from realtime.redis_broker import RedisBroker

        return RedisBroker
    raise AttributeError(name)
