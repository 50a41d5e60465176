"""Settlement by code (依码结算): which claim lines the fund pays, line by line.

Pure rules over plain values. The reason names are API.md's reason table; the code-level
rows come from :func:`service.core.rules.code_reasons`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field, fields, replace
from datetime import date, datetime, timedelta
from typing import Any
from uuid import UUID

import msgspec

from service.core.codes import LABEL_MISMATCH, NOT_A_CODE, try_parse_code
from service.core.custody import (
    DESTROYED,
    CodeState,
    Fact,
    counted,
    folded_before,
    holds,
    none_left,
    replay,
)
from service.core.events import identifier_problem
from service.core.flags import ITEMS, Evidence, FlagKey, FlagRef, NewFlag, items, mismatch_refs, resales_found
from service.core.ingest import replay_counted
from service.core.registry import Org, PersonLimit, Product
from service.core.rules import (
    ALREADY_SETTLED,
    DESTROYED_REASON,
    EXPIRED,
    INVALID_CODE,
    MISSING_CODES,
    NOT_IN_CUSTODY,
    OUT_OF_REGION,
    PRODUCT_MISMATCH,
    QUANTITY_MISMATCH,
    RECALLED,
    UNKNOWN_CODE,
    Reason,
    code_reasons,
    consumed,
    local_date,
)
from service.core.sales import (
    Consumption,
    PackSales,
    Refund,
    Restated,
    Sale,
    draw,
    foldable,
    move_units,
    named,
    refold,
    restate,
)

ACCEPTED, PARTIAL, REJECTED = "accepted", "partial", "rejected"

# Which reasons are also a suspicion for investigators, and under which flag kind.
FLAG_FOR_REASON = {
    LABEL_MISMATCH: LABEL_MISMATCH,  # a fake: the label is not the pack the code was made for
    ALREADY_SETTLED: "DUPLICATE",
    DESTROYED_REASON: "DUPLICATE",  # a pack that left the market, back in it
    NOT_IN_CUSTODY: "DIVERSION",
    PRODUCT_MISMATCH: "PRODUCT_MISMATCH",
    UNKNOWN_CODE: "UNKNOWN_CODE",
    EXPIRED: "EXPIRED",
    RECALLED: "RECALLED",
    OUT_OF_REGION: "OUT_OF_REGION",
}


@dataclass(frozen=True, slots=True)
class Line:
    line_no: int
    med_list_codg: str
    quantity: int
    split: bool
    codes: tuple[str, ...]  # as sent


@dataclass(frozen=True, slots=True)
class Claim:
    """A settlement request as judged: times in UTC, codes as sent."""

    setl_id: str
    org: str
    psn_no: str
    at: datetime
    mode: str
    lines: tuple[Line, ...]
    # answered to the dispensing organisation itself (an org key's precheck): other
    # organisations' sales are not named in its reasons
    for_org: bool = False


def document(claim: Claim) -> dict[str, Any]:
    """The claim as a JSON document: the body ``POST /v1/settlements`` reads back as this
    claim (``at`` in UTC, codes as sent)."""
    return {
        "setl_id": claim.setl_id,
        "org": claim.org,
        "psn_no": claim.psn_no,
        "at": claim.at.isoformat(),
        "mode": claim.mode,
        "lines": [
            {
                "line_no": line.line_no,
                "med_list_codg": line.med_list_codg,
                "quantity": line.quantity,
                "split": line.split,
                "codes": list(line.codes),
            }
            for line in claim.lines
        ],
    }


def stored_request(claim: Claim, psn_hash: bytes) -> dict[str, Any]:
    """The claim as kept with its settlement: the person number only as its keyed hash
    (:func:`person_hash`)."""
    kept = document(claim)
    del kept["psn_no"]
    return {**kept, "psn_hash": psn_hash.hex()}


def shown_request(request: Mapping[str, Any]) -> dict[str, Any]:
    """A stored claim as answers show it: its codes in their canonical form, as every
    answer shows codes (kept as sent; one that is not a code stays as it was sent)."""
    lines = [
        {**line, "codes": [canonical(code) or code for code in line.get("codes", [])]}
        for line in request.get("lines", [])
    ]
    return {**request, "lines": lines}


def person_number_problem(psn_no: str) -> str | None:
    """What is wrong with an insured person number as sent (a settlement's, an NHSA
    sale's or return's, a 3511/3513 query's): one person, one spelling. A look-alike (a
    space at an end, an invisible or control character, full-width digits) would hash as
    another person (:func:`person_hash`), whose purchases the real one's EXCESS_PURCHASE
    count misses and whom a query by the real number does not find. The rule of every
    identifier (``core.events.identifier_problem``); the message never repeats the number."""
    return identifier_problem(psn_no, shown=False)


def person_number(psn_no: str) -> str:
    """An insured person number as it names the person: upper-cased, as a Chinese ID
    number's check character is X written either way (``…777x`` is ``…777X``). Every
    path refuses a number :func:`person_number_problem` finds wrong before this, so no
    other spelling of one number is left to tell apart."""
    return psn_no.upper()


def person_hash(secret: bytes, psn_no: str) -> bytes:
    """HMAC-SHA256 of an insured person number (:func:`person_number`): links one
    person's settlements without storing the number. Every path that keeps a person
    hashes here."""
    return hmac.new(secret, person_number(psn_no).encode(), hashlib.sha256).digest()


# the fields of a claim that say what it asks (for_org says whom the answer is for)
_ASKED = tuple(f.name for f in fields(Claim) if f.name != "for_org")


def fingerprint(
    secret: bytes,
    claim: Claim,
    canonical: Mapping[str, str | None] | None = None,
    *,
    person: bool = True,
    reader: bool = False,
) -> bytes:
    """What tells a replay of a settlement from a changed body: an HMAC of what the claim
    asks (the same claim always gives the same bytes; the secret keeps the person number
    in it from being guessed). With ``canonical`` (``canonical_codes``), the claim as
    read: each code in its canonical form, so a code spelled another way (a GS1 code in
    brackets, or raw) is the same claim, and (unless not ``person``) the person number
    as :func:`person_number` reads it, so ``…x`` and ``…X`` are the same claim.

    Whom the answer is for (``for_org``) is no part of the claim: it is left out, as
    before it was a field, unless ``reader`` (the form settlements stored while it was
    hashed with the claim carry)."""
    if canonical is not None:
        read = [replace(line, codes=tuple(canonical.get(c) or c for c in line.codes)) for line in claim.lines]
        claim = replace(claim, lines=tuple(read))
        if person:
            claim = replace(claim, psn_no=person_number(claim.psn_no))
    asked = claim if reader else {f: getattr(claim, f) for f in _ASKED}  # encoded alike, field by field
    return hmac.new(secret, b"settlement\x00" + msgspec.json.encode(asked), hashlib.sha256).digest()


def fingerprints(secret: bytes, claim: Claim, canonical: Mapping[str, str | None]) -> tuple[bytes, ...]:
    """The fingerprint a settlement is stored with (the claim as read: codes in canonical
    form, the person number upper-cased), then those it was stored with before, where
    they differ, so that such a settlement sent again is still answered as a replay: of
    the person number as sent (before it was upper-cased), of the codes as sent too
    (before codes were read so), and each with ``for_org`` in it, as settlements were
    fingerprinted from its addition (06e7c61) to its removal from the hash: their
    identical retries were refused 409 as changed bodies after an upgrade, and those of
    settlements stored before it after that addition (found by an upgrade probe)."""
    codes_as_sent = all(form is None or form == raw for raw, form in canonical.items())
    as_read = codes_as_sent and person_number(claim.psn_no) == claim.psn_no

    def forms(reader: bool) -> list[bytes]:
        as_sent = fingerprint(secret, claim, reader=reader)
        if as_read:
            return [as_sent]  # the common case: every code and the number sent as read
        return [
            fingerprint(secret, claim, canonical, reader=reader),
            fingerprint(secret, claim, canonical, person=False, reader=reader),
            as_sent,
        ]

    return tuple(dict.fromkeys(forms(reader=False) + forms(reader=True)))


@dataclass(slots=True)
class LineOutcome:
    line_no: int
    payable: bool
    reasons: list[Reason] = field(default_factory=list)
    takes: list[tuple[str, int]] = field(default_factory=list)  # (canonical code, units) drawn now
    # (canonical code, units) this sale had taken already (a dispense with its setl_id)
    # that the line bills: paid, not drawn again
    credited: list[tuple[str, int]] = field(default_factory=list)
    # the units a payable line without codes bills (an item that carries none): its quantity
    uncoded: int = 0


def decision(outcomes: Sequence[LineOutcome]) -> str:
    paid = sum(1 for o in outcomes if o.payable)
    if paid == len(outcomes):
        return ACCEPTED
    return REJECTED if paid == 0 else PARTIAL


def judge(
    *,
    setl_id: str,
    lines: Sequence[Line],
    canonical: Mapping[str, str | None],
    states: Mapping[str, CodeState],
    products: Mapping[str, Product],
    exempt_codgs: set[str],
    org: Org,
    on: date,
    earlier: Mapping[str, list[Consumption]],
    shown_to: str | None = None,
) -> list[LineOutcome]:
    """Judge each line in order. Units taken by a payable line are not available to the
    lines after it; a line that is not payable takes nothing. Units that this same sale
    already took from a pack (a dispense event with this setl_id) are billed once, by the
    first line that names the pack; the sale takes no more from that pack (a sale consumes
    a pack once). ``shown_to``: the organisation the answer is for, when only its own
    sales may be named (``Consumption.describe``)."""
    left = {code: s.units_left or 0 for code, s in states.items()}
    own = Sale.of_settlement(setl_id)
    # units this sale took already from each pack it touched, not billed by a line yet
    credit: dict[str, int] = {}
    for code, sales in earlier.items():
        for e in sales:
            if e.sale == own:
                credit[code] = credit.get(code, 0) + e.units
    outcomes = []
    for line in lines:
        outcome = _judge_line(
            line, setl_id, canonical, states, products, exempt_codgs, org, on, earlier, left, credit, shown_to
        )
        if outcome.payable:
            for code, units in outcome.takes:
                left[code] -= units
            for code, units in outcome.credited:
                credit[code] -= units
        outcomes.append(outcome)
    return outcomes


def _judge_line(
    line: Line,
    setl_id: str,
    canonical: Mapping[str, str | None],
    states: Mapping[str, CodeState],
    products: Mapping[str, Product],
    exempt_codgs: set[str],
    org: Org,
    on: date,
    earlier: Mapping[str, list[Consumption]],
    left: Mapping[str, int],
    credit: Mapping[str, int],
    shown_to: str | None,
) -> LineOutcome:
    out = LineOutcome(line.line_no, payable=False)
    if not line.codes:
        if line.med_list_codg in exempt_codgs:
            out.payable = True
            out.uncoded = line.quantity
        else:
            out.reasons.append(Reason("", MISSING_CODES, "a traced product is billed without its codes"))
        return out
    codes: list[str] = []
    seen: set[str] = set()
    for raw in line.codes:
        code = canonical.get(raw)
        if code is None:
            out.reasons.append(Reason(raw, INVALID_CODE, NOT_A_CODE))
            continue
        if code in seen:
            out.reasons.append(Reason(code, QUANTITY_MISMATCH, "the code is listed twice"))
            continue
        seen.add(code)
        codes.append(code)
        state = states.get(code)
        product = products.get(state.product_id) if state and state.product_id else None
        own = [e for e in earlier.get(code, []) if e.sale == Sale.of_settlement(setl_id)]
        # a code sent in another form than its canonical one may carry its label's lot and
        # expiry (a GS1 element string): compared with the pack's record
        label = try_parse_code(raw) if raw != code else None
        for reason in code_reasons(code, state, product, org, on, label=label):
            if reason.reason == ALREADY_SETTLED:
                continue  # judged below, against what this settlement leaves
            out.reasons.append(reason)
        if product is not None and product.med_list_codg != line.med_list_codg:
            out.reasons.append(
                Reason(code, PRODUCT_MISMATCH, f"the pack is {product.med_list_codg} ({product.name})")
            )
        if state is not None and state.commissioned and state.pack_units:  # a pack, not a logistic unit
            if not own:
                _check_units(out, line, code, state, left, earlier.get(code, []), shown_to)
            elif not line.split:
                _check_credit(out, code, state, credit.get(code, 0), own)
    if out.reasons:
        return out
    drawn = _draw(line, codes, states, left, credit)
    if drawn is None:
        available = sum(credit[c] if c in credit else left.get(c, 0) for c in codes)
        out.reasons.append(Reason("", QUANTITY_MISMATCH, _quantity_detail(line, codes, states, available)))
        return out
    out.takes, out.credited = drawn
    out.payable = True
    return out


def _check_units(
    out: LineOutcome,
    line: Line,
    code: str,
    state: CodeState,
    left: Mapping[str, int],
    earlier: list[Consumption],
    shown_to: str | None,
) -> None:
    units = left.get(code, 0)
    whole = state.pack_units or 0
    if not none_left(units) and (line.split or units == whole):
        return
    by = named(earlier, shown_to) or "an earlier line of this settlement"
    detail = consumed(whole, units, by)
    if not none_left(units):
        detail += "; a whole-pack line needs a full pack"
    out.reasons.append(Reason(code, ALREADY_SETTLED, detail))


def _check_credit(out: LineOutcome, code: str, state: CodeState, credit: int, own: list[Consumption]) -> None:
    """A whole-pack line naming a pack this sale took units from already: it bills what
    the sale took, which must be the whole pack, and only once."""
    whole = state.pack_units or 0
    if credit == whole:
        return
    by = ", ".join(e.describe() for e in own)
    if credit <= 0:
        detail = f"the {whole} units this sale took ({by}) are billed by an earlier line"
        out.reasons.append(Reason(code, ALREADY_SETTLED, detail))
    else:
        detail = f"this sale took {credit} of the pack's {whole} units ({by}); a whole-pack line bills all"
        out.reasons.append(Reason(code, QUANTITY_MISMATCH, detail))


def _draw(
    line: Line,
    codes: list[str],
    states: Mapping[str, CodeState],
    left: Mapping[str, int],
    credit: Mapping[str, int],
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]] | None:
    """(the units the line draws now, the units it bills that this sale took already), or
    None when its quantity does not fit its codes. A pack this sale took from already (a
    key of ``credit``) gives only what the sale took and no line billed yet."""
    fresh = [c for c in codes if c not in credit]
    if not line.split:
        if sum(states[c].pack_units or 0 for c in codes) != line.quantity:
            return None
        return draw(left, fresh, None), [(c, credit[c]) for c in codes if c in credit]
    wanted = line.quantity
    credited = []
    for c in codes:
        units = min(credit.get(c, 0), wanted)
        if units > 0:
            credited.append((c, units))
            wanted -= units
    takes = draw(left, fresh, wanted) if wanted > 0 else []
    return (takes, credited) if sum(u for _, u in takes) >= wanted else None


def _quantity_detail(line: Line, codes: list[str], states: Mapping[str, CodeState], available: int) -> str:
    if line.split:
        return f"{line.quantity} units billed, {available} left in the codes listed"
    whole = sum(states[c].pack_units or 0 for c in codes)
    return f"{line.quantity} units billed, the packs listed hold {whole}"


def undone_by_reversal(request: Mapping[str, Any], taken: Sequence[Consumption]) -> list[Consumption]:
    """What a settlement's reversal gives back, of what its sale took (``request``: the
    settlement as stored): see :meth:`Refund.gives_back`."""
    refund = Refund.of(request)
    return [t for t in taken if refund.gives_back(t.org, t.code)]


def settlement_flags(
    setl_id: str,
    at: datetime,
    lines: Sequence[Line],
    outcomes: Sequence[LineOutcome],
    org: Org,
    states: Mapping[str, CodeState],
    products: Mapping[str, Product],
    earlier: Mapping[str, list[Consumption]],
) -> list[NewFlag]:
    """The suspicions among the reasons, each with its evidence: this settlement, and
    the earlier sales (for a duplicate), the holder (for a diversion) or the items billed
    and packed (for a mismatch)."""
    flags = []
    for line, outcome in zip(lines, outcomes, strict=True):
        for reason in outcome.reasons:
            kind = FLAG_FOR_REASON.get(reason.reason)
            if kind is None or not reason.code:
                continue
            refs: dict[str, Any] = {"settlements": [setl_id]}
            if kind == "DUPLICATE":
                before = earlier.get(reason.code, [])
                refs["earlier_settlements"] = [e.setl_id for e in before if e.setl_id]
                refs["earlier_events"] = [str(e.event_id) for e in before if e.event_id]
            state = states.get(reason.code)
            if kind == "DIVERSION" and state is not None:
                refs["holder"] = state.custodian
                if state.destination:
                    refs["last_shipped_to"] = state.destination
            if kind == PRODUCT_MISMATCH:
                product = products.get(state.product_id or "") if state is not None else None
                refs.update(mismatch_refs(line.med_list_codg, product))
            flags.append(
                NewFlag(
                    kind=kind,
                    code=reason.code,
                    org=org.id,
                    region=org.region,
                    at=at,
                    detail=f"settlement {setl_id} line {outcome.line_no}: {reason.detail}",
                    refs=refs,
                    source=Evidence.settlement(setl_id),
                )
            )
    return flags


@dataclass(slots=True)
class Loaded:
    """What judging a claim needs, as read (with the code rows locked) by the use case."""

    org: Org
    states: Mapping[str, CodeState]  # the codes rows of the claim's codes
    products: Mapping[str, Product]  # the products of those codes
    exempt_codgs: set[str]  # catalogue items among the code-less lines that carry no code
    earlier: Mapping[str, list[Consumption]]  # unreversed sales of opened packs, oldest first
    # the products registered under each of ``exempt_codgs`` (``exempt_products``): a line
    # of one billed without codes counts toward their person limit
    item_products: Mapping[str, Sequence[Product]] = field(default_factory=dict)
    # this sale's takes that a return gave back (a dispense under its setl_id, returned
    # before the settlement came), read by the locked path only: the sale took those
    # packs once, and does not take them again
    given_back: Sequence[Consumption] = ()
    # for EXCESS_PURCHASE, only when an item billed has a person limit:
    psn_hash: bytes = b""  # the insured person, by keyed hash
    # the person's purchases of those items, reversed ones too, within the longest
    # limit's days of the claim, either side (:func:`in_window` counts them)
    purchases: Sequence[Purchase] = ()
    # the person's EXCESS_PURCHASE flags of those items that stand, raised within those
    # days (their evidence: :func:`excess_evidence`)
    excess_flagged: Sequence[Flagged] = ()
    # a claim dated before its packs' latest events (``late``): the events of the packs
    # and of every container they were ever in, and the settlements that took units of
    # them, to fold custody as it was at the sale; None otherwise
    history: Sequence[Fact] | None = None
    settled: Sequence[Fact] = ()
    # a late claim's packs that have stored dispenses or returns, for their sales to be
    # folded again in event time with this one (:func:`in_time`): those dispenses and
    # returns by pack, every recorded take of the packs (given back ones too), the
    # refunds and the standing settlements of the sales they name
    pack_sales: PackSales = field(default_factory=dict)
    takes: Sequence[Consumption] = ()
    refunded: Mapping[str, Refund] = field(default_factory=dict)
    standing: Mapping[str, frozenset[str]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Purchase:
    """The units of one catalogue item one insured person bought in one settlement."""

    med_list_codg: str
    setl_id: str
    org: str
    at: datetime
    units: int
    reversed: bool = False  # the settlement was reversed: its units no longer count


@dataclass(frozen=True, slots=True)
class Flagged:
    """A stored EXCESS_PURCHASE of one person and item that stands (any status but
    auto_cleared), and when it was raised (the time of the settlement that took the
    person past the limit)."""

    key: FlagKey
    at: datetime
    clearable: bool  # no person has taken it up: an automatic change may withdraw it

    @property
    def med_list_codg(self) -> str:
        """The item: what follows the first ``/`` of its evidence (either form of
        :meth:`Evidence.person`)."""
        return self.key[2].id.partition("/")[2]


EXCESS_PURCHASE = "EXCESS_PURCHASE"


def exempt_products(registered: Mapping[str, Sequence[Product]]) -> dict[str, Sequence[Product]]:
    """Of the products registered under each catalogue item billed without codes
    (``registered``), those of the items that carry no code: every product billed as the
    item is ``trace_exempt`` (one traced product of it means its packs are traced, so a
    line of it without a code is MISSING_CODES)."""
    return {codg: found for codg, found in registered.items() if found and all(p.trace_exempt for p in found)}


def item_limit(products: Iterable[Product]) -> PersonLimit | None:
    """The person limit of a catalogue item, from the products billed as it: the
    strictest of those that carry one (the fewest units, then the most days)."""
    found = [p.person_limit for p in products if p.person_limit]
    return min(found, key=lambda limit: (limit.units, -limit.days)) if found else None


def person_limits(
    claim: Claim,
    canonical: Mapping[str, str | None],
    states: Mapping[str, CodeState],
    products: Mapping[str, Product],
    item_products: Mapping[str, Sequence[Product]],
) -> dict[str, PersonLimit]:
    """The person limit of each billed catalogue item that has one (:func:`item_limit`):
    of the products billed as it, which a line with codes names by its packs, and a
    line without codes of an item that carries none (``item_products``, from
    :func:`exempt_products`) by the item."""
    limited: dict[str, list[Product]] = {}  # (nearly always empty: a plain loop, no more)
    for line in claim.lines:
        if line.codes:
            for raw in line.codes:
                state = states.get(canonical.get(raw) or "")
                product = products.get(state.product_id or "") if state else None
                if product and product.person_limit and product.med_list_codg == line.med_list_codg:
                    limited.setdefault(line.med_list_codg, []).append(product)
        else:
            for product in item_products.get(line.med_list_codg, ()):
                if product.person_limit and product.med_list_codg == line.med_list_codg:
                    limited.setdefault(line.med_list_codg, []).append(product)
    return {codg: limit for codg, found in limited.items() if (limit := item_limit(found)) is not None}


def in_window(purchases: Iterable[Purchase], med_list_codg: str, at: datetime, days: int) -> list[Purchase]:
    """The purchases of an item that count toward its person limit at ``at``: those not
    reversed within the limit's ``days`` up to it, ``(at - days, at]`` (a sliding
    window, ending at each sale), in the order given."""
    since = at - timedelta(days=days)
    return [
        p for p in purchases if p.med_list_codg == med_list_codg and not p.reversed and since < p.at <= at
    ]


def covered(at: datetime, flagged: Iterable[datetime], days: int) -> bool:
    """Is an excess at ``at`` one that a flag of the same person and item reports
    already: one raised less than the limit's ``days`` before it (its own window holds
    that flag's sale), or after it (a claim dated before that flag, whose window holds
    it)? One flag per window, not one per sale within it."""
    return any(abs(f - at) < timedelta(days=days) for f in flagged)


def excess_evidence(psn_hash: bytes, codgs: Iterable[str], purchases: Iterable[Purchase]) -> list[Evidence]:
    """The evidence the person's EXCESS_PURCHASE flags of the items ``codgs`` near
    ``purchases`` may rest on: each of those settlements (reversed ones too), as the one
    that took the person past the limit, and the person and item alone (the flags stored
    before each window had its own, :meth:`Evidence.person`)."""
    wanted = set(codgs)
    found = [Evidence.person(psn_hash, codg) for codg in sorted(wanted)]
    found += [
        Evidence.person(psn_hash, p.med_list_codg, p.setl_id) for p in purchases if p.med_list_codg in wanted
    ]
    return list(dict.fromkeys(found))


def item_code(lines: Iterable[Line], payable: Iterable[bool], codg: str) -> str:
    """The code an EXCESS_PURCHASE of the item ``codg`` names: the item's first code in
    the settlement's payable lines (canonical), or the item itself (as a
    STOCK_IMBALANCE does) when it was billed without codes."""
    for line, paid in zip(lines, payable, strict=True):
        if paid and line.med_list_codg == codg and line.codes and (code := canonical(line.codes[0])):
            return code
    return codg


def stored_item_code(request: Mapping[str, Any], response: Mapping[str, Any], codg: str) -> str:
    """:func:`item_code` of a stored settlement (its ``request`` and the answer it was
    given)."""
    paid = {line.get("line_no") for line in response.get("lines", []) if line.get("payable")}
    lines = [
        Line(
            line["line_no"],
            line["med_list_codg"],
            line["quantity"],
            bool(line.get("split")),
            tuple(line.get("codes", [])),
        )
        for line in request.get("lines", [])
    ]
    return item_code(lines, [line.line_no in paid for line in lines], codg)


def excess_flag(
    psn_hash: bytes,
    window: Sequence[Purchase],
    limit: PersonLimit,
    code: str,
    region: str | None,
    *,
    after_reversal: str | None = None,
) -> NewFlag:
    """The EXCESS_PURCHASE of one window of a person's purchases of an item, the last of
    ``window`` the settlement that took them past ``limit``: its evidence that window
    (:meth:`Evidence.person` of that settlement), its code :func:`item_code`.
    ``after_reversal``: raised when that settlement's reversal withdrew the flag that
    had held this one back (:func:`excess_after_reversal`)."""
    last = window[-1]
    codg = last.med_list_codg
    total = sum(p.units for p in window)
    orgs = sorted({p.org for p in window})
    detail = (
        f"one insured person bought {total} units of {codg} within {limit.days} days "
        f"at {len(orgs)} institution(s); a course of treatment needs at most {limit.units}"
    )
    refs: dict[str, Any] = {
        ITEMS: items(codg),
        "settlements": [p.setl_id for p in window],
        "orgs": orgs,
        "units": total,
        "person_limit": {"units": limit.units, "days": limit.days},
    }
    if after_reversal is not None:
        detail += f" (flagged when settlement {after_reversal} was reversed: its flag had held this back)"
        refs["after_reversal"] = after_reversal
    return NewFlag(
        kind=EXCESS_PURCHASE,
        code=code,
        org=last.org,
        region=region,
        at=last.at,
        detail=detail,
        refs=refs,
        source=Evidence.person(psn_hash, codg, last.setl_id),
    )


@dataclass(slots=True)
class Rejudged:
    """What a reversal changes in a person's EXCESS_PURCHASE flags."""

    withdrawn: list[FlagKey]  # flags that no longer hold
    # windows past the limit that only a withdrawn flag held back, each ending with the
    # settlement that took the person past the limit (flag each: :func:`excess_flag`)
    crossings: list[list[Purchase]]


