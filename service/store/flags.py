"""SQL for flags: raising (deduplicated), clearing, listing, the workflow, the outbox."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from service.core.flags import NewFlag
from service.store.conn import Conn

_COLUMNS = "flag_id, kind, code, org, region, at, raised_at, status, detail, refs"


async def raise_flags(conn: Conn, flags: Iterable[NewFlag]) -> list[dict[str, Any]]:
    """Store suspicions, one flag per ``dedup_key`` (a retry of the same evidence is the
    same flag; an auto-cleared flag whose suspicion returns is opened again). Returns
    {flag_id, kind, code, dedup_key} per distinct key, in the order given."""
    unique: dict[str, NewFlag] = {}
    for flag in flags:
        unique.setdefault(flag.dedup_key, flag)
    items = list(unique.values())
    if not items:
        return []
    rows = await conn.fetch(
        """WITH given AS (
               SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],
                                    $5::timestamptz[], $6::text[], $7::jsonb[], $8::text[])
                   WITH ORDINALITY AS g(kind, code, org, region, at, detail, refs, dedup_key, n))
           INSERT INTO flags (kind, code, org, region, at, detail, refs, dedup_key)
           SELECT g.kind, g.code, g.org, coalesce(g.region, o.region), g.at, g.detail, g.refs, g.dedup_key
           FROM given g LEFT JOIN orgs o ON o.id = g.org
           ORDER BY g.n
           ON CONFLICT (dedup_key) DO UPDATE
               SET status = 'open', updated_at = now(), published_at = NULL
               WHERE flags.status = 'auto_cleared'
           RETURNING flag_id, kind, code, dedup_key""",
        [f.kind for f in items],
        [f.code for f in items],
        [f.org for f in items],
        [f.region for f in items],
        [f.at for f in items],
        [f.detail for f in items],
        [f.refs for f in items],
        [f.dedup_key for f in items],
    )
    touched = {r["dedup_key"]: dict(r) for r in rows}
    missing = [f.dedup_key for f in items if f.dedup_key not in touched]
    if missing:  # raised before and still standing: the existing flag
        for r in await conn.fetch(
            "SELECT flag_id, kind, code, dedup_key FROM flags WHERE dedup_key = ANY($1::text[])", missing
        ):
            touched[r["dedup_key"]] = dict(r)
    return [touched[f.dedup_key] for f in items]


async def auto_clear(
    conn: Conn,
    codes: Sequence[str],
    standing: set[str],
    kinds: Sequence[str],
    cleared_by: list[str],
    rejudged: set[str],
) -> list[int]:
    """Open flags of ``kinds`` on ``codes`` that the current fold no longer suspects
    (their key is not in ``standing``) become auto_cleared, naming the events that
    explained them. Event flags on these codes were all re-judged by the fold; a
    settlement's flag only if its key is in ``rejudged``."""
    rows = await conn.fetch(
        """UPDATE flags
           SET status = 'auto_cleared', updated_at = now(), published_at = NULL,
               refs = refs || jsonb_build_object('cleared_by', $4::text[])
           WHERE code = ANY($1::text[]) AND kind = ANY($3::text[]) AND status = 'open'
             AND (dedup_key LIKE '%:event:%' OR dedup_key = ANY($5::text[]))
             AND NOT (dedup_key = ANY($2::text[]))
           RETURNING flag_id""",
        list(codes),
        list(standing),
        list(kinds),
        cleared_by,
        list(rejudged),
    )
    ids = [r["flag_id"] for r in rows]
    if ids:
        await conn.execute(
            """INSERT INTO flag_changes (flag_id, status, note, by_key)
               SELECT id, 'auto_cleared', 'explained by later-arriving events', 'system'
               FROM unnest($1::bigint[]) AS id""",
            ids,
        )
    return ids


async def settlement_suspicions(conn: Conn, codes: Sequence[str]) -> list[dict[str, Any]]:
    """Open custody flags (UNKNOWN_CODE, DIVERSION) that settlements raised on ``codes``:
    a late event may explain them, so a replay judges them again."""
    rows = await conn.fetch(
        """SELECT code, org, at, dedup_key FROM flags
           WHERE code = ANY($1::text[]) AND status = 'open'
             AND kind IN ('UNKNOWN_CODE', 'DIVERSION') AND dedup_key LIKE '%:setl:%'""",
        list(codes),
    )
    return [{**dict(r), "setl_id": r["dedup_key"].split(":setl:", 1)[1]} for r in rows]


async def for_code(conn: Conn, code: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(f"SELECT {_COLUMNS} FROM flags WHERE code = $1 ORDER BY at, flag_id", code)  # noqa: S608
    return [dict(r) for r in rows]


async def get(conn: Conn, flag_id: int, *, lock: bool = False) -> dict[str, Any] | None:
    query = f"SELECT {_COLUMNS} FROM flags WHERE flag_id = $1"  # noqa: S608
    row = await conn.fetchrow(query + (" FOR UPDATE" if lock else ""), flag_id)
    return dict(row) if row else None


async def changes(conn: Conn, flag_id: int) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT at, status, note, by_key FROM flag_changes WHERE flag_id = $1 ORDER BY at", flag_id
    )
    return [dict(r) for r in rows]


async def set_status(conn: Conn, flag_id: int, status: str, note: str | None, by_key: str) -> None:
    await conn.execute(
        "UPDATE flags SET status = $2, updated_at = now(), published_at = NULL WHERE flag_id = $1",
        flag_id,
        status,
    )
    await conn.execute(
        "INSERT INTO flag_changes (flag_id, status, note, by_key) VALUES ($1, $2, $3, $4)",
        flag_id,
        status,
        note,
        by_key,
    )


async def search(
    conn: Conn,
    *,
    kind: str | None,
    status: str | None,
    org: str | None,
    region: str | None,
    code: str | None,
    since: datetime | None,
    until: datetime | None,
    before_id: int | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Newest first (by flag id, which only grows), after the cursor ``before_id``."""
    rows = await conn.fetch(
        f"""SELECT {_COLUMNS} FROM flags
            WHERE ($1::text IS NULL OR kind = $1)
              AND ($2::text IS NULL OR status = $2)
              AND ($3::text IS NULL OR org = $3)
              AND ($4::text IS NULL OR region LIKE $4 || '%')
              AND ($5::text IS NULL OR code = $5)
              AND ($6::timestamptz IS NULL OR at >= $6)
              AND ($7::timestamptz IS NULL OR at < $7)
              AND ($8::bigint IS NULL OR flag_id < $8)
            ORDER BY flag_id DESC
            LIMIT $9""",  # noqa: S608
        kind,
        status,
        org,
        region,
        code,
        since,
        until,
        before_id,
        limit,
    )
    return [dict(r) for r in rows]


async def claim_unpublished(conn: Conn, limit: int) -> list[dict[str, Any]]:
    """Flags (new or changed) not yet on the stream, locked so that another worker
    publishing at the same time skips them."""
    rows = await conn.fetch(
        f"""SELECT {_COLUMNS} FROM flags WHERE published_at IS NULL
            ORDER BY flag_id LIMIT $1 FOR UPDATE SKIP LOCKED""",  # noqa: S608
        limit,
    )
    return [dict(r) for r in rows]


async def mark_published(conn: Conn, ids: list[int]) -> None:
    await conn.execute("UPDATE flags SET published_at = now() WHERE flag_id = ANY($1::bigint[])", ids)


async def unpublished_count(conn: Conn) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM flags WHERE published_at IS NULL"))
