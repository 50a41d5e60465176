"""Integration tests share the session's servers and start from empty tables."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest_asyncio
import redis.asyncio as aioredis

from service.store import registry
from service.store.migrations import migrate

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


@contextlib.asynccontextmanager
async def own_postgres(prefix: str) -> AsyncIterator[tuple[Path, str]]:
    """A throwaway embedded PostgreSQL of the test's own, migrated: (its folder, its URL),
    for a test that stops it (an outage) and starts it again; stopped and removed after."""
    from service.embedded import start_postgres, stop_postgres

    root = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        url = await asyncio.to_thread(start_postgres, root, throwaway=True)
        conn = await asyncpg.connect(url)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        yield root, url
    finally:
        await asyncio.to_thread(stop_postgres, root)
        shutil.rmtree(root, ignore_errors=True)
