"""SQL for flags: raising (deduplicated), clearing, listing, the workflow, and the feed's
outbox (``flag_outbox``: a row per change of status, written with the change)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from service.core.custody import Fact
from service.core.flags import AT_RECEIPT, ITEMS, SYSTEM, Evidence, FlagKey, FlagRef, NewFlag
from service.core.ledger import STOCK_IMBALANCE, Imbalance
from service.core.settlement import EXCESS_PURCHASE, Flagged
from service.store import codes as code_store
from service.store.conn import Conn

_COLUMNS = (
    "flag_id, kind, code, org, region, at, raised_at, status, detail, refs, moved_by_person, source_kind"
)
# The flags an automatic clear may take (a replay, a late sale, a deletion): pending or
# open, and not moved by a person. A status a person set (open again after an automatic
# clear, say) is a decision no automatic change undoes; a note alone moves nothing.
CLEARABLE = "status IN ('pending', 'open') AND NOT moved_by_person"


async def raise_flags(
    conn: Conn,
    flags: Iterable[NewFlag],
    fresh: set[FlagKey] | None = None,
    stored_now: list[str] | None = None,
) -> dict[FlagKey, FlagRef]:
    """Store suspicions, one flag per key (kind, code, evidence): a retry of the same
    evidence is the same flag; an auto-cleared flag whose suspicion returns is opened
    again. Returns the stored flag of every key given; ``fresh``, when given, receives the
    keys raised now (stored or opened again), not those that stood already;
    ``stored_now`` the kind of each flag stored now (new), for the caller to count once
    its transaction has committed (``metrics.flags_raised``)."""
    unique: dict[FlagKey, NewFlag] = {}
    for flag in flags:
        unique.setdefault(flag.key, flag)
    items = list(unique.values())
    if not items:
        return {}
    rows = await conn.fetch(
        """WITH given AS (
               SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[],
                                    $6::text[], $7::jsonb[], $8::text[], $9::text[], $10::text[])
                   WITH ORDINALITY
                   AS g(kind, code, org, region, at, detail, refs, source_kind, source_id, status, n))
           INSERT INTO flags (kind, code, org, region, at, detail, refs, source_kind, source_id, status)
           SELECT g.kind, g.code, g.org, coalesce(g.region, o.region), g.at, g.detail, g.refs,
                  g.source_kind, g.source_id, g.status
           FROM given g LEFT JOIN orgs o ON o.id = g.org
           ORDER BY g.n
           ON CONFLICT (code, kind, source_kind, source_id) DO UPDATE
               SET status = EXCLUDED.status, updated_at = EXCLUDED.updated_at,
                   detail = EXCLUDED.detail, refs = EXCLUDED.refs
               WHERE flags.status = 'auto_cleared'
           RETURNING flag_id, kind, code, source_kind, source_id, status,
                     xmax <> 0 AS reopened  -- a row updated, not inserted (PostgreSQL's xmax)""",
        [f.kind for f in items],
        [f.code for f in items],
        [f.org for f in items],
        [f.region for f in items],
        [f.at for f in items],
        [f.detail for f in items],
        [f.refs for f in items],
        [f.source.kind for f in items],
        [f.source.id for f in items],
        [f.status for f in items],
    )
    stored = {_key(r): FlagRef(r["flag_id"], r["kind"], r["code"]) for r in rows}
    if fresh is not None:
        fresh.update(stored)
    new = [r for r in rows if not r["reopened"]]
    if stored_now is not None:
        stored_now += [r["kind"] for r in new]
    await _to_outbox(conn, new)
    for status in ("pending", "open"):  # the re-opened ones: kept in their history
        again = [r for r in rows if r["reopened"] and r["status"] == status]
        await _changed_by_system(conn, again, status, "suspected again: what explained it no longer does")
    standing = [f for f in items if f.key not in stored]
    if standing:  # raised before and still standing: the existing flag
        for r in await conn.fetch(
            """SELECT flag_id, kind, code, source_kind, source_id FROM flags
               WHERE (code, kind, source_kind, source_id) IN
                     (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]))
                 AND code = ANY($1::text[])""",
            [f.code for f in standing],
            [f.kind for f in standing],
            [f.source.kind for f in standing],
            [f.source.id for f in standing],
        ):
            stored[_key(r)] = FlagRef(r["flag_id"], r["kind"], r["code"])
    return stored


