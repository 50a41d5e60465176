"""Settle a claim, read it back, reverse it: each is load → decide → write in one
transaction. Units are consumed under row locks taken in code order, so racing
settlements cannot both win or deadlock."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import asyncpg

from service import metrics
from service.core import settlement as rules
from service.core.custody import CodeState
from service.core.sales import Sale, move_units
from service.core.settlement import Claim, Loaded, fingerprint, fingerprints, person_hash
from service.store import codes as code_store
from service.store import events as event_store
from service.store import flags as flag_store
from service.store import purchases as purchase_store
from service.store import registry
from service.store import sales as sale_store
from service.store import settlements as setl_store
from service.store.conn import Conn
from service.store.db import RETRYABLE, RetryTransaction, with_retry

# how often a settlement is read and written again when its packs changed in between,
# before it takes the locked transaction instead
OPTIMISTIC_ATTEMPTS = 3


class Conflict(Exception):
    """The settlement id exists with a different body."""


class UnknownOrg(Exception):
    """The dispensing organisation is not registered."""


class NotDispensing(Exception):
    """The organisation named does not dispense to patients (a manufacturer, a distributor)."""


async def settle(pool: asyncpg.Pool, claim: Claim, secret: bytes) -> dict[str, Any]:
    """Judge the claim and answer. In ``settle`` mode the payable lines' units are
    consumed and the answer is stored with the settlement, all or nothing; the same
    claim again returns the stored answer, a different one with the same id raises
    Conflict. ``precheck`` judges and changes nothing."""
    canonical = rules.canonical_codes(claim)
    psn_hash = person_hash(secret, claim.psn_no)
    if claim.mode == "precheck":
        async with pool.acquire() as conn:
            states = await code_store.read(conn, _packs(canonical))
            loaded = await _load(conn, claim, canonical, psn_hash, states)
        return rules.answer(claim.setl_id, rules.decide(claim, canonical, loaded).outcomes, [])

    # stored with it; a replay matches it or a form an earlier release stored, worked out
    # only for a replay (fingerprints)
    body_hash = fingerprint(secret, claim, canonical)

    # The common case in two round trips, without a transaction held open across them:
    # the packs as they are, then one statement that writes the sale only if none of its
    # packs changed since and the id is still free; if not, all of it runs again, first
    # reading the stored answer (a claim sent again is rare, so the first try does not
    # look for it). A claim that raises a flag or counts a person's purchases goes
    # through the transaction below, which locks its packs first.
    for attempt in range(OPTIMISTIC_ATTEMPTS):
        try:
            async with pool.acquire() as conn:
                answer = await _settle_unchanged(
                    conn, claim, canonical, psn_hash, body_hash, secret, look_for_stored=attempt > 0
                )
        except RETRYABLE:
            metrics.OPTIMISTIC.labels("settle", "raced").inc()
            continue
        if answer is not None:
            metrics.OPTIMISTIC.labels("settle", "written").inc()
            return answer
        break
    metrics.OPTIMISTIC.labels("settle", "locked").inc()
    flag_kinds: list[str] = []  # the flags the committed attempt stored, counted after it

    async def work(conn: Conn) -> dict[str, Any]:
        flag_kinds.clear()
        # load: a replay needs only the stored answer; otherwise the packs, locked in
        # code order, and what the decision reads besides
        stored = await setl_store.get(conn, claim.setl_id)
        if stored is not None:
            return _replay(stored, secret, claim, canonical)
        packs = await code_store.lock(conn, _packs(canonical))
        loaded = await _load(conn, claim, canonical, psn_hash, packs, locked=True)
        # decide
        decision = rules.decide(claim, canonical, loaded)
        # write
        await sale_store.erase(conn, decision.erased)  # first: a take written again is erased, then recorded
        await sale_store.record(conn, decision.consumptions)
        await sale_store.reverse(conn, decision.given_back)
        await sale_store.reopen(conn, decision.reopened)  # a return's give-back undone: it waits
        await code_store.update(conn, rules.written(loaded, decision).values())  # every pack, changed or not
        await purchase_store.record(conn, psn_hash, decision.purchases)
        raised = await flag_store.raise_flags(conn, decision.flags + decision.rejudged, stored_now=flag_kinds)
        answer = rules.answer(claim.setl_id, decision.outcomes, [raised[f.key] for f in decision.flags])
        fresh = await setl_store.insert(conn, _row(claim, psn_hash, body_hash, answer))
        if not fresh:  # a concurrent request with the same id stored it first: run again,
            raise RetryTransaction  # which then finds it and answers as a replay
        return answer

    answer = await with_retry(pool, work)
    metrics.flags_raised(flag_kinds)
    return answer


async def _settle_unchanged(
    conn: Conn,
    claim: Claim,
    canonical: Mapping[str, str | None],
    psn_hash: bytes,
    body_hash: bytes,
    secret: bytes,
    *,
    look_for_stored: bool,
) -> dict[str, Any] | None:
    """Load (unlocked) → decide → write if unchanged; None when the claim needs the
    locked transaction (it raises a flag, counts a person's purchases, or is late: its
    packs have events dated after the sale). The stored answer is read first only when
    ``look_for_stored``: otherwise a stored settlement of the id makes the write fail
    (RETRYABLE) or the decision need the locked path, and either reads it there."""
    if look_for_stored:
        stored = await setl_store.get(conn, claim.setl_id)
        if stored is not None:
            return _replay(stored, secret, claim, canonical)
    states, versions = await code_store.read_versions(conn, _packs(canonical))
    if rules.late(claim.at, claim.org, states):
        return None  # its packs' history is read with their rows locked
    loaded = await _load(conn, claim, canonical, psn_hash, states)
    decision = rules.decide(claim, canonical, loaded)
    if decision.flags or decision.purchases:
        return None
    answer = rules.answer(claim.setl_id, decision.outcomes, [])
    await setl_store.settle_unchanged(
        conn,
        _row(claim, psn_hash, body_hash, answer),
        packs=rules.written(loaded, decision),
        read=versions,
        consumptions=decision.consumptions,
    )
    return answer


def _row(claim: Claim, psn_hash: bytes, body_hash: bytes, answer: dict[str, Any]) -> setl_store.Row:
    """The settlement as stored: the request (the person only as its keyed hash) and the answer."""
    return setl_store.Row(
        setl_id=claim.setl_id,
        org=claim.org,
        psn_hash=psn_hash,
        at=claim.at,
        body_hash=body_hash,
        request=rules.stored_request(claim, psn_hash),
        response=answer,
        decision=answer["decision"],
    )


def _replay(
    stored: Mapping[str, Any], secret: bytes, claim: Claim, canonical: Mapping[str, str | None]
) -> dict[str, Any]:
    """The stored answer of a settlement sent again; Conflict if the body differs. A
    settlement the insurer reversed since says so (``reversed``, ``reversed_at``): its
    units were given back, and an engine retrying after its reversal must not take the
    sale as paid (found by a probe)."""
    if not any(hmac.compare_digest(stored["body_hash"], h) for h in fingerprints(secret, claim, canonical)):
        raise Conflict
    answer = dict(stored["response"])
    if stored["reversed_at"] is not None:
        answer |= {"reversed": True, "reversed_at": stored["reversed_at"]}
    return answer


def _packs(canonical: Mapping[str, str | None]) -> list[str]:
    """The claim's codes that are codes, in code order (the order every writer locks in)."""
    return sorted({c for c in canonical.values() if c})