def excess_after_reversal(
    at: datetime,
    limits: Mapping[str, PersonLimit],
    purchases: Sequence[Purchase],
    flagged: Sequence[Flagged],
) -> Rejudged:
    """A person's windows judged again once a sale of theirs dated ``at`` is reversed
    (``purchases``: theirs of the items with ``limits``, oldest first, the reversed
    sale's read reversed, within twice the limit's days before ``at`` and three times
    after; ``flagged``: their flags resting on those). A flag whose window holds the sale
    and whose units are now within the limit (:func:`in_window`) no longer holds: it is
    withdrawn, unless a person has taken it up (then it stands as they left it, and goes
    on holding back its window). A sale past the limit that a withdrawn flag held back
    (:func:`covered`), and that no flag standing covers now, is flagged, as its
    settlement would be now: one flag per window still."""
    out = Rejudged([], [])
    for codg, limit in limits.items():
        standing = [f for f in flagged if f.med_list_codg == codg]
        span = timedelta(days=limit.days)
        gone = [
            f
            for f in standing
            if f.clearable
            and f.at - span < at <= f.at
            and _units(purchases, codg, f.at, limit) <= limit.units
        ]
        if not gone:
            continue
        out.withdrawn += [f.key for f in gone]
        held = [f.at for f in standing if f not in gone]
        for p in purchases:
            if p.med_list_codg != codg or p.reversed or not covered(p.at, [f.at for f in gone], limit.days):
                continue
            if _units(purchases, codg, p.at, limit) <= limit.units or covered(p.at, held, limit.days):
                continue
            window = [q for q in in_window(purchases, codg, p.at, limit.days) if q.setl_id != p.setl_id]
            out.crossings.append([*window, p])
            held.append(p.at)
    return out


