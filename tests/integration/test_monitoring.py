"""The alerts and the dashboard in ops/ are checked, not just written: promtool unit-tests
every alert (ops/prometheus/alerts_test.yml), and every metric an alert or a dashboard
query names is one a live service exports at /metrics, with the labels and route
templates the query selects."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import re
import shutil
import subprocess
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml
from litestar.testing import AsyncTestClient
from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.parser import text_string_to_metric_families

from benchkit.localrun import create_admin_key
from service.app import create_app
from service.cli import _create_key
from service.config import Settings
from service.store.db import PoolExhausted, create_pool, unavailable, unavailable_cause
from tests.helpers import Api, cn20, event, pack_claim, received, world

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "ops" / "prometheus"
DASHBOARD = ROOT / "ops" / "grafana" / "tracecode.json"
# series Prometheus makes itself, not the service
PROMETHEUS_OWN = {"up"}
# labels whose values depend on what went wrong (status codes) or on the histogram
_ANY_VALUE = {"status_code", "le"}

_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "and", "or", "unless", "offset", "inf", "nan",
}  # fmt: skip
_SELECTOR = re.compile(r'([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{((?:"(?:[^"\\]|\\.)*"|[^}"])*)\}')
_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, keywords or labels)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\$\{?\w+\}?", "", text)  # Grafana variables
    names = set()
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", text):
        if not m.group(2) and m.group(1).lower() not in _KEYWORDS:
            names.add(m.group(1))
    return names


def selectors(expr: str) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """(metric, [(label, op, value)]) for every ``metric{...}`` in an expression."""
    out = []
    for m in _SELECTOR.finditer(expr):
        found = _MATCHER.findall(m.group(2))
        matchers = [(lbl, op, val.encode().decode("unicode_escape")) for lbl, op, val in found]
        out.append((m.group(1), matchers))
    return out


def alert_exprs() -> dict[str, str]:
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    return {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"]}


def dashboard_exprs() -> dict[str, str]:
    board = json.loads(DASHBOARD.read_text())
    out: dict[str, str] = {}

    def walk(panels: list[dict[str, Any]]) -> None:
        for p in panels:
            for i, t in enumerate(p.get("targets", [])):
                out[f"{p['title']} #{i}"] = t["expr"]
            walk(p.get("panels", []))

    walk(board["panels"])
    return out


def test_metric_names_are_parsed_from_promql() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (path, le) (rate(tracecode_request_duration_seconds_bucket"
        '{method="GET", path=~"/v1/a|/v1/b"}[$__rate_interval]))) > 0.1 and on() up{job="x"} == 0'
        " or sum(tracecode_db_pool_in_use) / sum without (instance) (tracecode_db_pool_connections)"
    )
    assert metric_names(expr) == {
        "tracecode_request_duration_seconds_bucket", "up", "tracecode_db_pool_in_use",
        "tracecode_db_pool_connections",
    }  # fmt: skip
    assert selectors('x{path=~"/v1/codes/\\\\{code:str\\\\}/history"}') == [
        ("x", [("path", "=~", "/v1/codes/\\{code:str\\}/history")])
    ]


# --- promtool -----------------------------------------------------------------------


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (Debian's prometheus package; .ci/run installs it)")
    return path


def test_promtool_checks_the_rules() -> None:
    out = subprocess.run(
        [_promtool(), "check", "rules", "alerts.yml"], cwd=PROMETHEUS, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_unit_tests_every_alert_firing_and_not() -> None:
    out = subprocess.run(
        [_promtool(), "test", "rules", "alerts_test.yml"], cwd=PROMETHEUS, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    # every alert has a test that sees it fire and one that sees it quiet
    tests = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())["tests"]
    fired, quiet = set(), set()
    for t in tests:
        for check in t.get("alert_rule_test", []):
            (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    assert fired == set(alert_exprs())
    assert quiet == set(alert_exprs())


# --- a live /metrics ----------------------------------------------------------------


async def _traffic(admin: Api) -> None:
    """One of everything the alerts and the dashboard look at: ingest, verify (one and
    batch), a settlement, its read and reversal, history, the flag list and a flag."""
    w = await world(admin)
    m, p1, ins, inv = w["keys"]["M1"], w["keys"]["P1"], w["insurer"], w["inv"]
    code = cn20(w["unit"], 1)
    await m.events(
        event("commission", "M1", [code], 0, lot="L1", expiry="2030-01-01"),
        event("ship", "M1", [code], 1, to="P1"),
    )
    await p1.events(event("receive", "P1", [code], 2))
    await p1.events(event("receive", "P1", [cn20(w["unit"], 2)], 3))  # unknown code: a flag
    await m.events(event("commission", "M1", [code], 4, lot="L9", expiry="2031-01-01"))  # rejected
    await p1.ok("GET", f"/v1/codes/{code}/verify")
    await p1.ok("POST", "/v1/verify", {"codes": [code]})
    settle = {
        "setl_id": "S-MON",
        "org": "P1",
        "psn_no": "1",
        "at": "2026-03-02T09:00:00+00:00",
        "lines": [
            {"line_no": 1, "med_list_codg": "XJ01CAA040A001010104256", "quantity": 24, "codes": [code]}
        ],
    }
    await ins.ok("POST", "/v1/settlements", settle)
    await ins.ok("GET", "/v1/settlements/S-MON")
    await ins.ok("POST", "/v1/settlements/S-MON/reversal", {})
    await inv.ok("GET", f"/v1/codes/{code}/history")
    await inv.ok("GET", "/v1/flags")
    gc.collect()  # a pause of the collector, as a worker has many (this app runs in-process)


async def _exported(client: AsyncTestClient) -> dict[str, list[dict[str, str]]]:  # type: ignore[type-arg]
    """Sample name -> the label sets /metrics shows for it."""
    resp = await client.get("/metrics")
    assert resp.status_code == 200
    samples: dict[str, list[dict[str, str]]] = defaultdict(list)
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            samples[s.name].append(dict(s.labels))
    return samples


def _problems(exprs: dict[str, str], exported: dict[str, list[dict[str, str]]]) -> list[str]:
    problems = []
    for where, expr in exprs.items():
        names = metric_names(expr)
        if not names:
            problems.append(f"{where}: names no metric")
        problems += [f"{where}: {n} is not exported" for n in sorted(names - PROMETHEUS_OWN - set(exported))]
        for metric, matchers in selectors(expr):
            if metric in PROMETHEUS_OWN or metric not in exported:
                continue
            series = exported[metric]
            for label, op, value in matchers:
                if not any(label in s for s in series):
                    problems.append(f"{where}: {metric} has no label {label}")
                elif label not in _ANY_VALUE and op in ("=", "=~"):
                    pattern = re.escape(value) if op == "=" else value
                    if not any(re.fullmatch(pattern, s.get(label, "")) for s in series):
                        problems.append(f"{where}: no {metric} series has {label}{op}{value!r}")
    return problems


@pytest.mark.asyncio(loop_scope="session")
async def test_every_alert_and_dashboard_query_names_exported_metrics(
    client: AsyncTestClient,
    admin: Api,  # type: ignore[type-arg]
) -> None:
    await _traffic(admin)
    exported = await _exported(client)
    assert "tracecode_requests_total" in exported  # the middleware's names, as the alerts use them
    exprs = {f"alert {k}": v for k, v in alert_exprs().items()}
    dashboard = dashboard_exprs()
    assert len(dashboard) >= 10
    exprs.update({f"dashboard {k}": v for k, v in dashboard.items()})
    assert _problems(exprs, exported) == []


def _count(text: str, path: str, status: str) -> float:
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "tracecode_requests_total"
        and s.labels.get("path") == path
        and s.labels.get("status_code") == status
    )


@pytest.mark.asyncio(loop_scope="session")
async def test_answers_made_before_the_handler_are_counted_with_their_status(
    client: AsyncTestClient,
    admin: Api,  # type: ignore[type-arg]
) -> None:
    """A 401 from the key middleware and a 404 off every route are counted as what they
    were. Litestar's Prometheus middleware counted a middleware's 401 (and 429, and 503)
    as a 200 with no duration, and a 404 off-route not at all (found by a probe)."""
    before = (await client.get("/metrics")).text
    for _ in range(3):
        assert (await client.get("/v1/flags", headers={"Authorization": "Bearer nope"})).status_code == 401
    assert (await client.get("/no/such/route")).status_code == 404
    after = (await client.get("/metrics")).text
    assert _count(after, "/v1/flags", "401") - _count(before, "/v1/flags", "401") == 3
    assert _count(after, "/v1/flags", "200") == _count(before, "/v1/flags", "200")
    assert _count(after, "unmatched", "404") - _count(before, "unmatched", "404") == 1


def _raised(text: str, kind: str) -> float:
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "tracecode_flags_raised_total" and s.labels.get("kind") == kind
    )


@pytest.mark.asyncio(loop_scope="session")
async def test_a_flag_a_settlement_raises_is_counted(client: AsyncTestClient, admin: Api) -> None:  # type: ignore[type-arg]
    """tracecode_flags_raised_total counted only the flags an ingest answer listed: a
    resold pack caught at settlement (DUPLICATE) was missing from the metric and the
    dashboard (found by a probe)."""
    w = await world(admin)
    [code] = await received(w, "P1", [880])
    before = (await client.get("/metrics")).text
    first = await w["insurer"].ok("POST", "/v1/settlements", pack_claim("S-MON-1", code, 60))
    assert first["decision"] == "accepted"
    again = await w["insurer"].ok("POST", "/v1/settlements", pack_claim("S-MON-2", code, 70))
    assert [f["kind"] for f in again["flags"]] == ["DUPLICATE"], again
    after = (await client.get("/metrics")).text
    assert _raised(after, "DUPLICATE") - _raised(before, "DUPLICATE") == 1


@pytest.mark.asyncio(loop_scope="session")
async def test_a_method_of_a_clients_own_is_counted_as_other(client: AsyncTestClient) -> None:  # type: ignore[type-arg]
    """Every answer is counted, off-route ones too: a method a client makes up must not
    make a series of its own (labels are series; found in review)."""
    await client.request("BREW", "/no/such/route")
    text = (await client.get("/metrics")).text
    methods = {
        s.labels.get("method")
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "tracecode_requests_total"
    }
    assert "BREW" not in methods
    assert "OTHER" in methods


# --- the database pools and their 503s -------------------------------------------


def _sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample of a /metrics text (None when it is not there)."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


def _unavailable(cause: str) -> float:
    return REGISTRY.get_sample_value("tracecode_db_unavailable_total", {"cause": cause}) or 0.0


@pytest.mark.asyncio(loop_scope="session")
async def test_the_pools_maximum_is_exported(client: AsyncTestClient, settings: Settings) -> None:  # type: ignore[type-arg]
    """TracecodeDbPoolSaturated divides the connections in use by what the pool may open
    (it divided by the open ones, which the pool opens on demand: one request on a quiet
    worker read 100 %; found by a probe)."""
    seen = None
    for _ in range(50):  # the pool's watcher sets it as the app starts, then each second
        seen = _sample((await client.get("/metrics")).text, "tracecode_db_pool_max")
        if seen:
            break
        await asyncio.sleep(0.1)
    assert seen == settings.db_pool_max


@pytest.mark.asyncio(loop_scope="session")
async def test_the_pool_counts_the_acquires_that_wait_and_says_when_it_is_full(db_url: str) -> None:
    """``Pool.waiting`` counts an acquire that waits, both ways of acquiring (they go
    through asyncpg's private ``_acquire``, which the pool wraps: an asyncpg that changes
    it fails here); one that times out with every connection in use is PoolExhausted."""
    pool = await create_pool(db_url, min_size=1, max_size=1, acquire_seconds=30)
    try:
        held = await pool.acquire()
        assert pool.waiting == 0

        async def with_block() -> None:
            async with pool.acquire():
                pass

        async def awaited() -> Any:
            return await pool.acquire()

        waiters = [asyncio.create_task(with_block()), asyncio.create_task(awaited())]
        for _ in range(100):
            if pool.waiting == 2:
                break
            await asyncio.sleep(0.01)
        assert pool.waiting == 2
        with pytest.raises(PoolExhausted) as exhausted:
            await pool.acquire(timeout=0.1)
        assert unavailable(exhausted.value)
        assert unavailable_cause(exhausted.value) == "pool"
        await pool.release(held)
        # whichever gets the connection first hands it on to the other
        await pool.release(await waiters[1])
        await waiters[0]
        assert pool.waiting == 0
    finally:
        pool.terminate()  # not close(): it waits for every connection to come back


@pytest.mark.asyncio(loop_scope="session")
async def test_a_wait_that_began_on_a_full_pool_is_the_pools_though_it_ends_as_a_connection_opens(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An acquire that began with every connection in use waited for one to come free:
    it times out as PoolExhausted (cause "pool") even when, at the timeout, the pool did
    not look full because another acquire, ahead of it, was opening a connection in a
    slot that came free (a connection closed: asyncpg opens a new one in its slot). It
    was counted as an unreachable database's."""
    pool = await create_pool(db_url, min_size=1, max_size=1, acquire_seconds=30)
    opening = asyncio.Event()

    async def slow_to_open(*_: Any, **__: Any) -> Any:
        opening.set()
        await asyncio.Event().wait()  # until cancelled

    try:
        held = await pool.acquire()

        async def acquired(seconds: float) -> Any:
            return await pool.acquire(timeout=seconds)

        ahead = asyncio.create_task(acquired(30))
        for _ in range(100):
            if pool.waiting == 1:
                break
            await asyncio.sleep(0.01)
        waiter = asyncio.create_task(acquired(0.5))
        for _ in range(100):
            if pool.waiting == 2:
                break
            await asyncio.sleep(0.01)
        assert pool.waiting == 2
        monkeypatch.setattr(pool, "_get_new_connection", slow_to_open)
        held.terminate()  # its slot comes free: the acquire ahead opens a connection in it
        await asyncio.wait_for(opening.wait(), 5)
        with pytest.raises(PoolExhausted) as exhausted:
            await waiter
        assert unavailable_cause(exhausted.value) == "pool"
        ahead.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ahead
    finally:
        pool.terminate()


