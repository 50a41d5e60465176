"""The connection type store functions take (a plain connection or a pool's proxy), and
the signal that a transaction lost a race and must run again."""

from __future__ import annotations

import re
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


# Citus passes a worker's unique violation in a COPY or a multi-shard insert on as an
# internal error (SQLSTATE XX000) that keeps PostgreSQL's message (checked on 13.2.2);
# a single-shard statement keeps 23505.
_DUPLICATE_KEY = "duplicate key value violates unique constraint"


def unique_violation(exc: BaseException) -> bool:
    """Did a write meet a row that another transaction stored (a unique key)? Also as
    Citus reports it from a COPY or a multi-shard insert."""
    if isinstance(exc, asyncpg.UniqueViolationError):
        return True
    return isinstance(exc, asyncpg.InternalServerError) and str(exc).startswith(_DUPLICATE_KEY)


_CONSTRAINT = re.compile(_DUPLICATE_KEY + r' "([^"]+)"')


def violated_index(exc: BaseException) -> str | None:
    """The unique index a :func:`unique_violation` hit, without a Citus shard's suffix
    (Citus names the shard's index, ``orgs_fixmedins_code_102008``, in its message only)."""
    name = getattr(exc, "constraint_name", None)
    if name is None and (found := _CONSTRAINT.match(str(exc))):
        name = found.group(1)
    return re.sub(r"_[0-9]+$", "", name) if isinstance(name, str) else None
