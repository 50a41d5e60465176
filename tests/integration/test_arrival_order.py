"""The same events in any arrival order end in the same custody, units and flags (pending
ones included), through the public API. Written in review of the event ingest. A case
the service does not meet yet is marked xfail (strict: it fails the suite once fixed, so
the mark is taken off) and listed in the README's known limits; there is none now."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from tests.helpers import Api, cn20, event, pack_claim, received, small_world, sscc

pytestmark = pytest.mark.asyncio(loop_scope="session")

UNIT = "8123456"


async def _world(admin: Api) -> dict[str, Any]:
    w = await small_world(admin)
    w["inv"] = await admin.key_for("investigator")
    w["insurer"] = await admin.key_for("insurer")
    return w


async def _send(admin: Api, events: list[dict[str, Any]]) -> None:
    for e in events:
        out = await admin.events(e)
        assert out["rejected"] == [], out


async def _verify(w: dict[str, Any], code: str, org: str = "P1") -> dict[str, Any]:
    return await w["inv"].ok("GET", f"/v1/codes/{code}/verify?org={org}")


async def _standing(w: dict[str, Any], code: str) -> list[tuple[str, str]]:
    """Flags on ``code`` that investigators will (eventually) see: pending and open."""
    out = []
    for status in ("pending", "open"):
        items = (await w["inv"].ok("GET", f"/v1/flags?code={code}&status={status}"))["items"]
        out += [(f["kind"], f["status"], f["detail"]) for f in items]
    return out


EVERY_ORDER = list(itertools.permutations(range(3)))


async def _in_each_order(
    admin: Api,
    w: dict[str, Any],
    serial: int,
    sales: Callable[[str, int], list[dict[str, Any]]],
    orders: Sequence[tuple[int, ...]] = EVERY_ORDER,
) -> list[tuple[tuple[int, ...], int, list[str]]]:
    """For each arrival order, a new pack received by P1 (serials from ``serial``) is sent
    ``sales(code, n)`` (n: the order's place) in that order: (the order, the units left,
    the kinds of the flags standing on it)."""
    out = []
    for n, order in enumerate(orders):
        [code] = await received(w, "P1", [serial + n])
        events = sales(code, n)
        await _send(admin, [events[i] for i in order])
        left = (await _verify(w, code))["units_left"]
        out.append((order, left, sorted(k for k, _, _ in await _standing(w, code))))
    return out


async def _state(w: dict[str, Any], code: str) -> tuple[Any, ...]:
    h = await w["inv"].ok("GET", f"/v1/codes/{code}/history")
    return (h["state"], h["custodian"], h["destination"], h["units_left"])


# --------------------------------------------------------------------------- returns


async def test_a_return_arriving_between_two_split_sales_undoes_the_later_one(admin: Api) -> None:
    """P1 sells 10 units (t=10), then 5 units (t=11), then the patient returns the
    second sale (t=12): 14 units are left, whatever order the three arrive in."""
    w = await _world(admin)
    got_all = await _in_each_order(
        admin,
        w,
        100,
        lambda code, _: [
            event("dispense", "P1", [code], 10, quantity=10),
            event("dispense", "P1", [code], 11, quantity=5),
            event("return", "P1", [code], 12),
        ],
    )
    assert all(got == 14 for _, got, _ in got_all), got_all


# Three sales and returns of one pack by P1, each sent in every arrival order: (its
# first serial, the events as (type, minute), the units left and flags standing after).
THREE_STEPS = {
    # sold (t=10), returned (t=20), sold again (t=30): used up, and no DUPLICATE
    # standing against P1 when the return is uploaded last
    "a return arriving after the pack was sold again": (
        200,
        [("dispense", 10), ("return", 20), ("dispense", 30)],
        (0, []),
    ),
    # sold (t=10), sold again (t=15: a resale of a used-up pack), returned (t=20): the
    # resale is the DUPLICATE and the return gives back the first sale (the whole pack)
    "two sales and a return": (
        330,
        [("dispense", 10), ("dispense", 15), ("return", 20)],
        (24, ["DUPLICATE"]),
    ),
    # sold and taken back within the same minute (t=10), sold again (t=20): the return
    # undoes the first sale, the second takes the pack, with no flag
    "a sale and its return of one minute": (
        400,
        [("dispense", 10), ("return", 10), ("dispense", 20)],
        (0, []),
    ),
}


@pytest.mark.parametrize("story", THREE_STEPS)
async def test_three_sales_and_returns_in_any_order_end_as_in_time_order(admin: Api, story: str) -> None:
    serial, steps, expected = THREE_STEPS[story]
    w = await _world(admin)
    outcomes = await _in_each_order(
        admin, w, serial, lambda code, _: [event(kind, "P1", [code], minute) for kind, minute in steps]
    )
    results = [(left, kinds) for _, left, kinds in outcomes]
    assert results == [expected] * len(results), results


async def test_a_resale_flagged_duplicate_is_cleared_by_the_return_before_it(admin: Api) -> None:
    """P1 sells the pack (t=10) and sells it again (t=30): DUPLICATE, the pack was used
    up. The patient's return (t=20) is uploaded last: by event time the second sale came
    after the pack was back, so it takes the pack and its flag is auto_cleared, naming
    the return, its history kept."""
    w = await _world(admin)
    [code] = await received(w, "P1", [300])
    await _send(admin, [event("dispense", "P1", [code], 10)])
    out = await admin.events(event("dispense", "P1", [code], 30))
    [flag] = out["flags"]
    assert flag["kind"] == "DUPLICATE"
    late_return = event("return", "P1", [code], 20)
    assert (await admin.events(late_return))["flags"] == []
    got = await w["inv"].ok("GET", f"/v1/flags/{flag['flag_id']}")
    assert got["status"] == "auto_cleared"
    assert late_return["event_id"] in got["refs"]["cleared_by"]
    assert [h["status"] for h in got["history"]] == ["auto_cleared"]
    assert (await _verify(w, code))["units_left"] == 0


async def test_a_resale_before_the_return_stays_a_duplicate(admin: Api) -> None:
    """P1 sells the pack (t=10), sells it again (t=15: the pack was used up, DUPLICATE),
    and the patient returns it (t=20), uploaded last: the return gives back the first
    sale; the resale came before it and stays flagged."""
    w = await _world(admin)
    [code] = await received(w, "P1", [310])
    await _send(admin, [event("dispense", "P1", [code], 10)])
    [flag] = (await admin.events(event("dispense", "P1", [code], 15)))["flags"]
    await _send(admin, [event("return", "P1", [code], 20)])
    assert (await w["inv"].ok("GET", f"/v1/flags/{flag['flag_id']}"))["status"] == "open"
    assert (await _verify(w, code))["units_left"] == 24


async def test_a_split_sale_returned_late_takes_the_units_it_was_short_of(admin: Api) -> None:
    """P1 sells the whole pack (t=10), the patient returns it (t=20), P1 sells 5 units
    (t=30). Uploaded with the return last: the split sale found the pack used up; by
    event time it took 5 of the units given back."""
    w = await _world(admin)
    [code] = await received(w, "P1", [320])
    await _send(admin, [event("dispense", "P1", [code], 10), event("dispense", "P1", [code], 30, quantity=5)])
    await _send(admin, [event("return", "P1", [code], 20)])
    assert (await _verify(w, code))["units_left"] == 19
    assert await _standing(w, code) == []


@pytest.mark.parametrize("seed", range(24))
async def test_a_packs_sales_and_returns_in_any_order_end_as_in_time_order(admin: Api, seed: int) -> None:
    """Three to five sales (whole packs, 5 or 10 units) and returns of one pack, a
    minute apart, mostly by the pharmacy that holds it and some by a hospital that does
    not (DIVERSION), some under a settlement id (a return naming the sale before it),
    uploaded in time order and in five other orders: the units left and the flags
    standing are the same."""
    rng = random.Random(seed)
    w = await _world(admin)
    steps = [
        (rng.choice(["whole", "5", "10", "return"]), rng.choice(["P1", "P1", "H1"]), rng.random() < 0.3)
        for _ in range(rng.choice([3, 4, 5]))
    ]
    orders = list(itertools.permutations(range(len(steps))))

    def sales(code: str, n: int) -> list[dict[str, Any]]:
        events = []
        for i, (kind, org, settled) in enumerate(steps):
            fields: dict[str, Any] = {} if kind in ("whole", "return") else {"quantity": int(kind)}
            if settled:  # a return names the settlement of the step before it
                fields["setl_id"] = f"S{seed}-{n}-{i - 1 if kind == 'return' else i}"
            type_ = "return" if kind == "return" else "dispense"
            events.append(event(type_, org, [code], 10 + 5 * i, **fields))
        return events

    results = await _in_each_order(admin, w, 1000 + 10 * seed, sales, [orders[0], *rng.sample(orders[1:], 5)])
    assert [r[1:] for r in results] == [results[0][1:]] * len(results), (steps, results)


# --------------------------------------------------------------------------- a story


def _story(units: list[str], box: str) -> list[dict[str, Any]]:
    """A case of four packs: M1 -> D1 -> P1. P1 picks packs out of the case (no unpack
    scan): sells u1, sells part of u2 and takes it back, sends u3 back to D1, which
    ships it to H1, where it is sold in part. P1 sends the case (with u4 in it) back to
    D1."""
    u1, u2, u3, _u4 = units
    return [
        event("commission", "M1", units, 0, lot="L1", expiry="2030-12-31"),
        event("pack", "M1", units, 1, parent=box),
        event("ship", "M1", [box], 2, to="D1"),
        event("receive", "D1", [box], 3, **{"from": "M1"}),
        event("ship", "D1", [box], 4, to="P1"),
        event("receive", "P1", [box], 5),
        event("dispense", "P1", [u1], 6),
        event("dispense", "P1", [u2], 7, quantity=10),
        event("return", "P1", [u2], 8),
        event("ship", "P1", [u3], 9, to="D1"),
        event("receive", "D1", [u3], 10),
        event("ship", "D1", [u3], 11, to="H1"),
        event("receive", "H1", [u3], 12),
        event("dispense", "H1", [u3], 13, quantity=5),
        event("ship", "P1", [box], 14, to="D1"),
        event("receive", "D1", [box], 15),
    ]


async def _story_outcome(w: dict[str, Any], units: list[str], box: str) -> dict[str, Any]:
    out = {}
    for name, code in zip(["u1", "u2", "u3", "u4", "box"], [*units, box], strict=True):
        out[name] = (await _state(w, code), await _standing(w, code))
    return out


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
async def test_a_case_story_in_random_order_ends_as_in_time_order(admin: Api, seed: int) -> None:
    """A case story shuffled: unlike test_event_order's property test this one also
    checks that no pending flag is left standing, with a return and a re-shipment."""
    w = await _world(admin)
    units = [cn20(UNIT, 300 + i) for i in range(4)]
    box = sscc(300)
    await _send(admin, _story(units, box))
    in_order = await _story_outcome(w, units, box)
    assert in_order == {
        "u1": (("dispensed", "P1", None, 0), []),
        "u2": (("received", "P1", None, 24), []),
        "u3": (("received", "H1", None, 19), []),
        "u4": (("received", "D1", None, 24), []),
        "box": (("received", "D1", None, None), []),
    }
    units_b = [cn20(UNIT, 400 + i) for i in range(4)]
    box_b = sscc(400)
    story = _story(units_b, box_b)
    random.Random(seed).shuffle(story)
    await _send(admin, story)
    assert await _story_outcome(w, units_b, box_b) == in_order, [(e["type"], e["at"][11:16]) for e in story]


# --------------------------------------------------------------------------- probes


async def test_two_dispenses_uploaded_before_the_commission_are_still_a_duplicate(admin: Api) -> None:
    """P1 sells the same pack twice (回流药). In time order the second dispense raises
    DUPLICATE; when the pharmacy's uploads arrive before the manufacturer's and the
    distributor's, the same DUPLICATE must be raised once the commission arrives."""
    w = await _world(admin)
    kinds = []
    for n, pharmacy_first in enumerate([False, True]):
        code = cn20(UNIT, 500 + n)
        chain = [
            event("commission", "M1", [code], 0, lot="L1", expiry="2030-12-31"),
            event("ship", "M1", [code], 1, to="P1"),
            event("receive", "P1", [code], 2),
        ]
        sales = [event("dispense", "P1", [code], 10), event("dispense", "P1", [code], 20)]
        await _send(admin, sales + chain if pharmacy_first else chain + sales)
        kinds.append(
            ((await _verify(w, code))["units_left"], sorted(k for k, _, _ in await _standing(w, code)))
        )
    assert kinds[0] == (0, ["DUPLICATE"])
    assert kinds[1] == kinds[0]


