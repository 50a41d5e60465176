"""Settlement throughput and latency: the service over HTTP against a raw-asyncpg baseline
running the same transactions on the same database, in the same run.

What is measured
    Every settlement is one claim of pharmacy P1 with ONE line of product 8123456 (24
    units a pack), typical of an outpatient sale: 80% whole-pack lines of 1 to 3 fresh
    packs, 20% split lines (拆零) of 1 to 10 units taken from an opened pack (a fresh
    pack is opened when the current one holds too few units). Every claim must come
    back ``accepted``; anything else (another status or decision, an exception) counts
    as an error. Both sides draw the same random sequence of claims, each from its own
    stock of codes.

    * service: ``POST /v1/settlements`` with an insurer key, through one
      ``httpx.AsyncClient`` (HTTP/1.1 keep-alive, at most ``--concurrency``
      connections) against ``tracecode serve --workers W``.
    * service, driven by wrk (max throughput only; when Debian's ``wrk`` is installed,
      unless ``--no-wrk``): the same claims, written out beforehand, POSTed by wrk, a
      native generator (C, 2 threads, ``--concurrency`` connections) whose own CPU per
      request is a fraction of httpx's, so on a shared machine it shows what the
      service itself can do. Accepted settlements are counted in the database after
      each slice; a request that was not a new accepted settlement is an error.
    * baseline: the same process calls the service's own use case,
      ``service.usecases.settlements.settle`` (through ``benchkit.baseline``), with the
      same claim on an asyncpg pool of ``--concurrency`` connections: the same work
      without HTTP, JSON and validation. What the service adds on top is what the ratio
      prices: HTTP, the API-key look-up, JSON decoding and validation.

    Two modes, each on both sides, each ``--seconds`` long in total, measured in
    ``--rounds`` alternating slices (service, baseline, baseline, service, ...) so both
    sides see the same background load on a shared machine:

    * max throughput: ``--concurrency`` closed loops settle as fast as they can;
      latency is request start to response parsed.
    * at ``--rate`` settlements/s: open loop, sends scheduled on a fixed clock whatever
      the earlier ones did; latency runs from the SCHEDULED send time, so queueing in
      the client's connection pool (or the baseline's asyncpg pool) counts and a
      stalled server cannot hide it (no coordinated omission).

    settlements/s counts accepted settlements over the measured time (an open-loop
    slice ends when its last answer arrives). p50/p99 are nearest-rank percentiles of
    all answers of all slices. After stocking, ``VACUUM ANALYZE`` and ``CHECKPOINT`` run
    once, and a short unmeasured warm-up runs on each side. CPU time of the load
    generator (this process), the service's processes, PostgreSQL's processes and of
    the rest of the machine is read from /proc around each slice.

How to run (from the repository root)
    .venv/bin/python scripts/bench_settle.py [--seconds 20] [--concurrency 8] [--rate 150]
                                             [--workers 2] [--rounds 4] [--codes N] [--seed 1]
                                             [--no-wrk] [--database-url URL]

Without ``--database-url`` a throwaway embedded PostgreSQL is started in a temporary
folder and deleted at exit. Stock (commission, ship to P1, receive by P1) goes through
``POST /v1/events`` in batches of 10,000 codes, ``--codes`` per side (default 5,000 per
second of measurement). The service runs as ``tracecode serve`` in a subprocess (its
embedded Valkey in a temporary ``TRACE_DATA_DIR``) and is stopped at the end, also on
errors. The load generator runs on the same machine as the service and PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import random
import shlex
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx

from benchkit import baseline, localrun, procs, wrk
from benchkit.api import AMOXICILLIN, Org, claim_body, event, post, register
from benchkit.codes import cn20
from benchkit.stats import cpu_model, percentile
from service.core.settlement import Claim, Line
from service.store.db import create_pool

PRODUCT = AMOXICILLIN.product_id
PACK_UNITS = AMOXICILLIN.pack_units
MANUFACTURER = Org(AMOXICILLIN.manufacturer, "manufacturer", "450100")
PHARMACY = Org("P1", "pharmacy", "450103")
LOT = "BENCH1"
EXPIRY = date(2030, 12, 31)
PRODUCED = date(2025, 1, 15)
STOCK_BATCH = 10_000  # codes per POST /v1/events (the service's limit)
CODES_PER_SECOND = 5_000  # default stock per side and second of measurement
WARM_UP_SECONDS = 2.0
WRK_MAX_RATE = 3_000  # claims written out per second of a wrk slice (more than it can settle)
WRK_THREADS = 2
PSN_SECRET = "bench-settle-secret"  # noqa: S105 (a throwaway database's HMAC key)

Settle = Callable[[Claim], Awaitable[str | None]]  # None when accepted, else why not


# --- the workload -------------------------------------------------------------------


class OutOfStock(Exception):
    """Every code of this side's stock is spoken for."""


