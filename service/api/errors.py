"""Every error leaves as RFC 9457 problem details; nothing internal reaches the client."""

from __future__ import annotations

import logging
import re
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, InternalServerException, ValidationException
from litestar.plugins.problem_details import (
    ProblemDetailsConfig,
    ProblemDetailsException,
    ProblemDetailsPlugin,
)

from service import metrics
from service.api.requestlog import request_id_of
from service.api.types import PATTERN_MEANS
from service.store.db import unavailable, unavailable_cause
from service.usecases.errors import Invalid

log = logging.getLogger(__name__)

_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Request body too large",
    415: "Unsupported media type",
    429: "Too many requests",
    500: "Internal server error",
    503: "Service unavailable",
}
# a JSON \u0000 escape, not an escaped backslash followed by the text "u0000"
_JSON_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")
_UNKNOWN_FIELD = re.compile(r"unknown field `([^`]*)`")
_MISSING_FIELD = re.compile(r"missing required field `([^`]*)`")
_AT_PATH = re.compile(r"\s*-\s*at\s*`\$\.?([^`]*)`\s*$")
_REGEX = re.compile(r"^Expected `str` matching regex '(.*)'$", re.DOTALL)
_MEANS = {repr(pattern)[1:-1]: means for pattern, means in PATTERN_MEANS.items()}  # as msgspec shows it
# Litestar's refusal of a request without a required parameter (it names the URL too)
_MISSING_PARAMETER = re.compile(r"^Missing required (\w+) parameter '([^']*)'")


# Under /epcis, the REST binding's exception types name the service's own refusals (a
# missing key, a role, a body too large or with a NUL, ...) as they name the capture's
EPCIS_EXCEPTIONS = {
    400: "ValidationException",
    401: "SecurityException",
    403: "SecurityException",
    404: "NoSuchResourceException",
    406: "NotAcceptableException",
    413: "CaptureLimitExceededException",
    414: "URITooLongException",
    405: "ImplementationException",  # a method the binding does not define here (none of its own)
    415: "UnsupportedMediaTypeException",
    500: "ImplementationException",
}  # others (429, 503) keep the service's own types: the binding has none for them
# the headers every answer under /epcis carries, those the router answers (a path or
# method it has no route for) too; a route's own (``ANSWER_HEADERS``) replace them
EPCIS_VERSIONS = {"GS1-EPCIS-Version": "2.0.0", "GS1-CBV-Version": "2.0.0"}


# a route's ``opt`` may name the headers each of its answers carries, errors too: a
# function of the request (the EPCIS binding's versions and capture limits)
ANSWER_HEADERS = "answer_headers"


