"""GS1 EPCIS 2.0 REST binding: capture (org keys, at their own GLNs) and queries
(investigator, admin). Errors are the standard's exception types as problem details."""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

import fastjsonschema
import msgspec
from jsonschema import Draft7Validator
from litestar import Controller, HttpMethod, Request, Response, get, post, route
from litestar.datastructures import ResponseHeader
from litestar.exceptions import PermissionDeniedException
from litestar.openapi.spec import OpenAPIFormat, OpenAPIType, Schema
from litestar.params import FromPath, QueryParameter

from service.api.auth import principal_of, requires
from service.api.deps import Services
from service.api.errors import ANSWER_HEADERS, EPCIS_VERSIONS, epcis_problem, refuse_nul_and_bad_text
from service.api.openapi import BEARER, KEYED, body, problems
from service.core.auth import Role
from service.core.events import MAX_CODES_PER_REQUEST, bound_problem
from service.interop.epcis.mapping import (
    EVENT_TYPES,
    GS1_CONTEXT_PREFIX,
    biz_step,
    canonical_id,
    disposition_spellings,
    epc_count,
    is_uri,
    own_context,
    query_keys,
    read_time,
    unpacks_all,
)
from service.usecases import epcis as usecase

MAX_EVENTS = 10_000  # per capture (GS1-EPCIS-Capture-Limit)
MAX_UNPACK_ALL = 1_000  # AggregationEvent DELETEs naming no children, per capture
VERSIONS = EPCIS_VERSIONS
# EPCs are answered as they were captured: a URN stays a URN, a Digital Link a Digital Link
# (a Digital Link's GTIN does not say where its company prefix ends, which its URN needs).
# The binding's default when a client names none is Always_GS1_Digital_Link: this service
# announces what it does instead, on every answer, and refuses a request for a translation.
EPC_FORMAT = "Never_Translates"
EPC_FORMATS = ("No_Preference", "Always_GS1_Digital_Link", "Always_EPC_URN", "Never_Translates")

# Headers the answers carry, for the OpenAPI document (the handlers set them)
CAPTURE_JOB_LOCATION = ResponseHeader(
    name="Location",
    documentation_only=True,
    description="The capture job",
    value="/epcis/capture/{captureID}",  # its form (a string), not sent: the handler sets it
)
NEXT_PAGE_LINK = ResponseHeader(
    name="Link",
    documentation_only=True,
    description="The next page, when there is one",
    value='</epcis/events?...&nextPageToken=...>; rel="next"',  # its form, not sent
)
ANSWERS = {**VERSIONS, "GS1-EPC-Format": EPC_FORMAT}
CONTEXT = f"{GS1_CONTEXT_PREFIX}2.0.0/epcis-context.jsonld"


# the query parameters GET /epcis/events takes
QUERY_PARAMETERS = (
    "eventType",
    "GE_eventTime",
    "LT_eventTime",
    "GE_recordTime",
    "LT_recordTime",
    "EQ_action",
    "EQ_bizStep",
    "EQ_disposition",
    "EQ_readPoint",
    "EQ_bizLocation",
    "MATCH_epc",
    "MATCH_anyEPC",
    "MATCH_parentID",
    "EQ_eventID",
    "perPage",
    "nextPageToken",
)
# The binding's other query parameters of GET /events with fixed names, which this service
# does not offer: 501 ImplementationException ("functionality not supported"), not the
# 400 of a name that is none of the standard's (found by a probe: all were 400s)
NOT_OFFERED = (
    "EQ_persistentDisposition_set",
    "EQ_persistentDisposition_unset",
    "WD_readPoint",
    "WD_bizLocation",
    "EQ_transformationID",
    "MATCH_inputEPC",
    "MATCH_outputEPC",
    "MATCH_epcClass",
    "MATCH_inputEPCClass",
    "MATCH_outputEPCClass",
    "MATCH_anyEPCClass",
    "EQ_quantity",
    "GT_quantity",
    "GE_quantity",
    "LT_quantity",
    "LE_quantity",
    "EXISTS_errorDeclaration",
    "GE_errorDeclarationTime",
    "LT_errorDeclarationTime",
    "EQ_errorReason",
    "EQ_correctiveEventID",
    "orderBy",
    "orderDirection",
    "eventCountLimit",
    "maxEventCount",
    "GE_startTime",
    "LT_startTime",
    "GE_endTime",
    "LT_endTime",
    "EQ_type",
    "EQ_deviceID",
    "EQ_dataProcessingMethod",
    "EQ_microorganism",
    "EQ_chemicalSubstance",
    "EQ_bizRules",
    "EQ_stringValue",
    "EQ_hexBinaryValue",
    "EQ_uriValue",
    "EQ_booleanValue",
)
# ... and the standard's parameters named after a field, an extension or a unit
# (EQ_<field>, EQ_INNER_<field>, EXISTS_ILMD_<field>, HASATTR_<field>, EQATTR_<field>_<attr>,
# GE_value_<uom>, ...): not offered either
FIELD_PREFIXES = ("EQ_", "GT_", "GE_", "LT_", "LE_", "EXISTS_", "HASATTR_", "EQATTR_")
ACTIONS = ("ADD", "OBSERVE", "DELETE")

