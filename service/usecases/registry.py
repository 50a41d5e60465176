"""The registry: organisations, products and API keys. Registering is idempotent: the
same record again is accepted, a different one under the same id is a conflict."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

import asyncpg

from service.core.auth import KeyRecord, Role, new_key, token_hash
from service.core.registry import IdentifierKept, Org, Product, with_identifiers
from service.store import registry
from service.store.conn import unique_violation, violated_index
from service.usecases.errors import Conflict, Invalid

R = TypeVar("R", Org, Product)


@dataclass(frozen=True, slots=True)
class Registered(Generic[R]):
    record: R
    created: bool  # False: the same record was registered before


def _created_or_same(created: R | None, existing: R | None, wanted: R) -> Registered[R]:
    if created is not None:
        return Registered(created, True)
    assert existing is not None
    if existing != wanted:
        raise Conflict
    return Registered(existing, False)


async def register_org(pool: asyncpg.Pool, org: Org) -> Registered[Org]:
    """Register ``org``. Raises Conflict (also when another organisation holds its
    ``fixmedins_code`` or one of its ``glns``)."""
    async with pool.acquire() as conn:
        try:
            async with conn.transaction():
                created = await registry.insert_org(conn, org)
        except asyncpg.PostgresError as exc:
            if not unique_violation(exc):
                raise
            raise _held_elsewhere(exc) from None
        existing = None if created else await registry.get_org(conn, org.id)
    return _created_or_same(created, existing, org)


def _held_elsewhere(exc: asyncpg.PostgresError) -> Conflict:
    """The value another organisation holds, as the unique index the insert hit names it."""
    index = violated_index(exc)
    if index == "orgs_fixmedins_code":
        return Conflict("fixmedins_code", "another organisation has this fixmedins_code")
    if index == "org_glns_pkey":
        return Conflict("glns", "another organisation has one of these GLNs")
    return Conflict()


async def add_identifiers(
    pool: asyncpg.Pool, org_id: str, fixmedins_code: str | None, glns: list[str]
) -> Org | None:
    """Give a registered organisation its NHSA institution code and more GLNs
    (``core.registry.with_identifiers``); the organisation as it is now, or None when
    there is none. Raises Conflict: another code for it, or a code or GLN another
    organisation holds. Sent again, it changes nothing."""
    async with pool.acquire() as conn:
        for _ in range(ADD_ATTEMPTS):
            was = await registry.get_org(conn, org_id, fresh=True)
            if was is None:
                return None
            try:
                now = with_identifiers(was, fixmedins_code, glns)
            except IdentifierKept as exc:
                raise Conflict("fixmedins_code", str(exc)) from None
            if now == was:
                return now
            try:
                async with conn.transaction():
                    stored = await registry.add_identifiers(conn, was, now)
            except asyncpg.PostgresError as exc:
                if not unique_violation(exc):
                    raise
                raise _held_elsewhere(exc) from None
            if stored:  # committed: this process keeps the organisation as it is now
                return await registry.get_org(conn, org_id, fresh=True)
        raise Conflict(None, "the organisation was changed meanwhile; send it again")


ADD_ATTEMPTS = 3  # reads of an organisation that another request changed meanwhile


async def get_org(pool: asyncpg.Pool, org_id: str, *, fresh: bool = False) -> Org | None:
    """The organisation (``fresh``: read now, not as this process kept it)."""
    async with pool.acquire() as conn:
        return await registry.get_org(conn, org_id, fresh=fresh)


async def find_orgs(pool: asyncpg.Pool, text: str, limit: int) -> list[Org]:
    """The organisations an investigator may mean by ``text``: a part of an id or name,
    an NHSA institution code or a GLN."""
    async with pool.acquire() as conn:
        return await registry.find_orgs(conn, text, limit)


async def get_orgs(pool: asyncpg.Pool, org_ids: list[str]) -> dict[str, Org]:
    """The registered organisations among ``org_ids``, by id (unknown ids are left out)."""
    async with pool.acquire() as conn:
        return await registry.get_orgs(conn, org_ids)


async def org_by_fixmedins_code(pool: asyncpg.Pool, fixmedins_code: str) -> Org | None:
    """The organisation that NHSA uploads name by ``fixmedins_code``, if registered."""
    async with pool.acquire() as conn:
        return await registry.org_by_fixmedins_code(conn, fixmedins_code)


async def register_product(pool: asyncpg.Pool, product: Product) -> Registered[Product]:
    """Register ``product``, made by a registered manufacturer. Raises Invalid
    (``manufacturer``) or Conflict."""
    maker_id = product.manufacturer
    async with pool.acquire() as conn, conn.transaction():
        maker = await registry.get_org(conn, maker_id)
        if maker is None:
            raise Invalid("manufacturer", f"unknown organisation {maker_id}")
        if maker.kind != "manufacturer":
            raise Invalid("manufacturer", f"{maker_id} is a {maker.kind}")
        created = await registry.insert_product(conn, product)
        existing = None
        if created is None:
            existing = (await registry.get_products(conn, [product.product_id]))[product.product_id]
    return _created_or_same(created, existing, product)


async def create_key(
    pool: asyncpg.Pool, role: Role, org: str | None, name: str | None = None
) -> tuple[str, str]:
    """A new key for ``role`` (bound to ``org`` for an org key; ``name``: who holds it);
    returns (key id, secret). Only its hash is stored. Raises Invalid (``org``) for an
    unknown org."""
    key_id, secret = new_key()
    async with pool.acquire() as conn:
        if org is not None and await registry.get_org(conn, org) is None:
            raise Invalid("org", f"unknown organisation {org}")
        await registry.insert_key(conn, key_id, token_hash(secret), role, org, name)
    return key_id, secret


async def key_names(pool: asyncpg.Pool, key_ids: list[str]) -> dict[str, str]:
    """Who holds each of ``key_ids`` that was given a name."""
    if not key_ids:
        return {}
    async with pool.acquire() as conn:
        return await registry.key_names(conn, key_ids)


async def revoke_key(pool: asyncpg.Pool, key_id: str) -> datetime | None:
    """Revoke (idempotent); when it was revoked, or None for an unknown key. Every
    process listening for revocations hears of it when this commits."""
    async with pool.acquire() as conn:
        return await registry.revoke_key(conn, key_id)


@dataclass(frozen=True, slots=True)
class KeyQuery:
    org: str | None = None
    role: Role | None = None
    revoked: bool | None = False  # False: live keys only; True: revoked only; None: both


@dataclass(frozen=True, slots=True)
class KeyPage:
    items: list[KeyRecord]
    last: tuple[datetime, str] | None  # where the next page starts below; None on the last page


async def list_keys(
    pool: asyncpg.Pool, query: KeyQuery, *, after: tuple[datetime, str] | None, limit: int
) -> KeyPage:
    """Up to ``limit`` keys, newest first, below ``after`` (the last key of the page
    before, as (created_at, key_id)): keys made while an admin pages never shift a page.
    Raises Invalid (``org``) for an unknown organisation: a misspelt one must not read
    as an organisation without keys."""
    async with pool.acquire() as conn:
        if query.org is not None and await registry.get_org(conn, query.org) is None:
            raise Invalid("org", f"unknown organisation {query.org}")
        rows = await registry.list_keys(
            conn, org=query.org, role=query.role, revoked=query.revoked, after=after, limit=limit + 1
        )
    items = rows[:limit]
    more = len(rows) > limit and bool(items)
    return KeyPage(items, (items[-1].created_at, items[-1].key_id) if more else None)


async def revoke_org_keys(pool: asyncpg.Pool, org: str) -> list[tuple[str, datetime]] | None:
    """Revoke every live key of ``org``, each as :func:`revoke_key` does (so every
    process listening for revocations hears of each when this commits), all in one
    transaction; (key id, when revoked) of each, or None for an unknown organisation."""
    async with pool.acquire() as conn:
        if await registry.get_org(conn, org) is None:
            return None
        async with conn.transaction():
            return await registry.revoke_org_keys(conn, org)


async def get_products(pool: asyncpg.Pool, product_ids: list[str]) -> dict[str, Product]:
    """The registered products among ``product_ids``, by id."""
    async with pool.acquire() as conn:
        return await registry.get_products(conn, product_ids)
