"""SQL for the 进销存 ledger (``nhsa_records``): records written set-based, an item's
figures as of a record, the ledger per item, deletions, and the records the NHSA queries
read."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from service.core.ledger import COUNT, IN_KINDS, OUT_KINDS, Entry, Figures, Standing
from service.store.conn import Conn, unique_violation
from service.store.db import plan_for_values


async def lock_items(conn: Conn, org: str, items: Sequence[str]) -> dict[str, Standing | None]:
    """Serialise writers of the same (institution, item), in item order (no deadlock), so
    that two uploads racing cannot both see the stock one of them takes; then each
    item's ledger as kept (None: not computed from its records yet), its row locked too,
    so that a write of the optimistic ingest (``append_sql``) waits for this one."""
    items = sorted(set(items))
    if not items:
        return {}
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('ledger/' || $1 || '/' || i, 0)) "
        "FROM unnest($2::text[]) AS i ORDER BY i",
        org,
        items,
    )
    kept = await _standings(conn, org, items, lock=True)
    new = [i for i in items if i not in kept]
    if new:  # an item's first record here: its row, not computed yet (the lock is held)
        await conn.execute(
            "INSERT INTO nhsa_items (org, med_list_codg) SELECT $1, i FROM unnest($2::text[]) AS i",
            org,
            new,
        )
        kept.update(dict.fromkeys(new))
    return kept


async def read_items(conn: Conn, org: str, items: Sequence[str]) -> dict[str, Standing | None]:
    """Each item's ledger as kept, without a lock (None: not computed from its records
    yet; absent: no record of it yet), for the optimistic ingest."""
    return await _standings(conn, org, sorted(set(items)), lock=False)


_STANDINGS = """SELECT med_list_codg, balance, units_in, units_out, counted, counted_at, last_at, stale
                FROM nhsa_items WHERE org = $1 AND med_list_codg = ANY($2::text[])"""


async def _standings(conn: Conn, org: str, items: list[str], *, lock: bool) -> dict[str, Standing | None]:
    query = _STANDINGS + " ORDER BY med_list_codg FOR UPDATE" if lock else _STANDINGS
    rows = await conn.fetch(query, org, items)
    return {
        r["med_list_codg"]: None
        if r["stale"]
        else Standing(
            Figures(r["balance"], r["units_in"], r["units_out"], r["counted"], r["counted_at"]), r["last_at"]
        )
        for r in rows
    }


async def save_items(conn: Conn, org: str, standings: Mapping[str, Standing]) -> None:
    """Store the items' ledgers as ``core.ledger.append`` left them."""
    if not standings:
        return
    items = sorted(standings)
    f = [standings[i].figures for i in items]
    await conn.execute(
        """UPDATE nhsa_items i
           SET balance = n.balance, units_in = n.units_in, units_out = n.units_out, counted = n.counted,
               counted_at = n.counted_at, last_at = n.last_at, stale = false
           FROM unnest($2::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[],
                       $7::timestamptz[], $8::timestamptz[])
                AS n(item, balance, units_in, units_out, counted, counted_at, last_at)
           WHERE i.org = $1 AND i.med_list_codg = n.item""",
        org,
        items,
        [x.balance for x in f],
        [x.units_in for x in f],
        [x.units_out for x in f],
        [x.counted for x in f],
        [x.counted_at for x in f],
        [standings[i].last_at for i in items],
    )


# Conditions on a record ``r``: it moves units in, out, or comes after the last count ``c``
_IN = "r.kind = ANY('{" + ",".join(IN_KINDS) + "}'::text[])"
_OUT = "r.kind = ANY('{" + ",".join(OUT_KINDS) + "}'::text[])"


def _key(alias: str) -> str:
    """A record's place in ledger order (core.ledger.ledger_order): time, interface,
    serial. A stock count is the opening stock of its instant (a 3501's invdate is the
    start of its day): 3501 sorts first, so the moves of the count's instant come after
    it."""
    return f'({alias}.at, {alias}.interface COLLATE "C", {alias}.fixmedins_bchno COLLATE "C")'


def _last_first(alias: str) -> str:
    return f'{alias}.at DESC, {alias}.interface COLLATE "C" DESC, {alias}.fixmedins_bchno COLLATE "C" DESC'