DATE_TIME = OpenAPIFormat.DATE_TIME
PER_PAGE_DEFAULT = 30
PER_PAGE_MAX = 1000  # a larger perPage is a page of this many

# where each kind of document a capture takes holds its events
_EVENT_LISTS: dict[str, tuple[str, ...]] = {
    "EPCISDocument": ("epcisBody", "eventList"),
    "EPCISQueryDocument": ("epcisBody", "queryResults", "resultsBody", "eventList"),
}


def _walk(value: Any, path: tuple[str, ...]) -> Any:
    """``value[path[0]][path[1]]...``, or None where a step is missing or not an object."""
    for step in path:
        value = value.get(step) if isinstance(value, dict) else None
    return value


def _limits(settings_bytes: int) -> dict[str, str]:
    return {
        **VERSIONS,
        "GS1-EPCIS-Capture-Limit": str(MAX_EVENTS),
        "GS1-EPCIS-Capture-File-Size-Limit": str(settings_bytes),
    }


def _answer_headers(request: Request[Any, Any, Any]) -> dict[str, str]:
    """The headers every answer under /epcis carries, refusals too (``errors.ANSWER_HEADERS``):
    the versions, and a capture's (a POST) its limits, which a refused one needs most."""
    if request.method == "POST":
        return _limits(request.app.state.settings.max_body_bytes)
    return ANSWERS


class CaptureJobOut(msgspec.Struct):
    captureID: str
    running: bool
    success: bool
    captureErrorBehaviour: str
    createdAt: datetime
    finishedAt: datetime
    errors: list[dict[str, Any]]
    eventCount: int
    # events stored with no custody effect though their step names one (this service's
    # own: a shipping event naming no destination), as errors are named
    warnings: list[dict[str, Any]]


class QueryResults(msgspec.Struct):
    queryName: str
    resultsBody: dict[str, list[dict[str, Any]]]


class QueryBody(msgspec.Struct):
    queryResults: QueryResults


class EPCISQueryDocument(msgspec.Struct, rename={"context": "@context"}):
    context: list[Any]
    type: str
    schemaVersion: str
    creationDate: datetime
    epcisBody: QueryBody


def _job_out(job: usecase.Job) -> CaptureJobOut:
    return CaptureJobOut(
        captureID=job.capture_id,
        running=False,
        success=job.success,
        captureErrorBehaviour=job.behaviour,
        createdAt=job.created_at,
        finishedAt=job.finished_at,
        errors=job.errors,
        eventCount=job.events,
        warnings=job.warnings,
    )


@functools.cache
def schema_validators(path: Path) -> tuple[Callable[[Any], Any], Draft7Validator]:
    """GS1's schema compiled by fastjsonschema (a yes or no, seven times faster on a
    document of a thousand EPCs), and jsonschema's validator, which names every error.
    The app builds them as it starts: a missing or broken schema file stops it there."""
    schema = json.loads(path.read_text(encoding="utf-8"))
    return fastjsonschema.compile(schema), Draft7Validator(schema)


