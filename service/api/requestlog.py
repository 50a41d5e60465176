"""One structured log line per request (structlog), and the request id that ties a
client's report to it.

The line names the request id, method, route (the template, e.g.
``/v1/codes/{code}/verify``, never the filled-in path), status, duration and the
calling key's id. It never carries a header, a body or a query: the bearer secret, a
person number (``psn_no``) and the like cannot reach the log.

The request id is the client's ``X-Request-ID`` when it is sane (1 to 128 letters,
digits, ``.``, ``_``, ``:`` or ``-``), else a fresh one; it is sent back in the
``X-Request-ID`` response header and in problem details (``request_id``).
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from typing import Any

import msgspec
import structlog
from litestar.datastructures import MutableScopeHeaders
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from service import metrics
from service.config import ACCESS_LOGGER, setup_logging
from service.core.auth import Principal

HEADER = "X-Request-ID"
_SANE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
log = structlog.get_logger(ACCESS_LOGGER)


_ENCODER = msgspec.json.Encoder(enc_hook=repr)  # what JSON lacks, as its repr (as structlog's default)


def _json(event: Any, **_: Any) -> str:
    """A log line's JSON: msgspec's, a fifth of the time of the json module's (a line a
    request)."""
    return _ENCODER.encode(event).decode()


def configure(level: str) -> None:
    """The service's logging at ``level`` (TRACE_LOG_LEVEL), in every process that runs
    the app: a worker that the server spawned starts with no logging set up, and its
    request lines were lost. Request lines are JSON handed to the standard library's
    ``tracecode.access`` logger, so they go wherever the service's logging goes
    (``tracecode serve``: standard error); below ``level`` they are not even rendered."""
    setup_logging()
    for name in ("tracecode", "service"):
        logging.getLogger(name).setLevel(level.upper())
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(serializer=_json),
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def request_id_of(scope: Scope) -> str | None:
    """The id :class:`RequestLog` gave this request (None outside it)."""
    state: dict[str, Any] = scope.get("state") or {}
    rid = state.get("request_id")
    return rid if isinstance(rid, str) else None


def _incoming_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if _SANE.fullmatch(text):
                return text
            break
    return secrets.token_hex(16)  # 32 hex digits, as uuid4().hex, without building a UUID


class RequestLog:
    """ASGI wrapper around the whole application, routing included, so a 404 or 405 is
    logged and numbered like any other answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        rid = _incoming_id(scope)
        scope.setdefault("state", {})["request_id"] = rid
        status = 500  # unless a response starts: the server answers 500 for us
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                MutableScopeHeaders(message)[HEADER] = rid
            await send(message)

        method = scope.get("method", "")
        counted = scope.get("path") != "/metrics"  # a scrape is not traffic
        in_progress = metrics.REQUESTS_IN_PROGRESS.labels(metrics.method_label(method), metrics.APP_NAME)
        if counted:
            in_progress.inc()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            if counted:
                in_progress.dec()
                metrics.request_answered(method, scope.get("path_template") or "unmatched", status, seconds)
            log.info(
                "request",
                request_id=rid,
                method=scope.get("method"),
                route=scope.get("path_template") or None,  # None: no route matched
                status=status,
                duration_ms=round(seconds * 1000, 2),
                key_id=_key_id(scope),
            )


def _key_id(scope: Scope) -> str | None:
    """The key the request was made with: an API request's bearer (the key middleware's
    ``user``), or a console page's signed-in key (its session's principal, kept in the
    connection's state)."""
    user = scope.get("user")
    if not isinstance(user, Principal):
        state = scope.get("state")
        user = state.get("principal") if isinstance(state, dict) else None
    return user.key_id if isinstance(user, Principal) else None
