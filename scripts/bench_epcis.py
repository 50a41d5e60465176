"""EPCIS capture against POST /v1/events: the same journey, side by side in one run.

What is measured
    For each batch size B and round, two fresh sets of B packs of one GTIN make the same
    journey, one request per step: the manufacturer M1 commissions them (lot and expiry),
    M1 ships them to the distributor D1, and D1 receives them. One set goes as EPCIS 2.0
    documents to ``POST /epcis/capture`` (SGTIN URNs; a commissioning ObjectEvent with
    ``ilmd``, a shipping ObjectEvent with a ``destinationList``, a receiving
    ObjectEvent), the other as the same events to ``POST /v1/events`` (canonical
    ``01<GTIN>21<serial>`` codes). Which side goes first alternates by round. The time is
    the client's wall time of the three requests (bodies encoded before the clock
    starts); codes/s = B / seconds; medians over all rounds, and the ratio
    epcis / events. The EPCIS side does more: it also validates each document against
    GS1's JSON Schema (when it is laid beside the repository, as in the tests) and keeps
    every event as received for queries.

How to run (from the repository root)
    .venv/bin/python scripts/bench_epcis.py [--rounds N] [--batches 100,1000] [--database-url URL]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from benchkit import localrun
from benchkit.api import Product, event, post, product_body

GTIN = "10614141073464"  # its SGTINs: urn:epc:id:sgtin:0614141.107346.<serial>
PRODUCT = Product(GTIN, "Amoxicillin 0.25g x 24", "XJ01CAA040A001010104256", 24, "M1", ("45",))
ORGS = (  # id, kind, GLN (urn:epc:id:sgln:<company>.<location>.0)
    ("M1", "manufacturer", "0614141073467", "urn:epc:id:sgln:0614141.07346.0"),
    ("D1", "distributor", "0012345111112", "urn:epc:id:sgln:0012345.11111.0"),
)
SCHEMA = Path(__file__).resolve().parents[2] / "shared" / "epcis" / "schema" / "EPCIS-JSON-Schema.json"


def document(*events: dict[str, Any]) -> dict[str, Any]:
    return {
        "@context": ["https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"],
        "type": "EPCISDocument",
        "schemaVersion": "2.0",
        "creationDate": datetime.now(UTC).isoformat(),
        "epcisBody": {"eventList": list(events)},
    }


def epcis_journey(serials: range, at: datetime) -> list[tuple[str, dict[str, Any]]]:
    """(organisation, document) of each step: M1 commissions, M1 ships to D1, D1 receives."""
    epcs = [f"urn:epc:id:sgtin:0614141.107346.{s}" for s in serials]
    m1_loc, d1_loc = ORGS[0][3], ORGS[1][3]

    def ev(when: datetime, loc: str, **fields: Any) -> dict[str, Any]:
        return {
            "type": "ObjectEvent",
            "eventTime": when.isoformat(),
            "eventTimeZoneOffset": "+00:00",
            "epcList": epcs,
            "bizLocation": {"id": loc},
            **fields,
        }

    commission = ev(
        at,
        m1_loc,
        action="ADD",
        bizStep="commissioning",
        ilmd={"cbvmda:lotNumber": "BENCH1", "cbvmda:itemExpirationDate": "2030-12-31"},
    )
    ship = ev(
        at + timedelta(seconds=1),
        m1_loc,
        action="OBSERVE",
        bizStep="shipping",
        destinationList=[{"type": "location", "destination": d1_loc}],
    )
    receive = ev(at + timedelta(seconds=2), d1_loc, action="OBSERVE", bizStep="receiving")
    return [("M1", document(commission)), ("M1", document(ship)), ("D1", document(receive))]


def events_journey(serials: range, at: datetime) -> list[tuple[str, dict[str, Any]]]:
    """The same steps as ``POST /v1/events`` bodies."""
    codes = [f"01{GTIN}21{s}" for s in serials]
    return [
        ("M1", {"events": [event("commission", "M1", codes, at, lot="BENCH1", expiry="2030-12-31")]}),
        ("M1", {"events": [event("ship", "M1", codes, at + timedelta(seconds=1), to="D1")]}),
        ("D1", {"events": [event("receive", "D1", codes, at + timedelta(seconds=2))]}),
    ]


async def timed(
    client: httpx.AsyncClient, path: str, steps: list[tuple[str, dict[str, Any]]], size: int
) -> float:
    """The wall time of the requests (key, body) in order; each must take every event, and
    every event all ``size`` codes."""
    seconds = 0.0
    for key, body in steps:
        content = json.dumps(body).encode()
        events = len(body["epcisBody"]["eventList"] if path == "/epcis/capture" else body["events"])
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        started = time.perf_counter()
        resp = await client.post(path, content=content, headers=headers)
        seconds += time.perf_counter() - started
        answer = resp.json()
        taken = (
            answer.get("eventCount") == events and answer.get("success")
            if path == "/epcis/capture"
            else answer.get("accepted") == size * events
        )
        if resp.status_code not in (200, 202) or not taken:
            raise RuntimeError(f"{path}: {resp.status_code} {resp.text[:1000]}")
    return seconds


async def run(
    args: argparse.Namespace, database_url: str, workdir: Path
) -> dict[int, tuple[list[float], list[float]]]:
    env = dict(os.environ, TRACE_DATABASE_URL=database_url, TRACE_DATA_DIR=str(workdir / "data"))
    if SCHEMA.exists():
        env.setdefault("TRACE_EPCIS_SCHEMA", str(SCHEMA))
    out: dict[int, tuple[list[float], list[float]]] = {}
    port = localrun.free_port()
    server = localrun.start_service(env, port, workdir / "service.log")
    serial = 1
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    try:
        admin = localrun.create_admin_key(env)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=300) as client:
            keys = {}
            for org, kind, gln, _ in ORGS:
                body = {"id": org, "name": org, "kind": kind, "region": "450100", "glns": [gln]}
                await post(client, admin, "/v1/orgs", body)
                keys[org] = (await post(client, admin, "/v1/keys", {"role": "org", "org": org}))["secret"]
            await post(client, admin, "/v1/products", product_body(PRODUCT))
            for size in args.batches:
                epcis_times, event_times = out.setdefault(size, ([], []))
                for r in range(args.rounds):
                    sides = []
                    for path, build, times in (
                        ("/epcis/capture", epcis_journey, epcis_times),
                        ("/v1/events", events_journey, event_times),
                    ):
                        steps = build(range(serial, serial + size), at)
                        serial += size
                        sides.append((path, [(keys[org], body) for org, body in steps], times))
                    for path, steps, times in sides if r % 2 == 0 else reversed(sides):
                        times.append(await timed(client, path, steps, size))
                    at += timedelta(minutes=1)
                    print(f"batch {size}: round {r + 1}/{args.rounds} done", file=sys.stderr)
    finally:
        localrun.stop_service(server)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batches", default="100,1000", help="codes per journey, comma-separated")
    p.add_argument("--database-url", default=None)
    args = p.parse_args()
    args.batches = [int(b) for b in args.batches.split(",") if b.strip()]
    timings = localrun.run_bench(
        args.database_url, "tracecode-bench-epcis-", lambda url, workdir: run(args, url, workdir)
    )
    print(f"schema validation: {'on' if SCHEMA.exists() else 'off (no ../shared/epcis)'}")
    print("| batch | /epcis/capture codes/s | /v1/events codes/s | epcis / events |")
    print("|---:|---:|---:|---:|")
    for size, (ours, theirs) in timings.items():
        a = statistics.median(size / s for s in ours)
        b = statistics.median(size / s for s in theirs)
        print(f"| {size:,} | {a:,.0f} | {b:,.0f} | {100 * a / b:.0f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
