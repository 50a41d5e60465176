"""Talking to a running service as its clients do: JSON over HTTP with a bearer key.
Registry set-up (organisations, products, keys) and the request bodies the benchmarks send."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

import httpx

from service.core.settlement import Claim, document


async def post(client: httpx.AsyncClient, key: str, path: str, body: Mapping[str, Any]) -> Any:
    """POST ``body`` as JSON with ``key``; the decoded answer. Any status but 200 or 201
    raises RuntimeError with the answer's text."""
    resp = await client.post(path, json=body, headers={"Authorization": f"Bearer {key}"})
    if resp.status_code not in (200, 201):
        raise RuntimeError(f"POST {path}: {resp.status_code} {resp.text[:1000]}")
    return resp.json()


@dataclass(frozen=True, slots=True)
class Org:
    id: str
    kind: str  # manufacturer, distributor, pharmacy, hospital
    region: str


@dataclass(frozen=True, slots=True)
class Product:
    product_id: str
    name: str
    med_list_codg: str
    pack_units: int
    manufacturer: str
    regions: tuple[str, ...] = ()


# The benchmarks' product: packs of 24, made by M1, sold in region 45.
AMOXICILLIN = Product("8123456", "Amoxicillin 0.25g x 24", "XJ01CAA040A001010104256", 24, "M1", ("45",))


def org_body(org: Org) -> dict[str, Any]:
    """The ``POST /v1/orgs`` body that registers ``org``."""
    return {"id": org.id, "name": f"{org.id} Ltd", "kind": org.kind, "region": org.region}


def product_body(p: Product) -> dict[str, Any]:
    """The ``POST /v1/products`` body that registers ``p``."""
    return {
        "product_id": p.product_id,
        "name": p.name,
        "med_list_codg": p.med_list_codg,
        "pack_units": p.pack_units,
        "manufacturer": p.manufacturer,
        "regions": list(p.regions),
    }


async def register(
    client: httpx.AsyncClient,
    admin: str,
    orgs: Iterable[Org],
    products: Iterable[Product],
    *,
    insurer: bool = False,
) -> dict[str, str]:
    """Register ``orgs`` and ``products`` with the ``admin`` key; return a new org key for
    each org (by org id) and, with ``insurer``, an insurer key under ``"insurer"``."""
    orgs = list(orgs)
    for org in orgs:
        await post(client, admin, "/v1/orgs", org_body(org))
    for p in products:
        await post(client, admin, "/v1/products", product_body(p))
    keys = {
        org.id: (await post(client, admin, "/v1/keys", {"role": "org", "org": org.id}))["secret"]
        for org in orgs
    }
    if insurer:
        keys["insurer"] = (await post(client, admin, "/v1/keys", {"role": "insurer"}))["secret"]
    return keys


def event(type_: str, org: str, codes: Sequence[str], at: date | str, **fields: Any) -> dict[str, Any]:
    """One event of a ``POST /v1/events`` body, with a new event id. ``fields`` are the
    type's own (``to``, ``lot``, ``expiry``, ...), named as in the JSON except ``from_org``
    (as in ``service.core.events.Incoming``) for ``from``, a Python keyword. Dates and
    times go as ISO 8601."""
    values = {"at": at, **fields}
    if "from_org" in values:
        values["from"] = values.pop("from_org")
    return {
        "event_id": str(uuid.uuid4()),
        "type": type_,
        "org": org,
        "codes": list(codes),
        **{k: v.isoformat() if isinstance(v, date) else v for k, v in values.items()},
    }


def claim_body(claim: Claim) -> dict[str, Any]:
    """The ``POST /v1/settlements`` body that the API reads back as ``claim``."""
    return document(claim)
