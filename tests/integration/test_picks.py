"""A pack picked out of its case without an unpack scan leaves the case: the case's
later moves do not carry it, and its new holder may settle it."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.helpers import Api, at, cn20, event, small_world, sscc
from tests.integration.test_console import _sign_in

pytestmark = pytest.mark.asyncio(loop_scope="session")

CODG = "XJ01CAA040A001010104256"


async def _world(admin: Api) -> dict[str, Any]:
    """small_world plus a second pharmacy P2 (the ``G`` of the bug report) in region 45,
    three packs u1-u3 and their case."""
    w = await small_world(admin)
    org = {"id": "P2", "name": "P2 Ltd", "kind": "pharmacy", "region": "450103"}
    await admin.ok("POST", "/v1/orgs", org, 201)
    w["keys"]["P2"] = await admin.key_for("org", "P2")
    w["units"] = [cn20(w["unit"], i) for i in range(1, 4)]
    w["box"] = sscc(1)
    w["insurer"] = await admin.key_for("insurer")
    w["investigator"] = await admin.key_for("investigator")
    return w


def _journey(w: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The four steps of the report, as each organisation uploads them."""
    units, box = w["units"], w["box"]
    u1 = units[0]
    return {
        # 1. M1 -> D1 -> P1, the case with u1-u3 inside
        "case": [
            event("commission", "M1", units, 0, lot="L1", expiry="2030-12-31"),
            event("pack", "M1", units, 1, parent=box),
            event("ship", "M1", [box], 2, to="D1"),
            event("receive", "D1", [box], 3, **{"from": "M1"}),
            event("ship", "D1", [box], 4, to="P1"),
            event("receive", "P1", [box], 5),
        ],
        # 2. P1 picks u1 out of the case (no unpack scan) and ships it to P2
        "pick": [event("ship", "P1", [u1], 6, to="P2")],
        "pick_received": [event("receive", "P2", [u1], 7, **{"from": "P1"})],
        # 3. P1 sends the case on to D1
        "case_on": [event("ship", "P1", [box], 8, to="D1")],
    }


def _claim(code: str, org: str = "P2") -> dict[str, Any]:
    return {
        "setl_id": f"S-PICK-{org}",
        "org": org,
        "psn_no": "450103199001011234",
        "at": at(60),
        "lines": [{"line_no": 1, "med_list_codg": CODG, "quantity": 24, "codes": [code]}],
    }


async def _post(admin: Api, events: list[dict[str, Any]]) -> None:
    out = await admin.events(*events)
    assert out["rejected"] == [], out


async def _check_outcome(w: dict[str, Any], journey: dict[str, list[dict[str, Any]]]) -> None:
    inv, box = w["investigator"], w["box"]
    u1, u2, u3 = w["units"]
    # 4. P2 settles u1: it holds the pack, so the line is payable and nothing is flagged
    answer = await w["insurer"].ok("POST", "/v1/settlements", _claim(u1))
    assert answer["decision"] == "accepted", answer
    assert answer["lines"][0]["payable"] is True
    assert answer["flags"] == []

    history = await inv.ok("GET", f"/v1/codes/{u1}/history")
    assert (history["state"], history["custodian"], history["container"]) == ("dispensed", "P2", None)
    pick = journey["pick"][0]["event_id"]
    shown = [
        (e["type"], e["event_id"], e.get("implicit"), e.get("parent"), e.get("via"))
        for e in history["events"]
    ]
    assert shown[-3:] == [
        ("unpack", pick, True, box, None),  # the moment u1 left its case, caused by the ship
        ("ship", pick, None, None, None),
        ("receive", journey["pick_received"][0]["event_id"], None, None, None),
    ]
    unpack, ship = history["events"][-3:-1]
    assert (unpack["at"], unpack["org"]) == (ship["at"], "P1")
    case_on = journey["case_on"][0]["event_id"]
    assert case_on not in {e["event_id"] for e in history["events"]}  # the case left without it
    assert [f for f in history["flags"] if f["status"] != "auto_cleared"] == []

    for unit in (u2, u3):  # the rest of the case went on to D1
        rest = await inv.ok("GET", f"/v1/codes/{unit}/history")
        assert (rest["state"], rest["destination"], rest["container"]) == ("in_transit", "D1", box)
        assert rest["events"][-1]["event_id"] == case_on
        assert rest["events"][-1]["via"] == box
    case = await inv.ok("GET", f"/v1/codes/{box}/history")
    assert sorted(case["contents"]) == sorted([u2, u3])

    # a receive uploaded before its ship may have been suspected; the ship explained it
    diversions = await inv.ok("GET", f"/v1/flags?code={u1}&kind=DIVERSION")
    assert [f["status"] for f in diversions["items"]] in ([], ["auto_cleared"])


async def test_a_pack_picked_out_of_its_case_stays_with_its_new_holder(admin: Api) -> None:
    """The report's four steps, uploaded in order, each by its organisation."""
    w = await _world(admin)
    journey = _journey(w)
    keys = w["keys"]
    for e in journey["case"]:
        await _post(keys[e["org"]], [e])
    await _post(keys["P1"], journey["pick"])
    await _post(keys["P2"], journey["pick_received"])
    picked = await w["investigator"].ok("GET", f"/v1/codes/{w['units'][0]}/history")
    assert (picked["custodian"], picked["container"]) == ("P2", None)
    await _post(keys["P1"], journey["case_on"])
    await _check_outcome(w, journey)


