"""Supply-chain events through the public API: custody, containers, rejections, verify,
history."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import pytest

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
    until_waiting_on_a_lock,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def _world(admin: Api) -> dict[str, Any]:
    return await small_world(admin)


async def test_case_journey_two_hops(admin: Api) -> None:
    """The README walk-through: commission, pack into a case, ship and receive it twice,
    then each unit's verify answer and history."""
    w = await _world(admin)
    m, d1, p1 = w["keys"]["M1"], w["keys"]["D1"], w["keys"]["P1"]
    units = [cn20(w["unit"], i) for i in range(1, 11)]
    case = sscc(1)
    out = await m.events(
        event("commission", "M1", units, 0, lot="L1", expiry="2028-12-31", produced="2026-01-05")
    )
    assert out["accepted"] == 10
    assert out["rejected"] == []
    await m.events(event("pack", "M1", units, 1, parent=case))
    await m.events(event("ship", "M1", [case], 2, to="D1"))
    await d1.events(event("receive", "D1", [case], 3, **{"from": "M1"}))
    await d1.events(event("ship", "D1", [case], 4, to="P1"))
    await p1.events(event("receive", "P1", [case], 5))

    answer = await p1.ok("GET", f"/v1/codes/{units[0]}/verify")
    assert answer["known"] is True
    assert answer["custodian"] == "P1"
    assert answer["state"] == "received"
    assert answer["units_left"] == 24
    assert answer["dispensable"] is True
    assert answer["reasons"] == []
    assert answer["lot"] == "L1"
    assert answer["expiry"] == "2028-12-31"
    assert answer["med_list_codg"] == "XJ01CAA040A001010104256"

    elsewhere = await d1.ok("GET", f"/v1/codes/{units[0]}/verify")
    assert elsewhere["dispensable"] is False
    assert [r["reason"] for r in elsewhere["reasons"]] == ["NOT_DISPENSING", "NOT_IN_CUSTODY"]

    investigator = await admin.key_for("investigator")
    history = await investigator.ok("GET", f"/v1/codes/{units[3]}/history")
    assert [e["type"] for e in history["events"]] == [
        "commission",
        "pack",
        "ship",
        "receive",
        "ship",
        "receive",
    ]
    assert [e.get("via") for e in history["events"]][2:] == [case] * 4
    assert history["container"] == case
    assert history["custodian"] == "P1"
    case_history = await investigator.ok("GET", f"/v1/codes/{case}/history")
    assert sorted(case_history["contents"]) == sorted(units)
    assert case_history["kind"] == "sscc"


async def test_nested_containers_move_everything_inside(admin: Api) -> None:
    w = await _world(admin)
    m, d1 = w["keys"]["M1"], w["keys"]["D1"]
    units = [cn20(w["unit"], i) for i in range(1, 5)]
    case_a, case_b, pallet = sscc(10), sscc(11), sscc(12)
    await m.events(
        event("commission", "M1", units, 0, lot="L1", expiry="2028-12-31"),
        event("pack", "M1", units[:2], 1, parent=case_a),
        event("pack", "M1", units[2:], 1, parent=case_b),
        event("pack", "M1", [case_a, case_b], 2, parent=pallet),
        event("ship", "M1", [pallet], 3, to="D1"),
    )
    for code in units:
        item = await d1.ok("GET", f"/v1/codes/{code}/verify")
        assert item["state"] == "in_transit"
    await d1.events(event("receive", "D1", [pallet], 4))
    await d1.events(event("unpack", "D1", [case_a], 5, parent=pallet))
    await d1.events(event("ship", "D1", [pallet], 6, to="D2"))  # case_a stays behind
    kept = await d1.ok("POST", "/v1/verify", {"codes": units})
    assert [i["state"] for i in kept["items"]] == ["received", "received", "in_transit", "in_transit"]


