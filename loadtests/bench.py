"""The load bench: seed, serve, run the Locust shape, measure ceilings, print one table.

``loadtests/bench`` runs this file with the repository's virtualenv. Steps:

1. a throwaway embedded PostgreSQL (deleted at exit), or ``--database-url`` (emptied
   first with ``--truncate``); ``loadtests/seed.py`` fills it with ``--codes`` packs;
2. ``tracecode serve --workers W`` on a free port (its embedded Valkey in a temporary
   data folder);
3. Locust, headless, with ``loadtests/locustfile.py``'s shape at ``--scale`` of the
   province peak for ``--duration`` seconds; CSV, HTML, the log and a JSON summary go to
   ``loadtests/reports/<time>/``;
4. ceilings, closed loop, ``--ceiling-concurrency`` requests in flight, for
   ``--ceiling-seconds`` each: the service's maximum for ``verify`` and ``settle``
   (a minimal keep-alive HTTP client, so the client costs little), and the raw-asyncpg
   ceiling for the same work on the same database: verify = one primary-key read of
   ``codes``; settle = the service's own settlement use case
   (``service.usecases.settlements.settle``, through ``benchkit.baseline``) on the same
   kind of claim, without HTTP, auth, JSON or validation;
5. one table: per operation, the target and the sustained rate while holding the peak and
   in the 2x spike, p50/p95/p99 over the run, errors and the p99 objective; then the
   ceilings and their ratio.

Everything runs on this machine, load generator included: the caveat is printed with
the figures. The exit code is Locust's (1 when an objective was missed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from benchkit import baseline, procs, wrk
from benchkit.api import claim_body
from benchkit.localrun import free_port, start_service, stop_service, throwaway_postgres
from benchkit.stats import percentile
from service.config import Settings
from service.core.settlement import Claim, Line

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import seed as seeder  # noqa: E402
import volumes  # noqa: E402

CAVEAT = (
    "CAVEAT: {cpus} CPU(s) shared by PostgreSQL, {workers} service worker(s), the load generator "
    "and this bench. These are figures of this machine, not of a dedicated server: the "
    "load generator's own CPU is taken from the service, and latencies include it."
)


# --- processes ------------------------------------------------------------------------


def cpu_sample(server_pid: int, postmaster: int | None) -> dict[str, float | None]:
    """CPU seconds used so far: the load generator (Locust's processes, children of this
    one, once they have ended), the service's process tree, PostgreSQL's, this bench, and
    the whole machine."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "load generator": children.ru_utime + children.ru_stime,
        "service": procs.tree_cpu(server_pid),
        "PostgreSQL": procs.tree_cpu(postmaster),
        "bench": time.process_time(),
        "machine": procs.machine_cpu(),
    }


class WaitSampler(threading.Thread):
    """What the database sessions are doing while the load runs, from pg_stat_activity
    every 0.1 s: running, waiting (for a lock, I/O, the WAL, ...), or idle inside a
    transaction, which is PostgreSQL waiting for the service's next statement while the
    transaction holds its locks."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.stop = threading.Event()
        self.samples = 0
        self.counts: Counter[str] = Counter()

    def run(self) -> None:
        asyncio.run(self._sample())

    async def _sample(self) -> None:
        conn = await asyncpg.connect(self.url)
        try:
            while not self.stop.is_set():
                rows = await conn.fetch(
                    """SELECT CASE WHEN state = 'idle in transaction' THEN 'idle in transaction'
                                   WHEN wait_event IS NULL THEN 'running'
                                   ELSE wait_event_type || ':' || wait_event END AS doing
                       FROM pg_stat_activity
                       WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
                         AND datname = current_database() AND state IN ('active', 'idle in transaction')"""
                )
                self.samples += 1
                self.counts.update(r["doing"] for r in rows)
                await asyncio.sleep(0.1)
        finally:
            await conn.close()

    def summary(self) -> str:
        seen = sum(self.counts.values())
        if not self.samples or not seen:
            return "database sessions: none busy in any sample"
        top = ", ".join(f"{name} {100 * n / seen:.0f}%" for name, n in self.counts.most_common(8))
        return (
            f"database sessions busy (pg_stat_activity every 0.1 s, {self.samples:,} samples): "
            f"{seen / self.samples:.1f} on average; {top}"
        )


async def postmaster_of(url: str) -> int | None:
    conn = await asyncpg.connect(url)
    try:
        return procs.local_postmaster(await conn.fetchval("SELECT pg_backend_pid()"))
    finally:
        await conn.close()


async def database_memory(url: str) -> dict[str, Any]:
    """What the database's memory held against its size: the database, its largest
    relations, PostgreSQL's shared buffers, and the block reads so far (from shared
    buffers, or else from the kernel's page cache or the disk)."""
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            """SELECT pg_database_size(current_database()) AS size,
                      current_setting('shared_buffers') AS shared_buffers,
                      blks_hit, blks_read
               FROM pg_stat_database WHERE datname = current_database()"""
        )
        largest = await conn.fetch(
            """SELECT c.relname, pg_total_relation_size(c.oid) AS size
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE c.relkind = 'r' AND n.nspname = 'public'
               ORDER BY 2 DESC LIMIT 4"""
        )
    finally:
        await conn.close()
    return {**dict(row), "largest": [(r["relname"], r["size"]) for r in largest]}


