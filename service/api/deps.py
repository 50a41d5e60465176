"""What handlers receive by dependency injection, declared once on the app.

A handler asks for the app's services by naming them: ``services: Services``. They are
one object (the pool, the settings, the flag feed's wake-up and Valkey, the key cache) rather than
one dependency each, because Litestar resolves several dependencies of one handler
concurrently, in a task group of their own: measured, that cost more per request than
the whole settlement rule. The lifespan builds the object once the pool and the feed are
started; the provider takes no arguments, so Litestar has nothing to parse per request.
``SkipValidation``: these are the app's own objects, not client input.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import SkipValidation

from service.api.auth import KeyCache
from service.config import Settings


@dataclass(frozen=True, slots=True)
class AppServices:
    pool: asyncpg.Pool
    settings: Settings
    key_cache: KeyCache
    feed_wake: Callable[[], None]  # new or changed flags were committed: publish soon
    redis: aioredis.Redis | None = None  # the flag feed's Valkey, when the service has one


Services = NamedDependency[SkipValidation[AppServices]]


def dependencies(state: State) -> dict[str, Provide | Callable[..., Any]]:
    """The provider, bound to the app's ``state``."""

    def services() -> AppServices:
        return state.services  # type: ignore[no-any-return]

    return {"services": Provide(services, sync_to_thread=False)}
