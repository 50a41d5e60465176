"""Flags for investigators: search them, read one with its workflow history, move it
through the workflow. Flags leave here with their ids as strings, as the API shows them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from service.store import flags as flag_store


@dataclass(frozen=True, slots=True)
class FlagQuery:
    kind: str | None = None
    status: str | None = None
    org: str | None = None
    region: str | None = None  # a region-code prefix
    code: str | None = None  # canonical
    since: datetime | None = None  # activity time (``at``), inclusive
    until: datetime | None = None  # exclusive


@dataclass(frozen=True, slots=True)
class Page:
    items: list[dict[str, Any]]
    next_before: int | None  # the flag id the next page starts below; None on the last page


def _shown(flag: dict[str, Any]) -> dict[str, Any]:
    return {**flag, "flag_id": str(flag["flag_id"])}


async def search(pool: asyncpg.Pool, query: FlagQuery, *, before_id: int | None, limit: int) -> Page:
    """Up to ``limit`` flags, newest first (by id, which only grows), below ``before_id``:
    flags raised while an investigator pages never shift a page."""
    async with pool.acquire() as conn:
        rows = await flag_store.search(
            conn,
            kind=query.kind,
            status=query.status,
            org=query.org,
            region=query.region,
            code=query.code,
            since=query.since,
            until=query.until,
            before_id=before_id,
            limit=limit + 1,  # one more tells whether there is a next page
        )
    items = rows[:limit]
    more = len(rows) > limit and bool(items)
    return Page([_shown(f) for f in items], int(items[-1]["flag_id"]) if more else None)


async def read(pool: asyncpg.Pool, flag_id: int) -> dict[str, Any] | None:
    """The flag with its ``history`` of status changes, or None."""
    async with pool.acquire() as conn:
        flag = await flag_store.get(conn, flag_id)
        if flag is None:
            return None
        return {**_shown(flag), "history": await flag_store.changes(conn, flag_id)}


async def change(
    pool: asyncpg.Pool, flag_id: int, status: str, note: str | None, by_key: str
) -> dict[str, Any] | None:
    """Set the flag's status, keeping who changed it, when and why; the flag as it now
    is (as :func:`read`), or None for an unknown flag. The change goes onto the feed's
    outbox in the same transaction."""
    async with pool.acquire() as conn, conn.transaction():
        if await flag_store.get(conn, flag_id, lock=True) is None:
            return None
        await flag_store.set_status(conn, flag_id, status, note, by_key)
        flag = await flag_store.get(conn, flag_id)
        assert flag is not None
        return {**_shown(flag), "history": await flag_store.changes(conn, flag_id)}