def memory_line(before: dict[str, Any], after: dict[str, Any]) -> str:
    hit = after["blks_hit"] - before["blks_hit"]
    read = after["blks_read"] - before["blks_read"]
    with open("/proc/meminfo") as f:
        ram = int(next(line for line in f if line.startswith("MemTotal:")).split()[1]) * 1024
    largest = ", ".join(f"{name} {size / 2**30:.1f}" for name, size in after["largest"])
    return (
        f"database memory: {after['size'] / 2**30:.1f} GB on disk (largest, GB: {largest}); "
        f"shared_buffers {after['shared_buffers']}, the machine's RAM {ram / 2**30:.0f} GB; "
        f"block reads over the load run {100 * hit / max(1, hit + read):.1f}% from shared buffers "
        f"({read:,} of {hit + read:,} from the page cache or the disk)"
    )


# --- ceilings -------------------------------------------------------------------------


class Http:
    """A minimal HTTP/1.1 keep-alive client over one connection (the service answers
    with Content-Length), so the client's own cost stays small next to the server's."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, key: str, body: bytes = b"") -> tuple[int, bytes]:
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        for _ in range(2):
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
            assert self.reader is not None
            self.writer.write(head + body)
            status_line = await self.reader.readline()
            if status_line:
                break
            await self.close()  # the server closed an idle keep-alive connection: reconnect
        else:
            raise ConnectionError("the server closed the connection")
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        data = await self.reader.readexactly(length) if length else b""
        return int(status_line.split()[1]), data

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
        self.reader = self.writer = None


class OutOfWork(Exception):
    """No packs left to settle: the closed loop ends early."""


def take(items: list[Any]) -> Any:
    if not items:
        raise OutOfWork
    return items.pop()


async def closed_loop(
    workers: list[Callable[[], Awaitable[bool]]], seconds: float
) -> tuple[int, int, list[float], float]:
    """Run each worker back to back for ``seconds`` (or until one says it is out of
    work). Returns (successes, errors, latencies in ms, elapsed seconds)."""
    ok = err = 0
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    out_of_work = False

    async def loop(work: Callable[[], Awaitable[bool]]) -> None:
        nonlocal ok, err, out_of_work
        while time.perf_counter() < deadline and not out_of_work:
            started = time.perf_counter()
            try:
                result = await work()
            except OutOfWork:
                out_of_work = True
                return
            except Exception:
                err += 1
                continue
            latencies.append(1000 * (time.perf_counter() - started))
            if result:
                ok += 1
            else:
                err += 1

    started = time.perf_counter()
    await asyncio.gather(*(loop(w) for w in workers))
    return ok, err, latencies, time.perf_counter() - started


def pct(values: list[float], p: float) -> float:
    return percentile(values, p) or 0.0


async def ceilings(
    url: str, port: int, manifest: dict[str, Any], seconds: float, conc: int
) -> dict[str, Any]:
    """Service maximum and raw-asyncpg ceiling for verify and settle."""
    from service.store import codes as code_store
    from service.store.db import create_pool

    pool = await create_pool(url, min_size=conc, max_size=conc)
    try:
        async with pool.acquire() as conn:
            rows = await conn.fetch(
                """SELECT c.code, c.custodian, c.product_id, p.med_list_codg, p.pack_units
                   FROM codes c JOIN products p USING (product_id) JOIN orgs o ON o.id = c.custodian
                   WHERE c.state = 'received' AND c.units_left = c.pack_units AND NOT c.recalled
                     AND o.kind IN ('pharmacy', 'hospital')
                   ORDER BY random() LIMIT 120000"""
            )
        by_org: dict[str, list[asyncpg.Record]] = {}
        for r in rows:
            by_org.setdefault(r["custodian"], []).append(r)
        claims: list[list[asyncpg.Record]] = []
        for recs in by_org.values():
            claims.extend(recs[i : i + 3] for i in range(0, len(recs) - 2, 3))
        random.shuffle(claims)
        half = len(claims) // 2
        service_claims, raw_claims = claims[:half], claims[half:]
        verify_codes = [(r["code"], r["custodian"]) for r in rows[:20000]]
        keys = {org: o["key"] for org, o in manifest["orgs"].items()}
        insurer = manifest["keys"]["insurer"][0]

        def claim_of(packs: list[asyncpg.Record], prefix: str) -> Claim:
            """A claim for these whole packs of one organisation, one line per product."""
            by_product: dict[str, list[asyncpg.Record]] = {}
            for r in packs:
                by_product.setdefault(r["product_id"], []).append(r)
            lines = tuple(
                Line(
                    line_no=i + 1,
                    med_list_codg=rs[0]["med_list_codg"],
                    quantity=sum(r["pack_units"] for r in rs),
                    split=False,
                    codes=tuple(r["code"] for r in rs),
                )
                for i, rs in enumerate(by_product.values())
            )
            return Claim(
                setl_id=f"{prefix}{uuid.uuid4().hex[:20]}",
                org=packs[0]["custodian"],
                psn_no="440100199001011234",
                at=datetime.now(UTC),
                mode="settle",
                lines=lines,
            )

        out: dict[str, Any] = {}

        # verify: service
        clients = [Http(port) for _ in range(conc)]

        def service_verify(client: Http) -> Callable[[], Awaitable[bool]]:
            async def work() -> bool:
                code, org = random.choice(verify_codes)
                status, _ = await client.request("GET", f"/v1/codes/{code}/verify", keys[org])
                return status == 200

            return work

        out["verify", "service"] = await closed_loop([service_verify(c) for c in clients], seconds)

        # verify: raw asyncpg primary-key read
        async def raw_verify() -> bool:
            code, _ = random.choice(verify_codes)
            async with pool.acquire() as conn:
                return await code_store.read_one(conn, code) is not None

        out["verify", "raw asyncpg"] = await closed_loop([raw_verify] * conc, seconds)

        # verify: the service again, driven by wrk (native code: the generator's own CPU,
        # taken from the service on a shared machine, is a fraction of a Python client's)
        if wrk.available():
            with tempfile.TemporaryDirectory() as scratch:
                requests = [(f"/v1/codes/{code}/verify", keys[org]) for code, org in verify_codes[:5000]]
                lua = wrk.script(Path(scratch) / "verify.lua", requests)
                url = f"http://127.0.0.1:{port}/"
                out["verify", "wrk"] = await asyncio.to_thread(
                    wrk.run, url, seconds=max(1, round(seconds)), connections=conc, lua=lua
                )

        # settle: service
        def service_settle(client: Http) -> Callable[[], Awaitable[bool]]:
            async def work() -> bool:
                body = claim_body(claim_of(take(service_claims), "BS"))
                status, data = await client.request(
                    "POST", "/v1/settlements", insurer, json.dumps(body).encode()
                )
                return status == 200 and json.loads(data).get("decision") == "accepted"

            return work

        out["settle", "service"] = await closed_loop([service_settle(c) for c in clients], seconds)
        for c in clients:
            await c.close()

        # settle: the service's use case, no HTTP (the secret only shapes the stored hashes)
        secret = Settings.from_env().psn_secret

        async def raw_settle() -> bool:
            claim = claim_of(take(raw_claims), "BR")
            return await baseline.settle(pool, claim, secret) == "accepted"

        out["settle", "raw asyncpg"] = await closed_loop([raw_settle] * conc, seconds)
    finally:
        await pool.close()
    return {f"{op}|{side}": v for (op, side), v in out.items()}


# --- the report -----------------------------------------------------------------------


def fmt(x: float | None, digits: int = 1) -> str:
    if x is None:
        return "-"
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def report(
    summary: dict[str, Any],
    ceiling: dict[str, Any] | None,
    args: argparse.Namespace,
    cpus: int,
    cpu: dict[str, float | None] | None = None,
    waits: str | None = None,
) -> str:
    ops = summary["operations"]
    order = list(volumes.by_operation(volumes.PROVINCE_PEAK_RPS))
    names = order + sorted(n for n in ops if n not in order)
    targets = volumes.by_operation({k: v * summary["scale"] for k, v in volumes.PROVINCE_PEAK_RPS.items()})
    empty = {"requests": 0, "failures": 0, "p50": None, "p95": None, "p99": None, "windows": {}}
    peak = sum(volumes.PROVINCE_PEAK_RPS.values())
    lines = [
        f"Load: {summary['shape']} shape at {summary['scale']:g} x the province peak "
        f"({summary['scale'] * peak:,.0f} req/s held, {2 * summary['scale'] * peak:,.0f} in the spike), "
        f"{summary['duration']:.0f} s; {args.workers} service worker(s); {args.codes:,} codes seeded; "
        f"users {sum(summary['users'].values())}",
        CAVEAT.format(cpus=cpus, workers=args.workers),
        "",
        "| operation | target/s | hold/s | spike target/s | spike/s | requests | errors | p50 ms | p95 ms "
        "| p99 ms | spike p99 ms | p99 objective |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name in names:
        op = ops.get(name) or {**empty, "target_rate": targets.get(name)}
        win = op["windows"]
        hold, spike = win.get("hold", {}), win.get("spike", {})
        target = op["target_rate"]
        objective = summary["slo_ms"].get(name)
        if objective is None:
            verdict = "-"
        elif not op["requests"]:
            verdict = f"{objective:g} (no requests)"
        else:
            verdict = f"{objective:g} {'ok' if op['p99'] <= objective else 'MISSED'}"
        lines.append(
            f"| {name} | {fmt(target, 2)} | {fmt(hold.get('rate'), 2)} | "
            f"{fmt(2 * target if target and spike else None, 2)} | {fmt(spike.get('rate'), 2)} | "
            f"{op['requests']:,} | {op['failures']:,} | {fmt(op['p50'])} | {fmt(op['p95'])} | "
            f"{fmt(op['p99'])} | {fmt(spike.get('p99'))} | {verdict} |"
        )
    total = summary["total"]
    lines.append(
        f"| **all** | {fmt(summary['scale'] * peak, 1)} | "
        f"{fmt(sum((o['windows'].get('hold', {}).get('rate') or 0) for o in ops.values()), 1)} | "
        f"{fmt(2 * summary['scale'] * peak, 1)} | "
        f"{fmt(sum((o['windows'].get('spike', {}).get('rate') or 0) for o in ops.values()), 1)} | "
        f"{total['requests']:,} | {total['failures']:,} | | | | | |"
    )
    skipped = {k: v for k, v in summary["outcomes"].items() if k.startswith("skipped.")}
    lines += [
        "",
        "hold = 25-55% of the run at 1x, spike = 62-75% at 2x (rates from request counts; p99 of the "
        "spike window from its own requests); p50/p95/p99 over the whole run.",
        "outcomes: "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(summary["outcomes"].items()) if k not in skipped),
    ]
    if skipped:
        lines.append(
            "skipped (pool empty, another operation went instead): "
            + ", ".join(f"{k[8:]} {v:,}" for k, v in sorted(skipped.items()))
        )
    if summary["errors"]:
        lines.append("errors:")
        lines += [f"  {e['occurrences']:,} x {e['name']}: {e['error'][:160]}" for e in summary["errors"][:10]]
    lines.append(
        "objectives: " + ("all met" if summary["passed"] else "MISSED: " + "; ".join(summary["breaches"]))
    )
    if cpu and total["requests"]:
        parts = ("load generator", "service", "PostgreSQL", "bench", "others")
        per_request = [
            f"{name} {1000 * v / total['requests']:.2f} ms"
            for name in parts
            if (v := cpu.get(name)) is not None
        ]
        busy = cpu.get("machine")
        lines.append(
            "CPU per request over the load run: "
            + ", ".join(per_request)
            + (f"; the machine was {100 * busy / (cpu['seconds'] or 1) / cpus:.0f}% busy" if busy else "")
        )
    if waits:
        lines.append(waits)
    if ceiling:
        lines += [
            "",
            f"Ceilings: closed loop, {args.ceiling_concurrency} in flight, {args.ceiling_seconds:g} s each, "
            "after the load run (the service idle otherwise).",
            CAVEAT.format(cpus=cpus, workers=args.workers),
            "",
            "| operation | service max/s | service p50 / p99 ms | raw asyncpg/s | raw p50 / p99 ms "
            "| service / raw |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for op in ("verify", "settle"):
            s_ok, s_err, s_lat, s_t = ceiling[f"{op}|service"]
            r_ok, r_err, r_lat, r_t = ceiling[f"{op}|raw asyncpg"]
            s_rate, r_rate = s_ok / s_t, r_ok / r_t
            lines.append(
                f"| {op} | {s_rate:,.0f}{f' ({s_err} errors)' if s_err else ''} | "
                f"{pct(s_lat, 0.5):.1f} / {pct(s_lat, 0.99):.1f} | "
                f"{r_rate:,.0f}{f' ({r_err} errors)' if r_err else ''} | "
                f"{pct(r_lat, 0.5):.1f} / {pct(r_lat, 0.99):.1f} | {100 * s_rate / r_rate:.0f}% |"
            )
        driven = ceiling.get("verify|wrk")
        if driven is not None:
            lines.append(
                f"| verify, driven by wrk | {driven.rate:,.0f}"
                f"{f' ({driven.errors} errors)' if driven.errors else ''} | "
                f"{driven.p50_ms:.1f} / {driven.p99_ms:.1f} | | | |"
            )
        lines += [
            "",
            "verify: service = auth + org + code + product reads, JSON, over HTTP; raw = one primary-key "
            "read of codes. settle: 3 packs a claim; raw = the service's settlement use case "
            "(no HTTP, auth, JSON or validation).",
        ]
        if driven is not None:
            per_request = 1000 * driven.cpu_seconds / max(1.0, driven.rate * args.ceiling_seconds)
            lines.append(
                f"verify, driven by wrk: the same requests from a native generator "
                f"({args.ceiling_concurrency} connections); wrk's own CPU {per_request:.3f} ms a request."
            )
    return "\n".join(lines)


# --- main -----------------------------------------------------------------------------


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--codes", type=int, default=1_000_000, help="codes to seed (default 1,000,000)")
    p.add_argument("--scale", type=float, default=0.05, help="fraction of the province peak (default 0.05)")
    p.add_argument("--duration", type=float, default=300, help="seconds of load (default 300)")
    p.add_argument("--shape", choices=("province", "flat"), default="province")
    p.add_argument(
        "--workers", type=int, default=len(os.sched_getaffinity(0)), help="service workers (default: CPUs)"
    )
    p.add_argument("--database-url", default=None, help="use this database (with --truncate if not empty)")
    p.add_argument("--truncate", action="store_true", help="empty --database-url first")
    p.add_argument("--reports", type=Path, default=HERE / "reports", help="default loadtests/reports")
    p.add_argument("--ceiling-seconds", type=float, default=10)
    p.add_argument("--ceiling-concurrency", type=int, default=16)
    p.add_argument("--no-ceiling", action="store_true", help="skip the ceiling measurements")
    p.add_argument(
        "--slo", default="", help="p99 objectives, passed to the Locust file (e.g. settle=25,verify=10)"
    )
    p.add_argument("locust_args", nargs="*", help="more Locust arguments, after --")
    args = p.parse_args()

    cpus = len(os.sched_getaffinity(0))
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.reports / stamp
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="tracecode-loadbench-"))
    url = args.database_url
    try:
        if url is None:
            url = throwaway_postgres("tracecode-loadbench-pg-")
        print(f"seeding {args.codes:,} codes ...", flush=True)
        seeded = asyncio.run(
            seeder.seed(
                url,
                codes=args.codes,
                manifest_path=out / "manifest.json",
                truncate=args.truncate,
                progress=False,
            )
        )
        print(
            f"seeded {seeded['total_rows']:,} rows in {seeded['copy_seconds']:.1f} s "
            f"({seeded['rows_per_second']:,.0f} rows/s), then VACUUM ANALYZE",
            flush=True,
        )
        port = free_port()
        env = dict(
            os.environ, TRACE_DATABASE_URL=url, TRACE_DATA_DIR=str(work / "data"), TRACE_LOG_LEVEL="warning"
        )
        env.pop("TRACE_REDIS_URL", None)
        server = start_service(env, port, out / "service.log", workers=args.workers)
        try:
            print(
                f"service on port {port} ({args.workers} workers); Locust for {args.duration:g} s ...",
                flush=True,
            )
            cmd = [
                sys.executable,
                "-m",
                "locust",
                "-f",
                str(HERE / "locustfile.py"),
                "--headless",
                "--host",
                f"http://127.0.0.1:{port}",
                "--manifest",
                str(out / "manifest.json"),
                "--load-scale",
                str(args.scale),
                "--load-duration",
                str(args.duration),
                "--load-shape",
                args.shape,
                "--csv",
                str(out / "locust"),
                "--csv-full-history",
                "--html",
                str(out / "locust.html"),
                "--summary-json",
                str(out / "summary.json"),
                "--only-summary",
                "--loglevel",
                "INFO",
                *(["--slo", args.slo] if args.slo else []),
                *args.locust_args,
            ]
            postmaster = asyncio.run(postmaster_of(url))
            memory_before = asyncio.run(database_memory(url))
            waits = WaitSampler(url)
            waits.start()
            before = cpu_sample(server.pid, postmaster)
            started = time.monotonic()
            with (out / "locust.log").open("wb") as log_file:
                done = subprocess.run(cmd, stdout=log_file, stderr=subprocess.STDOUT, check=False)
            cpu = procs.used(before, cpu_sample(server.pid, postmaster))
            cpu["seconds"] = time.monotonic() - started
            waits.stop.set()
            waits.join()
            memory = memory_line(memory_before, asyncio.run(database_memory(url)))
            summary_path = out / "summary.json"
            if not summary_path.exists():
                print((out / "locust.log").read_text()[-4000:], file=sys.stderr)
                return 2
            summary = json.loads(summary_path.read_text())
            ceiling = None
            if not args.no_ceiling:
                print("measuring ceilings ...", flush=True)
                manifest = json.loads((out / "manifest.json").read_text())
                ceiling = asyncio.run(
                    ceilings(url, port, manifest, args.ceiling_seconds, args.ceiling_concurrency)
                )
        finally:
            stop_service(server)
        table = report(summary, ceiling, args, cpus, cpu, waits.summary() + "\n" + memory)
        header = (
            f"- machine: {cpus} CPU(s), {platform.processor() or platform.machine()}, Python "
            f"{platform.python_version()}\n- command: {' '.join(sys.orig_argv)}\n- reports: {out}\n"
        )
        (out / "report.md").write_text(header + "\n" + table + "\n")
        print()
        print(header)
        print(table)
        return done.returncode
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