@pytest.mark.asyncio(loop_scope="session")
async def test_a_503_for_a_full_pool_is_counted_apart_from_an_unreachable_database(
    settings: Settings, db_url: str
) -> None:
    """A request that finds every pooled connection in use is answered 503 and counted as
    the pool's, not as the database being unavailable: TracecodeDatabaseUnavailable paged
    on any 503, a full pool's too (found by a probe). A readiness probe then asks the
    database on a connection of its own, and the worker is ready: busy, not broken (it
    failed, and a load balancer took every busy worker out of rotation at the peak)."""
    small = replace(settings, db_pool_min=1, db_pool_max=1, db_acquire_seconds=0.2, redis_url=None)
    app = create_app(small)
    async with AsyncTestClient(app=app) as c:
        _, secret = await _create_key(db_url, "admin", None)
        api = Api(c, secret)
        pool_before, unreachable_before = _unavailable("pool"), _unavailable("unreachable")
        # taken when it is idle: an acquire that waited here, in the test's event loop,
        # would bind the pool's queue to it, and the app's own acquires (in the client's
        # loop) then fail (found on a busy Citus cluster: the promotion loop held it)
        for _ in range(200):
            if app.state.pool.get_idle_size():
                break
            await asyncio.sleep(0.05)
        held = await app.state.pool.acquire()
        try:
            resp = await api.get("/v1/flags")  # the key's look-up waits for the connection
            assert resp.status_code == 503, resp.text
            assert int(resp.headers["retry-after"]) > 0
            ready = await c.get("/health/ready")
            assert ready.status_code == 200, ready.text
            assert ready.json()["status"] == "ready"
        finally:
            await app.state.pool.release(held)
        assert _unavailable("pool") - pool_before == 1
        assert _unavailable("unreachable") == unreachable_before
        assert (await api.get("/v1/flags")).status_code == 200