async def restate(conn: Conn, flags: Sequence[NewFlag], why: str) -> list[int]:
    """Flags of exactly these keys that stand (CLEARABLE: pending or open, no person
    moved them) and whose evidence (``detail``, ``refs``) is not the one given take it:
    judged again with other figures (a STOCK_IMBALANCE whose ledger later records
    changed), they show the facts as they are now. Their status stays, and so does
    ``updated_at`` (a pending flag's grace window runs from its status); each gets a line
    of its history by the system under its status, ``why`` and what it said before. Not
    a change of status: nothing goes onto the feed (as a note, :func:`add_change`). A
    flag a person moved stays as they left it, as with the automatic clears. Returns the
    ids of the flags restated."""
    if not flags:
        return []
    rows = await conn.fetch(
        f"""SELECT code, flag_id, kind, source_kind, source_id, detail, refs FROM flags
           WHERE code = ANY($2::text[]) AND {CLEARABLE}
             AND (kind, code, source_kind, source_id) IN
                 (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]))""",  # noqa: S608
        [f.kind for f in flags],
        [f.code for f in flags],
        [f.source.kind for f in flags],
        [f.source.id for f in flags],
    )
    given = {f.key: f for f in flags}
    changed = []
    for r in rows:
        flag = given[_key(r)]
        refs = msgspec.json.decode(msgspec.json.encode(flag.refs))  # as jsonb gives it back
        if (r["detail"], r["refs"]) != (flag.detail, refs):
            changed.append((r, flag))
    if not changed:
        return []
    updated = await conn.fetch(
        # the status is checked on the row updated too: a person's change committed while
        # this waited for the row stands
        f"""UPDATE flags SET detail = n.detail, refs = n.refs
           FROM unnest($1::text[], $2::bigint[], $3::text[], $4::jsonb[]) AS n(code, flag_id, detail, refs)
           WHERE flags.code = ANY($1::text[]) AND flags.code = n.code AND flags.flag_id = n.flag_id
             AND {CLEARABLE}
           RETURNING flags.code, flags.flag_id, flags.status""",  # noqa: S608
        [r["code"] for r, _ in changed],
        [r["flag_id"] for r, _ in changed],
        [f.detail for _, f in changed],
        [f.refs for _, f in changed],
    )
    before = {r["flag_id"]: r["detail"] for r, _ in changed}
    if updated:  # their history lines, in one statement (an upload may restate many)
        await conn.execute(
            """INSERT INTO flag_changes (code, flag_id, status, note, by_key)
               SELECT code, id, status, note, $5 FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[])
                   AS l(code, id, status, note)""",
            [u["code"] for u in updated],
            [u["flag_id"] for u in updated],
            [u["status"] for u in updated],
            [f"{why}; it said: {before[u['flag_id']]}" for u in updated],
            SYSTEM,
        )
    return [u["flag_id"] for u in updated]


def _key(row: asyncpg.Record) -> FlagKey:
    return (row["kind"], row["code"], Evidence(row["source_kind"], row["source_id"]))


async def excess_raised(conn: Conn, sources: Sequence[Evidence]) -> list[Flagged]:
    """The EXCESS_PURCHASE flags resting on any of ``sources`` (a person's windows of
    items, ``core.settlement.excess_evidence``), on any code, that stand: all but those
    withdrawn (auto_cleared: a reversal found they no longer held). By the evidence
    index."""
    rows = await conn.fetch(
        f"""SELECT kind, code, source_kind, source_id, at, ({CLEARABLE}) AS clearable FROM flags
           WHERE kind = $1 AND status <> 'auto_cleared'
             AND (source_kind, source_id) IN (SELECT * FROM unnest($2::text[], $3::text[]))""",  # noqa: S608
        EXCESS_PURCHASE,
        [e.kind for e in sources],
        [e.id for e in sources],
    )
    return [Flagged(_key(r), r["at"], r["clearable"]) for r in rows]