def _units(purchases: Iterable[Purchase], codg: str, at: datetime, limit: PersonLimit) -> int:
    return sum(p.units for p in in_window(purchases, codg, at, limit.days))


def _excess(
    claim: Claim,
    outcomes: Sequence[LineOutcome],
    limits: Mapping[str, PersonLimit],
    loaded: Loaded,
) -> tuple[list[Purchase], list[NewFlag]]:
    """What the payable lines add to the person's purchases of items with a limit (a
    line without codes of an item that carries none too: its quantity), and an
    EXCESS_PURCHASE flag where the units bought within the limit's days (up to and
    including this settlement, :func:`in_window`) pass it: one flag per person, item
    and window, so none while a flag of the person's item is less than the limit's days
    away (:func:`covered`); each window's flag rests on the settlement that took the
    person past the limit, so a later window raises its own. The flag names
    :func:`item_code`. Payability does not change."""
    bought: dict[str, int] = {}
    for line, outcome in zip(claim.lines, outcomes, strict=True):
        if outcome.payable and line.med_list_codg in limits:
            # the units billed: a dispense of the same sale may have drawn them already
            bought[line.med_list_codg] = bought.get(line.med_list_codg, 0) + line.quantity
    purchases, flags = [], []
    for codg, units in bought.items():
        limit = limits[codg]
        purchase = Purchase(codg, claim.setl_id, claim.org, claim.at, units)
        purchases.append(purchase)
        window = [*in_window(loaded.purchases, codg, claim.at, limit.days), purchase]
        flagged = [f.at for f in loaded.excess_flagged if f.med_list_codg == codg]
        if sum(p.units for p in window) <= limit.units or covered(claim.at, flagged, limit.days):
            continue
        code = item_code(claim.lines, [o.payable for o in outcomes], codg)
        flags.append(excess_flag(loaded.psn_hash, window, limit, code, loaded.org.region))
    return purchases, flags


