"""SQL for consumptions: the units each sale took from each pack."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any
from uuid import UUID

import asyncpg

from service.core.events import Incoming
from service.core.sales import Consumption, Return, Sale
from service.store.conn import Conn

_COLUMNS = "code, sale_kind, sale_id, setl_id, event_id, org, at, units, reversed_at IS NOT NULL AS reversed"


def _consumption(row: asyncpg.Record) -> Consumption:
    return Consumption(
        code=row["code"],
        sale=Sale(row["sale_kind"], row["sale_id"]),
        setl_id=row["setl_id"],
        event_id=row["event_id"],
        org=row["org"],
        at=row["at"],
        units=row["units"],
        reversed=row["reversed"],
    )


async def of_codes(conn: Conn, codes: Iterable[str], *, open_only: bool) -> list[Consumption]:
    """The consumptions of ``codes`` (only unreversed ones with ``open_only``), in the
    order they happened: by sale time, then by when they were recorded."""
    rows = await conn.fetch(
        f"""SELECT {_COLUMNS} FROM consumptions
            WHERE code = ANY($1::text[]) AND (NOT $2 OR reversed_at IS NULL)
            ORDER BY at, created_at""",  # noqa: S608
        list(codes),
        open_only,
    )
    return [_consumption(r) for r in rows]


async def of_sale(conn: Conn, sale: Sale) -> list[Consumption]:
    """The unreversed consumptions of one sale, in code order."""
    rows = await conn.fetch(
        f"""SELECT {_COLUMNS} FROM consumptions
            WHERE sale_kind = $1 AND sale_id = $2 AND reversed_at IS NULL ORDER BY code""",  # noqa: S608
        sale.kind,
        sale.id,
    )
    return [_consumption(r) for r in rows]


async def record(conn: Conn, consumptions: Sequence[Consumption]) -> None:
    """Insert consumptions (a sale takes a few packs: one INSERT beats COPY's extra round
    trips here)."""
    if not consumptions:
        return
    await conn.execute(
        """INSERT INTO consumptions (code, sale_kind, sale_id, setl_id, event_id, org, at, units)
           SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::uuid[],
                                $6::text[], $7::timestamptz[], $8::int4[])""",
        [c.code for c in consumptions],
        [c.sale.kind for c in consumptions],
        [c.sale.id for c in consumptions],
        [c.setl_id for c in consumptions],
        [c.event_id for c in consumptions],
        [c.org for c in consumptions],
        [c.at for c in consumptions],
        [c.units for c in consumptions],
    )


async def reverse(conn: Conn, undone: Sequence[tuple[Consumption, UUID | None]]) -> None:
    """Mark consumptions reversed, each by a return event (or None: the reversal of its
    settlement). The caller holds the packs' row locks, so what it decided from the rows
    it read is what is reversed here."""
    if not undone:
        return
    await conn.execute(
        """UPDATE consumptions c SET reversed_at = now(), reversed_by_event = i.by
           FROM unnest($1::text[], $2::text[], $3::text[], $4::uuid[]) AS i(code, kind, id, by)
           WHERE c.code = i.code AND c.sale_kind = i.kind AND c.sale_id = i.id AND c.reversed_at IS NULL""",
        [c.code for c, _ in undone],
        [c.sale.kind for c, _ in undone],
        [c.sale.id for c, _ in undone],
        [by for _, by in undone],
    )


async def unapplied_returns(conn: Conn, codes: Sequence[str]) -> list[Return]:
    """Return events of ``codes`` that have not undone a sale yet (they arrived before
    the dispense they undo), oldest first, one per (event, code)."""
    rows = await conn.fetch(
        """SELECT e.event_id, e.org, e.at, e.setl_id, l.code
           FROM event_codes l JOIN events e USING (event_id)
           WHERE l.code = ANY($1::text[]) AND l.role = 'c' AND e.type = 'return'
             AND NOT EXISTS (SELECT 1 FROM consumptions c
                             WHERE c.code = l.code AND c.reversed_by_event = e.event_id)
           ORDER BY e.at, e.event_id""",
        list(codes),
    )
    return [Return(r["event_id"], r["org"], r["at"], r["setl_id"], r["code"]) for r in rows]


async def unapplied_dispenses(conn: Conn, codes: Sequence[str]) -> list[Incoming]:
    """Dispense events of ``codes`` that consumed nothing yet (they arrived before the
    code was commissioned), oldest first, one row per event with its codes in order."""
    rows = await conn.fetch(
        """SELECT e.event_id, e.org, e.at, e.quantity, e.setl_id, array_agg(l.code ORDER BY l.code) AS codes
           FROM event_codes l JOIN events e USING (event_id)
           WHERE l.code = ANY($1::text[]) AND l.role = 'c' AND e.type = 'dispense'
             AND NOT EXISTS (
                 SELECT 1 FROM consumptions c
                 WHERE c.code = l.code
                   AND (c.event_id = e.event_id OR (e.setl_id IS NOT NULL AND c.setl_id = e.setl_id)))
           GROUP BY e.event_id
           ORDER BY e.at, e.event_id""",
        list(codes),
    )
    return [
        Incoming(
            event_id=r["event_id"],
            type="dispense",
            at=r["at"],
            org=r["org"],
            codes=tuple(r["codes"]),
            quantity=r["quantity"],
            setl_id=r["setl_id"],
        )
        for r in rows
    ]


async def for_code(conn: Conn, code: str) -> list[dict[str, Any]]:
    """All consumptions of one code, oldest first (history)."""
    rows = await conn.fetch(
        """SELECT setl_id, event_id, org, at, units, reversed_at IS NOT NULL AS reversed
           FROM consumptions WHERE code = $1 ORDER BY at, created_at""",
        code,
    )
    return [dict(r) for r in rows]