def _schema_errors(
    doc: dict[str, Any], schema: Path | None, list_path: tuple[str, ...] | None
) -> tuple[dict[int, tuple[str, str]], list[str]]:
    """Schema errors by event index (of the event list at ``list_path`` in ``doc``; None
    for a single event), and those of the document itself."""
    if schema is None:
        return {}, []
    quick, full = schema_validators(schema)
    try:
        quick(doc)
    except fastjsonschema.JsonSchemaException:
        pass  # jsonschema says which events, and why (and has the last word)
    else:
        return {}, []
    by_event: dict[int, tuple[str, str]] = {}
    other: list[str] = []
    for err in full.iter_errors(doc):
        path = list(err.absolute_path)
        if err.validator == "required" and isinstance(err.instance, dict):  # name the field missing
            path += [p for p in err.validator_value if p not in err.instance][:1]
        n = len(list_path) if list_path else 0
        if list_path and len(path) > n and tuple(path[:n]) == list_path and isinstance(path[n], int):
            by_event.setdefault(path[n], (_field(path[n + 1 :]) or "event", err.message[:300]))
        else:
            other.append(f"{_field(path) or 'document'}: {err.message[:300]}")
    return by_event, other


def _field(path: list[Any]) -> str:
    """A JSON path as the service names fields: ``epcList[1]``, ``bizLocation.id``."""
    named = ""
    for step in path:
        named += f"[{step}]" if isinstance(step, int) else f".{step}" if named else str(step)
    return named


async def _body(request: Request[Any, Any, Any]) -> Any:
    """The captured JSON or JSON-LD. A body declared as another media type is the binding's
    415 (no declared type is read as JSON, as elsewhere in the API)."""
    declared = request.headers.get("content-type")
    if declared is not None:
        media_type = declared.partition(";")[0].strip().lower()
        if media_type not in ("application/json", "application/ld+json") and not media_type.endswith("+json"):
            detail = f"a capture is JSON or JSON-LD (application/json, application/ld+json), not {media_type}"
            raise epcis_problem(415, "UnsupportedMediaTypeException", detail)
    return _decode(await request.body())


def _decode(body: bytes) -> Any:
    try:
        return msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise epcis_problem(400, "ValidationException", f"not JSON: {exc}") from None
    except RecursionError:  # msgspec's decoder recurses (a document ~1,000 levels deep was a 500)
        raise epcis_problem(400, "ValidationException", "JSON nested too deep") from None


def _version(header: str, raw: str) -> tuple[int, int, int]:
    parts = raw.strip().split(".")
    if not (len(parts) <= 3 and all(p.isascii() and p.isdigit() and len(p) <= 6 for p in parts)):
        raise epcis_problem(400, "ValidationException", f"{header}: not a version such as 2.0.0")
    major, minor, patch = (int(p) for p in (*parts, "0", "0")[:3])
    return major, minor, patch


async def check_versions(request: Request[Any, Any, Any]) -> None:
    """The binding's version headers: what a client says it sends (``GS1-EPCIS-Version``,
    ``GS1-CBV-Version``: 2.0.x) or will take (``-Min`` / ``-Max``: a range holding 2.0.0)
    must be what this service speaks, else 406 NotAcceptableException."""
    for standard in ("EPCIS", "CBV"):
        name = f"GS1-{standard}-"
        given = {part: request.headers.get(name + part) for part in ("Version", "Min", "Max")}
        ours = _version(name + "Version", VERSIONS[name + "Version"])
        wanted = {part: _version(name + part, raw) for part, raw in given.items() if raw is not None}
        if (
            ("Version" in wanted and wanted["Version"][:2] != ours[:2])
            or ("Min" in wanted and wanted["Min"] > ours)
            or ("Max" in wanted and wanted["Max"] < ours)
        ):
            asked = ", ".join(f"{name}{part}: {given[part]}" for part in wanted)
            raise epcis_problem(
                406,
                "NotAcceptableException",
                f"{asked}; this service speaks {standard} {'.'.join(map(str, ours))}",
            )


def check_epc_format(request: Request[Any, Any, Any]) -> None:
    """The binding's ``GS1-EPC-Format``: EPCs are answered as captured (``EPC_FORMAT``),
    so a request for ``Always_GS1_Digital_Link`` or ``Always_EPC_URN`` is a 406
    NotAcceptableException (found by a probe: it was ignored, and the answer mixed both
    forms), and a value the binding does not define a 400 naming the header."""
    asked = request.headers.get("GS1-EPC-Format")
    if asked is None or asked in ("No_Preference", EPC_FORMAT):
        return
    if asked not in EPC_FORMATS:
        raise epcis_problem(400, "ValidationException", f"GS1-EPC-Format: one of {', '.join(EPC_FORMATS)}")
    raise epcis_problem(
        406,
        "NotAcceptableException",
        f"GS1-EPC-Format: {asked}; this service answers EPCs as they were captured"
        f" (GS1-EPC-Format: {EPC_FORMAT}): ask with {EPC_FORMAT} or No_Preference",
    )


