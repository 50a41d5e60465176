"""Reading codes: point-of-care verification and investigators' history."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg

from service.core.codes import ParsedCode, try_parse_code
from service.core.custody import CodeState, Fact, as_logged, display_state, product_of, undone_by_deletions
from service.core.registry import Org, Product
from service.core.rules import code_reasons, local_date, unreadable_reasons, used_up
from service.core.sales import Consumption
from service.store import codes as code_store
from service.store import events as event_store
from service.store import flags as flag_store
from service.store import registry
from service.store import sales as sale_store
from service.store import settlements as setl_store
from service.store.conn import Conn
from service.usecases.errors import Invalid
from service.usecases.flags import shown


def _answer(
    raw: str,
    parsed: ParsedCode | None,
    state: CodeState | None,
    product: Product | None,
    org: Org,
    now: datetime,
    sold: Sequence[Consumption] = (),
    shown_to: str | None = None,
) -> dict[str, Any]:
    canonical = parsed.canonical if parsed is not None else None
    if parsed is None:
        reasons = unreadable_reasons(raw, org)
    else:
        today = local_date(now)
        reasons = code_reasons(
            parsed.canonical, state, product, org, today, label=parsed, sold=sold, shown_to=shown_to
        )
    known = state is not None and state.commissioned
    return {
        "code": canonical or raw,
        "known": known,
        "product_id": state.product_id if state else None,
        "med_list_codg": product.med_list_codg if product else None,
        "name": product.name if product else None,
        "lot": state.lot if state else None,
        "expiry": state.expiry if state else None,
        "state": display_state(state) if state else None,
        "custodian": state.custodian if state else None,
        "units_left": state.units_left if state else None,
        "dispensable": not reasons,
        "reasons": [{"code": r.code, "reason": r.reason, "detail": r.detail} for r in reasons],
    }


async def verify_at(
    pool: asyncpg.Pool, raws: Sequence[str], org_id: str, *, for_org: bool = False
) -> list[dict[str, Any]]:
    """:func:`verify` at the organisation ``org_id``, on one connection (organisation and
    product rows are cached). Raises Invalid (``org``) for an unknown organisation.
    ``for_org``: answered to that organisation's own key, which reads only its own sales
    (as its precheck does: ``Claim.for_org``)."""
    async with pool.acquire() as conn:
        org = await registry.get_org(conn, org_id)
        if org is None:
            raise Invalid("org", f"unknown organisation {org_id}")
        return await verify(conn, raws, org, shown_to=org.id if for_org else None)


async def verify(
    conn: Conn, raws: Sequence[str], org: Org, *, shown_to: str | None = None
) -> list[dict[str, Any]]:
    """One answer per code, in order: would settling it at ``org`` now be payable? A used-up
    pack's ALREADY_SETTLED names the sales that took it (``core.rules.code_reasons``; to
    ``shown_to``, only its own): one more read, for those packs only, and none when no
    pack asked about is used up."""
    scanned = [try_parse_code(raw) for raw in raws]
    wanted = [p.canonical for p in scanned if p is not None]
    states = await code_store.read(conn, wanted) if wanted else {}
    product_ids = {s.product_id for s in states.values() if s.product_id}
    products = await registry.get_products(conn, sorted(product_ids)) if product_ids else {}
    used = used_up(states)
    sold = await sale_store.open_by_code(conn, used) if used else {}
    now = datetime.now(UTC)
    answers = []
    for raw, parsed in zip(raws, scanned, strict=True):
        state = states.get(parsed.canonical) if parsed else None
        product = products.get(state.product_id) if state and state.product_id else None
        taken = sold.get(parsed.canonical, ()) if parsed else ()
        answers.append(_answer(raw, parsed, state, product, org, now, taken, shown_to))
    return answers


async def history_of(pool: asyncpg.Pool, code: str) -> dict[str, Any] | None:
    """:func:`history` of the canonical ``code``, or None when nothing is known of it."""
    async with pool.acquire() as conn:
        found = await history(conn, code)
    if found["state"] is None and not found["events"]:
        return None
    return found


async def history(conn: Conn, code: str) -> dict[str, Any]:
    """The code, where it is, and everything that happened to it or to any container it
    was in, in event-time order."""
    state = await code_store.read_one(conn, code)
    family = {code, *await code_store.ancestors_ever(conn, [code])}
    facts = await event_store.facts_for(conn, family)
    # a settlement that took the pack took it out of its case, as in the stored state:
    # the case's later moves no longer carry it
    facts += await sale_store.settlement_facts(conn, [code])
    world, applied = as_logged(code, facts)
    deleted = undone_by_deletions(facts)  # events of records a 3507 deletion deleted
    details = await event_store.details(conn, [f.event_id for f, _ in applied if f.type != "settle"])
    sales = await sale_store.for_code(conn, code)
    # reversed: by the insurer, also where a return had given the units back before
    reversed_ids = await setl_store.reversed_among(conn, [s["setl_id"] for s in sales])
    events = []
    for fact, via in applied:
        if fact.type == "settle":  # listed under settlements; here, the pick it made
            left = world.left.get((code, fact.event_id))
            if left is not None:
                events.append(_settlement_pick(fact, left, sales))
            continue
        d = details[fact.event_id]
        left = world.left.get((code, fact.event_id))
        if left is not None:
            # the move named the pack on its own, out of its case: show that unpack,
            # under the move's event id (no unpack event was scanned)
            events.append(
                {
                    "event_id": fact.event_id,
                    "type": "unpack",
                    "implicit": True,
                    "at": d["at"],
                    "org": d["org"],
                    "parent": left,
                    "received_at": d["received_at"],
                }
            )
        item: dict[str, Any] = {
            "event_id": fact.event_id,
            "type": d["type"],
            "at": d["at"],
            "org": d["org"],
        }
        for key, out in (
            ("to_org", "to"),
            ("from_org", "from"),
            ("parent", "parent"),
            ("lot", "lot"),
            ("expiry", "expiry"),
            ("produced", "produced"),
            ("quantity", "quantity"),
            ("setl_id", "setl_id"),
            ("ref", "ref"),
        ):
            if d[key] is not None:
                item[out] = d[key]
        if via is not None:
            item["via"] = via
        if d["undoes"] is not None:  # a 3507 deletion's compensation: neither counts
            item["undoes"] = d["undoes"]
        elif fact.event_id in deleted:
            item["deleted"] = True
        item["received_at"] = d["received_at"]
        events.append(item)
    product_id = state.product_id if state else product_of(code)
    products = await registry.get_products(conn, [product_id]) if product_id else {}
    product = products.get(product_id) if product_id else None
    return {
        "code": code,
        "known": bool(state and state.commissioned),
        "kind": state.kind if state else None,
        "product_id": product_id,
        "product": dataclasses.asdict(product) if product else None,
        "lot": state.lot if state else None,
        "expiry": state.expiry if state else None,
        "produced": state.produced if state else None,
        "container": state.parent if state else None,
        "contents": await code_store.contents(conn, code),
        "state": display_state(state) if state else None,
        "custodian": state.custodian if state else None,
        "destination": state.destination if state else None,
        "units_left": state.units_left if state else None,
        "pack_units": state.pack_units if state else None,
        "events": events,
        "settlements": [
            {
                "setl_id": s["setl_id"],
                "org": s["org"],
                "at": s["at"],
                "units": s["units"],
                "reversed": s["reversed"] or s["setl_id"] in reversed_ids,
                **({"event_id": s["event_id"]} if s["event_id"] else {}),
                "returned_by": s["returned_by"],
            }
            for s in sales
        ],
        "flags": [shown(f) for f in await _flags(conn, code, applied)],
    }


async def _flags(conn: Conn, code: str, applied: list[tuple[Fact, str | None]]) -> list[dict[str, Any]]:
    """The code's flags, and those a container raised on a move that carried the code
    (a case received by the wrong organisation: its packs were diverted too), in time
    order. Each names the code it was raised on."""
    own = await flag_store.for_code(conn, code)
    carried = await flag_store.resting_on_events(conn, [(via, f.event_id) for f, via in applied if via])
    return sorted(own + carried, key=lambda f: (f["at"], f["flag_id"]))


def _settlement_pick(fact: Fact, parent: str, sales: list[dict[str, Any]]) -> dict[str, Any]:
    """The implicit unpack of a pack that a settlement took out of its case (no unpack
    scan, no event): under the settlement's id in the fold (``Fact.settlement``), naming
    it by ``setl_id``, received when the settlement was."""
    received = [s["created_at"] for s in sales if s["setl_id"] == fact.setl_id and s["event_id"] is None]
    return {
        "event_id": fact.event_id,
        "type": "unpack",
        "implicit": True,
        "at": fact.at,
        "org": fact.org,
        "parent": parent,
        "setl_id": fact.setl_id,
        "received_at": min(received, default=fact.at),
    }
