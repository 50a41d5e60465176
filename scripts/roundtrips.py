"""Count the database round trips of the service's write paths (settlement, reversal,
ingest, an NHSA sale), by running the use cases on a pool whose connections log every statement they
send (asyncpg's query logger; BEGIN and COMMIT included, a COPY counted as one). Registry
rows are cached by each process; the first operation reads them. asyncpg's one-time
look-ups of column types are not counted.

How to run (from the repository root)
    .venv/bin/python scripts/roundtrips.py [--database-url URL]

Without ``--database-url`` a throwaway embedded PostgreSQL is started and deleted at
exit. Prints one line per operation: its name, and the statements it sent.
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg

from benchkit.codes import cn20
from benchkit.localrun import migrate, throwaway_postgres
from service.core.events import Incoming
from service.core.rules import CHINA
from service.core.settlement import Claim, Line
from service.interop.nhsa import envelope as nhsa
from service.interop.nhsa import inventory, sales
from service.store.db import create_pool
from service.usecases import events, settlements
from service.usecases import nhsa as nhsa_usecase

PRODUCT = "8123456"
T0 = datetime(2026, 3, 2, tzinfo=UTC)
SECRET = b"roundtrips"


def code(serial: int) -> str:
    return cn20(PRODUCT, serial)


def event(type_: str, org: str, codes: list[str], minutes: float, **fields: Any) -> Incoming:
    return Incoming(
        event_id=uuid.uuid4(),
        type=type_,
        at=T0 + timedelta(minutes=minutes),
        org=org,
        codes=tuple(codes),
        **fields,
    )


FIXMEDINS = "P45010300001"


def upload(infno: str, wrapper: str, row: dict[str, Any], at: datetime) -> nhsa.Envelope:
    """An NHSA upload of one record by P1, in the platform's envelope."""
    when = at.astimezone(CHINA).strftime("%Y-%m-%d %H:%M:%S")
    return nhsa.parse(
        {"infno": infno, "msgid": f"{FIXMEDINS}202603020000000001", "mdtrtarea_admvs": "450103",
         "recer_sys_code": "YBXT", "infver": "V1.0", "opter_type": "1", "opter": "1", "opter_name": "Ph",
         "inf_time": when, "fixmedins_code": FIXMEDINS, "fixmedins_name": "Pharmacy",
         "input": {wrapper: {"med_list_codg": "XJ01", "fixmedins_hilist_id": "YP1",
                             "fixmedins_hilist_name": "Amoxicillin", "rx_flag": "1", **row}}}
    )  # fmt: skip


def sale_row(bchno: str, code_: str, at: datetime) -> dict[str, Any]:
    when = at.astimezone(CHINA).strftime("%Y-%m-%d %H:%M:%S")
    return {"fixmedins_bchno": bchno, "manu_lotnum": "L1", "manu_date": "2025-01-15", "prsc_dr_name": "Dr",
            "phar_name": "Ph", "phar_prac_cert_no": "YS1", "mdtrt_sn": "MD1", "rtal_docno": f"R{bchno}",
            "trdn_flag": "0", "sel_retn_cnt": 24, "sel_retn_time": when, "sel_retn_opter_name": "Ph",
            "drugtracinfo": [{"drug_trac_codg": code_}]}  # fmt: skip


def purchase_row(bchno: str, units: int, at: datetime) -> dict[str, Any]:
    when = at.astimezone(CHINA).strftime("%Y-%m-%d %H:%M:%S")
    return {"fixmedins_bchno": bchno, "manu_lotnum": "L1", "manu_date": "2025-01-15",
            "expy_end": "2030-12-31", "spler_name": "D", "prodentp_name": "M", "aprvno": "A",
            "purc_retn_cnt": units, "purc_retn_stoin_time": when, "purc_retn_opter_name": "Ph",
            "prod_geay_flag": "0"}  # fmt: skip


