"""Whether settling one code at one organisation now would be payable (the code-level
rows of API.md's reason table). Settlement adds the line-level rules on top."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

from service.core.codes import LABEL_MISMATCH, NOT_A_CODE, CodeKind, ParsedCode, label_disagrees
from service.core.custody import DESTROYED, CodeState, holds, holds_packs, none_left, whereabouts
from service.core.registry import Org, Product
from service.core.sales import Consumption, named

MISSING_CODES = "MISSING_CODES"
QUANTITY_MISMATCH = "QUANTITY_MISMATCH"
INVALID_CODE = "INVALID_CODE"
UNKNOWN_CODE = "UNKNOWN_CODE"
PRODUCT_MISMATCH = "PRODUCT_MISMATCH"
NOT_IN_CUSTODY = "NOT_IN_CUSTODY"
ALREADY_SETTLED = "ALREADY_SETTLED"
EXPIRED = "EXPIRED"
RECALLED = "RECALLED"
DESTROYED_REASON = "DESTROYED"
OUT_OF_REGION = "OUT_OF_REGION"
# verify only: the organisation asked about does not dispense (a settlement naming it is a 400)
NOT_DISPENSING = "NOT_DISPENSING"


# Expiry dates are calendar dates in China, which keeps one time zone (UTC+8, no DST):
# a pack that expires on 2 March may not be sold at 07:00 on 3 March Beijing time, even
# though that is still 2 March in UTC.
CHINA = timezone(timedelta(hours=8), "CST")


def local_date(moment: datetime) -> date:
    return moment.astimezone(CHINA).date()


def expired(expiry: date | None, today: date) -> bool:
    """Is a pack past its expiry date on ``today`` (China's day)? Its last day is its own."""
    return expiry is not None and expiry < today


@dataclass(frozen=True, slots=True)
class Reason:
    code: str
    reason: str
    detail: str


def used_up(states: Mapping[str, CodeState]) -> list[str]:
    """The packs with no units left, in code order: the only ones whose ALREADY_SETTLED
    names the sales that took them (so verify looks those sales up for these alone)."""
    return sorted(code for code, s in states.items() if none_left(s.units_left))


def consumed(whole: int, left: int, by: str) -> str:
    """ALREADY_SETTLED's detail: how many of a pack's ``whole`` units were taken (``left``
    are left), and by what (``by``: the sales, as ``core.sales.named`` names them)."""
    if left <= 0:
        return f"all {whole} units were consumed by {by}"
    return f"{whole - left} of {whole} units were consumed by {by}"


def not_dispensing(code: str, org: Org) -> list[Reason]:
    """NOT_DISPENSING at an organisation that does not dispense to patients, the first of
    any scan's reasons there, a code's or a scan that is none ([] elsewhere)."""
    if org.dispenses:
        return []
    detail = f"{org.id} does not dispense to patients (a hospital or pharmacy does)"
    return [Reason(code, NOT_DISPENSING, detail)]


def unreadable_reasons(raw: str, org: Org) -> list[Reason]:
    """Why a scan that is no code (no CN20 code, GS1 element string or SSCC) is not
    payable at ``org``: INVALID_CODE, after NOT_DISPENSING where that is said first."""
    invalid = Reason(raw, INVALID_CODE, NOT_A_CODE)
    return [*not_dispensing(raw, org), invalid]


def code_reasons(
    code: str,
    state: CodeState | None,
    product: Product | None,
    org: Org,
    today: date,
    label: ParsedCode | None = None,
    sold: Sequence[Consumption] | None = None,
    shown_to: str | None = None,
) -> list[Reason]:
    """Why settling ``code`` at ``org`` on ``today`` would not be payable ([] if it would).
    At an organisation that does not dispense to patients nothing is payable (verify says
    so first, then what it would say of the pack elsewhere). ``label``: the code as
    scanned, when its label carries a lot or expiry, to be compared with the pack's.
    ``sold``: the open sales of a used-up pack (:func:`used_up`), which ALREADY_SETTLED
    names (:func:`consumed`); to an organisation (``shown_to``: its own verify, as its
    own precheck) another organisation's sale is not named (``Consumption.describe``)."""
    reasons = not_dispensing(code, org)
    # the level of the pack's product, once the pack is known (commissioned, its product too)
    level = product.level if state is not None and state.commissioned and product is not None else None
    if state is not None and holds_packs(state.kind, level):
        # a logistic unit packed here, a case or a pallet: known, but it holds no units of
        # its own, and each pack is sold and paid once, as itself: the container's own
        # code paid too would pay its packs twice (no flag)
        what = "a logistic unit (SSCC)" if state.kind == CodeKind.SSCC.value else f"a {level} of packs"
        return [*reasons, Reason(code, QUANTITY_MISMATCH, f"{what}, not a pack: bill the packs in it")]
    if state is None or not state.commissioned or product is None:
        return [*reasons, Reason(code, UNKNOWN_CODE, "this code was never commissioned")]
    if label is not None and (said := label_disagrees(label, state.lot, state.expiry)) is not None:
        reasons.append(Reason(code, LABEL_MISMATCH, f"{said}: not the pack this code was made for"))
    if state.state == DESTROYED:
        reasons.append(Reason(code, DESTROYED_REASON, "the pack was destroyed"))
    if state.recalled:
        reasons.append(Reason(code, RECALLED, f"lot {state.lot} is recalled"))
    if state.expiry is not None and expired(state.expiry, today):
        reasons.append(Reason(code, EXPIRED, f"expired on {state.expiry.isoformat()}"))
    if none_left(state.units_left):
        if sold:
            detail = consumed(state.pack_units or 0, state.units_left, named(sold, shown_to))
        else:  # not looked up (a settlement names them itself), or none found open
            detail = "no units are left in this pack"
        reasons.append(Reason(code, ALREADY_SETTLED, detail))
    if not holds(state, org.id):
        reasons.append(Reason(code, NOT_IN_CUSTODY, f"the pack is {whereabouts(state)}"))
    if not product.sold_in(org.region):
        reasons.append(Reason(code, OUT_OF_REGION, f"may not be sold in region {org.region}"))
    return reasons