async def test_a_dispense_of_an_expired_pack_uploaded_before_its_commission_is_flagged(admin: Api) -> None:
    w = await _world(admin)
    kinds = []
    for n, pharmacy_first in enumerate([False, True]):
        code = cn20(UNIT, 520 + n)
        chain = [
            event("commission", "M1", [code], 0, lot="OLD", expiry="2020-01-31"),
            event("ship", "M1", [code], 1, to="P1"),
            event("receive", "P1", [code], 2),
        ]
        sales = [event("dispense", "P1", [code], 10)]
        await _send(admin, sales + chain if pharmacy_first else chain + sales)
        kinds.append(sorted(k for k, _, _ in await _standing(w, code)))
    assert kinds[0] == ["EXPIRED"]
    assert kinds[1] == kinds[0]


async def test_a_replay_keeps_a_sales_out_of_region_flag(admin: Api) -> None:
    """The replay clears only the OUT_OF_REGION flags the fold raises at a receipt, and
    those it still raises stand: a dispense outside the region (judged when it arrived,
    not by the fold) keeps its flag when a late event makes the pack's history replay."""
    w = await _world(admin)
    code = cn20(UNIT, 560)
    late = event("receive", "D1", [code], 2)
    await _send(
        admin,
        [
            event("commission", "M1", [code], 0, lot="L1", expiry="2030-12-31"),
            event("ship", "M1", [code], 1, to="D1"),
            event("ship", "D1", [code], 3, to="P9"),
            event("receive", "P9", [code], 4),
            event("dispense", "P9", [code], 5),
        ],
    )
    before = sorted((k, s) for k, s, _ in await _standing(w, code) if k == "OUT_OF_REGION")
    assert before == [("OUT_OF_REGION", "open"), ("OUT_OF_REGION", "open")]  # the receipt's, the sale's
    out = await admin.events(late)
    assert out["rejected"] == [], out
    after = sorted((k, s) for k, s, _ in await _standing(w, code) if k == "OUT_OF_REGION")
    assert after == before


