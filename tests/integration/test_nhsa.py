"""NHSA 进销存 uploads through POST /v1/nhsa, with payloads shaped as institutions' systems
send them (../shared/nhsa/FIELDS.md), and the registry's fixmedins_code."""

from __future__ import annotations

import asyncio
import copy
import json
from dataclasses import replace
from datetime import datetime
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from service.app import create_app
from service.core.codes import NOT_A_CODE
from service.core.rules import CHINA
from service.interop.nhsa.sales import id_namespace as nhsa_ids
from tests.helpers import BASE_TIME, Api, cn20, event, pack_claim, small_world

pytestmark = pytest.mark.asyncio(loop_scope="session")

MED = "XJ01CAA040A001010104256"
P1_CODE = "P45010300001"
# a sale row's time (sel_retn_time 2026-03-05 10:00 China time), in minutes after the
# helpers' base time, for a settlement of the same sale (tests.helpers.pack_claim)
SALE_MINUTES = (datetime(2026, 3, 5, 10, tzinfo=CHINA) - BASE_TIME).total_seconds() / 60
# the namespace of NHSA event ids under the tests' secret (conftest's settings), for the
# tests that translate uploads themselves and run the use case on a pool of their own
IDS = nhsa_ids(b"test-secret")


def envelope(infno: str, input_: dict[str, Any], fixmedins_code: str = P1_CODE) -> dict[str, Any]:
    """The request envelope as [B] InputPost.cs builds it."""
    return {
        "infno": infno,
        "msgid": f"{fixmedins_code}202603051000000001",
        "mdtrtarea_admvs": "450103",
        "insuplc_admdvs": "450100",
        "recer_sys_code": "YBXT",
        "dev_no": "",
        "dev_safe_info": "",
        "cainfo": "",
        "signtype": "SM3",
        "infver": "V1.0",
        "opter_type": "1",
        "opter": "0001",
        "opter_name": "王药师",
        "inf_time": "2026-03-05 10:00:00",
        "fixmedins_code": fixmedins_code,
        "fixmedins_name": "青秀大药房",
        "sign_no": "",
        "input": input_,
    }


def sale(bchno: str, codes: list[str], count: Any, *, split: Any = "0", **extra: Any) -> dict[str, Any]:
    """A 3505 selinfo row with every required field ([B] Selinfo3505)."""
    row: dict[str, Any] = {
        "med_list_codg": MED,
        "fixmedins_hilist_id": "YP0001",
        "fixmedins_hilist_name": "阿莫西林胶囊 0.25g*24",
        "fixmedins_bchno": bchno,
        "rx_flag": "1",
        "manu_lotnum": "L1",
        "manu_date": "2026-01-05",
        "expy_end": "2028-12-31",
        "prsc_dr_name": "李医生",
        "phar_name": "王药师",
        "phar_prac_cert_no": "YS450100001",
        "hi_feesetl_type": "1",
        "setl_id": "",
        "mdtrt_sn": "MD2026030500001",
        "psn_no": "45000012345678",
        "psn_cert_type": "01",
        "certno": "450103199001011234",
        "psn_name": "张三",
        "trdn_flag": split,
        "finl_trns_pric": 12.5,
        "rxno": "",
        "rx_circ_flag": "0",
        "rtal_docno": f"R{bchno}",
        "stoout_no": "",
        "bchno": "",
        "drug_prod_barc": "",
        "shelf_posi": "A1",
        "sel_retn_cnt": count,
        "sel_retn_time": "2026-03-05 10:00:00",
        "sel_retn_opter_name": "王药师",
        "MDTRT_SETL_TYPE": "1",
        "memo": "",
        "drugtracinfo": [{"drug_trac_codg": c} for c in codes],
    }
    row.update(extra)
    return row


def sale_return(bchno: str, codes: list[str], count: Any, **extra: Any) -> dict[str, Any]:
    """A 3506 selinfo row ([B] Selinfo3506): no prescriber or pharmacist fields."""
    row = sale(bchno, codes, count, **extra)
    for key in ("prsc_dr_name", "phar_name", "phar_prac_cert_no", "rtal_docno", "rxno", "hi_feesetl_type"):
        row.pop(key)
    row["medins_prod_sel_no"] = extra.get("medins_prod_sel_no", "")
    row.setdefault("sel_retn_time", "2026-03-06 09:00:00")
    return row


async def _world(admin: Api) -> dict[str, Any]:
    """small_world, P1 registered with its NHSA code, and 4 packs received by P1."""
    w = await small_world(admin)
    await admin.ok(
        "POST",
        "/v1/orgs",
        {"id": "P2", "name": "P2 Ltd", "kind": "pharmacy", "region": "450103", "fixmedins_code": P1_CODE},
        201,
    )
    w["keys"]["P2"] = await admin.key_for("org", "P2")
    m, p2 = w["keys"]["M1"], w["keys"]["P2"]
    units = [cn20(w["unit"], i) for i in range(1, 5)]
    await m.events(event("commission", "M1", units, 0, lot="L1", expiry="2028-12-31", produced="2026-01-05"))
    await m.events(event("ship", "M1", units, 1, to="P2"))
    await p2.events(event("receive", "P2", units, 2))
    # and its purchase of them in the ledger (a sale beyond it would be STOCK_IMBALANCE)
    purchase = {
        "med_list_codg": MED,
        "fixmedins_hilist_id": "YP0001",
        "fixmedins_hilist_name": "阿莫西林胶囊 0.25g*24",
        "fixmedins_bchno": "C000",
        "rx_flag": "1",
        "manu_lotnum": "L1",
        "manu_date": "2026-01-05",
        "expy_end": "2028-12-31",
        "spler_name": "南宁医药配送",
        "prodentp_name": "桂林制药",
        "aprvno": "国药准字H45020000",
        "purc_retn_cnt": 96,
        "purc_retn_stoin_time": "2026-03-01 09:00:00",
        "purc_retn_opter_name": "王药师",
        "prod_geay_flag": "0",
    }
    assert (await nhsa(p2, envelope("3503", {"purcinfo": purchase})))["infcode"] == 0
    w["units"] = units
    return w


async def nhsa(api: Api, body: Any) -> dict[str, Any]:
    out: dict[str, Any] = await api.ok("POST", "/v1/nhsa", body)
    return out


async def uploads_at_once(
    db_url: str, org: str, uploads: list[tuple[str, dict[str, Any]]], size: int = 6
) -> list[Any]:
    """The uploads (("sales" or "inventory", envelope)) at once, through the use case on a
    pool of ``size`` connections of their own, as request handlers run them (the
    in-process test client answers one request at a time); what each returned."""
    import asyncio
    from datetime import UTC, datetime

    from service.interop.nhsa import envelope as nhsa_envelope
    from service.interop.nhsa import inventory, sales
    from service.store.db import create_pool
    from service.usecases import nhsa as nhsa_usecase

    now = datetime.now(UTC)
    pool = await create_pool(db_url, min_size=size, max_size=size)
    try:
        work = []
        for kind, body in uploads:
            env = nhsa_envelope.parse(body)
            records, errors = (sales if kind == "sales" else inventory).translate(env, org, now, IDS)
            assert not errors, errors
            work.append(nhsa_usecase.upload(pool, org, records, env.msgid, {"infno": env.infno}, now))
        return list(await asyncio.gather(*work))
    finally:
        await pool.close()


