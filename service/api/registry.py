"""Registry (admin): organisations, products, API keys."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, Response, delete, post
from litestar.params import FromPath, JSONBody, SkipValidation

from service.api.auth import requires
from service.api.errors import bad_input, problem, strict_body
from service.api.types import OrgId, Region, RegionPrefix, Text
from service.core.auth import Role, new_key, token_hash
from service.core.codes import is_product_id
from service.core.registry import Org, Product
from service.store import registry


class OrgIn(msgspec.Struct, forbid_unknown_fields=True):
    id: OrgId
    name: Text
    kind: Literal["manufacturer", "distributor", "hospital", "pharmacy"]
    region: Region


class ProductIn(msgspec.Struct, forbid_unknown_fields=True):
    product_id: Annotated[str, msgspec.Meta(min_length=7, max_length=14)]
    name: Text
    med_list_codg: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    pack_units: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]
    manufacturer: OrgId
    level: Literal["unit", "case", "pallet"] = "unit"
    contains: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] | None = None
    regions: Annotated[list[RegionPrefix], msgspec.Meta(max_length=100)] = []
    trace_exempt: bool = False


class KeyIn(msgspec.Struct, forbid_unknown_fields=True):
    role: Role
    org: OrgId | None = None


class KeyOut(msgspec.Struct):
    key_id: str
    secret: str
    role: str
    org: str | None


class KeyRevoked(msgspec.Struct):
    key_id: str
    revoked_at: datetime


def _created_or_same(
    created: Org | Product | None,
    existing: Org | Product | None,
    wanted: Org | Product,
    what: str,
) -> Response[dict[str, Any]]:
    """201 for a new record, 200 when the same body is posted again, 409 otherwise."""
    if created is not None:
        return Response(dataclasses.asdict(created), status_code=201)
    assert existing is not None
    if existing == wanted:
        return Response(dataclasses.asdict(existing), status_code=200)
    raise problem(409, f"{what} exists with different attributes", kind="conflict")


class RegistryController(Controller):
    path = "/v1"
    guards = [requires(Role.ADMIN)]
    tags = ["registry"]

    @post("/orgs", status_code=201)
    async def create_org(
        self, request: Request[Any, Any, Any], data: SkipValidation[JSONBody[OrgIn]]
    ) -> Response[dict[str, Any]]:
        data = strict_body(data, OrgIn)
        wanted = Org(**msgspec.structs.asdict(data))
        async with request.app.state.pool.acquire() as conn:
            created = await registry.insert_org(conn, wanted)
            existing = None if created else await registry.get_org(conn, data.id)
        return _created_or_same(created, existing, wanted, f"organisation {data.id}")

    @post("/products", status_code=201)
    async def create_product(
        self, request: Request[Any, Any, Any], data: SkipValidation[JSONBody[ProductIn]]
    ) -> Response[dict[str, Any]]:
        data = strict_body(data, ProductIn)
        if not is_product_id(data.product_id):
            raise bad_input("product_id", "must be a 7-digit CN20 product identifier or a GTIN-14")
        if data.level == "unit" and data.contains is not None:
            raise bad_input("contains", "only a case or pallet contains children")
        if data.level != "unit" and data.contains is None:
            raise bad_input("contains", f"a {data.level} must say how many children it holds")
        wanted = Product(**{**msgspec.structs.asdict(data), "regions": tuple(sorted(set(data.regions)))})
        async with request.app.state.pool.acquire() as conn, conn.transaction():
            maker = await registry.get_org(conn, data.manufacturer)
            if maker is None:
                raise bad_input("manufacturer", f"unknown organisation {data.manufacturer}")
            if maker.kind != "manufacturer":
                raise bad_input("manufacturer", f"{data.manufacturer} is a {maker.kind}")
            created = await registry.insert_product(conn, wanted)
            existing = None
            if created is None:
                existing = (await registry.get_products(conn, [data.product_id]))[data.product_id]
        return _created_or_same(created, existing, wanted, f"product {data.product_id}")

    @post("/keys", status_code=201)
    async def create_key(
        self, request: Request[Any, Any, Any], data: SkipValidation[JSONBody[KeyIn]]
    ) -> KeyOut:
        data = strict_body(data, KeyIn)
        if data.role is Role.ORG and data.org is None:
            raise bad_input("org", "an org key must name its organisation")
        if data.role is not Role.ORG and data.org is not None:
            raise bad_input("org", f"a {data.role.value} key is not bound to an organisation")
        key_id, secret = new_key()
        async with request.app.state.pool.acquire() as conn:
            if data.org is not None and await registry.get_org(conn, data.org) is None:
                raise bad_input("org", f"unknown organisation {data.org}")
            await registry.insert_key(conn, key_id, token_hash(secret), data.role, data.org)
        return KeyOut(key_id=key_id, secret=secret, role=data.role.value, org=data.org)

    @delete("/keys/{key_id:str}", status_code=200)
    async def revoke_key(self, request: Request[Any, Any, Any], key_id: FromPath[str]) -> KeyRevoked:
        async with request.app.state.pool.acquire() as conn:
            revoked_at = await registry.revoke_key(conn, key_id)
        if revoked_at is None:
            raise problem(404, f"no key {key_id}")
        request.app.state.key_cache.drop_key(key_id)
        return KeyRevoked(key_id=key_id, revoked_at=revoked_at)
