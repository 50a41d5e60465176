"""Bearer-key authentication (middleware) and role guards."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult

from service.core.auth import Principal, Role, token_hash
from service.store import registry

PUBLIC_PATHS = {"/health", "/metrics", "/schema"}


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
        pool = connection.app.state.pool
        async with pool.acquire() as conn:
            principal = await registry.principal_for(conn, token_hash(token))
        if principal is None:
            raise NotAuthorizedException("unknown or revoked API key")
        return AuthenticationResult(user=principal, auth=token)


def principal_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    user = connection.user
    assert isinstance(user, Principal)
    return user


def requires(
    *roles: Role,
) -> Callable[[ASGIConnection[Any, Any, Any, Any], BaseRouteHandler], None]:
    """A guard that lets only the given roles through (admin always may)."""
    allowed = {*roles, Role.ADMIN}

    def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        if principal_of(connection).role not in allowed:
            names = ", ".join(sorted(r.value for r in allowed))
            raise PermissionDeniedException(f"this needs one of the roles: {names}")

    return guard


def require_org_access(principal: Principal, org: str) -> None:
    """403 unless the key may act as ``org``."""
    if principal.role is Role.ORG and principal.org != org:
        raise PermissionDeniedException(f"this key acts only for organisation {principal.org}")
