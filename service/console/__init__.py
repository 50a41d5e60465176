"""The investigator console: server-rendered pages at ``/console`` over the same use
cases as the API (``service/usecases``), signed in with an investigator's or admin's key.

Wiring for ``service/app.py``: :func:`router` (pages, static files, the session and
CSRF middleware, the security headers), :func:`template_config`, :func:`error_pages`
(a plugin, after the problem-details one), and :func:`use_redis` once the app's Redis
client exists (sessions live there, so every worker sees them; in memory when there is
no Redis).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from litestar import Litestar, Request, Response, Router
from litestar.config.app import AppConfig
from litestar.config.csrf import CSRFConfig
from litestar.datastructures import ResponseHeader
from litestar.enums import MediaType
from litestar.middleware import DefineMiddleware
from litestar.middleware.csrf import CSRFMiddleware
from litestar.plugins import InitPluginProtocol
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Stream
from litestar.response.base import ASGIResponse
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig
from litestar.types import ASGIApp, ExceptionHandler
from litestar.utils.scope.state import ScopeState

from service.config import Settings
from service.console import auth, text
from service.console.pages import (
    ConsoleController,
    InvestigationController,
    SignInController,
    event_anchor,
    event_url,
    lot_url,
    org_url,
    page,
    past_expiry,
    short_id,
    to_signin,
    when,
)

PATH = "/console"
CSRF_COOKIE = "console_csrf"
_STATIC = Path(__file__).parent / "static"

# no inline script or style anywhere: the pages' own files only
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
# on every console answer: pages, error pages and the static files
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
# on pages and error pages besides: what they show is kept by no browser or proxy (the
# static files are the same for everyone, and may be)
PAGE_HEADERS = {**SECURITY_HEADERS, "Cache-Control": "no-store"}
# what an error answer announces that its page keeps
_ANNOUNCED = ("allow", "retry-after")
# the statuses an error page explains in its own words; others say "something went wrong"
ERROR_STATUSES = (400, 403, 404, 405, 413, 429, 500, 503)


def _secret(settings: Settings) -> str:
    """The CSRF signing secret, derived from the service's secret so that every worker
    agrees on it."""
    return hmac.new(settings.psn_secret, b"tracecode console csrf", hashlib.sha256).hexdigest()


def _in_console(path: str) -> bool:
    return path == PATH or path.startswith(f"{PATH}/")


def _error_page(request: Request[Any, Any, Any], exc: Exception, answer: Response[Any]) -> Response[Any]:
    """``answer`` (the app's problem details for ``exc``) as a console page in the reader's
    language: the same status and announced headers, the console's security headers."""
    status = answer.status_code or 500
    if isinstance(exc, auth.SessionsUnavailable):
        message = "error.sessions"
    else:
        message = f"error.status.{status}" if status in ERROR_STATUSES else "error.title"
    headers = {**PAGE_HEADERS, **{k: v for k, v in answer.headers.items() if k.lower() in _ANNOUNCED}}
    if "session" in request.scope or auth.SESSION_KEY not in request.cookies:
        return page(request, "error.html", status, headers=headers, status=status, message=message)

    # no route took the request (a page that does not exist, a method it does not take):
    # routing fails before any middleware, so the session is not read and the header
    # showed neither the navigation nor who is signed in (a probe). An exception handler
    # cannot await: the page is made as its body is sent, once the session is read
    async def body() -> AsyncIterator[str]:
        await auth.read_session(request)
        if csrf := request.cookies.get(CSRF_COOKIE):  # the header's forms (language, sign-out)
            ScopeState.from_scope(request.scope).csrf_token = csrf
        made = page(request, "error.html", status, status=status, message=message)
        engine = request.app.template_engine
        assert engine is not None
        yield engine.get_template(made.template_name or "error.html").render(
            **made.create_template_context(request)
        )

    return Stream(body(), status_code=status, headers=headers, media_type=MediaType.HTML)


def _paged(handler: ExceptionHandler[Any]) -> ExceptionHandler[Any]:
    def handle(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
        answer = handler(request, exc)  # as for the API: logged, an outage noted
        return _error_page(request, exc, answer) if _in_console(request.scope["path"]) else answer

    return handle


class _ErrorPages(InitPluginProtocol):
    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        app_config.exception_handlers = {
            key: _paged(handler) for key, handler in app_config.exception_handlers.items()
        }
        return app_config


def error_pages() -> InitPluginProtocol:
    """Every error under ``/console`` as a page (found by a probe: a route that does not
    exist, a flag id that is no number, a NUL in the URL, a method a page does not take,
    PostgreSQL or Valkey away, all reached the browser as problem+json, and those and the
    CSRF refusal without the security headers). It wraps the app's exception handlers,
    routing's included, so it must come after the problem-details plugin that sets them;
    the API's answers are left as they are."""
    return _ErrorPages()


async def _static_headers(response: ASGIApp) -> ASGIApp:
    """The security headers on a static file (a file answer, which the router's
    ``response_headers`` do not reach: a probe found the CSS and script without them)."""
    if isinstance(response, ASGIResponse):
        for name, value in SECURITY_HEADERS.items():
            response.headers[name] = value
    return response


def router(settings: Settings) -> Router:
    secure_cookies = settings.secure_cookies  # TRACE_SECURE_COOKIES: behind TLS
    csrf = CSRFConfig(
        secret=_secret(settings),
        cookie_name=CSRF_COOKIE,
        cookie_path=PATH,
        cookie_httponly=True,
        cookie_samesite="strict",
        cookie_secure=secure_cookies,
    )
    static = create_static_files_router(
        path="/static", directories=[_STATIC], opt={"public": True}, after_request=_static_headers
    )
    return Router(
        path=PATH,
        route_handlers=[SignInController, ConsoleController, InvestigationController, static],
        middleware=[
            auth.session_config(secure_cookies).middleware,
            DefineMiddleware(CSRFMiddleware, config=csrf),
        ],
        guards=[auth.signed_in],
        exception_handlers={auth.SignInRequired: to_signin},  # the others: error_pages()
        response_headers=[ResponseHeader(name=k, value=v) for k, v in PAGE_HEADERS.items()],
        include_in_schema=False,
    )


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    env = Environment(
        loader=PackageLoader("service.console", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
    )
    env.filters["when"] = when
    env.tests["expired"] = past_expiry
    env.filters.update(text.FILTERS)
    env.globals["org_url"] = org_url
    env.globals["lot_url"] = lot_url
    env.globals["event_url"] = event_url
    env.globals["event_anchor"] = event_anchor
    env.filters["short_id"] = short_id
    return TemplateConfig(instance=JinjaTemplateEngine.from_environment(env))


def use_redis(app: Litestar, redis: Any) -> None:
    """Keep console sessions in the app's Redis (shared by every worker)."""
    store = auth.SessionStore(redis, namespace="console")
    app.stores.register(auth.SESSION_STORE, store, allow_override=True)


__all__ = ["PATH", "error_pages", "router", "template_config", "use_redis"]
