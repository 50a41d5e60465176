"""HTTP servers side by side: uvicorn and Granian running the same app, driven by wrk.

What is measured
    One throwaway embedded PostgreSQL, one pharmacy holding 200 packs. Then, round after
    round, each server in turn (uvicorn, granian, then granian, uvicorn, ... so both see
    the same background load on a shared machine): ``tracecode serve --server S
    --workers W``, and wrk (a native load generator: C, its own threads, ``--connections``
    keep-alive connections; ``--latency`` for its percentiles) for ``--seconds`` each
    against

    * ``GET /health/live``: the server and the framework, no database;
    * ``GET /v1/codes/{code}/verify`` with the pharmacy's key, over its 200 packs: the
      key (cached), one primary-key read, the judgement, JSON.

    Reported per server and endpoint, medians over the rounds: requests/s, p50 and p99
    (wrk's, over its connections), verify's rate over live's in the same round, and how
    the work was shared among the workers: the established connections each worker
    process held in the middle of the run and each one's share of the workers' CPU time
    over the run (both from /proc), with the workers' CPU per request, and wrk's own.

    wrk runs on the same machine as the service and PostgreSQL: its CPU is taken from
    them, the same for both servers.

How to run (from the repository root; needs wrk, Debian's package ``wrk``)
    .venv/bin/python scripts/bench_servers.py [--rounds 3] [--seconds 10] [--workers 2]
        [--connections 16] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from benchkit import localrun, procs, wrk
from benchkit.api import AMOXICILLIN, Org, event, post, register
from benchkit.codes import cn20
from service.config import SERVERS

M1 = Org(AMOXICILLIN.manufacturer, "manufacturer", "450100")
P1 = Org("P1", "pharmacy", "450103")
PACKS = 200
ENDPOINTS = ("live", "verify")


@dataclass
class Run:
    rate: float  # requests/s
    p50_ms: float
    p99_ms: float
    connections: list[int]  # per worker, sorted
    cpu_share: list[float]  # per worker, sorted, of the workers' CPU time
    cpu_ms_per_request: float
    wrk_cpu_ms_per_request: float


@dataclass
class Results:
    runs: dict[tuple[str, str], list[Run]] = field(default_factory=dict)


async def _setup(port: int, env: dict[str, str]) -> tuple[str, list[str]]:
    """The pharmacy's key and its packs, received from the manufacturer."""
    admin = localrun.create_admin_key(env)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        keys = await register(client, admin, [M1, P1], [AMOXICILLIN])
        codes = [cn20(AMOXICILLIN.product_id, s) for s in range(1, PACKS + 1)]
        at = datetime.now(UTC) - timedelta(days=1)
        made = event("commission", M1.id, codes, at, lot="L1", expiry="2030-12-31", produced="2025-01-15")
        await post(client, keys[M1.id], "/v1/events", {"events": [made]})
        shipped = event("ship", M1.id, codes, at + timedelta(seconds=1), to=P1.id)
        await post(client, keys[M1.id], "/v1/events", {"events": [shipped]})
        received = event("receive", P1.id, codes, at + timedelta(seconds=2))
        await post(client, keys[P1.id], "/v1/events", {"events": [received]})
        auth = {"Authorization": f"Bearer {keys[P1.id]}"}
        answer = (await client.get(f"/v1/codes/{codes[0]}/verify", headers=auth)).json()
        if not answer.get("dispensable"):
            raise RuntimeError(f"verify: {answer}")
    return keys[P1.id], codes


def cpu_of(found: tuple[int, float] | None) -> float:
    return found[1] if found else 0.0


