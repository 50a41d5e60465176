"""SQL for purchases: what each insured person (by keyed hash) bought of each catalogue
item with a person limit, by settlement (for EXCESS_PURCHASE). A reversal marks them
reversed with the settlement (``settlements.mark_reversed``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from service.core.settlement import Purchase
from service.store.conn import Conn


async def lock_person(conn: Conn, psn_hash: bytes, items: Sequence[str]) -> None:
    """Serialise one person's settlements of the same items (a transaction lock per
    person and item, taken in key order, so none deadlock): each reads the window after
    the one before it committed its purchases (read committed), so two racing ones do
    not both stay under the limit. Only a settlement of an item with a person limit
    takes it."""
    if not items:
        return
    await conn.execute(
        """SELECT pg_advisory_xact_lock(k)
           FROM (SELECT DISTINCT hashtextextended('purchases/' || encode($1, 'hex') || '/' || i, 0) AS k
                 FROM unnest($2::text[]) AS i) AS keys
           ORDER BY k""",
        psn_hash,
        list(items),
    )


async def around(
    conn: Conn, psn_hash: bytes, items: Sequence[str], since: datetime, until: datetime
) -> list[Purchase]:
    """The person's purchases of ``items`` in (since, until), reversed ones too (they
    say so), oldest first, by index."""
    rows = await conn.fetch(
        """SELECT med_list_codg, setl_id, org, at, units, reversed FROM purchases
           WHERE psn_hash = $1 AND med_list_codg = ANY($2::text[]) AND at > $3 AND at < $4
           ORDER BY at""",
        psn_hash,
        list(items),
        since,
        until,
    )
    return [
        Purchase(r["med_list_codg"], r["setl_id"], r["org"], r["at"], r["units"], r["reversed"]) for r in rows
    ]


async def of_settlement(conn: Conn, psn_hash: bytes, items: Sequence[str], setl_id: str) -> list[Purchase]:
    """The person's purchases under one settlement, of those of ``items`` it recorded
    (by the primary key), not reversed."""
    rows = await conn.fetch(
        """SELECT med_list_codg, setl_id, org, at, units FROM purchases
           WHERE psn_hash = $1 AND med_list_codg = ANY($2::text[]) AND setl_id = $3 AND NOT reversed""",
        psn_hash,
        list(items),
        setl_id,
    )
    return [Purchase(r["med_list_codg"], r["setl_id"], r["org"], r["at"], r["units"]) for r in rows]


async def record(conn: Conn, psn_hash: bytes, purchases: Sequence[Purchase]) -> None:
    if not purchases:
        return
    await conn.execute(
        """INSERT INTO purchases (psn_hash, med_list_codg, setl_id, org, at, units)
           SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::int4[])""",
        psn_hash,
        [p.med_list_codg for p in purchases],
        [p.setl_id for p in purchases],
        [p.org for p in purchases],
        [p.at for p in purchases],
        [p.units for p in purchases],
    )

