"""Point-of-care verification and code history."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get, post
from litestar.params import FromPath, JSONBody, QueryParameter, SkipValidation

from service.api.auth import principal_of, require_org_access, requires
from service.api.errors import bad_input, problem, strict_body
from service.core.auth import Principal, Role
from service.core.codes import try_parse_code
from service.store import registry
from service.usecases import codes as code_usecases

MAX_VERIFY = 1_000


class VerifyIn(msgspec.Struct, forbid_unknown_fields=True):
    codes: Annotated[
        list[Annotated[str, msgspec.Meta(max_length=200)]],
        msgspec.Meta(min_length=1, max_length=MAX_VERIFY),
    ]
    org: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None


def _org_for(principal: Principal, org: str | None, field: str) -> str:
    """The organisation a verification is for: an org key's own, or the one named."""
    if org is None:
        if principal.org is None:
            raise bad_input(field, "name the organisation the code would be settled at")
        org = principal.org
    require_org_access(principal, org)
    return org


async def _verify(request: Request[Any, Any, Any], codes: list[str], org: str) -> list[dict[str, Any]]:
    """One connection for the whole answer (organisation and product rows are cached)."""
    async with request.app.state.pool.acquire() as conn:
        found = await registry.get_org(conn, org)
        if found is None:
            raise bad_input("org", f"unknown organisation {org}")
        return await code_usecases.verify(conn, codes, found)


class CodesController(Controller):
    path = "/v1"
    tags = ["codes"]

    @get("/codes/{code:str}/verify", guards=[requires(Role.ORG, Role.INSURER, Role.INVESTIGATOR)])
    async def verify_one(
        self,
        request: Request[Any, Any, Any],
        code: FromPath[str],
        org: Annotated[str | None, QueryParameter(max_length=64)] = None,
    ) -> dict[str, Any]:
        """May this pack be dispensed and settled at this organisation now?"""
        target = _org_for(principal_of(request), org, "org")
        return (await _verify(request, [code], target))[0]

    @post("/verify", status_code=200, guards=[requires(Role.ORG, Role.INSURER, Role.INVESTIGATOR)])
    async def verify_many(
        self, request: Request[Any, Any, Any], data: SkipValidation[JSONBody[VerifyIn]]
    ) -> dict[str, Any]:
        """Verify up to 1,000 codes; one answer per code, in request order."""
        data = strict_body(data, VerifyIn)
        target = _org_for(principal_of(request), data.org, "org")
        return {"items": await _verify(request, data.codes, target)}

    @get("/codes/{code:str}/history", guards=[requires(Role.INVESTIGATOR)])
    async def history(self, request: Request[Any, Any, Any], code: FromPath[str]) -> dict[str, Any]:
        """Everything that happened to a code and to the containers it was in."""
        parsed = try_parse_code(code)
        if parsed is None:
            raise bad_input("code", "not a CN20 code, GS1 element string or SSCC")
        async with request.app.state.pool.acquire() as conn:
            found = await code_usecases.history(conn, parsed.canonical)
        if found["state"] is None and not found["events"]:
            raise problem(404, f"nothing is known about {parsed.canonical}")
        return found
