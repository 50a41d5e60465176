"""Writers of different codes do not wait for each other, even where the codes share a
shard (issue 15, item 3). On Citus, with its default deadlock prevention, a transaction
holding a multi-shard write made another one touching other rows of the same shards
wait for it to end; the service orders its row locks instead (store.codes.lock) and
turns that prevention off. The test runs on plain PostgreSQL too, where it must hold
as well."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import asyncpg
import pytest

from service.core.events import Incoming, Rejection
from service.core.flags import FlagRef
from service.store.conn import Conn
from service.store.db import create_pool
from service.usecases import events as ingest_usecase
from tests.conftest import CITUS_URL
from tests.helpers import BASE_TIME, Api, cn20, event, small_world

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def _shards(db: asyncpg.Connection, codes: list[str]) -> set[int]:
    rows = await db.fetch(
        "SELECT DISTINCT get_shard_id_for_distribution_column('codes', c) FROM unnest($1::text[]) c", codes
    )
    return {r[0] for r in rows}


async def test_a_batch_held_open_does_not_hold_up_other_codes_of_its_shards(
    admin: Api, db: asyncpg.Connection, db_url: str
) -> None:
    w = await small_world(admin)
    m1 = await admin.key_for("org", "M1")
    held = [cn20(w["unit"], i) for i in range(1, 301)]
    other = [cn20(w["unit"], i) for i in range(1001, 1011)]
    await m1.events(event("commission", "M1", held + other, 0, lot="L1", expiry="2030-12-31"))
    if CITUS_URL:  # the other codes live on shards the held batch writes to
        assert await _shards(db, other) <= await _shards(db, held)

    pool = await create_pool(db_url, min_size=1, max_size=2)
    inside, release = asyncio.Event(), asyncio.Event()

    async def hold_open(conn: Conn, _rejected: list[Rejection]) -> list[FlagRef]:
        # the batch's rows are locked and written, on every shard it touches: wait here
        inside.set()
        await asyncio.wait_for(release.wait(), timeout=60)
        return []

    ship = Incoming(
        event_id=uuid.uuid4(),
        type="ship",
        at=BASE_TIME + timedelta(minutes=5),
        org="M1",
        codes=tuple(held),
        to="D1",
    )
    holding = asyncio.create_task(ingest_usecase.ingest(pool, [ship], [], also=hold_open))
    try:
        await asyncio.wait_for(inside.wait(), timeout=30)
        # another batch, of other codes on the same shards, through the API: answered
        # while the first is still open (waiting for it would time out here)
        other_ship = event("ship", "M1", other, 6, to="D2")
        answer = await asyncio.wait_for(m1.events(other_ship), timeout=20)
        assert answer["accepted"] == len(other)
        assert not holding.done()
    finally:
        release.set()
        result = await holding
        await pool.close()
    assert result.accepted_codes == len(held)
    custodians = await db.fetch("SELECT destination, count(*) AS n FROM codes GROUP BY 1 ORDER BY 1")
    assert {r["destination"]: r["n"] for r in custodians} == {"D1": len(held), "D2": len(other)}