class _Problem(ProblemDetailsException):
    def to_response(self, request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
        """The problem, with the request id of the log line that records it and its
        route's answer headers; under ``/epcis``, typed as the binding's exception
        (unless raised as one)."""
        exception = EPCIS_EXCEPTIONS.get(self.status_code)
        if exception is not None and _under_epcis(request) and not (self.type_ or "").startswith(EPCIS_TYPE):
            self.type_, self.title = f"{EPCIS_TYPE}{exception}", exception
        response = super().to_response(request)
        request_id = request_id_of(request.scope)
        if request_id:
            response.content["request_id"] = request_id
        handler = request.scope.get("route_handler")
        headers_of = handler.opt.get(ANSWER_HEADERS) if handler is not None else None
        if headers_of is not None:
            response.headers.update(headers_of(request))
        elif _under_epcis(request):  # found by a probe: a 404 or 405 of the router had none
            response.headers.update(EPCIS_VERSIONS)
        return response


EPCIS_TYPE = "epcisException:"


def _under_epcis(request: Request[Any, Any, Any]) -> bool:
    path: str = request.scope["path"]
    return path == "/epcis" or path.startswith("/epcis/")


def epcis_problem(status: int, exception: str, detail: str, **extra: Any) -> ProblemDetailsException:
    """The EPCIS binding's exception (``epcisException:ValidationException``, ...) as
    problem details."""
    return _Problem(
        status_code=status,
        title=exception,
        detail=detail,
        type_=f"{EPCIS_TYPE}{exception}",
        extra=extra or None,
    )


def problem(
    status: int,
    detail: str,
    *,
    errors: list[dict[str, str]] | None = None,
    kind: str | None = None,
    headers: dict[str, str] | None = None,
) -> ProblemDetailsException:
    """A problem-details exception. ``kind`` becomes the ``type`` URI's last segment."""
    title = _TITLES.get(status, "Error")
    slug = kind or title.lower().replace(" ", "-")
    extra: dict[str, Any] | None = {"errors": errors} if errors else None
    return _Problem(
        status_code=status,
        title=title,
        detail=detail,
        type_=f"https://tracecode.example/problems/{slug}",
        extra=extra,
        headers=headers,
    )


def bad_input(field: str, message: str) -> ProblemDetailsException:
    """400 naming one field (a JSON path such as ``events[3].at``)."""
    return problem(
        400,
        f"{field}: {message}",
        errors=[{"field": field, "message": message}],
        kind="invalid-input",
    )


def refuse_other_parameters(
    request: Request[Any, Any, Any],
    allowed: tuple[str, ...],
    *,
    others: bool = False,
    integers: tuple[str, ...] = (),
) -> None:
    """A query parameter the route does not take (unless ``others`` may come), or one of
    ``allowed`` given twice, is a 400 naming it rather than ignored: a misspelt filter
    must not list everything, and which of two values counts would be a guess. Those of
    ``integers`` are written in ASCII digits: Litestar reads ``1e3`` as 1000 and ``2.0``
    as 2 (found by a probe: ``limit=1e3`` listed 1,000 flags), which no client means."""
    if not request.scope.get("query_string"):
        return  # the common case, nothing to read
    params = request.query_params
    for name in params:
        if name not in allowed:
            if others:
                continue
            raise bad_input(_short(name), f"not a parameter here ({', '.join(allowed) or 'none'})")
        if len(params.getall(name)) > 1:
            raise bad_input(name, "given more than once: one value")
        if name in integers and not ((value := params[name]).isascii() and value.isdigit()):
            raise bad_input(name, f"a whole number written in digits, not {_short(value, 40)!r}")


def _field_of(item: Any) -> tuple[str, str]:
    message = str(item.get("message", "invalid")) if isinstance(item, dict) else str(item)
    key = item.get("key") if isinstance(item, dict) else None
    match = _AT_PATH.search(message)
    if match:
        message = message[: match.start()]
        key = key or match.group(1)
    if (regex := _REGEX.match(message)) is not None:
        message = "must be " + _MEANS.get(regex.group(1), f"as the pattern {regex.group(1)} says")
    named = _UNKNOWN_FIELD.search(message) or _MISSING_FIELD.search(message)
    if named:  # name the unexpected or missing field itself, not the object holding it
        key = f"{key}.{named.group(1)}" if key else named.group(1)
    return _short(str(key) if key else "body"), _short(message)


def _short(text: str, limit: int = 200) -> str:
    """A field name or message as answered: a key of a megabyte is not sent back whole."""
    return text if len(text) <= limit else text[:limit] + "…"


def _from_validation(exc: ValidationException) -> ProblemDetailsException:
    extra = exc.extra if isinstance(exc.extra, list) else []
    errors = [dict(zip(("field", "message"), _field_of(item), strict=True)) for item in extra]
    missing = _MISSING_PARAMETER.match(str(exc.detail))
    if not errors and missing:  # the parameter itself, as a missing field is named
        errors = [{"field": _short(missing.group(2)), "message": f"a required {missing.group(1)} parameter"}]
    if not errors:
        errors = [{"field": "body", "message": str(exc.detail)}]
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return problem(400, detail, errors=errors, kind="invalid-input")


# the status a request the client abandoned is counted under (nginx's "client closed
# request"): it left while its body was being read, so nothing was stored and no one
# reads the answer. It counted as a 500, which the alerts call a bug (found by a probe:
# a keep-alive connection closed as the client reused it).
CLIENT_GONE = 499
_CLIENT_GONE = "the client closed the connection before its request was read: nothing was stored"


def client_gone(exc: BaseException) -> bool:
    """Did the client close its connection while its body was being read (Litestar's
    ``InternalServerException`` of a disconnect)?"""
    return isinstance(exc, InternalServerException) and exc.detail == "client disconnected prematurely"


def _from_http(exc: HTTPException) -> ProblemDetailsException:
    if isinstance(exc, ValidationException):
        return _from_validation(exc)
    if client_gone(exc):
        log.info("client gone: %s", _CLIENT_GONE)
        return problem(CLIENT_GONE, _CLIENT_GONE)
    status = exc.status_code
    if status == 500:  # e.g. Litestar's own ImproperlyConfiguredException: keep it inside
        log.error("internal error: %s", exc.detail)
        return problem(500, "the service failed to handle this request")
    detail = str(exc.detail) if exc.detail else _TITLES.get(status, "Error")
    if status == 413:
        detail = "the request body is larger than the service accepts"
    if status == 400:  # e.g. a body that is not JSON: still name what was wrong
        return bad_input("body", detail)
    # keep what the answer announces: Retry-After on a 429, Allow on a 405
    return problem(status, detail, headers=dict(exc.headers) if exc.headers else None)


RETRY_AFTER_SECONDS = 5


def failure(request: Request[Any, Any, Any], exc: Exception) -> tuple[int, str, dict[str, str] | None]:
    """An exception no handler expected, as its answer's status, detail and headers: 499
    when the client left while its body was read; 503 while the database is down (or the
    pool full), counted and logged once an outage; otherwise 500, logged with its
    traceback and kept inside."""
    if client_gone(exc):
        log.info("client gone on %s %s: %s", request.method, request.url.path, _CLIENT_GONE)
        return CLIENT_GONE, _CLIENT_GONE, None
    if unavailable(exc):
        metrics.DB_UNAVAILABLE.labels(unavailable_cause(exc)).inc()
        request.app.state.db_outage.begin(exc)
        retry = {"Retry-After": str(RETRY_AFTER_SECONDS)}
        return 503, "the database is unavailable; try again shortly", retry
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return 500, "the service failed to handle this request", None


def _internal(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    status, detail, headers = failure(request, exc)
    return problem(status, detail, headers=headers).to_response(request)


def _from_invalid(exc: Invalid) -> ProblemDetailsException:
    return bad_input(exc.field, exc.message)


def plugin() -> ProblemDetailsPlugin:
    """Litestar's errors and the use cases' refusals (``Invalid``: a 400 naming its field)
    as problem details."""
    return ProblemDetailsPlugin(
        ProblemDetailsConfig(
            exception_to_problem_detail_map={HTTPException: _from_http, Invalid: _from_invalid}
        )
    )


async def refuse_nul_and_bad_text(request: Request[Any, Any, Any]) -> None:
    """PostgreSQL text cannot hold NUL, and every body must be UTF-8: refuse both up
    front with a 400 naming the field rather than failing deep inside a statement."""
    await refuse_nul_in_url(request)
    if request.method in ("POST", "PATCH", "PUT"):
        body = await request.body()
        if request.route_handler.parsed_data_field is not None:  # the route decodes JSON
            _refuse_non_json(request.headers.get("content-type"), body)
        problem = text_problem(body)
        if problem is not None:
            raise bad_input(text_field(body), problem)


async def refuse_nul_in_url(request: Request[Any, Any, Any]) -> None:
    """The URL part of the checks, for a route that answers bad bodies in its own format
    (NHSA's envelope)."""
    if "\x00" in request.scope["path"] or b"%00" in request.scope.get("query_string", b""):
        raise bad_input("url", "NUL characters are not allowed")


def text_field(body: bytes) -> str:
    """Where ``text_problem`` found its problem: the JSON path of the first key or
    string that holds a NUL (``lines[0].codes[1]``), else ``body``."""
    try:
        return _nul_path(msgspec.json.decode(body), "") or "body"
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return "body"


def _nul_path(value: Any, path: str) -> str | None:
    if isinstance(value, str):
        return (path or "body") if "\x00" in value else None
    items: list[tuple[str, str, Any]] = []
    if isinstance(value, dict):
        items = [(f"{path}.{k}" if path else str(k), str(k), v) for k, v in value.items()]
    elif isinstance(value, list):
        items = [(f"{path}[{i}]", "", v) for i, v in enumerate(value)]
    for where, key, v in items:
        if "\x00" in key:
            return where
        if (found := _nul_path(v, where)) is not None:
            return found
    return None


def text_problem(body: bytes) -> str | None:
    """Why a JSON text cannot become PostgreSQL text, or None: a NUL escape, or bytes that
    are not UTF-8. Also for JSON sent inside a string (NHSA's ``input``), decoded later."""
    if b"\\u0000" in body and _JSON_NUL.search(body):
        return "NUL characters (\\u0000) are not allowed in text"
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not UTF-8 (byte {exc.start})"
    return None


def _refuse_non_json(content_type: str | None, body: bytes) -> None:
    """A JSON route says so rather than guessing: another declared media type is a 415
    (no declared type is read as JSON, as curl scripts often send), and an empty body a
    400 naming ``body`` (Litestar would otherwise answer ``data: 'data'``)."""
    if content_type is not None:
        media_type = content_type.partition(";")[0].strip().lower()
        if media_type != "application/json" and not media_type.endswith("+json"):
            raise problem(
                415,
                f"the body must be JSON (Content-Type: application/json), not {media_type or 'empty'}",
                errors=[{"field": "content-type", "message": "must be application/json"}],
            )
    if not body.strip():
        raise bad_input("body", "a JSON body is required")


exception_handlers = {Exception: _internal}


def schema_error(exc: msgspec.ValidationError) -> ProblemDetailsException:
    """400 naming the field msgspec's message points at (``... - at `$.lines[0].quantity```)."""
    field, message = _field_of({"message": str(exc)})
    return bad_input(field, message)
