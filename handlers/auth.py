"""Authentication endpoints: login, refresh, logout, verify, sessions and API keys."""

from __future__ import annotations

from handlers.base import SESSION_COOKIE, UUID, XSRF_COOKIE, APIHandler, authenticated, public
from models.identity import ApiKeyIn, LoginIn, RefreshIn, render_api_key, render_session
from models.ratelimit import Window


class LoginHandler(APIHandler):
    """POST: password sign-in; opens a session (tokens, and the cookie pair for browsers)."""

    @public
    async def post(self) -> None:
        body = self.parse_body(LoginIn)
        # Per client address, before any password work: guessing across many accounts is throttled too.
        decision = await self.services.limiter.hit(
            f"login:{self.client_ip}", (Window(self.config.login_attempts_per_minute, 60),)
        )
        decision.raise_if_denied("Login attempt")
        user, tokens = await self.services.identity.login(
            body.username, body.password, device=self.request.headers.get("User-Agent", "")[:256], ip=self.client_ip
        )
        self.set_secure_cookie(
            SESSION_COOKIE,
            tokens["access_token"],
            expires_days=None,
            httponly=True,
            secure=self.config.cookie_secure,
            samesite="Strict",
        )
        self.set_cookie(XSRF_COOKIE, tokens["xsrf_token"], secure=self.config.cookie_secure, samesite="Strict")
        me = await self.services.identity.principal_for(user["_id"])
        rendered = (await self.services.users.render_many(me, [user]))[0]
        self.write_json({**tokens, "user": rendered})


class RefreshHandler(APIHandler):
    """POST: rotate a refresh token into a new token pair."""

    @public
    async def post(self) -> None:
        body = self.parse_body(RefreshIn)
        tokens = await self.services.identity.refresh(body.refresh_token, ip=self.client_ip)
        self.set_secure_cookie(
            SESSION_COOKIE,
            tokens["access_token"],
            expires_days=None,
            httponly=True,
            secure=self.config.cookie_secure,
            samesite="Strict",
        )
        self.write_json(tokens)


class LogoutHandler(APIHandler):
    """POST: end the caller's own session."""

    @authenticated
    async def post(self) -> None:
        await self.services.identity.logout(self.require_principal(), self.actor)
        self.clear_cookie(SESSION_COOKIE)
        self.clear_cookie(XSRF_COOKIE)
        self.no_content()


class VerifyHandler(APIHandler):
    """GET: who the presented credential belongs to, and how it authenticated."""

    @authenticated
    async def get(self) -> None:
        principal = self.require_principal()
        user = (await self.services.users.render_many(principal, [principal.user]))[0]
        self.write_json({"valid": True, "via": principal.via, "scopes": sorted(principal.scopes), "user": user})


class SessionsHandler(APIHandler):
    """GET: the caller's live sessions."""

    @authenticated
    async def get(self) -> None:
        principal = self.require_principal()
        sessions = await self.services.identity.list_sessions(principal.id)
        self.write_json(
            {"count": len(sessions), "results": [render_session(s, principal.session_id) for s in sessions]}
        )


class SessionHandler(APIHandler):
    """DELETE: end one of the caller's sessions."""

    @authenticated
    async def delete(self, session_id: str) -> None:
        await self.services.identity.end_session(self.require_principal(), session_id, self.actor)
        self.no_content()


class ApiKeysHandler(APIHandler):
    """GET: the caller's API keys (prefixes only); POST: a new key, shown in full this once."""

    @authenticated
    async def get(self) -> None:
        principal = self.require_principal()
        keys = await self.services.identity.list_api_keys(principal.id)
        self.write_json({"count": len(keys), "results": [render_api_key(k) for k in keys]})

    @authenticated
    async def post(self) -> None:
        principal = self.require_principal()
        body = self.parse_body(ApiKeyIn)
        doc, key = await self.services.identity.create_api_key(principal, body, self.actor)
        self.write_json({**render_api_key(doc), "key": key}, status=201)


class ApiKeyHandler(APIHandler):
    """DELETE: revoke one of the caller's keys."""

    @authenticated
    async def delete(self, key_id: str) -> None:
        await self.services.identity.revoke_api_key(self.require_principal(), key_id, self.actor)
        self.no_content()


routes = [
    (r"/api/auth/login/", LoginHandler),
    (r"/api/auth/refresh/", RefreshHandler),
    (r"/api/auth/logout/", LogoutHandler),
    (r"/api/auth/verify/", VerifyHandler),
    (r"/api/auth/sessions/", SessionsHandler),
    (rf"/api/auth/sessions/{UUID}/", SessionHandler),
    (r"/api/auth/api-keys/", ApiKeysHandler),
    (rf"/api/auth/api-keys/{UUID}/", ApiKeyHandler),
]
