"""Which suspicions become flags, and the evidence each carries (API.md, "Flags").

The custody suspicions (UNKNOWN_CODE, DIVERSION) are found by the fold in
``core/custody.py`` at each event's time; this module turns them, and what dispenses,
commissions and settlements reveal, into flags with their evidence. One flag per
suspicion and piece of evidence: ``dedup_key`` names both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from service.core.custody import CodeState, Suspicion
from service.core.events import COMMISSION_CONFLICT, Incoming, Rejection
from service.core.rules import in_region, local_date
from service.core.settlement import FLAG_FOR_REASON, EarlierSale, LineOutcome


@dataclass(frozen=True, slots=True)
class NewFlag:
    kind: str
    code: str
    org: str | None
    region: str | None  # None: taken from the organisation
    at: datetime
    detail: str
    refs: dict[str, Any]
    dedup_key: str


def dispense_flags(
    event: Incoming,
    codes: list[str],
    states: Mapping[str, CodeState],
    products: Mapping[str, Mapping[str, Any]],
    orgs: Mapping[str, Mapping[str, Any]],
    earlier: list[dict[str, Any]],
) -> list[NewFlag]:
    """What a dispense of these packs (their state before it) is suspicious of: a
    consumed pack sold again (回流药), expired, recalled or out-of-region stock."""
    out = []
    org = orgs[event.org]

    def flag(kind: str, code: str, detail: str, **refs: Any) -> None:
        out.append(
            NewFlag(
                kind=kind,
                code=code,
                org=event.org,
                region=org["region"],
                at=event.at,
                detail=f"dispense by {event.org}: {detail}",
                refs={"events": [str(event.event_id)], **refs},
                dedup_key=f"{kind}:{code}:event:{event.event_id}",
            )
        )

    for code in codes:
        state = states[code]
        if not state.commissioned:
            continue  # the fold already suspects an unknown code
        if state.units_left is not None and state.units_left <= 0:
            before = [e for e in earlier if e["code"] == code]
            flag(
                "DUPLICATE",
                code,
                "the pack was already consumed",
                earlier_settlements=[e["setl_id"] for e in before if e["setl_id"]],
                earlier_events=[str(e["event_id"]) for e in before if e["event_id"]],
            )
        if state.expiry is not None and state.expiry < local_date(event.at):
            flag("EXPIRED", code, f"expired on {state.expiry.isoformat()}")
        if state.recalled:
            flag("RECALLED", code, f"lot {state.lot} is recalled")
        product = products.get(state.product_id or "")
        if product is not None and not in_region(list(product["regions"]), org["region"]):
            flag("OUT_OF_REGION", code, f"may not be sold in region {org['region']}")
    return out


def suspicion_flag(s: Suspicion) -> NewFlag:
    """A custody suspicion found by the fold, as a flag with its evidence."""
    if s.fact.type == "settle":
        refs: dict[str, Any] = {"settlements": [s.fact.setl_id]}
    else:
        refs = {"events": [str(s.fact.event_id)]}
    if s.holder:
        refs["holder"] = s.holder
    if s.shipped_to:
        refs["last_shipped_to"] = s.shipped_to
    return NewFlag(
        kind=s.kind,
        code=s.code,
        org=s.fact.org,
        region=None,
        at=s.fact.at,
        detail=s.detail,
        refs=refs,
        dedup_key=s.key,
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
                dedup_key=f"{COMMISSION_CONFLICT}:{r.code}:event:{r.event_id}",
            )
        )
    return out


def settlement_flags(
    setl_id: str,
    at: datetime,
    outcomes: list[LineOutcome],
    org: Mapping[str, Any],
    states: Mapping[str, CodeState],
    earlier: Mapping[str, list[EarlierSale]],
) -> list[NewFlag]:
    """The suspicions among the reasons, each with its evidence: this settlement, and
    the earlier sales (for a duplicate) or the holder (for a diversion)."""
    flags = []
    for outcome in outcomes:
        for reason in outcome.reasons:
            kind = FLAG_FOR_REASON.get(reason.reason)
            if kind is None or not reason.code:
                continue
            refs: dict[str, Any] = {"settlements": [setl_id]}
            if kind == "DUPLICATE":
                before = earlier.get(reason.code, [])
                refs["earlier_settlements"] = [e.setl_id for e in before if e.setl_id]
                refs["earlier_events"] = [e.event_id for e in before if e.event_id]
            state = states.get(reason.code)
            if kind == "DIVERSION" and state is not None:
                refs["holder"] = state.custodian
                if state.destination:
                    refs["last_shipped_to"] = state.destination
            flags.append(
                NewFlag(
                    kind=kind,
                    code=reason.code,
                    org=org["id"],
                    region=org["region"],
                    at=at,
                    detail=f"settlement {setl_id} line {outcome.line_no}: {reason.detail}",
                    refs=refs,
                    dedup_key=f"{kind}:{reason.code}:setl:{setl_id}",
                )
            )
    return flags


def sale_key(event: Incoming) -> str:
    """A sale is its settlement when it has one (a dispense and a settlement with the
    same setl_id are one sale), else the dispense event."""
    return event.setl_id if event.setl_id else f"event:{event.event_id}"
