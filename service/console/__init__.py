"""The investigator console: server-rendered pages at ``/console`` over the same use
cases as the API (``service/usecases``), signed in with an investigator's or admin's key.

Wiring for ``service/app.py``: :func:`router` (pages, static files, the session and
CSRF middleware, the security headers), :func:`template_config`, and
:func:`use_redis` once the app's Redis client exists (sessions live there, so every
worker sees them; in memory when there is no Redis).
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from litestar import Litestar, Request, Response, Router
from litestar.config.csrf import CSRFConfig
from litestar.datastructures import ResponseHeader
from litestar.exceptions import NotFoundException, PermissionDeniedException, ValidationException
from litestar.middleware import DefineMiddleware
from litestar.middleware.csrf import CSRFMiddleware
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

from service.config import Settings
from service.console import auth, text
from service.console.pages import ConsoleController, InvestigationController, SignInController, page, when

PATH = "/console"
_STATIC = Path(__file__).parent / "static"

# no inline script or style anywhere: the pages' own files only
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def _secret(settings: Settings) -> str:
    """The CSRF signing secret, derived from the service's secret so that every worker
    agrees on it."""
    return hmac.new(settings.psn_secret, b"tracecode console csrf", hashlib.sha256).hexdigest()


def _to_signin(request: Request[Any, Any, Any], _: auth.SignInRequired) -> Response[Any]:
    return Redirect(f"{PATH}/signin", status_code=303)


def _refused(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    status = (
        404 if isinstance(exc, NotFoundException) else 400 if isinstance(exc, ValidationException) else 403
    )
    return page(request, "error.html", status_code=status, status=status)


def router(settings: Settings) -> Router:
    secure_cookies = settings.secure_cookies  # TRACE_SECURE_COOKIES: behind TLS
    csrf = CSRFConfig(
        secret=_secret(settings),
        cookie_name="console_csrf",
        cookie_path=PATH,
        cookie_httponly=True,
        cookie_samesite="strict",
        cookie_secure=secure_cookies,
    )
    static = create_static_files_router(path="/static", directories=[_STATIC], opt={"public": True})
    return Router(
        path=PATH,
        route_handlers=[SignInController, ConsoleController, InvestigationController, static],
        middleware=[
            auth.session_config(secure_cookies).middleware,
            DefineMiddleware(CSRFMiddleware, config=csrf),
        ],
        guards=[auth.signed_in],
        exception_handlers={
            auth.SignInRequired: _to_signin,
            PermissionDeniedException: _refused,
            NotFoundException: _refused,
            ValidationException: _refused,
        },
        response_headers=[
            ResponseHeader(name="Content-Security-Policy", value=CSP),
            ResponseHeader(name="X-Content-Type-Options", value="nosniff"),
            ResponseHeader(name="Referrer-Policy", value="same-origin"),
            ResponseHeader(name="Cache-Control", value="no-store"),
        ],
        include_in_schema=False,
    )


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    env = Environment(
        loader=PackageLoader("service.console", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
    )
    env.filters["when"] = when
    env.filters.update(text.FILTERS)
    return TemplateConfig(instance=JinjaTemplateEngine.from_environment(env))


def use_redis(app: Litestar, redis: Any) -> None:
    """Keep console sessions in the app's Redis (shared by every worker)."""
    store = auth.SessionStore(redis, namespace="console")
    app.stores.register(auth.SESSION_STORE, store, allow_override=True)


__all__ = ["PATH", "router", "template_config", "use_redis"]
