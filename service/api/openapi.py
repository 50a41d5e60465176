"""What the OpenAPI document says beyond the handlers' own types: the bearer scheme and
the problem-details answers each route can give."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.spec import (
    Components,
    OpenAPIMediaType,
    Operation,
    RequestBody,
    Schema,
    SecurityRequirement,
    SecurityScheme,
)

PROBLEM_JSON = "application/problem+json"

# Every route but the public ones (/health, /metrics, /schema) needs a key.
BEARER: list[SecurityRequirement] = [{"bearer": []}]


class FieldError(msgspec.Struct):
    field: str  # a JSON path such as events[3].at, or a parameter's name
    message: str


class Problem(msgspec.Struct, omit_defaults=True):
    """RFC 9457 problem details: how every error leaves the service."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldError] | None = None  # each bad field (400; a flag change's stale expected_status, 409)
    request_id: str | None = None  # as in the X-Request-ID header and the request's log line


_MEANING = {
    400: "The request is malformed or breaks the schema; `errors` names each bad field",
    401: "No API key, or an unknown or revoked one",
    403: "The key's role or organisation may not do this",
    404: "Nothing with that id",
    406: "The client asked for a version of the standard this service does not speak",
    409: "The id exists with a different body",
    413: "The request body is larger than the service accepts",
    415: "The body is declared as something other than JSON (Content-Type)",
    429: "This key sent more than its role's rate limit; try again after `Retry-After` seconds",
    503: "The database is unavailable for now; try again after `Retry-After` seconds",
}


def problems(*statuses: int) -> dict[int, ResponseSpec]:
    """The error answers a route can give, each documented as problem details."""
    return {
        status: ResponseSpec(
            data_container=Problem,
            media_type=PROBLEM_JSON,
            description=_MEANING[status],
            generate_examples=False,
        )
        for status in statuses
    }


def unchanged(type_: type[msgspec.Struct]) -> dict[int, ResponseSpec]:
    """The 200 of a create route (201) that was given the same record again."""
    return {
        200: ResponseSpec(
            data_container=type_,
            description="The same record again: nothing changed",
            generate_examples=False,
        )
    }


def stale_flag() -> dict[int, ResponseSpec]:
    """The 409 of a flag change whose ``expected_status`` is not the flag's status."""
    return {
        409: ResponseSpec(
            data_container=Problem,
            media_type=PROBLEM_JSON,
            description=(
                "`expected_status` was given and the flag's status is another (someone changed it "
                "since it was read): nothing changed; `errors` names `expected_status`"
            ),
            generate_examples=False,
        )
    }


# The answers every keyed route can give before its handler runs: a NUL in the URL (400),
# the key middleware (401), the role guards (403) and the key's rate limit (429); and, at
# any point, a database outage (503).
KEYED = (400, 401, 403, 429, 503)
# ... and those of a route that takes a JSON body.
WITH_BODY = (*KEYED, 413, 415)


def config() -> OpenAPIConfig:
    return OpenAPIConfig(
        title="Trace-code settlement service",
        version="1.0.0",
        path="/schema",
        components=Components(
            security_schemes={
                "bearer": SecurityScheme(
                    type="http",
                    scheme="bearer",
                    description="An API key: `Authorization: Bearer <key>` (`tracecode key create`)",
                )
            }
        ),
    )


def body(description: str, schema: Schema, example: Any, *media_types: str) -> type[Operation]:
    """The OpenAPI operation of a route that reads its body itself (an NHSA envelope, an
    EPCIS document) rather than through a typed parameter: Litestar then documents no
    request body, so the operation is given one here (Litestar's ``operation_class``)."""

    @dataclass
    class WithBody(Operation):
        def __post_init__(self) -> None:
            self.request_body = RequestBody(
                description=description,
                required=True,
                content={m: OpenAPIMediaType(schema=schema, example=example) for m in media_types},
            )

    return WithBody
