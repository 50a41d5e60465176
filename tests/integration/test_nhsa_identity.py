"""A record is its key, (institution, interface, fixmedins_bchno): sent again it is one
fact whatever codes it carries now, and sent again with other contents it changes
nothing and says so."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.helpers import Api
from tests.integration.test_nhsa import _units_left, _world, envelope, nhsa, sale
from tests.integration.test_nhsa_ledger import purchase

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_a_split_sale_sent_again_with_its_codes_in_another_order_is_one_fact(
    admin: Api, db: Any
) -> None:
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    await nhsa(p2, envelope("3505", {"selinfo": sale("Z30", [u[0], u[1]], 30, split="1")}))
    before = [await _units_left(p2, c) for c in u[:2]]
    assert before == [0, 18]
    again = await nhsa(p2, envelope("3505", {"selinfo": sale("Z30", [u[1], u[0]], 30, split="1")}))
    assert again["infcode"] == -1  # the same serial with other contents
    assert "fixmedins_bchno" in again["err_msg"]
    assert [await _units_left(p2, c) for c in u[:2]] == before
    assert await db.fetchval("SELECT count(*) FROM flags WHERE kind = 'DUPLICATE'") == 0
    # sent again as it was first: one fact, its event a duplicate
    same = await nhsa(p2, envelope("3505A", {"selinfoDetail": [sale("Z30", [u[0], u[1]], 30, split="1")]}))
    assert same["infcode"] == 0
    assert same["output"]["result"]["retRslt"] == "1"
    assert same["output"]["tracecode"]["duplicates"] == 1
    assert same["output"]["tracecode"]["records"] == 0
    assert [await _units_left(p2, c) for c in u[:2]] == before


async def test_one_serial_twice_in_a_batch_with_other_codes_keeps_the_first(admin: Api) -> None:
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    inv = await admin.key_for("investigator")
    rows = [sale("Y020", [u[0]], 24), sale("Y020", [u[1]], 24), sale("Y021", [u[2]], 24)]
    out = await nhsa(p2, envelope("3505A", {"selinfoDetail": rows}))
    assert out["infcode"] == 0
    assert out["output"]["result"]["retRslt"] == "0"
    errors = out["output"]["selinfoErrDetail"]
    assert [e["fixmedins_bchno"] for e in errors] == ["Y020"]
    assert "input.selinfoDetail[1].fixmedins_bchno" in errors[0]["msgRslt"]
    assert out["output"]["tracecode"]["records"] == 2
    assert [await _units_left(p2, c) for c in u[:3]] == [0, 24, 0]
    ledger = (await inv.ok("GET", "/v1/orgs/P2/ledger"))["items"][0]
    assert ledger["by_kind"]["sale"] == 48


async def test_the_same_row_twice_in_a_batch_is_one_fact(admin: Api) -> None:
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    row = sale("Y030", [u[0]], 24)
    out = await nhsa(p2, envelope("3505A", {"selinfoDetail": [row, copy.deepcopy(row)]}))
    assert out["output"]["result"]["retRslt"] == "1"
    assert out["output"]["tracecode"]["accepted"] == 1
    assert out["output"]["tracecode"]["duplicates"] == 1
    assert out["output"]["tracecode"]["records"] == 1


async def test_a_sale_with_a_code_that_is_no_code_is_refused_and_taken_corrected_under_its_serial(
    admin: Api,
) -> None:
    """Found by a probe: the sale was stored without the bad code and answered retRslt
    "0", which a system reads as "not stored"; sent again corrected under its serial it
    was refused as other contents, and under a new serial the ledger counted the sale
    twice. A code that is no code now makes the row bad input: -1 naming the field,
    nothing stored, and the corrected row is taken under the same serial, once."""
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    first = await nhsa(p2, envelope("3505", {"selinfo": sale("X060", [u[0], "not-a-code"], 48)}))
    assert first["infcode"] == -1, first
    assert first["err_msg"].startswith("input.selinfo.drugtracinfo[1].drug_trac_codg: not a CN20 code"), first
    assert first["output"]["result"]["retRslt"] == "0"
    assert await _units_left(p2, u[0]) == 24  # nothing stored
    corrected = await nhsa(p2, envelope("3505", {"selinfo": sale("X060", [u[0], u[1]], 48)}))
    assert corrected["infcode"] == 0, corrected
    assert corrected["output"]["result"]["retRslt"] == "1", corrected
    assert corrected["output"]["tracecode"]["accepted"] == 2
    assert [await _units_left(p2, c) for c in u[:2]] == [0, 0]
    inv = await admin.key_for("investigator")
    ledger = (await inv.ok("GET", "/v1/orgs/P2/ledger"))["items"][0]
    assert ledger["by_kind"]["sale"] == 48, ledger  # the sale once


async def test_a_record_resent_in_another_spelling_is_one_fact(admin: Api) -> None:
    """A till's retry may be serialised anew: numbers for numeric strings (or "48.0000"
    for 48, "12.50" for 12.5), null or a
    missing key for "", the legacy drug_trac_codg for drugtracinfo, the packs of a
    whole-pack sale in another order. It is the same record: its events duplicates,
    nothing refused (it was refused as "other contents")."""
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    first = sale("W070", [u[0], u[1]], 48, rxno="", memo="")
    out = await nhsa(p2, envelope("3505", {"selinfo": first}))
    assert out["infcode"] == 0, out
    assert out["output"]["tracecode"]["accepted"] == 2, out
    respelled = copy.deepcopy(first)
    respelled.update(rx_flag=1, trdn_flag=0, sel_retn_cnt="48.0000", finl_trns_pric="12.50", rxno=None)
    del respelled["memo"]
    respelled["drugtracinfo"] = [{"drug_trac_codg": u[1]}]
    respelled["drug_trac_codg"] = u[0]
    again = await nhsa(p2, envelope("3505A", {"selinfoDetail": [respelled]}))
    assert again["infcode"] == 0, again
    assert again["output"]["result"]["retRslt"] == "1", again
    assert again["output"]["tracecode"]["duplicates"] == 2
    assert again["output"]["tracecode"]["records"] == 0
    # another quantity under the same serial is still other contents
    other = copy.deepcopy(first)
    other["sel_retn_cnt"] = 24
    refused = await nhsa(p2, envelope("3505", {"selinfo": other}))
    assert refused["infcode"] == -1, refused
    assert "fixmedins_bchno" in refused["err_msg"]
    # and so is an identifier that only reads as the same number: "000123" is not "123"
    for field, was, now in (("mdtrt_sn", "000123", "123"), ("rtal_docno", "1.50", "1.5")):
        sent = await nhsa(
            p2, envelope("3505", {"selinfo": {**first, "fixmedins_bchno": f"W07{field}", field: was}})
        )
        assert sent["infcode"] == 0, sent
        changed = await nhsa(
            p2, envelope("3505", {"selinfo": {**first, "fixmedins_bchno": f"W07{field}", field: now}})
        )
        assert changed["infcode"] == -1, (field, changed)
    assert [await _units_left(p2, c) for c in u[:2]] == [0, 0]


async def test_a_record_resent_with_its_times_and_dates_spelled_another_way_is_one_fact(admin: Api) -> None:
    """Found by a probe: a retry serialised anew (``T`` for the space, fractions of a
    second, UTC with its offset, a date as a date-time at midnight) names the same
    instant and the same days, yet it was refused as other contents; told to send it
    under a new serial, a purchase (no codes to stop it) was counted twice."""
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    inv = await admin.key_for("investigator")
    bought = purchase("V090", 240)
    assert (await nhsa(p2, envelope("3503", {"purcinfo": bought})))["infcode"] == 0
    sold = sale("V091", [u[0]], 24)
    assert (await nhsa(p2, envelope("3505", {"selinfo": sold})))["infcode"] == 0
    before = (await inv.ok("GET", "/v1/orgs/P2/ledger"))["items"][0]
    respellings: list[tuple[str, dict[str, Any]]] = [
        ("3503", {"purcinfo": {**bought, "purc_retn_stoin_time": "2026-03-02T09:00:00"}}),
        ("3503", {"purcinfo": {**bought, "purc_retn_stoin_time": "2026-03-02 09:00:00.000"}}),
        ("3503", {"purcinfo": {**bought, "purc_retn_stoin_time": "2026-03-02T01:00:00Z"}}),
        ("3503", {"purcinfo": {**bought, "manu_date": "2026-01-05 00:00:00"}}),
        ("3505", {"selinfo": {**sold, "sel_retn_time": "2026-03-05T10:00:00+08:00"}}),
        ("3505", {"selinfo": {**sold, "expy_end": "2028-12-31 00:00:00"}}),
    ]
    for infno, input_ in respellings:
        again = await nhsa(p2, envelope(infno, input_))
        assert again["infcode"] == 0, (input_, again)
        assert again["output"]["result"]["retRslt"] == "1", again
        assert again["output"]["tracecode"]["records"] == 0, again
    assert (await inv.ok("GET", "/v1/orgs/P2/ledger"))["items"][0] == before  # counted once
    assert await _units_left(p2, u[0]) == 0
    # another instant, or another day, is still other contents
    for infno, input_ in (
        ("3503", {"purcinfo": {**bought, "purc_retn_stoin_time": "2026-03-02 09:00:01"}}),
        ("3503", {"purcinfo": {**bought, "purc_retn_stoin_time": "2026-03-02T09:00:00Z"}}),
        ("3505", {"selinfo": {**sold, "manu_date": "2026-01-06"}}),
    ):
        refused = await nhsa(p2, envelope(infno, input_))
        assert refused["infcode"] == -1, (input_, refused)
        assert "fixmedins_bchno" in refused["err_msg"], refused
