"""The detailed health check under a flood: one database probe per cache interval, not one per request."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from models.health import HEALTH_CACHE_SECONDS
from tests.helpers import Api


async def database_commands(db: Any) -> int:
    """Commands the database server has run so far (its own counter, as `serverStatus` reports it)."""
    status = await db.command("serverStatus")
    return int(status["opcounters"]["command"])


@pytest.mark.gen_test(timeout=120)
async def test_a_flood_of_detailed_checks_barely_reaches_the_database(api: Api, db: Any) -> None:
    """Issue 10, also found: /api/health/detailed/ pinged the database on every call, so anyone could make the
    database work at the rate they send requests. Now 300 anonymous calls within seconds cost about one ping
    per HEALTH_CACHE_SECONDS, and every answer says when its check ran."""
    before = await database_commands(db)
    started = time.monotonic()
    answers = []
    for _ in range(3):
        answers += await asyncio.gather(*[api.get("/api/health/detailed/") for _ in range(100)])
    elapsed = time.monotonic() - started
    ran = await database_commands(db) - before - 1  # less the serverStatus that read the counter
    assert all(a.status == 200 and a.json["checks"]["database"] == "ok" for a in answers)
    intervals = elapsed / HEALTH_CACHE_SECONDS + 1
    assert ran <= 2 * intervals + 5, f"{ran} database commands for {len(answers)} checks in {elapsed:.1f} s"
    checked = {a.json["checked_at"] for a in answers}
    assert len(checked) <= intervals + 1
    # Past the interval the next call checks again.
    await asyncio.sleep(HEALTH_CACHE_SECONDS + 0.1)
    fresh = await api.get("/api/health/detailed/")
    assert fresh.json["checked_at"] > max(checked)
