"""Test helpers: an API client bound to one key, and builders for realistic data."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

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


def shuffled(items: list[Any], seed: int) -> list[Any]:
    copy = list(items)
    random.Random(seed).shuffle(copy)
    return copy
