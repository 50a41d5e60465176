"""A sale whose take of a pack was given back, then the same sale again.

Given back by a patient's return (or a refund), the sale keeps its reversed take and
does not take the pack again: a late dispense upload under its setl_id takes nothing, as
when it comes before the return (the load test's refunds rely on it). Its settlement
arriving after the return bills what the sale took and takes the pack back while the
pack still holds it: a return does not give back what a standing settlement pays for,
so it waits for the refund, as when the settlement comes before it. Given back by the
deletion of its record (NHSA 3507), the take is erased: the record never counted, and the
corrected record under the same setl_id takes the pack. Both were a 500 or a sale that
took nothing: the given-back row had the key (pack, sale) of the new take."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import Api, event, pack_claim, received, world
from tests.integration.test_nhsa import _world as nhsa_world
from tests.integration.test_nhsa import envelope, nhsa, sale, sale_return
from tests.integration.test_nhsa_ledger import deletion

pytestmark = pytest.mark.asyncio(loop_scope="session")

MED = "XJ01CAA040A001010104256"


async def _units_left(api: Api, code: str) -> int:
    out: dict[str, Any] = await api.ok("GET", f"/v1/codes/{code}/verify")
    return int(out["units_left"])


async def _taken(db: Any, code: str) -> list[tuple[str, int, bool]]:
    rows = await db.fetch(
        "SELECT sale_id, units, reversed_at IS NOT NULL AS given_back FROM consumptions WHERE code = $1", code
    )
    return [(r["sale_id"], r["units"], r["given_back"]) for r in rows]


@pytest.mark.parametrize("path", ["one statement", "locked"])
async def test_a_settlement_after_its_dispense_was_returned_takes_the_pack_back_until_its_refund(
    admin: Api, db: Any, path: str
) -> None:
    """Dispensed under S-AGAIN, returned, then the settlement S-AGAIN: it pays for the
    sale, so the return waits for its refund, as when the settlement comes before the
    return. The pack is sold again (not dispensable, a new settlement ALREADY_SETTLED)
    until the insurer reverses S-AGAIN. It left the pack on the shelf: a settlement
    then paid the same pack again."""
    w = await world(admin)
    [u, other] = await received(w, "P1", [700, 701] if path == "one statement" else [702, 703])
    p1 = w["keys"]["P1"]
    await p1.events(event("dispense", "P1", [u], 50, setl_id="S-AGAIN"))
    await p1.events(event("return", "P1", [u], 55, setl_id="S-AGAIN"))
    assert await _units_left(p1, u) == 24
    body = pack_claim("S-AGAIN", u, 60)
    if path == "locked":  # a second line that raises a flag takes the locked transaction
        body["lines"].append({"line_no": 2, "med_list_codg": MED, "quantity": 24, "codes": [other, other]})
    answer = await w["insurer"].ok("POST", "/v1/settlements", body)
    assert answer["lines"][0]["payable"] is True, answer
    assert await _units_left(p1, u) == 0  # the sale's take stands again; the return waits
    assert (await p1.ok("GET", f"/v1/codes/{u}/verify"))["dispensable"] is False
    assert await _taken(db, u) == [("S-AGAIN", 24, False)]
    got = await w["insurer"].ok("GET", "/v1/settlements/S-AGAIN")
    assert got["answer"] == answer
    # the same settlement again is the stored answer; a new sale is refused
    assert await w["insurer"].ok("POST", "/v1/settlements", body) == answer
    again = await w["insurer"].ok("POST", "/v1/settlements", pack_claim("S-NEXT", u, 70))
    assert again["decision"] == "rejected", again
    [reason] = again["lines"][0]["reasons"]
    assert (reason["reason"], "settlement S-AGAIN" in reason["detail"]) == ("ALREADY_SETTLED", True), reason
    assert [f["kind"] for f in again["flags"]] == ["DUPLICATE"]
    h = await w["inv"].ok("GET", f"/v1/codes/{u}/history")
    assert [e["type"] for e in h["events"]][-2:] == ["dispense", "return"]
    # refunded: the units come back, and a new sale takes the pack
    await w["insurer"].ok("POST", "/v1/settlements/S-AGAIN/reversal", None)
    assert await _units_left(p1, u) == 24
    later = await w["insurer"].ok("POST", "/v1/settlements", pack_claim("S-LATER", u, 80))
    assert later["decision"] == "accepted", later


async def test_a_settlement_after_its_dispense_was_returned_and_the_pack_sold_again_flags_that_sale(
    admin: Api, db: Any
) -> None:
    """Dispensed under S-X, returned, sold again under S-F, then the settlement S-X: it
    pays for its sale, which the return would have waited for in event time, so S-F was
    the resale. S-F's answer stands (paid), and a DUPLICATE names it for the
    investigator (found by a review: the fund paid both with no flag)."""
    w = await world(admin)
    [u] = await received(w, "P1", [704])
    p1, insurer = w["keys"]["P1"], w["insurer"]
    await p1.events(event("dispense", "P1", [u], 50, setl_id="S-X"))
    await p1.events(event("return", "P1", [u], 55))
    resale = await insurer.ok("POST", "/v1/settlements", pack_claim("S-F", u, 57))
    assert (resale["decision"], resale["flags"]) == ("accepted", []), resale
    answer = await insurer.ok("POST", "/v1/settlements", pack_claim("S-X", u, 50))
    assert answer["lines"][0]["payable"] is True, answer
    [flag] = answer["flags"]
    assert (flag["kind"], flag["code"]) == ("DUPLICATE", u)
    stored = await w["inv"].ok("GET", f"/v1/flags/{flag['flag_id']}")
    assert (stored["refs"]["settlements"], stored["refs"]["earlier_settlements"]) == (["S-F"], ["S-X"])
    assert stored["status"] == "open"
    assert await _units_left(p1, u) == 0
    assert await insurer.ok("POST", "/v1/settlements", pack_claim("S-X", u, 50)) == answer  # a replay


async def test_a_late_dispense_of_a_returned_sale_takes_nothing_again(admin: Api, db: Any) -> None:
    w = await world(admin)
    [u] = await received(w, "P1", [710])
    p1 = w["keys"]["P1"]
    await p1.events(event("dispense", "P1", [u], 50, setl_id="S-TWICE"))
    await p1.events(event("return", "P1", [u], 55, setl_id="S-TWICE"))
    out = await p1.events(event("dispense", "P1", [u], 60, setl_id="S-TWICE"))
    assert out["accepted"] == 1, out
    assert out["flags"] == [], out
    assert await _units_left(p1, u) == 24
    assert await _taken(db, u) == [("S-TWICE", 24, True)]


async def test_the_corrected_sale_after_a_deletion_takes_the_pack(admin: Api, db: Any) -> None:
    """3505 B2 under setl_id S2, deleted by 3507, then the corrected record B2b under S2:
    the pack is sold, as the ledger says."""
    w = await nhsa_world(admin)
    p2, u = w["keys"]["P2"], w["units"][0]
    assert (await nhsa(p2, envelope("3505", {"selinfo": sale("B2", [u], 24, setl_id="S2")})))["infcode"] == 0
    assert await _units_left(p2, u) == 0
    assert (await nhsa(p2, envelope("3507", {"data": deletion("B2", "4")})))["infcode"] == 0
    assert await _units_left(p2, u) == 24
    out = await nhsa(p2, envelope("3505", {"selinfo": sale("B2b", [u], 24, setl_id="S2")}))
    assert out["infcode"] == 0, out
    assert out["output"]["tracecode"]["accepted"] == 1, out
    assert await _units_left(p2, u) == 0
    assert await _taken(db, u) == [("S2", 24, False)]  # the deleted record's take is gone
    h = await (await admin.key_for("investigator")).ok("GET", f"/v1/codes/{u}/history")
    # by event time: both sales, then the deletion's compensating return (at its upload)
    assert [e["type"] for e in h["events"]][-3:] == ["dispense", "dispense", "return"]
    # and the settlement of S2 is then that one sale: the pack is not taken twice
    insurer = await admin.key_for("insurer")
    answer = await insurer.ok("POST", "/v1/settlements", pack_claim("S2", u, 60, org="P2"))
    assert answer["lines"][0]["payable"] is True, answer
    assert await _taken(db, u) == [("S2", 24, False)]


async def test_a_record_whose_serial_was_sent_as_a_number_is_deleted_by_that_number(admin: Api) -> None:
    """fixmedins_bchno 0 (a JSON number) is the record "0"; a 3507 naming it as the number
    0 deletes it (it answered "no record of this type": 0 was read as absent)."""
    w = await nhsa_world(admin)
    p2, u = w["keys"]["P2"], w["units"][1]
    assert (await nhsa(p2, envelope("3505", {"selinfo": sale(0, [u], 24)})))["infcode"] == 0  # type: ignore[arg-type]
    assert await _units_left(p2, u) == 0
    out = await nhsa(p2, envelope("3507", {"data": {"fixmedins_bchno": 0, "inv_data_type": "4"}}))
    assert out["infcode"] == 0, out
    assert await _units_left(p2, u) == 24


@pytest.mark.parametrize("order", ["dispense first", "reversal first"])
async def test_a_dispense_under_a_reversed_settlement_leaves_its_pack_on_the_shelf(
    admin: Api, order: str
) -> None:
    """Settlement S took pack a; P1's dispense upload under S names pack b too. Reversed,
    the sale is refunded: whichever of the dispense and the reversal came first, b ends
    with its 24 units and may be settled again. Found by a probe: a dispense arriving
    after the reversal took b for good, and a later genuine sale of b was refused
    ALREADY_SETTLED, naming the refunded settlement."""
    w = await world(admin)
    [a, b] = await received(w, "P1", [720, 721] if order == "dispense first" else [722, 723])
    p1, insurer = w["keys"]["P1"], w["insurer"]
    setl_id = f"S-REFUND-{order[0]}"
    assert (await insurer.ok("POST", "/v1/settlements", pack_claim(setl_id, a, 50)))["decision"] == "accepted"
    dispense = event("dispense", "P1", [b], 51, setl_id=setl_id)
    if order == "dispense first":
        await p1.events(dispense)
    await insurer.ok("POST", f"/v1/settlements/{setl_id}/reversal", None)
    if order == "reversal first":
        assert (await p1.events(dispense))["accepted"] == 1
    assert [await _units_left(p1, c) for c in (a, b)] == [24, 24]
    again = await insurer.ok("POST", "/v1/settlements", pack_claim(f"{setl_id}-NEXT", b, 70))
    assert again["decision"] == "accepted", again


async def test_deleting_the_return_of_a_refunded_sale_leaves_the_pack_on_the_shelf(admin: Api) -> None:
    """Settled, returned (3506 naming the settlement) and refunded by the insurer: the
    pack is on the shelf. Deleting the return record used to sell it again, under the
    refunded settlement; the refund stands, so the pack stays whole."""
    w = await nhsa_world(admin)
    p2, u = w["keys"]["P2"], w["units"][0]
    insurer = await admin.key_for("insurer")
    claim = pack_claim("S-RET-REF", u, 60, org="P2")
    assert (await insurer.ok("POST", "/v1/settlements", claim))["decision"] == "accepted"
    ret = sale_return("R-RET-REF", [u], 24, setl_id="S-RET-REF", sel_retn_time="2026-03-06 09:00:00")
    assert (await nhsa(p2, envelope("3506", {"selinfo": ret})))["infcode"] == 0
    await insurer.ok("POST", "/v1/settlements/S-RET-REF/reversal", None)
    assert await _units_left(p2, u) == 24
    out = await nhsa(p2, envelope("3507", {"data": deletion("R-RET-REF", "4")}))
    assert out["output"]["tracecode"]["deleted"] == ["R-RET-REF"], out
    assert await _units_left(p2, u) == 24


async def test_a_refunded_dispense_takes_nothing_when_its_pack_is_folded_again(admin: Api, db: Any) -> None:
    """A dispense under a settlement refunded before it came takes nothing; a late sale
    of the same pack (its sales folded again in event time) must not let it take the
    pack then: the late sale does, and its settlement is paid. Found in review: the fold
    did not know the stored dispense's settlement was refunded."""
    w = await world(admin)
    [a, b] = await received(w, "P1", [730, 731])
    p1, insurer = w["keys"]["P1"], w["insurer"]
    assert (await insurer.ok("POST", "/v1/settlements", pack_claim("S-RF", a, 50)))["decision"] == "accepted"
    await insurer.ok("POST", "/v1/settlements/S-RF/reversal", None)
    assert (await p1.events(event("dispense", "P1", [b], 51, setl_id="S-RF")))["accepted"] == 1
    assert await _units_left(p1, b) == 24
    await p1.events(event("receive", "P1", [b], 90))  # a re-scan: b's last event
    await p1.events(event("dispense", "P1", [b], 60, setl_id="S-LATE"))  # late: folded again
    assert [sale_id for sale_id, _, _ in await _taken(db, b)] == ["S-LATE"]
    paid = await insurer.ok("POST", "/v1/settlements", pack_claim("S-LATE", b, 61))
    assert paid["lines"][0]["payable"] is True, paid


@pytest.mark.parametrize("order", ["dispense first", "reversal first"])
async def test_another_organisations_dispense_under_a_refunded_settlement_keeps_its_pack(
    admin: Api, order: str
) -> None:
    """H1 dispenses pack b under P1's settlement S, which billed pack a. A reversal gives
    back the settlement's own organisation's takes and the packs it billed, not b; so in
    either order b stays taken (it must not be sellable again). Found in review: with
    the reversal first, the dispense took nothing and b was back on the shelf."""
    w = await world(admin)
    first = order == "dispense first"
    [a] = await received(w, "P1", [740 if first else 742])
    [b] = await received(w, "H1", [741 if first else 743])
    h1, insurer = w["keys"]["H1"], w["insurer"]
    setl_id = f"S-OTHER-{order[0]}"
    assert (await insurer.ok("POST", "/v1/settlements", pack_claim(setl_id, a, 50)))["decision"] == "accepted"
    dispense = event("dispense", "H1", [b], 51, setl_id=setl_id)
    if first:
        await h1.events(dispense)
    await insurer.ok("POST", f"/v1/settlements/{setl_id}/reversal", None)
    if not first:
        await h1.events(dispense)
    assert await _units_left(h1, b) == 0
