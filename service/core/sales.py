"""How sales draw units from packs and give them back (whole packs and split packs, 拆零).

Every change of a pack's ``units_left`` goes through :func:`move_units`: settlements,
dispenses, returns and reversals alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any
from uuid import UUID

from service.core.codes import try_parse_code
from service.core.custody import CodeState, left_out_by_deletions

SETTLEMENT = "settlement"
EVENT = "event"
# A settlement id as the settlement engine assigns it (NHSA's setl_id is up to 30
# letters and digits): letters, digits, '.', '_' and '-', starting with a letter or
# digit. It names a resource in URL paths, so nothing that would need escaping there.
SETL_ID_SHAPE = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
SETL_ID_MEANS = "1 to 64 letters, digits, '.', '_' or '-', the first a letter or digit"  # as said


@dataclass(frozen=True, slots=True)
class Sale:
    """Which sale took units: a settlement (by its id), or a dispense event that names no
    settlement (by the event id). A dispense and a settlement with the same setl_id are
    one sale."""

    kind: str  # SETTLEMENT | EVENT
    id: str

    # one whole-pack sale sent as two dispenses (another format, no setl_id to say so) is
    # one sale too: :func:`sent_again`

    @classmethod
    def of_settlement(cls, setl_id: str) -> Sale:
        return cls(SETTLEMENT, setl_id)

    @classmethod
    def of_dispense(cls, event_id: UUID, setl_id: str | None) -> Sale:
        return cls(SETTLEMENT, setl_id) if setl_id else cls(EVENT, str(event_id))


def sent_again(
    take: Consumption,
    org: str,
    at: datetime,
    quantity: int | None,
    setl_id: str | None,
    pack_units: int | None,
) -> bool:
    """Is a dispense by ``org`` at ``at`` of ``take``'s pack the sale ``take`` recorded,
    sent again in another format (an NHSA 3505 and an EPCIS ``dispensing`` event or a
    /v1/events dispense: API.md, a fact sent twice in two formats is one fact)? So when
    both sell the whole pack, by the same organisation at the same instant (the
    dispense names no ``quantity``; the take is all of the pack's ``pack_units``, so
    not what is left of a part-sold pack) whose ``setl_id``s do not name two sales (one has none, or both the
    same): the same organisation cannot sell the same whole pack twice at one instant.
    Then the dispense is that sale, as a dispense and a settlement with one setl_id are
    (:class:`Sale`): it takes nothing more and is no resale. A split sale (a
    ``quantity``) is another sale: two split sales of one pack at one instant may be."""
    return (
        quantity is None
        and take.org == org
        and take.at == at
        and pack_units is not None
        and take.units == pack_units
        and (take.setl_id is None or setl_id is None or take.setl_id == setl_id)
    )


@dataclass(slots=True)
class Consumption:
    """The units one sale took from one pack."""

    code: str
    sale: Sale
    setl_id: str | None
    event_id: UUID | None
    org: str
    at: datetime
    units: int
    reversed: bool = False
    reversed_by: UUID | None = None  # the return that gave the units back (None: a reversal)
    # when it was recorded (stored: the transaction's time, as an event's ``received``);
    # None: not known. Not part of what the take is.
    recorded: datetime | None = field(default=None, compare=False)

    def describe(self, to: str | None = None) -> str:
        """The sale as a reason's detail names it; ``to`` an organisation (its own
        precheck), another organisation's sale is not named."""
        if to is not None and self.org != to:
            return "another organisation's sale"
        if self.setl_id:
            return f"settlement {self.setl_id}"
        return f"dispense event {self.event_id}"


def named(sales: Iterable[Consumption], to: str | None = None) -> str:
    """The sales that took a pack's units as a reason's detail names them, each once
    (``to``: :meth:`Consumption.describe`; other organisations' sales once, unnamed)."""
    return ", ".join(dict.fromkeys(sale.describe(to) for sale in sales))


