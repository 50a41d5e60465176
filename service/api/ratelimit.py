"""Per-key rate limits: a fixed-window counter per API key (counted by its key id, never
its secret) and role limit, from the ``limits`` library. The counts live in Valkey, so
every worker shares them (one atomic increment a request, a single round trip), or in
this process's memory when the service has no Valkey.

Litestar's own ``RateLimitMiddleware`` was used before. It keeps the times of the
window's requests, reads them from the store, decodes them, appends, encodes and writes
them back (two round trips, and work that grows with the key's rate: a list of up to
2,000 times a request at the insurer's default), under one lock per worker held across
both round trips, and two workers could each read the same count. That cost about
0.5 ms of service CPU a request (README, "The cost of the per-key rate limits").

Requests without a key (health, metrics, the schema, the console, ``OPTIONS``) pass
unlimited: the key middleware runs first and leaves no principal on them.
"""

from __future__ import annotations

import math
import time
from typing import Any

import redis.asyncio as aioredis
from limits import (
    RateLimitItem,
    RateLimitItemPerDay,
    RateLimitItemPerHour,
    RateLimitItemPerMinute,
    RateLimitItemPerSecond,
)
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import FixedWindowRateLimiter
from litestar.enums import ScopeType
from litestar.exceptions import TooManyRequestsException
from litestar.middleware.base import DefineMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send
from redis.exceptions import RedisError

from service.config import RateLimit, RateUnit
from service.core.auth import Principal

# How long the limiter waits for Valkey (it answers in well under a millisecond when it
# is well), and how long it then counts nothing before asking Valkey again: a Valkey that
# stops answering (frozen, a network partition) must not make every request wait out a
# timeout (found by a probe).
STORE_TIMEOUT_SECONDS = 0.25
STORE_RETRY_SECONDS = 5.0

_ITEMS: dict[RateUnit, type[RateLimitItem]] = {
    "second": RateLimitItemPerSecond,
    "minute": RateLimitItemPerMinute,
    "hour": RateLimitItemPerHour,
    "day": RateLimitItemPerDay,
}


class Limiter:
    """The count of each key's requests in its role's window. While the store cannot be
    reached nothing is counted: an outage of the limiter's store must not stop
    settlement or ingest."""

    def __init__(self, limits: dict[str, RateLimit | None], redis_url: str | None) -> None:
        self.items = {role: _ITEMS[unit](count) for role, (unit, count) in _set(limits).items()}
        self._pool: aioredis.ConnectionPool | None = None
        storage: Storage
        if redis_url:
            self._pool = aioredis.ConnectionPool.from_url(
                redis_url, socket_timeout=STORE_TIMEOUT_SECONDS, socket_connect_timeout=STORE_TIMEOUT_SECONDS
            )
            # redis-py's client on this pool, for a redis://, rediss:// or unix:// URL
            # alike (limits would pick another client library for a unix:// one)
            storage = RedisStorage(
                "async+redis://",
                implementation="redispy",
                key_prefix="tracecode:ratelimit",
                connection_pool=self._pool,  # type: ignore[arg-type]  # passed on to redis-py
            )
        else:
            storage = MemoryStorage()
        self.strategy = FixedWindowRateLimiter(storage)
        self._down_until = 0.0

    async def hit(self, item: RateLimitItem, key_id: str) -> bool:
        """Count one request of the key: False when it is over its limit."""
        if time.monotonic() < self._down_until:
            return True
        try:
            return await self.strategy.hit(item, key_id)
        except (RedisError, OSError):
            self._down_until = time.monotonic() + STORE_RETRY_SECONDS
            return True

    async def seconds_to_reset(self, item: RateLimitItem, key_id: str) -> int:
        """The whole seconds until the key's window has ended (at least 1, at most the
        window), never fewer: Valkey gives the window's time to live rounded to the
        nearest second, so half a second is added before rounding up (a client that
        waited 59 s with 59.4 s left was refused again)."""
        try:
            reset, _ = await self.strategy.get_window_stats(item, key_id)
        except (RedisError, OSError):
            return 1
        return max(1, min(item.get_expiry(), math.ceil(reset - time.time() + 0.5)))

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()


def _set(limits: dict[str, RateLimit | None]) -> dict[str, RateLimit]:
    return {role: limit for role, limit in limits.items() if limit is not None}


class KeyRateLimitMiddleware:
    """429 with ``Retry-After`` (the seconds until the key's window resets), as API.md
    promises, and the ``RateLimit-*`` headers, for a key over its role's limit."""

    def __init__(self, app: ASGIApp, limiter: Limiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        principal = scope.get("user")
        if scope["type"] == ScopeType.HTTP and isinstance(principal, Principal):
            item = self.limiter.items.get(principal.role.value)
            if item is not None and not await self.limiter.hit(item, principal.key_id):
                retry = await self.limiter.seconds_to_reset(item, principal.key_id)
                raise TooManyRequestsException(
                    detail=f"this key sent more than its rate limit; try again in {retry} s",
                    headers={
                        "Retry-After": str(retry),
                        "RateLimit-Limit": str(item.amount),
                        "RateLimit-Remaining": "0",
                        "RateLimit-Reset": str(retry),
                        "RateLimit-Policy": f"{item.amount}; w={item.get_expiry()}",
                    },
                )
        await self.app(scope, receive, send)


def middleware(limiter: Limiter) -> list[Any]:
    """The limiter, when any role is limited."""
    return [DefineMiddleware(KeyRateLimitMiddleware, limiter=limiter)] if limiter.items else []