def check_accept(request: Request[Any, Any, Any]) -> None:
    """An ``Accept`` that takes no JSON (``application/xml``: the binding's XML, which this
    service does not speak) is a 406 NotAcceptableException, not an answer in JSON (a
    probe); none, or one taking ``*/*``, is answered in JSON."""
    asked = request.headers.get("accept", "").strip()
    if asked and request.accept.best_match(list(_JSON)) is None:
        raise epcis_problem(
            406, "NotAcceptableException", f"Accept: {asked[:100]}; this service answers {' or '.join(_JSON)}"
        )


async def check_request(request: Request[Any, Any, Any]) -> None:
    """The app's checks of every request (a route's own ``before_request`` replaces the
    app's: without them a NUL in a query was a 500, found by scripts/fuzz.py), then the
    binding's version headers, what the client accepts, and a query's EPC format."""
    await refuse_nul_and_bad_text(request)
    await check_versions(request)
    check_accept(request)
    if request.method == "GET" and request.scope["path"].startswith("/epcis/events"):
        check_epc_format(request)  # (a capture job names no EPCs)


# What a capture takes, for the OpenAPI document (the handlers read the body themselves:
# GS1's JSON Schema decides, and a refused document is the binding's exception).
_JSON = ("application/json", "application/ld+json")
_GS1_SCHEMA = "GS1's EPCIS 2.0 JSON Schema (https://gs1.github.io/EPCIS/EPCIS-JSON-Schema.json)"
EVENT_SCHEMA = Schema(
    type=OpenAPIType.OBJECT,
    required=["@context", "type", "eventTime", "eventTimeZoneOffset"],
    properties={"type": Schema(type=OpenAPIType.STRING, enum=sorted(EVENT_TYPES))},
    description=f"An EPCIS 2.0 event in JSON or JSON-LD, as {_GS1_SCHEMA} defines it",
)
DOCUMENT_SCHEMA = Schema(
    type=OpenAPIType.OBJECT,
    required=["type", "schemaVersion", "creationDate"],
    properties={
        "type": Schema(type=OpenAPIType.STRING, enum=sorted(_EVENT_LISTS)),
        "epcisBody": Schema(
            type=OpenAPIType.OBJECT, description="eventList (or queryResults.resultsBody.eventList)"
        ),
    },
    description=f"An EPCISDocument or EPCISQueryDocument, as {_GS1_SCHEMA} defines it",
)
_EXAMPLE_CONTEXT = ["https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"]
_EXAMPLE_COMMISSION = {
    "type": "ObjectEvent",
    "eventTime": "2026-03-02T08:00:00+08:00",
    "eventTimeZoneOffset": "+08:00",
    "action": "ADD",
    "bizStep": "commissioning",
    "bizLocation": {"id": "urn:epc:id:sgln:0614141.07346.0"},
    "epcList": ["urn:epc:id:sgtin:0614141.107346.2018"],
    "ilmd": {"cbvmda:lotNumber": "L2603", "cbvmda:itemExpirationDate": "2028-02-29"},
}
EXAMPLE_EVENT = {"@context": _EXAMPLE_CONTEXT, **_EXAMPLE_COMMISSION}  # alone, it names its context
EXAMPLE_DOCUMENT = {
    "@context": _EXAMPLE_CONTEXT,
    "type": "EPCISDocument",
    "schemaVersion": "2.0",
    "creationDate": "2026-03-02T08:00:00+08:00",
    "epcisBody": {"eventList": [_EXAMPLE_COMMISSION]},
}


# The binding's resources this service does not offer (GET /epcis/capture, the
# top-level resource, event types, EPCs, business steps, locations, read points,
# dispositions, named queries and subscriptions, dropping a page token): the binding's 501
# ImplementationException, with its headers (found by a probe: 404 and 405 answers of
# the service's own shape); a path the binding has not stays a 404 NoSuchResourceException.
_NOT_OFFERED_PATHS = [
    "/",
    *(f"/{r}" for r in ("eventTypes", "epcs", "bizSteps", "bizLocations", "readPoints", "dispositions")),
    *(
        f"/{r}/{{rest:path}}"
        for r in ("eventTypes", "epcs", "bizSteps", "bizLocations", "readPoints", "dispositions")
    ),
]


