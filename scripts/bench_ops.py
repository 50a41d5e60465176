"""CPU per request of single operations: the service's and PostgreSQL's, one at a time.

What is measured
    One throwaway embedded PostgreSQL, one service worker (``tracecode serve --workers
    1``), a manufacturer M1 and a pharmacy P1 holding ``3 x --requests`` packs (24 units
    each). Then ``--requests`` requests of each operation, one after another over one
    keep-alive connection:

    * verify: ``GET /v1/codes/{code}/verify`` with P1's key;
    * dispense: ``POST /v1/events`` with one ``dispense`` of one pack by P1;
    * settle: ``POST /v1/settlements`` of one line, one whole pack, with an insurer key.

    For each: the CPU time the service's processes and PostgreSQL's processes used over
    the requests (from /proc), and the wall time, each divided by the number of requests.
    Requests one at a time show what one request costs, not what the machine can carry
    (``loadtests/bench`` and ``scripts/bench_settle.py`` do that).

How to run (from the repository root)
    .venv/bin/python scripts/bench_ops.py [--requests 600] [--database-url URL]

It uses only the public API, so it can be run against an older checkout for a side by
side comparison (copy it there, or run it while the older code is checked out).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx

from benchkit import localrun, procs
from benchkit.api import AMOXICILLIN, Org, claim_body, event, post, register
from benchkit.codes import cn20
from service.core.settlement import Claim, Line

M1 = Org(AMOXICILLIN.manufacturer, "manufacturer", "450100")
P1 = Org("P1", "pharmacy", "450103")
BATCH = 1_000


async def run(args: argparse.Namespace, database_url: str, workdir: Path) -> None:
    n = args.requests
    env = dict(os.environ, TRACE_DATABASE_URL=database_url, TRACE_DATA_DIR=str(workdir / "data"))
    env["TRACE_LOG_LEVEL"] = "warning"  # no line per request, as in the other benchmarks
    conn = await asyncpg.connect(database_url)
    postgres = procs.local_postmaster(await conn.fetchval("SELECT pg_backend_pid()"))
    await conn.close()
    port = localrun.free_port()
    server = localrun.start_service(env, port, workdir / "service.log", workers=1)
    try:
        admin = localrun.create_admin_key(env)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            keys = await register(client, admin, [M1, P1], [AMOXICILLIN], insurer=True)
            codes = [cn20(AMOXICILLIN.product_id, s) for s in range(1, 3 * n + 1)]
            made = datetime.now(UTC) - timedelta(days=1)
            for i in range(0, len(codes), BATCH):
                part = codes[i : i + BATCH]
                lot = {"lot": "L1", "expiry": "2030-12-31", "produced": "2025-01-15"}
                await post(
                    client,
                    keys[M1.id],
                    "/v1/events",
                    {"events": [event("commission", M1.id, part, made, **lot)]},
                )
                shipped = event("ship", M1.id, part, made + timedelta(seconds=1), to=P1.id)
                await post(client, keys[M1.id], "/v1/events", {"events": [shipped]})
                received = event("receive", P1.id, part, made + timedelta(seconds=2))
                await post(client, keys[P1.id], "/v1/events", {"events": [received]})
            pharmacy = {"Authorization": f"Bearer {keys[P1.id]}", "Content-Type": "application/json"}
            insurer = {"Authorization": f"Bearer {keys['insurer']}", "Content-Type": "application/json"}
            sold = datetime.now(UTC) - timedelta(minutes=5)

            def claim(i: int) -> bytes:
                line = Line(1, AMOXICILLIN.med_list_codg, 24, False, (codes[2 * n + i],))
                body = claim_body(Claim(f"OPS-{i}", P1.id, f"450103{i:012d}", sold, "settle", (line,)))
                return json.dumps(body).encode()

            operations: dict[str, list[tuple[str, str, dict[str, str], bytes | None]]] = {
                "verify": [("GET", f"/v1/codes/{codes[i]}/verify", pharmacy, None) for i in range(n)],
                "dispense": [
                    ("POST", "/v1/events", pharmacy,
                     json.dumps({"events": [event("dispense", P1.id, [codes[n + i]], sold)]}).encode())
                    for i in range(n)
                ],
                "settle": [("POST", "/v1/settlements", insurer, claim(i)) for i in range(n)],
            }  # fmt: skip
            print(
                "| operation | service CPU ms / request | PostgreSQL CPU ms / request | wall ms / request |"
            )
            print("|---|---:|---:|---:|")
            for name, requests in operations.items():
                service_before, postgres_before = procs.tree_cpu(server.pid), procs.tree_cpu(postgres)
                started = time.perf_counter()
                for method, path, headers, body in requests:
                    resp = await client.request(method, path, headers=headers, content=body)
                    if resp.status_code not in (200, 201):
                        raise RuntimeError(f"{name}: {resp.status_code} {resp.text}")
                wall = time.perf_counter() - started
                service = (procs.tree_cpu(server.pid) or 0) - (service_before or 0)
                database = (procs.tree_cpu(postgres) or 0) - (postgres_before or 0)
                per = [1000 * x / n for x in (service, database, wall)]
                print(f"| {name} | {per[0]:.2f} | {per[1]:.2f} | {per[2]:.2f} |")
    finally:
        localrun.stop_service(server)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=600, help="requests of each operation")
    p.add_argument("--database-url", default=None)
    args = p.parse_args()
    localrun.run_bench(
        args.database_url, "tracecode-bench-ops-", lambda url, workdir: run(args, url, workdir)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
