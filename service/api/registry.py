"""Registry (admin): organisations, products, API keys."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.openapi.spec import Example
from litestar.params import FromPath, JSONBody, QueryParameter

from service.api.auth import requires
from service.api.body import StrictJSON
from service.api.cursors import cursor, position
from service.api.deps import Services
from service.api.errors import bad_input, problem, refuse_other_parameters
from service.api.openapi import BEARER, KEYED, WITH_BODY, problems, unchanged
from service.api.schemas import KeyInfoOut, KeyOut, KeyPage, KeyRevoked, OrgKeysRevoked, OrgOut, ProductOut
from service.api.types import (
    FixmedinsCode,
    Gln,
    OrgId,
    OrgInQuery,
    ProductId,
    Region,
    RegionPrefix,
    Text,
)
from service.core.auth import Role
from service.core.codes import PRODUCT_ID_RULE, is_gln, is_product_id
from service.core.events import identifier_problem
from service.core.registry import Org, PersonLimit, Product
from service.usecases import registry as usecase
from service.usecases.errors import Conflict


class OrgIn(msgspec.Struct, forbid_unknown_fields=True):
    id: OrgId
    name: Text
    kind: Literal["manufacturer", "distributor", "hospital", "pharmacy"]
    region: Region
    fixmedins_code: FixmedinsCode | None = None
    glns: Annotated[list[Gln], msgspec.Meta(max_length=1000)] = []


class OrgIdentifiersIn(msgspec.Struct, forbid_unknown_fields=True):
    """Identifiers an organisation is given after it was registered."""

    fixmedins_code: FixmedinsCode | None = None
    glns: Annotated[list[Gln], msgspec.Meta(max_length=1000)] = []


class PersonLimitIn(msgspec.Struct, forbid_unknown_fields=True):
    """The most units one insured person plausibly needs within ``days`` days."""

    units: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)]
    days: Annotated[int, msgspec.Meta(ge=1, le=3660)]


class ProductIn(msgspec.Struct, forbid_unknown_fields=True):
    product_id: ProductId
    name: Text
    med_list_codg: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    pack_units: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]
    manufacturer: OrgId
    level: Literal["unit", "case", "pallet"] = "unit"
    contains: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] | None = None
    regions: Annotated[list[RegionPrefix], msgspec.Meta(max_length=100)] = []
    trace_exempt: bool = False
    person_limit: PersonLimitIn | None = None


class KeyIn(msgspec.Struct, forbid_unknown_fields=True):
    role: Role
    org: OrgId | None = None
    name: Text | None = None  # ⚠ our addition: who holds the key (a flag's history names them)


# the query parameters of GET /v1/keys, as its handler names them
KEY_PARAMETERS = ("org", "role", "revoked", "limit", "cursor")
ROLES = tuple(r.value for r in Role)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _key_cursor(last: tuple[datetime, str]) -> str:
    """The cursor of the page after the key ``last`` (its created_at, key_id)."""
    micros = (last[0] - _EPOCH) // _MICROSECOND
    return cursor("k", f"{micros}.{last[1]}")


def _key_after(given: str) -> tuple[datetime, str]:
    def last(text: str) -> tuple[datetime, str]:
        micros, dot, key_id = text.partition(".")
        if not (
            dot
            and micros.isascii()
            and micros.isdigit()
            and 0 < len(key_id) <= 64
            and key_id.isascii()
            and key_id.isprintable()
        ):
            raise ValueError(text)
        return _EPOCH + int(micros) * _MICROSECOND, key_id

    return position("k", given, last)


def _check_glns(glns: list[str]) -> None:
    for i, gln in enumerate(glns):
        if not is_gln(gln):
            raise bad_input(f"glns[{i}]", "the GLN's check digit is wrong")


def _conflict(what: str) -> Exception:
    return problem(409, f"{what} exists with different attributes", kind="conflict")


class RegistryController(Controller):
    path = "/v1"
    guards = [requires(Role.ADMIN)]
    security = BEARER
    tags = ["registry"]

    @post(
        "/orgs",
        status_code=201,
        dto=StrictJSON[OrgIn],
        responses={**unchanged(OrgOut), **problems(*WITH_BODY, 409)},
    )
    async def create_org(self, services: Services, data: JSONBody[OrgIn]) -> Response[OrgOut]:
        """201 for a new organisation, 200 when the same body is posted again. A GLN
        another organisation holds is a 409."""
        _check_glns(data.glns)
        wanted = Org(**{**msgspec.structs.asdict(data), "glns": tuple(sorted(set(data.glns)))})
        try:
            done = await usecase.register_org(services.pool, wanted)
        except Conflict as exc:
            if exc.field is None:
                raise _conflict(f"organisation {data.id}") from None
            errors = [{"field": exc.field, "message": exc.message}]
            raise problem(409, f"{exc.field}: {exc.message}", errors=errors, kind="conflict") from None
        return Response(
            msgspec.convert(done.record, OrgOut, from_attributes=True),
            status_code=201 if done.created else 200,
        )

    @patch(
        "/orgs/{org:str}",
        dto=StrictJSON[OrgIdentifiersIn],
        responses=problems(*WITH_BODY, 404, 409),
    )
    async def add_identifiers(
        self, services: Services, org: FromPath[str], data: JSONBody[OrgIdentifiersIn]
    ) -> OrgOut:
        """Give a registered organisation its NHSA institution code (``fixmedins_code``)
        when it has none, and more GLNs: for one that starts NHSA uploads or EPCIS after
        it was registered. Its code, once set, is kept (another is a 409), and no GLN is
        taken away; a code or GLN another organisation holds is a 409. The answer is the
        organisation as it is now; sent again, nothing changes."""
        _check_glns(data.glns)
        try:
            now = await usecase.add_identifiers(services.pool, org, data.fixmedins_code, data.glns)
        except Conflict as exc:
            field = exc.field or "body"
            errors = [{"field": field, "message": exc.message}]
            raise problem(409, f"{field}: {exc.message}", errors=errors, kind="conflict") from None
        if now is None:
            raise problem(404, f"no organisation {org}")
        return msgspec.convert(now, OrgOut, from_attributes=True)

    @post(
        "/products",
        status_code=201,
        dto=StrictJSON[ProductIn],
        responses={**unchanged(ProductOut), **problems(*WITH_BODY, 409)},
    )
    async def create_product(self, services: Services, data: JSONBody[ProductIn]) -> Response[ProductOut]:
        """201 for a new product, 200 when the same body is posted again."""
        if not is_product_id(data.product_id):
            raise bad_input("product_id", PRODUCT_ID_RULE)
        # the catalogue item settlements bill, read as they read it: a look-alike (a space
        # at an end, a full-width letter, an invisible character) made every settlement of
        # the product a PRODUCT_MISMATCH while verify said dispensable (found by a probe)
        if (codg_problem := identifier_problem(data.med_list_codg)) is not None:
            raise bad_input("med_list_codg", codg_problem)
        if data.level == "unit" and data.contains is not None:
            raise bad_input("contains", "only a case or pallet contains children")
        if data.level != "unit" and data.contains is None:
            raise bad_input("contains", f"a {data.level} must say how many children it holds")
        limit = data.person_limit
        wanted = Product(
            **{
                **msgspec.structs.asdict(data),
                "regions": tuple(sorted(set(data.regions))),
                "person_limit": PersonLimit(limit.units, limit.days) if limit else None,
            }
        )
        try:
            done = await usecase.register_product(services.pool, wanted)
        except Conflict:
            raise _conflict(f"product {data.product_id}") from None
        return Response(
            msgspec.convert(done.record, ProductOut, from_attributes=True),
            status_code=201 if done.created else 200,
        )

    @post("/keys", status_code=201, dto=StrictJSON[KeyIn], responses=problems(*WITH_BODY))
    async def create_key(self, services: Services, data: JSONBody[KeyIn]) -> KeyOut:
        """A new key; its secret is shown only in this answer."""
        if data.role is Role.ORG and data.org is None:
            raise bad_input("org", "an org key must name its organisation")
        if data.role is not Role.ORG and data.org is not None:
            raise bad_input("org", f"a {data.role.value} key is not bound to an organisation")
        key_id, secret = await usecase.create_key(services.pool, data.role, data.org, data.name)
        return KeyOut(key_id=key_id, secret=secret, role=data.role.value, org=data.org, name=data.name)

    @get("/keys", responses=problems(*KEYED))
    async def list_keys(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        org: OrgInQuery = None,
        role: Annotated[str | None, QueryParameter(examples=[Example(value="org")])] = None,
        revoked: Annotated[str | None, QueryParameter(examples=[Example(value="true")])] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
        cursor: Annotated[str | None, QueryParameter(max_length=128)] = None,
    ) -> KeyPage:
        """Keys, newest first, never with their secrets. Without ``revoked`` only live
        keys (those that still open the API); ``revoked=true`` lists only the revoked
        ones, ``revoked=false`` only the live ones. ``org`` must be a registered
        organisation (its keys), ``role`` one of the roles. Pass ``next_cursor`` back as
        ``cursor`` for the next page; keys made meanwhile never shift a page."""
        refuse_other_parameters(request, KEY_PARAMETERS, integers=("limit",))
        if role is not None and role not in ROLES:
            raise bad_input("role", f"one of {', '.join(ROLES)}")
        if revoked is not None and revoked not in ("true", "false"):
            raise bad_input("revoked", "true or false")
        query = usecase.KeyQuery(
            org=org,
            role=Role(role) if role is not None else None,
            revoked=revoked == "true",
        )
        page = await usecase.list_keys(
            services.pool, query, after=_key_after(cursor) if cursor else None, limit=limit
        )
        return KeyPage(
            items=msgspec.convert(page.items, list[KeyInfoOut], from_attributes=True),
            next_cursor=_key_cursor(page.last) if page.last is not None else None,
        )

    @post(
        "/orgs/{org:str}/keys/revoke",
        status_code=200,
        responses=problems(*KEYED, 413, 404),  # a body, if sent, is read (and ignored)
    )
    async def revoke_org_keys(self, services: Services, org: FromPath[str]) -> OrgKeysRevoked:
        """Revoke every live key of an organisation (its licence is gone, a key leaked),
        each as ``DELETE /v1/keys/{key_id}`` does: every worker refuses them at once.
        Idempotent: once none is live, the list is empty."""
        revoked = await usecase.revoke_org_keys(services.pool, org)
        if revoked is None:
            raise problem(404, f"no organisation {org}")
        for key_id, _ in revoked:
            services.key_cache.drop_key(key_id)  # as revoke_key does, before the NOTIFYs arrive
        return OrgKeysRevoked(
            org=org, revoked=[KeyRevoked(key_id=key_id, revoked_at=at) for key_id, at in revoked]
        )

    @delete("/keys/{key_id:str}", status_code=200, responses=problems(*KEYED, 404))
    async def revoke_key(self, services: Services, key_id: FromPath[str]) -> KeyRevoked:
        """Revoke a key (idempotent); every worker refuses it at once."""
        revoked_at = await usecase.revoke_key(services.pool, key_id)
        if revoked_at is None:
            raise problem(404, f"no key {key_id}")
        services.key_cache.drop_key(key_id)  # this worker's own cache, before the NOTIFY arrives
        return KeyRevoked(key_id=key_id, revoked_at=revoked_at)
