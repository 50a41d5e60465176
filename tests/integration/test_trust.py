"""Flags people can trust: a grace window for what late uploads may explain, region at
every receipt, and one insured person buying more than a course of treatment."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis
from litestar.testing import AsyncTestClient

from service.app import create_app
from service.config import Settings
from service.store import flags as flag_store
from service.store.db import create_pool
from service.usecases import flags as flag_usecases
from tests.helpers import Api, cn20, event, small_world, sscc, world

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def listed(inv: Api, **filters: Any) -> list[dict[str, Any]]:
    query = "&".join(f"{k}={v}" for k, v in filters.items())
    return (await inv.ok("GET", f"/v1/flags?{query}"))["items"]


async def unexplained_receive(w: dict[str, Any], serial: int) -> tuple[str, str]:
    """P1 receives a pack that was shipped to D1 and never on to P1: a DIVERSION that a
    late ship could still explain. Returns (code, flag id)."""
    m, d1, p1 = w["keys"]["M1"], w["keys"]["D1"], w["keys"]["P1"]
    code = cn20(w["unit"], serial)
    await m.events(
        event("commission", "M1", [code], 0, lot="L1", expiry="2030-01-01"),
        event("ship", "M1", [code], 1, to="D1"),
    )
    await d1.events(event("receive", "D1", [code], 2))
    out = await p1.events(event("receive", "P1", [code], 4))
    assert [f["kind"] for f in out["flags"]] == ["DIVERSION"]
    return code, out["flags"][0]["flag_id"]


async def test_a_suspicion_a_late_upload_may_explain_starts_pending(admin: Api, server_urls: Any) -> None:
    w = await world(admin)
    inv = w["inv"]
    code, flag_id = await unexplained_receive(w, 1)
    flag = await inv.ok("GET", f"/v1/flags/{flag_id}")
    assert flag["status"] == "pending"
    assert await listed(inv) == []  # investigators' default view leaves pending out
    assert [f["flag_id"] for f in await listed(inv, status="pending")] == [flag_id]
    # the distributor's ship arrives late: explained, straight from pending
    await w["keys"]["D1"].events(event("ship", "D1", [code], 3, to="P1"))
    flag = await inv.ok("GET", f"/v1/flags/{flag_id}")
    assert flag["status"] == "auto_cleared"
    assert await listed(inv, status="pending") == []
    # facts no late upload changes are open at once (a consumed pack sold again)
    ins = w["insurer"]
    claim = {
        "org": "P1",
        "psn_no": "1",
        "at": "2026-03-05T10:00:00+08:00",
        "lines": [
            {"line_no": 1, "med_list_codg": "XJ01CAA040A001010104256", "quantity": 24, "codes": [code]}
        ],
    }
    assert (await ins.ok("POST", "/v1/settlements", {**claim, "setl_id": "T1"}))["decision"] == "accepted"
    again = await ins.ok("POST", "/v1/settlements", {**claim, "setl_id": "T2"})
    assert again["decision"] == "rejected"  # the answer never waits for a window
    dup = await inv.ok("GET", f"/v1/flags/{again['flags'][0]['flag_id']}")
    assert (dup["kind"], dup["status"]) == ("DUPLICATE", "open")
    # both changes of the diversion reached the feed
    r = aioredis.from_url(server_urls[1])
    try:
        for _ in range(50):
            entries = await r.xrange("flags")
            seen = [(e[b"flag_id"].decode(), e[b"status"].decode()) for _, e in entries]
            if (flag_id, "auto_cleared") in seen:
                break
            await asyncio.sleep(0.1)
        assert (flag_id, "pending") in seen
        assert (flag_id, "auto_cleared") in seen
    finally:
        await r.aclose()


async def test_the_window_passes_unexplained_and_promotion_runs_once(
    admin: Api, db_url: str, server_urls: Any
) -> None:
    w = await world(admin)
    inv = w["inv"]
    _, flag_id = await unexplained_receive(w, 2)
    pools = [await create_pool(db_url, min_size=1, max_size=1) for _ in range(3)]
    try:
        assert await flag_usecases.promote_due(pools[0], timedelta(hours=48)) == []  # not yet due
        # while another worker is promoting (it holds the lock), this one does nothing
        async with pools[1].acquire() as holder, holder.transaction():
            await holder.execute("SELECT pg_advisory_xact_lock($1)", flag_store.PROMOTION_LOCK)
            assert await flag_usecases.promote_due(pools[0], timedelta(0)) is None
        # three workers promote at once: one does it, the others find the lock taken or nothing due
        results = await asyncio.gather(*(flag_usecases.promote_due(p, timedelta(0)) for p in pools))
        assert sorted(map(str, (i for r in results if r for i in r))) == [flag_id]
        assert await flag_usecases.promote_due(pools[0], timedelta(0)) == []
    finally:
        for p in pools:
            await p.close()
    flag = await inv.ok("GET", f"/v1/flags/{flag_id}")
    assert flag["status"] == "open"
    assert [(h["status"], h["by_key"]) for h in flag["history"]] == [("open", "system")]
    assert [f["flag_id"] for f in await listed(inv)] == [flag_id]
    # the promotion reaches the feed too (the service's publisher picks it up within seconds)
    r = aioredis.from_url(server_urls[1])
    try:
        seen: list[tuple[str, str]] = []
        for _ in range(50):
            seen = [(e[b"flag_id"].decode(), e[b"status"].decode()) for _, e in await r.xrange("flags")]
            if (flag_id, "open") in seen:
                break
            await asyncio.sleep(0.1)
        assert (flag_id, "open") in seen
    finally:
        await r.aclose()


async def test_each_worker_runs_the_promotion_and_it_survives_a_restart(
    admin: Api, settings: Settings
) -> None:
    """A service whose grace window is zero opens pending flags by itself, and another
    one started later finds and opens what was left pending (the state is the flags)."""
    w = await world(admin)
    _, first = await unexplained_receive(w, 3)
    fast = replace(settings, flag_grace_hours=0.0, flag_promote_seconds=0.05)
    async with AsyncTestClient(app=create_app(fast)), AsyncTestClient(app=create_app(fast)):
        for _ in range(100):
            if (await w["inv"].ok("GET", f"/v1/flags/{first}"))["status"] == "open":
                break
            await asyncio.sleep(0.05)
    flag = await w["inv"].ok("GET", f"/v1/flags/{first}")
    assert flag["status"] == "open"
    assert [h["status"] for h in flag["history"]] == ["open"]  # once, though two services ran


async def test_a_product_received_outside_its_regions_is_flagged_at_receipt(admin: Api) -> None:
    w = await world(admin)
    m, p9 = w["keys"]["M1"], w["keys"]["P9"]  # P9 is in Beijing; the product is Guangxi-only
    loose, packed = cn20(w["unit"], 10), [cn20(w["unit"], 11), cn20(w["unit"], 12)]
    case = sscc(10)
    await m.events(
        event("commission", "M1", [loose, *packed], 0, lot="L1", expiry="2030-01-01"),
        event("pack", "M1", packed, 1, parent=case),
        event("ship", "M1", [loose, case], 2, to="P9"),
    )
    receipt = event("receive", "P9", [loose, case], 3)
    out = await p9.events(receipt)
    assert sorted((f["kind"], f["code"]) for f in out["flags"]) == sorted(
        ("OUT_OF_REGION", c) for c in (loose, *packed)
    )
    flag = await w["inv"].ok("GET", f"/v1/flags/{out['flags'][0]['flag_id']}")
    assert (flag["status"], flag["org"], flag["region"]) == ("open", "P9", "110101")
    assert flag["refs"]["events"] == [receipt["event_id"]]
    assert "region 110101" in flag["detail"]
    # re-sent, the same evidence is the same flag; a receipt inside the region raises nothing
    assert [f["flag_id"] for f in (await p9.events(receipt))["flags"]] == []
    inside = cn20(w["unit"], 13)
    await m.events(
        event("commission", "M1", [inside], 0, lot="L1", expiry="2030-01-01"),
        event("ship", "M1", [inside], 2, to="P1"),
    )
    assert (await w["keys"]["P1"].events(event("receive", "P1", [inside], 3)))["flags"] == []


async def test_one_person_buying_past_a_course_of_treatment_is_one_flag(admin: Api) -> None:
    w = await small_world(admin)
    for org_id in ("P2", "P3"):
        await admin.ok(
            "POST", "/v1/orgs", {"id": org_id, "name": org_id, "kind": "pharmacy", "region": "450105"}, 201
        )
    limited = {
        "product_id": "8123458",
        "name": "Tramadol 50mg x 10",
        "med_list_codg": "XN02AX02",
        "pack_units": 10,
        "manufacturer": "M1",
        "regions": ["45"],
        "person_limit": {"units": 25, "days": 30},
    }
    assert (await admin.ok("POST", "/v1/products", limited, 201))["person_limit"] == {"units": 25, "days": 30}
    assert (await admin.ok("POST", "/v1/products", limited, 200))["person_limit"] == {"units": 25, "days": 30}
    changed = {**limited, "person_limit": {"units": 30, "days": 30}}
    assert (await admin.post("/v1/products", changed)).status_code == 409
    m, inv, ins = w["keys"]["M1"], await admin.key_for("investigator"), await admin.key_for("insurer")
    packs = {org: [cn20("8123458", i * 10 + n) for n in range(3)] for i, org in enumerate(("P1", "P2", "P3"))}
    for org, codes in packs.items():
        keys = await admin.key_for("org", org)
        await m.events(
            event("commission", "M1", codes, 0, lot="T1", expiry="2030-01-01"),
            event("ship", "M1", codes, 1, to=org),
        )
        await keys.events(event("receive", org, codes, 2))

    def claim(setl_id: str, org: str, code: str, day: int, psn: str = "450103199001011234") -> dict[str, Any]:
        return {
            "setl_id": setl_id,
            "org": org,
            "psn_no": psn,
            "at": f"2026-03-{day:02d}T10:00:00+08:00",
            "lines": [{"line_no": 1, "med_list_codg": "XN02AX02", "quantity": 10, "codes": [code]}],
        }

    # 10 units at P1 and 10 at P2: within the limit of 25 in 30 days
    for setl_id, org, day in (("E1", "P1", 3), ("E2", "P2", 5)):
        answer = await ins.ok("POST", "/v1/settlements", claim(setl_id, org, packs[org][0], day))
        assert (answer["decision"], answer["flags"]) == ("accepted", [])
    precheck = {**claim("E0", "P3", packs["P3"][0], 6), "mode": "precheck"}
    assert (await ins.ok("POST", "/v1/settlements", precheck))["flags"] == []
    # the third pharmacy takes the person to 30 units: still paid, and flagged once
    third = await ins.ok("POST", "/v1/settlements", claim("E3", "P3", packs["P3"][0], 7))
    assert third["decision"] == "accepted"
    assert [f["kind"] for f in third["flags"]] == ["EXCESS_PURCHASE"]
    flag = await inv.ok("GET", f"/v1/flags/{third['flags'][0]['flag_id']}")
    assert flag["status"] == "open"
    assert flag["refs"]["settlements"] == ["E1", "E2", "E3"]
    assert flag["refs"]["orgs"] == ["P1", "P2", "P3"]
    assert flag["refs"]["units"] == 30
    assert "450103199001011234" not in str(flag)  # the person only as the keyed hash
    # more in the same window is not another flag; another person is not flagged
    fourth = await ins.ok("POST", "/v1/settlements", claim("E4", "P1", packs["P1"][1], 8))
    assert (fourth["decision"], fourth["flags"]) == ("accepted", [])
    other = await ins.ok("POST", "/v1/settlements", claim("E5", "P2", packs["P2"][1], 8, psn="2"))
    assert other["flags"] == []
    assert len(await listed(inv, kind="EXCESS_PURCHASE")) == 1
    # a refund takes the units out of the person's count
    await ins.ok("POST", "/v1/settlements/E4/reversal")
    await ins.ok("POST", "/v1/settlements/E3/reversal")
    await ins.ok("POST", "/v1/settlements/E2/reversal")
    again = await ins.ok("POST", "/v1/settlements", claim("E6", "P2", packs["P2"][2], 9))
    assert again["flags"] == []  # 10 (E1) + 10 (E6) is within the limit