# after the item's last count (c), in ledger order; a count moves nothing (delta 0)
_AFTER = f"(c.at IS NULL OR {_key('r')} > {_key('c')})"


async def refresh_items(conn: Conn, org: str, items: Sequence[str]) -> None:
    """Compute the items' ledgers from their records that still count: the last stock
    count (in ledger order), and the moves after it (all of them without one)."""
    if not items:
        return
    await conn.execute(
        f"""UPDATE nhsa_items i
            SET balance = coalesce(c.units, 0) + coalesce(m.balance, 0), units_in = coalesce(m.units_in, 0),
                units_out = coalesce(m.units_out, 0), counted = c.units, counted_at = c.at,
                last_at = m.last_at, stale = false
            FROM unnest($2::text[]) AS k(item)
            LEFT JOIN LATERAL (
                SELECT r.units, r.at, r.interface, r.fixmedins_bchno FROM nhsa_records r
                WHERE r.org = $1 AND r.med_list_codg = k.item AND r.deleted_at IS NULL AND r.kind = '{COUNT}'
                ORDER BY {_last_first("r")} LIMIT 1) c ON true
            LEFT JOIN LATERAL (
                SELECT max(r.at) AS last_at,
                       sum(r.delta) FILTER (WHERE {_AFTER}) AS balance,
                       sum(r.units) FILTER (WHERE {_AFTER} AND {_IN}) AS units_in,
                       sum(r.units) FILTER (WHERE {_AFTER} AND {_OUT}) AS units_out
                FROM nhsa_records r
                WHERE r.org = $1 AND r.med_list_codg = k.item AND r.deleted_at IS NULL) m ON true
            WHERE i.org = $1 AND i.med_list_codg = k.item""",  # noqa: S608
        org,
        sorted(set(items)),
    )


class RecordsStored(Exception):
    """A record of the upload is stored already (a retry, or a concurrent upload of it):
    nothing of this transaction is kept, and the caller sends the records not stored."""


async def insert(conn: Conn, entries: Sequence[Entry], msgid: str, envelope: dict[str, Any]) -> None:
    """Store new records: the envelope once, in ``nhsa_uploads``, and the records by COPY,
    which also sends each to its shard on Citus. The records are taken to be new, as an
    upload's nearly always are (no look first): one stored already raises RecordsStored.
    The caller sends each key once."""
    if not entries:
        return
    org = entries[0].org
    upload = uuid.uuid4()
    await conn.execute(
        "INSERT INTO nhsa_uploads (org, upload_id, msgid, envelope) VALUES ($1, $2, $3, $4)",
        org,
        upload,
        msgid,
        envelope,
    )
    records = [
        (e.org, e.interface, e.bchno, e.med_list_codg, e.kind, e.units, e.delta, e.at,
         e.codes, e.event_ids, msgid, upload, e.row, e.psn_hash)
        for e in entries
    ]  # fmt: skip
    try:
        await conn.copy_records_to_table("nhsa_records", columns=_COLUMNS, records=records)
    except asyncpg.PostgresError as exc:
        if unique_violation(exc):
            raise RecordsStored from exc
        raise


async def stored_rows(
    conn: Conn, org: str, keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], dict[str, Any] | None]:
    """The row as sent of each of ``keys`` (interface, fixmedins_bchno) stored already,
    None for one a 3507 deleted."""
    if not keys:
        return {}
    rows = await conn.fetch(
        """SELECT interface, fixmedins_bchno, CASE WHEN deleted_at IS NULL THEN row_data END AS row_data
           FROM nhsa_records
           WHERE org = $1
             AND (interface, fixmedins_bchno) IN (SELECT * FROM unnest($2::text[], $3::text[]))""",
        org,
        [k[0] for k in keys],
        [k[1] for k in keys],
    )
    return {(r["interface"], r["fixmedins_bchno"]): r["row_data"] for r in rows}


