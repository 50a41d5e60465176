"""Settlement by code through the public API: every reason, split packs, idempotency,
reversal, one sale one consumption, flags, and racing settlements."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from service.config import Settings
from tests.helpers import (
    Api,
    at,
    cn20,
    event,
    received,
    small_world,
    sold_elsewhere_meanwhile,
    sscc,
    units_taken_once,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

CODG = "XJ01CAA040A001010104256"


async def stocked(admin: Api, n: int = 6) -> dict[str, Any]:
    """small_world plus ``n`` packs (24 units each) held by pharmacy P1, lot L1."""
    w = await small_world(admin)
    m, p1 = w["keys"]["M1"], w["keys"]["P1"]
    codes = [cn20(w["unit"], i) for i in range(1, n + 1)]
    await m.events(
        event("commission", "M1", codes, 0, lot="L1", expiry="2030-12-31"),
        event("ship", "M1", codes, 1, to="P1"),
    )
    await p1.events(event("receive", "P1", codes, 2))
    w["codes"] = codes
    w["insurer"] = await admin.key_for("insurer")
    return w


def claim(setl_id: str, lines: list[dict[str, Any]], org: str = "P1", mode: str = "settle") -> dict[str, Any]:
    numbered = [{"line_no": i + 1, "med_list_codg": CODG, **ln} for i, ln in enumerate(lines)]
    return {
        "setl_id": setl_id,
        "org": org,
        "psn_no": "450103199001011234",
        "at": at(60),
        "mode": mode,
        "lines": numbered,
    }


def reasons(answer: dict[str, Any], line: int = 0) -> list[str]:
    return [r["reason"] for r in answer["lines"][line]["reasons"]]


async def test_whole_pack_settles_once_then_already_settled(admin: Api) -> None:
    w = await stocked(admin)
    ins, code = w["insurer"], w["codes"][0]
    first = await ins.ok("POST", "/v1/settlements", claim("S1", [{"quantity": 24, "codes": [code]}]))
    assert first["decision"] == "accepted"
    assert first["lines"][0]["payable"] is True
    again = await ins.ok("POST", "/v1/settlements", claim("S2", [{"quantity": 24, "codes": [code]}]))
    assert again["decision"] == "rejected"
    assert reasons(again) == ["ALREADY_SETTLED"]
    assert "S1" in again["lines"][0]["reasons"][0]["detail"]
    assert [f["kind"] for f in again["flags"]] == ["DUPLICATE"]
    inv = await admin.key_for("investigator")
    history = await inv.ok("GET", f"/v1/codes/{code}/history")
    assert [(s["setl_id"], s["units"], s["reversed"]) for s in history["settlements"]] == [("S1", 24, False)]
    assert [f["kind"] for f in history["flags"]] == ["DUPLICATE"]
    assert history["flags"][0]["refs"]["settlements"] == ["S2"]
    assert history["flags"][0]["refs"]["earlier_settlements"] == ["S1"], history["flags"]


async def test_every_line_reason(admin: Api) -> None:
    w = await stocked(admin, n=8)
    ins, m = w["insurer"], w["keys"]["M1"]
    c = w["codes"]
    # an expired pack, a destroyed pack, a recalled lot, a pack held elsewhere, a fake
    old = cn20(w["unit"], 100)
    await m.events(
        event("commission", "M1", [old], 0, lot="L0", expiry="2020-01-31"),
        event("ship", "M1", [old], 1, to="P1"),
    )
    await w["keys"]["P1"].events(event("receive", "P1", [old], 2), event("destroy", "P1", [c[5]], 3))
    elsewhere = cn20(w["unit"], 101)
    await m.events(event("commission", "M1", [elsewhere], 0, lot="L1", expiry="2030-12-31"))
    await admin.ok(
        "POST",
        "/v1/products",
        {
            "product_id": "8200000",
            "name": "Gauze",
            "med_list_codg": "EXEMPT-1",
            "pack_units": 1,
            "manufacturer": "M1",
            "trace_exempt": True,
        },
        201,
    )
    fake = cn20(w["unit"], 999)
    lines = [
        {"quantity": 24},  # 1 MISSING_CODES
        {"quantity": 48, "codes": [c[0]]},  # 2 QUANTITY_MISMATCH (whole pack)
        {"quantity": 24, "codes": ["12345"]},  # 3 INVALID_CODE
        {"quantity": 24, "codes": [fake]},  # 4 UNKNOWN_CODE
        {"quantity": 24, "codes": [c[1]], "med_list_codg": "OTHER-DRUG"},  # 5 PRODUCT_MISMATCH
        {"quantity": 24, "codes": [elsewhere]},  # 6 NOT_IN_CUSTODY
        {"quantity": 24, "codes": [old]},  # 7 EXPIRED
        {"quantity": 24, "codes": [c[5]]},  # 8 DESTROYED
        {"quantity": 2, "med_list_codg": "EXEMPT-1"},  # 9 payable: trace exempt
        {"quantity": 30, "codes": [c[2]], "split": True},  # 10 QUANTITY_MISMATCH (split)
        {"quantity": 24, "codes": [c[3]]},  # 11 payable
    ]
    body = claim("S-ALL", lines)
    for i, line in enumerate(lines):
        body["lines"][i].update({k: v for k, v in line.items() if k == "med_list_codg"})
    answer = await ins.ok("POST", "/v1/settlements", body)
    got = [reasons(answer, i) for i in range(len(lines))]
    assert got == [
        ["MISSING_CODES"],
        ["QUANTITY_MISMATCH"],
        ["INVALID_CODE"],
        ["UNKNOWN_CODE"],
        ["PRODUCT_MISMATCH"],
        ["NOT_IN_CUSTODY"],
        ["EXPIRED"],
        ["DESTROYED"],
        [],
        ["QUANTITY_MISMATCH"],
        [],
    ]
    assert answer["decision"] == "partial"
    kinds = {(f["kind"], f["code"]) for f in answer["flags"]}
    assert kinds == {
        ("UNKNOWN_CODE", fake),
        ("PRODUCT_MISMATCH", c[1]),
        ("DIVERSION", elsewhere),
        ("EXPIRED", old),
        ("DUPLICATE", c[5]),  # a destroyed pack, back in the market
    }
    # out of region: a pharmacy in Beijing settling a Guangxi-only product it holds
    p9_code = cn20(w["unit"], 200)
    await m.events(
        event("commission", "M1", [p9_code], 0, lot="L1", expiry="2030-12-31"),
        event("ship", "M1", [p9_code], 1, to="P9"),
    )
    beijing = await ins.ok(
        "POST", "/v1/settlements", claim("S-BJ", [{"quantity": 24, "codes": [p9_code]}], org="P9")
    )
    assert reasons(beijing) == ["OUT_OF_REGION"]
    assert [f["kind"] for f in beijing["flags"]] == ["OUT_OF_REGION"]


async def test_an_exempt_product_under_a_traced_item_does_not_exempt_the_item(admin: Api) -> None:
    """A trace-exempt product registered under the catalogue item of a traced one: a line
    of that item with no code is still MISSING_CODES (应采尽采), as the packs it may be
    are traced (found by a probe: it was paid, with 0 units). An item is exempt only
    when every product billed as it is."""
    w = await stocked(admin, 1)
    twin = {"product_id": "8200001", "name": "Loose tablets", "med_list_codg": CODG, "pack_units": 1,
            "manufacturer": "M1", "trace_exempt": True}  # fmt: skip
    await admin.ok("POST", "/v1/products", twin, 201)
    answer = await w["insurer"].ok("POST", "/v1/settlements", claim("S-TWIN", [{"quantity": 240}]))
    assert (answer["decision"], reasons(answer)) == ("rejected", ["MISSING_CODES"]), answer


async def test_recalled_lot_is_refused(admin: Api, db) -> None:  # type: ignore[no-untyped-def]
    w = await stocked(admin)
    await db.execute("UPDATE codes SET recalled = true WHERE product_id = '8123456' AND lot = 'L1'")
    answer = await w["insurer"].ok(
        "POST", "/v1/settlements", claim("S-R", [{"quantity": 24, "codes": [w["codes"][0]]}])
    )
    assert reasons(answer) == ["RECALLED"]
    assert [f["kind"] for f in answer["flags"]] == ["RECALLED"]


async def test_split_pack_down_to_the_last_unit(admin: Api) -> None:
    w = await stocked(admin)
    ins, code = w["insurer"], w["codes"][0]
    for i, qty in enumerate([10, 10, 4]):
        answer = await ins.ok(
            "POST", "/v1/settlements", claim(f"SP{i}", [{"quantity": qty, "codes": [code], "split": True}])
        )
        assert answer["decision"] == "accepted", answer
    last = await ins.ok(
        "POST", "/v1/settlements", claim("SP9", [{"quantity": 1, "codes": [code], "split": True}])
    )
    assert reasons(last) == ["ALREADY_SETTLED"]
    verify = await w["keys"]["P1"].ok("GET", f"/v1/codes/{code}/verify")
    assert verify["units_left"] == 0
    assert verify["state"] == "dispensed"


async def test_split_line_draws_codes_in_order_and_too_much_is_refused(admin: Api) -> None:
    w = await stocked(admin)
    ins, (a, b) = w["insurer"], w["codes"][:2]
    await ins.ok("POST", "/v1/settlements", claim("SA", [{"quantity": 20, "codes": [a], "split": True}]))
    big = await ins.ok(
        "POST", "/v1/settlements", claim("SB", [{"quantity": 22, "codes": [a, b], "split": True}])
    )
    assert big["decision"] == "accepted"
    p1 = w["keys"]["P1"]
    left = (await p1.ok("POST", "/v1/verify", {"codes": [a, b]}))["items"]
    assert [i["units_left"] for i in left] == [0, 6]  # 4 from a, then 18 from b
    too_much = await ins.ok(
        "POST", "/v1/settlements", claim("SC", [{"quantity": 7, "codes": [b], "split": True}])
    )
    assert reasons(too_much) == ["QUANTITY_MISMATCH"]
    whole_after_split = await ins.ok("POST", "/v1/settlements", claim("SD", [{"quantity": 24, "codes": [b]}]))
    assert reasons(whole_after_split) == ["ALREADY_SETTLED"]


async def test_idempotent_replay_and_conflict(admin: Api, db) -> None:  # type: ignore[no-untyped-def]
    w = await stocked(admin)
    ins, code = w["insurer"], w["codes"][0]
    body = claim("S-IDEM", [{"quantity": 5, "codes": [code], "split": True}])
    first = await ins.ok("POST", "/v1/settlements", body)
    second = await ins.ok("POST", "/v1/settlements", body)
    assert second == first
    assert (await w["keys"]["P1"].ok("GET", f"/v1/codes/{code}/verify"))["units_left"] == 19
    changed = await ins.post("/v1/settlements", {**body, "lines": [{**body["lines"][0], "quantity": 6}]})
    assert changed.status_code == 409
    assert changed.headers["content-type"].startswith("application/problem+json")
    stored = await ins.ok("GET", "/v1/settlements/S-IDEM")
    assert stored["answer"] == first
    assert "psn_no" not in stored["request"]
    raw = await db.fetchval("SELECT request::text || encode(psn_hash, 'hex') FROM settlements")
    assert "450103199001011234" not in raw
    assert (await ins.get("/v1/settlements/NOPE")).status_code == 404


async def test_precheck_changes_nothing(admin: Api, db) -> None:  # type: ignore[no-untyped-def]
    w = await stocked(admin)
    code = w["codes"][0]
    p1 = w["keys"]["P1"]
    answer = await p1.ok(
        "POST", "/v1/settlements", claim("PC", [{"quantity": 24, "codes": [code]}], mode="precheck")
    )
    assert answer["decision"] == "accepted"
    assert (await p1.ok("GET", f"/v1/codes/{code}/verify"))["units_left"] == 24
    assert await db.fetchval("SELECT count(*) FROM settlements") == 0
    assert (await w["insurer"].get("/v1/settlements/PC")).status_code == 404
    # an org key may not settle, nor pre-check for another organisation
    assert (
        await p1.post("/v1/settlements", claim("X", [{"quantity": 24, "codes": [code]}]))
    ).status_code == 403
    other = claim("X", [{"quantity": 24, "codes": [code]}], org="H1", mode="precheck")
    assert (await p1.post("/v1/settlements", other)).status_code == 403


async def test_an_orgs_precheck_names_no_other_organisations_sale(admin: Api) -> None:
    """An org key reads only its own settlements: its precheck of a pack another
    organisation sold says so without that sale's id; the insurer's answer, and the
    seller's own precheck, name it."""
    w = await stocked(admin)
    ins, code = w["insurer"], w["codes"][0]
    assert (await ins.ok("POST", "/v1/settlements", claim("S1", [{"quantity": 24, "codes": [code]}])))[
        "decision"
    ] == "accepted"
    line = [{"quantity": 24, "codes": [code]}]
    h1 = await admin.key_for("org", "H1")
    theirs = await h1.ok("POST", "/v1/settlements", claim("PC", line, org="H1", mode="precheck"))
    [sold] = [r for r in theirs["lines"][0]["reasons"] if r["reason"] == "ALREADY_SETTLED"]
    assert sold["detail"] == "all 24 units were consumed by another organisation's sale"
    assert "S1" not in str(theirs)
    insurers = await ins.ok("POST", "/v1/settlements", claim("PC", line, org="H1", mode="precheck"))
    assert "settlement S1" in str(insurers["lines"][0]["reasons"])
    own = await w["keys"]["P1"].ok("POST", "/v1/settlements", claim("PC", line, mode="precheck"))
    assert own["lines"][0]["reasons"] == [
        {"code": code, "reason": "ALREADY_SETTLED", "detail": "all 24 units were consumed by settlement S1"}
    ]