class Sales:
    """Claims drawn from one side's stock of received packs. ``slot`` picks one of
    several opened packs for split lines, so concurrent senders do not queue on one row."""

    def __init__(self, side: str, stock: list[str], slots: int, seed: int) -> None:
        self._side = side
        self._tag = uuid.uuid4().hex[:8]  # setl_ids stay fresh on a reused database
        self._stock = stock
        self._next = 0
        self._opened: list[tuple[str, int] | None] = [None] * slots
        self._rng = random.Random(seed)  # noqa: S311 (a workload, not a secret)
        self.made = 0

    @property
    def prefix(self) -> str:
        """What every setl_id of these claims starts with."""
        return f"BENCH-{self._side}-{self._tag}-"

    def _fresh(self, n: int) -> list[str]:
        if self._next + n > len(self._stock):
            raise OutOfStock
        codes = self._stock[self._next : self._next + n]
        self._next += n
        return codes

    def next(self, slot: int) -> Claim:
        rng = self._rng
        if rng.random() < 0.2:
            quantity = rng.randint(1, 10)
            opened = self._opened[slot]
            if opened is None or opened[1] < quantity:
                opened = (self._fresh(1)[0], PACK_UNITS)
            code, left = opened
            self._opened[slot] = (code, left - quantity) if left > quantity else None
            codes, split = [code], True
        else:
            packs = rng.choices((1, 2, 3), weights=(70, 22, 8))[0]
            codes = self._fresh(packs)
            quantity, split = PACK_UNITS * packs, False
        self.made += 1
        return Claim(
            setl_id=f"{self.prefix}{self.made}",
            org=PHARMACY.id,
            psn_no=f"450103{rng.randrange(10**12):012d}",
            at=datetime.now(UTC),
            mode="settle",
            lines=(Line(1, AMOXICILLIN.med_list_codg, quantity, split, tuple(codes)),),
        )


# --- the two sides ------------------------------------------------------------------


def service_side(client: httpx.AsyncClient) -> Settle:
    async def settle(claim: Claim) -> str | None:
        resp = await client.post("/v1/settlements", content=json.dumps(claim_body(claim)).encode())
        if resp.status_code != 200:
            return f"HTTP {resp.status_code}: {resp.text[:300]}"
        decision = resp.json().get("decision")
        return None if decision == "accepted" else f"decision {decision}: {resp.text[:300]}"

    return settle


def baseline_side(pool: asyncpg.Pool, secret: bytes) -> Settle:
    """The service's settlement use case on the same claim, without HTTP, JSON or validation."""

    async def settle(claim: Claim) -> str | None:
        decision = await baseline.settle(pool, claim, secret)
        return None if decision == "accepted" else f"decision {decision}"

    return settle


# --- load ---------------------------------------------------------------------------