async def test_a_pack_picked_before_its_case_left_the_region_is_not_out_of_region(admin: Api) -> None:
    """D1 picks u1 out of the case and sends it to P1, then sends the case (u2 still in
    it) to P9 outside the product's regions. Only u2 left the region. When D1's pick
    arrives after P9's receipt of the case, u1's OUT_OF_REGION must not stand."""
    w = await _world(admin)
    outcome = []
    for n, pick_late in enumerate([False, True]):
        u1, u2 = cn20(UNIT, 540 + 2 * n), cn20(UNIT, 541 + 2 * n)
        box = sscc(540 + n)
        head = [
            event("commission", "M1", [u1, u2], 0, lot="L1", expiry="2030-12-31"),
            event("pack", "M1", [u1, u2], 1, parent=box),
            event("ship", "M1", [box], 2, to="D1"),
            event("receive", "D1", [box], 3),
        ]
        pick = [event("ship", "D1", [u1], 4, to="P1"), event("receive", "P1", [u1], 5)]
        case_out = [event("ship", "D1", [box], 6, to="P9"), event("receive", "P9", [box], 7)]
        await _send(admin, head + case_out + pick if pick_late else head + pick + case_out)
        outcome.append(
            (
                await _state(w, u1),
                sorted(k for k, _, _ in await _standing(w, u1)),
                sorted(k for k, _, _ in await _standing(w, u2)),
            )
        )
    assert outcome[0] == (("received", "P1", None, 24), [], ["OUT_OF_REGION"])
    assert outcome[1] == outcome[0]


