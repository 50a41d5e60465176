"""Operations: liveness, readiness and the Prometheus metrics."""

from __future__ import annotations

import asyncio

import litestar
from litestar import Controller, Response, get
from litestar.enums import MediaType
from litestar.openapi import ResponseSpec
from litestar.plugins.prometheus import PrometheusController
from redis.exceptions import RedisError

from service.api.deps import Services
from service.api.schemas import HealthOut
from service.store.db import PROBE_SECONDS, probe


class HealthController(Controller):
    path = "/health"
    tags = ["operations"]

    @get("/live")
    async def live(self) -> HealthOut:
        return HealthOut(status="live")

    @get(
        "/ready",
        responses={
            503: ResponseSpec(
                HealthOut, description="The database or Valkey does not answer", generate_examples=False
            )
        },
    )
    async def ready(self, services: Services) -> Response[HealthOut]:
        """Ready only when the database answers, and Valkey where the service has one (while
        Valkey is down requests are still served: flags wait in the outbox)."""
        try:
            await probe(services.pool)
        except Exception as exc:
            return Response(HealthOut(status="unavailable", reason=type(exc).__name__), status_code=503)
        if services.redis is not None:
            try:
                await asyncio.wait_for(services.redis.ping(), PROBE_SECONDS)
            except (RedisError, OSError, TimeoutError) as exc:
                reason = f"Valkey: {type(exc).__name__}"
                return Response(HealthOut(status="unavailable", reason=reason), status_code=503)
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
