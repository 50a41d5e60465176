"""A small province for a month: every injected fraud pattern is flagged with the right
kind, and no legitimate code is flagged."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.helpers import Api, cn20, eid, sscc

pytestmark = pytest.mark.asyncio(loop_scope="session")

MONTH = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
MAKERS = {"M1": "450300", "M2": "450900"}
DISTRIBUTORS = {"D1": "450100", "D2": "450200", "D3": "450500"}
DISPENSERS = {"P1": "450103", "P2": "450105", "P3": "450203", "H1": "450102", "H2": "450502"}
OUTSIDE = {"P9": "110101"}
PRODUCTS = [  # product id, maker, catalogue code, pack units, regions
    ("8100001", "M1", "XA01", 24, ["45"]),
    ("8100002", "M1", "XB02", 10, []),
    ("8200001", "M2", "XC03", 30, []),
    ("8200002", "M2", "XD04", 6, ["45"]),
]
CASE = 20


def t(day: float) -> str:
    return (MONTH + timedelta(days=day)).isoformat()


def ev(type_: str, org: str, codes: list[str], day: float, **extra: Any) -> dict[str, Any]:
    return {"event_id": eid(), "type": type_, "at": t(day), "org": org, "codes": codes, **extra}


async def post_events(keys: dict[str, Api], events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each organisation uploads its own events, in batches, in any order."""
    flags = []
    by_org: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        by_org.setdefault(e["org"], []).append(e)
    for org, mine in by_org.items():
        for i in range(0, len(mine), 500):
            out = await keys[org].events(*mine[i : i + 500])
            assert out["rejected"] == [], out["rejected"][:3]
            flags += out["flags"]
    return flags


