"""A claim is judged for custody as its packs were at the sale (the claim's ``at``),
also when events dated after the sale reached the service first: truth is by event
time (DESIGN.md). Found by a probe: custody was read as the packs stood when the claim
arrived, so a legitimate sale out of a case that was shipped on afterwards was refused,
and a sale dated before the seller had the pack was paid without a word."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from tests.helpers import BASE_TIME, Api, cn20, event, pack_claim, sscc, world

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def _case_at_p1(w: dict[str, Any], serials: list[int], box: int) -> tuple[list[str], str]:
    """Packs commissioned by M1, packed into a case, shipped to P1 and received there
    (minutes 0 to 3)."""
    units, case = [cn20(w["unit"], s) for s in serials], sscc(box)
    await w["keys"]["M1"].events(
        event("commission", "M1", units, 0, lot="L1", expiry="2030-12-31"),
        event("pack", "M1", units, 1, parent=case),
        event("ship", "M1", [case], 2, to="P1"),
    )
    await w["keys"]["P1"].events(event("receive", "P1", [case], 3))
    return units, case


async def _delivered(w: dict[str, Any], serial: int, to: str, minutes: tuple[int, int, int]) -> str:
    """A pack commissioned by M1, shipped to ``to`` and received there, at these minutes."""
    code = cn20(w["unit"], serial)
    made, shipped, received = minutes
    await w["keys"]["M1"].events(
        event("commission", "M1", [code], made, lot="L1", expiry="2030-12-31"),
        event("ship", "M1", [code], shipped, to=to),
    )
    await w["keys"][to].events(event("receive", to, [code], received))
    return code


async def test_a_sale_out_of_a_case_shipped_on_afterwards_is_paid(admin: Api) -> None:
    """P1 sells a pack out of its case at minute 10 (no scan), then ships the rest of the
    case to H1 at minute 20. The ship reaches the service before the claim: the claim is
    still paid, as when it comes first, and the pack stays sold at P1, out of the case
    (H1's receipt of the case does not take it in)."""
    w = await world(admin)
    units, case = await _case_at_p1(w, [301, 302], 31)
    await w["keys"]["P1"].events(event("ship", "P1", [case], 20, to="H1"))
    answer = await w["insurer"].ok("POST", "/v1/settlements", pack_claim("S-EV1", units[0], 10))
    assert (answer["decision"], answer["flags"]) == ("accepted", []), answer
    await w["keys"]["H1"].events(event("receive", "H1", [case], 30))
    sold = await w["inv"].ok("GET", f"/v1/codes/{units[0]}/history")
    assert (sold["custodian"], sold["units_left"], sold["container"]) == ("P1", 0, None), sold
    other = await w["inv"].ok("GET", f"/v1/codes/{units[1]}/history")
    assert (other["custodian"], other["container"]) == ("H1", case), other
    assert (await w["inv"].ok("GET", f"/v1/flags?code={units[0]}&status=pending"))["items"] == []
    assert (await w["inv"].ok("GET", f"/v1/flags?code={units[0]}"))["items"] == []


async def test_the_same_facts_with_the_claim_first_end_the_same(admin: Api) -> None:
    """The control of the test above: the claim first, then the ship of the case."""
    w = await world(admin)
    units, case = await _case_at_p1(w, [311, 312], 32)
    answer = await w["insurer"].ok("POST", "/v1/settlements", pack_claim("S-EV2", units[0], 10))
    assert (answer["decision"], answer["flags"]) == ("accepted", []), answer
    await w["keys"]["P1"].events(event("ship", "P1", [case], 20, to="H1"))
    await w["keys"]["H1"].events(event("receive", "H1", [case], 30))
    sold = await w["inv"].ok("GET", f"/v1/codes/{units[0]}/history")
    assert (sold["custodian"], sold["units_left"], sold["container"]) == ("P1", 0, None), sold


async def test_a_sale_dated_before_the_seller_had_the_pack_is_refused(admin: Api) -> None:
    """D1 holds a pack until it ships it to P1 at minute 30. A claim of P1 dated minute
    20 arrives after that: at the sale D1 held the pack, so it is refused NOT_IN_CUSTODY
    with a DIVERSION naming D1, as when the claim comes before the ship (found by a
    review: it was paid, as P1 holds the pack now, and the answer hung on the order the
    facts arrived in)."""
    w = await world(admin)
    code = await _delivered(w, 321, "D1", (0, 1, 2))
    first = await w["insurer"].ok("POST", "/v1/settlements", pack_claim("S-EV3a", code, 20))
    await w["keys"]["D1"].events(event("ship", "D1", [code], 30, to="P1"))
    await w["keys"]["P1"].events(event("receive", "P1", [code], 31))
    late = await w["insurer"].ok("POST", "/v1/settlements", pack_claim("S-EV3b", code, 20))
    for answer in (first, late):
        assert answer["decision"] == "rejected", answer
        [reason] = answer["lines"][0]["reasons"]
        assert (reason["reason"], reason["detail"]) == ("NOT_IN_CUSTODY", "the pack is held by D1"), answer
        [flag] = answer["flags"]
        stored = await w["inv"].ok("GET", f"/v1/flags/{flag['flag_id']}")
        assert (stored["kind"], stored["refs"]["holder"]) == ("DIVERSION", "D1"), stored
    assert (await w["inv"].ok("GET", f"/v1/codes/{code}/history"))["units_left"] == 24


async def test_a_sale_dated_before_the_pack_was_made_is_refused(admin: Api) -> None:
    """A claim dated before the pack's commission, of a pack the seller holds now: at the
    sale the code did not exist, UNKNOWN_CODE, nothing taken."""
    w = await world(admin)
    code = await _delivered(w, 331, "P1", (60, 61, 62))
    answer = await w["insurer"].ok("POST", "/v1/settlements", pack_claim("S-EV4", code, 10))
    assert answer["decision"] == "rejected", answer
    assert [r["reason"] for r in answer["lines"][0]["reasons"]] == ["UNKNOWN_CODE"], answer
    assert [f["kind"] for f in answer["flags"]] == ["UNKNOWN_CODE"], answer


async def test_a_deleted_sale_does_not_take_the_pack_out_of_its_case_at_the_sale(admin: Api) -> None:
    """P2 sells a pack out of its case by a 3505, deletes that record (3507), then ships
    the case to M1. A late claim of P2 for the pack, dated after the ship: the deleted
    sale never was, so the pack went with its case, and P2 did not hold it at the sale:
    refused, as without the deleted sale (found by a review: the deletion, dated after
    the claim, was cut off before the fold left the deleted sale out, and it was paid)."""
    from tests.integration.test_nhsa import MED, _world, envelope, nhsa, sale
    from tests.integration.test_nhsa_ledger import deletion

    w = await _world(admin)
    m, p2 = w["keys"]["M1"], w["keys"]["P2"]
    a, b, case = cn20(w["unit"], 361), cn20(w["unit"], 362), sscc(36)
    await m.events(
        event("commission", "M1", [a, b], 0, lot="L1", expiry="2028-12-31"),
        event("pack", "M1", [a, b], 1, parent=case),
        event("ship", "M1", [case], 2, to="P2"),
    )
    await p2.events(event("receive", "P2", [case], 3))
    sold_at = (BASE_TIME + timedelta(minutes=5, hours=8)).strftime("%Y-%m-%d %H:%M:%S")
    out = await nhsa(p2, envelope("3505", {"selinfo": sale("B361", [a], 24, sel_retn_time=sold_at)}))
    assert out["infcode"] == 0, out
    out = await nhsa(p2, envelope("3507", {"data": deletion("B361", "4")}))
    assert out["infcode"] == 0, out
    await p2.events(event("ship", "P2", [case], 7, to="M1"))
    await m.events(event("receive", "M1", [case], 8))
    body = pack_claim("S-EV7", a, 10, org="P2")
    body["lines"][0]["med_list_codg"] = MED
    answer = await (await admin.key_for("insurer")).ok("POST", "/v1/settlements", body)
    assert answer["decision"] == "rejected", answer
    assert [r["reason"] for r in answer["lines"][0]["reasons"]] == ["NOT_IN_CUSTODY"], answer


async def test_a_pack_held_neither_then_nor_now_is_refused(admin: Api) -> None:
    """D1 held the pack at the sale and holds it now (it shipped nothing to P1): the
    claim is refused NOT_IN_CUSTODY with one DIVERSION flag, late or not."""
    w = await world(admin)
    code = await _delivered(w, 341, "D1", (0, 1, 30))
    answer = await w["insurer"].ok("POST", "/v1/settlements", pack_claim("S-EV5", code, 20))
    assert answer["decision"] == "rejected", answer
    assert [r["reason"] for r in answer["lines"][0]["reasons"]] == ["NOT_IN_CUSTODY"], answer
    assert [f["kind"] for f in answer["flags"]] == ["DIVERSION"], answer


async def test_a_precheck_judges_custody_at_the_sale_too(admin: Api) -> None:
    """precheck answers as settle would, and changes nothing."""
    w = await world(admin)
    units, case = await _case_at_p1(w, [351], 35)
    await w["keys"]["P1"].events(event("ship", "P1", [case], 20, to="H1"))
    body = pack_claim("S-EV6", units[0], 10)
    body["mode"] = "precheck"
    answer = await w["insurer"].ok("POST", "/v1/settlements", body)
    assert answer["decision"] == "accepted", answer
    still = await w["inv"].ok("GET", f"/v1/codes/{units[0]}/history")
    assert (still["units_left"], still["container"]) == (24, case), still


@pytest.mark.parametrize("position", [0, 1, 2])
async def test_a_claim_answers_and_ends_the_same_wherever_the_later_facts_arrive(
    admin: Api, position: int
) -> None:
    """The claim (minute 10) arrives before, between or after the facts dated after it
    (P1 ships the case on at 20, H1 receives it at 30): the same answer and the same
    end, whatever the order (truth is by event time)."""
    w = await world(admin)
    units, case = await _case_at_p1(w, [371 + 10 * position, 372 + 10 * position], 37 + position)
    later = [
        lambda: w["keys"]["P1"].events(event("ship", "P1", [case], 20, to="H1")),
        lambda: w["keys"]["H1"].events(event("receive", "H1", [case], 30)),
    ]
    for send in later[:position]:
        await send()
    answer = await w["insurer"].ok("POST", "/v1/settlements", pack_claim(f"S-ORD{position}", units[0], 10))
    for send in later[position:]:
        await send()
    assert (answer["decision"], answer["flags"]) == ("accepted", []), answer
    ends = []
    for unit in units:
        h = await w["inv"].ok("GET", f"/v1/codes/{unit}/history")
        ends.append((h["state"], h["custodian"], h["container"], h["units_left"]))
    assert ends == [("dispensed", "P1", None, 0), ("received", "H1", case, 24)], ends
    assert (await w["inv"].ok("GET", f"/v1/flags?code={units[0]}"))["items"] == []


@pytest.mark.parametrize("order", ["claim first", "ship first", "ship and receipt first"])
async def test_a_sale_at_the_instant_the_rest_of_the_case_is_shipped_on_is_paid(
    admin: Api, order: str
) -> None:
    """P1 sells a pack out of its case and ships the rest of the case to H1 in the same
    minute: at one instant an organisation's own sale comes before its ship onward. The
    claim is paid and the pack stays sold at P1, out of the case, whichever arrives
    first, also when H1's receipt (in that minute too) came before the claim. Found by a
    probe: the claim first was paid, and the sold pack then on record as on its way to
    H1; the ship first refused it NOT_IN_CUSTODY with a DIVERSION."""
    w = await world(admin)
    units, case = await _case_at_p1(w, [391, 392], 39)
    ship = (w["keys"]["P1"], event("ship", "P1", [case], 20, to="H1"))
    receipt = (w["keys"]["H1"], event("receive", "H1", [case], 20 if order.endswith("receipt first") else 30))
    before = {"claim first": [], "ship first": [ship], "ship and receipt first": [ship, receipt]}[order]
    for api, sent in before:
        await api.events(sent)
    answer = await w["insurer"].ok("POST", "/v1/settlements", pack_claim("S-INST", units[0], 20))
    for api, sent in [m for m in (ship, receipt) if m not in before]:
        await api.events(sent)
    assert (answer["decision"], answer["flags"]) == ("accepted", []), answer
    sold = await w["inv"].ok("GET", f"/v1/codes/{units[0]}/history")
    ends = (sold["state"], sold["custodian"], sold["destination"], sold["container"], sold["units_left"])
    assert ends == ("dispensed", "P1", None, None, 0), sold
    other = await w["inv"].ok("GET", f"/v1/codes/{units[1]}/history")
    assert (other["custodian"], other["container"], other["units_left"]) == ("H1", case, 24), other
    assert (await w["inv"].ok("GET", f"/v1/flags?code={units[0]}"))["items"] == []
    # H1 sells the pack it received; the pack P1 sold is not H1's to sell
    later = await w["insurer"].ok("POST", "/v1/settlements", pack_claim("S-H1", units[1], 40, org="H1"))
    assert later["decision"] == "accepted", later
    again = await w["insurer"].ok("POST", "/v1/settlements", pack_claim("S-H1b", units[0], 41, org="H1"))
    assert again["decision"] == "rejected", again


@pytest.mark.parametrize("order", ["dispense first", "ship first"])
async def test_a_dispense_at_the_instant_the_rest_of_the_case_is_shipped_on_stays_put(
    admin: Api, order: str
) -> None:
    """The same with the sale as a dispense event: no DIVERSION, the pack stays sold at
    P1, not on its way to H1, whichever arrives first."""
    w = await world(admin)
    units, case = await _case_at_p1(w, [395, 396], 40)
    p1 = w["keys"]["P1"]
    sent = [
        event("dispense", "P1", [units[0]], 20),
        event("ship", "P1", [case], 20, to="H1"),
    ]
    outs = [await p1.events(e) for e in (sent if order == "dispense first" else reversed(sent))]
    await w["keys"]["H1"].events(event("receive", "H1", [case], 30))
    assert [o["flags"] for o in outs] == [[], []], outs
    sold = await w["inv"].ok("GET", f"/v1/codes/{units[0]}/history")
    ends = (sold["state"], sold["custodian"], sold["destination"], sold["container"])
    assert ends == ("dispensed", "P1", None, None), sold
    assert (await w["inv"].ok("GET", f"/v1/flags?code={units[0]}"))["items"] == []


@pytest.mark.parametrize("order", ["claim first", "destroy first"])
async def test_a_sale_in_the_second_its_pack_is_destroyed_gets_one_answer(admin: Api, order: str) -> None:
    """At one instant a sale goes before a destroy (the type order): the claim is paid
    whichever arrives first. The destroy first refused it DESTROYED (with a DUPLICATE),
    the claim first was paid: the answer hung on the arrival order."""
    w = await world(admin)
    code = await _delivered(w, 401, "P1", (0, 1, 2))
    destroy = event("destroy", "P1", [code], 20)
    if order == "destroy first":
        await w["keys"]["P1"].events(destroy)
    answer = await w["insurer"].ok("POST", "/v1/settlements", pack_claim("S-GONE", code, 20))
    if order == "claim first":
        await w["keys"]["P1"].events(destroy)
    assert (answer["decision"], answer["flags"]) == ("accepted", []), answer
    h = await w["inv"].ok("GET", f"/v1/codes/{code}/history")
    assert (h["state"], h["units_left"]) == ("destroyed", 0), h
    assert (await w["inv"].ok("GET", f"/v1/flags?code={code}"))["items"] == []