@dataclass(slots=True)
class Decision:
    """The judgement of a claim and what settling it writes."""

    outcomes: list[LineOutcome]
    consumptions: list[Consumption]  # one per pack the payable lines draw from
    changed: list[CodeState]  # packs whose units_left went down
    flags: list[NewFlag]
    purchases: list[Purchase]  # of items with a person limit, by the payable lines
    # this sale's takes that a patient's return gave back before the settlement came,
    # taken again (``taken_back``): they stand, and the return waits for the refund
    reopened: list[Consumption] = field(default_factory=list)
    # a late claim's packs' recorded takes brought to their sales in event time
    # (:func:`in_time`): erased (before ``consumptions`` are recorded) and given back
    erased: list[Consumption] = field(default_factory=list)
    given_back: list[tuple[Consumption, UUID]] = field(default_factory=list)
    # stored dispenses that the sales in event time find to be resales: raised, not
    # named in the answer (they are not this claim's)
    rejudged: list[NewFlag] = field(default_factory=list)


def written(loaded: Loaded, decision: Decision) -> dict[str, CodeState]:
    """The rows settling the claim writes: every pack it was judged on, changed or not,
    each as the sale leaves it (``decision.changed``: the packs it drew from). Each is
    written back with its version advanced, on either path: a pack's version is what a
    writer that read the pack without a lock checks before its write, and a settlement
    may store about a pack what is not in its row, a flag (a DIVERSION on a refused line,
    which a custody event dated before the sale explains). Written only where units moved,
    a ship read before that flag was stored and written after it went through as if it
    were not there, and the flag stood pending for good (found by a probe)."""
    return {**loaded.states, **{s.code: s for s in decision.changed}}


