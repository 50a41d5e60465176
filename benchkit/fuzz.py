"""Schemathesis against the in-process app (issue 13, item 2): requests generated from
the served OpenAPI document for every operation, sent with an admin key, and no answer
may be a 5xx. Used by ``tests/integration/test_fuzz.py`` (bounded) and
``scripts/fuzz.py`` (long runs)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err
from schemathesis.python import asgi

from benchkit.api import AMOXICILLIN, Org, org_body, product_body

SCHEMA_PATH = "/schema/openapi.json"
# Facts for generated requests to meet: the examples in the document name these (the
# README's first session), so a generated event, settlement or verify reaches the rules
# instead of "unknown org".
ORGS = (
    Org("M1", "manufacturer", "450300"),
    Org("D1", "distributor", "450100"),
    Org("P1", "pharmacy", "450103"),
)


@dataclass
class Report:
    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    by_operation: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[tuple[str, int]] = field(default_factory=Counter)  # (operation, status)
    server_errors: list[str] = field(default_factory=list)  # "METHOD path: status body"
    samples: dict[tuple[str, int], str] = field(default_factory=dict)  # a first answer of each


def _seed_registry(client: asgi.ASGIClient, headers: dict[str, str]) -> None:
    for org in ORGS:
        client.post("/v1/orgs", json=org_body(org), headers=headers)
    client.post("/v1/products", json=product_body(AMOXICILLIN), headers=headers)


def fuzz(
    app: Any,
    admin_key: str,
    *,
    max_examples: int,
    seed: int | None = None,
    progress: Callable[[str, Report], None] | None = None,
) -> Report:
    """Run every operation of the served document with ``max_examples`` generated cases
    (plus the document's examples); ``seed=None`` is deterministic (derandomized).
    Stops nothing on a 5xx: each one is listed in the report."""
    headers = {"Authorization": f"Bearer {admin_key}"}
    schema = schemathesis.openapi.from_asgi(SCHEMA_PATH, app)
    report = Report()
    config = settings(
        max_examples=max_examples,
        derandomize=seed is None,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    with asgi.get_client(app) as client:
        _seed_registry(client, headers)
        for result in schema.get_all_operations():
            if isinstance(result, Err):  # a part of the document schemathesis cannot read
                raise result.err()
            operation = result.ok()
            strategies = [operation.as_strategy(), *schema.get_strategies_from_examples(operation)]
            name = f"{operation.method.upper()} {operation.path}"

            run = _runner(client, headers, report, name, config, st.one_of(strategies))
            if seed is not None:
                run = hypothesis_seed(seed)(run)
            run()
            if progress is not None:
                progress(name, report)
    return report


def _runner(
    client: asgi.ASGIClient,
    headers: dict[str, str],
    report: Report,
    name: str,
    config: settings,
    cases: st.SearchStrategy[Any],
) -> Callable[[], None]:
    @config
    @given(case=cases)
    def run(case: Any) -> None:
        response = case.call(session=client, headers=headers)
        report.requests += 1
        report.statuses[response.status_code] += 1
        report.by_operation[name] += 1
        report.outcomes[name, response.status_code] += 1
        report.samples.setdefault((name, response.status_code), response.text[:300])
        try:
            case.validate_response(response, checks=[not_a_server_error])
        except Exception:
            report.server_errors.append(
                f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:300]}"
            )

    return run


def stop() -> None:
    """Stop the apps whose lifespans the runs started (their pools, background tasks)."""
    asgi.shutdown_lifespans()
