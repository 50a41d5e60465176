"""EXCESS_PURCHASE against the ways a probe found around it: one person under several
spellings of the number, an item that carries no code, settlements racing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from service.config import Settings
from tests.helpers import Api, at, cn20, event, received, world

pytestmark = pytest.mark.asyncio(loop_scope="session")

ITEM = "XN02AX02"
LIMITED = {
    "product_id": "8123458",
    "name": "Tramadol 50mg x 10",
    "med_list_codg": ITEM,
    "pack_units": 10,
    "manufacturer": "M1",
    "regions": ["45"],
    "person_limit": {"units": 20, "days": 7},
}


async def limited_world(admin: Api, n: int = 8) -> dict[str, Any]:
    """:func:`world` plus a product limited to 20 units a person in 7 days, ``n`` packs
    of 10 units held by pharmacy P1."""
    w = await world(admin)
    await admin.ok("POST", "/v1/products", LIMITED, 201)
    w["packs"] = await received(w, "P1", list(range(1, n + 1)), product="8123458", lot="T1")
    return w


def sale(setl_id: str, psn_no: str, packs: list[str], minutes: float = 60) -> dict[str, Any]:
    """A settlement at P1 of whole packs of the limited product."""
    return {
        "setl_id": setl_id,
        "org": "P1",
        "psn_no": psn_no,
        "at": at(minutes),
        "lines": [{"line_no": 1, "med_list_codg": ITEM, "quantity": 10 * len(packs), "codes": packs}],
    }


def kinds(answer: dict[str, Any]) -> list[str]:
    return [f["kind"] for f in answer["flags"]]


async def test_one_person_is_one_person_whatever_the_case_of_the_check_character(admin: Api) -> None:
    """A Chinese ID number ends in X, also written x: the same person. Found by a probe:
    20 units as ``…777X``, then 10 as ``…777x``, raised no EXCESS_PURCHASE (limit 20)."""
    w = await limited_world(admin)
    ins, inv, packs = w["insurer"], w["inv"], w["packs"]
    first = await ins.ok("POST", "/v1/settlements", sale("X1", "45010319900101777X", packs[:2]))
    assert (first["decision"], first["flags"]) == ("accepted", [])
    second = await ins.ok("POST", "/v1/settlements", sale("X2", "45010319900101777x", packs[2:3], 61))
    assert second["decision"] == "accepted"
    assert kinds(second) == ["EXCESS_PURCHASE"], second
    flag = await inv.ok("GET", f"/v1/flags/{second['flags'][0]['flag_id']}")
    assert (flag["refs"]["settlements"], flag["refs"]["units"]) == (["X1", "X2"], 30)
    # both settlements keep the one hash
    one = await ins.ok("GET", "/v1/settlements/X1")
    two = await ins.ok("GET", "/v1/settlements/X2")
    assert one["request"]["psn_hash"] == two["request"]["psn_hash"]


async def test_a_claim_resent_with_the_other_case_of_x_is_a_replay(
    admin: Api, db: Any, settings: Settings
) -> None:
    """The person number is part of the claim as read: ``…x`` then ``…X`` under one
    setl_id is the same claim, answered from the stored settlement, not a 409; another
    person is still a conflict. One stored before the number was upper-cased (its
    fingerprint of the number as sent) is still a replay sent as it was."""
    from service.core.settlement import Claim, Line, canonical, fingerprint

    w = await limited_world(admin)
    ins, packs = w["insurer"], w["packs"]
    body = sale("XR", "45010319900101666x", packs[:1])
    first = await ins.ok("POST", "/v1/settlements", body)
    assert first["decision"] == "accepted"
    assert await ins.ok("POST", "/v1/settlements", body) == first
    assert await ins.ok("POST", "/v1/settlements", {**body, "psn_no": "45010319900101666X"}) == first
    assert (await ins.post("/v1/settlements", {**body, "psn_no": "45010319900101665X"})).status_code == 409
    # as stored before: the fingerprint of the claim with the number as sent
    when = datetime.fromisoformat(body["at"]).astimezone(UTC)
    line = Line(1, ITEM, 10, False, (canonical(packs[0]) or packs[0],))
    before = Claim("XR", "P1", body["psn_no"], when, "settle", (line,))
    await db.execute(
        "UPDATE settlements SET body_hash = $1 WHERE setl_id = 'XR'", fingerprint(settings.psn_secret, before)
    )
    assert await ins.ok("POST", "/v1/settlements", body) == first


@pytest.mark.parametrize(
    "psn_no",
    [
        "45010319900101888X ",  # a space at an end: found by a probe to hash as another person
        " 45010319900101888X",
        " ",  # blank
        "４５０１０３１９９００１０１８８８Ｘ",  # full-width digits (NFKC would change them)
        "45010319900101888X\u200b",  # a zero-width space
        "4501031990\u202e0101888X",  # a direction mark
        "4501031990\t0101888X",  # a control character
    ],
)
async def test_a_person_number_that_is_not_a_plain_identifier_is_refused(
    admin: Api, db: Any, psn_no: str
) -> None:
    """A look-alike of a person number would be a person of its own, whose purchases
    the real one's EXCESS_PURCHASE count misses: refused, 400 naming ``psn_no``, as a
    look-alike lot is (nothing is stored)."""
    w = await limited_world(admin, n=1)
    resp = await w["insurer"].post("/v1/settlements", sale("XB", psn_no, w["packs"]))
    assert resp.status_code == 400, resp.text
    assert [e["field"] for e in resp.json()["errors"]] == ["psn_no"]
    assert await db.fetchval("SELECT count(*) FROM settlements") == 0
    # the same number written plainly is taken
    plain = await w["insurer"].ok("POST", "/v1/settlements", sale("XB", "45010319900101888X", w["packs"]))
    assert plain["decision"] == "accepted"


EXEMPT = {
    "product_id": "8123459",
    "name": "Medical gauze",
    "med_list_codg": "MEX",
    "pack_units": 10,
    "manufacturer": "M1",
    "regions": ["45"],
    "trace_exempt": True,
    "person_limit": {"units": 20, "days": 7},
}


def exempt_sale(
    setl_id: str, psn_no: str, quantity: int, minutes: float, codes: list[str] | None = None
) -> dict[str, Any]:
    line: dict[str, Any] = {"line_no": 1, "med_list_codg": "MEX", "quantity": quantity}
    if codes:
        line["codes"] = codes
    return {"setl_id": setl_id, "org": "P1", "psn_no": psn_no, "at": at(minutes), "lines": [line]}


async def test_an_item_that_carries_no_code_counts_toward_its_person_limit(admin: Api) -> None:
    """A trace-exempt product with a person limit, billed without codes: each payable
    line counts its quantity, and says the units it billed. Found by a probe: 100 units
    of it (limit 20) were paid as ``units: 0`` and raised no EXCESS_PURCHASE; nor did
    15 + 15 without codes and 10 with a code."""
    w = await world(admin)
    await admin.ok("POST", "/v1/products", EXEMPT, 201)
    ins, inv = w["insurer"], w["inv"]
    packs = [cn20("8123459", i) for i in (1, 2)]
    await w["keys"]["M1"].events(
        event("commission", "M1", packs, 0, lot="G1", expiry="2030-12-31"),
        event("ship", "M1", packs, 1, to="P1"),
    )
    await w["keys"]["P1"].events(event("receive", "P1", packs, 2))
    # one settlement of 100 units without codes
    big = await ins.ok("POST", "/v1/settlements", exempt_sale("E2-1", "E2", 100, 60))
    assert big["decision"] == "accepted"
    assert big["lines"][0]["units"] == 100
    assert [(f["kind"], f["code"]) for f in big["flags"]] == [("EXCESS_PURCHASE", "MEX")], big
    flag = await inv.ok("GET", f"/v1/flags/{big['flags'][0]['flag_id']}")
    assert (flag["refs"]["settlements"], flag["refs"]["units"]) == (["E2-1"], 100)
    found = await inv.ok("GET", "/v1/flags?kind=EXCESS_PURCHASE&med_list_codg=MEX")
    assert [f["flag_id"] for f in found["items"]] == [flag["flag_id"]]
    # 15 without codes, then 10 with a code: 25
    first = await ins.ok("POST", "/v1/settlements", exempt_sale("E3-1", "E3", 15, 60))
    assert (first["decision"], first["lines"][0]["units"], first["flags"]) == ("accepted", 15, [])
    coded = await ins.ok("POST", "/v1/settlements", exempt_sale("E3-2", "E3", 10, 61, [packs[0]]))
    assert coded["decision"] == "accepted"
    assert [(f["kind"], f["code"]) for f in coded["flags"]] == [("EXCESS_PURCHASE", packs[0])], coded
    flag = await inv.ok("GET", f"/v1/flags/{coded['flags'][0]['flag_id']}")
    assert (flag["refs"]["settlements"], flag["refs"]["units"]) == (["E3-1", "E3-2"], 25)
    # 15 + 15 without codes, then 10 with a code: flagged once, at 30
    kinds_of = []
    for i, (quantity, codes) in enumerate(((15, None), (15, None), (10, [packs[1]]))):
        answer = await ins.ok(
            "POST", "/v1/settlements", exempt_sale(f"E4-{i}", "E4", quantity, 60 + i, codes)
        )
        assert answer["decision"] == "accepted"
        kinds_of.append(kinds(answer))
    assert kinds_of == [[], ["EXCESS_PURCHASE"], []]
    # a refund takes a line without codes out of the count too
    await ins.ok("POST", "/v1/settlements", exempt_sale("E5-1", "E5", 15, 60))
    await ins.ok("POST", "/v1/settlements/E5-1/reversal")
    again = await ins.ok("POST", "/v1/settlements", exempt_sale("E5-2", "E5", 10, 61))
    assert again["flags"] == []  # 10 of 20


async def test_a_persons_racing_settlements_past_the_limit_raise_one_flag(
    admin: Api, db: Any, db_url: str
) -> None:
    """Three settlements of 10 units each (limit 20) of one person, at once, through the
    use case on a pool of their own (the in-process test client answers one request at
    a time). Found by a probe: they did not see each other's units, and most rounds
    raised no flag at all. A person's settlements of a limited item take turns: each
    round raises exactly one EXCESS_PURCHASE."""
    import asyncio

    from service.core.settlement import Claim, Line
    from service.store.db import create_pool
    from service.usecases import settlements as settle_usecase
    from tests.helpers import BASE_TIME

    rounds = 8
    w = await limited_world(admin, n=3 * rounds)
    packs = w["packs"]
    pool = await create_pool(db_url, min_size=3, max_size=3)
    raised = []
    try:
        for r in range(rounds):
            claims = [
                Claim(
                    f"RC{r}-{i}",
                    "P1",
                    f"4501031990010{r:04d}X",
                    BASE_TIME + timedelta(hours=1),  # one time: none is late for another
                    "settle",
                    (Line(1, ITEM, 10, False, (packs[3 * r + i],)),),
                )
                for i in range(3)
            ]
            answers = await asyncio.gather(*(settle_usecase.settle(pool, c, b"test-secret") for c in claims))
            assert all(a["decision"] == "accepted" for a in answers), answers
            raised.append(sum(len(a["flags"]) for a in answers))
    finally:
        await pool.close()
    assert raised == [1] * rounds
    found = await w["inv"].ok("GET", "/v1/flags?kind=EXCESS_PURCHASE&limit=100")
    assert len(found["items"]) == rounds
    assert await db.fetchval("SELECT count(*) FROM purchases") == 3 * rounds


DAY = 24 * 60  # minutes


async def test_each_window_past_the_limit_raises_a_flag_of_its_own(admin: Api) -> None:
    """An item billed without codes: every flag's code is the item. Found by a probe: 30
    units (limit 20 in 7 days), the flag dismissed, then 30 units a month later was
    answered with the dismissed flag and left no flag open: every window's excess rested
    on one piece of evidence (the person and the item), and the first flag's time held
    back each later one. Each window is a flag of its own; within one, still one flag."""
    w = await world(admin)
    await admin.ok("POST", "/v1/products", EXEMPT, 201)
    ins, inv = w["insurer"], w["inv"]
    first = await ins.ok("POST", "/v1/settlements", exempt_sale("W1", "PW", 30, 60))
    assert [(f["kind"], f["code"]) for f in first["flags"]] == [("EXCESS_PURCHASE", "MEX")]
    dismissed = first["flags"][0]["flag_id"]
    await inv.ok("PATCH", f"/v1/flags/{dismissed}", {"status": "dismissed", "note": "after surgery"})
    # within the week: the dismissed flag's window, no other flag
    assert (await ins.ok("POST", "/v1/settlements", exempt_sale("W2", "PW", 5, 60 + 3 * DAY)))["flags"] == []
    # a month later, 30 units again: a new excess, a new flag
    later = await ins.ok("POST", "/v1/settlements", exempt_sale("W3", "PW", 30, 60 + 30 * DAY))
    assert [(f["kind"], f["code"]) for f in later["flags"]] == [("EXCESS_PURCHASE", "MEX")], later
    raised = later["flags"][0]["flag_id"]
    assert raised != dismissed
    flag = await inv.ok("GET", f"/v1/flags/{raised}")
    assert (flag["status"], flag["refs"]["settlements"], flag["refs"]["units"]) == ("open", ["W3"], 30)
    assert (await inv.ok("GET", f"/v1/flags/{dismissed}"))["status"] == "dismissed"
    # more within the new window: held back by the new flag
    more = await ins.ok("POST", "/v1/settlements", exempt_sale("W4", "PW", 10, 60 + 32 * DAY))
    assert more["flags"] == []
    found = await inv.ok("GET", "/v1/flags?kind=EXCESS_PURCHASE&status=open")
    assert [f["flag_id"] for f in found["items"]] == [raised]


async def test_a_pack_split_over_windows_raises_a_flag_in_each(admin: Api) -> None:
    """A pack of 100 units sold in parts to one person a month apart, each part past the
    limit: both flags name the pack (its code, the same each time), each its own
    window's settlement. Found by a probe: the second was taken for the first."""
    w = await world(admin)
    big = {**LIMITED, "product_id": "8123460", "med_list_codg": "MLIM", "pack_units": 100}
    await admin.ok("POST", "/v1/products", big, 201)
    [pack] = await received(w, "P1", [1], product="8123460", lot="G1")
    ins, inv = w["insurer"], w["inv"]

    def part(setl_id: str, minutes: float) -> dict[str, Any]:
        line = {"line_no": 1, "med_list_codg": "MLIM", "quantity": 30, "split": True, "codes": [pack]}
        return {"setl_id": setl_id, "org": "P1", "psn_no": "PY", "at": at(minutes), "lines": [line]}

    first = await ins.ok("POST", "/v1/settlements", part("Y1", 60))
    second = await ins.ok("POST", "/v1/settlements", part("Y2", 60 + 30 * DAY))
    assert (first["decision"], second["decision"]) == ("accepted", "accepted")
    assert [f["code"] for f in first["flags"] + second["flags"]] == [pack, pack]
    assert first["flags"][0]["flag_id"] != second["flags"][0]["flag_id"]
    found = await inv.ok("GET", "/v1/flags?kind=EXCESS_PURCHASE")
    assert sorted(f["refs"]["settlements"][-1] for f in found["items"]) == ["Y1", "Y2"]