async def setup(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await conn.execute(
            f"""INSERT INTO orgs (id, name, kind, region, fixmedins_code) VALUES
               ('M1', 'Maker', 'manufacturer', '450300', NULL),
               ('P1', 'Pharmacy', 'pharmacy', '450103', '{FIXMEDINS}')"""  # noqa: S608
        )
        await conn.execute(
            """INSERT INTO products (product_id, name, med_list_codg, pack_units, manufacturer, regions)
               VALUES ($1, 'Amoxicillin', 'XJ01', 24, 'M1', '{45}')""",
            PRODUCT,
        )


async def main(database_url: str | None) -> None:
    database_url = database_url or throwaway_postgres("roundtrips-")
    await migrate(database_url)

    pool = await create_pool(database_url, min_size=1, max_size=1)
    sent: Counter[str] = Counter()

    def log(query: Any) -> None:
        if "typeinfo_tree" in query.query or "'jit'" in query.query:
            return  # asyncpg's own look-up of a type, once per connection
        sent[query.query.split(None, 1)[0].upper()] += 1

    async with pool.acquire() as conn:
        conn.add_query_logger(log)  # type: ignore[union-attr]
    # COPY does not pass through the query logger: count it on the way in
    copy = asyncpg.Connection.copy_records_to_table

    async def counted_copy(self: asyncpg.Connection, *args: Any, **kwargs: Any) -> str:
        sent["COPY"] += 1
        return await copy(self, *args, **kwargs)

    asyncpg.Connection.copy_records_to_table = counted_copy  # type: ignore[method-assign]
    await setup(pool)

    async def measure(name: str, work: Callable[[], Awaitable[object]]) -> None:
        sent.clear()
        await work()
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(sent.items()))
        print(f"{name:<58} {sum(sent.values()):>3}  ({kinds})")

    async def _ingest(batch: list[Incoming]) -> None:
        result = await events.ingest(pool, batch, [])
        assert result.accepted_events == len(batch), result

    lot = {"lot": "L1", "expiry": date(2028, 1, 1)}
    batch = [code(i) for i in range(1, 101)]
    await measure(
        "ingest: commission 100 codes", lambda: _ingest([event("commission", "M1", batch, 0, **lot)])
    )
    await measure(
        "ingest: ship 100 codes (in order)", lambda: _ingest([event("ship", "M1", batch, 10, to="P1")])
    )
    await measure(
        "ingest: receive 100 codes (in order)", lambda: _ingest([event("receive", "P1", batch, 20)])
    )
    await measure(
        "ingest: receive 1 code, late (replay)", lambda: _ingest([event("receive", "P1", [code(1)], 15)])
    )
    await measure(
        "ingest: dispense 1 code (in order)", lambda: _ingest([event("dispense", "P1", [code(2)], 30)])
    )
    await measure(
        "ingest: dispense 3 codes (in order)",
        lambda: _ingest([event("dispense", "P1", [code(3), code(4), code(5)], 31)]),
    )

    def claim(setl_id: str, codes: list[str], quantity: int, split: bool = False) -> Claim:
        line = Line(1, "XJ01", quantity, split, tuple(codes))
        return Claim(setl_id, "P1", "450103199001011234", T0 + timedelta(hours=1), "settle", (line,))

    await measure(
        "settle: 1 whole pack", lambda: settlements.settle(pool, claim("S1", [code(10)], 24), SECRET)
    )
    await measure(
        "settle: 1 split sale from a fresh pack",
        lambda: settlements.settle(pool, claim("S2", [code(11)], 6, True), SECRET),
    )
    await measure(
        "settle: 1 split sale from an opened pack",
        lambda: settlements.settle(pool, claim("S3", [code(11)], 6, True), SECRET),
    )
    await measure(
        "settle: replay of S1 (same body)",
        lambda: settlements.settle(pool, claim("S1", [code(10)], 24), SECRET),
    )
    await measure(
        "settle: refused (already settled)",
        lambda: settlements.settle(pool, claim("S4", [code(10)], 24), SECRET),
    )
    await measure("reversal of S1", lambda: settlements.reverse(pool, "S1"))

    async def _nhsa(env: nhsa.Envelope, translate: Any) -> None:
        records, errors = translate(env, "P1", T0 + timedelta(days=1), sales.id_namespace(SECRET))
        assert not errors, errors
        done = await nhsa_usecase.upload(pool, "P1", records, env.msgid, {"infno": env.infno}, T0)
        assert not done.result.flags, done.result

    bought = T0 + timedelta(hours=2)
    purchase = upload("3503", "purcinfo", purchase_row("B1", 240, bought), bought)
    await measure("nhsa: 3503 purchase (no codes)", lambda: _nhsa(purchase, inventory.translate))
    sold = T0 + timedelta(hours=3)
    sale = upload("3505", "selinfo", sale_row("S20", code(20), sold), sold)
    await measure("nhsa: 3505 sale of 1 pack", lambda: _nhsa(sale, sales.translate))
    await pool.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url")
    args = parser.parse_args()
    asyncio.run(main(args.database_url))