async def test_month_in_a_province(admin: Api) -> None:
    rng = random.Random(7)
    orgs = {
        **{k: ("manufacturer", v) for k, v in MAKERS.items()},
        **{k: ("distributor", v) for k, v in DISTRIBUTORS.items()},
        **{
            k: ("pharmacy" if k.startswith("P") else "hospital", v)
            for k, v in {**DISPENSERS, **OUTSIDE}.items()
        },
    }
    for org_id, (kind, region) in orgs.items():
        await admin.ok(
            "POST", "/v1/orgs", {"id": org_id, "name": org_id, "kind": kind, "region": region}, 201
        )
    for pid, maker, codg, units, regions in PRODUCTS:
        await admin.ok(
            "POST",
            "/v1/products",
            {
                "product_id": pid,
                "name": f"drug {codg}",
                "med_list_codg": codg,
                "pack_units": units,
                "manufacturer": maker,
                "regions": regions,
            },
            201,
        )
    keys = {o: await admin.key_for("org", o) for o in orgs}
    insurer = await admin.key_for("insurer")
    inv = await admin.key_for("investigator")
    info = {pid: (maker, codg, units) for pid, maker, codg, units, _ in PRODUCTS}

    # --- supply chain: 3,200 packs in cases of 20, maker -> distributor -> dispenser ---
    events: list[dict[str, Any]] = []
    held: dict[str, list[str]] = {o: [] for o in DISPENSERS}
    product_of: dict[str, str] = {}
    case_no = 0
    for pid, maker, _, _, _ in PRODUCTS:
        codes = [cn20(pid, i) for i in range(1, 801)]
        lot = "EXP" if pid == "8200002" else f"L{pid[-1]}"
        expiry = "2026-03-10" if lot == "EXP" else "2028-12-31"
        events.append(ev("commission", maker, codes, 0, lot=lot, expiry=expiry, produced="2026-02-01"))
        for i in range(0, len(codes), CASE):
            case_no += 1
            case, units = sscc(case_no), codes[i : i + CASE]
            dist = rng.choice(list(DISTRIBUTORS))
            shop = rng.choice(list(DISPENSERS))
            day = rng.uniform(0.1, 10)
            events += [
                ev("pack", maker, units, 0.05, parent=case),
                ev("ship", maker, [case], day, to=dist),
                ev("receive", dist, [case], day + 0.5, **{"from": maker}),
                ev("ship", dist, [case], day + 1, to=shop),
                ev("receive", shop, [case], day + 1.5),
            ]
            held[shop] += units
            for u in units:
                product_of[u] = pid
    rng.shuffle(events)  # each organisation uploads late and out of order
    raised_on_the_way = await post_events(keys, events)
    assert raised_on_the_way  # out-of-order uploads do look suspicious for a while...
    assert (await inv.ok("GET", "/v1/flags?status=open"))["items"] == []  # ...until they are explained

    # --- a month of legitimate sales: whole packs and split packs, a few reversals ---
    setl = 0
    sold: set[str] = set()
    for shop, packs in held.items():
        rng.shuffle(packs)
        for code in packs[:150]:
            pid = product_of[code]
            if pid == "8200002":
                continue  # the expired lot is not sold legitimately
            _, codg, units = info[pid]
            setl += 1
            sold.add(code)
            split = rng.random() < 0.3
            qty = rng.randint(1, units) if split else units
            day = rng.uniform(12, 28)
            body = {
                "setl_id": f"S{setl}",
                "org": shop,
                "psn_no": f"P{rng.randint(1, 400)}",
                "at": t(day),
                "lines": [
                    {"line_no": 1, "med_list_codg": codg, "quantity": qty, "split": split, "codes": [code]}
                ],
            }
            answer = await insurer.ok("POST", "/v1/settlements", body)
            assert answer["decision"] == "accepted", answer
            if setl % 25 == 0:
                await insurer.ok("POST", f"/v1/settlements/S{setl}/reversal")
            elif setl % 7 == 0:  # the point-of-care system also uploads the dispense of the same sale
                await keys[shop].events(
                    ev(
                        "dispense",
                        shop,
                        [code],
                        day,
                        setl_id=f"S{setl}",
                        **({"quantity": qty} if split else {}),
                    )
                )
    assert (await inv.ok("GET", "/v1/flags?status=open"))["items"] == []

    # --- fraud, at known codes ---
    expected: set[tuple[str, str]] = set()
    unsold = {shop: [c for c in packs if c not in sold] for shop, packs in held.items()}
    p1_packs = [c for c in unsold["P1"] if product_of[c] == "8100002"]
    resold = p1_packs[0]  # sold once, then the pack comes back and is sold again (回流药)
    codg = info["8100002"][1]
    for n in (1, 2):
        await insurer.ok(
            "POST",
            "/v1/settlements",
            {
                "setl_id": f"DUP{n}",
                "org": "P1",
                "psn_no": "X",
                "at": t(29),
                "lines": [{"line_no": 1, "med_list_codg": codg, "quantity": 10, "codes": [resold]}],
            },
        )
    expected.add(("DUPLICATE", resold))
    swapped = p1_packs[1]  # bills the expensive XA01 while handing out XB02 (串换)
    await insurer.ok(
        "POST",
        "/v1/settlements",
        {
            "setl_id": "SWAP",
            "org": "P1",
            "psn_no": "X",
            "at": t(29),
            "lines": [{"line_no": 1, "med_list_codg": "XA01", "quantity": 10, "codes": [swapped]}],
        },
    )
    expected.add(("PRODUCT_MISMATCH", swapped))
    # a case shipped to P2 turns up at P3 (串货)
    diverted_case = sscc(case_no + 1)
    fresh = [cn20("8100002", i) for i in range(900, 900 + CASE)]
    await keys["M1"].events(
        ev("commission", "M1", fresh, 20, lot="L2", expiry="2028-12-31"),
        ev("pack", "M1", fresh, 20.1, parent=diverted_case),
        ev("ship", "M1", [diverted_case], 21, to="D1"),
    )
    await keys["D1"].events(
        ev("receive", "D1", [diverted_case], 21.5), ev("ship", "D1", [diverted_case], 22, to="P2")
    )
    await keys["P3"].events(ev("receive", "P3", [diverted_case], 23))
    expected.add(("DIVERSION", diverted_case))
    # a Guangxi-only drug shipped to Beijing: its receipt there is flagged, and so is its settlement
    bj = [cn20("8100001", i) for i in range(900, 905)]
    await keys["M1"].events(
        ev("commission", "M1", bj, 20, lot="L1", expiry="2028-12-31"), ev("ship", "M1", bj, 21, to="P9")
    )
    await keys["P9"].events(ev("receive", "P9", bj, 22))
    await insurer.ok(
        "POST",
        "/v1/settlements",
        {
            "setl_id": "BJ",
            "org": "P9",
            "psn_no": "X",
            "at": t(29),
            "lines": [{"line_no": 1, "med_list_codg": "XA01", "quantity": 24, "codes": [bj[0]]}],
        },
    )
    expected |= {("OUT_OF_REGION", c) for c in bj}
    fake = cn20("8100001", 99999)  # never commissioned
    await insurer.ok(
        "POST",
        "/v1/settlements",
        {
            "setl_id": "FAKE",
            "org": "P2",
            "psn_no": "X",
            "at": t(29),
            "lines": [{"line_no": 1, "med_list_codg": "XA01", "quantity": 24, "codes": [fake]}],
        },
    )
    expected.add(("UNKNOWN_CODE", fake))
    stale = next(c for c in unsold["H1"] if product_of[c] == "8200002")  # lot EXP expired on 10 March
    await keys["H1"].events(ev("dispense", "H1", [stale], 25))
    expected.add(("EXPIRED", stale))
    recalled = next(c for c in unsold["P2"] if product_of[c] == "8200001")
    await inv.ok(
        "POST", "/v1/recalls", {"product_id": "8200001", "lot": "L1", "reason": "contamination"}, 201
    )
    await insurer.ok(
        "POST",
        "/v1/settlements",
        {
            "setl_id": "REC",
            "org": "P2",
            "psn_no": "X",
            "at": t(29),
            "lines": [{"line_no": 1, "med_list_codg": "XC03", "quantity": 30, "codes": [recalled]}],
        },
    )
    expected.add(("RECALLED", recalled))
    clone = cn20("8100001", 1)
    await keys["M1"].events(ev("commission", "M1", [clone], 26, lot="FORGED", expiry="2029-01-01"))
    expected.add(("COMMISSION_CONFLICT", clone))

    raised = (await inv.ok("GET", "/v1/flags?limit=1000"))["items"]
    raised += (await inv.ok("GET", "/v1/flags?limit=1000&status=pending"))["items"]  # within their window
    standing = {(f["kind"], f["code"]) for f in raised if f["status"] != "auto_cleared"}
    assert standing == expected
