"""Which suspicions become flags, and the evidence each carries (API.md, "Flags").

The custody suspicions (UNKNOWN_CODE, DIVERSION) are found by the fold in
``core/custody.py`` at each event's time; this module turns them, and what dispenses,
commissions and settlements reveal, into flags with their evidence. One flag per
suspicion, code and piece of evidence: :attr:`NewFlag.key` names them.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from service.core.codes import LABEL_MISMATCH, label_disagrees
from service.core.custody import CodeState, Suspicion, none_left
from service.core.events import COMMISSION_CONFLICT, Incoming, Rejection
from service.core.registry import Org, Product
from service.core.rules import PRODUCT_MISMATCH, RECALLED, expired, local_date
from service.core.sales import Consumption, Dispense, Refold

EVENT = "event"
SETTLEMENT = "settlement"
PERSON = "person"
NHSA = "nhsa"  # one uploaded 进销存 record (core.ledger.record_evidence)

PENDING, OPEN = "pending", "open"
# The custody suspicions: activity on a code whose commission is not known, or by an
# organisation not known to hold it (a receive with no matching shipment, a move or sale
# by someone else). A late upload can explain them (the commission, the shipment), and the
# fold judges them again when one arrives, so they start pending for the grace window.
# Only those the fold raised, on an event or a settlement: a stock count's DIVERSION
# (core.ledger.count_flags) is judged once, when the count arrives (nothing replays a
# count), so it is open at once; pending, it would be promoted whatever arrived meanwhile.
# Every other kind rests on facts that a later upload rarely changes (the pack was already
# consumed, its product, expiry, recall or region, a second commission, a person's
# purchases), so it is open at once. The one exception: a late sale or return folds its
# pack's sales again in event time (``core.ingest``), and a DUPLICATE that the fold no
# longer finds (the pack was back in stock by then) is withdrawn; and a reversal judges
# the person's windows again (``core.settlement.excess_after_reversal``), withdrawing an
# EXCESS_PURCHASE whose window it brings within the limit.
CUSTODY_KINDS = ("UNKNOWN_CODE", "DIVERSION")
DUPLICATE = "DUPLICATE"  # a consumed pack sold again (回流药), or a destroyed one
# refs of an OUT_OF_REGION raised by the fold at a receipt: a replay that no longer raises
# it clears it, as it does the custody kinds (one raised by a sale stands: no replay
# judges that sale again)
AT_RECEIPT = "at_receipt"
# refs of a flag that concerns catalogue items (med_list_codg): the items it names, which
# ``GET /v1/flags?med_list_codg=`` finds it by (an index on them, 0023_flag_items.sql).
# STOCK_IMBALANCE names its item (also its code), PRODUCT_MISMATCH the item billed and
# the pack's own item, EXCESS_PURCHASE the item bought; no other kind names one.
ITEMS = "items"


def code_is_item(code: str, refs: Mapping[str, Any]) -> bool:
    """Is a flag's code a catalogue item rather than a trace code (a ledger's flag, a
    person's purchases of an item billed without codes)? Its refs name it among its
    items."""
    return code in (refs.get(ITEMS) or ())


def items(*med_list_codgs: str) -> list[str]:
    """The catalogue items a flag names (``refs.items``), each once, in order."""
    return list(dict.fromkeys(med_list_codgs))


def mismatch_refs(billed: str, product: Product | None) -> dict[str, Any]:
    """A PRODUCT_MISMATCH's refs about items, whatever raised it (a dispense, a
    settlement line): the item billed, and the items it names: that one and the pack's."""
    return {"billed": billed, ITEMS: items(billed, *([product.med_list_codg] if product else []))}


def initial_status(kind: str, source: Evidence) -> str:
    """The status a new flag of ``kind`` resting on ``source`` starts in: pending for a
    custody suspicion that the fold judges again (on an event or a settlement)."""
    return PENDING if kind in CUSTODY_KINDS and source.kind in (EVENT, SETTLEMENT) else OPEN


