"""Investigation: lots, recalls, organisation statistics."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.openapi.spec import Example
from litestar.params import FromPath, JSONBody, QueryParameter

from service.api.auth import principal_of, requires
from service.api.body import StrictJSON
from service.api.deps import Services
from service.api.errors import bad_input, problem, refuse_other_parameters
from service.api.openapi import BEARER, KEYED, WITH_BODY, problems, unchanged
from service.api.schemas import LedgerItemOut, LedgerOut, LotOut, OrgStatsOut, RecallOut
from service.api.types import ProductId, Short
from service.core.auth import Role
from service.core.codes import PRODUCT_ID_RULE, is_product_id
from service.usecases import investigation as usecase
from service.usecases import nhsa as nhsa_usecase


class RecallIn(msgspec.Struct, forbid_unknown_fields=True):
    product_id: ProductId
    lot: Short
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=2000)]


class InvestigationController(Controller):
    path = "/v1"
    tags = ["investigation"]
    guards = [requires(Role.INVESTIGATOR)]
    security = BEARER

    @get("/lots/{product_id:str}/{lot:str}", responses=problems(*KEYED, 404))
    async def lot(self, services: Services, product_id: FromPath[str], lot: FromPath[str]) -> LotOut:
        """Where a lot's units are: counts by state and by custodian."""
        return await _lot(services, product_id, lot)

    @get("/lots", responses=problems(*KEYED, 404))
    async def lot_by_query(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        product_id: Annotated[str, QueryParameter(examples=[Example(value="8123456")])],
        lot: Annotated[str, QueryParameter(examples=[Example(value="L2603")])],
    ) -> LotOut:
        """The same answer as ``/v1/lots/{product_id}/{lot}``, for any lot: one holding
        "/", or that is "." or "..", cannot be named in a path (⚠ our addition)."""
        refuse_other_parameters(request, ("product_id", "lot"))
        return await _lot(services, product_id, lot)

    @post(
        "/recalls",
        status_code=201,
        dto=StrictJSON[RecallIn],
        responses={**unchanged(RecallOut), **problems(*WITH_BODY)},
    )
    async def recall(
        self, request: Request[Any, Any, Any], services: Services, data: JSONBody[RecallIn]
    ) -> Response[RecallOut]:
        """Every code of the lot becomes recalled; later dispenses and settlements of them
        are refused and flagged (dispenses by their time: one dated at or after the
        recall and stored before it is flagged now). Ordering the same recall again
        changes nothing (200)."""
        if not is_product_id(data.product_id):
            raise bad_input("product_id", PRODUCT_ID_RULE)
        by_key = principal_of(request).key_id
        done = await usecase.recall(services.pool, data.product_id, data.lot, data.reason, by_key)
        if done.flags_raised:
            services.feed_wake()
        return Response(
            msgspec.convert(done, RecallOut, from_attributes=True), status_code=201 if done.new else 200
        )

    @get("/orgs/{org:str}/stats", responses=problems(*KEYED, 404))
    async def stats(self, services: Services, org: FromPath[str]) -> OrgStatsOut:
        """Received, dispensed, settled and flagged counts for one organisation."""
        found = await usecase.org_stats(services.pool, org)
        if found is None:
            raise problem(404, f"no organisation {org}")
        return msgspec.convert(found, OrgStatsOut, from_attributes=True)

    @get("/orgs/{org:str}/ledger", responses=problems(*KEYED, 404))
    async def ledger(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        org: FromPath[str],
        med_list_codg: Annotated[str | None, QueryParameter(min_length=1, max_length=50)] = None,
    ) -> LedgerOut:
        """The institution's 进销存 ledger per catalogue item, from its NHSA uploads: units
        in and out by kind, the balance, and the last counted stock."""
        refuse_other_parameters(request, ("med_list_codg",))
        items = await nhsa_usecase.ledger(services.pool, org, med_list_codg)
        if items is None:
            raise problem(404, f"no organisation {org}")
        return LedgerOut(
            org=org,
            items=[
                LedgerItemOut(
                    med_list_codg=i["med_list_codg"],
                    units_in=int(i["units_in"]),
                    units_out=int(i["units_out"]),
                    by_kind={k: int(v) for k, v in i["by_kind"].items()},
                    balance=int(i["balance"]),
                    counted=i["counted"],
                    counted_at=i["counted_at"],
                    count_difference=None
                    if i["counted"] is None
                    else int(i["counted"]) - int(i["balance_before_count"]),
                    records=int(i["records"]),
                )
                for i in items
            ],
        )


async def _lot(services: Services, product_id: str, lot: str) -> LotOut:
    """A lot's summary: the product id as a recall names it, a lot of 1 to 64 characters
    as a recall's; 404 for a lot no code carries that was never recalled."""
    if not is_product_id(product_id):
        raise bad_input("product_id", PRODUCT_ID_RULE)
    if not 0 < len(lot) <= 64:
        raise bad_input("lot", "1 to 64 characters")
    summary = await usecase.lot(services.pool, product_id, lot)
    if summary is None:
        raise problem(404, f"no codes of product {product_id} lot {lot}")
    return msgspec.convert(summary, LotOut, from_attributes=True)