@dataclass
class Result:
    """One phase of one side (the sum of its rounds)."""

    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    elapsed: float = 0.0
    out_of_stock: bool = False
    cpu: dict[str, float | None] = field(default_factory=dict)  # CPU seconds by process group
    # driven by wrk: its counts and percentiles (one per slice) instead of latencies
    wrk_requests: int = 0
    wrk_accepted: int = 0
    wrk_cpu: float = 0.0
    wrk_p50: list[float] = field(default_factory=list)
    wrk_p99: list[float] = field(default_factory=list)

    def add(self, other: Result) -> None:
        self.latencies += other.latencies
        self.errors += other.errors
        self.wrk_requests += other.wrk_requests
        self.wrk_accepted += other.wrk_accepted
        self.wrk_cpu += other.wrk_cpu
        self.wrk_p50 += other.wrk_p50
        self.wrk_p99 += other.wrk_p99
        self.elapsed += other.elapsed
        self.out_of_stock |= other.out_of_stock
        for name, value in other.cpu.items():
            old = self.cpu.get(name, 0.0)
            self.cpu[name] = None if value is None or old is None else old + value

    @property
    def accepted(self) -> int:
        if self.wrk_p50:
            return self.wrk_accepted
        return len(self.latencies) - len(self.errors)

    @property
    def rate(self) -> float:
        return self.accepted / self.elapsed if self.elapsed else 0.0

    def percentile_ms(self, q: float) -> float:
        """Nearest-rank percentile of the latencies, in milliseconds (NaN when none);
        driven by wrk, the median of its slices' p50 or the largest of their p99."""
        if self.wrk_p50:
            return statistics.median(self.wrk_p50) if q == 0.5 else max(self.wrk_p99)
        value = percentile(self.latencies, q)
        return math.nan if value is None else 1000 * value


async def _one(settle: Settle, claim: Claim, since: float, result: Result) -> None:
    try:
        error = await settle(claim)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    result.latencies.append(time.perf_counter() - since)
    if error is not None:
        result.errors.append(error)


async def closed_loop(settle: Settle, sales: Sales, concurrency: int, seconds: float) -> Result:
    """``concurrency`` loops, each sending its next claim when the last one is answered."""
    result = Result()
    start = time.perf_counter()
    end = start + seconds

    async def loop(slot: int) -> None:
        while time.perf_counter() < end:
            try:
                claim = sales.next(slot)
            except OutOfStock:
                result.out_of_stock = True
                return
            await _one(settle, claim, time.perf_counter(), result)

    await asyncio.gather(*(loop(slot) for slot in range(concurrency)))
    result.elapsed = time.perf_counter() - start
    return result


async def open_loop(settle: Settle, sales: Sales, rate: float, seconds: float, slots: int) -> Result:
    """Claim i is due at start + i / rate; its latency counts from that moment."""
    result = Result()
    start = time.perf_counter() + 0.01
    tasks: list[asyncio.Task[None]] = []
    for i in range(int(rate * seconds)):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            claim = sales.next(i % slots)
        except OutOfStock:
            result.out_of_stock = True
            break
        tasks.append(asyncio.create_task(_one(settle, claim, due, result)))
    await asyncio.gather(*tasks)
    result.elapsed = time.perf_counter() - start
    return result


async def wrk_slice(
    sales: Sales, seconds: float, connections: int, base_url: str, key: str, database_url: str, scratch: Path
) -> Result:
    """The next claims POSTed by wrk for ``seconds``; accepted settlements are counted in
    the database. Latencies are wrk's percentiles (``Result.wrk_p50``/``wrk_p99``)."""
    result = Result()
    bodies = scratch / "claims.jsonl"
    written = 0
    with bodies.open("w") as out:
        for k in range(int(WRK_MAX_RATE * seconds)):
            try:
                claim = sales.next(k % connections)
            except OutOfStock:
                result.out_of_stock = True
                break
            out.write(json.dumps(claim_body(claim)) + "\n")
            written += 1
    lua = wrk.post_script(scratch / "settle.lua", "/v1/settlements", key, bodies, threads=WRK_THREADS)
    count = "SELECT count(*) FROM settlements WHERE setl_id LIKE $1 AND decision = 'accepted'"
    conn = await asyncpg.connect(database_url)
    try:
        before = await conn.fetchval(count, f"{sales.prefix}%")
        ran = await asyncio.to_thread(
            wrk.run, f"{base_url}/", seconds=max(1, round(seconds)), connections=connections,
            threads=WRK_THREADS, lua=lua,
        )  # fmt: skip
        accepted = await conn.fetchval(count, f"{sales.prefix}%") - before
    finally:
        await conn.close()
    result.elapsed = ran.seconds
    # wrk counts the answers it read in its time; the requests still in flight when it
    # stops (at most one per connection) may be settled too: not counted
    accepted = min(accepted, ran.requests)
    result.wrk_requests, result.wrk_accepted, result.wrk_cpu = ran.requests, accepted, ran.cpu_seconds
    result.wrk_p50.append(ran.p50_ms)
    result.wrk_p99.append(ran.p99_ms)
    if ran.requests > written:
        result.out_of_stock = True  # wrk sent some claims twice
    missing = ran.requests - accepted
    if missing or ran.errors:
        result.errors.append(f"{missing} of {ran.requests} requests not a new accepted settlement")
    return result