async def _stored_events(db: Any) -> int:
    return int(await db.fetchval("SELECT count(*) FROM events WHERE type IN ('dispense', 'return')"))


async def test_the_documented_example_is_taken_as_it_is(admin: Api) -> None:
    """The request body the OpenAPI document shows for /v1/nhsa, read from the served
    document, is a sale the service takes: an integrator may start from it."""
    spec = await admin.ok("GET", "/schema/openapi.json")
    example = spec["paths"]["/v1/nhsa"]["post"]["requestBody"]["content"]["application/json"]["example"]
    row = example["input"]["selinfo"]
    assert example["fixmedins_code"] == P1_CODE
    assert row["med_list_codg"] == MED
    w = await _world(admin)  # P2 is the institution P45010300001
    m, p2 = w["keys"]["M1"], w["keys"]["P2"]
    code = row["drugtracinfo"][0]["drug_trac_codg"]
    made = event(
        "commission",
        "M1",
        [code],
        0,
        lot=row["manu_lotnum"],
        expiry=row["expy_end"],
        produced=row["manu_date"],
    )
    await m.events(made)
    await m.events(event("ship", "M1", [code], 1, to="P2"))
    await p2.events(event("receive", "P2", [code], 2))
    out = await nhsa(p2, example)
    assert out["infcode"] == 0, out["err_msg"]
    assert out["output"]["tracecode"]["accepted"] == 1, out
    assert not out["output"]["tracecode"]["rejected"], out
    assert (await p2.ok("GET", f"/v1/codes/{code}/verify"))["state"] == "dispensed"


async def test_registry_fixmedins_code(admin: Api) -> None:
    body = {
        "id": "P7",
        "name": "P7",
        "kind": "pharmacy",
        "region": "450103",
        "fixmedins_code": "P45010300007",
    }
    assert (await admin.ok("POST", "/v1/orgs", body, 201))["fixmedins_code"] == "P45010300007"
    await admin.ok("POST", "/v1/orgs", body, 200)
    await admin.ok("POST", "/v1/orgs", {**body, "fixmedins_code": "P45010300008"}, 409)
    other = {**body, "id": "P8"}  # a second organisation may not take the same code
    resp = await admin.post("/v1/orgs", other)
    assert resp.status_code == 409
    plain = {"id": "P9x", "name": "P9", "kind": "pharmacy", "region": "450103"}
    assert "fixmedins_code" not in await admin.ok("POST", "/v1/orgs", plain, 201)
    bad = await admin.post("/v1/orgs", {**plain, "id": "P10", "fixmedins_code": "P 1"})
    assert bad.status_code == 400


async def _units_left(api: Api, code: str) -> int:
    out = await api.ok("GET", f"/v1/codes/{code}/verify")
    return int(out["units_left"])


async def test_sales_whole_and_split(admin: Api, db: Any) -> None:
    """A whole-pack sale (numbers as strings), a split sale (numbers as numbers), and the
    legacy single drug_trac_codg with the older single-object drugtracinfo."""
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    out = await nhsa(p2, envelope("3505", {"selinfo": sale("B001", [u[0]], "24.0000", setl_id="S100")}))
    assert out["infcode"] == 0, out
    assert out["err_msg"] is None
    assert out["output"]["result"] == {"retRslt": "1", "msgRslt": "success"}
    assert out["output"]["tracecode"] == {
        "accepted": 1,
        "duplicates": 0,
        "rejected": [],
        "flags": [],
        "records": 1,
        "deleted": [],
    }
    assert len(out["inf_refmsgid"]) == 30
    assert out["inf_refmsgid"].startswith("450103")
    assert len(out["refmsg_time"]) == 17
    assert await _units_left(p2, u[0]) == 0

    out = await nhsa(p2, envelope("3505", {"selinfo": sale("B002", [u[1]], 6, split=1)}))
    assert out["infcode"] == 0, out
    assert await _units_left(p2, u[1]) == 18
    out = await nhsa(p2, envelope("3505", {"selinfo": sale("B003", [u[1]], "6", split="1")}))
    assert await _units_left(p2, u[1]) == 12

    legacy = sale("B004", [], 24, drug_trac_codg=u[2])
    legacy["drugtracinfo"] = {"drug_trac_codg": u[3]}  # older builds: one object
    out = await nhsa(p2, envelope("3505", {"selinfo": legacy}))
    assert out["output"]["tracecode"]["accepted"] == 2, out
    assert await _units_left(p2, u[2]) == 0
    assert await _units_left(p2, u[3]) == 0

    inv = await admin.key_for("investigator")
    history = await inv.ok("GET", f"/v1/codes/{u[0]}/history")
    dispense = [e for e in history["events"] if e["type"] == "dispense"]
    assert len(dispense) == 1
    assert dispense[0]["org"] == "P2"
    assert dispense[0]["at"].startswith("2026-03-05T02:00:00")  # China time, stored in UTC
    # the person number is not stored anywhere
    psn = await db.fetchval(
        "SELECT count(*) FROM events WHERE ref LIKE '%45000012345678%' OR setl_id LIKE '%45000012345678%'"
    )
    assert psn == 0


async def test_sale_return_restores_units(admin: Api) -> None:
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    await nhsa(p2, envelope("3505", {"selinfo": sale("B010", [u[0]], 24, setl_id="S110")}))
    await nhsa(p2, envelope("3505", {"selinfo": sale("B011", [u[1]], 6, split="1")}))
    assert await _units_left(p2, u[0]) == 0
    out = await nhsa(p2, envelope("3506", {"selinfo": sale_return("R010", [u[0]], 24, setl_id="S110")}))
    assert out["infcode"] == 0, out
    assert out["output"]["result"]["retRslt"] == "1"
    assert await _units_left(p2, u[0]) == 24
    batch = {"selinfoDetail": [sale_return("R011", [u[1]], "6.0000", trdn_flag="1")]}
    out = await nhsa(p2, envelope("3506A", batch))
    assert out["infcode"] == 0, out
    assert await _units_left(p2, u[1]) == 24
    # returned packs may be sold again (after the return: a whole-pack sale of the pack
    # by P2 at the first sale's instant would be that sale sent again, core.sales.sent_again)
    again = sale("B012", [u[0]], 24, sel_retn_time="2026-03-06 10:00:00")
    out = await nhsa(p2, envelope("3505", {"selinfo": again}))
    assert out["output"]["tracecode"]["flags"] == []
    assert await _units_left(p2, u[0]) == 0


