"""Entry point: reads settings, starts embedded services, builds the Application, serves, shuts down in order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import redis.asyncio as aioredis
import tornado.httpserver
import tornado.netutil
import tornado.web

from config import Settings, load_settings
from handlers import audit as audit_handlers
from handlers import auth, designs, health, invitations, materials, organizations, users, viewables, web, websocket
from handlers import bom as bom_handlers
from handlers import jobs as job_handlers
from handlers import markups as markup_handlers
from handlers import reviews as review_handlers
from handlers import revisions as revision_handlers
from handlers.base import NotFoundHandler, Services, unmarked_methods
from models import units
from models.audit import AuditTrail, index_legacy_entries, label_legacy_entries
from models.bcf import BcfExport
from models.bom import BomNodes
from models.channels import ChannelPolicy, event_visible
from models.cluster import EXIT_REFUSED, ClusterConfig, ClusterMember, ClusterRefused
from models.commands import socket_commands
from models.content import ContentStore
from models.database import EmbeddedMongo, connect, ensure_indexes, ensure_instance
from models.designs import Designs
from models.embedded_db import DirectoryInUse
from models.errors import APIError, ServiceUnavailable
from models.events import Publisher
from models.gates import Gates
from models.identity import Identity, IdentityConfig
from models.invitations import InvitationConfig, Invitations
from models.jobs import Jobs
from models.markups import Markups
from models.materials import Materials
from models.organizations import Organizations
from models.policy import Principal
from models.quota import StorageQuota
from models.ratelimit import MemoryRateLimiter, RateLimiter, RedisRateLimiter, SocketLimits
from models.reviews import Reviews
from models.revisions import Revisions
from models.series import Series
from models.storage import make_storage
from models.timeline import Timeline
from models.users import Users
from models.viewables import Viewables
from processing.compare import compare_revisions
from processing.pool import ProcessPool
from processing.runner import JobRunner, RevisionOptions, ViewableOptions
from realtime import Broker, BrokerConfig, Credential, Gateway, InProcessBroker, RealtimeConfig
from realtime.redis_broker import RedisBroker

log = logging.getLogger("enginel")


def routes() -> list[tuple[str, type[tornado.web.RequestHandler]]]:
    """Every handler module ends with its route table; this joins them."""
    return [
        *health.routes,
        *auth.routes,
        *users.routes,
        *organizations.routes,
        *invitations.routes,
        *designs.routes,
        *materials.routes,
        *audit_handlers.routes,
        *review_handlers.routes,
        *revision_handlers.routes,
        *markup_handlers.routes,
        *job_handlers.routes,
        *bom_handlers.routes,
        *viewables.routes,
        *websocket.routes,
        *web.routes,
    ]


def make_gateway(settings: Settings, limiter: RateLimiter, services: Callable[[], Services | None]) -> Gateway:
    """The realtime gateway over the in-process or Redis broker, authenticating and authorizing with the same
    identity and policy code as REST, and counting sockets and commands with the same rate limiter. It exists
    before the repositories (they publish through it), so it reaches them through `services`, which is None
    until start-up completes and again during shutdown."""
    broker_config = BrokerConfig(
        history_size=settings.realtime_history_size,
        history_ttl=settings.realtime_history_ttl,
        presence_ttl=settings.realtime_presence_ttl,
        max_event_bytes=settings.realtime_max_event_bytes,
    )
    broker: Broker = (
        RedisBroker(settings.redis_url, prefix=settings.realtime_redis_prefix, config=broker_config)
        if settings.redis_url
        else InProcessBroker(broker_config)
    )

    def running() -> Services:
        svc = services()
        if svc is None:
            raise ServiceUnavailable("The server is starting or shutting down.")
        return svc

    async def authenticate(credential: Credential) -> Principal:
        identity = running().identity
        if credential.kind == "api_key":
            return await identity.authenticate_api_key(credential.secret)
        principal = await identity.authenticate_token(credential.secret)
        if credential.kind == "session":
            principal.via = "cookie"
        return principal

    async def authorize(principal: Principal, channel: str) -> None:
        await running().channels.authorize(principal, channel)

    async def refresh(principal: Principal) -> Principal | None:
        # Same session or key, current attributes: a revoked session or disabled user ends the connection.
        try:
            fresh = await running().identity.refresh_principal(principal)
        except APIError:
            return None
        return fresh

    return Gateway(
        broker,
        authenticate=authenticate,
        authorize=authorize,
        refresh_principal=refresh,
        event_visible=event_visible,
        limits=SocketLimits(
            limiter,
            per_user=settings.realtime_max_sockets_per_user,
            per_address=settings.realtime_max_unauthenticated_per_address,
            per_hour=settings.rate_limit_per_hour,
            per_minute=settings.rate_limit_per_minute,
        ),
        config=RealtimeConfig(
            allowed_origins=tuple(settings.realtime_allowed_origins),
            trusted_proxies=tuple(settings.trusted_proxies),
            auth_timeout=settings.realtime_auth_timeout,
            max_message_bytes=settings.realtime_max_message_bytes,
            max_subscriptions=settings.realtime_max_subscriptions,
            commands_per_second=settings.realtime_commands_per_second,
            command_burst=settings.realtime_command_burst,
            max_pending_bytes=settings.realtime_max_pending_bytes,
            ping_interval=settings.realtime_ping_interval,
            ping_timeout=min(
                settings.realtime_ping_timeout, settings.realtime_ping_interval or settings.realtime_ping_timeout
            ),
        ),
    )


def cluster_config(settings: Settings) -> ClusterConfig:
    return ClusterConfig(
        storage_backend=settings.storage_backend,
        files_dir=settings.files_dir.absolute(),
        workers=settings.workers,
        redis_prefix=settings.realtime_redis_prefix,
        heartbeat_interval=settings.cluster_heartbeat_interval,
        heartbeat_expiry=settings.cluster_heartbeat_expiry,
        allow_unshared_broker=settings.allow_unshared_broker,
    )


def make_app(services: Services) -> tornado.web.Application:
    table = routes()
    missing = unmarked_methods(table)
    if missing:
        # A method that does not say whether it needs authentication is refused at start-up, not served open.
        raise RuntimeError("handler methods without @public or @authenticated: " + ", ".join(missing))
    return tornado.web.Application(
        table,
        services=services,
        default_handler_class=NotFoundHandler,
        cookie_secret=services.secret,
        compress_response=True,
        xsrf_cookies=False,
    )


class Runtime:
    """Owns the process's services: starts them in dependency order and stops them in reverse.

    `observe`, when given, is handed the gateway and returns the publisher the repositories get instead: tests
    pass a recorder that notes every event on its way to the gateway."""

    def __init__(self, settings: Settings, *, observe: Callable[[Publisher], Publisher] | None = None) -> None:
        self.settings = settings
        self.observe = observe
        self.embedded: EmbeddedMongo | None = None
        self.services: Services | None = None
        self._housekeeping: asyncio.Task[None] | None = None

    async def start(self) -> Services:
        """Connect, build every repository around one publisher, start the gateway and, if configured, workers."""
        settings = self.settings
        uri = settings.mongodb_uri
        if uri is None:
            self.embedded = EmbeddedMongo(settings.db_dir, settings.embedded_db_start_timeout)
            uri = await self.embedded.start()
        mongo = connect(uri)
        db = mongo[settings.mongodb_database]
        redis = None
        storage = make_storage(settings.storage_backend, root=settings.files_dir, db=db)
        try:
            await ensure_indexes(db)
            instance = await ensure_instance(db)
            await label_legacy_entries(db)  # audit entries written before labels existed, once
            await index_legacy_entries(db)  # and before search_text existed, once
            if settings.redis_url:
                redis = aioredis.from_url(settings.redis_url)
                await redis.ping()
            # Before anything serves: a process that must not run beside its peers stops here (ClusterRefused).
            cluster = ClusterMember(db, cluster_config(settings), storage, redis)
            await cluster.join()
        except BaseException:
            if redis is not None:
                await redis.aclose()
            await mongo.close()
            if self.embedded:
                self.embedded.stop()
            raise
        limiter: RateLimiter = RedisRateLimiter(redis) if redis is not None else MemoryRateLimiter()
        # The gateway first: every repository announces through it (or through the observer in front of it).
        gateway = make_gateway(settings, limiter, lambda: self.services)
        publisher: Publisher = self.observe(gateway) if self.observe else gateway
        identity = Identity(
            db,
            IdentityConfig(
                access_ttl=settings.access_token_ttl,
                refresh_ttl=settings.refresh_token_ttl,
                max_failures=settings.login_max_failures,
                lockout_seconds=settings.login_lockout_seconds,
                argon2_time_cost=settings.argon2_time_cost,
                argon2_memory_kib=settings.argon2_memory_kib,
                max_api_keys=settings.max_api_keys_per_user,
            ),
            publisher=publisher,
        )
        contents = ContentStore(db, storage)
        series = Series(db)
        materials = Materials(db)
        orgs = Organizations(db, self_service=settings.self_service_organizations, publisher=publisher)
        designs = Designs(
            db,
            storage,
            publisher,
            secret=instance["secret"],
            max_upload_bytes=settings.max_upload_bytes,
            series=series,
            materials=materials,
            contents=contents,
            quota=StorageQuota(db),
            upload_ttl=timedelta(seconds=settings.upload_url_ttl),
            max_concurrent_uploads=settings.max_concurrent_uploads,
        )
        reviews = Reviews(db, publisher, designs, identity.passwords)
        markups = Markups(db, publisher, reviews)
        jobs = Jobs(db, designs, publisher)
        bom = BomNodes(db, designs, publisher)
        viewables = Viewables(db, designs, publisher, max_retries=settings.job_max_retries)
        # Compare is a pure function of processing/ over stored figures; models/ get it handed in.
        revisions = Revisions(db, designs, markups, publisher, compare_revisions, max_retries=settings.job_max_retries)
        designs.dependants.append(revisions)
        gates = Gates(db, revisions, reviews, publisher)
        reviews.hooks = gates
        timeline = Timeline(db, reviews)
        self.services = Services(
            settings=settings,
            mongo=mongo,
            db=db,
            redis=redis,
            secret=instance["secret"],
            identity=identity,
            orgs=orgs,
            invitations=Invitations(
                db,
                orgs,
                InvitationConfig(
                    ttl_seconds=settings.invitation_ttl, max_pending_per_org=settings.max_pending_invitations
                ),
            ),
            users=Users(db, identity, orgs, publisher=publisher),
            limiter=limiter,
            storage=storage,
            series=series,
            materials=materials,
            designs=designs,
            reviews=reviews,
            markups=markups,
            jobs=jobs,
            bom=bom,
            audit=AuditTrail(db),
            channels=ChannelPolicy(designs=designs, reviews=reviews, jobs=jobs, orgs=orgs, timeline=timeline),
            viewables=viewables,
            revisions=revisions,
            gates=gates,
            timeline=timeline,
            bcf=BcfExport(db, reviews, designs),
            realtime=gateway,
            publisher=publisher,
            cluster=cluster,
        )
        for name, command in socket_commands(reviews, markups).items():
            gateway.add_command(name, command)
        await gateway.start()
        # Leftovers of uploads a crashed process abandoned, and pint's registry (0.7 s) off the first request.
        await contents.count_existing()
        await storage.purge_incomplete()
        await asyncio.to_thread(units.registry)
        if settings.bootstrap_admin and await identity.bootstrap_admin(settings.bootstrap_admin):
            log.info("created platform admin %r", settings.bootstrap_admin.split(":", 1)[0])
        if settings.workers > 0:
            # OpenCascade is imported once per worker at start, not inside the first job's timeout.
            self.services.pool = ProcessPool(
                settings.workers,
                preload=("processing.cad", "processing.geodiff"),
                memory_limit_mb=settings.worker_memory_mb,
            )
            await self.services.pool.start()
            self.services.runner = JobRunner(
                db,
                self.services.pool,
                storage,
                designs,
                bom=bom,
                publisher=publisher,
                timeout=settings.job_timeout_seconds,
                max_retries=settings.job_max_retries,
                lease_seconds=settings.job_lease_seconds,
                poll_interval=settings.job_poll_interval,
                viewables=self.services.viewables,
                viewable_options=ViewableOptions(
                    max_triangles=settings.viewable_max_triangles,
                    relative_deflection=settings.viewable_relative_deflection,
                ),
                revisions=revisions,
                revision_options=RevisionOptions(
                    part_seconds=settings.diff_part_seconds,
                    tolerance_mm=settings.markup_carry_tolerance_mm,
                    orphan_distance_mm=settings.markup_orphan_distance_mm,
                ),
            )
            await self.services.runner.start()
        self._housekeeping = asyncio.create_task(self._housekeep(self.services))
        cluster.start()
        return self.services

    async def _housekeep(self, services: Services) -> None:
        """Every ENGINEL_UPLOAD_PURGE_INTERVAL: purge expired uploads (a bounded batch a pass) and temporary files
        of crashed uploads. Every process runs it; each removal is claimed atomically, so they never collide."""
        while True:
            await asyncio.sleep(services.settings.upload_purge_interval)
            try:
                purged = await services.designs.purge_expired_uploads()
                await services.storage.purge_incomplete()
                if purged:
                    log.info("purged %d expired uploads", purged)
            except Exception:
                log.exception("purging expired uploads failed; trying again next pass")

    async def leave_cluster(self) -> None:
        """Drop out of the process registry: a stopping process is no peer for one starting meanwhile."""
        if self.services is not None and self.services.cluster is not None:
            await self.services.cluster.leave()

    async def stop(self) -> None:
        await self.leave_cluster()
        services, self.services = self.services, None
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._housekeeping
            self._housekeeping = None
        if services is not None:
            services.realtime.close_all()  # "going away" (1001): clients reconnect elsewhere with since
            if services.runner is not None:
                await services.runner.stop()  # requeues running jobs while the pool still runs
            if services.pool is not None:
                await services.pool.close()
            await services.realtime.stop()
            if services.redis is not None:
                await services.redis.aclose()
            await services.mongo.close()
        if self.embedded is not None:
            self.embedded.stop()
            self.embedded = None


async def serve(settings: Settings) -> None:
    runtime = Runtime(settings)
    services = await runtime.start()
    try:
        app = make_app(services)
        server = tornado.httpserver.HTTPServer(
            # body_timeout bounds a whole request body, so it must allow a 2 GiB upload on a slow link.
            app,
            xheaders=False,
            idle_connection_timeout=120,
            body_timeout=3600,
            # Handlers bound their own bodies (JSON limit, declared upload size); this is the outer wall.
            max_body_size=settings.max_upload_bytes + 1024 * 1024,
        )
        sockets = tornado.netutil.bind_sockets(settings.port, settings.host, reuse_port=settings.reuse_port)
        server.add_sockets(sockets)
        port = sockets[0].getsockname()[1]
        host = settings.host if ":" not in settings.host else f"[{settings.host}]"
        log.info("Enginel serving on http://%s:%s/", host, port)

        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopping.set)
        await stopping.wait()
        log.info("shutting down")
        await runtime.leave_cluster()
        server.stop()  # stop accepting
        services.realtime.close_all()  # sockets leave with 1001 "going away" instead of holding the grace period
        try:
            await asyncio.wait_for(server.close_all_connections(), settings.shutdown_grace_seconds)
        except TimeoutError:
            log.warning("connections still open after %ss; closing anyway", settings.shutdown_grace_seconds)
    finally:
        await runtime.stop()
        log.info("stopped")


def main(argv: list[str] | None = None) -> int:
    settings = load_settings(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(serve(settings))
    except KeyboardInterrupt:
        pass
    except DirectoryInUse as exc:
        log.error("%s", exc)
        return 1
    except ClusterRefused as exc:
        log.error("%s", exc)
        return EXIT_REFUSED
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__: list[Any] = ["Runtime", "make_app", "main", "routes", "serve"]
