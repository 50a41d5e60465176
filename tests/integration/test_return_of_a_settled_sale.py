"""A patient's return of a sale that an insurance settlement pays for, through the public
API: the units come back with the refund (the settlement's reversal), not with the
return, which waits for it. Found by a probe: the return put the pack back on the shelf
at once while the settlement stood, and a second settlement of the same pack was paid
with no flag (the fund paid twice for one pack if the refund never came)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from tests.helpers import Api, event, pack_claim, received, world
from tests.integration.test_nhsa import _world as nhsa_world
from tests.integration.test_nhsa import envelope, nhsa, sale_return
from tests.integration.test_nhsa_ledger import deletion

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def _verify(w: dict[str, Any], code: str, org: str = "P1") -> dict[str, Any]:
    out: dict[str, Any] = await w["inv"].ok("GET", f"/v1/codes/{code}/verify?org={org}")
    return out


async def _sold(w: dict[str, Any], code: str, setl_id: str, how: str) -> None:
    """P1 sells ``code`` under the settlement ``setl_id`` (minute 10): the settlement
    takes the pack itself, or P1's dispense under its id takes it and the settlement
    bills it."""
    if how == "dispense, then settlement":
        out = await w["keys"]["P1"].events(event("dispense", "P1", [code], 10, setl_id=setl_id))
        assert out["accepted"] == 1, out
    answer = await w["insurer"].ok("POST", "/v1/settlements", pack_claim(setl_id, code, 10))
    assert answer["decision"] == "accepted", answer


SOLD = ["settlement", "dispense, then settlement"]


@pytest.mark.parametrize("naming", ["naming the settlement", "naming nothing"])
@pytest.mark.parametrize("how", SOLD)
async def test_a_return_of_a_settled_sale_waits_for_its_refund(admin: Api, how: str, naming: str) -> None:
    w = await world(admin)
    n = 800 + 10 * SOLD.index(how) + (0 if naming == "naming nothing" else 5)
    [u] = await received(w, "P1", [n])
    p1, insurer = w["keys"]["P1"], w["insurer"]
    setl_id = f"S-RS-{n}"
    await _sold(w, u, setl_id, how)
    fields = {"setl_id": setl_id} if naming == "naming the settlement" else {}
    out = await p1.events(event("return", "P1", [u], 20, **fields))
    assert (out["accepted"], out["flags"]) == (1, []), out

    # the settlement stands, so the pack is still sold
    item = await _verify(w, u)
    assert (item["units_left"], item["dispensable"]) == (0, False), item
    assert (await insurer.ok("GET", f"/v1/settlements/{setl_id}"))["reversed"] is False
    again = await insurer.ok("POST", "/v1/settlements", pack_claim(f"{setl_id}-F", u, 30))
    assert again["decision"] == "rejected", again
    [reason] = again["lines"][0]["reasons"]
    assert reason["reason"] == "ALREADY_SETTLED", reason
    assert f"settlement {setl_id}" in reason["detail"], reason
    assert [f["kind"] for f in again["flags"]] == ["DUPLICATE"], again
    resold = await p1.events(event("dispense", "P1", [u], 40))
    assert [f["kind"] for f in resold["flags"]] == ["DUPLICATE"], resold

    # refunded: the units come back, and the pack may be sold again
    await insurer.ok("POST", f"/v1/settlements/{setl_id}/reversal", None)
    item = await _verify(w, u)
    assert (item["units_left"], item["dispensable"]) == (24, True), item
    later = await insurer.ok("POST", "/v1/settlements", pack_claim(f"{setl_id}-G", u, 50))
    assert later["decision"] == "accepted", later


async def test_an_nhsa_sale_return_of_a_settled_sale_waits_and_its_deletion_gives_nothing(admin: Api) -> None:
    """A 3506 naming the settlement gives nothing back while it stands; deleted (3507),
    the return that gave nothing back gives nothing back; the reversal gives the units
    back."""
    w = await nhsa_world(admin)
    w["inv"] = await admin.key_for("investigator")
    p2, u = w["keys"]["P2"], w["units"][0]
    insurer = await admin.key_for("insurer")
    answer = await insurer.ok("POST", "/v1/settlements", pack_claim("S-RS-NHSA", u, 60, org="P2"))
    assert answer["decision"] == "accepted", answer
    ret = sale_return("R-RS-NHSA", [u], 24, setl_id="S-RS-NHSA", sel_retn_time="2026-03-06 09:00:00")
    assert (await nhsa(p2, envelope("3506", {"selinfo": ret})))["infcode"] == 0
    assert (await _verify(w, u, "P2"))["units_left"] == 0
    again = await insurer.ok("POST", "/v1/settlements", pack_claim("S-RS-NHSA-2", u, 70, org="P2"))
    assert [r["reason"] for r in again["lines"][0]["reasons"]] == ["ALREADY_SETTLED"], again
    out = await nhsa(p2, envelope("3507", {"data": deletion("R-RS-NHSA", "4")}))
    assert out["output"]["tracecode"]["deleted"] == ["R-RS-NHSA"], out
    assert (await _verify(w, u, "P2"))["units_left"] == 0
    await insurer.ok("POST", "/v1/settlements/S-RS-NHSA/reversal", None)
    assert (await _verify(w, u, "P2"))["units_left"] == 24


@pytest.mark.parametrize("how", SOLD)
async def test_a_settled_sales_return_and_a_resale_in_any_order_end_as_in_time_order(
    admin: Api, how: str
) -> None:
    """Sold under a settlement (minute 10), then in every arrival order: the patient's
    return (20), a dispense of the pack (30: the pack is still paid for, a resale) and a
    second return (40, which finds no sale to give back). In time order and in every
    other: the pack used up, and the resale's DUPLICATE standing."""
    w = await world(admin)
    results = []
    for n, order in enumerate(itertools.permutations(range(3))):
        serial = 850 + 10 * SOLD.index(how) + n
        [u] = await received(w, "P1", [serial])
        await _sold(w, u, f"S-RSO-{serial}", how)
        steps = [
            event("return", "P1", [u], 20),
            event("dispense", "P1", [u], 30),
            event("return", "P1", [u], 40),
        ]
        for i in order:
            assert (await w["keys"]["P1"].events(steps[i]))["rejected"] == []
        kinds = []
        for status in ("pending", "open"):
            flags = (await w["inv"].ok("GET", f"/v1/flags?code={u}&status={status}"))["items"]
            kinds += [f["kind"] for f in flags]
        results.append((order, (await _verify(w, u))["units_left"], sorted(kinds)))
    assert [r[1:] for r in results] == [(0, ["DUPLICATE"])] * len(results), results


