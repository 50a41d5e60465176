"""Bearer-key authentication (middleware) and role guards."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult

from service.core.auth import Principal, Role, token_hash
from service.store import registry
from service.store.conn import Conn

PUBLIC_PATHS = {"/health", "/metrics", "/schema"}


class KeyCache:
    """Valid keys, remembered for ``ttl`` seconds to spare a database round trip per
    request.

    It is used only while this process listens to the database for revocations
    (``live``): a revoke, from any process or the CLI, notifies every listener when it
    commits, and the key is dropped at once. While the listener is down, nothing is
    cached, so a revoked key is never accepted from memory.

    A revocation can arrive while a request is looking its key up (a cache miss): the
    lookup may have read the key before the revoke committed. So every drop bumps
    ``generation``, and a lookup caches its answer only if no drop happened since it
    began (``put(..., since=generation read before the lookup)``).
    """

    def __init__(self, ttl: float, size: int = 10_000) -> None:
        self.ttl = ttl
        self.size = size
        self.live = False
        self.generation = 0
        self._entries: dict[bytes, tuple[float, Principal]] = {}

    def set_live(self, live: bool) -> None:
        self.live = live
        self.generation += 1
        self._entries.clear()  # whatever was revoked while deaf must not survive

    def get(self, digest: bytes) -> Principal | None:
        if not self.live:
            return None
        entry = self._entries.get(digest)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, digest: bytes, principal: Principal, since: int) -> None:
        """Remember a key read from the database by a lookup that began at generation
        ``since``; forget it if a revocation (or a listener outage) came meanwhile."""
        if self.ttl <= 0 or not self.live or since != self.generation:
            return
        if len(self._entries) >= self.size:
            self._entries.clear()
        self._entries[digest] = (time.monotonic() + self.ttl, principal)

    def drop_key(self, key_id: str) -> None:
        self.generation += 1
        for digest, (_, principal) in list(self._entries.items()):
            if principal.key_id == key_id:
                del self._entries[digest]


# a 401 names the scheme it wants (RFC 9110 §11.6.1)
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


class ApiKeyMiddleware(AbstractAuthenticationMiddleware):
    """401 for a missing, unknown or revoked key; sets ``request.user`` to a Principal."""

    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        sent = connection.headers.getall("authorization", [])
        if len(sent) > 1:  # which one counts would be anyone's guess (a proxy's, ours)
            raise NotAuthorizedException("send one Authorization header", headers=_CHALLENGE)
        scheme, _, token = (sent[0] if sent else "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise NotAuthorizedException(
                "an API key is required: Authorization: Bearer <key>", headers=_CHALLENGE
            )
        principal = await principal_for_digest(connection, token_hash(token))
        if principal is None:
            raise NotAuthorizedException("unknown or revoked API key", headers=_CHALLENGE)
        return AuthenticationResult(user=principal, auth=token)


async def principal_for_digest(
    connection: ASGIConnection[Any, Any, Any, Any], digest: bytes
) -> Principal | None:
    """The valid key with this token hash, from the cache or the database (None for an
    unknown or revoked key). The API's middleware and the console's sessions both ask
    here, so a revocation counts for both at once."""
    cache: KeyCache = connection.app.state.key_cache
    principal = cache.get(digest)
    if principal is None:
        generation = cache.generation
        async with connection.app.state.pool.acquire() as conn:
            principal = await registry.principal_for(conn, digest)
        if principal is not None:
            cache.put(digest, principal, since=generation)
    return principal


def principal_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    user = connection.user
    assert isinstance(user, Principal)
    return user


def requires(
    *roles: Role,
) -> Callable[[ASGIConnection[Any, Any, Any, Any], BaseRouteHandler], Awaitable[None]]:
    """A guard that lets only the given roles through (admin always may). A coroutine,
    so Litestar runs it on the event loop rather than handing it to a worker thread."""
    allowed = {*roles, Role.ADMIN}

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        if connection.scope.get("method") == "OPTIONS":
            # Litestar's own OPTIONS answer (204 and Allow) inherits the controller's
            # guards but skips the key middleware: there is no principal, and nothing
            # is disclosed, so let it through
            return
        if principal_of(connection).role not in allowed:
            names = ", ".join(sorted(r.value for r in allowed))
            raise PermissionDeniedException(f"this needs one of the roles: {names}")

    return guard


def require_org_access(principal: Principal, org: str) -> None:
    """403 unless the key may act as ``org``."""
    if principal.role is Role.ORG and principal.org != org:
        raise PermissionDeniedException(f"this key acts only for organisation {principal.org}")


async def listen_for_revocations(url: str, cache: KeyCache) -> None:
    """Keep one connection listening for revoked keys (forever; reconnects)."""
    import asyncio

    import asyncpg

    from service.store.registry import KEY_REVOKED_CHANNEL

    def on_revoke(_: Conn, __: int, ___: str, key_id: object) -> None:
        cache.drop_key(str(key_id))

    while True:
        conn = None
        try:
            conn = await asyncpg.connect(url, timeout=5)
            await conn.add_listener(KEY_REVOKED_CHANNEL, on_revoke)
            cache.set_live(True)
            while not conn.is_closed():
                await asyncio.sleep(1)
                # notices a dead connection; a server that stops answering (a network
                # partition) must not keep the cache live, so the probe has a deadline
                await conn.execute("SELECT 1", timeout=5)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            pass
        finally:
            cache.set_live(False)
            if conn is not None and not conn.is_closed():
                await conn.close()
        await asyncio.sleep(2)