async def test_per_code_rejections_and_duplicates(admin: Api, db) -> None:  # type: ignore[no-untyped-def]
    w = await _world(admin)
    m, p1 = w["keys"]["M1"], w["keys"]["P1"]
    good = cn20(w["unit"], 1)
    unknown_product = cn20("8999999", 1)
    first = event(
        "commission", "M1", [good, "not-a-code", unknown_product, good], 0, lot="L1", expiry="2028-12-31"
    )
    out = await m.events(first)
    reasons = {(r["code"], r["reason"]) for r in out["rejected"]}
    assert reasons == {
        ("not-a-code", "INVALID_CODE"),
        (unknown_product, "UNKNOWN_PRODUCT"),
        (good, "REPEATED_CODE"),
    }
    assert out["accepted"] == 1
    again = await m.events(first)
    assert again["duplicates"] == 1
    assert again["accepted"] == 0
    conflict = await m.events(event("commission", "M1", [good], 1, lot="OTHER", expiry="2028-12-31"))
    assert conflict["rejected"][0]["reason"] == "COMMISSION_CONFLICT"
    not_maker = await admin.events(
        event("commission", "P1", [cn20(w["unit"], 2)], 1, lot="L1", expiry="2028-12-31")
    )
    assert not_maker["rejected"][0]["reason"] == "NOT_MANUFACTURER"
    # a receive of a code nobody commissioned is evidence: accepted
    fake = cn20(w["unit"], 99)
    taken = await p1.events(event("receive", "P1", [fake], 2))
    assert taken["accepted"] == 1
    item = await p1.ok("GET", f"/v1/codes/{fake}/verify")
    assert item["known"] is False
    assert [r["reason"] for r in item["reasons"]] == ["UNKNOWN_CODE"]
    assert await db.fetchval("SELECT count(*) FROM events") == 2  # all-rejected events are not kept


async def test_all_rejected_event_can_be_retried_after_fix(admin: Api) -> None:
    w = await _world(admin)
    m = w["keys"]["M1"]
    code = cn20("8111111", 1)
    ev = event("commission", "M1", [code], 0, lot="L1", expiry="2028-12-31")
    assert (await m.events(ev))["rejected"][0]["reason"] == "UNKNOWN_PRODUCT"
    await admin.ok(
        "POST",
        "/v1/products",
        {
            "product_id": "8111111",
            "name": "Late product",
            "med_list_codg": "Y",
            "pack_units": 10,
            "manufacturer": "M1",
        },
        201,
    )
    retried = await m.events(ev)
    assert retried["accepted"] == 1
    assert retried["duplicates"] == 0


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"type": "teleport"}, "events[0].type"),
        ({"at": "yesterday"}, "events[0].at"),
        ({"at": "2026-03-02T08:00:00"}, "events[0].at"),  # no offset
        ({"at": "2099-01-01T00:00:00+00:00"}, "events[0].at"),
        ({"event_id": "123"}, "events[0].event_id"),
        ({"codes": []}, "events[0].codes"),
        ({"codes": "8123456"}, "events[0].codes"),
        ({"quantity": "2"}, "events[0].quantity"),
        ({"lot": None}, "events[0].lot"),
        ({"surprise": 1}, "events[0]"),
        ({"type": "ship"}, "events[0].to"),
        ({"type": "pack"}, "events[0].parent"),
        ({"type": "pack", "lot": None, "expiry": None, "parent": "junk"}, "events[0].parent"),
    ],
)
async def test_bad_events_are_400_and_store_nothing(
    admin: Api, db, change: dict[str, Any], field: str
) -> None:  # type: ignore[no-untyped-def]
    w = await _world(admin)
    body = event("commission", "M1", [cn20(w["unit"], 1)], 0, lot="L1", expiry="2028-12-31")
    body.update(change)
    resp = await w["keys"]["M1"].post("/v1/events", {"events": [body]})
    assert resp.status_code == 400, resp.text
    problem = resp.json()
    assert resp.headers["content-type"].startswith("application/problem+json")
    assert any(e["field"].startswith(field) for e in problem["errors"]), problem
    assert await db.fetchval("SELECT count(*) FROM events") == 0


async def test_one_id_for_two_different_events_in_a_request_is_400(admin: Api, db) -> None:  # type: ignore[no-untyped-def]
    """An id is one event: the same event twice in a request is one fact, two different
    events under one id are refused (the second would have been dropped unseen)."""
    w = await _world(admin)
    m = w["keys"]["M1"]
    first = event("commission", "M1", [cn20(w["unit"], 1)], 0, lot="L1", expiry="2028-12-31")
    other = {**first, "codes": [cn20(w["unit"], 2)]}
    resp = await m.post("/v1/events", {"events": [first, other]})
    assert resp.status_code == 400, resp.text
    assert [e["field"] for e in resp.json()["errors"]] == ["events[1].event_id"]
    assert await db.fetchval("SELECT count(*) FROM events") == 0
    same = await m.events(first, dict(first))
    assert same["accepted"] == 1
    assert same["duplicates"] == 1


