"""A patient's return whose latest sale is one the insurer has refunded (the settlement's
reversal), through the public API: the units of that sale came back with the refund, so
the return gives nothing more, and not an older sale's units instead (which sale came
back is not known, as for a return of a sale a standing settlement pays for).

Found by a probe: a 24-unit pack, a cash sale of 6 units (no settlement), then an
insured split sale X of 6 units, refunded. The patient's return dated after X gave back
the cash sale's units too when it arrived after the reversal (24 left instead of 18);
arriving before it, it waited for X's refund as it should, but was never done: the next
dispense of the pack matched it again and it gave back the cash sale's units (22 left
instead of 16), and a 22-unit settlement of the pack was then paid: 30 units sold out of
a 24-unit pack."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from tests.helpers import Api, event, pack_claim, received, world
from tests.integration.test_nhsa import MED, SALE_MINUTES, envelope, nhsa, sale, sale_return
from tests.integration.test_nhsa import _world as nhsa_world

pytestmark = pytest.mark.asyncio(loop_scope="session")


def split_claim(setl_id: str, code: str, units: int, minutes: float, org: str = "P1") -> dict[str, Any]:
    """A settlement (mode settle) of ``units`` units of ``code`` (a split line, 拆零)."""
    return pack_claim(setl_id, code, minutes, org, item=MED, split_units=units)


async def _left(w: dict[str, Any], code: str, org: str = "P1") -> int:
    out = await w["inv"].ok("GET", f"/v1/codes/{code}/verify?org={org}")
    return int(out["units_left"])


async def _sell_insured(w: dict[str, Any], code: str, setl_id: str, minutes: float, how: str) -> None:
    """P1 sells 6 units of ``code`` under the settlement ``setl_id``: the settlement takes
    them itself, or P1's dispense under its id takes them and the settlement bills them."""
    if how == "dispense, then settlement":
        out = await w["keys"]["P1"].events(
            event("dispense", "P1", [code], minutes, quantity=6, setl_id=setl_id)
        )
        assert out["accepted"] == 1, out
    answer = await w["insurer"].ok("POST", "/v1/settlements", split_claim(setl_id, code, 6, minutes))
    assert answer["decision"] == "accepted", answer


SOLD = ["settlement", "dispense, then settlement"]
ORDERS = ["reversal, then return", "return, then reversal"]


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("how", SOLD)
async def test_a_return_after_a_refunded_sale_gives_back_no_older_sale(
    admin: Api, how: str, order: str
) -> None:
    """A cash sale of 6 units (minute 5: 18 left), an insured sale X of 6 (minute 10: 12
    left), X refunded, and the patient's return (minute 20), in either order: 18 left.
    The next dispense of 2 units (minute 30) leaves 16, and a 22-unit settlement of the
    pack is refused."""
    w = await world(admin)
    n = 900 + 10 * SOLD.index(how) + ORDERS.index(order)
    [u] = await received(w, "P1", [n])
    p1, insurer = w["keys"]["P1"], w["insurer"]
    cash = event("dispense", "P1", [u], 5, quantity=6)
    assert (await p1.events(cash))["accepted"] == 1
    setl_id = f"S-RAR-{n}"
    await _sell_insured(w, u, setl_id, 10, how)
    assert await _left(w, u) == 12

    async def reversal() -> None:
        await insurer.ok("POST", f"/v1/settlements/{setl_id}/reversal", None)

    async def patients_return() -> None:
        out = await p1.events(event("return", "P1", [u], 20))
        assert (out["accepted"], out["rejected"]) == (1, []), out

    steps = [reversal, patients_return] if order == ORDERS[0] else [patients_return, reversal]
    seen = []
    for step in steps:
        await step()
        seen.append(await _left(w, u))
    assert seen == ([18, 18] if order == ORDERS[0] else [12, 18]), seen

    # the return is done: a later sale does not make it give back the cash sale
    assert (await p1.events(event("dispense", "P1", [u], 30, quantity=2)))["accepted"] == 1
    assert await _left(w, u) == 16
    history = await w["inv"].ok("GET", f"/v1/codes/{u}/history")
    [cash_take] = [s for s in history["settlements"] if s.get("event_id") == cash["event_id"]]
    assert (cash_take["reversed"], cash_take.get("returned_by")) == (False, None), cash_take
    # the fund does not pay for units the pack no longer holds
    beyond = await insurer.ok("POST", "/v1/settlements", split_claim(f"{setl_id}-B", u, 22, 40))
    assert beyond["decision"] == "rejected", beyond
    assert [r["reason"] for r in beyond["lines"][0]["reasons"]] == ["QUANTITY_MISMATCH"], beyond
    assert await _left(w, u) == 16


