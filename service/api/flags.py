"""Flags for investigators: list (newest first, cursor-paged), read, change status."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, get_args

import msgspec
from litestar import Controller, Request, get, patch
from litestar.params import FromPath, JSONBody, QueryParameter

from service.api.auth import principal_of, requires
from service.api.body import StrictJSON
from service.api.cursors import cursor, position
from service.api.deps import Services
from service.api.errors import bad_input, problem, refuse_other_parameters
from service.api.openapi import BEARER, KEYED, WITH_BODY, problems, stale_flag
from service.api.schemas import FlagDetailOut, FlagOut, FlagPage
from service.core.auth import Role
from service.core.codes import NOT_A_CODE, try_parse_code
from service.core.events import bound_problem
from service.core.flags import status_set_by
from service.usecases import flags as usecase
from service.usecases.errors import Stale

KINDS = (
    "UNKNOWN_CODE",
    "DUPLICATE",
    "DIVERSION",
    "OUT_OF_REGION",
    "PRODUCT_MISMATCH",
    "EXPIRED",
    "RECALLED",
    "COMMISSION_CONFLICT",
    "EXCESS_PURCHASE",
    "STOCK_IMBALANCE",
    "LABEL_MISMATCH",
)
# a flag's statuses, written once: the type (an enum in the OpenAPI document) and the list
Status = Literal["pending", "open", "investigating", "confirmed", "dismissed", "auto_cleared"]
STATUSES: tuple[str, ...] = get_args(Status)


# the statuses a person may set (the console offers the same)
Settable = Literal["open", "investigating", "confirmed", "dismissed"]


class FlagChange(msgspec.Struct, forbid_unknown_fields=True):
    # our addition: without a status, the note alone (a pending or auto-cleared flag's
    # too, as the console takes it; no person sets either status)
    status: Settable | None = None
    note: Annotated[str, msgspec.Meta(max_length=2000)] | None = None
    # our addition: the status the client read; another one now refuses the change (409)
    expected_status: Status | None = None


def _cursor(flag_id: int) -> str:
    return cursor("f", str(flag_id))


def _after(given: str) -> int:
    def flag_id(text: str) -> int:
        found = int(text)
        if not 0 < found < 2**63:
            raise ValueError(text)
        return found

    return position("f", given, flag_id)


def _is_number(raw: str) -> bool:
    try:
        float(raw)
    except ValueError:
        return False
    return True


def _flag_id(value: str) -> int:
    if not (value.isascii() and value.isdigit()) or len(value) > 18:
        raise problem(404, f"no flag {value}")
    return int(value)


# the query parameters of GET /v1/flags, as its handler names them
SEARCH_PARAMETERS = (
    "kind", "status", "org", "region", "code", "med_list_codg", "since", "until", "limit", "cursor"
)  # fmt: skip


class FlagsController(Controller):
    path = "/v1/flags"
    tags = ["flags"]
    guards = [requires(Role.INVESTIGATOR)]
    security = BEARER

    @get("/", responses=problems(*KEYED))
    async def search(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        kind: Annotated[str | None, QueryParameter()] = None,
        status: Annotated[str | None, QueryParameter()] = None,
        org: Annotated[str | None, QueryParameter(min_length=1, max_length=64)] = None,
        region: Annotated[str | None, QueryParameter(max_length=6)] = None,
        code: Annotated[str | None, QueryParameter(max_length=200)] = None,
        med_list_codg: Annotated[str | None, QueryParameter(min_length=1, max_length=64)] = None,
        since: Annotated[
            datetime | None, QueryParameter(description="flags whose activity time (at) is at or after it")
        ] = None,
        until: Annotated[
            datetime | None,
            QueryParameter(description="flags whose activity time (at) is before it, not at it"),
        ] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
        cursor: Annotated[str | None, QueryParameter(max_length=64)] = None,
    ) -> FlagPage:
        """Flags, newest first; without ``status`` every status but ``pending`` (suspicions
        a late upload may still explain, within their grace window; ``status=pending``
        lists them). ``since``/``until`` bound the activity time (``at``), half-open:
        ``since`` <= ``at`` < ``until`` (a ``until`` before ``since`` is a 400);
        ``region`` matches a region-code prefix; ``med_list_codg`` finds the flags that
        name a catalogue item (in ``refs.items``: STOCK_IMBALANCE its item, PRODUCT_MISMATCH
        the item billed and the pack's own, EXCESS_PURCHASE the item bought), as ``code``
        those of a trace code. Pass
        ``next_cursor`` back as ``cursor`` for the next page; flags raised meanwhile never
        shift a page."""
        refuse_other_parameters(request, SEARCH_PARAMETERS, integers=("limit",))
        if kind is not None and kind not in KINDS:
            raise bad_input("kind", f"one of {', '.join(KINDS)}")
        if status is not None and status not in STATUSES:
            raise bad_input("status", f"one of {', '.join(STATUSES)}")
        if region is not None and not (region.isascii() and region.isdigit()):
            raise bad_input("region", "a region code or prefix (digits)")
        for name, value in (("since", since), ("until", until)):
            if value is not None and _is_number(request.query_params.get(name, "")):
                # Litestar reads a number as epoch seconds; API.md promises RFC 3339 only
                raise bad_input(name, "an RFC 3339 date-time with an offset, not a number")
            problem = bound_problem(value) if value is not None else None
            if problem:
                raise bad_input(name, problem)
        if since is not None and until is not None and until < since:
            raise bad_input("until", "is before since: the range is since <= at < until")
        if code is not None:
            parsed = try_parse_code(code)
            if parsed is None:
                raise bad_input("code", NOT_A_CODE)
            code = parsed.canonical
        if med_list_codg is not None and code is not None:
            raise bad_input("med_list_codg", "give code or med_list_codg, not both")
        query = usecase.FlagQuery(kind, status, org, region, code, since, until, med_list_codg)
        page = await usecase.search(
            services.pool, query, before_id=_after(cursor) if cursor else None, limit=limit
        )
        return FlagPage(
            items=msgspec.convert(page.items, list[FlagOut], from_attributes=True),
            next_cursor=_cursor(page.next_before) if page.next_before is not None else None,
        )

    @get("/{flag_id:str}", responses=problems(*KEYED, 404))
    async def read(self, services: Services, flag_id: FromPath[str]) -> FlagDetailOut:
        """One flag with its workflow history (who changed it, when, why)."""
        found = await usecase.read(services.pool, _flag_id(flag_id))
        if found is None:
            raise problem(404, f"no flag {flag_id}")
        return msgspec.convert(found, FlagDetailOut, from_attributes=True)

    @patch(
        "/{flag_id:str}", dto=StrictJSON[FlagChange], responses={**problems(*WITH_BODY, 404), **stale_flag()}
    )
    async def change(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        flag_id: FromPath[str],
        data: JSONBody[FlagChange],
    ) -> FlagDetailOut:
        """Move a flag through the workflow; each change is kept with who and when.
        Without ``status`` (our addition), add ``note`` alone to the flag's history, under
        the status it has, whatever it is (``pending`` and ``auto_cleared`` too). With
        ``expected_status`` (our addition), the change is made only while the flag's
        status is that one: else nothing changes and the answer is a 409 naming it, which
        says who moved the flag to what, and when."""
        key = _flag_id(flag_id)
        if data.status is None and not data.note:
            raise bad_input("status", "a status, or a note to add to the flag's history")
        who = principal_of(request).key_id
        try:
            found = await usecase.change(
                services.pool, key, data.status, data.note, who, expected=data.expected_status
            )
        except Stale as exc:
            raise _stale(exc) from None
        if found is None:
            raise problem(404, f"no flag {flag_id}")
        services.feed_wake()
        return msgspec.convert(found, FlagDetailOut, from_attributes=True)


def _stale(exc: Stale) -> Exception:
    """The 409 of a change made against a status the flag no longer has: what the flag's
    status is, and who set it when (``core.flags.status_set_by``: not a note added since,
    as the console's flag page says it); nothing more when it was raised with it."""
    status = exc.flag["status"]
    message = f"the flag's status is {status}, not {exc.expected}"
    set_by = status_set_by(exc.flag)
    if set_by is not None:
        message += f" (set by {set_by['by_key']} at {set_by['at'].isoformat()})"
    return problem(
        409,
        f"expected_status: {message}",
        errors=[{"field": "expected_status", "message": message}],
        kind="stale-status",
    )