async def auto_clear(
    conn: Conn,
    codes: Sequence[str],
    standing: Iterable[FlagKey],
    kinds: Sequence[str],
    cleared_by: list[str],
    rejudged: Iterable[tuple[str, str]],
    deleted: Sequence[str] = (),
) -> list[int]:
    """Flags of ``kinds`` on ``codes`` (and OUT_OF_REGION flags raised at a receipt), of
    those CLEARABLE, that the current fold no longer suspects (their key is not in
    ``standing``) become auto_cleared, naming the events that explained them. Event flags on these codes were
    all re-judged by the fold; a settlement's flag only if its (code, setl_id) is in
    ``rejudged``. Not those resting on the events ``deleted`` (ids of events of records
    an NHSA 3507 deletes in this transaction: it withdraws them itself, naming it)."""
    keep = list(standing)
    again = list(rejudged)
    rows = await conn.fetch(
        f"""UPDATE flags
           SET status = 'auto_cleared', updated_at = now(),
               refs = refs || jsonb_build_object('cleared_by', $3::text[])
           WHERE code = ANY($1::text[]) AND {CLEARABLE}
             AND (kind = ANY($2::text[]) OR (kind = 'OUT_OF_REGION' AND refs ? $10::text))
             AND (source_kind = 'event'
                  OR (source_kind = 'settlement'
                      AND (code, source_id) IN (SELECT * FROM unnest($4::text[], $5::text[]))))
             AND (code, kind, source_kind, source_id) NOT IN
                 (SELECT * FROM unnest($6::text[], $7::text[], $8::text[], $9::text[]))
             AND NOT (source_kind = 'event' AND source_id = ANY($11::text[]))
           RETURNING code, flag_id""",  # noqa: S608 - fixed fragments only
        list(codes),
        list(kinds),
        cleared_by,
        [code for code, _ in again],
        [setl_id for _, setl_id in again],
        [code for _, code, _ in keep],
        [kind for kind, _, _ in keep],
        [source.kind for _, _, source in keep],
        [source.id for _, _, source in keep],
        AT_RECEIPT,
        list(deleted),
    )
    await _changed_by_system(conn, rows, "auto_cleared", "explained by later-arriving events")
    return [r["flag_id"] for r in rows]


async def withdraw(
    conn: Conn,
    keys: Sequence[FlagKey],
    cleared_by: list[str],
    note: str = "explained by later-arriving events",
) -> list[int]:
    """Flags of exactly ``keys`` (those CLEARABLE) that later-arriving facts explained (a
    sale flagged DUPLICATE that, its pack's sales folded again in event time, found the
    pack in stock; a STOCK_IMBALANCE a late purchase backs) become auto_cleared, naming
    what explained them (``cleared_by``, and ``note`` in their history)."""
    if not keys:
        return []
    rows = await conn.fetch(
        f"""UPDATE flags
           SET status = 'auto_cleared', updated_at = now(),
               refs = refs || jsonb_build_object('cleared_by', $5::text[])
           WHERE code = ANY($2::text[]) AND {CLEARABLE}
             AND (kind, code, source_kind, source_id) IN
                 (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]))
           RETURNING code, flag_id""",  # noqa: S608 - fixed fragments only
        [kind for kind, _, _ in keys],
        [code for _, code, _ in keys],
        [source.kind for _, _, source in keys],
        [source.id for _, _, source in keys],
        cleared_by,
    )
    await _changed_by_system(conn, rows, "auto_cleared", note)
    return [r["flag_id"] for r in rows]