@pytest.mark.parametrize("arrival", ["in order", "ship first", "one request"])
async def test_a_cross_dock_received_and_shipped_in_the_same_instant(admin: Api, arrival: str) -> None:
    """D1 receives the case and sends it on to P1 in the same second (cross-docking):
    the case is on its way to P1, and nothing is suspicious, whichever of the two D1's
    system sends first. (TYPE_RANK alone puts every ship of an instant before every
    receive, so D1 shipped before it had received: core.custody.fold_order.)"""
    w = await _world(admin)
    n = {"in order": 560, "ship first": 561, "one request": 562}[arrival]
    u1 = cn20(UNIT, n)
    box = sscc(n)
    received, shipped_on = event("receive", "D1", [box], 3), event("ship", "D1", [box], 3, to="P1")
    await _send(
        admin,
        [
            event("commission", "M1", [u1], 0, lot="L1", expiry="2030-12-31"),
            event("pack", "M1", [u1], 1, parent=box),
            event("ship", "M1", [box], 2, to="D1"),
        ],
    )
    if arrival == "one request":
        out = await admin.events(shipped_on, received)
        assert out["rejected"] == [], out
        assert out["flags"] == [], out
    else:
        await _send(admin, [received, shipped_on] if arrival == "in order" else [shipped_on, received])
    assert await _state(w, box) == ("in_transit", "D1", "P1", None)
    h = await w["inv"].ok("GET", f"/v1/codes/{u1}/history")
    assert (h["state"], h["custodian"], h["destination"], h["container"]) == ("in_transit", "D1", "P1", box)
    assert await _standing(w, box) == []
    assert await _standing(w, u1) == []


