"""Test helpers: an API client bound to one key, and builders for realistic data."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from litestar.testing import AsyncTestClient

from benchkit import codes
from benchkit.codes import cn20 as cn20  # the tests' CN20 codes: the one generator

BASE_TIME = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def at(minutes: float) -> str:
    """An RFC 3339 time ``minutes`` after a fixed base time."""
    return (BASE_TIME + timedelta(minutes=minutes)).isoformat()


def sscc(serial: int, prefix: str = "06901234") -> str:
    """A valid SSCC, canonical form ``00`` + 18 digits (extension digit + company
    prefix + serial reference + check digit)."""
    return codes.sscc(prefix, serial)


def eid() -> str:
    return str(uuid.uuid4())


@dataclass
class Api:
    client: AsyncTestClient  # type: ignore[type-arg]
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    async def get(self, path: str, **params: Any) -> Any:
        return await self.client.get(path, headers=self.headers, params=params or None)

    async def post(self, path: str, body: Any) -> Any:
        return await self.client.post(path, headers=self.headers, json=body)

    async def ok(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        if method == "GET":
            resp = await self.get(path)
        elif method == "POST":
            resp = await self.post(path, body)
        else:
            resp = await self.client.request(method, path, headers=self.headers, json=body)
        assert resp.status_code == status, (resp.status_code, resp.text)
        return resp.json()

    async def key_for(self, role: str, org: str | None = None) -> Api:
        body: dict[str, Any] = {"role": role}
        if org:
            body["org"] = org
        out = await self.ok("POST", "/v1/keys", body, 201)
        return Api(self.client, out["secret"])

    async def events(self, *events: dict[str, Any]) -> Any:
        return await self.ok("POST", "/v1/events", {"events": list(events)})


def event(type_: str, org: str, codes: list[str], minutes: float, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event_id": eid(),
        "type": type_,
        "at": at(minutes),
        "org": org,
        "codes": codes,
    }
    body.update(extra)
    return body


async def small_world(admin: Api) -> dict[str, Any]:
    """A manufacturer, two distributors, a pharmacy and a hospital in region 450100,
    a pharmacy elsewhere, a unit product (24 units a pack) and its case product."""
    orgs = [
        ("M1", "manufacturer", "450100"),
        ("D1", "distributor", "450100"),
        ("D2", "distributor", "450200"),
        ("P1", "pharmacy", "450103"),
        ("H1", "hospital", "450102"),
        ("P9", "pharmacy", "110101"),
    ]
    for org_id, kind, region in orgs:
        await admin.ok(
            "POST",
            "/v1/orgs",
            {"id": org_id, "name": f"{org_id} Ltd", "kind": kind, "region": region},
            201,
        )
    await admin.ok(
        "POST",
        "/v1/products",
        {
            "product_id": "8123456",
            "name": "Amoxicillin 0.25g x 24",
            "med_list_codg": "XJ01CAA040A001010104256",
            "pack_units": 24,
            "manufacturer": "M1",
            "regions": ["45"],
        },
        201,
    )
    await admin.ok(
        "POST",
        "/v1/products",
        {
            "product_id": "8123457",
            "name": "Amoxicillin case of 10",
            "med_list_codg": "XJ01CAA040A001010104256-C",
            "pack_units": 240,
            "manufacturer": "M1",
            "level": "case",
            "contains": 10,
        },
        201,
    )
    keys = {org_id: await admin.key_for("org", org_id) for org_id, _, _ in orgs}
    return {"keys": keys, "unit": "8123456", "case": "8123457"}


async def world(admin: Api) -> dict[str, Any]:
    """:func:`small_world`, with an investigator's and an insurer's key."""
    w = await small_world(admin)
    w["inv"] = await admin.key_for("investigator")
    w["insurer"] = await admin.key_for("insurer")
    return w


async def received(
    w: dict[str, Any], org: str, serials: list[int], *, product: str | None = None, lot: str = "L1"
) -> list[str]:
    """Packs of the world's product (or ``product``; these serials, lot ``lot``)
    commissioned by M1, shipped to ``org`` and received there (minutes 0 to 2); their
    codes."""
    codes = [cn20(product or w["unit"], s) for s in serials]
    await w["keys"]["M1"].events(
        event("commission", "M1", codes, 0, lot=lot, expiry="2030-12-31"),
        event("ship", "M1", codes, 1, to=org),
    )
    await w["keys"][org].events(event("receive", org, codes, 2))
    return codes


async def lot_with_packs_sold_destroyed_and_on_their_way(w: dict[str, Any], lot: str) -> None:
    """Eight packs of ``lot``: two at M1 (never shipped); at D1 one on the shelf, one
    destroyed, one shipped to H1 and not received yet; at P1 one sold out, one part sold
    (10 of 24 units) and one on the shelf."""
    m, d1, p1 = (w["keys"][org] for org in ("M1", "D1", "P1"))
    codes = [cn20(w["unit"], 700 + i) for i in range(8)]
    await m.events(
        event("commission", "M1", codes, 0, lot=lot, expiry="2030-01-01"),
        event("ship", "M1", codes[2:], 1, to="D1"),
    )
    await d1.events(event("receive", "D1", codes[2:], 2), event("ship", "D1", codes[2:5], 3, to="P1"))
    await p1.events(
        event("receive", "P1", codes[2:5], 4),
        event("dispense", "P1", [codes[2]], 5),
        event("dispense", "P1", [codes[3]], 5, quantity=10),
    )
    await d1.events(event("destroy", "D1", [codes[5]], 5), event("ship", "D1", [codes[6]], 5, to="H1"))


def shuffled(items: list[Any], seed: int) -> list[Any]:
    copy = list(items)
    random.Random(seed).shuffle(copy)
    return copy


async def until_waiting_on_a_lock(db: Any, what: str, sessions: int = 1) -> None:
    """Return once some database session (``sessions`` of them) waits on a lock (a
    statement that another connection's open transaction holds up); fail naming ``what``
    after 10 s. On Citus the coordinator's view of every node's sessions."""
    from tests.conftest import CITUS_URL

    activity = "citus_stat_activity" if CITUS_URL else "pg_stat_activity"
    for _ in range(500):
        if await db.fetchval(f"SELECT count(*) FROM {activity} WHERE wait_event_type = 'Lock'") >= sessions:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{what} never waited on the held row")


T = TypeVar("T")


async def sold_elsewhere_meanwhile(
    db: Any, db_url: str, code: str, request: Callable[[Any], Awaitable[T]], what: str
) -> T:
    """Run ``request(pool)`` (a use case on a pool of its own, as a request handler runs
    it: the in-process test client answers one request at a time) while another
    connection holds the row of the 24-unit pack ``code``. Once the request waits on that
    row, having read the pack as it was, the other connection sells the whole pack (and
    moves the row's version on, as every writer does) and commits. Returns what the
    request returned."""
    import asyncpg

    from service.store.db import create_pool

    pool = await create_pool(db_url, min_size=1, max_size=1)
    other = await asyncpg.connect(db_url)
    try:
        held = other.transaction()
        await held.start()
        await other.execute("SELECT 1 FROM codes WHERE code = $1 FOR UPDATE", code)
        sent = asyncio.create_task(request(pool))
        await until_waiting_on_a_lock(db, what)
        await other.execute("UPDATE codes SET units_left = 0, version = version + 1 WHERE code = $1", code)
        await other.execute(
            """INSERT INTO consumptions (code, sale_kind, sale_id, org, at, units)
               VALUES ($1, 'event', 'OTHER-SALE', 'P1', now(), 24)""",
            code,
        )
        await held.commit()
        return await sent
    finally:
        await other.close()
        await pool.close()


async def units_taken_once(db: Any, codes: list[str]) -> dict[str, int]:
    """Check that no 24-unit pack of ``codes`` gave more than its units and that what
    each has left is what its sales did not take; return the units taken from each."""
    consumed = {
        r["code"]: r["units"]
        for r in await db.fetch(
            "SELECT code, sum(units) AS units FROM consumptions WHERE reversed_at IS NULL GROUP BY code"
        )
    }
    left = {r["code"]: r["units_left"] for r in await db.fetch("SELECT code, units_left FROM codes")}
    for code in codes:
        assert consumed.get(code, 0) <= 24
        assert left[code] == 24 - consumed.get(code, 0)
    return {code: consumed.get(code, 0) for code in codes}


def pack_claim(
    setl_id: str,
    code: str,
    minutes: float,
    org: str = "P1",
    *,
    item: str = "XJ01CAA040A001010104256",
    split_units: int | None = None,
) -> dict[str, Any]:
    """A settlement (mode settle) of one whole pack of 24 units billed as ``item`` (the
    small world's unit product's), or with ``split_units`` a split line (拆零) of that
    many units of it."""
    line: dict[str, Any] = {"line_no": 1, "med_list_codg": item, "quantity": 24, "codes": [code]}
    if split_units is not None:
        line.update(quantity=split_units, split=True)
    return {
        "setl_id": setl_id,
        "org": org,
        "psn_no": "450103199001011234",
        "at": at(minutes),
        "mode": "settle",
        "lines": [line],
    }