async def imbalances(conn: Conn, org: str, items: Sequence[str]) -> list[Imbalance]:
    """The organisation's STOCK_IMBALANCE flags on ``items`` that an automatic clear may
    take (CLEARABLE), with the record each rests on."""
    if not items:
        return []
    rows = await conn.fetch(
        f"""SELECT code, source_kind, source_id, at, refs->>'interface' AS interface,
                  refs->>'fixmedins_bchno' AS bchno
           FROM flags
           WHERE code = ANY($1::text[]) AND kind = $2 AND org = $3 AND {CLEARABLE}""",  # noqa: S608
        list(items),
        STOCK_IMBALANCE,
        org,
    )
    return [
        Imbalance(
            (STOCK_IMBALANCE, r["code"], Evidence(r["source_kind"], r["source_id"])),
            r["code"],
            r["at"],
            r["interface"],
            r["bchno"],
        )
        for r in rows
    ]


async def withdraw_resting_on(
    conn: Conn,
    sources: Sequence[Evidence],
    codes: Sequence[str],
    note: str,
    on_codes: Sequence[tuple[str, Evidence]] = (),
) -> list[int]:
    """Flags (those CLEARABLE) whose evidence is one of ``sources`` (records an NHSA 3507
    deleted, and their events it undid: nothing else raised them), or, on one code,
    whose (code, evidence) is one of ``on_codes`` (a deleted sale's, resting on its
    settlement id: ``core.ledger.deleted_sale_evidence``), become auto_cleared, ``note``
    saying why.
    ``codes``: every code such a flag of ``sources`` may be on (on Citus, with the codes
    of ``on_codes``, the shards to visit)."""
    if not sources and not on_codes:
        return []
    rows = await conn.fetch(
        f"""UPDATE flags SET status = 'auto_cleared', updated_at = now()
           WHERE code = ANY($1::text[]) AND {CLEARABLE}
             AND ((source_kind, source_id) IN (SELECT * FROM unnest($2::text[], $3::text[]))
                  OR (code, source_kind, source_id) IN
                     (SELECT * FROM unnest($4::text[], $5::text[], $6::text[])))
           RETURNING code, flag_id""",  # noqa: S608 - fixed fragments only
        sorted({*codes, *(code for code, _ in on_codes)}),
        [e.kind for e in sources],
        [e.id for e in sources],
        [code for code, _ in on_codes],
        [e.kind for _, e in on_codes],
        [e.id for _, e in on_codes],
    )
    await _changed_by_system(conn, rows, "auto_cleared", note)
    return [r["flag_id"] for r in rows]


async def _changed_by_system(conn: Conn, flags: Sequence[asyncpg.Record], status: str, note: str) -> None:
    """Keep the system's change of ``flags`` (rows of code and flag_id) in their history,
    and on the feed's outbox at the history line's time (:func:`published_change`)."""
    if flags:
        await conn.execute(
            """WITH line AS (
                   INSERT INTO flag_changes (code, flag_id, status, note, by_key)
                   SELECT code, id, $3, $4, $5 FROM unnest($1::text[], $2::bigint[]) AS f(code, id)
                   RETURNING code, flag_id, at)
               INSERT INTO flag_outbox (code, flag_id, status, at) SELECT code, flag_id, $3, at FROM line""",
            [r["code"] for r in flags],
            [r["flag_id"] for r in flags],
            status,
            note,
            SYSTEM,
        )


async def _to_outbox(conn: Conn, flags: Sequence[asyncpg.Record]) -> None:
    """Put new flags (rows of code, flag_id and status) on the feed's outbox."""
    if flags:
        await conn.execute(
            """INSERT INTO flag_outbox (code, flag_id, status)
               SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[])""",
            [r["code"] for r in flags],
            [r["flag_id"] for r in flags],
            [r["status"] for r in flags],
        )


