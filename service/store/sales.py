"""SQL for consumptions: the units each sale took from each pack."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from service.core.custody import Fact
from service.core.events import Incoming
from service.core.sales import SETTLEMENT, Consumption, Dispense, PackSales, Return, Sale
from service.store import codes as code_store
from service.store import events as event_store
from service.store.conn import Conn, RetryTransaction, distributed

_COLUMNS = (
    "code, sale_kind, sale_id, setl_id, event_id, org, at, units, reversed_at IS NOT NULL AS reversed,"
    " reversed_by_event, created_at"
)


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
        reversed_by=row["reversed_by_event"],
        recorded=row["created_at"],
    )


# the consumptions of the codes $1 (only unreversed ones when $2), in the order they
# happened: by sale time, then by when they were recorded
_OF_CODES = f"""SELECT {_COLUMNS} FROM consumptions
                WHERE code = ANY($1::text[]) AND (NOT $2 OR reversed_at IS NULL)
                ORDER BY at, created_at"""  # noqa: S608


async def of_codes(conn: Conn, codes: Iterable[str], *, open_only: bool) -> list[Consumption]:
    """The consumptions of ``codes`` (only unreversed ones with ``open_only``), in the
    order they happened: by sale time, then by when they were recorded."""
    return [_consumption(r) for r in await conn.fetch(_OF_CODES, list(codes), open_only)]


async def open_by_code(conn: Conn, codes: Sequence[str]) -> dict[str, list[Consumption]]:
    """The unreversed consumptions of ``codes``, by code, each code's in the order they
    happened: one statement per shard of the codes (``store.codes.fetch_by_shard``: one
    on plain PostgreSQL), as Citus routes them by code (verify's read of used-up packs,
    a settlement's of opened ones)."""
    by_code: dict[str, list[Consumption]] = {}
    for row in await code_store.fetch_by_shard(conn, _OF_CODES, codes, True):
        by_code.setdefault(row["code"], []).append(_consumption(row))
    return by_code


async def of_sale(conn: Conn, sale: Sale, *, given_back: bool = False) -> list[Consumption]:
    """The unreversed consumptions of one sale (with ``given_back``: the reversed ones),
    in code order."""
    rows = await conn.fetch(
        f"""SELECT {_COLUMNS} FROM consumptions
            WHERE sale_kind = $1 AND sale_id = $2 AND (reversed_at IS NOT NULL) = $3 ORDER BY code""",  # noqa: S608
        sale.kind,
        sale.id,
        given_back,
    )
    return [_consumption(r) for r in rows]


async def settlement_facts(conn: Conn, codes: Sequence[str]) -> list[Fact]:
    """The settlements that took units of ``codes``, as facts to fold with the codes'
    events when their history is replayed: the takes made by a settlement itself, not by
    a dispense that carries its id (that dispense is in the history already), standing
    or given back since (the pack left its case when it was sold)."""
    rows = await code_store.fetch_by_shard(
        conn,
        """SELECT code, setl_id, org, at FROM consumptions
           WHERE code = ANY($1::text[]) AND sale_kind = $2 AND event_id IS NULL""",
        codes,
        SETTLEMENT,
    )
    return [Fact.settlement(r["setl_id"], r["at"], r["org"], r["code"], sold=True) for r in rows]


async def record(conn: Conn, consumptions: Sequence[Consumption]) -> None:
    """Insert consumptions (a sale takes a few packs: one INSERT beats COPY's extra round
    trips here)."""
    if not consumptions:
        return
    written = await conn.fetch(insert_sql(1), *insert_arrays(consumptions))
    if len(written) != len(consumptions):  # the sale already took one of them: read again
        raise RetryTransaction


def insert_sql(first: int) -> str:
    """``INSERT INTO consumptions`` of the 9 arrays ``insert_arrays`` gives, as parameters
    ``$first`` onwards, returning a row for each one written. A row whose sale already
    took that pack is left as it is and not returned: the callers count the rows. They
    read the packs' sales before deciding, so a missing row means the sale's take was
    stored since (a concurrent writer), or was given back and the writer did not read
    that (a settlement's one-statement path): either way the request reads again. A take
    written again (a refold restating it) keeps when it was first recorded (``recorded``:
    the fold orders a settlement's takes by it; found in review), a new one is now."""
    p = [f"${first + i}" for i in range(9)]
    return f"""INSERT INTO consumptions
                   (code, sale_kind, sale_id, setl_id, event_id, org, at, units, created_at)
               SELECT code, sale_kind, sale_id, setl_id, event_id, org, at, units, coalesce(recorded, now())
               FROM unnest({p[0]}::text[], {p[1]}::text[], {p[2]}::text[], {p[3]}::text[], {p[4]}::uuid[],
                           {p[5]}::text[], {p[6]}::timestamptz[], {p[7]}::int4[], {p[8]}::timestamptz[])
                    AS n(code, sale_kind, sale_id, setl_id, event_id, org, at, units, recorded)
               ON CONFLICT (code, sale_kind, sale_id) DO NOTHING
               RETURNING 1"""  # noqa: S608


def insert_arrays(consumptions: Sequence[Consumption]) -> list[list[Any]]:
    return [
        [c.code for c in consumptions],
        [c.sale.kind for c in consumptions],
        [c.sale.id for c in consumptions],
        [c.setl_id for c in consumptions],
        [c.event_id for c in consumptions],
        [c.org for c in consumptions],
        [c.at for c in consumptions],
        [c.units for c in consumptions],
        [c.recorded for c in consumptions],
    ]


def _keys(takes: Sequence[Consumption]) -> list[list[str]]:
    """The takes' keys as arrays, (code, sale kind, sale id): ``$1``-``$3`` of the
    statements that change stored takes."""
    return [[c.code for c in takes], [c.sale.kind for c in takes], [c.sale.id for c in takes]]


async def reverse(conn: Conn, undone: Sequence[tuple[Consumption, UUID | None]]) -> None:
    """Mark consumptions reversed, each by a return event (or None: the reversal of its
    settlement). The caller holds the packs' row locks, so what it decided from the rows
    it read is what is reversed here."""
    if not undone:
        return
    await conn.execute(
        """UPDATE consumptions c SET reversed_at = now(), reversed_by_event = i.by
           FROM unnest($1::text[], $2::text[], $3::text[], $4::uuid[]) AS i(code, kind, id, by)
           WHERE c.code = i.code AND c.sale_kind = i.kind AND c.sale_id = i.id AND c.reversed_at IS NULL
             AND c.code = ANY($1::text[])""",
        *_keys([c for c, _ in undone]),
        [by for _, by in undone],
    )


async def reopen(conn: Conn, takes: Sequence[Consumption]) -> None:
    """The takes a return gave back stand again: its record was deleted (NHSA 3507), or
    the settlement of the sale arrived after the return (``core.settlement.taken_back``).
    The caller holds the packs' row locks."""
    if not takes:
        return
    await conn.execute(
        """UPDATE consumptions c SET reversed_at = NULL, reversed_by_event = NULL
           FROM unnest($1::text[], $2::text[], $3::text[]) AS i(code, kind, id)
           WHERE c.code = i.code AND c.sale_kind = i.kind AND c.sale_id = i.id AND c.reversed_at IS NOT NULL
             AND c.code = ANY($1::text[])""",
        *_keys(takes),
    )


async def erase(conn: Conn, erased: Sequence[Consumption]) -> None:
    """Delete the takes of sales whose record was deleted (NHSA 3507): they never
    counted, so the same sale may take the pack again (a corrected record). The dispense
    and the compensating return stay in the event log. The caller holds the packs' row
    locks."""
    if not erased:
        return
    await conn.execute(
        """DELETE FROM consumptions c
           USING unnest($1::text[], $2::text[], $3::text[]) AS i(code, kind, id)
           WHERE c.code = i.code AND c.sale_kind = i.kind AND c.sale_id = i.id
             AND c.code = ANY($1::text[])""",
        *_keys(erased),
    )


async def unapplied_returns(conn: Conn, codes: Sequence[str]) -> list[Return]:
    """Return events of ``codes`` that have not undone a sale yet (they arrived before
    the dispense they undo), oldest first, one per (event, code). A return that names the
    sale it undoes never waits: that sale was stored before it; nor does a return whose
    record was deleted (a dispense names it, ``undoes``). Every dispense asks: one
    statement on plain PostgreSQL; on Citus the links on the codes' shards, then the
    events by id (a join of the two would cross shards)."""
    if not distributed(conn):
        joined = await conn.fetch(
            """SELECT l.code, e.event_id, e.org, e.at, e.setl_id
               FROM event_codes l
               JOIN events e ON e.event_id = l.event_id AND e.type = 'return' AND e.undoes IS NULL
               WHERE l.code = ANY($1::text[]) AND l.role = 'c'
                 AND NOT EXISTS (SELECT 1 FROM consumptions c
                                 WHERE c.code = l.code AND c.reversed_by_event = l.event_id)
                 AND NOT EXISTS (SELECT 1 FROM events d WHERE d.undoes = e.event_id)""",
            list(codes),
        )
        found = [Return(r["event_id"], r["org"], r["at"], r["setl_id"], r["code"]) for r in joined]
        return sorted(found, key=_oldest_first)
    rows = await conn.fetch(
        """SELECT l.code, l.event_id FROM event_codes l
           WHERE l.code = ANY($1::text[]) AND l.role = 'c'
             AND NOT EXISTS (SELECT 1 FROM consumptions c
                             WHERE c.code = l.code AND c.reversed_by_event = l.event_id)""",
        list(codes),
    )
    returns = await event_store.fields(conn, [r["event_id"] for r in rows], "return")
    deleted = await event_store.undone(conn, [i for i, e in returns.items() if e["undoes"] is None])
    found = [
        Return(e["event_id"], e["org"], e["at"], e["setl_id"], r["code"])
        for r in rows
        if (e := returns.get(r["event_id"])) is not None
        and e["undoes"] is None
        and e["event_id"] not in deleted
    ]
    return sorted(found, key=_oldest_first)


def _oldest_first(r: Return) -> tuple[Any, ...]:
    return (r.at, r.event_id, r.code)


async def unapplied_dispenses(conn: Conn, codes: Sequence[str]) -> list[Incoming]:
    """Dispense events of ``codes`` that consumed nothing yet (they arrived before the
    code was commissioned), oldest first, one per event with its codes in order. Not
    those of deleted records (a return names them, ``undoes``), nor a deleted return's
    compensation (it sells only what that return gave back, which was nothing)."""
    linked = [(code, event_id) for code, event_id, named in await event_store.links(conn, codes) if named]
    dispenses = await _dispenses(conn, [event_id for _, event_id in linked])
    if not dispenses:
        return []
    taken = await of_codes(conn, codes, open_only=False)
    waiting: dict[UUID, list[str]] = {}
    for code, event_id in linked:
        e = dispenses.get(event_id)
        setl_id = e["setl_id"] if e is not None else None
        if e is not None and not any(
            c.code == code and (c.event_id == event_id or (setl_id is not None and c.setl_id == setl_id))
            for c in taken
        ):
            waiting.setdefault(event_id, []).append(code)
    return _as_dispenses(dispenses, waiting)


async def dispenses_since(conn: Conn, codes: Sequence[str], at: datetime) -> list[Incoming]:
    """The stored dispenses of ``codes`` dated at or after ``at`` (what a recall ordered
    then reaches), oldest first, one per event with those of its codes among ``codes``
    in order. Not those of deleted records, nor a deleted return's compensation (as
    :func:`unapplied_dispenses`)."""
    linked = await event_store.named_since(conn, codes, at)
    dispenses = await _dispenses(conn, [event_id for _, event_id in linked])
    named: dict[UUID, list[str]] = {}
    for code, event_id in linked:
        if event_id in dispenses:
            named.setdefault(event_id, []).append(code)
    return _as_dispenses(dispenses, named)


def _as_dispenses(
    dispenses: Mapping[UUID, asyncpg.Record], codes: Mapping[UUID, list[str]]
) -> list[Incoming]:
    """The stored dispenses (:func:`_dispenses`) that ``codes`` names, oldest first, each
    as the event it was with those of its codes, in order."""
    return [
        Incoming(
            event_id=e["event_id"],
            type="dispense",
            at=e["at"],
            org=e["org"],
            codes=tuple(sorted(codes[e["event_id"]])),
            quantity=e["quantity"],
            setl_id=e["setl_id"],
            med_list_codg=e["med_list_codg"],  # what it billed: judged for it (PRODUCT_MISMATCH)
        )
        for e in sorted((dispenses[i] for i in codes), key=lambda e: (e["at"], e["event_id"]))
    ]


async def _dispenses(conn: Conn, event_ids: Sequence[UUID]) -> dict[UUID, asyncpg.Record]:
    """The stored dispenses among ``event_ids`` that sold: not those of records an NHSA
    3507 deletion deleted (a return names them, ``undoes``), nor a deleted return's
    compensation (it sells only what that return gave back)."""
    if not event_ids:
        return {}
    found = await event_store.fields(conn, event_ids, "dispense")
    deleted = await event_store.undone(conn, list(found))
    return {i: e for i, e in found.items() if i not in deleted and e["undoes"] is None}


def pack_sales(stored: event_store.Stored, codes: Iterable[str]) -> PackSales:
    """Every stored dispense and return of each of ``codes`` (from the stored events of a
    history replay, which a late sale always reads), for their sales to be folded again
    in event time (``core.sales.refold``)."""
    out: PackSales = {code: ([], []) for code in codes}
    for code, event_id, named in stored.links:
        e = stored.fields.get(event_id)
        if not named or e is None or code not in out:
            continue
        fields = {"undoes": e["undoes"], "received": e["received_at"]}
        if e["type"] == "dispense":
            sold = (e["event_id"], e["org"], e["at"], e["quantity"], e["setl_id"])
            out[code][0].append(Dispense(*sold, packs=e["code_count"], **fields))
        elif e["type"] == "return":
            out[code][1].append(Return(e["event_id"], e["org"], e["at"], e["setl_id"], code, **fields))
    return out


async def for_code(conn: Conn, code: str) -> list[dict[str, Any]]:
    """All consumptions of one code, oldest first (history): ``reversed`` when the
    settlement was reversed, ``returned_by`` the return event that gave the units back."""
    rows = await conn.fetch(
        """SELECT setl_id, event_id, org, at, units, created_at,
                  reversed_at IS NOT NULL AND reversed_by_event IS NULL AS reversed,
                  reversed_by_event AS returned_by
           FROM consumptions WHERE code = $1 ORDER BY at, created_at""",
        code,
    )
    return [dict(r) for r in rows]
