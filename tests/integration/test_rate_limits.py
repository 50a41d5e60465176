"""Per-key rate limits (429 with Retry-After)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from litestar.testing import AsyncTestClient

from service.app import create_app
from service.config import Settings, rate_limit
from tests.helpers import Api

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_a_rate_limit_is_read_as_count_per_unit() -> None:
    assert rate_limit("X", "600/minute") == ("minute", 600)
    assert rate_limit("X", "50") == ("second", 50)
    assert rate_limit("X", "off") is None
    with pytest.raises(SystemExit):
        rate_limit("X", "fast")
    with pytest.raises(SystemExit):  # "²".isdigit() is true, but int() refuses it
        rate_limit("X", "²/second")


@pytest.mark.parametrize("store", ["valkey", "memory"])
async def test_a_key_over_its_roles_limit_gets_429_with_retry_after_and_others_carry_on(
    admin: Api, settings: Settings, store: str
) -> None:
    limited = replace(
        settings,
        redis_url=settings.redis_url if store == "valkey" else None,
        rate_limits={"investigator": ("minute", 3), "admin": None},
    )
    inv, other_inv = await admin.key_for("investigator"), await admin.key_for("investigator")
    async with AsyncTestClient(app=create_app(limited)) as client:
        first, second = Api(client, inv.key), Api(client, other_inv.key)
        for _ in range(3):
            assert (await first.get("/v1/flags")).status_code == 200
        over = await first.get("/v1/flags")
        assert over.status_code == 429, over.text
        assert over.headers["content-type"].startswith("application/problem+json")
        assert 1 <= int(over.headers["retry-after"]) <= 60
        problem = over.json()
        assert (problem["status"], problem["title"]) == (429, "Too many requests")
        assert problem["request_id"] == over.headers["x-request-id"]
        # another key of the same role has its own count; unlimited roles and the public
        # paths are not counted at all
        assert (await second.get("/v1/flags")).status_code == 200
        assert (await Api(client, admin.key).get("/v1/flags")).status_code == 200
        for path in ("/health/live", "/metrics", "/schema/openapi.json"):
            assert (await client.get(path, headers=first.headers)).status_code == 200