class EpcisController(Controller):
    path = "/epcis"
    tags = ["epcis"]
    security = BEARER
    before_request = staticmethod(check_request)
    opt = {ANSWER_HEADERS: _answer_headers}

    async def _capture(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        events: list[Any],
        doc: dict[str, Any],
        list_path: tuple[str, ...] | None,
        behaviour: str,
    ) -> usecase.Captured:
        principal = principal_of(request)
        if principal.role is not Role.ORG or principal.org is None:
            raise PermissionDeniedException("capture needs an org key")
        if len(events) > MAX_EVENTS:
            raise epcis_problem(
                413, "CaptureLimitExceededException", f"{len(events)} events; at most {MAX_EVENTS}"
            )
        # /v1/events' limit of codes a request (one event of 300,000 EPCs held the event
        # loop for seconds: found by a probe); counted before the schema reads them all
        epcs = sum(epc_count(e) for e in events if isinstance(e, dict))
        if epcs > MAX_CODES_PER_REQUEST:
            raise epcis_problem(
                413,
                "CaptureLimitExceededException",
                f"{epcs} EPCs in the events' lists; at most {MAX_CODES_PER_REQUEST} a capture",
            )
        # an unpack naming no children reads its container's history (what it held at its
        # time): 1,000 took 1.4 s here, 3,000 took 6.5 s, all of it in one request
        emptying = sum(1 for e in events if isinstance(e, dict) and unpacks_all(e) is not None)
        if emptying > MAX_UNPACK_ALL:
            raise epcis_problem(
                413,
                "CaptureLimitExceededException",
                f"{emptying} AggregationEvent DELETEs naming no children; at most {MAX_UNPACK_ALL} a capture",
            )
        invalid, other = _schema_errors(doc, services.settings.epcis_schema, list_path)
        if other:
            raise epcis_problem(400, "ValidationException", "; ".join(other[:5]))
        for i, e in enumerate(events):
            if not isinstance(e, dict):
                raise epcis_problem(400, "ValidationException", f"eventList[{i}]: not an object")
        try:
            captured = await usecase.capture(
                services.pool, principal.org, events, behaviour, invalid, own_context(doc)
            )
        except usecase.ForeignLocation as exc:
            raise epcis_problem(403, "SecurityException", str(exc)) from None
        if captured.result.flags:
            services.feed_wake()
        return captured

    @post(
        "/capture",
        status_code=202,
        response_headers=[CAPTURE_JOB_LOCATION],
        guards=[requires(Role.ORG)],
        responses=problems(*KEYED, 406, 413, 415),
        operation_class=body("The document to capture", DOCUMENT_SCHEMA, EXAMPLE_DOCUMENT, *_JSON),
    )
    async def capture(self, request: Request[Any, Any, Any], services: Services) -> Response[CaptureJobOut]:
        """Capture an EPCISDocument, or the events of an EPCISQueryDocument (JSON or
        JSON-LD). The job is done when this answers."""
        doc = await _body(request)
        kind = doc.get("type") if isinstance(doc, dict) else None
        list_path = _EVENT_LISTS.get(kind) if isinstance(kind, str) else None  # (a list is no key)
        events = _walk(doc, list_path) if list_path else None
        if list_path is None or not isinstance(events, list):
            raise epcis_problem(
                400,
                "ValidationException",
                "an EPCISDocument with epcisBody.eventList, or an EPCISQueryDocument "
                "with epcisBody.queryResults.resultsBody.eventList",
            )
        behaviour = request.headers.get("GS1-Capture-Error-Behaviour", "rollback").lower()
        if behaviour not in ("rollback", "proceed"):
            raise epcis_problem(
                400, "ValidationException", "GS1-Capture-Error-Behaviour: rollback or proceed"
            )
        captured = await self._capture(request, services, events, doc, list_path, behaviour)
        job = captured.job
        headers = {
            **_limits(services.settings.max_body_bytes),
            "Location": f"/epcis/capture/{job.capture_id}",
        }
        return Response(_job_out(job), status_code=202, headers=headers)

    @get("/capture/{capture_id:str}", guards=[requires(Role.ORG)], responses=problems(*KEYED, 404, 406))
    async def capture_job(
        self, request: Request[Any, Any, Any], services: Services, capture_id: FromPath[str]
    ) -> Response[CaptureJobOut]:
        """A capture job: its outcome and errors (its own organisation's, or any for admin)."""
        job = await usecase.get_job(services.pool, capture_id)
        principal = principal_of(request)
        if job is None or not principal.may_act_for(job.org):
            raise epcis_problem(404, "NoSuchResourceException", f"no capture job {capture_id}")
        return Response(_job_out(job), headers=ANSWERS)

    @post(
        "/events",
        status_code=202,
        response_headers=[CAPTURE_JOB_LOCATION],
        guards=[requires(Role.ORG)],
        responses=problems(*KEYED, 406, 409, 413, 415),
        operation_class=body("The event to capture", EVENT_SCHEMA, EXAMPLE_EVENT, *_JSON),
    )
    async def capture_event(
        self, request: Request[Any, Any, Any], services: Services
    ) -> Response[CaptureJobOut]:
        """Capture one event: it is taken or not (a 400 stores nothing). The binding's
        single-event capture has no ``GS1-Capture-Error-Behaviour``: one sent is ignored
        (under ``proceed`` the event was stored with its refused codes left out, and
        answered 400: found by a probe)."""
        event = await _body(request)
        if not isinstance(event, dict):
            raise epcis_problem(400, "ValidationException", "an EPCIS event object")
        captured = await self._capture(request, services, [event], event, None, "rollback")
        job = captured.job
        if not job.success:
            first = job.errors[0]
            if first["type"] == "epcisException:ResourceAlreadyExistsException":
                raise epcis_problem(409, "ResourceAlreadyExistsException", first["detail"], errors=job.errors)
            raise epcis_problem(400, "ValidationException", first["detail"], errors=job.errors)
        headers = {
            **_limits(services.settings.max_body_bytes),
            "Location": f"/epcis/capture/{job.capture_id}",
        }
        return Response(_job_out(job), status_code=202, headers=headers)

    @get(
        "/events",
        guards=[requires(Role.INVESTIGATOR)],
        responses=problems(*KEYED, 406),
        response_headers=[NEXT_PAGE_LINK],
    )
    async def events(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        event_type: Annotated[str | None, QueryParameter(name="eventType")] = None,
        # read here, not by Litestar, so that a bad one is the binding's exception naming it
        ge_time: Annotated[str | None, QueryParameter(name="GE_eventTime", format=DATE_TIME)] = None,
        lt_time: Annotated[str | None, QueryParameter(name="LT_eventTime", format=DATE_TIME)] = None,
        eq_biz_step: Annotated[str | None, QueryParameter(name="EQ_bizStep")] = None,
        eq_biz_location: Annotated[str | None, QueryParameter(name="EQ_bizLocation")] = None,
        ge_record: Annotated[str | None, QueryParameter(name="GE_recordTime", format=DATE_TIME)] = None,
        lt_record: Annotated[str | None, QueryParameter(name="LT_recordTime", format=DATE_TIME)] = None,
        eq_action: Annotated[str | None, QueryParameter(name="EQ_action")] = None,
        eq_disposition: Annotated[str | None, QueryParameter(name="EQ_disposition")] = None,
        eq_read_point: Annotated[str | None, QueryParameter(name="EQ_readPoint")] = None,
        eq_event_id: Annotated[str | None, QueryParameter(name="EQ_eventID")] = None,
        match_epc: Annotated[str | None, QueryParameter(name="MATCH_epc")] = None,
        match_any_epc: Annotated[str | None, QueryParameter(name="MATCH_anyEPC")] = None,
        match_parent_id: Annotated[str | None, QueryParameter(name="MATCH_parentID")] = None,
        per_page: Annotated[
            str | None, QueryParameter(name="perPage", description="1 or more (30); pages hold at most 1000")
        ] = None,
        next_page_token: Annotated[str | None, QueryParameter(name="nextPageToken")] = None,
    ) -> Response[EPCISQueryDocument]:
        """Events matching every parameter given (each list pipe-delimited, any of its
        values), in capture order; a ``Link: rel="next"`` header pages on. Another of the
        standard's parameters is a 501 ImplementationException; a name that is none of
        the standard's, a QueryParameterException."""

        def many(value: str | None) -> list[str] | None:
            return value.split("|") if value is not None else None

        _check_parameter_names(set(request.query_params))
        given = Counter(k for k, _ in request.query_params.multi_items())
        repeated = sorted(k for k, n in given.items() if n > 1)
        if repeated:  # which one counts would be a guess: a list is pipe-delimited
            raise epcis_problem(
                400, "QueryParameterException", f"{', '.join(repeated)}: given more than once"
            )
        # "MATCH_epc=" matched every event (found by a probe): an empty value, or an empty
        # item of a list, is no value
        empty = sorted(k for k, v in request.query_params.multi_items() if "" in v.split("|"))
        if empty:
            raise epcis_problem(400, "QueryParameterException", f"{', '.join(empty)}: an empty value")
        types = many(event_type)
        # an extension event type is named by a URI (the binding's EPCISEventTypes): taken,
        # and it matches nothing, as this service keeps the five standard types only
        if types and (odd := sorted(t for t in set(types) - EVENT_TYPES if not is_uri(t))):
            raise epcis_problem(
                400,
                "QueryParameterException",
                f"eventType: {', '.join(odd)[:200]} is not an event type"
                f" (one of {', '.join(sorted(EVENT_TYPES))}, or an extension type's URI)",
            )
        actions = many(eq_action)
        if actions and (odd := sorted(set(actions) - set(ACTIONS))):
            raise epcis_problem(
                400,
                "QueryParameterException",
                f"EQ_action: {', '.join(odd)[:200]} is not one of {', '.join(ACTIONS)}",
            )
        dispositions = many(eq_disposition)
        event_ids = many(eq_event_id)
        after = 0
        if next_page_token:
            # ASCII digits only ("³".isdigit() is true), and within a bigint
            if not (next_page_token.isascii() and next_page_token.isdigit() and len(next_page_token) <= 18):
                raise epcis_problem(
                    400, "QueryParameterException", "nextPageToken: not a token of this service"
                )
            after = int(next_page_token)
        page_size = _per_page(per_page)
        steps = many(eq_biz_step)
        # identifiers in any form: a code's URN, Digital Link or own form, a location's
        # SGLN, Digital Link or GLN, a pattern of one product's EPCs (found by a probe:
        # they were compared as written)
        identified = {
            "EQ_bizLocation": many(eq_biz_location),
            "EQ_readPoint": many(eq_read_point),
            "MATCH_epc": many(match_epc),
            "MATCH_anyEPC": many(match_any_epc),
            "MATCH_parentID": many(match_parent_id),
        }
        keys: dict[str, list[str]] = {}
        for name, values in identified.items():
            try:
                keys[name] = query_keys(name, values or [])
            except ValueError as exc:
                raise epcis_problem(400, "QueryParameterException", f"{name}: {exc}") from None
        q = usecase.Query(
            event_types=types,
            ge_time=_bound("GE_eventTime", ge_time),
            lt_time=_bound("LT_eventTime", lt_time),
            biz_steps=[biz_step(s) or s for s in steps] if steps else None,
            biz_locations=identified["EQ_bizLocation"],
            epcs=identified["MATCH_epc"],
            any_epcs=identified["MATCH_anyEPC"],
            parent_ids=identified["MATCH_parentID"],
            biz_location_keys=keys["EQ_bizLocation"],
            epc_keys=keys["MATCH_epc"],
            any_epc_keys=keys["MATCH_anyEPC"],
            parent_id_keys=keys["MATCH_parentID"],
            # a UUID eventID in any case, and as an earlier version kept it (usecase.event)
            event_ids=[i for e in event_ids for i in dict.fromkeys((canonical_id(e), e))]
            if event_ids
            else None,
            actions=actions,
            dispositions=[d for v in dispositions for d in disposition_spellings(v)]
            if dispositions
            else None,
            read_points=identified["EQ_readPoint"],
            read_point_keys=keys["EQ_readPoint"],
            ge_record_time=_bound("GE_recordTime", ge_record),
            lt_record_time=_bound("LT_recordTime", lt_record),
            after_seq=after,
        )
        page = await usecase.events(services.pool, q, page_size)
        headers = dict(ANSWERS)
        if page.next_token is not None:
            # the same query, page size and all, from the next token on (as the binding's example)
            paging = ("perPage", "nextPageToken")
            kept = [(k, v) for k, v in request.query_params.multi_items() if k not in paging]
            pairs = [("perPage", page_size), *kept, ("nextPageToken", page.next_token)]
            # a URN's ":" as it is (a query may hold it): escaped, the link of a long query
            # (1,500 EPCs in MATCH_epc) grew past what the server takes (a probe)
            query = urlencode(pairs, quote_via=lambda text, *_: quote(text, safe=":"))
            headers["Link"] = f'</epcis/events?{query}>; rel="next"'
        return Response(_document(page.events), headers=headers)

    @get(
        "/events/{event_id:path}", guards=[requires(Role.INVESTIGATOR)], responses=problems(*KEYED, 404, 406)
    )
    async def event(self, services: Services, event_id: FromPath[str]) -> Response[EPCISQueryDocument]:
        """One event by its eventID."""
        found = await usecase.event(services.pool, event_id.lstrip("/"))
        if found is None:
            raise epcis_problem(404, "NoSuchResourceException", f"no event {event_id}")
        return Response(_document([found]), headers=ANSWERS)

    # what the binding defines and this service does not offer: 501 to any key
    async def _refuse(self, request: Request[Any, Any, Any]) -> Response[None]:
        raise epcis_problem(
            501,
            "ImplementationException",
            f"{request.method} {request.scope['path']}: not offered by this service"
            " (it offers capture, capture jobs by id, and GET /epcis/events and /epcis/events/{eventID})",
        )

    @get(_NOT_OFFERED_PATHS, guards=[requires(*Role)], include_in_schema=False)
    async def resources(self, request: Request[Any, Any, Any]) -> Response[None]:
        return await self._refuse(request)

    @get("/capture", guards=[requires(*Role)], include_in_schema=False)
    async def capture_jobs(self, request: Request[Any, Any, Any]) -> Response[None]:
        return await self._refuse(request)

    @route(
        ["/queries", "/queries/{rest:path}"],
        http_method=[HttpMethod.GET, HttpMethod.POST, HttpMethod.DELETE],
        guards=[requires(*Role)],
        include_in_schema=False,
    )
    async def queries(self, request: Request[Any, Any, Any]) -> Response[None]:
        return await self._refuse(request)

    @route(
        "/nextPageToken/{rest:path}",
        http_method=[HttpMethod.DELETE],
        guards=[requires(*Role)],
        include_in_schema=False,
    )
    async def page_token(self, request: Request[Any, Any, Any]) -> Response[None]:
        return await self._refuse(request)


