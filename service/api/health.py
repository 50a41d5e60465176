"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, get


class HealthController(Controller):
    path = "/health"
    tags = ["operations"]

    @get("/live")
    async def live(self) -> dict[str, str]:
        return {"status": "live"}

    @get("/ready")
    async def ready(self, request: Request[Any, Any, Any]) -> Response[dict[str, str]]:
        """Ready only when the database answers."""
        try:
            async with request.app.state.pool.acquire(timeout=2) as conn:
                await conn.fetchval("SELECT 1", timeout=2)
        except Exception as exc:
            return Response({"status": "unavailable", "reason": type(exc).__name__}, status_code=503)
        return Response({"status": "ready"}, status_code=200)
