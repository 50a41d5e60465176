"""SQL for consumptions: the units each sale took from each pack."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any
from uuid import UUID

from service.store.conn import Conn


async def existing(conn: Conn, pairs: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
    """Which (code, sale_key) pairs have consumed units already (reversed or not)."""
    pairs = list(pairs)
    if not pairs:
        return set()
    rows = await conn.fetch(
        """SELECT code, sale_key FROM consumptions
           WHERE (code, sale_key) IN (SELECT * FROM unnest($1::text[], $2::text[]))""",
        [c for c, _ in pairs],
        [k for _, k in pairs],
    )
    return {(r["code"], r["sale_key"]) for r in rows}


async def record(
    conn: Conn,
    rows: Iterable[tuple[str, str, str | None, UUID | None, str, datetime, int]],
) -> None:
    """Insert (code, sale_key, setl_id, event_id, org, at, units) consumptions."""
    records = list(rows)
    if records:
        # a sale takes a few packs: one INSERT beats COPY's extra round trips here
        columns = list(zip(*records, strict=True))
        await conn.execute(
            """INSERT INTO consumptions (code, sale_key, setl_id, event_id, org, at, units)
               SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::uuid[], $5::text[],
                                    $6::timestamptz[], $7::int4[])""",
            *columns,
        )


async def open_for(conn: Conn, codes: Iterable[str]) -> list[dict[str, Any]]:
    """Unreversed consumptions of ``codes``, newest first."""
    rows = await conn.fetch(
        """SELECT code, sale_key, setl_id, event_id, org, at, units FROM consumptions
           WHERE code = ANY($1::text[]) AND reversed_at IS NULL
           ORDER BY at DESC, created_at DESC""",
        list(codes),
    )
    return [dict(r) for r in rows]


async def reverse(conn: Conn, items: Iterable[tuple[str, str, str]]) -> dict[tuple[str, str], int]:
    """Mark (code, sale_key) consumptions reversed by ``by`` (a return event id, or
    ``reversal``); return the units of those this call reversed. One that a concurrent
    transaction reversed first is not returned, so the caller restores each unit at most
    once (lock the codes before calling)."""
    rows_in = list(items)
    if not rows_in:
        return {}
    rows = await conn.fetch(
        """UPDATE consumptions c SET reversed_at = now(), reversed_by = i.by
           FROM unnest($1::text[], $2::text[], $3::text[]) AS i(code, sale_key, by)
           WHERE c.code = i.code AND c.sale_key = i.sale_key AND c.reversed_at IS NULL
           RETURNING c.code, c.sale_key, c.units""",
        [c for c, _, _ in rows_in],
        [k for _, k, _ in rows_in],
        [b for _, _, b in rows_in],
    )
    return {(r["code"], r["sale_key"]): r["units"] for r in rows}


async def unapplied_returns(conn: Conn, codes: list[str]) -> list[dict[str, Any]]:
    """Return events of ``codes`` that have not undone a sale yet (they arrived before
    the dispense they undo), oldest first, one row per (event, code)."""
    rows = await conn.fetch(
        """SELECT e.event_id, e.org, e.at, e.setl_id, l.code
           FROM event_codes l JOIN events e USING (event_id)
           WHERE l.code = ANY($1::text[]) AND l.role = 'c' AND e.type = 'return'
             AND NOT EXISTS (SELECT 1 FROM consumptions c
                             WHERE c.code = l.code AND c.reversed_by = e.event_id::text)
           ORDER BY e.at, e.event_id""",
        codes,
    )
    return [dict(r) for r in rows]


async def for_code(conn: Conn, code: str) -> list[dict[str, Any]]:
    """All consumptions of one code, oldest first (history)."""
    rows = await conn.fetch(
        """SELECT sale_key, setl_id, event_id, org, at, units, reversed_at IS NOT NULL AS reversed
           FROM consumptions WHERE code = $1 ORDER BY at, created_at""",
        code,
    )
    return [dict(r) for r in rows]


async def unapplied_dispenses(conn: Conn, codes: list[str]) -> list[dict[str, Any]]:
    """Dispense events of ``codes`` that consumed nothing yet (they arrived before the
    code was commissioned), oldest first, one row per event with its codes in order."""
    rows = await conn.fetch(
        """SELECT e.event_id, e.org, e.at, e.quantity, e.setl_id, array_agg(l.code ORDER BY l.code) AS codes
           FROM event_codes l JOIN events e USING (event_id)
           WHERE l.code = ANY($1::text[]) AND l.role = 'c' AND e.type = 'dispense'
             AND NOT EXISTS (
                 SELECT 1 FROM consumptions c
                 WHERE c.code = l.code
                   AND c.sale_key = coalesce(e.setl_id, 'event:' || e.event_id::text))
           GROUP BY e.event_id
           ORDER BY e.at, e.event_id""",
        codes,
    )
    return [dict(r) for r in rows]
