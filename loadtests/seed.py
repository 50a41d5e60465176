"""Seed a realistic province-sized data set straight into PostgreSQL, fast (COPY), and
write the manifest the Locust users work from.

What it builds (all tables the service reads, consistent with each other, so verify,
settle and history behave exactly as they would after the events had come through the
API):

* organisations of one province (Guangdong, region prefix ``44``): pharmacies,
  hospitals, distributors, and manufacturers in and outside the province; products
  (unit level, CN20 product identifiers) with insurance catalogue codes, plus two
  trace-exempt ones; one API key per organisation and a few insurer, investigator and
  admin keys (``api_keys`` rows with the sha256 of the token, as ``tracecode key create``);
* ``--codes`` unit codes in production lots, packed into cases (SSCC), each case with a
  journey: still at the manufacturer, in transit to a distributor, in a distributor's
  stock, in transit to a hospital (whole case) or a pharmacy (loose packs, unpacked at
  the distributor), or received there. Of the packs at a pharmacy or hospital, 70% are
  on the shelf, 5% were opened for split-pack sales (拆零) and 25% were dispensed
  (``units_left`` 0), half of the sales settled by insurance (a ``settlements`` row)
  and half self-paid. ``codes`` rows hold the final state; ``events`` + ``event_codes``
  + ``containment`` + ``consumptions`` hold the journey, so histories are real;
* a handful of flags.

Every event lies in the past (up to ~4 months ago, the latest 2 hours ago), so what
the load test sends next is in event-time order.

The manifest (JSON) holds no base URL: keys by role and organisation, products, and
sample pools per organisation: packs on the shelf, opened packs, shipments in transit
to it, cases in stock, dispensed packs, codes for histories, and the range that
fresh serials for commissioning are drawn from.

Usage (from the repository root)::

    .venv/bin/python loadtests/seed.py --database-url URL [--codes 1000000]
        [--manifest loadtests/.data/manifest.json] [--pool-codes 300000] [--seed 1] [--truncate]

The URL defaults to ``TRACE_DATABASE_URL``. Migrations are applied first. The tables
must be empty unless ``--truncate`` is given (which empties every table but
``schema_migrations``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from benchkit.codes import cn20, sscc
from service.config import Settings
from service.core.flags import Evidence
from service.core.sales import Sale
from service.core.settlement import (
    Claim,
    Line,
    LineOutcome,
    answer,
    canonical_codes,
    fingerprints,
    person_hash,
    stored_request,
)
from service.store import codes as code_store
from service.store import registry as registry_store

HERE = Path(__file__).resolve().parent
DEFAULT_MANIFEST = HERE / ".data" / "manifest.json"

PROVINCE = "44"
# Guangdong's prefecture-level cities with a rough population weight (millions).
CITIES = [
    ("4401", 19),
    ("4403", 18),
    ("4419", 10),
    ("4406", 10),
    ("4452", 6),
    ("4405", 6),
    ("4408", 7),
    ("4409", 6),
    ("4413", 6),
    ("4407", 5),
    ("4412", 4),
    ("4418", 4),
    ("4414", 4),
    ("4402", 3),
    ("4420", 4),
    ("4404", 2),
    ("4416", 3),
    ("4417", 3),
    ("4415", 3),
    ("4451", 3),
    ("4453", 2),
]
OUTSIDE = ["310115", "320500", "330100", "370100", "110105", "510100", "130100", "420100", "120116"]
DRUGS = [
    ("J01CA04", "Amoxicillin capsules 0.25g"),
    ("M01AE01", "Ibuprofen sustained-release 0.3g"),
    ("A10BA02", "Metformin tablets 0.5g"),
    ("C08CA01", "Amlodipine tablets 5mg"),
    ("A02BC01", "Omeprazole enteric capsules 20mg"),
    ("J05AH02", "Oseltamivir capsules 75mg"),
    ("J01FA10", "Azithromycin tablets 0.25g"),
    ("J01DC02", "Cefuroxime axetil tablets 0.25g"),
    ("C10AA05", "Atorvastatin tablets 20mg"),
    ("C09CA01", "Losartan tablets 50mg"),
    ("N02BE01", "Paracetamol tablets 0.5g"),
    ("R05DA09", "Dextromethorphan syrup 100ml"),
    ("R06AE07", "Cetirizine tablets 10mg"),
    ("C07AB02", "Metoprolol tablets 25mg"),
    ("A10BB12", "Glimepiride tablets 2mg"),
    ("B01AC06", "Aspirin enteric tablets 100mg"),
    ("R03AC02", "Salbutamol inhaler 100ug"),
    ("J01MA12", "Levofloxacin tablets 0.5g"),
    ("ZA01AAL", "Lianhua Qingwen capsules 0.35g"),
    ("ZA04BAB", "Banlangen granules 10g"),
]
PACK_UNITS = [6, 10, 12, 14, 20, 24, 24, 28, 30, 36, 48, 60, 100]
CASE_SIZES = [10, 20, 20, 20, 20, 30, 40]

# Case journeys and their shares.
MFR_STOCK, TO_DIST, AT_DIST, TO_HOSP, TO_PHARM, AT_HOSP, AT_PHARM = range(7)
FATE_WEIGHTS = [0.04, 0.03, 0.10, 0.03, 0.03, 0.308, 0.462]
FORCED_FATES = [MFR_STOCK, TO_DIST, AT_DIST, TO_HOSP, TO_PHARM, AT_HOSP, AT_PHARM] * 3
SHELF, OPENED, DISPENSED = range(3)
UNIT_WEIGHTS = [0.70, 0.05, 0.25]

FRESH_SERIAL_MIN = 5_000_000_000_000  # seeded serials stay far below; load tests draw above
FRESH_SERIAL_MAX = 9_999_999_999_999

# The columns COPY writes, by table. consumptions and flags are built by consumption()
# and flag() just below: a change to those tables' columns is made in these three places.
COLUMNS: dict[str, tuple[str, ...]] = {
    "codes": code_store.COLUMNS,
    "events": (
        "event_id",
        "type",
        "at",
        "org",
        "to_org",
        "from_org",
        "parent",
        "lot",
        "expiry",
        "produced",
        "quantity",
        "setl_id",
        "ref",
        "code_count",
        "received_at",
    ),
    "event_codes": ("code", "at", "event_id", "role"),
    "containment": ("parent", "child"),
    "consumptions": ("code", "sale_kind", "sale_id", "setl_id", "event_id", "org", "at", "units"),
    "settlements": (
        "setl_id",
        "org",
        "psn_hash",
        "at",
        "body_hash",
        "request",
        "response",
        "decision",
    ),
    "flags": ("kind", "code", "org", "region", "at", "detail", "refs", "source_kind", "source_id", "status"),
}
C, P = b"c", b"p"  # event_codes roles


def consumption(
    code: str, setl_id: str | None, event_id: uuid.UUID, org: str, at: datetime, units: int
) -> tuple[Any, ...]:
    """A ``consumptions`` row in COLUMNS order. The sale is its settlement when it has
    one, else its dispense event (``service.core.sales.Sale.of_dispense``)."""
    sale = Sale.of_dispense(event_id, setl_id)
    return (code, sale.kind, sale.id, setl_id, None if setl_id else event_id, org, at, units)


def flag(
    kind: str, code: str, org: str, region: str, at: datetime, detail: str, setl_id: str, status: str
) -> tuple[Any, ...]:
    """A ``flags`` row in COLUMNS order, raised by settlement ``setl_id`` (its evidence)."""
    evidence = Evidence.settlement(setl_id)
    refs = json.dumps({"settlements": [setl_id]})
    return (kind, code, org, region, at, detail, refs, evidence.kind, evidence.id, status)


def settlement(secret: bytes, claim: Claim) -> tuple[Any, ...]:
    """The ``settlements`` row of ``claim`` accepted in full, as the service stores it:
    the person and body hashes are the service's own (``service.core.settlement``), so
    the same claim sent to the API again is a replay and gets this answer back."""
    # every line payable, drawing its quantity (the codes' split is not shown in answers)
    paid = [LineOutcome(ln.line_no, True, takes=[("", ln.quantity)]) for ln in claim.lines]
    psn_hash = person_hash(secret, claim.psn_no)
    return (
        claim.setl_id,
        claim.org,
        psn_hash,
        claim.at,
        fingerprints(secret, claim, canonical_codes(claim))[0],
        json.dumps(stored_request(claim, psn_hash)),
        json.dumps(answer(claim.setl_id, paid, [])),
        "accepted",
    )


def pack(
    code: str,
    product: Product,
    commission_event: uuid.UUID,
    lot: tuple[str, date, date],
    parent: str | None,
    state: str,
    holder: str,
    destination: str | None,
    units_left: int,
    last_at: datetime,
) -> tuple[Any, ...]:
    """A pack's ``codes`` row (service.store.codes.COLUMNS order); ``lot`` is (lot,
    expiry, produced). ``sold_at`` is left empty: it only makes a custody event dated
    before a seeded settlement replay the history, which the load never sends."""
    lot_no, expiry, produced = lot
    return (
        code,
        "cn20",
        product.product_id,
        True,
        product.manufacturer,
        commission_event,
        lot_no,
        expiry,
        produced,
        parent,
        state,
        holder,
        destination,
        product.pack_units,
        units_left,
        False,
        last_at,
        None,
    )


def event(
    type_: str,
    event_id: uuid.UUID,
    at: datetime,
    org: str,
    count: int,
    *,
    to: str | None = None,
    from_: str | None = None,
    parent: str | None = None,
    lot: str | None = None,
    expiry: date | None = None,
    produced: date | None = None,
    quantity: int | None = None,
    setl_id: str | None = None,
) -> tuple[Any, ...]:
    """An ``events`` row in COLUMNS order; uploaded a few minutes after the fact."""
    return (
        event_id,
        type_,
        at,
        org,
        to,
        from_,
        parent,
        lot,
        expiry,
        produced,
        quantity,
        setl_id,
        None,
        count,
        at + timedelta(minutes=3),
    )


@dataclass
class Org:
    id: str
    kind: str
    region: str
    name: str
    key: str = ""


@dataclass
class Product:
    product_id: str
    name: str
    med_list_codg: str
    pack_units: int
    contains: int
    manufacturer: str
    regions: list[str]
    trace_exempt: bool = False
    next_serial: int = 1


@dataclass
class Pools:
    """What the manifest samples, per organisation."""

    stock: dict[str, list[str]] = field(default_factory=dict)
    opened: dict[str, list[list[Any]]] = field(default_factory=dict)
    incoming: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    cases: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    dispensed: list[list[str]] = field(default_factory=list)
    history: list[str] = field(default_factory=list)
    codes: int = 0

    def add(self, table: dict[str, list[Any]], org: str, item: Any, size: int) -> None:
        table.setdefault(org, []).append(item)
        self.codes += size


class Sink:
    """Per-table row buffers, flushed with COPY on one connection per table, all tables
    at once (so PostgreSQL works on several while Python builds the next chunk)."""

    def __init__(self, conns: dict[str, asyncpg.Connection], chunk: int) -> None:
        self.conns = conns
        self.chunk = chunk
        self.rows: dict[str, list[tuple[Any, ...]]] = {t: [] for t in COLUMNS}
        self.counts: dict[str, int] = dict.fromkeys(COLUMNS, 0)

    def full(self) -> bool:
        return any(len(rows) >= self.chunk for rows in self.rows.values())

    async def flush(self) -> None:
        jobs = []
        for table, rows in self.rows.items():
            if rows:
                if table in ("codes", "event_codes", "containment", "consumptions"):
                    rows.sort()  # key order: B-tree inserts stay local (about 1.5x faster here)
                self.counts[table] += len(rows)
                jobs.append(
                    self.conns[table].copy_records_to_table(table, records=rows, columns=COLUMNS[table])
                )
                self.rows[table] = []
        await asyncio.gather(*jobs)


class Seeder:
    def __init__(self, codes: int, seed: int, pool_codes: int, now: datetime, psn_secret: bytes) -> None:
        self.n = codes
        self.psn_secret = psn_secret
        self.rng = random.Random(seed)
        self.now = now
        self.latest = now - timedelta(hours=2)
        self.pool_codes = pool_codes
        self.orgs: dict[str, Org] = {}
        self.products: list[Product] = []
        self.exempt: list[Product] = []
        self.keys: dict[str, list[str]] = {"insurer": [], "investigator": [], "admin": []}
        self.key_rows: list[tuple[str, bytes, str, str | None]] = []
        self.pools = Pools()
        self.sscc_next: dict[str, int] = {}
        self.company: dict[str, str] = {}
        self.fate_count = 0
        # sampling probabilities, by pool (expected codes in each category vs its budget)
        b = pool_codes
        self.p_stock = min(1.0, 0.55 * b / max(1.0, 0.539 * codes))
        self.p_opened = min(1.0, 0.05 * b / max(1.0, 0.0385 * codes))
        self.p_incoming = min(1.0, 0.15 * b / max(1.0, 0.06 * codes))
        self.p_cases = min(1.0, 0.12 * b / max(1.0, 0.10 * codes))
        self.p_to_dist = min(1.0, 0.06 * b / max(1.0, 0.03 * codes))
        self.p_mfr = min(1.0, 0.05 * b / max(1.0, 0.04 * codes))
        self.p_dispensed = min(1.0, 5_000 / max(1.0, 0.19 * codes))
        self.p_history = min(1.0, 5_000 / max(1.0, 1.05 * codes))
        self.p_flag = 0.0005

    # --- registry -------------------------------------------------------------------

    def _uuid(self) -> uuid.UUID:
        return uuid.UUID(int=self.rng.getrandbits(128), version=4)

    def _key(self, role: str, org: str | None) -> str:
        from service.core.auth import new_key, token_hash

        key_id, secret = new_key()
        self.key_rows.append((key_id, token_hash(secret), role, org))
        return secret

    def _region(self) -> str:
        city = self.rng.choices([c for c, _ in CITIES], weights=[w for _, w in CITIES])[0]
        return f"{city}{self.rng.randint(1, 12):02d}"

    def build_registry(self) -> None:
        rng = self.rng
        n_pharm = min(20_000, max(4, self.n // 2_000))
        n_hosp = max(2, n_pharm // 5)
        n_dist = max(2, n_pharm // 25)
        n_mfr = max(2, n_pharm // 20)
        for i in range(1, n_mfr + 1):
            region = self._region() if rng.random() < 0.7 else rng.choice(OUTSIDE)
            org = Org(f"M{i:04d}", "manufacturer", region, f"Manufacturer {i} Pharmaceutical Co.")
            self.orgs[org.id] = org
            self.company[org.id] = f"69{i:05d}"
            self.sscc_next[org.id] = 1
        for i in range(1, n_dist + 1):
            org = Org(f"D{i:04d}", "distributor", self._region(), f"Distributor {i} Pharma Logistics")
            self.orgs[org.id] = org
        for i in range(1, n_hosp + 1):
            org = Org(f"H{i:05d}", "hospital", self._region(), f"Hospital {i}")
            self.orgs[org.id] = org
        for i in range(1, n_pharm + 1):
            org = Org(f"P{i:05d}", "pharmacy", self._region(), f"Pharmacy {i}")
            self.orgs[org.id] = org
        for org in self.orgs.values():
            org.key = self._key("org", org.id)
        for role, count in (("insurer", 4), ("investigator", 2), ("admin", 1)):
            self.keys[role] = [self._key(role, None) for _ in range(count)]

        serial = 100_000
        for m in (o for o in self.orgs.values() if o.kind == "manufacturer"):
            for _ in range(8):
                atc, name = rng.choice(DRUGS)
                units = rng.choice(PACK_UNITS)
                serial += 1
                self.products.append(
                    Product(
                        product_id=f"8{serial:06d}",
                        name=f"{name} x {units}",
                        med_list_codg=f"X{atc}{serial:06d}{units:03d}{m.id[1:]}",
                        pack_units=units,
                        contains=rng.choice(CASE_SIZES),
                        manufacturer=m.id,
                        regions=[PROVINCE] if rng.random() < 0.1 else [],
                    )
                )
        first = next(o for o in self.orgs.values() if o.kind == "manufacturer")
        for name in ("Decoction pieces (中药饮片) Huangqi 10g", "Decoction pieces (中药饮片) Danggui 10g"):
            serial += 1
            self.exempt.append(
                Product(f"8{serial:06d}", name, f"T{serial:06d}EXEMPT", 1, 1, first.id, [], True)
            )

    def registry_rows(self) -> dict[str, list[tuple[Any, ...]]]:
        return {
            "orgs": [(o.id, o.name, o.kind, o.region) for o in self.orgs.values()],
            "products": [
                (
                    p.product_id,
                    p.name,
                    p.med_list_codg,
                    p.pack_units,
                    p.manufacturer,
                    "unit",
                    None,
                    p.regions,
                    p.trace_exempt,
                )
                for p in [*self.products, *self.exempt]
            ],
            "api_keys": self.key_rows,
        }

    # --- codes and their journeys -----------------------------------------------------

    def lots(self) -> Iterator[tuple[Product, int]]:
        """(product, units) of successive production lots until --codes units exist."""
        weights = [1 / (rank + 1) ** 0.8 for rank in range(len(self.products))]
        order = self.products[:]
        self.rng.shuffle(order)
        left = self.n
        while left > 0:
            product = self.rng.choices(order, weights=weights)[0]
            units = min(left, product.contains * self.rng.randint(10, 100))
            left -= units
            yield product, units

    def _fate(self) -> int:
        self.fate_count += 1
        if self.fate_count <= len(FORCED_FATES):
            return FORCED_FATES[self.fate_count - 1]
        return self.rng.choices(range(7), weights=FATE_WEIGHTS)[0]

    def lot_rows(self, sink: Sink, product: Product, units: int) -> None:
        rng, rows = self.rng, sink.rows
        codes_rows, ec, ev = rows["codes"], rows["event_codes"], rows["events"]
        mfr = product.manufacturer
        dists = [o.id for o in self.orgs.values() if o.kind == "distributor"]
        hosps = self._hospitals
        pharms = self._pharmacies
        dist = rng.choice(dists)
        t0 = self.now - timedelta(days=rng.uniform(15, 120))
        span = self.latest - t0

        def at(fraction: float) -> datetime:
            return t0 + span * fraction

        pu = product.pack_units
        produced = (t0 - timedelta(days=rng.randint(1, 10))).date()
        expiry = date(produced.year + rng.choice((2, 3)), produced.month, 1) - timedelta(days=1)
        lot = f"L{produced:%y%m%d}{rng.randint(0, 999):03d}"
        first = product.next_serial
        product.next_serial += units
        units_codes = [cn20(product.product_id, s) for s in range(first, first + units)]

        # commission, in uploads of up to 5,000 codes
        commission_of: list[tuple[uuid.UUID, datetime]] = []
        for i in range(0, units, 5_000):
            chunk = units_codes[i : i + 5_000]
            eid, t = self._uuid(), t0 + timedelta(seconds=i // 5_000)
            ev.append(event("commission", eid, t, mfr, len(chunk), lot=lot, expiry=expiry, produced=produced))
            ec.extend((c, t, eid, C) for c in chunk)
            commission_of.extend([(eid, t)] * len(chunk))

        # cases: pack, then each case's journey
        cases = [units_codes[i : i + product.contains] for i in range(0, units, product.contains)]
        fates = [self._fate() for _ in cases]
        company = self.company[mfr]
        main_ship = [i for i, f in enumerate(fates) if f >= AT_DIST]
        to_dist = [i for i, f in enumerate(fates) if f == TO_DIST]
        t_ship1, t_recv1 = at(0.10), at(0.15)
        t_ship_late = at(rng.uniform(0.85, 0.95))
        ship1, recv1, ship_late = self._uuid(), self._uuid(), self._uuid()
        if main_ship:
            ev.append(event("ship", ship1, t_ship1, mfr, len(main_ship), to=dist))
            ev.append(event("receive", recv1, t_recv1, dist, len(main_ship), from_=mfr))
        if to_dist:
            ev.append(event("ship", ship_late, t_ship_late, mfr, len(to_dist), to=dist))
        incoming_dist: list[dict[str, Any]] = []

        for ci, (members, fate) in enumerate(zip(cases, fates, strict=True)):
            serial = self.sscc_next[mfr]
            self.sscc_next[mfr] = serial + 1
            case = sscc("0" + company, serial)
            pack_id, t_pack = self._uuid(), t0 + timedelta(minutes=10, seconds=2 * ci)
            ev.append(event("pack", pack_id, t_pack, mfr, len(members), parent=case))
            ec.extend((c, t_pack, pack_id, C) for c in members)
            ec.append((case, t_pack, pack_id, P))
            rows["containment"].extend((case, c) for c in members)

            # where the case (and so its packs) is, and what happened last
            case_state, case_holder, case_dest, case_last = "commissioned", mfr, None, t_pack
            unit_parent: str | None = case
            dest: str | None = None
            t_ship2 = t_recv2 = None
            if fate == TO_DIST:
                ec.append((case, t_ship_late, ship_late, C))
                case_state, case_dest, case_last = "in_transit", dist, t_ship_late
            elif fate >= AT_DIST:
                ec.append((case, t_ship1, ship1, C))
                ec.append((case, t_recv1, recv1, C))
                case_state, case_holder, case_last = "received", dist, t_recv1
            if fate in (TO_HOSP, TO_PHARM, AT_HOSP, AT_PHARM):
                dest = rng.choice(hosps if fate in (TO_HOSP, AT_HOSP) else pharms)
                recent = fate in (TO_HOSP, TO_PHARM)
                t_ship2 = at(rng.uniform(0.85, 0.97) if recent else rng.uniform(0.2, 0.4))
                loose = fate in (TO_PHARM, AT_PHARM)
                ship2 = self._uuid()
                shipped = members if loose else [case]
                if loose:
                    unpack, t_unpack = self._uuid(), t_ship2 - timedelta(minutes=30)
                    ev.append(event("unpack", unpack, t_unpack, dist, len(members), parent=case))
                    ec.extend((c, t_unpack, unpack, C) for c in members)
                    ec.append((case, t_unpack, unpack, P))
                    unit_parent, case_last = None, t_unpack
                else:
                    case_state, case_dest, case_last = "in_transit", dest, t_ship2
                ev.append(event("ship", ship2, t_ship2, dist, len(shipped), to=dest))
                ec.extend((c, t_ship2, ship2, C) for c in shipped)
                if not recent:
                    recv2, t_recv2 = self._uuid(), t_ship2 + span * rng.uniform(0.01, 0.05)
                    ev.append(event("receive", recv2, t_recv2, dest, len(shipped), from_=dist))
                    ec.extend((c, t_recv2, recv2, C) for c in shipped)
                    if not loose:
                        case_state, case_holder, case_dest, case_last = "received", dest, None, t_recv2
            codes_rows.append(
                (
                    case,
                    "sscc",
                    None,
                    True,
                    mfr,
                    pack_id,
                    None,
                    None,
                    None,
                    None,
                    case_state,
                    case_holder,
                    case_dest,
                    None,
                    None,
                    False,
                    case_last,
                    None,
                )
            )
            if rng.random() < self.p_history:
                self.pools.history.append(case)

            # the packs
            if fate in (AT_HOSP, AT_PHARM):
                assert dest is not None
                assert t_recv2 is not None
                self._shelf_and_sales(
                    sink,
                    product,
                    members,
                    commission_of,
                    first,
                    unit_parent,
                    dest,
                    t_recv2,
                    lot,
                    expiry,
                    produced,
                    span,
                )
                continue
            if fate in (TO_HOSP, TO_PHARM):
                state, holder, udest, last = "in_transit", dist, dest, t_ship2
            elif fate == TO_DIST:
                state, holder, udest, last = "in_transit", mfr, dist, t_ship_late
            elif fate == AT_DIST:
                state, holder, udest, last = "received", dist, None, t_recv1
            else:
                state, holder, udest, last = "commissioned", mfr, None, t_pack
            for c in members:
                eid, _ = commission_of[int(c[7:]) - first]
                batch = (lot, expiry, produced)
                codes_rows.append(pack(c, product, eid, batch, unit_parent, state, holder, udest, pu, last))
            if rng.random() < self.p_history:
                self.pools.history.append(members[0])
            item = {"case": case, "units": members}
            if fate in (TO_HOSP, TO_PHARM) and rng.random() < self.p_incoming:
                assert dest is not None
                codes = members if fate == TO_PHARM else [case]
                self.pools.add(
                    self.pools.incoming, dest, {"from": dist, "codes": codes, **item}, len(members)
                )
            elif fate == AT_DIST and rng.random() < self.p_cases:
                self.pools.add(self.pools.cases, dist, item, len(members))
            elif fate == MFR_STOCK and rng.random() < self.p_mfr:
                self.pools.add(self.pools.cases, mfr, item, len(members))
            elif fate == TO_DIST and rng.random() < self.p_to_dist:
                incoming_dist.append(item)
        # shipments in transit to the distributor: received 25 cases at a time
        for i in range(0, len(incoming_dist), 25):
            group = incoming_dist[i : i + 25]
            shipment = {"from": mfr, "codes": [g["case"] for g in group], "cases": group}
            self.pools.add(self.pools.incoming, dist, shipment, sum(len(g["units"]) for g in group))

    def _shelf_and_sales(
        self,
        sink: Sink,
        product: Product,
        members: list[str],
        commission_of: list[tuple[uuid.UUID, datetime]],
        first: int,
        parent: str | None,
        org: str,
        t_recv: datetime,
        lot: str,
        expiry: date,
        produced: date,
        span: timedelta,
    ) -> None:
        """Packs received at a pharmacy or hospital: on the shelf, opened for split-pack
        sales, or sold (sales of 1-3 packs, half of them settled by insurance)."""
        rng, rows, pu = self.rng, sink.rows, product.pack_units
        fates = rng.choices((SHELF, OPENED, DISPENSED), weights=UNIT_WEIGHTS, k=len(members))
        sold: list[str] = []
        for c, fate in zip(members, fates, strict=True):
            eid, _ = commission_of[int(c[7:]) - first]
            left, last = pu, t_recv
            if fate == OPENED and pu > 1:
                q = rng.randint(1, pu - 1)
                last = self._sale(rows, product, org, [c], t_recv + span * rng.uniform(0.02, 0.4), q)
                left = pu - q
                if rng.random() < self.p_opened:
                    self.pools.add(self.pools.opened, org, [c, left], 1)
            elif fate in (DISPENSED, OPENED):
                sold.append(c)
                left = 0
            elif rng.random() < self.p_stock:
                self.pools.add(self.pools.stock, org, c, 1)
            batch = (lot, expiry, produced)
            # a pack sold on its own leaves its case (the service's implicit unpack)
            inside = parent if fate == SHELF else None
            rows["codes"].append(pack(c, product, eid, batch, inside, "received", org, None, left, last))
            if rng.random() < self.p_history:
                self.pools.history.append(c)
        # sales of 1-3 whole packs; a code's last_at becomes its sale time
        i = 0
        last_of: dict[str, datetime] = {}
        while i < len(sold):
            k = rng.randint(1, 3)
            group = sold[i : i + k]
            i += k
            t = self._sale(rows, product, org, group, t_recv + span * rng.uniform(0.02, 0.4), None)
            for c in group:
                last_of[c] = t
                if rng.random() < self.p_dispensed:
                    self.pools.dispensed.append([c, org])
                if rng.random() < self.p_flag:
                    self._flag(rows, "DUPLICATE", c, org, t + timedelta(days=1))
        if last_of:
            # patch the rows just written for the sold packs
            codes_rows = rows["codes"]
            for j in range(len(codes_rows) - len(members), len(codes_rows)):
                row = codes_rows[j]
                if row[0] in last_of:
                    codes_rows[j] = (*row[:16], last_of[row[0]], *row[17:])  # last_at

    def _sale(
        self,
        rows: dict[str, list[tuple[Any, ...]]],
        product: Product,
        org: str,
        codes: list[str],
        t: datetime,
        quantity: int | None,
    ) -> datetime:
        """One sale: a dispense event, its consumptions, and for an insured sale the
        settlement (settled a minute before the dispense was uploaded)."""
        eid = self._uuid()
        insured = self.rng.random() < 0.5
        setl_id = f"S{self.rng.getrandbits(64):016x}" if insured else None
        pu = product.pack_units
        rows["events"].append(event("dispense", eid, t, org, len(codes), quantity=quantity, setl_id=setl_id))
        rows["event_codes"].extend((c, t, eid, C) for c in codes)
        units = quantity if quantity is not None else pu
        if setl_id is None:
            rows["consumptions"].extend(consumption(c, None, eid, org, t, units) for c in codes)
            return t
        ts = t - timedelta(minutes=1)
        rows["consumptions"].extend(consumption(c, setl_id, eid, org, ts, units) for c in codes)
        line = Line(1, product.med_list_codg, units * len(codes), quantity is not None, tuple(codes))
        psn = f"44{self.rng.randint(0, 10**16 - 1):016d}"
        claim = Claim(setl_id, org, psn, ts, "settle", (line,))
        rows["settlements"].append(settlement(self.psn_secret, claim))
        return t

    def _flag(
        self, rows: dict[str, list[tuple[Any, ...]]], kind: str, code: str, org: str, t: datetime
    ) -> None:
        status = self.rng.choices(("open", "investigating", "confirmed", "dismissed"), (6, 2, 1, 1))[0]
        setl_id = f"S{self.rng.getrandbits(64):016x}"
        detail = f"settlement attempt by {org}: the pack was already consumed"
        region = self.orgs[org].region
        rows["flags"].append(flag(kind, code, org, region, t, detail, setl_id, status))

    # --- driving it -------------------------------------------------------------------

    async def run(self, conns: dict[str, asyncpg.Connection], chunk: int, progress: bool) -> dict[str, int]:
        self._hospitals = [o.id for o in self.orgs.values() if o.kind == "hospital"]
        self._pharmacies = [o.id for o in self.orgs.values() if o.kind == "pharmacy"]
        sink = Sink(conns, chunk)
        done = 0
        started = time.perf_counter()
        next_report = 0.1
        for product, units in self.lots():
            self.lot_rows(sink, product, units)
            done += units
            if sink.full():
                await sink.flush()
                if progress and done / self.n >= next_report:
                    rate = sum(sink.counts.values()) / (time.perf_counter() - started)
                    print(f"  {done:,} of {self.n:,} codes ({rate:,.0f} rows/s)", file=sys.stderr)
                    next_report += 0.1
        await sink.flush()
        return sink.counts

    def manifest(self, counts: dict[str, int]) -> dict[str, Any]:
        manufacturers = {}
        for o in self.orgs.values():
            if o.kind == "manufacturer":
                manufacturers[o.id] = {
                    "products": [p.product_id for p in self.products if p.manufacturer == o.id],
                    "sscc_company": self.company[o.id],
                }
        return {
            "format": 1,
            "created_at": self.now.isoformat(),
            "province": PROVINCE,
            "codes": self.n,
            "rows": counts,
            "keys": self.keys,
            "orgs": {o.id: {"kind": o.kind, "region": o.region, "key": o.key} for o in self.orgs.values()},
            "products": {
                p.product_id: {
                    "name": p.name,
                    "med_list_codg": p.med_list_codg,
                    "pack_units": p.pack_units,
                    "contains": p.contains,
                    "manufacturer": p.manufacturer,
                    "regions": p.regions,
                }
                for p in self.products
            },
            "exempt": [{"product_id": p.product_id, "med_list_codg": p.med_list_codg} for p in self.exempt],
            "manufacturers": manufacturers,
            "fresh": {
                "serial_min": FRESH_SERIAL_MIN,
                "serial_max": FRESH_SERIAL_MAX,
                "sscc_extension": "9",
                "note": "seeded serials are below serial_min and seeded SSCCs use extension digit 0",
            },
            "pools": {
                "stock": self.pools.stock,
                "opened": self.pools.opened,
                "incoming": self.pools.incoming,
                "cases": self.pools.cases,
                "dispensed": self.pools.dispensed,
                "history": self.pools.history,
            },
        }


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, separators=(",", ":")))
    tmp.replace(path)


async def _prepare(conn: asyncpg.Connection, truncate: bool) -> None:
    from service.store.migrations import migrate

    await migrate(conn)
    tables = [
        r["tablename"]
        for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        if r["tablename"] != "schema_migrations"
    ]
    if truncate:
        await conn.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")
        return
    for table in ("orgs", "codes", "events"):
        if await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {table})"):
            raise SystemExit(f"table {table} is not empty; use --truncate to empty the database first")


async def seed(
    url: str,
    *,
    codes: int = 1_000_000,
    manifest_path: Path = DEFAULT_MANIFEST,
    pool_codes: int = 300_000,
    seed_value: int = 1,
    truncate: bool = False,
    chunk: int = 50_000,
    progress: bool = True,
    psn_secret: bytes | None = None,
) -> dict[str, Any]:
    """Seed the database at ``url`` and write the manifest; return a summary. Settlements
    are hashed with ``psn_secret``, by default the one the service reads from its
    environment (``TRACE_PSN_SECRET``)."""
    started = time.perf_counter()
    now = datetime.now(UTC).replace(microsecond=0)
    secret = Settings.from_env().psn_secret if psn_secret is None else psn_secret
    seeder = Seeder(codes, seed_value, pool_codes, now, secret)
    seeder.build_registry()
    conn = await asyncpg.connect(url)
    try:
        await _prepare(conn, truncate)
        registry = seeder.registry_rows()
        async with conn.transaction():
            await conn.copy_records_to_table(
                "orgs", records=registry["orgs"], columns=("id", "name", "kind", "region")
            )
            await conn.copy_records_to_table(
                "products", records=registry["products"], columns=registry_store.PRODUCT_FIELDS
            )
            await conn.copy_records_to_table(
                "api_keys", records=registry["api_keys"], columns=("key_id", "secret_hash", "role", "org")
            )
        conns = {t: await asyncpg.connect(url) for t in COLUMNS}
        try:
            for c in conns.values():
                await c.execute("SET synchronous_commit = off")
            counts = await seeder.run(conns, chunk, progress)
        finally:
            for c in conns.values():
                await c.close()
        copied = time.perf_counter() - started
        # set hint bits and the visibility map now, as a database in service has them:
        # otherwise the first reads of each page during the load run write it again
        await conn.execute("VACUUM (ANALYZE)")
    finally:
        await conn.close()
    for table, rows in registry.items():
        counts[table] = len(rows)
    write_manifest(manifest_path, seeder.manifest(counts))
    total = sum(counts.values())
    return {
        "codes": codes,
        "rows": counts,
        "total_rows": total,
        "copy_seconds": copied,
        "rows_per_second": total / copied,
        "seconds": time.perf_counter() - started,
        "manifest": str(manifest_path),
        "pool_codes": seeder.pools.codes,
    }


async def refresh(url: str, manifest: dict[str, Any], pool_codes: int = 300_000) -> dict[str, int]:
    """Rebuild the sample pools of an existing manifest from the database as it is now
    (a load run consumes and moves the packs it was given). Keys, organisations and
    products are kept. Returns the number of items per pool."""
    kinds = {org: o["kind"] for org, o in manifest["orgs"].items()}
    dispensaries = [o for o, k in kinds.items() if k in ("pharmacy", "hospital")]
    distributors = [o for o, k in kinds.items() if k == "distributor"]
    holders = [o for o, k in kinds.items() if k in ("distributor", "manufacturer")]
    conn = await asyncpg.connect(url)
    try:
        total = max(1.0, float(await conn.fetchval("SELECT reltuples FROM pg_class WHERE relname = 'codes'")))
        # a block sample of the table big enough for the budget (shelf packs are ~half the codes)
        sample = f"TABLESAMPLE SYSTEM ({min(100.0, 100 * 3 * pool_codes / total):.6f})"
        fresh = "units_left = pack_units AND NOT recalled AND (expiry IS NULL OR expiry >= current_date)"

        async def contents(cases: list[str]) -> dict[str, list[str]]:
            rows = await conn.fetch(
                f"""SELECT parent, array_agg(code ORDER BY code) AS units FROM codes
                    WHERE parent = ANY($1::text[]) AND {fresh} GROUP BY parent""",
                cases,
            )
            return {r["parent"]: list(r["units"]) for r in rows}

        pools: dict[str, Any] = {"stock": {}, "opened": {}, "incoming": {}, "cases": {}}
        for r in await conn.fetch(
            f"""SELECT code, custodian FROM codes {sample}
                WHERE kind = 'cn20' AND state = 'received' AND {fresh} AND custodian = ANY($1::text[])
                LIMIT $2""",
            dispensaries,
            int(0.55 * pool_codes),
        ):
            pools["stock"].setdefault(r["custodian"], []).append(r["code"])
        for r in await conn.fetch(
            f"""SELECT code, custodian, units_left FROM codes {sample}
                WHERE kind = 'cn20' AND state = 'received' AND units_left > 0 AND units_left < pack_units
                  AND NOT recalled AND custodian = ANY($1::text[]) LIMIT $2""",
            dispensaries,
            int(0.05 * pool_codes),
        ):
            pools["opened"].setdefault(r["custodian"], []).append([r["code"], r["units_left"]])
        # whole cases in transit to a hospital or a distributor, loose packs to a pharmacy
        cases = await conn.fetch(
            """SELECT code, custodian, destination FROM codes
               WHERE kind = 'sscc' AND state = 'in_transit' AND destination = ANY($1::text[]) LIMIT $2""",
            dispensaries + distributors,
            int(0.16 * pool_codes / 20),
        )
        inside = await contents([r["code"] for r in cases])
        to_dist: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for r in cases:
            units = inside.get(r["code"])
            if not units:
                continue
            item = {"case": r["code"], "units": units}
            if kinds[r["destination"]] == "distributor":
                to_dist.setdefault((r["custodian"], r["destination"]), []).append(item)
            else:
                shipment = {"from": r["custodian"], "codes": [r["code"]], **item}
                pools["incoming"].setdefault(r["destination"], []).append(shipment)
        for (sender, dest), items in to_dist.items():
            for i in range(0, len(items), 25):
                group = items[i : i + 25]
                shipment = {"from": sender, "codes": [g["case"] for g in group], "cases": group}
                pools["incoming"].setdefault(dest, []).append(shipment)
        loose: dict[tuple[str, str], list[str]] = {}
        for r in await conn.fetch(
            f"""SELECT code, custodian, destination FROM codes
                WHERE kind = 'cn20' AND state = 'in_transit' AND parent IS NULL AND {fresh}
                  AND destination = ANY($1::text[]) ORDER BY custodian, destination LIMIT $2""",
            dispensaries,
            int(0.1 * pool_codes),
        ):
            loose.setdefault((r["custodian"], r["destination"]), []).append(r["code"])
        for (sender, dest), codes in loose.items():
            for i in range(0, len(codes), 20):
                group = codes[i : i + 20]
                pools["incoming"].setdefault(dest, []).append(
                    {"from": sender, "codes": group, "units": group}
                )
        # unopened cases in a distributor's or manufacturer's stock
        held = await conn.fetch(
            """SELECT code, custodian FROM codes
               WHERE kind = 'sscc' AND state IN ('received', 'commissioned') AND custodian = ANY($1::text[])
               LIMIT $2""",
            holders,
            int(0.17 * pool_codes / 20),
        )
        inside = await contents([r["code"] for r in held])
        for r in held:
            if inside.get(r["code"]):
                item = {"case": r["code"], "units": inside[r["code"]]}
                pools["cases"].setdefault(r["custodian"], []).append(item)
        pools["dispensed"] = [
            [r["code"], r["custodian"]]
            for r in await conn.fetch(
                f"""SELECT code, custodian FROM codes {sample}
                    WHERE kind = 'cn20' AND units_left = 0 AND state = 'received'
                      AND custodian = ANY($1::text[]) LIMIT 5000""",
                dispensaries,
            )
        ]
        pools["history"] = [
            r["code"] for r in await conn.fetch(f"SELECT code FROM codes {sample} LIMIT 5000")
        ]
    finally:
        await conn.close()
    manifest["pools"] = pools
    manifest["refreshed_at"] = datetime.now(UTC).isoformat()
    return {
        name: (len(p) if isinstance(p, list) else sum(len(v) for v in p.values()))
        for name, p in pools.items()
    }


async def check(url: str, sample: int) -> list[str]:
    """Fold the stored events of ``sample`` random codes with the service's own rules
    (``service.core.custody.replay``) and compare with their stored rows; also compare
    every pack's units_left with its unreversed consumptions. Returns the mismatches."""
    from service.core.custody import replay
    from service.store import events as event_store

    conn = await asyncpg.connect(url)
    try:
        pack_units = {r["product_id"]: r["pack_units"] for r in await conn.fetch("SELECT * FROM products")}
        codes = [
            r["code"] for r in await conn.fetch("SELECT code FROM codes ORDER BY random() LIMIT $1", sample)
        ]
        problems = []
        for code in codes:
            stored = await code_store.read(conn, [code])
            family = {code, *await code_store.ancestors_ever(conn, [code])}
            folded = replay(await event_store.facts_for(conn, family), keep=stored, pack_units=pack_units)
            if folded.states[code].custody() != stored[code].custody():
                problems.append(
                    f"{code}: stored {stored[code].custody()}, fold {folded.states[code].custody()}"
                )
        rows = await conn.fetch(
            """SELECT c.code, c.pack_units, c.units_left, coalesce(sum(s.units), 0) AS used
               FROM codes c LEFT JOIN consumptions s ON s.code = c.code AND s.reversed_at IS NULL
               WHERE c.code = ANY($1::text[]) AND c.pack_units IS NOT NULL
               GROUP BY c.code HAVING c.pack_units - coalesce(sum(s.units), 0) <> c.units_left""",
            codes,
        )
        problems += [
            f"{r['code']}: units_left {r['units_left']}, pack {r['pack_units']} - used {r['used']}"
            for r in rows
        ]
        return problems
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--database-url",
        default=os.environ.get("TRACE_DATABASE_URL"),
        help="PostgreSQL URL (default: TRACE_DATABASE_URL)",
    )
    p.add_argument("--codes", type=int, default=1_000_000, help="unit codes to create (default 1,000,000)")
    p.add_argument(
        "--manifest",
        type=Path,
        default=Path(os.environ.get("TRACE_LOAD_MANIFEST", DEFAULT_MANIFEST)),
        help="where to write the manifest (default: TRACE_LOAD_MANIFEST or loadtests/.data/manifest.json)",
    )
    p.add_argument(
        "--pool-codes",
        type=int,
        default=300_000,
        help="about how many codes the manifest's sample pools hold (default 300,000)",
    )
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--chunk", type=int, default=50_000, help="rows per COPY (default 50,000)")
    p.add_argument("--truncate", action="store_true", help="empty every table first (its data is lost)")
    p.add_argument(
        "--refresh",
        action="store_true",
        help="seed nothing: rebuild the pools of the existing --manifest from the database as it is now",
    )
    p.add_argument(
        "--check",
        type=int,
        default=0,
        metavar="N",
        help="afterwards, replay N random codes' events with the service's rules and compare",
    )
    args = p.parse_args(argv)
    if not args.database_url:
        p.error("give --database-url or set TRACE_DATABASE_URL")
    if args.refresh:
        manifest = json.loads(args.manifest.read_text())
        counts = asyncio.run(refresh(args.database_url, manifest, args.pool_codes))
        write_manifest(args.manifest, manifest)
        print(f"refreshed {args.manifest}: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
        return 0
    if args.codes < 100:
        p.error("--codes must be at least 100")
    summary = asyncio.run(
        seed(
            args.database_url,
            codes=args.codes,
            manifest_path=args.manifest,
            pool_codes=args.pool_codes,
            seed_value=args.seed,
            truncate=args.truncate,
            chunk=args.chunk,
        )
    )
    rows = summary["rows"]
    print(", ".join(f"{t} {n:,}" for t, n in rows.items()))
    print(
        f"seeded {summary['codes']:,} codes: {summary['total_rows']:,} rows "
        f"in {summary['copy_seconds']:.1f} s "
        f"({summary['rows_per_second']:,.0f} rows/s; {summary['seconds']:.1f} s with VACUUM ANALYZE); "
        f"manifest {summary['manifest']} ({summary['pool_codes']:,} pool codes)"
    )
    if args.check:
        problems = asyncio.run(check(args.database_url, args.check))
        for line in problems[:20]:
            print("MISMATCH", line)
        if problems:
            print(f"{len(problems)} of {args.check} codes disagree with the service's fold", file=sys.stderr)
            return 1
        print(f"checked {args.check:,} random codes: the stored state is the service's fold of their events")
    return 0


if __name__ == "__main__":
    sys.exit(main())