async def test_reversal_restores_exactly_and_once(admin: Api) -> None:
    w = await stocked(admin)
    ins, (a, b) = w["insurer"], w["codes"][:2]
    await ins.ok(
        "POST",
        "/v1/settlements",
        claim("SR", [{"quantity": 24, "codes": [a]}, {"quantity": 7, "codes": [b], "split": True}]),
    )
    undo = await ins.ok("POST", "/v1/settlements/SR/reversal")
    assert sorted((r["code"], r["units"]) for r in undo["restored"]) == sorted([(a, 24), (b, 7)])
    assert await ins.ok("POST", "/v1/settlements/SR/reversal") == undo
    left = (await w["keys"]["P1"].ok("POST", "/v1/verify", {"codes": [a, b]}))["items"]
    assert [i["units_left"] for i in left] == [24, 24]
    again = await ins.ok("POST", "/v1/settlements", claim("SR2", [{"quantity": 24, "codes": [a]}]))
    assert again["decision"] == "accepted"
    assert (await ins.ok("GET", "/v1/settlements/SR"))["reversed"] is True
    assert (await ins.post("/v1/settlements/UNKNOWN/reversal", None)).status_code == 404


async def test_a_reversed_settlement_sent_again_says_it_was_reversed(admin: Api) -> None:
    """Found by a probe: an engine whose settlement call timed out reverses it (冲正) and
    its retry queue then sends the original again. The stored answer came back,
    "accepted", with nothing saying that the units were given back and may be sold
    again: the engine took the sale as paid while the pack was free. The replay is
    still the stored answer (no second consumption), and says ``reversed`` and when."""
    w = await stocked(admin)
    ins, (a,) = w["insurer"], w["codes"][:1]
    body = claim("SRR", [{"quantity": 24, "codes": [a]}])
    first = await ins.ok("POST", "/v1/settlements", body)
    assert first["decision"] == "accepted"
    assert "reversed" not in first  # only a reversed settlement's replay carries it
    assert await ins.ok("POST", "/v1/settlements", body) == first  # a replay, as before
    await ins.ok("POST", "/v1/settlements/SRR/reversal")
    again = await ins.ok("POST", "/v1/settlements", body)
    record = await ins.ok("GET", "/v1/settlements/SRR")
    assert (again["reversed"], again["reversed_at"]) == (True, record["reversed_at"]), again
    assert {k: v for k, v in again.items() if not k.startswith("reversed")} == first
    left = (await w["keys"]["P1"].ok("POST", "/v1/verify", {"codes": [a]}))["items"]
    assert left[0]["units_left"] == 24  # nothing consumed again
    assert "reversed" not in record["answer"]  # the answer as it was given


