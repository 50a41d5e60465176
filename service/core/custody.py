"""Custody and state of codes as a fold of their events in event-time order.

The truth about a code is its events sorted by event time. :class:`World` applies
facts one by one to a set of code states; containers carry their contents, to any
depth. Folding the same facts from empty states in :func:`fold_order` gives the
same result whatever order they arrived in; that is what makes late uploads converge.
"""

from __future__ import annotations

import functools
import heapq
import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from operator import attrgetter
from typing import Protocol, TypeGuard
from uuid import NAMESPACE_URL, UUID, uuid5

import msgspec

from service.core.codes import CodeKind, parse_code
from service.core.registry import UNIT, Org, Product

# Same-instant events are ordered by what must logically come first.
TYPE_RANK = {
    "commission": 0,
    "pack": 1,
    "unpack": 2,
    "ship": 3,
    "receive": 4,
    "dispense": 5,
    "return": 6,
    "destroy": 7,
}
EVENT_TYPES = tuple(TYPE_RANK)
# A settlement is not an event, but a replay re-judges the custody suspicions it raised
# (see Fact.settlement) at its own time, ordered like a dispense.
TYPE_RANK["settle"] = TYPE_RANK["dispense"]
# Moves of a single pack that take it out of its case when the case is not moved with it
# (warehouses and pharmacies pick packs out of a case without scanning an unpack).
IMPLICIT_UNPACK = frozenset({"ship", "receive", "dispense", "return", "destroy"})
EPOCH = datetime(1, 1, 1, tzinfo=UTC)

# Custody states (what the fold decides). "dispensed" is not one of them: it is read
# from units_left, which sales change (see display_state).
UNKNOWN = "unknown"  # activity seen, but never commissioned
COMMISSIONED = "commissioned"
IN_TRANSIT = "in_transit"
RECEIVED = "received"
DESTROYED = "destroyed"


class Fact(msgspec.Struct, frozen=True):
    """An accepted event, restricted to the codes it was accepted for."""

    event_id: UUID
    type: str
    at: datetime
    org: str
    codes: tuple[str, ...]
    to: str | None = None
    parent: str | None = None
    lot: str | None = None
    expiry: date | None = None
    produced: date | None = None
    setl_id: str | None = None  # only for "settle" facts
    sold: bool = False  # a "settle" fact whose settlement took units of the pack
    # an NHSA 3507 deletion's compensation: the event whose record was deleted
    # (core.ingest.replay_counted leaves both out of a replay of custody)
    undoes: UUID | None = None

    @classmethod
    def settlement(cls, setl_id: str, at: datetime, org: str, *codes: str, sold: bool = False) -> Fact:
        """A settlement of ``codes`` (one, as stored), folded by event time when a
        history is replayed: judged again as a dispense is; one that took units
        (``sold``, a refunded or returned sale too) took the pack out of its case."""
        event_id = uuid5(NAMESPACE_URL, f"settlement:{setl_id}")
        return cls(event_id, "settle", at, org, codes, setl_id=setl_id, sold=sold)


def sort_key(fact: Fact) -> tuple[datetime, int, int]:
    # the id as an int: the order UUIDs compare in, but compared in C (sorting a batch of
    # 1,000 sales of one time compared UUIDs in Python: 14 ms of a 3505A upload's CPU)
    return (fact.at, TYPE_RANK[fact.type], fact.event_id.int)


def fold_order(facts: Iterable[Fact]) -> list[Fact]:
    """The facts in the order the fold applies them: :func:`sort_key` order, except that
    at one instant an organisation takes in what was shipped to it, and sells what it
    sells, before it ships anything on. TYPE_RANK alone puts every ship of an instant
    before every receive and every sale, which is right between two organisations (M1
    ships, D1 receives) but not for one that receives a case and sends it on in the same
    second (cross-docking), nor for one that sells a pack out of a case and sends the
    rest of the case on in that second (the pack it sold stays sold with it, not on its
    way onward). A function of the facts alone, so the fold still converges whatever
    order they arrived in."""
    out: list[Fact] = []
    for _, instant in itertools.groupby(sorted(facts, key=sort_key), key=attrgetter("at")):
        out += _before_shipping_on(list(instant))
    return out


def folded_before(facts: Iterable[Fact], fact: Fact) -> list[Fact]:
    """The facts the fold applies before ``fact``, in :func:`fold_order`: those of
    earlier instants, and of its own instant those that go first (an organisation's sale
    comes before its own ship onward of that instant)."""
    ordered = fold_order([*facts, fact])
    return ordered[: ordered.index(fact)]


