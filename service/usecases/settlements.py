"""Settle a claim, read it back, reverse it. One transaction each; units are consumed
under row locks taken in code order, so racing settlements cannot both win or deadlock."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import asyncpg

from service.core.codes import try_parse_code
from service.core.custody import CodeState
from service.core.flags import settlement_flags
from service.core.rules import local_date
from service.core.settlement import (
    Claim,
    EarlierSale,
    LineOutcome,
    decision,
    fingerprint,
    judge,
    person_hash,
)
from service.store import codes as code_store
from service.store import flags as flag_store
from service.store import registry
from service.store import sales as sale_store
from service.store import settlements as setl_store
from service.store.conn import Conn
from service.store.db import with_retry


class Conflict(Exception):
    """The settlement id exists with a different body."""


class UnknownOrg(Exception):
    """The dispensing organisation is not registered."""


def _stored_request(claim: Claim, psn_hash: bytes) -> dict[str, Any]:
    return {
        "setl_id": claim.setl_id,
        "org": claim.org,
        "psn_hash": psn_hash.hex(),
        "at": claim.at.isoformat(),
        "mode": claim.mode,
        "lines": [
            {
                "line_no": ln.line_no,
                "med_list_codg": ln.med_list_codg,
                "quantity": ln.quantity,
                "split": ln.split,
                "codes": list(ln.codes),
            }
            for ln in claim.lines
        ],
    }


async def settle(pool: asyncpg.Pool, claim: Claim, secret: bytes) -> dict[str, Any]:
    """Judge the claim; in ``settle`` mode store the answer and consume the payable
    lines' units, or return the stored answer for a replay of the same body."""
    canonical = {
        raw: (p.canonical if (p := try_parse_code(raw)) else None)
        for line in claim.lines
        for raw in line.codes
    }
    codes = sorted({c for c in canonical.values() if c})
    if claim.mode == "precheck":
        async with pool.acquire() as conn:
            outcomes, _ = await _judge(conn, claim, canonical, codes, lock=False)
        return _response(claim.setl_id, outcomes, [])

    psn_hash = person_hash(secret, claim.psn_no)
    body_hash = fingerprint(secret, claim)

    async def work(conn: Conn) -> dict[str, Any]:
        fresh = await setl_store.claim(
            conn,
            setl_id=claim.setl_id,
            org=claim.org,
            psn_hash=psn_hash,
            at=claim.at,
            body_hash=body_hash,
            request=_stored_request(claim, psn_hash),
        )
        if not fresh:
            stored = await setl_store.get(conn, claim.setl_id)
            assert stored is not None
            if not hmac.compare_digest(stored["body_hash"], body_hash):
                raise Conflict
            return dict(stored["response"])
        outcomes, (states, org, earlier) = await _judge(conn, claim, canonical, codes, lock=True)
        await _consume(conn, claim, outcomes, states)
        flags = await flag_store.raise_flags(
            conn, settlement_flags(claim.setl_id, claim.at, outcomes, org, states, earlier)
        )
        response = _response(claim.setl_id, outcomes, flags)
        await setl_store.answer(conn, claim.setl_id, response, response["decision"])
        return response

    return await with_retry(pool, work)


async def _judge(
    conn: Conn,
    claim: Claim,
    canonical: Mapping[str, str | None],
    codes: list[str],
    *,
    lock: bool,
) -> tuple[list[LineOutcome], tuple[dict[str, CodeState], dict[str, Any], dict[str, list[EarlierSale]]]]:
    org = await registry.get_org(conn, claim.org)
    if org is None:
        raise UnknownOrg
    states = await (code_store.lock(conn, codes) if lock else code_store.read(conn, codes))
    product_ids = sorted({s.product_id for s in states.values() if s.product_id})
    products = await registry.get_products(conn, product_ids)
    no_codes = [ln.med_list_codg for ln in claim.lines if not ln.codes]
    exempt = await setl_store.exempt_codgs(conn, no_codes) if no_codes else set()
    # a pack with all its units has no open sale: skip the look-up for untouched packs
    opened = [c for c, s in states.items() if s.units_left != s.pack_units]
    earlier = await setl_store.earlier_sales(conn, opened) if opened else {}
    outcomes = judge(
        setl_id=claim.setl_id,
        lines=claim.lines,
        canonical=canonical,
        states=states,
        products=products,
        exempt_codgs=exempt,
        org=org,
        on=local_date(claim.at),
        earlier=earlier,
    )
    return outcomes, (states, org, earlier)


