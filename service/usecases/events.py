"""Ingest a batch of supply-chain events: load → decide → write, a handful of set-based
statements whatever the number of codes. A few packs moved (the common scan or sale)
are read without locks and written in one statement if nothing they read has changed;
any other batch runs in one transaction with its code rows locked."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from uuid import UUID

import asyncpg

from service import metrics
from service.core import ingest as rules
from service.core.events import Incoming, Rejection
from service.core.flags import CUSTODY_KINDS, FlagKey, FlagRef
from service.store import codes as code_store
from service.store import events as event_store
from service.store import flags as flag_store
from service.store import ingest as ingest_store
from service.store import ledger as ledger_store
from service.store import recalls as recall_store
from service.store import registry
from service.store import sales as sale_store
from service.store import settlements as setl_store
from service.store.conn import Conn
from service.store.db import LARGE_BATCH, RETRYABLE, RetryTransaction, plan_for_values, with_retry

# The optimistic path (``_ingest_unchanged``) takes small batches that move packs that
# exist: a commission creates rows and serialises with recalls by lot, a pack or unpack
# changes containment, a return undoes a sale; those take the locked transaction.
MOVES = frozenset({"ship", "receive", "dispense"})
OPTIMISTIC_MAX_CODES = 10
# how often such a batch is read and written again when a code row changed in between,
# before it takes the locked transaction instead
OPTIMISTIC_ATTEMPTS = 3


@dataclass(slots=True)
class IngestResult:
    accepted_codes: int = 0
    accepted_events: int = 0
    duplicates: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    replayed: bool = False
    flags: list[FlagRef] = field(default_factory=list)
    by_type: dict[str, int] = field(default_factory=dict)
    stored_flag_kinds: list[str] = field(default_factory=list)  # flags stored now, counted once committed


async def ingest(
    pool: asyncpg.Pool,
    events: list[Incoming],
    refused: list[Rejection],
    also: Callable[[Conn, list[Rejection]], Awaitable[list[FlagRef]]] | None = None,
    also_unchanged: Callable[[Conn], Awaitable[ledger_store.Appended | None]] | None = None,
) -> IngestResult:
    """Store ``events`` (codes already parsed; ``refused`` lists codes that failed
    parsing). ``also`` writes what an interface keeps besides the events (the NHSA
    ledger, the EPCIS events) in the same transaction, after them, given the codes the
    rules refused; it returns the flags it raised, or raises to store nothing.
    ``also_unchanged`` lets a batch with ``also`` take the optimistic path: it reads
    (unlocked) what an NHSA upload's ledger records change, and gives them to write in
    the same one statement, or None when ``also`` must run instead (a flag to raise, a
    ledger to compute again). Durable when this returns."""
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

    # The common case, a scan or a sale of a few packs, in four round trips without a
    # transaction held open across them: the events stored already, the code rows as they
    # are, then one statement that writes it all only if none of those rows changed
    # since; if one did, all of it runs again. An NHSA sale reads its items' ledgers too
    # (``also_unchanged``, a fifth) and writes its records in that statement. A batch that
    # raises a flag, creates or packs codes, undoes a sale or replays history goes through
    # the transaction below, which locks its code rows first; ``also`` writes in it.
    done: IngestResult | None = None
    if (also is None or also_unchanged is not None) and _moves_few(unique):
        for _ in range(OPTIMISTIC_ATTEMPTS):
            try:
                async with pool.acquire() as conn:
                    done = await _ingest_unchanged(conn, unique, repeats, also_unchanged)
            except RETRYABLE:  # a row changed, or the same event was stored, since it was read
                metrics.OPTIMISTIC.labels("ingest", "raced").inc()
                continue
            break
        metrics.OPTIMISTIC.labels("ingest", "written" if done is not None else "locked").inc()

    async def work(conn: Conn) -> IngestResult:
        if sum(len(e.codes) for e in unique) > LARGE_BATCH:
            await plan_for_values(conn)
        loaded, _ = await _load(conn, unique, locked=True)
        result = _started(loaded, len(unique), repeats)
        if loaded.events:
            await _write(conn, rules.decide(loaded), result)
        if also is not None:
            result.flags += await also(conn, result.rejected)
        return result

    result = done if done is not None else await with_retry(pool, work)
    result.rejected = refused + result.rejected
    _count(result)
    return result


def _started(loaded: rules.Loaded, events: int, repeats: int) -> IngestResult:
    """The answer before the new events are decided: the events stored already (retries,
    and events repeated in the request), and those whose id another organisation holds."""
    taken = rules.taken_elsewhere(loaded)
    stored = events - len(loaded.events) - len(loaded.taken_elsewhere)
    return IngestResult(duplicates=repeats + stored, rejected=taken)


class _NeedsLocks(Exception):
    """The optimistic load found that the batch needs the locked transaction."""


def _moves_few(events: list[Incoming]) -> bool:
    return (
        bool(events)
        and all(e.type in MOVES for e in events)
        and sum(len(e.codes) for e in events) <= OPTIMISTIC_MAX_CODES
    )


async def _ingest_unchanged(
    conn: Conn,
    events: list[Incoming],
    repeats: int,
    also_unchanged: Callable[[Conn], Awaitable[ledger_store.Appended | None]] | None,
) -> IngestResult | None:
    """Load (unlocked) → decide → write if unchanged; None when the batch needs the locked
    transaction (``core.ingest.moves_only``; with ``also_unchanged``: an event stored
    already, whose record ``also`` sorts out, or a ledger it must write itself)."""
    try:
        loaded, versions = await _load(conn, events, locked=False)
    except _NeedsLocks:
        return None
    if also_unchanged is not None and len(loaded.events) < len(events):
        return None
    result = _started(loaded, len(events), repeats)
    if not loaded.events:
        return result
    plan = rules.decide(loaded)
    if not rules.moves_only(plan):
        return None
    ledger = None
    if also_unchanged is not None and (ledger := await also_unchanged(conn)) is None:
        return None
    if plan.events or ledger is not None:
        rows = {**loaded.states, **{s.code: s for s in plan.changed_codes}}
        await ingest_store.write_unchanged(conn, plan, rows, versions, ledger)
    _report(plan, {}, result)
    return result


async def _load(
    conn: Conn, events: list[Incoming], *, locked: bool
) -> tuple[rules.Loaded, dict[str, code_store.AsRead]]:
    """Everything the decision needs, the code rows locked; or, not ``locked``, the code
    rows read with their versions (returned beside, each row as read). Lot locks come first, as a recall
    takes them, then every code row in one statement in code order, so no two writers
    can deadlock."""
    loaded = rules.Loaded(
        events=[],
        states={},
        orgs={},
        products={},
        recalled_lots={},
        reopen=[],
        history=None,
        sales=[],
        waiting_returns=[],
        waiting_dispenses=[],
    )
    versions: dict[str, code_store.AsRead] = {}
    if not events:
        return loaded, versions
    stored, pairs = await code_store.stored_and_children(
        conn, [e.event_id for e in events], rules.named_codes(events)
    )
    fresh = loaded.events = [e for e in events if e.event_id not in stored]
    loaded.taken_elsewhere = [e for e in events if stored.get(e.event_id, e.org) != e.org]
    if not fresh:
        return loaded, versions
    lots = rules.commission_lots(fresh)
    await recall_store.lock_lots(conn, lots)
    loaded.recalled_lots = await recall_store.recalled_lots(conn, lots)

    # One lock order for every code row: walk the containment first (reads), then lock
    # the named codes and everything ever packed inside them together, in code order.
    named = rules.named_codes(fresh)
    children = [child for parent, child in pairs if parent in named]
    if locked:
        states = loaded.states = await code_store.lock_with_contents(conn, named, children)
    else:
        states, versions = await code_store.read_with_contents(conn, named, children)
        loaded.states = states
    family = set(states) | named
    # when the recalls of the recalled packs read were ordered (rare: one more read then),
    # for the sales among these events dated before them
    recalled = {(s.product_id, s.lot) for s in states.values() if s.recalled and s.product_id and s.lot}
    if missing := sorted(recalled - loaded.recalled_lots.keys()):
        loaded.recalled_lots |= await recall_store.recalled_lots(conn, missing)

    if rules.may_explain_settlements(fresh, states):
        loaded.reopen = await flag_store.settlement_suspicions(conn, sorted(family))
    earliest = min(e.at for e in fresh)
    if rules.needs_replay(fresh, states, [r for r in loaded.reopen if r.at >= earliest]):
        if not locked:
            raise _NeedsLocks  # a late event: the history is replayed with the rows locked
        family |= set(await code_store.ancestors_ever(conn, family))
        history = await event_store.stored_for(conn, family)
        loaded.history = event_store.facts_of(history)
        loaded.settled = await sale_store.settlement_facts(conn, sorted(family))
        # a late sale or return (one reason to replay): its packs' sales are in the history
        if late := rules.late_sales(fresh, states):
            loaded.pack_sales = rules.to_refold(fresh, states, sale_store.pack_sales(history, late))

    placeholders = rules.commissioned_now(fresh, states)
    if placeholders:
        loaded.waiting_dispenses = await sale_store.unapplied_dispenses(conn, sorted(placeholders))
        loaded.waiting_moves = await event_store.billed_moves(conn, sorted(placeholders))
    returnable = rules.dispensed(fresh) | placeholders
    if returnable:
        loaded.waiting_returns = await sale_store.unapplied_returns(conn, sorted(returnable))
    needed = rules.sales_needed(fresh, states, loaded.waiting_returns, placeholders, loaded.pack_sales)
    if needed:
        loaded.sales = await sale_store.of_codes(conn, sorted(needed), open_only=False)
    refunds = rules.refunds_needed([*fresh, *loaded.waiting_dispenses], loaded.sales, loaded.pack_sales)
    # a return meets sales that a standing settlement may pay for: read which (only
    # then: a batch with no return to match reads nothing more)
    standing = rules.standing_needed(
        fresh, loaded.sales, loaded.pack_sales, loaded.waiting_returns, loaded.waiting_dispenses
    )
    if refunds or standing:
        loaded.refunded, loaded.standing = await setl_store.refunds_and_standing(conn, refunds, standing)

    waiting = [*loaded.waiting_dispenses, *loaded.waiting_moves]
    orgs, products = rules.registry_needed(fresh, states, waiting, loaded.history or ())
    loaded.orgs = await registry.get_orgs(conn, orgs)
    loaded.products = await registry.get_products(conn, products)
    return loaded, versions


async def _write(conn: Conn, plan: rules.Plan, result: IngestResult) -> None:
    """Store the plan, set-based, and fill in the answer."""
    if plan.events:
        stored = await event_store.insert(conn, plan.events)
        if len(stored) != len(plan.events):  # a concurrent request stored one meanwhile
            raise RetryTransaction
        await event_store.link_codes(conn, plan.facts)
    await code_store.insert_new(conn, plan.new_codes)
    await code_store.update(conn, plan.changed_codes)
    await code_store.add_containment(conn, plan.containment)
    await sale_store.erase(conn, plan.erased)  # first: a take written again is erased, then recorded
    await sale_store.record(conn, plan.consumptions)
    await sale_store.reverse(conn, plan.reversals)
    await sale_store.reopen(conn, plan.reopened)
    raised = await flag_store.raise_flags(conn, plan.flags, stored_now=result.stored_flag_kinds)
    await flag_store.withdraw(conn, plan.withdrawn, [str(f.event_id) for f in plan.facts])
    if plan.clear is not None:
        await flag_store.auto_clear(
            conn,
            plan.clear.codes,
            plan.clear.standing,
            CUSTODY_KINDS,
            plan.clear.cleared_by,
            plan.clear.rejudged,
            plan.clear.deleted,
        )
    _report(plan, raised, result)


def _report(plan: rules.Plan, raised: Mapping[FlagKey, FlagRef], result: IngestResult) -> None:
    """The answer: what was taken and rejected, and the flags this request raised."""
    result.rejected += plan.rejected
    result.flags = [raised[key] for key in plan.reported]
    result.replayed = plan.replayed
    for f in plan.facts:
        result.by_type[f.type] = result.by_type.get(f.type, 0) + 1
    result.accepted_events = len(plan.facts)
    result.accepted_codes = sum(len(f.codes) for f in plan.facts)


def _count(result: IngestResult) -> None:
    for type_, count in result.by_type.items():
        metrics.EVENTS.labels(type_).inc(count)
    metrics.flags_raised(result.stored_flag_kinds)
    metrics.EVENT_DUPLICATES.inc(result.duplicates)
    metrics.CODES_ACCEPTED.inc(result.accepted_codes)
    for rejection in result.rejected:
        metrics.CODES_REJECTED.labels(rejection.reason).inc()
    if result.replayed:
        metrics.REPLAYS.inc()
