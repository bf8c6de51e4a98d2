"""The publisher interface through which models/ announce domain events; server.py injects the broker."""
from __future__ import annotations

import logging
from typing import Any, Protocol

log = logging.getLogger("enginel.events")


class Publisher(Protocol):
    async def publish(self, channel: str, event: str, data: dict[str, Any]) -> Any: ...


class NullPublisher:
    """Used where no broker is wired (unit tests of models); events go nowhere."""

    async def publish(self, channel: str, event: str, data: dict[str, Any]) -> None:
        return None


async def announce(publisher: Publisher, channels: list[str], event: str, data: dict[str, Any]) -> None:
    """Publish to each channel; a broker failure is logged, never allowed to undo a committed write."""
    for channel in channels:
        try:
            await publisher.publish(channel, event, data)
        except Exception:
            log.exception("could not publish %s on %s", event, channel)
