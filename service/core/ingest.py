"""What a batch of new supply-chain events changes: the decide step of ingest.

The use case (``service/usecases/events.py``) loads a :class:`Loaded` (with the code rows
locked), :func:`decide` works out a :class:`Plan` without I/O, and the use case writes
it. The helpers before :func:`decide` tell the load step what the decision will need, so
that the rule for "what to read" sits next to the rule that reads it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

from service.core import flags as flag_rules
from service.core.custody import (
    CodeState,
    Fact,
    World,
    counted,
    product_of,
    replay,
    sort_key,
    takes_over,
    undone_by_deletions,
)
from service.core.events import EVENT_ID_TAKEN, Incoming, Rejection, judge
from service.core.flags import Evidence, FlagKey, NewFlag
from service.core.registry import Org, Product
from service.core.sales import (
    Consumption,
    Dispense,
    PackSales,
    Refold,
    Refund,
    Return,
    Sale,
    draw,
    foldable,
    match_returns,
    move_units,
    refold,
    restate,
    sent_again,
    short_of,
)


def named_codes(events: Iterable[Incoming]) -> set[str]:
    """The codes and containers the events name."""
    return {c for e in events for c in e.codes} | {e.parent for e in events if e.parent}


def commission_lots(events: Iterable[Incoming]) -> list[tuple[str, str]]:
    """(product, lot) of every commission: a recall of the lot must not be missed."""
    lots = {(product_of(c), e.lot) for e in events if e.type == "commission" for c in e.codes}
    return sorted((p, lot) for p, lot in lots if p and lot)


def may_explain_settlements(events: Iterable[Incoming], states: Mapping[str, CodeState]) -> bool:
    """Only a commission, ship or receive can explain a settlement's custody suspicion, or
    a dispense by an organisation that does not hold the pack (it takes it over:
    ``custody.takes_over``), dated before that organisation's settlement."""
    return any(e.type in ("commission", "ship", "receive") or _takes_over(e, states) for e in events)


def needs_replay(
    events: Sequence[Incoming] | Sequence[Fact], states: Mapping[str, CodeState], reopen: Sequence[Fact]
) -> bool:
    """In event-time order (every event newer than all its codes have seen, no custody
    event older than a settlement that sold one of them, and no settlement to judge
    again) the fold is an incremental step; otherwise the codes' whole history is folded
    again. A sale's own dispense or return dated before its settlement moves no custody:
    it changes no settlement's judgement. A dispense by an organisation that does not
    hold one of its packs does: it takes the pack over (``custody.takes_over``);
    dated after everything its packs have seen, it finds them as they are now. A return
    dated before a settlement of its pack (:func:`returned_before_settled`) is folded
    with the pack's sales, in the history."""
    earliest = min(e.at for e in events)
    moves = [e.at for e in events if e.type not in ("dispense", "return") or _takes_over(e, states)]
    moved_from = min(moves) if moves else None
    return (
        bool(reopen)
        or any(e.undoes is not None for e in events)  # a deletion: see ``replay_counted``
        or any(s.last_at >= earliest for s in states.values())
        or (moved_from is not None and any(s.sold_at and s.sold_at >= moved_from for s in states.values()))
        or bool(returned_before_settled(events, states))
    )


def returned_before_settled(
    events: Iterable[Incoming] | Iterable[Fact], states: Mapping[str, CodeState]
) -> set[str]:
    """The packs of returns dated before the latest settlement that took units of them
    (``sold_at``): which sale a return gives back, and so what a sale dated before it
    found, goes by event time, so the pack's sales are folded again with the
    settlement's take among them (``core.sales.refold``). Found by a model-based probe:
    a cash sale uploaded after a paid settlement dated later, and flagged DUPLICATE as
    the pack was used up, stayed flagged when the return that had given it back before
    the settlement arrived."""
    return {
        c
        for e in events
        if e.type == "return"
        for c in e.codes
        if (s := states.get(c)) is not None and s.sold_at is not None and s.sold_at > e.at
    }


def _takes_over(event: Incoming | Fact, states: Mapping[str, CodeState]) -> bool:
    """A dispense of a pack that its organisation does not hold now, commissioned and not
    destroyed (``custody.takes_over``)."""
    if event.type != "dispense":
        return False
    return any(takes_over(s, event.org) for c in event.codes if (s := states.get(c)) is not None)


def commissioned_now(events: Iterable[Incoming], states: Mapping[str, CodeState]) -> set[str]:
    """Codes seen before they were commissioned (dispenses may wait for them) that these
    events commission."""
    return {
        c
        for e in events
        if e.type == "commission"
        for c in e.codes
        if c in states and not states[c].commissioned
    }