async def test_a_pack_settled_out_of_an_open_case_stays_sold_where_it_was_sold(admin: Api) -> None:
    """P1 receives a case, sells u1 from it by settlement (依码结算: no dispense scan), and
    sends the rest of the case back to D1. u1 did not travel back with the case: it was
    sold at P1, and the patient's return of it to P1 is no diversion."""
    w = await _world(admin)
    u1, u2 = cn20(UNIT, 600), cn20(UNIT, 601)
    box = sscc(600)
    await _send(
        admin,
        [
            event("commission", "M1", [u1, u2], 0, lot="L1", expiry="2030-12-31"),
            event("pack", "M1", [u1, u2], 1, parent=box),
            event("ship", "M1", [box], 2, to="P1"),
            event("receive", "P1", [box], 3),
        ],
    )
    answer = await w["insurer"].ok("POST", "/v1/settlements", pack_claim("S-CASE-1", u1, 10))
    assert answer["decision"] == "accepted", answer
    await _send(admin, [event("ship", "P1", [box], 20, to="D1"), event("receive", "D1", [box], 21)])
    h = await w["inv"].ok("GET", f"/v1/codes/{u1}/history")
    custody = (h["custodian"], h["container"], h["units_left"])
    # the patient brings it back to P1
    out = await admin.events(event("return", "P1", [u1], 30, setl_id="S-CASE-1"))
    raised = [f["kind"] for f in out["flags"]]
    assert (custody, raised) == (("P1", None, 0), [])


async def _case_at(admin: Api, w: dict[str, Any], n: int, to: str | None) -> tuple[str, str, str]:
    """u1 and u2 packed in a case by M1 and shipped (to ``to``, received there when given)."""
    u1, u2, box = cn20(UNIT, n), cn20(UNIT, n + 1), sscc(n)
    events = [
        event("commission", "M1", [u1, u2], 0, lot="L1", expiry="2030-12-31"),
        event("pack", "M1", [u1, u2], 1, parent=box),
        event("ship", "M1", [box], 2, to=to or "D1"),
    ]
    if to is not None:
        events.append(event("receive", to, [box], 3))
    await _send(admin, events)
    return u1, u2, box


