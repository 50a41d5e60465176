"""Integration tests share the session's servers and start from empty tables."""

from __future__ import annotations

import asyncpg
import pytest_asyncio
import redis.asyncio as aioredis

from service.store import registry

_TABLES_KEPT = {"schema_migrations"}


@pytest_asyncio.fixture(loop_scope="session", autouse=True)
async def clean(db_url: str, server_urls: tuple[str, str]) -> None:
    """Each database test starts from empty tables and an empty Redis."""
    await wipe(db_url, server_urls[1])


async def wipe(db_url: str, redis_url: str) -> None:
    """Empty every table (but the migrations') and Redis, and forget cached registry rows."""
    conn = await asyncpg.connect(db_url)
    try:
        tables = [
            r["tablename"]
            for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            if r["tablename"] not in _TABLES_KEPT
        ]
        for attempt in range(5):  # the apps' background loops read tables meanwhile
            try:
                if tables:
                    await conn.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")
                break
            except asyncpg.DeadlockDetectedError:  # a loop's read of two tables (the feed's)
                if attempt == 4:
                    raise
    finally:
        await conn.close()
    registry.forget_cached()
    r = aioredis.from_url(redis_url)
    await r.flushdb()
    await r.aclose()
