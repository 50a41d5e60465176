"""Investigation: lots, recalls, organisation statistics."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.params import FromPath, JSONBody, SkipValidation

from service.api.auth import principal_of, requires
from service.api.errors import bad_input, problem, strict_body
from service.core.auth import Role
from service.core.codes import is_product_id
from service.store import recalls as recall_store
from service.store import registry
from service.store import stats as stats_store
from service.store.conn import Conn
from service.store.db import with_retry


class RecallIn(msgspec.Struct, forbid_unknown_fields=True):
    product_id: Annotated[str, msgspec.Meta(min_length=7, max_length=14)]
    lot: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=2000)]


class InvestigationController(Controller):
    path = "/v1"
    tags = ["investigation"]
    guards = [requires(Role.INVESTIGATOR)]

    @get("/lots/{product_id:str}/{lot:str}")
    async def lot(
        self, request: Request[Any, Any, Any], product_id: FromPath[str], lot: FromPath[str]
    ) -> dict[str, Any]:
        """Where a lot's units are: counts by state and by custodian."""
        async with request.app.state.pool.acquire() as conn:
            summary = await recall_store.lot_summary(conn, product_id, lot)
        if summary["codes"] == 0 and not summary["recalled"]:
            raise problem(404, f"no codes of product {product_id} lot {lot}")
        return summary

    @post("/recalls", status_code=201)
    async def recall(
        self, request: Request[Any, Any, Any], data: SkipValidation[JSONBody[RecallIn]]
    ) -> Response[dict[str, Any]]:
        """Every code of the lot becomes recalled; later dispenses and settlements of them
        are refused and flagged. Ordering the same recall again changes nothing (200)."""
        data = strict_body(data, RecallIn)
        if not is_product_id(data.product_id):
            raise bad_input("product_id", "must be a 7-digit CN20 product identifier or a GTIN-14")
        async with request.app.state.pool.acquire() as conn:
            if not await registry.get_products(conn, [data.product_id]):
                raise bad_input("product_id", f"unknown product {data.product_id}")
        by_key = principal_of(request).key_id

        async def work(conn: Conn) -> tuple[bool, int]:
            return await recall_store.recall(conn, data.product_id, data.lot, data.reason, by_key)

        new, marked = await with_retry(request.app.state.pool, work)
        body = {
            "product_id": data.product_id,
            "lot": data.lot,
            "reason": data.reason,
            "codes_recalled": marked,
        }
        return Response(body, status_code=201 if new else 200)

    @get("/orgs/{org:str}/stats")
    async def stats(self, request: Request[Any, Any, Any], org: FromPath[str]) -> dict[str, Any]:
        """Received, dispensed, settled and flagged counts for one organisation."""
        async with request.app.state.pool.acquire() as conn:
            if await registry.get_org(conn, org) is None:
                raise problem(404, f"no organisation {org}")
            return await stats_store.org_stats(conn, org)
