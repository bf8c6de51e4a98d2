"""Users, passwords, login sessions, refresh rotation, API keys, and turning a credential into a Principal."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from pydantic import Field
from pymongo import IndexModel, ReturnDocument
from pymongo.errors import DuplicateKeyError

from models import audit
from models.collections import API_KEYS, LOGIN_FAILURES, MEMBERSHIPS, ORGANIZATIONS, SESSIONS, USERS
from models.database import Db, next_id, register_indexes, utcnow
from models.errors import (
    AuthenticationFailed,
    Conflict,
    LimitExceeded,
    NotFound,
    PermissionDenied,
    TokenExpired,
    ValidationFailed,
)
from models.events import NullPublisher, Publisher, access_changed
from models.policy import Clearance, Principal, Role
from models.schema import Input

ACCESS_PREFIX = "eat_"
REFRESH_PREFIX = "ert_"
API_KEY_PREFIX = "ek_"
MAX_USED_REFRESH = 50  # remembered rotated refresh tokens per session, for reuse detection
MAX_SESSIONS_PER_USER = 50
API_KEY_SCOPES = ("read", "write", "admin")
USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{1,149}$")

register_indexes(
    USERS, [IndexModel("username_lower", unique=True), IndexModel("email_lower", unique=True, sparse=True)]
)
register_indexes(
    SESSIONS,
    [
        IndexModel("access_hash", unique=True),
        IndexModel("refresh_hash", unique=True),
        IndexModel("used_refresh_hashes"),
        IndexModel([("user_id", 1), ("created_at", -1)]),
    ],
)
register_indexes(API_KEYS, [IndexModel("prefix", unique=True), IndexModel("user_id")])
register_indexes(LOGIN_FAILURES, [IndexModel("expires_at")])
register_indexes(
    MEMBERSHIPS, [IndexModel([("organization_id", 1), ("user_id", 1)], unique=True), IndexModel("user_id")]
)


class LoginIn(Input):
    username: str = Field(min_length=1, max_length=254)  # or the e-mail address
    password: str = Field(min_length=1, max_length=256)


class RefreshIn(Input):
    refresh_token: str = Field(min_length=1, max_length=200)


class ApiKeyIn(Input):
    name: str = Field(min_length=1, max_length=100)
    scopes: list[str] = Field(default_factory=lambda: ["read"], min_length=1, max_length=3)
    expires_at: datetime | None = None


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class IdentityConfig:
    """The identity knobs, taken from Settings by server.py."""

    access_ttl: int = 86400
    refresh_ttl: int = 30 * 86400
    max_failures: int = 5
    lockout_seconds: int = 900
    argon2_time_cost: int = 3
    argon2_memory_kib: int = 65536
    max_api_keys: int = 20  # live keys per user


class Passwords:
    """argon2id hashing; verification runs in a thread so a login never stalls the event loop."""

    def __init__(self, time_cost: int = 3, memory_kib: int = 65536) -> None:
        self.hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=1)
        # Unknown users are checked against this so they take as long as a wrong password.
        self.dummy = self.hasher.hash(secrets.token_urlsafe(16))

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self.hasher.hash, password)

    async def verify(self, stored: str | None, password: str) -> bool:
        def check() -> bool:
            try:
                return self.hasher.verify(stored or self.dummy, password) and stored is not None
            except (VerificationError, InvalidHashError):
                return False

        return await asyncio.to_thread(check)


def validate_password(password: str, username: str = "") -> None:
    problems = []
    if len(password) < 10:
        problems.append("Use at least 10 characters.")
    if len(password) > 256:
        problems.append("Use at most 256 characters.")
    if username and password.lower() == username.lower():
        problems.append("The password may not equal the username.")
    if problems:
        raise ValidationFailed("The password is too weak.", field_errors={"password": problems})


class Identity:
    """Repository and service for users, sessions and API keys."""

    def __init__(self, db: Db, config: IdentityConfig, publisher: Publisher | None = None) -> None:
        self.db = db
        self.config = config
        # Ended sessions and revoked keys also end the live sockets that authenticated with them.
        self.publisher: Publisher = publisher or NullPublisher()
        self.passwords = Passwords(config.argon2_time_cost, config.argon2_memory_kib)
        self._last_prune = datetime.min.replace(tzinfo=UTC)

    # ------------------------------------------------------------------ users

    async def create_user(
        self,
        *,
        username: str,
        password: str,
        email: str | None = None,
        first_name: str = "",
        last_name: str = "",
        phone_number: str = "",
        is_us_person: bool = False,
        security_clearance_level: str = Clearance.UNCLASSIFIED.value,
        is_staff: bool = False,
    ) -> dict[str, Any]:
        """A user with a hashed password; a taken username or e-mail is a 409 naming the field."""
        if not USERNAME_RE.match(username):
            raise ValidationFailed(
                "Invalid username.",
                field_errors={
                    "username": ["2-150 characters: letters, digits and _ . @ + -, starting with a letter or digit."]
                },
            )
        validate_password(password, username)
        doc = {
            "_id": await next_id(self.db, USERS),
            "username": username,
            "username_lower": username.lower(),
            "email": email or "",
            "first_name": first_name,
            "last_name": last_name,
            "phone_number": phone_number,
            "is_us_person": is_us_person,
            "security_clearance_level": Clearance(security_clearance_level).value,
            "is_staff": is_staff,
            "is_active": True,
            "date_joined": utcnow(),
            "password_hash": await self.passwords.hash(password),
        }
        if email:
            doc["email_lower"] = email.lower()
        try:
            await self.db[USERS].insert_one(doc)
        except DuplicateKeyError as exc:
            field = "email" if "email" in str(exc) else "username"
            raise Conflict(
                f"A user with this {field} already exists.",
                field_errors={field: [f"A user with this {field} already exists."]},
            ) from None
        return doc

    async def get_user(self, user_id: int) -> dict[str, Any]:
        doc = await self.db[USERS].find_one({"_id": user_id})
        if doc is None:
            raise NotFound("User not found.")
        return doc

    async def bootstrap_admin(self, spec: str) -> bool:
        """Create the first platform admin from "username:password" when there are no users at all."""
        if await self.db[USERS].estimated_document_count() > 0:
            return False
        username, password = spec.split(":", 1)
        try:
            await self.create_user(username=username, password=password, is_staff=True, is_us_person=False)
        except Conflict:
            return False  # another process bootstrapped it at the same moment
        await audit.record(
            self.db, audit.Actor.system(), "CREATE", "User", username, changes={"is_staff": True, "bootstrap": True}
        )
        return True

    async def set_password(self, user_id: int, password: str) -> None:
        user = await self.get_user(user_id)
        validate_password(password, user["username"])
        await self.db[USERS].update_one(
            {"_id": user_id}, {"$set": {"password_hash": await self.passwords.hash(password)}}
        )

    # ------------------------------------------------------------------ login

    async def login(
        self, identifier: str, password: str, *, device: str, ip: str | None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Check credentials and open a new session. Unknown user, wrong password, inactive or locked account
        all give the same 401 after the same work: one password hash, one failure count and one audit entry,
        so neither the answer nor its timing tells whether the username exists."""
        key = identifier.strip().lower()
        user = await self.db[USERS].find_one({"$or": [{"username_lower": key}, {"email_lower": key}]})
        # Failures count per account and client address: a stranger's guesses lock out only the stranger.
        subject = f"user:{user['_id']}" if user else f"name:{sha256(key)}"
        attempt_id = f"{subject}|{ip or '-'}"
        now = utcnow()
        attempts = await self.db[LOGIN_FAILURES].find_one({"_id": attempt_id})
        locked = bool(attempts and attempts.get("locked_until") and attempts["locked_until"] > now)
        ok = await self.passwords.verify(user["password_hash"] if user else None, password)
        if user is None or locked or not ok or not user.get("is_active", True):
            await self._login_failed(attempt_id, user, key, locked, ip=ip, device=device)
            raise AuthenticationFailed("Invalid username or password.")
        if self.passwords.hasher.check_needs_rehash(user["password_hash"]):
            await self.db[USERS].update_one(
                {"_id": user["_id"]}, {"$set": {"password_hash": await self.passwords.hash(password)}}
            )
        await self.db[USERS].update_one({"_id": user["_id"]}, {"$set": {"last_login": now}})
        await self.db[LOGIN_FAILURES].delete_one({"_id": attempt_id})
        tokens = await self.open_session(user, device=device, ip=ip)
        await audit.record(
            self.db, audit.Actor(user["_id"], user["username"], ip, device), "LOGIN", "User", user["_id"]
        )
        return user, tokens

    async def _login_failed(
        self, attempt_id: str, user: dict[str, Any] | None, key: str, locked: bool, *, ip: str | None, device: str
    ) -> None:
        """Count one failure of (account, address), lock that pair at the limit, and audit it; an unknown name
        takes exactly this path too."""
        now = utcnow()
        changes: dict[str, Any] = {} if user else {"identifier": key[:150]}
        if locked:
            action = "LOGIN_LOCKED"
        else:
            window = now + timedelta(seconds=self.config.lockout_seconds)
            counted = await self.db[LOGIN_FAILURES].find_one_and_update(
                {"_id": attempt_id},
                {"$inc": {"failures": 1}, "$set": {"expires_at": window}},
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
            changes["failed_logins"] = failures = int(counted["failures"]) if counted else 1
            action = "LOGIN_FAILED"
            if failures >= self.config.max_failures:
                await self.db[LOGIN_FAILURES].update_one(
                    {"_id": attempt_id}, {"$set": {"locked_until": window, "failures": 0}}
                )
                changes["locked_until"] = window
                action = "LOCKOUT"
        actor = audit.Actor(user["_id"] if user else None, user["username"] if user else None, ip, device)
        await audit.record(self.db, actor, action, "User", user["_id"] if user else "unknown", changes=changes)
        if (now - self._last_prune).total_seconds() > 60:
            # Bounded: a pair's record lives only as long as its counting window or lock.
            self._last_prune = now
            await self.db[LOGIN_FAILURES].delete_many({"expires_at": {"$lt": now}})

    async def open_session(self, user: dict[str, Any], *, device: str, ip: str | None) -> dict[str, Any]:
        access, refresh = ACCESS_PREFIX + secrets.token_urlsafe(32), REFRESH_PREFIX + secrets.token_urlsafe(32)
        now = utcnow()
        session = {
            "_id": str(uuid.uuid4()),
            "user_id": user["_id"],
            "device": device[:256],
            "ip": ip,
            "created_at": now,
            "last_used_at": now,
            "access_hash": sha256(access),
            "access_expires_at": now + timedelta(seconds=self.config.access_ttl),
            "refresh_hash": sha256(refresh),
            "refresh_expires_at": now + timedelta(seconds=self.config.refresh_ttl),
            "used_refresh_hashes": [],
            "revoked_at": None,
            "revoked_reason": None,
            "xsrf": secrets.token_urlsafe(24),
        }
        await self.db[SESSIONS].insert_one(session)
        await self._prune_sessions(user["_id"])
        return self._tokens(session, access, refresh)

    def _tokens(self, session: dict[str, Any], access: str, refresh: str) -> dict[str, Any]:
        return {
            "access_token": access,
            "refresh_token": refresh,
            "expires_in": self.config.access_ttl,
            "token_type": "Bearer",
            "session_id": session["_id"],
            "xsrf_token": session["xsrf"],
        }

    async def _prune_sessions(self, user_id: int) -> None:
        # Bounded: the oldest live sessions beyond the cap are ended.
        cursor = self.db[SESSIONS].find(
            {"user_id": user_id, "revoked_at": None},
            sort=[("created_at", -1)],
            skip=MAX_SESSIONS_PER_USER,
            projection={"_id": 1},
        )
        old = [doc["_id"] async for doc in cursor]
        if old:
            await self.db[SESSIONS].update_many(
                {"_id": {"$in": old}}, {"$set": {"revoked_at": utcnow(), "revoked_reason": "too many"}}
            )

    async def refresh(self, refresh_token: str, *, ip: str | None) -> dict[str, Any]:
        """Rotate: the presented refresh token is spent; presenting a spent one again revokes the session."""
        digest = sha256(refresh_token)
        now = utcnow()
        access, new_refresh = ACCESS_PREFIX + secrets.token_urlsafe(32), REFRESH_PREFIX + secrets.token_urlsafe(32)
        session = await self.db[SESSIONS].find_one_and_update(
            {"refresh_hash": digest, "revoked_at": None, "refresh_expires_at": {"$gt": now}},
            {
                "$set": {
                    "refresh_hash": sha256(new_refresh),
                    "access_hash": sha256(access),
                    "access_expires_at": now + timedelta(seconds=self.config.access_ttl),
                    "refresh_expires_at": now + timedelta(seconds=self.config.refresh_ttl),
                    "last_used_at": now,
                    "ip": ip,
                },
                "$push": {"used_refresh_hashes": {"$each": [digest], "$slice": -MAX_USED_REFRESH}},
            },
            return_document=ReturnDocument.AFTER,
        )
        if session is not None:
            return self._tokens(session, access, new_refresh)
        lapsed = await self.db[SESSIONS].find_one(
            {"refresh_hash": digest, "revoked_at": None}, projection={"refresh_expires_at": 1}
        )
        if lapsed is not None and lapsed["refresh_expires_at"] <= now:
            raise TokenExpired("The refresh token has expired; sign in again.")
        stolen = await self.db[SESSIONS].find_one({"used_refresh_hashes": digest})
        if stolen is not None:
            # A spent token came back: someone holds a copy. End the whole chain.
            await self.db[SESSIONS].update_one(
                {"_id": stolen["_id"]}, {"$set": {"revoked_at": now, "revoked_reason": "refresh reuse"}}
            )
            await access_changed(self.publisher, stolen["user_id"], "session revoked")
            user = await self.db[USERS].find_one({"_id": stolen["user_id"]}) or {}
            await audit.record(
                self.db,
                audit.Actor(stolen["user_id"], user.get("username"), ip),
                "TOKEN_REUSE",
                "Session",
                stolen["_id"],
            )
        raise AuthenticationFailed("The refresh token is not valid: unknown, already used, or its session has ended.")

    async def revoke_session(self, user_id: int, session_id: str, reason: str) -> None:
        result = await self.db[SESSIONS].update_one(
            {"_id": session_id, "user_id": user_id, "revoked_at": None},
            {"$set": {"revoked_at": utcnow(), "revoked_reason": reason}},
        )
        if result.matched_count == 0:
            raise NotFound("Session not found.")
        await access_changed(self.publisher, user_id, "session ended")

    async def end_other_sessions(self, user_id: int, keep: str | None, reason: str) -> int:
        """End every live session of the user but `keep` (the caller's own); their sockets close. How many ended."""
        result = await self.db[SESSIONS].update_many(
            {"user_id": user_id, "revoked_at": None, "_id": {"$ne": keep}},
            {"$set": {"revoked_at": utcnow(), "revoked_reason": reason}},
        )
        if result.modified_count:
            await access_changed(self.publisher, user_id, reason)
        return int(result.modified_count)

    async def logout(self, principal: Principal, actor: audit.Actor) -> None:
        """End the session the caller signed in with (an API key has none: revoke the key instead)."""
        if principal.session_id is None:
            raise ValidationFailed("API keys have no session to end; revoke the key instead.")
        await self.revoke_session(principal.id, principal.session_id, "logout")
        await audit.record(self.db, actor, "LOGOUT", "Session", principal.session_id)

    async def end_session(self, principal: Principal, session_id: str, actor: audit.Actor) -> None:
        """End one of the caller's own sessions (another device's, say)."""
        await self.revoke_session(principal.id, session_id, "ended by user")
        await audit.record(self.db, actor, "END_SESSION", "Session", session_id)

    async def list_sessions(self, user_id: int) -> list[dict[str, Any]]:
        cursor = self.db[SESSIONS].find(
            {"user_id": user_id, "revoked_at": None, "refresh_expires_at": {"$gt": utcnow()}},
            sort=[("created_at", -1)],
            limit=MAX_SESSIONS_PER_USER,
        )
        return [doc async for doc in cursor]

    # ------------------------------------------------------------------ API keys

    async def create_api_key(
        self, principal: Principal, data: ApiKeyIn, actor: audit.Actor
    ) -> tuple[dict[str, Any], str]:
        """A new key of the caller's, returned once in full with its stored document; only its hash is kept."""
        if principal.via == "api_key":
            # A leaked key must not be able to mint more keys that outlive its own revocation.
            raise PermissionDenied("API keys are created from a signed-in session, not with another key.")
        unknown = sorted(set(data.scopes) - set(API_KEY_SCOPES))
        if unknown:
            raise ValidationFailed(
                "Unknown scope.", field_errors={"scopes": [f"Unknown scope '{s}'." for s in unknown]}
            )
        live = {
            "user_id": principal.id,
            "revoked_at": None,
            "$or": [{"expires_at": None}, {"expires_at": {"$gt": utcnow()}}],
        }
        if await self.db[API_KEYS].count_documents(live) >= self.config.max_api_keys:
            raise self._too_many_keys()
        prefix = secrets.token_hex(4)
        secret = secrets.token_urlsafe(32)
        doc = {
            "_id": str(uuid.uuid4()),
            "user_id": principal.id,
            "name": data.name,
            "prefix": prefix,
            "key_hash": sha256(secret),
            "scopes": sorted(set(data.scopes)),
            "expires_at": data.expires_at,
            "created_at": utcnow(),
            "last_used_at": None,
            "revoked_at": None,
        }
        await self.db[API_KEYS].insert_one(doc)
        if await self.db[API_KEYS].count_documents(live) > self.config.max_api_keys:
            # Concurrent creations both passed the count: the late ones give their place back.
            await self.db[API_KEYS].delete_one({"_id": doc["_id"]})
            raise self._too_many_keys()
        await audit.record(
            self.db, actor, "CREATE", "ApiKey", doc["_id"], changes={"name": data.name, "scopes": doc["scopes"]}
        )
        return doc, f"{API_KEY_PREFIX}{prefix}_{secret}"

    def _too_many_keys(self) -> LimitExceeded:
        return LimitExceeded(
            f"A user may hold at most {self.config.max_api_keys} live API keys; revoke one first.",
            code="LIMIT_EXCEEDED",
            title="Limit exceeded",
        )

    async def list_api_keys(self, user_id: int) -> list[dict[str, Any]]:
        cursor = self.db[API_KEYS].find({"user_id": user_id, "revoked_at": None}, sort=[("created_at", -1)])
        return [doc async for doc in cursor]

    async def revoke_api_key(self, principal: Principal, key_id: str, actor: audit.Actor) -> dict[str, Any]:
        """Revoke one of the caller's keys; sockets opened with it close."""
        doc = await self.db[API_KEYS].find_one_and_update(
            {"_id": key_id, "user_id": principal.id, "revoked_at": None}, {"$set": {"revoked_at": utcnow()}}
        )
        if doc is None:
            raise NotFound("API key not found.")
        await access_changed(self.publisher, principal.id, "api key revoked")
        await audit.record(self.db, actor, "DELETE", "ApiKey", key_id)
        return doc

    # ------------------------------------------------------------------ authentication

    async def authenticate_token(self, token: str) -> Principal:
        now = utcnow()
        session = await self.db[SESSIONS].find_one({"access_hash": sha256(token)})
        # TOKEN_EXPIRED tells a client to refresh: only for a token we issued whose time is up. Anything else (never
        # issued, malformed, replaced by a refresh, its session ended) is AUTHENTICATION_FAILED: sign in again.
        if session is None or session.get("revoked_at") is not None:
            raise AuthenticationFailed("The access token is not valid: unknown, replaced, or its session has ended.")
        if session["access_expires_at"] <= now:
            raise TokenExpired("The access token has expired; refresh it or sign in again.")
        if (now - session["last_used_at"]).total_seconds() > 60:  # bounded write rate per session
            await self.db[SESSIONS].update_one({"_id": session["_id"]}, {"$set": {"last_used_at": now}})
        principal = await self.principal_for(session["user_id"], via="token")
        principal.session_id, principal.xsrf = session["_id"], session.get("xsrf")
        return principal

    async def authenticate_api_key(self, key: str) -> Principal:
        match = re.fullmatch(r"ek_([0-9a-f]{8})_([A-Za-z0-9_-]{20,100})", key)
        doc = await self.db[API_KEYS].find_one({"prefix": match.group(1)}) if match else None
        valid = (
            doc is not None
            and match is not None
            and hmac.compare_digest(doc["key_hash"], sha256(match.group(2)))
            and doc.get("revoked_at") is None
            and (doc.get("expires_at") is None or doc["expires_at"] > utcnow())
        )
        if not valid or doc is None:
            raise AuthenticationFailed("Invalid or expired API key.")
        await self.db[API_KEYS].update_one({"_id": doc["_id"]}, {"$set": {"last_used_at": utcnow()}})
        principal = await self.principal_for(doc["user_id"], via="api_key")
        principal.scopes = frozenset(doc["scopes"])
        principal.api_key_id = doc["_id"]
        return principal

    async def refresh_principal(self, old: Principal) -> Principal:
        """The same caller with current attributes, provided their session or key is still valid; used to
        re-check long-lived connections after an access change."""
        now = utcnow()
        if old.session_id is not None:
            session = await self.db[SESSIONS].find_one({"_id": old.session_id})
            if session is None or session.get("revoked_at") is not None:
                raise AuthenticationFailed("The session has ended.")
            if session["access_expires_at"] <= now:
                raise TokenExpired("The session's access token has expired.")
        if old.api_key_id is not None:
            key = await self.db[API_KEYS].find_one({"_id": old.api_key_id})
            if (
                key is None
                or key.get("revoked_at") is not None
                or (key.get("expires_at") is not None and key["expires_at"] <= now)
            ):
                raise AuthenticationFailed("The API key was revoked or expired.")
        fresh = await self.principal_for(old.id, via=old.via)
        fresh.scopes, fresh.session_id = old.scopes, old.session_id
        fresh.api_key_id, fresh.xsrf = old.api_key_id, old.xsrf
        return fresh

    async def principal_for(self, user_id: int, via: str = "token") -> Principal:
        """The user's current access: their roles in active organizations (a deactivated organization grants its
        members nothing; staff keep their platform view) and the US organizations among them."""
        user = await self.db[USERS].find_one({"_id": user_id}, projection={"password_hash": 0})
        if user is None or not user.get("is_active", True):
            raise AuthenticationFailed("This account is disabled.")
        roles = {m["organization_id"]: Role(m["role"]) async for m in self.db[MEMBERSHIPS].find({"user_id": user_id})}
        if user.get("is_staff"):
            us_orgs = frozenset(
                [
                    o["_id"]
                    async for o in self.db[ORGANIZATIONS].find({"is_us_organization": True}, projection={"_id": 1})
                ]
            )
            return Principal(user=user, memberships=roles, us_orgs=us_orgs, via=via)
        orgs = {
            o["_id"]: o
            async for o in self.db[ORGANIZATIONS].find(
                {"_id": {"$in": list(roles)}}, projection={"is_active": 1, "is_us_organization": 1}
            )
        }
        active = {org_id: role for org_id, role in roles.items() if orgs.get(org_id, {}).get("is_active", False)}
        us_orgs = frozenset(org_id for org_id in active if orgs[org_id].get("is_us_organization"))
        return Principal(user=user, memberships=active, us_orgs=us_orgs, via=via)


def render_session(doc: dict[str, Any], current_id: str | None) -> dict[str, Any]:
    return {
        "id": doc["_id"],
        "device": doc.get("device", ""),
        "ip_address": doc.get("ip"),
        "created_at": doc["created_at"],
        "last_used_at": doc["last_used_at"],
        "expires_at": doc["refresh_expires_at"],
        "current": doc["_id"] == current_id,
    }


def render_api_key(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": doc["_id"],
        "name": doc["name"],
        "prefix": f"{API_KEY_PREFIX}{doc['prefix']}_…",
        "scopes": doc["scopes"],
        "expires_at": doc.get("expires_at"),
        "created_at": doc["created_at"],
        "last_used_at": doc.get("last_used_at"),
    }
