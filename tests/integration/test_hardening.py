"""Hardening (issue 13): no 5xx from any input, clear 4xx for odd requests."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis.asyncio as aioredis
from litestar.testing import AsyncTestClient
from prometheus_client import REGISTRY
from redis.exceptions import RedisError

from service.app import create_app
from service.cli import _create_key
from service.config import Settings
from service.feed import FlagFeed
from service.store.db import create_pool
from service.store.migrations import migrate
from tests.conftest import CITUS_URL
from tests.helpers import Api, cn20, event, small_world
from tests.integration.conftest import own_postgres
from tests.integration.served import Serving, serving

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def _paths(client: AsyncTestClient) -> list[str]:  # type: ignore[type-arg]
    spec: dict[str, Any] = (await client.get("/schema/openapi.json")).json()
    # any value for a path parameter: OPTIONS never reaches the handler
    return [re.sub(r"\{[^}]+\}", "X1", path) for path in spec["paths"]]


async def test_options_on_every_documented_path_is_204_or_405(admin: Api) -> None:
    paths = await _paths(admin.client)
    assert "/v1/flags" in paths
    for headers in ({}, admin.headers, {"Authorization": "Bearer nonsense"}):
        for path in paths:
            resp = await admin.client.options(path, headers=headers)
            assert resp.status_code in (204, 405), (path, headers, resp.status_code, resp.text)


async def test_an_internal_http_error_does_not_leak_its_message() -> None:
    from litestar.exceptions import ImproperlyConfiguredException

    from service.api.errors import _from_http

    out = _from_http(ImproperlyConfiguredException("'user' is not defined in scope"))
    assert out.status_code == 500
    assert "user" not in str(out.detail)


DEEP = b"[" * 1000 + b"]" * 1000
DEEP_OBJECT = b'{"a":' * 1000 + b"1" + b"}" * 1000


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1/verify"), ("POST", "/v1/events"), ("POST", "/v1/settlements"), ("PATCH", "/v1/flags/1")],
)
async def test_json_nested_a_thousand_levels_is_400(admin: Api, method: str, path: str) -> None:
    inside = (b'{"events":' + DEEP + b"}", b'{"codes":["x"],"org":' + DEEP_OBJECT + b"}")
    for raw in (DEEP, DEEP_OBJECT, *inside):
        headers = {**admin.headers, "content-type": "application/json"}
        resp = await admin.client.request(method, path, headers=headers, content=raw)
        assert resp.status_code == 400, (path, raw[:20], resp.status_code, resp.text)
        assert resp.headers["content-type"].startswith("application/problem+json")
        assert resp.json()["errors"]


BODY_ROUTES = [
    ("POST", "/v1/orgs"),
    ("POST", "/v1/products"),
    ("POST", "/v1/keys"),
    ("POST", "/v1/events"),
    ("POST", "/v1/verify"),
    ("POST", "/v1/settlements"),
    ("POST", "/v1/recalls"),
    ("PATCH", "/v1/flags/1"),
]


@pytest.mark.parametrize(("method", "path"), BODY_ROUTES)
async def test_an_empty_body_is_a_400_naming_body(admin: Api, method: str, path: str) -> None:
    for headers in (admin.headers, {**admin.headers, "content-type": "application/json"}):
        resp = await admin.client.request(method, path, headers=headers, content=b"")
        assert resp.status_code == 400, (path, resp.text)
        assert resp.json()["errors"] == [{"field": "body", "message": "a JSON body is required"}]


@pytest.mark.parametrize(("method", "path"), BODY_ROUTES)
async def test_a_body_declared_as_not_json_is_415(admin: Api, method: str, path: str) -> None:
    for media_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        headers = {**admin.headers, "content-type": media_type}
        resp = await admin.client.request(method, path, headers=headers, content=b'{"events": []}')
        assert resp.status_code == 415, (path, media_type, resp.text)
        assert resp.headers["content-type"].startswith("application/problem+json")
        assert resp.json()["errors"][0]["field"] == "content-type"
    # JSON with a charset, or a +json type, is JSON
    for media_type in ("application/json; charset=utf-8", "application/merge-patch+json"):
        headers = {**admin.headers, "content-type": media_type}
        resp = await admin.client.request(method, path, headers=headers, content=b"{}")
        assert resp.status_code in (400, 404), (path, media_type, resp.text)


async def test_a_401_names_its_scheme_and_one_key_is_sent(admin: Api) -> None:
    """A 401 carries WWW-Authenticate: Bearer (RFC 9110); two Authorization headers are
    refused rather than one picked (found by a probe: the first was used)."""
    client = admin.client
    for headers in ({}, {"Authorization": "Bearer nonsense"}, {"Authorization": "Basic x"}):
        for path in ("/v1/flags", "/epcis/events"):
            resp = await client.get(path, headers=headers)
            assert (resp.status_code, resp.headers.get("www-authenticate")) == (401, "Bearer"), (
                path,
                headers,
            )
    both = [("Authorization", admin.headers["Authorization"]), ("Authorization", "Bearer other")]
    assert (await client.get("/v1/flags", headers=both)).status_code == 401


async def test_a_missing_field_is_named_and_a_huge_key_is_not_echoed_whole(admin: Api) -> None:
    """A missing required field is named by its path (found by a probe: "body", or the
    object holding it); an unknown key of a megabyte comes back cut short, not four
    times over."""
    out = await admin.ok("POST", "/v1/orgs", {"name": "x", "kind": "pharmacy", "region": "450103"}, 400)
    assert [e["field"] for e in out["errors"]] == ["id"], out
    no_id = {k: v for k, v in event("dispense", "P1", ["81234560000000000001"], 1).items() if k != "event_id"}
    out = await admin.ok("POST", "/v1/events", {"events": [no_id]}, 400)
    assert [e["field"] for e in out["errors"]] == ["events[0].event_id"], out
    huge = "k" * 1_000_000
    resp = await admin.post("/v1/verify", {"codes": ["81234560000000000001"], huge: 1})
    assert resp.status_code == 400
    assert len(resp.content) < 2_000, len(resp.content)


async def test_a_misspelt_or_repeated_filter_is_a_400_not_ignored(admin: Api) -> None:
    """Found by a probe: GET /v1/orgs/{org}/ledger?med_list_code=… (misspelt) listed the
    whole ledger, and a repeated org on verify took the last value."""
    w = await small_world(admin)
    inv = await admin.key_for("investigator")
    out = await inv.ok("GET", "/v1/orgs/P1/ledger?med_list_code=X", status=400)
    assert out["errors"][0]["field"] == "med_list_code", out
    out = await inv.ok("GET", "/v1/orgs/P1/ledger?med_list_codg=X&med_list_codg=Y", status=400)
    assert out["errors"][0]["field"] == "med_list_codg", out
    code = cn20(w["unit"], 1)
    out = await inv.ok("GET", f"/v1/codes/{code}/verify?org=P1&org=H1", status=400)
    assert out["errors"][0]["field"] == "org", out
    assert (await inv.ok("GET", f"/v1/codes/{code}/verify?org=P1"))["code"] == code


async def test_a_reversal_needs_no_body_and_ignores_its_type(admin: Api) -> None:
    ins = await admin.key_for("insurer")
    headers = {**ins.headers, "content-type": "text/plain"}
    resp = await ins.client.post("/v1/settlements/S1/reversal", headers=headers, content=b"")
    assert resp.status_code == 404


async def test_flag_times_given_as_epoch_numbers_are_400(admin: Api) -> None:
    inv = await admin.key_for("investigator")
    for query in ("since=48432269392", "until=1", "since=1.5", "until=-3"):
        resp = await inv.get("/v1/flags?" + query)
        assert resp.status_code == 400, (query, resp.text)
        assert resp.json()["errors"][0]["field"] == query.partition("=")[0]
    assert (await inv.get("/v1/flags?since=2026-03-02T08:00:00%2B08:00")).status_code == 200


@contextlib.asynccontextmanager
async def scratch_database(db_url: str, name: str) -> AsyncIterator[str]:
    """A migrated database of its own on the session's server, so that the session
    app's background tasks (flag feed, promotion) never touch what a test does there."""
    parts = urlsplit(db_url)
    url = urlunsplit(parts._replace(path=f"/{name}"))
    admin = await asyncpg.connect(db_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
        conn = await asyncpg.connect(url)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_publish_failures_count_each_flag_once_however_often_it_is_retried(
    settings: Settings, db_url: str
) -> None:
    async with scratch_database(db_url, "tracecode_feed_test") as url:
        down = replace(settings, database_url=url, redis_url="redis://127.0.0.1:9")
        async with AsyncTestClient(app=create_app(down)) as client:
            _, secret = await _create_key(url, "admin", None)
            w = await small_world(Api(client, secret))
            codes = [cn20("8123456", n) for n in (7, 8, 9)]
            out = await w["keys"]["P1"].events(event("receive", "P1", codes, 0))
            assert len(out["flags"]) == 3
        # the app is gone (its own feed with it); retry the batch by hand, Redis still down
        pool = await create_pool(url, min_size=1, max_size=1)
        redis = aioredis.from_url("redis://127.0.0.1:9", socket_connect_timeout=1.0)
        try:
            feed = FlagFeed(pool, redis)
            before = REGISTRY.get_sample_value("tracecode_flags_publish_failed_total") or 0.0
            for _ in range(3):
                with pytest.raises((RedisError, OSError)):
                    await feed.publish_pending()
            after = REGISTRY.get_sample_value("tracecode_flags_publish_failed_total") or 0.0
            # a fresh feed has counted none of them yet: 3 flags, not 3 tries x 3 flags
            assert after - before == 3
        finally:
            await redis.aclose()
            await pool.close()


async def test_a_revocation_during_a_key_lookup_is_not_undone_by_caching(
    admin: Api, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The revoke commits, and its NOTIFY is handled, after a cache miss has read the
    key but before it caches it: the key must not be served from the cache afterwards."""
    from service.store import registry

    cache = admin.client.app.state.key_cache
    assert cache.live
    insurer = await admin.key_for("insurer")
    key_id = insurer.key.split(".")[0]
    real_lookup = registry.principal_for

    async def lookup_then_revoke(conn: Any, digest: bytes) -> Any:
        found = await real_lookup(conn, digest)
        other = await asyncpg.connect(db_url)
        try:
            await registry.revoke_key(other, key_id)
        finally:
            await other.close()
        cache.drop_key(key_id)  # what the listener does when the NOTIFY arrives
        return found

    monkeypatch.setattr(registry, "principal_for", lookup_then_revoke)
    first = await insurer.get("/v1/settlements/none")
    assert first.status_code == 404  # read before the revoke committed: let through once
    monkeypatch.setattr(registry, "principal_for", real_lookup)
    assert (await insurer.get("/v1/settlements/none")).status_code == 401


async def test_database_outage_is_503_with_retry_after_logged_once_and_recovers(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A PostgreSQL of this test's own is stopped under the service and started again."""
    from service.embedded import start_postgres, stop_postgres

    # no Redis: the flag feed stays out of it
    async with own_postgres("tracecode-outage-") as (root, url):
        app = create_app(replace(settings, database_url=url, redis_url=None))
        async with AsyncTestClient(app=app) as client:
            _, secret = await _create_key(url, "admin", None)
            admin = Api(client, secret)
            inv = await admin.key_for("investigator")
            assert (await inv.get("/v1/flags")).status_code == 200
            assert (await client.get("/health/ready")).status_code == 200

            await asyncio.to_thread(stop_postgres, root)
            caplog.clear()
            counted = {c: _db_unavailable(c) for c in ("unreachable", "pool")}
            with caplog.at_level(logging.WARNING):
                # under load: requests arrive together while the database is away
                asked = [(inv, "/v1/flags"), (inv, "/v1/flags/1"), (admin, "/v1/orgs/X/stats")] * 10
                answers = await asyncio.gather(*(api.get(path) for api, path in asked))
                for (_, path), resp in zip(asked, answers, strict=True):
                    assert resp.status_code == 503, (path, resp.text)
                    assert resp.headers["content-type"].startswith("application/problem+json")
                    assert int(resp.headers["retry-after"]) > 0
                resp = await admin.post(
                    "/v1/orgs", {"id": "O1", "name": "x", "kind": "pharmacy", "region": "450100"}
                )
                assert resp.status_code == 503
                assert (await client.get("/health/ready")).status_code == 503
            # each 503 counted as the database's (TracecodeDatabaseUnavailable), none as
            # a full pool's (TracecodeDbPoolExhausted)
            assert _db_unavailable("unreachable") - counted["unreachable"] == len(asked) + 2
            assert _db_unavailable("pool") == counted["pool"]
            warned = [r for r in caplog.records if r.name == "service.store.db"]
            assert len(warned) == 1, [r.getMessage() for r in caplog.records]
            assert "database unavailable" in warned[0].getMessage()
            assert not [r for r in caplog.records if r.exc_info], "no tracebacks"

            await asyncio.to_thread(start_postgres, root, throwaway=True)
            status = 0
            for _ in range(300):  # the pool reconnects by itself; give it what it needs
                status = (await inv.get("/v1/flags")).status_code
                if status == 200:
                    break
                await asyncio.sleep(0.1)
            assert status == 200
            assert (await client.get("/health/ready")).status_code == 200


def _db_unavailable(cause: str) -> float:
    return REGISTRY.get_sample_value("tracecode_db_unavailable_total", {"cause": cause}) or 0.0


async def test_a_database_that_stops_answering_is_503_for_the_requests_queued(tmp_path: Path) -> None:
    """PostgreSQL frozen (SIGSTOP), not down, under ``tracecode serve``: the requests that
    hold the pool's connections wait in their statements, and those queued behind them
    are answered 503 once TRACE_DB_ACQUIRE_SECONDS have passed (found by a probe: they
    waited without end)."""
    import signal

    import httpx

    from benchkit import procs

    pool = {"TRACE_DB_POOL_MIN": "2", "TRACE_DB_POOL_MAX": "2", "TRACE_DB_ACQUIRE_SECONDS": "1"}
    async with (
        serving(tmp_path, extra_env=pool) as s,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{s.port}", timeout=120) as client,
    ):
        inv = _bearer(await _investigator(s, client))
        pid_file = s.data_dir / "postgres" / "postmaster.pid"
        stopped = procs.tree(int(pid_file.read_text().split()[0]))
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        try:
            asked = [asyncio.create_task(client.get("/v1/flags", headers=inv)) for _ in range(6)]
            done, stuck = await asyncio.wait(asked, timeout=10)
            assert len(stuck) <= 2, len(stuck)  # at most the pool's connections wait
            for task in done:
                resp = task.result()
                assert resp.status_code == 503, resp.text
                assert int(resp.headers["retry-after"]) > 0
            # the pool is full; readiness asks on a connection of its own, which the
            # frozen database does not answer either: not ready
            ready = await client.get("/health/ready")
            assert ready.status_code == 503, ready.text
        finally:
            for pid in stopped:
                os.kill(pid, signal.SIGCONT)
        await asyncio.gather(*asked)
        assert (await client.get("/health/ready")).status_code == 200


def _bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def _investigator(s: Serving, client: Any) -> str:
    """The secret of a new investigator's key on a served instance (made with the CLI's
    first admin key), checked to answer ``/v1/flags``."""
    from benchkit import localrun

    admin = await asyncio.to_thread(localrun.create_admin_key, s.env)
    made = await client.post("/v1/keys", json={"role": "investigator"}, headers=_bearer(admin))
    secret: str = made.json()["secret"]
    assert (await client.get("/v1/flags", headers=_bearer(secret))).status_code == 200
    return secret


async def test_sigterm_to_serve_stops_its_embedded_servers(tmp_path: Path) -> None:
    """systemd and kill send SIGTERM: the embedded PostgreSQL and Valkey go with it."""
    import signal

    from service.embedded import postgres_runs, redis_answers

    async with serving(tmp_path) as s:
        assert await asyncio.to_thread(postgres_runs, s.data_dir)
        assert await asyncio.to_thread(redis_answers, s.valkey_dir)
        s.process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(s.process.wait, 60)
        assert code == 0, s.log.read_text()[-2000:]
        assert not await asyncio.to_thread(postgres_runs, s.data_dir), s.log.read_text()[-2000:]
        assert not await asyncio.to_thread(redis_answers, s.valkey_dir)


async def test_granian_serves_and_stops_as_uvicorn_does(tmp_path: Path) -> None:
    """``serve --server granian`` (TRACE_SERVER): the app behind Granian's workers answers,
    their metrics add up, a worker that dies is replaced, and SIGTERM stops the service
    and its embedded servers with exit code 0."""
    import signal

    import httpx

    from benchkit import procs
    from benchkit.localrun import create_admin_key
    from service.embedded import postgres_runs, redis_answers

    async with serving(tmp_path, workers=2, server="granian") as s:
        admin = await asyncio.to_thread(create_admin_key, s.env)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{s.port}", timeout=30) as client:
            body = {"id": "M1", "name": "Maker", "kind": "manufacturer", "region": "450100"}
            made = await client.post("/v1/orgs", json=body, headers={"Authorization": f"Bearer {admin}"})
            assert made.status_code == 201, made.text
            for _ in range(20):  # requests land on both workers
                assert (await client.get("/health/live")).status_code == 200
            assert "tracecode_" in (await client.get("/metrics")).text

            workers = procs.app_workers(s.process.pid)
            assert len(workers) == 2, workers
            os.kill(workers[0], signal.SIGKILL)
            for _ in range(100):
                await asyncio.sleep(0.2)
                now = procs.app_workers(s.process.pid)
                if len(now) == 2 and workers[0] not in now:
                    break
            assert len(now) == 2, (workers, now, s.log.read_text()[-2000:])
            assert workers[0] not in now, (workers, now)
            for _ in range(50):  # the new worker serves
                if (await client.get("/health/ready")).status_code == 200:
                    break
                await asyncio.sleep(0.2)
            assert (await client.get("/health/ready")).status_code == 200

        assert "granian" in s.log.read_text().lower()
        s.process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(s.process.wait, 60) == 0, s.log.read_text()[-2000:]
        assert not await asyncio.to_thread(postgres_runs, s.data_dir), s.log.read_text()[-2000:]
        assert not await asyncio.to_thread(redis_answers, s.valkey_dir)


async def _plan(db: asyncpg.Connection, sql: str, args: list[Any]) -> str:
    return "\n".join(r[0] for r in await db.fetch("EXPLAIN " + sql, *args))


@pytest.mark.skipif(
    bool(CITUS_URL), reason="one server's plans: a Citus shard holds 1/32 of the rows and rightly scans them"
)
async def test_flag_searches_and_org_stats_use_indexes(db: asyncpg.Connection) -> None:
    from datetime import UTC, datetime, timedelta

    from service.store.flags import FlagQuery, search_sql
    from service.store.stats import RECEIVED_CONTAINERS_SQL, RECEIVED_SQL

    await db.execute(
        """INSERT INTO flags (kind, code, org, region, at, status, detail, source_kind, source_id, refs)
           SELECT 'DUPLICATE', '8' || lpad(i::text, 19, '0'), 'O' || (i % 50),
                  CASE WHEN i % 100 = 0 THEN '110101' ELSE (450100 + i % 90)::text END,
                  timestamptz '2026-01-01 00:00+00' + i * interval '1 hour',
                  CASE WHEN i % 97 = 0 THEN 'confirmed' ELSE 'open' END,
                  'x', 'event', i::text,
                  -- a few name catalogue items (refs.items), as a mismatch names two
                  CASE WHEN i % 60 = 0
                       THEN jsonb_build_object('items', jsonb_build_array('XB' || i % 7, 'XP'))
                       ELSE '{"events": []}' END
           FROM generate_series(1, 6000) i"""
    )
    await db.execute(
        """INSERT INTO events (event_id, type, at, org, code_count)
           SELECT ('00000000-0000-4000-8000-' || lpad(i::text, 12, '0'))::uuid,
                  (ARRAY['commission', 'ship', 'receive', 'dispense'])[1 + i % 4],
                  timestamptz '2026-01-01 00:00+00' + i * interval '1 minute', 'O' || (i % 50), 4
           FROM generate_series(1, 6000) i"""
    )
    await db.execute(
        """INSERT INTO event_codes (code, at, event_id, role)
           SELECT '8' || lpad((i * 4 + j)::text, 19, '0'), e.at, e.event_id, 'c'
           FROM (SELECT row_number() OVER (ORDER BY event_id) AS i, event_id, at FROM events) e,
                generate_series(0, 3) j"""
    )
    await db.execute("ANALYZE flags; ANALYZE events; ANALYZE event_codes")

    def search(**given: Any) -> tuple[str, list[Any]]:
        return search_sql(FlagQuery(**given), before_id=None, limit=100)

    start = datetime(2026, 3, 1, tzinfo=UTC)
    for given, index in [
        ({"region": "11"}, "flags_region"),
        ({"status": "confirmed"}, "flags_status"),
        ({"since": start, "until": start + timedelta(days=1)}, "flags_at"),
        ({"med_list_codg": "XB3"}, "flags_items"),
    ]:
        plan = await _plan(db, *search(**given))
        assert index in plan, (given, plan)
    # the filters mean what they meant: a region prefix, a status, a time window
    sql, args = search(region="11")
    assert {r["region"] for r in await db.fetch(sql, *args)} == {"110101"}
    sql, args = search(region="4501", status="confirmed", since=start)
    rows = await db.fetch(sql, *args)
    assert rows
    assert all(r["region"].startswith("4501") and r["status"] == "confirmed" for r in rows)
    assert all(r["at"] >= start for r in rows)
    # and a catalogue item: the flags whose refs.items name it, whichever place it has there
    sql, args = search(med_list_codg="XB3")
    assert sorted(int(r["code"][1:]) for r in await db.fetch(sql, *args)) == [
        i for i in range(60, 6001, 60) if i % 7 == 3
    ]
    sql, args = search(med_list_codg="XP", status="open")
    assert len(await db.fetch(sql, *args)) == 100 - sum(1 for i in range(60, 6001, 60) if i % 97 == 0)

    plan = await _plan(db, RECEIVED_SQL, ["O7"])
    assert "event_codes_event" in plan, plan
    assert "Seq Scan on event_codes" not in plan, plan
    assert "events_org_type" in plan, plan  # the organisation's events by index, never all
    assert "Seq Scan on events" not in plan, plan
    # and the cases it received, each with its scans by the code's own key
    plan = await _plan(db, RECEIVED_CONTAINERS_SQL, ["O7", ["8123457"]])
    assert "event_codes_event" in plan, plan
    assert "event_codes_pkey" in plan, plan
    assert "Seq Scan" not in plan, plan


async def test_a_pooled_connection_ended_by_the_server_is_never_a_500(settings: Settings, db: Any) -> None:
    """A pooled connection whose backend the server ended (an administrator's
    pg_terminate_backend, a shutdown, a failover) fails its next statement with asyncpg's
    InternalClientError ("cannot switch to state …"): that is the database being away,
    503 with Retry-After, not our bug (found by a probe: 500 during a shutdown); the pool
    connects again for the requests after it."""
    sep = "&" if "?" in settings.database_url else "?"
    url = f"{settings.database_url}{sep}application_name=tracecode-doomed"
    app = create_app(replace(settings, database_url=url, redis_url=None, db_pool_min=1, db_pool_max=1))
    async with AsyncTestClient(app=app) as client:
        _, secret = await _create_key(settings.database_url, "investigator", None)
        inv = Api(client, secret)
        statuses = []
        for _ in range(5):
            assert (await inv.get("/v1/flags")).status_code == 200  # the pooled connection is open
            await db.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
                "tracecode-doomed",
            )
            resp = await inv.get("/v1/flags")
            statuses.append(resp.status_code)
            assert resp.status_code in (200, 503), resp.text
            if resp.status_code == 503:
                assert int(resp.headers["retry-after"]) > 0
        status = 0
        for _ in range(100):
            status = (await inv.get("/v1/flags")).status_code
            if status == 200:
                break
            await asyncio.sleep(0.1)
        assert status == 200, statuses


async def test_what_counts_as_the_database_being_unavailable() -> None:
    from service.store.db import unavailable

    assert unavailable(ConnectionRefusedError())
    assert unavailable(asyncpg.CannotConnectNowError("the database system is starting up"))
    assert unavailable(asyncpg.InterfaceError("connection is closed"))
    # our own mistakes stay 500s, logged with their traceback
    assert not unavailable(
        asyncpg.InterfaceError("cannot perform operation: another operation is in progress")
    )
    assert not unavailable(asyncpg.UniqueViolationError("duplicate key"))
    # a file of our own that is missing is not the database being down
    with pytest.raises(FileNotFoundError) as own:
        open("/nonexistent/tracecode/schema.json")  # noqa: ASYNC230, SIM115
    assert not unavailable(own.value)
    # but a Unix socket that is gone, as asyncpg meets it, is
    with pytest.raises(FileNotFoundError) as gone:
        await asyncpg.connect(host="/nonexistent/tracecode-socket-dir", user="x", timeout=2)
    assert unavailable(gone.value)


async def test_serve_restarts_its_embedded_servers_when_they_die(tmp_path: Path) -> None:
    """The embedded PostgreSQL and Valkey are supervised: killed, each is started again by
    ``tracecode serve`` (one log line), and the service carries on with its data.
    Readiness is 503 while PostgreSQL is away, not while Valkey is."""
    import signal

    import httpx
    import redis

    from benchkit.localrun import create_admin_key
    from service.embedded import postgres_runs, redis_answers

    async with serving(tmp_path) as s:
        admin = await asyncio.to_thread(create_admin_key, s.env)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{s.port}", timeout=10) as client:
            headers = {"Authorization": f"Bearer {admin}"}
            body = {"id": "M1", "name": "M1", "kind": "manufacturer", "region": "450100"}
            assert (await client.post("/v1/orgs", json=body, headers=headers)).status_code == 201

            async def readiness_dips_and_returns() -> list[int]:
                seen: list[int] = []
                for _ in range(300):  # 30 s
                    status = (await client.get("/health/ready")).status_code
                    if not seen or seen[-1] != status:
                        seen.append(status)
                    if seen[-2:] == [503, 200]:
                        break
                    await asyncio.sleep(0.1)
                return seen

            postmaster = int((s.data_dir / "postgres" / "postmaster.pid").read_text().split()[0])
            os.kill(postmaster, signal.SIGKILL)
            assert (await readiness_dips_and_returns())[-2:] == [503, 200], s.log.read_text()[-3000:]
            # the data survived, and the pool found the new server by itself
            for _ in range(50):
                answer = await client.post("/v1/orgs", json=body, headers=headers)
                if answer.status_code != 503:
                    break
                await asyncio.sleep(0.2)
            assert answer.status_code == 200, answer.text  # the same organisation again

            sock = str(s.valkey_dir / "valkey.sock")
            valkey = int(redis.Redis(unix_socket_path=sock).info()["process_id"])
            os.kill(valkey, signal.SIGKILL)
            # readiness follows the database only (API.md): the API serves on meanwhile
            assert (await client.get("/health/ready")).status_code == 200
            for _ in range(300):  # 30 s for the supervisor to start Valkey again
                if await asyncio.to_thread(redis_answers, s.valkey_dir):
                    break
                await asyncio.sleep(0.1)
            assert await asyncio.to_thread(redis_answers, s.valkey_dir), s.log.read_text()[-3000:]

        text = s.log.read_text()
        # (once, under a loaded Citus suite run, the restarted server was found down again a
        # second later and started once more: its own log, to tell why if it happens again)
        pg_log = s.data_dir / "postgres" / "log"
        pg_text = pg_log.read_text()[-3000:] if pg_log.exists() else ""
        told = f"{text[-3000:]}\n--- postgres ---\n{pg_text}"
        assert text.count("embedded PostgreSQL is not running") == 1, told
        assert text.count("embedded Valkey is not running") == 1, text[-3000:]
        s.process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(s.process.wait, 60) == 0, s.log.read_text()[-2000:]
        assert not await asyncio.to_thread(postgres_runs, s.data_dir)
        assert not await asyncio.to_thread(redis_answers, s.valkey_dir)


async def test_a_valkey_that_stops_answering_leaves_the_api_serving(tmp_path: Path) -> None:
    """Valkey frozen (SIGSTOP), not down, under ``tracecode serve`` with rate limits on.
    The limiter counts nothing and the API serves on: before, Litestar's limiter (a lock
    per worker around its Valkey get and set, 1 s timeouts each) held every request of
    the worker about 2 s in turn, so 10 requests took about 20 s. Readiness follows the
    database only (API.md), and the console, which keeps its sessions in Valkey, says
    503 rather than 500. Found by a probe."""
    import re
    import signal
    import time

    import httpx
    import redis

    limits = {"TRACE_RATE_LIMIT_INVESTIGATOR": "1000/second", "TRACE_RATE_LIMIT_ADMIN": "1000/second"}
    async with (
        serving(tmp_path, extra_env=limits) as s,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{s.port}", timeout=60) as client,
    ):
        secret = await _investigator(s, client)
        inv = _bearer(secret)
        sock = str(s.valkey_dir / "valkey.sock")
        valkey = [int(redis.Redis(unix_socket_path=sock).info()["process_id"])]
        page = await client.get("/console/signin")
        token = re.search(r'name="_csrf_token" value="([^"]+)"', page.text)
        assert token
        os.kill(valkey[0], signal.SIGSTOP)
        try:
            started = time.monotonic()
            for _ in range(10):
                assert (await client.get("/v1/flags", headers=inv)).status_code == 200
            took = time.monotonic() - started
            assert took < 8, took  # not a benchmark: a stall per request took 20 s
            ready = await client.get("/health/ready")
            assert ready.status_code == 200, ready.text
            signed = await client.post(
                "/console/signin",
                data={"key": secret, "_csrf_token": token.group(1)},
                follow_redirects=False,
            )
            assert signed.status_code == 503, signed.text
            assert "Valkey" in signed.text
        finally:
            os.kill(valkey[0], signal.SIGCONT)
        assert (await client.get("/v1/flags", headers=inv)).status_code == 200


async def test_metrics_survive_a_second_serve_and_forget_a_dead_worker(tmp_path: Path) -> None:
    """Found by a probe. A second ``serve`` on the same data folder (it fails to bind)
    emptied the running one's metrics folder: its /metrics went blank and every alert
    blind. And a killed worker's live gauges (its pool's connections) stayed in /metrics
    after it was replaced."""
    import signal
    import subprocess

    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    from benchkit import procs
    from benchkit.localrun import TRACECODE

    def pool_connections(text: str) -> float:
        return sum(
            s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == "tracecode_db_pool_connections"
        )

    async def settled_at(wanted: float) -> float:
        """The pools' connections in /metrics once they are ``wanted`` (a worker reports
        its pool every second, a replaced one once it has started: a fixed wait of 1.5 s
        was too short on a busy machine), or as they are after a minute."""
        got = -1.0
        for _ in range(120):
            got = pool_connections((await client.get("/metrics")).text)
            if got == wanted:
                break
            await asyncio.sleep(0.5)
        return got

    pool = {"TRACE_DB_POOL_MIN": "2", "TRACE_DB_POOL_MAX": "2"}
    async with (
        serving(tmp_path, workers=2, extra_env=pool) as s,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{s.port}", timeout=30) as client,
    ):
        for _ in range(20):
            await client.get("/health/ready")
        assert "tracecode_requests_total" in (await client.get("/metrics")).text
        second = await asyncio.to_thread(
            subprocess.run,
            [str(TRACECODE), "serve", "--port", str(s.port), "--workers", "2"],
            env=s.env,
            capture_output=True,
            timeout=120,
        )
        assert second.returncode != 0  # the port is taken
        assert "tracecode_requests_total" in (await client.get("/metrics")).text
        # and it left the running serve's servers alone: they are not its to stop
        from service.embedded import postgres_runs, redis_answers

        assert await asyncio.to_thread(postgres_runs, s.data_dir)
        assert await asyncio.to_thread(redis_answers, s.valkey_dir)

        assert await settled_at(4) == 4  # each worker's pool gauge is set every second
        workers = procs.app_workers(s.process.pid)
        os.kill(workers[0], signal.SIGKILL)
        for _ in range(100):
            await asyncio.sleep(0.2)
            now = procs.app_workers(s.process.pid)
            if len(now) == 2 and workers[0] not in now:
                break
        # the replacement's pool once it has started, and not the dead worker's as well
        assert await settled_at(4) == 4


async def test_a_frozen_embedded_valkey_is_replaced_not_doubled(tmp_path: Path) -> None:
    """The supervisor starts Valkey again when it stops answering. Frozen, not dead, it
    used to be left running beside the new one, both on the same append-only file (found
    by a probe); now it is killed first, and one server runs on the data."""
    import signal

    import redis

    from service.embedded import redis_answers

    async with serving(tmp_path) as s:
        sock = str(s.valkey_dir / "valkey.sock")
        frozen = int(redis.Redis(unix_socket_path=sock).info()["process_id"])
        os.kill(frozen, signal.SIGSTOP)
        try:
            for _ in range(600):  # 60 s: the supervisor's check waits 2 s for an answer
                await asyncio.sleep(0.1)
                if _state(frozen) in ("", "Z"):
                    break
            assert _state(frozen) in ("", "Z"), s.log.read_text()[-2000:]  # gone, or a zombie
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(frozen, signal.SIGCONT)
        for _ in range(300):
            if await asyncio.to_thread(redis_answers, s.valkey_dir):
                break
            await asyncio.sleep(0.1)
        assert await asyncio.to_thread(redis_answers, s.valkey_dir)
        # one server on the data: the frozen one is gone (or a zombie, holding no files)
        servers = _valkeys_on(s.valkey_dir)
        assert len(servers) == 1, servers


# Runs ``tracecode serve`` (its arguments) as its child, prints its pid, and waits for its
# stdin to close. PR_SET_CHILD_SUBREAPER: the postmaster pg_ctl leaves behind becomes this
# process's child, and is never reaped: killed, it stays a zombie, as under an init that
# reaps late (here, 1.5 s) or a serve that is PID 1 in a container (for ever)
_NO_REAPER = """
import ctypes, subprocess, sys
ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)
with open(sys.argv[1], "wb") as log:
    serve = subprocess.Popen(
        sys.argv[2:], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
print(serve.pid, flush=True)
sys.stdin.read()
"""


async def test_serve_starts_at_once_after_it_and_its_postmaster_were_killed(tmp_path: Path) -> None:
    """``kill -9`` of ``serve`` and of its postmaster, and ``serve`` again at once: the
    killed postmaster, not yet reaped, left its ``postmaster.pid``; ``pg_ctl status`` took
    it for a running server, the start was skipped, and serve died with a traceback of a
    refused connection (found by a probe, 3 times in 3). Now it starts PostgreSQL, and a
    graceful stop leaves nothing running, the Valkey the killed serve left included."""
    import signal
    import subprocess
    import sys

    from benchkit.localrun import TRACECODE, free_port, start_service, stop_service
    from service.embedded import postgres_runs
    from tests.integration.served import serve_env, stop_embedded

    data_dir = tmp_path / "data"
    env = serve_env(data_dir)
    port = free_port()
    args = [sys.executable, "-c", _NO_REAPER, str(tmp_path / "first.log"), str(TRACECODE), "serve"]
    holder = await asyncio.to_thread(
        subprocess.Popen, [*args, "--port", str(port)], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout is not None
        first = int(await asyncio.to_thread(holder.stdout.readline))
        for _ in range(450):  # 90 s
            if await asyncio.to_thread(_answers_ready, port):
                break
            assert _state(first) not in ("", "Z"), (tmp_path / "first.log").read_text()[-3000:]
            await asyncio.sleep(0.2)
        pid_file = data_dir / "postgres" / "postmaster.pid"
        postmaster = int(pid_file.read_text().split()[0])
        os.killpg(first, signal.SIGKILL)
        os.kill(postmaster, signal.SIGKILL)
        for _ in range(100):
            if _state(postmaster) == "Z":
                break
            await asyncio.sleep(0.05)
        assert _state(postmaster) == "Z"  # and stays one: nobody reaps it
        assert pid_file.exists()

        log = tmp_path / "second.log"
        second = await asyncio.to_thread(start_service, env, port, log)  # raises if it dies
        try:
            assert "Traceback" not in log.read_text()
            second.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(second.wait, 60) == 0, log.read_text()[-3000:]
            assert not await asyncio.to_thread(postgres_runs, data_dir)
            assert not _valkeys_on(data_dir / "valkey"), log.read_text()[-3000:]
        finally:
            await asyncio.to_thread(stop_service, second)
    finally:
        holder.kill()  # its zombies go to init, which reaps them
        await asyncio.to_thread(holder.communicate)
        await stop_embedded(data_dir)


def _answers_ready(port: int) -> bool:
    import httpx

    try:
        return httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


async def test_the_servers_of_a_killed_serve_are_stopped_by_the_next_one(tmp_path: Path) -> None:
    """``kill -9`` of ``serve`` leaves its PostgreSQL and Valkey running. The next ``serve``
    on the data used them and, not having started them, left them running when it
    stopped: they outlived everything (found by a probe). Now it adopts them and stops
    them; a ``tracecode key`` run meanwhile uses them and stops nothing."""
    import signal

    from benchkit.localrun import create_admin_key, free_port, start_service, stop_service
    from service.embedded import postgres_runs, redis_answers

    async with serving(tmp_path) as s:
        os.killpg(s.process.pid, signal.SIGKILL)
        await asyncio.to_thread(s.process.wait)
        assert await asyncio.to_thread(postgres_runs, s.data_dir)  # left running
        assert await asyncio.to_thread(redis_answers, s.valkey_dir)

        log = tmp_path / "second.log"
        second = await asyncio.to_thread(start_service, s.env, free_port(), log)
        try:
            await asyncio.to_thread(create_admin_key, s.env)  # not theirs to stop
            assert await asyncio.to_thread(postgres_runs, s.data_dir)
            assert await asyncio.to_thread(redis_answers, s.valkey_dir)
            second.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(second.wait, 60) == 0, log.read_text()[-3000:]
            assert not await asyncio.to_thread(postgres_runs, s.data_dir), log.read_text()[-3000:]
            assert not _valkeys_on(s.valkey_dir), log.read_text()[-3000:]
        finally:
            await asyncio.to_thread(stop_service, second)


async def test_a_stale_postmaster_pid_whose_pid_was_reused_is_no_server(tmp_path: Path) -> None:
    """A ``postmaster.pid`` a killed postmaster left, whose pid a process of the same user
    has since (a container started again): ``pg_ctl status`` said running and the start
    was skipped. Now the file is seen stale and PostgreSQL starts; that process lives on."""
    import signal
    import subprocess

    from service.embedded import postgres_runs, start_postgres, stop_postgres

    root = tmp_path / "pg"
    url = await asyncio.to_thread(start_postgres, root)
    try:
        pgdata = root / "postgres"
        postmaster = int((pgdata / "postmaster.pid").read_text().split()[0])
        os.kill(postmaster, signal.SIGKILL)
        for _ in range(200):
            if _state(postmaster) in ("", "Z"):
                break
            await asyncio.sleep(0.05)
        # as root the server runs as its own user, and pg_ctl ignores a pid of another one
        user = "embedded_postgres" if os.geteuid() == 0 else None
        other = await asyncio.to_thread(subprocess.Popen, ["sleep", "120"], user=user)
        try:
            for lock in (pgdata / "postmaster.pid", pgdata / ".s.PGSQL.5432.lock"):
                lines = lock.read_text().splitlines()
                lock.write_text("\n".join([str(other.pid), *lines[1:]]) + "\n")
            assert await asyncio.to_thread(start_postgres, root) == url
            assert await asyncio.to_thread(postgres_runs, root)
            conn = await asyncpg.connect(url)
            try:
                assert await conn.fetchval("SELECT 1") == 1
            finally:
                await conn.close()
            assert other.poll() is None  # not signalled
        finally:
            other.kill()
            other.wait()
    finally:
        await asyncio.to_thread(stop_postgres, root)


def _valkeys_on(folder: Path) -> list[str]:
    """The pids of running valkey-server processes whose command line names ``folder``."""
    return [
        p.name
        for p in Path("/proc").iterdir()
        if p.name.isdigit()
        and "valkey-server" in (line := _cmdline(p))
        and str(folder) in line
        and _state(int(p.name)) not in ("", "Z")
    ]


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat[stat.rindex(")") + 2]
