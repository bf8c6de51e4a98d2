"""BaseHandler -> APIHandler: the error envelope, request ids, bounded JSON bodies and the auth opt-out marker."""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import logging
import re
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from http import HTTPStatus
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar, cast

import tornado.gen
import tornado.httputil
import tornado.web
from pydantic import BaseModel, ValidationError
from redis.asyncio import Redis
from tornado.iostream import StreamClosedError

from config import Settings
from models import audit
from models.audit import AuditTrail
from models.bcf import BcfExport
from models.bom import BomNodes
from models.channels import ChannelPolicy
from models.cluster import ClusterMember
from models.database import Db, Mongo
from models.designs import Designs
from models.errors import (
    APIError,
    AuthenticationFailed,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    ValidationFailed,
    field_errors_from,
)
from models.events import Publisher
from models.gates import Gates
from models.health import CachedProbe
from models.identity import Identity
from models.invitations import Invitations
from models.jobs import Jobs
from models.listing import Page, parse_fields, project_answer, refuse_unknown
from models.markups import Markups
from models.materials import Materials
from models.organizations import Organizations
from models.policy import Principal, require_write
from models.ratelimit import RateLimiter, caller_key, request_windows
from models.reviews import Reviews
from models.revisions import Revisions
from models.schema import UUID_RE, json_default
from models.series import Series
from models.storage import Storage
from models.timeline import Timeline
from models.transfers import Transfer
from models.users import Users
from models.viewables import Viewables
from realtime.gateway import Gateway

if TYPE_CHECKING:  # built by server.py; handlers only call them, so processing/ stays out of the import graph
    from processing.pool import ProcessPool
    from processing.runner import JobRunner

log = logging.getLogger("enginel.http")
M = TypeVar("M", bound=BaseModel)
F = TypeVar("F", bound=Callable[..., Any])

HTTP_METHODS = ("get", "head", "post", "put", "patch", "delete", "options")
# A UUID path segment, captured: every route with a UUID in it uses this.
UUID = f"({UUID_RE})"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SESSION_COOKIE = "enginel_session"
XSRF_COOKIE = "enginel_xsrf"
XSRF_HEADER = "X-XSRF-Token"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")
# The query parameters a GET takes (APIHandler.query_params). DETAIL: only `fields`, which picks the answer's keys.
# LIST: a list; the list layer (models/listing.py) validates its page, filters, search, ordering and fields.
DETAIL = frozenset({"fields"})
LIST = frozenset({"<list>"})
# Errors that can only come from what the client sent (a body or query that does not parse): a 400, never a 500.
INPUT_ERRORS = (tornado.httputil.HTTPInputError, UnicodeDecodeError)
_STATUS_CODES = {
    400: "VALIDATION_ERROR",
    401: "AUTHENTICATION_FAILED",
    403: "PERMISSION_DENIED",
    404: "RESOURCE_NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    422: "VALIDATION_ERROR",
    429: "RATE_LIMIT_EXCEEDED",
    503: "SERVICE_UNAVAILABLE",
}


@dataclass
class Services:
    """Everything a handler may reach, built by server.py after any fork; no module-level service globals."""

    settings: Settings
    mongo: Mongo
    db: Db
    secret: str  # deployment-wide: signs cookies and upload URLs
    identity: Identity
    orgs: Organizations
    invitations: Invitations
    users: Users
    limiter: RateLimiter
    storage: Storage
    series: Series
    materials: Materials
    designs: Designs
    reviews: Reviews
    markups: Markups
    jobs: Jobs
    bom: BomNodes
    audit: AuditTrail
    channels: ChannelPolicy
    viewables: Viewables
    revisions: Revisions  # compare, geometric diff, carried markups
    gates: Gates  # review rules on property deltas
    timeline: Timeline  # a review's replay
    bcf: BcfExport
    realtime: Gateway  # this process's sockets
    publisher: Publisher  # what the repositories announce through: the gateway (tests put a recorder in front)
    redis: Redis | None = None  # when ENGINEL_REDIS_URL is set
    pool: ProcessPool | None = None  # when this process runs analysis workers
    runner: JobRunner | None = None  # likewise
    health: CachedProbe = field(default_factory=CachedProbe)  # the detailed health check's recent result
    cluster: ClusterMember | None = None  # this process's entry in the process registry


def public(method: F) -> F:
    """Mark a handler method as reachable without authentication; the opt-out is explicit."""
    method.__enginel_auth__ = "public"  # type: ignore[attr-defined]
    return method


def authenticated(method: F) -> F:
    """Mark a handler method as requiring an authenticated caller."""
    method.__enginel_auth__ = "authenticated"  # type: ignore[attr-defined]
    return method


