"""Connection pool set-up and the retry rule for transactions that lost a race."""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import msgspec

from service.store.conn import Conn, RetryTransaction

T = TypeVar("T")
__all__ = [
    "RETRYABLE",
    "UNAVAILABLE",
    "Connection",
    "Outage",
    "Pool",
    "PoolExhausted",
    "RetryTransaction",
    "create_pool",
    "probe",
    "unavailable",
    "unavailable_cause",
    "with_retry",
]
log = logging.getLogger(__name__)

# Lost races that are safe to run again from the start: nothing of the failed attempt
# was committed.
RETRYABLE: tuple[type[Exception], ...] = (
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
    RetryTransaction,
)


# The database cannot be reached or cannot serve right now: it is down or restarting
# (refused or lost connections, "the database system is shutting down / starting up"),
# a connection died under a statement, or no connection came in time. None of it is the
# request's fault, and all of it passes: the answer is a 503 with Retry-After.
UNAVAILABLE: tuple[type[Exception], ...] = (
    ConnectionError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, cannot connect now
    asyncpg.TooManyConnectionsError,
)


def unavailable(exc: BaseException) -> bool:
    """Is ``exc`` the database being unreachable (see UNAVAILABLE)? Also an OSError
    raised inside asyncpg (connecting to a Unix socket that is gone is a
    FileNotFoundError), and asyncpg's "connection is closed", but not its other interface
    errors, nor an OSError of our own (a missing file is our bug, not an outage). And a
    pooled connection whose backend the server ended while it sat idle (a shutdown, an
    administrator's pg_terminate_backend): its next statement fails in asyncpg's protocol,
    "cannot switch to state …", before the pool sees it closed."""
    if isinstance(exc, UNAVAILABLE):
        return True
    if isinstance(exc, asyncpg.InternalClientError) and str(exc).startswith("cannot switch to state"):
        return True
    if isinstance(exc, OSError):
        return any(
            frame.f_globals.get("__name__", "").startswith("asyncpg")
            for frame, _ in traceback.walk_tb(exc.__traceback__)
        )
    return isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc)


def unavailable_cause(exc: BaseException) -> str:
    """The ``cause`` label of ``tracecode_db_unavailable_total`` for an ``unavailable``
    error: ``pool`` when no pooled connection came free in time (PoolExhausted), else
    ``unreachable``."""
    return "pool" if isinstance(exc, PoolExhausted) else "unreachable"


class Outage:
    """Whether this worker found the database unreachable. An outage logs one warning
    when it begins and one line when it ends, however many requests it fails: the app's
    watcher probes the database while ``since`` is set and calls :meth:`end`."""

    def __init__(self) -> None:
        self.since: float | None = None

    def begin(self, exc: BaseException) -> None:
        if self.since is None:
            self.since = time.monotonic()
            log.warning(
                "database unavailable (%s: %s); answering 503 until it is back",
                type(exc).__name__,
                exc,
            )

    def end(self) -> None:
        if self.since is not None:
            log.warning("database reachable again after %.0f s", time.monotonic() - self.since)
            self.since = None


# The json and jsonb codecs use msgspec, not the json module: a 1,000-row NHSA upload
# encodes 1,000 rows as sent.
def _jsonb_out(value: object) -> bytes:
    return b"\x01" + msgspec.json.encode(value)  # jsonb's binary form (COPY needs it too)


def _jsonb_in(data: bytes) -> Any:
    return msgspec.json.decode(memoryview(data)[1:])


def _json_out(value: object) -> bytes:
    return msgspec.json.encode(value)  # json's binary form is its text


def _json_in(data: bytes) -> Any:
    return msgspec.json.decode(data)


