"""NHSA 进销存 uploads through POST /v1/nhsa, with payloads shaped as institutions' systems
send them (../shared/nhsa/FIELDS.md), and the registry's fixmedins_code."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.helpers import Api, cn20, event, small_world

pytestmark = pytest.mark.asyncio(loop_scope="session")

MED = "XJ01CAA040A001010104256"
P1_CODE = "P45010300001"


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
    w["units"] = units
    return w


async def nhsa(api: Api, body: Any) -> dict[str, Any]:
    out: dict[str, Any] = await api.ok("POST", "/v1/nhsa", body)
    return out


async def _stored_events(db: Any) -> int:
    return int(await db.fetchval("SELECT count(*) FROM events WHERE type IN ('dispense', 'return')"))


async def test_registry_fixmedins_code(admin: Api) -> None:
    body = {"id": "P7", "name": "P7", "kind": "pharmacy", "region": "450103", "fixmedins_code": "P45010300007"}
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
