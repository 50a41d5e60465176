"""SQL for organisation statistics."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from service.store.conn import Conn

# codes the organisation received: its receive events first (events_org_type), then
# their codes by event id (event_codes_event). Written as a join, the planner, costing
# ~450 codes an event, chose a parallel scan of every event for a busy distributor
# (0.2-0.7 s at 10 M codes, bench_console.py); the events' ids as an array keep it on
# the two indexes (5 ms).
RECEIVED_SQL = """SELECT count(*) FROM event_codes l
                  WHERE l.event_id = ANY(ARRAY(SELECT event_id FROM events
                                               WHERE org = $1 AND type = 'receive'))
                    AND l.role = 'c'"""


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
