"""SQL for the event log (``events``, ``event_codes``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from uuid import UUID

from service.core.custody import Fact
from service.core.events import Incoming
from service.store.conn import Conn


async def insert(conn: Conn, events: list[Incoming]) -> set[UUID]:
    """Store events whose id is new; return those ids. A concurrent insert of the same
    id waits for the other transaction and then counts as already stored."""
    if not events:
        return set()
    rows = await conn.fetch(
        """INSERT INTO events (event_id, type, at, org, to_org, from_org, parent, lot, expiry,
                               produced, quantity, setl_id, ref, code_count)
           SELECT * FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::text[],
                                $5::text[], $6::text[], $7::text[], $8::text[], $9::date[],
                                $10::date[], $11::int4[], $12::text[], $13::text[], $14::int4[])
           ON CONFLICT (event_id) DO NOTHING
           RETURNING event_id""",
        [e.event_id for e in events],
        [e.type for e in events],
        [e.at for e in events],
        [e.org for e in events],
        [e.to for e in events],
        [e.from_org for e in events],
        [e.parent for e in events],
        [e.lot for e in events],
        [e.expiry for e in events],
        [e.produced for e in events],
        [e.quantity for e in events],
        [e.setl_id for e in events],
        [e.ref for e in events],
        [len(e.codes) for e in events],
    )
    return {r["event_id"] for r in rows}


async def link_codes(conn: Conn, facts: Iterable[Fact]) -> None:
    """Record which codes each fact touched (containers of pack/unpack as role 'p')."""
    records: list[tuple[str, Any, UUID, bytes]] = []
    for f in facts:
        records.extend((code, f.at, f.event_id, b"c") for code in f.codes)
        if f.parent is not None:
            records.append((f.parent, f.at, f.event_id, b"p"))
    if records:
        await conn.copy_records_to_table(
            "event_codes", records=records, columns=("code", "at", "event_id", "role")
        )


async def facts_for(conn: Conn, codes: Iterable[str]) -> list[Fact]:
    """Every stored fact that touched one of ``codes``, restricted to those codes."""
    rows = await conn.fetch(
        """SELECT e.event_id, e.type, e.at, e.org, e.to_org, e.parent, e.lot, e.expiry,
                  e.produced,
                  array_agg(l.code ORDER BY l.code) FILTER (WHERE l.role = 'c') AS codes
           FROM event_codes l JOIN events e USING (event_id)
           WHERE l.code = ANY($1::text[])
           GROUP BY e.event_id""",
        list(codes),
    )
    return [
        Fact(
            event_id=r["event_id"],
            type=r["type"],
            at=r["at"],
            org=r["org"],
            codes=tuple(r["codes"] or ()),
            to=r["to_org"],
            parent=r["parent"],
            lot=r["lot"],
            expiry=r["expiry"],
            produced=r["produced"],
        )
        for r in rows
    ]


async def details(conn: Conn, event_ids: Iterable[UUID]) -> dict[UUID, dict[str, Any]]:
    """The stored fields of events, for history."""
    rows = await conn.fetch(
        """SELECT event_id, type, at, org, to_org, from_org, parent, lot, expiry, produced,
                  quantity, setl_id, ref, received_at
           FROM events WHERE event_id = ANY($1::uuid[])""",
        list(event_ids),
    )
    return {r["event_id"]: dict(r) for r in rows}
