"""Event ingest throughput: the service against a raw-asyncpg ceiling, same database, same run.

What is measured
    For each batch size B (default 1,000 and 10,000) and each round (default 5):

    * service: ``POST /v1/events`` with ONE ``commission`` event of B fresh CN20 codes,
      then ONE ``ship`` event of the same B codes from M1 to D1. The time is the wall
      time of the request seen by the client (a persistent ``httpx.Client``; the JSON
      body is encoded before the clock starts). Event times increase and lie in the
      past, so the service takes its in-order path (no replay).
    * baseline: one asyncpg connection doing the writes the service does for the same
      batch, on another range of codes, one transaction per batch: for commission an
      ``events`` row, B ``codes`` rows (``INSERT ... SELECT * FROM unnest(...)``, the
      columns and values of ``service/store/codes.py`` ``insert_new``) and B
      ``event_codes`` rows (COPY); for ship an ``events`` row, ``UPDATE codes ... FROM
      unnest(...)`` of B rows (as ``update``) and B ``event_codes`` rows (COPY). The
      time includes building the parameter arrays in Python. The baseline reads
      nothing: the service's row locks, registry look-ups, HTTP, JSON and validation
      are what the ratio prices.

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
import contextlib
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

from service.localrun import create_admin_key, free_port, start_service, stop_service

PRODUCT = "8123456"
MANUFACTURER = "M1"
DISTRIBUTOR = "D1"
LOT = "BENCH1"
EXPIRY = date(2030, 12, 31)
PRODUCED = date(2025, 1, 15)
PACK_UNITS = 24
WARM_UP = 100

# The columns of a ``codes`` row, as service/store/codes.py writes them.
CODE_COLUMNS = (
    "code, kind, product_id, commissioned, commissioned_by, commission_event, lot, expiry, "
    "produced, parent, state, custodian, destination, pack_units, units_left, recalled, last_at"
)
CODE_ARRAYS = (
    "$1::text[], $2::text[], $3::text[], $4::bool[], $5::text[], $6::uuid[], $7::text[], "
    "$8::date[], $9::date[], $10::text[], $11::text[], $12::text[], $13::text[], $14::int4[], "
    "$15::int4[], $16::bool[], $17::timestamptz[]"
)
INSERT_EVENT = """
    INSERT INTO events (event_id, type, at, org, to_org, lot, expiry, produced, code_count)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
    ON CONFLICT (event_id) DO NOTHING RETURNING event_id"""
INSERT_CODES = f"""
    WITH ins AS (
        INSERT INTO codes ({CODE_COLUMNS}) SELECT * FROM unnest({CODE_ARRAYS})
        ON CONFLICT (code) DO NOTHING RETURNING 1)
    SELECT count(*) FROM ins"""  # noqa: S608
UPDATE_CODES = f"""
    UPDATE codes SET {", ".join(f"{c} = n.{c}" for c in CODE_COLUMNS.split(", ")[1:])},
                     updated_at = now()
    FROM unnest({CODE_ARRAYS}) AS n({CODE_COLUMNS})
    WHERE codes.code = n.code"""  # noqa: S608


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
        codes = [f"{PRODUCT}{s:013d}" for s in range(self.next, self.next + n)]
        self.next += n
        return codes


# --- servers ------------------------------------------------------------------------


# --- the service side ---------------------------------------------------------------


def call(client: httpx.Client, key: str, path: str, body: dict[str, Any]) -> Any:
    resp = client.post(path, json=body, headers={"Authorization": f"Bearer {key}"})
    if resp.status_code not in (200, 201):
        raise RuntimeError(f"POST {path}: {resp.status_code} {resp.text}")
    return resp.json()


def register(client: httpx.Client, admin: str) -> dict[str, str]:
    """Orgs M1 and D1, the unit product, and an org key for each org (secret by org)."""
    for org, kind in ((MANUFACTURER, "manufacturer"), (DISTRIBUTOR, "distributor")):
        call(client, admin, "/v1/orgs", {"id": org, "name": f"{org} Ltd", "kind": kind, "region": "450100"})
    product = {
        "product_id": PRODUCT,
        "name": "Amoxicillin 0.25g x 24",
        "med_list_codg": "XJ01CAA040A001010104256",
        "pack_units": PACK_UNITS,
        "manufacturer": MANUFACTURER,
        "regions": ["45"],
    }
    call(client, admin, "/v1/products", product)
    return {
        org: call(client, admin, "/v1/keys", {"role": "org", "org": org})["secret"]
        for org in (MANUFACTURER, DISTRIBUTOR)
    }


def service_batch(client: httpx.Client, key: str, event: dict[str, Any]) -> float:
    """POST one event; return the seconds the request took. Every code must be taken."""
    content = json.dumps({"events": [event]}).encode()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    started = time.perf_counter()
    resp = client.post("/v1/events", content=content, headers=headers)
    seconds = time.perf_counter() - started
    if resp.status_code != 200 or resp.json()["accepted"] != len(event["codes"]):
        raise RuntimeError(f"{event['type']} of {len(event['codes'])} codes: {resp.status_code} {resp.text}")
    return seconds


def service_commission(client: httpx.Client, key: str, codes: list[str], at: datetime) -> float:
    event = {
        "event_id": str(uuid.uuid4()),
        "type": "commission",
        "at": at.isoformat(),
        "org": MANUFACTURER,
        "codes": codes,
        "lot": LOT,
        "expiry": EXPIRY.isoformat(),
        "produced": PRODUCED.isoformat(),
    }
    return service_batch(client, key, event)


def service_ship(client: httpx.Client, key: str, codes: list[str], at: datetime) -> float:
    event = {
        "event_id": str(uuid.uuid4()),
        "type": "ship",
        "at": at.isoformat(),
        "org": MANUFACTURER,
        "codes": codes,
        "to": DISTRIBUTOR,
    }
    return service_batch(client, key, event)


# --- the baseline: raw asyncpg ------------------------------------------------------


def code_columns(
    codes: list[str], commission_event: uuid.UUID, state: str, destination: str | None, at: datetime
) -> list[list[Any]]:
    """The codes rows the service writes for these packs, as column arrays (in
    service.store.codes.COLUMNS order), built inside the timed part like the service does."""
    n = len(codes)
    return [
        codes,
        ["cn20"] * n,
        [c[:7] for c in codes],
        [True] * n,
        [MANUFACTURER] * n,
        [commission_event] * n,
        [LOT] * n,
        [EXPIRY] * n,
        [PRODUCED] * n,
        [None] * n,
        [state] * n,
        [MANUFACTURER] * n,
        [destination] * n,
        [PACK_UNITS] * n,
        [PACK_UNITS] * n,
        [False] * n,
        [at] * n,
    ]


async def baseline_commission(
    conn: asyncpg.Connection, codes: list[str], at: datetime
) -> tuple[float, uuid.UUID]:
    """The writes of a commission of ``codes``, timed from building the values to commit.
    Returns the seconds and the event id (the ship that follows writes it again)."""
    started = time.perf_counter()
    event_id = uuid.uuid4()
    n = len(codes)
    columns = code_columns(codes, event_id, "commissioned", None, at)
    links = [(c, at, event_id, b"c") for c in codes]
    async with conn.transaction():
        await conn.fetch(
            INSERT_EVENT, event_id, "commission", at, MANUFACTURER, None, LOT, EXPIRY, PRODUCED, n
        )
        inserted = await conn.fetchval(INSERT_CODES, *columns)
        if inserted != n:
            raise RuntimeError(f"baseline commission inserted {inserted} of {n} codes")
        await conn.copy_records_to_table(
            "event_codes", records=links, columns=("code", "at", "event_id", "role")
        )
    return time.perf_counter() - started, event_id


async def baseline_ship(
    conn: asyncpg.Connection, codes: list[str], commission_event: uuid.UUID, at: datetime
) -> float:
    """The writes of a ship of ``codes`` (commissioned by ``commission_event``) to D1."""
    started = time.perf_counter()
    event_id = uuid.uuid4()
    n = len(codes)
    columns = code_columns(codes, commission_event, "in_transit", DISTRIBUTOR, at)
    links = [(c, at, event_id, b"c") for c in codes]
    async with conn.transaction():
        await conn.fetch(INSERT_EVENT, event_id, "ship", at, MANUFACTURER, DISTRIBUTOR, None, None, None, n)
        status = await conn.execute(UPDATE_CODES, *columns)
        if status != f"UPDATE {n}":
            raise RuntimeError(f"baseline ship: {status}, expected UPDATE {n}")
        await conn.copy_records_to_table(
            "event_codes", records=links, columns=("code", "at", "event_id", "role")
        )
    return time.perf_counter() - started


# --- the run ------------------------------------------------------------------------


def one_round(
    client: httpx.Client,
    key: str,
    conn: asyncpg.Connection,
    loop: asyncio.Runner,
    codes: tuple[list[str], list[str]],
    clock: Clock,
) -> list[tuple[str, str, float]]:
    """Commission then ship one batch through the service and another through the
    baseline, interleaved so both see the same machine noise. (operation, side, seconds)."""
    ours, theirs = codes
    results = [("commission", "service", service_commission(client, key, ours, clock.tick()))]
    seconds, commission_event = loop.run(baseline_commission(conn, theirs, clock.tick()))
    results.append(("commission", "baseline", seconds))
    results.append(("ship", "service", service_ship(client, key, ours, clock.tick())))
    seconds = loop.run(baseline_ship(conn, theirs, commission_event, clock.tick()))
    results.append(("ship", "baseline", seconds))
    return results


def run(args: argparse.Namespace, database_url: str, workdir: Path) -> tuple[Timings, str]:
    """Start the service and run both workloads; return the timings and the PostgreSQL version."""
    timings = Timings()
    clock = Clock()
    env = dict(os.environ, TRACE_DATABASE_URL=database_url, TRACE_DATA_DIR=str(workdir / "data"))
    with asyncio.Runner() as loop:
        conn: asyncpg.Connection = loop.run(asyncpg.connect(database_url))
        try:
            pg_version: str = loop.run(conn.fetchval("SHOW server_version"))
            last = loop.run(conn.fetchval("SELECT max(code) FROM codes WHERE code LIKE $1", f"{PRODUCT}%"))
            serials = Serials(int(last[7:]) + 1 if last else 1)
            port = free_port()
            server = start_service(env, port, workdir / "service.log", workers=args.workers)
            try:
                admin = create_admin_key(env)
                with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300) as client:
                    m1 = register(client, admin)[MANUFACTURER]
                    pair = (serials.take(WARM_UP), serials.take(WARM_UP))
                    one_round(client, m1, conn, loop, pair, clock)  # warm-up, not measured
                    for size in args.batches:
                        for r in range(args.rounds):
                            pair = (serials.take(size), serials.take(size))
                            for op, side, seconds in one_round(client, m1, conn, loop, pair, clock):
                                timings.add(side, op, size, seconds)
                            print(f"batch {size}: round {r + 1}/{args.rounds} done", file=sys.stderr)
            finally:
                stop_service(server)
        finally:
            loop.run(conn.close())
    return timings, pg_version


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


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

    database_url = args.database_url
    if database_url is None:
        from service.embedded import start_postgres

        # stopped and deleted at exit, after the service has stopped
        database_url = start_postgres(Path(tempfile.mkdtemp(prefix="tracecode-bench-pg-")), throwaway=True)
    with asyncio.Runner() as loop:
        loop.run(migrate(database_url))
    workdir = Path(tempfile.mkdtemp(prefix="tracecode-bench-"))
    try:
        timings, pg_version = run(args, database_url, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(report(args, timings, pg_version))
    return 0


async def migrate(url: str) -> None:
    from service.store.migrations import migrate as apply

    conn = await asyncpg.connect(url)
    try:
        await apply(conn)
    finally:
        await conn.close()


if __name__ == "__main__":
    sys.exit(main())
