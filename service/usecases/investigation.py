"""Investigation: where a lot is, recalling it, an organisation's figures."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

import asyncpg

from service import metrics
from service.core import flags as flag_rules
from service.core import receipts
from service.core.events import identifier_problem
from service.core.rules import CHINA
from service.store import codes as code_store
from service.store import flags as flag_store
from service.store import recalls as recall_store
from service.store import registry
from service.store import sales as sale_store
from service.store import stats as stats_store
from service.store.conn import Conn
from service.store.db import plan_for_values, with_retry
from service.usecases.errors import Invalid


async def lot(pool: asyncpg.Pool, product_id: str, lot: str) -> dict[str, Any] | None:
    """Counts of the lot's units by state and by custodian, and its recall; None when
    the lot has no codes and was never recalled."""
    async with pool.acquire() as conn, conn.transaction():
        await plan_for_values(conn)  # a lot holds one code or hundreds of thousands
        summary = await recall_store.lot_summary(conn, product_id, lot)
    if summary["codes"] == 0 and not summary["recalled"]:
        return None
    return summary


@dataclass(frozen=True, slots=True)
class Recalled:
    product_id: str
    lot: str
    reason: str
    codes_recalled: int
    new: bool  # False: the lot was recalled before (nothing changed)
    flags_raised: int = 0  # RECALLED on dispenses stored before it, dated at or after it


async def recall(pool: asyncpg.Pool, product_id: str, lot: str, reason: str, by_key: str) -> Recalled:
    """Every code of the lot becomes recalled, and so does any code of it commissioned
    later; a dispense of it dated at or after the recall's time and stored before it
    was ordered (a till's clock ahead) is flagged RECALLED, as one arriving after it
    would be. Raises Invalid (``product_id``) for an unknown product."""
    async with pool.acquire() as conn:
        if not await registry.get_products(conn, [product_id]):
            raise Invalid("product_id", f"unknown product {product_id}")
        # a lot as a commission may name it (a look-alike would recall a lot nobody has),
        # unless codes of that very lot exist already (commissioned before the rule)
        problem = identifier_problem(lot)
        if problem and not await recall_store.lot_exists(conn, product_id, lot):
            raise Invalid("lot", problem)
    stored_now: list[str] = []

    async def work(conn: Conn) -> Recalled:
        stored_now.clear()  # a retry starts clean
        # load: the lot locked (commissions into it wait), its recall if ordered before,
        # the rows of its codes not recalled yet (locked), and the dispenses of them
        # dated at or after the recall
        await recall_store.lock_lots(conn, [(product_id, lot)])
        before = await recall_store.ordered(conn, product_id, lot)
        stands_under, at = before or (reason, await recall_store.transaction_time(conn))
        states = await recall_store.lock_unrecalled(conn, product_id, lot)
        reached = flag_rules.reached_by_recall(states.values(), at)  # most lots: none
        dispenses = await sale_store.dispenses_since(conn, reached, at) if reached else []
        # the packs their settlements took themselves, for the dispenses under a setl_id
        billed = sorted({c for d in dispenses if d.setl_id for c in d.codes})
        settled = {(f.codes[0], f.setl_id or "") for f in await sale_store.settlement_facts(conn, billed)}
        orgs = await registry.get_orgs(conn, sorted({d.org for d in dispenses}))
        # decide
        for state in states.values():
            state.recalled = True
        flags = flag_rules.recall_flags(dispenses, states, orgs, at, settled)
        # write
        if before is None:
            await recall_store.record(conn, product_id, lot, reason, by_key, at)
        await code_store.update(conn, list(states.values()))
        await flag_store.raise_flags(conn, flags, stored_now=stored_now)
        return Recalled(product_id, lot, stands_under, len(states), before is None, len(stored_now))

    done = await with_retry(pool, work)
    metrics.flags_raised(stored_now)  # committed: counted once
    return done


async def org_stats(pool: asyncpg.Pool, org: str) -> dict[str, Any] | None:
    """Received, dispensed, settled and flagged counts; None for an unknown org."""
    async with pool.acquire() as conn:
        if await registry.get_org(conn, org) is None:
            return None
        stats = await stats_store.org_stats(conn, org)
        return {**stats, "received_packs": await received_packs(conn, org, stats["received"])}


async def received_packs(conn: Conn, org: str, named: int) -> int:
    """The packs the organisation's receives named (``named`` codes in all, its
    ``received``), a case or pallet counted as the packs in it then (``core.receipts``): a
    few statements a level of containers (cases; or pallets, then their cases), each
    reading a row or an index entry a container or pack."""
    containers = await stats_store.container_products(conn)
    products = list(containers)
    received, of = await stats_store.received_maybe_containers(conn, org, products)
    packs = named - len(received)  # the codes that by their text alone are packs
    held: list[receipts.Held] = []
    for code, at in received:
        if receipts.is_container(code, containers):
            held.append(receipts.Held(code, at))
        else:  # its text only looked like a container's
            packs += 1
    while held:
        counted, held = receipts.count_level(held, await stats_store.scanned(conn, of, products), containers)
        packs += counted
        if held:
            of = await stats_store.container_scans(conn, {h.code for h in held})
    return packs


async def org_daily(pool: asyncpg.Pool, org: str, days: int, today: date) -> list[tuple[date, int, int]]:
    """The organisation's settlements and flags per day (China time) for the ``days``
    days up to ``today``, a row for every day."""
    first = today - timedelta(days=days - 1)
    async with pool.acquire() as conn:
        found = await stats_store.daily(conn, org, datetime.combine(first, time(), CHINA))
    return [(d, *found.get(d, (0, 0))) for d in (first + timedelta(days=i) for i in range(days))]
