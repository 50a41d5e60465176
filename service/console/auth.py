"""Console sign-in: a server-side session that holds the key's hash (never the key),
checked against the key registry on every request, so a revoked key ends its sessions
at once (the same cache and registry as the API's bearer keys, which a revoke empties
everywhere through PostgreSQL's NOTIFY)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie, MutableScopeHeaders
from litestar.exceptions import ServiceUnavailableException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware.session.server_side import ServerSideSessionBackend, ServerSideSessionConfig
from litestar.stores.redis import RedisStore
from litestar.types import Empty, Message, ScopeSession
from litestar.utils.dataclass import extract_dataclass_items
from redis.exceptions import RedisError

from service.api.auth import principal_for_digest
from service.core.auth import Principal, Role, token_hash

CONSOLE_ROLES = frozenset({Role.INVESTIGATOR, Role.ADMIN})
SESSION_KEY = "console_session"
SESSION_STORE = "console-sessions"
SESSION_SECONDS = 8 * 3600  # a working day; then sign in again
_ROTATE = "console_rotate_session"
# a route's opt: its answers write no session, so they renew none. A live stream, which
# the browser keeps open and reconnects to by itself, is no person's request: it renewed
# the session at every (re)connect, and a queue left open never expired (a probe)
NOT_RENEWED = "session_not_renewed"


class SignInRequired(Exception):
    """No session, an expired one, or its key was revoked: go to the sign-in page."""


class SessionsUnavailable(ServiceUnavailableException):
    """Valkey, which keeps the sessions, does not answer."""


class _RotatingBackend(ServerSideSessionBackend):
    """A fresh session id at sign-in, so an id planted before it is worthless; a session
    written with a fresh expiry by a person's requests only (:data:`NOT_RENEWED`)."""

    def get_session_id(self, connection: ASGIConnection[Any, Any, Any, Any]) -> str:
        if connection.scope.get("state", {}).get(_ROTATE):
            return self.generate_session_id()
        return super().get_session_id(connection)

    async def store_in_message(
        self, scope_session: ScopeSession, message: Message, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> None:
        # nothing is stored for a visitor who has not signed in (no row per anonymous hit)
        if scope_session is not Empty and not scope_session:
            if not connection.cookies.get(self.config.key):
                return
            scope_session = Empty
        if scope_session is Empty:
            # the session ends: its row goes, and so does the cookie, at once (Litestar's
            # own keeps the config's Max-Age beside expires=0, and Max-Age wins: browsers
            # sent "null" back for 8 hours: found by a probe)
            await self.delete(
                self.get_session_id(connection), store=self.config.get_store_from_app(connection.scope["app"])
            )
            params = extract_dataclass_items(self.config, exclude_none=True, include=Cookie.__dict__.keys())
            ended = Cookie(
                **{**dict(params), "key": self.config.key, "value": "", "max_age": 0, "expires": 0}
            )
            MutableScopeHeaders.from_message(message).add("Set-Cookie", ended.to_header(header=""))
            return
        if connection.route_handler.opt.get(NOT_RENEWED):
            return  # left as it is: its expiry, its cookie
        await super().store_in_message(scope_session, message, connection)


class SessionStore(RedisStore):
    """Sessions in Valkey; while Valkey does not answer, a console request is a 503 that
    says so (it was a 500 with a traceback per request: found by a probe). The API does
    not need Valkey and serves on."""

    async def get(self, key: str, renew_for: int | timedelta | None = None) -> bytes | None:
        with _answered():
            return await super().get(key, renew_for)

    async def set(self, key: str, value: str | bytes, expires_in: int | timedelta | None = None) -> None:
        with _answered():
            await super().set(key, value, expires_in)

    async def delete(self, key: str) -> None:
        with _answered():
            await super().delete(key)

    async def check(self) -> None:
        """A 503 now if Valkey does not answer: a new session is written as the answer
        starts, too late to answer 503 instead."""
        with _answered():
            await self._redis.ping()


@contextlib.contextmanager
def _answered() -> Iterator[None]:
    try:
        yield
    except (RedisError, OSError) as exc:
        raise _unavailable() from exc


def _unavailable() -> ServiceUnavailableException:
    return SessionsUnavailable(
        "the console keeps its sessions in Valkey, which does not answer now; the API is not affected",
        headers={"Retry-After": "5"},
    )


class _SessionConfig(ServerSideSessionConfig):
    _backend_class = _RotatingBackend


def session_config(secure: bool) -> ServerSideSessionConfig:
    return _SessionConfig(
        key=SESSION_KEY,
        store=SESSION_STORE,
        max_age=SESSION_SECONDS,
        path="/console",
        httponly=True,
        samesite="strict",
        secure=secure,
        renew_on_access=False,
    )


async def principal_for_secret(
    connection: ASGIConnection[Any, Any, Any, Any], secret: str
) -> Principal | None:
    """The key's principal when it may use the console, else None."""
    return await console_principal(connection, token_hash(secret))


async def start_session(connection: ASGIConnection[Any, Any, Any, Any], secret: str) -> None:
    """A new session under a fresh id; the browser's previous session, if any, ends (a
    sign-in as another key must not leave the first one usable)."""
    previous = connection.cookies.get(SESSION_KEY)
    store = connection.app.stores.get(SESSION_STORE)
    if isinstance(store, SessionStore):
        await store.check()
    if previous:
        await store.delete(previous)
    connection.scope.setdefault("state", {})[_ROTATE] = True
    connection.set_session({"digest": token_hash(secret).hex()})


def end_session(connection: ASGIConnection[Any, Any, Any, Any]) -> None:
    connection.clear_session()


def session_digest(connection: ASGIConnection[Any, Any, Any, Any]) -> bytes | None:
    """The hash of the key the session was signed in with, if there is a session."""
    session = connection.scope.get("session")
    digest_hex = session.get("digest") if isinstance(session, dict) else None
    if not isinstance(digest_hex, str):
        return None
    try:
        return bytes.fromhex(digest_hex)
    except ValueError:
        return None


async def console_principal(
    connection: ASGIConnection[Any, Any, Any, Any], digest: bytes
) -> Principal | None:
    """The key's principal while it is valid and may use the console, else None."""
    principal = await principal_for_digest(connection, digest)
    return principal if principal is not None and principal.role in CONSOLE_ROLES else None


async def signed_in(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Guard for every console page but sign-in: the session's key must still be valid
    and an investigator's or admin's. Sets ``connection.state.principal``."""
    if connection.route_handler.opt.get("public"):
        return
    digest = session_digest(connection)
    if digest is None:
        raise SignInRequired
    principal = await console_principal(connection, digest)
    if principal is None:
        if connection.scope.get("session") is not Empty:
            connection.clear_session()
        raise SignInRequired
    connection.state.principal = principal


async def session_lives(connection: ASGIConnection[Any, Any, Any, Any]) -> bool:
    """Is the connection's session still in the store (not signed out, not expired)? For a
    long-lived response, which the guard checked only when it began."""
    session_id = connection.cookies.get(SESSION_KEY)
    if not session_id:
        return False
    store = connection.app.stores.get(SESSION_STORE)
    return await store.exists(session_id)


async def read_session(connection: ASGIConnection[Any, Any, Any, Any]) -> None:
    """For an answer no route took (no middleware ran): the session read as the session
    middleware reads it, and its key checked as :func:`signed_in` checks it, writing
    nothing; ``connection.state.principal`` set when it may use the console. Read as an
    error page's body is sent: anything that fails is taken as no session."""
    backend = _RotatingBackend(config=session_config(secure=False))
    try:
        session = await backend.load_from_connection(connection)
        digest_hex = session.get("digest")
        if not isinstance(digest_hex, str):
            return
        found = await console_principal(connection, bytes.fromhex(digest_hex))
    except Exception:  # Valkey, PostgreSQL away, a digest that is no hex: the page all the same
        return
    if found is not None:
        connection.state.principal = found


def principal(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    found = connection.state.principal
    assert isinstance(found, Principal)
    return found
