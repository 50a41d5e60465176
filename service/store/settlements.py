"""SQL for settlements."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

import asyncpg

from service.core.custody import CodeState
from service.core.sales import Consumption, Refund, billed_packs, paid_packs
from service.store import codes as code_store
from service.store import sales as sale_store
from service.store.conn import Conn


@dataclass(frozen=True, slots=True)
class Row:
    """A settlement as the ``settlements`` table keeps it, with its answer."""

    setl_id: str
    org: str
    psn_hash: bytes
    at: datetime
    body_hash: bytes
    request: dict[str, Any]
    response: dict[str, Any]
    decision: str

    def values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in _ROW)


_ROW = [f.name for f in fields(Row)]
_INSERT = f"INSERT INTO settlements ({', '.join(_ROW)})"


async def insert(conn: Conn, row: Row) -> bool:
    """Store the settlement with its answer; False if the id exists already (a concurrent
    request with the same id waits here until the other transaction ends)."""
    stored = await conn.fetchval(
        f"{_INSERT} VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (setl_id) DO NOTHING RETURNING 1",
        *row.values(),
    )
    return stored is not None


async def settle_unchanged(
    conn: Conn,
    row: Row,
    *,
    packs: Mapping[str, CodeState],
    read: Mapping[str, code_store.AsRead],
    consumptions: Sequence[Consumption],
) -> None:
    """Store a settlement, its consumptions and its packs' new rows in ONE statement (its
    own transaction), only if every pack is still at the version it was read at and the
    id is still free. Otherwise PostgreSQL raises SQLSTATE 40001 and nothing is written:
    the caller reads again. ``packs`` holds every pack the decision read, changed or not:
    each is written back with its version advanced, so two settlements that read the
    same pack cannot both be written. Only the columns that differ from the rows as
    ``read`` are sent."""
    codes = sorted(packs)
    columns = code_store.changed_columns(read, packs.values())
    params, sets, arrays = code_store.update_arrays((packs[c] for c in codes), columns)
    consumed = sale_store.insert_arrays(consumptions)
    # parameters: the packs' arrays, their versions, their count, the consumptions' arrays,
    # then the settlement's row
    versions_at = len(arrays) + 1
    insert_at = versions_at + 2
    row_at = insert_at + len(consumed)
    settlement = ", ".join(f"${row_at + i}" for i in range(len(_ROW)))
    await conn.execute(
        f"""WITH written AS ({code_store.update_unchanged_sql(params, sets, versions_at, columns)}),
            consumed AS ({sale_store.insert_sql(insert_at)}),
            settled AS ({_INSERT} VALUES ({settlement}) ON CONFLICT (setl_id) DO NOTHING RETURNING 1)
            SELECT CASE WHEN (SELECT count(*) FROM written) = ${versions_at + 1}::int
                             AND (SELECT count(*) FROM consumed) = cardinality(${insert_at}::text[])
                             AND EXISTS (SELECT FROM settled)
                        THEN true ELSE tracecode_changed_since_read() END""",  # noqa: S608
        *arrays,
        [read[c].version for c in codes],
        len(codes),
        *consumed,
        *row.values(),
    )


_GET = """SELECT setl_id, org, psn_hash, at, body_hash, request, response, decision, reversal,
                 reversed_at, created_at
          FROM settlements WHERE setl_id = $1"""
_GET_LOCKED = _GET + " FOR UPDATE"


async def get(conn: Conn, setl_id: str, *, lock: bool = False) -> dict[str, Any] | None:
    query = _GET_LOCKED if lock else _GET
    row = await conn.fetchrow(query, setl_id)
    return dict(row) if row else None


async def mark_reversed(conn: Conn, setl_id: str, psn_hash: bytes, reversal: dict[str, Any]) -> None:
    """Keep the reversal with the settlement; the person's purchases of it no longer
    count (for EXCESS_PURCHASE). One statement: a reversal is one round trip fewer."""
    await conn.execute(
        """WITH purchases AS (
               UPDATE purchases SET reversed = true
               WHERE psn_hash = $3 AND setl_id = $1 AND NOT reversed)
           UPDATE settlements SET reversal = $2, reversed_at = now() WHERE setl_id = $1""",
        setl_id,
        reversal,
        psn_hash,
    )


async def reversed_among(conn: Conn, setl_ids: Iterable[str | None]) -> set[str]:
    """Which of ``setl_ids`` are settlements the insurer reversed."""
    wanted = sorted({s for s in setl_ids if s})
    if not wanted:
        return set()
    rows = await conn.fetch(
        "SELECT setl_id FROM settlements WHERE setl_id = ANY($1::text[]) AND reversed_at IS NOT NULL", wanted
    )
    return {r["setl_id"] for r in rows}


async def paid_for(conn: Conn, setl_ids: Iterable[str | None]) -> dict[str, frozenset[str]]:
    """The settlements among ``setl_ids``, standing or reversed, each with the packs it
    paid for (``core.sales.paid_packs``: none for a rejected one)."""
    return {s: paid_packs(request, response) for s, request, response in await _stored(conn, setl_ids)}


async def billed_by(conn: Conn, setl_ids: Iterable[str | None]) -> dict[str, frozenset[str]]:
    """The settlements among ``setl_ids``, standing or reversed, each with the packs it
    bills (``core.sales.billed_packs``: on any line, payable or not)."""
    return {s: billed_packs(request) for s, request, _ in await _stored(conn, setl_ids)}


async def _stored(conn: Conn, setl_ids: Iterable[str | None]) -> list[asyncpg.Record]:
    """The stored request and answer of each settlement among ``setl_ids``."""
    wanted = sorted({s for s in setl_ids if s})
    if not wanted:
        return []
    return await conn.fetch(
        "SELECT setl_id, request, response FROM settlements WHERE setl_id = ANY($1::text[])", wanted
    )


async def refunds_and_standing(
    conn: Conn, refunded: Iterable[str | None], standing: Iterable[str | None]
) -> tuple[dict[str, Refund], dict[str, frozenset[str]]]:
    """In one statement: the settlements among ``refunded`` that the insurer reversed,
    each as its refund, and those among ``standing`` not reversed, each as the packs it
    paid for (``core.sales.paid_packs``)."""
    want_refunded = {s for s in refunded if s}
    want_standing = {s for s in standing if s}
    wanted = sorted(want_refunded | want_standing)
    if not wanted:
        return {}, {}
    rows = await conn.fetch(
        """SELECT setl_id, request, response, reversed_at IS NOT NULL AS reversed FROM settlements
           WHERE setl_id = ANY($1::text[])""",
        wanted,
    )
    back: dict[str, Refund] = {}
    paying: dict[str, frozenset[str]] = {}
    for r in rows:
        if r["reversed"] and r["setl_id"] in want_refunded:
            back[r["setl_id"]] = Refund.of(r["request"])
        elif not r["reversed"] and r["setl_id"] in want_standing:
            paying[r["setl_id"]] = paid_packs(r["request"], r["response"])
    return back, paying