async def test_too_many_codes_and_oversize_body(admin: Api) -> None:
    w = await _world(admin)
    m = w["keys"]["M1"]
    codes = [cn20(w["unit"], i) for i in range(10_001)]
    resp = await m.post(
        "/v1/events", {"events": [event("commission", "M1", codes, 0, lot="L", expiry="2028-01-01")]}
    )
    assert resp.status_code == 400
    assert resp.json()["errors"][0]["field"].startswith("events")
    huge = {"events": [event("commission", "M1", ["x" * 190] * 9000, 0, lot="L", expiry="2028-01-01")] * 3}
    resp = await m.post("/v1/events", huge)
    assert resp.status_code == 413
    assert resp.headers["content-type"].startswith("application/problem+json")
    bad_json = await m.client.post(
        "/v1/events", headers={**m.headers, "content-type": "application/json"}, content=b"{nope"
    )
    assert bad_json.status_code == 400


async def test_ten_thousand_codes_in_one_request(admin: Api, db) -> None:  # type: ignore[no-untyped-def]
    w = await _world(admin)
    m = w["keys"]["M1"]
    codes = [cn20(w["unit"], i) for i in range(10_000)]
    out = await m.events(event("commission", "M1", codes, 0, lot="L1", expiry="2028-12-31"))
    assert out["accepted"] == 10_000
    cases = [sscc(100 + i) for i in range(1000)]
    packs = [event("pack", "M1", codes[i * 10 : i * 10 + 10], 1, parent=cases[i]) for i in range(1000)]
    out = await m.post("/v1/events", {"events": packs})
    assert out.json()["accepted"] == 10_000
    out = await m.events(event("ship", "M1", cases, 2, to="D1"))
    assert (
        await db.fetchval("SELECT count(*) FROM codes WHERE state = 'in_transit' AND destination = 'D1'")
        == 11_000
    )


async def test_dispense_consumes_and_return_restores(admin: Api) -> None:
    w = await _world(admin)
    m, p1 = w["keys"]["M1"], w["keys"]["P1"]
    code = cn20(w["unit"], 1)
    await m.events(event("commission", "M1", [code], 0, lot="L1", expiry="2028-12-31"))
    await m.events(event("ship", "M1", [code], 1, to="P1"))
    await p1.events(event("receive", "P1", [code], 2))
    await p1.events(event("dispense", "P1", [code], 3, quantity=10))
    assert (await p1.ok("GET", f"/v1/codes/{code}/verify"))["units_left"] == 14
    await p1.events(event("dispense", "P1", [code], 4))
    gone = await p1.ok("GET", f"/v1/codes/{code}/verify")
    assert gone["units_left"] == 0
    assert gone["state"] == "dispensed"
    assert [r["reason"] for r in gone["reasons"]] == ["ALREADY_SETTLED"]
    await p1.events(event("return", "P1", [code], 5))
    assert (await p1.ok("GET", f"/v1/codes/{code}/verify"))["units_left"] == 14


async def test_verify_reasons_expired_region_and_batch_order(admin: Api) -> None:
    w = await _world(admin)
    m, p9 = w["keys"]["M1"], w["keys"]["P9"]
    old = cn20(w["unit"], 1)
    fresh = cn20(w["unit"], 2)
    await m.events(
        event("commission", "M1", [old], 0, lot="L0", expiry="2020-01-01"),
        event("commission", "M1", [fresh], 0, lot="L1", expiry="2030-01-01"),
        event("ship", "M1", [old, fresh], 1, to="P9"),
    )
    out = await p9.ok("POST", "/v1/verify", {"codes": [fresh, "garbage", old]})
    items = out["items"]
    assert [i["code"] for i in items] == [fresh, "garbage", old]
    assert [r["reason"] for r in items[0]["reasons"]] == ["OUT_OF_REGION"]
    assert [r["reason"] for r in items[1]["reasons"]] == ["INVALID_CODE"]
    assert {r["reason"] for r in items[2]["reasons"]} == {"EXPIRED", "OUT_OF_REGION"}
    insurer = await admin.key_for("insurer")
    assert (await insurer.get(f"/v1/codes/{fresh}/verify")).status_code == 400
    assert (await insurer.get(f"/v1/codes/{fresh}/verify", org="P9")).status_code == 200
    assert (await p9.get(f"/v1/codes/{fresh}/verify", org="P1")).status_code == 403


