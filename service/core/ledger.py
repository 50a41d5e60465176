"""The 进销存 ledger's rules: which way each uploaded record moves an item's balance,
when a move out is more than the ledger holds (STOCK_IMBALANCE), and what a stock count
reveals about the codes it counted. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec

from service.core.custody import (
    DESTROYED,
    IN_TRANSIT,
    CodeState,
    Fact,
    Undoable,
    counted,
    none_left,
    replay,
    undone_by_deletions,
)
from service.core.events import Incoming
from service.core.flags import ITEMS, NHSA, Evidence, FlagKey, NewFlag, items, mismatch_refs
from service.core.registry import Product
from service.core.rules import PRODUCT_MISMATCH
from service.core.sales import Consumption

STOCK_IMBALANCE = "STOCK_IMBALANCE"

# ledger kinds, and the side of the balance each is on
COUNT = "count"
IN_KINDS = ("purchase", "transfer_in", "count_gain", "other_in", "donation_in", "sale_return")
OUT_KINDS = (
    "purchase_return",
    "transfer_out",
    "count_loss",
    "destroyed",
    "other_out",
    "donation_out",
    "sale",
)
KINDS = (*IN_KINDS, *OUT_KINDS)
_SIGN = {**dict.fromkeys(IN_KINDS, 1), **dict.fromkeys(OUT_KINDS, -1)}  # a count has none

# 3502 inv_chg_type (FIELDS.md, [A] YbInvChgType): the ledger kind, and the event its codes
# become (None: the ledger only; a count gain or loss moves no pack between parties)
INV_CHG_TYPES: dict[str, tuple[str, str | None]] = {
    "101": ("transfer_in", "receive"),
    "102": ("transfer_out", "ship"),
    "103": ("count_gain", None),
    "104": ("count_loss", None),
    "105": ("destroyed", "destroy"),
    "106": ("other_in", "receive"),
    "107": ("other_out", "ship"),
    "108": ("purchase", "receive"),
    "109": ("purchase_return", "ship"),
    "110": ("donation_in", "receive"),
    "111": ("donation_out", "ship"),
}
# 3507 inv_data_type: the interfaces whose records it deletes (⚠ 3 and 4 cover the returns)
DATA_TYPES: dict[str, tuple[str, ...]] = {
    "1": ("3501",),
    "2": ("3502",),
    "3": ("3503", "3504"),
    "4": ("3505", "3506"),
}


def delta(kind: str, units: int) -> int:
    """The signed effect of ``units`` of ``kind`` on the balance (a count has none)."""
    return _SIGN.get(kind, 0) * units


class Entry(msgspec.Struct, frozen=True):
    """One uploaded record, as the ledger keeps it."""

    org: str
    interface: str  # without its "A"
    bchno: str
    med_list_codg: str
    kind: str
    units: int
    at: datetime
    codes: tuple[str, ...] = ()
    event_ids: tuple[UUID, ...] = ()
    row: dict[str, Any] = msgspec.field(default_factory=dict)
    psn_hash: bytes | None = None  # a sale's or return's insured person, keyed (person_hash)

    @property
    def delta(self) -> int:
        return delta(self.kind, self.units)

    @property
    def evidence(self) -> Evidence:
        return record_evidence(self.org, self.interface, self.bchno)


def record_evidence(org: str, interface: str, bchno: str) -> Evidence:
    """The evidence of the flags one record raised: its STOCK_IMBALANCE (on its item) and
    what a stock count found (on the codes it counted). When a 3507 deletes the record,
    they rest on nothing and are withdrawn."""
    return Evidence(NHSA, f"{org}/{interface}/{bchno}")


def deleted_evidence(
    org: str, deleted: Iterable[tuple[str, str]], compensations: Iterable[Undoable]
) -> list[Evidence]:
    """What the flags rest on that a 3507 deletion leaves resting on nothing, withdrawn in
    its transaction: each deleted record, (interface, ``fixmedins_bchno``)
    (``record_evidence``), and each event of theirs that the deletion's compensations
    undo (``core.custody.undone_by_deletions``): what a deleted sale's dispense raised
    (EXPIRED, RECALLED, OUT_OF_REGION, PRODUCT_MISMATCH, LABEL_MISMATCH, DUPLICATE, a
    custody suspicion), and a deleted return's. Not an event the deletion leaves
    standing (a sale's take of a pack its settlement paid for is the settlement's:
    ``core.sales.kept_by_settlement``; a deleted 3502's scans of a physical move), nor a
    compensation itself (a deleted return's that sells a pack again is judged as a
    sale)."""
    out = [record_evidence(org, interface, bchno) for interface, bchno in deleted]
    return out + [Evidence.event(i) for i in sorted(undone_by_deletions(compensations))]


def deleted_sale_evidence(
    compensations: Iterable[Incoming],
    billed: Mapping[str, frozenset[str]],
    standing: Iterable[Consumption],
    sold_at: Mapping[UUID, datetime],
) -> list[tuple[str, Evidence]]:
    """(code, evidence) of what a deleted sale under a ``setl_id`` raised as a sale, which
    rests on the settlement of that id (``Evidence.sale``: one sale, one flag) and not on
    its event: withdrawn with the deletion on each pack it undoes (each compensating
    return names its ``setl_id``), unless the settlement of that id billed the pack
    (``billed``: the packs each stored settlement names, by setl_id): the settlement then
    judged that pack itself, and its judgement stands (its answer was paid on). Nor when
    the sale still sells the pack through another copy of it (``standing``: the packs'
    takes after the deletion; one under the same ``setl_id``, or by the same
    organisation at the deleted sale's instant, ``sold_at`` by its event:
    ``core.sales.sent_again``; found by a probe: the sale's EXPIRED went with the 3505
    while the dispense event of the same sale stood). A pack it alone sold was its own."""
    takes = list(standing)

    def sold_still(e: Incoming, code: str) -> bool:
        at = sold_at.get(e.undoes) if e.undoes is not None else None
        return any(
            t.code == code and (t.setl_id == e.setl_id or (t.org == e.org and t.at == at)) for t in takes
        )

    return [
        (code, Evidence.settlement(e.setl_id))
        for e in compensations
        if e.type == "return" and e.undoes is not None and e.setl_id
        for code in e.codes
        if code not in billed.get(e.setl_id, frozenset()) and not sold_still(e, code)
    ]


class Figures(msgspec.Struct, frozen=True):
    """An item's ledger at one institution, as of one record (that record included)."""

    balance: int
    units_in: int
    units_out: int
    counted: int | None  # the last stock count up to then
    counted_at: datetime | None


class Standing(msgspec.Struct, frozen=True):
    """An item's ledger now: its figures as of its latest live record (``last_at``)."""

    figures: Figures
    last_at: datetime | None


def ledger_order(entry: Entry) -> tuple[datetime, str, str]:
    """Records of one time in the order of interface and serial (code-point order, as the
    SQL's ``COLLATE "C"``)."""
    return (entry.at, entry.interface, entry.bchno)


def append(
    standing: Standing, entries: Sequence[Entry]
) -> tuple[Standing, dict[tuple[str, str], Figures]] | None:
    """The item's ledger after ``entries`` (new records of that item), and the figures as
    of each of them that moves out, when they simply follow the ledger: each later than
    its latest record, none a stock count. None otherwise: then the figures are computed
    from all the item's records (store.ledger.below_zero, refresh_items)."""
    last = standing.last_at
    if any(e.kind == COUNT or (last is not None and e.at <= last) for e in entries):
        return None
    f = standing.figures
    balance, units_in, units_out = f.balance, f.units_in, f.units_out
    figures = {}
    for e in sorted(entries, key=ledger_order):
        moved = delta(e.kind, e.units)
        balance += moved
        if moved > 0:
            units_in += e.units
        elif moved < 0:
            units_out += e.units
            figures[(e.interface, e.bchno)] = Figures(balance, units_in, units_out, f.counted, f.counted_at)
        last = e.at if last is None else max(last, e.at)
    return Standing(Figures(balance, units_in, units_out, f.counted, f.counted_at), last), figures


def append_items(
    standings: Mapping[str, Standing | None], entries: Sequence[Entry], recompute: Iterable[str] = ()
) -> tuple[dict[str, Standing], dict[tuple[str, str], Figures], set[str]]:
    """:func:`append` for each item of ``entries``: the items' ledgers after them, the
    figures as of each move out, and the items whose ledger is to be computed from all
    their records instead (none kept yet, named in ``recompute``, or records that do not
    simply follow it)."""
    by_item: dict[str, list[Entry]] = {}
    for e in entries:
        by_item.setdefault(e.med_list_codg, []).append(e)
    moved: dict[str, Standing] = {}
    figures: dict[tuple[str, str], Figures] = {}
    slow = set(recompute)
    for item, item_entries in by_item.items():
        standing = standings.get(item)
        after = append(standing, item_entries) if standing is not None and item not in slow else None
        if after is None:
            slow.add(item)
        else:
            moved[item], item_figures = after
            figures.update(item_figures)
    return moved, figures, slow


class Imbalance(msgspec.Struct, frozen=True):
    """A STOCK_IMBALANCE flag as stored: the item, the time and the record it rests on."""

    key: FlagKey
    med_list_codg: str
    at: datetime
    interface: str
    bchno: str


def explained(
    standing: Sequence[Imbalance],
    since: Mapping[str, datetime],
    below: Mapping[tuple[str, str], Figures],
) -> list[Imbalance]:
    """The STOCK_IMBALANCE flags that records arriving later explain: each item of
    ``since`` had its moves out from that time on judged again (``below``: those still
    leaving their ledger below zero), and a flagged move among them that no longer does
    (a purchase dated before it came, an earlier sale or a count was deleted, a count
    showed the stock) rests on nothing now."""
    return [
        f
        for f in standing
        if f.med_list_codg in since and f.at >= since[f.med_list_codg] and (f.interface, f.bchno) not in below
    ]


def imbalance_flags(entries: Sequence[Entry], figures: Mapping[tuple[str, str], Figures]) -> list[NewFlag]:
    """A move out that leaves its item's balance below zero, as of its own time: one
    STOCK_IMBALANCE flag per record, the ledger's figures as evidence. ``figures`` is
    keyed by (interface, fixmedins_bchno)."""
    out = []
    for e in entries:
        f = figures.get((e.interface, e.bchno))
        if e.delta >= 0 or f is None or f.balance >= 0:
            continue
        out.append(
            NewFlag(
                kind=STOCK_IMBALANCE,
                code=e.med_list_codg,
                org=e.org,
                region=None,
                at=e.at,
                detail=(
                    f"{e.org} moved out {e.units} units of {e.med_list_codg} ({e.kind}, record {e.bchno}); "
                    f"its ledger then holds {f.balance}"
                ),
                refs={
                    "med_list_codg": e.med_list_codg,
                    ITEMS: items(e.med_list_codg),
                    "interface": e.interface,
                    "fixmedins_bchno": e.bchno,
                    "kind": e.kind,
                    "units": e.units,
                    "balance_before": f.balance + e.units,
                    "balance_after": f.balance,
                    "units_in": f.units_in,
                    "units_out": f.units_out,
                    "last_count": f.counted,
                    "last_count_at": f.counted_at.isoformat() if f.counted_at else None,
                    "events": [str(i) for i in e.event_ids],
                },
                source=e.evidence,
            )
        )
    return out


def _moved_since(state: CodeState, at: datetime) -> bool:
    """Did anything happen to the pack after ``at``: an event, or a settlement's take?"""
    return state.last_at > at or (state.sold_at is not None and state.sold_at > at)


def counted_late(counts: Iterable[Entry], states: Mapping[str, CodeState]) -> list[str]:
    """The counted packs that moved or were sold after their count's time: a count
    uploaded late (a month's count, say) is judged on them as they were then
    (:func:`as_counted`), which takes their history."""
    return sorted({c for e in counts for c in e.codes if c in states and _moved_since(states[c], e.at)})


def as_counted(
    entry: Entry, states: Mapping[str, CodeState], history: Iterable[Fact], takes: Iterable[Consumption]
) -> Mapping[str, CodeState]:
    """The packs a count counted as they were at its time (it stands at the start of its
    ``invdate``): a pack that moved or was sold after it is folded from its ``history``
    (its events and its settlements' takes, as the stored rows' ``counted_late`` packs
    need) up to the count, and has the units that the sales before it left (``takes``;
    one returned since counts as returned then too). Found by a probe: a month's count
    uploaded after the month's sales called a pack sold after the count a resale, and
    one shipped after it a diversion; in date order, nothing was flagged."""
    late = [c for c in entry.codes if c in states and _moved_since(states[c], entry.at)]
    if not late:
        return states
    before = [f for f in counted(history) if f.at <= entry.at]
    world = replay(before, keep={c: states[c] for c in late}, pack_units={})
    out = dict(states)
    for code in late:
        then = world.get(code, entry.at)
        used = sum(t.units for t in takes if t.code == code and t.at <= entry.at and not t.reversed)
        then.units_left = None if then.pack_units is None else then.pack_units - used
        out[code] = then
    return out


def count_flags(
    entry: Entry, states: Mapping[str, CodeState], products: Mapping[str, Product], region: str | None
) -> list[NewFlag]:
    """What a stock count reveals about the codes it counted: a pack this service knows to
    be held by another organisation (DIVERSION), sold already (DUPLICATE, 回流) or destroyed
    (DUPLICATE: a destroyed pack back in stock); and, as for a 3502 move, a pack of
    another product than the item it is counted under (PRODUCT_MISMATCH, 串换: one item's
    stock holds another's packs). A code never seen adds nothing here. Judged once, as
    the count arrives (open at once: ``core.flags.initial_status``)."""
    out = []

    def flag(kind: str, code: str, why: str, **refs: Any) -> None:
        out.append(
            NewFlag(
                kind=kind,
                code=code,
                org=entry.org,
                region=region,
                at=entry.at,
                detail=f"stock count by {entry.org} (record {entry.bchno}): {why}",
                refs={"fixmedins_bchno": entry.bchno, "interface": entry.interface, **refs},
                source=entry.evidence,
            )
        )

    for code in entry.codes:
        s = states.get(code)
        if s is None or not s.commissioned:
            continue
        product = products.get(s.product_id or "")
        if product is not None and product.med_list_codg != entry.med_list_codg:
            why = f"counted as {entry.med_list_codg}, the pack is {product.med_list_codg} ({product.name})"
            flag(PRODUCT_MISMATCH, code, why, **mismatch_refs(entry.med_list_codg, product))
        if s.state == DESTROYED:
            flag("DUPLICATE", code, "the pack was destroyed", custodian=s.custodian)
        elif none_left(s.units_left):
            flag("DUPLICATE", code, "the pack was already consumed", custodian=s.custodian)
        elif s.state == IN_TRANSIT and s.destination != entry.org:
            flag("DIVERSION", code, f"the pack is in transit to {s.destination}", custodian=s.custodian)
        elif s.state != IN_TRANSIT and s.custodian is not None and s.custodian != entry.org:
            flag("DIVERSION", code, f"the pack is held by {s.custodian}", custodian=s.custodian)
    return out
