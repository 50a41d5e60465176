"""NHSA sale ingest against POST /v1/events: the same sales, side by side in one run.

What is measured
    For each batch size B and round: B fresh packs are commissioned, shipped and received
    by two pharmacies, and P1 records its purchase of them (one 3503 record of B x 24
    units, so that its ledger holds what it sells, as a pharmacy's does; not measured).
    Then, side by side:

    * P1 sells its B packs as ONE 3505A upload (``selinfoDetail``, one whole-pack row
      per code: B sales) through ``POST /v1/nhsa``;
    * P2 makes the same B sales through ``POST /v1/events``: ONE request of B
      ``dispense`` events of one code each (a sale is an event, as a 3505 row is);
    * P3 dispenses its B packs as ONE ``dispense`` event of B codes, the cheapest way
      ``/v1/events`` can carry them (for comparison; not the same sales).

    The time is the client's wall time of the request (body encoded before the clock
    starts). codes/s = B / seconds; medians over all rounds, and the ratios. The NHSA
    side does more: it also writes B ledger records and judges STOCK_IMBALANCE.

    With ``--tills C`` it measures, after that, throughput instead of one request's time:
    C pharmacies upload through ``/v1/nhsa`` at once, each its own single sales (3505,
    one pack each, one after another, as a pharmacy's till sends them after each sale),
    then C other pharmacies send the same single sales to ``/v1/events`` as one-pack
    ``dispense`` events; ``--per`` sales per till. codes/s = all sales / the phase's wall
    time, over ``--rounds`` rounds, the two sides alternating which goes first. The
    client (this process) shares the machine: its CPU per request is printed too.

How to run (from the repository root)
    .venv/bin/python scripts/bench_nhsa.py [--rounds N] [--batches 1,10,100,1000]
        [--tills C [--per K]] [--database-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from benchkit import localrun, procs
from benchkit.api import AMOXICILLIN, Org, event, post, register
from benchkit.codes import cn20
from service.core.rules import CHINA
from service.store.db import create_pool

M1 = Org(AMOXICILLIN.manufacturer, "manufacturer", "450100")
PHARMACIES = tuple(Org(p, "pharmacy", "450103") for p in ("P1", "P2", "P3"))
FIXMEDINS = "P45010300001"


def sale_rows(codes: list[str], at: datetime, tag: str) -> list[dict[str, Any]]:
    when = at.astimezone(CHINA).strftime("%Y-%m-%d %H:%M:%S")
    return [
        {
            "med_list_codg": AMOXICILLIN.med_list_codg,
            "fixmedins_hilist_id": "YP0001",
            "fixmedins_hilist_name": "Amoxicillin",
            "fixmedins_bchno": f"{tag}{i}",
            "rx_flag": "1",
            "manu_lotnum": "BENCH1",
            "manu_date": "2025-01-15",
            "prsc_dr_name": "Dr",
            "phar_name": "Ph",
            "phar_prac_cert_no": "YS1",
            "mdtrt_sn": f"MD{tag}{i}",
            "rtal_docno": f"R{tag}{i}",
            "trdn_flag": "0",
            "sel_retn_cnt": 24,
            "sel_retn_time": when,
            "sel_retn_opter_name": "Ph",
            "drugtracinfo": [{"drug_trac_codg": code}],
        }
        for i, code in enumerate(codes)
    ]


def single_sale(code: str, at: datetime, bchno: str, fixmedins: str) -> dict[str, Any]:
    """A 3505 upload of one whole-pack sale, the single form a till sends."""
    body = envelope(sale_rows([code], at, bchno), at, fixmedins=fixmedins)
    body["infno"] = "3505"
    body["input"] = {"selinfo": body["input"]["selinfoDetail"][0]}
    return body


def purchase_row(size: int, at: datetime, tag: str) -> dict[str, Any]:
    """One 3503 purchase record of ``size`` packs of 24 (FIELDS.md's purcinfo)."""
    return {
        "med_list_codg": AMOXICILLIN.med_list_codg,
        "fixmedins_hilist_id": "YP0001",
        "fixmedins_hilist_name": "Amoxicillin",
        "fixmedins_bchno": tag,
        "rx_flag": "1",
        "manu_lotnum": "BENCH1",
        "manu_date": "2025-01-15",
        "expy_end": "2030-12-31",
        "spler_name": "D",
        "prodentp_name": "M",
        "aprvno": "A",
        "purc_retn_cnt": 24 * size,
        "purc_retn_stoin_time": at.astimezone(CHINA).strftime("%Y-%m-%d %H:%M:%S"),
        "purc_retn_opter_name": "Ph",
        "prod_geay_flag": "0",
    }


def envelope(
    rows: list[dict[str, Any]], at: datetime, infno: str = "3505A", fixmedins: str = FIXMEDINS
) -> dict[str, Any]:
    return {
        "infno": infno,
        "msgid": f"{fixmedins}{at.astimezone(CHINA):%Y%m%d%H%M%S}0001",
        "mdtrtarea_admvs": "450103",
        "recer_sys_code": "YBXT",
        "infver": "V1.0",
        "opter_type": "1",
        "opter": "0001",
        "opter_name": "bench",
        "inf_time": at.astimezone(CHINA).strftime("%Y-%m-%d %H:%M:%S"),
        "fixmedins_code": fixmedins,
        "fixmedins_name": "bench pharmacy",
        "input": {"selinfoDetail": rows} if infno == "3505A" else {"purcinfo": rows[0]},
    }


async def timed(client: httpx.AsyncClient, key: str, path: str, body: dict[str, Any]) -> tuple[float, Any]:
    content = json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    started = time.perf_counter()
    resp = await client.post(path, content=content, headers=headers)
    seconds = time.perf_counter() - started
    if resp.status_code != 200:
        raise RuntimeError(f"{path}: {resp.status_code} {resp.text}")
    return seconds, resp.json()


async def run(
    args: argparse.Namespace, database_url: str, workdir: Path
) -> dict[int, tuple[list[float], list[float], list[float]]]:
    env = dict(os.environ, TRACE_DATABASE_URL=database_url, TRACE_DATA_DIR=str(workdir / "data"))
    pool: asyncpg.Pool = await create_pool(database_url, min_size=1, max_size=1)
    async with pool.acquire() as conn:
        postmaster = procs.local_postmaster(await conn.fetchval("SELECT pg_backend_pid()"))
        last = await conn.fetchval(
            "SELECT max(code) FROM codes WHERE code LIKE $1", f"{AMOXICILLIN.product_id}%"
        )
    await pool.close()
    serial = int(last[7:]) + 1 if last else 1
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    out: dict[int, tuple[list[float], list[float], list[float]]] = {}
    port = localrun.free_port()
    server = localrun.start_service(env, port, workdir / "service.log")
    try:
        admin = localrun.create_admin_key(env)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=300) as client:
            keys = await register(client, admin, [M1], [AMOXICILLIN])
            for p in PHARMACIES:
                body = {"id": p.id, "name": p.id, "kind": p.kind, "region": p.region}
                if p.id == "P1":
                    body["fixmedins_code"] = FIXMEDINS
                await post(client, admin, "/v1/orgs", body)
                keys[p.id] = (await post(client, admin, "/v1/keys", {"role": "org", "org": p.id}))["secret"]
            for size in args.batches:
                for r in range(args.rounds):
                    sides = []
                    for p in PHARMACIES:
                        codes = [cn20(AMOXICILLIN.product_id, s) for s in range(serial, serial + size)]
                        serial += size
                        for ev in (
                            event(
                                "commission",
                                M1.id,
                                codes,
                                at,
                                lot="BENCH1",
                                expiry="2030-12-31",
                                produced="2025-01-15",
                            ),
                            event("ship", M1.id, codes, at + timedelta(seconds=1), to=p.id),
                        ):
                            await timed(client, keys[M1.id], "/v1/events", {"events": [ev]})
                        receive = event("receive", p.id, codes, at + timedelta(seconds=2))
                        await timed(client, keys[p.id], "/v1/events", {"events": [receive]})
                        sides.append(codes)
                    bought = at + timedelta(seconds=2)
                    purchase = envelope([purchase_row(size, bought, f"B{size}R{r}P")], bought, "3503")
                    _, answer = await timed(client, keys["P1"], "/v1/nhsa", purchase)
                    if answer["infcode"] != 0:
                        raise RuntimeError(f"nhsa 3503: {answer}")
                    sold = at + timedelta(seconds=3)
                    requests = [
                        ("P1", "/v1/nhsa", envelope(sale_rows(sides[0], sold, f"B{size}R{r}N"), sold)),
                        (
                            "P2",
                            "/v1/events",
                            {"events": [event("dispense", "P2", [c], sold) for c in sides[1]]},
                        ),
                        ("P3", "/v1/events", {"events": [event("dispense", "P3", sides[2], sold)]}),
                    ]
                    # the sides take turns going first (odd rounds: the other way round), so
                    # that none always follows the purchase upload, or another side
                    took: dict[int, float] = {}
                    for i in range(3) if r % 2 == 0 else range(2, -1, -1):
                        org, path, body = requests[i]
                        took[i], answer = await timed(client, keys[org], path, body)
                        if path == "/v1/nhsa":
                            tracecode = answer["output"]["tracecode"]
                            if tracecode["accepted"] != size or tracecode["flags"]:
                                raise RuntimeError(f"nhsa: {answer}")
                        elif answer["accepted"] != size:
                            raise RuntimeError(f"events: {answer}")
                    t_nhsa, t_sales, t_one = took[0], took[1], took[2]
                    for times, t in zip(
                        out.setdefault(size, ([], [], [])), (t_nhsa, t_sales, t_one), strict=True
                    ):
                        times.append(t)
                    at += timedelta(minutes=1)
                    print(f"batch {size}: round {r + 1}/{args.rounds} done", file=sys.stderr)
            if args.tills:
                cpu = (server.pid, postmaster)
                args.till_results = await tills(client, admin, keys[M1.id], args, serial, at, cpu)
    finally:
        localrun.stop_service(server)
    return out


