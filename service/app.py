"""The application factory: wiring only (routes, plugins, lifespan)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from datetime import timedelta

import redis.asyncio as aioredis
from litestar import Litestar
from litestar.config.app import AppConfig
from litestar.datastructures import State
from litestar.middleware.base import DefineMiddleware

from service import console, metrics
from service.api import errors, openapi, ratelimit, requestlog
from service.api.auth import PUBLIC_PATHS, ApiKeyMiddleware, KeyCache, listen_for_revocations
from service.api.codes import CodesController
from service.api.deps import AppServices, dependencies
from service.api.epcis import EpcisController, schema_validators
from service.api.events import EventsController
from service.api.flags import FlagsController
from service.api.health import HealthController, MetricsController
from service.api.investigation import InvestigationController
from service.api.nhsa import NhsaController
from service.api.registry import RegistryController
from service.api.settlements import SettlementsController
from service.config import Settings
from service.feed import FlagFeed
from service.store.db import Outage, create_pool, probe
from service.usecases import flags as flag_usecases

log = logging.getLogger(__name__)


async def _watch_pool(app: Litestar) -> None:
    pool = app.state.pool
    outage: Outage = app.state.db_outage
    while True:
        size = pool.get_size()
        metrics.DB_POOL_SIZE.set(size)
        metrics.DB_POOL_IN_USE.set(size - pool.get_idle_size())
        metrics.DB_POOL_MAX.set(pool.get_max_size())
        metrics.DB_POOL_WAITING.set(pool.waiting)
        if outage.since is not None:  # a request found the database down: is it back?
            with contextlib.suppress(Exception):  # any failure: not back yet
                await probe(pool)
                outage.end()
        await asyncio.sleep(1)


async def _stop(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel the background loops, again each second until they have stopped: on
    Python 3.11 a cancellation that meets a timeout inside asyncio.wait_for (asyncpg's
    and redis-py's own) can surface as TimeoutError, which a loop that outlives outages
    catches and carries on from; one cancel then left shutdown waiting for ever."""
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=1)


@contextlib.asynccontextmanager
async def _lifespan(app: Litestar) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    if not settings.database_url:
        raise RuntimeError("TRACE_DATABASE_URL is not set (tracecode serve sets it)")
    if settings.epcis_schema is not None:
        schema_validators(settings.epcis_schema)  # compiled now, not in a first capture
    metrics.time_gc_pauses()
    metrics.forget_dead_workers()
    app.state.pool = await create_pool(
        settings.database_url,
        min_size=settings.db_pool_min,
        max_size=settings.db_pool_max,
        acquire_seconds=settings.db_acquire_seconds,
    )
    app.state.redis = None
    tasks = [asyncio.create_task(_watch_pool(app))]
    if settings.key_cache_seconds > 0:
        tasks.append(asyncio.create_task(listen_for_revocations(settings.database_url, app.state.key_cache)))
    app.state.feed_wake = lambda: None
    if settings.redis_url:
        # short timeouts: a Redis outage must not hold up settling or ingest
        app.state.redis = aioredis.from_url(
            settings.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0
        )
        console.use_redis(app, app.state.redis)
        feed = FlagFeed(app.state.pool, app.state.redis)
        app.state.feed_wake = feed.wake
        tasks.append(asyncio.create_task(feed.run()))
    app.state.services = AppServices(
        app.state.pool, settings, app.state.key_cache, app.state.feed_wake, app.state.redis
    )
    grace = timedelta(hours=settings.flag_grace_hours)
    promoting = flag_usecases.keep_promoting(
        app.state.pool, grace, settings.flag_promote_seconds, app.state.feed_wake
    )
    tasks.append(asyncio.create_task(promoting))
    # What the worker has loaded (the app, the libraries, their caches) lives as long as
    # it does: frozen, the oldest generation's collections no longer walk it. They ran
    # inside requests: a 1,000-row NHSA upload makes tens of thousands of objects, and
    # over scripts/bench_nhsa.py --batches 1000 they took 54 ms each, 14 ms frozen
    # (tracecode_gc_pause_seconds, loadtests/README.md).
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        await _stop(tasks)
        if app.state.redis is not None:
            await app.state.redis.aclose()
        await app.state.pool.close()


def create_app(settings: Settings | None = None) -> Litestar:
    """Build the ASGI app. Settings default to the environment."""
    settings = settings or Settings.from_env()
    requestlog.configure(settings.log_level)
    # the console signs in with a session of its own (service/console/auth.py)
    auth = DefineMiddleware(ApiKeyMiddleware, exclude=[f"^{p}" for p in (*PUBLIC_PATHS, console.PATH)])
    # the lifespan adds the pool, Redis and the feed's wake-up once they are started
    state = State(
        {"settings": settings, "key_cache": KeyCache(settings.key_cache_seconds), "db_outage": Outage()}
    )
    limiter = ratelimit.Limiter(settings.rate_limits, settings.redis_url)
    config = AppConfig(
        route_handlers=[
            HealthController,
            MetricsController,
            RegistryController,
            EventsController,
            CodesController,
            SettlementsController,
            FlagsController,
            InvestigationController,
            NhsaController,
            EpcisController,
            console.router(settings),
        ],
        template_config=console.template_config(),
        # the limiter after the key middleware: it counts by the key that is calling
        middleware=[auth, *ratelimit.middleware(limiter)],
        plugins=[errors.plugin(), console.error_pages()],  # the console's pages wrap the problems
        exception_handlers=dict(errors.exception_handlers),  # type: ignore[arg-type]
        lifespan=[_lifespan],
        on_shutdown=[limiter.close],
        openapi_config=openapi.config(),
        state=state,
        dependencies=dependencies(state),
        request_max_body_size=settings.max_body_bytes,
        before_request=errors.refuse_nul_and_bad_text,
        debug=False,
    )
    app = Litestar.from_config(config)
    # outside everything, routing included, so a 404 is logged and carries a request id
    # too, and every answer is counted with its real status (service.metrics)
    app.asgi_handler = requestlog.RequestLog(app.asgi_handler)
    return app