_COLUMNS = (
    "org", "interface", "fixmedins_bchno", "med_list_codg", "kind", "units", "delta", "at",
    "codes", "event_ids", "msgid", "upload_id", "row_data", "psn_hash",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Appended:
    """New records of an upload that simply follow their items' ledgers
    (``core.ledger.append``), for the optimistic ingest's one statement
    (``store.ingest.write_unchanged``): each item's ledger as it was read, which must
    still stand, and as the records leave it."""

    org: str
    entries: Sequence[Entry]
    msgid: str
    envelope: dict[str, Any]
    before: Mapping[str, Standing]
    after: Mapping[str, Standing]


APPEND_PARAMS = 26  # the parameters of append_sql, in append_arrays' order


def append_sql(first: int) -> tuple[str, str]:
    """The CTEs that write an ``Appended`` from ``append_arrays``'s parameters ($first
    onwards): the upload, its records and the items' ledgers, each item only where its
    ledger is still as read; and the condition that holds when every item was."""
    p = [f"${first + i}" for i in range(APPEND_PARAMS)]
    ctes = f"""uploaded AS (
                INSERT INTO nhsa_uploads (org, upload_id, msgid, envelope)
                VALUES ({p[0]}, {p[1]}, {p[2]}, {p[3]})),
            recorded AS (
                INSERT INTO nhsa_records ({", ".join(_COLUMNS)})
                SELECT {p[0]}, n.interface, n.bchno, n.item, n.kind, n.units, n.delta, n.at,
                       ARRAY(SELECT jsonb_array_elements_text(n.codes::jsonb)),
                       ARRAY(SELECT jsonb_array_elements_text(n.event_ids::jsonb)::uuid),
                       {p[2]}, {p[1]}, n.row_data, n.psn_hash
                FROM unnest({p[4]}::text[], {p[5]}::text[], {p[6]}::text[], {p[7]}::text[], {p[8]}::bigint[],
                            {p[9]}::bigint[], {p[10]}::timestamptz[], {p[11]}::text[], {p[12]}::text[],
                            {p[13]}::json[], {p[25]}::bytea[])
                     AS n(interface, bchno, item, kind, units, delta, at, codes, event_ids, row_data,
                          psn_hash)),
            moved AS (
                UPDATE nhsa_items i
                SET balance = n.balance, units_in = n.units_in, units_out = n.units_out, last_at = n.last_at
                FROM unnest({p[14]}::text[], {p[15]}::bigint[], {p[16]}::bigint[], {p[17]}::bigint[],
                            {p[18]}::bigint[], {p[19]}::timestamptz[], {p[20]}::timestamptz[],
                            {p[21]}::bigint[], {p[22]}::bigint[], {p[23]}::bigint[], {p[24]}::timestamptz[])
                     AS n(item, was_balance, was_in, was_out, was_counted, was_counted_at, was_last_at,
                          balance, units_in, units_out, last_at)
                WHERE i.org = {p[0]} AND i.med_list_codg = n.item AND NOT i.stale
                  AND (i.balance, i.units_in, i.units_out) = (n.was_balance, n.was_in, n.was_out)
                  AND i.counted IS NOT DISTINCT FROM n.was_counted
                  AND i.counted_at IS NOT DISTINCT FROM n.was_counted_at
                  AND i.last_at IS NOT DISTINCT FROM n.was_last_at
                RETURNING 1)"""  # noqa: S608
    return ctes, f"(SELECT count(*) FROM moved) = cardinality({p[14]}::text[])"  # noqa: S608


def append_arrays(appended: Appended) -> list[Any]:
    entries = appended.entries
    items = sorted(appended.after)
    was = [appended.before[i] for i in items]
    now = [appended.after[i] for i in items]
    return [
        appended.org,
        uuid.uuid4(),
        appended.msgid,
        appended.envelope,
        [e.interface for e in entries],
        [e.bchno for e in entries],
        [e.med_list_codg for e in entries],
        [e.kind for e in entries],
        [e.units for e in entries],
        [e.delta for e in entries],
        [e.at for e in entries],
        [json.dumps(e.codes) for e in entries],  # JSON: a list of lists would be a 2-D array
        [json.dumps([str(i) for i in e.event_ids]) for e in entries],
        [e.row for e in entries],
        items,
        [s.figures.balance for s in was],
        [s.figures.units_in for s in was],
        [s.figures.units_out for s in was],
        [s.figures.counted for s in was],
        [s.figures.counted_at for s in was],
        [s.last_at for s in was],
        [s.figures.balance for s in now],
        [s.figures.units_in for s in now],
        [s.figures.units_out for s in now],
        [s.last_at for s in now],
        [e.psn_hash for e in entries],
    ]


def records_stored(exc: BaseException) -> bool:
    """Did a write meet a record stored already (``nhsa_records``' key), rather than
    another table's?"""
    return unique_violation(exc) and "nhsa_records" in str(exc)

# Running sums of an item's records in ledger order (``run``: up to and including the
# record), for below_zero(): a move's figures are the last count before it plus what its
# sums add to the count's own
_RUNNING = f"""
    sum(r.delta) OVER run AS balance,
    coalesce(sum(r.units) FILTER (WHERE {_IN}) OVER run, 0) AS units_in,
    coalesce(sum(r.units) FILTER (WHERE {_OUT}) OVER run, 0) AS units_out"""

_FIGURES = f"""
    coalesce(sum(r.delta), 0) AS balance,
    coalesce(sum(r.units) FILTER (WHERE {_IN}), 0) AS units_in,
    coalesce(sum(r.units) FILTER (WHERE {_OUT}), 0) AS units_out"""


async def below_zero(
    conn: Conn, org: str, keys: Sequence[tuple[str, str]], since: Mapping[str, datetime] | None = None
) -> dict[tuple[str, str], Figures]:
    """The records of ``keys``, and the moves out of each item of ``since`` from its time
    on, that leave their item's balance below zero, each with its item's ledger as of
    that record (ties by interface and serial), of the records that still count. The
    balance starts from the last stock count before it (the counted stock; a move of the
    count's own instant comes after it) and adds the moves after that count; without a
    count, from zero.

    One pass over each item's records (running sums in ledger order), not one per record
    (which made a 1,000-row upload's figures take 0.4 s, then 0.9, 1.4 s as the ledger
    grew); and only the records below zero come back, the ones that raise a flag."""
    since = since or {}
    if not keys and not since:
        return {}
    rows = await conn.fetch(
        f"""WITH k AS MATERIALIZED (
                SELECT n.interface, n.fixmedins_bchno, n.med_list_codg
                FROM unnest($2::text[], $3::text[]) AS k(interface, bchno)
                JOIN nhsa_records n
                  ON n.org = $1 AND n.interface = k.interface AND n.fixmedins_bchno = k.bchno),
            s AS MATERIALIZED (SELECT * FROM unnest($4::text[], $5::timestamptz[]) AS s(item, since)),
            sums AS MATERIALIZED (
                SELECT r.interface, r.fixmedins_bchno, r.med_list_codg, r.kind, r.units, r.at,
                       (r.interface, r.fixmedins_bchno) IN (SELECT interface, fixmedins_bchno FROM k)
                       OR ({_OUT} AND EXISTS (SELECT 1 FROM s
                                              WHERE s.item = r.med_list_codg AND r.at >= s.since)) AS wanted,
                       {_RUNNING}
                FROM nhsa_records r
                WHERE r.org = $1 AND r.deleted_at IS NULL
                  AND (r.med_list_codg IN (SELECT med_list_codg FROM k)
                       OR r.med_list_codg IN (SELECT item FROM s))
                WINDOW run AS (PARTITION BY r.med_list_codg
                                    ORDER BY r.at, r.interface COLLATE "C", r.fixmedins_bchno COLLATE "C"
                               ROWS UNBOUNDED PRECEDING)),
            counts AS MATERIALIZED (SELECT * FROM sums WHERE kind = '{COUNT}'),
            figures AS (
                SELECT s.interface, s.fixmedins_bchno, c.units AS counted, c.at AS counted_at,
                       CASE WHEN c.at IS NULL THEN s.balance
                            ELSE c.units + s.balance - c.balance END AS balance,
                       CASE WHEN c.at IS NULL THEN s.units_in ELSE s.units_in - c.units_in END AS units_in,
                       CASE WHEN c.at IS NULL THEN s.units_out ELSE s.units_out - c.units_out END AS units_out
                FROM sums s
                LEFT JOIN LATERAL (
                    SELECT * FROM counts c
                    WHERE c.med_list_codg = s.med_list_codg AND {_key("c")} <= {_key("s")}
                    ORDER BY {_last_first("c")} LIMIT 1) c ON true
                WHERE s.wanted)
            SELECT * FROM figures WHERE balance < 0""",  # noqa: S608
        org,
        [k[0] for k in keys],
        [k[1] for k in keys],
        list(since),
        list(since.values()),
    )
    return {
        (r["interface"], r["fixmedins_bchno"]): Figures(
            int(r["balance"]), int(r["units_in"]), int(r["units_out"]), r["counted"], r["counted_at"]
        )
        for r in rows
    }


async def entries(conn: Conn, org: str, keys: Sequence[tuple[str, str]]) -> list[Entry]:
    """The stored records of ``keys`` (interface, fixmedins_bchno), as the ledger keeps them."""
    if not keys:
        return []
    rows = await conn.fetch(
        """SELECT interface, fixmedins_bchno, med_list_codg, kind, units, at, codes, event_ids
           FROM nhsa_records
           WHERE org = $1
             AND (interface, fixmedins_bchno) IN (SELECT * FROM unnest($2::text[], $3::text[]))""",
        org,
        [k[0] for k in keys],
        [k[1] for k in keys],
    )
    return [
        Entry(org, r["interface"], r["fixmedins_bchno"], r["med_list_codg"], r["kind"], r["units"], r["at"],
              tuple(r["codes"]), tuple(r["event_ids"]))
        for r in rows
    ]  # fmt: skip


async def ledger(conn: Conn, org: str, med_list_codg: str | None) -> list[dict[str, Any]]:
    """Per catalogue item: units by kind, in, out, the balance, the last counted stock and
    the balance just before that count (from the count before it, as the balance is)."""
    rows = await conn.fetch(
        f"""WITH live AS (
                SELECT * FROM nhsa_records
                WHERE org = $1 AND deleted_at IS NULL AND ($2::text IS NULL OR med_list_codg = $2)),
            items AS (
                SELECT r.med_list_codg, {_FIGURES}, count(*) AS records
                FROM live r GROUP BY r.med_list_codg),
            kinds AS (
                SELECT med_list_codg, jsonb_object_agg(kind, units) AS by_kind FROM (
                    SELECT med_list_codg, kind, sum(units) AS units FROM live
                    WHERE kind <> '{COUNT}' GROUP BY 1, 2) s
                GROUP BY med_list_codg),
            counts AS (  -- the last count, in ledger order
                SELECT DISTINCT ON (r.med_list_codg) r.med_list_codg, r.units AS counted, r.at AS counted_at,
                       r.fixmedins_bchno AS counted_bchno, r.at, r.interface, r.fixmedins_bchno
                FROM live r WHERE r.kind = '{COUNT}'
                ORDER BY r.med_list_codg, {_last_first("r")}),
            earlier AS (  -- the count before the last one
                SELECT DISTINCT ON (l.med_list_codg) l.med_list_codg, l.units AS counted,
                       l.at, l.interface, l.fixmedins_bchno
                FROM live l JOIN counts c USING (med_list_codg)
                WHERE l.kind = '{COUNT}' AND {_key("l")} < {_key("c")}
                ORDER BY l.med_list_codg, {_last_first("l")})
            SELECT i.med_list_codg, i.units_in::bigint, i.units_out::bigint, i.records,
                   coalesce(k.by_kind, '{{}}'::jsonb) AS by_kind,
                   c.counted, c.counted_at, c.counted_bchno,
                   (CASE WHEN c.counted IS NULL THEN i.balance
                         ELSE c.counted + (SELECT coalesce(sum(l.delta), 0) FROM live l
                                           WHERE l.med_list_codg = i.med_list_codg
                                             AND {_key("l")} > {_key("c")})
                    END)::bigint AS balance,  -- sums of bigint are numeric: whole units, as ints
                   (CASE WHEN c.counted IS NOT NULL THEN
                        coalesce(e.counted, 0)
                        + (SELECT coalesce(sum(l.delta), 0) FROM live l
                           WHERE l.med_list_codg = i.med_list_codg AND {_key("l")} < {_key("c")}
                             AND (e.at IS NULL OR {_key("l")} > {_key("e")}))
                    END)::bigint AS balance_before_count
            FROM items i LEFT JOIN kinds k USING (med_list_codg) LEFT JOIN counts c USING (med_list_codg)
                 LEFT JOIN earlier e USING (med_list_codg)
            ORDER BY i.med_list_codg""",  # noqa: S608
        org,
        med_list_codg,
    )
    out = []
    for r in rows:
        item = dict(r)
        by_kind = item["by_kind"]
        item["by_kind"] = json.loads(by_kind) if isinstance(by_kind, str) else dict(by_kind)
        out.append(item)
    return out


async def records_of(conn: Conn, org: str, interfaces: Sequence[str], bchno: str) -> list[dict[str, Any]]:
    """The records of ``bchno`` under ``interfaces``, each with ``deleted`` (a 3507 deleted
    it), in one statement: read in two (those that count, then whether any exists), a
    record committed in between was neither, and its deletion answered "success" and
    deleted nothing (found by a concurrency probe)."""
    rows = await conn.fetch(
        """SELECT interface, fixmedins_bchno, med_list_codg, kind, units, at, codes, event_ids, row_data,
                  deleted_at IS NOT NULL AS deleted
           FROM nhsa_records
           WHERE org = $1 AND interface = ANY($2::text[]) AND fixmedins_bchno = $3
           ORDER BY interface""",
        org,
        list(interfaces),
        bchno,
    )
    return [dict(r) for r in rows]


async def mark_deleted(conn: Conn, org: str, keys: Sequence[tuple[str, str]], msgid: str) -> list[str]:
    """Mark the records of ``keys`` deleted; the serials of those this marked (a record
    deleted meanwhile by another upload is not)."""
    rows = await conn.fetch(
        """UPDATE nhsa_records SET deleted_at = now(), deleted_msgid = $4
           WHERE org = $1 AND (interface, fixmedins_bchno) IN (SELECT * FROM unnest($2::text[], $3::text[]))
             AND deleted_at IS NULL
           RETURNING fixmedins_bchno""",
        org,
        [k[0] for k in keys],
        [k[1] for k in keys],
        msgid,
    )
    return sorted({r["fixmedins_bchno"] for r in rows})


@dataclass(frozen=True, slots=True)
class RecordFilters:
    """What a 3508/3511/3513 query asks for; None: any."""

    begin: datetime  # inclusive
    end: datetime  # exclusive
    med_list_codg: str | None = None
    item: str | None = None  # the catalogue code or the institution's own item code
    bchno: str | None = None
    code: str | None = None  # canonical
    mdtrt_id: str | None = None  # the visit, as the row's mdtrt_sn
    traced: bool = False  # only records that carry trace codes
    psn_hash: bytes | None = None  # the insured person's, keyed (core.settlement.person_hash)


_RECORDS = """FROM nhsa_records
    WHERE org = $1 AND interface = ANY($2::text[]) AND deleted_at IS NULL
      AND ($3::text IS NULL OR med_list_codg = $3)
      AND ($4::text IS NULL OR med_list_codg = $4 OR row_data->>'fixmedins_hilist_id' = $4)
      AND ($5::text IS NULL OR fixmedins_bchno = $5)
      AND ($6::text IS NULL OR $6 = ANY(codes))
      AND ($7::text IS NULL OR row_data->>'mdtrt_sn' = $7)
      AND at >= $8 AND at < $9
      AND (NOT $10::boolean OR cardinality(codes) > 0)
      AND ($11::bytea IS NULL OR psn_hash = $11)"""


async def records(
    conn: Conn, org: str, interfaces: Sequence[str], filters: RecordFilters, *, offset: int, limit: int
) -> tuple[int, list[dict[str, Any]]]:
    """How many records that still count match ``filters``, and ``limit`` of them from
    ``offset`` on, oldest first (time, interface, serial: a page is stable)."""
    f = filters
    args: tuple[Any, ...] = (org, list(interfaces), f.med_list_codg, f.item, f.bchno, f.code, f.mdtrt_id)
    args += (f.begin, f.end, f.traced, f.psn_hash)
    async with conn.transaction():
        await plan_for_values(conn)  # any combination of filters: a plan for the ones given
        total = await conn.fetchval(f"SELECT count(*) {_RECORDS}", *args)
        rows = await conn.fetch(
            f"""SELECT interface, fixmedins_bchno, med_list_codg, kind, units, at, codes, row_data,
                       received_at
                {_RECORDS}
                ORDER BY at, interface, fixmedins_bchno
                OFFSET $12 LIMIT $13""",
            *args,
            offset,
            limit,
        )
    out = []
    for r in rows:
        item = dict(r)
        data = item["row_data"]
        item["row_data"] = json.loads(data) if isinstance(data, str) else dict(data)
        out.append(item)
    return int(total), out