def canonical(raw: str) -> str | None:
    """A code as sent in its canonical form (None: not a code)."""
    parsed = try_parse_code(raw)
    return parsed.canonical if parsed is not None else None


def canonical_codes(claim: Claim) -> dict[str, str | None]:
    """Each code as sent → its canonical form (None: not a code)."""
    return {raw: canonical(raw) for line in claim.lines for raw in line.codes}


def opened(states: Mapping[str, CodeState]) -> list[str]:
    """Packs that may have an open sale: a pack with all its units has none (so the use
    case skips the look-up of earlier sales for untouched packs)."""
    return [code for code, s in states.items() if s.units_left != s.pack_units]


def _with_given_back(
    earlier: Mapping[str, list[Consumption]], given_back: Sequence[Consumption]
) -> Mapping[str, list[Consumption]]:
    """The sales the lines are judged against: a take of this sale that a return gave
    back counts as the sale's own, so the line bills it (as when the return comes after
    the settlement) and takes nothing again."""
    if not given_back:
        return earlier
    merged = {code: list(sales) for code, sales in earlier.items()}
    for take in given_back:
        merged.setdefault(take.code, []).append(take)
    return merged


def taken_back(
    outcomes: Sequence[LineOutcome], given_back: Sequence[Consumption], states: Mapping[str, CodeState]
) -> list[Consumption]:
    """Of this sale's takes that a patient's return gave back before its settlement came
    (a dispense under its ``setl_id``, then the return), those a payable line bills and
    whose pack still holds the units: the settlement pays for them, and a return does
    not give back what a standing settlement pays for (``core.sales.paid``), so they
    stand again and the return waits for the refund, as had the settlement come before
    the return. A pack sold again since keeps that sale: the settlement bills the units
    and takes nothing."""
    billed = {code for o in outcomes if o.payable for code, _ in o.credited}
    return [
        t
        for t in given_back
        if t.reversed_by is not None
        and t.code in billed
        and t.code in states
        and (states[t.code].units_left or 0) >= t.units
    ]