async def settlement_suspicions(conn: Conn, codes: Sequence[str]) -> list[Fact]:
    """Open custody flags (UNKNOWN_CODE, DIVERSION) that settlements raised on ``codes``,
    as the settlements to judge again: a late event may explain them."""
    rows = await code_store.fetch_by_shard(
        conn,
        """SELECT code, org, at, source_id FROM flags
           WHERE code = ANY($1::text[]) AND status IN ('pending', 'open') AND source_kind = 'settlement'
             AND kind IN ('UNKNOWN_CODE', 'DIVERSION')""",
        codes,
    )
    return [Fact.settlement(r["source_id"], r["at"], r["org"], r["code"]) for r in rows]


PROMOTION_LOCK = 7_413_000_002  # arbitrary, constant: "tracecode pending-flag promotion"


async def promote_pending(conn: Conn, window: timedelta, limit: int = 10_000) -> list[int] | None:
    """Pending flags whose grace window has passed unexplained become open, each change
    kept with who (``system``) and why, and put on the feed's outbox. Runs in one
    transaction holding a transaction-level advisory lock; returns None without doing
    anything when another transaction holds it (one promotion at a time, whatever the
    number of workers)."""
    if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", PROMOTION_LOCK):
        return None
    rows = await conn.fetch(
        # the status is checked on the row updated too: a change committed while this
        # waited for the row (an investigator's) is seen there, not in the subquery
        """UPDATE flags SET status = 'open', updated_at = now()
           WHERE flag_id IN (SELECT flag_id FROM flags
                             WHERE status = 'pending' AND updated_at <= now() - $1::interval
                             ORDER BY updated_at LIMIT $2)
             AND status = 'pending' AND updated_at <= now() - $1::interval
           RETURNING code, flag_id""",
        window,
        limit,
    )
    await _changed_by_system(conn, rows, "open", "the grace window passed with nothing explaining it")
    return [r["flag_id"] for r in rows]


async def pending_since(conn: Conn, code: str, flag_id: int) -> datetime | None:
    """When a pending flag became pending (raised, or raised again once auto-cleared):
    its grace window runs from then, as :func:`promote_pending` reads it; None for a
    flag that is not pending."""
    since: datetime | None = await conn.fetchval(
        "SELECT updated_at FROM flags WHERE code = $1 AND flag_id = $2 AND status = 'pending'",
        code,
        flag_id,
    )
    return since


async def for_code(conn: Conn, code: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(f"SELECT {_COLUMNS} FROM flags WHERE code = $1 ORDER BY at, flag_id", code)  # noqa: S608
    return [dict(r) for r in rows]


async def resting_on_events(conn: Conn, pairs: Iterable[tuple[str, UUID]]) -> list[dict[str, Any]]:
    """The flags on each (code, event id) of ``pairs`` that rest on that event."""
    wanted = {(code, str(event_id)) for code, event_id in pairs}
    if not wanted:
        return []
    rows = await conn.fetch(
        f"""SELECT {_COLUMNS}, source_id FROM flags
            WHERE code = ANY($1::text[]) AND source_kind = 'event' AND source_id = ANY($2::text[])""",  # noqa: S608
        sorted({code for code, _ in wanted}),
        sorted({event_id for _, event_id in wanted}),
    )
    return [
        {k: v for k, v in r.items() if k != "source_id"}
        for r in rows
        if (r["code"], r["source_id"]) in wanted
    ]


async def get(conn: Conn, flag_id: int) -> dict[str, Any] | None:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM flags WHERE flag_id = $1", flag_id)  # noqa: S608
    return dict(row) if row else None


async def lock(conn: Conn, code: str, flag_id: int) -> None:
    """Lock one flag's row for this transaction (by its code too: one shard on Citus)."""
    await conn.execute("SELECT 1 FROM flags WHERE code = $1 AND flag_id = $2 FOR UPDATE", code, flag_id)


async def changes(conn: Conn, code: str, flag_id: int) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT at, status, note, by_key FROM flag_changes WHERE code = $1 AND flag_id = $2 ORDER BY at",
        code,
        flag_id,
    )
    return [dict(r) for r in rows]