@pytest.mark.parametrize("how", SOLD)
async def test_the_cash_sale_the_refund_and_the_return_in_any_order_end_as_in_time_order(
    admin: Api, how: str
) -> None:
    """X of 6 units sold first (minute 10), then in every arrival order: the cash sale of 6
    units dated before it (minute 5), X's reversal, and the patient's return (minute 20).
    In every order: 18 left, and 16 after a sale of 2 units (minute 30). A cash sale
    arriving late is dated before X, so the return's latest sale is still X."""
    w = await world(admin)
    p1, insurer = w["keys"]["P1"], w["insurer"]
    results = []
    for n, order in enumerate(itertools.permutations(range(3))):
        serial = 960 + 10 * SOLD.index(how) + n
        [u] = await received(w, "P1", [serial])
        setl_id = f"S-RAO-{serial}"
        await _sell_insured(w, u, setl_id, 10, how)

        async def cash_sale(u: str = u) -> None:
            out = await p1.events(event("dispense", "P1", [u], 5, quantity=6))
            assert out["accepted"] == 1, out

        async def reversal(setl_id: str = setl_id) -> None:
            await insurer.ok("POST", f"/v1/settlements/{setl_id}/reversal", None)

        async def patients_return(u: str = u) -> None:
            out = await p1.events(event("return", "P1", [u], 20))
            assert out["accepted"] == 1, out

        steps = [cash_sale, reversal, patients_return]
        for i in order:
            await steps[i]()
        left = await _left(w, u)
        assert (await p1.events(event("dispense", "P1", [u], 30, quantity=2)))["accepted"] == 1
        results.append((order, left, await _left(w, u)))
    assert [r[1:] for r in results] == [(18, 16)] * len(results), results


async def test_a_return_naming_the_refunded_settlement_gives_nothing(admin: Api) -> None:
    """The same, the return naming X: X's units came back with the refund."""
    w = await world(admin)
    [u] = await received(w, "P1", [930])
    p1, insurer = w["keys"]["P1"], w["insurer"]
    assert (await p1.events(event("dispense", "P1", [u], 5, quantity=6)))["accepted"] == 1
    await _sell_insured(w, u, "S-RAR-930", 10, "settlement")
    await insurer.ok("POST", "/v1/settlements/S-RAR-930/reversal", None)
    assert (await p1.events(event("return", "P1", [u], 20, setl_id="S-RAR-930")))["accepted"] == 1
    assert await _left(w, u) == 18
    assert (await p1.events(event("dispense", "P1", [u], 30, quantity=2)))["accepted"] == 1
    assert await _left(w, u) == 16


