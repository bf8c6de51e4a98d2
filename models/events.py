"""The publisher interface through which models/ announce domain events and access changes; server.py
injects the realtime gateway, which implements it."""

from __future__ import annotations

import logging
from typing import Any, Protocol

log = logging.getLogger("enginel.events")


class Publisher(Protocol):
    async def publish(self, channel: str, event: str, data: dict[str, Any]) -> Any: ...

    async def access_changed(self, user_id: int | None, reason: str = "access_changed") -> None:
        """Re-check live subscriptions (of one user, or everyone's when None) against the policy."""

    async def user_disabled(self, user_id: int, reason: str = "account disabled") -> None:
        """Close the user's live connections."""


class NullPublisher:
    """Used where no broker is wired (unit tests of models); events go nowhere."""

    async def publish(self, channel: str, event: str, data: dict[str, Any]) -> None:
        return None

    async def access_changed(self, user_id: int | None, reason: str = "access_changed") -> None:
        return None

    async def user_disabled(self, user_id: int, reason: str = "account disabled") -> None:
        return None


async def announce(publisher: Publisher, channels: list[str], event: str, data: dict[str, Any]) -> None:
    """Publish to each channel; a broker failure is logged, never allowed to undo a committed write."""
    for channel in channels:
        try:
            await publisher.publish(channel, event, data)
        except Exception:
            log.exception("could not publish %s on %s", event, channel)


async def access_changed(publisher: Publisher, user_id: int | None, reason: str) -> None:
    """Tell live connections that access changed; like announce(), never fails the committed write."""
    try:
        await publisher.access_changed(user_id, reason)
    except Exception:
        log.exception("could not propagate an access change (%s)", reason)


async def user_disabled(publisher: Publisher, user_id: int, reason: str) -> None:
    try:
        await publisher.user_disabled(user_id, reason)
    except Exception:
        log.exception("could not disconnect user %s (%s)", user_id, reason)