def dispensed(events: Iterable[Incoming]) -> set[str]:
    return {c for e in events if e.type == "dispense" for c in e.codes}


SALE_TYPES = ("dispense", "return")


def late_sales(events: Iterable[Incoming], states: Mapping[str, CodeState]) -> set[str]:
    """The packs of dispenses and returns that arrive late: dated at or before the last
    event their pack has seen, or undoing a deleted record, and of returns dated before
    a settlement of their pack (:func:`returned_before_settled`) (a late batch, and a
    deletion, replay the history, which holds their stored sales: ``to_refold`` says
    which are folded again)."""
    events = list(events)
    return {
        c
        for e in events
        if e.type in SALE_TYPES
        for c in e.codes
        if c in states and states[c].commissioned and (states[c].last_at >= e.at or e.undoes is not None)
    } | {c for c in returned_before_settled(events, states) if states[c].commissioned}


def replay_counted(
    facts: Sequence[Fact],
    others: Sequence[Fact],
    keep: Mapping[str, CodeState],
    pack_units: Mapping[str, int],
    products: Mapping[str, Product],
    orgs: Mapping[str, Org],
) -> World:
    """``custody.replay`` of the facts that count, then ``others``: not those of a record
    that an NHSA 3507 deletion deleted, nor the deletion's compensations. Custody then
    ends as if the deleted record had never been sent (a deleted sale's pack never left
    the shelf; a deleted return never brought it back), and nothing is raised for either;
    both stay in the log and the history. Their times still count as seen (``last_at``):
    an event dated before them is still late."""
    kept = counted(facts)
    world = replay([*kept, *others], keep=keep, pack_units=pack_units, products=products, orgs=orgs)
    if len(kept) < len(facts):
        ids = {f.event_id for f in kept}
        for f in facts:
            if f.event_id not in ids:
                for code in f.codes:
                    if (s := world.states.get(code)) is not None and f.at > s.last_at:
                        s.last_at = f.at
    return world


def to_refold(events: Iterable[Incoming], states: Mapping[str, CodeState], late: PackSales) -> PackSales:
    """Of the late packs, those whose sales are folded again in event time
    (``core.sales.refold``): a sale or return between those recorded may change which
    sale a return undoes, and what the sales after it took. Not a pack never sold nor
    returned (no stored dispense or return, no settlement's take) that only sales reach:
    the incremental step takes them in time order, as the fold would."""
    returned = {c for e in events if e.type == "return" for c in e.codes}
    return {
        code: (dispenses, returns)
        for code, (dispenses, returns) in late.items()
        if dispenses or returns or states[code].sold_at is not None or code in returned
    }


def sales_needed(
    events: Iterable[Incoming],
    states: Mapping[str, CodeState],
    waiting_returns: Iterable[Return],
    placeholders: Iterable[str],
    refolded: Iterable[str],
) -> set[str]:
    """The packs whose recorded sales the decision reads: those a dispense names with a
    settlement id (the settlement may have taken the units already), those already used
    up when dispensed again (the evidence of a 回流药 flag), those returned (the sale a
    return undoes), those a deleted return's compensation names (what that return gave
    back), those whose sales are folded again (``to_refold``), and those whose waiting
    dispenses and returns apply now."""
    out = set(placeholders) | {r.code for r in waiting_returns} | set(refolded)
    for e in events:
        if e.type == "return" or (e.type == "dispense" and (e.setl_id or e.undoes)):
            out.update(e.codes)
        elif e.type == "dispense":
            out.update(c for c in e.codes if c in states and states[c].units_left == 0)
    return out


def refunds_needed(
    events: Iterable[Incoming], sales: Iterable[Consumption], pack_sales: PackSales
) -> set[str]:
    """The settlement ids whose refund the decision reads: those the dispenses name, new,
    waiting or folded again (a refunded sale takes nothing more), and those of takes a
    return gave back (deleted, the return does not sell again what the insurer
    refunded)."""
    named = {e.setl_id for e in events if e.type == "dispense" and e.setl_id}
    named |= {d.setl_id for dispenses, _ in pack_sales.values() for d in dispenses if d.setl_id}
    return named | {t.setl_id for t in sales if t.setl_id and t.reversed_by is not None}