def unmarked_methods(routes: list[Any]) -> list[str]:
    """Handler methods that are neither @public nor @authenticated; start-up refuses to serve them."""
    missing = []
    for route in routes:
        handler = route[1] if isinstance(route, tuple) else route.target
        for name in HTTP_METHODS:
            method = getattr(handler, name, None)
            if method is None or name == "options" or method is getattr(tornado.web.RequestHandler, name):
                continue
            if getattr(method, "__enginel_auth__", None) is None:
                missing.append(f"{handler.__module__}.{handler.__name__}.{name}")
    return missing


def dumps(value: Any) -> str:
    return json.dumps(value, default=json_default, ensure_ascii=False, separators=(",", ":"))


class BaseHandler(tornado.web.RequestHandler):
    """Request ids, client address through trusted proxies, typed access to services."""

    _request_id: str | None = None

    @property
    def services(self) -> Services:
        return self.application.settings["services"]

    @property
    def config(self) -> Settings:
        return self.services.settings

    @property
    def request_id(self) -> str:
        if self._request_id is None:
            inbound = self.request.headers.get("X-Request-ID", "")
            self._request_id = inbound if _REQUEST_ID.match(inbound) else uuid.uuid4().hex
        return self._request_id

    def set_default_headers(self) -> None:
        self.set_header("X-Request-ID", self.request_id)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "no-store")
        self.clear_header("Server")

    @property
    def client_ip(self) -> str:
        return client_address(self.request, self.config.trusted_proxies)

    def base_url(self) -> str:
        if self.config.public_url:
            return self.config.public_url.rstrip("/")
        return f"{self.request.protocol}://{self.request.host}"

    def absolute_url(self, path: str) -> str:
        return self.base_url() + path


def client_address(request: tornado.httputil.HTTPServerRequest, trusted: Sequence[str]) -> str:
    """The caller's address; X-Forwarded-For is believed only when the peer is a configured proxy (REST and the
    WebSocket handshake alike)."""
    remote = request.remote_ip or ""
    if not trusted or not _in_networks(remote, trusted):
        return remote
    hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",") if h.strip()]
    for hop in reversed(hops):  # rightmost address that is not one of our proxies
        if not _in_networks(hop, trusted):
            return hop
    return remote


