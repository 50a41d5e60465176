"""Smoke run of the load test, so ``loadtests/`` does not rot: seed a small data set with
``loadtests/seed.py``, serve it with ``tracecode serve``, run ``loadtests/locustfile.py``
headless for a few seconds with one user of each class taking its operations in turn.
Every main kind of request must be made and none may fail. No timing is asserted.

Locust runs in a subprocess: it monkey-patches with gevent, which must not happen to the
test process."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchkit.localrun import free_port, start_service, stop_service

pytestmark = pytest.mark.asyncio(loop_scope="session")

ROOT = Path(__file__).resolve().parents[2]
LOADTESTS = ROOT / "loadtests"

# Every operation of every user class of the Locust file.
OPERATIONS = {
    "commission", "pack", "ship_mfr",  # manufacturers
    "receive_dist", "ship_case", "ship_loose",  # distributors
    "receive", "verify", "verify_batch", "dispense", "dispense_split",  # pharmacies, hospitals
    "settle", "precheck", "settlement_get", "reversal",  # settlement engines
    "history", "flags",  # investigators
}  # fmt: skip


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=180, cwd=cwd, check=False)


async def test_locustfile_makes_every_kind_of_request_without_failures(
    db_url: str, server_urls: tuple[str, str], tmp_path: Path
) -> None:
    manifest = tmp_path / "manifest.json"
    seeded = await asyncio.to_thread(
        run,
        sys.executable,
        str(LOADTESTS / "seed.py"),
        "--database-url",
        db_url,
        "--codes",
        "3000",
        "--manifest",
        str(manifest),
        "--check",
        "300",
        cwd=tmp_path,
    )
    # --check: the seeded rows are what the service's own fold makes of the seeded events
    assert seeded.returncode == 0, seeded.stdout + seeded.stderr

    port = free_port()
    env = {
        **os.environ,
        "TRACE_DATABASE_URL": db_url,
        "TRACE_REDIS_URL": server_urls[1],
        "TRACE_DATA_DIR": str(tmp_path / "data"),
        "TRACE_LOG_LEVEL": "warning",
    }
    server = await asyncio.to_thread(start_service, env, port, tmp_path / "service.log")
    summary_path = tmp_path / "summary.json"
    try:
        done = await asyncio.to_thread(
            run,
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(LOADTESTS / "locustfile.py"),
            "--headless",
            "--only-summary",
            "--host",
            f"http://127.0.0.1:{port}",
            "--manifest",
            str(manifest),
            "--load-shape",
            "flat",
            "--load-duration",
            "6",
            "--users-per-class",
            "1",
            "--user-rate",
            "5",
            "--op-mix",
            "round-robin",
            "--slo",
            "off",
            "--max-fail-ratio",
            "0",
            "--summary-json",
            str(summary_path),
            cwd=tmp_path,
        )
    finally:
        await asyncio.to_thread(stop_service, server)

    output = f"{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    assert summary_path.exists(), output
    summary: dict[str, Any] = json.loads(summary_path.read_text())
    ops = summary["operations"]
    made = {name for name, op in ops.items() if op["requests"] > 0}
    assert OPERATIONS - made == set(), (sorted(made), output)
    assert made - OPERATIONS == set(), sorted(made)
    failed = {name: op["failures"] for name, op in ops.items() if op["failures"]}
    assert failed == {}, (failed, summary["errors"])
    assert summary["outcomes"].get("settle.accepted", 0) > 0, summary["outcomes"]
    assert done.returncode == 0, output
