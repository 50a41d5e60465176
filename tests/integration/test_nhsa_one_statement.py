"""A sale uploaded through POST /v1/nhsa whose records simply follow their items' ledgers
is written as a dispense through /v1/events is: read without locks, then its events, code
rows, sales, ledger records and the items' ledgers in one statement, only if nothing it
read has changed (usecases.events, the optimistic path). These tests show that it is
taken, that it keeps the ledger and the record's identity, and that it loses nothing when
it races uploads that take the locked transaction."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import REGISTRY

from tests.helpers import Api, cn20, event
from tests.integration.test_nhsa import IDS, MED, _units_left, _world, envelope, nhsa, sale, uploads_at_once
from tests.integration.test_nhsa_ledger import _plain_ledger, purchase

pytestmark = pytest.mark.asyncio(loop_scope="session")


def _written() -> float:
    """The optimistic writes that succeeded so far (the in-process app's metrics)."""
    labels = {"operation": "ingest", "outcome": "written"}
    return REGISTRY.get_sample_value("tracecode_optimistic_writes_total", labels) or 0.0


async def _figures(db: Any, org: str = "P2") -> tuple[Any, ...]:
    kept = await db.fetchrow("SELECT * FROM nhsa_items WHERE org = $1 AND med_list_codg = $2", org, MED)
    return (kept["balance"], kept["units_in"], kept["units_out"], kept["counted"], kept["counted_at"])


async def test_a_sale_that_follows_the_ledger_is_one_statement_and_one_fact(admin: Api, db: Any) -> None:
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    before = _written()
    out = await nhsa(p2, envelope("3505", {"selinfo": sale("F1", [u[0]], 24)}))
    assert (out["infcode"], out["output"]["tracecode"]["accepted"]) == (0, 1), out
    assert _written() - before == 1
    assert await _figures(db) == (72, 96, 24, None, None)
    stored = await db.fetchrow("SELECT * FROM nhsa_records WHERE org = 'P2' AND fixmedins_bchno = 'F1'")
    assert (stored["codes"], stored["kind"], stored["delta"]) == ([u[0]], "sale", -24)
    (sold,) = await db.fetch("SELECT event_id FROM event_codes WHERE code = $1 AND event_id = ANY($2)",
                             u[0], stored["event_ids"])  # fmt: skip
    assert sold is not None
    assert (
        await db.fetchval(
            "SELECT envelope->>'infno' FROM nhsa_uploads WHERE upload_id = $1", stored["upload_id"]
        )
        == "3505"
    )
    row = await db.fetchrow(
        "SELECT json_typeof(row_data) AS type, row_data->>'fixmedins_bchno' AS bchno, "
        "row_data::jsonb ? 'psn_no' AS person FROM nhsa_records WHERE org = 'P2' AND fixmedins_bchno = 'F1'"
    )
    assert (row["type"], row["bchno"], row["person"]) == ("object", "F1", False)
    assert await _units_left(p2, u[0]) == 0

    # sent again: one fact; under the same serial with another pack: refused, nothing taken
    again = await nhsa(p2, envelope("3505", {"selinfo": sale("F1", [u[0]], 24)}))
    assert (again["infcode"], again["output"]["tracecode"]["duplicates"]) == (0, 1), again
    other = await nhsa(p2, envelope("3505", {"selinfo": sale("F1", [u[1]], 24)}))
    assert other["infcode"] == -1, other
    assert "fixmedins_bchno" in other["err_msg"], other
    assert await _units_left(p2, u[1]) == 24
    assert await _figures(db) == (72, 96, 24, None, None)
    assert await db.fetchval("SELECT count(*) FROM nhsa_records WHERE org = 'P2'") == 2


async def test_a_sale_beyond_the_ledger_raises_its_flag_in_the_locked_transaction(
    admin: Api, db: Any
) -> None:
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    # the ledger holds 96 units; a 3504 purchase return of 90 leaves 6
    back = purchase(
        "R1", 90, purc_invo_no="INV1", medins_prod_purc_no="P1", purc_retn_stoin_time="2026-03-02 09:00:00"
    )
    for key in ("dynt_no", "manu_lotnum", "prodentp_name", "aprvno", "prod_geay_flag"):
        back.pop(key)
    assert (await nhsa(p2, envelope("3504", {"purcinfo": back})))["infcode"] == 0
    before = _written()
    out = await nhsa(p2, envelope("3505", {"selinfo": sale("F2", [u[0]], 24)}))
    assert [f["kind"] for f in out["output"]["tracecode"]["flags"]] == ["STOCK_IMBALANCE"], out
    assert _written() == before
    assert await _figures(db) == (-18, 96, 114, None, None)


async def test_sales_racing_purchases_on_a_pool_of_their_own_lose_no_unit(
    admin: Api, db: Any, db_url: str
) -> None:
    """12 one-pack sales (the optimistic path) and 6 purchases of the same item (no codes:
    the locked transaction) at once, through the use case on a pool of 4 connections: the
    item's ledger kept is the one its records give, every sale took its pack, and no
    upload's move was lost to another's."""
    w = await _world(admin)
    m, p2 = w["keys"]["M1"], w["keys"]["P2"]
    packs = [cn20(w["unit"], i) for i in range(10, 22)]
    await m.events(event("commission", "M1", packs, 0, lot="L1", expiry="2028-12-31", produced="2026-01-05"))
    await m.events(event("ship", "M1", packs, 1, to="P2"))
    await p2.events(event("receive", "P2", packs, 2))
    stock = purchase("S0", 288, purc_retn_stoin_time="2026-03-02 09:00:00")
    assert (await nhsa(p2, envelope("3503", {"purcinfo": stock})))["infcode"] == 0

    uploads = []
    for i, pack in enumerate(packs):
        at = f"2026-03-05 10:{i:02d}:00"
        uploads.append(("sales", envelope("3505", {"selinfo": sale(f"RS{i}", [pack], 24, sel_retn_time=at)})))
    for j in range(6):
        at = f"2026-03-05 10:{2 * j + 1:02d}:30"
        uploads.append(
            ("inventory", envelope("3503", {"purcinfo": purchase(f"RP{j}", 100, purc_retn_stoin_time=at)}))
        )
    before = _written()
    done = await uploads_at_once(db_url, "P2", uploads, size=4)

    assert sum(d.result.accepted_codes for d in done) == 12
    assert _written() - before >= 1  # some sales took the optimistic path
    live = [
        dict(r) for r in await db.fetch("SELECT * FROM nhsa_records WHERE org = 'P2' AND deleted_at IS NULL")
    ]
    assert len(live) == 1 + 1 + 12 + 6
    assert await _figures(db) == _plain_ledger(live, MED)
    assert (await _figures(db))[:3] == (96 + 288 + 600 - 288, 96 + 288 + 600, 288)
    assert [await _units_left(p2, pack) for pack in packs] == [0] * 12
    assert await db.fetchval("SELECT count(*) FROM flags") == 0


async def test_a_sale_written_while_an_upload_holds_its_item_waits_and_reads_again(
    admin: Api, db: Any, db_url: str
) -> None:
    """An upload in the locked transaction holds the item's ledger (its lock and its row,
    ``store.ledger.lock_items``) while a sale of the item is written in one statement: the
    sale's write waits on the row, finds the ledger moved on when the upload commits, and
    runs again from the new figures. Neither move is lost (had the sale been written
    meanwhile, the upload's figures, computed from what it read, would overwrite it)."""
    from datetime import timedelta

    from service.core import ledger as rules
    from service.interop.nhsa import envelope as nhsa_envelope
    from service.interop.nhsa import sales
    from service.store import ledger as ledger_store
    from service.store.db import create_pool
    from service.usecases import nhsa as nhsa_usecase
    from tests.helpers import until_waiting_on_a_lock

    w = await _world(admin)
    u = w["units"]
    env = nhsa_envelope.parse(envelope("3505", {"selinfo": sale("W1", [u[0]], 24)}))
    records, errors = sales.translate(env, "P2", datetime.now(UTC), IDS)
    assert not errors
    held = await create_pool(db_url, min_size=1, max_size=1)
    pool = await create_pool(db_url, min_size=1, max_size=1)
    try:
        async with held.acquire() as other, other.transaction():
            standing = (await ledger_store.lock_items(other, "P2", [MED]))[MED]
            assert standing is not None
            sent = asyncio.create_task(
                nhsa_usecase.upload(pool, "P2", records, env.msgid, {"infno": env.infno}, datetime.now(UTC))
            )
            await until_waiting_on_a_lock(db, "the sale's write")
            # what a purchase upload in the locked transaction writes: its record, and the
            # item's ledger moved on from what it read
            assert standing.last_at is not None
            bought = rules.Entry(
                "P2", "3503", "HELD", MED, "purchase", 100, standing.last_at + timedelta(days=5)
            )
            await ledger_store.insert(other, [bought], "HELD-MSG", {"infno": "3503"})
            moved = rules.append(standing, [bought])
            assert moved is not None
            await ledger_store.save_items(other, "P2", {MED: moved[0]})
        done = await sent
    finally:
        await held.close()
        await pool.close()
    assert (done.result.accepted_codes, done.records_new) == (1, 1)
    live = [
        dict(r) for r in await db.fetch("SELECT * FROM nhsa_records WHERE org = 'P2' AND deleted_at IS NULL")
    ]
    assert await _figures(db) == _plain_ledger(live, MED)
    assert (await _figures(db))[:3] == (96 + 100 - 24, 196, 24)