_Node = int | tuple[str, str]  # a fact's index in its group, or an organisation's gate
SALES = ("dispense", "settle")  # an organisation's sales, which come before its ships


def _before_shipping_on(group: list[Fact]) -> list[Fact]:
    """One instant's facts (in sort_key order), each organisation's receives and sales
    moved before its own ships: the order in which every fact that can go next does,
    smallest key first, where a receive by X waits for every ship to X, a sale by X for
    every receive by X, and a ship by X for every receive and sale by X. With a cycle (X
    and Y shipping to each other in one second) the rest keeps sort_key order."""
    receivers = {f.org for f in group if f.type == "receive"}
    sellers = {f.org for f in group if f.type in SALES}
    if not any(f.type == "ship" and (f.org in receivers or f.org in sellers) for f in group):
        return group  # nearly always: nothing to move
    # nodes: the facts (their index in the group is their priority) and, per organisation,
    # a gate before its receives ("in"), one before its sales ("sell") and one before its
    # ships ("out")
    after: dict[_Node, list[_Node]] = {}
    waits: dict[_Node, int] = {}

    def edge(a: _Node, b: _Node) -> None:
        after.setdefault(a, []).append(b)
        waits[b] = waits.get(b, 0) + 1

    for i, f in enumerate(group):
        if f.type == "ship" and f.to is not None:
            edge(i, ("in", f.to))
        if f.type == "receive":
            edge(("in", f.org), i)
            edge(i, ("sell", f.org))
            edge(i, ("out", f.org))
        if f.type in SALES:
            edge(("sell", f.org), i)
            edge(i, ("out", f.org))
        if f.type == "ship" and (f.org in receivers or f.org in sellers):
            edge(("out", f.org), i)
    gates = {n for n in (*after, *waits) if isinstance(n, tuple)}
    ready: list[tuple[int, _Node]] = [(-1, g) for g in gates if not waits.get(g)]
    ready += [(i, i) for i in range(len(group)) if not waits.get(i)]
    heapq.heapify(ready)
    out: list[Fact] = []
    done: set[int] = set()
    while ready:
        _, node = heapq.heappop(ready)
        if isinstance(node, int):
            out.append(group[node])
            done.add(node)
        for nxt in after.get(node, ()):
            waits[nxt] -= 1
            if not waits[nxt]:
                heapq.heappush(ready, (nxt if isinstance(nxt, int) else -1, nxt))
    return out + [f for i, f in enumerate(group) if i not in done]


@dataclass(slots=True)
class CodeState:
    code: str
    kind: str  # cn20 | gs1 | sscc
    product_id: str | None
    last_at: datetime
    state: str = UNKNOWN
    commissioned: bool = False
    commissioned_by: str | None = None
    commission_event: UUID | None = None
    lot: str | None = None
    expiry: date | None = None
    produced: date | None = None
    parent: str | None = None
    custodian: str | None = None
    destination: str | None = None
    pack_units: int | None = None
    units_left: int | None = None
    recalled: bool = False
    # the latest settlement that took units of the pack: a custody event dated before it
    # replays the history, so the settlement is judged again (a sale's own dispense or
    # return does not: it changes no custody, unless a dispense by an organisation that
    # does not hold the pack, which takes it over: takes_over)
    sold_at: datetime | None = None

    def sold(self, at: datetime) -> None:
        """A settlement took units of the pack at ``at``."""
        self.sold_at = at if self.sold_at is None else max(self.sold_at, at)

    def custody(self) -> tuple[object, ...]:
        """The part of the state that the fold decides (for comparing folds)."""
        return (
            self.state,
            self.commissioned,
            self.commissioned_by,
            self.commission_event,
            self.lot,
            self.expiry,
            self.produced,
            self.parent,
            self.custodian,
            self.destination,
            self.last_at,
        )


@functools.lru_cache(maxsize=1 << 17)
def _parts(code: str) -> tuple[str, str | None]:
    parsed = parse_code(code)
    return parsed.kind.value, parsed.product_id


def none_left(units_left: int | None) -> TypeGuard[int]:
    """Is a pack used up: no units left (sold out)? ``None``: it holds no units of its own
    that anyone counts (never commissioned, a container), so never used up."""
    return units_left is not None and units_left <= 0