def draw(units_left: Mapping[str, int], codes: Sequence[str], quantity: int | None) -> list[tuple[str, int]]:
    """The (code, units) a sale takes: a whole-pack sale (``quantity`` None) takes what
    is left in each code; a split sale takes ``quantity`` units from the codes in the
    order listed. Codes with nothing left are skipped; the result may fall short of
    ``quantity`` (the caller decides whether that is acceptable)."""
    taken: list[tuple[str, int]] = []
    wanted = quantity
    for code in codes:
        left = units_left.get(code, 0)
        if left <= 0:
            continue
        if wanted is None:
            taken.append((code, left))
            continue
        if wanted <= 0:
            break
        units = min(left, wanted)
        taken.append((code, units))
        wanted -= units
    return taken


def short_of(quantity: int | None, units_left: Mapping[str, int], codes: Sequence[str]) -> dict[str, int]:
    """A split sale of more units than its packs have left (some of them sold before):
    the packs it empties, each with the units it finds there. Empty for a whole-pack
    sale, for packs that hold enough, and for packs that hold nothing (a used-up pack
    sold again is a resale as such)."""
    if quantity is None:
        return {}
    found = {c: units_left.get(c, 0) for c in codes if units_left.get(c, 0) > 0}
    return found if found and sum(found.values()) < quantity else {}


def move_units(states: Mapping[str, CodeState], changes: Iterable[tuple[str, int]]) -> set[str]:
    """Apply (code, units) changes to the packs' ``units_left``: negative units are drawn
    by a sale, positive units come back (a return or a reversal). Returns the codes
    changed."""
    changed = set()
    for code, units in changes:
        state = states[code]
        state.units_left = (state.units_left or 0) + units
        changed.add(code)
    return changed


@dataclass(frozen=True, slots=True)
class Refund:
    """A settlement the insurer reversed: what its sale was, for what the reversal gives
    back (its organisation, and the packs it billed)."""

    org: str
    billed: frozenset[str]

    @classmethod
    def of(cls, request: Mapping[str, Any]) -> Refund:
        """From the settlement as stored (``request``)."""
        return cls(str(request.get("org")), billed_packs(request))

    def gives_back(self, org: str, code: str) -> bool:
        """Is a take of ``code`` by ``org``'s sale under this settlement's id part of the
        sale, given back by the reversal: its own organisation's, or a pack it billed,
        whoever's dispense took it (the settlement was credited them)? Another
        organisation's dispense of another pack under the same setl_id is no part of the
        sale and keeps its units taken: a reversal must not make that pack sellable
        again. A dispense arriving after the reversal takes nothing of what the reversal
        would have given back had it come first."""
        return org == self.org or code in self.billed


def paid_packs(request: Mapping[str, Any], answer: Mapping[str, Any] | None) -> frozenset[str]:
    """The packs a stored settlement paid for: those its payable lines name (``request``
    and its ``answer`` as stored). A refused settlement paid for none."""
    payable = {line.get("line_no") for line in (answer or {}).get("lines", []) if line.get("payable")}
    return _packs(line for line in request.get("lines", []) if line.get("line_no") in payable)


def billed_packs(request: Mapping[str, Any]) -> frozenset[str]:
    """The packs a stored settlement (``request``) bills, on any line, payable or not."""
    return _packs(request.get("lines", []))


def _packs(lines: Iterable[Mapping[str, Any]]) -> frozenset[str]:
    """The packs stored settlement lines name, canonical."""
    return frozenset(
        parsed.canonical
        for line in lines
        for raw in line.get("codes", [])
        if (parsed := try_parse_code(raw)) is not None
    )


def paid(take: Consumption, standing: Mapping[str, frozenset[str]]) -> bool:
    """Is ``take`` paid by a settlement that stands: a settlement's own take (only a
    payable line takes), or a dispense's take under the ``setl_id`` of a settlement the
    insurer has not reversed whose payable lines name the pack (``standing``: by setl_id,
    :func:`paid_packs`)? A patient's return does not give such a take back: the units
    come back with the refund (the settlement's reversal), and until then the return
    waits, as one that finds no sale does. A settlement that paid nothing for the pack
    (refused, or billing other packs) leaves its sale's return to give back at once."""
    if take.reversed or take.sale.kind != SETTLEMENT:
        return False
    if take.event_id is None:
        return True
    return take.code in standing.get(take.setl_id or "", frozenset())


