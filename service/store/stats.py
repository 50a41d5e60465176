"""SQL for organisation statistics."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import date, datetime
from typing import Any
from uuid import UUID

from service.core.receipts import Scans
from service.store.codes import fetch_by_shard
from service.store.conn import Conn

# The codes the organisation received: its receive events first (events_org_type), then
# their codes by event id (event_codes_event). Written as a join, the planner, costing
# ~450 codes an event, chose a parallel scan of every event for a busy distributor
# (0.2-0.7 s at 10 M codes, bench_console.py); the events' ids as an array keep it on
# the two indexes (5 ms).
RECEIVED = """FROM event_codes l
              WHERE l.event_id = ANY(ARRAY(SELECT event_id FROM events WHERE org = $1 AND type = 'receive'))
                AND l.role = 'c'"""
# A code that may be a container (core.receipts.is_container decides), from its text
# alone, with no look-up: an SSCC (canonical: "00" and 18 digits), or a CN20 code (its
# first 7 digits) or GS1 code ("01", then the GTIN) of a product in $2, the case and
# pallet products. Any other code is a pack.
MAYBE_CONTAINER = """((left(%(c)s, 2) = '00' AND length(%(c)s) = 20)
                      OR left(%(c)s, 7) = ANY($2::text[]) OR substr(%(c)s, 3, 14) = ANY($2::text[]))"""
RECEIVED_SQL = f"SELECT count(*) {RECEIVED}"
# The received codes that may be containers, each with its container scans dated up to
# the receipt: a look-up on the code's own rows (its shard) for each, by the primary key.
RECEIVED_CONTAINERS_SQL = f"""SELECT l.event_id AS receipt, l.code, l.at, p.at AS scan_at, p.event_id AS scan
    FROM event_codes l
    LEFT JOIN event_codes p ON p.code = l.code AND p.role = 'p' AND p.at <= l.at
    WHERE l.event_id = ANY(ARRAY(SELECT event_id FROM events WHERE org = $1 AND type = 'receive'))
      AND l.role = 'c' AND {MAYBE_CONTAINER % {"c": "l.code"}}"""  # noqa: S608


async def org_stats(conn: Conn, org: str) -> dict[str, Any]:
    received = await conn.fetchval(RECEIVED_SQL, org)
    # a dispense event counts as dispensed; a sale settled by insurance as settled (a
    # dispense that carries its settlement id is both)
    sales = await conn.fetchrow(
        """SELECT count(DISTINCT code) FILTER (WHERE event_id IS NOT NULL) AS dispensed_codes,
                  coalesce(sum(units) FILTER (WHERE event_id IS NOT NULL), 0) AS dispensed_units,
                  count(DISTINCT code) FILTER (WHERE setl_id IS NOT NULL) AS settled_codes,
                  coalesce(sum(units) FILTER (WHERE setl_id IS NOT NULL), 0) AS settled_units
           FROM consumptions WHERE org = $1 AND reversed_at IS NULL""",
        org,
    )
    settlements = await conn.fetch(
        "SELECT decision, count(*) AS n FROM settlements WHERE org = $1 GROUP BY decision", org
    )
    flags = await conn.fetch(
        "SELECT kind, status, count(*) AS n FROM flags WHERE org = $1 GROUP BY kind, status", org
    )
    by_kind: dict[str, int] = {}
    by_status: dict[str, int] = {}
    for r in flags:
        by_kind[r["kind"]] = by_kind.get(r["kind"], 0) + r["n"]
        by_status[r["status"]] = by_status.get(r["status"], 0) + r["n"]
    assert sales is not None
    return {
        "org": org,
        "received": received,
        "dispensed": sales["dispensed_codes"],
        "dispensed_units": sales["dispensed_units"],
        "settled": sales["settled_codes"],
        "settled_units": sales["settled_units"],
        "settlements": {r["decision"] or "pending": r["n"] for r in settlements},
        "flagged": sum(by_kind.values()),
        "flags_by_kind": by_kind,
        "flags_by_status": by_status,
    }


async def daily(conn: Conn, org: str, since: datetime) -> dict[date, tuple[int, int]]:
    """Per day in China time, from ``since``: the organisation's settlements paid in whole
    or in part (by their time; a rejected claim is no settlement), and the flags raised
    on it that stand (by the suspicious activity's time): neither pending (a late upload
    may yet explain it) nor auto-cleared (one did)."""
    rows = await conn.fetch(
        """SELECT day, sum(settlements)::int AS settlements, sum(flags)::int AS flags FROM (
               SELECT (at AT TIME ZONE 'Asia/Shanghai')::date AS day, 1 AS settlements, 0 AS flags
               FROM settlements WHERE org = $1 AND at >= $2 AND decision <> 'rejected'
               UNION ALL
               SELECT (at AT TIME ZONE 'Asia/Shanghai')::date, 0, 1
               FROM flags WHERE org = $1 AND at >= $2 AND status NOT IN ('pending', 'auto_cleared')) d
           GROUP BY day ORDER BY day""",
        org,
        since,
    )
    return {r["day"]: (r["settlements"], r["flags"]) for r in rows}


async def received_maybe_containers(
    conn: Conn, org: str, container_products: Sequence[str]
) -> tuple[list[tuple[str, datetime]], dict[str, dict[UUID, datetime]]]:
    """Each code a receive of the organisation named that may be a container, with the
    receipt's time (once for each time it was received: one entry a row of ``received``),
    and the container scans of those codes (pack and unpack events naming one as their
    container: by id, their times) dated up to a receipt of it. The scans are on the
    code's own shard (``event_codes`` is keyed by code)."""
    rows = await conn.fetch(RECEIVED_CONTAINERS_SQL, org, list(container_products))
    received: dict[tuple[UUID, str], datetime] = {}
    scans: dict[str, dict[UUID, datetime]] = {}
    for r in rows:
        received[r["receipt"], r["code"]] = r["at"]
        if r["scan"] is not None:
            scans.setdefault(r["code"], {})[r["scan"]] = r["scan_at"]
    return [(code, at) for (_, code), at in received.items()], scans