def resold_meanwhile(
    claim: Claim,
    outcomes: Sequence[LineOutcome],
    given_back: Sequence[Consumption],
    states: Mapping[str, CodeState],
    earlier: Mapping[str, list[Consumption]],
    org: Org,
) -> list[NewFlag]:
    """This sale's takes that a patient's return gave back before its settlement came,
    which a payable line bills but the pack no longer holds (``taken_back`` could not
    take them back): the pack was sold again after the return, and in event time that
    later sale is the resale (the return would have waited for this settlement's
    refund). Its answer stands; a DUPLICATE names it for the investigator."""
    billed = {code for o in outcomes if o.payable for code, _ in o.credited}
    flags = []
    for t in given_back:
        if t.reversed_by is None or t.code not in billed or (states[t.code].units_left or 0) >= t.units:
            continue
        for later in [e for e in earlier.get(t.code, []) if e.at >= t.at and e.sale != t.sale]:
            # a settlement's own take has no event: its evidence is the settlement, as
            # is a dispense's under a setl_id (one sale: ``Evidence.sale``)
            event_id = later.event_id
            source = (
                Evidence.sale(event_id, later.setl_id)
                if event_id
                else Evidence.settlement(later.setl_id or "")
            )
            flags.append(
                NewFlag(
                    kind="DUPLICATE",
                    code=t.code,
                    org=later.org,
                    region=org.region,
                    at=later.at,
                    detail=(
                        f"{later.describe()} sold the pack again after a patient's return of the "
                        f"sale that settlement {claim.setl_id} paid for (not refunded)"
                    ),
                    refs={
                        "settlements": [later.setl_id] if later.setl_id else [],
                        "events": [str(later.event_id)] if later.event_id else [],
                        "earlier_settlements": [claim.setl_id],
                        "returned_by": [str(t.reversed_by)],
                    },
                    source=source,
                )
            )
    return flags


