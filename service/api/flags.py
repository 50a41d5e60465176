"""Flags for investigators: list (newest first, cursor-paged), read, change status."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, get, patch
from litestar.params import FromPath, JSONBody, QueryParameter, SkipValidation

from service.api.auth import principal_of, requires
from service.api.errors import bad_input, problem, strict_body
from service.core.auth import Role
from service.core.codes import try_parse_code
from service.core.events import EARLIEST_YEAR
from service.store import flags as flag_store

KINDS = (
    "UNKNOWN_CODE",
    "DUPLICATE",
    "DIVERSION",
    "OUT_OF_REGION",
    "PRODUCT_MISMATCH",
    "EXPIRED",
    "RECALLED",
    "COMMISSION_CONFLICT",
)
STATUSES = ("open", "investigating", "confirmed", "dismissed", "auto_cleared")


class FlagChange(msgspec.Struct, forbid_unknown_fields=True):
    status: Literal["open", "investigating", "confirmed", "dismissed"]
    note: Annotated[str, msgspec.Meta(max_length=2000)] | None = None


def shown(flag: dict[str, Any]) -> dict[str, Any]:
    return {**flag, "flag_id": str(flag["flag_id"])}


def _cursor(flag_id: int) -> str:
    return base64.urlsafe_b64encode(f"f{flag_id}".encode()).decode().rstrip("=")


def _after(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        flag_id = int(raw[1:]) if raw.startswith("f") else 0
        if not 0 < flag_id < 2**63:
            raise ValueError(cursor)
        return flag_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise bad_input("cursor", "not a cursor this service handed out") from None


def _flag_id(value: str) -> int:
    if not (value.isascii() and value.isdigit()) or len(value) > 18:
        raise problem(404, f"no flag {value}")
    return int(value)


class FlagsController(Controller):
    path = "/v1/flags"
    tags = ["flags"]
    guards = [requires(Role.INVESTIGATOR)]

    @get("/")
    async def search(
        self,
        request: Request[Any, Any, Any],
        kind: Annotated[str | None, QueryParameter()] = None,
        status: Annotated[str | None, QueryParameter()] = None,
        org: Annotated[str | None, QueryParameter(max_length=64)] = None,
        region: Annotated[str | None, QueryParameter(max_length=6)] = None,
        code: Annotated[str | None, QueryParameter(max_length=200)] = None,
        since: Annotated[datetime | None, QueryParameter()] = None,
        until: Annotated[datetime | None, QueryParameter()] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
        cursor: Annotated[str | None, QueryParameter(max_length=64)] = None,
    ) -> dict[str, Any]:
        """Flags, newest first. ``since``/``until`` bound the activity time (``at``);
        ``region`` matches a region-code prefix. Pass ``next_cursor`` back as ``cursor``
        for the next page; flags raised meanwhile never shift a page."""
        if kind is not None and kind not in KINDS:
            raise bad_input("kind", f"one of {', '.join(KINDS)}")
        if status is not None and status not in STATUSES:
            raise bad_input("status", f"one of {', '.join(STATUSES)}")
        if region is not None and not region.isdigit():
            raise bad_input("region", "a region code or prefix (digits)")
        for name, value in (("since", since), ("until", until)):
            if value is not None and value.tzinfo is None:
                raise bad_input(name, "must carry a UTC offset (RFC 3339)")
            if value is not None and not EARLIEST_YEAR <= value.year < 9999:
                raise bad_input(name, f"must be between the years {EARLIEST_YEAR} and 9998")
        if code is not None:
            parsed = try_parse_code(code)
            if parsed is None:
                raise bad_input("code", "not a CN20 code, GS1 element string or SSCC")
            code = parsed.canonical
        before = _after(cursor) if cursor else None
        async with request.app.state.pool.acquire() as conn:
            rows = await flag_store.search(
                conn,
                kind=kind,
                status=status,
                org=org,
                region=region,
                code=code,
                since=since,
                until=until,
                before_id=before,
                limit=limit + 1,
            )
        items = rows[:limit]
        more = len(rows) > limit
        return {
            "items": [shown(f) for f in items],
            "next_cursor": _cursor(items[-1]["flag_id"]) if more and items else None,
        }

    @get("/{flag_id:str}")
    async def read(self, request: Request[Any, Any, Any], flag_id: FromPath[str]) -> dict[str, Any]:
        """One flag with its workflow history (who changed it, when, why)."""
        key = _flag_id(flag_id)
        async with request.app.state.pool.acquire() as conn:
            flag = await flag_store.get(conn, key)
            if flag is None:
                raise problem(404, f"no flag {flag_id}")
            return {**shown(flag), "history": await flag_store.changes(conn, key)}

    @patch("/{flag_id:str}")
    async def change(
        self,
        request: Request[Any, Any, Any],
        flag_id: FromPath[str],
        data: SkipValidation[JSONBody[FlagChange]],
    ) -> dict[str, Any]:
        """Move a flag through the workflow; each change is kept with who and when."""
        data = strict_body(data, FlagChange)
        key = _flag_id(flag_id)
        who = principal_of(request).key_id
        async with request.app.state.pool.acquire() as conn, conn.transaction():
            flag = await flag_store.get(conn, key, lock=True)
            if flag is None:
                raise problem(404, f"no flag {flag_id}")
            await flag_store.set_status(conn, key, data.status, data.note, who)
            flag = await flag_store.get(conn, key)
            assert flag is not None
            history = await flag_store.changes(conn, key)
        request.app.state.feed_wake()
        return {**shown(flag), "history": history}
