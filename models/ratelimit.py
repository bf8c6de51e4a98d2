"""Fixed-window rate limits per caller and capped sets of leases (open sockets): Redis-backed (shared by all
processes) or in-process; and the WebSocket limits built on them."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio import Redis

from models.errors import RateLimited
from models.policy import Principal


@dataclass(frozen=True)
class Window:
    limit: int
    seconds: int


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset: int  # unix time the binding window resets
    retry_after: int

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset),
        }

    def raise_if_denied(self, what: str = "Request") -> None:
        if self.allowed:
            return
        minutes = max(1, round(self.retry_after / 60))
        raise RateLimited(
            f"{what} limit is {self.limit}. Try again in {self.retry_after} s (about {minutes} min).",
            headers={**self.headers(), "Retry-After": str(self.retry_after)},
            extra={"retry_after": self.retry_after},
        )


def caller_key(principal: Principal | None, address: str) -> str:
    """Whose budget a request spends, REST or WebSocket alike: an API key's own, else its user's, else (anonymous)
    the client address's."""
    if principal is None:
        return f"ip:{address}"
    if principal.api_key_id:
        return f"key:{principal.api_key_id}"
    return f"user:{principal.id}"


def request_windows(per_hour: int, per_minute: int) -> tuple[Window, ...]:
    return (Window(per_hour, 3600), Window(per_minute, 60))