async def test_retries_are_one_fact(admin: Api, db: Any) -> None:
    """The same record again, and again inside a batch form, is one fact."""
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    body = envelope("3505", {"selinfo": sale("B020", [u[0], u[1]], 48)})
    first = await nhsa(p2, body)
    assert first["output"]["tracecode"]["accepted"] == 2
    again = await nhsa(p2, copy.deepcopy(body))
    assert again["infcode"] == 0
    assert again["output"]["tracecode"] == {
        "accepted": 0,
        "duplicates": 2,
        "rejected": [],
        "flags": [],
        "records": 0,
        "deleted": [],
    }
    batch = await nhsa(p2, envelope("3505A", {"selinfoDetail": [sale("B020", [u[0], u[1]], 48)]}))
    assert batch["output"]["tracecode"]["duplicates"] == 2
    assert await _stored_events(db) == 2
    assert await db.fetchval("SELECT count(*) FROM flags") == 0  # no resale suspected


async def test_same_sale_through_settlements_consumes_once(admin: Api) -> None:
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    insurer = await admin.key_for("insurer")
    out = await nhsa(p2, envelope("3505", {"selinfo": sale("B030", [u[0]], 24, setl_id="S300")}))
    assert out["output"]["tracecode"]["accepted"] == 1
    claim = {
        "setl_id": "S300",
        "org": "P2",
        "psn_no": "45000012345678",
        "at": "2026-03-05T10:00:00+08:00",
        "lines": [{"line_no": 1, "med_list_codg": MED, "quantity": 24, "codes": [u[0]]}],
    }
    answer = await insurer.ok("POST", "/v1/settlements", claim)
    assert answer["decision"] == "accepted", answer
    assert answer["flags"] == []
    assert await _units_left(p2, u[0]) == 0
    # and the other way round: settled first, then uploaded
    await insurer.ok(
        "POST",
        "/v1/settlements",
        {
            **claim,
            "setl_id": "S301",
            "lines": [{"line_no": 1, "med_list_codg": MED, "quantity": 24, "codes": [u[1]]}],
        },
    )
    out = await nhsa(p2, envelope("3505", {"selinfo": sale("B031", [u[1]], 24, setl_id="S301")}))
    assert out["output"]["tracecode"]["flags"] == [], out
    assert await _units_left(p2, u[1]) == 0


async def test_product_mismatch_flag(admin: Api) -> None:
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    row = sale("B040", [u[0]], 24, med_list_codg="XA02BCA000A001010100001")
    out = await nhsa(p2, envelope("3505", {"selinfo": row}))
    kinds = [f["kind"] for f in out["output"]["tracecode"]["flags"]]
    assert kinds == ["PRODUCT_MISMATCH", "STOCK_IMBALANCE"]  # and none of the billed item was bought


SWAPPED = "XA02BCA000A001010100001"  # another catalogue item than the packs' (MED)


@pytest.mark.parametrize("path", ["in order", "folded again"])
async def test_a_sale_billed_as_another_item_is_a_product_mismatch_whichever_arrives_first(
    admin: Api, db: Any, path: str
) -> None:
    """A settlement billing the pack's own item and a 3505 of the same sale (same
    setl_id) billing another item for the pack: PRODUCT_MISMATCH (串换), once, whichever
    arrives first (pack a: the settlement first; pack b: the 3505 first). The sale takes
    the pack once (no DUPLICATE for being the same sale). Found by a probe: with the
    settlement first the 3505 took nothing again and was not judged for what it billed,
    so the mismatch was missed. "folded again": the packs have a later event, so a 3505
    arriving after its settlement is folded again in event time
    (``core.ingest._refold_late``), which skipped it the same way."""
    w = await _world(admin)
    p2, [a, b] = w["keys"]["P2"], w["units"][:2]
    inv = await admin.key_for("investigator")
    insurer = await admin.key_for("insurer")
    if path == "folded again":  # a re-scan after the sales: the sales are late
        await p2.events(event("receive", "P2", [a, b], 60 * 24 * 5))

    def claim(setl_id: str, code: str) -> dict[str, Any]:
        return pack_claim(setl_id, code, SALE_MINUTES, org="P2")

    def swapped(bchno: str, setl_id: str, code: str) -> dict[str, Any]:
        return envelope("3505", {"selinfo": sale(bchno, [code], 24, setl_id=setl_id, med_list_codg=SWAPPED)})

    answers = [await insurer.ok("POST", "/v1/settlements", claim("S-SWAP-A", a))]
    uploads = [await nhsa(p2, swapped("B-SWAP-A", "S-SWAP-A", a))]
    uploads.append(await nhsa(p2, swapped("B-SWAP-B", "S-SWAP-B", b)))
    answers.append(await insurer.ok("POST", "/v1/settlements", claim("S-SWAP-B", b)))
    for answer in answers:
        assert (answer["decision"], answer["flags"]) == ("accepted", []), answer  # its own item
    for code, out, setl_id in [(a, uploads[0], "S-SWAP-A"), (b, uploads[1], "S-SWAP-B")]:
        raised = out["output"]["tracecode"]["flags"]
        assert sorted((f["kind"], f["code"]) for f in raised) == [
            ("PRODUCT_MISMATCH", code),
            ("STOCK_IMBALANCE", SWAPPED),  # none of the billed item was bought
        ], (code, out)
        [flag] = (await inv.ok("GET", f"/v1/flags?code={code}"))["items"]
        assert (flag["kind"], flag["status"], flag["org"]) == ("PRODUCT_MISMATCH", "open", "P2"), flag
        assert flag["refs"]["billed"] == SWAPPED
        assert flag["flag_id"] == next(f["flag_id"] for f in raised if f["kind"] == "PRODUCT_MISMATCH")
        # the sale took the pack once
        assert await _units_left(p2, code) == 0
        rows = await db.fetch("SELECT sale_id, units FROM consumptions WHERE code = $1", code)
        assert [(r["sale_id"], r["units"]) for r in rows] == [(setl_id, 24)]
    # sent again: one fact, no second flag
    again = await nhsa(p2, swapped("B-SWAP-A", "S-SWAP-A", a))
    assert again["output"]["tracecode"]["flags"] == [], again
    assert len((await inv.ok("GET", f"/v1/flags?code={a}"))["items"]) == 1


async def test_wrong_institution_is_403(admin: Api, db: Any) -> None:
    """A 403, answered in the response envelope a 35xx client reads (not problem
    details), naming fixmedins_code; nothing stored."""
    w = await _world(admin)
    u = w["units"]
    body = envelope("3505", {"selinfo": sale("B050", [u[0]], 24)})
    resp = await w["keys"]["P1"].post("/v1/nhsa", body)  # P1 has no fixmedins_code
    assert resp.status_code == 403
    assert resp.headers["content-type"].startswith("application/json"), resp.headers
    out = resp.json()
    assert out["infcode"] == -1, out
    assert out["err_msg"].startswith("fixmedins_code: this key uploads only for organisation P1"), out
    assert out["output"]["result"]["retRslt"] == "0", out
    assert out["inf_refmsgid"].startswith("450103"), out
    other = envelope("3505", {"selinfo": sale("B050", [u[0]], 24)}, fixmedins_code="P45010399999")
    resp = await w["keys"]["P2"].post("/v1/nhsa", other)
    assert resp.status_code == 403
    out = resp.json()
    assert out["err_msg"].startswith("fixmedins_code: this key uploads only for organisation P2"), out
    assert await _stored_events(db) == 0
    # a key of a role that may not upload is refused by the role check, as on every route
    insurer = await admin.key_for("insurer")
    resp = await insurer.post("/v1/nhsa", envelope("3505", {"selinfo": sale("B050", [u[0]], 24)}))
    assert resp.status_code == 403, resp.text
    assert "detail" in resp.json(), resp.text