async def test_gs1_forms_are_one_code(admin: Api) -> None:
    w = await _world(admin)
    m = w["keys"]["M1"]
    await admin.ok(
        "POST",
        "/v1/products",
        {
            "product_id": "06901234567892",
            "name": "GS1 drug",
            "med_list_codg": "G1",
            "pack_units": 10,
            "manufacturer": "M1",
        },
        201,
    )
    bracketed = "(01)06901234567892(17)281231(10)LOT7(21)SER1"
    out = await m.events(event("commission", "M1", [bracketed], 0, lot="LOT7", expiry="2028-12-31"))
    assert out["accepted"] == 1
    raw = "]d2010690123456789217281231\x1d10LOT7\x1d21SER1"
    item = await m.ok("POST", "/v1/verify", {"codes": [raw]})
    assert item["items"][0]["code"] == "010690123456789221SER1"
    assert item["items"][0]["known"] is True


async def test_history_needs_investigator(admin: Api) -> None:
    w = await _world(admin)
    code = cn20(w["unit"], 1)
    assert (await w["keys"]["P1"].get(f"/v1/codes/{code}/history")).status_code == 403
    inv = await admin.key_for("investigator")
    assert (await inv.get(f"/v1/codes/{code}/history")).status_code == 404
    assert (await inv.get("/v1/codes/nonsense/history")).status_code == 400
    assert at(0).endswith("+00:00")


async def test_the_history_of_a_code_whose_serial_holds_a_slash_is_read_in_the_query(admin: Api) -> None:
    """Found by a probe: AI (21) allows "/" and such a pack is commissioned, but its
    history had no readable address: /v1/codes/{code}/history splits at the slash (as
    %2F too) and answered the router's bare 404. /v1/codes/history?code= reads any code,
    in any of its forms, with the path's answer where a path can name it."""
    w = await _world(admin)
    m = w["keys"]["M1"]
    product = {"product_id": "06901234000115", "name": "GS1", "med_list_codg": "G2", "pack_units": 20}
    await admin.ok("POST", "/v1/products", {**product, "manufacturer": "M1"}, 201)
    slashed = "(01)06901234000115(21)A/123"
    out = await m.events(
        event("commission", "M1", [slashed, "(01)06901234000115(21)B1"], 0, lot="G1", expiry="2030-01-01")
    )
    assert out["accepted"] == 2, out
    inv = await admin.key_for("investigator")
    found = await inv.ok("GET", "/v1/codes/history?" + urlencode({"code": slashed}))
    assert found["code"] == "010690123400011521A/123"
    assert [e["type"] for e in found["events"]] == ["commission"]
    # in its other forms too, and the path's answer where a path can name the code
    assert await inv.ok("GET", "/v1/codes/history?" + urlencode({"code": "010690123400011521A/123"})) == found
    plain = await inv.ok("GET", "/v1/codes/010690123400011521B1/history")
    assert (
        await inv.ok("GET", "/v1/codes/history?" + urlencode({"code": "(01)06901234000115(21)B1"})) == plain
    )
    # as the path form: not a code 400, unknown 404, investigators only; a parameter it
    # does not take, or the code twice or left out, is a 400 naming it
    for query, status, field in (
        ({"code": "nonsense"}, 400, "code"),
        ({"code": cn20(w["unit"], 99)}, 404, None),
        ({"code": slashed, "org": "P1"}, 400, "org"),
        ({}, 400, "code"),
    ):
        resp = await inv.get("/v1/codes/history", **query)
        assert resp.status_code == status, (query, resp.text)
        if field:
            assert [e["field"] for e in resp.json()["errors"]] == [field], resp.text
    twice = await inv.client.get(
        "/v1/codes/history?" + urlencode([("code", slashed), ("code", slashed)]), headers=inv.headers
    )
    assert (twice.status_code, twice.json()["errors"][0]["field"]) == (400, "code")
    assert (await w["keys"]["P1"].get("/v1/codes/history", code=slashed)).status_code == 403


async def test_a_return_uploaded_before_its_dispense_still_undoes_it(admin: Api) -> None:
    w = await small_world(admin)
    m, p1 = w["keys"]["M1"], w["keys"]["P1"]
    code = cn20(w["unit"], 1)
    await m.events(
        event("commission", "M1", [code], 0, lot="L1", expiry="2028-12-31"),
        event("ship", "M1", [code], 1, to="P1"),
    )
    await p1.events(event("receive", "P1", [code], 2))
    await p1.events(event("return", "P1", [code], 6))  # the patient's return, uploaded first
    await p1.events(event("dispense", "P1", [code], 5, quantity=10))
    assert (await p1.ok("GET", f"/v1/codes/{code}/verify"))["units_left"] == 24
    await p1.events(event("dispense", "P1", [code], 7, quantity=4))  # a later sale stands
    assert (await p1.ok("GET", f"/v1/codes/{code}/verify"))["units_left"] == 20