def _in_networks(address: str, networks: Sequence[str]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    for net in networks:
        try:
            if ip in ipaddress.ip_network(net, strict=False):
                return True
        except ValueError:
            continue
    return False


@tornado.web.stream_request_body
class APIHandler(BaseHandler):
    """JSON API handler: every error leaves as the envelope; bodies are bounded before they are read."""

    _body: bytearray
    _body_overflow: bool
    # Set by the rate limit, kept when an error replaces the other headers; read by clear(), which Tornado
    # calls before initialize(), hence a class default.
    _limit_headers: Mapping[str, str] = MappingProxyType({})

    def initialize(self, **kwargs: Any) -> None:
        self._body = bytearray()
        self._body_overflow = False

    @property
    def body_limit(self) -> int:
        return self.config.max_json_body_bytes

    principal: Principal | None = None
    rate_limited: bool = True  # health probes opt out
    # What the GET's query string may hold: DETAIL, LIST, or the handler's own names (with "fields" among them when
    # its answer is JSON to pick keys from). Anything else is a 400 before the handler runs.
    query_params: frozenset[str] = DETAIL
    _answer_fields: list[str] | None = None  # `fields=` of a GET that is not a list

    async def prepare(self) -> None:
        length = self.request.headers.get("Content-Length")
        if length is not None:
            if not length.isdigit():
                raise ValidationFailed("Invalid Content-Length header.")
            if int(length) > self.body_limit:
                raise PayloadTooLarge(f"The request body is {int(length)} bytes; the limit is {self.body_limit}.")
        # A chunked body has no declared length: stop reading well past the limit instead of forever.
        self.request.connection.set_max_body_size(self.body_limit + 65536)  # type: ignore[union-attr]
        name = (self.request.method or "").lower()
        method = getattr(type(self), name, None)
        implemented = method is not None and method is not getattr(tornado.web.RequestHandler, name, None)
        # An unimplemented method is a 405 for everyone; only implemented ones can need credentials.
        needs_auth = implemented and getattr(method, "__enginel_auth__", "authenticated") != "public"
        if needs_auth:
            self.principal = await self._authenticate()
        if self.rate_limited:
            await self._rate_limit()
        if implemented and self.request.method in SAFE_METHODS and self.query_params is not LIST:
            args = self.request.query_arguments
            refuse_unknown(args, self.query_params)
            self._answer_fields = parse_fields(args) if "fields" in self.query_params else None

    async def _authenticate(self) -> Principal:
        """Token or ApiKey header, else the session cookie (which alone needs the XSRF header to write)."""
        identity = self.services.identity
        header = self.request.headers.get("Authorization", "")
        if header:
            scheme, _, credential = header.partition(" ")
            credential = credential.strip()
            if scheme.lower() in ("token", "bearer") and credential:
                principal = await identity.authenticate_token(credential)
            elif scheme.lower() == "apikey" and credential:
                principal = await identity.authenticate_api_key(credential)
            else:
                raise AuthenticationFailed("Unsupported Authorization header; use Token, Bearer or ApiKey.")
        else:
            cookie = self.get_secure_cookie(SESSION_COOKIE, max_age_days=31)
            if not cookie:
                raise AuthenticationFailed("Authentication credentials were not provided.")
            principal = await identity.authenticate_token(cookie.decode())
            principal.via = "cookie"
            if self.request.method not in SAFE_METHODS:
                # Compared with the token stored with this session, not with a cookie: a cookie another site
                # (or a sibling subdomain) planted next to the session cookie proves nothing.
                sent = self.request.headers.get(XSRF_HEADER, "")
                expected = principal.xsrf or ""
                if not sent or not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
                    raise PermissionDenied(
                        "Missing or wrong XSRF token for a cookie-authenticated request.", code="XSRF_FAILED"
                    )
        if self.request.method not in SAFE_METHODS:
            require_write(principal)
        return principal

    async def _rate_limit(self) -> None:
        cfg = self.config
        # The same key and windows charge WebSocket commands (models/ratelimit.SocketLimits).
        decision = await self.services.limiter.hit(
            caller_key(self.principal, self.client_ip),
            request_windows(cfg.rate_limit_per_hour, cfg.rate_limit_per_minute),
        )
        self._limit_headers = decision.headers()
        for name, value in self._limit_headers.items():
            self.set_header(name, value)
        decision.raise_if_denied("Request")

    @property
    def actor(self) -> audit.Actor:
        p = self.principal
        return audit.Actor(
            p.id if p else None, p.username if p else None, self.client_ip, self.request.headers.get("User-Agent")
        )

    def require_principal(self) -> Principal:
        if self.principal is None:
            raise AuthenticationFailed("Authentication credentials were not provided.")
        return self.principal

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        if not self._body_overflow:
            if len(self._body) + len(chunk) > self.body_limit:
                self._body_overflow = True
                self._body = bytearray()
            else:
                self._body.extend(chunk)
        return None

    @property
    def body(self) -> bytes:
        if self._body_overflow:
            raise PayloadTooLarge(f"The request body exceeds the limit of {self.body_limit} bytes.")
        return bytes(self._body)

    def parse_body(self, model: type[M]) -> M:
        """The body validated against `model` (unknown fields refused); errors become 400 with field_errors."""
        raw = self.body
        ctype = self.request.headers.get("Content-Type", "application/json").split(";")[0].strip().lower()
        if ctype not in ("application/json", "") and not ctype.endswith("+json"):
            raise APIError(
                "Send the body as application/json.",
                status=415,
                code="UNSUPPORTED_MEDIA_TYPE",
                title="Unsupported media type",
            )
        if not raw.strip():
            raw = b"{}"
        try:
            return model.model_validate_json(raw)
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_input=False)
            if errors and errors[0]["type"] == "json_invalid":
                raise ValidationFailed(
                    f"The request body is not valid JSON: {errors[0]['msg']}", title="Malformed JSON"
                ) from None
            if errors and errors[0]["type"] == "model_type" and not errors[0]["loc"]:
                raise ValidationFailed("The request body must be a JSON object.", title="Malformed JSON") from None
            raise ValidationFailed("The request body is not valid.", field_errors=field_errors_from(exc)) from None

    def write_json(self, value: Any, status: int = 200) -> None:
        if isinstance(value, Page):
            for name, header in value.headers.items():
                self.set_header(name, header)
        elif self._answer_fields is not None and 200 <= status < 300:
            value = project_answer(value, self._answer_fields)
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(dumps(value))

    def no_content(self) -> None:
        self.set_status(204)
        self.finish()

    def _allowed_methods(self) -> list[str]:
        return [
            m.upper()
            for m in HTTP_METHODS
            if m != "options" and getattr(type(self), m) is not getattr(tornado.web.RequestHandler, m)
        ]

    def clear(self) -> None:
        # An error response replaces the headers set so far; the caller's remaining budget still applies.
        super().clear()
        for name, value in self._limit_headers.items():
            self.set_header(name, value)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = _as_api_error(kwargs.get("exc_info", (None, None, None))[1])
        if isinstance(exc, APIError):
            body = exc.body()
            status_code = exc.status
            for name, value in exc.headers.items():
                self.set_header(name, value)
        elif isinstance(exc, tornado.web.HTTPError) or exc is None:
            reason = HTTPStatus(status_code).phrase if status_code in HTTPStatus._value2member_map_ else "Error"
            detail = (
                exc.log_message % exc.args
                if exc is not None and exc.log_message and exc.args
                else (exc.log_message if exc is not None and exc.log_message else reason)
            )
            if status_code == 405:
                detail = f"{self.request.method} is not allowed here."
                self.set_header("Allow", ", ".join(self._allowed_methods()))
            code = _STATUS_CODES.get(status_code, "INTERNAL_ERROR" if status_code >= 500 else "ERROR")
            body = {"error": reason, "detail": detail, "code": code, "field_errors": {}}
        else:
            status_code = 500
            body = {
                "error": "Internal server error",
                "detail": f"An unexpected error occurred. Quote request id {self.request_id} when reporting it.",
                "code": "INTERNAL_ERROR",
                "field_errors": {},
            }
        body.setdefault("request_id", self.request_id)
        self.set_status(status_code)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(dumps(body))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, StreamClosedError):
            # The client went away mid-response: routine, not a server fault.
            log.info(
                "%s %s: client closed the connection [request %s]",
                self.request.method,
                self.request.uri,
                self.request_id,
            )
            return
        value = _as_api_error(value)
        if isinstance(value, (APIError, tornado.web.HTTPError)):
            log.info(
                "%s %s -> %s (%s) [request %s]",
                self.request.method,
                self.request.uri,
                getattr(value, "status", getattr(value, "status_code", "?")),
                getattr(value, "code", ""),
                self.request_id,
            )
            return
        log.error(
            "unhandled error in %s %s [request %s]",
            self.request.method,
            self.request.uri,
            self.request_id,
            exc_info=(typ, value, tb),
        )

    async def flush_bounded(self) -> bool:
        """Flush, waiting at most ENGINEL_DOWNLOAD_FLUSH_TIMEOUT for the client to take the bytes. False when the
        client left or stalled: the connection is then closed, so its buffers and descriptors go at once."""
        timeout = timedelta(seconds=self.config.download_flush_timeout)
        try:
            await tornado.gen.with_timeout(timeout, self.flush(), quiet_exceptions=(StreamClosedError,))
        except StreamClosedError:
            log.info(
                "%s %s: client closed the connection [request %s]",
                self.request.method,
                self.request.uri,
                self.request_id,
            )
            return False
        except TimeoutError:
            log.info(
                "%s %s: client stopped reading for %.0f s; closing [request %s]",
                self.request.method,
                self.request.uri,
                timeout.total_seconds(),
                self.request_id,
            )
            self.request.connection.close()  # type: ignore[union-attr]
            return False
        return True

    async def send_transfer(self, transfer: Transfer) -> None:
        """Stream a download's bytes (headers already set): every ENGINEL_DOWNLOAD_RECHECK_BYTES the policy is
        applied again and a refusal ends the stream (the client sees a short body); each flush is bounded."""
        every = self.config.download_recheck_bytes
        sent = checked = 0
        chunks = cast(
            AsyncGenerator[bytes, None], self.services.storage.read(transfer.sha256, transfer.start, transfer.end)
        )
        # Closed on every way out, so the stored file's descriptor never waits for garbage collection.
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                if sent - checked >= every:
                    checked = sent
                    if not await transfer.still_allowed(sent, self.services.identity.refresh_principal):
                        self.request.connection.close()  # type: ignore[union-attr]
                        return
                self.write(chunk)
                if not await self.flush_bounded():
                    return
                sent += len(chunk)
        self.finish()

    def send_error(self, status_code: int = 500, **kwargs: Any) -> None:
        # Errors raised after headers were flushed (mid-stream) can only close the connection.
        if self._headers_written:
            if not self._finished:
                self.finish()
            return
        super().send_error(status_code, **kwargs)


def _as_api_error(exc: BaseException | None) -> BaseException | None:
    """A parse error from the client's input as the 400 it is; anything else unchanged."""
    if isinstance(exc, INPUT_ERRORS):
        what = "valid UTF-8" if isinstance(exc, UnicodeDecodeError) else "well-formed"
        return ValidationFailed(f"The request is not {what}: {exc}"[:300], title="Malformed request")
    return exc


class NotFoundHandler(APIHandler):
    """Unknown paths: the envelope, not Tornado's HTML page."""

    async def prepare(self) -> None:
        raise NotFound(f"No endpoint at {self.request.path}.")