async def test_a_refused_envelope_answers_with_its_region(admin: Api) -> None:
    """An envelope refused for one of its fields still names its region (mdtrtarea_admvs)
    in inf_refmsgid when that reads as one; 000000 when it does not."""
    w = await _world(admin)
    p2 = w["keys"]["P2"]
    body = envelope("3509", {"data": {}})  # P2's institution
    out = await nhsa(p2, body)
    assert out["infcode"] == -1, out
    assert out["err_msg"].startswith("infno"), out
    assert out["inf_refmsgid"].startswith("450103"), out
    body["mdtrtarea_admvs"] = "45x103"
    out = await nhsa(p2, body)
    assert out["infcode"] == -1, out
    assert out["inf_refmsgid"].startswith("000000"), out


async def test_bad_input_answers_infcode_minus_one(admin: Api, db: Any) -> None:
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]

    def without(row: dict[str, Any], key: str) -> dict[str, Any]:
        return {k: v for k, v in row.items() if k != key}

    good = sale("B060", [u[0]], 24)
    cases: list[tuple[Any, str]] = [
        ([1, 2], "(body)"),
        (without(envelope("3505", {"selinfo": good}), "msgid"), "msgid"),
        (envelope("9999", {"selinfo": good}), "infno"),
        (envelope("3509", {"data": {}}), "infno"),
        (envelope("3505", {"other": good}), "input.selinfo"),
        ({**envelope("3505", {"selinfo": good}), "inf_time": "05/03/2026"}, "inf_time"),
        (envelope("3505", {"selinfo": without(good, "fixmedins_bchno")}), "input.selinfo.fixmedins_bchno"),
        (envelope("3505", {"selinfo": {**good, "sel_retn_cnt": "twenty"}}), "input.selinfo.sel_retn_cnt"),
        (
            envelope("3505", {"selinfo": {**good, "sel_retn_cnt": 2.5, "trdn_flag": 1}}),
            "input.selinfo.sel_retn_cnt",
        ),
        (
            envelope("3505", {"selinfo": {**good, "sel_retn_time": "2026-02-30 10:00:00"}}),
            "input.selinfo.sel_retn_time",
        ),
        (envelope("3505", {"selinfo": {**good, "manu_date": "2026/01/05"}}), "input.selinfo.manu_date"),
        (envelope("3505", {"selinfo": {**good, "trdn_flag": "Y"}}), "input.selinfo.trdn_flag"),
        (envelope("3505", {"selinfo": {**good, "setl_id": "S 1/2"}}), "input.selinfo.setl_id"),
        (envelope("3505A", {"selinfoDetail": []}), "input.selinfoDetail"),
        # a wrong type is refused, not read as absent (the sale would lose its codes or link)
        (envelope("3505", {"selinfo": {**good, "setl_id": {"id": "S1"}}}), "input.selinfo.setl_id"),
        (
            envelope("3505", {"selinfo": {**good, "drugtracinfo": [], "drug_trac_codg": [u[0], u[1]]}}),
            "input.selinfo.drug_trac_codg",
        ),
        (
            envelope("3505", {"selinfo": {**good, "drugtracinfo": [{"drug_trac_codg": [u[0]]}]}}),
            "input.selinfo.drugtracinfo[0].drug_trac_codg",
        ),
        (envelope("3505", {"selinfo": {**good, "setl_id": True}}), "input.selinfo.setl_id"),
        # one older model's misspelt key (FIELDS.md, 3501A): not read as a row without codes
        (
            envelope("3505", {"selinfo": {**good, "drugtracinfo": {"drug_trac_code": u[0]}}}),
            "input.selinfo.drugtracinfo.drug_trac_code",
        ),
        # longer than FIELDS.md's length (str 50, str 6)
        (envelope("3505", {"selinfo": {**good, "phar_name": "王" * 51}}), "input.selinfo.phar_name"),
        (envelope("3506", {"selinfo": {**good, "psn_cert_type": "0123456"}}), "input.selinfo.psn_cert_type"),
    ]
    for body, field in cases:
        out = await nhsa(p2, body)
        assert out["infcode"] == -1, (field, out)
        assert out["err_msg"].startswith(f"{field}:"), (field, out["err_msg"])
        # every refusal carries output.result, as the platform's answers do
        assert out["output"]["result"] == {"retRslt": "0", "msgRslt": out["err_msg"]}, (field, out)
    resp = await p2.client.post("/v1/nhsa", headers=p2.headers, content=b'{"infno": ')
    assert resp.status_code == 200
    assert resp.json()["infcode"] == -1
    assert resp.json()["output"]["result"]["retRslt"] == "0"
    assert await _stored_events(db) == 0


async def test_batch_with_one_bad_row(admin: Api) -> None:
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    rows = [
        sale("B070", [u[0]], 24),
        sale("B071", [u[1]], "abc"),
        sale("B072", [u[2]], 6, split="1"),
        sale("B073", ["not-a-code", u[3]], 24),
    ]
    out = await nhsa(p2, envelope("3505A", {"selinfoDetail": rows}))
    assert out["infcode"] == 0, out
    assert out["output"]["result"]["retRslt"] == "0"
    errs = {e["fixmedins_bchno"]: e for e in out["output"]["selinfoErrDetail"]}
    assert set(errs) == {"B071", "B073"}
    assert errs["B071"]["msgRslt"].startswith("input.selinfoDetail[1].sel_retn_cnt:")
    assert errs["B071"]["retRslt"] == "0"
    assert errs["B071"]["med_list_codg"] == MED
    # a code that is no code makes its row a bad row: nothing of it is stored (it was
    # stored without that code, answered retRslt "0": a probe)
    assert errs["B073"]["msgRslt"] == (
        "input.selinfoDetail[3].drugtracinfo[0].drug_trac_codg: "
        "not a CN20 code, GS1 element string or SSCC: 'not-a-code'"
    )
    assert out["output"]["tracecode"]["rejected"] == []
    assert out["output"]["tracecode"]["records"] == 2
    assert await _units_left(p2, u[0]) == 0
    assert await _units_left(p2, u[1]) == 24  # the bad rows changed nothing
    assert await _units_left(p2, u[2]) == 18
    assert await _units_left(p2, u[3]) == 24


async def test_concurrent_retries_of_one_upload_are_one_fact(admin: Api, db: Any, db_url: str) -> None:
    """The same 3505A batch sent four times at once is stored once: its events, its
    ledger records and the units it takes. The uploads race through the use case on a
    pool of their own, as request handlers do (the in-process test client answers one
    request at a time)."""
    w = await _world(admin)
    u = w["units"]
    rows = [sale(f"CC{i}", [u[i]], 24, sel_retn_time="2026-03-05 10:00:00") for i in range(4)]
    body = envelope("3505A", {"selinfoDetail": rows})
    done = await uploads_at_once(db_url, "P2", [("sales", body)] * 4, size=4)
    assert sum(d.result.accepted_codes for d in done) == 4
    assert sum(d.records_new for d in done) == 4
    assert await _stored_events(db) == 4
    stored = await db.fetchval("SELECT count(*) FROM nhsa_records WHERE interface = '3505' AND org = 'P2'")
    assert stored == 4
    assert [await _units_left(w["keys"]["P2"], code) for code in u] == [0, 0, 0, 0]
    assert await db.fetchval("SELECT count(*) FROM flags") == 0