async def _stocked(admin: Api, n: int) -> dict[str, Any]:
    """small_world plus ``n`` packs (24 units each) received by pharmacy P1."""
    w = await _world(admin)
    w["codes"] = await received(w, "P1", list(range(1, n + 1)))
    return w


async def test_a_pack_sold_between_a_dispenses_read_and_write_is_judged_again(
    admin: Api, db: Any, db_url: str
) -> None:
    """A small dispense reads its packs without locking them and writes only if none
    changed since (usecases.events, the optimistic path). Here another writer holds the
    pack's row while the dispense reads it, then sells the whole pack and commits: the
    dispense's write, which waited on that row, finds the pack changed, reads again and
    takes nothing (the pack is used up: DUPLICATE) instead of taking its 24 units a second
    time. Through the use case on a pool of its own, as a request handler does."""
    import uuid

    from prometheus_client import REGISTRY

    from service.core.events import Incoming
    from service.usecases import events as ingest_usecase
    from tests.helpers import BASE_TIME

    w = await _stocked(admin, 1)
    code = w["codes"][0]
    sale = Incoming(uuid.uuid4(), "dispense", BASE_TIME + timedelta(minutes=30), "P1", (code,))

    def counted(outcome: str) -> float:
        labels = {"operation": "ingest", "outcome": outcome}
        return REGISTRY.get_sample_value("tracecode_optimistic_writes_total", labels) or 0.0

    raced, locked = counted("raced"), counted("locked")
    result = await sold_elsewhere_meanwhile(
        db, db_url, code, lambda pool: ingest_usecase.ingest(pool, [sale], []), "the dispense's write"
    )
    assert [f.kind for f in result.flags] == ["DUPLICATE"]
    # the metrics tell: its write lost the race once, then it took the locked path (a flag)
    assert (counted("raced") - raced, counted("locked") - locked) == (1, 1)
    taken = await db.fetch("SELECT sale_id, units FROM consumptions WHERE code = $1", code)
    assert [(r["sale_id"], r["units"]) for r in taken] == [("OTHER-SALE", 24)]
    assert await db.fetchval("SELECT units_left FROM codes WHERE code = $1", code) == 0


async def test_dispenses_racing_on_a_pool_of_their_own_never_take_a_unit_twice(
    admin: Api, db: Any, db_url: str
) -> None:
    """40 small dispenses (split sales of 5 units, 1 to 3 packs in different orders) of
    the same 4 packs at once, through the use case on a pool of 4 connections: reads,
    decisions and writes interleave, and every write that finds a pack changed runs again
    (or takes the locked transaction). No pack gives more than its 24 units, and what
    each pack has left is what its sales did not take."""
    import asyncio
    import uuid

    from service.core.events import Incoming
    from service.store.db import create_pool
    from service.usecases import events as ingest_usecase
    from tests.helpers import BASE_TIME

    w = await _stocked(admin, 4)
    codes = w["codes"]
    sales = []
    for i in range(40):
        order = tuple(codes[i % 4 :] + codes[: i % 4])[: 1 + i % 3]
        when = BASE_TIME + timedelta(minutes=30, seconds=i)
        sales.append(Incoming(uuid.uuid4(), "dispense", when, "P1", order, quantity=5))
    pool = await create_pool(db_url, min_size=4, max_size=4)
    try:
        results = await asyncio.gather(*(ingest_usecase.ingest(pool, [s], []) for s in sales))
    finally:
        await pool.close()
    assert all(r.accepted_events == 1 for r in results)
    consumed = await units_taken_once(db, codes)
    assert sum(consumed.values()) == 4 * 24  # 40 sales of 5 units ask for more than the 96 there are