# --- CPU accounting from /proc -----------------------------------------------------


@dataclass(frozen=True)
class CpuProbe:
    service_pid: int
    postmaster_pid: int | None  # None when PostgreSQL is not a local process

    def sample(self) -> dict[str, float | None]:
        return {
            "bench": time.process_time(),
            "service": procs.tree_cpu(self.service_pid),
            "postgres": procs.tree_cpu(self.postmaster_pid),
            "machine": procs.machine_cpu(),
        }


async def measured(probe: CpuProbe, phase: Awaitable[Result]) -> Result:
    before = probe.sample()
    result = await phase
    result.cpu = procs.used(before, probe.sample())
    result.cpu.pop("machine")  # the parts and the others add up to it
    return result


async def measured_wrk(probe: CpuProbe, phase: Awaitable[Result]) -> Result:
    """``measured``, with wrk's own CPU (a child of this process) as the load
    generator's, and not among the other processes'."""
    result = await measured(probe, phase)
    result.cpu["bench"] = result.wrk_cpu
    others = result.cpu.get("others")
    if others is not None:
        result.cpu["others"] = max(0.0, others - result.wrk_cpu)
    return result


# --- set-up ------------------------------------------------------------------------


async def stock(client: httpx.AsyncClient, keys: dict[str, str], codes: list[str], first: datetime) -> None:
    """Commission, ship to P1 and receive by P1, 10,000 codes a request, in event-time order."""
    at = first
    for i in range(0, len(codes), STOCK_BATCH):
        batch = codes[i : i + STOCK_BATCH]
        mfr, pharmacy = MANUFACTURER.id, PHARMACY.id
        steps = [
            (mfr, "commission", {"lot": LOT, "expiry": EXPIRY, "produced": PRODUCED}),
            (mfr, "ship", {"to": pharmacy}),
            (pharmacy, "receive", {}),
        ]
        for org, type_, fields in steps:
            at += timedelta(seconds=1)
            body = {"events": [event(type_, org, batch, at, **fields)]}
            answer = await post(client, keys[org], "/v1/events", body)
            if answer["accepted"] != len(batch):
                raise RuntimeError(f"{type_}: {answer['accepted']} of {len(batch)} accepted")


