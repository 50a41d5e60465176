"""Point-of-care verification and code history."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get, post
from litestar.openapi.spec import Example
from litestar.params import JSONBody, QueryParameter

from service.api.auth import principal_of, require_org_access, requires
from service.api.body import StrictJSON
from service.api.deps import Services
from service.api.errors import bad_input, problem, refuse_other_parameters
from service.api.openapi import BEARER, KEYED, WITH_BODY, problems
from service.api.schemas import HistoryOut, VerifyOut, VerifyPage
from service.api.types import EXAMPLE_CODE, CodeInPath, ExampleCodes, OrgInQuery, RawCode
from service.core.auth import Principal, Role
from service.core.codes import NOT_A_CODE, try_parse_code
from service.usecases import codes as usecase

MAX_VERIFY = 1_000


class VerifyIn(msgspec.Struct, forbid_unknown_fields=True):
    codes: Annotated[list[RawCode], msgspec.Meta(min_length=1, max_length=MAX_VERIFY), ExampleCodes]
    org: Annotated[str, msgspec.Meta(min_length=1, max_length=64, examples=["P1"])] | None = None


def _org_for(principal: Principal, org: str | None, field: str) -> str:
    """The organisation a verification is for: an org key's own, or the one named."""
    if org is None:
        if principal.org is None:
            raise bad_input(field, "name the organisation the code would be settled at")
        org = principal.org
    require_org_access(principal, org)
    return org


class CodesController(Controller):
    path = "/v1"
    tags = ["codes"]
    security = BEARER

    @get(
        "/codes/{code:str}/verify",
        guards=[requires(Role.ORG, Role.INSURER, Role.INVESTIGATOR)],
        responses=problems(*KEYED),
    )
    async def verify_one(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        code: CodeInPath,
        org: OrgInQuery = None,
    ) -> VerifyOut:
        """May this pack be dispensed and settled at this organisation now?"""
        refuse_other_parameters(request, ("org",), others=True)  # a client may add its own
        principal = principal_of(request)
        target = _org_for(principal, org, "org")
        answers = await usecase.verify_at(services.pool, [code], target, for_org=principal.role is Role.ORG)
        return msgspec.convert(answers[0], VerifyOut, from_attributes=True)

    @post(
        "/verify",
        status_code=200,
        dto=StrictJSON[VerifyIn],
        guards=[requires(Role.ORG, Role.INSURER, Role.INVESTIGATOR)],
        responses=problems(*WITH_BODY),
    )
    async def verify_many(
        self, request: Request[Any, Any, Any], services: Services, data: JSONBody[VerifyIn]
    ) -> VerifyPage:
        """Verify up to 1,000 codes; one answer per code, in request order."""
        principal = principal_of(request)
        target = _org_for(principal, data.org, "org")
        items = await usecase.verify_at(services.pool, data.codes, target, for_org=principal.role is Role.ORG)
        return VerifyPage(items=msgspec.convert(items, list[VerifyOut], from_attributes=True))

    @get(
        "/codes/{code:str}/history",
        guards=[requires(Role.INVESTIGATOR)],
        responses=problems(*KEYED, 404),
    )
    async def history(self, services: Services, code: CodeInPath) -> HistoryOut:
        """Everything that happened to a code and to the containers it was in."""
        return await _history(services, code)

    @get(
        "/codes/history",
        guards=[requires(Role.INVESTIGATOR)],
        responses=problems(*KEYED, 404),
    )
    async def history_by_query(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        code: Annotated[str, QueryParameter(examples=[Example(value=EXAMPLE_CODE)])],
    ) -> HistoryOut:
        """The same answer as ``/v1/codes/{code}/history``, for any code: a GS1 serial
        holding "/" (AI 21 allows it) cannot be named in a path (⚠ our addition)."""
        refuse_other_parameters(request, ("code",))
        return await _history(services, code)


async def _history(services: Services, code: str) -> HistoryOut:
    """A code's history, the code in any of its forms; 404 when nothing is known of it."""
    parsed = try_parse_code(code)
    if parsed is None:
        raise bad_input("code", NOT_A_CODE)
    found = await usecase.history_of(services.pool, parsed.canonical)
    if found is None:
        raise problem(404, f"nothing is known about {parsed.canonical}")
    return msgspec.convert(found, HistoryOut, from_attributes=True)
