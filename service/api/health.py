"""Operations: liveness, readiness and the Prometheus metrics."""

from __future__ import annotations

import litestar
from litestar import Controller, Response, get
from litestar.enums import MediaType
from litestar.openapi import ResponseSpec
from litestar.plugins.prometheus import PrometheusController

from service import metrics
from service.api.deps import Services
from service.api.schemas import HealthOut
from service.store.db import probe, unavailable, unavailable_cause


class HealthController(Controller):
    path = "/health"
    tags = ["operations"]

    @get("/live")
    async def live(self) -> HealthOut:
        return HealthOut(status="live")

    @get(
        "/ready",
        responses={
            503: ResponseSpec(HealthOut, description="The database does not answer", generate_examples=False)
        },
    )
    async def ready(self, services: Services) -> Response[HealthOut]:
        """Ready only when the database answers (API.md). Not Valkey: while it is down the
        API serves on (flags wait in the outbox, rate limits count nothing), so a load
        balancer must not take every instance out of rotation for it. Nor a full pool
        while the database answers on the probe's own connection (``store.db.probe``):
        the worker is busy, not broken."""
        try:
            await probe(services.pool, services.settings.database_url)
        except Exception as exc:
            if unavailable(exc):
                metrics.DB_UNAVAILABLE.labels(unavailable_cause(exc)).inc()
            return Response(HealthOut(status="unavailable", reason=type(exc).__name__), status_code=503)
        return Response(HealthOut(status="ready"), status_code=200)


class MetricsController(PrometheusController):
    """Litestar's Prometheus controller (multi-process aware), documented as what it
    serves: the Prometheus text format, not JSON."""

    # the same handler function, under the same name (so it replaces the parent's route)
    get = litestar.get(
        media_type=MediaType.TEXT,
        tags=["operations"],
        responses={
            200: ResponseSpec(
                str, media_type=MediaType.TEXT, description="Prometheus text format", generate_examples=False
            )
        },
    )(PrometheusController.get.fn)