async def test_a_refused_settlement_leaves_its_pack_in_its_case_when_history_is_replayed(admin: Api) -> None:
    """P1 bills u1 while the case is on its way to D1: refused (NOT_IN_CUSTODY). A late
    upload replays the history; the refused settlement is judged again but sold nothing,
    so u1 stays in the case, travels with it to P1, and P1's sale of it is paid."""
    w = await _world(admin)
    u1, _, box = await _case_at(admin, w, 620, None)
    bad = await w["insurer"].ok("POST", "/v1/settlements", pack_claim("S-REFUSED", u1, 10))
    assert bad["decision"] == "rejected", bad
    await _send(admin, [event("receive", "D1", [box], 5)])  # late: dated before the settlement
    await _send(admin, [event("ship", "D1", [box], 20, to="P1"), event("receive", "P1", [box], 21)])
    h = await w["inv"].ok("GET", f"/v1/codes/{u1}/history")
    assert (h["custodian"], h["container"]) == ("P1", box)
    good = await w["insurer"].ok("POST", "/v1/settlements", pack_claim("S-PAID", u1, 30))
    assert good["decision"] == "accepted", good


@pytest.mark.parametrize("given_back", ["reversal", "return, then reversal"])
async def test_a_pack_sold_then_given_back_stays_out_of_its_case_when_history_is_replayed(
    admin: Api, given_back: str
) -> None:
    """Sold out of the case at P1, then refunded (or returned by the patient, then
    refunded: the return of a settled sale waits for the refund): the pack is loose on
    P1's shelf. A replay of the history (a late re-scan of the case dated before the
    sale) must not put it back into the case, which D1 now holds."""
    w = await _world(admin)
    u1, _, box = await _case_at(admin, w, 630 if given_back == "reversal" else 640, "P1")
    setl_id = f"S-BACK-{given_back[:6]}"
    sold = await w["insurer"].ok("POST", "/v1/settlements", pack_claim(setl_id, u1, 10))
    assert sold["decision"] == "accepted", sold
    await _send(admin, [event("ship", "P1", [box], 20, to="D1"), event("receive", "D1", [box], 21)])
    if given_back != "reversal":
        await _send(admin, [event("return", "P1", [u1], 30, setl_id=setl_id)])
        assert (await _verify(w, u1))["dispensable"] is False
    await w["insurer"].ok("POST", f"/v1/settlements/{setl_id}/reversal", None)
    before = await _state(w, u1)
    await _send(admin, [event("receive", "P1", [box], 4)])  # late: a replay
    assert await _state(w, u1) == before
    assert before[:2] == ("received", "P1")
    again = await w["insurer"].ok("POST", "/v1/settlements", pack_claim(f"{setl_id}-2", u1, 40))
    assert again["decision"] == "accepted", again


# --------------------------------------------------------------------------- at once


def _ship_and_sale(code: str, n: int) -> tuple[Any, Any]:
    """P1's ship of ``code`` to H1 (t=10) and H1's settlement of the whole pack (t=20),
    as the use cases take them."""
    import uuid
    from datetime import timedelta

    from service.core.events import Incoming
    from service.core.settlement import Claim, Line
    from tests.helpers import BASE_TIME

    ship = Incoming(uuid.uuid4(), "ship", BASE_TIME + timedelta(minutes=10), "P1", (code,), to="H1")
    line = Line(1, "XJ01CAA040A001010104256", 24, False, (code,))
    when = BASE_TIME + timedelta(minutes=20)
    sale = Claim(f"S-AT-ONCE-{n}", "H1", "450103199001011234", when, "settle", (line,))
    return ship, sale


async def _standing_in_db(db: Any, codes: list[str]) -> list[tuple[str, str, str]]:
    rows = await db.fetch(
        "SELECT code, kind, status FROM flags WHERE code = ANY($1::text[]) AND status IN ('pending', 'open')",
        codes,
    )
    return [(r["code"], r["kind"], r["status"]) for r in rows]