async def test_dispense_and_settlement_with_one_setl_id_consume_once(admin: Api) -> None:
    w = await stocked(admin)
    ins, p1, (a, b) = w["insurer"], w["keys"]["P1"], w["codes"][:2]
    # dispense first, then the settlement of the same sale
    await p1.events(event("dispense", "P1", [a], 50, quantity=6, setl_id="SALE-1"))
    answer = await ins.ok(
        "POST", "/v1/settlements", claim("SALE-1", [{"quantity": 6, "codes": [a], "split": True}])
    )
    assert answer["decision"] == "accepted"
    assert (await p1.ok("GET", f"/v1/codes/{a}/verify"))["units_left"] == 18
    # settlement first, then the dispense event of the same sale
    await ins.ok("POST", "/v1/settlements", claim("SALE-2", [{"quantity": 24, "codes": [b]}]))
    out = await p1.events(event("dispense", "P1", [b], 61, setl_id="SALE-2"))
    assert out["accepted"] == 1
    item = await p1.ok("GET", f"/v1/codes/{b}/verify")
    assert item["units_left"] == 0
    # a patient's return of a settled sale waits for its refund: the reversal gives the
    # units back
    await p1.events(event("return", "P1", [b], 70, setl_id="SALE-2"))
    assert (await p1.ok("GET", f"/v1/codes/{b}/verify"))["units_left"] == 0
    await ins.ok("POST", "/v1/settlements/SALE-2/reversal")
    assert (await p1.ok("GET", f"/v1/codes/{b}/verify"))["units_left"] == 24


