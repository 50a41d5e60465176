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
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
from litestar.testing import AsyncTestClient

from service.app import create_app
from service.cli import _create_key
from service.config import Settings
from service.store.migrations import migrate


def event(type_: str, org: str, codes: list[str], minute: int, **fields: Any) -> dict[str, Any]:
    at = f"2026-03-02T08:{minute:02d}:00+08:00"
    return {"event_id": str(uuid.uuid4()), "type": type_, "at": at, "org": org, "codes": codes, **fields}


async def main(database_url: str, rounds: int, batch: int) -> None:
    conn = await asyncpg.connect(database_url)
    await migrate(conn)
    await conn.close()
    for role in ("ORG", "INSURER", "INVESTIGATOR", "ADMIN"):
        os.environ.setdefault(f"TRACE_RATE_LIMIT_{role}", "off")
    settings = replace(Settings.from_env(), database_url=database_url, redis_url=None, psn_secret=b"x")
    _, admin = await _create_key(database_url, "admin", None)
    async with AsyncTestClient(app=create_app(settings), timeout=300) as client:

        async def post(path: str, body: dict[str, Any]) -> Any:
            resp = await client.post(path, json=body, headers={"Authorization": f"Bearer {admin}"})
            assert resp.status_code in (200, 201), resp.text
            return resp.json()

        await post("/v1/orgs", {"id": "M1", "name": "M", "kind": "manufacturer", "region": "450300"})
        await post("/v1/orgs", {"id": "P1", "name": "P", "kind": "pharmacy", "region": "450103"})
        product = {"product_id": "8123456", "name": "A", "med_list_codg": "X", "pack_units": 24}
        await post("/v1/products", {**product, "manufacturer": "M1", "regions": ["45"]})
        seconds: dict[str, list[float]] = {"in order": [], "late": []}
        serial = 1
        for r in range(rounds + 1):  # the first round warms up, unmeasured
            sides = ("in order", "late") if r % 2 == 0 else ("late", "in order")
            ranges = {}
            for side in sides:
                codes = ["8123456" + str(serial + i).zfill(13) for i in range(batch)]
                serial += batch
                made = event("commission", "M1", codes, 1, lot="L", expiry="2030-01-01")
                for e in (made, event("ship", "M1", codes, 2, to="P1"), event("receive", "P1", codes, 5)):
                    await post("/v1/events", {"events": [e]})
                ranges[side] = codes
            for side in sides:
                minute = 4 if side == "late" else 6
                body = {"events": [event("dispense", "P1", [c], minute) for c in ranges[side]]}
                started = time.perf_counter()
                answer = await post("/v1/events", body)
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
