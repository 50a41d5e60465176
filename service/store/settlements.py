"""SQL for settlements."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from service.store.conn import Conn


async def insert(
    conn: Conn,
    *,
    setl_id: str,
    org: str,
    psn_hash: bytes,
    at: datetime,
    body_hash: bytes,
    request: dict[str, Any],
    response: dict[str, Any],
    decision: str,
) -> bool:
    """Store the settlement with its answer; False if the id exists already (a concurrent
    request with the same id waits here until the other transaction ends)."""
    row = await conn.fetchval(
        """INSERT INTO settlements (setl_id, org, psn_hash, at, body_hash, request, response, decision)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
           ON CONFLICT (setl_id) DO NOTHING RETURNING 1""",
        setl_id,
        org,
        psn_hash,
        at,
        body_hash,
        request,
        response,
        decision,
    )
    return row is not None


_GET = """SELECT setl_id, org, psn_hash, at, body_hash, request, response, decision, reversal,
                 reversed_at, created_at
          FROM settlements WHERE setl_id = $1"""
_GET_LOCKED = _GET + " FOR UPDATE"


async def get(conn: Conn, setl_id: str, *, lock: bool = False) -> dict[str, Any] | None:
    query = _GET_LOCKED if lock else _GET
    row = await conn.fetchrow(query, setl_id)
    return dict(row) if row else None


async def mark_reversed(conn: Conn, setl_id: str, psn_hash: bytes, reversal: dict[str, Any]) -> None:
    """Keep the reversal with the settlement; the person's purchases of it no longer
    count (for EXCESS_PURCHASE). One statement: a reversal is one round trip fewer."""
    await conn.execute(
        """WITH purchases AS (
               UPDATE purchases SET reversed = true
               WHERE psn_hash = $3 AND setl_id = $1 AND NOT reversed)
           UPDATE settlements SET reversal = $2, reversed_at = now() WHERE setl_id = $1""",
        setl_id,
        reversal,
        psn_hash,
    )


async def exempt_codgs(conn: Conn, codgs: list[str]) -> set[str]:
    rows = await conn.fetch(
        "SELECT DISTINCT med_list_codg FROM products WHERE med_list_codg = ANY($1::text[]) AND trace_exempt",
        codgs,
    )
    return {r["med_list_codg"] for r in rows}
