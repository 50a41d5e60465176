"""Ingest a batch of supply-chain events: one transaction, a handful of set-based
statements whatever the number of codes."""

from __future__ import annotations

from dataclasses import dataclass, field
from uuid import UUID

import asyncpg

from service import metrics
from service.core.custody import World, product_of, replay, sort_key
from service.core.events import Incoming, Rejection, judge
from service.core.sales import draw
from service.store import codes as code_store
from service.store import events as event_store
from service.store import registry
from service.store import sales as sale_store
from service.store.db import with_retry


@dataclass(slots=True)
class IngestResult:
    accepted_codes: int = 0
    accepted_events: int = 0
    duplicates: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    replayed: bool = False
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

    async def work(conn: asyncpg.Connection) -> IngestResult:
        result = await _ingest(conn, unique)
        result.duplicates += repeats
        return result

    result = await with_retry(pool, work)
    result.rejected = refused + result.rejected
    _count(result)
    return result


async def _ingest(conn: asyncpg.Connection, events: list[Incoming]) -> IngestResult:
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
    wanted_products = {product_of(c) for e in fresh if e.type == "commission" for c in e.codes}
    wanted_products |= {product_of(e.parent) for e in fresh if e.parent}
    products = await registry.get_products(conn, sorted(p for p in wanted_products if p))

    facts, rejected = judge(fresh, states, products, orgs)
    result.rejected = rejected
    taken = {f.event_id for f in facts}
    await event_store.forget(conn, [e.event_id for e in fresh if e.event_id not in taken])
    if not facts:
        return result

    pack_units = {pid: int(p["pack_units"]) for pid, p in products.items()}
    earliest = min(f.at for f in facts)
    if all(s.last_at < earliest for s in states.values()):
        world = World(states=dict(states), pack_units=pack_units)
        world.apply_all(facts)
        dirty = world.changed
    else:
        # an event older than what these codes have seen: fold their whole history again
        result.replayed = True
        family = set(states) | named
        family |= set(await code_store.ancestors_ever(conn, family))
        history = await event_store.facts_for(conn, family)
        world = replay(history + facts, keep=states, pack_units=pack_units)
        # every locked code may have changed; ancestors were only read, never written
        dirty = set(states)

    by_id = {e.event_id: e for e in fresh}
    await _consume(conn, world, [(by_id[f.event_id], f.codes) for f in sorted(facts, key=sort_key)])

    dirty |= {c for f in facts for c in f.codes} | {f.parent for f in facts if f.parent}
    await code_store.insert_new(conn, [world.states[c] for c in dirty if c not in states])
    await code_store.update(conn, [world.states[c] for c in dirty if c in states])
    await event_store.link_codes(conn, facts)
    await code_store.add_containment(
        conn, [(f.parent, c) for f in facts if f.type == "pack" and f.parent for c in f.codes]
    )
    for f in facts:
        result.by_type[f.type] = result.by_type.get(f.type, 0) + 1
    result.accepted_events = len(facts)
    result.accepted_codes = sum(len(f.codes) for f in facts)
    return result


async def _consume(
    conn: asyncpg.Connection, world: World, sales: list[tuple[Incoming, tuple[str, ...]]]
) -> None:
    """Dispenses take units from packs; returns give back the latest sale's units. A
    dispense carrying a setl_id that a settlement already consumed takes nothing again."""
    dispenses = [(e, codes) for e, codes in sales if e.type == "dispense"]
    returns = [(e, codes) for e, codes in sales if e.type == "return"]
    if dispenses:
        keys = [(c, _sale_key(e)) for e, codes in dispenses for c in codes]
        done = await sale_store.existing(conn, keys)
        rows = []
        for event, codes in dispenses:
            key = _sale_key(event)
            fresh_codes = [c for c in codes if (c, key) not in done]
            left = {c: world.states[c].units_left or 0 for c in fresh_codes}
            for code, units in draw(left, fresh_codes, event.quantity):
                rows.append((code, key, event.setl_id, event.event_id, event.org, event.at, units))
                state = world.states[code]
                state.units_left = (state.units_left or 0) - units
                world.changed.add(code)
                done.add((code, key))
        await sale_store.record(conn, rows)
    if returns:
        open_sales = await sale_store.open_for(conn, {c for _, codes in returns for c in codes})
        undone: list[tuple[str, str]] = []
        for event, codes in returns:
            for code in codes:
                match = next(
                    (
                        s
                        for s in open_sales
                        if s["code"] == code
                        and (event.setl_id is None or s["setl_id"] == event.setl_id)
                        and (s["code"], s["sale_key"]) not in undone
                    ),
                    None,
                )
                if match is None:
                    continue
                undone.append((code, match["sale_key"]))
                state = world.states[code]
                state.units_left = (state.units_left or 0) + int(match["units"])
                world.changed.add(code)
        await sale_store.reverse(conn, undone)


def _sale_key(event: Incoming) -> str:
    return event.setl_id if event.setl_id else f"event:{event.event_id}"


def _count(result: IngestResult) -> None:
    for type_, count in result.by_type.items():
        metrics.EVENTS.labels(type_).inc(count)
    metrics.EVENT_DUPLICATES.inc(result.duplicates)
    for rejection in result.rejected:
        metrics.CODES_REJECTED.labels(rejection.reason).inc()
    if result.replayed:
        metrics.REPLAYS.inc()