async def test_a_flag_stored_before_windows_had_their_own_still_holds_back_its_window(
    admin: Api, db: Any
) -> None:
    """A flag stored before each window was its own rests on the person and the item
    alone (``<hash>/<item>``): it still holds back another flag within its window, and no
    longer swallows a later window's."""
    w = await world(admin)
    await admin.ok("POST", "/v1/products", EXEMPT, 201)
    ins, inv = w["insurer"], w["inv"]
    first = await ins.ok("POST", "/v1/settlements", exempt_sale("L1", "PL", 30, 60))
    old = first["flags"][0]["flag_id"]
    # as it was stored before: the person's hash and the item, no settlement
    hashed = (await ins.ok("GET", "/v1/settlements/L1"))["request"]["psn_hash"]
    moved = await db.execute("UPDATE flags SET source_id = $1 WHERE flag_id = $2", f"{hashed}/MEX", int(old))
    assert moved == "UPDATE 1"
    assert (await ins.ok("POST", "/v1/settlements", exempt_sale("L2", "PL", 5, 60 + 3 * DAY)))["flags"] == []
    later = await ins.ok("POST", "/v1/settlements", exempt_sale("L3", "PL", 30, 60 + 30 * DAY))
    assert [f["kind"] for f in later["flags"]] == ["EXCESS_PURCHASE"]
    assert later["flags"][0]["flag_id"] != old
    flag = await inv.ok("GET", f"/v1/flags/{later['flags'][0]['flag_id']}")
    assert (flag["status"], flag["refs"]["settlements"]) == ("open", ["L3"])