class Connection(asyncpg.Connection):
    """A connection that knows whether its database is distributed (Citus): row locks
    are then taken one shard at a time (``store.codes.lock``)."""

    __slots__ = ("distributed",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.distributed = False


async def _init_connection(conn: asyncpg.Connection) -> None:
    assert isinstance(conn, Connection)
    await learn_layout(conn)
    if not conn.distributed:
        await conn.execute("SET plan_cache_mode = force_generic_plan")  # see plan_for_values
    await conn.set_type_codec(
        "jsonb", encoder=_jsonb_out, decoder=_jsonb_in, schema="pg_catalog", format="binary"
    )
    await conn.set_type_codec(
        "json", encoder=_json_out, decoder=_json_in, schema="pg_catalog", format="binary"
    )


async def learn_layout(conn: Connection) -> None:
    """Is ``codes`` a distributed table here? If it is, multi-shard writes run without
    Citus's deadlock prevention (which lets one multi-shard write at a time into a shard):
    every writer locks its code rows first, shard by shard in one order, so they cannot
    deadlock on them; a deadlock elsewhere is still found by Citus and retried
    (``with_retry``)."""
    distributed = bool(
        await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')")
    ) and bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = to_regclass('codes'))"
        )
    )
    if distributed:
        # - one connection per worker for a statement that fans out to many shards: the
        #   service's statements are small, and opening more connections (closed again at
        #   each transaction's end) cost more than running their shards one after another;
        # - shards not hidden from this session's catalog reads: hiding them filtered
        #   pg_class row by row, and asyncpg's look-up of a type took 0.8 s instead of 4 ms
        await conn.execute(
            """SET citus.enable_deadlock_prevention = off;
               SET citus.max_adaptive_executor_pool_size = 1;
               SET citus.override_table_visibility = off"""
        )
    conn.distributed = distributed


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Skip asyncpg's reset query on release (one round trip per request): the service
    keeps no session state (no LISTEN, cursors or session advisory locks) beyond the
    settings the pool gives each connection when it opens it, which a reset would undo."""


# how long a request waits for a pooled connection before it is answered 503
ACQUIRE_SECONDS = 10.0


class PoolExhausted(TimeoutError):
    """No pooled connection came free in time, every connection the pool may open being
    open and in use: the load needs more connections than the pool has, or the statements
    that hold them do not finish (a database that stopped answering, a lock held long).
    A TimeoutError, so UNAVAILABLE and a 503 like an outage, but told apart in the
    metrics (``unavailable_cause``): the database itself may be answering."""


class Pool(asyncpg.Pool):
    """A pool whose ``acquire`` waits at most ``acquire_seconds`` unless told otherwise:
    when the database stops answering (rather than refusing), its connections stay stuck
    in their statements (until ``command_timeout``), and the requests queued behind them
    get a 503 (a TimeoutError is UNAVAILABLE), not a wait without end.

    ``waiting`` counts the acquires under way: those waiting for a connection to come
    free, or for a new one to open (one that finds an idle connection never waits)."""

    acquire_seconds = ACQUIRE_SECONDS
    waiting = 0

    def acquire(self, *, timeout: float | None = None) -> Any:
        return super().acquire(timeout=self.acquire_seconds if timeout is None else timeout)

    async def _acquire(self, timeout: float | None) -> Any:  # noqa: ASYNC109 (asyncpg's signature)
        # asyncpg's own, which both ``async with pool.acquire()`` and ``await
        # pool.acquire()`` run (tests/integration/test_monitoring.py checks it still is)
        self.waiting += 1
        # full when the wait began: it waited for a connection to come free, not for a new
        # one to open (asyncpg hands an acquire a free slot at once, and then connects):
        # so judged, not only at the timeout, by when a held connection may have closed
        # meanwhile (it left the pool not "full", and a full pool's 503 was counted as the
        # database's)
        full = self._full()
        try:
            return await super()._acquire(timeout)  # type: ignore[misc]
        except TimeoutError as exc:
            if full or self._full():
                raise PoolExhausted(
                    f"no database connection came free within {timeout} s: all "
                    f"{self.get_max_size()} of this worker's pool were in use"
                ) from exc
            raise
        finally:
            self.waiting -= 1

    def _full(self) -> bool:
        """Is every connection the pool may open open and in use?"""
        return self.get_idle_size() == 0 and self.get_size() >= self.get_max_size()


async def create_pool(
    url: str, *, min_size: int = 2, max_size: int = 10, acquire_seconds: float = ACQUIRE_SECONDS
) -> Pool:
    """A pool whose connections decode jsonb to Python values."""
    pool = Pool(
        url,
        min_size=min_size,
        max_size=max_size,
        # asyncpg.create_pool's defaults, which its Pool takes only when named
        max_queries=50000,
        max_inactive_connection_lifetime=300.0,
        loop=None,
        record_class=asyncpg.Record,
        init=_init_connection,
        reset=_keep_session,
        connection_class=Connection,
        command_timeout=60,
        statement_cache_size=1024,
        # no JIT compilation: the service's statements are small, and asyncpg's type
        # introspection took 1.7 s with it on a Citus coordinator
        server_settings={"jit": "off"},
    )
    pool.acquire_seconds = acquire_seconds
    await pool
    return pool


PROBE_SECONDS = 2


async def probe(pool: asyncpg.Pool, url: str | None = None) -> None:
    """Does the database answer? Waits at most ``PROBE_SECONDS`` for a connection, and as
    long again for ``SELECT 1``; raises whatever kept it from answering.

    With ``url``, a pool whose every connection is in use (PoolExhausted: a busy worker,
    or a database whose statements no longer finish) is not taken for an unanswering
    database: the probe asks on a connection of its own, opened within ``PROBE_SECONDS``
    and asked as long again (dropped at once when it does not answer), so at most three
    times ``PROBE_SECONDS`` in all; one connection beyond the pool's, which PostgreSQL's
    ``max_connections`` must leave room for (README, Configuration). A readiness probe
    that failed on a full pool took a busy worker out of a load balancer's rotation, and
    all of them at the peak, sending the load nowhere (found by a probe of ops/)."""
    try:
        async with pool.acquire(timeout=PROBE_SECONDS) as conn:
            await conn.fetchval("SELECT 1", timeout=PROBE_SECONDS)
    except PoolExhausted:
        if url is None:
            raise
        own = await asyncpg.connect(url, timeout=PROBE_SECONDS)
        try:
            await own.fetchval("SELECT 1", timeout=PROBE_SECONDS)
        except BaseException:
            own.terminate()  # not close(): it waits for an answer too
            raise
        await own.close(timeout=PROBE_SECONDS)


# Batches with more codes than this are planned for their own values (plan_for_values).
LARGE_BATCH = 100


async def plan_for_values(conn: Conn) -> None:
    """Have this transaction's statements planned for the values they are given.

    The service's statements are nearly all keyed look-ups of a few codes, whose best
    plan does not depend on the values, so on plain PostgreSQL every connection plans
    each prepared statement once, for any parameters (``plan_cache_mode =
    force_generic_plan``, set when the pool opens it). Left to choose, PostgreSQL planned
    most of them again at every run: a generic plan is costed for an array of about ten
    codes, more than the one or two a sale names, so the plan for the values looked
    cheaper each time. Planning then took a quarter of PostgreSQL's CPU under the
    province's load mix (``pg_stat_statements``: 3.3 s of 13 s in a minute at 0.2 x the
    peak; the look-up of a dispense's waiting returns planned for 0.38 ms and ran for
    0.17). On Citus the coordinator keeps PostgreSQL's own choice.

    Where the values' sizes vary by orders of magnitude one generic plan can be far off:

    - ingest: costed for an array of about ten codes and used for a batch of thousands,
      it scanned the whole ``codes`` table, filtering by the array (``code = ANY($1)
      ORDER BY code FOR UPDATE``: 0.7 s and growing with the table, for a batch the
      index answers in milliseconds);
    - a lot's summary: costed for 7 codes and used for a lot of 100,000, it sorted them
      on disk (108 ms, against 35 ms hashed).

    Statements that big are few, so planning each costs little next to running it; small
    batches keep their cached plans (and this statement's round trip)."""
    await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")


async def fetch_for_values(conn: Conn, query: str, *args: Any) -> list[asyncpg.Record]:
    """Run one read planned for its values (``plan_for_values``, in a transaction of its
    own): for a statement that takes any combination of filters (``$1 IS NULL OR ...``),
    which only a plan for the filters given fits with an index."""
    async with conn.transaction():
        await plan_for_values(conn)
        return await conn.fetch(query, *args)


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