def holds_packs(kind: str, level: str | None) -> bool:
    """Does a code hold packs rather than being one (a settlement bills the packs in it,
    a receipt counts them)? An SSCC (a logistic unit, of no product), or a code of a case
    or pallet product. ``kind``: the code's (:func:`kind_of`); ``level``: its product's
    (None: not known)."""
    return kind == CodeKind.SSCC.value or (level is not None and level != UNIT)


def kind_of(code: str) -> str:
    """The kind of a canonical code (cached: a batch asks this of each code several times)."""
    return _parts(code)[0]


def product_of(code: str) -> str | None:
    """The product identifier a canonical code names (None for an SSCC)."""
    return _parts(code)[1]


def display_state(s: CodeState) -> str:
    """The state shown to clients: recalls and sales are read on top of custody."""
    if s.state == DESTROYED:
        return DESTROYED
    if s.recalled:
        return "recalled"
    if s.units_left == 0:
        return "dispensed"
    return s.state


def blank(code: str, at: datetime) -> CodeState:
    return CodeState(code=code, kind=kind_of(code), product_id=product_of(code), last_at=at)


def whereabouts(state: CodeState) -> str:
    """Where the pack is, in words: "on its way from P to Q", or "held by P" (", last
    shipped to Q" when another took in what was shipped to Q)."""
    if state.state == IN_TRANSIT:  # shipped by its custodian (an NHSA transfer out may name no one)
        to = f" to {state.destination}" if state.destination else ", to no destination named"
        return f"on its way from {state.custodian}{to}"
    shipped = f", last shipped to {state.destination}" if state.destination else ""
    return f"held by {state.custodian}{shipped}"


def holds(state: CodeState, org: str) -> bool:
    """The organisation holds the pack: it received it and has not sent it on, or the
    pack is on its way to it (its receive scan may simply not be uploaded yet)."""
    if state.state == IN_TRANSIT:
        return state.destination == org
    return state.custodian == org


def takes_over(state: CodeState, org: str) -> bool:
    """Does a dispense by ``org`` take the pack over? When the organisation does not hold
    it (``holds``) and it was commissioned and not destroyed: evidence that the
    organisation has it (a DIVERSION). The pack, and what is inside it, is then the
    dispenser's, as a receipt would make it: the holder's later sales of it are not in
    its custody, and the dispenser's return puts it back on its own shelf. A settlement
    is no such evidence: one by a non-holder is refused and takes nothing, and custody
    stays a fold of the events alone."""
    return state.commissioned and state.state != DESTROYED and not holds(state, org)


@dataclass(frozen=True, slots=True)
class Suspicion:
    """Physically real but suspicious activity seen while folding (becomes a flag)."""

    kind: str  # UNKNOWN_CODE | DIVERSION | OUT_OF_REGION | DUPLICATE (a destroyed pack dispensed)
    code: str
    fact: Fact
    detail: str
    holder: str | None = None
    shipped_to: str | None = None