async def test_a_claim_dated_before_a_flag_is_held_back_only_within_its_window(admin: Api) -> None:
    """A settlement arriving late, dated before the person's flag of the item: held back
    when its sale is within the limit's days of the flag (one window), flagged on its
    own when it is weeks before it (any later flag held it back before)."""
    w = await world(admin)
    await admin.ok("POST", "/v1/products", EXEMPT, 201)
    ins, inv = w["insurer"], w["inv"]
    flagged = await ins.ok("POST", "/v1/settlements", exempt_sale("D20", "PD", 30, 60 + 20 * DAY))
    assert [f["kind"] for f in flagged["flags"]] == ["EXCESS_PURCHASE"]
    near = await ins.ok("POST", "/v1/settlements", exempt_sale("D18", "PD", 25, 60 + 18 * DAY))
    assert near["flags"] == []  # two days before the flag: its window
    weeks = await ins.ok("POST", "/v1/settlements", exempt_sale("D1", "PD", 30, 60 + DAY))
    assert [f["kind"] for f in weeks["flags"]] == ["EXCESS_PURCHASE"], weeks
    flag = await inv.ok("GET", f"/v1/flags/{weeks['flags'][0]['flag_id']}")
    assert (flag["refs"]["settlements"], flag["refs"]["units"]) == (["D1"], 30)


