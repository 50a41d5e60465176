"""Per-key rate limits: Litestar's ``RateLimitMiddleware``, one per role, counting each
API key (by its key id, never its secret) in Valkey, so every worker shares the count.

Requests without a key (health, metrics, the schema, the console, ``OPTIONS``) pass
unlimited: the key middleware runs first and leaves no principal on them.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import redis.asyncio as aioredis
from litestar import Request
from litestar.exceptions import TooManyRequestsException
from litestar.middleware.base import DefineMiddleware
from litestar.middleware.rate_limit import RateLimitConfig, RateLimitMiddleware
from litestar.stores.base import Store
from litestar.stores.memory import MemoryStore
from litestar.stores.redis import RedisStore
from litestar.types import Receive, Scope, Send
from redis.exceptions import RedisError

from service.config import RateLimit
from service.core.auth import Principal

STORE = "rate_limit"


# How long the limiter waits for Valkey (it answers in well under a millisecond when it
# is well), and how long it then counts nothing before asking Valkey again.
STORE_TIMEOUT_SECONDS = 0.25
STORE_RETRY_SECONDS = 5.0


class FailOpenRedisStore(RedisStore):
    """A Redis store that answers "nothing counted yet" while Valkey is unreachable: an
    outage of the limiter's store must not stop settlement or ingest. Once Valkey failed
    to answer, it is not asked again for ``STORE_RETRY_SECONDS``: Litestar's limiter
    takes a lock per worker around its get and set, so a Valkey that stops answering
    (frozen, a network partition) made every request of the worker wait in turn for its
    timeouts, about 2 s each (found by a probe)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._down_until = 0.0

    def _down(self) -> bool:
        return time.monotonic() < self._down_until

    def _failed(self) -> None:
        self._down_until = time.monotonic() + STORE_RETRY_SECONDS

    async def get(self, key: str, renew_for: int | timedelta | None = None) -> bytes | None:
        if self._down():
            return None
        try:
            return await super().get(key, renew_for)
        except (RedisError, OSError):
            self._failed()
            return None

    async def set(self, key: str, value: str | bytes, expires_in: int | timedelta | None = None) -> None:
        if self._down():
            return
        try:
            await super().set(key, value, expires_in)
        except (RedisError, OSError):
            self._failed()


def store(redis_url: str | None) -> Store:
    """Valkey when the service has one (shared by every worker), else this process's memory."""
    if not redis_url:
        return MemoryStore()
    client = aioredis.from_url(
        redis_url, socket_timeout=STORE_TIMEOUT_SECONDS, socket_connect_timeout=STORE_TIMEOUT_SECONDS
    )
    return FailOpenRedisStore(client, namespace="tracecode:ratelimit", handle_client_shutdown=True)


class KeyRateLimitMiddleware(RateLimitMiddleware):
    """Litestar's limiter, with the ``Retry-After`` API.md promises on its 429 (the
    seconds until the key's window resets; Litestar sends only ``RateLimit-Reset``)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except TooManyRequestsException as exc:
            headers = dict(exc.headers or {})
            reset = headers.get(self.config.rate_limit_reset_header_key, "1")
            headers["Retry-After"] = str(max(1, int(reset))) if reset.lstrip("-").isdigit() else "1"
            detail = f"this key sent more than its rate limit; try again in {headers['Retry-After']} s"
            raise TooManyRequestsException(detail=detail, headers=headers) from None


def _principal(request: Request[Any, Any, Any]) -> Principal | None:
    user = request.scope.get("user")
    return user if isinstance(user, Principal) else None


def _key_id(request: Request[Any, Any, Any]) -> str:
    principal = _principal(request)
    return f"key:{principal.key_id}" if principal else "anonymous"


def middleware(limits: dict[str, RateLimit | None]) -> list[DefineMiddleware]:
    """One limiter per limited role; each counts only the keys of its role."""
    out = []
    for role, limit in sorted(limits.items()):
        if limit is None:
            continue

        async def of_role(request: Request[Any, Any, Any], role: str = role) -> bool:
            principal = _principal(request)
            return principal is not None and principal.role.value == role

        out.append(
            RateLimitConfig(
                rate_limit=limit,
                identifier_for_request=_key_id,
                check_throttle_handler=of_role,
                middleware_class=KeyRateLimitMiddleware,
                store=STORE,
            ).middleware
        )
    return out