def till_code(i: int) -> str:
    """The NHSA institution code of the i-th till's pharmacy (``--tills``)."""
    return f"P450199{i:05d}"


async def tills(
    client: httpx.AsyncClient,
    admin: str,
    maker: str,
    args: argparse.Namespace,
    serial: int,
    at: datetime,
    pids: tuple[int, int | None],
) -> dict[str, list[float]]:
    """``--tills``: codes/s of C pharmacies selling at once, one pack per request, each
    side in its own phase; and the CPU seconds per request of the service, of PostgreSQL
    (``pids``: their process trees) and of the client, each side."""
    keys: dict[str, str] = {}
    for side in ("N", "E"):
        for i in range(args.tills):
            org = f"T{i}{side}"
            body = {"id": org, "name": org, "kind": "pharmacy", "region": "450103"}
            if side == "N":
                body["fixmedins_code"] = till_code(i)
            await post(client, admin, "/v1/orgs", body)
            keys[org] = (await post(client, admin, "/v1/keys", {"role": "org", "org": org}))["secret"]
    out: dict[str, list[float]] = {"nhsa": [], "events": [], "client_cpu": []}
    for side in ("nhsa", "events"):
        out[f"{side}_service_cpu"], out[f"{side}_postgres_cpu"] = [], []
    for r in range(args.rounds):
        for side in ("nhsa", "events") if r % 2 == 0 else ("events", "nhsa"):
            orgs = [f"T{i}{side[0].upper()}" for i in range(args.tills)]
            codes = [[cn20(AMOXICILLIN.product_id, serial + n * args.per + j) for j in range(args.per)]
                     for n in range(args.tills)]  # fmt: skip
            serial += args.per * args.tills
            every = [c for till in codes for c in till]
            made = event("commission", M1.id, every, at, lot="BENCH1", expiry="2030-12-31")
            await timed(client, maker, "/v1/events", {"events": [made]})
            bought = at + timedelta(seconds=2)
            sales = []
            for i, org in enumerate(orgs):
                shipped = event("ship", M1.id, codes[i], at, to=org)
                await timed(client, maker, "/v1/events", {"events": [shipped]})
                received = event("receive", org, codes[i], bought)
                await timed(client, keys[org], "/v1/events", {"events": [received]})
                times = [bought + timedelta(seconds=1 + k) for k in range(args.per)]
                if side == "nhsa":
                    row = purchase_row(args.per, bought, f"{org}R{r}")
                    stock = envelope([row], bought, "3503", till_code(i))
                    _, answer = await timed(client, keys[org], "/v1/nhsa", stock)
                    if answer["infcode"] != 0:
                        raise RuntimeError(f"nhsa 3503: {answer}")
                    bodies = [single_sale(c, t, f"{org}R{r}S{k}", till_code(i))
                              for k, (c, t) in enumerate(zip(codes[i], times, strict=True))]  # fmt: skip
                    sales.append((keys[org], "/v1/nhsa", bodies))
                else:
                    bodies = [{"events": [event("dispense", org, [c], t)]}
                              for c, t in zip(codes[i], times, strict=True)]  # fmt: skip
                    sales.append((keys[org], "/v1/events", bodies))
            trees = [procs.tree_cpu(pid) or 0.0 for pid in pids]
            cpu, started = time.process_time(), time.perf_counter()
            await asyncio.gather(*(sell(client, key, path, bodies) for key, path, bodies in sales))
            seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
            service, postgres = ((procs.tree_cpu(pid) or 0.0) - t for pid, t in zip(pids, trees, strict=True))
            out[side].append(len(every) / seconds)
            out["client_cpu"].append(cpu / len(every))
            out[f"{side}_service_cpu"].append(service / len(every))
            out[f"{side}_postgres_cpu"].append(postgres / len(every))
            at += timedelta(seconds=args.per + 10)
        print(f"tills: round {r + 1}/{args.rounds} done", file=sys.stderr)
    return out


