"""Settlement by code: POST /v1/settlements, GET /v1/settlements/{id}, reversal."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, get, post
from litestar.exceptions import PermissionDeniedException
from litestar.params import JSONBody

from service import metrics
from service.api.auth import principal_of, requires
from service.api.body import StrictJSON
from service.api.deps import Services
from service.api.errors import bad_input, problem
from service.api.openapi import BEARER, KEYED, WITH_BODY, problems
from service.api.schemas import ReversalOut, SettlementOut, SettlementRecordOut
from service.api.types import (
    EXAMPLE_CODE,
    EXAMPLE_TIME,
    PATTERN_MEANS,
    SETL_ID_PATTERN,
    ExampleCodes,
    OrgId,
    RawCode,
    SetlId,
    SetlIdInPath,
    Short,
)
from service.core.auth import Role
from service.core.events import identifier_problem, time_problem
from service.core.settlement import Claim, Line, person_number_problem
from service.usecases import settlements as usecase

MAX_LINES = 500
MAX_CODES = 1_000


class LineIn(msgspec.Struct, forbid_unknown_fields=True):
    line_no: Annotated[int, msgspec.Meta(ge=1, le=100_000, examples=[1])]
    med_list_codg: Annotated[Short, msgspec.Meta(examples=["XJ01CAA040A001010104256"])]
    quantity: Annotated[int, msgspec.Meta(ge=1, le=10_000_000, examples=[24])]
    codes: Annotated[list[RawCode], msgspec.Meta(max_length=MAX_CODES), ExampleCodes] = []
    split: bool = False


_EXAMPLE_LINE = {
    "line_no": 1,
    "med_list_codg": "XJ01CAA040A001010104256",
    "quantity": 24,
    "codes": [EXAMPLE_CODE],
}


class SettlementIn(msgspec.Struct, forbid_unknown_fields=True):
    setl_id: Annotated[SetlId, msgspec.Meta(examples=["S0001"])]
    org: Annotated[OrgId, msgspec.Meta(examples=["P1"])]
    psn_no: Annotated[Short, msgspec.Meta(examples=["450103199001011234"])]
    at: Annotated[datetime, msgspec.Meta(tz=True, examples=[EXAMPLE_TIME])]
    lines: Annotated[
        list[LineIn], msgspec.Meta(min_length=1, max_length=MAX_LINES, examples=[[_EXAMPLE_LINE]])
    ]
    mode: Literal["settle", "precheck"] = "settle"


def _claim(data: SettlementIn, *, for_org: bool = False) -> Claim:
    problem_at = time_problem(data.at, datetime.now(UTC))
    if problem_at:
        raise bad_input("at", problem_at)
    # one person, one spelling: a look-alike (a space at an end, an invisible character,
    # full-width digits) would hash as another person and split the EXCESS_PURCHASE count
    if (problem_psn := person_number_problem(data.psn_no)) is not None:
        raise bad_input("psn_no", problem_psn)
    seen: set[int] = set()
    total = 0
    for i, line in enumerate(data.lines):
        if line.line_no in seen:
            raise bad_input(f"lines[{i}].line_no", f"line {line.line_no} appears twice")
        seen.add(line.line_no)
        # a look-alike catalogue code reads as the real one but is another item: it was
        # judged PRODUCT_MISMATCH and flagged against the pharmacy (found by a probe)
        if (problem_codg := identifier_problem(line.med_list_codg)) is not None:
            raise bad_input(f"lines[{i}].med_list_codg", problem_codg)
        total += len(line.codes)
    if total > MAX_CODES:
        raise bad_input("lines", f"{total} codes in one settlement; at most {MAX_CODES}")
    return Claim(
        setl_id=data.setl_id,
        org=data.org,
        psn_no=data.psn_no,
        at=data.at.astimezone(UTC),
        mode=data.mode,
        lines=tuple(
            Line(ln.line_no, ln.med_list_codg, ln.quantity, ln.split, tuple(ln.codes)) for ln in data.lines
        ),
        for_org=for_org,
    )


def _check_setl_id(setl_id: str) -> None:
    """A settlement id in a path follows the same pattern as in a body (400 otherwise)."""
    if not _SETL_ID.fullmatch(setl_id):
        raise bad_input("setl_id", "must be " + PATTERN_MEANS[SETL_ID_PATTERN])


_SETL_ID = re.compile(SETL_ID_PATTERN)


class SettlementsController(Controller):
    path = "/v1/settlements"
    tags = ["settlements"]
    security = BEARER

    @post(
        "/",
        status_code=200,
        dto=StrictJSON[SettlementIn],
        guards=[requires(Role.INSURER, Role.ORG)],
        responses=problems(*WITH_BODY, 409),
    )
    async def settle(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        data: JSONBody[SettlementIn],
    ) -> SettlementOut:
        """Decide which lines the fund pays; ``precheck`` judges and changes nothing."""
        principal = principal_of(request)
        if principal.role is Role.ORG and (data.mode != "precheck" or principal.org != data.org):
            raise PermissionDeniedException(
                "an org key may only pre-check settlements for its own organisation"
            )
        claim = _claim(data, for_org=principal.role is Role.ORG)
        try:
            answer = await usecase.settle(services.pool, claim, services.settings.psn_secret)
        except usecase.Conflict:
            raise problem(
                409, f"settlement {data.setl_id} exists with a different body", kind="conflict"
            ) from None
        except usecase.UnknownOrg:
            raise bad_input("org", f"unknown organisation {data.org}") from None
        except usecase.NotDispensing:
            message = f"{data.org} does not dispense to patients (a hospital or pharmacy does)"
            raise bad_input("org", message) from None
        out = msgspec.convert(answer, SettlementOut, from_attributes=True)
        metrics.SETTLEMENTS.labels(claim.mode, out.decision).inc()
        if out.flags:
            services.feed_wake()
        return out

    @get("/{setl_id:str}", guards=[requires(Role.INSURER)], responses=problems(*KEYED, 404))
    async def read(self, services: Services, setl_id: SetlIdInPath) -> SettlementRecordOut:
        """The stored settlement and its answer (a precheck is not stored)."""
        _check_setl_id(setl_id)
        async with services.pool.acquire() as conn:
            found = await usecase.get(conn, setl_id)
        if found is None:
            raise problem(404, f"no settlement {setl_id}")
        return msgspec.convert(found, SettlementRecordOut, from_attributes=True)

    @post(
        "/{setl_id:str}/reversal",
        status_code=200,
        guards=[requires(Role.INSURER)],
        responses=problems(*KEYED, 413, 404),  # a body, if sent, is read (and ignored)
    )
    async def reverse(self, services: Services, setl_id: SetlIdInPath) -> ReversalOut:
        """The sale was refunded: its units go back to the organisation. Idempotent."""
        _check_setl_id(setl_id)
        result = await usecase.reverse(services.pool, setl_id)
        if result is None:
            raise problem(404, f"no settlement {setl_id}")
        return msgspec.convert(result, ReversalOut, from_attributes=True)
