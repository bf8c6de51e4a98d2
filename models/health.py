"""Dependency probes for the detailed health check, each bounded in time and never raising."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from models.database import Db

PROBE_TIMEOUT = 2.0


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