async def test_a_reversal_withdraws_the_excess_it_takes_back_within_the_limit(admin: Api) -> None:
    """Found by a probe: 15 then 10 units (limit 20) raised a flag; the 10 refunded, the
    person had 15 of 20, yet the flag stayed open naming the refunded settlement and held
    back every new flag of its window. The reversal judges the window again: the flag
    is withdrawn (auto_cleared by the system, naming the reversal), and holds nothing
    back."""
    w = await world(admin)
    await admin.ok("POST", "/v1/products", EXEMPT, 201)
    ins, inv = w["insurer"], w["inv"]
    await ins.ok("POST", "/v1/settlements", exempt_sale("R1", "PR", 15, 60))
    second = await ins.ok("POST", "/v1/settlements", exempt_sale("R2", "PR", 10, 61))
    fid = second["flags"][0]["flag_id"]
    await ins.ok("POST", "/v1/settlements/R2/reversal")
    flag = await inv.ok("GET", f"/v1/flags/{fid}")
    assert (flag["status"], flag["refs"]["cleared_by"]) == ("auto_cleared", ["R2"])
    assert [(h["status"], h["by_key"]) for h in flag["history"]] == [("auto_cleared", "system")]
    assert "R2 was reversed" in flag["history"][0]["note"]
    # re-billed as 4 units: 19 of 20
    assert (await ins.ok("POST", "/v1/settlements", exempt_sale("R3", "PR", 4, 62)))["flags"] == []
    # 5 more: 24, a flag of its own (the withdrawn one holds nothing back)
    more = await ins.ok("POST", "/v1/settlements", exempt_sale("R4", "PR", 5, 63))
    assert [f["kind"] for f in more["flags"]] == ["EXCESS_PURCHASE"], more
    flag = await inv.ok("GET", f"/v1/flags/{more['flags'][0]['flag_id']}")
    assert flag["status"] == "open"
    assert (flag["refs"]["settlements"], flag["refs"]["units"]) == (["R1", "R3", "R4"], 24)


