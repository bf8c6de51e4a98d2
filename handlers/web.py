"""The browser app: its built files (web/dist) at / and /assets/, under a strict Content-Security-Policy."""

from __future__ import annotations

import asyncio
import re
from typing import Any
from urllib.parse import urlsplit

import tornado.web

from handlers.base import BaseHandler, Services, public

# Hosts that may appear in the policy's ws: sources; anything else (a forged Host header) is left out.
_HOST = re.compile(r"^(?:[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?$")
NOT_BUILT = (
    "The Enginel web app is not built. Run `make web` (or `make run`, which builds it); it needs Node.js 18+ "
    "and npm (Debian/Ubuntu: sudo apt-get install nodejs npm).\n"
)


def content_security_policy(host: str) -> str:
    """No inline script or style, nothing from another origin; the socket is the page's own host."""
    sockets = f" ws://{host} wss://{host}" if _HOST.match(host) else ""
    return "; ".join(
        [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data: blob:",
            "font-src 'self'",
            f"connect-src 'self'{sockets}",
            "worker-src 'self' blob:",
            "manifest-src 'self'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


def page_headers(handler: tornado.web.RequestHandler, host: str) -> None:
    handler.set_header("Content-Security-Policy", content_security_policy(host))
    handler.set_header("X-Frame-Options", "DENY")
    handler.set_header("Referrer-Policy", "no-referrer")
    handler.set_header("Cross-Origin-Opener-Policy", "same-origin")
    handler.set_header("Cross-Origin-Resource-Policy", "same-origin")
    handler.set_header("Permissions-Policy", "camera=(), microphone=(), geolocation=(), payment=()")
    handler.set_header("X-Content-Type-Options", "nosniff")


class PageHandler(BaseHandler):
    """GET /: the app's index.html; the app routes in the URL fragment, so this is its only page."""

    @public
    async def get(self) -> None:
        public_url = self.config.public_url
        page_headers(self, urlsplit(public_url).netloc if public_url else self.request.host)
        try:
            body = await asyncio.to_thread((self.config.web_dir / "index.html").read_bytes)
        except (FileNotFoundError, NotADirectoryError):
            self.set_status(503)
            self.set_header("Content-Type", "text/plain; charset=UTF-8")
            self.finish(NOT_BUILT)
            return
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.set_header("Cache-Control", "no-cache")  # it names the current hashed bundles
        self.finish(body)


class AssetHandler(tornado.web.StaticFileHandler):
    """GET /assets/<name>: bundles whose names carry their content hash, so they can be cached for good."""

    def initialize(
        self,
        path: str = "",
        default_filename: str | None = None,
        allowed_symlink_directory: str | list[str] | None = None,
    ) -> None:
        # The directory is a setting, known once the application exists, not when the route table is built.
        services: Services = self.application.settings["services"]
        assets = services.settings.web_dir / "assets"
        super().initialize(path or str(assets), default_filename, allowed_symlink_directory)

    @public
    async def get(self, path: str, include_body: bool = True) -> None:
        await super().get(path, include_body)

    @public
    async def head(self, path: str) -> None:
        await super().head(path)

    def set_extra_headers(self, path: str) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cross-Origin-Resource-Policy", "same-origin")
        self.set_header("Cache-Control", "public, max-age=31536000, immutable")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.set_header("Content-Type", "text/plain; charset=UTF-8")
        self.finish(f"{status_code}\n")


routes = [
    (r"/", PageHandler),
    (r"/assets/(.+)", AssetHandler),
]