async def _load(
    conn: Conn,
    claim: Claim,
    canonical: Mapping[str, str | None],
    psn_hash: bytes,
    states: dict[str, CodeState],
    *,
    locked: bool = False,
) -> Loaded:
    """Everything the decision needs besides the packs' rows (``states``, which each path
    reads its own way: locked, or with their versions). On the ``locked`` path (the only
    one that records purchases), a claim of items with a person limit first takes the
    person's lock of those items, so that the person's purchases read are all of them;
    that path also reads this sale's takes a return gave back before it came, and what
    folding the packs' sales again in event time needs (:func:`_load_sales`)."""
    org = await registry.get_org(conn, claim.org)
    if org is None:
        raise UnknownOrg
    if not org.dispenses:
        raise NotDispensing
    product_ids = sorted({s.product_id for s in states.values() if s.product_id})
    products = await registry.get_products(conn, product_ids)
    no_codes = sorted({line.med_list_codg for line in claim.lines if not line.codes})
    exempt = rules.exempt_products(await registry.products_billed_as(conn, no_codes)) if no_codes else {}
    opened = rules.opened(states)
    earlier = await sale_store.open_by_code(conn, opened) if opened else {}
    loaded = Loaded(
        org=org,
        states=states,
        products=products,
        exempt_codgs=set(exempt),
        earlier=earlier,
        item_products=exempt,
    )
    stored = None
    if rules.late(claim.at, claim.org, states):  # custody is judged as it was at the sale, from the history
        family = set(states) | set(await code_store.ancestors_ever(conn, states))
        stored = await event_store.stored_for(conn, family)
        loaded.history = event_store.facts_of(stored)
        loaded.settled = await sale_store.settlement_facts(conn, sorted(family))
    if locked:
        # a take of this sale given back before it came (read on this path only: the
        # one-statement path finds such a row when it writes, and ends up here)
        loaded.given_back = await sale_store.of_sale(conn, Sale.of_settlement(claim.setl_id), given_back=True)
        await _load_sales(conn, loaded, stored)
    limits = rules.person_limits(claim, canonical, states, products, exempt)
    if limits:  # the person's purchases of those items near the claim, and their flags
        if locked:
            await purchase_store.lock_person(conn, psn_hash, sorted(limits))
        days = timedelta(days=max(limit.days for limit in limits.values()))
        loaded.psn_hash = psn_hash
        near = await purchase_store.around(conn, psn_hash, sorted(limits), claim.at - days, claim.at + days)
        loaded.purchases = near
        evidence = rules.excess_evidence(psn_hash, limits, near)
        loaded.excess_flagged = await flag_store.excess_raised(conn, evidence)
    return loaded


