"""Authentication endpoints: login, refresh, logout, verify, sessions and API keys."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from handlers.base import SESSION_COOKIE, XSRF_COOKIE, APIHandler, authenticated, public
from models import audit
from models.errors import PermissionDenied, ValidationFailed
from models.identity import API_KEY_SCOPES, render_api_key, render_session
from models.ratelimit import Window
from models.schema import Input


class LoginIn(Input):
    username: str = Field(min_length=1, max_length=254)
    password: str = Field(min_length=1, max_length=256)


class RefreshIn(Input):
    refresh_token: str = Field(min_length=1, max_length=200)


class ApiKeyIn(Input):
    name: str = Field(min_length=1, max_length=100)
    scopes: list[str] = Field(default_factory=lambda: ["read"], min_length=1, max_length=3)
    expires_at: datetime | None = None


class LoginHandler(APIHandler):
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
        rendered = (await self.services.users.render_many([user]))[0]
        self.write_json({**tokens, "user": rendered})


class RefreshHandler(APIHandler):
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
    @authenticated
    async def post(self) -> None:
        principal = self.require_principal()
        if principal.session_id is None:
            raise ValidationFailed("API keys have no session to end; revoke the key instead.")
        await self.services.identity.revoke_session(principal.id, principal.session_id, "logout")
        await audit.record(self.db, self.actor, "LOGOUT", "Session", principal.session_id)
        self.clear_cookie(SESSION_COOKIE)
        self.clear_cookie(XSRF_COOKIE)
        self.no_content()


class VerifyHandler(APIHandler):
    @authenticated
    async def get(self) -> None:
        principal = self.require_principal()
        user = (await self.services.users.render_many([principal.user]))[0]
        self.write_json({"valid": True, "via": principal.via, "scopes": sorted(principal.scopes), "user": user})


class SessionsHandler(APIHandler):
    @authenticated
    async def get(self) -> None:
        principal = self.require_principal()
        sessions = await self.services.identity.list_sessions(principal.id)
        self.write_json(
            {"count": len(sessions), "results": [render_session(s, principal.session_id) for s in sessions]}
        )


class SessionHandler(APIHandler):
    @authenticated
    async def delete(self, session_id: str) -> None:
        principal = self.require_principal()
        await self.services.identity.revoke_session(principal.id, session_id, "ended by user")
        await audit.record(self.db, self.actor, "END_SESSION", "Session", session_id)
        self.no_content()


class ApiKeysHandler(APIHandler):
    @authenticated
    async def get(self) -> None:
        principal = self.require_principal()
        keys = await self.services.identity.list_api_keys(principal.id)
        self.write_json({"count": len(keys), "results": [render_api_key(k) for k in keys]})

    @authenticated
    async def post(self) -> None:
        principal = self.require_principal()
        if principal.via == "api_key":
            # A leaked key must not be able to mint more keys that outlive its own revocation.
            raise PermissionDenied("API keys are created from a signed-in session, not with another key.")
        body = self.parse_body(ApiKeyIn)
        unknown = sorted(set(body.scopes) - set(API_KEY_SCOPES))
        if unknown:
            raise ValidationFailed(
                "Unknown scope.", field_errors={"scopes": [f"Unknown scope '{s}'." for s in unknown]}
            )
        doc, key = await self.services.identity.create_api_key(principal.user, body.name, body.scopes, body.expires_at)
        await audit.record(
            self.db, self.actor, "CREATE", "ApiKey", doc["_id"], changes={"name": body.name, "scopes": doc["scopes"]}
        )
        # The only time the full key is ever shown.
        self.write_json({**render_api_key(doc), "key": key}, status=201)


class ApiKeyHandler(APIHandler):
    @authenticated
    async def delete(self, key_id: str) -> None:
        principal = self.require_principal()
        await self.services.identity.revoke_api_key(principal.id, key_id)
        await audit.record(self.db, self.actor, "DELETE", "ApiKey", key_id)
        self.no_content()


routes = [
    (r"/api/auth/login/", LoginHandler),
    (r"/api/auth/refresh/", RefreshHandler),
    (r"/api/auth/logout/", LogoutHandler),
    (r"/api/auth/verify/", VerifyHandler),
    (r"/api/auth/sessions/", SessionsHandler),
    (r"/api/auth/sessions/([0-9a-f-]{36})/", SessionHandler),
    (r"/api/auth/api-keys/", ApiKeysHandler),
    (r"/api/auth/api-keys/([0-9a-f-]{36})/", ApiKeyHandler),
]
