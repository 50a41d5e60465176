"""The connection type store functions take (a plain connection or a pool's proxy), and
the signal that a transaction lost a race and must run again."""

from __future__ import annotations

from typing import TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

Conn: TypeAlias = asyncpg.Connection | PoolConnectionProxy


class RetryTransaction(Exception):
    """Another transaction created what this one meant to create (a code row, an event,
    a settlement): run the whole transaction again, which then finds it."""


def distributed(conn: Conn) -> bool:
    """Is this connection's database distributed (Citus)? Known to the pool's
    connections (``store.db.Connection``); a plain connection counts as not."""
    return bool(getattr(conn, "distributed", False))
