"""Event ingest throughput: the service against a raw-asyncpg ceiling, same database, same run.

What is measured
    For each batch size B (default 1,000 and 10,000) and each round (default 5):

    * service: ``POST /v1/events`` with ONE ``commission`` event of B fresh CN20 codes,
      then ONE ``ship`` event of the same B codes from M1 to D1. The time is the wall
      time of the request seen by the client (a persistent ``httpx.AsyncClient``; the
      JSON body is encoded before the clock starts). Event times increase and lie in the
      past, so the service takes its in-order path (no replay).
    * baseline: the same process calls the service's own use case,
      ``service.usecases.events.ingest`` (through ``benchkit.baseline``), with the same
      event on another range of codes, on an asyncpg pool of one connection: the same
      work without HTTP, JSON and validation. The time includes building the event
      value. HTTP, JSON decoding, validation and code parsing are what the ratio prices.

    codes/s = B / seconds. The table gives medians over all rounds (nothing discarded)
    and the ratio service / baseline. One unmeasured 100-code warm-up runs first on
    each side.

How to run (from the repository root)
    .venv/bin/python scripts/bench_ingest.py [--rounds N] [--workers W] [--batches 1000,10000]
                                             [--database-url URL]

Without ``--database-url`` a throwaway embedded PostgreSQL is started in a temporary
folder and deleted at exit. The service runs as ``tracecode serve`` in a subprocess
(its embedded Valkey in a temporary ``TRACE_DATA_DIR``) and is stopped at the end,
also on errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from benchkit import baseline, localrun
from benchkit.api import AMOXICILLIN, Org, event, register
from benchkit.codes import cn20
from benchkit.stats import cpu_model
from service.core.events import Incoming
from service.store.db import create_pool

PRODUCT = AMOXICILLIN.product_id
MANUFACTURER = Org(AMOXICILLIN.manufacturer, "manufacturer", "450100")
DISTRIBUTOR = Org("D1", "distributor", "450100")
WARM_UP = 100
# What is measured, in this order: each operation's own event fields (the same names in
# the API's JSON and in service.core.events.Incoming).
OPERATIONS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("commission", {"lot": "BENCH1", "expiry": date(2030, 12, 31), "produced": date(2025, 1, 15)}),
    ("ship", {"to": DISTRIBUTOR.id}),
)


@dataclass
class Timings:
    """Seconds per request (service) or per transaction (baseline), by (operation, batch)."""

    service: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    baseline: dict[tuple[str, int], list[float]] = field(default_factory=dict)

    def add(self, side: str, op: str, size: int, seconds: float) -> None:
        getattr(self, side).setdefault((op, size), []).append(seconds)


class Clock:
    """Event times one second apart, starting a day ago (never in the future)."""

    def __init__(self) -> None:
        self.next = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)

    def tick(self) -> datetime:
        self.next += timedelta(seconds=1)
        return self.next


class Serials:
    """Fresh CN20 codes of the product: product id + 13-digit serial, never reused."""

    def __init__(self, first: int) -> None:
        self.next = first

    def take(self, n: int) -> list[str]:
        codes = [cn20(PRODUCT, s) for s in range(self.next, self.next + n)]
        self.next += n
        return codes


# --- the two sides -----------------------------------------------------------------


async def service_batch(client: httpx.AsyncClient, key: str, ev: dict[str, Any]) -> float:
    """POST one event; return the seconds the request took. Every code must be taken."""
    content = json.dumps({"events": [ev]}).encode()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    started = time.perf_counter()
    resp = await client.post("/v1/events", content=content, headers=headers)
    seconds = time.perf_counter() - started
    if resp.status_code != 200 or resp.json()["accepted"] != len(ev["codes"]):
        raise RuntimeError(f"{ev['type']} of {len(ev['codes'])} codes: {resp.status_code} {resp.text}")
    return seconds


async def baseline_batch(
    pool: asyncpg.Pool, type_: str, codes: list[str], at: datetime, fields: dict[str, Any]
) -> float:
    """The same event through the service's ingest use case; the seconds it took,
    building the event value included. Every code must be taken."""
    started = time.perf_counter()
    incoming = Incoming(uuid.uuid4(), type_, at, MANUFACTURER.id, tuple(codes), **fields)
    accepted = await baseline.ingest(pool, [incoming])
    seconds = time.perf_counter() - started
    if accepted != len(codes):
        raise RuntimeError(f"baseline {type_}: {accepted} of {len(codes)} codes accepted")
    return seconds


# --- the run ------------------------------------------------------------------------


async def one_round(
    client: httpx.AsyncClient,
    key: str,
    pool: asyncpg.Pool,
    codes: tuple[list[str], list[str]],
    clock: Clock,
) -> list[tuple[str, str, float]]:
    """Commission then ship one batch through the service and another through the
    baseline, interleaved so both see the same machine noise. (operation, side, seconds)."""
    ours, theirs = codes
    results = []
    for op, fields in OPERATIONS:
        ev = event(op, MANUFACTURER.id, ours, clock.tick(), **fields)
        results.append((op, "service", await service_batch(client, key, ev)))
        results.append((op, "baseline", await baseline_batch(pool, op, theirs, clock.tick(), fields)))
    return results


async def run(args: argparse.Namespace, database_url: str, workdir: Path) -> tuple[Timings, str]:
    """Start the service and run both workloads; return the timings and the PostgreSQL version."""
    timings = Timings()
    clock = Clock()
    env = dict(os.environ, TRACE_DATABASE_URL=database_url, TRACE_DATA_DIR=str(workdir / "data"))
    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            pg_version: str = await conn.fetchval("SHOW server_version")
            last = await conn.fetchval("SELECT max(code) FROM codes WHERE code LIKE $1", f"{PRODUCT}%")
        serials = Serials(int(last[7:]) + 1 if last else 1)
        port = localrun.free_port()
        server = localrun.start_service(env, port, workdir / "service.log", workers=args.workers)
        try:
            admin = localrun.create_admin_key(env)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=300) as client:
                keys = await register(client, admin, [MANUFACTURER, DISTRIBUTOR], [AMOXICILLIN])
                m1 = keys[MANUFACTURER.id]
                pair = (serials.take(WARM_UP), serials.take(WARM_UP))
                await one_round(client, m1, pool, pair, clock)  # warm-up, not measured
                for size in args.batches:
                    for r in range(args.rounds):
                        pair = (serials.take(size), serials.take(size))
                        for op, side, seconds in await one_round(client, m1, pool, pair, clock):
                            timings.add(side, op, size, seconds)
                        print(f"batch {size}: round {r + 1}/{args.rounds} done", file=sys.stderr)
        finally:
            localrun.stop_service(server)
    finally:
        await pool.close()
    return timings, pg_version


def report(args: argparse.Namespace, timings: Timings, pg_version: str) -> str:
    lines = [
        f"- machine: {len(os.sched_getaffinity(0))} CPU(s) (nproc), {cpu_model()}",
        f"- Python {platform.python_version()}, PostgreSQL {pg_version}, service workers: {args.workers}",
        f"- command: `{shlex.join(sys.orig_argv)}`",
        f"- {args.rounds} round(s) per batch size; medians over all rounds",
        "",
        "| operation | batch | service codes/s | baseline codes/s | service / baseline "
        "| service p50 ms | baseline p50 ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for size in args.batches:
        for op in ("commission", "ship"):
            ours, theirs = timings.service[(op, size)], timings.baseline[(op, size)]
            ours_rate = statistics.median(size / s for s in ours)
            theirs_rate = statistics.median(size / s for s in theirs)
            lines.append(
                f"| {op} | {size:,} | {ours_rate:,.0f} | {theirs_rate:,.0f} "
                f"| {100 * ours_rate / theirs_rate:.0f}% | {1000 * statistics.median(ours):.1f} "
                f"| {1000 * statistics.median(theirs):.1f} |"
            )
    return "\n".join(lines)


def batch_sizes(text: str) -> list[int]:
    sizes = [int(part) for part in text.split(",") if part.strip()]
    if not sizes or any(not 1 <= s <= 10_000 for s in sizes):
        raise argparse.ArgumentTypeError("batch sizes are 1 to 10,000 codes (one request at most)")
    return sizes


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5, help="rounds per batch size (default 5)")
    p.add_argument("--workers", type=int, default=1, help="service worker processes (default 1)")
    p.add_argument("--batches", type=batch_sizes, default=[1000, 10000], help="default 1000,10000")
    p.add_argument("--database-url", default=None, help="use this database instead of a throwaway one")
    args = p.parse_args()

    database_url = args.database_url or localrun.throwaway_postgres()
    asyncio.run(localrun.migrate(database_url))
    workdir = Path(tempfile.mkdtemp(prefix="tracecode-bench-"))
    try:
        timings, pg_version = asyncio.run(run(args, database_url, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(report(args, timings, pg_version))
    return 0


if __name__ == "__main__":
    sys.exit(main())