async def sell(client: httpx.AsyncClient, key: str, path: str, bodies: list[dict[str, Any]]) -> None:
    """One till: its sales one after another, each taken."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    for content in [json.dumps(b).encode() for b in bodies]:
        resp = await client.post(path, content=content, headers=headers)
        answer = resp.json()
        taken = answer["output"]["tracecode"]["accepted"] if path == "/v1/nhsa" else answer.get("accepted")
        if resp.status_code != 200 or taken != 1:
            raise RuntimeError(f"{path}: {resp.status_code} {resp.text}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batches", default="1,10,100,1000", help="codes per request, comma-separated")
    p.add_argument("--tills", type=int, default=0, help="pharmacies selling at once (0: no such phase)")
    p.add_argument("--per", type=int, default=30, help="--tills: single sales per pharmacy and round")
    p.add_argument("--database-url", default=None)
    args = p.parse_args()
    args.till_results = None
    args.batches = [int(b) for b in args.batches.split(",") if b.strip()]
    timings = localrun.run_bench(
        args.database_url, "tracecode-bench-nhsa-", lambda url, workdir: run(args, url, workdir)
    )
    print(
        "| batch | /v1/nhsa 3505A codes/s | /v1/events, the same sales | nhsa / events"
        " | /v1/events, one event of all codes | nhsa / one event |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for size, sides in timings.items():
        nhsa, sales, one = (statistics.median(size / s for s in times) for times in sides)
        print(
            f"| {size:,} | {nhsa:,.0f} | {sales:,.0f} | {100 * nhsa / sales:.0f}%"
            f" | {one:,.0f} | {100 * nhsa / one:.0f}% |"
        )
    if args.till_results:
        got = args.till_results
        nhsa, sales = statistics.median(got["nhsa"]), statistics.median(got["events"])
        rounds = ", ".join(f"{100 * n / e:.0f}%" for n, e in zip(got["nhsa"], got["events"], strict=True))

        def ms(key: str) -> str:
            return f"{1000 * statistics.median(got[key]):.2f}"

        print(
            f"\n{args.tills} pharmacies at once, single sales: /v1/nhsa {nhsa:,.0f} codes/s, "
            f"/v1/events {sales:,.0f} codes/s, nhsa / events {100 * nhsa / sales:.0f}% (rounds: {rounds})\n"
            f"CPU ms a sale, nhsa / events: service {ms('nhsa_service_cpu')} / {ms('events_service_cpu')}, "
            f"PostgreSQL {ms('nhsa_postgres_cpu')} / {ms('events_postgres_cpu')}; client {ms('client_cpu')}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