async def test_a_return_is_not_a_reversal_in_the_codes_history(admin: Api) -> None:
    """A pack given back by a return shows the return's event, not a reversal: only the
    insurer reverses a settlement. A return of a settled sale gives nothing back (it
    waits for the refund), so the settlement's reversal is what gives its pack back."""
    w = await stocked(admin)
    ins, p1, (a, b, c) = w["insurer"], w["keys"]["P1"], w["codes"][:3]
    inv = await admin.key_for("investigator")
    await ins.ok("POST", "/v1/settlements", claim("S-RET", [{"quantity": 24, "codes": [a]}]))
    await p1.events(event("return", "P1", [a], 70))
    await p1.events(event("dispense", "P1", [c], 65))
    back = event("return", "P1", [c], 70)
    await p1.events(back)
    await ins.ok("POST", "/v1/settlements", claim("S-REV", [{"quantity": 24, "codes": [b]}]))
    await ins.ok("POST", "/v1/settlements/S-REV/reversal")

    returned = (await inv.ok("GET", f"/v1/codes/{c}/history"))["settlements"]
    assert [(s["setl_id"], s["reversed"], s.get("returned_by")) for s in returned] == [
        (None, False, back["event_id"])
    ]
    waiting = (await inv.ok("GET", f"/v1/codes/{a}/history"))["settlements"]
    assert [(s["setl_id"], s["reversed"], s.get("returned_by")) for s in waiting] == [("S-RET", False, None)]
    assert (await ins.ok("GET", "/v1/settlements/S-RET"))["reversed"] is False
    reversed_ = (await inv.ok("GET", f"/v1/codes/{b}/history"))["settlements"]
    assert [(s["setl_id"], s["reversed"], s.get("returned_by")) for s in reversed_] == [("S-REV", True, None)]
    # returned first, then reversed by the insurer: the reversal gave the units back
    await ins.ok("POST", "/v1/settlements/S-RET/reversal")
    both = (await inv.ok("GET", f"/v1/codes/{a}/history"))["settlements"]
    assert [(s["setl_id"], s["reversed"], s.get("returned_by")) for s in both] == [("S-RET", True, None)]


async def test_a_claim_resent_with_its_codes_spelled_another_way_is_a_replay(
    admin: Api, db: Any, settings: Settings
) -> None:
    """A GS1 code in brackets, then in its canonical form: the same claim, answered from
    the stored settlement (not a 409); another code is still a conflict. A settlement
    stored with the fingerprint of the codes as sent (before they were read so) is still
    answered as a replay."""
    from service.core.settlement import Claim, Line, canonical_codes, fingerprint

    w = await small_world(admin)
    gtin = "06901234567892"
    product = {
        "product_id": gtin,
        "name": "Cefixime",
        "med_list_codg": "G1",
        "pack_units": 6,
        "manufacturer": "M1",
    }
    await admin.ok("POST", "/v1/products", product, 201)
    packs = [f"(01){gtin}(21)RS{i}" for i in (1, 2)]
    await w["keys"]["M1"].events(
        event("commission", "M1", packs, 0, lot="L1", expiry="2030-12-31"),
        event("ship", "M1", packs, 1, to="P1"),
    )
    await w["keys"]["P1"].events(event("receive", "P1", packs, 2))
    ins = await admin.key_for("insurer")
    body = claim("S-SPELL", [{"med_list_codg": "G1", "quantity": 6, "codes": [packs[0]]}])
    first = await ins.ok("POST", "/v1/settlements", body)
    assert first["decision"] == "accepted", first
    # read back, the request shows its codes in their canonical form, as every answer does
    # (found by a probe: as sent, in brackets)
    stored = await ins.ok("GET", "/v1/settlements/S-SPELL")
    assert stored["request"]["lines"][0]["codes"] == [f"01{gtin}21RS1"], stored
    canonical = {**body, "lines": [{**body["lines"][0], "codes": [f"01{gtin}21RS1"]}]}
    assert await ins.ok("POST", "/v1/settlements", canonical) == first
    other = {**body, "lines": [{**body["lines"][0], "codes": [packs[1]]}]}
    assert (await ins.post("/v1/settlements", other)).status_code == 409

    when = datetime.fromisoformat(body["at"]).astimezone(UTC)
    line = Line(1, "G1", 6, False, (packs[0],))
    as_sent = Claim("S-SPELL", "P1", body["psn_no"], when, "settle", (line,))
    old = fingerprint(settings.psn_secret, as_sent)
    await db.execute("UPDATE settlements SET body_hash = $1 WHERE setl_id = 'S-SPELL'", old)
    assert await ins.ok("POST", "/v1/settlements", body) == first
    # and as the releases that hashed whom an answer is for (Claim.for_org) stored it, of
    # the codes as sent and as read: an identical retry was a 409 after an upgrade (found
    # by an upgrade probe; tests/unit/test_settlement_rules.py holds the stored digests)
    for then in (
        fingerprint(settings.psn_secret, as_sent, reader=True),
        fingerprint(settings.psn_secret, as_sent, canonical_codes(as_sent), reader=True),
    ):
        await db.execute("UPDATE settlements SET body_hash = $1 WHERE setl_id = 'S-SPELL'", then)
        assert await ins.ok("POST", "/v1/settlements", body) == first


