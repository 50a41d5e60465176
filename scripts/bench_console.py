"""The console's pages at scale: how long each takes to answer on a seeded database.

What is measured
    ``loadtests/seed.py`` seeds ``--codes`` packs (a province's organisations, lots, cases,
    journeys, sales and settlements), then one product's ``--lot-units`` packs are put in
    one lot (the issue's lot of 100,000 units). ``tracecode serve`` (one worker) serves it;
    this script signs in to the console with the seeded investigator key and fetches, one
    after another, ``--rounds`` times each: the code page of a seeded code with a history
    (a different one each time), the flag queue, the pending flags, a flag, the big lot's
    page, and the organisation pages of the busiest pharmacy and the busiest distributor.
    The time is the client's wall time on loopback (server time plus a fraction of a
    millisecond), medians and 95th percentiles; every answer must be a 200.

How to run (from the repository root)
    .venv/bin/python scripts/bench_console.py [--codes 1000000] [--lot-units 100000]
        [--rounds 20] [--database-url URL]

Without ``--database-url`` a throwaway embedded PostgreSQL is seeded (10,000,000 codes
take about 8 minutes and 15 GB here); a given database must be empty.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from benchkit import localrun
from benchkit.stats import cpu_model, percentile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "loadtests"))
import seed as seeder

BIG_LOT = "BENCH-LOT-100K"


async def prepare(url: str, lot_units: int) -> dict[str, Any]:
    """The big lot, and what the pages are asked for."""
    conn = await asyncpg.connect(url)
    try:
        product = await conn.fetchval(
            "SELECT product_id FROM codes WHERE kind = 'cn20' GROUP BY 1 ORDER BY count(*) DESC LIMIT 1"
        )
        await conn.execute(
            """UPDATE codes SET lot = $2 WHERE code IN (
                   SELECT code FROM codes WHERE product_id = $1 ORDER BY code LIMIT $3)""",
            product,
            BIG_LOT,
            lot_units,
        )
        pharmacy = await conn.fetchval(
            "SELECT org FROM consumptions WHERE org LIKE 'P%' GROUP BY org ORDER BY count(*) DESC LIMIT 1"
        )
        distributor = await conn.fetchval(
            """SELECT org FROM events WHERE type = 'receive' AND org LIKE 'D%'
               GROUP BY org ORDER BY count(*) DESC LIMIT 1"""
        )
        flag = await conn.fetchval("SELECT max(flag_id) FROM flags")
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    return {"product": product, "pharmacy": pharmacy, "distributor": distributor, "flag": flag}


async def measure(
    base: str, key: str, pages: dict[str, list[str]], rounds: int, each: bool = False
) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in pages}
    async with httpx.AsyncClient(base_url=base, timeout=60, follow_redirects=True) as client:
        signin = await client.get("/console/signin")
        token = re.search(r'name="_csrf_token" value="([^"]+)"', signin.text)
        assert token, signin.text
        done = await client.post("/console/signin", data={"key": key, "_csrf_token": token.group(1)})
        if done.status_code != 200 or "/console/codes" not in str(done.url):
            raise RuntimeError(f"sign-in refused: {done.status_code} {done.text[:500]}")
        for paths in pages.values():  # one unmeasured visit each: caches warm
            await client.get(paths[0])
        for i in range(rounds):
            for name, paths in pages.items():
                path = paths[i % len(paths)]
                started = time.perf_counter()
                answer = await client.get(path)
                times[name].append(1000 * (time.perf_counter() - started))
                if each:
                    print(f"{time.strftime('%H:%M:%S')} {times[name][-1]:7.1f} ms  {path}", file=sys.stderr)
                if answer.status_code != 200:
                    raise RuntimeError(f"{path}: {answer.status_code} {answer.text[:500]}")
    return times


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--codes", type=int, default=1_000_000)
    p.add_argument("--lot-units", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--database-url", default=None)
    p.add_argument("--each", action="store_true", help="print every request's time (to stderr)")
    args = p.parse_args()
    url = args.database_url or localrun.throwaway_postgres()
    workdir = Path(tempfile.mkdtemp(prefix="tracecode-bench-console-"))
    try:
        asyncio.run(localrun.migrate(url))
        started = time.monotonic()
        manifest_path = workdir / "manifest.json"
        asyncio.run(seeder.seed(url, codes=args.codes, manifest_path=manifest_path, progress=False))
        manifest = json.loads(manifest_path.read_text())
        print(f"seeded {args.codes:,} codes in {time.monotonic() - started:.0f} s", file=sys.stderr)
        found = asyncio.run(prepare(url, args.lot_units))
        history = manifest["pools"]["history"][: args.rounds]
        pages = {
            "code (history of a seeded code)": [f"/console/codes?q={code}" for code in history],
            "flag queue": ["/console/flags"],
            "pending flags": ["/console/flags/pending"],
            "one flag": [f"/console/flags/{found['flag']}"],
            f"lot of {args.lot_units:,} units": [f"/console/lots/{found['product']}/{BIG_LOT}"],
            f"organisation: busiest pharmacy ({found['pharmacy']})": [f"/console/orgs/{found['pharmacy']}"],
            f"organisation: busiest distributor ({found['distributor']})": [
                f"/console/orgs/{found['distributor']}"
            ],
        }
        env = dict(os.environ, TRACE_DATABASE_URL=url, TRACE_DATA_DIR=str(workdir / "data"))
        port = localrun.free_port()
        server = localrun.start_service(env, port, workdir / "service.log")
        try:
            key = manifest["keys"]["investigator"][0]
            times = asyncio.run(measure(f"http://127.0.0.1:{port}", key, pages, args.rounds, args.each))
        finally:
            localrun.stop_service(server)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"{args.codes:,} codes seeded; {cpu_model()}; {args.rounds} requests a page, one at a time")
    print("| page | median ms | p95 ms | max ms |")
    print("|---|---:|---:|---:|")
    for name, values in times.items():
        median, p95 = percentile(values, 0.5) or 0.0, percentile(values, 0.95) or 0.0
        print(f"| {name} | {median:.1f} | {p95:.1f} | {max(values):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
