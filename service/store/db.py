"""Connection pool set-up and the retry rule for transactions that lost a race."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

from service.store.conn import Conn, RetryTransaction

T = TypeVar("T")
__all__ = ["RETRYABLE", "RetryTransaction", "create_pool", "with_retry"]

# Lost races that are safe to run again from the start: nothing of the failed attempt
# was committed.
RETRYABLE: tuple[type[Exception], ...] = (
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
    RetryTransaction,
)


async def _init_connection(conn: Conn) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Skip asyncpg's reset query on release (one round trip per request): the service
    keeps no session state (no SET, LISTEN, cursors or session advisory locks)."""


async def create_pool(url: str, *, min_size: int = 2, max_size: int = 10) -> asyncpg.Pool:
    """A pool whose connections decode jsonb to Python values."""
    pool = await asyncpg.create_pool(
        url,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        reset=_keep_session,
        command_timeout=60,
        statement_cache_size=1024,
    )
    assert pool is not None
    return pool


async def with_retry(pool: asyncpg.Pool, work: Callable[[Conn], Awaitable[T]], attempts: int = 5) -> T:
    """Run ``work(conn)`` in one transaction; run it again if it deadlocked or lost a
    serialization race (each attempt starts clean)."""
    for attempt in range(attempts):
        async with pool.acquire() as conn:
            try:
                async with conn.transaction():
                    return await work(conn)
            except RETRYABLE:
                if attempt == attempts - 1:
                    raise
    raise AssertionError("unreachable")