async def set_status(conn: Conn, code: str, flag_id: int, status: str, note: str | None, by_key: str) -> None:
    """A person's change of status: the flag (moved by a person: no automatic clear takes
    it now), its history and the feed's outbox, at the history line's time
    (:func:`published_change`)."""
    await conn.execute(
        """UPDATE flags SET status = $3, updated_at = now(), moved_by_person = true
           WHERE code = $1 AND flag_id = $2""",
        code,
        flag_id,
        status,
    )
    await conn.execute(
        """WITH line AS (
               INSERT INTO flag_changes (code, flag_id, status, note, by_key) VALUES ($1, $2, $3, $4, $5)
               RETURNING at)
           INSERT INTO flag_outbox (code, flag_id, status, at) SELECT $1, $2, $3, at FROM line""",
        code,
        flag_id,
        status,
        note,
        by_key,
    )


async def published_change(conn: Conn, code: str, flag_id: int, at: datetime) -> dict[str, Any] | None:
    """The history line of the change the feed published at ``at`` (its ``changed_at``):
    a change's outbox row carries its history line's time; None when there is none: the
    entry is the flag's raising (which has no history line)."""
    row = await conn.fetchrow(
        "SELECT at, status, note, by_key FROM flag_changes WHERE code = $1 AND flag_id = $2 AND at = $3",
        code,
        flag_id,
        at,
    )
    return dict(row) if row else None


async def add_change(conn: Conn, code: str, flag_id: int, status: str, note: str | None, by_key: str) -> None:
    """A line of the flag's history: who, the status it was left in, and why."""
    await conn.execute(
        "INSERT INTO flag_changes (code, flag_id, status, note, by_key) VALUES ($1, $2, $3, $4, $5)",
        code,
        flag_id,
        status,
        note,
        by_key,
    )


@dataclass(frozen=True, slots=True)
class FlagQuery:
    """What a flag search filters on; None: not filtered."""

    kind: str | None = None
    status: str | None = None  # None: every status but pending (or ``statuses``)
    org: str | None = None
    region: str | None = None  # a region-code prefix
    code: str | None = None  # canonical
    since: datetime | None = None  # activity time (``at``), inclusive
    until: datetime | None = None  # exclusive
    med_list_codg: str | None = None  # a catalogue item the flags name (``refs.items``)
    statuses: tuple[str, ...] | None = None  # any of these (status None): a queue of work to do

    def lists(self, status: str) -> bool:
        """Does the search list flags of ``status``? (What :func:`search_sql` selects by.)"""
        if self.status is not None:
            return status == self.status
        return status in self.statuses if self.statuses else status != "pending"


def search_sql(query: FlagQuery, *, before_id: int | None, limit: int) -> tuple[str, list[Any]]:
    """The statement for one combination of filters, naming only the filters given.

    One catch-all statement (``$1 IS NULL OR kind = $1`` ...) is prepared once, and
    after a few runs PostgreSQL plans it generically: no index fits every combination,
    so it walks the whole table. Each combination is its own statement instead (at most
    128), and each plans with the indexes that fit it (0009_search_indexes.sql).
    """
    args: list[Any] = []
    if query.status is not None:
        where = [f"status = {_arg(args, query.status)}"]
    elif query.statuses:
        where = [f"status = ANY({_arg(args, list(query.statuses))}::text[])"]
    else:
        where = ["status <> 'pending'"]
    where += _filters(query, args)
    if before_id is not None:
        where.append(f"flag_id < {_arg(args, before_id)}")
    sql = f"""SELECT {_COLUMNS} FROM flags WHERE {" AND ".join(where)}
              ORDER BY flag_id DESC LIMIT {_arg(args, limit)}"""  # noqa: S608 - fixed fragments only
    return sql, args