def standing_needed(
    events: Iterable[Incoming],
    sales: Iterable[Consumption],
    pack_sales: PackSales,
    waiting_returns: Iterable[Return],
    waiting_dispenses: Iterable[Incoming],
) -> set[str]:
    """The settlement ids whose standing the decision reads, when it matches patients'
    returns with sales (the batch's, waiting ones, or those of packs folded again): the
    ``setl_id`` of each dispense whose take such a return may meet (recorded, new,
    waiting or folded again). A return does not give back what a standing settlement
    pays for (``core.sales.paid``); a settlement's own take is paid without a read (its
    reversal gives it back). None otherwise: a batch with no return to match (the sales,
    the hot path) reads nothing more."""
    events = list(events)
    returns = any(e.type == "return" and e.undoes is None for e in events)
    returns = returns or any(r.undoes is None for r in waiting_returns)
    returns = returns or any(r.undoes is None for _, rets in pack_sales.values() for r in rets)
    if not returns:
        return set()
    named = {e.setl_id for e in [*events, *waiting_dispenses] if e.type == "dispense" and e.setl_id}
    named |= {d.setl_id for dispenses, _ in pack_sales.values() for d in dispenses if d.setl_id}
    return named | {t.setl_id for t in sales if t.setl_id and t.event_id is not None}


def registry_needed(
    events: Iterable[Incoming],
    states: Mapping[str, CodeState],
    waiting: Iterable[Incoming],
    history: Iterable[Fact] = (),
) -> tuple[list[str], list[str]]:
    """The organisations and products the decision reads: (org ids, product ids). A
    replay judges the history's receipts again (their region), so its organisations too."""
    events = list(events)
    orgs = {o for e in events for o in (e.org, e.to, e.from_org) if o} | {d.org for d in waiting}
    orgs |= {f.org for f in history}
    products = {product_of(c) for e in events if e.type in ("commission", "dispense") for c in e.codes}
    products |= {s.product_id for s in states.values() if s.product_id}
    products |= {product_of(e.parent) for e in events if e.parent}
    return sorted(orgs), sorted(p for p in products if p)


