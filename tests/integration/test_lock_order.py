"""Ingest locks every code row in one statement, in code order (issue 13, item 5):
batches that cross, a case in one and its contents in the other, cannot deadlock.

The batches race through the ingest use case on a pool of their own, as two request
handlers do: the in-process test client does not overlap requests enough to cross
(the two-statement lock order this replaces deadlocked 7 to 9 times in 10 such rounds)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import date, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from service.core.events import Incoming
from service.store.db import LARGE_BATCH, create_pool
from service.usecases import events as ingest_usecase
from tests.conftest import CITUS_URL
from tests.helpers import BASE_TIME, Api, cn20, small_world, sscc

pytestmark = pytest.mark.asyncio(loop_scope="session")

ROUNDS = 20
PER_CASE = 6


def _event(type_: str, codes: list[str], minutes: float, **fields: object) -> Incoming:
    at: datetime = BASE_TIME + timedelta(minutes=minutes)
    return Incoming(event_id=uuid.uuid4(), type=type_, at=at, org="M1", codes=tuple(codes), **fields)  # type: ignore[arg-type]


async def _deadlocks(db: asyncpg.Connection) -> int:
    await db.execute("SELECT pg_stat_clear_snapshot()")  # read the statistics afresh
    value = await db.fetchval("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
    return int(value)


async def test_crossing_batches_do_not_deadlock(admin: Api, db: asyncpg.Connection, db_url: str) -> None:
    w = await small_world(admin)
    pool = await create_pool(db_url, min_size=2, max_size=2)
    before = await _deadlocks(db)
    try:
        for r in range(ROUNDS):
            first = [cn20(w["unit"], 1000 * r + i) for i in range(PER_CASE)]
            second = [cn20(w["unit"], 1000 * r + 500 + i) for i in range(PER_CASE)]
            case1, case2 = sscc(2 * r + 1), sscc(2 * r + 2)
            setup = [
                _event("commission", first + second, 0, lot="L1", expiry=date(2030, 12, 31)),
                _event("pack", first, 1, parent=case1),
                _event("pack", second, 1, parent=case2),
            ]
            assert not (await ingest_usecase.ingest(pool, setup, [])).rejected
            # each batch ships one case and picks packs out of the other one
            a = _event("ship", [case1, *second[: PER_CASE // 2]], 10 + r % 2, to="D1")
            b = _event("ship", [case2, *first[: PER_CASE // 2]], 11 - r % 2, to="D1")
            results = await asyncio.gather(
                ingest_usecase.ingest(pool, [a], []), ingest_usecase.ingest(pool, [b], [])
            )
            assert [x.accepted_events for x in results] == [1, 1]
            rows = await db.fetch(
                "SELECT destination FROM codes WHERE code = ANY($1::text[])", first + second
            )
            assert {row["destination"] for row in rows} == {"D1"}
    finally:
        await pool.close()  # a closing backend flushes its statistics
    await asyncio.sleep(1)  # the flush is asynchronous (a late one could hide a deadlock, never add one)
    assert await _deadlocks(db) - before == 0


@pytest.mark.skipif(
    bool(CITUS_URL), reason="Citus keeps no generic plan for a distributed statement (0 counted here)"
)
async def test_a_large_batch_is_planned_for_its_own_arrays(admin: Api, db_url: str) -> None:
    """A connection that ran ingest's statements many times with small batches keeps a
    generic plan for them, costed for an array of about ten codes; a large batch must not
    run on it (it scanned the whole codes table under bench_epcis.py). PostgreSQL counts,
    per prepared statement of the session, the runs of each kind of plan."""
    w = await small_world(admin)
    pool = await create_pool(db_url, min_size=1, max_size=1)

    def batch(first: int, n: int, minutes: float) -> list[Incoming]:
        codes = [cn20(w["unit"], first + i) for i in range(n)]
        return [
            _event("commission", codes, minutes, lot="L1", expiry=date(2030, 12, 31)),
            _event("ship", codes, minutes + 0.5, to="D1"),
        ]

    async def lock_plans() -> tuple[int, int]:
        async with pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
                " WHERE statement LIKE '%FROM codes WHERE code = ANY%FOR UPDATE'"
            )
        assert row is not None, "ingest did not lock code rows on this connection?"
        return row["generic_plans"], row["custom_plans"]

    try:
        for r in range(12):
            assert not (await ingest_usecase.ingest(pool, batch(100 * r, 3, r), [])).rejected
        generic, custom = await lock_plans()
        assert generic > 0  # what the small batches use: the cached plan
        assert not (await ingest_usecase.ingest(pool, batch(10_000, LARGE_BATCH, 20), [])).rejected
        assert await lock_plans() == (generic, custom + 1)
    finally:
        await pool.close()


@contextlib.asynccontextmanager
async def _three_codes_on_one_connection(
    admin: Api, db_url: str
) -> AsyncIterator[tuple[asyncpg.Pool, dict[str, Any], list[str]]]:
    """small_world, three codes of its unit product commissioned in lot L1, and a pool of
    one connection: PostgreSQL counts the runs of each kind of plan per prepared
    statement of a session (``plans``)."""
    w = await small_world(admin)
    codes = [cn20(w["unit"], i) for i in range(1, 4)]
    pool = await create_pool(db_url, min_size=1, max_size=1)
    try:
        commission = _event("commission", codes, 0, lot="L1", expiry=date(2030, 12, 31))
        assert not (await ingest_usecase.ingest(pool, [commission], [])).rejected
        yield pool, w, codes
    finally:
        await pool.close()


async def _plans(pool: asyncpg.Pool, *patterns: str) -> dict[str, tuple[int, int]]:
    """(generic plans, custom plans) run so far, of each pattern's one prepared statement
    (``LIKE``, not locking)."""
    out = {}
    async with pool.acquire() as conn:
        for pattern in patterns:
            rows = await conn.fetch(
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
                " WHERE statement LIKE $1 AND statement NOT LIKE '%FOR UPDATE%'",
                pattern,
            )
            assert len(rows) == 1, (pattern, rows)
            out[pattern] = (rows[0]["generic_plans"], rows[0]["custom_plans"])
    return out


async def test_a_lots_summary_is_planned_for_its_own_lot(admin: Api, db_url: str) -> None:
    """A generic plan for the lot summary, costed for a handful of codes, sorted a lot of
    100,000 on disk (bench_console.py): the summary is planned for the lot asked for."""
    from service.usecases import investigation

    async with _three_codes_on_one_connection(admin, db_url) as (pool, w, _):
        for _ in range(8):
            summary = await investigation.lot(pool, w["unit"], "L1")
            assert summary is not None
            assert summary["codes"] == 3
        summary_sql = "%END AS placed%"
        assert (await _plans(pool, summary_sql))[summary_sql] == (0, 8)


@pytest.mark.skipif(bool(CITUS_URL), reason="the Citus coordinator keeps PostgreSQL's own choice of plans")
async def test_keyed_statements_are_planned_once(admin: Api, db_url: str) -> None:
    """A keyed look-up runs on the plan made once for its connection: left to choose,
    PostgreSQL planned it again at each run (a generic plan is costed for about ten codes,
    more than a verify names). A statement that takes any combination of filters (the
    EPCIS query) is still planned for the filters given."""
    from service.store.epcis import Query
    from service.usecases import codes as codes_usecase
    from service.usecases import epcis as epcis_usecase

    async with _three_codes_on_one_connection(admin, db_url) as (pool, _, codes):
        for code in codes * 3:
            (answer,) = await codes_usecase.verify_at(pool, [code], "P1")
            assert answer["known"]
        for _ in range(6):
            assert (await epcis_usecase.events(pool, Query(), 10)).events == []
        keyed, query = "SELECT code, kind, %FROM codes WHERE code = ANY%", "%FROM epcis_events%"
        plans = await _plans(pool, keyed, query)
    generic, custom = plans[keyed]
    assert generic >= 9
    assert custom == 0
    assert plans[query] == (0, 6)
