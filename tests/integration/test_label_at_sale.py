"""A pack's label against its record at the point of care and at the sale.

A GS1 element string may carry the pack's lot (10) and expiry (17) beside its GTIN and
serial. The commission records them (and refuses a label that disagrees,
``test_events``); a later scan whose label says another lot or expiry is a pack that
was not made as the code's record says: a serial copied onto another lot's packaging,
a fake. Verify answers it is not dispensable, a settlement line is not payable, and a
sale reported after the fact (a dispense, an NHSA 3505) is taken as evidence and
flagged. A label that agrees, or says nothing of them, changes nothing (found by a
probe: only the commission compared them)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import Api, at, event, small_world
from tests.integration.test_epcis import LOT, M_LOC, P_LOC, _doc, _ev, _pharma_world
from tests.integration.test_nhsa import MED, P1_CODE, envelope, nhsa, sale

pytestmark = pytest.mark.asyncio(loop_scope="session")

GTIN = "10614141073464"


def label(serial: str, *, lot: str | None = None, expiry: str | None = None) -> str:
    """The pack's GS1 element string as scanned, with the label's lot and expiry when given."""
    return (
        f"(01){GTIN}" + (f"(17){expiry}" if expiry else "") + (f"(10){lot}" if lot else "") + f"(21){serial}"
    )


def canonical(serial: str) -> str:
    return f"01{GTIN}21{serial}"


async def _world(admin: Api, org: str = "P1", fixmedins_code: str | None = None) -> dict[str, Any]:
    """The small world, a GS1 product billed as the unit product's item, and packs
    S1..S6 of it commissioned in lot L1 expiring 2030-12-31, received by ``org``."""
    w = await small_world(admin)
    if fixmedins_code is not None:
        body = {
            "id": org,
            "name": org,
            "kind": "pharmacy",
            "region": "450103",
            "fixmedins_code": fixmedins_code,
        }
        await admin.ok("POST", "/v1/orgs", body, 201)
        w["keys"][org] = await admin.key_for("org", org)
    product = {"product_id": GTIN, "name": "Amoxicillin (GS1)", "med_list_codg": MED, "pack_units": 24,
               "manufacturer": "M1"}  # fmt: skip
    await admin.ok("POST", "/v1/products", product, 201)
    codes = [label(f"S{i}") for i in range(1, 7)]
    await w["keys"]["M1"].events(
        event("commission", "M1", codes, 0, lot="L1", expiry="2030-12-31"),
        event("ship", "M1", codes, 1, to=org),
    )
    await w["keys"][org].events(event("receive", org, codes, 2))
    return w


async def test_verify_says_a_pack_whose_label_disagrees_is_not_dispensable(admin: Api) -> None:
    w = await _world(admin)
    p1 = w["keys"]["P1"]
    scans = [
        label("S1", lot="L1", expiry="301231"),  # agrees
        label("S1", lot="L2"),  # another lot
        label("S1", expiry="291231"),  # another expiry
        label("S1"),  # says nothing of them
        canonical("S1"),
    ]
    out = await p1.ok("POST", "/v1/verify", {"codes": scans})
    assert [item["dispensable"] for item in out["items"]] == [True, False, False, True, True]
    assert [r["reason"] for r in out["items"][1]["reasons"]] == ["LABEL_MISMATCH"]
    assert "lot L2 (the record: L1)" in out["items"][1]["reasons"][0]["detail"]
    assert "expiry 2029-12-31 (the record: 2030-12-31)" in out["items"][2]["reasons"][0]["detail"]
    one = await p1.ok("GET", f"/v1/codes/{label('S1', lot='L2')}/verify")
    assert (one["dispensable"], [r["reason"] for r in one["reasons"]]) == (False, ["LABEL_MISMATCH"])
    assert one["lot"] == "L1"  # the record, as before


async def test_a_settlement_line_whose_label_disagrees_is_not_paid_and_is_flagged(admin: Api) -> None:
    w = await _world(admin)
    p1, insurer = w["keys"]["P1"], await admin.key_for("insurer")
    claim = {
        "setl_id": "LBL-1",
        "org": "P1",
        "psn_no": "450103199001011234",
        "at": at(10),
        "mode": "settle",
        "lines": [
            {"line_no": 1, "med_list_codg": MED, "quantity": 24, "codes": [label("S2", lot="L9")]},
            {"line_no": 2, "med_list_codg": MED, "quantity": 24, "codes": [label("S3", lot="L1")]},
        ],
    }
    out = await insurer.ok("POST", "/v1/settlements", claim)
    assert out["decision"] == "partial", out
    assert [line["payable"] for line in out["lines"]] == [False, True]
    assert [r["reason"] for r in out["lines"][0]["reasons"]] == ["LABEL_MISMATCH"]
    assert [(f["kind"], f["code"]) for f in out["flags"]] == [("LABEL_MISMATCH", canonical("S2"))]
    left = await p1.ok("POST", "/v1/verify", {"codes": [canonical("S2"), canonical("S3")]})
    assert [item["units_left"] for item in left["items"]] == [24, 0]  # the unpaid line took nothing
    inv = await admin.key_for("investigator")
    flag = (await inv.ok("GET", f"/v1/flags?kind=LABEL_MISMATCH&code={canonical('S2')}"))["items"][0]
    assert flag["refs"]["settlements"] == ["LBL-1"]
    assert "lot L9 (the record: L1)" in flag["detail"]


async def test_a_dispense_of_a_pack_whose_label_disagrees_is_taken_and_flagged(admin: Api) -> None:
    w = await _world(admin)
    p1 = w["keys"]["P1"]
    out = await p1.events(
        event("dispense", "P1", [label("S4", expiry="291231"), label("S5", lot="L1", expiry="301231")], 10)
    )
    assert out["accepted"] == 2, out  # evidence of a sale: taken
    assert [(f["kind"], f["code"]) for f in out["flags"]] == [("LABEL_MISMATCH", canonical("S4"))]
    inv = await admin.key_for("investigator")
    listed = (await inv.ok("GET", "/v1/flags?kind=LABEL_MISMATCH"))["items"]
    assert [(f["flag_id"], f["code"], len(f["refs"]["events"])) for f in listed] == [
        (out["flags"][0]["flag_id"], canonical("S4"), 1)
    ]
    assert "expiry 2029-12-31 (the record: 2030-12-31)" in listed[0]["detail"]
    # a ship of such a pack is a move, not a sale: not compared
    moved = await w["keys"]["P1"].events(event("ship", "P1", [label("S6", lot="L7")], 11, to="D1"))
    assert (moved["accepted"], moved["flags"]) == (1, [])


async def test_an_nhsa_sale_of_a_pack_whose_label_disagrees_is_flagged(admin: Api) -> None:
    w = await _world(admin, "P2", P1_CODE)
    p2 = w["keys"]["P2"]
    rows = [sale("LB1", [label("S1", lot="L3")], 24), sale("LB2", [label("S2", lot="L1")], 24)]
    out = await nhsa(p2, envelope("3505A", {"selinfoDetail": rows}))
    assert out["infcode"] == 0, out
    tracecode = out["output"]["tracecode"]
    assert tracecode["accepted"] == 2
    assert [(f["kind"], f["code"]) for f in tracecode["flags"] if f["kind"] == "LABEL_MISMATCH"] == [
        ("LABEL_MISMATCH", canonical("S1"))
    ]


async def test_epcis_compares_a_digital_links_lot_at_commissioning_and_at_the_sale(admin: Api) -> None:
    """EPCIS names a pack by an EPC URN, which carries no lot, or by a Digital Link,
    whose path may (``/01/…/10/{lot}/21/…``). Commissioned with an ``ilmd`` lot, a
    Digital Link of another lot is refused, as on /v1/events; a dispensing event of one
    is taken and flagged."""
    keys = await _pharma_world(admin)
    link = "https://id.gs1.org/01/10614141073464/10/{lot}/21/{serial}"
    made = _ev(
        "ObjectEvent", 1, M_LOC, action="ADD", bizStep="commissioning", ilmd=LOT,
        epcList=[link.format(lot="L1", serial="7"), link.format(lot="L2", serial="8"),
                 "urn:epc:id:sgtin:0614141.107346.9"],
    )  # fmt: skip
    resp = await keys["M1"].client.post(
        "/epcis/capture",
        headers={**keys["M1"].headers, "GS1-Capture-Error-Behaviour": "proceed"},
        json=_doc(made),
    )
    job = resp.json()
    assert job["eventCount"] == 1, job
    assert "LABEL_MISMATCH" in job["errors"][0]["detail"], job
    codes = [f"01{GTIN}21{s}" for s in ("7", "9")]
    for code in codes:  # to the pharmacy, as /v1/events moves them
        await keys["M1"].events(event("ship", "M1", [code], 2, to="P1"))
        await keys["P1"].events(event("receive", "P1", [code], 3))
    sold = _ev(
        "ObjectEvent", 4, P_LOC, action="OBSERVE", bizStep="dispensing",
        epcList=[link.format(lot="L9", serial="7"), link.format(lot="L1", serial="9")],
    )  # fmt: skip
    resp = await keys["P1"].post("/epcis/capture", _doc(sold))
    assert (resp.status_code, resp.json()["success"]) == (202, True), resp.text
    flags = (await keys["inv"].ok("GET", "/v1/flags?kind=LABEL_MISMATCH"))["items"]
    assert [(f["code"], f["org"]) for f in flags] == [(codes[0], "P1")]
    assert "lot L9 (the record: L1)" in flags[0]["detail"]


async def test_epcis_compares_a_digital_links_expiry_in_its_query_string(admin: Api) -> None:
    """A Digital Link carries its expiry as a data attribute (``?17=YYMMDD``), with or
    without a lot in its path. It was read past (a known limit): a link of another expiry
    than the ``ilmd``'s was commissioned, and sold with no flag. It is compared as an
    element string's (17) is."""
    keys = await _pharma_world(admin)
    link = "https://id.gs1.org/01/10614141073464/21/{serial}?17={expiry}"
    made = _ev(
        "ObjectEvent", 1, M_LOC, action="ADD", bizStep="commissioning", ilmd=LOT,
        epcList=[link.format(serial="31", expiry="301231"), link.format(serial="32", expiry="280630")],
    )  # fmt: skip
    resp = await keys["M1"].client.post(
        "/epcis/capture",
        headers={**keys["M1"].headers, "GS1-Capture-Error-Behaviour": "proceed"},
        json=_doc(made),
    )
    job = resp.json()
    assert "LABEL_MISMATCH" in job["errors"][0]["detail"], job
    code = "01106141410734642131"
    await keys["M1"].events(event("ship", "M1", [code], 2, to="P1"))
    await keys["P1"].events(event("receive", "P1", [code], 3))
    sold = _ev("ObjectEvent", 4, P_LOC, action="OBSERVE", bizStep="dispensing",
               epcList=[link.format(serial="31", expiry="270101")])  # fmt: skip
    resp = await keys["P1"].post("/epcis/capture", _doc(sold))
    assert (resp.status_code, resp.json()["success"]) == (202, True), resp.text
    flags = (await keys["inv"].ok("GET", "/v1/flags?kind=LABEL_MISMATCH"))["items"]
    assert [(f["code"], f["org"]) for f in flags] == [(code, "P1")]
    assert "2027-01-01" in flags[0]["detail"], flags[0]["detail"]