async def test_units_a_dispense_of_the_same_sale_took_are_billed_once(admin: Api) -> None:
    """The dispense of sale S1 took the pack: the settlement S1 bills it once, on its
    first line naming it; a second line naming it is ALREADY_SETTLED."""
    w = await stocked(admin)
    ins, p1, a = w["insurer"], w["keys"]["P1"], w["codes"][0]
    await p1.events(event("dispense", "P1", [a], 50, setl_id="S1"))
    answer = await ins.ok(
        "POST",
        "/v1/settlements",
        claim("S1", [{"quantity": 24, "codes": [a]}, {"quantity": 24, "codes": [a]}]),
    )
    assert [line["payable"] for line in answer["lines"]] == [True, False]
    assert answer["lines"][0]["units"] == 24
    assert reasons(answer, 1) == ["ALREADY_SETTLED"]
    # split lines: 6 units dispensed under S2 pay one 6-unit line, not two
    b = w["codes"][1]
    await p1.events(event("dispense", "P1", [b], 51, quantity=6, setl_id="S2"))
    split = {"quantity": 6, "codes": [b], "split": True}
    answer = await ins.ok("POST", "/v1/settlements", claim("S2", [split, split]))
    assert [line["payable"] for line in answer["lines"]] == [True, False]
    assert (await p1.ok("GET", f"/v1/codes/{b}/verify"))["units_left"] == 18


async def test_a_whole_pack_line_is_not_paid_for_a_split_dispense_of_its_sale(admin: Api) -> None:
    """6 units dispensed under S1, then S1 bills the whole pack: refused, so the 18 units
    left cannot be paid twice (by S1 now and by the next sale of them)."""
    w = await stocked(admin)
    ins, p1, a = w["insurer"], w["keys"]["P1"], w["codes"][0]
    await p1.events(event("dispense", "P1", [a], 50, quantity=6, setl_id="S1"))
    whole = await ins.ok("POST", "/v1/settlements", claim("S1", [{"quantity": 24, "codes": [a]}]))
    assert whole["decision"] == "rejected"
    assert reasons(whole) == ["QUANTITY_MISMATCH"]
    rest = await ins.ok(
        "POST", "/v1/settlements", claim("S3", [{"quantity": 18, "codes": [a], "split": True}])
    )
    assert rest["decision"] == "accepted"
    assert (await p1.ok("GET", f"/v1/codes/{a}/verify"))["units_left"] == 0


async def test_an_sscc_is_refused_as_no_pack_and_raises_no_flag(admin: Api) -> None:
    """A pallet this service knows (its packs were packed into it) is not a pack: the
    line is refused, and no fraud lead (UNKNOWN_CODE, DUPLICATE) is raised."""
    w = await stocked(admin, n=2)
    p1, ins = w["keys"]["P1"], w["insurer"]
    pallet = sscc(5)
    await p1.events(event("pack", "P1", w["codes"], 10, parent=pallet))
    item = (await p1.ok("POST", "/v1/verify", {"codes": [pallet]}))["items"][0]
    assert item["known"] is True
    assert [r["reason"] for r in item["reasons"]] == ["QUANTITY_MISMATCH"]
    answer = await ins.ok("POST", "/v1/settlements", claim("SS1", [{"quantity": 48, "codes": [pallet]}]))
    assert answer["decision"] == "rejected"
    assert reasons(answer) == ["QUANTITY_MISMATCH"]
    assert answer["flags"] == []