async def test_a_ship_read_before_a_settlements_diversion_and_written_after_it_clears_it(
    admin: Api, db: Any, db_url: str
) -> None:
    """P1 ships a pack to H1 (t=10) while H1's sale of it (t=20) is being settled. One
    after the other, in either order, no DIVERSION stands: shipped first, the sale is
    H1's; settled first, the refusal raises one and the ship, dated before the sale,
    explains it (auto_cleared). Here they overlap: the settlement has locked the pack and
    stored its DIVERSION, and is held before it commits (another connection holds its id);
    the ship reads the pack meanwhile, without the flag, and its write waits on the
    pack's row. Once the settlement commits, the ship must not be written as read: the
    flag stood pending for good (no later event judged it again; the grace window made it
    open), the settlement having left the pack's row as it was. Both run through the use
    cases on a pool of their own, as request handlers do."""
    import asyncio

    import asyncpg

    from service.store.db import create_pool
    from service.usecases import events as ingest_usecase
    from service.usecases import settlements as settle_usecase
    from tests.helpers import until_waiting_on_a_lock

    w = await _world(admin)
    [code] = await received(w, "P1", [700])
    ship, sale = _ship_and_sale(code, 0)
    pool = await create_pool(db_url, min_size=2, max_size=2)
    other = await asyncpg.connect(db_url)
    try:
        held = other.transaction()
        await held.start()
        await other.execute(
            """INSERT INTO settlements (setl_id, org, psn_hash, at, body_hash, request)
               VALUES ($1, 'H1', '\\x00', now(), '\\x00', '{}')""",
            sale.setl_id,
        )
        settled = asyncio.create_task(settle_usecase.settle(pool, sale, b"test-secret"))
        await until_waiting_on_a_lock(db, "the settlement's insert")  # the pack locked, the flag stored
        shipped = asyncio.create_task(ingest_usecase.ingest(pool, [ship], []))
        await until_waiting_on_a_lock(db, "the ship's write", sessions=2)  # read as it was: no flag
        await held.rollback()
        answer, result = await asyncio.gather(settled, shipped)
    finally:
        await other.close()
        await pool.close()
    assert answer["decision"] == "rejected", answer
    [flag] = answer["flags"]
    assert flag["kind"] == "DIVERSION"
    assert result.accepted_events == 1
    assert await _standing_in_db(db, [code]) == []
    got = await w["inv"].ok("GET", f"/v1/flags/{flag['flag_id']}")
    assert got["status"] == "auto_cleared", got
    assert str(ship.event_id) in got["refs"]["cleared_by"]


async def test_settlements_racing_the_ships_that_explain_them_leave_no_diversion(
    admin: Api, db: Any, db_url: str
) -> None:
    """The test above with the two really overlapping: 40 packs, each shipped by P1 to H1
    while H1's sale of it is settled, through the use cases on a pool of 2 connections,
    one pack after another. Each ship is sent 0 to 1.9 ms after its settlement, across
    the settlement's few milliseconds (where, unfixed, most of them left the flag
    pending). Whatever the interleaving, no DIVERSION stands, as when they come one after
    the other."""
    import asyncio

    from service.store.db import create_pool
    from service.usecases import events as ingest_usecase
    from service.usecases import settlements as settle_usecase

    w = await _world(admin)
    codes = await received(w, "P1", list(range(710, 750)))
    pool = await create_pool(db_url, min_size=2, max_size=2)

    async def shipped_after(delay: float, ship: Any) -> None:
        await asyncio.sleep(delay)
        await ingest_usecase.ingest(pool, [ship], [])

    try:
        for n, code in enumerate(codes):
            ship, sale = _ship_and_sale(code, n)
            await asyncio.gather(
                settle_usecase.settle(pool, sale, b"test-secret"), shipped_after((n % 20) / 10_000, ship)
            )
    finally:
        await pool.close()
    assert await _standing_in_db(db, codes) == []


