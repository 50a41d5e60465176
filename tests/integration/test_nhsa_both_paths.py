"""The same NHSA uploads stored the same way whichever path takes them: the one statement
of the optimistic ingest (``usecases.events``, with ``usecases.nhsa._appender``) or the
locked transaction (``_ledger_writer``). Each scenario runs with the one-statement path
turned off, then, on emptied tables, with it on; everything stored (records, uploads,
items' ledgers, sales, code rows, events, flags) and every answer must be equal. Then
races of the two paths on a pool of their own, and the lock order they share.

Written in review of the one-statement sale (b6e769f); the deadlock test found that a
stock count locked its item's ledger before its counted packs, the reverse of a sale
written in one statement."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from prometheus_client import REGISTRY

from service.cli import _create_key
from tests.helpers import Api
from tests.integration.conftest import wipe
from tests.integration.test_nhsa import IDS, MED, _world, envelope, nhsa, sale, uploads_at_once
from tests.integration.test_nhsa_ledger import OTHER, change, purchase

pytestmark = pytest.mark.asyncio(loop_scope="session")


def _written() -> float:
    labels = {"operation": "ingest", "outcome": "written"}
    return REGISTRY.get_sample_value("tracecode_optimistic_writes_total", labels) or 0.0


_PATHS: list[float] = []  # per upload of a scenario: 1 if it was written in one statement


async def post(api: Api, body: Any) -> dict[str, Any]:
    """POST /v1/nhsa, noting whether the upload was written in one statement."""
    before = _written()
    out = await nhsa(api, body)
    _PATHS.append(_written() - before)
    return out


async def _dump(db: Any) -> dict[str, Any]:
    records = [
        dict(r)
        for r in await db.fetch(
            """SELECT r.org, r.interface, r.fixmedins_bchno, r.med_list_codg, r.kind, r.units, r.delta,
                      r.at, r.codes, r.event_ids, r.msgid, r.row_data::text AS row_text,
                      r.deleted_at IS NOT NULL AS deleted, u.msgid AS upload_msgid,
                      u.envelope::text AS upload_envelope
               FROM nhsa_records r LEFT JOIN nhsa_uploads u ON u.org = r.org AND u.upload_id = r.upload_id
               ORDER BY r.interface, r.fixmedins_bchno"""
        )
    ]
    items = [
        dict(r)
        for r in await db.fetch(
            "SELECT org, med_list_codg, balance, units_in, units_out, counted, counted_at, last_at, stale "
            "FROM nhsa_items ORDER BY org, med_list_codg"
        )
    ]
    uploads = await db.fetchval("SELECT count(*) FROM nhsa_uploads")
    orphans = await db.fetchval(
        "SELECT count(*) FROM nhsa_uploads u WHERE NOT EXISTS "
        "(SELECT 1 FROM nhsa_records r WHERE r.org = u.org AND r.upload_id = u.upload_id)"
    )
    cons = [
        dict(r)
        for r in await db.fetch(
            "SELECT code, sale_kind, sale_id, setl_id, event_id, org, at, units, "
            "reversed_at IS NOT NULL AS rev FROM consumptions ORDER BY code, sale_kind, sale_id"
        )
    ]
    codes = [
        dict(r)
        for r in await db.fetch(
            "SELECT code, state, custodian, destination, units_left, last_at FROM codes ORDER BY code"
        )
    ]
    events = [
        dict(r)
        for r in await db.fetch(
            "SELECT event_id, type, at, org, to_org, from_org, quantity, setl_id, ref, code_count "
            "FROM events WHERE ref IS NOT NULL ORDER BY event_id"
        )
    ]
    flags = [
        dict(r)
        for r in await db.fetch("SELECT kind, code, org, detail FROM flags ORDER BY kind, code, detail")
    ]

    def fresh(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from datetime import UTC, datetime

        cut = datetime(2026, 6, 1, tzinfo=UTC)
        return [
            {k: ("<now>" if isinstance(v, datetime) and v > cut else v) for k, v in r.items()} for r in rows
        ]

    codes, events, cons = fresh(codes), fresh(events), fresh(cons)
    return {
        "records": records,
        "items": items,
        "uploads": uploads,
        "orphans": orphans,
        "consumptions": cons,
        "codes": codes,
        "events": events,
        "flags": flags,
    }


def _tracecode(out: dict[str, Any]) -> Any:
    o = out.get("output") or {}
    tc = o.get("tracecode")
    if tc is not None:
        tc = {**tc, "flags": sorted((f["kind"], f["code"]) for f in tc["flags"])}
    return (out["infcode"], out.get("err_msg"), o.get("result"), tc)


async def _simple(admin: Api) -> list[Any]:
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    out = [await post(p2, envelope("3505", {"selinfo": sale("F1", [u[0]], 24)}))]
    out.append(
        await post(
            p2,
            envelope(
                "3505", {"selinfo": sale("F2", [u[1]], 6, split="1", sel_retn_time="2026-03-05 11:00:00")}
            ),
        )
    )
    out.append(
        await post(
            p2,
            envelope(
                "3505", {"selinfo": sale("F3", [u[1]], 6, split="1", sel_retn_time="2026-03-05 12:00:00")}
            ),
        )
    )
    out.append(await post(p2, envelope("3505", {"selinfo": sale("F1", [u[0]], 24)})))
    out.append(await post(p2, envelope("3505", {"selinfo": sale("F1", [u[2]], 24)})))
    return [_tracecode(o) for o in out]


async def _settled(admin: Api) -> list[Any]:
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    insurer = await admin.key_for("insurer")
    claim = {
        "setl_id": "S301",
        "org": "P2",
        "psn_no": "45000012345678",
        "at": "2026-03-05T10:00:00+08:00",
        "lines": [{"line_no": 1, "med_list_codg": MED, "quantity": 24, "codes": [u[1]]}],
    }
    assert (await insurer.ok("POST", "/v1/settlements", claim))["decision"] == "accepted"
    sold = [("B031", u[1], "S301", "10:30"), ("B032", u[2], "S302", "10:40")]
    out = [
        await post(
            p2,
            envelope(
                "3505",
                {"selinfo": sale(bchno, [code], 24, setl_id=setl_id, sel_retn_time=f"2026-03-05 {hm}:00")},
            ),
        )
        for bchno, code, setl_id, hm in sold
    ]
    claim2 = {
        **claim,
        "setl_id": "S302",
        "lines": [{"line_no": 1, "med_list_codg": MED, "quantity": 24, "codes": [u[2]]}],
    }
    assert (await insurer.ok("POST", "/v1/settlements", claim2))["decision"] == "accepted"
    return [_tracecode(o) for o in out]


async def _inventory(admin: Api) -> list[Any]:
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    changes = [
        ("I1", "102", [u[0]], "09:00"),
        ("I2", "101", [u[0]], "09:10"),
        ("I3", "104", [u[1]], "09:20"),
        ("I4", "107", [u[1], u[2]], "09:30"),
    ]
    out = [
        await post(
            p2,
            envelope("3502", {"invinfo": change(bchno, kind, 24, codes, inv_chg_time=f"2026-03-05 {hm}:00")}),
        )
        for bchno, kind, codes, hm in changes
    ]
    return [_tracecode(o) for o in out]


async def _batches(admin: Api) -> list[Any]:
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    other = purchase("O1", 50, med_list_codg=OTHER, purc_retn_stoin_time="2026-03-02 09:00:00")
    assert (await post(p2, envelope("3503", {"purcinfo": other})))["infcode"] == 0
    rows = [
        sale("M1", [u[0]], 24, sel_retn_time="2026-03-05 10:00:00"),
        sale("M2", [], 10, sel_retn_time="2026-03-05 10:00:00", med_list_codg=OTHER),
        sale("M3", ["not-a-code", u[1]], 24, sel_retn_time="2026-03-05 10:05:00"),
        sale("M1", [u[0]], 24, sel_retn_time="2026-03-05 10:00:00"),
        sale("M2", [u[3]], 10, sel_retn_time="2026-03-05 10:00:00", med_list_codg=OTHER),
    ]
    out = [await post(p2, envelope("3505A", {"selinfoDetail": rows}))]
    rows2 = [
        sale("M3", ["not-a-code", u[1]], 24, sel_retn_time="2026-03-05 10:05:00"),
        sale("M4", [u[2]], 24, sel_retn_time="2026-03-05 11:05:00", PSN_NO="x", CERTNO="y"),
    ]
    out.append(await post(p2, envelope("3505A", {"selinfoDetail": rows2})))
    return [_tracecode(o) for o in out]


async def _deleted(admin: Api) -> list[Any]:
    from tests.integration.test_nhsa import sale_return
    from tests.integration.test_nhsa_ledger import deletion

    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    out = [await post(p2, envelope("3505", {"selinfo": sale("D1", [u[0]], 24)}))]
    out.append(
        await post(
            p2,
            envelope(
                "3505",
                {"selinfo": sale("D2", [u[1], u[2]], 30, split="1", sel_retn_time="2026-03-05 11:00:00")},
            ),
        )
    )
    out.append(
        await post(
            p2,
            envelope(
                "3505",
                {"selinfo": sale("D3", [u[3]], 24, setl_id="SX3", sel_retn_time="2026-03-05 11:30:00")},
            ),
        )
    )
    out.append(await post(p2, envelope("3507", {"data": deletion("D1", "4")})))
    out.append(await post(p2, envelope("3507", {"data": deletion("D2", "4")})))
    out.append(
        await post(
            p2,
            envelope(
                "3506",
                {
                    "selinfo": sale_return(
                        "RD3", [u[3]], 24, setl_id="SX3", sel_retn_time="2026-03-05 12:00:00"
                    )
                },
            ),
        )
    )
    left = [int((await p2.ok("GET", f"/v1/codes/{c}/verify"))["units_left"]) for c in u]
    q = await p2.ok(
        "POST",
        "/v1/nhsa",
        envelope(
            "3513", {"data": {"begndate": "2026-03-01", "enddate": "2026-03-31", "fixmedins_bchno": "D3"}}
        ),
    )
    out.append(q)
    return [_tracecode(o) for o in out] + [left, (q.get("output") or {}).get("data", q)]


async def _same_pack(admin: Api) -> list[Any]:
    from tests.helpers import cn20, event

    w = await _world(admin)
    m, p2, u = w["keys"]["M1"], w["keys"]["P2"], w["units"]
    rows = [
        sale("SP1", [u[1]], 6, split="1", sel_retn_time="2026-03-05 10:00:00"),
        sale("SP2", [u[1]], 6, split="1", sel_retn_time="2026-03-05 10:00:00"),
        sale("SP3", [u[1], u[2]], 20, split="1", sel_retn_time="2026-03-05 09:59:00"),
    ]
    out = [await post(p2, envelope("3505A", {"selinfoDetail": rows}))]
    inv = [
        change("IA", "102", 24, [u[0]], inv_chg_time="2026-03-05 11:00:00"),
        change("IB", "101", 24, [u[0]], inv_chg_time="2026-03-05 11:05:00"),
    ]
    out.append(await post(p2, envelope("3502A", {"invinfoDetail": inv})))
    # packs shipped to P2, not received yet: sold (a sale of a pack in transit to it)
    more = [cn20(w["unit"], i) for i in range(50, 53)]
    await m.events(event("commission", "M1", more, 0, lot="L1", expiry="2028-12-31", produced="2026-01-05"))
    await m.events(event("ship", "M1", more, 1, to="P2"))
    out.append(
        await post(
            p2, envelope("3505", {"selinfo": sale("TR1", [more[0]], 24, sel_retn_time="2026-03-05 12:00:00")})
        )
    )
    out.append(
        await post(
            p2,
            envelope(
                "3502", {"invinfo": change("TR2", "108", 24, [more[1]], inv_chg_time="2026-03-05 12:10:00")}
            ),
        )
    )
    left = [int((await p2.ok("GET", f"/v1/codes/{c}/verify"))["units_left"]) for c in u + more]
    return [_tracecode(o) for o in out] + [left]


Scenario = Callable[[Api], Awaitable[list[Any]]]
SCENARIOS: dict[str, Scenario] = {
    "whole and split sales, a resend, a conflicting serial": _simple,
    "sales settled before and after their upload": _settled,
    "3502 moves with codes": _inventory,
    "batches mixing rows with and without codes, two items, bad rows": _batches,
    "deletions, a return and a query": _deleted,
    "one pack sold in parts, moved and sold in transit": _same_pack,
}


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_both_paths_store_the_same(
    admin: Api, db: Any, db_url: str, server_urls: tuple[str, str], monkeypatch: Any, name: str
) -> None:
    from service.usecases import nhsa as nhsa_usecase

    scenario = SCENARIOS[name]
    with monkeypatch.context() as patched:
        patched.setattr(nhsa_usecase, "_appender", lambda *_a, **_k: None)  # the locked path only
        _PATHS.clear()
        answers = await scenario(admin)
        assert sum(_PATHS) == 0
        locked = {**await _dump(db), "answers": answers}
    await wipe(db_url, server_urls[1])
    _, secret = await _create_key(db_url, "admin", None)
    _PATHS.clear()
    answers = await scenario(Api(admin.client, secret))
    assert sum(_PATHS) >= 1, "no upload was written in one statement"
    optimistic = {**await _dump(db), "answers": answers}
    for key, value in locked.items():
        assert optimistic[key] == value, key


async def test_race_sales_with_counts_deletions_and_older_records(admin: Api, db: Any, db_url: str) -> None:
    from tests.helpers import cn20, event
    from tests.integration.test_nhsa_ledger import _plain_ledger, count, deletion

    w = await _world(admin)
    m, p2 = w["keys"]["M1"], w["keys"]["P2"]
    packs = [cn20(w["unit"], i) for i in range(10, 40)]
    await m.events(event("commission", "M1", packs, 0, lot="L1", expiry="2028-12-31", produced="2026-01-05"))
    await m.events(event("ship", "M1", packs, 1, to="P2"))
    await p2.events(event("receive", "P2", packs, 2))
    for j in range(4):
        stock = purchase(f"S{j}", 1000, purc_retn_stoin_time=f"2026-03-02 09:0{j}:00")
        assert (await nhsa(p2, envelope("3503", {"purcinfo": stock})))["infcode"] == 0
    uploads: list[tuple[str, dict[str, Any]]] = []
    for i, pack in enumerate(packs):
        at = f"2026-03-05 10:{i:02d}:00"
        uploads.append(("sales", envelope("3505", {"selinfo": sale(f"RS{i}", [pack], 24, sel_retn_time=at)})))
        if i % 5 == 0:
            old = f"2026-03-04 1{i // 10}:{i % 60:02d}:00"  # older than the ledger's latest
            uploads.append(
                ("inventory", envelope("3503", {"purcinfo": purchase(f"RP{i}", 7, purc_retn_stoin_time=old)}))
            )
        if i == 12:
            uploads.append(("inventory", envelope("3501", {"invinfo": count("CNT1", 3000, "2026-03-05")})))
        if i in (8, 20):
            uploads.append(("inventory", envelope("3507", {"data": deletion(f"S{i // 8}", "3")})))
    before = _written()
    done = await uploads_at_once(db_url, "P2", uploads)
    assert _written() - before >= 1
    live = [
        dict(r) for r in await db.fetch("SELECT * FROM nhsa_records WHERE org = 'P2' AND deleted_at IS NULL")
    ]
    kept = await db.fetchrow("SELECT * FROM nhsa_items WHERE org = 'P2' AND med_list_codg = $1", MED)
    assert (
        kept["balance"],
        kept["units_in"],
        kept["units_out"],
        kept["counted"],
        kept["counted_at"],
    ) == _plain_ledger(live, MED)
    assert kept["last_at"] == max(r["at"] for r in live)
    assert sum(d.result.accepted_codes for d in done) == len(packs)
    assert sum(d.records_new for d in done) == len(uploads) - 2
    assert (
        await db.fetchval(
            "SELECT count(*) FROM nhsa_records r WHERE NOT EXISTS "
            "(SELECT 1 FROM nhsa_uploads u WHERE u.org = r.org AND u.upload_id = r.upload_id)"
        )
        == 0
    )


async def test_race_conflicting_serials(admin: Api, db: Any, db_url: str) -> None:
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    uploads = [("sales", envelope("3505", {"selinfo": sale("CF1", [c], 24)})) for c in u]
    done = await uploads_at_once(db_url, "P2", uploads, size=4)
    assert sum(d.records_new for d in done) == 1
    assert sum(len(d.conflicts) for d in done) == 3
    assert sum(d.result.accepted_codes for d in done) == 1
    left = [int((await p2.ok("GET", f"/v1/codes/{c}/verify"))["units_left"]) for c in u]
    assert sorted(left) == [0, 24, 24, 24]
    stored = await db.fetchrow("SELECT * FROM nhsa_records WHERE fixmedins_bchno = 'CF1'")
    assert left[u.index(stored["codes"][0])] == 0
    kept = await db.fetchrow("SELECT * FROM nhsa_items WHERE org = 'P2' AND med_list_codg = $1", MED)
    assert (kept["balance"], kept["units_out"]) == (72, 24)


async def _until_waiting(db: Any, n: int) -> None:
    """Until ``n`` sessions wait on a lock (on Citus: on any node)."""
    import asyncio

    from tests.conftest import CITUS_URL

    activity = "citus_stat_activity" if CITUS_URL else "pg_stat_activity"
    for _ in range(500):
        if await db.fetchval(f"SELECT count(*) FROM {activity} WHERE wait_event_type = 'Lock'") >= n:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never {n} sessions waiting on a lock")


async def test_a_sale_in_one_statement_and_a_stock_count_of_its_pack_do_not_deadlock(
    admin: Api, db: Any, db_url: str
) -> None:
    """A stock count (3501, the locked transaction) and a sale of one of its packs in one
    statement, at once. The sale updates the pack's row, then the item's ledger row; the
    count took the item's ledger row (lock_items, FOR UPDATE) before its counted packs'
    rows, so each waited on the other: a deadlock (PostgreSQL aborted one after
    deadlock_timeout, and it was retried). The count now locks its packs first, as every
    writer does, and no deadlock is counted."""
    import asyncio
    from datetime import UTC, datetime

    import asyncpg

    from service.interop.nhsa import envelope as nhsa_envelope
    from service.interop.nhsa import inventory, sales
    from service.store.db import create_pool
    from service.usecases import nhsa as nhsa_usecase
    from tests.integration.test_nhsa_ledger import count

    w = await _world(admin)
    u = w["units"]
    deadlocks = await db.fetchval("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
    now = datetime.now(UTC)
    counted = nhsa_envelope.parse(envelope("3501", {"invinfo": count("CNT9", 96, "2026-03-03", code=u[0])}))
    count_records, errors = inventory.translate(counted, "P2", now, IDS)
    assert not errors
    sold = nhsa_envelope.parse(envelope("3505", {"selinfo": sale("DL1", [u[0]], 24)}))
    sale_records, errors = sales.translate(sold, "P2", now, IDS)
    assert not errors
    pool = await create_pool(db_url, min_size=2, max_size=2)
    held = await asyncpg.connect(db_url)
    try:
        # hold the count after it has locked its item's row: its record's key is taken by
        # an uncommitted insert, which it waits on
        tx = held.transaction()
        await tx.start()
        await held.execute(
            """INSERT INTO nhsa_records (org, interface, fixmedins_bchno, med_list_codg, kind, units,
                                         delta, at, msgid, upload_id, row_data)
               VALUES ('P2', '3501', 'CNT9', $1, 'count', 0, 0, now(), 'x', gen_random_uuid(), '{}')""",
            MED,
        )
        counting = asyncio.create_task(
            nhsa_usecase.upload(pool, "P2", count_records, counted.msgid, {"infno": "3501"}, now)
        )
        await _until_waiting(db, 1)
        selling = asyncio.create_task(
            nhsa_usecase.upload(pool, "P2", sale_records, sold.msgid, {"infno": "3505"}, now)
        )
        await _until_waiting(db, 2)  # the sale waits too (on the pack's row, the count holding it)
        await tx.rollback()
        done = await asyncio.gather(counting, selling)
    finally:
        await held.close()
        await pool.close()
    assert [d.records_new for d in done] == [1, 1]
    from tests.integration.test_nhsa_ledger import _plain_ledger

    live = [
        dict(r) for r in await db.fetch("SELECT * FROM nhsa_records WHERE org = 'P2' AND deleted_at IS NULL")
    ]
    kept = await db.fetchrow("SELECT * FROM nhsa_items WHERE org = 'P2' AND med_list_codg = $1", MED)
    assert (
        kept["balance"],
        kept["units_in"],
        kept["units_out"],
        kept["counted"],
        kept["counted_at"],
    ) == _plain_ledger(live, MED)
    after = await db.fetchval("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
    assert after == deadlocks, "the sale and the count deadlocked"