@dataclass(slots=True)
class Loaded:
    """What deciding a batch needs, as read by the use case."""

    events: list[Incoming]  # the new events (not stored before), codes in canonical form
    states: dict[str, CodeState]  # the locked rows of the named codes and of all they ever contained
    orgs: Mapping[str, Org]
    products: Mapping[str, Product]
    # the recalled lots among those commissioned now and those of the recalled packs
    # read, each with when its recall was ordered
    recalled_lots: dict[tuple[str, str], datetime]
    reopen: list[Fact]  # settlements whose open custody flags these events may explain
    history: list[Fact] | None  # every stored fact of the codes' family, when a replay is needed
    sales: list[Consumption]  # recorded sales of the packs in sales_needed, oldest first
    waiting_returns: list[Return]  # stored returns that undid nothing yet, of dispensed/commissioned packs
    waiting_dispenses: list[Incoming]  # stored dispenses that took nothing yet, of packs commissioned now
    # stored moves recorded under a catalogue item (an NHSA 3502's) of packs commissioned
    # now: judged for that item now that the pack's product is known
    waiting_moves: list[Incoming] = field(default_factory=list)
    # events whose event_id another organisation's stored event holds: refused, not retries
    taken_elsewhere: list[Incoming] = field(default_factory=list)
    # with the history: the settlements that took units of the family's packs (standing
    # or given back since), folded with it
    settled: list[Fact] = field(default_factory=list)
    # every stored dispense and return of each pack whose sales are folded again (to_refold)
    pack_sales: PackSales = field(default_factory=dict)
    # settlements the insurer reversed (refunded), by setl_id, among those the dispenses
    # name and those of takes a return gave back (``refunds_needed``)
    refunded: dict[str, Refund] = field(default_factory=dict)
    # settlements stored and not reversed, by setl_id, among the setl_ids of the
    # dispenses a return may meet (``standing_needed``): a return does not give back
    # what they pay for
    standing: dict[str, frozenset[str]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AutoClear:
    """Open custody flags on ``codes`` that the new fold no longer raises become
    auto_cleared, naming the events that explained them."""

    codes: list[str]
    standing: set[FlagKey]
    cleared_by: list[str]
    rejudged: set[tuple[str, str]]  # (code, setl_id) of the settlements judged again
    # events of records deleted now (NHSA 3507): what rests on them the deletion withdraws
    # itself, naming it (``core.ledger.deleted_evidence``), not as explained
    deleted: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Plan:
    """What the batch writes, and what its answer reports."""

    events: list[Incoming] = field(default_factory=list)  # the events that took a code
    facts: list[Fact] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    new_codes: list[CodeState] = field(default_factory=list)
    changed_codes: list[CodeState] = field(default_factory=list)
    containment: list[tuple[str, str]] = field(default_factory=list)
    consumptions: list[Consumption] = field(default_factory=list)
    reversals: list[tuple[Consumption, UUID]] = field(default_factory=list)  # (sale, the return)
    erased: list[Consumption] = field(default_factory=list)  # stored takes of deleted records
    reopened: list[Consumption] = field(default_factory=list)  # takes that stand again
    flags: list[NewFlag] = field(default_factory=list)
    # flags a late-arriving sale or return explained: a resale flagged DUPLICATE that, by
    # event time, found the pack back in stock
    withdrawn: list[FlagKey] = field(default_factory=list)
    reported: list[FlagKey] = field(default_factory=list)  # flags this request's events raised
    clear: AutoClear | None = None
    replayed: bool = False


def taken_elsewhere(loaded: Loaded) -> list[Rejection]:
    """Each code of an event whose id is another organisation's event: EVENT_ID_TAKEN."""
    return [Rejection(e.event_id, c, EVENT_ID_TAKEN) for e in loaded.taken_elsewhere for c in e.codes]


def moves_only(plan: Plan) -> bool:
    """Does the plan only record its events and move packs that exist: no flag, no new
    code row, no packing, no sale undone, no history replayed? Such a plan may be written
    without having locked what it read, provided none of it changed since
    (``usecases.events``)."""
    return not (
        plan.flags
        or plan.new_codes
        or plan.containment
        or plan.reversals
        or plan.erased
        or plan.reopened
        or plan.withdrawn
        or plan.replayed
    )


class _Book:
    """The recorded sales of the packs in play, and what this batch adds to them."""

    def __init__(self, stored: Sequence[Consumption], returns: Sequence[Return]) -> None:
        self.rows = list(stored)  # oldest first; new rows are appended
        self.keys = {(r.code, r.sale) for r in stored}
        self.of_code: dict[str, list[Consumption]] = {}  # the rows by pack (each dispense looks)
        for r in stored:
            self.of_code.setdefault(r.code, []).append(r)
        self.new: list[Consumption] = []
        self.reversals: list[tuple[Consumption, UUID]] = []
        self.erased: list[Consumption] = []
        self.reopened: list[Consumption] = []
        self.returns = list(returns)  # not applied yet: stored waiting ones, then this batch's
        self.applied: set[tuple[UUID, str]] = set()
        self.cancelled: set[UUID] = set()  # deleted returns: they give nothing back

    def sold(self, code: str, sale: Sale) -> bool:
        return (code, sale) in self.keys

    def sold_as(self, code: str, event: Incoming, pack_units: int | None) -> bool:
        """Did a recorded sale take ``code`` in the sale ``event`` is: its own
        (:meth:`sold`), or one it sends again in another format
        (``core.sales.sent_again``)?"""
        sale = Sale.of_dispense(event.event_id, event.setl_id)
        return self.sold(code, sale) or any(
            sent_again(r, event.org, event.at, event.quantity, event.setl_id, pack_units)
            for r in self.of_code.get(code, ())
        )

    def units_taken(self, sale: Sale, codes: Iterable[str]) -> int:
        """The units ``sale`` took from ``codes`` (also those given back since: a sale
        takes a pack once)."""
        wanted = set(codes)
        return sum(r.units for r in self.rows if r.sale == sale and r.code in wanted)

    def add(self, sale: Consumption) -> None:
        self.rows.append(sale)
        self.keys.add((sale.code, sale.sale))
        self.of_code.setdefault(sale.code, []).append(sale)
        self.new.append(sale)

    def given_back_by(self, ret: UUID, codes: Iterable[str]) -> list[Consumption]:
        """The takes of ``codes`` that the return ``ret`` gave back."""
        wanted = set(codes)
        return [r for r in self.rows if r.reversed and r.reversed_by == ret and r.code in wanted]

    def reopen(self, take: Consumption) -> None:
        """The return that gave ``take`` back was deleted, or undoes another sale by event
        time: the sale stands again."""
        take.reversed, take.reversed_by = False, None
        self.reopened.append(take)

    def reverse(self, take: Consumption, by: UUID) -> None:
        """``take`` is given back by the return ``by`` (as a fold matched them)."""
        take.reversed, take.reversed_by = True, by
        self.reversals.append((take, by))

    def newest_first(self, codes: set[str]) -> list[Consumption]:
        """The takes of ``codes``, given back ones included (a refunded sale is still the
        sale a return after it meets: ``core.sales.returned_sale``), the latest sale first
        by event time (at one instant, the one recorded last first): a late sale arriving
        now is placed by its time, not by its arrival."""
        # a stable sort: at one instant the order of ``reversed`` (recorded last first) stays
        return sorted((r for r in reversed(self.rows) if r.code in codes), key=lambda r: r.at, reverse=True)

    def give_back(self, sold: Consumption, by: Return) -> None:
        """A return gives a sale's take back: it stays, reversed, and that sale does not
        take the pack again (a late upload of the sale, its settlement). A deletion of
        the sale's record (NHSA 3507, a return naming the event it undoes) erases the
        take instead: the record never counted, and a corrected record of the same sale
        takes the pack."""
        sold.reversed = True
        self.applied.add((by.event_id, by.code))
        if by.undoes is None:
            sold.reversed_by = by.event_id  # given back by a return, not refunded
            self.reversals.append((sold, by.event_id))
            return
        self.erase(sold)

    def erase_given_back(self, deletion: Return) -> None:
        """A deleted sale (``deletion`` names its event) whose take a patient's return
        gave back already: the take goes, and the units stay where the return put them."""
        named = (deletion.undoes, deletion.code)
        for take in [r for r in self.rows if r.reversed and (r.event_id, r.code) == named]:
            self.applied.add((deletion.event_id, deletion.code))
            self.erase(take)

    def erase(self, take: Consumption) -> None:
        """The take goes (erased): the record of the sale that took it was deleted, or by
        event time the sale took other units (or none)."""
        self.keys.discard((take.code, take.sale))
        kept = [n for n in self.new if n is not take]
        if len(kept) == len(self.new):  # stored: delete it
            self.erased.append(take)
        self.new = kept
        self.rows = [r for r in self.rows if r is not take]
        self.of_code[take.code] = [r for r in self.of_code.get(take.code, []) if r is not take]


def decide(loaded: Loaded) -> Plan:
    """Judge each code of each new event, fold the accepted ones into custody (in
    event-time order, replaying history when the batch is late), apply dispenses and
    returns to the packs' units, and collect the flags. ``loaded.states`` is updated in
    place."""
    states = loaded.states
    facts, rejected = judge(loaded.events, states, loaded.products, loaded.orgs)
    by_id = {e.event_id: e for e in loaded.events}
    taken = {f.event_id for f in facts}
    plan = Plan(events=[e for e in loaded.events if e.event_id in taken], facts=facts, rejected=rejected)
    flags = flag_rules.commission_conflict_flags(rejected, by_id, states)
    if not facts:
        plan.flags = flags
        plan.reported = [f.key for f in flags]
        return plan

    # the fold changes these very state objects: note now which codes were placeholders
    placeholders = {c for c, s in states.items() if not s.commissioned}
    pack_units = {pid: p.pack_units for pid, p in loaded.products.items()}
    earliest = min(f.at for f in facts)
    # only settlements at or after this batch's earliest event: older judgements cannot change
    reopen = [r for r in loaded.reopen if r.at >= earliest]
    if needs_replay(facts, states, reopen):
        assert loaded.history is not None, "the load step reads the history when a replay is needed"
        # every settlement that took units of the packs is folded too, by its time: it
        # took its pack out of its case, and a late event may make it suspect (judged
        # again, as a dispense would be); those at or after the earliest new event are
        # re-judged. A flagged one that also took units is folded once, as a sale.
        sold = {(f.setl_id, f.codes) for f in loaded.settled}
        reopen = [f for f in reopen if (f.setl_id, f.codes) not in sold]
        reopen += [f for f in loaded.settled if f.at >= earliest]
        world = replay_counted(
            loaded.history + facts,
            reopen + [f for f in loaded.settled if f.at < earliest],
            keep=states,
            pack_units=pack_units,
            products=loaded.products,
            orgs=loaded.orgs,
        )
        plan.replayed = True
    else:
        world = World(states=dict(states), pack_units=pack_units, products=loaded.products, orgs=loaded.orgs)
        world.apply_all(facts)
    _mark_recalled(world, facts, loaded.recalled_lots)

    book = _Book(loaded.sales, loaded.waiting_returns)
    # a late sale or return folds its pack's sales again, in event time; the others are
    # applied to the sales recorded, as they come
    refolded, rejudged, folded = _refold_late(loaded, facts, world, book)
    flags += refolded
    book.returns += [
        _return_of(by_id[f.event_id], code)
        for f in facts
        if f.type == "return"
        for code in f.codes
        if code not in folded
    ]
    in_order = [
        (by_id[f.event_id], codes)
        for f in sorted(facts, key=sort_key)
        if (codes := tuple(c for c in f.codes if c not in folded))
    ]
    flags += _consume(world, in_order, loaded, book)
    # a move recorded under a catalogue item (an NHSA 3502) is judged for it, as a sale is
    flags += _billed_moves([(e, e.codes) for e in loaded.events], world, loaded)
    # a dispense that arrived before its code's commission took nothing (the pack size
    # was unknown); now it takes its units, and is judged as a dispense of a known pack
    # (on arrival the fold suspected an unknown code only): a pack dispensed twice,
    # expired, recalled. Raised now, but not reported to this request's sender.
    reported = {f.key for f in flags}
    newly = {c for c in placeholders if world.states[c].commissioned}
    early = [(d, d.codes) for d in loaded.waiting_dispenses if newly.intersection(d.codes)]
    flags += _consume(world, early, loaded, book)
    # and so is a move recorded under an item before the pack's commission (on arrival
    # its product was unknown): PRODUCT_MISMATCH, as in date order
    moved = [(m, tuple(c for c in m.codes if c in newly)) for m in loaded.waiting_moves]
    flags += _billed_moves(moved, world, loaded)
    flags += rejudged  # stored sales a late one found to be resales: raised, not reported

    # a replay judges old facts again too: those suspicions stand (or are raised again),
    # but the answer reports only what this request's events raised
    for suspicion in world.suspicions:
        flag = flag_rules.suspicion_flag(suspicion)
        flags.append(flag)
        if suspicion.fact.event_id in taken:
            reported.add(flag.key)
    plan.flags = flags
    plan.reported = [k for k in dict.fromkeys(f.key for f in flags) if k in reported]
    standing = {f.key for f in flags}
    plan.withdrawn = [k for keys in folded.values() for k in keys if k not in standing]
    if plan.replayed:
        plan.clear = AutoClear(
            codes=sorted(set(states) | named_codes(loaded.events)),
            standing={f.key for f in flags},
            cleared_by=[str(i) for i in taken],
            rejudged={(f.codes[0], f.setl_id) for f in reopen if f.setl_id},
            deleted=sorted(str(i) for i in undone_by_deletions(facts)),
        )

    # after a replay every locked code may have changed (ancestors were only read)
    dirty = set(states) if plan.replayed else set(world.changed)
    dirty |= {c for f in facts for c in f.codes} | {f.parent for f in facts if f.parent}
    plan.new_codes = [world.states[c] for c in sorted(dirty) if c not in states]
    plan.changed_codes = [world.states[c] for c in sorted(dirty) if c in states]
    plan.containment = [(f.parent, c) for f in facts if f.type == "pack" and f.parent for c in f.codes]
    plan.consumptions = book.new
    plan.reversals = book.reversals
    plan.erased = book.erased
    plan.reopened = book.reopened
    return plan


def _billed_moves(
    moves: Iterable[tuple[Incoming, tuple[str, ...]]], world: World, loaded: Loaded
) -> list[NewFlag]:
    """What the events other than dispenses (those are judged as sales) recorded under a
    catalogue item are suspicious of, on the codes given: ``core.flags.billed_flags``."""
    flags: list[NewFlag] = []
    for moved, codes in moves:
        if moved.type != "dispense" and moved.med_list_codg and codes:
            flags += flag_rules.billed_flags(moved, list(codes), world.states, loaded.products, loaded.orgs)
    return flags


def _consume(
    world: World,
    sales: Sequence[tuple[Incoming, tuple[str, ...]]],
    loaded: Loaded,
    book: _Book,
) -> list[NewFlag]:
    """Dispenses take units from packs; returns give back the latest sale's units, unless
    a standing settlement paid for it (then they wait for the refund: ``core.sales.paid``)
    or it was refunded already (then they give nothing: ``core.sales.returned_sale``). A
    dispense carrying a setl_id that a settlement already consumed takes nothing again
    from the packs the settlement took, and a split one draws from its other packs only
    the units its sale has not taken yet.
    Returns the suspicions a dispense raises: a consumed pack dispensed again (回流药),
    expired, recalled or out-of-region stock, and a pack of another item than the one
    billed (that one also where the dispense takes nothing again)."""
    flags: list[NewFlag] = []
    dispenses = [(e, codes) for e, codes in sales if e.type == "dispense"]
    # the earlier sales are evidence only for a pack already used up (a DUPLICATE)
    earlier = [r for r in book.rows if not r.reversed]
    for event, codes in dispenses:
        quantity = event.quantity
        if event.undoes is not None:
            codes, quantity = _undo_return(event.undoes, codes, world, book, loaded.refunded)
            if not codes:
                continue
        sale = Sale.of_dispense(event.event_id, event.setl_id)
        fresh = [c for c in codes if not book.sold_as(c, event, world.states[c].pack_units)]
        # a pack its sale took already (the settlement came first, or the same sale sent
        # in another format) is taken and judged no more (no DUPLICATE for being the
        # same sale), but what the dispense bills is judged all the same:
        # PRODUCT_MISMATCH does not depend on which came first
        taken_already = [c for c in codes if c not in fresh]
        short = None
        if quantity is not None and event.undoes is None:
            # a split sale draws from the packs it has not taken only the units it has
            # not taken yet from those it names (as a settlement's line bills what its
            # dispense took: core.settlement._draw), so it ends as when it comes first
            quantity = max(0, quantity - book.units_taken(sale, taken_already))
            found = short_of(quantity, {c: world.states[c].units_left or 0 for c in fresh}, fresh)
            short = {c: (quantity, left) for c, left in found.items()}
        flags += flag_rules.dispense_flags(
            event,
            fresh,
            world.states,
            loaded.products,
            loaded.orgs,
            earlier,
            short=short,
            recalls=loaded.recalled_lots,
        )
        flags += flag_rules.billed_flags(event, taken_already, world.states, loaded.products, loaded.orgs)
        # judged, but what a refund of its sale gives back it does not take again
        refund = loaded.refunded.get(event.setl_id) if event.setl_id else None
        takes_from = [c for c in fresh if refund is None or not refund.gives_back(event.org, c)]
        left = {c: world.states[c].units_left or 0 for c in takes_from}
        taken = draw(left, takes_from, quantity)
        for code, units in taken:
            book.add(Consumption(code, sale, event.setl_id, event.event_id, event.org, event.at, units))
        world.changed |= move_units(world.states, [(code, -units) for code, units in taken])
    # A return undoes the seller's latest sale of the pack before it (by event time), or
    # nothing when a standing settlement paid for that sale or it was refunded
    # (``core.sales.returned_sale``). Returns that undid nothing (they arrived before the
    # dispense they undo, or met a paid or refunded sale) wait: each new dispense looks
    # for them, and a return whose latest sale is a refunded one finds it again and
    # gives nothing, unless a sale dated between them has arrived since.
    wanted = {c for e, codes in sales for c in codes}
    undoing = sorted(
        (
            r
            for r in book.returns
            if (r.event_id, r.code) not in book.applied
            and r.code in wanted
            and r.event_id not in book.cancelled
        ),
        key=lambda r: (r.at, r.event_id),
    )
    if undoing:
        takes = book.newest_first({r.code for r in undoing})
        for ret, sold in match_returns(undoing, takes, loaded.standing):
            book.give_back(sold, ret)
            world.changed |= move_units(world.states, [(sold.code, sold.units)])
        for ret in undoing:
            if ret.undoes is not None and (ret.event_id, ret.code) not in book.applied:
                book.erase_given_back(ret)
    return flags


def _refold_late(
    loaded: Loaded, facts: Sequence[Fact], world: World, book: _Book
) -> tuple[list[NewFlag], list[NewFlag], dict[str, list[FlagKey]]]:
    """Fold the sales of each pack of ``loaded.pack_sales`` again in event time
    (``core.sales.refold``) with the batch's own, and record the difference: takes that
    change, returns matched again.

    Returns the flags of the batch's dispenses, those of stored ones, and per pack folded
    the DUPLICATE keys to withdraw (those packs are left out of the incremental step):
    not those of a sale deleted now, which its deletion withdraws, naming it
    (``core.ledger.deleted_evidence``).
    A pack whose sales hold what the fold does not model stays with that step: a
    settlement's reversal, a split sale over several packs, or a settlement that would
    find fewer units than it took."""
    by_id = {e.event_id: e for e in loaded.events}
    arriving: dict[str, list[Incoming]] = {}  # the batch's sales and returns, by pack
    for f in facts:
        if f.type in SALE_TYPES:
            for c in f.codes:
                arriving.setdefault(c, []).append(by_id[f.event_id])
    recorded: dict[str, list[Consumption]] = {}
    for t in book.rows:
        recorded.setdefault(t.code, []).append(t)
    flags: list[NewFlag] = []
    rejudged: list[NewFlag] = []
    folded: dict[str, list[FlagKey]] = {}
    deleted = undone_by_deletions(facts)
    for code, (stored_dispenses, stored_returns) in sorted(loaded.pack_sales.items()):
        new = arriving.get(code, [])  # none: the late sale or return was refused
        takes = recorded.get(code, [])
        new_dispenses = [e for e in new if e.type == "dispense"]
        dispenses = stored_dispenses + [
            Dispense(e.event_id, e.org, e.at, e.quantity, e.setl_id, len(e.codes), e.undoes)
            for e in new_dispenses
        ]
        returns = stored_returns + [_return_of(e, code) for e in new if e.type == "return"]
        pack_units = world.states[code].pack_units
        if not new or pack_units is None or not foldable(dispenses, returns, takes, loaded.refunded):
            continue
        fold = refold(
            code,
            pack_units,
            dispenses,
            [t for t in takes if t.event_id is None],
            returns,
            loaded.refunded,
            loaded.standing,
        )
        if fold is None:
            continue
        _record_refold(fold, takes, book)
        left = world.states[code].units_left or 0
        world.changed |= move_units(world.states, [(code, fold.units_left - left)])
        # the batch's dispenses judged on the pack as it stood at their time (a sale that
        # took the pack already only for what it bills); stored ones only for DUPLICATE
        resold = set(fold.resales)
        for e in new_dispenses:
            if e.undoes is None and e.event_id in fold.repeats:
                # its sale took the pack already: not judged again as a sale, but for
                # what it bills (as ``_consume`` does)
                flags += flag_rules.billed_flags(e, [code], world.states, loaded.products, loaded.orgs)
            # a deleted return's compensation sells nothing of its own here: not judged
            elif e.undoes is None:
                earlier = [t for t in fold.takes if t.at <= e.at]
                found = fold.short.get(e.event_id)
                used_up = {code} if e.event_id in resold and found is None else set()
                flags += flag_rules.dispense_flags(
                    e,
                    [code],
                    world.states,
                    loaded.products,
                    loaded.orgs,
                    earlier,
                    used_up=used_up,
                    short={code: (e.quantity or 0, found)} if found is not None else {},
                    recalls=loaded.recalled_lots,
                )
        rejudged += flag_rules.resales_found(fold, code, stored_dispenses)
        folded[code] = [
            (flag_rules.DUPLICATE, code, Evidence.sale(d.event_id, d.setl_id))
            for d in stored_dispenses
            if d.event_id not in resold and d.event_id not in deleted
        ]
    return flags, rejudged, folded


def _return_of(event: Incoming, code: str) -> Return:
    return Return(event.event_id, event.org, event.at, event.setl_id, code, event.undoes)


def _record_refold(fold: Refold, stored: Sequence[Consumption], book: _Book) -> None:
    """Bring the pack's recorded takes to the fold's (``core.sales.restate``) in the book."""
    restated = restate(fold, stored)
    for take in restated.erased:
        book.erase(take)
    for take in restated.added:
        book.add(take)
    for take, by in restated.given_back:
        book.reverse(take, by)
    for take in restated.reopened:
        book.reopen(take)


def _undo_return(
    ret: UUID, codes: tuple[str, ...], world: World, book: _Book, refunded: Mapping[str, Refund]
) -> tuple[tuple[str, ...], int | None]:
    """A deleted return's compensation (a dispense naming the return): the takes that
    return gave back stand again, where their packs still hold the units. What a pack no
    longer holds (sold again since) is sold again as the compensation's own sale of those
    units, judged as a dispense (a pack used up: DUPLICATE): returned are (those codes,
    the units). A return that gave nothing back never gives anything back (it may be
    waiting for its sale). A take of a settlement the insurer refunded since stays given
    back: the refund stands."""
    back = [
        t
        for t in book.given_back_by(ret, codes)
        if (refund := refunded.get(t.setl_id or "")) is None or not refund.gives_back(t.org, t.code)
    ]
    if not back:
        book.cancelled.add(ret)
        return (), None
    again = []
    for take in back:
        if (world.states[take.code].units_left or 0) >= take.units:
            book.reopen(take)
            world.changed |= move_units(world.states, [(take.code, -take.units)])
        else:
            again.append(take)
    return tuple(t.code for t in again), sum(t.units for t in again) or None


def _mark_recalled(world: World, facts: Sequence[Fact], recalled: Mapping[tuple[str, str], datetime]) -> None:
    """Codes commissioned into a lot that was already recalled are recalled too."""
    if not recalled:
        return
    for f in facts:
        if f.type != "commission":
            continue
        for code in f.codes:
            state = world.states[code]
            if (state.product_id, state.lot) in recalled:
                state.recalled = True
