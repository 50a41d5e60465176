"""POST /v1/events: supply-chain scan events."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec
from litestar import Controller, Request, post
from litestar.exceptions import PermissionDeniedException
from litestar.params import JSONBody

from service.api.auth import principal_of, requires
from service.api.body import StrictJSON
from service.api.deps import Services
from service.api.errors import bad_input
from service.api.openapi import BEARER, WITH_BODY, problems
from service.api.schemas import EventsOut, FlagRef, RejectedOut
from service.api.types import EXAMPLE_TIME, ExampleCodes, OrgId, RawCode, SetlId, Short
from service.core.auth import Role
from service.core.codes import try_parse_code
from service.core.events import MAX_CODES_PER_REQUEST, Incoming, Rejection, shape_errors, take_codes
from service.usecases.events import ingest


class EventIn(msgspec.Struct, forbid_unknown_fields=True, rename={"from_org": "from"}):
    event_id: Annotated[UUID, msgspec.Meta(examples=["6f1c0c8e-0000-4000-8000-000000000004"])]
    type: Annotated[
        Literal["commission", "pack", "unpack", "ship", "receive", "dispense", "return", "destroy"],
        msgspec.Meta(examples=["receive"]),
    ]
    at: Annotated[datetime, msgspec.Meta(tz=True, examples=[EXAMPLE_TIME])]
    org: Annotated[OrgId, msgspec.Meta(examples=["P1"])]
    codes: Annotated[
        list[RawCode], msgspec.Meta(min_length=1, max_length=MAX_CODES_PER_REQUEST), ExampleCodes
    ]
    to: OrgId | None = None
    from_org: OrgId | None = None
    parent: RawCode | None = None
    lot: Short | None = None
    expiry: date | None = None
    produced: date | None = None
    quantity: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)] | None = None
    setl_id: SetlId | None = None
    ref: Annotated[str, msgspec.Meta(max_length=200)] | None = None


class EventsIn(msgspec.Struct, forbid_unknown_fields=True):
    events: Annotated[list[EventIn], msgspec.Meta(min_length=1, max_length=MAX_CODES_PER_REQUEST)]


def _parse(batch: EventsIn, now: datetime) -> tuple[list[Incoming], list[Rejection]]:
    """Shape-check every event (a 400 names the first bad field) and put codes in
    canonical form; codes that are not codes are rejected one by one."""
    total = sum(len(e.codes) for e in batch.events)
    if total > MAX_CODES_PER_REQUEST:
        raise bad_input("events", f"{total} codes in one request; at most {MAX_CODES_PER_REQUEST}")
    incoming: list[Incoming] = []
    refused: list[Rejection] = []
    first: dict[UUID, int] = {}
    for i, e in enumerate(batch.events):
        # an id is one event: sent twice as it is, one fact; with other contents, an error
        j = first.setdefault(e.event_id, i)
        if batch.events[j] != e:
            raise bad_input(f"events[{i}].event_id", f"is the id of events[{j}], which has other contents")
        errors = shape_errors(
            type_=e.type,
            at=e.at,
            now=now,
            to=e.to,
            parent=e.parent,
            lot=e.lot,
            expiry=e.expiry,
            quantity=e.quantity,
            setl_id=e.setl_id,
        )
        if errors:
            field, message = errors[0]
            raise bad_input(f"events[{i}].{field}", message)
        parent = None
        if e.parent is not None:
            parsed_parent = try_parse_code(e.parent)
            if parsed_parent is None:
                raise bad_input(f"events[{i}].parent", "is not a trace code or SSCC")
            parent = parsed_parent.canonical
        parsed = [(raw, try_parse_code(raw)) for raw in e.codes]
        scanned = [(raw, p.canonical if p else None, p) for raw, p in parsed]
        codes, refused_now, labels = take_codes(e.event_id, e.type, scanned, e.lot, e.expiry)
        refused += refused_now
        incoming.append(
            Incoming(
                event_id=e.event_id,
                type=e.type,
                at=e.at.astimezone(UTC),
                org=e.org,
                codes=tuple(codes),
                to=e.to,
                from_org=e.from_org,
                parent=parent,
                lot=e.lot,
                expiry=e.expiry,
                produced=e.produced,
                quantity=e.quantity,
                setl_id=e.setl_id,
                ref=e.ref,
                labels=labels,
            )
        )
    return incoming, refused


class EventsController(Controller):
    path = "/v1/events"
    tags = ["events"]
    guards = [requires(Role.ORG)]
    security = BEARER

    @post("/", status_code=200, dto=StrictJSON[EventsIn], responses=problems(*WITH_BODY))
    async def submit(
        self, request: Request[Any, Any, Any], services: Services, data: JSONBody[EventsIn]
    ) -> EventsOut:
        """Store a batch of scan events; each code is taken or rejected on its own."""
        principal = principal_of(request)
        for i, e in enumerate(data.events):
            if not principal.may_act_for(e.org):
                raise PermissionDeniedException(
                    f"events[{i}].org: this key acts only for organisation {principal.org}"
                )
        incoming, refused = _parse(data, datetime.now(UTC))
        result = await ingest(services.pool, incoming, refused)
        if result.flags:
            services.feed_wake()
        # built field by field: the result counts codes as ``accepted_codes``, and its
        # flags carry numeric ids that the API shows as strings
        return EventsOut(
            accepted=result.accepted_codes,
            duplicates=result.duplicates,
            rejected=msgspec.convert(result.rejected, list[RejectedOut], from_attributes=True),
            flags=[FlagRef(str(f.flag_id), f.kind, f.code) for f in result.flags],
            accepted_events=result.accepted_events,
        )
