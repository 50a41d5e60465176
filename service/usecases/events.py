"""Ingest a batch of supply-chain events: one transaction, a handful of set-based
statements whatever the number of codes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import asyncpg

from service import metrics
from service.core import flags as flag_rules
from service.core.custody import CodeState, Fact, World, product_of, replay, sort_key
from service.core.events import Incoming, Rejection, judge
from service.core.flags import NewFlag, sale_key
from service.core.sales import Return, draw, match_returns
from service.store import codes as code_store
from service.store import events as event_store
from service.store import flags as flag_store
from service.store import recalls as recall_store
from service.store import registry
from service.store import sales as sale_store
from service.store.conn import Conn
from service.store.db import with_retry


@dataclass(slots=True)
class IngestResult:
    accepted_codes: int = 0
    accepted_events: int = 0
    duplicates: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    replayed: bool = False
    flags: list[dict[str, Any]] = field(default_factory=list)
    by_type: dict[str, int] = field(default_factory=dict)


async def ingest(pool: asyncpg.Pool, events: list[Incoming], refused: list[Rejection]) -> IngestResult:
    """Store ``events`` (codes already parsed; ``refused`` lists codes that failed
    parsing). Durable when this returns."""
    seen: set[UUID] = set()
    unique: list[Incoming] = []
    repeats = 0
    for event in events:
        if event.event_id in seen:
            repeats += 1
        else:
            seen.add(event.event_id)
            if event.codes:
                unique.append(event)

    async def work(conn: Conn) -> IngestResult:
        result = await _ingest(conn, unique)
        result.duplicates += repeats
        return result

    result = await with_retry(pool, work)
    result.rejected = refused + result.rejected
    _count(result)
    return result


async def _ingest(conn: Conn, events: list[Incoming]) -> IngestResult:
    result = IngestResult()
    new_ids = await event_store.insert(conn, events)
    fresh = [e for e in events if e.event_id in new_ids]
    result.duplicates = len(events) - len(fresh)
    if not fresh:
        return result

    named = {c for e in fresh for c in e.codes} | {e.parent for e in fresh if e.parent}
    states = await code_store.lock(conn, named)
    inside = set(await code_store.descendants_ever(conn, named)) - states.keys()
    if inside:
        states.update(await code_store.lock(conn, inside))

    orgs = await registry.get_orgs(conn, sorted({o for e in fresh for o in (e.org, e.to, e.from_org) if o}))
    wanted_products = {product_of(c) for e in fresh if e.type in ("commission", "dispense") for c in e.codes}
    wanted_products |= {s.product_id for s in states.values() if s.product_id}
    wanted_products |= {product_of(e.parent) for e in fresh if e.parent}
    products = await registry.get_products(conn, sorted(p for p in wanted_products if p))

    facts, rejected = judge(fresh, states, products, orgs)
    result.rejected = rejected
    taken = {f.event_id for f in facts}
    await event_store.forget(conn, [e.event_id for e in fresh if e.event_id not in taken])
    by_id = {e.event_id: e for e in fresh}
    flags = flag_rules.commission_conflict_flags(rejected, by_id, states)
    if not facts:
        result.flags = await flag_store.raise_flags(conn, flags)
        return result

    pack_units = {pid: int(p["pack_units"]) for pid, p in products.items()}
    # the fold changes these very state objects: note now which codes were placeholders
    placeholders = {c for c, st in states.items() if not st.commissioned}
    world, reopen = await _fold(conn, facts, states, named, pack_units)
    result.replayed = reopen is not None

    await _mark_recalled(conn, world, facts)
    # link first: a return in this batch must be visible to an early dispense applied below
    await event_store.link_codes(conn, facts)
    sales = [(by_id[f.event_id], f.codes) for f in sorted(facts, key=sort_key)]
    flags += await _consume(conn, world, sales, products, orgs)
    await _apply_early_dispenses(conn, world, placeholders, products, orgs)
    # a replay re-judges old facts too: those suspicions stand (or are raised again),
    # but the answer reports only what this request's events raised
    current = {f.dedup_key for f in flags}
    for suspicion in world.suspicions:
        flags.append(flag_rules.suspicion_flag(suspicion))
        if suspicion.fact.event_id in taken:
            current.add(suspicion.key)
    raised = {r["dedup_key"]: r for r in await flag_store.raise_flags(conn, flags)}
    result.flags = [raised[k] for k in dict.fromkeys(f.dedup_key for f in flags) if k in current]
    if reopen is not None:
        standing = {flag.dedup_key for flag in flags}
        rejudged = {
            f"{kind}:{f.codes[0]}:setl:{f.setl_id}" for f in reopen for kind in ("UNKNOWN_CODE", "DIVERSION")
        }
        await flag_store.auto_clear(
            conn,
            sorted(set(states) | named),
            standing,
            ("UNKNOWN_CODE", "DIVERSION"),
            [str(i) for i in taken],
            rejudged,
        )

    # after a replay every locked code may have changed (ancestors were only read)
    dirty = set(states) if result.replayed else set(world.changed)
    dirty |= {c for f in facts for c in f.codes} | {f.parent for f in facts if f.parent}
    await code_store.insert_new(conn, [world.states[c] for c in dirty if c not in states])
    await code_store.update(conn, [world.states[c] for c in dirty if c in states])
    await code_store.add_containment(
        conn, [(f.parent, c) for f in facts if f.type == "pack" and f.parent for c in f.codes]
    )
    for f in facts:
        result.by_type[f.type] = result.by_type.get(f.type, 0) + 1
    result.accepted_events = len(facts)
    result.accepted_codes = sum(len(f.codes) for f in facts)
    return result


async def _fold(
    conn: Conn,
    facts: list[Fact],
    states: dict[str, CodeState],
    named: set[str],
    pack_units: Mapping[str, int],
) -> tuple[World, list[Fact] | None]:
    """Apply the facts to the locked states. In event-time order (every fact newer than
    all its codes have seen) that is an incremental step; otherwise the codes' whole
    history, with every container they were ever in, is folded again, and so are the
    settlements these facts may explain (returned; None when nothing was replayed)."""
    earliest = min(f.at for f in facts)
    # settlements refused for custody reasons these events may explain (a late ship);
    # only those at or after this batch's earliest event: older judgements cannot change
    reopen = []
    if any(f.type in ("commission", "ship", "receive") for f in facts):
        reopen = [
            Fact.settlement(r["setl_id"], r["at"], r["org"], r["code"])
            for r in await flag_store.settlement_suspicions(conn, sorted(set(states) | named))
            if r["at"] >= earliest
        ]
    if not reopen and all(s.last_at < earliest for s in states.values()):
        world = World(states=dict(states), pack_units=pack_units)
        world.apply_all(facts)
        return world, None
    family = set(states) | named
    family |= set(await code_store.ancestors_ever(conn, family))
    history = await event_store.facts_for(conn, family)
    return replay(history + facts + reopen, keep=states, pack_units=pack_units), reopen


async def _consume(
    conn: Conn,
    world: World,
    sales: list[tuple[Incoming, tuple[str, ...]]],
    products: Mapping[str, Mapping[str, Any]],
    orgs: Mapping[str, Mapping[str, Any]],
) -> list[NewFlag]:
    """Dispenses take units from packs; returns give back the latest sale's units. A
    dispense carrying a setl_id that a settlement already consumed takes nothing again.
    Returns the suspicions a dispense raises: a consumed pack dispensed again (回流药),
    expired, recalled or out-of-region stock."""
    flags: list[NewFlag] = []
    dispenses = [(e, codes) for e, codes in sales if e.type == "dispense"]
    returns = [(e, codes) for e, codes in sales if e.type == "return"]
    if dispenses:
        # only a dispense naming a settlement can find its sale already consumed (by that
        # settlement); one keyed by its own new event id cannot
        keys = [(c, sale_key(e)) for e, codes in dispenses if e.setl_id for c in codes]
        done = await sale_store.existing(conn, keys)
        rows = []
        # the earlier sales are evidence only for a pack already used up (a DUPLICATE)
        dispensed = {c for _, codes in dispenses for c in codes}
        used_up = {c for c in dispensed if world.states[c].units_left == 0}
        earlier = await sale_store.open_for(conn, used_up) if used_up else []
        for event, codes in dispenses:
            key = sale_key(event)
            fresh_codes = [c for c in codes if (c, key) not in done]
            flags += flag_rules.dispense_flags(event, fresh_codes, world.states, products, orgs, earlier)
            left = {c: world.states[c].units_left or 0 for c in fresh_codes}
            for code, units in draw(left, fresh_codes, event.quantity):
                rows.append((code, key, event.setl_id, event.event_id, event.org, event.at, units))
                state = world.states[code]
                state.units_left = (state.units_left or 0) - units
                world.changed.add(code)
                done.add((code, key))
        await sale_store.record(conn, rows)
    # A return undoes the seller's latest sale of the pack before it (by event time).
    # Returns uploaded before the dispense they undo wait: each new dispense looks for them.
    undoing = [Return(e.event_id, e.org, e.at, e.setl_id, code) for e, codes in returns for code in codes]
    if dispenses:
        waiting = await sale_store.unapplied_returns(
            conn, sorted({c for _, codes in dispenses for c in codes})
        )
        seen = {r.event_id for r in undoing}
        undoing += [
            Return(r["event_id"], r["org"], r["at"], r["setl_id"], r["code"])
            for r in waiting
            if r["event_id"] not in seen
        ]
    if undoing:
        open_sales = await sale_store.open_for(conn, {r.code for r in undoing})
        undo = match_returns(sorted(undoing, key=lambda r: (r.at, r.event_id)), open_sales)
        for (code, _), units in (await sale_store.reverse(conn, undo)).items():
            state = world.states[code]
            state.units_left = (state.units_left or 0) + units
            world.changed.add(code)
    return flags


async def _apply_early_dispenses(
    conn: Conn,
    world: World,
    placeholders: set[str],
    products: Mapping[str, Mapping[str, Any]],
    orgs: Mapping[str, Mapping[str, Any]],
) -> None:
    """A dispense that arrived before its code's commission took nothing (the pack size
    was unknown); now that the code is commissioned, it takes its units. Its suspicions
    were judged on arrival, so none are raised here."""
    newly = [c for c in placeholders if world.states[c].commissioned]
    if not newly:
        return
    pending = await sale_store.unapplied_dispenses(conn, newly)
    if not pending:
        return
    sellers = await registry.get_orgs(conn, sorted({p["org"] for p in pending}))
    sales = [
        (
            Incoming(
                event_id=p["event_id"],
                type="dispense",
                at=p["at"],
                org=p["org"],
                codes=tuple(p["codes"]),
                quantity=p["quantity"],
                setl_id=p["setl_id"],
            ),
            tuple(p["codes"]),
        )
        for p in pending
    ]
    await _consume(conn, world, sales, products, {**orgs, **sellers})


async def _mark_recalled(conn: Conn, world: World, facts: list[Fact]) -> None:
    """Codes commissioned into a lot that was already recalled are recalled too."""
    lots = {(world.states[c].product_id, f.lot) for f in facts if f.type == "commission" for c in f.codes}
    wanted = [(p, lot) for p, lot in lots if p and lot]
    await recall_store.lock_lots(conn, wanted)
    recalled = await recall_store.recalled_lots(conn, wanted)
    if not recalled:
        return
    for f in facts:
        if f.type != "commission":
            continue
        for code in f.codes:
            state = world.states[code]
            if (state.product_id, state.lot) in recalled:
                state.recalled = True


def _count(result: IngestResult) -> None:
    for type_, count in result.by_type.items():
        metrics.EVENTS.labels(type_).inc(count)
    for flag in result.flags:
        metrics.FLAGS_RAISED.labels(flag["kind"]).inc()
    metrics.EVENT_DUPLICATES.inc(result.duplicates)
    for rejection in result.rejected:
        metrics.CODES_REJECTED.labels(rejection.reason).inc()
    if result.replayed:
        metrics.REPLAYS.inc()