@pytest.mark.parametrize("infno", ["3505", "3506"])
@pytest.mark.parametrize("price", ["abc", [1], True, -5, "-0.5", 1e308])
async def test_a_sale_price_that_is_no_number_is_infcode_minus_one(
    admin: Api, db: Any, infno: str, price: Any
) -> None:
    """finl_trns_pric is optional in 3505/3506, and a price when given (num 16,6: not
    negative, ten digits before the point), as in 3503."""
    w = await _world(admin)
    row = sale("B079", [w["units"][0]], 24, finl_trns_pric=price, psn_cert_type="01")
    out = await nhsa(w["keys"]["P2"], envelope(infno, {"selinfo": row}))
    assert out["infcode"] == -1, out
    assert out["err_msg"].startswith("input.selinfo.finl_trns_pric:"), out["err_msg"]
    assert await _stored_events(db) == 0


@pytest.mark.parametrize("codg", ["XJ01CAA\u202e040A", "XJ01CAA040A\u200d", "ＸJ01CAA040A"])
async def test_a_sale_of_an_item_that_reads_like_another_is_infcode_minus_one(
    admin: Api, db: Any, codg: str
) -> None:
    """med_list_codg with a direction mark, an invisible character or a full-width letter
    would be another item that reads like the real one: refused, nothing stored."""
    w = await _world(admin)
    out = await nhsa(
        w["keys"]["P2"], envelope("3505", {"selinfo": sale("B078", [w["units"][0]], 24, med_list_codg=codg)})
    )
    assert out["infcode"] == -1, out
    assert out["err_msg"].startswith("input.selinfo.med_list_codg:"), out["err_msg"]
    assert await _stored_events(db) == 0


@pytest.mark.parametrize(
    ("where", "value"),
    [
        ("sel_retn_time", "0001-01-01 00:00:00"),
        ("sel_retn_time", "9999-12-31 23:59:59-10:00"),
        ("inf_time", "0001-01-01 00:00:00"),
    ],
)
async def test_time_out_of_range_is_infcode_minus_one(admin: Api, db: Any, where: str, value: str) -> None:
    """A time whose UTC falls outside the calendar is a field error, not a 500."""
    w = await _world(admin)
    row = sale("B080", [w["units"][0]], 24)
    body = envelope("3505", {"selinfo": row})
    (body if where == "inf_time" else row)[where] = value
    out = await nhsa(w["keys"]["P2"], body)
    assert out["infcode"] == -1, out
    assert where in out["err_msg"], out["err_msg"]
    assert await _stored_events(db) == 0


async def test_batch_row_with_time_out_of_range_is_listed(admin: Api) -> None:
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    rows = [sale("B081", [u[0]], 24), sale("B082", [u[1]], 24, sel_retn_time="0001-01-01 00:00:00")]
    out = await nhsa(p2, envelope("3505A", {"selinfoDetail": rows}))
    assert out["infcode"] == 0, out
    [err] = out["output"]["selinfoErrDetail"]
    assert err["fixmedins_bchno"] == "B082"
    assert err["msgRslt"].startswith("input.selinfoDetail[1].sel_retn_time:"), err
    assert await _units_left(p2, u[0]) == 0
    assert await _units_left(p2, u[1]) == 24


@pytest.mark.parametrize("depth", [1_000, 30_000])
async def test_body_nested_too_deep_is_infcode_minus_one(admin: Api, db: Any, depth: int) -> None:
    w = await _world(admin)
    p2 = w["keys"]["P2"]
    raw = b'{"infno": ' + b"[" * depth + b"]" * depth + b"}"
    resp = await p2.client.post("/v1/nhsa", headers=p2.headers, content=raw)
    assert resp.status_code == 200, resp.text
    assert resp.json()["infcode"] == -1
    assert resp.json()["err_msg"].startswith("(body):"), resp.json()
    assert await _stored_events(db) == 0


async def test_row_nested_just_short_of_the_decoder_limit(admin: Api, db: Any) -> None:
    """A row nested a little less deep than the body's decoder refuses can still be too
    deep for the store's JSON encoder: from 900 levels to past the decoder's limit, every
    answer is infcode 0 or -1, never a 500."""
    w = await _world(admin)
    p2 = w["keys"]["P2"]
    template = json.dumps(envelope("3505", {"selinfo": sale("B085-%%", [], 24, memo="@@")}))
    answers = set()
    for depth in range(900, 1_000, 2):  # each its own record (one serial is one record)
        raw = template.replace('"@@"', "[" * depth + "]" * depth).replace("%%", str(depth)).encode()
        resp = await p2.client.post("/v1/nhsa", headers=p2.headers, content=raw)
        assert resp.status_code == 200, (depth, resp.text)
        answers.add((resp.json()["infcode"], (resp.json()["err_msg"] or "").split(":")[0]))
    assert answers <= {(0, ""), (-1, "(body)"), (-1, "input"), (-1, "input.selinfo.memo")}, answers
    # a field nested deeper than any NHSA row is refused, naming it (the kept row is
    # walked for the person's fields: not down to the interpreter's recursion limit)
    for depth, infcode in ((15, 0), (17, -1)):
        raw = template.replace('"@@"', "[" * depth + "]" * depth).replace("%%", f"d{depth}").encode()
        out = (await p2.client.post("/v1/nhsa", headers=p2.headers, content=raw)).json()
        assert out["infcode"] == infcode, (depth, out)
    assert out["err_msg"].startswith("input.selinfo.memo: nests objects or arrays more than 16"), out


@pytest.mark.parametrize("mode", ["deep", "nul", "surrogate"])
async def test_input_as_a_json_string_is_checked_as_the_body_is(admin: Api, db: Any, mode: str) -> None:
    """``input`` sent as a JSON string is decoded here, after the body's checks: the same
    checks apply to it (no NUL, no lone surrogate, no nesting beyond the decoder)."""
    w = await _world(admin)
    inner = json.dumps({"selinfo": sale("B090", [w["units"][0]], 24)})
    inner = {
        "deep": '{"selinfo": ' + "[" * 30_000 + "]" * 30_000 + "}",
        "nul": inner.replace('"B090"', '"B\\u0000090"'),
        "surrogate": inner.replace('"B090"', '"B\\ud800090"'),
    }[mode]
    out = await nhsa(w["keys"]["P2"], {**envelope("3505", {}), "input": inner})
    assert out["infcode"] == -1, out
    assert out["err_msg"].startswith("input:"), out["err_msg"]
    assert await _stored_events(db) == 0
    assert await db.fetchval("SELECT count(*) FROM nhsa_records") == 1  # _world's purchase


