"""SQL for the event log (``events``, ``event_codes``)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from service.core.custody import Fact
from service.core.events import Incoming
from service.store import codes as code_store
from service.store.conn import Conn


async def insert(conn: Conn, events: list[Incoming]) -> set[UUID]:
    """Store events whose id is new; return those ids. A concurrent insert of the same
    id waits for the other transaction and then counts as already stored."""
    if not events:
        return set()
    rows = await conn.fetch(insert_sql(1), *insert_arrays(events))
    return {r["event_id"] for r in rows}


def insert_sql(first: int) -> str:
    """``INSERT INTO events`` of the 16 arrays ``insert_arrays`` gives, as parameters
    ``$first`` onwards; an id stored already is skipped, the new ones are returned."""
    p = [f"${first + i}" for i in range(16)]
    return f"""INSERT INTO events (event_id, type, at, org, to_org, from_org, parent, lot, expiry,
                                   produced, quantity, setl_id, ref, code_count, undoes, med_list_codg)
               SELECT * FROM unnest({p[0]}::uuid[], {p[1]}::text[], {p[2]}::timestamptz[], {p[3]}::text[],
                                    {p[4]}::text[], {p[5]}::text[], {p[6]}::text[], {p[7]}::text[],
                                    {p[8]}::date[], {p[9]}::date[], {p[10]}::int4[], {p[11]}::text[],
                                    {p[12]}::text[], {p[13]}::int4[], {p[14]}::uuid[], {p[15]}::text[])
               ON CONFLICT (event_id) DO NOTHING
               RETURNING event_id"""  # noqa: S608


def insert_arrays(events: list[Incoming]) -> list[list[Any]]:
    return [
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
        [e.undoes for e in events],
        [e.med_list_codg for e in events],  # what it was billed as, or recorded under
    ]


def _links(facts: Iterable[Fact]) -> list[tuple[str, Any, UUID, bytes]]:
    """(code, at, event id, role) of each code a fact touched: its codes ('c') and the
    container of a pack or unpack ('p')."""
    records: list[tuple[str, Any, UUID, bytes]] = []
    for f in facts:
        records.extend((code, f.at, f.event_id, b"c") for code in f.codes)
        if f.parent is not None:
            records.append((f.parent, f.at, f.event_id, b"p"))
    return records


async def link_codes(conn: Conn, facts: Iterable[Fact]) -> None:
    """Record which codes each fact touched (containers of pack/unpack as role 'p')."""
    records = _links(facts)
    if records:
        await conn.copy_records_to_table(
            "event_codes", records=records, columns=("code", "at", "event_id", "role")
        )


def link_sql(first: int) -> str:
    """``INSERT INTO event_codes`` of the 4 arrays ``link_arrays`` gives, as parameters
    ``$first`` onwards (``link_codes`` without COPY, for a statement of several writes)."""
    p = [f"${first + i}" for i in range(4)]
    return f"""INSERT INTO event_codes (code, at, event_id, role)
               SELECT code, at, event_id, role::"char"
               FROM unnest({p[0]}::text[], {p[1]}::timestamptz[], {p[2]}::uuid[], {p[3]}::text[])
                    AS l(code, at, event_id, role)
               ON CONFLICT DO NOTHING"""  # noqa: S608


def link_arrays(facts: Iterable[Fact]) -> list[list[Any]]:
    records = _links(facts)
    return [[r[0] for r in records], [r[1] for r in records], [r[2] for r in records],
            [r[3].decode() for r in records]]  # fmt: skip


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


async def named_codes(conn: Conn, event_ids: Sequence[UUID]) -> dict[UUID, set[str]]:
    """The codes each of ``event_ids`` named and took (not the container of a pack or
    unpack). By the events' index on ``event_codes`` (on Citus, a read of every shard:
    for the rare event sent through two formats under one id)."""
    rows = await conn.fetch(
        "SELECT event_id, code FROM event_codes WHERE event_id = ANY($1::uuid[]) AND role = 'c'",
        list(event_ids),
    )
    named: dict[UUID, set[str]] = {}
    for r in rows:
        named.setdefault(r["event_id"], set()).add(r["code"])
    return named


async def named_since(conn: Conn, codes: Iterable[str], at: datetime) -> list[tuple[str, UUID]]:
    """(code, event id) of every event dated at or after ``at`` that named one of
    ``codes`` (as one of its codes, not as a container): by the links' key (code, at),
    one read per shard of the codes."""
    rows = await code_store.fetch_by_shard(
        conn,
        "SELECT code, event_id FROM event_codes WHERE code = ANY($1::text[]) AND at >= $2 AND role = 'c'",
        codes,
        at,
    )
    return [(r["code"], r["event_id"]) for r in rows]


async def fields(
    conn: Conn, event_ids: Iterable[UUID], type_: str | None = None
) -> dict[UUID, asyncpg.Record]:
    """The stored fields of the events ``event_ids`` (only those of ``type_``), by id."""
    rows = await conn.fetch(
        """SELECT event_id, type, at, org, to_org, from_org, parent, lot, expiry, produced,
                  quantity, setl_id, ref, undoes, code_count, received_at, med_list_codg
           FROM events WHERE event_id = ANY($1::uuid[]) AND ($2::text IS NULL OR type = $2)""",
        list(set(event_ids)),
        type_,
    )
    return {r["event_id"]: r for r in rows}


async def undone(conn: Conn, event_ids: Sequence[UUID]) -> set[UUID]:
    """Which of ``event_ids`` a stored event undoes (names in ``undoes``): the events of
    records that a 3507 deletion deleted."""
    if not event_ids:
        return set()
    rows = await conn.fetch("SELECT undoes FROM events WHERE undoes = ANY($1::uuid[])", list(event_ids))
    return {r["undoes"] for r in rows}


async def billed_moves(conn: Conn, codes: Sequence[str]) -> list[Incoming]:
    """The stored events of ``codes`` other than dispenses (those wait as sales:
    ``store.sales.unapplied_dispenses``) recorded under a catalogue item (an NHSA 3502's
    receive, ship or destroy, a 3506's return), oldest first, each with those of its
    codes among ``codes``: judged for that item (PRODUCT_MISMATCH) when the codes'
    commission arrives after them (``core.ingest.decide``)."""
    linked = [(code, event_id) for code, event_id, named in await links(conn, codes) if named]
    found = await fields(conn, {event_id for _, event_id in linked})
    named: dict[UUID, list[str]] = {}
    for code, event_id in linked:
        e = found.get(event_id)
        if e is not None and e["med_list_codg"] and e["type"] != "dispense":
            named.setdefault(event_id, []).append(code)
    return [
        Incoming(
            event_id=e["event_id"],
            type=e["type"],
            at=e["at"],
            org=e["org"],
            codes=tuple(sorted(named[e["event_id"]])),
            to=e["to_org"],
            med_list_codg=e["med_list_codg"],
        )
        for e in sorted((found[i] for i in named), key=lambda e: (e["at"], e["event_id"]))
    ]


@dataclass(frozen=True, slots=True)
class Stored:
    """Every stored event that touched some codes: the links (code, event id, whether the
    code is one of its codes), and the events' fields by id."""

    links: list[tuple[str, UUID, bool]]
    fields: dict[UUID, asyncpg.Record]


async def stored_for(conn: Conn, codes: Iterable[str]) -> Stored:
    found = await links(conn, codes)
    return Stored(found, await fields(conn, {event_id for _, event_id, _ in found}))


def facts_of(stored: Stored) -> list[Fact]:
    """The stored events as facts, each restricted to the codes it named among those."""
    touched: dict[UUID, list[str]] = {}
    for code, event_id, named in stored.links:
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
            undoes=r["undoes"],
        )
        for r in stored.fields.values()
    ]


async def facts_for(conn: Conn, codes: Iterable[str]) -> list[Fact]:
    """Every stored fact that touched one of ``codes``, restricted to those codes."""
    return facts_of(await stored_for(conn, codes))


async def details(conn: Conn, event_ids: Iterable[UUID]) -> dict[UUID, dict[str, Any]]:
    """The stored fields of events, for history."""
    return {event_id: dict(r) for event_id, r in (await fields(conn, event_ids)).items()}