def decide(claim: Claim, canonical: Mapping[str, str | None], loaded: Loaded) -> Decision:
    """Judge every line; the payable lines draw their units (``loaded.states`` is updated
    in place), merged into one consumption per pack; the suspicions become flags."""
    # a late claim is judged on its packs as they were at the sale (their units as now)
    judged = at_sale(claim, loaded) if loaded.history is not None else loaded.states
    outcomes = judge(
        setl_id=claim.setl_id,
        lines=claim.lines,
        canonical=canonical,
        states=judged,
        products=loaded.products,
        exempt_codgs=loaded.exempt_codgs,
        org=loaded.org,
        on=local_date(claim.at),
        earlier=_with_given_back(loaded.earlier, loaded.given_back),
        shown_to=claim.org if claim.for_org else None,
    )
    drawn: dict[str, int] = {}  # two lines may draw from one pack: one consumption
    for outcome in outcomes:
        if outcome.payable:
            for code, units in outcome.takes:
                drawn[code] = drawn.get(code, 0) + units
    sale = Sale.of_settlement(claim.setl_id)
    consumptions = [
        Consumption(code, sale, claim.setl_id, None, claim.org, claim.at, units)
        for code, units in drawn.items()
    ]
    changed = move_units(loaded.states, [(code, -units) for code, units in drawn.items()])
    reopened = taken_back(outcomes, loaded.given_back, loaded.states)
    resold = resold_meanwhile(claim, outcomes, loaded.given_back, loaded.states, loaded.earlier, loaded.org)
    changed |= move_units(loaded.states, [(t.code, -t.units) for t in reopened])
    for code in drawn:  # sold, the pack leaves its case (as a dispense takes it out), and
        state = loaded.states[code]  # a custody event dated before the sale replays the history
        state.parent = None
        state.sold(claim.at)
    flags = settlement_flags(
        claim.setl_id, claim.at, claim.lines, outcomes, loaded.org, judged, loaded.products, loaded.earlier
    )
    limits = person_limits(claim, canonical, loaded.states, loaded.products, loaded.item_products)
    purchases, excess = _excess(claim, outcomes, limits, loaded) if limits else ([], [])
    credited = {code for o in outcomes if o.payable for code, _ in o.credited}
    folded = in_time(claim.setl_id, consumptions, credited, loaded) if loaded.pack_sales else InTime()
    for code, left in folded.left.items():
        loaded.states[code].units_left = left
    changed |= folded.left.keys()
    consumptions = [c for c in consumptions if c.code not in folded.left] + folded.restated.added
    reopened = [t for t in reopened if t.code not in folded.left]  # the fold reopens what stands
    after = sold_in_time(claim, sorted(drawn), loaded) if loaded.history is not None and drawn else {}
    return Decision(
        outcomes,
        consumptions,
        [after.get(c) or loaded.states[c] for c in sorted(changed)],
        flags + excess + resold,
        purchases,
        [replace(t, reversed=False, reversed_by=None) for t in reopened] + folded.restated.reopened,
        folded.restated.erased,
        folded.restated.given_back,
        folded.rejudged,
    )