async def _load_sales(conn: Conn, loaded: Loaded, stored: event_store.Stored | None) -> None:
    """What folding the claim's packs' sales again in event time reads
    (``core.settlement.in_time``): for a late claim, of its packs (their events are in
    its history, ``stored``); for another, of the packs whose takes of this sale a
    patient's return gave back before it came (their events read now); for none, or for
    packs with no stored dispense or return, nothing more."""
    if stored is None:
        returned = sorted({t.code for t in loaded.given_back} & loaded.states.keys())
        if not returned:
            return
        stored = await event_store.stored_for(conn, returned)
    folded = sale_store.pack_sales(stored, loaded.states)
    pack_sales = {code: sales for code, sales in folded.items() if sales[0] or sales[1]}
    if not pack_sales:
        return
    loaded.pack_sales = pack_sales
    loaded.takes = await sale_store.of_codes(conn, sorted(pack_sales), open_only=False)
    dispenses = [d for dispensed, _ in pack_sales.values() for d in dispensed]
    named = {d.setl_id for d in dispenses} | {t.setl_id for t in loaded.takes}
    loaded.refunded, loaded.standing = await setl_store.refunds_and_standing(conn, named, named)


async def get(conn: Conn, setl_id: str) -> dict[str, Any] | None:
    stored = await setl_store.get(conn, setl_id)
    if stored is None:
        return None
    return {
        "setl_id": stored["setl_id"],
        "org": stored["org"],
        "at": stored["at"],
        "request": rules.shown_request(stored["request"]),
        "answer": stored["response"],
        "decision": stored["decision"],
        "reversed": stored["reversed_at"] is not None,
        "reversed_at": stored["reversed_at"],
        "reversal": stored["reversal"],
        "created_at": stored["created_at"],
    }


