"""SQL for per-code state: locking, reading and writing ``codes`` rows, and walking
containers (``containment``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import NamedTuple
from uuid import UUID

import asyncpg

from service.core.custody import CodeState
from service.core.sales import Sale
from service.store.conn import Conn, RetryTransaction, distributed, unique_violation

# The columns of a codes row, in CodeState's order (the load-test seeder COPYs them too).
COLUMNS = (
    "code",
    "kind",
    "product_id",
    "commissioned",
    "commissioned_by",
    "commission_event",
    "lot",
    "expiry",
    "produced",
    "parent",
    "state",
    "custodian",
    "destination",
    "pack_units",
    "units_left",
    "recalled",
    "last_at",
    "sold_at",
)
_TYPES = (
    "text",
    "text",
    "text",
    "bool",
    "text",
    "uuid",
    "text",
    "date",
    "date",
    "text",
    "text",
    "text",
    "text",
    "int4",
    "int4",
    "bool",
    "timestamptz",
    "timestamptz",
)
SELECT = ", ".join(COLUMNS)  # the column list of statements (also store.settlements)
_TYPE_OF = dict(zip(COLUMNS, _TYPES, strict=True))


def _state(row: asyncpg.Record) -> CodeState:
    return CodeState(**{c: row[c] for c in COLUMNS})


async def lock(conn: Conn, codes: Iterable[str]) -> dict[str, CodeState]:
    """Lock the existing rows of ``codes`` for this transaction and return them.

    Every writer locks in one order, (shard, code), so two writers cannot deadlock: one
    statement per shard, each in code order. Plain PostgreSQL is one shard (one
    statement); on Citus a row lock is taken by a statement on one shard only."""
    rows = await fetch_by_shard(
        conn, f"SELECT {SELECT} FROM codes WHERE code = ANY($1::text[]) ORDER BY code FOR UPDATE", codes  # noqa: S608
    )
    return {r["code"]: _state(r) for r in rows}


async def by_shard(conn: Conn, codes: Iterable[str]) -> list[list[str]]:
    """``codes`` grouped by the shard of ``codes`` (the table) that holds them, in shard
    order: one group on plain PostgreSQL; on Citus the coordinator names each code's
    shard (one round trip, none for a single code)."""
    wanted = sorted(set(codes))
    if len(wanted) <= 1 or not distributed(conn):
        return [wanted] if wanted else []
    groups: dict[int, list[str]] = {}
    for r in await conn.fetch(
        """SELECT get_shard_id_for_distribution_column('codes', c) AS shard, c
           FROM unnest($1::text[]) AS c ORDER BY 1""",
        wanted,
    ):
        groups.setdefault(r["shard"], []).append(r["c"])
    return list(groups.values())


async def fetch_by_shard(conn: Conn, sql: str, codes: Iterable[str], *args: object) -> list[asyncpg.Record]:
    """Run a read whose ``$1`` is a list of codes once per shard, each with that shard's
    codes (once on plain PostgreSQL). Citus sends a statement to every shard its list
    touches, each with the whole list: a read of 1,000 codes on 32 shards made each
    shard parse 1,000."""
    rows: list[asyncpg.Record] = []
    for group in await by_shard(conn, codes):
        rows += await conn.fetch(sql, group, *args)
    return rows


class ContentsChanged(RetryTransaction):
    """A code was packed into one of the locked codes between the walk and the lock; retry."""


async def stored_and_children(
    conn: Conn, event_ids: list[UUID], codes: Iterable[str]
) -> tuple[dict[UUID, str], list[tuple[str, str]]]:
    """Which of ``event_ids`` are stored already, each with its organisation, and the
    (parent, child) pairs one level inside ``codes`` (ingest's first look). One statement
    on plain PostgreSQL; two reads on Citus, where the UNION ALL of both was planned as
    two sent to every shard (5 ms a shard group)."""
    if not distributed(conn):
        rows = await conn.fetch(
            """SELECT event_id, org, NULL AS parent, NULL AS child
               FROM events WHERE event_id = ANY($1::uuid[])
               UNION ALL
               SELECT NULL, NULL, parent, child FROM containment WHERE parent = ANY($2::text[])""",
            event_ids,
            list(codes),
        )
        return (
            {r["event_id"]: r["org"] for r in rows if r["event_id"] is not None},
            [(r["parent"], r["child"]) for r in rows if r["event_id"] is None],
        )
    stored = await conn.fetch("SELECT event_id, org FROM events WHERE event_id = ANY($1::uuid[])", event_ids)
    pairs = await fetch_by_shard(
        conn, "SELECT parent, child FROM containment WHERE parent = ANY($1::text[])", codes
    )
    return {r["event_id"]: r["org"] for r in stored}, [(r["parent"], r["child"]) for r in pairs]


async def lock_with_contents(
    conn: Conn, named: Iterable[str], children: Iterable[str]
) -> dict[str, CodeState]:
    """Lock ``named`` and every code ever packed inside them, at any depth, in one
    statement in code order, and return the rows. ``children`` is the first level inside
    ``named``, already read.

    The walk below is plain reads, with no lock held, so one order holds for all code rows:
    two batches that cross (a case in one, its contents in the other) cannot deadlock.
    Once the rows are locked nothing can be packed into them; a code packed into one of
    them between the walk and the lock raises ContentsChanged, and the transaction runs
    again."""
    wanted = await _with_contents(conn, named, children)
    states = await lock(conn, wanted)
    inside = await fetch_by_shard(
        conn, "SELECT child FROM containment WHERE parent = ANY($1::text[])", states
    )
    if any(r["child"] not in wanted for r in inside):
        raise ContentsChanged
    return states


async def read_with_contents(
    conn: Conn, named: Iterable[str], children: Iterable[str]
) -> tuple[dict[str, CodeState], dict[str, AsRead]]:
    """``lock_with_contents`` without the locks: the rows of ``named`` and of every code
    ever packed inside them, with their versions. A code packed into one of them since
    changes that container's row, so its version tells (``store.ingest.write_unchanged``)."""
    return await read_versions(conn, await _with_contents(conn, named, children))


async def _with_contents(conn: Conn, named: Iterable[str], children: Iterable[str]) -> set[str]:
    """``named``, ``children`` (the first level inside them) and every code ever packed
    inside those children, at any depth."""
    wanted = set(named) | set(children)
    return wanted | set(await descendants_ever(conn, set(children) - set(named)))


async def lock_sold(conn: Conn, sale: Sale) -> dict[str, CodeState]:
    """Lock the rows of the packs that ``sale`` took units from and has not given back
    (as ``lock`` does), and return them. The caller reads the sale's consumptions again
    once they are locked: they are settled then."""
    taken = await conn.fetch(
        "SELECT code FROM consumptions WHERE sale_kind = $1 AND sale_id = $2 AND reversed_at IS NULL",
        sale.kind,
        sale.id,
    )
    return await lock(conn, [r["code"] for r in taken])


async def read(conn: Conn, codes: Iterable[str]) -> dict[str, CodeState]:
    rows = await conn.fetch(
        f"SELECT {SELECT} FROM codes WHERE code = ANY($1::text[])",  # noqa: S608
        list(codes),
    )
    return {r["code"]: _state(r) for r in rows}


class AsRead(NamedTuple):
    """A codes row as an optimistic read found it: its version (every write adds one),
    which the write checks is unchanged, and its columns, in COLUMNS' order, against
    which the write finds what changed."""

    version: int
    row: tuple[object, ...]


async def read_versions(conn: Conn, codes: Iterable[str]) -> tuple[dict[str, CodeState], dict[str, AsRead]]:
    """The rows of ``codes`` as ``read`` gives them, and each as read (its version and
    columns): what ``store.settlements.settle_unchanged`` checks they still are."""
    rows = await conn.fetch(
        f"SELECT {SELECT}, version FROM codes WHERE code = ANY($1::text[])",  # noqa: S608
        list(codes),
    )
    read = {r["code"]: AsRead(r["version"], tuple(r)[:-1]) for r in rows}
    return {r["code"]: _state(r) for r in rows}, read


def update_arrays(
    states: Iterable[CodeState], columns: tuple[str, ...] = COLUMNS
) -> tuple[str, str, list[list[object]]]:
    """For an ``UPDATE codes … FROM unnest(…) AS n(…)`` whose parameters start at $1:
    the unnest arguments, the SET list and the arrays (one per column, codes first) of
    ``columns`` (``code`` and any of the others, in COLUMNS' order)."""
    states = list(states)
    params = ", ".join(f"${i + 1}::{_TYPE_OF[c]}[]" for i, c in enumerate(columns))
    sets = ", ".join(f"{c} = n.{c}" for c in columns[1:])
    return params, sets, [[getattr(s, c) for s in states] for c in columns]


def changed_columns(read: Mapping[str, AsRead], written: Iterable[CodeState]) -> tuple[str, ...]:
    """``code`` and the columns in which a row to be written differs from the row as
    ``read`` (all of them for a row not read): what a write of rows still as read needs
    to send. A decision changes a few (a sale: the units left, the state, the times)."""
    changed: set[str] = set()
    for state in written:
        before = read.get(state.code)
        if before is None:
            return COLUMNS
        changed.update(c for c, was in zip(COLUMNS, before.row, strict=True) if getattr(state, c) != was)
    return ("code", *(c for c in COLUMNS[1:] if c in changed))


def update_unchanged_sql(params: str, sets: str, versions_at: int, columns: tuple[str, ...] = COLUMNS) -> str:
    """``UPDATE codes`` of ``update_arrays``'s rows (parameters from $1), each only where
    its version is still the one in the array ``$versions_at``, advancing it; returns the
    codes written (the one-statement writes compare their count with the rows'). A row
    whose columns are all as read is still written: its version advances, so that two
    writers that read it cannot both write."""
    return f"""UPDATE codes SET {sets + ", " if sets else ""}updated_at = now(), version = codes.version + 1
               FROM unnest({params}, ${versions_at}::bigint[]) AS n({", ".join(columns)}, version)
               WHERE codes.code = n.code AND codes.code = ANY($1::text[]) AND codes.version = n.version
               RETURNING codes.code"""  # noqa: S608


async def read_one(conn: Conn, code: str) -> CodeState | None:
    row = await conn.fetchrow(f"SELECT {SELECT} FROM codes WHERE code = $1", code)  # noqa: S608
    return _state(row) if row else None


async def descendants_ever(conn: Conn, codes: Iterable[str]) -> list[str]:
    """Every code that was ever packed, at any depth, inside one of ``codes``.

    One indexed look-up per level (cases, then pallets: two or three levels) rather than
    a recursive query, whose row estimates made PostgreSQL hash-join the whole
    containment table when a batch named many codes."""
    return await _walk(conn, codes, "SELECT child FROM containment WHERE parent = ANY($1::text[])")


async def ancestors_ever(conn: Conn, codes: Iterable[str]) -> list[str]:
    """Every container that ever held one of ``codes``, at any depth."""
    return await _walk(conn, codes, "SELECT parent FROM containment WHERE child = ANY($1::text[])")


async def _walk(conn: Conn, start: Iterable[str], step: str) -> list[str]:
    seen: set[str] = set()
    frontier = list(set(start))
    while frontier:
        found = {r[0] for r in await conn.fetch(step, frontier)} - seen
        seen |= found
        frontier = list(found)
    return list(seen)


async def contents(conn: Conn, code: str) -> list[str]:
    rows = await conn.fetch("SELECT code FROM codes WHERE parent = $1 ORDER BY code", code)
    return [r["code"] for r in rows]


class CreatedConcurrently(RetryTransaction):
    """Another transaction created a code row this one meant to create; retry."""


async def insert_new(conn: Conn, states: Iterable[CodeState]) -> None:
    """Insert rows for codes seen for the first time. If any already exists (a
    concurrent request created it after this one looked), raise CreatedConcurrently so
    the whole transaction runs again, this time locking the row.

    COPY: 1,000 new codes took 317 ms on Citus as ``INSERT … SELECT FROM unnest`` (each
    shard was sent every array), and COPY sends each row to its shard."""
    rows = [tuple(getattr(s, c) for c in COLUMNS) for s in states]
    if not rows:
        return
    try:
        await conn.copy_records_to_table("codes", records=rows, columns=COLUMNS)
    except asyncpg.PostgresError as exc:
        if unique_violation(exc):
            raise CreatedConcurrently from exc
        raise


async def update(conn: Conn, states: Iterable[CodeState]) -> None:
    """Replace the state of rows this transaction has locked: one statement on plain
    PostgreSQL, one per shard on Citus (a statement with the whole list went to every
    shard the list touches, each parsing all of it: 180 ms for 1,000 codes). The codes
    are named twice: ``code = ANY`` is what routes the statement to its shard."""
    by_code = {s.code: s for s in states}
    for group in await by_shard(conn, by_code):
        params, sets, arrays = update_arrays(by_code[code] for code in group)
        await conn.execute(
            f"""UPDATE codes SET {sets}, updated_at = now(), version = codes.version + 1
                FROM unnest({params}) AS n({SELECT})
                WHERE codes.code = n.code AND codes.code = ANY($1::text[])""",  # noqa: S608
            *arrays,
        )


async def add_containment(conn: Conn, pairs: Iterable[tuple[str, str]]) -> None:
    pairs = list(pairs)
    if not pairs:
        return
    await conn.execute(
        """INSERT INTO containment (parent, child)
           SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT DO NOTHING""",
        [p for p, _ in pairs],
        [c for _, c in pairs],
    )
