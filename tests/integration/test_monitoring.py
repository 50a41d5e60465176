"""The alerts and the dashboard in ops/ are checked, not just written: promtool unit-tests
every alert (ops/prometheus/alerts_test.yml), and every metric an alert or a dashboard
query names is one a live service exports at /metrics, with the labels and route
templates the query selects."""

from __future__ import annotations

import gc
import json
import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml
from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families

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