@dataclass(slots=True)
class World:
    """A set of code states that facts are applied to, in fold_order.

    ``pack_units`` gives the units of a newly commissioned pack by product id;
    ``applied`` records, per code, the facts that reached it and through which
    container (None when the fact named the code itself), a settlement's when it took
    the pack; ``left`` records, per code and fact, the container the code left when that
    fact named it on its own (an implicit unpack, see :meth:`apply`). Both are kept only
    with ``record``.
    """

    states: dict[str, CodeState]
    pack_units: Mapping[str, int] = field(default_factory=dict)
    children: dict[str, set[str]] = field(default_factory=dict)
    applied: dict[str, list[tuple[Fact, str | None]]] = field(default_factory=dict)
    left: dict[tuple[str, UUID], str] = field(default_factory=dict)
    changed: set[str] = field(default_factory=set)
    record: bool = False
    suspicions: list[Suspicion] = field(default_factory=list)
    # the registry rows known to the fold: a receipt outside a product's regions is judged
    # where both the product and the receiving organisation are known
    products: Mapping[str, Product] = field(default_factory=dict)
    orgs: Mapping[str, Org] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for s in self.states.values():
            if s.parent is not None:
                self.children.setdefault(s.parent, set()).add(s.code)

    def get(self, code: str, at: datetime) -> CodeState:
        s = self.states.get(code)
        if s is None:
            s = self.states[code] = blank(code, at)
        return s

    def subtree(self, code: str) -> Iterator[tuple[str, str | None]]:
        """The code and everything inside it now, each with the top container it came through."""
        yield code, None
        seen = {code}
        stack = list(self.children.get(code, ()))
        while stack:
            child = stack.pop()
            if child in seen:  # a malformed cycle must not loop forever
                continue
            seen.add(child)
            yield child, code
            stack.extend(self.children.get(child, ()))

    def _touch(self, s: CodeState, fact: Fact, via: str | None) -> None:
        if fact.at > s.last_at:
            s.last_at = fact.at
        self.changed.add(s.code)
        if self.record:
            self.applied.setdefault(s.code, []).append((fact, via))

    def _detach(self, s: CodeState) -> None:
        if s.parent is not None:
            self.children.get(s.parent, set()).discard(s.code)
            s.parent = None

    def apply(self, fact: Fact) -> None:
        """Apply one fact (callers apply facts in fold_order).

        A ship, receive, dispense, return or destroy that names a code inside a
        container, but not that container nor any container around it, takes the code
        out of its direct container first (an implicit unpack): the container's later
        moves no longer carry it. What the code itself contains stays inside it, and the
        container it left stays where it was (in its own pallet, say).

        A dispense by an organisation that does not hold the pack moves it to that
        organisation, with what is inside it, as a receipt would (:func:`takes_over`)."""
        kind = fact.type
        if kind == "settle":
            # judged as the pack was then; sold, it leaves its case (as a dispense of it does)
            for code in fact.codes:
                s = self.get(code, fact.at)
                self._suspect(s, fact)
                if fact.sold:  # a refused line took nothing: the pack stays where it was
                    if self.record:  # a history shows the sale's pick out of its case
                        self.applied.setdefault(code, []).append((fact, None))
                        if s.parent is not None:
                            self.left[code, fact.event_id] = s.parent
                    self._detach(s)
                    s.sold(fact.at)
                    self.changed.add(code)
            return
        if kind in ("pack", "unpack"):
            assert fact.parent is not None
            container = self.get(fact.parent, fact.at)
            if kind == "pack" and container.kind == "sscc" and not container.commissioned:
                # an SSCC comes into existence at its first pack, held by the packer
                container.commissioned = True
                container.commissioned_by = fact.org
                container.commission_event = fact.event_id
                container.state = COMMISSIONED
                container.custodian = fact.org
            self._touch(container, fact, None)
        loose = self._picked(fact) if kind in IMPLICIT_UNPACK else set()
        for code in fact.codes:
            s = self.get(code, fact.at)
            if kind != "commission":
                self._suspect(s, fact)
            if code in loose:
                assert s.parent is not None
                if self.record:
                    self.left[code, fact.event_id] = s.parent
                self._detach(s)
            if kind == "commission":
                self._commission(s, fact)
            elif kind == "pack":
                assert fact.parent is not None
                self._detach(s)
                s.parent = fact.parent
                self.children.setdefault(fact.parent, set()).add(code)
            elif kind == "unpack" and s.parent == fact.parent:
                self._detach(s)
            if kind in ("ship", "receive", "destroy") or (kind == "dispense" and takes_over(s, fact.org)):
                for inner, via in self.subtree(code):
                    t = self.get(inner, fact.at)
                    if t.state != DESTROYED or kind == "destroy":
                        self._move(t, fact)
                    elif kind != "dispense":  # a dispense leaves it destroyed (DUPLICATE: judged above)
                        self._destroyed_moved(t, fact)
                    self._touch(t, fact, via)
                    if kind == "receive":
                        self._check_region(t, fact)
            else:
                self._touch(s, fact, None)
                if self.record and kind in ("pack", "unpack"):
                    # a history shows a case packed into a pallet, or taken out of one,
                    # to what the case holds too (API.md: "or any container it was in")
                    for inner, via in self.subtree(code):
                        if via is not None:
                            self.applied.setdefault(inner, []).append((fact, via))

    def _picked(self, fact: Fact) -> set[str]:
        """The codes the fact names that sit in a container which the fact names
        neither itself nor through a container around it: they were picked out of it.
        Decided before the fact changes anything, so the order of its codes does not
        matter."""
        named = set(fact.codes)
        # Ingest's incremental step loads only the named codes and everything ever packed
        # inside them. A named container above a code is among them, with every container
        # in between, so a walk up that stops at a container not loaded has found none.
        return {c for c in named if self._parent(c) is not None and not self._inside(c, named)}

    def _parent(self, code: str) -> str | None:
        s = self.states.get(code)
        return s.parent if s is not None else None

    def _inside(self, code: str, containers: set[str]) -> bool:
        """Some container around ``code``, at any depth, is one of ``containers``."""
        seen = {code}
        parent = self._parent(code)
        while parent is not None and parent not in seen:  # a malformed cycle must not loop
            if parent in containers:
                return True
            seen.add(parent)
            parent = self._parent(parent)
        return False

    def _suspect(self, s: CodeState, fact: Fact) -> None:
        """Judge a named code as the fact finds it, before the fact changes it: activity
        on a code never commissioned, or by an organisation that neither holds the pack
        nor was the destination of its last shipment (receive, dispense, ship, destroy,
        pack, unpack: 串货)."""
        if not s.commissioned:
            detail = f"{fact.type} by {fact.org} of a code never commissioned"
            self.suspicions.append(Suspicion("UNKNOWN_CODE", s.code, fact, detail))
            return
        if s.state == DESTROYED and fact.type in ("ship", "receive"):
            return  # a pack back in the market: DUPLICATE where it moves (_destroyed_moved)
        if s.state == DESTROYED and (fact.type == "dispense" or fact.sold):
            # a pack that left the market, back in it (as a stock count sees it), sold or
            # paid for: judged here, in event time, so a sale dated before the destroy is
            # no such thing (a settlement refused took nothing: its answer said why)
            detail = f"{fact.type} by {fact.org}: the pack was destroyed"
            self.suspicions.append(Suspicion("DUPLICATE", s.code, fact, detail))
        if holds(s, fact.org) or (s.custodian == fact.org and fact.type not in ("dispense", "settle")):
            return  # its own stock (a re-scan, or moving what it still has on record)
        if fact.type == "receive" and s.state == IN_TRANSIT and s.destination is None:
            return  # sent without naming where to (an NHSA 3502 transfer out): any receiver fits
        if fact.type == "receive" and s.destination == fact.org:
            return  # the destination of its last shipment, after another took it in
        where = whereabouts(s)
        self.suspicions.append(
            Suspicion(
                "DIVERSION",
                s.code,
                fact,
                f"{fact.type} by {fact.org}, but the pack is {where}",
                holder=s.custodian,
                shipped_to=s.destination,
            )
        )

    def _destroyed_moved(self, s: CodeState, fact: Fact) -> None:
        """A pack reported destroyed that moves again (alone or in a case): a pack back
        in the market (回流), or a destroy reported falsely. It stays destroyed, so no
        later sale of it is payable, and the move is DUPLICATE, as its dispense is."""
        if s.commissioned:
            detail = f"{fact.type} by {fact.org}: the pack was destroyed"
            self.suspicions.append(Suspicion("DUPLICATE", s.code, fact, detail))

    def _check_region(self, s: CodeState, fact: Fact) -> None:
        """A product received by an organisation outside its regions (串货 across
        regions), judged for every pack the receipt takes in, inside cases too."""
        product = self.products.get(s.product_id or "")
        org = self.orgs.get(fact.org)
        if not s.commissioned or product is None or org is None or product.sold_in(org.region):
            return  # a code never commissioned is suspect as such already (UNKNOWN_CODE)
        detail = f"receive by {fact.org}: may not be sold in region {org.region}"
        self.suspicions.append(Suspicion("OUT_OF_REGION", s.code, fact, detail))

    def _commission(self, s: CodeState, fact: Fact) -> None:
        s.commissioned = True
        s.commissioned_by = fact.org
        s.commission_event = fact.event_id
        s.lot, s.expiry, s.produced = fact.lot, fact.expiry, fact.produced
        if s.state == UNKNOWN:
            s.state = COMMISSIONED
            s.custodian = fact.org
        if s.pack_units is None and s.product_id is not None:
            units = self.pack_units.get(s.product_id)
            if units is not None:
                s.pack_units = units
                s.units_left = units

    @staticmethod
    def _move(s: CodeState, fact: Fact) -> None:
        if fact.type == "ship":
            s.state = IN_TRANSIT
            s.destination = fact.to
            # shipped by whoever scanned it out: for its holder nothing changes; by another
            # (a DIVERSION), the pack is on its way from that organisation, as custody
            # follows every scan (it stayed on record as the holder's: a probe)
            s.custodian = fact.org
        elif fact.type in ("receive", "dispense"):  # a dispense only when it takes the pack over (takes_over)
            s.state = RECEIVED
            s.custodian = fact.org
            if s.destination == fact.org:
                s.destination = None
            # else a receipt (or sale) by another (DIVERSION): the shipment's destination
            # stays on record, so its own receipt later is no diversion (API.md)
        elif fact.type == "destroy":
            s.state = DESTROYED

    def apply_all(self, facts: Iterable[Fact]) -> None:
        for fact in fold_order(facts):
            self.apply(fact)