@dataclass(slots=True)
class InTime:
    """A late claim's packs whose sales were folded again with it (:func:`in_time`)."""

    restated: Restated = field(default_factory=Restated)  # their takes, as recorded now
    left: dict[str, int] = field(default_factory=dict)  # the units each has left
    rejudged: list[NewFlag] = field(default_factory=list)  # stored dispenses found resales


def in_time(setl_id: str, consumptions: Sequence[Consumption], credited: Set[str], loaded: Loaded) -> InTime:
    """For a late claim: the sales of each pack it takes units of, folded again in event
    time with its take among them (``core.sales.refold``, as a late dispense folds
    them), and of each pack its sale took by a dispense under its ``setl_id``
    (``credited``), which it pays for. A patient's return dated after the sale that was
    matched to an older sale, having arrived before this claim, meets this sale instead:
    the insurer pays for it, so the return waits for its refund, and the older sale
    stands again; the sales after it draw from what is left. Found by model-based
    probes: the pack kept the units of the older sale, and a later claim of them was
    paid.

    The claim's answer stands (it is judged on the pack as it was at the sale, with its
    units as now). A pack whose fold finds fewer units for this sale than it takes, or
    whose sales hold what the fold does not model (``core.sales.foldable``), keeps its
    takes as recorded. A stored dispense the fold finds to be a resale is flagged
    DUPLICATE; none stops being one: a sale added in event time leaves every later sale
    as many units or fewer."""
    out = InTime()
    recorded: dict[str, list[Consumption]] = {}
    for t in loaded.takes:
        recorded.setdefault(t.code, []).append(t)
    taking = {c.code: c for c in consumptions}
    standing = {**loaded.standing, setl_id: frozenset(taking) | frozenset(credited)}  # it pays for them
    for code in sorted(taking.keys() | credited):
        dispenses, returns = loaded.pack_sales.get(code, ([], []))
        stored = recorded.get(code, [])
        pack_units = loaded.states[code].pack_units
        if (
            pack_units is None
            or not (dispenses or returns)
            or not foldable(dispenses, returns, stored, loaded.refunded)
        ):
            continue
        settled = [t for t in stored if t.event_id is None]
        settling = [taking[code]] if code in taking else []
        fold = refold(code, pack_units, dispenses, settled, returns, loaded.refunded, standing, settling)
        if fold is None:
            continue
        out.restated.extend(restate(fold, stored))
        out.left[code] = fold.units_left
        out.rejudged += resales_found(fold, code, dispenses)
    return out


def late(at: datetime, org: str, states: Mapping[str, CodeState]) -> bool:
    """Did events dated after the sale reach the service before its claim, or events of
    its instant that fold after it (``custody.fold_order``: the seller's own ship onward
    of the case holding a pack it sold, a destroy)? Its packs are then judged as they
    were at the sale, from their history (:func:`at_sale`). Of its instant, only a pack
    the seller does not hold now, or one destroyed, is read so: a pack it holds, as
    it was at the sale, is judged the same either way (a claim after its own dispense
    of that instant, the common case, reads no history)."""
    return any(
        s.last_at > at or (s.last_at == at and (not holds(s, org) or s.state == DESTROYED))
        for s in states.values()
    )


def at_sale(claim: Claim, loaded: Loaded) -> dict[str, CodeState]:
    """For a late claim: its packs as they were at the sale, folded from their history
    up to the claim's time (without the records an NHSA 3507 deleted, as every replay):
    who held each, whether it was commissioned, destroyed, in which case; their units,
    pack size and recall as now. Truth is by event time, so the claim is answered as
    it would have been had it come before the later events: a pack the seller held then
    is paid wherever it went since, and one it did not hold then is not, though it
    holds it now (the same facts in time order refuse it)."""
    assert loaded.history is not None
    before = [f for f in counted(loaded.history) if f.at <= claim.at]
    settled = [f for f in loaded.settled if f.at <= claim.at]
    # of the sale's own instant, only what the fold applies before the sale: not the
    # seller's own ship onward of that instant (custody.fold_order)
    sale = Fact.settlement(claim.setl_id, claim.at, claim.org, *sorted(loaded.states))
    world = replay(folded_before([*before, *settled], sale), keep=loaded.states, pack_units={})
    return {code: world.get(code, claim.at) for code in loaded.states}


def sold_in_time(claim: Claim, codes: Sequence[str], loaded: Loaded) -> dict[str, CodeState]:
    """For a late claim: the packs it took units of, as their whole history folds with
    this sale in it (``loaded.states`` hold the units it left): sold at the sale, each
    left its case then, and the case's later moves did not carry it."""
    assert loaded.history is not None
    sold = [Fact.settlement(claim.setl_id, claim.at, claim.org, code, sold=True) for code in codes]
    world = replay_counted(
        loaded.history, [*loaded.settled, *sold], keep=loaded.states, pack_units={}, products={}, orgs={}
    )
    return {code: world.states[code] for code in codes}


def answer(setl_id: str, outcomes: Sequence[LineOutcome], flags: Sequence[FlagRef]) -> dict[str, Any]:
    """The answer to the settlement engine (stored with the settlement, and returned
    again for a replay of the same body)."""
    return {
        "setl_id": setl_id,
        "decision": decision(outcomes),
        "lines": [
            {
                "line_no": o.line_no,
                "payable": o.payable,
                "reasons": [
                    {"code": r.code or None, "reason": r.reason, "detail": r.detail} for r in o.reasons
                ],
                "units": sum(u for _, u in (*o.takes, *o.credited)) + o.uncoded if o.payable else 0,
            }
            for o in outcomes
        ],
        "flags": [{"flag_id": str(f.flag_id), "kind": f.kind, "code": f.code} for f in flags],
    }