async def test_a_pick_uploaded_late_converges_to_the_same(admin: Api) -> None:
    """P2's receive and then P1's ship of the pick arrive after the case has moved on:
    the fold is replayed by event time and ends as in order."""
    w = await _world(admin)
    journey = _journey(w)
    await _post(admin, journey["case"])
    await _post(admin, journey["case_on"])  # u1 goes along with the case to D1, for now
    await _post(admin, journey["pick_received"])  # a receive by P2 that nothing explains yet
    await _post(admin, journey["pick"])
    await _check_outcome(w, journey)


async def test_a_pack_settled_out_of_its_case_leaves_the_case_in_its_history(admin: Api) -> None:
    """P1 settles u1 out of the case it received (no unpack scan), then sends the case
    on to P2: u1's history shows the settlement's pick and not the case's later moves,
    as its state does."""
    w = await _world(admin)
    journey = _journey(w)
    await _post(admin, journey["case"])
    u1, u2 = w["units"][:2]
    answer = await w["insurer"].ok("POST", "/v1/settlements", _claim(u1, "P1"))
    assert answer["decision"] == "accepted", answer
    moves = [event("ship", "P1", [w["box"]], 70, to="P2"), event("receive", "P2", [w["box"]], 71)]
    await _post(admin, moves)

    history = await w["investigator"].ok("GET", f"/v1/codes/{u1}/history")
    assert (history["state"], history["custodian"], history["container"]) == ("dispensed", "P1", None)
    pick = history["events"][-1]
    shown = (pick["type"], pick["implicit"], pick["parent"], pick["setl_id"], pick["org"])
    assert shown == ("unpack", True, w["box"], "S-PICK-P1", "P1")
    assert pick["at"] == history["settlements"][0]["at"]
    assert {m["event_id"] for m in moves}.isdisjoint(e["event_id"] for e in history["events"])
    rest = await w["investigator"].ok("GET", f"/v1/codes/{u2}/history")  # the case took the rest
    assert [e["event_id"] for e in rest["events"][-2:]] == [m["event_id"] for m in moves]
    assert (rest["custodian"], rest["container"]) == ("P2", w["box"])


async def test_a_packs_history_shows_its_case_going_onto_a_pallet_and_off_it(admin: Api) -> None:
    """A case packed onto a pallet and later unpacked from it does not move the packs
    inside, but their history shows both, through the case: the pallet's moves that
    carried them are explained (found by a probe: only the case's own history had them)."""
    w = await _world(admin)
    u1 = w["units"][0]
    pallet = sscc(99)
    steps = [
        event("commission", "M1", w["units"], 0, lot="L1", expiry="2030-12-31"),
        event("pack", "M1", w["units"], 1, parent=w["box"]),
        event("pack", "M1", [w["box"]], 2, parent=pallet),
        event("ship", "M1", [pallet], 3, to="D1"),
        event("receive", "D1", [pallet], 4),
        event("unpack", "D1", [w["box"]], 5, parent=pallet),
    ]
    await _post(admin, steps)
    history = await w["investigator"].ok("GET", f"/v1/codes/{u1}/history")
    shown = [(e["type"], e.get("via"), e.get("parent")) for e in history["events"]]
    assert shown == [
        ("commission", None, None),
        ("pack", None, w["box"]),
        ("pack", w["box"], pallet),
        ("ship", pallet, None),
        ("receive", pallet, None),
        ("unpack", w["box"], pallet),
    ], shown


async def test_a_packs_history_lists_the_flags_its_case_raised_while_carrying_it(admin: Api) -> None:
    """D2 takes in a case M1 shipped to P1: DIVERSION is raised on the case, the code the
    receive named. The pack inside travelled with it, and its history lists that receive
    (via the case) but not the flag (found by a probe): an investigator who looks up a
    diverted pack must see the diversion. A pack taken out of the case before does not
    get it."""
    w = await _world(admin)
    m, d2, inv = w["keys"]["M1"], w["keys"]["D2"], w["investigator"]
    inside, out = w["units"][0], w["units"][1]
    box = w["box"]
    await m.events(
        event("commission", "M1", [inside, out], 0, lot="L1", expiry="2030-12-31"),
        event("pack", "M1", [inside, out], 1, parent=box),
        event("unpack", "M1", [out], 2, parent=box),
        event("ship", "M1", [box], 3, to="P1"),
    )
    await d2.events(event("receive", "D2", [box], 4))
    on_box = [(f["kind"], f["code"]) for f in (await inv.ok("GET", f"/v1/codes/{box}/history"))["flags"]]
    assert ("DIVERSION", box) in on_box, on_box

    history = await inv.ok("GET", f"/v1/codes/{inside}/history")
    assert ("receive", "D2", box) in [(e["type"], e["org"], e.get("via")) for e in history["events"]]
    assert ("DIVERSION", box) in [(f["kind"], f["code"]) for f in history["flags"]], history["flags"]
    elsewhere = await inv.ok("GET", f"/v1/codes/{out}/history")
    assert box not in [f["code"] for f in elsewhere["flags"]], elsewhere["flags"]

    # the console's code page says whose flag it is
    browser = admin.client
    browser.cookies.clear()
    try:
        assert (await _sign_in(browser, inv.key)).status_code == 303
        browser.cookies.set("console_lang", "en")
        page = (await browser.get("/console/codes", params={"q": inside})).text
    finally:
        browser.cookies.clear()
    assert re.search(rf"raised on <bdi[^>]*>{box}</bdi>, which carried it", page), page
