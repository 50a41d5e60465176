"""What a late batch costs: the same sales dated after, and before, the packs' receipt.

What is measured (in-process, as ``bench_inprocess.py``: the app under Litestar's test
client, no network)
    Each round commissions, ships and receives two ranges of ``--batch`` fresh packs
    (not measured), then sells each range in ONE ``POST /v1/events`` of one-pack
    ``dispense`` events, one range dated after its receipt (in time order: the
    incremental path) and the other dated before it (late: the packs' histories are
    replayed and their sales folded again in event time, ``core.sales.refold``). The
    two go first in turn. Wall time per request; medians over ``--rounds`` rounds and
    the ratio late / in order.

How to run (from the repository root)
    .venv/bin/python scripts/bench_late.py [--rounds 10] [--batch 1000] [--database-url URL]

Without ``--database-url`` a throwaway embedded PostgreSQL is started.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import asyncpg
from litestar.testing import AsyncTestClient

from benchkit.api import AMOXICILLIN, Org, event, post, register
from benchkit.codes import cn20
from service.app import create_app
from service.cli import _create_key
from service.config import Settings
from service.store.migrations import migrate

M1, P1 = Org(AMOXICILLIN.manufacturer, "manufacturer", "450300"), Org("P1", "pharmacy", "450103")


def at(minute: int) -> str:
    return f"2026-03-02T08:{minute:02d}:00+08:00"


async def main(database_url: str, rounds: int, batch: int) -> None:
    conn = await asyncpg.connect(database_url)
    await migrate(conn)
    await conn.close()
    for role in ("ORG", "INSURER", "INVESTIGATOR", "ADMIN"):
        os.environ.setdefault(f"TRACE_RATE_LIMIT_{role}", "off")
    settings = replace(Settings.from_env(), database_url=database_url, redis_url=None, psn_secret=b"x")
    _, admin = await _create_key(database_url, "admin", None)
    async with AsyncTestClient(app=create_app(settings), timeout=300) as client:
        keys = await register(client, admin, [M1, P1], [AMOXICILLIN])
        seconds: dict[str, list[float]] = {"in order": [], "late": []}
        serial = 1
        for r in range(rounds + 1):  # the first round warms up, unmeasured
            sides = ("in order", "late") if r % 2 == 0 else ("late", "in order")
            ranges = {}
            for side in sides:
                codes = [cn20(AMOXICILLIN.product_id, s) for s in range(serial, serial + batch)]
                serial += batch
                made = event("commission", M1.id, codes, at(1), lot="L", expiry="2030-01-01")
                for e in (made, event("ship", M1.id, codes, at(2), to=P1.id)):
                    await post(client, keys[M1.id], "/v1/events", {"events": [e]})
                received = event("receive", P1.id, codes, at(5))
                await post(client, keys[P1.id], "/v1/events", {"events": [received]})
                ranges[side] = codes
            for side in sides:
                sold = at(4 if side == "late" else 6)
                body = {"events": [event("dispense", P1.id, [c], sold) for c in ranges[side]]}
                started = time.perf_counter()
                answer = await post(client, keys[P1.id], "/v1/events", body)
                if r:
                    seconds[side].append(time.perf_counter() - started)
                assert answer["accepted"] == batch, answer
        late, in_order = (statistics.median(seconds[s]) * 1000 for s in ("late", "in order"))
        print("| batch | in order (ms) | late (ms) | late / in order |\n|---:|---:|---:|---:|")
        print(f"| {batch:,} | {in_order:.0f} | {late:.0f} | {late / in_order:.2f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()
    url = args.database_url
    if url is None:
        from service.embedded import start_postgres

        url = start_postgres(Path(tempfile.mkdtemp(prefix="bench-late-")), throwaway=True)
    asyncio.run(main(url, args.rounds, args.batch))