class Undoable(Protocol):
    """An event that may be an NHSA 3507 deletion's compensation (``undoes``)."""

    @property
    def event_id(self) -> UUID: ...

    @property
    def undoes(self) -> UUID | None: ...


def undone_by_deletions(events: Iterable[Undoable]) -> set[UUID]:
    """The ids of the events of records an NHSA 3507 deletion deleted, among those the
    compensations among ``events`` name (``undoes``)."""
    return {e.undoes for e in events if e.undoes is not None}


def left_out_by_deletions(events: Iterable[Undoable]) -> set[UUID]:
    """The ids of the events that count as never sent: those of records an NHSA 3507
    deletion deleted (its compensations name them) and the compensations themselves.
    Custody and a pack's sales are folded without them."""
    compensations = [e for e in events if e.undoes is not None]
    return {e.event_id for e in compensations} | undone_by_deletions(compensations)


def counted(facts: Iterable[Fact]) -> list[Fact]:
    """The facts that count: not those of a record an NHSA 3507 deletion deleted, nor the
    deletion's compensations (:func:`left_out_by_deletions`). Worked out over the whole
    history: cut it by time only after this, as a compensation is dated when the record
    was deleted, after what it undoes."""
    facts = list(facts)
    left_out = left_out_by_deletions(facts)
    return [f for f in facts if f.event_id not in left_out] if left_out else facts