# --------------------------------------------------------------------------- a sale of a pack another holds


@pytest.mark.parametrize("seller", ["H1", "P1"])
@pytest.mark.parametrize("arrival", ["dispense first", "settlement first"])
async def test_a_dispense_of_a_pack_another_holds_takes_it_over_in_either_arrival_order(
    admin: Api, seller: str, arrival: str
) -> None:
    """H1 holds a pack; P1 dispenses 3 units of it (t=15: DIVERSION, and the pack is P1's
    from then on: README, "Custody follows every scan"); a settlement of 2 units by
    ``seller`` follows (t=20). Uploaded in time order or the settlement first, the pack
    ends P1's and the same flags stand. H1's settlement is a DIVERSION either way
    (refused as NOT_IN_CUSTODY, or, paid before the dispense arrived, judged again when
    it does: the dispense dated before it replays the history). P1's is P1's own sale:
    refused before its dispense arrived, its DIVERSION is cleared by it. Only the units
    differ (a paid answer stands)."""
    w = await _world(admin)
    serial = 800 + 2 * ["H1", "P1"].index(seller) + ["dispense first", "settlement first"].index(arrival)
    [code] = await received(w, "H1", [serial])
    dispense = event("dispense", "P1", [code], 15, quantity=3)
    sale = pack_claim(f"S-TAKEN-{serial}", code, 20, seller, split_units=2)
    if arrival == "dispense first":
        await _send(admin, [dispense])
    answer = await w["insurer"].ok("POST", "/v1/settlements", sale)
    if arrival == "settlement first":
        assert answer["decision"] == ("accepted" if seller == "H1" else "rejected"), answer
        await _send(admin, [dispense])
    else:
        assert answer["decision"] == ("rejected" if seller == "H1" else "accepted"), answer
    assert (await _state(w, code))[:2] == ("received", "P1")
    standing = (await w["inv"].ok("GET", f"/v1/flags?code={code}&status=pending"))["items"]
    got = sorted((f["kind"], f["org"], f["refs"].get("settlements") or f["refs"]["events"]) for f in standing)
    expected = [("DIVERSION", "P1", [dispense["event_id"]])]
    if seller == "H1":
        expected = sorted([*expected, ("DIVERSION", "H1", [sale["setl_id"]])])
    assert got == expected, standing


async def test_a_return_dated_before_a_paid_settlement_clears_the_cash_sale_it_gave_back(admin: Api) -> None:
    """Settlement X of the whole pack (minute 90) arrives first; P1's cash sale of 2
    units (minute 70) then finds the pack used up (DUPLICATE: a paid take is not changed,
    Known limits); the patient's return of the cash sale (minute 75) arrives last. In
    event time the cash sale took 2 units, the return gave them back, and X took the
    whole pack: the cash sale is no resale, and its DUPLICATE is auto_cleared (found by a
    model-based probe: it stayed open, as a return dated before a settlement did not fold
    the pack's sales again)."""
    w = await _world(admin)
    p1 = w["keys"]["P1"]
    [code] = await received(w, "P1", [5302])
    answer = await w["insurer"].ok("POST", "/v1/settlements", pack_claim("S-AO5302", code, 90))
    assert answer["decision"] == "accepted", answer
    cash = event("dispense", "P1", [code], 70, quantity=2)
    assert [f["kind"] for f in (await p1.events(cash))["flags"]] == ["DUPLICATE"]
    await _send(p1, [event("return", "P1", [code], 75)])
    assert await _standing(w, code) == []
    history = await w["inv"].ok("GET", f"/v1/codes/{code}/history")
    assert history["units_left"] == 0
    [take] = [s for s in history["settlements"] if s.get("event_id") == cash["event_id"]]
    assert (take["units"], take["returned_by"] is not None) == (2, True), history["settlements"]
    cleared = (await w["inv"].ok("GET", f"/v1/flags?code={code}&status=auto_cleared"))["items"]
    assert [f["kind"] for f in cleared] == ["DUPLICATE"], cleared
