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

PUBLIC_PATHS = {"/health", "/metrics", "/schema"}


class KeyCache:
    """Known keys for a few seconds, to spare a database round trip per request.

    Only valid keys are kept. A revoke through this process drops the key at once;
    other processes stop accepting it within ``ttl`` seconds.
    """

    def __init__(self, ttl: float, size: int = 10_000) -> None:
        self.ttl = ttl
        self.size = size
        self._entries: dict[bytes, tuple[float, Principal]] = {}

    def get(self, digest: bytes) -> Principal | None:
        entry = self._entries.get(digest)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, digest: bytes, principal: Principal) -> None:
        if self.ttl <= 0:
            return
        if len(self._entries) >= self.size:
            self._entries.clear()
        self._entries[digest] = (time.monotonic() + self.ttl, principal)

    def drop_key(self, key_id: str) -> None:
        for digest, (_, principal) in list(self._entries.items()):
            if principal.key_id == key_id:
                del self._entries[digest]


class ApiKeyMiddleware(AbstractAuthenticationMiddleware):
    """401 for a missing, unknown or revoked key; sets ``request.user`` to a Principal."""

    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        header = connection.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise NotAuthorizedException("an API key is required: Authorization: Bearer <key>")
        digest = token_hash(token)
        cache: KeyCache = connection.app.state.key_cache
        principal = cache.get(digest)
        if principal is None:
            async with connection.app.state.pool.acquire() as conn:
                principal = await registry.principal_for(conn, digest)
            if principal is None:
                raise NotAuthorizedException("unknown or revoked API key")
            cache.put(digest, principal)
        return AuthenticationResult(user=principal, auth=token)


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
        if principal_of(connection).role not in allowed:
            names = ", ".join(sorted(r.value for r in allowed))
            raise PermissionDeniedException(f"this needs one of the roles: {names}")

    return guard


def require_org_access(principal: Principal, org: str) -> None:
    """403 unless the key may act as ``org``."""
    if principal.role is Role.ORG and principal.org != org:
        raise PermissionDeniedException(f"this key acts only for organisation {principal.org}")
