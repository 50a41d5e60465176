"""SQL for the event log (``events``, ``event_codes``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from uuid import UUID

import asyncpg

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


async def links(conn: Conn, codes: Iterable[str]) -> list[tuple[str, UUID, bool]]:
    """(code, event id, whether the code is one of the event's codes rather than the
    container of a pack or unpack) for every event that touched one of ``codes``. One
    read on the codes' shards; the events themselves are read by id (``fields``): on
    Citus the log is keyed by event id, and a join of the two would cross shards."""
    rows = await conn.fetch(
        "SELECT code, event_id, role = 'c' AS named FROM event_codes WHERE code = ANY($1::text[])",
        list(set(codes)),
    )
    return [(r["code"], r["event_id"], r["named"]) for r in rows]


async def fields(
    conn: Conn, event_ids: Iterable[UUID], type_: str | None = None
) -> dict[UUID, asyncpg.Record]:
    """The stored fields of the events ``event_ids`` (only those of ``type_``), by id."""
    rows = await conn.fetch(
        """SELECT event_id, type, at, org, to_org, from_org, parent, lot, expiry, produced,
                  quantity, setl_id, ref, received_at
           FROM events WHERE event_id = ANY($1::uuid[]) AND ($2::text IS NULL OR type = $2)""",
        list(set(event_ids)),
        type_,
    )
    return {r["event_id"]: r for r in rows}


async def facts_for(conn: Conn, codes: Iterable[str]) -> list[Fact]:
    """Every stored fact that touched one of ``codes``, restricted to those codes."""
    touched: dict[UUID, list[str]] = {}
    for code, event_id, named in await links(conn, codes):
        touched.setdefault(event_id, []).extend([code] if named else [])
    return [
        Fact(
            event_id=r["event_id"],
            type=r["type"],
            at=r["at"],
            org=r["org"],
            codes=tuple(sorted(touched[r["event_id"]])),
            to=r["to_org"],
            parent=r["parent"],
            lot=r["lot"],
            expiry=r["expiry"],
            produced=r["produced"],
        )
        for r in (await fields(conn, touched)).values()
    ]


async def details(conn: Conn, event_ids: Iterable[UUID]) -> dict[UUID, dict[str, Any]]:
    """The stored fields of events, for history."""
    return {event_id: dict(r) for event_id, r in (await fields(conn, event_ids)).items()}
