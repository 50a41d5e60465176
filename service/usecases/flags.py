"""Flags for investigators: search them, read one with its workflow history, move it
through the workflow. Flags leave here with their ids as strings, as the API shows them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from service import metrics
from service.core.flags import stale_change
from service.store import flags as flag_store
from service.store import registry
from service.store.flags import FlagQuery as FlagQuery  # what a search filters on
from service.usecases.errors import Invalid, Stale

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Page:
    items: list[dict[str, Any]]
    next_before: int | None  # the flag id the next page starts below; None on the last page


def shown(flag: dict[str, Any]) -> dict[str, Any]:
    """A flag row as the API shows it: its id as a string."""
    return {**flag, "flag_id": str(flag["flag_id"])}


async def search(pool: asyncpg.Pool, query: FlagQuery, *, before_id: int | None, limit: int) -> Page:
    """Up to ``limit`` flags, newest first (by id, which only grows), below ``before_id``:
    flags raised while an investigator pages never shift a page. Raises Invalid (``org``)
    for an organisation that is not registered: a misspelt one must not read as one
    without flags (found by a probe, in the API and then in the console)."""
    async with pool.acquire() as conn:
        if query.org is not None and await registry.get_org(conn, query.org) is None:
            raise Invalid("org", f"unknown organisation {query.org}")
        # one more than asked for tells whether there is a next page
        rows = await flag_store.search(conn, query, before_id=before_id, limit=limit + 1)
    items = rows[:limit]
    more = len(rows) > limit and bool(items)
    return Page([shown(f) for f in items], int(items[-1]["flag_id"]) if more else None)


async def counts(pool: asyncpg.Pool, query: FlagQuery | None = None) -> dict[str, dict[str, int]]:
    """How many flags there are, by kind and then status (pending ones included): of
    those ``query`` selects, whatever its status, or of all."""
    async with pool.acquire() as conn:
        rows = await flag_store.counts(conn, query)
    by_kind: dict[str, dict[str, int]] = {}
    for kind, status, n in rows:
        by_kind.setdefault(kind, {})[status] = n
    return by_kind


async def read(pool: asyncpg.Pool, flag_id: int) -> dict[str, Any] | None:
    """The flag with its ``history`` of status changes, or None."""
    async with pool.acquire() as conn:
        flag = await flag_store.get(conn, flag_id)
        if flag is None:
            return None
        return {**shown(flag), "history": await flag_store.changes(conn, flag["code"], flag_id)}


async def change(
    pool: asyncpg.Pool,
    flag_id: int,
    status: str | None,
    note: str | None,
    by_key: str,
    *,
    expected: str | None = None,
) -> dict[str, Any] | None:
    """Set the flag's status, keeping who changed it, when and why; the flag as it now
    is (as :func:`read`), or None for an unknown flag. The change goes onto the feed's
    outbox in the same transaction. ``status`` None, or the status the flag has once
    locked (a promotion may have just run), adds the note alone to the flag's history,
    under that status: the flag itself does not change, so a pending flag's grace
    window still runs from when it was raised, and the feed has nothing new; without a
    note either, nothing changes. ``expected``: the status the person saw when deciding;
    when the locked flag's status is another (``core.flags.stale_change``), nothing
    changes and :class:`Stale` is raised with the flag as it is."""
    async with pool.acquire() as conn, conn.transaction():
        found = await flag_store.get(conn, flag_id)  # a flag's code never changes
        if found is None:
            return None
        code = found["code"]
        await flag_store.lock(conn, code, flag_id)
        locked = await flag_store.get(conn, flag_id)
        assert locked is not None
        if stale_change(expected, str(locked["status"])):
            assert expected is not None
            history = await flag_store.changes(conn, code, flag_id)
            raise Stale({**shown(locked), "history": history}, expected)
        if status is not None and status != locked["status"]:
            await flag_store.set_status(conn, code, flag_id, status, note, by_key)
        elif note:
            await flag_store.add_change(conn, code, flag_id, str(locked["status"]), note, by_key)
        flag = await flag_store.get(conn, flag_id)
        assert flag is not None
        return {**shown(flag), "history": await flag_store.changes(conn, code, flag_id)}


async def published_change(
    pool: asyncpg.Pool, code: str, flag_id: int, at: datetime
) -> dict[str, Any] | None:
    """What a feed entry of the flag, published with ``changed_at`` ``at``, was: a change
    of status (its history line: who, to what, when), or None for the flag's raising."""
    async with pool.acquire() as conn:
        return await flag_store.published_change(conn, code, flag_id, at)


async def promote_due(pool: asyncpg.Pool, window: timedelta) -> list[int] | None:
    """Pending flags whose grace ``window`` has passed unexplained become open; their
    ids, or None when another process is promoting right now."""
    async with pool.acquire() as conn, conn.transaction():
        return await flag_store.promote_pending(conn, window)


async def grace_ends(pool: asyncpg.Pool, code: str, flag_id: int, window: timedelta) -> datetime | None:
    """When a pending flag's grace ``window`` ends: from then the next promotion opens
    it, unless something explains it first. None for a flag that is not pending."""
    async with pool.acquire() as conn:
        since = await flag_store.pending_since(conn, code, flag_id)
    return since + window if since is not None else None


async def keep_promoting(
    pool: asyncpg.Pool, window: timedelta, every: float, promoted: Callable[[], None]
) -> None:
    """Forever, every ``every`` seconds: :func:`promote_due`, then ``promoted()`` (the
    feed's wake-up) when flags changed. Every worker runs this; the database lets one
    promote at a time, and what is due is read from the flags, so a restart loses
    nothing."""
    while True:
        try:
            ids = await promote_due(pool, window)
            if ids:
                metrics.FLAGS_PROMOTED.inc(len(ids))
                promoted()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("flag promotion: database unavailable (%s)", exc)
        await asyncio.sleep(every)
