"""SQL for organisations, products and API keys."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from service.core.auth import KeyRecord, Principal, Role
from service.core.registry import Org, PersonLimit, Product
from service.store.conn import Conn

ORG_FIELDS = ("id", "name", "kind", "region", "fixmedins_code", "glns")
_ORG_COLUMNS = ", ".join(ORG_FIELDS)
PRODUCT_FIELDS = (
    "product_id",
    "name",
    "med_list_codg",
    "pack_units",
    "manufacturer",
    "level",
    "contains",
    "regions",
    "trace_exempt",
)
# and the optional person limit, as two columns (the load-test seeder leaves them empty)
_PRODUCT_COLUMNS = ", ".join((*PRODUCT_FIELDS, "person_limit_units", "person_limit_days"))


def _org(row: asyncpg.Record) -> Org:
    return Org(row["id"], row["name"], row["kind"], row["region"], row["fixmedins_code"], tuple(row["glns"]))


def _product(row: asyncpg.Record) -> Product:
    units, days = row["person_limit_units"], row["person_limit_days"]
    return Product(
        **{f: row[f] for f in PRODUCT_FIELDS if f != "regions"},
        regions=tuple(row["regions"]),
        person_limit=PersonLimit(units, days) if units is not None else None,
    )


async def insert_org(conn: Conn, org: Org) -> Org | None:
    """Insert; return None if the id exists already (the existing row is then read with
    :func:`get_org`). A GLN another organisation holds raises UniqueViolationError (call
    inside a transaction)."""
    row = await conn.fetchrow(
        f"""INSERT INTO orgs ({_ORG_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)
            ON CONFLICT (id) DO NOTHING RETURNING {_ORG_COLUMNS}""",  # noqa: S608
        org.id,
        org.name,
        org.kind,
        org.region,
        org.fixmedins_code,
        list(org.glns),
    )
    if row is None:
        return None
    if org.glns:
        await conn.execute(
            "INSERT INTO org_glns (gln, org) SELECT unnest($1::text[]), $2",
            list(org.glns),
            org.id,
        )
    return _org(row)


async def add_identifiers(conn: Conn, was: Org, now: Org) -> bool:
    """Store ``now``'s NHSA institution code and GLNs for the organisation read as ``was``,
    only if its row is still as read (False otherwise: read it again). A GLN or code
    another organisation holds raises UniqueViolationError (call inside a transaction)."""
    done = await conn.fetchval(
        """UPDATE orgs SET fixmedins_code = $2, glns = $3
           WHERE id = $1 AND fixmedins_code IS NOT DISTINCT FROM $4 AND glns = $5
           RETURNING true""",
        now.id,
        now.fixmedins_code,
        list(now.glns),
        was.fixmedins_code,
        list(was.glns),
    )
    if not done:
        return False
    added = sorted(set(now.glns) - set(was.glns))
    if added:
        await conn.execute("INSERT INTO org_glns (gln, org) SELECT unnest($1::text[]), $2", added, now.id)
    return True  # kept by this process once committed (the caller's get_org, fresh)


# Organisations and products never change once registered (a different body for an
# existing id is refused with 409), so each process keeps the rows it has read: hot
# paths (verify, settlement, ingest) then skip those round trips. Misses are not kept.
# An organisation's identifiers may be added later (``add_identifiers``): a worker that
# kept it without them reads it again where one is looked for and missing (``fresh``).
_orgs: dict[str, Org] = {}
_products: dict[str, Product] = {}


def forget_cached() -> None:
    """Drop the cached registry rows (for tests, which wipe the tables between cases)."""
    _orgs.clear()
    _products.clear()


async def get_org(conn: Conn, org_id: str, *, fresh: bool = False) -> Org | None:
    """The organisation, as this process kept it, or read now (``fresh``)."""
    if fresh:
        _orgs.pop(org_id, None)
    return (await get_orgs(conn, [org_id])).get(org_id)


async def get_orgs(conn: Conn, ids: list[str]) -> dict[str, Org]:
    missing = [i for i in ids if i not in _orgs]
    if missing:
        rows = await conn.fetch(f"SELECT {_ORG_COLUMNS} FROM orgs WHERE id = ANY($1::text[])", missing)  # noqa: S608
        _orgs.update((r["id"], _org(r)) for r in rows)
    return {i: _orgs[i] for i in ids if i in _orgs}


async def find_orgs(conn: Conn, text: str, limit: int) -> list[Org]:
    """The organisations whose id or name holds ``text`` (any case), or whose NHSA
    institution code or a GLN is it; the one it names exactly first, then by id; at most
    ``limit``. A scan of the registry,
    which holds thousands of rows, not millions."""
    rows = await conn.fetch(
        f"""SELECT {_ORG_COLUMNS} FROM orgs
            WHERE strpos(lower(id), lower($1)) > 0 OR strpos(lower(name), lower($1)) > 0
               OR fixmedins_code = $1 OR $1 = ANY(glns)
            ORDER BY lower(id) = lower($1) OR fixmedins_code = $1 OR $1 = ANY(glns) DESC, id
            LIMIT $2""",  # noqa: S608
        text,
        limit,
    )
    return [_org(r) for r in rows]


async def org_by_fixmedins_code(conn: Conn, fixmedins_code: str) -> Org | None:
    """The organisation registered with this NHSA institution code, if any."""
    for org in _orgs.values():
        if org.fixmedins_code == fixmedins_code:
            return org
    row = await conn.fetchrow(
        f"SELECT {_ORG_COLUMNS} FROM orgs WHERE fixmedins_code = $1",  # noqa: S608
        fixmedins_code,
    )
    if row is None:
        return None
    org = _orgs[row["id"]] = _org(row)
    return org


async def orgs_by_gln(conn: Conn, glns: list[str]) -> dict[str, Org]:
    """The organisations registered with these GLNs, by GLN (unregistered GLNs left out)."""
    if not glns:
        return {}
    rows = await conn.fetch(
        "SELECT gln, org FROM org_glns WHERE gln = ANY($1::text[])",
        glns,
    )
    orgs = await get_orgs(conn, sorted({r["org"] for r in rows}))
    return {r["gln"]: orgs[r["org"]] for r in rows if r["org"] in orgs}


async def insert_product(conn: Conn, product: Product) -> Product | None:
    """Insert; return None if the id exists already."""
    row = await conn.fetchrow(
        f"""INSERT INTO products ({_PRODUCT_COLUMNS})
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
            ON CONFLICT (product_id) DO NOTHING RETURNING {_PRODUCT_COLUMNS}""",  # noqa: S608
        product.product_id,
        product.name,
        product.med_list_codg,
        product.pack_units,
        product.manufacturer,
        product.level,
        product.contains,
        list(product.regions),
        product.trace_exempt,
        product.person_limit.units if product.person_limit else None,
        product.person_limit.days if product.person_limit else None,
    )
    return _product(row) if row else None


async def get_products(conn: Conn, ids: list[str]) -> dict[str, Product]:
    missing = [i for i in ids if i not in _products]
    if missing:
        rows = await conn.fetch(
            f"SELECT {_PRODUCT_COLUMNS} FROM products WHERE product_id = ANY($1::text[])",  # noqa: S608
            missing,
        )
        _products.update((r["product_id"], _product(r)) for r in rows)
    return {i: _products[i] for i in ids if i in _products}


async def products_billed_as(conn: Conn, codgs: list[str]) -> dict[str, list[Product]]:
    """The products registered under each of the catalogue items ``codgs`` (by index;
    not cached: a product registered later may change what an item is)."""
    rows = await conn.fetch(
        f"SELECT {_PRODUCT_COLUMNS} FROM products WHERE med_list_codg = ANY($1::text[])",  # noqa: S608
        codgs,
    )
    found: dict[str, list[Product]] = {}
    for r in rows:
        found.setdefault(r["med_list_codg"], []).append(_product(r))
    return found


async def insert_key(
    conn: Conn, key_id: str, secret_hash: bytes, role: Role, org: str | None, name: str | None = None
) -> None:
    await conn.execute(
        "INSERT INTO api_keys (key_id, secret_hash, role, org, name) VALUES ($1, $2, $3, $4, $5)",
        key_id,
        secret_hash,
        role.value,
        org,
        name,
    )


async def key_names(conn: Conn, key_ids: Sequence[str]) -> dict[str, str]:
    """The names of the keys among ``key_ids`` that have one."""
    rows = await conn.fetch(
        "SELECT key_id, name FROM api_keys WHERE key_id = ANY($1::text[]) AND name IS NOT NULL",
        sorted(set(key_ids)),
    )
    return {r["key_id"]: r["name"] for r in rows}


KEY_REVOKED_CHANNEL = "tracecode_key_revoked"


async def revoke_key(conn: Conn, key_id: str) -> datetime | None:
    """Revoke (idempotent); return when it was revoked, or None for an unknown key.
    Every service process listening on KEY_REVOKED_CHANNEL is told when this commits."""
    await conn.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE key_id = $1 AND revoked_at IS NULL", key_id
    )
    revoked: datetime | None = await conn.fetchval(
        "SELECT revoked_at FROM api_keys WHERE key_id = $1", key_id
    )
    if revoked is not None:  # on this server: the service's processes listen here, not on shards
        await conn.execute("SELECT pg_notify($1, $2)", KEY_REVOKED_CHANNEL, key_id)
    return revoked


async def revoke_org_keys(conn: Conn, org: str) -> list[tuple[str, datetime]]:
    """Revoke every live key of ``org``, each by :func:`revoke_key` (so each is
    announced on KEY_REVOKED_CHANNEL); (key id, when revoked) of each. Call inside a
    transaction, so that they are revoked, and announced, together."""
    rows = await conn.fetch(
        "SELECT key_id FROM api_keys WHERE org = $1 AND revoked_at IS NULL ORDER BY key_id", org
    )
    revoked = []
    for r in rows:
        at = await revoke_key(conn, r["key_id"])
        if at is not None:
            revoked.append((r["key_id"], at))
    return revoked


async def list_keys(
    conn: Conn,
    *,
    org: str | None = None,
    role: Role | None = None,
    revoked: bool | None = False,
    after: tuple[datetime, str] | None = None,
    limit: int | None = None,
) -> list[KeyRecord]:
    """Keys, newest first (by ``created_at``, then ``key_id``), below the cursor
    ``after`` (the last key of the page before). ``revoked``: False, only live keys;
    True, only revoked ones; None, both."""
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    where = []
    if org is not None:
        where.append(f"org = {arg(org)}")
    if role is not None:
        where.append(f"role = {arg(role.value)}")
    if revoked is not None:
        where.append("revoked_at IS NOT NULL" if revoked else "revoked_at IS NULL")
    if after is not None:
        where.append(f"(created_at, key_id) < ({arg(after[0])}, {arg(after[1])})")
    rows = await conn.fetch(
        f"""SELECT key_id, role, org, created_at, revoked_at, name FROM api_keys
            {"WHERE " + " AND ".join(where) if where else ""}
            ORDER BY created_at DESC, key_id DESC
            {f"LIMIT {arg(limit)}" if limit is not None else ""}""",  # noqa: S608 - fixed fragments only
        *args,
    )
    return [
        KeyRecord(r["key_id"], Role(r["role"]), r["org"], r["created_at"], r["revoked_at"], r["name"])
        for r in rows
    ]


async def principal_for(conn: Conn, secret_hash: bytes) -> Principal | None:
    row = await conn.fetchrow(
        "SELECT key_id, role, org, name FROM api_keys WHERE secret_hash = $1 AND revoked_at IS NULL",
        secret_hash,
    )
    if row is None:
        return None
    return Principal(key_id=row["key_id"], role=Role(row["role"]), org=row["org"], name=row["name"])
