"""The 进销存 ledger through POST /v1/nhsa: purchases, inventory changes, stock counts,
deletions and queries, with payloads shaped as FIELDS.md describes; a pharmacy's month."""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.helpers import Api, cn20, event, pack_claim
from tests.integration.test_nhsa import MED, P1_CODE, _units_left, _world, envelope, nhsa, sale, sale_return

pytestmark = pytest.mark.asyncio(loop_scope="session")

OTHER = "XA02BCA000A001010100001"


def item(bchno: str, codg: str = MED) -> dict[str, Any]:
    return {
        "med_list_codg": codg,
        "fixmedins_hilist_id": "YP0001",
        "fixmedins_hilist_name": "阿莫西林胶囊 0.25g*24",
        "fixmedins_bchno": bchno,
        "rx_flag": "1",
        "memo": "",
    }


def purchase(bchno: str, count: Any, **extra: Any) -> dict[str, Any]:
    """A 3503 purcinfo row ([B] Purcinfo3503): no trace-code node."""
    return {
        **item(bchno),
        "manu_lotnum": "L1",
        "manu_date": "2026-01-05",
        "expy_end": "2028-12-31",
        "dynt_no": "",
        "spler_name": "南宁医药配送",
        "spler_pmtno": "",
        "prodentp_name": "桂林制药",
        "aprvno": "国药准字H45020000",
        "finl_trns_pric": "10.500000",
        "purc_retn_cnt": count,
        "purc_invo_codg": "",
        "purc_invo_no": "",
        "purc_retn_stoin_time": "2026-03-02 09:00:00",
        "purc_retn_opter_name": "王药师",
        "prod_geay_flag": "0",
        **extra,
    }


def purchase_return(bchno: str, count: Any, **extra: Any) -> dict[str, Any]:
    """A 3504 row: no lot, manufacturer, approval or gift fields; the invoice no. required."""
    row = purchase(bchno, count, **{"purc_invo_no": "INV001", "medins_prod_purc_no": "P100", **extra})
    for key in ("dynt_no", "manu_lotnum", "prodentp_name", "aprvno", "prod_geay_flag"):
        row.pop(key)
    return row


