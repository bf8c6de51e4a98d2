"""The /ws/ endpoint: a thin Tornado adapter between a socket and realtime.Session, where the protocol lives."""
from __future__ import annotations

from typing import Any

import tornado.websocket
from tornado.iostream import IOStream

from handlers.base import public
from realtime.codec import Codec, select_protocol
from realtime.gateway import Gateway
from realtime.session import Session, credential_from


class RealtimeSocketHandler(tornado.websocket.WebSocketHandler):
    """Implements realtime.session.Transport: frames built once per event are written straight to the stream."""

    session: Session | None = None
    _stream: IOStream | None = None
    _codec: Codec | None = None
    _origin_allowed = True

    @property
    def gateway(self) -> Gateway:
        services = self.application.settings["services"]
        gateway = getattr(services, "realtime", None) or services.extra["realtime"]
        return gateway  # type: ignore[no-any-return]

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
        return None     # shared frames cannot be compressed per connection

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
        assert self.ws_connection is not None
        self._stream = self.ws_connection.stream
        self.set_nodelay(True)      # small interactive frames: Nagle would add delayed-ACK stalls
        gateway = self.gateway
        credential = credential_from(self.request.headers.get("Authorization"),
                                     self.get_cookie(gateway.config.session_cookie))
        self.session = gateway.open_session(self, self._codec, credential=credential,
                                            origin_allowed=self._origin_allowed,
                                            remote=self.request.remote_ip or "")
        await self.session.open()

    def on_message(self, message: str | bytes) -> Any:
        if self.session is not None:
            return self.session.receive(message)
        return None

    def on_close(self) -> None:
        if self.session is not None:
            self.session.transport_closed()

    # --- realtime.session.Transport
    def write_frame(self, frame: bytes) -> int:
        if self.ws_connection is None:
            raise tornado.websocket.WebSocketClosedError()
        stream = self._stream
        assert stream is not None
        stream.write(frame)
        # IOStream keeps no public counter of unsent bytes; its write buffer's length is exactly that.
        return len(stream._write_buffer)

    async def drain(self) -> None:
        assert self._stream is not None
        await self._stream.write(b"")


routes = [
    (r"/ws/", RealtimeSocketHandler),
]
