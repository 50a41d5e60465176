"""CPU per request of the app itself, in-process: the app under Litestar's test client,
no network and no second process, so the machine's noise matters less than in the HTTP
benchmarks. For comparing two releases side by side, not for absolute figures.

What is measured (process CPU time and wall time, per unit)
    ingest: 20 batches of 1,000 new codes commissioned, then the same shipped
            (``POST /v1/events``), per batch;
    settle: ``--settlements`` one-line whole-pack settlements (``POST /v1/settlements``),
            per settlement, after 20 unmeasured ones.
The figures include the test client's own work, the same for every release.

How to run (from the repository root)
    .venv/bin/python scripts/bench_inprocess.py [--database-url URL] [--settlements 600]

Without ``--database-url`` a throwaway embedded PostgreSQL is started. The script uses
only what every release since the first has (``create_app``, ``Settings``, the migrations
and the CLI's key creation), so it can be copied into an older checkout to compare:

    git worktree add ../previous <commit>
    cp scripts/bench_inprocess.py ../previous/scripts/
    (cd ../previous && ./dev test -q tests/unit && .venv/bin/python scripts/bench_inprocess.py)

Run the two releases alternately, a few times each, and compare medians.
"""

from __future__ import annotations

import argparse
import asyncio
import os
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

BATCH, BATCHES = 1_000, 20


def event(type_: str, org: str, codes: list[str], minute: int, **fields: Any) -> dict[str, Any]:
    at = f"2026-03-02T08:{minute:02d}:00+08:00"
    return {"event_id": str(uuid.uuid4()), "type": type_, "at": at, "org": org, "codes": codes, **fields}


async def main(database_url: str, settlements: int) -> None:
    conn = await asyncpg.connect(database_url)
    await migrate(conn)
    await conn.close()
    # capacity, not the per-key rate limiter, as in the other benchmarks (named here
    # rather than imported: releases before the limiter have no such names and ignore these)
    for role in ("ORG", "INSURER", "INVESTIGATOR", "ADMIN"):
        os.environ.setdefault(f"TRACE_RATE_LIMIT_{role}", "off")
    settings = replace(Settings.from_env(), database_url=database_url, redis_url=None, psn_secret=b"x")
    _, admin = await _create_key(database_url, "admin", None)
    async with AsyncTestClient(app=create_app(settings)) as client:

        async def post(path: str, body: dict[str, Any], key: str = admin) -> Any:
            resp = await client.post(path, json=body, headers={"Authorization": f"Bearer {key}"})
            assert resp.status_code in (200, 201), resp.text
            return resp.json()

        await post("/v1/orgs", {"id": "M1", "name": "M", "kind": "manufacturer", "region": "450300"})
        await post("/v1/orgs", {"id": "P1", "name": "P", "kind": "pharmacy", "region": "450103"})
        product = {"product_id": "8123456", "name": "A", "med_list_codg": "X", "pack_units": 24}
        await post("/v1/products", {**product, "manufacturer": "M1", "regions": ["45"]})
        codes = ["8123456" + str(i).zfill(13) for i in range(1, BATCH * BATCHES + 1)]
        steps = (
            ("commission", {"lot": "L", "expiry": "2030-01-01"}, 1),
            ("ship", {"to": "P1"}, 2),
        )
        for type_, fields, minute in steps:
            cpu, wall = time.process_time(), time.perf_counter()
            for i in range(0, len(codes), BATCH):
                answer = await post(
                    "/v1/events", {"events": [event(type_, "M1", codes[i : i + BATCH], minute, **fields)]}
                )
                assert answer["accepted"] == BATCH, answer
            cpu, wall = (time.process_time() - cpu) / BATCHES, (time.perf_counter() - wall) / BATCHES
            figures = f"CPU {cpu * 1000:6.1f} ms, wall {wall * 1000:6.1f} ms"
            print(f"ingest {type_:<10} per batch of {BATCH:,}: {figures}")
        for i in range(0, len(codes), BATCH):
            await post("/v1/events", {"events": [event("receive", "P1", codes[i : i + BATCH], 3)]})
        insurer = (await post("/v1/keys", {"role": "insurer"}))["secret"]

        async def settle(n: int) -> None:
            line = {"line_no": 1, "med_list_codg": "X", "quantity": 24, "codes": [codes[n]]}
            body = {"setl_id": f"S{n}", "org": "P1", "psn_no": "1", "at": "2026-03-05T10:00:00+08:00"}
            answer = await post("/v1/settlements", {**body, "lines": [line]}, insurer)
            assert answer["decision"] == "accepted", answer

        for n in range(20):
            await settle(n)
        cpu, wall = time.process_time(), time.perf_counter()
        for n in range(20, 20 + settlements):
            await settle(n)
        cpu, wall = (time.process_time() - cpu) / settlements, (time.perf_counter() - wall) / settlements
        print(f"settle, one whole pack per settlement:  CPU {cpu * 1000:6.2f} ms, wall {wall * 1000:6.2f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url")
    parser.add_argument("--settlements", type=int, default=600)
    args = parser.parse_args()
    url = args.database_url
    if url is None:
        from service.embedded import start_postgres

        url = start_postgres(Path(tempfile.mkdtemp(prefix="bench-inprocess-")), throwaway=True)
    asyncio.run(main(url, min(args.settlements, BATCH * BATCHES - 20)))
