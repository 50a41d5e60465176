"""SQL for lot recalls and where a lot's units are."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from service.core.custody import CodeState
from service.store import codes as code_store
from service.store.conn import Conn
from service.store.db import LARGE_BATCH, plan_for_values


async def lock_lots(conn: Conn, lots: list[tuple[str, str]]) -> None:
    """Serialise a recall with commissions into the same lot (a transaction lock per
    lot, taken in a fixed order): codes committed while a recall runs are not missed."""
    if lots:
        await conn.execute(
            """SELECT pg_advisory_xact_lock(hashtext(p || '/' || l))
               FROM unnest($1::text[], $2::text[]) AS x(p, l)""",
            [p for p, _ in sorted(lots)],
            [lot for _, lot in sorted(lots)],
        )


async def recalled_lots(conn: Conn, lots: list[tuple[str, str]]) -> dict[tuple[str, str], datetime]:
    """Which of these lots are recalled, and when the recall was ordered (call lock_lots
    first where the answer must hold until commit)."""
    if not lots:
        return {}
    rows = await conn.fetch(
        """SELECT product_id, lot, at FROM recalls
           WHERE (product_id, lot) IN (SELECT * FROM unnest($1::text[], $2::text[]))""",
        [p for p, _ in lots],
        [lot for _, lot in lots],
    )
    return {(r["product_id"], r["lot"]): r["at"] for r in rows}


async def ordered(conn: Conn, product_id: str, lot: str) -> tuple[str, datetime] | None:
    """The lot's recall, if it was ordered: (the reason it stands under, when it was
    ordered). Call :func:`lock_lots` first: the answer then holds until commit."""
    row = await conn.fetchrow(
        "SELECT reason, at FROM recalls WHERE product_id = $1 AND lot = $2", product_id, lot
    )
    return (row["reason"], row["at"]) if row else None


async def transaction_time(conn: Conn) -> datetime:
    """The transaction's time (PostgreSQL's ``now()``): when a recall ordered in it is
    ordered."""
    at: datetime = await conn.fetchval("SELECT now()")
    return at


async def lock_unrecalled(conn: Conn, product_id: str, lot: str) -> dict[str, CodeState]:
    """Lock the rows of the lot's codes not recalled yet, as every writer of codes rows
    does (``store.codes.lock``), so that a recall cannot deadlock with a settlement or an
    ingest; returns them."""
    rows = await conn.fetch(
        "SELECT code FROM codes WHERE product_id = $1 AND lot = $2 AND NOT recalled", product_id, lot
    )
    if len(rows) > LARGE_BATCH:
        await plan_for_values(conn)
    locked = await code_store.lock(conn, [r["code"] for r in rows])
    return {code: state for code, state in locked.items() if not state.recalled}


async def record(conn: Conn, product_id: str, lot: str, reason: str, by_key: str, at: datetime) -> None:
    """Store the recall, ordered at ``at`` (with the lot locked and no recall of it read
    before: :func:`ordered`)."""
    await conn.execute(
        "INSERT INTO recalls (product_id, lot, reason, ordered_by, at) VALUES ($1, $2, $3, $4, $5)",
        product_id,
        lot,
        reason,
        by_key,
        at,
    )


async def lot_exists(conn: Conn, product_id: str, lot: str) -> bool:
    """Does any code of this product carry this very lot?"""
    found = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM codes WHERE product_id = $1 AND lot = $2)", product_id, lot
    )
    return bool(found)


async def lot_summary(conn: Conn, product_id: str, lot: str) -> dict[str, Any]:
    """Counts of the lot's codes by displayed state and by custodian, and of its
    recalled codes by where they are (one scan): a recall shows every code not destroyed
    as ``recalled``, and the investigator still needs how many are with patients, on
    shelves or on their way. ``units_left``: the units left in the packs not destroyed.

    ``by_custodian`` counts every code under the organisation that last held it, the
    packs it sold out and destroyed too (as API.md has it). Where the packs still are:
    ``by_custodian_and_state`` splits each custodian's count by where its packs are
    (``received``/``commissioned`` in its stock, ``in_transit`` shipped by it and not
    received yet, ``dispensed`` sold out, ``destroyed``); ``held_by_custodian``: the
    packs neither sold out nor destroyed, by custodian (a pack on its way counted with
    the one that shipped it, its custodian until a receipt); ``in_transit_to``: the
    packs on their way, by where they were shipped to."""
    rows = await conn.fetch(
        """SELECT CASE WHEN state = 'destroyed' THEN 'destroyed'
                       WHEN units_left = 0 THEN 'dispensed'
                       ELSE state END AS placed,
                  recalled, custodian,
                  CASE WHEN state = 'in_transit' AND units_left IS DISTINCT FROM 0
                       THEN destination END AS bound_for,
                  expiry, count(*) AS n, sum(units_left) AS units
           FROM codes WHERE product_id = $1 AND lot = $2
           GROUP BY 1, 2, 3, 4, 5""",
        product_id,
        lot,
    )
    by_state: dict[str, int] = {}
    by_custodian: dict[str, int] = {}
    by_custodian_and_state: dict[str, dict[str, int]] = {}
    held_by_custodian: dict[str, int] = {}
    in_transit_to: dict[str, int] = {}
    recalled_by_state: dict[str, int] = {}
    units = 0
    expiries: set[date] = set()
    for r in rows:
        placed: str = r["placed"]
        if r["expiry"] is not None:
            expiries.add(r["expiry"])
        n: int = r["n"]
        shown = "recalled" if r["recalled"] and placed != "destroyed" else placed
        by_state[shown] = by_state.get(shown, 0) + n
        if r["recalled"]:
            recalled_by_state[placed] = recalled_by_state.get(placed, 0) + n
        holder = r["custodian"] or "unknown"
        by_custodian[holder] = by_custodian.get(holder, 0) + n
        split = by_custodian_and_state.setdefault(holder, {})
        split[placed] = split.get(placed, 0) + n
        if placed not in ("dispensed", "destroyed"):
            held_by_custodian[holder] = held_by_custodian.get(holder, 0) + n
        if placed == "in_transit":  # no destination named (an NHSA transfer out): unknown
            bound = r["bound_for"] or "unknown"
            in_transit_to[bound] = in_transit_to.get(bound, 0) + n
        if placed != "destroyed":  # a destroyed pack's units are not left
            units += r["units"] or 0
    recall = await conn.fetchrow(
        "SELECT reason, at FROM recalls WHERE product_id = $1 AND lot = $2", product_id, lot
    )
    return {
        "product_id": product_id,
        "lot": lot,
        "codes": sum(by_state.values()),
        "units_left": units,
        "by_state": by_state,
        "by_custodian": by_custodian,
        "by_custodian_and_state": by_custodian_and_state,
        "held_by_custodian": held_by_custodian,
        "in_transit_to": in_transit_to,
        "recalled_by_state": recalled_by_state,
        "expiries": sorted(expiries),
        "recalled": recall is not None,
        "recall": dict(recall) if recall else None,
    }
