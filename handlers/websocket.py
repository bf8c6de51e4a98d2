"""The /ws/ endpoint: a thin Tornado adapter between a socket and realtime.Session, where the protocol lives."""

from __future__ import annotations

from typing import Any

import tornado.websocket

from handlers.base import client_address, public
from realtime.codec import Codec, select_protocol
from realtime.gateway import Gateway
from realtime.session import Session, credential_from
from realtime.transport import StreamTransport


class RealtimeSocketHandler(tornado.websocket.WebSocketHandler):
    """Upgrades, negotiates, and hands the stream to realtime: frames built once per event go straight to it."""

    session: Session | None = None
    transport: StreamTransport | None = None
    _codec: Codec | None = None
    _origin_allowed = True

    @property
    def gateway(self) -> Gateway:
        gateway: Gateway = self.application.settings["services"].realtime
        return gateway

    @public
    async def get(self, *args: Any, **kwargs: Any) -> None:
        # Public at the HTTP level on purpose: the protocol authenticates (Authorization header, session
        # cookie or a first "auth" message) and closes with 4001, which a browser can see; a 401 it cannot.
        await super().get(*args, **kwargs)

    def check_origin(self, origin: str) -> bool:
        # Tornado asks only for cross-origin handshakes. Refusing here would be an opaque HTTP 403 to a
        # browser; accepting and closing with 4003 before reading anything tells it why.
        self._origin_allowed = self.gateway.origin_allowed(origin)
        return True

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        name, self._codec = select_protocol(subprotocols)
        return name

    def get_compression_options(self) -> dict[str, Any] | None:
        return None  # shared frames cannot be compressed per connection

    @property
    def max_message_size(self) -> int:
        return self.gateway.config.max_message_bytes

    @property
    def ping_interval(self) -> float | None:
        return self.gateway.config.ping_interval

    @property
    def ping_timeout(self) -> float | None:
        return self.gateway.config.ping_timeout

    async def open(self, *args: str, **kwargs: str) -> None:
        assert self.ws_connection is not None and self.ws_connection.stream is not None
        self.set_nodelay(True)  # small interactive frames: Nagle would add delayed-ACK stalls
        gateway = self.gateway
        self.transport = StreamTransport(self.ws_connection.stream, self.close, gateway.flusher)
        credential = credential_from(self.request.headers.get("Authorization"), self._session_cookie())
        self.session = gateway.open_session(
            self.transport,
            self._codec,
            credential=credential,
            origin_allowed=self._origin_allowed,
            # Believed through the same trusted proxies as REST, so the per-address cap counts clients.
            remote=client_address(self.request, self.gateway.config.trusted_proxies),
        )
        await self.session.open()

    def _session_cookie(self) -> str | None:
        name = self.gateway.config.session_cookie
        if self.application.settings.get("cookie_secret"):
            # The same signed cookie the REST handlers accept; a forged or stale one reads as absent.
            value = self.get_secure_cookie(name, max_age_days=31)
            return value.decode() if value else None
        return self.get_cookie(name)

    def on_message(self, message: str | bytes) -> Any:
        if self.session is not None:
            return self.session.receive(message)
        return None

    def on_close(self) -> None:
        if self.transport is not None:
            self.transport.closed = True
        if self.session is not None:
            self.session.transport_closed()


routes = [
    (r"/ws/", RealtimeSocketHandler),
]
