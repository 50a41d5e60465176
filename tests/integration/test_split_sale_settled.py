"""A split sale's two records, its settlement and its dispense (or NHSA 3505), where the
dispense lists more packs than the settlement took units from (the till lists the next
box too). The sale takes its units once: the record that comes second draws from the
packs the first did not take only the units the sale has not taken yet. Found by a probe:
a dispense arriving after its settlement drew its whole quantity again from the packs
the settlement had not touched, so a pack nothing was sold from lost units (6 of the
next box, or a third pack emptied by a 3505), and only in that arrival order."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from tests.helpers import Api, at, event, received, units_taken_once, world
from tests.integration.test_nhsa import MED, SALE_MINUTES, envelope, nhsa, sale
from tests.integration.test_nhsa import _world as nhsa_world

pytestmark = pytest.mark.asyncio(loop_scope="session")

ORDERS = ["settlement first", "dispense first"]


def _split_claim(
    setl_id: str, codes: list[str], quantity: int, minutes: float, org: str = "P1"
) -> dict[str, Any]:
    """A settlement of one split line of ``quantity`` units drawn from ``codes``."""
    line = {"line_no": 1, "med_list_codg": MED, "quantity": quantity, "split": True, "codes": codes}
    return {
        "setl_id": setl_id,
        "org": org,
        "psn_no": "450103199001011234",
        "at": at(minutes),
        "lines": [line],
    }


async def _left(api: Api, codes: list[str]) -> list[int]:
    return [(await api.ok("GET", f"/v1/codes/{c}/verify"))["units_left"] for c in codes]


@pytest.mark.parametrize("order", ORDERS)
async def test_a_split_dispense_of_a_settled_sale_takes_nothing_from_the_next_box(
    admin: Api, db: Any, order: str
) -> None:
    """Settlement X6 sells 6 units of pack a; the till's dispense of the same sale lists a
    and the next box b. Either order: a keeps 18, b all 24, nothing flagged."""
    w = await world(admin)
    a, b = await received(w, "P1", [5101, 5102])
    claim = _split_claim("X6", [a], 6, 60)
    dispense = event("dispense", "P1", [a, b], 60, quantity=6, setl_id="X6")
    if order == "settlement first":
        answer = await w["insurer"].ok("POST", "/v1/settlements", claim)
        out = await w["keys"]["P1"].events(dispense)
    else:
        out = await w["keys"]["P1"].events(dispense)
        answer = await w["insurer"].ok("POST", "/v1/settlements", claim)
    assert (answer["decision"], answer["flags"]) == ("accepted", []), answer
    assert (out["rejected"], out["flags"]) == ([], []), out
    assert await _left(w["keys"]["P1"], [a, b]) == [18, 24]
    assert await units_taken_once(db, [a, b]) == {a: 6, b: 0}


async def test_the_second_record_of_a_split_sale_draws_only_what_the_first_did_not(
    admin: Api, db: Any
) -> None:
    """Settlement X10 sold 6 units of a; its dispense says 10 units from a and b. A sale
    takes a pack once, so the 4 it has not taken yet come from b, as a settlement of 10
    units from a and b draws 4 from b after a dispense of 6 from a."""
    w = await world(admin)
    a, b = await received(w, "P1", [5121, 5122])
    answer = await w["insurer"].ok("POST", "/v1/settlements", _split_claim("X10", [a], 6, 60))
    assert answer["decision"] == "accepted", answer
    out = await w["keys"]["P1"].events(event("dispense", "P1", [a, b], 60, quantity=10, setl_id="X10"))
    assert (out["rejected"], out["flags"]) == ([], []), out
    assert await _left(w["keys"]["P1"], [a, b]) == [18, 20]
    assert await units_taken_once(db, [a, b]) == {a: 6, b: 4}
    # the mirror: the dispense of 6 from c first, then the settlement of 10 from c and d
    c, d = await received(w, "P1", [5123, 5124])
    out = await w["keys"]["P1"].events(event("dispense", "P1", [c], 60, quantity=6, setl_id="X10b"))
    assert out["flags"] == [], out
    answer = await w["insurer"].ok("POST", "/v1/settlements", _split_claim("X10b", [c, d], 10, 60))
    assert answer["decision"] == "accepted", answer
    assert await _left(w["keys"]["P1"], [c, d]) == [18, 20]


SENT = ("settlement", "its dispense", "the later sale")


@pytest.mark.parametrize(
    "order", list(itertools.permutations(range(3))), ids=lambda o: ", ".join(SENT[i] for i in o)
)
async def test_a_split_sale_and_a_later_sale_end_the_same_in_any_arrival_order(
    admin: Api, db: Any, order: tuple[int, ...]
) -> None:
    """Settlement X6 (6 units of a) and its dispense listing a and b at minute 60, and
    another sale of 6 units of a at 70, arriving in every order (late ones fold the
    history again): a keeps 12, b all 24, nothing flagged."""
    w = await world(admin)
    a, b = await received(w, "P1", [5131, 5132])
    p1 = w["keys"]["P1"]
    flags: list[Any] = []

    async def settle() -> None:
        answer = await w["insurer"].ok("POST", "/v1/settlements", _split_claim("X6", [a], 6, 60))
        assert answer["decision"] == "accepted", answer
        flags.extend(answer["flags"])

    async def dispense(*extra: dict[str, Any]) -> None:
        out = await p1.events(*extra)
        assert out["rejected"] == [], out
        flags.extend(out["flags"])

    sends = [
        settle,
        lambda: dispense(event("dispense", "P1", [a, b], 60, quantity=6, setl_id="X6")),
        lambda: dispense(event("dispense", "P1", [a], 70, quantity=6)),
    ]
    for i in order:
        await sends[i]()
    assert flags == []
    assert await _left(p1, [a, b]) == [12, 24]
    assert await units_taken_once(db, [a, b]) == {a: 12, b: 0}


@pytest.mark.parametrize("order", ORDERS)
async def test_a_3505_of_a_settled_split_sale_leaves_the_third_pack_whole(admin: Api, order: str) -> None:
    """Settlement X3 sells 30 units over packs a and b (24 and 6); the pharmacy's 3505 of
    the same sale (trdn_flag 1, 30 units) lists a, b and c. Either order: c keeps its 24
    units and no DUPLICATE is raised (the 30 units of the sale are on record once)."""
    w = await nhsa_world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    claim = _split_claim("X3", [u[0], u[1]], 30, SALE_MINUTES, org="P2")
    upload = envelope("3505", {"selinfo": sale("B-X3", u[:3], 30, split="1", setl_id="X3")})
    insurer = await admin.key_for("insurer")
    if order == "settlement first":
        answer = await insurer.ok("POST", "/v1/settlements", claim)
        out = await nhsa(p2, upload)
    else:
        out = await nhsa(p2, upload)
        answer = await insurer.ok("POST", "/v1/settlements", claim)
    assert (answer["decision"], answer["flags"]) == ("accepted", []), answer
    assert out["infcode"] == 0, out
    assert out["output"]["tracecode"]["flags"] == [], out
    assert await _left(p2, u[:3]) == [0, 18, 24]
    inv = await admin.key_for("investigator")
    assert (await inv.ok("GET", "/v1/flags?kind=DUPLICATE"))["items"] == []


async def test_what_is_left_to_draw_is_what_a_short_flag_names(admin: Api) -> None:
    """Settlement X7 sells 6 units of pack a; the till's dispense of the same sale says 30
    units from a and b, where b had sold 4 already: what is left to draw is 24 and b has
    20. The DUPLICATE (a split sale beyond what is left) names those figures, not the
    dispense's 30 (found in review)."""
    w = await world(admin)
    a, b = await received(w, "P1", [5201, 5202])
    await w["keys"]["P1"].events(event("dispense", "P1", [b], 50, quantity=4))
    await w["insurer"].ok("POST", "/v1/settlements", _split_claim("X7", [a], 6, 60))
    out = await w["keys"]["P1"].events(event("dispense", "P1", [a, b], 60, quantity=30, setl_id="X7"))
    assert [(f["kind"], f["code"]) for f in out["flags"]] == [("DUPLICATE", b)], out
    page = await w["inv"].ok("GET", f"/v1/flags?kind=DUPLICATE&code={b}")
    (flag,) = page["items"]
    assert (flag["refs"]["units_sold"], flag["refs"]["units_left"]) == (24, 20), flag
    assert await _left(w["keys"]["P1"], [a, b]) == [18, 0]