def refunded(take: Consumption) -> bool:
    """Did the insurer's reversal of its settlement give ``take``'s units back (the
    refund), rather than a patient's return (which names itself, ``reversed_by``)?"""
    return take.reversed and take.reversed_by is None


def returned_sale(
    ret: Return,
    newest_first: Iterable[Consumption],
    standing: Mapping[str, frozenset[str]],
    undone: Set[tuple[str, Sale]] = frozenset(),
) -> Consumption | None:
    """The sale whose units a patient's return gives back (one that does not name the
    event it undoes): the seller's latest sale of the pack at or before the return (of
    the ``setl_id`` the return names, if it names one) that no return gave back yet
    (``undone``: those given back by returns matched before it, not marked yet). None
    when there is no such sale, and when that sale's units are not the return's to give:
    a standing settlement paid for it (:func:`paid`: they come back with the refund, and
    the return waits for it) or the insurer refunded it already (:func:`refunded`: they
    came back with the refund, and the return gives nothing more). Then not an older sale
    instead: which sale came back is not known. ``newest_first``: the pack's takes, given
    back ones included, the latest sale first (by event time; at one instant, the one
    that arrived last first)."""
    for take in newest_first:
        if take.code != ret.code or take.org != ret.org or take.at > ret.at:
            continue
        if ret.setl_id is not None and take.setl_id != ret.setl_id:
            continue
        if (take.reversed and not refunded(take)) or (take.code, take.sale) in undone:
            continue  # a return gave it back already
        return None if refunded(take) or paid(take, standing) else take
    return None


def kept_by_settlement(packs: Iterable[str], paid: frozenset[str]) -> bool:
    """Does an NHSA 3507 deletion of a sale leave the take of one of its events standing
    (``packs``: the packs that event took), rather than undo it? Only when a settlement
    of the sale's ``setl_id`` paid for one of them (``paid``: :func:`paid_packs`): the
    sale is then the settlement's, its units taken until the insurer's reversal gives
    them back, and once reversed the deletion gives nothing more. A pack the settlement
    did not pay for (rejected, its line refused, the pack not billed) is the deleted
    sale's alone, given back as with no settlement. An event is undone whole: a split
    sale's one event over several packs stays taken when the settlement paid for any of
    them (the conservative reading: a split line's units are credited from the packs the
    sale took them from, so what it paid cannot be told apart from what it did not, and
    nothing that may be paid for comes back)."""
    return not paid.isdisjoint(packs)


@dataclass(frozen=True, slots=True)
class Return:
    """A patient's return of one pack to the organisation that sold it."""

    event_id: UUID
    org: str
    at: datetime
    setl_id: str | None
    code: str
    undoes: UUID | None = None  # the dispense event whose sale it undoes, if it names one
    received: datetime | None = None  # when it was stored (None: arriving now), for refold


def match_returns(
    returns: Sequence[Return],
    sales: Sequence[Consumption],
    standing: Mapping[str, frozenset[str]] | None = None,
) -> list[tuple[Return, Consumption]]:
    """Which sale each return undoes (:func:`returned_sale`; ``standing``: the packs each
    settlement not reversed paid for, by setl_id): a return with no sale to give back
    undoes nothing (yet). A return that names the dispense event it undoes (``undoes``, a
    3507 deletion's compensation) undoes that event's standing sale of the pack only, or
    nothing. ``returns`` in event-time order; ``sales`` the packs' takes newest first,
    given back ones included (as :func:`returned_sale` reads them)."""
    standing = standing or {}
    undone: set[tuple[str, Sale]] = set()
    out = []
    for r in returns:
        if r.undoes is not None:
            sold = next(
                (
                    s
                    for s in sales
                    if s.event_id == r.undoes and s.code == r.code and s.org == r.org
                    and not s.reversed and (s.code, s.sale) not in undone
                ),
                None,
            )  # fmt: skip
        else:
            sold = returned_sale(r, sales, standing, undone)
        if sold is not None:
            undone.add((sold.code, sold.sale))
            out.append((r, sold))
    return out


@dataclass(frozen=True, slots=True)
class Dispense:
    """A dispense of one pack, as :func:`refold` reads it."""

    event_id: UUID
    org: str
    at: datetime
    quantity: int | None  # None: the whole pack
    setl_id: str | None
    packs: int = 1  # how many packs the dispense names
    undoes: UUID | None = None  # a 3507 deletion's compensation: the return it undoes
    received: datetime | None = None  # when it was stored (None: arriving now)


