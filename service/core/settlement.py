"""Settlement by code (依码结算): which claim lines the fund pays, line by line.

Pure rules over plain values. The reason names are API.md's reason table; the code-level
rows come from :func:`service.core.rules.code_reasons`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import msgspec

from service.core.custody import CodeState
from service.core.rules import (
    ALREADY_SETTLED,
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
)

ACCEPTED, PARTIAL, REJECTED = "accepted", "partial", "rejected"

# Which reasons are also a suspicion for investigators, and under which flag kind.
FLAG_FOR_REASON = {
    ALREADY_SETTLED: "DUPLICATE",
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


def person_hash(secret: bytes, psn_no: str) -> bytes:
    """HMAC-SHA256 of an insured person number: links one person's settlements without
    storing the number."""
    return hmac.new(secret, psn_no.encode(), hashlib.sha256).digest()


def fingerprint(secret: bytes, claim: Claim) -> bytes:
    """What tells a replay of a settlement from a changed body: an HMAC of the whole
    claim (the same claim always gives the same bytes; the secret keeps the person
    number in it from being guessed)."""
    return hmac.new(secret, b"settlement\x00" + msgspec.json.encode(claim), hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class EarlierSale:
    """An unreversed consumption of a code: who took its units, and how many."""

    sale_key: str
    setl_id: str | None
    event_id: str | None
    units: int

    def describe(self) -> str:
        if self.setl_id:
            return f"settlement {self.setl_id}"
        return f"dispense event {self.event_id}"


@dataclass(slots=True)
class LineOutcome:
    line_no: int
    payable: bool
    reasons: list[Reason] = field(default_factory=list)
    takes: list[tuple[str, int]] = field(default_factory=list)  # (canonical code, units)


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
    products: Mapping[str, Mapping[str, Any]],
    exempt_codgs: set[str],
    org: Mapping[str, Any],
    on: date,
    earlier: Mapping[str, list[EarlierSale]],
) -> list[LineOutcome]:
    """Judge each line in order. Units taken by a payable line are not available to the
    lines after it; a line that is not payable takes nothing. Units that this same sale
    already took (a dispense event with this setl_id) count as taken by this line."""
    left = {code: s.units_left or 0 for code, s in states.items()}
    outcomes = []
    for line in lines:
        outcome = _judge_line(
            line, setl_id, canonical, states, products, exempt_codgs, org, on, earlier, left
        )
        if outcome.payable:
            for code, units in outcome.takes:
                left[code] -= units
        outcomes.append(outcome)
    return outcomes


def _judge_line(
    line: Line,
    setl_id: str,
    canonical: Mapping[str, str | None],
    states: Mapping[str, CodeState],
    products: Mapping[str, Mapping[str, Any]],
    exempt_codgs: set[str],
    org: Mapping[str, Any],
    on: date,
    earlier: Mapping[str, list[EarlierSale]],
    left: Mapping[str, int],
) -> LineOutcome:
    out = LineOutcome(line.line_no, payable=False)
    if not line.codes:
        if line.med_list_codg in exempt_codgs:
            out.payable = True
        else:
            out.reasons.append(Reason("", MISSING_CODES, "a traced product is billed without its codes"))
        return out
    codes: list[str] = []
    seen: set[str] = set()
    for raw in line.codes:
        code = canonical.get(raw)
        if code is None:
            out.reasons.append(Reason(raw, INVALID_CODE, "not a CN20 code, GS1 element string or SSCC"))
            continue
        if code in seen:
            out.reasons.append(Reason(code, QUANTITY_MISMATCH, "the code is listed twice"))
            continue
        seen.add(code)
        codes.append(code)
        state = states.get(code)
        product = products.get(state.product_id) if state and state.product_id else None
        own = [e for e in earlier.get(code, []) if e.sale_key == setl_id]
        for reason in code_reasons(code, state, product, org, on):
            if reason.reason == ALREADY_SETTLED:
                continue  # judged below, against what this settlement leaves
            out.reasons.append(reason)
        if product is not None and product["med_list_codg"] != line.med_list_codg:
            out.reasons.append(
                Reason(code, PRODUCT_MISMATCH, f"the pack is {product['med_list_codg']} ({product['name']})")
            )
        if state is not None and state.commissioned and not own:
            _check_units(out, line, code, state, left, earlier.get(code, []))
    if out.reasons:
        return out
    takes = _draw(line, codes, states, left, earlier, setl_id)
    if takes is None:
        available = sum(left.get(c, 0) for c in codes)
        out.reasons.append(Reason("", QUANTITY_MISMATCH, _quantity_detail(line, codes, states, available)))
        return out
    out.takes = takes
    out.payable = True
    return out


def _check_units(
    out: LineOutcome,
    line: Line,
    code: str,
    state: CodeState,
    left: Mapping[str, int],
    earlier: list[EarlierSale],
) -> None:
    units = left.get(code, 0)
    whole = state.pack_units or 0
    if units > 0 and (line.split or units == whole):
        return
    by = ", ".join(e.describe() for e in earlier) or "an earlier line of this settlement"
    if units <= 0:
        detail = f"all {whole} units were consumed by {by}"
    else:
        detail = (
            f"{whole - units} of {whole} units were consumed by {by}; a whole-pack line needs a full pack"
        )
    out.reasons.append(Reason(code, ALREADY_SETTLED, detail))


def _draw(
    line: Line,
    codes: list[str],
    states: Mapping[str, CodeState],
    left: Mapping[str, int],
    earlier: Mapping[str, list[EarlierSale]],
    setl_id: str,
) -> list[tuple[str, int]] | None:
    """The units the line takes, or None when its quantity does not fit its codes."""
    fresh = [c for c in codes if not any(e.sale_key == setl_id for e in earlier.get(c, []))]
    already = sum(e.units for c in codes for e in earlier.get(c, []) if e.sale_key == setl_id)
    wanted = line.quantity - already
    if not line.split:
        if sum(states[c].pack_units or 0 for c in codes) != line.quantity:
            return None
        return [(c, left[c]) for c in fresh]
    takes: list[tuple[str, int]] = []
    for code in fresh:
        if wanted <= 0:
            break
        units = min(left.get(code, 0), wanted)
        if units > 0:
            takes.append((code, units))
            wanted -= units
    return takes if wanted <= 0 else None


def _quantity_detail(line: Line, codes: list[str], states: Mapping[str, CodeState], available: int) -> str:
    if line.split:
        return f"{line.quantity} units billed, {available} left in the codes listed"
    whole = sum(states[c].pack_units or 0 for c in codes)
    return f"{line.quantity} units billed, the packs listed hold {whole}"