def stale_change(expected: str | None, current: str) -> bool:
    """Is a person's change made against a status the flag no longer has? Then it is
    refused and nothing changes, its note neither: the person decided on what they saw,
    and someone (or the service) has moved the flag since (two investigators taking the
    same flag, one dismissing what the other confirmed). ``expected`` None: the change names
    no status it saw (the API's PATCH without ``expected_status``) and is made against
    whatever the flag's status is."""
    return expected is not None and expected != current


# the author of a flag's automatic changes in its history (a promotion, an automatic
# clear, a raise again), where a person's key id stands for a person's
SYSTEM = "system"


def status_set_by(flag: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The line of a flag's ``history`` (oldest first) that set the status it has: the first
    of the last run of lines under one status, after the status it was raised with
    (:func:`initial_status`, from the flag's ``kind`` and ``source_kind``). A note alone is
    kept under the status the flag has then (``store.flags.add_change``), and so is the
    system's line of evidence restated (``store.flags.restate``): the lines after that
    first one are such lines, and the last line may be one. The history does not hold
    the flag's raising, so until a person has moved the flag (its ``moved_by_person``)
    every person's line is a note, and only the system's lines count. None when nothing
    set the status since the flag was raised with it (found by probes: the 409 named the
    key of a note, and then the system's restating of an open flag's evidence)."""
    history = flag["history"]
    lines = history if flag["moved_by_person"] else [line for line in history if line["by_key"] == SYSTEM]
    status = initial_status(flag["kind"], Evidence(flag["source_kind"], ""))
    found = None
    for line in lines:
        if line["status"] != status:
            found, status = line, line["status"]
    return found


@dataclass(frozen=True, slots=True)
class Evidence:
    """What a suspicion rests on: an event, or a settlement."""

    kind: str  # EVENT | SETTLEMENT
    id: str

    @classmethod
    def event(cls, event_id: UUID) -> Evidence:
        return cls(EVENT, str(event_id))

    @classmethod
    def settlement(cls, setl_id: str) -> Evidence:
        return cls(SETTLEMENT, setl_id)

    @classmethod
    def sale(cls, event_id: UUID, setl_id: str | None) -> Evidence:
        """What a dispense's suspicions as a sale rest on: its sale. A dispense carrying a
        ``setl_id`` and the settlement of that id are one sale (``core.sales.Sale``), so
        what either finds (DUPLICATE, EXPIRED, RECALLED, OUT_OF_REGION, PRODUCT_MISMATCH,
        LABEL_MISMATCH) is one flag resting on the settlement, whichever arrives first
        (found by a probe: one flag on each); a dispense with none rests on its event.
        Not its custody suspicions (``suspicion_flag``): the fold judges those again, on
        the event."""
        return cls.settlement(setl_id) if setl_id else cls.event(event_id)

    @classmethod
    def person(cls, psn_hash: bytes, med_list_codg: str, setl_id: str | None = None) -> Evidence:
        """One insured person's purchases of one catalogue item in one window: those up
        to the settlement ``setl_id`` that took them past the item's limit,
        ``<hash hex>:<setl_id>/<item>``, so that each window's excess is a flag of its
        own. Without ``setl_id``: the person and the item alone, ``<hash hex>/<item>``,
        the evidence of the flags stored before (one flag per person and item, whatever
        the window; still read, as what holds back a flag in its window). A hash and a
        settlement id hold no ``:`` or ``/``, so the two forms never meet, and the item
        is what follows the first ``/`` in either (as migration 0024 read it)."""
        if setl_id is None:
            return cls(PERSON, f"{psn_hash.hex()}/{med_list_codg}")
        return cls(PERSON, f"{psn_hash.hex()}:{setl_id}/{med_list_codg}")


FlagKey = tuple[str, str, Evidence]  # (kind, code, evidence): one flag each


@dataclass(frozen=True, slots=True)
class NewFlag:
    kind: str
    code: str
    org: str | None
    region: str | None  # None: taken from the organisation
    at: datetime
    detail: str
    refs: dict[str, Any]
    source: Evidence

    @property
    def status(self) -> str:
        return initial_status(self.kind, self.source)

    @property
    def key(self) -> FlagKey:
        """One flag per suspicion, code and evidence, however often the evidence is re-sent."""
        return (self.kind, self.code, self.source)


@dataclass(frozen=True, slots=True)
class FlagRef:
    """A stored flag, as answers name it."""

    flag_id: int
    kind: str
    code: str


def dispense_flags(
    event: Incoming,
    codes: list[str],
    states: Mapping[str, CodeState],
    products: Mapping[str, Product],
    orgs: Mapping[str, Org],
    earlier: Sequence[Consumption],
    *,
    used_up: Collection[str] | None = None,
    short: Mapping[str, tuple[int, int]] | None = None,
    recalls: Mapping[tuple[str, str], datetime] | None = None,
) -> list[NewFlag]:
    """What a dispense of these packs (their state before it) is suspicious of: a
    consumed pack sold again (回流药), expired, recalled or out-of-region stock, a pack of
    another product than the one billed (串换, when the dispense names it), and a label
    scanned with another lot or expiry than the pack's (a fake, LABEL_MISMATCH).
    ``used_up``: the packs that were used up when it was sold, where their state now
    does not say (a late sale, folded again in event time), and ``short`` the packs a
    split sale found fewer units in than it drew on them, each with (units drawn, units
    left) (``core.sales.short_of``, as the caller drew them).
    ``recalls``: when each
    recalled lot's recall was ordered; a sale dated before it (uploaded late) sold a
    pack that was not recalled yet (a lot missing there: recalled, whenever)."""
    out = []
    org = orgs[event.org]

    def flag(kind: str, code: str, detail: str) -> None:
        out.append(_dispense_flag(event, org.region, kind, code, detail))

    labels = {p.canonical: p for p in event.labels}
    for code in codes:
        state = states[code]
        if not state.commissioned:
            continue  # the fold already suspects an unknown code
        if code in labels and (said := label_disagrees(labels[code], state.lot, state.expiry)) is not None:
            flag(LABEL_MISMATCH, code, f"{said}: not the pack this code was made for")
        was_used_up = code in used_up if used_up is not None else none_left(state.units_left)
        if was_used_up:
            out.append(
                resale_flag(
                    event.event_id, event.org, org.region, event.at, code, earlier, setl_id=event.setl_id
                )
            )
        elif short and code in short:
            found = short[code]
            out.append(
                resale_flag(
                    event.event_id,
                    event.org,
                    org.region,
                    event.at,
                    code,
                    earlier,
                    found,
                    setl_id=event.setl_id,
                )
            )
        if state.expiry is not None and expired(state.expiry, local_date(event.at)):
            flag("EXPIRED", code, f"expired on {state.expiry.isoformat()}")
        if recalled_when_sold(state, event.at, recalls):
            out.append(_recalled_flag(event, org.region, code, state))
        product = products.get(state.product_id or "")
        if product is not None and not product.sold_in(org.region):
            flag("OUT_OF_REGION", code, f"may not be sold in region {org.region}")
        out += billed_flags(event, [code], states, products, orgs)
    return out


def recalled_when_sold(
    state: CodeState, at: datetime, recalls: Mapping[tuple[str, str], datetime] | None
) -> bool:
    """Was the pack recalled when a sale at ``at`` sold it: its lot's recall was ordered
    at or before then (``recalls``: when each recalled lot's recall was ordered; a lot
    missing there: recalled, whenever)."""
    recalled_at = (recalls or {}).get((state.product_id or "", state.lot or ""))
    return state.recalled and (recalled_at is None or recalled_at <= at)


def _recalled_flag(event: Incoming, region: str, code: str, state: CodeState) -> NewFlag:
    return _dispense_flag(event, region, RECALLED, code, f"lot {state.lot} is recalled")


def reached_by_recall(states: Iterable[CodeState], at: datetime) -> list[str]:
    """The packs of a lot recalled at ``at`` that may have stored dispenses dated at or
    after it (their latest event is not older): those :func:`recall_flags` judges. A lot
    whose packs saw nothing since reads nothing more."""
    return sorted(s.code for s in states if s.last_at >= at)


def recall_flags(
    dispenses: Sequence[Incoming],
    states: Mapping[str, CodeState],
    orgs: Mapping[str, Org],
    recalled_at: datetime,
    settled: Collection[tuple[str, str]] = (),
) -> list[NewFlag]:
    """RECALLED on the stored dispenses of the packs a recall ordered at ``recalled_at``
    marks (``states``, recalled now) that are dated at or after it: stored before it was
    ordered (a till's clock ahead), they are judged as :func:`dispense_flags` judges a
    dispense arriving after the recall, so a sale's judgement follows its time and not
    when it arrived. Not a pack whose sale its settlement took itself before the
    dispense came (``settled``: (code, setl_id)): that dispense took nothing and is
    judged only for what it bills (``core.ingest``), and the settlement's answer stands.
    ``dispenses``: each with the codes it took among the lot's, as stored."""
    out = []
    for event in dispenses:
        org = orgs.get(event.org)
        if org is None:
            continue
        for code in event.codes:
            state = states.get(code)
            if state is None or not state.commissioned:
                continue
            if event.setl_id and (code, event.setl_id) in settled:
                continue
            if recalled_when_sold(state, event.at, {(state.product_id or "", state.lot or ""): recalled_at}):
                out.append(_recalled_flag(event, org.region, code, state))
    return out


def billed_flags(
    event: Incoming,
    codes: list[str],
    states: Mapping[str, CodeState],
    products: Mapping[str, Product],
    orgs: Mapping[str, Org],
) -> list[NewFlag]:
    """What an event that names the item it moves (``med_list_codg``: an NHSA sale
    bills it, a 3502 change records its ledger under it) is suspicious of: a pack of
    another product than that item (串换, PRODUCT_MISMATCH; the ledger of one item moves
    while the other's packs do). It is about the item named, not about units: a dispense
    of a sale that took the pack already (its settlement came first) takes nothing again,
    and is judged for this all the same, so the flag does not depend on which arrived
    first."""
    if not event.med_list_codg:
        return []
    org = orgs[event.org]
    out = []
    for code in codes:
        state = states[code]
        product = products.get(state.product_id or "") if state.commissioned else None
        if product is None or product.med_list_codg == event.med_list_codg:
            continue
        named = "billed" if event.type == "dispense" else "recorded"
        detail = f"{named} as {event.med_list_codg}, the pack is {product.med_list_codg} ({product.name})"
        refs = mismatch_refs(event.med_list_codg, product)
        out.append(_dispense_flag(event, org.region, PRODUCT_MISMATCH, code, detail, **refs))
    return out


def _dispense_flag(event: Incoming, region: str, kind: str, code: str, detail: str, **refs: Any) -> NewFlag:
    """A suspicion of the dispense (or other move) ``event``: a dispense's rests on its
    sale (:meth:`Evidence.sale`: the settlement of its ``setl_id``, named in its refs
    too), any other event's on the event."""
    setl_id = event.setl_id if event.type == "dispense" else None
    return NewFlag(
        kind=kind,
        code=code,
        org=event.org,
        region=region,
        at=event.at,
        detail=f"{event.type} by {event.org}: {detail}",
        refs={"events": [str(event.event_id)], **_settlements(setl_id), **refs},
        source=Evidence.sale(event.event_id, setl_id),
    )


def _settlements(setl_id: str | None) -> dict[str, Any]:
    """The refs naming a dispense's settlement, when it carries a ``setl_id``."""
    return {"settlements": [setl_id]} if setl_id else {}


def resale_flag(
    event_id: UUID,
    org: str,
    region: str | None,
    at: datetime,
    code: str,
    earlier: Sequence[Consumption],
    short: tuple[int, int] | None = None,
    *,
    setl_id: str | None = None,
) -> NewFlag:
    """DUPLICATE: the dispense ``event_id`` (of the sale ``setl_id``, if it carries one:
    :meth:`Evidence.sale`) sold a pack that was already consumed (回流药), or, ``short``
    (units sold, units the pack had left), more of a part-sold pack than it had left;
    with the sales before it as evidence."""
    before = [e for e in earlier if e.code == code]
    refs: dict[str, Any] = {
        "events": [str(event_id)],
        **_settlements(setl_id),
        "earlier_settlements": [e.setl_id for e in before if e.setl_id],
        "earlier_events": [str(e.event_id) for e in before if e.event_id],
    }
    detail = f"dispense by {org}: the pack was already consumed"
    if short is not None:
        sold, left = short
        refs |= {"units_sold": sold, "units_left": left}
        detail = f"dispense by {org} of {sold} units: the pack had {left} left, the rest already consumed"
    return NewFlag(
        kind=DUPLICATE, code=code, org=org, region=region, at=at, detail=detail, refs=refs,
        source=Evidence.sale(event_id, setl_id),
    )  # fmt: skip


def resales_found(fold: Refold, code: str, stored: Iterable[Dispense]) -> list[NewFlag]:
    """DUPLICATE of each of the pack's ``stored`` dispenses that its sales folded in
    event time (``fold``: ``core.sales.refold``) find to be a resale (:func:`resale_flag`,
    with the sales before it as evidence; its region the dispensing organisation's)."""
    out = []
    for d in stored:
        if d.event_id in fold.resales:
            found = fold.short.get(d.event_id)
            short = (d.quantity or 0, found) if found is not None else None
            before = [t for t in fold.takes if t.at <= d.at]
            out.append(resale_flag(d.event_id, d.org, None, d.at, code, before, short, setl_id=d.setl_id))
    return out


def suspicion_flag(s: Suspicion) -> NewFlag:
    """A custody suspicion found by the fold, as a flag with its evidence."""
    if s.fact.setl_id is not None:  # a settlement re-judged by the fold
        refs: dict[str, Any] = {"settlements": [s.fact.setl_id]}
        source = Evidence.settlement(s.fact.setl_id)
    else:
        refs = {"events": [str(s.fact.event_id)]}
        source = Evidence.event(s.fact.event_id)
    if s.holder:
        refs["holder"] = s.holder
    if s.shipped_to:
        refs["last_shipped_to"] = s.shipped_to
    if s.kind == "OUT_OF_REGION":
        refs[AT_RECEIPT] = True  # the fold's own, judged again by a replay (not a sale's)
    return NewFlag(
        kind=s.kind,
        code=s.code,
        org=s.fact.org,
        region=None,
        at=s.fact.at,
        detail=s.detail,
        refs=refs,
        source=source,
    )


def commission_conflict_flags(
    rejected: list[Rejection], events: Mapping[UUID, Incoming], states: Mapping[str, CodeState]
) -> list[NewFlag]:
    """A code commissioned twice with different attributes: a cloned code, likely."""
    out = []
    for r in rejected:
        if r.reason != COMMISSION_CONFLICT:
            continue
        event = events[r.event_id]
        first = states.get(r.code)
        refs: dict[str, Any] = {"events": [str(r.event_id)]}
        if first is not None and first.commission_event is not None:
            refs["events"].insert(0, str(first.commission_event))
        out.append(
            NewFlag(
                kind=COMMISSION_CONFLICT,
                code=r.code,
                org=event.org,
                region=None,
                at=event.at,
                detail=f"{event.org} commissioned it again as lot {event.lot}, expiry {event.expiry}",
                refs=refs,
                source=Evidence.event(r.event_id),
            )
        )
    return out