@pytest.mark.parametrize("order", ORDERS)
async def test_an_nhsa_sale_return_after_a_refunded_sale_gives_back_no_older_sale(
    admin: Api, order: str
) -> None:
    """The same through POST /v1/nhsa: a 3505 split sale of 6 units with no settlement
    (09:00), P2's settlement X of 6 units (10:00), X refunded and a 3506 split return of 6
    (12:00) in either order: 18 left; a 3505 of 2 units (13:00) leaves 16."""
    w = await nhsa_world(admin)
    w["inv"] = await admin.key_for("investigator")
    p2, u = w["keys"]["P2"], w["units"][0]
    insurer = await admin.key_for("insurer")
    cash = sale("B-RAR-1", [u], 6, split="1", sel_retn_time="2026-03-05 09:00:00")
    assert (await nhsa(p2, envelope("3505", {"selinfo": cash})))["infcode"] == 0
    setl_id = f"S-RAR-NHSA-{ORDERS.index(order)}"
    answer = await insurer.ok("POST", "/v1/settlements", split_claim(setl_id, u, 6, SALE_MINUTES, org="P2"))
    assert answer["decision"] == "accepted", answer
    assert await _left(w, u, "P2") == 12

    async def reversal() -> None:
        await insurer.ok("POST", f"/v1/settlements/{setl_id}/reversal", None)

    async def patients_return() -> None:
        ret = sale_return("R-RAR-1", [u], 6, trdn_flag="1", sel_retn_time="2026-03-05 12:00:00")
        out = await nhsa(p2, envelope("3506", {"selinfo": ret}))
        assert (out["infcode"], out["output"]["tracecode"]["rejected"]) == (0, []), out

    steps = [reversal, patients_return] if order == ORDERS[0] else [patients_return, reversal]
    seen = []
    for step in steps:
        await step()
        seen.append(await _left(w, u, "P2"))
    assert seen == ([18, 18] if order == ORDERS[0] else [12, 18]), seen
    later = sale("B-RAR-2", [u], 2, split="1", sel_retn_time="2026-03-05 13:00:00")
    assert (await nhsa(p2, envelope("3505", {"selinfo": later})))["infcode"] == 0
    assert await _left(w, u, "P2") == 16


# ----------------------------------------------------------- returns that do give back


async def test_a_return_of_an_unsettled_sale_gives_it_back(admin: Api) -> None:
    """No settlement, no reversal: a cash sale of 6 units, then the patient's return."""
    w = await world(admin)
    [u] = await received(w, "P1", [940])
    p1 = w["keys"]["P1"]
    assert (await p1.events(event("dispense", "P1", [u], 5, quantity=6)))["accepted"] == 1
    assert (await p1.events(event("return", "P1", [u], 20)))["accepted"] == 1
    assert await _left(w, u) == 24


ARRIVALS = ["in time order", "the cash sale last", "the reversal last"]


@pytest.mark.parametrize("arrival", ARRIVALS)
async def test_a_return_after_a_refund_gives_back_the_later_cash_sale(admin: Api, arrival: str) -> None:
    """Which sale a return undoes goes by event time: X of 6 units (minute 10), refunded,
    then a cash sale of 4 units (minute 15), then the patient's return (minute 20). The
    return's latest sale before it is the cash sale, which it gives back: 24 left, in
    time order, when the cash sale is uploaded after the return, and when the reversal
    comes last (the return then gives the cash sale back, and the reversal X's units)."""
    w = await world(admin)
    [u] = await received(w, "P1", [950 + ARRIVALS.index(arrival)])
    p1, insurer = w["keys"]["P1"], w["insurer"]
    setl_id = f"S-RAR-95{ARRIVALS.index(arrival)}"
    await _sell_insured(w, u, setl_id, 10, "settlement")

    async def reversal() -> None:
        await insurer.ok("POST", f"/v1/settlements/{setl_id}/reversal", None)

    async def cash_sale() -> None:
        assert (await p1.events(event("dispense", "P1", [u], 15, quantity=4)))["accepted"] == 1

    async def patients_return() -> None:
        assert (await p1.events(event("return", "P1", [u], 20)))["accepted"] == 1

    steps = {
        "in time order": [reversal, cash_sale, patients_return],
        "the cash sale last": [reversal, patients_return, cash_sale],
        "the reversal last": [cash_sale, patients_return, reversal],
    }[arrival]
    for step in steps:
        await step()
    assert await _left(w, u) == 24
    assert (await p1.events(event("dispense", "P1", [u], 30, quantity=2)))["accepted"] == 1
    assert await _left(w, u) == 22