def _arg(args: list[Any], value: Any) -> str:
    args.append(value)
    return f"${len(args)}"


def _filters(query: FlagQuery, args: list[Any]) -> list[str]:
    """The conditions of every filter given but the status, their values added to ``args``."""
    where = []
    if query.kind is not None:
        where.append(f"kind = {_arg(args, query.kind)}")
    if query.org is not None:
        where.append(f"org = {_arg(args, query.org)}")
    if query.region is not None:
        # a prefix of digits, as a byte-wise range (``~>=~``/``~<~``, the operators of
        # the text_pattern_ops index): a LIKE on a parameter cannot use an index in a
        # generic plan, and ':' is the byte after '9'
        low, high = _arg(args, query.region), _arg(args, query.region + ":")
        where.append(f"region ~>=~ {low} AND region ~<~ {high}")
    if query.code is not None:
        where.append(f"code = {_arg(args, query.code)}")
    if query.med_list_codg is not None:
        # the items a flag names (core.flags.ITEMS), by their GIN index (0023_flag_items.sql)
        where.append(f"(refs -> '{ITEMS}') ? {_arg(args, query.med_list_codg)}")
    if query.since is not None:
        where.append(f"at >= {_arg(args, query.since)}")
    if query.until is not None:
        where.append(f"at < {_arg(args, query.until)}")
    return where


async def search(conn: Conn, query: FlagQuery, *, before_id: int | None, limit: int) -> list[dict[str, Any]]:
    """Newest first (by flag id, which only grows), after the cursor ``before_id``."""
    sql, args = search_sql(query, before_id=before_id, limit=limit)
    return [dict(r) for r in await conn.fetch(sql, *args)]


async def counts(conn: Conn, query: FlagQuery | None = None) -> list[tuple[str, str, int]]:
    """(kind, status, how many) for every kind and status that has flags: of the flags
    ``query`` selects whatever their status (the statuses are what is counted), or of all.
    Each combination of filters is its own statement, as a search's is."""
    args: list[Any] = []
    where = _filters(query, args) if query is not None else []
    rows = await conn.fetch(
        f"""SELECT kind, status, count(*) AS n FROM flags {"WHERE " + " AND ".join(where) if where else ""}
            GROUP BY kind, status""",  # noqa: S608 - fixed fragments only
        *args,
    )
    return [(r["kind"], r["status"], r["n"]) for r in rows]


PUBLISHING_LOCK = 7_413_000_003  # arbitrary, constant: "tracecode flag publishing"


async def claim_unpublished(conn: Conn, limit: int) -> list[dict[str, Any]] | None:
    """Changes of status not yet on the stream, oldest first, each with its flag as it is
    now and the change's own status and time (``changed_at``); None when another
    transaction is publishing (one publisher at a time, whatever the number of workers:
    a transaction-level advisory lock). A plain read: it never waits on a writer."""
    if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", PUBLISHING_LOCK):
        return None
    rows = await conn.fetch(
        """SELECT f.flag_id, f.kind, f.code, f.org, f.region, f.at, f.raised_at, o.status, f.detail,
                  f.refs, o.at AS changed_at
           FROM flag_outbox o JOIN flags f ON f.code = o.code AND f.flag_id = o.flag_id
           ORDER BY o.at, o.flag_id LIMIT $1""",
        limit,
    )
    return [dict(r) for r in rows]


async def mark_published(conn: Conn, changes: Sequence[dict[str, Any]]) -> None:
    """Take the published changes off the outbox (in the publishing transaction)."""
    await conn.execute(
        """DELETE FROM flag_outbox
           WHERE (code, flag_id, at) IN (SELECT * FROM unnest($1::text[], $2::bigint[], $3::timestamptz[]))
             AND code = ANY($1::text[])""",
        [c["code"] for c in changes],
        [c["flag_id"] for c in changes],
        [c["changed_at"] for c in changes],
    )


async def unpublished_count(conn: Conn) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM flag_outbox"))