async def test_a_settlement_that_paid_nothing_for_the_pack_leaves_its_return_to_give_back(admin: Api) -> None:
    """Only what a settlement paid for waits for its refund (found by a probe): refused
    (its one line a QUANTITY_MISMATCH), or billing only another pack, it paid nothing for
    this one, so the patient's return of P1's dispense under its id gives the pack back
    at once, and a new settlement of it is paid, with no flag."""
    w = await world(admin)
    a, b, c = await received(w, "P1", [860, 861, 862])
    p1, insurer = w["keys"]["P1"], w["insurer"]
    # refused: its sale's dispense of pack a took the pack, the settlement paid nothing
    assert (await p1.events(event("dispense", "P1", [a], 10, setl_id="S-NONE")))["accepted"] == 1
    refused = pack_claim("S-NONE", a, 10)
    refused["lines"][0]["quantity"] = 12
    assert (await insurer.ok("POST", "/v1/settlements", refused))["decision"] == "rejected"
    # paid for pack c only: P1's dispense of pack b under its id is no part of what it paid
    assert (await p1.events(event("dispense", "P1", [b], 10, setl_id="S-C")))["accepted"] == 1
    assert (await insurer.ok("POST", "/v1/settlements", pack_claim("S-C", c, 10)))["decision"] == "accepted"
    for code, setl_id in ((a, "S-NONE"), (b, "S-C")):
        out = await p1.events(event("return", "P1", [code], 20))
        assert (out["accepted"], out["flags"]) == (1, []), out
        item = await _verify(w, code)
        assert (item["units_left"], item["dispensable"]) == (24, True), (setl_id, item)
        again = await insurer.ok("POST", "/v1/settlements", pack_claim(f"{setl_id}-F", code, 30))
        assert (again["decision"], again["flags"]) == ("accepted", []), again


async def test_a_return_at_the_instant_of_a_cash_sale_and_a_later_arriving_settlement_waits_for_the_refund(
    admin: Api,
) -> None:
    """A cash sale of 5 units, then a paid split settlement of 9 from the same pack, then
    a patient's return, all at one instant: at one instant sales follow in the order they
    arrived, so the return's sale is the settlement's, and it waits for the refund. The
    fold put a settlement's take before every dispense of its instant, so the return gave
    back the cash sale: 15 units left instead of 10, 24 after the refund instead of 19,
    and a whole-pack claim paid for units the cash patient kept (found by a probe)."""
    w = await world(admin)
    [u] = await received(w, "P1", [870])
    p1, insurer = w["keys"]["P1"], w["insurer"]
    assert (await p1.events(event("dispense", "P1", [u], 10, quantity=5)))["accepted"] == 1
    paid = await insurer.ok("POST", "/v1/settlements", pack_claim("S-SI-870", u, 10, split_units=9))
    assert paid["decision"] == "accepted", paid
    out = await p1.events(event("return", "P1", [u], 10))
    assert out["accepted"] == 1, out
    assert (await _verify(w, u))["units_left"] == 10
    await insurer.ok("POST", "/v1/settlements/S-SI-870/reversal", {})
    assert (await _verify(w, u))["units_left"] == 19  # the refund gave the 9 back; the cash sale stands
    again = await insurer.ok("POST", "/v1/settlements", pack_claim("S-SI-870-F", u, 30))
    assert again["decision"] == "rejected", again


async def test_a_take_written_again_keeps_when_it_was_first_recorded(admin: Api, db: Any) -> None:
    """The fold orders a stored settlement's take among the events of its instant by
    when it was recorded; a take a refold writes again (its return changed) was given the
    time of that refold, which put it after events that arrived after it (found in
    review). Written again, a take keeps its time; a new one is recorded now."""
    from dataclasses import replace
    from datetime import UTC, datetime

    from service.core.sales import SETTLEMENT, Consumption, Sale
    from service.store import sales as sale_store

    w = await world(admin)
    [u] = await received(w, "P1", [871])
    first = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
    take = Consumption(u, Sale(SETTLEMENT, "S-REC-871"), "S-REC-871", None, "P1", first, 6, recorded=first)
    await sale_store.record(db, [take])
    await sale_store.record(
        db, [replace(take, sale=Sale(SETTLEMENT, "S-REC-872"), setl_id="S-REC-872", recorded=None)]
    )
    stored = {
        r["sale_id"]: r["created_at"]
        for r in await db.fetch("SELECT sale_id, created_at FROM consumptions WHERE code = $1", u)
    }
    assert stored["S-REC-871"] == first
    assert stored["S-REC-872"] > first  # now
    [read] = [t for t in await sale_store.of_codes(db, [u], open_only=True) if t.sale.id == "S-REC-871"]
    assert read.recorded == first
