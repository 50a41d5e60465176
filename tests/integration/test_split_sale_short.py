"""A split sale of more units than its packs have left: 6 units sold from a pack with 4
left. The units beyond the pack came from somewhere its code does not say (another
pack sold without its code, or a code used again): the sale takes what is left and is
flagged DUPLICATE, with what it sold and what it found. Before, it took the 4 and raised
nothing, and 26 units of a 24-unit pack were on record as sold (found by a probe).

Whichever order the sales arrive in, the one that finds the pack short in event time is
the one flagged (the incremental step and the fold in event time agree)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import Api, event, received, world

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def _duplicates(inv: Api, code: str) -> list[dict[str, Any]]:
    page = await inv.ok("GET", f"/v1/flags?kind=DUPLICATE&code={code}")
    return [f for f in page["items"] if f["status"] in ("open", "pending")]


async def test_a_split_sale_beyond_what_is_left_is_flagged(admin: Api) -> None:
    w = await world(admin)
    p1, inv = w["keys"]["P1"], w["inv"]
    code, other = await received(w, "P1", [4101, 4102])
    first = event("dispense", "P1", [code], 10, quantity=20)
    out = await p1.events(first)
    assert out["flags"] == [], out
    beyond = event("dispense", "P1", [code], 20, quantity=6)
    out = await p1.events(beyond)
    assert [f["kind"] for f in out["flags"]] == ["DUPLICATE"], out
    (flag,) = await _duplicates(inv, code)
    assert flag["refs"]["events"] == [beyond["event_id"]]
    assert (flag["refs"]["units_sold"], flag["refs"]["units_left"]) == (6, 4)
    assert "of 6 units: the pack had 4 left" in flag["detail"], flag["detail"]
    # a split sale that the pack holds, to its last unit, is not
    assert (await p1.events(event("dispense", "P1", [other], 10, quantity=20)))["flags"] == []
    assert (await p1.events(event("dispense", "P1", [other], 11, quantity=4)))["flags"] == []
    assert await _duplicates(inv, other) == []


async def test_the_sale_short_in_event_time_is_the_one_flagged(admin: Api) -> None:
    """The 6-unit sale arrives first, then the 20-unit sale dated before it: in event
    time the 20 come first and the 6 find 4. A return of the 20 dated between them then
    explains it, and the flag is withdrawn."""
    w = await world(admin)
    p1, inv = w["keys"]["P1"], w["inv"]
    (code,) = await received(w, "P1", [4201])
    later = event("dispense", "P1", [code], 20, quantity=6)
    assert (await p1.events(later))["flags"] == []
    earlier = event("dispense", "P1", [code], 10, quantity=20)
    out = await p1.events(earlier)
    assert out["flags"] == [], out  # the late one is not short; the stored one it makes short is
    (flag,) = await _duplicates(inv, code)
    assert flag["refs"]["events"] == [later["event_id"]]
    assert (flag["refs"]["units_sold"], flag["refs"]["units_left"]) == (6, 4)
    await p1.events(event("return", "P1", [code], 15))
    assert await _duplicates(inv, code) == []