async def test_input_as_a_json_string_is_taken(admin: Api) -> None:
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    inner = json.dumps({"selinfo": sale("B091", [u[0]], 24)}, ensure_ascii=False)
    out = await nhsa(p2, {**envelope("3505", {}), "input": inner})
    assert out["infcode"] == 0, out
    assert await _units_left(p2, u[0]) == 0


async def test_same_code_in_both_code_fields_is_one_scan(admin: Api) -> None:
    """[B] sends the legacy single drug_trac_codg alongside drugtracinfo: a code in both is
    one scan, not a repeat (which would refuse the row). A code repeated within
    drugtracinfo itself is still refused."""
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    out = await nhsa(p2, envelope("3505", {"selinfo": sale("B095", [u[0]], 24, drug_trac_codg=u[0])}))
    assert out["output"]["result"]["retRslt"] == "1", out
    assert out["output"]["tracecode"]["accepted"] == 1
    assert out["output"]["tracecode"]["rejected"] == []
    both = sale("B096", [u[1]], 48, drug_trac_codg=f"{u[1]},{u[2]}")
    out = await nhsa(p2, envelope("3505", {"selinfo": both}))
    assert out["output"]["result"]["retRslt"] == "1", out
    assert [await _units_left(p2, c) for c in u[1:3]] == [0, 0]
    out = await nhsa(p2, envelope("3505", {"selinfo": sale("B097", [u[3], u[3]], 24)}))
    assert (out["infcode"], out["err_msg"]) == (
        -1,
        "input.selinfo.drugtracinfo[1].drug_trac_codg: is the code of drugtracinfo[0].drug_trac_codg again",
    ), out
    assert await _units_left(p2, u[3]) == 24


async def test_another_organisation_cannot_take_a_sales_event_id_first(admin: Api) -> None:
    """A sale's event id is no function of the upload's public fields alone (institution
    code, interface, serial, code): it is keyed by the installation's secret. Found in
    review: with the ids worked out from public fields, another organisation could store
    an event under a sale's id first, and the sale was then answered as a duplicate and
    never taken (now it would be refused, EVENT_ID_TAKEN: POST /v1/events' rule)."""
    from service.interop.nhsa.sales import NAMESPACE, event_id

    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    p9 = await admin.key_for("org", "P9")
    public = event_id(NAMESPACE.bytes, P1_CODE, "3505", "B001", u[0])  # what anyone can compute
    squat = {**event("receive", "P9", [cn20(w["unit"], 99)], 3), "event_id": str(public)}
    assert (await p9.events(squat))["accepted"] == 1
    out = await nhsa(p2, envelope("3505", {"selinfo": sale("B001", [u[0]], 24)}))
    assert out["output"]["tracecode"]["accepted"] == 1, out
    assert await _units_left(p2, u[0]) == 0


async def test_a_nul_or_bad_utf8_in_a_row_is_answered_in_the_envelope_naming_the_field(
    admin: Api, db: Any
) -> None:
    """The app refuses NUL and bytes that are not UTF-8 in every body; on /v1/nhsa the
    refusal is the platform's envelope (it was a problem+json naming ``body``)."""
    w = await _world(admin)
    p2 = w["keys"]["P2"]
    row = sale("B095", [w["units"][0]], 24, psn_no="4500\u00001234")
    out = await nhsa(p2, envelope("3505", {"selinfo": row}))
    assert out["infcode"] == -1, out
    assert out["err_msg"].startswith("input.selinfo.psn_no: NUL characters"), out["err_msg"]
    raw = json.dumps(envelope("3505", {"selinfo": sale("B096", [], 24)})).encode()
    raw = raw.replace(b"B096", b"B\xff96")
    resp = await p2.client.post("/v1/nhsa", headers=p2.headers, content=raw)
    assert resp.status_code == 200, resp.text
    assert resp.json()["infcode"] == -1
    assert resp.json()["err_msg"].startswith("(body): not UTF-8"), resp.json()
    assert await _stored_events(db) == 0


async def test_a_body_over_the_size_limit_is_answered_in_the_envelope(
    admin: Api, db: Any, settings: Any
) -> None:
    """Found by a probe: a 3505A within the 10,000-row limit but over TRACE_MAX_BODY_BYTES
    (10,000 two-pack sales are 8.65 MB, the default limit 8 MiB) was a 413 problem+json,
    which a 35xx client cannot read. It is the platform's envelope now, infcode -1 naming
    the limit in bytes, still with the 413; nothing is stored. Sent with its
    Content-Length it is refused before a byte is read; sent in chunks without one,
    reading stops at the limit."""
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    limit = settings.max_body_bytes
    rows = [sale(f"BIG{i:05d}", [u[i % 4]], 24) for i in range(limit // 700)]
    raw = json.dumps(envelope("3505A", {"selinfoDetail": rows}), ensure_ascii=False).encode()
    assert len(raw) > limit

    resp = await p2.client.post(
        "/v1/nhsa", headers={**p2.headers, "content-type": "application/json"}, content=raw
    )
    assert resp.status_code == 413, resp.text
    assert resp.headers["content-type"].startswith("application/json"), resp.headers
    out = resp.json()
    assert out["infcode"] == -1, out
    assert out["err_msg"].startswith(f"(body): is larger than the {limit} bytes"), out
    assert out["output"]["result"]["retRslt"] == "0", out
    assert out["inf_refmsgid"].startswith("000000"), out

    # in chunks, no Content-Length: the app asks for no more than the limit's worth
    chunk = 64 * 1024
    pieces = [raw[i : i + chunk] for i in range(0, len(raw), chunk)]
    asked: list[int] = []
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        i = len(asked)
        asked.append(i)
        return {"type": "http.request", "body": pieces[i], "more_body": i + 1 < len(pieces)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [(b"authorization", f"Bearer {p2.key}".encode()), (b"content-type", b"application/json")]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/v1/nhsa", "raw_path": b"/v1/nhsa", "query_string": b"",
        "root_path": "", "headers": headers, "client": ("127.0.0.1", 50000), "server": ("testserver", 80),
    }  # fmt: skip
    # as the test client calls the app (in its portal's event loop), with these receive and send
    p2.client.blocking_portal.call(p2.client.app, scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] == 413
    answer = json.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))
    assert answer["infcode"] == -1, answer
    assert answer["err_msg"].startswith(f"(body): is larger than the {limit} bytes"), answer
    assert len(asked) * chunk <= limit + chunk < len(raw), (len(asked), len(pieces))

    assert await _stored_events(db) == 0
    assert await db.fetchval("SELECT count(*) FROM nhsa_records") == 1  # _world's purchase


# found by a probe: NHSA read a code with str.strip(), which drops these too
NOT_DROPPED = ["\u3000", "\xa0", "\u2003", "\u2028", "\x1c", "\x85", "\v", "\f"]