async def test_a_case_is_not_paid_as_well_as_its_packs(admin: Api) -> None:
    """A case holds packs and each pack is paid once, as itself: a line naming the case
    is refused (no flag), so the case and its packs cannot both be paid."""
    w = await small_world(admin)
    m, p1 = w["keys"]["M1"], w["keys"]["P1"]
    units = [cn20(w["unit"], i) for i in range(1, 11)]
    case = cn20(w["case"], 1)
    await m.events(
        event("commission", "M1", units, 0, lot="L1", expiry="2030-12-31"),
        event("commission", "M1", [case], 0, lot="L1", expiry="2030-12-31"),
        event("pack", "M1", units, 1, parent=case),
        event("ship", "M1", [case], 2, to="P1"),
    )
    await p1.events(event("receive", "P1", [case], 3))
    ins = await admin.key_for("insurer")
    body = claim("SC1", [{"quantity": 240, "codes": [case]}])
    body["lines"][0]["med_list_codg"] = CODG + "-C"
    first = await ins.ok("POST", "/v1/settlements", body)
    assert first["decision"] == "rejected"
    assert reasons(first) == ["QUANTITY_MISMATCH"]
    assert first["flags"] == []
    assert [r["reason"] for r in (await p1.ok("GET", f"/v1/codes/{case}/verify"))["reasons"]] == [
        "QUANTITY_MISMATCH"
    ]
    pack = await ins.ok("POST", "/v1/settlements", claim("SC2", [{"quantity": 24, "codes": [units[0]]}]))
    assert pack["decision"] == "accepted"


async def test_a_manufacturer_or_distributor_is_not_paid(admin: Api, db) -> None:  # type: ignore[no-untyped-def]
    """A settlement pays a dispensing organisation: one naming a manufacturer (or a
    distributor), even for a pack it holds, is a 400 naming org, and nothing is stored."""
    w = await small_world(admin)
    code = cn20(w["unit"], 1)
    await w["keys"]["M1"].events(event("commission", "M1", [code], 0, lot="L1", expiry="2030-12-31"))
    ins = await admin.key_for("insurer")
    for org in ("M1", "D1"):
        resp = await ins.post(
            "/v1/settlements", claim(f"SM-{org}", [{"quantity": 24, "codes": [code]}], org=org)
        )
        assert resp.status_code == 400, resp.text
        assert [e["field"] for e in resp.json()["errors"]] == ["org"]
    assert await db.fetchval("SELECT count(*) FROM settlements") == 0
    inv = await admin.key_for("investigator")
    assert (await inv.ok("GET", f"/v1/codes/{code}/history"))["units_left"] == 24
    # and verify there says not dispensable, first of all for that (found in review: it
    # said dispensable: true at M1, where the settlement is refused)
    answers = [
        await ins.ok("GET", f"/v1/codes/{code}/verify?org=M1"),
        await w["keys"]["M1"].ok("GET", f"/v1/codes/{code}/verify"),
        (await ins.ok("POST", "/v1/verify", {"org": "D1", "codes": [code]}))["items"][0],
    ]
    for answer in answers:
        assert answer["dispensable"] is False, answer
        assert answer["reasons"][0]["reason"] == "NOT_DISPENSING", answer
    assert [r["reason"] for r in answers[0]["reasons"]] == ["NOT_DISPENSING"]  # M1 holds it
    # a scan that is no code there too (found by a probe: INVALID_CODE alone)
    scanned = (await ins.ok("POST", "/v1/verify", {"org": "D1", "codes": ["not-a-code"]}))["items"][0]
    assert [r["reason"] for r in scanned["reasons"]] == ["NOT_DISPENSING", "INVALID_CODE"], scanned


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"mode": "maybe"}, "mode"),
        ({"lines": []}, "lines"),
        ({"at": "2099-01-01T00:00:00+00:00"}, "at"),
        ({"psn_no": 4501}, "psn_no"),
        ({"extra": True}, "extra"),
        # Python's "$" also matches before a final newline: this one was paid, and could
        # then be neither read nor reversed by its id (the path refused it)
        ({"setl_id": "BAD\n"}, "setl_id"),
        ({"org": "P1\n"}, "org"),
    ],
)
async def test_bad_settlements_are_400(admin: Api, db, change: dict[str, Any], field: str) -> None:  # type: ignore[no-untyped-def]
    w = await stocked(admin, n=1)
    body = {**claim("BAD", [{"quantity": 24, "codes": [w["codes"][0]]}]), **change}
    resp = await w["insurer"].post("/v1/settlements", body)
    assert resp.status_code == 400, resp.text
    assert field in [e["field"] for e in resp.json()["errors"]]
    assert await db.fetchval("SELECT count(*) FROM settlements") == 0
    dup_lines = claim("BAD", [{"quantity": 24, "codes": []}, {"quantity": 24, "codes": []}])
    dup_lines["lines"][1]["line_no"] = 1
    assert (await w["insurer"].post("/v1/settlements", dup_lines)).status_code == 400


async def test_racing_settlements_never_consume_a_unit_twice(admin: Api, db) -> None:  # type: ignore[no-untyped-def]
    """Many concurrent settlements over the same packs, codes listed in different orders:
    no deadlock, and consumed units never exceed what the packs hold."""
    w = await stocked(admin, n=4)
    ins, codes = w["insurer"], w["codes"]
    bodies = []
    for i in range(40):
        order = codes[i % 4 :] + codes[: i % 4]
        if i % 3 == 0:
            bodies.append(claim(f"R{i}", [{"quantity": 24 * 2, "codes": order[:2]}]))
        else:
            bodies.append(claim(f"R{i}", [{"quantity": 7, "codes": order, "split": True}]))
    answers = await asyncio.gather(*(ins.post("/v1/settlements", b) for b in bodies))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200]
    consumed = await db.fetch(
        "SELECT code, sum(units) AS units FROM consumptions WHERE reversed_at IS NULL GROUP BY code"
    )
    for row in consumed:
        assert row["units"] <= 24
    left = {r["code"]: r["units_left"] for r in await db.fetch("SELECT code, units_left FROM codes")}
    for row in consumed:
        assert left[row["code"]] == 24 - row["units"]
    paid_units = sum(sum(ln["units"] for ln in a.json()["lines"]) for a in answers)
    assert paid_units == sum(r["units"] for r in consumed)
    assert paid_units > 0