class RateLimiter(ABC):
    """Counts hits of a key in each window (the most constrained window decides), and holds capped sets of
    leases: `acquire` adds a holder to a key's set unless `limit` live holders are there; a holder not renewed
    within its ttl stops counting, so a crashed process's sockets free their slots on their own."""

    async def hit(self, key: str, windows: tuple[Window, ...], cost: int = 1) -> Decision:
        now = time.time()
        counts = await self._incr(key, windows, now, cost)
        decisions = []
        for window, count in zip(windows, counts, strict=True):
            start = int(now // window.seconds) * window.seconds
            reset = start + window.seconds
            decisions.append(
                Decision(
                    count <= window.limit,
                    window.limit,
                    max(0, window.limit - count),
                    reset,
                    max(1, int(reset - now + 0.999)),
                )
            )
        denied = [d for d in decisions if not d.allowed]
        if denied:
            return max(denied, key=lambda d: d.reset)
        return min(decisions, key=lambda d: (d.remaining, d.limit))

    @abstractmethod
    async def _incr(self, key: str, windows: tuple[Window, ...], now: float, cost: int) -> list[int]: ...

    @abstractmethod
    async def acquire(self, key: str, holder: str, limit: int, ttl: float) -> bool: ...

    @abstractmethod
    async def release(self, key: str, holder: str) -> None: ...

    @abstractmethod
    async def renew(self, held: Sequence[tuple[str, str]], ttl: float) -> None: ...


class MemoryRateLimiter(RateLimiter):
    """One process's counters; old windows are dropped so memory stays bounded by active callers."""

    MAX_KEYS = 100_000

    def __init__(self) -> None:
        self.counts: dict[tuple[str, int, int], int] = {}
        self._last_sweep = 0.0
        self.leases: dict[str, dict[str, float]] = {}  # key -> holder -> expiry; bounded by live holders

    async def _incr(self, key: str, windows: tuple[Window, ...], now: float, cost: int) -> list[int]:
        if now - self._last_sweep > 60 or len(self.counts) > self.MAX_KEYS:
            self.counts = {k: v for k, v in self.counts.items() if k[2] + k[1] > now}
            self._last_sweep = now
        out = []
        for window in windows:
            slot = (key, window.seconds, int(now // window.seconds) * window.seconds)
            self.counts[slot] = self.counts.get(slot, 0) + cost
            out.append(self.counts[slot])
        return out

    async def acquire(self, key: str, holder: str, limit: int, ttl: float) -> bool:
        now = time.time()
        holders = {h: expiry for h, expiry in self.leases.get(key, {}).items() if expiry > now}
        if holder not in holders and len(holders) >= limit:
            self.leases[key] = holders
            return False
        holders[holder] = now + ttl
        self.leases[key] = holders
        return True

    async def release(self, key: str, holder: str) -> None:
        holders = self.leases.get(key)
        if holders is not None:
            holders.pop(holder, None)
            if not holders:
                del self.leases[key]

    async def renew(self, held: Sequence[tuple[str, str]], ttl: float) -> None:
        expiry = time.time() + ttl
        for key, holder in held:
            holders = self.leases.get(key)
            if holders is not None and holder in holders:
                holders[holder] = expiry


# One sorted set per key, scored by expiry: drop the expired, then add the holder if it is there already or the
# set is below the limit. Atomic, so two processes admitting at once cannot both take the last slot.
_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZSCORE', KEYS[1], ARGV[3]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[4], ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  return 1
end
return 0
"""


class RedisRateLimiter(RateLimiter):
    """Counters and leases in Redis, so every server process draws on the same budget and caps."""

    def __init__(self, redis: Redis, prefix: str = "enginel:rl:") -> None:
        self.redis = redis
        self.prefix = prefix
        self._acquire = redis.register_script(_ACQUIRE)

    async def _incr(self, key: str, windows: tuple[Window, ...], now: float, cost: int) -> list[int]:
        pipe = self.redis.pipeline(transaction=False)
        for window in windows:
            start = int(now // window.seconds) * window.seconds
            name = f"{self.prefix}{key}:{window.seconds}:{start}"
            pipe.incrby(name, cost)
            pipe.expire(name, window.seconds + 5)
        results = await pipe.execute()
        return [int(v) for v in results[0::2]]

    def _lease_key(self, key: str) -> str:
        return f"{self.prefix}lease:{key}"

    async def acquire(self, key: str, holder: str, limit: int, ttl: float) -> bool:
        now = time.time()
        args: list[str | int | float] = [now, limit, holder, now + ttl, int(ttl * 1000) + 1000]
        return bool(await self._acquire(keys=[self._lease_key(key)], args=args))

    async def release(self, key: str, holder: str) -> None:
        await self.redis.zrem(self._lease_key(key), holder)

    async def renew(self, held: Sequence[tuple[str, str]], ttl: float) -> None:
        expiry = time.time() + ttl
        pipe = self.redis.pipeline(transaction=False)
        for key, holder in held:
            pipe.zadd(self._lease_key(key), {holder: expiry}, xx=True)
            pipe.pexpire(self._lease_key(key), int(ttl * 1000) + 1000)
        await pipe.execute()


class SocketLimits:
    """What one caller or one address may hold and spend over WebSockets: open sockets per user, sockets per
    client address that have not authenticated yet, and the per-caller request budget that socket commands
    share with REST (same key, same windows). Counted by the rate limiter, hence across processes with Redis."""

    def __init__(
        self, limiter: RateLimiter, *, per_user: int, per_address: int, per_hour: int, per_minute: int
    ) -> None:
        self.limiter = limiter
        self.caps = {"user": per_user, "address": per_address}
        self.windows = request_windows(per_hour, per_minute)

    async def acquire(self, kind: str, ident: str, holder: str, ttl: float) -> bool:
        return await self.limiter.acquire(f"ws:{kind}:{ident}", holder, self.caps[kind], ttl)

    async def release(self, kind: str, ident: str, holder: str) -> None:
        await self.limiter.release(f"ws:{kind}:{ident}", holder)

    async def renew(self, held: list[tuple[str, str, str]], ttl: float) -> None:
        await self.limiter.renew([(f"ws:{kind}:{ident}", holder) for kind, ident, holder in held], ttl)

    async def charge(self, principal: Principal) -> None:
        decision = await self.limiter.hit(caller_key(principal, ""), self.windows)
        decision.raise_if_denied("Request")
