"""Health endpoints: liveness for load balancers and a detailed check of every dependency."""

from __future__ import annotations

from typing import Any

from handlers.base import SESSION_COOKIE, APIHandler, public
from models.database import utcnow
from models.errors import APIError
from models.health import check_database, check_redis


class HealthHandler(APIHandler):
    """GET: liveness, with no dependency checked (load balancers)."""

    rate_limited = False  # load balancers probe often and anonymously

    @public
    async def get(self) -> None:
        self.write_json({"status": "ok", "service": "enginel"})


class DetailedHealthHandler(APIHandler):
    """GET: the database, Redis, analysis workers and the cluster of processes checked; 503 "degraded" when one
    is failing or the live processes disagree."""

    rate_limited = False

    @public
    async def get(self) -> None:
        services = self.services
        # The database and Redis answer for every caller at most once per HEALTH_CACHE_SECONDS; the workers
        # are this process's own and cost nothing to ask.
        probed = await services.health.get(self._probe_dependencies)
        checks: dict[str, Any] = dict(probed["checks"])
        if services.pool is not None:
            stats = services.pool.stats()
            checks["workers"] = "ok" if stats["alive"] > 0 else "no live analysis workers"
        else:
            checks["workers"] = "disabled"
        healthy = all(value in ("ok", "disabled") for value in checks.values())
        document: dict[str, Any] = {"status": "", "checks": checks, "checked_at": probed["checked_at"]}
        if services.cluster is not None:
            document["cluster"] = await services.cluster.report(staff=await self._staff_caller())
            healthy = healthy and document["cluster"]["status"] == "ok"
        document.update(status="healthy" if healthy else "degraded", timestamp=utcnow())
        self.write_json(document, status=200 if healthy else 503)

    async def _staff_caller(self) -> bool:
        """Whether the caller is authenticated platform staff, who see hosts, pids and paths; anyone else,
        a wrong credential included, gets the summary (the endpoint stays public for probes)."""
        if not self.request.headers.get("Authorization") and not self.get_cookie(SESSION_COOKIE):
            return False
        try:
            return (await self._authenticate()).is_staff
        except APIError:
            return False

    async def _probe_dependencies(self) -> dict[str, Any]:
        checks: dict[str, Any] = {"database": await check_database(self.services.db)}
        if self.services.redis is not None:
            checks["redis"] = await check_redis(self.services.redis)
        return {"checks": checks, "checked_at": utcnow()}


routes = [
    (r"/api/health/", HealthHandler),
    (r"/api/health/detailed/", DetailedHealthHandler),
]
