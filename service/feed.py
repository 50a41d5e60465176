"""The live flag feed: every new flag and every change of a flag's status goes onto the
Redis stream ``flags``, in the order they happened.

PostgreSQL keeps the record; the stream is a copy for other systems (read it with
consumer groups: XREADGROUP). Changes are published from an outbox (``flag_outbox``, a
row per change, written in the change's transaction and deleted once the stream has it),
so a Redis outage delays the feed but loses nothing, not even a change overtaken by the
next, and never blocks settling or ingest. Each entry is the flag as it is when sent,
with the change's ``status`` and ``changed_at``. Delivery is at least once: consumers
dedupe on ``flag_id`` + ``status`` + ``changed_at``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from datetime import datetime
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from service import metrics
from service.store import flags as flag_store
from service.store.db import UNAVAILABLE

log = logging.getLogger(__name__)

STREAM = "flags"
STREAM_MAXLEN = 1_000_000  # approximate trim; PostgreSQL has the full record
BATCH = 500
_DATABASE_DOWN: tuple[type[Exception], ...] = (*UNAVAILABLE, asyncpg.PostgresError, asyncpg.InterfaceError)


def _entry(flag: dict[str, Any]) -> dict[str, str]:
    return {
        "flag_id": str(flag["flag_id"]),
        "kind": flag["kind"],
        "code": flag["code"],
        "org": flag["org"] or "",
        "region": flag["region"] or "",
        "at": flag["at"].isoformat(),
        "raised_at": flag["raised_at"].isoformat(),
        "status": flag["status"],
        "changed_at": flag["changed_at"].isoformat(),
        "detail": flag["detail"],
        "refs": json.dumps(flag["refs"], default=str),
    }


async def last_entry(redis: aioredis.Redis) -> str:
    """The id of the stream's newest entry ("0-0" while it is empty): where a reader that
    wants only what comes next starts."""
    newest: Any = await redis.xrevrange(STREAM, count=1)
    return newest[0][0].decode() if newest else "0-0"


async def read_after(redis: aioredis.Redis, after: str, *, block_ms: int) -> list[tuple[str, dict[str, str]]]:
    """The flags published after entry ``after``, as (entry id, fields), oldest first;
    waits up to ``block_ms`` for the first when there is none yet."""
    found: Any = await redis.xread({STREAM: after}, count=100, block=block_ms)
    return [
        (entry_id.decode(), {k.decode(): v.decode() for k, v in fields.items()})
        for _, entries in found
        for entry_id, fields in entries
    ]


class RedisUnavailable(RedisError):
    """Redis refused or dropped a batch (its own errors and socket errors alike), told
    apart from the database's socket errors so that each outage is logged as what it is."""


class FlagFeed:
    def __init__(self, pool: asyncpg.Pool, redis: aioredis.Redis) -> None:
        self.pool = pool
        self.redis = redis
        self._wake = asyncio.Event()
        # (flag_id, changed_at) already counted as failed: while Redis is down the same
        # batch is retried every few seconds, and each change must count once, not once a try
        self._failed: set[tuple[int, datetime]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None  # run()'s

    def wake(self) -> None:
        """New flags were committed: publish soon rather than at the next tick. Safe from
        any thread: an asyncio.Event set from another loop's thread (the test client runs
        requests beside the lifespan's loop) could leave run() never woken, and the app's
        shutdown waiting for it."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def publish_pending(self) -> int:
        """Publish one batch of the outbox's changes; return how many went out. Raises
        RedisUnavailable (after counting the batch as failed) when Redis is unreachable."""
        async with self.pool.acquire() as conn, conn.transaction():
            flags = await flag_store.claim_unpublished(conn, BATCH)
            if flags is None:  # another worker is publishing
                return 0
            if not flags:
                metrics.FLAGS_UNPUBLISHED.set(0)
                return 0
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for flag in flags:
                        pipe.xadd(STREAM, _entry(flag), maxlen=STREAM_MAXLEN, approximate=True)  # type: ignore[arg-type]
                    await pipe.execute()
            except (RedisError, OSError) as exc:
                versions = {(f["flag_id"], f["changed_at"]) for f in flags}
                if len(self._failed) > 10 * BATCH:  # a bound; at worst a flag counts twice
                    self._failed.clear()
                new = versions - self._failed
                self._failed |= new
                if new:
                    metrics.FLAGS_PUBLISH_FAILED.inc(len(new))
                metrics.FLAGS_UNPUBLISHED.set(await flag_store.unpublished_count(conn))
                raise RedisUnavailable(str(exc)) from exc
            await flag_store.mark_published(conn, flags)
            self._failed.difference_update((f["flag_id"], f["changed_at"]) for f in flags)
            metrics.FLAGS_PUBLISHED.inc(len(flags))
            return len(flags)

    async def run(self) -> None:
        """Publish forever: on a wake-up or every second; back off while Redis is down."""
        self._loop = asyncio.get_running_loop()
        delay = 1.0
        while True:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can turn a cancellation
            # that meets its own timeout into a TimeoutError, which this loop would swallow,
            # and the app's shutdown then waited for this task forever (a test teardown hung)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            self._wake.clear()
            try:
                while await self.publish_pending() == BATCH:
                    pass
                delay = 1.0
            except RedisUnavailable as exc:
                delay = min(delay * 2, 10.0)
                log.warning("flag feed: Redis unavailable (%s); retrying in %.0f s", exc, delay)
            except _DATABASE_DOWN as exc:
                delay = min(delay * 2, 10.0)
                log.warning("flag feed: database unavailable (%s); retrying in %.0f s", exc, delay)