PackSales = dict[str, tuple[list[Dispense], list[Return]]]  # per pack, its stored dispenses and returns


@dataclass(slots=True)
class Refold:
    """A pack's sales folded in event time."""

    takes: list[Consumption]  # what each sale took, oldest first; given back ones reversed
    units_left: int
    resales: list[UUID]  # dispenses that found the pack used up, or short (DUPLICATE)
    short: dict[UUID, int]  # of those, the split sales that found fewer units: how many
    repeats: list[UUID]  # dispenses of a sale that had taken the pack already


def refold(
    code: str,
    pack_units: int,
    dispenses: Sequence[Dispense],
    settled: Sequence[Consumption],
    returns: Sequence[Return],
    refunded: Mapping[str, Refund] | None = None,
    standing: Mapping[str, frozenset[str]] | None = None,
    settling: Sequence[Consumption] = (),
) -> Refold | None:
    """The sales of one pack in event time, whatever order they arrived in: each
    dispense draws from what is left (a whole-pack sale all of it, a split sale up to
    its quantity, and a resale when it finds fewer (``short_of``); nothing from a used-up
    pack: a resale), a settlement's own take takes what it took when it was decided, and
    each return gives back the seller's latest
    sale of the pack at or before it that no return gave back (the one of its ``setl_id``
    if it names one), unless a standing settlement paid for that sale (:func:`paid`: a
    settlement's own take, or a dispense under the id of a settlement in ``standing``),
    or waits (:func:`returned_sale`, as the step-by-step matching; a refunded take, which
    it would also stop at, is not folded: such a pack keeps that matching). A sale takes
    a pack once: a dispense whose sale (its ``setl_id``) took the pack already takes
    nothing again. At one instant they follow in the order they arrived (a stored
    settlement's take by when it was recorded, or first when that is not known; those
    arriving now last; within one upload dispenses before returns, as the incremental
    step takes them), and a return that found no sale undoes a sale of
    its instant that arrives after it. A whole-pack dispense that is a take's sale sent
    again in another format (:func:`sent_again`) takes nothing either. None when a
    settlement finds fewer units than it took (it was decided on other facts: the pack's
    sales are left as they are). The sales and returns of records an NHSA 3507 deletion
    deleted, and the deletion's compensations (``undoes``), are left out: the pack's
    sales end as if those records had never been sent. A dispense under a settlement the
    insurer refunded (``refunded``, by setl_id) takes nothing the refund gives back
    (``Refund.gives_back``). ``settling``: the takes of a settlement arriving now (a late
    claim's: ``core.settlement.in_time``), folded as settlements' takes are, last at
    their instant as what arrives now is."""
    refunded = refunded or {}
    standing = standing or {}
    left_out = left_out_by_deletions([*dispenses, *returns])
    dispenses = [d for d in dispenses if d.event_id not in left_out]
    returns = [r for r in returns if r.event_id not in left_out]
    # at one instant, a stored settlement's take goes where it arrived among the stored
    # events (it went before them all: a return that arrived after a cash sale and then a
    # paid settlement of its instant gave back the cash sale, found by a probe)
    arrived: list[tuple[datetime, int, datetime, int, int, Dispense | Consumption | Return]] = [
        (s.at, 1, s.recorded, 0, 0, s) if s.recorded else (s.at, 0, s.at, 0, 0, s) for s in settled
    ]
    arrived += [(s.at, 2, s.at, 0, 0, s) for s in settling]
    for kind, events in ((0, dispenses), (1, returns)):
        for e in events:  # stored ones by when they were stored, then those arriving now
            arrived.append((e.at, 1 if e.received else 2, e.received or e.at, kind, e.event_id.int, e))
    left = pack_units
    takes: list[Consumption] = []
    # a dispense of a settled sale takes nothing again
    sales: set[Sale] = {t.sale for t in [*settled, *settling]}
    resales: list[UUID] = []
    short: dict[UUID, int] = {}
    repeats: list[UUID] = []
    waiting: list[Return] = []  # returns that found no sale to undo

    def give_back(ret: Return) -> bool:
        nonlocal left
        # as the step-by-step matching: the latest sale before it, unless a standing
        # settlement paid for it or it was refunded (not an older sale instead)
        sold = returned_sale(ret, reversed(takes), standing)
        if sold is None:
            return False
        sold.reversed, sold.reversed_by = True, ret.event_id
        left += sold.units
        return True

    for *_, action in sorted(arrived, key=lambda a: a[:5]):
        if isinstance(action, Return):
            if not give_back(action):
                waiting.append(action)
            continue
        if isinstance(action, Consumption):  # a settlement's own take
            if left < action.units:
                return None
            takes.append(replace(action, reversed=False, reversed_by=None))
            left -= action.units
            continue
        sale = Sale.of_dispense(action.event_id, action.setl_id)
        refund = refunded.get(action.setl_id) if action.setl_id else None
        again = any(
            sent_again(t, action.org, action.at, action.quantity, action.setl_id, pack_units) for t in takes
        )
        if sale in sales or again or (refund is not None and refund.gives_back(action.org, code)):
            repeats.append(action.event_id)
            continue
        if left <= 0:
            resales.append(action.event_id)
            continue
        if short_of(action.quantity, {code: left}, [code]):
            resales.append(action.event_id)
            short[action.event_id] = left
        [(_, units)] = draw({code: left}, [code], action.quantity)
        sales.add(sale)
        takes.append(Consumption(code, sale, action.setl_id, action.event_id, action.org, action.at, units))
        left -= units
        # a return of this very instant that arrived before this sale, and found nothing,
        # undoes it (as a waiting return does when the sale arrives: core.ingest)
        for ret in [r for r in waiting if r.at == action.at]:
            if give_back(ret):
                waiting.remove(ret)
    return Refold(takes, left, resales, short, repeats)


