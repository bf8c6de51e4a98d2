"""Fixed-window rate limits per caller: Redis-backed (shared by all processes) or in-process."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

from redis.asyncio import Redis

from models.errors import RateLimited


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


class RateLimiter(ABC):
    """Counts hits of a key in each window; the most constrained window decides."""

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


class MemoryRateLimiter(RateLimiter):
    """One process's counters; old windows are dropped so memory stays bounded by active callers."""

    MAX_KEYS = 100_000

    def __init__(self) -> None:
        self.counts: dict[tuple[str, int, int], int] = {}
        self._last_sweep = 0.0

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


class RedisRateLimiter(RateLimiter):
    """Counters in Redis, so every server process draws on the same budget."""

    def __init__(self, redis: Redis, prefix: str = "enginel:rl:") -> None:
        self.redis = redis
        self.prefix = prefix

    async def _incr(self, key: str, windows: tuple[Window, ...], now: float, cost: int) -> list[int]:
        pipe = self.redis.pipeline(transaction=False)
        for window in windows:
            start = int(now // window.seconds) * window.seconds
            name = f"{self.prefix}{key}:{window.seconds}:{start}"
            pipe.incrby(name, cost)
            pipe.expire(name, window.seconds + 5)
        results = await pipe.execute()
        return [int(v) for v in results[0::2]]
