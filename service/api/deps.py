"""What handlers receive by dependency injection, declared once on the app.

A handler asks for one by naming it: ``pool: DbPool``, ``settings: AppSettings``,
``feed_wake: FeedWake``, ``key_cache: Keys``. The values live on the app's state, where
the lifespan puts the pool and the flag feed once they are started; each provider reads
the state when a request needs it, taking no arguments so Litestar has nothing to parse
per request. ``SkipValidation``: these are the app's own objects, not client input.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import SkipValidation

from service.api.auth import KeyCache
from service.config import Settings

DbPool = NamedDependency[SkipValidation[asyncpg.Pool]]
AppSettings = NamedDependency[SkipValidation[Settings]]
FeedWake = NamedDependency[SkipValidation[Callable[[], None]]]
Keys = NamedDependency[SkipValidation[KeyCache]]


def dependencies(state: State) -> dict[str, Provide | Callable[..., Any]]:
    """The providers, bound to the app's ``state``."""

    def pool() -> asyncpg.Pool:
        return state.pool  # type: ignore[no-any-return]

    def settings() -> Settings:
        return state.settings  # type: ignore[no-any-return]

    def feed_wake() -> Callable[[], None]:
        return state.feed_wake  # type: ignore[no-any-return]

    def key_cache() -> KeyCache:
        return state.key_cache  # type: ignore[no-any-return]

    return {
        "pool": Provide(pool, sync_to_thread=False),
        "settings": Provide(settings, sync_to_thread=False),
        "feed_wake": Provide(feed_wake, sync_to_thread=False),
        "key_cache": Provide(key_cache, sync_to_thread=False),
    }