async def reverse(pool: asyncpg.Pool, setl_id: str) -> dict[str, Any] | None:
    """Give back the units this sale consumed (``core.settlement.undone_by_reversal``;
    None for an unknown id). Doing it again returns the same result and restores nothing
    more."""

    flag_kinds: list[str] = []  # the flags the committed attempt stored, counted after it

    async def work(conn: Conn) -> dict[str, Any] | None:
        flag_kinds.clear()
        # load: the settlement (locked), the packs its sale took units from (locked in
        # code order, as every writer locks), then what it took from them: a concurrent
        # return of the same sale has then either restored its units already (and its
        # consumption reads reversed) or waits for this transaction
        stored = await setl_store.get(conn, setl_id, lock=True)
        if stored is None:
            return None
        if stored["reversal"] is not None:
            return dict(stored["reversal"])
        sale = Sale.of_settlement(setl_id)
        states = await code_store.lock_sold(conn, sale)
        sold = [t for t in await sale_store.of_sale(conn, sale) if t.code in states]
        # decide
        taken = rules.undone_by_reversal(stored["request"], sold)
        changed = move_units(states, [(t.code, t.units) for t in taken])
        result = {
            "setl_id": setl_id,
            "reversed": True,
            "restored": [{"code": t.code, "units": t.units} for t in taken],
        }
        # the person's purchases of items with a limit that the sale counted: their
        # windows are judged again once it no longer counts (the person's lock of those
        # items first, as a settlement of them takes it)
        psn_hash = stored["psn_hash"]
        items = sorted({line["med_list_codg"] for line in stored["request"].get("lines", [])})
        bought = await purchase_store.of_settlement(conn, psn_hash, items, setl_id)
        await purchase_store.lock_person(conn, psn_hash, sorted({p.med_list_codg for p in bought}))
        # write
        await sale_store.reverse(conn, [(t, None) for t in taken])
        await code_store.update(conn, [states[c] for c in sorted(changed)])
        await setl_store.mark_reversed(conn, setl_id, psn_hash, result)
        if bought:
            flag_kinds.extend(await _excess_after_reversal(conn, setl_id, psn_hash, bought))
        return result

    answer = await with_retry(pool, work)
    metrics.flags_raised(flag_kinds)
    return answer


async def _excess_after_reversal(
    conn: Conn, setl_id: str, psn_hash: bytes, bought: list[rules.Purchase]
) -> list[str]:
    """Once a reversed sale's purchases (``bought``, now reversed) no longer count, the
    person's EXCESS_PURCHASE flags near it, judged again
    (``core.settlement.excess_after_reversal``): those that no longer hold are withdrawn,
    naming the reversal, and what only they held back is flagged. Returns the kind of
    each flag stored."""
    at = bought[0].at  # one settlement: one time
    registered = await registry.products_billed_as(conn, sorted({p.med_list_codg for p in bought}))
    limits = {codg: limit for codg, found in registered.items() if (limit := rules.item_limit(found))}
    if not limits:
        return []
    days = timedelta(days=max(limit.days for limit in limits.values()))
    near = await purchase_store.around(conn, psn_hash, sorted(limits), at - 2 * days, at + 3 * days)
    flagged = await flag_store.excess_raised(conn, rules.excess_evidence(psn_hash, limits, near))
    judged = rules.excess_after_reversal(at, limits, near, flagged)
    note = f"settlement {setl_id} was reversed: the person's units in the window are within the limit"
    await flag_store.withdraw(conn, judged.withdrawn, [setl_id], note)
    if not judged.crossings:
        return []
    new = []
    for window in judged.crossings:
        last = window[-1]
        crossed = await setl_store.get(conn, last.setl_id)
        code = (
            rules.stored_item_code(crossed["request"], crossed["response"], last.med_list_codg)
            if crossed
            else last.med_list_codg
        )
        limit = limits[last.med_list_codg]
        new.append(rules.excess_flag(psn_hash, window, limit, code, None, after_reversal=setl_id))
    stored_now: list[str] = []
    await flag_store.raise_flags(conn, new, stored_now=stored_now)
    return stored_now