@pytest.mark.asyncio(loop_scope="session")
async def test_served_workers_sum_their_pools_and_the_requests_waiting(tmp_path: Path) -> None:
    """``tracecode serve --workers 2``: /metrics adds up both workers' pool maximum, and
    counts the requests waiting for a connection while a lock holds the pools' every
    connection (each worker's pool has one)."""
    import httpx

    from service.embedded import start_postgres
    from tests.integration.served import serving

    pools = {"TRACE_DB_POOL_MIN": "1", "TRACE_DB_POOL_MAX": "1", "TRACE_DB_ACQUIRE_SECONDS": "120"}
    async with (
        serving(tmp_path, workers=2, extra_env=pools) as s,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{s.port}", timeout=180) as http,
    ):
        admin = await asyncio.to_thread(create_admin_key, s.env)
        bearer = {"Authorization": f"Bearer {admin}"}

        async def metrics_until(ok: Any) -> str:
            text = ""
            for _ in range(300):
                text = (await http.get("/metrics")).text
                if ok(text):
                    break
                await asyncio.sleep(0.2)
            return text

        text = await metrics_until(lambda t: _sample(t, "tracecode_db_pool_max") == 2)
        assert _sample(text, "tracecode_db_pool_max") == 2, text
        url = await asyncio.to_thread(start_postgres, s.data_dir)
        locker = await asyncpg.connect(url)
        try:
            tx = locker.transaction()
            await tx.start()
            await locker.execute("LOCK TABLE flags IN ACCESS EXCLUSIVE MODE")
            asked = [asyncio.create_task(http.get("/v1/flags", headers=bearer)) for _ in range(6)]
            # at most one request a worker holds its connection (blocked on the lock);
            # the others wait for it
            text = await metrics_until(lambda t: (_sample(t, "tracecode_db_pool_waiting") or 0) >= 4)
            assert (_sample(text, "tracecode_db_pool_waiting") or 0) >= 4, text
            await tx.rollback()
        finally:
            await locker.close()
        for resp in await asyncio.gather(*asked):
            assert resp.status_code == 200, resp.text
        text = await metrics_until(lambda t: _sample(t, "tracecode_db_pool_waiting") == 0)
        assert _sample(text, "tracecode_db_pool_waiting") == 0, text


def test_the_readme_names_every_metric_the_service_exports() -> None:
    """README's metrics list left out metrics the alerts and the dashboard use (the flag
    feed's, event duplicates, GC pauses; found by a probe)."""
    from service import metrics

    readme = (ROOT / "README.md").read_text()
    listed = readme[readme.index("**Metrics** (`/metrics`") :]
    listed = listed[: listed.index("\n#")]
    exported = [
        m._name + ("_total" if isinstance(m, Counter) else "")  # a counter's family drops it
        for m in vars(metrics).values()
        if isinstance(m, Counter | Gauge | Histogram)
    ]
    assert len(exported) >= 20
    assert [name for name in exported if f"`{name}" not in listed] == []