async def test_a_code_is_read_with_the_whitespace_around_it_as_on_v1_events(admin: Api) -> None:
    """Found by a probe: 3505 took a code ending in U+3000 (and U+00A0, U+2003, U+2028,
    \\x1c, \\x85) that /v1/events refused as INVALID_CODE: NHSA stripped Unicode whitespace
    from codes. Every route now drops only ASCII space, tab, CR and LF around a code."""
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    for i, around in enumerate(NOT_DROPPED):
        out = await p2.events(event("dispense", "P2", [u[0] + around], 3))
        assert [r["reason"] for r in out["rejected"]] == ["INVALID_CODE"], (repr(around), out)
        for j, row in enumerate(
            (
                sale(f"B{i}0", [u[0] + around], 24),
                sale(f"B{i}1", [around + u[0]], 24),
                sale(f"B{i}2", [], 24, drug_trac_codg=u[0] + around),  # the legacy field
                sale(f"B{i}3", [], 24, drug_trac_codg=f" {around}{u[0]},"),
            )
        ):
            out = await nhsa(p2, envelope("3505", {"selinfo": row}))
            assert out["infcode"] == -1, (repr(around), j, out)
            assert NOT_A_CODE in out["err_msg"], (repr(around), j, out)
        assert await _units_left(p2, u[0]) == 24, repr(around)
    out = await nhsa(p2, envelope("3505", {"selinfo": sale("B100", [f" \t{u[0]}\r\n"], 24)}))
    assert out["output"]["tracecode"]["accepted"] == 1, out
    out = await nhsa(
        p2, envelope("3505", {"selinfo": sale("B101", [], 24, drug_trac_codg=f"{u[2]} ,\t{u[3]} ")})
    )
    assert out["output"]["tracecode"]["accepted"] == 2, out
    assert [await _units_left(p2, c) for c in u] == [0, 24, 0, 0]


async def test_a_legacy_code_whose_serial_holds_a_comma_is_one_pack(admin: Api) -> None:
    """The legacy ``drug_trac_codg`` is a comma-separated list, but a GS1 serial may hold a
    comma: ``(01)…(21)A,B`` is one pack, not pack ``(01)…(21)A`` and a bad code B (found by
    a probe: split, the sale took pack A)."""
    w = await _world(admin)
    m, p2 = w["keys"]["M1"], w["keys"]["P2"]
    gtin = "10614141073464"
    product = {"product_id": gtin, "name": "Amoxicillin (GS1)", "med_list_codg": MED, "pack_units": 24,
               "manufacturer": "M1"}  # fmt: skip
    await admin.ok("POST", "/v1/products", product, 201)
    whole, part = f"(01){gtin}(21)A,B", f"(01){gtin}(21)A"
    await m.events(
        event("commission", "M1", [whole, part], 0, lot="L1", expiry="2028-12-31", produced="2026-01-05"),
        event("ship", "M1", [whole, part], 1, to="P2"),
    )
    await p2.events(event("receive", "P2", [whole, part], 2))
    out = await nhsa(p2, envelope("3505", {"selinfo": sale("BCOMMA", [], 24, drug_trac_codg=whole)}))
    assert out["infcode"] == 0, out
    assert (out["output"]["tracecode"]["accepted"], out["output"]["tracecode"]["rejected"]) == (1, [])
    left = await p2.ok("POST", "/v1/verify", {"codes": [whole, part]})
    assert [item["units_left"] for item in left["items"]] == [0, 24], left
    # a list of codes is still split
    out = await nhsa(
        p2, envelope("3505", {"selinfo": sale("BLIST", [], 48, drug_trac_codg=f"{w['units'][0]},{part}")})
    )
    assert out["output"]["tracecode"]["accepted"] == 2, out


async def test_the_person_is_never_kept_however_spelled_or_wherever_sent(admin: Api, db: Any) -> None:
    """Found by a security probe: the person's fields were left out of the kept row only
    under their exact lower-case names. ``psnNo`` (the [C] client model's camelCase), one
    in a trace-code item beside the code, or one in an object of its own were kept, and
    answered back by 3511. Nor are the prescriber's and pharmacist's ID-card numbers
    kept (their names and practice certificates are)."""
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    unsaid = {"psn_no": "", "certno": "", "psn_name": ""}
    rows = [
        {**sale("Y1", [u[0]], 24, **unsaid), "psnNo": "45000011110001", "psnName": "李四", "CERTNO": "X1"},
        {**sale("Y2", [], 24, **unsaid), "drugtracinfo": [{"drug_trac_codg": u[1], "psn_No": "4500111102"}]},
        {**sale("Y3", [], 24, **unsaid), "exp_content": {"psn_no": "45000011110003", "note": "kept"}},
        {**sale("Y4", [], 24, **unsaid), "prsc_dr_certno": "450103197001011111", "phar_certno": "4501031980"},
    ]
    for row in rows:
        assert (await nhsa(p2, envelope("3505", {"selinfo": row})))["infcode"] == 0
    kept = await db.fetchval("SELECT string_agg(row_data::text, ' ') FROM nhsa_records WHERE org = 'P2'")
    for secret in ("45000011110001", "李四", "X1", "4500111102", "45000011110003", "4501031"):
        assert secret not in kept, (secret, kept)
    assert "kept" in kept  # the rest of the object is
    out = await nhsa(p2, envelope("3511", {"data": {"begndate": "2026-03-01", "enddate": "2026-03-31"}}))
    sold = {r["fixmedinsBchno"]: r for r in out["output"]["data"]}
    assert sold["Y4"]["prscDrName"] == "李医生", sold["Y4"]
    assert "prscDrCertno" not in sold["Y4"], sold["Y4"]
    item = await db.fetchval("SELECT row_data FROM nhsa_records WHERE fixmedins_bchno = 'Y2'")
    assert u[1] in json.dumps(item)


PERSON = "45010319900101888X"


@pytest.mark.parametrize(
    "look_alike",
    [
        PERSON.translate({ord(c): ord(c) + 0xFEE0 for c in "0123456789X"}),  # full-width
        PERSON + "\u200b",  # a zero-width space
        PERSON[:10] + "\u202e" + PERSON[10:],  # a direction mark
        PERSON[:10] + "\t" + PERSON[10:],  # a control character
    ],
)
async def test_a_look_alike_person_number_is_refused_as_a_settlement_refuses_it(
    admin: Api, db: Any, look_alike: str
) -> None:
    """Found by a probe: 3505/3506 kept the hash of a look-alike psn_no (full-width
    digits, an invisible character), a person of its own, so 3511/3513 by the person's
    real number missed the sale, while a settlement refuses the same number (400 naming
    psn_no). Rows are held to the settlement's rule (-1 naming the row's psn_no; in a
    batch the row is listed and the others kept), and so is a query's psn_no; no
    answer repeats the number."""
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    span = {"begndate": "2026-03-01", "enddate": "2026-03-31"}
    for infno, row in (
        ("3505", sale("PA1", [u[0]], 24, psn_no=look_alike)),
        ("3506", sale_return("PA2", [u[0]], 24, psn_no=look_alike)),
    ):
        out = await nhsa(p2, envelope(infno, {"selinfo": row}))
        assert out["infcode"] == -1, out
        assert out["err_msg"].startswith("input.selinfo.psn_no: "), out
        assert PERSON not in out["err_msg"], out
        assert look_alike not in out["err_msg"], out
    assert await _stored_events(db) == 0
    assert await _units_left(p2, u[0]) == 24
    rows = [sale("PB1", [u[1]], 24, psn_no=look_alike), sale("PB2", [u[2]], 24, psn_no=PERSON)]
    out = await nhsa(p2, envelope("3505A", {"selinfoDetail": rows}))
    assert out["infcode"] == 0, out
    [bad] = out["output"]["selinfoErrDetail"]
    assert bad["fixmedins_bchno"] == "PB1"
    assert bad["msgRslt"].startswith("input.selinfoDetail[0].psn_no: "), bad
    assert (await _units_left(p2, u[1]), await _units_left(p2, u[2])) == (24, 0)
    # the person's sale is found by the number as written plainly (its x either way) ...
    for infno in ("3511", "3513"):
        for number in (PERSON, PERSON.lower()):
            found = await nhsa(p2, envelope(infno, {"data": {**span, "psn_no": number}}))
            assert [r["fixmedinsBchno"] for r in found["output"]["data"]] == ["PB2"], found
        # ... and a query by a look-alike is refused, not answered with nobody's records
        out = await nhsa(p2, envelope(infno, {"data": {**span, "psn_no": look_alike}}))
        assert out["infcode"] == -1, out
        assert out["err_msg"].startswith("input.data.psn_no: "), out
    # a settlement says the same of the same number
    claim = pack_claim("SPA", u[3], SALE_MINUTES, "P2")
    refused = await (await admin.key_for("insurer")).post("/v1/settlements", {**claim, "psn_no": look_alike})
    assert refused.status_code == 400, refused.text
    [error] = refused.json()["errors"]
    assert error["field"] == "psn_no", error
    assert PERSON not in error["message"], error