async def test_a_reversal_flags_what_the_withdrawn_flag_held_back(admin: Api) -> None:
    """A small sale reversed must not hide a large one: 10 units, 20 more (flagged at 30),
    20 more two days later (held back by that flag), then the 20 of the flagged sale
    refunded. Its flag is withdrawn, and the later sale, now 30 units in its own window
    with no flag standing, is flagged, naming its first pack and the reversal."""
    w = await limited_world(admin)
    ins, inv, packs = w["insurer"], w["inv"], w["packs"]
    await ins.ok("POST", "/v1/settlements", sale("V1", "PV", packs[:1]))
    second = await ins.ok("POST", "/v1/settlements", sale("V2", "PV", packs[1:3], 60 + DAY))
    withdrawn = second["flags"][0]["flag_id"]
    held = await ins.ok("POST", "/v1/settlements", sale("V3", "PV", packs[3:5], 60 + 3 * DAY))
    assert (held["decision"], held["flags"]) == ("accepted", [])
    await ins.ok("POST", "/v1/settlements/V2/reversal")
    assert (await inv.ok("GET", f"/v1/flags/{withdrawn}"))["status"] == "auto_cleared"
    found = await inv.ok("GET", "/v1/flags?kind=EXCESS_PURCHASE&status=open")
    assert len(found["items"]) == 1, found
    flag = found["items"][0]
    assert (flag["code"], flag["org"], flag["refs"]["after_reversal"]) == (packs[3], "P1", "V2")
    assert (flag["refs"]["settlements"], flag["refs"]["units"]) == (["V1", "V3"], 30)
    assert flag["at"] == (await ins.ok("GET", "/v1/settlements/V3"))["at"]


