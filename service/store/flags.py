"""SQL for flags."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg


@dataclass(frozen=True, slots=True)
class NewFlag:
    kind: str
    code: str
    org: str | None
    region: str | None
    at: datetime
    detail: str
    refs: dict[str, Any]
    dedup_key: str


async def raise_flags(conn: asyncpg.Connection, flags: Iterable[NewFlag]) -> list[dict[str, Any]]:
    """Store new suspicions; a suspicion already raised from the same evidence is the
    existing flag (no flag storms from retries). Returns {flag_id, kind, code} for each
    flag given, in order."""
    items = list(flags)
    if not items:
        return []
    rows = await conn.fetch(
        """WITH given AS (
               SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],
                                    $5::timestamptz[], $6::text[], $7::jsonb[], $8::text[])
                   WITH ORDINALITY AS g(kind, code, org, region, at, detail, refs, dedup_key, n)),
           ins AS (
               INSERT INTO flags (kind, code, org, region, at, detail, refs, dedup_key)
               SELECT kind, code, org, region, at, detail, refs, dedup_key FROM given ORDER BY n
               ON CONFLICT (dedup_key) DO NOTHING
               RETURNING flag_id, dedup_key)
           SELECT g.n, coalesce(ins.flag_id, f.flag_id) AS flag_id, g.kind, g.code,
                  ins.flag_id IS NOT NULL AS new
           FROM given g
           LEFT JOIN ins ON ins.dedup_key = g.dedup_key
           LEFT JOIN flags f ON f.dedup_key = g.dedup_key
           ORDER BY g.n""",
        [f.kind for f in items],
        [f.code for f in items],
        [f.org for f in items],
        [f.region for f in items],
        [f.at for f in items],
        [f.detail for f in items],
        [f.refs for f in items],
        [f.dedup_key for f in items],
    )
    return [dict(r) for r in rows]


async def for_code(conn: asyncpg.Connection, code: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """SELECT flag_id, kind, code, org, region, at, raised_at, status, detail, refs
           FROM flags WHERE code = $1 ORDER BY at, flag_id""",
        code,
    )
    return [dict(r) for r in rows]