async def container_scans(conn: Conn, codes: Collection[str]) -> dict[str, dict[UUID, datetime]]:
    """The pack and unpack events naming each of ``codes`` as their container (by id, their
    times)."""
    rows = await fetch_by_shard(
        conn, "SELECT code, at, event_id FROM event_codes WHERE code = ANY($1::text[]) AND role = 'p'", codes
    )
    scans: dict[str, dict[UUID, datetime]] = {}
    for r in rows:
        scans.setdefault(r["code"], {})[r["event_id"]] = r["at"]
    return scans


async def scanned(
    conn: Conn, of: Mapping[str, Mapping[UUID, datetime]], container_products: Sequence[str]
) -> Scans:
    """What the scans ``of`` some containers named: each one's type, how many codes it
    named (``events.code_count``) and those of them that may be containers.

    Those are found among what was ever packed into the containers (``containment``, on
    each container's shard, read from its index alone), by their text; then each one's
    links say which of the scans named it (a pallet's cases: a few). Reading every
    code a scan named instead, from ``event_codes`` by event id, cost twice as much: the
    links' rows, not an index (54 against 26 ms for a distributor's 69,310 packs)."""
    ids = list({scan for found in of.values() for scan in found})
    if not ids:
        return Scans(of, {}, {}, {})
    events = await conn.fetch(
        "SELECT event_id, type, code_count FROM events WHERE event_id = ANY($1::uuid[])", ids
    )
    maybe = MAYBE_CONTAINER % {"c": "child"}
    inside = await fetch_by_shard(
        conn,
        f"SELECT DISTINCT child FROM containment WHERE parent = ANY($1::text[]) AND {maybe}",  # noqa: S608
        list(of),
        list(container_products),
    )
    maybe_containers: dict[UUID, list[str]] = {}
    if inside:
        for r in await fetch_by_shard(
            conn,
            """SELECT code, event_id FROM event_codes
               WHERE code = ANY($1::text[]) AND role = 'c' AND event_id = ANY($2::uuid[])""",
            [r["child"] for r in inside],
            ids,
        ):
            maybe_containers.setdefault(r["event_id"], []).append(r["code"])
    return Scans(
        of,
        {r["event_id"]: r["type"] for r in events},
        # its codes but those that may be containers (a scan naming its own container
        # among its codes had that one refused: not linked, but in code_count, a pack here)
        {r["event_id"]: r["code_count"] - len(maybe_containers.get(r["event_id"], ())) for r in events},
        maybe_containers,
    )


async def container_products(conn: Conn) -> dict[str, str]:
    """The case and pallet products (a few: a registry's small table): each one's level,
    by its id."""
    rows = await conn.fetch("SELECT product_id, level FROM products WHERE level <> 'unit'")
    return {r["product_id"]: r["level"] for r in rows}
