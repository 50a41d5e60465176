"""Test servers: a throwaway embedded PostgreSQL and Valkey for the session, or the
servers named by TRACE_TEST_DATABASE_URL / TRACE_TEST_REDIS_URL (their data is wiped).

With TRACE_TEST_CITUS_URL set to a Citus coordinator, the suite runs on a distributed
schema instead: the service's tables there are dropped, the migrations run, then
``ops/citus/distribute.sql`` (DEVELOPERS.md says how to start a cluster)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from litestar.testing import AsyncTestClient

from service.app import create_app
from service.config import Settings
from service.store.migrations import migrate
from tests.helpers import Api

_TABLES_KEPT = {"schema_migrations"}
# GS1's EPCIS material beside the repository (../shared/epcis/), as CI lays it, or where
# TRACE_TEST_EPCIS_DIR says (a git worktree elsewhere has nothing beside it)
EPCIS_DIR = Path(
    os.environ.get("TRACE_TEST_EPCIS_DIR") or Path(__file__).resolve().parents[1].parent / "shared" / "epcis"
)
EPCIS_SCHEMA = EPCIS_DIR / "schema" / "EPCIS-JSON-Schema.json"
DISTRIBUTE_SQL = Path(__file__).resolve().parents[1] / "ops" / "citus" / "distribute.sql"
CITUS_URL = os.environ.get("TRACE_TEST_CITUS_URL")


@pytest.fixture(scope="session")
def server_urls() -> tuple[str, str]:
    db_url = CITUS_URL or os.environ.get("TRACE_TEST_DATABASE_URL")
    redis_url = os.environ.get("TRACE_TEST_REDIS_URL")
    root = Path(tempfile.mkdtemp(prefix="tracecode-test-"))
    if not db_url:
        from service.embedded import start_postgres

        db_url = start_postgres(root, throwaway=True)
    if not redis_url:
        from service.embedded import start_redis

        redis_url = start_redis(root / "valkey", throwaway=True)
    return db_url, redis_url


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def db_url(server_urls: tuple[str, str]) -> str:
    conn = await asyncpg.connect(server_urls[0])
    try:
        if CITUS_URL:
            await _drop_tables(conn)
        await migrate(conn)
        if CITUS_URL:
            await conn.execute(DISTRIBUTE_SQL.read_text())
    finally:
        await conn.close()
    return server_urls[0]


async def _drop_tables(conn: asyncpg.Connection) -> None:
    """A clean coordinator: the service's tables go (Citus's own live in pg_catalog)."""
    tables = [r[0] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
    if tables:
        await conn.execute(f"DROP TABLE {', '.join(tables)} CASCADE")


@pytest.fixture(scope="session")
def settings(server_urls: tuple[str, str], db_url: str) -> Settings:
    base = Settings.from_env()
    return replace(
        base,
        database_url=db_url,
        redis_url=server_urls[1],
        max_body_bytes=4 * 1024 * 1024,
        psn_secret=b"test-secret",
        log_level="warning",  # a test that reads the request log asks for it (caplog)
        # no per-key rate limits: in-process, a test can send a key's 500 requests within a
        # second on a fast machine (a 429 in test_event_order); the limiter's own tests set
        # theirs, and a served instance (tests/integration/served.py) keeps the defaults
        rate_limits=dict.fromkeys(base.rate_limits),
        # validated against GS1's schema where it is laid beside the repository
        epcis_schema=EPCIS_SCHEMA if EPCIS_SCHEMA.exists() else None,
    )


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def client(settings: Settings) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
    app = create_app(settings)
    async with AsyncTestClient(app=app) as c:
        yield c


@pytest_asyncio.fixture(loop_scope="session")
async def db(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(db_url)
    try:
        yield conn
    finally:
        await conn.close()


@pytest_asyncio.fixture(loop_scope="session")
async def admin(client: AsyncTestClient, db_url: str) -> Api:  # type: ignore[type-arg]
    """An admin key, made the way the README makes the first one (the CLI's code path)."""
    from service.cli import _create_key

    _, secret = await _create_key(db_url, "admin", None)
    return Api(client, secret)