def as_logged(code: str, facts: Sequence[Fact]) -> tuple[World, list[tuple[Fact, str | None]]]:
    """A code's history: the fold of the facts that count (:func:`counted`), and what
    reached the code, each with the container it came through, in fold order. The
    events of records a 3507 deletion deleted, and the compensations that undo them,
    count for nothing (custody is folded without them, so a deleted sale's pick left the
    pack in its case) but the log keeps both: they are listed too, where the whole log
    puts them."""
    kept = counted(facts)
    world = replay(kept, keep={}, pack_units={}, record=True)
    reached = world.applied.get(code, [])
    if len(kept) == len(facts):
        return world, reached
    left_out = left_out_by_deletions(facts)
    logged = replay(facts, keep={}, pack_units={}, record=True).applied.get(code, [])
    dropped = [(fact, via) for fact, via in logged if fact.event_id in left_out]
    place = {fact.event_id: i for i, fact in enumerate(fold_order(facts))}
    return world, sorted(reached + dropped, key=lambda applied: place[applied[0].event_id])


def held_at(container: str, inside: Iterable[str], at: datetime, facts: Iterable[Fact]) -> list[str]:
    """The codes among ``inside`` that ``container`` held just before an unpack of it at
    ``at`` (an EPCIS unpack naming no children): ``facts``, the history of the container,
    of what was ever inside it and of the containers around them, folded up to what
    comes before an unpack at that instant."""
    before = [f for f in counted(facts) if (f.at, TYPE_RANK[f.type]) < (at, TYPE_RANK["unpack"])]
    states = replay(before, keep={}, pack_units={}).states
    return sorted(c for c in inside if c in states and states[c].parent == container)


def replay(
    facts: Iterable[Fact],
    keep: Mapping[str, CodeState],
    pack_units: Mapping[str, int],
    *,
    record: bool = False,
    products: Mapping[str, Product] | None = None,
    orgs: Mapping[str, Org] | None = None,
) -> World:
    """Fold ``facts`` from nothing. What sales and recalls decided (pack_units,
    units_left, recalled) is carried over from ``keep``, the stored states."""
    world = World(states={}, pack_units=pack_units, record=record, products=products or {}, orgs=orgs or {})
    for code, old in keep.items():
        s = world.get(code, EPOCH)
        s.pack_units, s.units_left, s.recalled = old.pack_units, old.units_left, old.recalled
    world.apply_all(facts)
    return world