def _check_parameter_names(names: set[str]) -> None:
    """A query parameter this service does not take: a name that is none of the
    standard's (or a supported one in another case: ``eventtype``) is a 400
    QueryParameterException, one of the standard's it does not offer a 501."""
    unknown = names - set(QUERY_PARAMETERS)
    if not unknown:
        return
    supported = {p.lower() for p in QUERY_PARAMETERS}

    def standard(name: str) -> bool:
        if name.lower() in supported:
            return False
        return name in NOT_OFFERED or any(name.startswith(p) and len(name) > len(p) for p in FIELD_PREFIXES)

    foreign = sorted(n for n in unknown if not standard(n))
    if foreign:
        raise epcis_problem(
            400,
            "QueryParameterException",
            f"{', '.join(foreign)[:300]}: not a parameter of the standard's query"
            f" (this service takes: {', '.join(QUERY_PARAMETERS)})",
        )
    raise epcis_problem(
        501,
        "ImplementationException",
        f"{', '.join(sorted(unknown))[:300]}: not offered by this service"
        f" (it takes: {', '.join(QUERY_PARAMETERS)})",
    )


def _per_page(raw: str | None) -> int:
    """The page size asked for, at most 1,000: the binding's perPage is a maximum the
    server need not reach, so a larger one is a page of 1,000, not an error (a probe)."""
    if raw is None:
        return PER_PAGE_DEFAULT
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 10 and int(raw) >= 1):
        raise epcis_problem(
            400, "QueryParameterException", "perPage: a positive integer (pages hold at most 1000)"
        )
    return min(int(raw), PER_PAGE_MAX)


def _bound(name: str, raw: str | None) -> datetime | None:
    """A GE_/LT_eventTime: an RFC 3339 date-time with an offset (as ``since`` on /v1/flags)."""
    if raw is None:
        return None
    at = read_time(raw)
    if at is None:
        raise epcis_problem(
            400, "QueryParameterException", f"{name}: not an RFC 3339 date-time with an offset"
        )
    problem = bound_problem(at)
    if problem:
        raise epcis_problem(400, "QueryParameterException", f"{name}: {problem}")
    return at


def _document(events: list[dict[str, Any]]) -> EPCISQueryDocument:
    return EPCISQueryDocument(
        context=[CONTEXT],
        type="EPCISQueryDocument",
        schemaVersion="2.0",
        creationDate=datetime.now().astimezone(),
        epcisBody=QueryBody(QueryResults("SimpleEventQuery", {"eventList": events})),
    )
