"""Applies ``sql/migrations/NNNN_name.sql`` in order, each exactly once.

Safe to run twice and from several processes at once: the whole run holds a
transaction-level advisory lock, and each file is recorded in ``schema_migrations`` in
the same transaction that applies it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from service.store.conn import Conn

# read from the checkout, beside the service package: they are not packaged, so tracecode
# runs from a checkout installed in place (pip install -e ., as ./dev does)
MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "sql" / "migrations"
_LOCK_KEY = 7_413_000_001  # arbitrary, constant: "tracecode migrations"
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Read the migration files, ordered by number; raise on a malformed or repeated number,
    or when the folder is missing (an install that is not a checkout: with no migrations
    found, serve said the database was up to date and served it without its tables)."""
    if not directory.is_dir():
        raise FileNotFoundError(
            f"no migrations folder at {directory}: tracecode runs from a checkout of its "
            "repository, installed in place (pip install -e .)"
        )
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if match is None:
            raise ValueError(f"migration file name must be NNNN_name.sql: {path.name}")
        version = int(match.group(1))
        if version in found:
            raise ValueError(f"two migrations numbered {version}")
        found[version] = Migration(version, path.name, path.read_text())
    return [found[v] for v in sorted(found)]


async def migrate(conn: Conn, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply pending migrations; return the names applied by this call."""
    applied_now: list[str] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version    integer PRIMARY KEY,
                   name       text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for migration in load_migrations(directory):
            if migration.version in done:
                continue
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )
            applied_now.append(migration.name)
    return applied_now
