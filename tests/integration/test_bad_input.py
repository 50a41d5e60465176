"""Hostile input gets a 400 problem, never a 500."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import Api, cn20, event, small_world

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_nul_bad_utf8_and_extreme_dates_are_400(admin: Api) -> None:
    w = await small_world(admin)
    m, inv = w["keys"]["M1"], await admin.key_for("investigator")
    ins = await admin.key_for("insurer")
    nul_org = {"id": "X1", "name": "bad\u0000name", "kind": "pharmacy", "region": "450100"}
    refused = await admin.post("/v1/orgs", nul_org)
    assert refused.status_code == 400
    assert refused.json()["errors"] == [
        {"field": "name", "message": "NUL characters (\\u0000) are not allowed in text"}
    ]
    claim = {"setl_id": "S1", "org": "P1", "psn_no": "1", "at": "2026-03-05T10:00:00+08:00", "mode": "settle"}
    claim["lines"] = [{"line_no": 1, "med_list_codg": "X", "quantity": 1, "codes": ["ok", "b\u0000d"]}]
    refused = await ins.post("/v1/settlements", claim)
    assert refused.status_code == 400
    assert refused.json()["errors"][0]["field"] == "lines[0].codes[1]"
    literal = {**nul_org, "name": "back\\u0000slash"}  # a backslash, then the text u0000
    assert (await admin.post("/v1/orgs", literal)).status_code == 201
    headers = {**m.headers, "content-type": "application/json"}
    raw = await m.client.post("/v1/events", headers=headers, content=b'{"events": [\xff\xfe]}')
    assert raw.status_code == 400
    early = {
        "events": [
            {
                "event_id": "8f0c5c52-8d43-4d7e-9d59-6a2f0d9b7a10",
                "type": "receive",
                "at": "0001-01-01T00:00:00+01:00",
                "org": "M1",
                "codes": ["81234560000000000001"],
            }
        ]
    }
    resp = await m.post("/v1/events", early)
    assert resp.status_code == 400
    assert resp.json()["errors"][0]["field"] == "events[0].at"
    setl = {
        "setl_id": "S",
        "org": "P1",
        "psn_no": "1",
        "at": "0001-01-01T00:00:00+01:00",
        "lines": [{"line_no": 1, "med_list_codg": "X", "quantity": 1, "codes": []}],
    }
    assert (await ins.post("/v1/settlements", setl)).status_code == 400
    assert (await inv.get("/v1/flags?since=0001-01-01T00:00:00%2B01:00")).status_code == 400
    assert (await inv.get("/v1/flags/\u00b2")).status_code == 404
    assert (await inv.get("/v1/orgs/a%00b/stats")).status_code in (400, 404)
    assert (await inv.get("/v1/lots/8123456/L%00")).status_code in (400, 404)
    assert (await inv.get("/v1/lots?product_id=8123456&lot=L%00")).status_code in (400, 404)
    assert (await ins.get("/v1/settlements/S%00")).status_code in (400, 404)
    assert (await m.get("/v1/codes/81234560000000000001/verify?org=P%001")).status_code in (400, 403)


SETL_ID_MEANS = "must be 1 to 64 letters, digits, '.', '_' or '-', the first a letter or digit"


async def test_a_settlement_id_outside_its_pattern_is_400_and_stores_nothing(admin: Api, db: Any) -> None:
    w = await small_world(admin)
    ins, p1 = await admin.key_for("insurer"), w["keys"]["P1"]
    claim = {
        "setl_id": "S 1/2",
        "org": "P1",
        "psn_no": "1",
        "at": "2026-03-05T10:00:00+08:00",
        "lines": [{"line_no": 1, "med_list_codg": "X", "quantity": 1, "codes": []}],
    }
    for bad in ("S 1/2", "-S1", "S?1", "x" * 65, ""):
        resp = await ins.post("/v1/settlements", {**claim, "setl_id": bad})
        assert resp.status_code == 400, bad
        # said in words, not as the regex with its end guard (a probe met "…$(?!\\n)")
        assert resp.json()["errors"][0] == {"field": "setl_id", "message": SETL_ID_MEANS}, bad
    event = {
        "event_id": "8f0c5c52-8d43-4d7e-9d59-6a2f0d9b7a11",
        "type": "dispense",
        "at": "2026-03-05T10:00:00+08:00",
        "org": "P1",
        "codes": ["81234560000000000001"],
        "setl_id": "S:1",
    }
    resp = await p1.post("/v1/events", {"events": [event]})
    assert resp.status_code == 400
    assert resp.json()["errors"][0] == {"field": "events[0].setl_id", "message": SETL_ID_MEANS}
    for path in ("/v1/settlements/S:1", "/v1/settlements/S%201"):
        resp = await ins.get(path)
        assert resp.status_code == 400
        assert resp.json()["errors"][0] == {"field": "setl_id", "message": SETL_ID_MEANS}
    assert (await ins.post("/v1/settlements/S:1/reversal", {})).status_code == 400
    ok = await ins.post("/v1/settlements", {**claim, "setl_id": "450000G.2026-03_05"})
    assert ok.status_code == 200  # letters, digits, '.', '_' and '-' are a settlement id
    # only that one was stored: none of the refused ids, no dispense event
    assert [r["setl_id"] for r in await db.fetch("SELECT setl_id FROM settlements")] == ["450000G.2026-03_05"]
    assert await db.fetchval("SELECT count(*) FROM events") == 0


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/v1/lots/abc/L1", "product_id"),  # as POST /v1/recalls names it, not a 404
        (f"/v1/lots/8123456/{'L' * 65}", "lot"),
        ("/v1/lots?product_id=abc&lot=L1", "product_id"),
        (f"/v1/lots?product_id=8123456&lot={'L' * 65}", "lot"),
        ("/v1/lots?product_id=8123456&lot=", "lot"),  # empty: no lot, not every lot
        ("/v1/lots?product_id=8123456", "lot"),
        ("/v1/lots?product_id=8123456&lot=L1&lot=L2", "lot"),  # which one counts would be a guess
        ("/v1/lots?product_id=8123456&lot=L1&org=P1", "org"),  # not a parameter there
        ("/v1/orgs/P1/ledger?med_list_codg=", "med_list_codg"),  # empty: not "no item"
    ],
)
async def test_malformed_investigation_paths_are_400_naming_the_field(
    admin: Api, path: str, field: str
) -> None:
    """Found in review: these answered 404 or an empty ledger, as if the input were fine."""
    await small_world(admin)
    inv = await admin.key_for("investigator")
    resp = await inv.get(path)
    assert resp.status_code == 400, resp.text
    assert [e["field"] for e in resp.json()["errors"]] == [field], resp.text


@pytest.mark.parametrize("lot", ["L2603 ", " L2603", "L2603\u200b", "\u202e3062L", "L26\n03", "Ｌ２６０３"])
async def test_a_lot_that_would_look_like_another_is_refused(admin: Api, db: Any, lot: str) -> None:
    """A lot is printed on the pack: one with an invisible character, a direction mark,
    a space at an end or full-width letters would be another lot, which a recall of the
    printed one misses (found by a probe: all were taken). A commission naming one, and a
    recall of one, are 400s naming ``lot``; nothing is stored."""
    w = await small_world(admin)
    made = event("commission", "M1", [cn20(w["unit"], 1)], 0, lot=lot, expiry="2030-12-31")
    out = await w["keys"]["M1"].ok("POST", "/v1/events", {"events": [made]}, 400)
    assert [e["field"] for e in out["errors"]] == ["events[0].lot"], out
    assert await db.fetchval("SELECT count(*) FROM codes") == 0
    inv = await admin.key_for("investigator")
    recall = {"product_id": "8123456", "lot": lot, "reason": "impurity"}
    out = await inv.ok("POST", "/v1/recalls", recall, 400)
    assert [e["field"] for e in out["errors"]] == ["lot"], out
    assert await db.fetchval("SELECT count(*) FROM recalls") == 0
    # a lot stored before the rule (written here as such data would be) can still be recalled
    await db.execute(
        """INSERT INTO codes (code, product_id, kind, lot, state, last_at)
           VALUES ($1, '8123456', 'cn20', $2, 'commissioned', now())""",
        cn20(w["unit"], 2),
        lot,
    )
    assert (await inv.ok("POST", "/v1/recalls", recall, 201))["codes_recalled"] == 1
