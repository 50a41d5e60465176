"""SQL for settlements."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from service.core.settlement import EarlierSale
from service.store.conn import Conn


async def claim(
    conn: Conn,
    *,
    setl_id: str,
    org: str,
    psn_hash: bytes,
    at: datetime,
    body_hash: bytes,
    request: dict[str, Any],
) -> bool:
    """Insert the settlement row first; False if the id exists. A concurrent request
    with the same id waits here until this transaction ends, then sees the row."""
    row = await conn.fetchval(
        """INSERT INTO settlements (setl_id, org, psn_hash, at, body_hash, request)
           VALUES ($1, $2, $3, $4, $5, $6)
           ON CONFLICT (setl_id) DO NOTHING RETURNING 1""",
        setl_id,
        org,
        psn_hash,
        at,
        body_hash,
        request,
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


async def answer(conn: Conn, setl_id: str, response: dict[str, Any], decision: str) -> None:
    await conn.execute(
        "UPDATE settlements SET response = $2, decision = $3 WHERE setl_id = $1",
        setl_id,
        response,
        decision,
    )


async def mark_reversed(conn: Conn, setl_id: str, reversal: dict[str, Any]) -> None:
    await conn.execute(
        "UPDATE settlements SET reversal = $2, reversed_at = now() WHERE setl_id = $1",
        setl_id,
        reversal,
    )


async def earlier_sales(conn: Conn, codes: list[str]) -> dict[str, list[EarlierSale]]:
    """Unreversed consumptions of ``codes``, oldest first."""
    rows = await conn.fetch(
        """SELECT code, sale_key, setl_id, event_id::text AS event_id, units FROM consumptions
           WHERE code = ANY($1::text[]) AND reversed_at IS NULL
           ORDER BY at, created_at""",
        codes,
    )
    out: dict[str, list[EarlierSale]] = {}
    for r in rows:
        out.setdefault(r["code"], []).append(
            EarlierSale(r["sale_key"], r["setl_id"], r["event_id"], r["units"])
        )
    return out


async def sale_consumptions(conn: Conn, sale_key: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """SELECT code, units FROM consumptions
           WHERE sale_key = $1 AND reversed_at IS NULL ORDER BY code""",
        sale_key,
    )
    return [dict(r) for r in rows]


async def exempt_codgs(conn: Conn, codgs: list[str]) -> set[str]:
    rows = await conn.fetch(
        "SELECT DISTINCT med_list_codg FROM products WHERE med_list_codg = ANY($1::text[]) AND trace_exempt",
        codgs,
    )
    return {r["med_list_codg"] for r in rows}