async def test_a_reversal_leaves_a_flag_a_person_took_up_as_they_left_it(admin: Api) -> None:
    """An investigator investigating the flag: the reversal that brings the window
    within the limit leaves it so (their decision), and it goes on holding back its
    window."""
    w = await world(admin)
    await admin.ok("POST", "/v1/products", EXEMPT, 201)
    ins, inv = w["insurer"], w["inv"]
    await ins.ok("POST", "/v1/settlements", exempt_sale("T1", "PT", 15, 60))
    fid = (await ins.ok("POST", "/v1/settlements", exempt_sale("T2", "PT", 10, 61)))["flags"][0]["flag_id"]
    await inv.ok("PATCH", f"/v1/flags/{fid}", {"status": "investigating", "note": "calling the pharmacy"})
    await ins.ok("POST", "/v1/settlements/T2/reversal")
    flag = await inv.ok("GET", f"/v1/flags/{fid}")
    assert flag["status"] == "investigating"
    assert [h["status"] for h in flag["history"]] == ["investigating"]
    assert (await ins.ok("POST", "/v1/settlements", exempt_sale("T3", "PT", 10, 62)))["flags"] == []


async def test_a_reversal_that_leaves_the_window_past_the_limit_leaves_its_flag(admin: Api) -> None:
    """15 then 10 units flagged (25 of 20); a claim dated before the flag, arriving
    after it, adds 10 to its window (held back: one flag per window). Refunding the 10
    that crossed the limit leaves 25 in the window: the excess holds, the flag stays
    open."""
    w = await world(admin)
    await admin.ok("POST", "/v1/products", EXEMPT, 201)
    ins, inv = w["insurer"], w["inv"]
    await ins.ok("POST", "/v1/settlements", exempt_sale("S1", "PS", 15, 60))
    fid = (await ins.ok("POST", "/v1/settlements", exempt_sale("S2", "PS", 10, 62)))["flags"][0]["flag_id"]
    assert (await ins.ok("POST", "/v1/settlements", exempt_sale("S0", "PS", 10, 59)))["flags"] == []
    await ins.ok("POST", "/v1/settlements/S2/reversal")
    flag = await inv.ok("GET", f"/v1/flags/{fid}")
    assert (flag["status"], flag["history"]) == ("open", [])