async def test_a_key_sent_in_two_casings_is_taken_only_with_one_value(admin: Api, db: Any) -> None:
    """Row and query keys are read in any case (MDTRT_SETL_TYPE). Found by a probe: a key
    sent twice, in two casings with different values (begndate and BEGNDATE), was taken
    and one of the values silently chosen. Different values are -1 naming the field (in
    a batch the row is listed, the others kept); the same value twice is taken."""
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    span = {"begndate": "2026-03-01", "enddate": "2026-03-31"}
    out = await nhsa(p2, envelope("3505", {"selinfo": {**sale("KC1", [u[0]], 24), "SEL_RETN_CNT": 6}}))
    assert out["infcode"] == -1, out
    assert out["err_msg"].startswith("input.selinfo.sel_retn_cnt: is sent as "), out
    item = {"drug_trac_codg": u[0], "DRUG_TRAC_CODG": u[1]}
    out = await nhsa(p2, envelope("3505", {"selinfo": {**sale("KC2", [], 24), "drugtracinfo": [item]}}))
    assert out["infcode"] == -1, out
    assert out["err_msg"].startswith("input.selinfo.drugtracinfo[0].drug_trac_codg: is sent as "), out
    assert await _stored_events(db) == 0
    rows = [
        {**sale("KC3", [u[0]], 24), "Sel_Retn_Cnt": 6},
        {**sale("KC4", [u[1]], 24), "SEL_RETN_CNT": 24, "drugtracinfo": [{**item, "drug_trac_codg": u[1]}]},
    ]
    out = await nhsa(p2, envelope("3505A", {"selinfoDetail": rows}))
    assert out["infcode"] == 0, out
    [bad] = out["output"]["selinfoErrDetail"]
    assert bad["msgRslt"].startswith("input.selinfoDetail[0].sel_retn_cnt: "), bad
    assert (await _units_left(p2, u[0]), await _units_left(p2, u[1])) == (24, 0)  # the same value twice
    for infno in ("3508", "3511", "3513"):
        data = {**span, "medins_list_codg": "YP0001", "BEGNDATE": "2026-03-06"}
        out = await nhsa(p2, envelope(infno, {"data": data}))
        assert out["infcode"] == -1, out
        assert out["err_msg"].startswith("input.data.begndate: is sent as "), out
        same = await nhsa(p2, envelope(infno, {"data": {**data, "BEGNDATE": "2026-03-01"}}))
        assert same["infcode"] == 0, same
    found = await nhsa(p2, envelope("3511", {"data": {**span, "ENDDATE": "2026-03-31"}}))
    assert [r["fixmedinsBchno"] for r in found["output"]["data"]] == ["KC4"]


async def test_a_key_over_its_rate_limit_is_answered_in_the_envelope(admin: Api, settings: Any) -> None:
    """A till that sends faster than its key's limit gets the 429 every route gives, with
    Retry-After, but in the response envelope a 35xx client reads (infcode -1, err_msg
    naming the key's limit), not problem details; the refused upload stores nothing."""
    w = await _world(admin)
    u = w["units"]
    limited = replace(settings, rate_limits={**settings.rate_limits, "org": ("minute", 2)})
    async with AsyncTestClient(app=create_app(limited)) as client:
        p2 = Api(client, w["keys"]["P2"].key)
        first = await p2.post("/v1/nhsa", envelope("3505", {"selinfo": sale("B900", [u[0]], 24)}))
        assert first.json()["infcode"] == 0, first.text
        await p2.post("/v1/nhsa", envelope("3505", {"selinfo": sale("B901", [u[1]], 24)}))
        over = await p2.post("/v1/nhsa", envelope("3505", {"selinfo": sale("B902", [u[2]], 24)}))
    assert over.status_code == 429, over.text
    assert over.headers["content-type"].startswith("application/json"), over.headers
    assert 1 <= int(over.headers["retry-after"]) <= 60
    out = over.json()
    assert out["infcode"] == -1, out
    assert out["err_msg"].startswith("(key): this key sent more than its rate limit"), out
    assert out["output"]["result"]["retRslt"] == "0", out
    assert await _units_left(w["keys"]["P2"], u[2]) == 24  # B902 took nothing


async def test_an_upload_while_the_database_is_down_is_answered_in_the_envelope(settings: Any) -> None:
    """PostgreSQL stopped under the service: an upload gets the 503 with Retry-After every
    route gives, in the response envelope (infcode -1), not problem details, so a 35xx
    client sees that it must send again."""
    from service.cli import _create_key
    from service.embedded import stop_postgres
    from tests.integration.conftest import own_postgres

    async with own_postgres("tracecode-nhsa-outage-") as (root, url):
        app = create_app(replace(settings, database_url=url, redis_url=None))
        async with AsyncTestClient(app=app) as client:
            _, secret = await _create_key(url, "admin", None)
            admin = Api(client, secret)
            await admin.ok(
                "POST",
                "/v1/orgs",
                {
                    "id": "P2",
                    "name": "P2 Ltd",
                    "kind": "pharmacy",
                    "region": "450103",
                    "fixmedins_code": P1_CODE,
                },
                201,
            )
            p2 = await admin.key_for("org", "P2")
            await asyncio.to_thread(stop_postgres, root)
            resp = await p2.post(
                "/v1/nhsa", envelope("3505", {"selinfo": sale("B950", [cn20("8123456", 1)], 24)})
            )
    assert resp.status_code == 503, resp.text
    assert resp.headers["content-type"].startswith("application/json"), resp.headers
    assert int(resp.headers["retry-after"]) > 0
    out = resp.json()
    assert out["infcode"] == -1, out
    assert out["err_msg"].startswith("(service): the database is unavailable"), out
