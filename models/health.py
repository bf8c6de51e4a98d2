"""Dependency probes for the detailed health check, each bounded in time and never raising, and their cache."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

from models.database import Db

PROBE_TIMEOUT = 2.0
# The detailed check is public: within this many seconds every caller gets the same result, so a flood of
# requests costs the database one ping per interval, not one per request.
HEALTH_CACHE_SECONDS = 1.0


async def check_database(db: Db) -> str:
    try:
        await asyncio.wait_for(db.command("ping"), PROBE_TIMEOUT)
        return "ok"
    except Exception as exc:  # a probe reports, it never fails the request
        return f"error: {type(exc).__name__}"


async def check_redis(redis: Redis) -> str:
    try:
        await asyncio.wait_for(redis.ping(), PROBE_TIMEOUT)
        return "ok"
    except Exception as exc:
        return f"error: {type(exc).__name__}"


class CachedProbe:
    """One probe result shared by every caller for `ttl` seconds; callers arriving while a probe runs wait for
    that probe instead of starting another."""

    def __init__(self, ttl: float = HEALTH_CACHE_SECONDS) -> None:
        self.ttl = ttl
        self._result: dict[str, Any] | None = None
        self._at = 0.0
        self._running: asyncio.Task[dict[str, Any]] | None = None

    async def get(self, probe: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        if self._result is not None and time.monotonic() - self._at < self.ttl:
            return self._result
        if self._running is None:
            self._running = asyncio.ensure_future(probe())
            self._running.add_done_callback(self._store)
        return await asyncio.shield(self._running)

    def _store(self, task: asyncio.Task[dict[str, Any]]) -> None:
        self._running = None
        if not task.cancelled() and task.exception() is None:
            self._result, self._at = task.result(), time.monotonic()