def _wrk(args: argparse.Namespace, port: int, url_path: str, script: Path | None, root: int) -> Run:
    workers = procs.app_workers(root)
    before = {pid: procs.stat(pid) for pid in workers}
    held: list[int] = []

    def sample() -> None:
        time.sleep(args.seconds / 2)
        held.extend(procs.connections_per_worker(root, port))

    sampler = threading.Thread(target=sample)
    sampler.start()
    done = wrk.run(
        f"http://127.0.0.1:{port}{url_path}",
        seconds=args.seconds,
        connections=args.connections,
        threads=args.threads,
        lua=script,
    )
    sampler.join()
    if done.errors:
        raise RuntimeError(f"wrk counted {done.errors} errors")
    used = {pid: cpu_of(procs.stat(pid)) - cpu_of(before[pid]) for pid in workers}
    total = sum(used.values()) or 1e-9
    return Run(
        rate=done.rate,
        p50_ms=done.p50_ms,
        p99_ms=done.p99_ms,
        connections=held,
        cpu_share=sorted((u / total for u in used.values()), reverse=True),
        cpu_ms_per_request=1000 * total / (done.rate * args.seconds),
        wrk_cpu_ms_per_request=1000 * done.cpu_seconds / (done.rate * args.seconds),
    )


async def run(args: argparse.Namespace, database_url: str, workdir: Path) -> Results:
    """The rounds (blocking calls inside: wrk and the service are other processes, and
    nothing else runs in this loop)."""
    env = dict(os.environ, TRACE_DATABASE_URL=database_url, TRACE_DATA_DIR=str(workdir / "data"))
    env["TRACE_LOG_LEVEL"] = "warning"  # no line per request: the servers, not the log, are compared
    results = Results()
    port = localrun.free_port()
    server = localrun.start_service({**env, "TRACE_SERVER": "uvicorn"}, port, workdir / "setup.log")
    try:
        key, codes = await _setup(port, env)
    finally:
        localrun.stop_service(server)
    script = wrk.script(workdir / "verify.lua", [(f"/v1/codes/{c}/verify", key) for c in codes])
    order = list(SERVERS)
    for r in range(args.rounds):
        for name in order if r % 2 == 0 else order[::-1]:
            env_s = {**env, "TRACE_SERVER": name}
            proc = localrun.start_service(env_s, port, workdir / f"{name}.log", workers=args.workers)
            try:
                warm_up = argparse.Namespace(**{**vars(args), "seconds": 2})
                _wrk(warm_up, port, "/health/live", None, proc.pid)
                _wrk(warm_up, port, "/v1/codes/-/verify", script, proc.pid)
                for endpoint in ENDPOINTS:
                    lua = None if endpoint == "live" else script
                    path = "/health/live" if endpoint == "live" else "/v1/codes/-/verify"  # the script's
                    done = _wrk(args, port, path, lua, proc.pid)
                    results.runs.setdefault((name, endpoint), []).append(done)
            finally:
                localrun.stop_service(proc)
            print(f"round {r + 1}/{args.rounds}: {name} done", file=sys.stderr)
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--database-url", default=None)
    args = p.parse_args()
    if not wrk.available():
        print("wrk is needed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    results = localrun.run_bench(
        args.database_url, "tracecode-bench-servers-", lambda url, workdir: run(args, url, workdir)
    )
    print(
        f"{args.workers} worker(s), wrk {args.threads} threads x {args.connections} connections, "
        f"{args.seconds} s per run, {args.rounds} rounds (medians; verify / live: of the same round)"
    )
    print()
    print(
        "| server | endpoint | requests/s | p50 ms | p99 ms | verify / live "
        "| connections per worker | CPU share per worker | worker CPU ms / request | wrk CPU ms / request |"
    )
    print("|---|---|---:|---:|---:|---:|---|---|---:|---:|")
    for name in SERVERS:
        live = results.runs[(name, "live")]
        for endpoint in ENDPOINTS:
            runs = results.runs[(name, endpoint)]
            ratio = (
                f"{statistics.median(v.rate / lv.rate for v, lv in zip(runs, live, strict=True)):.2f}"
                if endpoint == "verify"
                else ""
            )
            print(
                f"| {name} | {endpoint} | {statistics.median(x.rate for x in runs):,.0f}"
                f" | {statistics.median(x.p50_ms for x in runs):.2f}"
                f" | {statistics.median(x.p99_ms for x in runs):.2f} | {ratio}"
                f" | {' / '.join('-'.join(str(c) for c in x.connections) for x in runs)}"
                f" | {' / '.join('-'.join(f'{100 * s:.0f}%' for s in x.cpu_share) for x in runs)}"
                f" | {statistics.median(x.cpu_ms_per_request for x in runs):.3f}"
                f" | {statistics.median(x.wrk_cpu_ms_per_request for x in runs):.3f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
