"""Per-key rate limits (429 with Retry-After)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from litestar.testing import AsyncTestClient

from benchkit import localrun
from service.app import create_app
from service.config import Settings, rate_limit
from tests.helpers import Api
from tests.integration.served import serving

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_a_rate_limit_is_read_as_count_per_unit() -> None:
    assert rate_limit("X", "600/minute") == ("minute", 600)
    assert rate_limit("X", "50") == ("second", 50)
    assert rate_limit("X", "off") is None
    # a count of 0 is no limit however written: "0/second" refused every request of the
    # role, while "0" was no limit (found by a probe)
    assert rate_limit("X", "0") is None
    assert rate_limit("X", "00") is None
    assert rate_limit("X", "0/minute") is None
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



async def test_two_workers_share_one_count_of_a_keys_requests(tmp_path: Path) -> None:
    """``tracecode serve --workers 2`` taking one key's requests at once admits exactly its
    limit between the workers: the count is one atomic increment a request. Litestar's
    limiter read the key's count and wrote it back, each worker under its own lock, so a
    request of the other worker fell between the two and more than the limit passed."""
    limits = {"TRACE_RATE_LIMIT_INVESTIGATOR": "30/minute"}
    async with (
        serving(tmp_path, workers=2, extra_env=limits) as s,
        httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{s.port}", timeout=60, limits=httpx.Limits(max_connections=40)
        ) as client,
    ):
        admin = await asyncio.to_thread(localrun.create_admin_key, s.env)
        made = await client.post("/v1/keys", json={"role": "investigator"}, headers=_bearer(admin))
        inv = _bearer(made.json()["secret"])
        answers = await asyncio.gather(*(client.get("/v1/flags?limit=1", headers=inv) for _ in range(120)))
    statuses = [a.status_code for a in answers]
    assert statuses.count(200) == 30, sorted(statuses)
    assert statuses.count(429) == 90, sorted(statuses)


def _bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def test_retry_after_is_never_shorter_than_what_is_left_of_the_window(
    admin: Api, settings: Settings
) -> None:
    """Valkey gives a window's time to live rounded to the nearest second: with 59.4 s left
    the 429 said ``Retry-After: 59``, and a client that waited that long was refused
    again (found by a review). It now never says less than what is left."""
    limited = replace(settings, rate_limits={"investigator": ("minute", 1), "admin": None})
    inv = await admin.key_for("investigator")
    async with AsyncTestClient(app=create_app(limited)) as client:
        api = Api(client, inv.key)
        started = time.monotonic()  # the window starts after this, with the first request
        assert (await api.get("/v1/flags")).status_code == 200
        await asyncio.sleep(0.6)  # past the half second, where rounding down goes early
        over = await api.get("/v1/flags")
        answered = time.monotonic()
    assert over.status_code == 429, over.text
    left_at_least = 60 - (answered - started)
    assert int(over.headers["retry-after"]) >= left_at_least, (over.headers["retry-after"], left_at_least)