async def test_a_code_row_created_meanwhile_by_another_request_runs_the_ingest_again(
    admin: Api, db: Any, db_url: str
) -> None:
    """Two requests that both see a code for the first time both create its row. Here the
    other one's row is inserted and held uncommitted while a receive of the same code
    runs through the use case: its insert waits on that row, meets it once the other
    commits, and the whole transaction runs again, finding the row (store.codes.insert_new,
    CreatedConcurrently). On Citus the COPY reports the clash as an internal error, not
    as a unique violation (store.conn.unique_violation): it answered 500 before."""
    import asyncio
    import uuid

    import asyncpg

    from service.core.events import Incoming
    from service.store.db import create_pool
    from service.usecases import events as ingest_usecase
    from tests.helpers import BASE_TIME

    w = await _world(admin)
    code = cn20(w["unit"], 77)
    scan = Incoming(uuid.uuid4(), "receive", BASE_TIME + timedelta(minutes=30), "P1", (code,))
    pool = await create_pool(db_url, min_size=1, max_size=1)
    other = await asyncpg.connect(db_url)
    try:
        held = other.transaction()
        await held.start()
        await other.execute(
            "INSERT INTO codes (code, kind, state, last_at) VALUES ($1, 'cn20', 'unknown', now())", code
        )
        sent = asyncio.create_task(ingest_usecase.ingest(pool, [scan], []))
        await until_waiting_on_a_lock(db, "the receive's insert")  # its insert waits on the held row
        await held.commit()
        result = await sent
    finally:
        await other.close()
        await pool.close()
    assert result.accepted_events == 1
    assert await db.fetchval("SELECT count(*) FROM codes WHERE code = $1", code) == 1
    assert await db.fetchval("SELECT count(*) FROM event_codes WHERE code = $1", code) == 1


async def test_an_event_id_another_organisation_holds_is_refused_not_a_retry(admin: Api) -> None:
    """An event_id is one organisation's. P9 stores an event under an id; P1's own event
    under that id is no retry of it: its codes are refused (EVENT_ID_TAKEN) instead of
    being counted as a harmless duplicate while nothing of P1's is stored. (Found in
    review: P1 was answered duplicates: 1 and its sale was never recorded.) P9's own
    resend stays a duplicate."""
    w = await small_world(admin)
    (mine,), (theirs,) = await received(w, "P1", [61]), await received(w, "P9", [62])
    squat = event("dispense", "P9", [theirs], 3)
    assert (await w["keys"]["P9"].events(squat))["accepted"] == 1
    sale = {**event("dispense", "P1", [mine], 4), "event_id": squat["event_id"]}
    out = await w["keys"]["P1"].events(sale)
    assert (out["accepted"], out["duplicates"]) == (0, 0)
    assert out["rejected"] == [{"event_id": squat["event_id"], "code": mine, "reason": "EVENT_ID_TAKEN"}]
    assert (await w["keys"]["P1"].ok("GET", f"/v1/codes/{mine}/verify"))["units_left"] == 24
    again = await w["keys"]["P9"].events(squat)
    assert (again["duplicates"], again["rejected"]) == (1, [])


async def test_a_code_whose_label_says_another_lot_or_expiry_is_not_commissioned(admin: Api) -> None:
    """A GS1 element string may carry the pack's lot (10) and expiry (17): commissioned
    into another lot or expiry than its label says, one of them is wrong, and the pack
    would be recorded as the other (found by a probe: a recall of the printed lot then
    missed it). LABEL_MISMATCH; a label that agrees, or says nothing, is taken."""
    w = await small_world(admin)
    m = w["keys"]["M1"]
    gtin = "10614141073464"
    product = {"product_id": gtin, "name": "Amoxicillin (GS1)", "med_list_codg": "XJ01CAA040A001010104256",
               "pack_units": 24, "manufacturer": "M1"}  # fmt: skip
    await admin.ok("POST", "/v1/products", product, 201)
    agrees, silent = f"(01){gtin}(17)301231(10)L1(21)A", f"(01){gtin}(21)D"
    other_lot, other_expiry = f"(01){gtin}(10)L2(21)B", f"(01){gtin}(17)291231(21)C"
    out = await m.events(
        event("commission", "M1", [agrees, other_lot, other_expiry, silent], 0, lot="L1", expiry="2030-12-31")
    )
    assert out["accepted"] == 2, out
    assert sorted((r["code"], r["reason"]) for r in out["rejected"]) == [
        (f"01{gtin}21B", "LABEL_MISMATCH"),
        (f"01{gtin}21C", "LABEL_MISMATCH"),
    ]
    known = await m.ok("POST", "/v1/verify", {"codes": [agrees, other_lot]})
    assert [item["known"] for item in known["items"]] == [True, False]