async def test_a_pack_changed_between_the_read_and_the_write_is_judged_again(
    admin: Api, db: Any, db_url: str
) -> None:
    """A settlement reads its packs without locking them and writes only if none changed
    since. Here another writer holds the pack's row while the settlement reads it, then
    sells the pack and commits: the settlement's write, which waited on that row, finds
    the pack changed, reads again and is refused (ALREADY_SETTLED) instead of taking the
    units a second time (without the version check it was accepted). The settlement runs
    through the use case on a pool of its own, as a request handler does: the in-process
    test client answers one request at a time."""
    from service.core.settlement import Claim, Line
    from service.usecases import settlements as settle_usecase
    from tests.helpers import BASE_TIME

    w = await stocked(admin, n=1)
    code = w["codes"][0]
    line = Line(1, CODG, 24, False, (code,))
    sale = Claim("RACE1", "P1", "450103199001011234", BASE_TIME + timedelta(hours=1), "settle", (line,))
    answer = await sold_elsewhere_meanwhile(
        db, db_url, code, lambda pool: settle_usecase.settle(pool, sale, b"test-secret"), "the settlement"
    )
    assert answer["decision"] == "rejected", answer
    assert reasons(answer) == ["ALREADY_SETTLED"]
    taken = await db.fetch("SELECT sale_id, units FROM consumptions WHERE code = $1", code)
    assert [(r["sale_id"], r["units"]) for r in taken] == [("OTHER-SALE", 24)]


async def test_settlements_racing_on_a_pool_of_their_own_never_consume_a_unit_twice(
    admin: Api, db: Any, db_url: str
) -> None:
    """As the test above, with the settlements really overlapping: 40 claims over the
    same 4 packs through the use case on a pool of 4 connections, whole packs and split
    sales, codes in different orders. Reads, decisions and writes interleave; every
    write that finds a pack changed runs again (or takes the locked transaction)."""
    from service.core.settlement import Claim, Line
    from service.store.db import create_pool
    from service.usecases import settlements as settle_usecase
    from tests.helpers import BASE_TIME

    w = await stocked(admin, n=4)
    codes = w["codes"]
    claims = []
    when = BASE_TIME + timedelta(hours=1)
    for i in range(40):
        order = tuple(codes[i % 4 :] + codes[: i % 4])
        line = Line(1, CODG, 48, False, order[:2]) if i % 3 == 0 else Line(1, CODG, 7, True, order)
        claims.append(Claim(f"RP{i}", "P1", f"45010319900101{i:04d}", when, "settle", (line,)))
    pool = await create_pool(db_url, min_size=4, max_size=4)
    try:
        answers = await asyncio.gather(*(settle_usecase.settle(pool, c, b"test-secret") for c in claims))
    finally:
        await pool.close()
    consumed = await units_taken_once(db, codes)
    paid = sum(ln["units"] for a in answers for ln in a["lines"])
    assert paid == sum(consumed.values())
    assert paid > 0


async def test_reversal_racing_a_return_restores_once(admin: Api, db) -> None:  # type: ignore[no-untyped-def]
    w = await stocked(admin, n=6)
    ins, p1 = w["insurer"], w["keys"]["P1"]
    for i, code in enumerate(w["codes"]):
        await ins.ok("POST", "/v1/settlements", claim(f"RR{i}", [{"quantity": 24, "codes": [code]}]))
    await asyncio.gather(
        *(ins.post(f"/v1/settlements/RR{i}/reversal", None) for i in range(6)),
        *(
            p1.post("/v1/events", {"events": [event("return", "P1", [c], 90, setl_id=f"RR{i}")]})
            for i, c in enumerate(w["codes"])
        ),
    )
    left = await db.fetch("SELECT units_left FROM codes WHERE code = ANY($1::text[])", w["codes"])
    assert [r["units_left"] for r in left] == [24] * 6


async def test_reversals_racing_returns_on_a_pool_of_their_own_restore_once(
    admin: Api, db: Any, db_url: str
) -> None:
    """The test above with the two really overlapping: each sale's reversal and the
    pharmacy's return of the same pack run at once, through the use cases on a pool of
    their own. Each pack gets its units back once."""
    import uuid

    from service.core.events import Incoming
    from service.store.db import create_pool
    from service.usecases import events as ingest_usecase
    from service.usecases import settlements as settle_usecase
    from tests.helpers import BASE_TIME

    w = await stocked(admin, n=6)
    ins = w["insurer"]
    for i, code in enumerate(w["codes"]):
        await ins.ok("POST", "/v1/settlements", claim(f"RQ{i}", [{"quantity": 24, "codes": [code]}]))
    when = BASE_TIME + timedelta(minutes=90)
    returns = [
        Incoming(event_id=uuid.uuid4(), type="return", at=when, org="P1", codes=(c,), setl_id=f"RQ{i}")
        for i, c in enumerate(w["codes"])
    ]
    pool = await create_pool(db_url, min_size=4, max_size=4)
    try:
        await asyncio.gather(
            *(settle_usecase.reverse(pool, f"RQ{i}") for i in range(6)),
            *(ingest_usecase.ingest(pool, [r], []) for r in returns),
        )
    finally:
        await pool.close()
    left = await db.fetch("SELECT units_left FROM codes WHERE code = ANY($1::text[])", w["codes"])
    assert [r["units_left"] for r in left] == [24] * 6