def foldable(
    dispenses: Sequence[Dispense],
    returns: Sequence[Return],
    takes: Sequence[Consumption],
    refunded: Mapping[str, Refund],
) -> bool:
    """Does :func:`refold` model all of a pack's sales: no settlement's reversal (also one
    refunded after a return gave its units back), no split sale over several packs?"""
    return not (
        any(d.quantity is not None and d.packs > 1 for d in dispenses)
        or any(t.reversed and (t.reversed_by is None or t.setl_id in refunded) for t in takes)
    )


@dataclass(slots=True)
class Restated:
    """What a pack's recorded takes need to become a fold's (:func:`restate`), in the
    order they are written: ``erased`` first (a take written again is erased, then
    recorded), then ``added``, then ``given_back`` (added ones among them), ``reopened``."""

    erased: list[Consumption] = field(default_factory=list)
    added: list[Consumption] = field(default_factory=list)
    given_back: list[tuple[Consumption, UUID]] = field(default_factory=list)  # by the return
    reopened: list[Consumption] = field(default_factory=list)

    def extend(self, other: Restated) -> None:
        """Add another pack's (each list after this one's)."""
        self.erased += other.erased
        self.added += other.added
        self.given_back += other.given_back
        self.reopened += other.reopened


def restate(fold: Refold, stored: Sequence[Consumption]) -> Restated:
    """Bring the pack's recorded takes (``stored``) to the fold's: a take whose units,
    sale or return changed is written again, one given back or standing again is marked
    so, and a sale the fold adds is recorded."""
    folded = {t.sale: t for t in fold.takes}
    out = Restated()

    def add(take: Consumption) -> None:
        out.added.append(take)
        if take.reversed_by is not None:
            out.given_back.append((take, take.reversed_by))

    for take in stored:
        now = folded.pop(take.sale, None)
        if now is None:
            out.erased.append(take)
        elif (now.units, now.event_id, now.at, now.org) != (take.units, take.event_id, take.at, take.org) or (
            take.reversed and now.reversed_by not in (None, take.reversed_by)
        ):
            out.erased.append(take)  # written again
            add(now)
        elif take.reversed and not now.reversed:
            out.reopened.append(take)
        elif not take.reversed and now.reversed_by is not None:
            out.given_back.append((take, now.reversed_by))
    for take in folded.values():
        add(take)
    return out