async def _consume(
    conn: Conn, claim: Claim, outcomes: list[LineOutcome], states: dict[str, CodeState]
) -> None:
    rows = []
    changed: dict[str, CodeState] = {}
    for outcome in outcomes:
        if not outcome.payable:
            continue
        for code, units in outcome.takes:
            rows.append((code, claim.setl_id, claim.setl_id, None, claim.org, claim.at, units))
            state = changed[code] = states[code]
            state.units_left = (state.units_left or 0) - units
    await sale_store.record(conn, _merge(rows))
    await code_store.update(conn, changed.values())


def _merge(rows: list[tuple[str, str, str, None, str, datetime, int]]) -> list[tuple[Any, ...]]:
    """One consumption row per code and sale, even when two lines of one settlement
    draw from the same pack."""
    merged: dict[str, tuple[Any, ...]] = {}
    for row in rows:
        if row[0] in merged:
            old = merged[row[0]]
            merged[row[0]] = (*old[:6], old[6] + row[6])
        else:
            merged[row[0]] = row
    return list(merged.values())


def _response(setl_id: str, outcomes: list[LineOutcome], flags: list[dict[str, Any]]) -> dict[str, Any]:
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
                "units": sum(u for _, u in o.takes) if o.payable else 0,
            }
            for o in outcomes
        ],
        "flags": [{"flag_id": str(f["flag_id"]), "kind": f["kind"], "code": f["code"]} for f in flags],
    }


async def get(conn: Conn, setl_id: str) -> dict[str, Any] | None:
    stored = await setl_store.get(conn, setl_id)
    if stored is None:
        return None
    return {
        "setl_id": stored["setl_id"],
        "org": stored["org"],
        "at": stored["at"],
        "request": stored["request"],
        "answer": stored["response"],
        "decision": stored["decision"],
        "reversed": stored["reversed_at"] is not None,
        "reversed_at": stored["reversed_at"],
        "reversal": stored["reversal"],
        "created_at": stored["created_at"],
    }


async def reverse(pool: asyncpg.Pool, setl_id: str) -> dict[str, Any] | None:
    """Give back every unit this sale consumed (None for an unknown id). Doing it again
    returns the same result and restores nothing more."""

    async def work(conn: Conn) -> dict[str, Any] | None:
        stored = await setl_store.get(conn, setl_id, lock=True)
        if stored is None:
            return None
        if stored["reversal"] is not None:
            return dict(stored["reversal"])
        taken = await setl_store.sale_consumptions(conn, setl_id)
        # lock the packs first (as every writer does), then reverse: a concurrent return
        # of the same sale then restores its units once, in one of the two transactions
        states = await code_store.lock(conn, [t["code"] for t in taken])
        restored = await sale_store.reverse(conn, [(t["code"], setl_id, "reversal") for t in taken])
        for (code, _), units in restored.items():
            state = states[code]
            state.units_left = (state.units_left or 0) + units
        await code_store.update(conn, [states[code] for code, _ in restored])
        result = {
            "setl_id": setl_id,
            "reversed": True,
            "restored": [{"code": code, "units": units} for (code, _), units in sorted(restored.items())],
        }
        await setl_store.mark_reversed(conn, setl_id, result)
        return result

    return await with_retry(pool, work)