async def test_a_return_goes_back_only_to_the_seller(admin: Api) -> None:
    w = await stocked(admin)
    ins, code = w["insurer"], w["codes"][0]
    await ins.ok("POST", "/v1/settlements", claim("SOLD", [{"quantity": 24, "codes": [code]}]))
    await w["keys"]["H1"].events(event("return", "H1", [code], 90))  # not H1's sale
    again = await ins.ok("POST", "/v1/settlements", claim("RESOLD", [{"quantity": 24, "codes": [code]}]))
    assert reasons(again) == ["ALREADY_SETTLED"]


async def test_expiry_is_judged_on_the_date_in_china(admin: Api) -> None:
    w = await small_world(admin)
    m, p1 = w["keys"]["M1"], w["keys"]["P1"]
    code = cn20(w["unit"], 1)
    await m.events(
        event("commission", "M1", [code], 0, lot="L1", expiry="2026-03-02"),
        event("ship", "M1", [code], 1, to="P1"),
    )
    await p1.events(event("receive", "P1", [code], 2))
    ins = await admin.key_for("insurer")
    body = claim("LATE", [{"quantity": 24, "codes": [code]}])
    body["at"] = "2026-03-02T23:30:00+00:00"  # 07:30 on 3 March in Beijing: expired
    answer = await ins.ok("POST", "/v1/settlements", body)
    assert reasons(answer) == ["EXPIRED"]


async def test_a_reversal_gives_back_only_its_own_organisations_units(admin: Api) -> None:
    """Another organisation's dispense that names a settlement's setl_id is no part of
    that sale: the settlement's reversal gives back the settling pharmacy's pack, not the
    other's. Found in review: P9 dispensed its own pack under P1's setl_id, and P1's
    reversal made P9's pack whole again, sellable a second time without a DUPLICATE."""
    w = await small_world(admin)
    (mine,), (theirs,) = await received(w, "P1", [71]), await received(w, "P9", [72])
    ins = await admin.key_for("insurer")
    settled = await ins.ok("POST", "/v1/settlements", claim("S-OWN", [{"quantity": 24, "codes": [mine]}]))
    assert settled["decision"] == "accepted"
    await w["keys"]["P9"].events(event("dispense", "P9", [theirs], 5, setl_id="S-OWN"))
    reversed_ = await ins.ok("POST", "/v1/settlements/S-OWN/reversal", None)
    assert reversed_["restored"] == [{"code": mine, "units": 24}]
    inv = await admin.key_for("investigator")
    left = [(await inv.ok("GET", f"/v1/codes/{c}/history"))["units_left"] for c in (mine, theirs)]
    assert left == [24, 0]


async def test_a_reversal_gives_back_the_packs_it_billed_whoever_dispensed_them(admin: Api) -> None:
    """The settlement was credited the units another organisation's dispense under its id
    took from the pack it billed (that dispense raised DIVERSION): its reversal gives
    them back, as API.md's reversal does. Found in review of the rule above, which at
    first gave back only the settling organisation's own units, here nothing. The
    dispense is dated after the sale (60): it takes the pack over (README, "Custody
    follows every scan"), so dated before it, P1's settlement would not be P1's to make."""
    w = await small_world(admin)
    (pack,) = await received(w, "P1", [81])
    sold = await w["keys"]["P9"].events(event("dispense", "P9", [pack], 61, setl_id="S-X"))
    assert "DIVERSION" in [f["kind"] for f in sold["flags"]]  # (and OUT_OF_REGION: P9 is in Beijing)
    ins = await admin.key_for("insurer")
    settled = await ins.ok("POST", "/v1/settlements", claim("S-X", [{"quantity": 24, "codes": [pack]}]))
    assert settled["decision"] == "accepted"
    reversed_ = await ins.ok("POST", "/v1/settlements/S-X/reversal", None)
    assert reversed_["restored"] == [{"code": pack, "units": 24}]
    assert (await w["keys"]["P1"].ok("GET", f"/v1/codes/{pack}/verify"))["units_left"] == 24


@pytest.mark.parametrize("codg", [f"{CODG} ", f"\u200b{CODG}", CODG.replace("X", "Ｘ", 1)])
async def test_a_billed_item_that_is_not_a_plain_identifier_is_refused(admin: Api, db, codg: str) -> None:  # type: ignore[no-untyped-def]
    """A catalogue code with a space at an end, an invisible character or a full-width
    letter reads as the real one to a person but is another item: it was judged
    PRODUCT_MISMATCH and raised a flag against the pharmacy (found by a probe). Refused,
    400 naming the line's med_list_codg, nothing stored, as a look-alike psn_no is."""
    w = await stocked(admin, n=1)
    body = claim("LOOK1", [{"quantity": 24, "codes": w["codes"]}])
    body["lines"][0]["med_list_codg"] = codg
    resp = await w["insurer"].post("/v1/settlements", body)
    assert resp.status_code == 400, resp.text
    assert [e["field"] for e in resp.json()["errors"]] == ["lines[0].med_list_codg"]
    assert await db.fetchval("SELECT count(*) FROM settlements WHERE setl_id = 'LOOK1'") == 0
    assert await db.fetchval("SELECT count(*) FROM flags") == 0
    again = claim("LOOK1", [{"quantity": 24, "codes": w["codes"]}])
    plain = await w["insurer"].ok("POST", "/v1/settlements", again)
    assert plain["decision"] == "accepted"