def change(bchno: str, chg: str, count: Any, codes: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    """A 3502 invinfo row: no lot or date fields."""
    return {
        **item(bchno),
        "inv_chg_type": chg,
        "pric": 10.5,
        "cnt": count,
        "inv_chg_time": "2026-03-04 11:00:00",
        "inv_chg_opter_name": "王药师",
        "trdn_flag": "0",
        "drugtracinfo": [{"drug_trac_codg": c} for c in codes or []],
        **extra,
    }


def count(bchno: str, units: Any, day: str, code: str | None = None, **extra: Any) -> dict[str, Any]:
    """A 3501 invinfo row: drugtracinfo a single object ([B])."""
    row = {
        **item(bchno),
        "manu_lotnum": "",
        "manu_date": "2026-01-05",
        "expy_end": "2028-12-31",
        "invdate": day,
        "inv_cnt": units,
        **extra,
    }
    if code is not None:
        row["drugtracinfo"] = {"drug_trac_codg": code}
    return row


def deletion(bchno: str, data_type: str) -> dict[str, Any]:
    return {"fixmedins_bchno": bchno, "inv_data_type": data_type}


def upload(infno: str, bchno: str, **fields: Any) -> dict[str, Any]:
    """A single-form upload of one 3501–3506 row of a few units (no codes), with
    ``fields`` in place of the helpers' values."""
    wrapper, row = {
        "3501": ("invinfo", count(bchno, 5, "2026-03-07")),
        "3502": ("invinfo", change(bchno, "103", 5)),
        "3503": ("purcinfo", purchase(bchno, 5)),
        "3504": ("purcinfo", purchase_return(bchno, 5)),
        "3505": ("selinfo", sale(bchno, [], 5)),
        "3506": ("selinfo", sale_return(bchno, [], 5)),
    }[infno]
    return envelope(infno, {wrapper: {**row, **fields}})


async def _ledger(api: Api, org: str = "P2", codg: str = MED) -> dict[str, Any]:
    out = await api.ok("GET", f"/v1/orgs/{org}/ledger?med_list_codg={codg}")
    assert out["org"] == org
    items = {i["med_list_codg"]: i for i in out["items"]}
    return items.get(codg, {})


async def test_a_pharmacys_month(admin: Api, db: Any) -> None:
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    inv = await admin.key_for("investigator")

    # purchases (3503 with numbers as strings, 3503A), then a purchase retried: one fact
    out = await nhsa(p2, envelope("3503", {"purcinfo": purchase("C001", "72.0000")}))
    assert out["infcode"] == 0, out
    assert out["output"]["result"]["retRslt"] == "1"
    assert out["output"]["tracecode"]["records"] == 1
    out = await nhsa(p2, envelope("3503A", {"purcinfoDetail": [purchase("C002", 24), purchase("C001", 72)]}))
    assert out["output"]["tracecode"]["records"] == 1  # C001 again is the same record
    # a purchase return of one pack's worth
    out = await nhsa(p2, envelope("3504", {"purcinfo": purchase_return("C003", 24)}))
    assert out["infcode"] == 0, out

    # sales: whole pack, split sales, a batch; a patient return
    await nhsa(p2, envelope("3505", {"selinfo": sale("B100", [u[0]], 24, setl_id="S900")}))
    await nhsa(p2, envelope("3505", {"selinfo": sale("B101", [u[1]], 6, split="1")}))
    batch = [sale("B102", [u[1]], "6", split="1"), sale("B103", [u[2]], 24)]
    out = await nhsa(p2, envelope("3505A", {"selinfoDetail": batch}))
    assert out["output"]["tracecode"]["records"] == 2
    await nhsa(p2, envelope("3506", {"selinfo": sale_return("R100", [u[0]], 24, setl_id="S900")}))

    led = await _ledger(inv)
    assert led["units_in"] == 96 + 72 + 24 + 24  # _world's purchase C000 of its 4 packs
    assert led["units_out"] == 24 + 24 + 6 + 6 + 24
    assert led["by_kind"] == {"purchase": 192, "purchase_return": 24, "sale": 60, "sale_return": 24}
    assert led["balance"] == 132
    assert led["counted"] is None

    # the sale B103 is deleted: the ledger no longer counts it, its pack comes back as by
    # a return, and the history shows both; deleting it again is one fact
    out = await nhsa(p2, envelope("3507", {"data": deletion("B103", "4")}))
    assert out["infcode"] == 0, out
    assert out["output"]["tracecode"]["deleted"] == ["B103"]
    assert await _units_left(p2, u[2]) == 24
    history = await inv.ok("GET", f"/v1/codes/{u[2]}/history")
    assert [e["type"] for e in history["events"]][-2:] == ["dispense", "return"]
    again = await nhsa(p2, envelope("3507A", {"goodDetail": [deletion("B103", "4")]}))
    assert again["infcode"] == 0, again
    assert again["output"]["tracecode"]["deleted"] == []
    assert again["output"]["tracecode"]["accepted"] == 0
    assert await db.fetchval("SELECT count(*) FROM events WHERE type = 'return'") == 2
    led = await _ledger(inv)
    assert led["balance"] == 156
    # the deleted sale sent again stays deleted, and the answer says so (found by a probe:
    # it was "success" with nothing stored); in a batch, that row is listed, the others kept
    out = await nhsa(p2, envelope("3505", {"selinfo": sale("B103", [u[2]], 24)}))
    assert out["infcode"] == -1, out
    assert out["err_msg"].startswith("input.selinfo.fixmedins_bchno: the record of this type uploaded"), out
    assert "stays deleted" in out["err_msg"], out
    assert (await _ledger(inv))["balance"] == 156
    rows = [sale("B103", [u[2]], 24), sale("B103b", [], 2, med_list_codg=OTHER)]
    out = await nhsa(p2, envelope("3505A", {"selinfoDetail": rows}))
    assert (out["infcode"], out["output"]["result"]["retRslt"]) == (0, "0"), out
    [listed] = out["output"]["selinfoErrDetail"]
    assert listed["fixmedins_bchno"] == "B103", listed
    assert "stays deleted" in listed["msgRslt"], listed
    assert out["output"]["tracecode"]["records"] == 1
    assert (await _ledger(inv))["balance"] == 156

    # the month's stock count, counting a pack it holds: the count is kept and compared
    out = await nhsa(p2, envelope("3501", {"invinfo": count("K001", "154.00", "2026-03-07", u[3])}))
    assert out["infcode"] == 0, out
    assert out["output"]["tracecode"]["flags"] == []
    led = await _ledger(inv)
    assert led["counted"] == 154
    assert led["count_difference"] == -2
    assert led["balance"] == 154
    assert led["counted_at"].startswith("2026-03-06T16:00:00")  # the start of 7 March, China time

    # an unknown organisation, and an org key: refused
    assert (await inv.get("/v1/orgs/NOPE/ledger")).status_code == 404
    assert (await p2.get("/v1/orgs/P2/ledger")).status_code == 403


async def test_stock_imbalance_one_flag_per_record(admin: Api) -> None:
    w = await _world(admin)
    p2 = w["keys"]["P2"]
    inv = await admin.key_for("investigator")
    await nhsa(p2, envelope("3503", {"purcinfo": {**purchase("C010", 10), "med_list_codg": OTHER}}))
    # a sale without codes of more than was bought
    body = envelope("3505", {"selinfo": sale("B110", [], 14, med_list_codg=OTHER)})
    out = await nhsa(p2, body)
    flags = out["output"]["tracecode"]["flags"]
    assert [f["kind"] for f in flags] == ["STOCK_IMBALANCE"], out
    again = await nhsa(p2, copy.deepcopy(body))
    assert again["output"]["tracecode"]["flags"] == []  # the record is one fact
    # a transfer out takes it further below zero: a second flag, for that record
    out = await nhsa(
        p2,
        envelope(
            "3502",
            {
                "invinfo": {
                    **change("T110", "102", 3, inv_chg_time="2026-03-06 08:00:00"),
                    "med_list_codg": OTHER,
                }
            },
        ),
    )
    assert [f["kind"] for f in out["output"]["tracecode"]["flags"]] == ["STOCK_IMBALANCE"]
    page = await inv.ok("GET", "/v1/flags?kind=STOCK_IMBALANCE")
    assert len(page["items"]) == 2
    first = page["items"][-1]
    assert first["code"] == OTHER
    assert first["org"] == "P2"
    assert first["status"] == "open"
    assert first["refs"]["balance_after"] == -4
    assert first["refs"]["units_in"] == 10
    assert first["refs"]["fixmedins_bchno"] == "B110"
    assert (await _ledger(inv, codg=OTHER))["balance"] == -7
    # found by the catalogue item they name (code= takes trace codes only: a 400)
    by_item = await inv.ok("GET", f"/v1/flags?med_list_codg={OTHER}")
    assert [f["flag_id"] for f in by_item["items"]] == [f["flag_id"] for f in page["items"]]
    assert (await inv.get(f"/v1/flags?code={OTHER}")).status_code == 400
    assert (await inv.get(f"/v1/flags?med_list_codg={OTHER}&code={OTHER}")).status_code == 400


async def test_a_record_sent_late_or_deleted_flags_the_later_moves_it_leaves_unbacked(admin: Api) -> None:
    """STOCK_IMBALANCE judges a move out as of its own time. A sale sent after a later
    one, or a purchase deleted, changes the ledger of the moves after it: those that it
    leaves below zero are flagged then (before, only the new records were judged, and a
    ledger could end below zero with no flag)."""
    w = await _world(admin)  # P2 bought 96 units on 03-01
    p2 = w["keys"]["P2"]
    inv = await admin.key_for("investigator")
    later = await nhsa(
        p2, envelope("3505", {"selinfo": sale("LATE2", [], 96, sel_retn_time="2026-03-05 12:00:00")})
    )
    assert later["output"]["tracecode"]["flags"] == []  # 96 of 96
    earlier = await nhsa(
        p2, envelope("3505", {"selinfo": sale("LATE1", [], 24, sel_retn_time="2026-03-05 10:00:00")})
    )
    flags = earlier["output"]["tracecode"]["flags"]
    assert [f["kind"] for f in flags] == ["STOCK_IMBALANCE"], earlier  # for LATE2, not LATE1 (72 left then)
    (flag,) = (await inv.ok("GET", "/v1/flags?kind=STOCK_IMBALANCE"))["items"]
    assert (flag["refs"]["fixmedins_bchno"], flag["refs"]["balance_after"]) == ("LATE2", -24)
    # a late purchase that leaves LATE2 below zero still raises nothing new, and its answer
    # does not name LATE2's flag, which stood already (found in review)
    topped = purchase("LATE3", 1, purc_retn_stoin_time="2026-03-05 11:00:00")
    assert (await nhsa(p2, envelope("3503", {"purcinfo": topped})))["output"]["tracecode"]["flags"] == []
    (flag,) = (await inv.ok("GET", "/v1/flags?kind=STOCK_IMBALANCE"))["items"]
    # its evidence is the ledger as it is now: one unit more came in before it
    assert (flag["refs"]["fixmedins_bchno"], flag["refs"]["balance_after"]) == ("LATE2", -23)

    # another item: two purchases back one sale; deleting the second leaves it unbacked
    bought = [purchase(f"BUY{i}", 30, purc_retn_stoin_time=f"2026-03-0{2 + i} 09:00:00") for i in range(2)]
    for row in bought:
        assert (await nhsa(p2, envelope("3503", {"purcinfo": {**row, "med_list_codg": OTHER}})))[
            "infcode"
        ] == 0
    sold = sale("SOLD", [], 50, sel_retn_time="2026-03-05 10:00:00", med_list_codg=OTHER)
    assert (await nhsa(p2, envelope("3505", {"selinfo": sold})))["output"]["tracecode"]["flags"] == []
    deleted = await nhsa(p2, envelope("3507", {"data": deletion("BUY1", "3")}))
    assert [f["kind"] for f in deleted["output"]["tracecode"]["flags"]] == ["STOCK_IMBALANCE"], deleted
    page = await inv.ok("GET", "/v1/flags?kind=STOCK_IMBALANCE")
    found = [(f["refs"]["fixmedins_bchno"], f["refs"]["balance_after"]) for f in page["items"]]
    assert found == [("SOLD", -20), ("LATE2", -23)]


async def test_inventory_changes_with_codes(admin: Api) -> None:
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    rows = [
        change("T200", "105", 24, [u[0]]),  # destroyed
        change("T201", "104", 2),  # a count loss: the ledger only
        change("T202", "999", 1),  # not a change type
    ]
    out = await nhsa(p2, envelope("3502A", {"invinfoDetail": rows}))
    assert out["infcode"] == 0, out
    errs = out["output"]["invinfoErrDetail"]
    assert [e["fixmedins_bchno"] for e in errs] == ["T202"]
    assert errs[0]["msgRslt"].startswith("input.invinfoDetail[2].inv_chg_type:")
    verify = await p2.ok("GET", f"/v1/codes/{u[0]}/verify")
    assert verify["dispensable"] is False
    # a transfer out ships the pack (no destination named)
    out = await nhsa(p2, envelope("3502", {"invinfo": change("T203", "102", 24, [u[1]])}))
    assert out["output"]["tracecode"]["accepted"] == 1
    inv = await admin.key_for("investigator")
    history = await inv.ok("GET", f"/v1/codes/{u[1]}/history")
    assert history["events"][-1]["type"] == "ship"
    led = await _ledger(inv)
    assert led["by_kind"] == {"purchase": 96, "destroyed": 24, "count_loss": 2, "transfer_out": 24}


async def test_a_change_recorded_under_another_item_than_its_packs_is_flagged(admin: Api) -> None:
    """A 3502 names the catalogue item whose ledger it moves: packs of another product
    moved under it (the ledger of one item goes down while the other's packs leave) are
    PRODUCT_MISMATCH (串换), as a sale billed so is; under their own item, nothing
    (found by a probe: a destroy under another item was taken silently)."""
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    other = "XJ01CAA040A001010109999"
    rows = [
        change("TX1", "105", 24, [u[0]], med_list_codg=other),  # destroyed under another item
        change("TX2", "102", 24, [u[1]]),  # sent away under its own
    ]
    out = await nhsa(p2, envelope("3502A", {"invinfoDetail": rows}))
    assert out["infcode"] == 0, out
    flags = [f for f in out["output"]["tracecode"]["flags"] if f["kind"] == "PRODUCT_MISMATCH"]
    assert [f["code"] for f in flags] == [u[0]], out
    inv = await admin.key_for("investigator")
    flag = await inv.ok("GET", f"/v1/flags/{flags[0]['flag_id']}")
    assert flag["detail"].startswith(f"destroy by P2: recorded as {other}, the pack is {MED}"), flag
    assert flag["refs"]["items"] == [other, MED]


async def test_a_part_pack_change_moves_no_pack(admin: Api, db: Any) -> None:
    """A 3502 of part of a pack (拆零, trdn_flag 1) changes the ledger only: 2 units
    destroyed do not destroy the pack's 24 (a later split sale was a DUPLICATE), 4 units
    transferred out do not ship it away. The row is kept with its codes as sent."""
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    inv = await admin.key_for("investigator")
    rows = [change("T600", "105", 2, [u[0]], trdn_flag="1"), change("T601", "102", 4, [u[1]], trdn_flag=1)]
    out = await nhsa(p2, envelope("3502A", {"invinfoDetail": rows}))
    assert out["infcode"] == 0, out
    assert out["output"]["result"]["retRslt"] == "1", out
    assert out["output"]["tracecode"]["records"] == 2
    assert out["output"]["tracecode"]["accepted"] == 0
    for code in u[:2]:
        verify = await p2.ok("GET", f"/v1/codes/{code}/verify")
        held = (verify["state"], verify["custodian"], verify["dispensable"], verify["units_left"])
        assert held == ("received", "P2", True, 24), verify  # ⚠ the part is not taken from the pack
    out = await nhsa(p2, envelope("3505", {"selinfo": sale("B600", [u[0]], 6, split="1")}))
    assert out["output"]["tracecode"]["flags"] == [], out
    assert await _units_left(p2, u[0]) == 18
    led = await _ledger(inv)
    assert led["by_kind"] == {"purchase": 96, "destroyed": 2, "transfer_out": 4, "sale": 6}
    kept = await db.fetchrow(
        "SELECT codes, row_data->'drugtracinfo' AS sent FROM nhsa_records WHERE fixmedins_bchno = 'T600'"
    )
    assert list(kept["codes"]) == [u[0]]
    assert json.loads(kept["sent"]) == [{"drug_trac_codg": u[0]}]


async def test_stock_count_of_a_sold_pack_is_flagged(admin: Api) -> None:
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    await nhsa(p2, envelope("3505", {"selinfo": sale("B300", [u[0]], 24)}))
    rows = [count("K300", 24, "2026-03-08", u[0]), count("K301", "x", "2026-03-08")]
    out = await nhsa(p2, envelope("3501A", {"invinfoDetail": rows}))
    assert [f["kind"] for f in out["output"]["tracecode"]["flags"]] == ["DUPLICATE"], out
    assert [e["fixmedins_bchno"] for e in out["output"]["invinfoErrDetail"]] == ["K301"]


async def test_a_count_uploaded_late_judges_its_packs_as_they_were_on_its_day(admin: Api) -> None:
    """A month's count comes after the month's sales and moves. Judged against its packs
    as they are now, it called a pack sold (by a 3505 or a settlement) after the count's
    day a resale, and one shipped away after it a diversion; in date order nothing was
    flagged (found by a probe). A pack sold before the count's day is still DUPLICATE."""
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    insurer = await admin.key_for("insurer")
    sold = sale("LS1", [u[0]], 24, sel_retn_time="2026-03-08 10:00:00")
    await nhsa(p2, envelope("3505", {"selinfo": sold}))
    shipped = change("LT1", "102", 24, [u[1]], inv_chg_time="2026-03-08 11:00:00")
    assert (await nhsa(p2, envelope("3502", {"invinfo": shipped})))["infcode"] == 0
    claim = pack_claim("LSETL", u[2], 0, org="P2")
    claim["at"] = "2026-03-08T04:00:00+00:00"  # 12:00 China time on the 8th
    assert (await insurer.ok("POST", "/v1/settlements", claim))["decision"] == "accepted"
    before = sale("LS0", [u[3]], 24, sel_retn_time="2026-03-06 10:00:00")
    await nhsa(p2, envelope("3505", {"selinfo": before}))
    counted = count("LK1", 96, "2026-03-07", drugtracinfo=[{"drug_trac_codg": code} for code in u])
    out = await nhsa(p2, envelope("3501", {"invinfo": counted}))
    assert out["infcode"] == 0, out
    flagged = [(f["kind"], f["code"]) for f in out["output"]["tracecode"]["flags"]]
    assert flagged == [("DUPLICATE", u[3])], out  # sold on the 6th, counted on the 7th


async def test_a_stock_counts_diversion_is_open_at_once(admin: Api) -> None:
    """A count of a pack D1 holds is DIVERSION, and open at once: nothing judges a count
    again (a ship to the counting pharmacy uploaded late does not clear it), so a pending
    one was promoted to open after the grace window whatever had arrived meanwhile, its
    history saying nothing explained it (found by a probe)."""
    w = await _world(admin)
    inv = await admin.key_for("investigator")
    m, d1, p2 = w["keys"]["M1"], w["keys"]["D1"], w["keys"]["P2"]
    code = cn20(w["unit"], 78)
    await m.events(
        event("commission", "M1", [code], 0, lot="L1", expiry="2028-12-31"),
        event("ship", "M1", [code], 1, to="D1"),
    )
    await d1.events(event("receive", "D1", [code], 2))
    out = await nhsa(p2, envelope("3501", {"invinfo": count("KDIV2", 1, "2026-03-03", code)}))
    [flag] = out["output"]["tracecode"]["flags"]
    [listed] = (await inv.ok("GET", f"/v1/flags?code={code}"))["items"]  # not pending: listed
    assert (listed["flag_id"], listed["kind"], listed["status"]) == (flag["flag_id"], "DIVERSION", "open")
    await d1.events(event("ship", "D1", [code], 10, to="P2"))
    await p2.events(event("receive", "P2", [code], 20))
    assert (await inv.ok("GET", f"/v1/flags/{flag['flag_id']}"))["status"] == "open"  # an investigator's call


async def test_bad_inventory_input(admin: Api, db: Any) -> None:
    w = await _world(admin)
    p2 = w["keys"]["P2"]
    no_supplier = {k: v for k, v in purchase("C500", 1).items() if k != "spler_name"}
    cases: list[tuple[Any, str]] = [
        (envelope("3503", {"purcinfo": no_supplier}), "input.purcinfo.spler_name"),
        (envelope("3503", {"purcinfo": purchase("C501", "ten")}), "input.purcinfo.purc_retn_cnt"),
        (
            envelope("3504", {"purcinfo": purchase_return("C502", 1, purc_invo_no="")}),
            "input.purcinfo.purc_invo_no",
        ),
        (
            envelope("3502", {"invinfo": change("T500", "101", 1, inv_chg_time="2026-13-01 00:00:00")}),
            "input.invinfo.inv_chg_time",
        ),
        (
            envelope("3502", {"invinfo": change("T501", "101", 1, inv_chg_time="0001-01-01 00:00:00")}),
            "input.invinfo.inv_chg_time",
        ),
        (
            envelope(
                "3503", {"purcinfo": purchase("C503", 1, purc_retn_stoin_time="9999-12-31 23:59:59-10:00")}
            ),
            "input.purcinfo.purc_retn_stoin_time",
        ),
        # an item that reads like another (a direction mark inside it; found by a probe:
        # the console showed a made-up item as the real one)
        (
            envelope("3503", {"purcinfo": {**purchase("C504", 5), "med_list_codg": "XJ01CAA\u202e040A"}}),
            "input.purcinfo.med_list_codg",
        ),
        (
            envelope("3503", {"purcinfo": {**purchase("C505", 5), "med_list_codg": "XJ01CAA\u200b040A"}}),
            "input.purcinfo.med_list_codg",
        ),
        (envelope("3501", {"invinfo": count("K500", 1, "2026/03/01")}), "input.invinfo.invdate"),
        (envelope("3501", {"invinfo": count("K504", 1, "2026-03-07 25:61:99")}), "input.invinfo.invdate"),
        (envelope("3501", {"invinfo": count("K501", 5, "0001-01-01")}), "input.invinfo.invdate"),
        (envelope("3501", {"invinfo": count("K502", 5, "1999-12-31")}), "input.invinfo.invdate"),
        (envelope("3501", {"invinfo": count("K503", 500, "2099-01-01")}), "input.invinfo.invdate"),
        (envelope("3507", {"data": deletion("B999", "9")}), "input.data.inv_data_type"),
        (envelope("3507", {"data": deletion("B999", "4")}), "input.data.fixmedins_bchno"),
        (
            envelope("3508", {"data": {"begndate": "2026-03-01", "enddate": "2026-03-31"}}),
            "input.data.medins_list_codg",
        ),
        (
            envelope("3511", {"data": {"begndate": "0001-01-01", "enddate": "2026-03-31"}}),
            "input.data.begndate",
        ),
        (
            envelope("3513", {"data": {"begndate": "2026-03-01", "enddate": "9999-12-31"}}),
            "input.data.enddate",
        ),
    ]
    for body, field in cases:
        out = await nhsa(p2, body)
        assert out["infcode"] == -1, (field, out)
        assert out["err_msg"].startswith(f"{field}:"), (field, out["err_msg"])
    assert await db.fetchval("SELECT count(*) FROM nhsa_records") == 1  # _world's purchase


@pytest.mark.parametrize(
    ("infno", "field", "length"),
    [
        ("3503", "spler_name", 200),  # required
        ("3503", "purc_retn_opter_name", 50),
        ("3503", "dynt_no", 50),  # optional
        ("3504", "medins_prod_purc_no", 50),
        ("3502", "inv_chg_opter_name", 50),
        ("3501", "memo", 500),  # the item block's
        ("3501", "manu_lotnum", 30),
    ],
)
async def test_text_longer_than_fields_md_allows_is_refused(
    admin: Api, db: Any, infno: str, field: str, length: int
) -> None:
    """A 3501–3504 text field longer than FIELDS.md's length, required or optional, is
    refused naming it (the row is kept as sent; found by a probe: spler_name of 201
    characters was taken); at the length it is taken."""
    w = await _world(admin)
    p2 = w["keys"]["P2"]

    out = await nhsa(p2, upload(infno, "L1", **{field: "药" * (length + 1)}))
    assert out["infcode"] == -1, out
    [wrapper] = upload(infno, "-")["input"]
    assert out["err_msg"] == f"input.{wrapper}.{field}: is longer than {length} characters", out
    assert await db.fetchval("SELECT count(*) FROM nhsa_records") == 1  # _world's purchase
    out = await nhsa(p2, upload(infno, "L2", **{field: "药" * length}))
    assert out["infcode"] == 0, out
    assert out["output"]["tracecode"]["records"] == 1


@pytest.mark.parametrize("infno", ["3501", "3502", "3503", "3504", "3505", "3506"])
async def test_rx_flag_is_one_of_its_codes(admin: Api, db: Any, infno: str) -> None:
    """rx_flag is 0, 1 or 2 (双跨), as a string or a number; ⚠ 是/否, as [A] sends it, is
    taken. Another value is refused naming it (found by a probe: "Z" was stored)."""
    w = await _world(admin)
    p2 = w["keys"]["P2"]
    [wrapper] = upload(infno, "-")["input"]
    for i, bad in enumerate(["Z", "3", "01", "是否"]):
        out = await nhsa(p2, upload(infno, f"X{i}", rx_flag=bad))
        assert out["infcode"] == -1, (bad, out)
        assert out["err_msg"].startswith(f"input.{wrapper}.rx_flag: must be 0, 1 or 2"), out["err_msg"]
    assert await db.fetchval("SELECT count(*) FROM nhsa_records") == 1  # _world's purchase
    for i, good in enumerate(["0", "1", 2, " 2 ", "是", "否"]):
        out = await nhsa(p2, upload(infno, f"G{i}", rx_flag=good))
        assert out["infcode"] == 0, (good, out)


@pytest.mark.parametrize("infno", ["3501", "3503", "3504", "3505", "3506"])
async def test_an_expiry_before_the_production_date_is_refused(admin: Api, db: Any, infno: str) -> None:
    """expy_end before manu_date, both given, is refused naming expy_end (found by a
    probe: a purchase made 2027 expiring 2026 was stored); the same day is taken, and so
    is either date alone where it is optional (3502 carries neither)."""
    w = await _world(admin)
    p2 = w["keys"]["P2"]
    [wrapper] = upload(infno, "-")["input"]
    out = await nhsa(p2, upload(infno, "E1", manu_date="2026-01-06", expy_end="2026-01-05 23:59:59"))
    assert out["infcode"] == -1, out
    assert out["err_msg"] == f"input.{wrapper}.expy_end: is before manu_date: 2026-01-05 < 2026-01-06", out
    assert await db.fetchval("SELECT count(*) FROM nhsa_records") == 1  # _world's purchase
    out = await nhsa(p2, upload(infno, "E2", manu_date="2026-01-05", expy_end="2026-01-05"))
    assert out["infcode"] == 0, out
    if infno != "3503":  # both required in a purchase; manu_date in a sale
        alone = {"expy_end": ""} if infno == "3505" else {"manu_date": "", "expy_end": "2020-01-01"}
        out = await nhsa(p2, upload(infno, "E3", **alone))
        assert out["infcode"] == 0, out


async def test_stock_count_dated_out_of_range_is_a_bad_row(admin: Api) -> None:
    """A count dated before 2000 or in the future is refused as other times are: it would
    fix the ledger's balance until then. In a batch the other rows are kept."""
    w = await _world(admin)
    p2 = w["keys"]["P2"]
    inv = await admin.key_for("investigator")
    rows = [count("K510", 90, "2026-03-07"), count("K511", 5, "0001-01-01"), count("K512", 500, "2099-01-01")]
    out = await nhsa(p2, envelope("3501A", {"invinfoDetail": rows}))
    assert out["infcode"] == 0, out
    errs = {e["fixmedins_bchno"]: e["msgRslt"] for e in out["output"]["invinfoErrDetail"]}
    assert errs["K511"].startswith("input.invinfoDetail[1].invdate: is before the year"), errs
    assert errs["K512"].startswith("input.invinfoDetail[2].invdate: is more than"), errs
    assert set(errs) == {"K511", "K512"}
    assert (await _ledger(inv))["balance"] == 90


async def test_a_stock_count_is_the_opening_stock_of_its_day(admin: Api) -> None:
    """A 3501 counts the stock at the start of its invdate: a sale at 00:00:00 of that
    day comes after the count, as every later sale does."""
    w = await _world(admin)
    p2 = w["keys"]["P2"]
    inv = await admin.key_for("investigator")
    held = (await _ledger(inv)).get("balance", 0)
    await nhsa(p2, envelope("3501", {"invinfo": count("K650", 10, "2026-03-10")}))
    out = await nhsa(
        p2, envelope("3505", {"selinfo": sale("B650", [], 10, sel_retn_time="2026-03-10 00:00:00")})
    )
    assert out["infcode"] == 0, out
    assert out["output"]["tracecode"]["flags"] == []
    ledger = await _ledger(inv)
    assert (ledger["balance"], ledger["counted"], ledger["units_out"]) == (0, 10, 10), ledger
    assert ledger["count_difference"] == 10 - held  # against what was held before the day
    out = await nhsa(
        p2, envelope("3505", {"selinfo": sale("B651", [], 5, sel_retn_time="2026-03-10 00:00:00")})
    )
    assert [f["kind"] for f in out["output"]["tracecode"]["flags"]] == ["STOCK_IMBALANCE"], out
    assert (await _ledger(inv))["balance"] == -5


async def test_queries(admin: Api) -> None:
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    await nhsa(p2, envelope("3505", {"selinfo": sale("B600", [u[0], u[1]], 48, setl_id="S600")}))
    await nhsa(p2, envelope("3501", {"invinfo": count("K600", 0, "2026-03-09")}))
    span = {"fixmedins_code": "P45010300001", "begndate": "2026-03-01", "enddate": "2026-03-31"}
    out = await nhsa(p2, envelope("3508", {"data": {**span, "medins_list_codg": "YP0001"}}))
    assert out["infcode"] == 0, out
    [stock] = out["output"]["data"]
    assert stock["invCnt"] == 0
    assert stock["ledgerBalance"] == 0  # a number, as invCnt (it was the string "0")
    assert stock["fixmedinsBchno"] == "K600"
    assert stock["medListCodg"] == MED
    out = await nhsa(p2, envelope("3511", {"data": span}))
    [sold] = out["output"]["data"]
    assert sold["fixmedinsBchno"] == "B600"
    assert sold["selRetnCnt"] == 48
    assert "psnNo" not in sold
    out = await nhsa(p2, envelope("3513", {"data": {**span, "psn_cert_type": "01", "drug_trac_codg": u[1]}}))
    [trace] = out["output"]["data"]
    assert trace["drugTracCodg"] == u[1]
    assert trace["mdtrtId"] == "MD2026030500001"
    assert trace["setlId"] == "S600"
    # a code's field is read as every route reads a code: ASCII whitespace around it is
    # dropped, U+3000 is not (found by a probe: it was, here and in 3505), and then it is
    # no code: refused, not answered with no rows (test_a_trace_code_filter_that_is_no_code…)
    query = {**span, "psn_cert_type": "01", "drug_trac_codg": f" {u[1]}\t"}
    assert len((await nhsa(p2, envelope("3513", {"data": query})))["output"]["data"]) == 1
    for spelled in (u[1] + "\u3000", "\xa0" + u[1]):
        out = await nhsa(p2, envelope("3513", {"data": {**query, "drug_trac_codg": spelled}}))
        assert out["infcode"] == -1, (spelled, out)
        assert out["err_msg"].startswith("input.data.drug_trac_codg:"), out
    outside = {**span, "begndate": "2026-04-01", "enddate": "2026-04-30"}
    assert (await nhsa(p2, envelope("3511", {"data": outside})))["output"]["data"] == []


@pytest.mark.parametrize("infno", ["3511", "3513"])
@pytest.mark.parametrize(
    "spelled",
    ["abc", "8123456000000000040\uff12", "\u300081234560000000000011", "81234560000000000011\u3000", "0"],
)
async def test_a_trace_code_filter_that_is_no_code_is_minus_one_naming_it(
    admin: Api, infno: str, spelled: str
) -> None:
    """Found by a probe: 3513 answered a drug_trac_codg that is no code ("abc", a
    full-width digit, U+3000 around it) with success and no rows, as if the pack had
    never been sold here; /v1/flags?code=abc is a 400. It is -1 naming the field now."""
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    assert (await nhsa(p2, envelope("3505", {"selinfo": sale("B610", [u[0]], 24)})))["infcode"] == 0
    span = {"begndate": "2026-03-01", "enddate": "2026-03-31"}
    found = await nhsa(p2, envelope(infno, {"data": {**span, "drug_trac_codg": u[0]}}))
    assert (found["infcode"], len(found["output"]["data"])) == (0, 1), found
    out = await nhsa(p2, envelope(infno, {"data": {**span, "drug_trac_codg": spelled}}))
    assert out["infcode"] == -1, out
    assert out["err_msg"].startswith("input.data.drug_trac_codg: not a CN20 code"), out


async def test_queries_filter_every_record_and_page_through_them(admin: Api) -> None:
    """A busy pharmacy's queries: filters find records past the first thousand (they were
    applied to the first 1,000 only), and every record is reached page by page, each
    once, with the count of all of them."""
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    bought = purchase("Q-BUY", 2000, purc_retn_stoin_time="2026-03-01 09:00:00")
    assert (await nhsa(p2, envelope("3503", {"purcinfo": bought})))["infcode"] == 0
    busy = [sale(f"Q{i:04d}", [], 1, sel_retn_time="2026-03-05 10:00:00") for i in range(1001)]
    out = await nhsa(p2, envelope("3505A", {"selinfoDetail": busy}))
    assert out["infcode"] == 0, out
    assert out["output"]["tracecode"]["records"] == 1001
    late = [
        sale(f"QL{i}", [u[i]], 24, sel_retn_time="2026-03-28 10:00:00", fixmedins_hilist_id="YP0009",
             mdtrt_sn=f"MDLATE{i}")
        for i in (0, 1)
    ]  # fmt: skip
    assert (await nhsa(p2, envelope("3505A", {"selinfoDetail": late})))["infcode"] == 0
    span = {"begndate": "2026-03-01", "enddate": "2026-03-31"}

    async def query(infno: str, **data: Any) -> dict[str, Any]:
        out = await nhsa(p2, envelope(infno, {"data": {**span, **data}}))
        assert out["infcode"] == 0, out
        return dict(out["output"])

    first = await query("3511")
    assert (first["pageNum"], first["pageSize"], first["recordCounts"], first["pages"]) == (1, 1000, 1003, 2)
    second = await query("3511", page_num="2")
    seen = [r["fixmedinsBchno"] for r in first["data"] + second["data"]]
    assert len(seen) == len(set(seen)) == 1003
    assert seen[-2:] == ["QL0", "QL1"]  # oldest first
    small = await query("3511", page_num=2, page_size=2)
    assert [r["fixmedinsBchno"] for r in small["data"]] == seen[2:4]
    assert small["pages"] == 502
    beyond = await query("3511", page_num=600, page_size=2)
    assert (beyond["data"], beyond["recordCounts"]) == ([], 1003)

    by_item = await query("3511", medins_list_codg="YP0009")
    assert [r["fixmedinsBchno"] for r in by_item["data"]] == ["QL0", "QL1"]
    by_visit = await query("3511", mdtrt_id="MDLATE1")
    assert [r["fixmedinsBchno"] for r in by_visit["data"]] == ["QL1"]
    traced = await query("3513", psn_cert_type="01")
    assert [r["drugTracCodg"] for r in traced["data"]] == [u[0], u[1]]
    assert traced["recordCounts"] == 2  # the sales, each with its codes
    traced = await query("3513", psn_cert_type="01", mdtrt_id="MDLATE0")
    assert [r["drugTracCodg"] for r in traced["data"]] == [u[0]]

    for bad in ("0", "1001", "x", 1.5, True):
        out = await nhsa(p2, envelope("3511", {"data": {**span, "page_size": bad}}))
        assert out["infcode"] == -1, (bad, out)
        assert out["err_msg"].startswith("input.data.page_size:"), out
    out = await nhsa(p2, envelope("3511", {"data": {**span, "page_num": -1}}))
    assert out["err_msg"].startswith("input.data.page_num:"), out


async def test_queries_answer_fields_as_read_not_as_sent(admin: Api) -> None:
    """Found by a probe: query rows echoed a row's values as sent, so one sale's time was
    "2026-03-05T16:30:00Z" in 3511 and "2026-03-06 00:30:00" in 3513, and a price "12.50"
    from one system and 12.5 from another. Times are China time, dates yyyy-MM-dd, and
    quantities and prices JSON numbers (their digits exactly), whoever sent them."""
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    rows = [
        sale("F1", [u[0]], "24.0000", finl_trns_pric="12.50", sel_retn_time="2026-03-05T16:30:00Z",
             manu_date="2026-01-05 00:00:00"),
        sale("F2", [u[1]], 24, finl_trns_pric=12.5, sel_retn_time="2026-03-06 00:30:00"),
        sale("F3", [u[2]], 24, finl_trns_pric="9999999999.999999", sel_retn_time="2026-03-06 08:00:00+08:00"),
        sale("F4", [], 1, finl_trns_pric=""),
    ]  # fmt: skip
    assert (await nhsa(p2, envelope("3505A", {"selinfoDetail": rows})))["infcode"] == 0
    counted = count("K700", "10.00", "2026-03-07")
    assert (await nhsa(p2, envelope("3501", {"invinfo": counted})))["infcode"] == 0
    span = {"begndate": "2026-03-01", "enddate": "2026-03-31"}

    resp = await p2.post("/v1/nhsa", envelope("3511", {"data": span}))
    sold = {r["fixmedinsBchno"]: r for r in resp.json()["output"]["data"]}
    traced = {
        r["fixmedinsBchno"]: r for r in (await nhsa(p2, envelope("3513", {"data": span})))["output"]["data"]
    }
    for bchno in ("F1", "F2", "F3"):
        assert sold[bchno]["selRetnTime"] == traced[bchno]["selRetnTime"], (sold[bchno], traced[bchno])
    assert sold["F1"]["selRetnTime"] == sold["F2"]["selRetnTime"] == "2026-03-06 00:30:00"
    assert sold["F3"]["selRetnTime"] == "2026-03-06 08:00:00"
    assert sold["F1"]["finlTrnsPric"] == sold["F2"]["finlTrnsPric"] == 12.5
    assert '"finlTrnsPric":9999999999.999999' in resp.text  # a number, and not a float's digits
    assert sold["F4"]["finlTrnsPric"] == ""  # absent, as sent
    assert sold["F1"]["selRetnCnt"] == 24
    assert sold["F1"]["manuDate"] == "2026-01-05"
    out = await nhsa(p2, envelope("3508", {"data": {**span, "fixmedins_bchno": "K700"}}))
    [stock] = out["output"]["data"]
    assert (stock["invCnt"], stock["invdate"], stock["expyEnd"]) == (10, "2026-03-07", "2028-12-31")


async def test_queries_list_sale_returns_beside_the_sales(admin: Api) -> None:
    """Found by a probe: 3511 read only 3505 records, so a 3506 return never appeared,
    and 3513 listed a returned pack's code as sold with nothing saying it came back.
    Both read sales and returns now, in time order, each row naming its interface
    (``infno``), a return's count as uploaded."""
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    for bchno, pack, hour in (("SR1", u[0], "10"), ("SR3", u[1], "11")):
        row = sale(bchno, [pack], 24, sel_retn_time=f"2026-03-05 {hour}:00:00")
        assert (await nhsa(p2, envelope("3505", {"selinfo": row})))["infcode"] == 0
    back = sale_return("SR2", [u[0]], 24, medins_prod_sel_no="SR1", sel_retn_time="2026-03-06 09:00:00")
    assert (await nhsa(p2, envelope("3506", {"selinfo": back})))["infcode"] == 0
    assert await _units_left(p2, u[0]) == 24  # back on the shelf
    span = {"begndate": "2026-03-01", "enddate": "2026-03-31"}

    async def query(infno: str, **data: Any) -> dict[str, Any]:
        out = await nhsa(p2, envelope(infno, {"data": {**span, **data}}))
        assert out["infcode"] == 0, out
        return dict(out["output"])

    sold = await query("3511")
    assert [r["fixmedinsBchno"] for r in sold["data"]] == ["SR1", "SR3", "SR2"]
    assert [r["infno"] for r in sold["data"]] == ["3505", "3505", "3506"]
    assert sold["recordCounts"] == 3
    returned = sold["data"][2]
    assert (returned["selRetnCnt"], returned["selRetnTime"]) == (24, "2026-03-06 09:00:00")
    assert returned["medinsProdSelNo"] == "SR1"  # the sale it returns, as the pharmacy said
    traced = await query("3513")
    assert [(r["drugTracCodg"], r["fixmedinsBchno"], r["infno"]) for r in traced["data"]] == [
        (u[0], "SR1", "3505"),
        (u[1], "SR3", "3505"),
        (u[0], "SR2", "3506"),
    ]
    one = await query("3513", drug_trac_codg=u[0])
    assert [(r["infno"], r["selRetnTime"]) for r in one["data"]] == [
        ("3505", "2026-03-05 10:00:00"),
        ("3506", "2026-03-06 09:00:00"),
    ]
    assert [r["fixmedinsBchno"] for r in (await query("3511", fixmedins_bchno="SR2"))["data"]] == ["SR2"]
    # a deleted return is no longer listed (the pack is sold again)
    out = await nhsa(p2, envelope("3507", {"data": deletion("SR2", "4")}))
    assert out["output"]["tracecode"]["deleted"] == ["SR2"], out
    assert [r["fixmedinsBchno"] for r in (await query("3511"))["data"]] == ["SR1", "SR3"]
    assert [r["infno"] for r in (await query("3513", drug_trac_codg=u[0]))["data"]] == ["3505"]


async def test_figures_as_of_each_record_follow_the_ledger_rule(admin: Api, db: Any) -> None:
    """store.ledger.below_zero (running sums in one pass) against the rule written plainly:
    the last live count up to the record, then the live moves after that count up to the
    record, both in ledger order (time, interface, serial: at one instant a 3501 count
    comes first, the opening stock). Random ledgers with shared times, several counts and
    deleted records."""
    import random
    from datetime import UTC, datetime, timedelta

    from service.core.ledger import COUNT, IN_KINDS, OUT_KINDS
    from service.store import ledger as ledger_store

    await admin.ok(
        "POST", "/v1/orgs", {"id": "LX", "name": "LX", "kind": "pharmacy", "region": "450103"}, 201
    )
    rng = random.Random(7)
    base = datetime(2026, 3, 1, tzinfo=UTC)
    records = []
    for i in range(300):
        kind = rng.choice([COUNT, COUNT, *IN_KINDS, *OUT_KINDS, "sale", "sale", "purchase"])
        units = rng.randint(0, 50)
        delta = 0 if kind == COUNT else units if kind in IN_KINDS else -units
        records.append(
            {
                "interface": rng.choice(["3501", "3502", "3505"]),
                "bchno": f"B{i:04d}",
                "item": rng.choice(["I1", "I2"]),
                "kind": kind,
                "units": units,
                "delta": delta,
                "at": base + timedelta(hours=rng.randint(0, 40)),  # many share a time
                "deleted": rng.random() < 0.1,
            }
        )
    await db.executemany(
        """INSERT INTO nhsa_records (org, interface, fixmedins_bchno, med_list_codg, kind, units, delta, at,
                                     msgid, upload_id, row_data, deleted_at)
           VALUES ('LX', $1, $2, $3, $4, $5, $6, $7, 'm', gen_random_uuid(), '{}',
                   CASE WHEN $8 THEN now() END)""",
        [
            (r["interface"], r["bchno"], r["item"], r["kind"], r["units"], r["delta"], r["at"], r["deleted"])
            for r in records
        ],
    )
    live = [r for r in records if not r["deleted"]]
    got = await ledger_store.below_zero(db, "LX", [(r["interface"], r["bchno"]) for r in live])
    below = 0

    def order(r: dict[str, Any]) -> tuple[Any, ...]:
        return (r["at"], r["interface"], r["bchno"])

    for n in live:
        same = [r for r in live if r["item"] == n["item"]]
        # the last count before it in ledger order; the moves after that count, up to it
        counts = [r for r in same if r["kind"] == COUNT and order(r) <= order(n)]
        count = max(counts, key=order) if counts else None
        moves = [r for r in same if (count is None or order(r) > order(count)) and order(r) <= order(n)]
        balance = (count["units"] if count else 0) + sum(r["delta"] for r in moves)
        f = got.get((n["interface"], n["bchno"]))
        if balance >= 0:
            assert f is None, n  # only the records below zero come back
            continue
        below += 1
        assert f is not None, n
        assert f.balance == balance, n
        assert f.units_in == sum(r["units"] for r in moves if r["kind"] in IN_KINDS), n
        assert f.units_out == sum(r["units"] for r in moves if r["kind"] in OUT_KINDS), n
        assert (f.counted, f.counted_at) == ((count["units"], count["at"]) if count else (None, None)), n
    assert 30 < below < len(live) - 30  # both kinds of record were there to check


def _plain_ledger(live: list[dict[str, Any]], item: str, upto: Any = None) -> tuple[Any, ...]:
    """The ledger rule written plainly, from the item's live records: the last count up to
    the record (all records without ``upto``), then the moves after that count up to the
    record, both in ledger order (time, interface, serial: a count comes first at its
    instant). (balance, units in, units out, counted, counted at)."""
    from service.core.ledger import COUNT, IN_KINDS, OUT_KINDS

    def order(r: dict[str, Any]) -> tuple[Any, ...]:
        return (r["at"], r["interface"], r["fixmedins_bchno"])

    same = [r for r in live if r["med_list_codg"] == item and (upto is None or order(r) <= order(upto))]
    counts = [r for r in same if r["kind"] == COUNT]
    count = max(counts, key=order) if counts else None
    moves = [r for r in same if count is None or order(r) > order(count)]
    return (
        (count["units"] if count else 0) + sum(r["delta"] for r in moves),
        sum(r["units"] for r in moves if r["kind"] in IN_KINDS),
        sum(r["units"] for r in moves if r["kind"] in OUT_KINDS),
        count["units"] if count else None,
        count["at"] if count else None,
    )


async def test_item_ledgers_kept_as_uploads_go_follow_the_records(admin: Api, db: Any) -> None:
    """Each item's ledger is kept as uploads come (moved on from where it stood when the
    new records follow it, computed from all its records otherwise): after every upload
    of a random month (purchases, returns, sales, count gains and losses, stock counts,
    deletions, retries, records in and out of time order, two items), the kept ledger is
    the one the rule gives from the live records, STOCK_IMBALANCE is raised for exactly
    the new moves out that leave their item below zero as of their own time, and every
    move out below zero as of its own time has one."""
    import random

    from service.core.ledger import OUT_KINDS

    w = await _world(admin)
    p2 = w["keys"]["P2"]
    rng = random.Random(11)
    sent: list[tuple[str, str]] = []  # (interface, bchno) uploaded
    uploads: list[dict[str, Any]] = []
    day, hour = 2, 9
    paths = {"fast": 0, "slow": 0}
    for n in range(40):
        if rng.random() < 0.25:
            day, hour = rng.randint(2, day), rng.randint(8, 20)  # back in time
        else:
            hour += 1
            day, hour = (day + 1, 8) if hour > 20 else (day, hour)
        when = f"2026-03-{day:02d} {hour:02d}:00:00"
        codg = rng.choice([MED, OTHER])
        choice = rng.random()
        if uploads and choice < 0.08:
            body = rng.choice(uploads)  # a retry
        elif sent and choice < 0.16:
            interface, bchno = rng.choice(sent)
            data_type = {"3501": "1", "3502": "2", "3503": "3", "3504": "3", "3505": "4", "3506": "4"}
            body = envelope("3507", {"data": deletion(bchno, data_type[interface])})
        else:
            rows = []
            kind = rng.choice(["3503", "3504", "3505", "3505", "3505", "3506", "3502", "3501"])
            for j in range(rng.randint(1, 3)):
                bchno = f"Q{n:02d}{j}"
                units = rng.randint(1, 60)
                if kind == "3503":
                    row = purchase(bchno, units, purc_retn_stoin_time=when)
                elif kind == "3504":
                    row = purchase_return(bchno, units, purc_retn_stoin_time=when)
                elif kind == "3505":
                    row = sale(bchno, [], units, sel_retn_time=when)
                elif kind == "3506":
                    row = sale_return(bchno, [], units, sel_retn_time=when)
                elif kind == "3502":
                    row = change(bchno, rng.choice(["103", "104"]), units, inv_chg_time=when)
                else:
                    row = count(bchno, rng.randint(0, 200), f"2026-03-{day:02d}")
                rows.append({**row, "med_list_codg": codg})
                sent.append((kind, bchno))
            wrapper = {"3503": "purcinfo", "3504": "purcinfo", "3505": "selinfo", "3506": "selinfo"}.get(
                kind, "invinfo"
            )
            body = envelope(f"{kind}A", {f"{wrapper}Detail": rows})
            uploads.append(body)
        before = {r["med_list_codg"]: r["last_at"] for r in await db.fetch("SELECT * FROM nhsa_items")}
        stored = {
            (r["interface"], r["fixmedins_bchno"]) for r in await db.fetch("SELECT * FROM nhsa_records")
        }
        out = await nhsa(p2, copy.deepcopy(body))
        assert out["infcode"] == 0, out

        live = [
            dict(r)
            for r in await db.fetch("SELECT * FROM nhsa_records WHERE org = 'P2' AND deleted_at IS NULL")
        ]
        for kept in await db.fetch("SELECT * FROM nhsa_items WHERE org = 'P2'"):
            assert not kept["stale"]
            got = (kept["balance"], kept["units_in"], kept["units_out"], kept["counted"], kept["counted_at"])
            assert got == _plain_ledger(live, kept["med_list_codg"]), (n, body)
            mine = [r["at"] for r in live if r["med_list_codg"] == kept["med_list_codg"]]
            assert kept["last_at"] == (max(mine) if mine else None)

        flagged = {
            r["source_id"]
            for r in await db.fetch(
                "SELECT source_id FROM flags WHERE kind = 'STOCK_IMBALANCE' AND org = 'P2'"
            )
        }
        new = [r for r in live if (r["interface"], r["fixmedins_bchno"]) not in stored]
        for r in new:
            if r["kind"] in OUT_KINDS:
                below = _plain_ledger(live, r["med_list_codg"], upto=r)[0] < 0
                assert (f"P2/{r['interface']}/{r['fixmedins_bchno']}" in flagged) == below, (n, r)
        for r in live:  # a move out left below zero by a record sent late or deleted is flagged too
            if r["kind"] in OUT_KINDS and _plain_ledger(live, r["med_list_codg"], upto=r)[0] < 0:
                assert f"P2/{r['interface']}/{r['fixmedins_bchno']}" in flagged, (n, r)
        if new:
            last = before.get(new[0]["med_list_codg"])
            follows = last is not None and all(r["at"] > last and r["kind"] != "count" for r in new)
            paths["fast" if follows else "slow"] += 1
    assert min(paths.values()) > 3, paths  # both ways of keeping a ledger were taken


@pytest.mark.parametrize("infno", ["3505", "3501"])
async def test_empty_string_drugtracinfo_is_absent(admin: Api, infno: str) -> None:
    """``""`` is read as an absent field, drugtracinfo too: a record without codes."""
    w = await _world(admin)
    body = (
        envelope("3505", {"selinfo": sale("B700", [], 24, drugtracinfo="")})
        if infno == "3505"
        else envelope("3501", {"invinfo": count("K700", 24, "2026-03-07", drugtracinfo="")})
    )
    out = await nhsa(w["keys"]["P2"], body)
    assert out["infcode"] == 0, out["err_msg"]
    assert out["output"]["result"]["retRslt"] == "1", out
    assert out["output"]["tracecode"]["records"] == 1


async def test_deletion_batch_with_no_known_record_is_minus_one(admin: Api) -> None:
    """A batch with no good row is -1, a 3507A whose every row names an unknown record
    too (a bad row and an unknown one: no good row either)."""
    w = await _world(admin)
    p2 = w["keys"]["P2"]
    rows = [deletion("NOPE1", "4"), deletion("NOPE2", "3")]
    out = await nhsa(p2, envelope("3507A", {"goodDetail": rows}))
    assert out["infcode"] == -1, out
    assert out["err_msg"].startswith("input.goodDetail[0].fixmedins_bchno:"), out["err_msg"]
    assert [e["fixmedins_bchno"] for e in out["output"]["goodErrDetail"]] == ["NOPE1", "NOPE2"]
    out = await nhsa(p2, envelope("3507A", {"goodDetail": [deletion("NOPE3", "9"), deletion("NOPE4", "4")]}))
    assert out["infcode"] == -1, out
    assert out["err_msg"].startswith("input.goodDetail[0].inv_data_type:"), out["err_msg"]
    # one known row: the batch is taken, the unknown one listed
    out = await nhsa(p2, envelope("3507A", {"goodDetail": [deletion("C000", "3"), deletion("NOPE5", "4")]}))
    assert out["infcode"] == 0, out
    assert out["output"]["tracecode"]["deleted"] == ["C000"]
    assert [e["fixmedins_bchno"] for e in out["output"]["goodErrDetail"]] == ["NOPE5"]


async def test_a_bad_row_sharing_its_serial_with_a_stored_one_is_named_by_its_path(admin: Api) -> None:
    """A 3503A whose bad row and good row share a fixmedins_bchno: the serial is listed
    although a record of it was stored, and msgRslt names the row that failed by its
    index, which the serial cannot."""
    w = await _world(admin)
    p2 = w["keys"]["P2"]
    inv = await admin.key_for("investigator")
    out = await nhsa(p2, envelope("3503A", {"purcinfoDetail": [purchase("C800", "x"), purchase("C800", 10)]}))
    assert out["infcode"] == 0, out
    assert out["output"]["tracecode"]["records"] == 1
    [err] = out["output"]["purcinfoErrDetail"]
    assert err["fixmedins_bchno"] == "C800"
    assert err["msgRslt"].startswith("input.purcinfoDetail[0].purc_retn_cnt:"), err
    assert (await _ledger(inv))["by_kind"] == {"purchase": 96 + 10}


async def test_a_count_or_a_ledger_only_change_with_a_code_that_is_no_code_is_a_bad_row(admin: Api) -> None:
    """A stock count's codes, and a 103/104 change's, that are not codes make the row a bad
    row, as a sale's or a 3502 move's do (``sales.read_codes``): named, nothing of it
    stored, to be sent again corrected under the same serial. They were stored without
    the code and answered retRslt "0", which a system reads as "not stored" (a probe)."""
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    rows = [count("K710", 5, "2026-03-07", "not-a-code"), count("K711", 24, "2026-03-07", u[0])]
    out = await nhsa(p2, envelope("3501A", {"invinfoDetail": rows}))
    assert out["infcode"] == 0, out
    assert out["output"]["tracecode"]["rejected"] == []
    [error] = out["output"]["invinfoErrDetail"]
    assert error["fixmedins_bchno"] == "K710"
    assert error["msgRslt"].startswith("input.invinfoDetail[0].drugtracinfo.drug_trac_codg: not a CN20 code")
    assert out["output"]["tracecode"]["records"] == 1
    out = await nhsa(p2, envelope("3501A", {"invinfoDetail": [count("K710", 5, "2026-03-07", u[1])]}))
    assert (out["infcode"], out["output"]["tracecode"]["records"]) == (0, 1), out  # corrected: taken
    out = await nhsa(p2, envelope("3502", {"invinfo": change("T710", "103", 1, ["bad-code", u[1]])}))
    assert out["infcode"] == -1, out
    assert out["err_msg"].startswith("input.invinfo.drugtracinfo[0].drug_trac_codg: not a CN20 code"), out
    assert out["output"]["result"]["retRslt"] == "0"
    out = await nhsa(p2, envelope("3502", {"invinfo": change("T710", "103", 1, [u[1]])}))
    assert (out["infcode"], out["output"]["tracecode"]["records"]) == (0, 1), out


async def test_a_record_sent_late_that_backs_a_flagged_move_clears_its_imbalance(admin: Api) -> None:
    """A move out flagged STOCK_IMBALANCE because the records that back it had not come
    yet (a purchase uploaded after the month's sales, an earlier sale deleted) no longer
    leaves its ledger below zero: the flag is withdrawn (auto_cleared by system, a line
    of its history), and raised again when what backed it goes. Before, it stayed open,
    and investigators chased a pharmacy whose records added up (found in the ledger's
    known limits)."""
    w = await _world(admin)  # P2 bought 96 units of MED on 03-01
    p2 = w["keys"]["P2"]
    inv = await admin.key_for("investigator")

    async def imbalance(bchno: str) -> dict[str, Any]:
        page = await inv.ok("GET", "/v1/flags?kind=STOCK_IMBALANCE")
        (flag,) = [f for f in page["items"] if f["refs"]["fixmedins_bchno"] == bchno]
        return await inv.ok("GET", f"/v1/flags/{flag['flag_id']}")

    over = sale("OVER", [], 120, sel_retn_time="2026-03-05 10:00:00")
    sold = await nhsa(p2, envelope("3505", {"selinfo": over}))
    assert [f["kind"] for f in sold["output"]["tracecode"]["flags"]] == ["STOCK_IMBALANCE"], sold
    assert (await imbalance("OVER"))["status"] == "open"
    # the purchase that backs it, dated before the sale and uploaded after it
    late = purchase("LATEBUY", 24, purc_retn_stoin_time="2026-03-04 09:00:00")
    assert (await nhsa(p2, envelope("3503", {"purcinfo": late})))["output"]["tracecode"]["flags"] == []
    flag = await imbalance("OVER")
    assert flag["status"] == "auto_cleared", flag
    assert [(h["status"], h["by_key"]) for h in flag["history"]] == [("auto_cleared", "system")]
    assert "LATEBUY" in flag["history"][-1]["note"], flag["history"]
    # deleting that purchase leaves the sale unbacked again: suspected again
    await nhsa(p2, envelope("3507", {"data": deletion("LATEBUY", "3")}))
    assert (await imbalance("OVER"))["status"] == "open"

    # another item: a later sale flagged because of an earlier one, which is then deleted
    await nhsa(p2, envelope("3503", {"purcinfo": {**purchase("OBUY", 30), "med_list_codg": OTHER}}))
    for bchno, hour in (("FIRST", "10"), ("SECOND", "11")):
        row = sale(bchno, [], 20, sel_retn_time=f"2026-03-05 {hour}:00:00", med_list_codg=OTHER)
        await nhsa(p2, envelope("3505", {"selinfo": row}))
    assert (await imbalance("SECOND"))["status"] == "open"
    await nhsa(p2, envelope("3507", {"data": deletion("FIRST", "4")}))
    assert (await imbalance("SECOND"))["status"] == "auto_cleared"
    assert (await _ledger(inv, codg=OTHER))["balance"] == 10

    # a third: a sale of stock the ledger did not know of, which a stock count then shows
    third = "XA02BCA000A001010100002"
    row = sale("UNCOUNTED", [], 20, sel_retn_time="2026-03-05 10:00:00", med_list_codg=third)
    await nhsa(p2, envelope("3505", {"selinfo": row}))
    assert (await imbalance("UNCOUNTED"))["status"] == "open"
    await nhsa(p2, envelope("3501", {"invinfo": {**count("CNT", 50, "2026-03-05"), "med_list_codg": third}}))
    assert (await imbalance("UNCOUNTED"))["status"] == "auto_cleared"
    assert (await _ledger(inv, codg=third))["balance"] == 30


async def test_queries_by_the_person_find_their_sales_by_the_keyed_hash(admin: Api, db: Any) -> None:
    """3511 and 3513 take the person's filters (FIELDS.md). They were read past, so a
    query for one patient's sales answered every patient's (found by a probe). A sale's
    ``psn_no`` is kept as the keyed hash settlements keep (never the number), and a
    query by ``psn_no`` finds that person's records, its check character X in either
    case; an ID number or name alone cannot filter (neither is kept): -1 naming it."""
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    span = {"begndate": "2026-03-01", "enddate": "2026-03-31"}
    one, other = "45010319900101123x", "450103198002022345"
    await nhsa(p2, envelope("3505", {"selinfo": sale("PA1", [u[0]], 24, psn_no=one)}))  # one statement
    rows = [sale("PB1", [], 2, psn_no=other), sale("PA2", [], 3, psn_no=one.upper())]
    rows.append(sale("PN", [], 1, psn_no=""))
    assert (await nhsa(p2, envelope("3505A", {"selinfoDetail": rows})))["infcode"] == 0  # by COPY

    async def found(infno: str, **person: str) -> list[str]:
        out = await nhsa(p2, envelope(infno, {"data": {**span, "psn_cert_type": "01", **person}}))
        assert out["infcode"] == 0, out
        return [r.get("drugTracCodg") or r["fixmedinsBchno"] for r in out["output"]["data"]]

    assert await found("3511", psn_no=one.upper()) == ["PA1", "PA2"]
    assert await found("3511", psn_no=other, certno="450103198002022345", psn_name="李四") == ["PB1"]
    assert await found("3513", psn_no=one) == [u[0]]
    assert await found("3511", psn_no="") == ["PA1", "PA2", "PB1", "PN"]  # "" is no filter
    assert await found("3511", psn_no="450103000000000000") == []
    refused = await nhsa(p2, envelope("3513", {"data": {**span, "psn_cert_type": "01", "certno": other}}))
    assert refused["infcode"] == -1, refused
    assert refused["err_msg"].startswith("input.data.certno: cannot filter"), refused
    kept = await db.fetch("SELECT fixmedins_bchno, psn_hash, row_data::text AS row FROM nhsa_records")
    assert sorted(r["fixmedins_bchno"] for r in kept if r["psn_hash"] is not None) == ["PA1", "PA2", "PB1"]
    assert not any(one[:12] in r["row"] or other[:12] in r["row"] for r in kept)


async def test_a_standing_imbalance_shows_the_ledger_as_it_is_now(
    admin: Api, db: Any, server_urls: tuple[str, str]
) -> None:
    """Found by a probe: sales S1, S2 and S3 of 24 units each with no stock, then a late
    purchase of 24 dated before them: S1's flag was withdrawn (right), but S2's stayed
    open saying "its ledger then holds -48", 0 units in, while the ledger gives -24 there.
    A standing flag judged again with other figures takes them (its detail and refs, the
    ledger as it is now), with a line of its history by the system naming the upload's
    msgid and what it said before; its status stays, and the feed, which publishes
    changes of status, has nothing new for it. A flag an investigator took up stays as
    they left it, as with the automatic clears."""
    w = await _world(admin)
    p2 = w["keys"]["P2"]
    inv = await admin.key_for("investigator")
    for bchno, hour in (("S1", "10"), ("S2", "11"), ("S3", "12")):
        row = sale(bchno, [], 24, sel_retn_time=f"2026-03-07 {hour}:00:00", med_list_codg=OTHER)
        [raised] = (await nhsa(p2, envelope("3505", {"selinfo": row})))["output"]["tracecode"]["flags"]
        assert raised["kind"] == "STOCK_IMBALANCE", raised

    async def imbalance(bchno: str) -> dict[str, Any]:
        page = await inv.ok("GET", "/v1/flags?kind=STOCK_IMBALANCE&org=P2")
        (flag,) = [f for f in page["items"] if f["refs"]["fixmedins_bchno"] == bchno]
        return await inv.ok("GET", f"/v1/flags/{flag['flag_id']}")

    assert (await imbalance("S2"))["refs"]["balance_after"] == -48
    taken_up = await imbalance("S3")
    await inv.ok(
        "PATCH", f"/v1/flags/{taken_up['flag_id']}", {"status": "investigating", "note": "calling them"}
    )
    taken_up = await imbalance("S3")

    late = envelope(
        "3503",
        {
            "purcinfo": {
                **purchase("PU", 24, purc_retn_stoin_time="2026-03-06 10:00:00"),
                "med_list_codg": OTHER,
            }
        },
    )
    late["msgid"] = f"{P1_CODE}202603080900000042"
    assert (await nhsa(p2, late))["output"]["tracecode"]["flags"] == []
    assert (await imbalance("S1"))["status"] == "auto_cleared"
    flag = await imbalance("S2")
    assert flag["status"] == "open", flag
    figures = {k: flag["refs"][k] for k in ("balance_before", "balance_after", "units_in", "units_out")}
    assert figures == {"balance_before": 0, "balance_after": -24, "units_in": 24, "units_out": 48}, flag
    assert flag["detail"].endswith("its ledger then holds -24"), flag
    [line] = flag["history"]
    assert (line["status"], line["by_key"]) == ("open", "system"), line
    assert late["msgid"] in line["note"], line
    assert "its ledger then holds -48" in line["note"], line  # what it said before
    assert (await _ledger(inv, codg=OTHER))["balance"] == -48
    # the investigator's flag is as they left it
    assert await imbalance("S3") == taken_up

    # the feed: S1's withdrawal (the same transaction) reaches it; S2 has only its raising
    r = aioredis.from_url(server_urls[1])
    try:
        for _ in range(100):  # the feed's publisher runs every second at most
            if not await db.fetchval("SELECT count(*) FROM flag_outbox"):
                break
            await asyncio.sleep(0.05)
        assert await db.fetchval("SELECT count(*) FROM flag_outbox") == 0
        fed = [(e[1][b"flag_id"].decode(), e[1][b"status"]) for e in await r.xrange("flags")]
        assert [s for f, s in fed if f == flag["flag_id"]] == [b"open"], fed
        assert [s for f, s in fed if f == (await imbalance("S1"))["flag_id"]][-1:] == [b"auto_cleared"], fed
    finally:
        await r.aclose()


async def test_a_restated_imbalance_names_no_one_as_having_set_its_status(admin: Api) -> None:
    """A STOCK_IMBALANCE is raised open; a late purchase restates its figures with a
    system line under that status. A stale change's 409 then said the status was "set
    by system" at the restate's time, though it dates from the raising (found by a
    review): a line under the status the flag already had sets nothing."""
    w = await _world(admin)
    p2 = w["keys"]["P2"]
    inv = await admin.key_for("investigator")
    for bchno, hour in (("T1", "10"), ("T2", "11")):
        row = sale(bchno, [], 24, sel_retn_time=f"2026-03-07 {hour}:00:00", med_list_codg=OTHER)
        assert (await nhsa(p2, envelope("3505", {"selinfo": row})))["infcode"] == 0
    late = {**purchase("TPU", 24, purc_retn_stoin_time="2026-03-06 10:00:00"), "med_list_codg": OTHER}
    assert (await nhsa(p2, envelope("3503", {"purcinfo": late})))["infcode"] == 0
    page = await inv.ok("GET", "/v1/flags?kind=STOCK_IMBALANCE&org=P2")
    (flag,) = [f for f in page["items"] if f["refs"]["fixmedins_bchno"] == "T2"]
    detail = await inv.ok("GET", f"/v1/flags/{flag['flag_id']}")
    assert detail["status"] == "open", detail
    assert [line["by_key"] for line in detail["history"]] == ["system"], detail  # restated once
    resp = await inv.client.patch(
        f"/v1/flags/{flag['flag_id']}",
        json={"status": "dismissed", "expected_status": "pending", "note": "x"},
        headers=inv.headers,
    )
    assert resp.status_code == 409, resp.text
    assert "set by" not in resp.json()["detail"], resp.json()["detail"]
