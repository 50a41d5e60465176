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