async def settle_down(url: str) -> None:
    """After stocking: fresh statistics and a clean checkpoint, so that autovacuum and a
    checkpoint are less likely to land inside one side's measurement."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("VACUUM ANALYZE codes, events, event_codes")
        with contextlib.suppress(asyncpg.PostgresError):  # needs superuser or pg_checkpoint
            await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


# --- the run ------------------------------------------------------------------------


@dataclass
class Run:
    pg_version: str = ""
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    codes_per_side: int = 0
    connections: dict[str, list[int]] = field(default_factory=dict)  # by moment, per worker
    results: dict[tuple[str, str], Result] = field(default_factory=dict)  # (mode, side)


async def bench(args: argparse.Namespace, database_url: str, port: int, server_pid: int, admin: str) -> Run:
    run = Run(codes_per_side=args.codes or CODES_PER_SECOND * math.ceil(args.seconds))
    conn = await asyncpg.connect(database_url)
    try:
        run.pg_version = await conn.fetchval("SHOW server_version")
        postmaster = procs.local_postmaster(await conn.fetchval("SELECT pg_backend_pid()"))
        last = await conn.fetchval("SELECT max(code) FROM codes WHERE code LIKE $1", f"{PRODUCT}%")
    finally:
        await conn.close()
    probe = CpuProbe(server_pid, postmaster)
    first = int(last[7:]) + 1 if last else 1
    n = run.codes_per_side
    ours = [cn20(PRODUCT, s) for s in range(first, first + n)]
    theirs = [cn20(PRODUCT, s) for s in range(first + n, first + 2 * n)]
    driven = [cn20(PRODUCT, s) for s in range(first + 2 * n, first + 3 * n)] if args.wrk else []

    base_url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=base_url, timeout=600) as setup:
        keys = await register(setup, admin, [MANUFACTURER, PHARMACY], [AMOXICILLIN], insurer=True)
        started = time.perf_counter()
        since = datetime.now(UTC) - timedelta(days=1)
        await stock(setup, keys, ours + theirs + driven, since)
        took = time.perf_counter() - started
        print(f"stocked {3 if driven else 2} x {n:,} codes in {took:.0f} s", file=sys.stderr)
    await settle_down(database_url)

    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    headers = {"Authorization": f"Bearer {keys['insurer']}", "Content-Type": "application/json"}
    slots = args.concurrency
    async with httpx.AsyncClient(base_url=base_url, limits=limits, headers=headers, timeout=60) as client:
        pool = await create_pool(database_url, min_size=args.concurrency, max_size=args.concurrency)
        try:
            sides: dict[str, tuple[Settle, Sales]] = {
                "service": (service_side(client), Sales("S", ours, slots, args.seed)),
                "baseline": (baseline_side(pool, PSN_SECRET.encode()), Sales("B", theirs, slots, args.seed)),
            }
            for settle, sales in sides.values():  # warm-up: connections, prepared statements
                await closed_loop(settle, sales, args.concurrency, WARM_UP_SECONDS)
            run.connections["after the warm-up"] = procs.connections_per_worker(server_pid, port)
            run.load_before = os.getloadavg()
            seconds = args.seconds / args.rounds
            driven_sales = Sales("W", driven, slots, args.seed)
            scratch = Path(tempfile.mkdtemp(prefix="tracecode-bench-wrk-"))
            try:
                for mode in ("max", "rate"):
                    names = [*sides, "wrk"] if mode == "max" and driven else list(sides)
                    for r in range(args.rounds):
                        order = names if r % 2 == 0 else list(reversed(names))  # ABBA...
                        for side in order:
                            print(f"{mode}, round {r + 1}/{args.rounds}: {side}", file=sys.stderr)
                            if side == "wrk":
                                result = await measured_wrk(
                                    probe,
                                    wrk_slice(driven_sales, seconds, args.concurrency, base_url,
                                              keys["insurer"], database_url, scratch),
                                )  # fmt: skip
                            else:
                                settle, sales = sides[side]
                                phase = (
                                    closed_loop(settle, sales, args.concurrency, seconds)
                                    if mode == "max"
                                    else open_loop(settle, sales, args.rate, seconds, slots)
                                )
                                result = await measured(probe, phase)
                            run.results.setdefault((mode, side), Result()).add(result)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            run.connections["at the end"] = procs.connections_per_worker(server_pid, port)
        finally:
            await pool.close()
    return run


def report(args: argparse.Namespace, run: Run, embedded: bool) -> str:
    ncpu = len(os.sched_getaffinity(0))
    modes = {"max": f"max throughput ({args.concurrency} concurrent)", "rate": f"at {args.rate:g}/s"}
    where = "embedded, throwaway" if embedded else "--database-url"
    lines = [
        f"- machine: {ncpu} CPU(s) (nproc), {cpu_model()}; load average before the measured phases: "
        + " ".join(f"{x:.2f}" for x in run.load_before),
        f"- Python {platform.python_version()}, PostgreSQL {run.pg_version} ({where}), "
        f"service workers: {args.workers}, concurrency: {args.concurrency}, {args.seconds:g} s per phase",
        "- the load generators (httpx client, wrk, and the baseline itself) run on the same machine",
        "- client connections held by each service worker: "
        + "; ".join(f"{when} {', '.join(map(str, n))}" for when, n in run.connections.items()),
        "- claims: one line each; 80% whole-pack (1-3 packs of 24), 20% split (1-10 units)",
        f"- command: `{shlex.join(sys.orig_argv)}`",
        "",
        "| mode | service settlements/s | baseline settlements/s | service / baseline "
        "| service p50 / p99 ms | baseline p50 / p99 ms | errors (service / baseline) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    rows = [(label, mode, "service") for mode, label in modes.items()]
    if ("max", "wrk") in run.results:
        rows.insert(1, (f"max throughput, driven by wrk ({args.concurrency} connections)", "max", "wrk"))
    for label, mode, side in rows:
        ours, theirs = run.results[(mode, side)], run.results[(mode, "baseline")]
        ratio = 100 * ours.rate / theirs.rate if theirs.rate else math.nan
        errors = ours.wrk_requests - ours.wrk_accepted if side == "wrk" else len(ours.errors)
        lines.append(
            f"| {label} | {ours.rate:,.0f} | {theirs.rate:,.0f} | {ratio:.0f}% "
            f"| {ours.percentile_ms(0.5):.1f} / {ours.percentile_ms(0.99):.1f} "
            f"| {theirs.percentile_ms(0.5):.1f} / {theirs.percentile_ms(0.99):.1f} "
            f"| {errors} / {len(theirs.errors)} |"
        )
    theirs = run.results[("max", "baseline")]
    rated = run.results[("rate", "service")]
    aims = []
    for side, how in (("service", "httpx"), ("wrk", "wrk")):
        if ("max", side) in run.results:
            met = theirs.rate > 0 and run.results[("max", side)].rate >= 0.8 * theirs.rate
            aims.append(f"driven by {how}: {'met' if met else 'NOT met'}")
    p99_ok = rated.percentile_ms(0.99) < 25
    lines += [
        "",
        f"Aim: service >= 80% of the baseline at max throughput, {', '.join(aims)}; "
        f"service p99 < 25 ms at {args.rate:g}/s: {'met' if p99_ok else 'NOT met'}.",
        "",
        "CPU time per accepted settlement (ms) by process group; the CPU that processes "
        "outside this benchmark used meanwhile (in CPUs: seconds / phase seconds); and how "
        f"busy the machine was (all busy CPU seconds / (phase seconds x {ncpu})):",
        "",
        "| mode | side | load generator (this process; wrk) | service processes | PostgreSQL "
        "| other processes | machine busy |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for (mode, side), result in run.results.items():
        per = [
            "n/a" if (v := result.cpu.get(name)) is None else f"{1000 * v / max(result.accepted, 1):.2f}"
            for name in ("bench", "service", "postgres")
        ]
        others = result.cpu.get("others")
        total = sum(v for v in result.cpu.values() if v is not None)
        busy = 100 * total / (result.elapsed * ncpu) if result.elapsed else math.nan
        other = "n/a" if others is None else f"{others / result.elapsed:.2f}"
        lines.append(f"| {modes[mode]} | {side} | {' | '.join(per)} | {other} | {busy:.0f}% |")
    for (mode, side), result in run.results.items():
        if result.out_of_stock:
            lines.append(f"\nWARNING: {side} ran out of stock in {modes[mode]}; raise --codes.")
        for error in result.errors[:3]:
            lines.append(f"\n{side}, {modes[mode]}: {error}")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=20, help="length of each phase (default 20)")
    p.add_argument("--concurrency", type=int, default=8, help="connections / loops (default 8)")
    p.add_argument("--rate", type=float, default=150, help="target settlements/s (default 150)")
    p.add_argument("--workers", type=int, default=2, help="service worker processes (default 2)")
    p.add_argument("--codes", type=int, default=0, help=f"stock per side (default {CODES_PER_SECOND:,}/s)")
    p.add_argument(
        "--rounds", type=int, default=4, help="alternating service/baseline slices per mode (default 4)"
    )
    p.add_argument("--seed", type=int, default=1, help="random seed of the claims (default 1)")
    p.add_argument("--no-wrk", dest="wrk", action="store_false", help="skip the max throughput driven by wrk")
    p.add_argument("--database-url", default=None, help="use this database instead of a throwaway one")
    args = p.parse_args()
    args.wrk = args.wrk and wrk.available()

    database_url = args.database_url or localrun.throwaway_postgres()
    asyncio.run(localrun.migrate(database_url))
    workdir = Path(tempfile.mkdtemp(prefix="tracecode-bench-"))
    env = dict(
        os.environ,
        TRACE_DATABASE_URL=database_url,
        TRACE_DATA_DIR=str(workdir / "data"),
        TRACE_PSN_SECRET=PSN_SECRET,
    )
    try:
        port = localrun.free_port()
        server = localrun.start_service(env, port, workdir / "service.log", workers=args.workers)
        try:
            admin = localrun.create_admin_key(env)
            run = asyncio.run(bench(args, database_url, port, server.pid, admin))
        finally:
            localrun.stop_service(server)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(report(args, run, embedded=args.database_url is None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
