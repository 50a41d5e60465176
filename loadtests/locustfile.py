"""Locust load test of tracecode: a province's real traffic mix, paced to a target rate.

Who sends what (request names in Locust's statistics):

=================  ===============================================================
Manufacturer       ``commission`` (~500 fresh codes), ``pack`` (25 cases a request),
                   ``ship_mfr`` (25 cases to a distributor)
Distributor        ``receive_dist`` (a manufacturer's shipment), ``ship_case`` (a whole
                   case to a hospital), ``ship_loose`` (unpack a case and ship its packs
                   to a pharmacy, one request of two events)
Pharmacy,          ``receive`` (a delivery in transit to it), ``verify`` (one pack, GET),
Hospital           ``verify_batch`` (50 packs, POST), ``dispense`` (the upload of a sale
                   the settlement engine settled, with its ``setl_id``; a self-paid sale
                   when none is waiting), ``dispense_split`` (拆零: units of an opened pack)
SettlementEngine   ``settle`` (insurer key; 1-5 packs in lines by product, some split
                   lines, some trace-exempt lines, 1% attempts on an already consumed
                   pack that must be ``rejected``), ``precheck``, ``reversal``,
                   ``settlement_get``
Investigator       ``history``; ``flags`` (``GET /v1/flags``, some with a status, kind or
                   region filter: a 200 with an ``items`` list)
=================  ===============================================================

The users form one closed supply loop: what manufacturers commission and ship,
distributors receive and deliver, pharmacies and hospitals receive, verify, sell and
dispense; the settlement engine settles packs on their shelves and queues the sale for
the pharmacy's dispense upload. They start from the pools in the seeder's manifest
(``loadtests/seed.py``; ``--manifest`` or ``TRACE_LOAD_MANIFEST``, default
``loadtests/.data/manifest.json``). Each pack is held by one user at a time, so every
answer is predictable: any other answer is a failure (a 200 with an unexpected decision,
rejection or flag too).

Rates. ``loadtests/volumes.py`` derives each operation's rate at a province's peak
(~1,400 requests/s). ``--load-scale`` (``TRACE_LOAD_SCALE``, default 0.05) runs a
fraction of it. The shape (``--load-shape``: ``province``, default, or ``flat``)
multiplies that rate over ``--load-duration`` seconds: ramp 5% -> 100% in the first
20%, hold to 55%, spike to 200% (60-75%), back to 100% from 80% to the end. Users are a
fixed number per class, each sending Poisson arrivals at its share of the current rate
(an open-loop target; a user whose answers come late falls behind and catches up at
most a second's worth). ``--users-per-class``, ``--user-rate`` and ``--op-mix
round-robin`` make small deterministic runs (the smoke test).

Objectives. On exit the process fails (exit code 1) if the failure ratio exceeds
``--max-fail-ratio`` (default 0.1%) or an operation's p99 exceeds its objective
(``--slo``: ``settle=25,verify=10`` ms by default, others below; ``--slo off`` turns
latency objectives off). ``--summary-json`` writes per-operation figures per phase.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import time
import uuid
from array import array
from collections import Counter, deque
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import gevent
import volumes
from locust import FastHttpUser, LoadTestShape, events, task
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

from benchkit.api import event
from benchkit.codes import cn20, sscc
from benchkit.stats import percentile

log = logging.getLogger("tracecode.load")
HERE = Path(__file__).resolve().parent
DEFAULT_MANIFEST = HERE / ".data" / "manifest.json"

# p99 objectives in ms. settle and verify are the point-of-sale path; the rest are
# looser: uploads of hundreds of codes, and investigators' reads.
DEFAULT_SLO_MS = {
    "settle": 25.0,
    "precheck": 25.0,
    "verify": 10.0,
    "verify_batch": 100.0,
    "dispense": 50.0,
    "dispense_split": 50.0,
    "receive": 250.0,
    "reversal": 50.0,
    "settlement_get": 25.0,
    "receive_dist": 500.0,
    "ship_case": 100.0,
    "ship_loose": 250.0,
    "commission": 1000.0,
    "pack": 1000.0,
    "ship_mfr": 500.0,
    "history": 100.0,
    "flags": 100.0,
}

# The shape: (start fraction of the run, factor at start, factor at end).
PROVINCE_SHAPE = [
    (0.0, 0.05, 1.0),
    (0.2, 1.0, 1.0),
    (0.55, 1.0, 2.0),
    (0.6, 2.0, 2.0),
    (0.75, 2.0, 1.0),
    (0.8, 1.0, 1.0),
]
# Windows measured for the summary: (name, from, to) as fractions of the run.
PROVINCE_WINDOWS = [("ramp", 0.0, 0.2), ("hold", 0.25, 0.55), ("spike", 0.62, 0.75), ("recovery", 0.85, 1.0)]
FLAT_WINDOWS = [("ramp", 0.0, 0.1), ("hold", 0.1, 1.0)]


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    g = parser.add_argument_group("tracecode load model")
    g.add_argument(
        "--manifest",
        default=os.environ.get("TRACE_LOAD_MANIFEST", str(DEFAULT_MANIFEST)),
        help="the seeder's manifest (TRACE_LOAD_MANIFEST)",
    )
    g.add_argument(
        "--load-scale",
        type=float,
        env_var="TRACE_LOAD_SCALE",
        default=0.05,
        help="fraction of the province peak at shape factor 1 (default 0.05)",
    )
    g.add_argument(
        "--load-duration",
        type=float,
        env_var="TRACE_LOAD_DURATION",
        default=600.0,
        help="seconds the shape lasts (default 600)",
    )
    g.add_argument(
        "--load-shape",
        choices=("province", "flat"),
        env_var="TRACE_LOAD_SHAPE",
        default="province",
        help="province: ramp, hold, 2x spike, recover; flat: factor 1",
    )
    g.add_argument(
        "--op-mix",
        choices=("real", "round-robin"),
        env_var="TRACE_LOAD_MIX",
        default="real",
        help="real: operations at their share of the mix; round-robin: each in turn",
    )
    g.add_argument(
        "--users-per-class",
        type=int,
        env_var="TRACE_LOAD_USERS_PER_CLASS",
        default=0,
        help="users of each class (default: enough for the 2x spike)",
    )
    g.add_argument(
        "--user-rate",
        type=float,
        env_var="TRACE_LOAD_USER_RATE",
        default=0.0,
        help="requests/s of each user at factor 1 (default: its share of the scaled peak)",
    )
    g.add_argument(
        "--slo",
        env_var="TRACE_LOAD_SLO",
        default="",
        help="p99 objectives in ms, e.g. settle=25,verify=10 (merged into the defaults), or off",
    )
    g.add_argument(
        "--max-fail-ratio",
        type=float,
        env_var="TRACE_LOAD_MAX_FAIL_RATIO",
        default=0.001,
        help="failures / requests allowed (default 0.001)",
    )
    g.add_argument(
        "--summary-json",
        env_var="TRACE_LOAD_SUMMARY",
        default="",
        help="write per-operation figures per phase to this file",
    )


# --- the shape ------------------------------------------------------------------------


def shape_factor(t: float, duration: float, shape: str) -> float | None:
    """The multiple of the scaled province peak at ``t`` seconds; None when over."""
    if t >= duration:
        return None
    if shape == "flat":
        return 1.0
    x = t / duration
    segments = [*PROVINCE_SHAPE, (1.0, 1.0, 1.0)]
    for (start, a, b), (end, _, _) in itertools.pairwise(segments):
        if start <= x < end:
            return a + (b - a) * (x - start) / (end - start)
    return 1.0


class Clock:
    """When the test started (set on test_start in every process), and the options."""

    started: float | None = None
    duration = 600.0
    shape = "province"

    @classmethod
    def elapsed(cls) -> float:
        return 0.0 if cls.started is None else time.monotonic() - cls.started

    @classmethod
    def factor(cls) -> float | None:
        if cls.started is None:
            return 0.0
        return shape_factor(cls.elapsed(), cls.duration, cls.shape)

    @classmethod
    def factor_max(cls) -> float:
        return 1.0 if cls.shape == "flat" else max(b for _, _, b in PROVINCE_SHAPE)

    @classmethod
    def windows(cls) -> list[tuple[str, float, float]]:
        spec = PROVINCE_WINDOWS if cls.shape == "province" else FLAT_WINDOWS
        return [(name, a * cls.duration, b * cls.duration) for name, a, b in spec]


class ProvinceShape(LoadTestShape):
    """All users start in the first seconds; what the shape changes is the rate each one
    sends at (see :func:`shape_factor`), so every class runs at every moment, however
    small the scale. The run ends after ``--load-duration`` seconds."""

    def tick(self) -> tuple[int, float] | None:
        if shape_factor(self.get_run_time(), Clock.duration, Clock.shape) is None:
            return None
        total = sum(cls.fixed_count for cls in ALL_USERS)
        return total, max(1.0, total / 3)


# --- the world the users act on -------------------------------------------------------


class Bag:
    """A set with O(1) add, discard and random choice (which orgs have something)."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self.pos: dict[str, int] = {}

    def add(self, item: str) -> None:
        if item not in self.pos:
            self.pos[item] = len(self.items)
            self.items.append(item)

    def discard(self, item: str) -> None:
        i = self.pos.pop(item, None)
        if i is None:
            return
        last = self.items.pop()
        if i < len(self.items):
            self.items[i] = last
            self.pos[last] = i

    def choice(self) -> str | None:
        return random.choice(self.items) if self.items else None


class Pool:
    """Items per organisation, and which organisations of each kind have any. ``take``
    removes an item (random, or oldest first): a pack is with one user at a time."""

    def __init__(self, kinds: dict[str, str], fifo: bool = False) -> None:
        self.kinds = kinds
        self.fifo = fifo
        self.items: dict[str, deque[Any]] = {}
        self.nonempty: dict[str, Bag] = {}

    def put(self, org: str, item: Any) -> None:
        self.items.setdefault(org, deque()).append(item)
        self.nonempty.setdefault(self.kinds[org], Bag()).add(org)

    def org(self, kind: str) -> str | None:
        bag = self.nonempty.get(kind)
        return bag.choice() if bag else None

    def take(self, org: str) -> Any | None:
        items = self.items.get(org)
        if not items:
            return None
        if self.fifo or len(items) == 1:
            item = items.popleft()
        else:
            # a random item: swap it to the end and pop (order does not matter)
            i = random.randrange(len(items))
            items[i], items[-1] = items[-1], items[i]
            item = items.pop()
        if not items:
            self.nonempty[self.kinds[org]].discard(org)
        return item

    def peek(self, org: str) -> Any | None:
        items = self.items.get(org)
        return items[random.randrange(len(items))] if items else None

    def size(self) -> int:
        return sum(len(v) for v in self.items.values())


class World:
    """Everything the users share: keys, products, and who holds which packs."""

    def __init__(self, manifest: dict[str, Any]) -> None:
        self.manifest = manifest
        self.orgs: dict[str, dict[str, Any]] = manifest["orgs"]
        self.kinds = {org: o["kind"] for org, o in self.orgs.items()}
        self.by_kind: dict[str, list[str]] = {}
        for org, kind in self.kinds.items():
            self.by_kind.setdefault(kind, []).append(org)
        self.products: dict[str, dict[str, Any]] = manifest["products"]
        self.exempt: list[dict[str, Any]] = manifest["exempt"]
        self.keys: dict[str, list[str]] = manifest["keys"]
        self.manufacturers: dict[str, dict[str, Any]] = manifest["manufacturers"]
        pools = manifest["pools"]
        k = self.kinds
        self.stock = Pool(k)  # full packs on a pharmacy's or hospital's shelf
        self.opened = Pool(k)  # [code, units left] of opened packs (拆零)
        self.incoming = Pool(k, fifo=True)  # shipments in transit to an org
        self.cases = Pool(k, fifo=True)  # {"case", "units"} held by a manufacturer or distributor
        self.unpacked = Pool(k, fifo=True)  # (product, codes) commissioned, not packed yet
        self.to_dispense = Pool(k, fifo=True)  # settled sales the pharmacy has yet to upload
        for org, codes in pools["stock"].items():
            for code in codes:
                self.stock.put(org, code)
        for org, items in pools["opened"].items():
            for item in items:
                self.opened.put(org, list(item))
        for org, items in pools["incoming"].items():
            for item in items:
                self.incoming.put(org, item)
        for org, items in pools["cases"].items():
            for item in items:
                self.cases.put(org, item)
        self.dispensed: list[list[str]] = pools["dispensed"]
        self.history: list[str] = pools["history"]
        self.recent: deque[dict[str, Any]] = deque(maxlen=20_000)  # accepted settlements
        self.touched: deque[str] = deque(maxlen=5_000)  # codes the run changed, for histories
        fresh = manifest["fresh"]
        block = 10**8
        start = fresh["serial_min"] + block * random.randrange(
            (fresh["serial_max"] - fresh["serial_min"]) // block
        )
        self.serials: dict[str, Iterator[int]] = {p: itertools.count(start) for p in self.products}
        self.sscc_ext = fresh["sscc_extension"]
        self.sscc_serials = itertools.count(10**5 * random.randrange(10**4))

    def partition(self, index: int, count: int) -> None:
        """Keep only the organisations of worker ``index`` of ``count`` (several Locust
        processes must not hold the same packs)."""
        mine = {org for i, org in enumerate(sorted(self.orgs)) if i % count == index}
        for pool in (self.stock, self.opened, self.incoming, self.cases):
            for org in list(pool.items):
                if org not in mine:
                    del pool.items[org]
                    pool.nonempty[self.kinds[org]].discard(org)
        self.by_kind = {k: [o for o in v if o in mine] or v for k, v in self.by_kind.items()}
        self.dispensed = [d for d in self.dispensed if d[1] in mine]

    def key(self, org: str) -> str:
        return str(self.orgs[org]["key"])

    def role_key(self, role: str) -> str:
        return random.choice(self.keys[role])

    def new_codes(self, product_id: str, n: int) -> list[str]:
        serials = self.serials[product_id]
        return [cn20(product_id, next(serials)) for _ in range(n)]

    def new_case(self, manufacturer: str) -> str:
        company = self.manufacturers[manufacturer]["sscc_company"]
        return sscc(self.sscc_ext + company, next(self.sscc_serials))


WORLD: World | None = None
OUTCOMES: Counter[str] = Counter()  # business outcomes and skipped operations
LATENCIES: dict[tuple[str, str], array[float]] = {}  # (operation, window) -> ms


def world() -> World:
    assert WORLD is not None, "the manifest is loaded at init"
    return WORLD


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def psn() -> str:
    return f"44{random.randrange(10**16):016d}"


def claim(setl_id: str, org: str, lines: list[dict[str, Any]], mode: str = "settle") -> dict[str, Any]:
    """A ``POST /v1/settlements`` body: a claim made now, for a random insured person."""
    return {"setl_id": setl_id, "org": org, "psn_no": psn(), "at": now_iso(), "mode": mode, "lines": lines}


# --- users ----------------------------------------------------------------------------


class Actor(FastHttpUser):
    """Paced user: Poisson arrivals at ``rate`` x the shape's factor (``round-robin``:
    evenly spaced); each arrival is one request of one of the class's operations, chosen
    by the mix (or each in turn)."""

    abstract = True
    ops: ClassVar[tuple[str, ...]] = ()  # method names, in round-robin order
    rate_keys: ClassVar[dict[str, str]] = {}  # method name -> key in volumes.PROVINCE_PEAK_RPS
    per_user_max: ClassVar[float] = 2.0  # requests/s a user sends at factor 1, at most
    rate: ClassVar[float] = 1.0  # set at init
    weights: ClassVar[list[float]] = []
    round_robin: ClassVar[bool] = False

    def on_start(self) -> None:
        self._due = time.monotonic() + random.random() / max(self.rate * Clock.factor_max(), 0.01)
        self._turn = itertools.cycle(self.ops)

    def wait_time(self) -> float:
        return min(max(0.0, self._due - time.monotonic()), 0.25)

    @task
    def act(self) -> None:
        now = time.monotonic()
        if now < self._due:
            return
        factor = Clock.factor()
        if not factor:
            self._due = now + 0.25
            return
        # Arrivals at the shape's highest rate, each kept with probability factor / highest
        # (thinning): the rate follows the shape at once, however low it is for this user.
        fmax = Clock.factor_max()
        rate = self.rate * fmax
        gap = 1 / rate if self.round_robin else random.expovariate(rate)
        self._due = max(self._due + gap, now - 1.0)
        if random.random() * fmax > factor:
            return
        first = next(self._turn) if self.round_robin else random.choices(self.ops, self.weights)[0]
        order = [first, *(op for op in self.ops if op != first)]
        for op in order:
            if getattr(self, op)() is not False:
                return
            OUTCOMES[f"skipped.{op}"] += 1  # nothing to do (empty pool): the next op goes instead

    # helpers

    def call(
        self,
        name: str,
        method: str,
        path: str,
        key: str,
        body: Any = None,
        check: Callable[[Any], str | None] | None = None,
        ok: tuple[int, ...] = (200,),
    ) -> Any | None:
        """One request; a failure unless the status is in ``ok`` and ``check`` (given the
        JSON body) returns None. Returns the JSON body of a success, else None."""
        headers = {"Authorization": f"Bearer {key}"}
        with self.client.request(
            method, path, json=body, headers=headers, name=name, catch_response=True
        ) as resp:
            if resp.status_code not in ok:
                resp.failure(f"HTTP {resp.status_code}: {(resp.text or '')[:300]}")
                return None
            try:
                data = resp.json() if resp.text else None
            except ValueError:
                resp.failure(f"not JSON: {(resp.text or '')[:200]}")
                return None
            problem = check(data) if check is not None and resp.status_code == 200 else None
            if problem:
                resp.failure(problem)
                return None
            resp.success()
            return data if data is not None else {}

    def post_events(self, name: str, org: str, evs: list[dict[str, Any]]) -> bool:
        expected = sum(len(e["codes"]) for e in evs)

        def check(data: Any) -> str | None:
            if data.get("rejected"):
                return f"rejected: {data['rejected'][:3]}"
            if data.get("accepted") != expected:
                return f"accepted {data.get('accepted')} of {expected} codes"
            if data.get("flags"):
                return f"unexpected flags: {data['flags'][:3]}"
            return None

        return self.call(name, "POST", "/v1/events", world().key(org), {"events": evs}, check) is not None


class Manufacturer(Actor):
    ops = ("commission", "pack", "ship_mfr")
    rate_keys = {"commission": "commission", "pack": "pack", "ship_mfr": "ship_mfr"}
    per_user_max = 0.5

    def commission(self) -> bool:
        w = world()
        mfr = random.choice(w.by_kind["manufacturer"])
        product_id = random.choice(w.manufacturers[mfr]["products"])
        contains = int(w.products[product_id]["contains"])
        codes = w.new_codes(product_id, contains * max(1, round(volumes.COMMISSION_BATCH / contains)))
        today = date.today()
        lot = f"LT{today:%y%m%d}{random.randrange(1000):03d}"
        ev = event(
            "commission", mfr, codes, now_iso(), lot=lot, expiry=today + timedelta(days=730), produced=today
        )
        if self.post_events("commission", mfr, [ev]):
            w.unpacked.put(mfr, (product_id, codes))
            w.touched.append(codes[0])
        return True

    def pack(self) -> bool:
        w = world()
        mfr = w.unpacked.org("manufacturer")
        batch = w.unpacked.take(mfr) if mfr else None
        if batch is None:
            return False
        product_id, codes = batch
        contains = int(w.products[product_id]["contains"])
        cases = [(w.new_case(mfr), codes[i : i + contains]) for i in range(0, len(codes), contains)]
        at = now_iso()
        evs = [event("pack", mfr, units, at, parent=case) for case, units in cases]
        if self.post_events("pack", mfr, evs):
            for case, units in cases:
                w.cases.put(mfr, {"case": case, "units": units})
        return True

    def ship_mfr(self) -> bool:
        w = world()
        mfr = w.cases.org("manufacturer")
        if mfr is None:
            return False
        group = [c for c in (w.cases.take(mfr) for _ in range(volumes.CASES_PER_SHIPMENT)) if c]
        dist = random.choice(w.by_kind["distributor"])
        ev = event("ship", mfr, [c["case"] for c in group], now_iso(), to=dist)
        if self.post_events("ship_mfr", mfr, [ev]):
            w.incoming.put(dist, {"from": mfr, "codes": ev["codes"], "cases": group})
        return True


class Distributor(Actor):
    ops = ("receive_dist", "ship_case", "ship_loose")
    rate_keys = {"receive_dist": "receive_dist", "ship_case": "ship_case", "ship_loose": "ship_loose"}
    per_user_max = 1.0

    def receive_dist(self) -> bool:
        w = world()
        dist = w.incoming.org("distributor")
        shipment = w.incoming.take(dist) if dist else None
        if shipment is None:
            return False
        ev = event("receive", dist, shipment["codes"], now_iso(), from_org=shipment["from"])
        if self.post_events("receive_dist", dist, [ev]):
            for case in shipment["cases"]:
                w.cases.put(dist, case)
        return True

    def _case(self) -> tuple[str, dict[str, Any]] | None:
        w = world()
        dist = w.cases.org("distributor")
        case = w.cases.take(dist) if dist else None
        return (dist, case) if dist and case else None

    def ship_case(self) -> bool:
        w, found = world(), self._case()
        if found is None:
            return False
        dist, case = found
        hospital = random.choice(w.by_kind["hospital"])
        ev = event("ship", dist, [case["case"]], now_iso(), to=hospital)
        if self.post_events("ship_case", dist, [ev]):
            w.incoming.put(hospital, {"from": dist, "codes": [case["case"]], **case})
        return True

    def ship_loose(self) -> bool:
        w, found = world(), self._case()
        if found is None:
            return False
        dist, case = found
        pharmacy = random.choice(w.by_kind["pharmacy"])
        at, units = now_iso(), case["units"]
        evs = [
            event("unpack", dist, units, at, parent=case["case"]),
            event("ship", dist, units, at, to=pharmacy),
        ]
        if self.post_events("ship_loose", dist, evs):
            w.incoming.put(pharmacy, {"from": dist, "codes": units, "units": units})
        return True


class Dispensary(Actor):
    """A pharmacy's or hospital's point-of-care and stock systems."""

    abstract = True
    kind: ClassVar[str] = "pharmacy"
    ops = ("receive", "verify", "verify_batch", "dispense", "dispense_split")

    def _org(self, pool: Pool) -> str | None:
        return pool.org(self.kind)

    def receive(self) -> bool:
        w = world()
        org = self._org(w.incoming)
        shipment = w.incoming.take(org) if org else None
        if shipment is None:
            return False
        ev = event("receive", org, shipment["codes"], now_iso(), from_org=shipment["from"])
        if self.post_events("receive", org, [ev]):
            for code in shipment["units"]:
                w.stock.put(org, code)
        return True

    def verify(self) -> bool:
        w = world()
        org = self._org(w.stock)
        code = w.stock.take(org) if org else None
        if org is None or code is None:
            return False
        probe, expect = code, True
        roll = random.random()
        if roll < 0.05:
            # a pack held by another organisation: never dispensable here
            other = w.stock.org(random.choice(("pharmacy", "hospital")))
            foreign = w.stock.peek(other) if other and other != org else None
            if foreign:
                probe, expect = foreign, False
        elif roll < 0.08:
            probe, expect = f"8999999{random.randrange(10**13):013d}", False  # a fake code

        def check(data: Any) -> str | None:
            if data.get("dispensable") is not expect:
                return f"dispensable {data.get('dispensable')}, expected {expect}: {data.get('reasons')}"
            return None

        self.call("verify", "GET", f"/v1/codes/{probe}/verify", w.key(org), check=check)
        w.stock.put(org, code)
        return True

    def verify_batch(self) -> bool:
        w = world()
        org = self._org(w.stock)
        if org is None:
            return False
        codes = [c for c in (w.stock.take(org) for _ in range(volumes.VERIFY_BATCH_SIZE)) if c]

        def check(data: Any) -> str | None:
            items = data.get("items", [])
            if len(items) != len(codes):
                return f"{len(items)} answers for {len(codes)} codes"
            bad = [i for i in items if not i.get("dispensable")]
            return f"{len(bad)} not dispensable: {bad[:2]}" if bad else None

        self.call("verify_batch", "POST", "/v1/verify", w.key(org), {"org": org, "codes": codes}, check)
        for code in codes:
            w.stock.put(org, code)
        return True

    def dispense(self) -> bool:
        """Upload a sale: one the settlement engine settled (same setl_id: the units are
        consumed once), or else a self-paid sale of 1-3 packs."""
        w = world()
        org = self._org(w.to_dispense)
        at = now_iso()
        if org is not None and (sale := w.to_dispense.take(org)) is not None:
            evs = []
            if sale["whole"]:
                evs.append(event("dispense", org, sale["whole"], at, setl_id=sale["setl_id"]))
            for code, units in sale["split"]:
                evs.append(event("dispense", org, [code], at, quantity=units, setl_id=sale["setl_id"]))
            if evs:
                self.post_events("dispense", org, evs)
                OUTCOMES["dispense.settled_sale"] += 1
                return True
        org = self._org(w.stock)
        if org is None:
            return False
        codes = [c for c in (w.stock.take(org) for _ in range(random.randint(1, 3))) if c]
        ev = event("dispense", org, codes, at)
        if self.post_events("dispense", org, [ev]):
            w.touched.extend(codes)
        OUTCOMES["dispense.self_paid"] += 1
        return True

    def dispense_split(self) -> bool:
        """拆零: a few units of an opened pack (a fresh one is opened when none is)."""
        w = world()
        org = self._org(w.opened)
        item = w.opened.take(org) if org else None
        if item is None:
            org = self._org(w.stock)
            code = w.stock.take(org) if org else None
            if org is None or code is None:
                return False
            item = [code, int(w.products[code[:7]]["pack_units"])]
        code, left = item
        units = random.randint(1, max(1, min(left, int(w.products[code[:7]]["pack_units"]) // 3)))
        ev = event("dispense", org, [code], now_iso(), quantity=units)
        if self.post_events("dispense_split", org, [ev]) and left - units > 0:
            w.opened.put(org, [code, left - units])
        return True


class Pharmacy(Dispensary):
    kind = "pharmacy"
    rate_keys = {op: f"pharmacy.{op}" for op in Dispensary.ops}


class Hospital(Dispensary):
    kind = "hospital"
    rate_keys = {op: f"hospital.{op}" for op in Dispensary.ops}


class SettlementEngine(Actor):
    """The insurance settlement engine: settles claims by code with an insurer key."""

    ops = ("settle", "precheck", "settlement_get", "reversal")
    rate_keys = {op: op for op in ops}

    def _claim_codes(self, org: str, n: int) -> list[str]:
        w = world()
        return [c for c in (w.stock.take(org) for _ in range(n)) if c]

    def _lines(self, org: str, codes: list[str]) -> tuple[list[dict[str, Any]], list[list[Any]]]:
        """Whole-pack lines by product; sometimes a split line (拆零) from an opened
        pack, sometimes a trace-exempt line without codes."""
        w = world()
        by_product: dict[str, list[str]] = {}
        for code in codes:
            by_product.setdefault(code[:7], []).append(code)
        lines = [
            {
                "med_list_codg": w.products[p]["med_list_codg"],
                "quantity": int(w.products[p]["pack_units"]) * len(cs),
                "split": False,
                "codes": cs,
            }
            for p, cs in by_product.items()
        ]
        split: list[list[Any]] = []
        if random.random() < volumes.SPLIT_SALE_SHARE:
            item = w.opened.take(org)
            if item is not None:
                code, left = item
                units = random.randint(1, left)
                lines.append(
                    {
                        "med_list_codg": w.products[code[:7]]["med_list_codg"],
                        "quantity": units,
                        "split": True,
                        "codes": [code],
                    }
                )
                split.append([code, units, left])
        if random.random() < 0.05 and w.exempt:
            lines.append(
                {
                    "med_list_codg": random.choice(w.exempt)["med_list_codg"],
                    "quantity": 1,
                    "split": False,
                    "codes": [],
                }
            )
        for i, line in enumerate(lines):
            line["line_no"] = i + 1
        return lines, split

    def _org(self) -> str | None:
        w = world()
        kind = "pharmacy" if random.random() < volumes.PHARMACY_SHARE else "hospital"
        return w.stock.org(kind) or w.stock.org("hospital" if kind == "pharmacy" else "pharmacy")

    def settle(self) -> bool:
        w = world()
        if random.random() < volumes.FRAUD_SHARE and w.dispensed:
            return self._fraud()
        org = self._org()
        if org is None:
            return False
        codes = self._claim_codes(org, random.choice((1, 2, 2, 3, 3, 4, 5)))
        if not codes:
            return False
        lines, split = self._lines(org, codes)
        setl_id = f"LT{uuid.uuid4().hex[:24]}"
        body = claim(setl_id, org, lines)

        def check(data: Any) -> str | None:
            if data.get("decision") != "accepted":
                return (
                    f"decision {data.get('decision')}: {[ln['reasons'] for ln in data.get('lines', [])][:3]}"
                )
            return None

        answer = self.call("settle", "POST", "/v1/settlements", w.role_key("insurer"), body, check)
        for code, units, left in split:
            if left - units > 0:
                w.opened.put(org, [code, left - units])
        if answer is None:
            return True  # those packs are in an unknown state now: dropped from the pools
        sale = {"setl_id": setl_id, "org": org, "whole": codes, "split": [[c, u] for c, u, _ in split]}
        w.to_dispense.put(org, sale)
        w.recent.append(sale)
        w.touched.extend(codes)
        OUTCOMES["settle.accepted"] += 1
        return True

    def _fraud(self) -> bool:
        """回流药: a pack consumed long ago is billed again; must be rejected."""
        w = world()
        code, org = random.choice(w.dispensed)
        product = w.products[code[:7]]
        line = {
            "line_no": 1,
            "med_list_codg": product["med_list_codg"],
            "quantity": product["pack_units"],
            "split": False,
            "codes": [code],
        }
        body = claim(f"LTF{uuid.uuid4().hex[:24]}", org, [line])

        def check(data: Any) -> str | None:
            reasons = [r["reason"] for ln in data.get("lines", []) for r in ln["reasons"]]
            if data.get("decision") != "rejected" or "ALREADY_SETTLED" not in reasons:
                return f"a consumed pack was not refused: {data.get('decision')} {reasons}"
            return None

        self.call("settle", "POST", "/v1/settlements", w.role_key("insurer"), body, check)
        OUTCOMES["settle.fraud_refused"] += 1
        return True

    def precheck(self) -> bool:
        w = world()
        org = self._org()
        if org is None:
            return False
        codes = self._claim_codes(org, random.randint(1, 3))
        if not codes:
            return False
        lines, split = self._lines(org, codes)
        body = claim(f"LTP{uuid.uuid4().hex[:24]}", org, lines, mode="precheck")

        def check(data: Any) -> str | None:
            if data.get("decision") != "accepted":
                return (
                    f"precheck {data.get('decision')}: {[ln['reasons'] for ln in data.get('lines', [])][:3]}"
                )
            return None

        self.call("precheck", "POST", "/v1/settlements", w.role_key("insurer"), body, check)
        for code in codes:
            w.stock.put(org, code)
        for code, _, left in split:
            w.opened.put(org, [code, left])
        return True

    def settlement_get(self) -> bool:
        w = world()
        if not w.recent:
            return False
        sale = random.choice(w.recent)

        def check(data: Any) -> str | None:
            return None if data.get("setl_id") == sale["setl_id"] else f"got {data.get('setl_id')}"

        self.call(
            "settlement_get", "GET", f"/v1/settlements/{sale['setl_id']}", w.role_key("insurer"), check=check
        )
        return True

    def reversal(self) -> bool:
        """A refund: the units come back, and those whole packs go back on the shelf (a
        late dispense upload with the same setl_id consumes nothing again)."""
        w = world()
        if not w.recent:
            return False
        sale = w.recent.popleft()

        def check(data: Any) -> str | None:
            return None if data.get("reversed") is True else f"not reversed: {data}"

        if (
            self.call(
                "reversal",
                "POST",
                f"/v1/settlements/{sale['setl_id']}/reversal",
                w.role_key("insurer"),
                check=check,
            )
            is not None
        ):
            for code in sale["whole"]:
                w.stock.put(sale["org"], code)
        return True


class Investigator(Actor):
    ops = ("history", "flags")
    rate_keys = {"history": "history", "flags": "flags"}
    per_user_max = 1.0

    def history(self) -> bool:
        w = world()
        source = w.touched if w.touched and random.random() < 0.5 else w.history
        if not source:
            return False
        code = random.choice(source)

        def check(data: Any) -> str | None:
            return None if data.get("code") == code and data.get("events") else f"no history for {code}"

        self.call("history", "GET", f"/v1/codes/{code}/history", w.role_key("investigator"), check=check)
        return True

    def flags(self) -> bool:
        """GET /v1/flags: a 200 with an items list."""
        w = world()
        region = w.orgs[random.choice(w.by_kind["pharmacy"])]["region"]
        filters = random.choice(("", "&status=open", "&kind=DUPLICATE", f"&region={region}"))

        def check(data: Any) -> str | None:
            return None if isinstance(data.get("items"), list) else "no items list"

        self.call(
            "flags",
            "GET",
            f"/v1/flags?limit=50{filters}",
            w.role_key("investigator"),
            check=check,
        )
        return True


ALL_USERS: list[type[Actor]] = [Manufacturer, Distributor, Pharmacy, Hospital, SettlementEngine, Investigator]


# --- set-up, measurement and the verdict ----------------------------------------------


@events.init.add_listener
def _init(environment: Environment, **_: Any) -> None:
    global WORLD
    options = environment.parsed_options
    if options is None:  # library use without options: defaults
        return
    Clock.duration = options.load_duration
    Clock.shape = options.load_shape
    if not isinstance(environment.runner, MasterRunner):
        path = Path(options.manifest)
        if not path.exists():
            raise SystemExit(
                f"no manifest at {path}: run loadtests/seed.py first (or set TRACE_LOAD_MANIFEST)"
            )
        WORLD = World(json.loads(path.read_text()))
    rates = volumes.PROVINCE_PEAK_RPS
    for cls in ALL_USERS:
        weights = [rates[cls.rate_keys[op]] for op in cls.ops]
        total = sum(weights) * options.load_scale
        users = options.users_per_class or volumes.users_needed(total, cls.per_user_max)
        cls.fixed_count = users
        cls.weights = weights
        cls.round_robin = options.op_mix == "round-robin"
        cls.rate = options.user_rate or total / users
        log.info("%s: %d user(s) at %.3f requests/s each at factor 1", cls.__name__, users, cls.rate)


@events.test_start.add_listener
def _start(environment: Environment, **_: Any) -> None:
    Clock.started = time.monotonic()
    runner = environment.runner
    count = getattr(environment.parsed_options, "processes", None) or int(
        os.environ.get("TRACE_LOAD_WORKERS", "1")
    )
    if isinstance(runner, WorkerRunner) and WORLD is not None and count and count > 1:
        WORLD.partition(runner.worker_index, count)
    if not isinstance(runner, WorkerRunner):
        gevent.spawn(_snapshots, environment)


SNAPSHOTS: list[tuple[float, dict[str, tuple[int, int]]]] = []


def _snapshot(environment: Environment) -> None:
    counts = {name: (e.num_requests, e.num_failures) for (name, _), e in environment.stats.entries.items()}
    SNAPSHOTS.append((Clock.elapsed(), counts))


def _snapshots(environment: Environment) -> None:
    """Request counts at each window's edges, for the rates the summary reports."""
    edges = sorted({t for _, a, b in Clock.windows() for t in (a, b)})
    for edge in edges:
        gevent.sleep(max(0.0, edge - Clock.elapsed()))
        if edge >= Clock.duration:
            break
        _snapshot(environment)


@events.test_stop.add_listener
def _stop(environment: Environment, **_: Any) -> None:
    _snapshot(environment)


@events.request.add_listener
def _request(name: str, response_time: float, exception: Any, **_: Any) -> None:
    t = Clock.elapsed()
    for window, a, b in Clock.windows():
        if a <= t < b:
            LATENCIES.setdefault((name, window), array("f")).append(response_time)


def _count_at(t: float, name: str) -> tuple[float, int, int]:
    """(time, requests, failures) of the snapshot nearest ``t``."""
    at, counts = min(SNAPSHOTS, key=lambda s: abs(s[0] - t))
    return (at, *counts.get(name, (0, 0)))


def summary(environment: Environment) -> dict[str, Any]:
    options = environment.parsed_options
    scale = options.load_scale
    targets = volumes.by_operation({k: v * scale for k, v in volumes.PROVINCE_PEAK_RPS.items()})
    if options.user_rate:
        targets = {}
        for cls in ALL_USERS:
            for op in cls.ops:
                targets[op] = targets.get(op, 0.0) + cls.rate * cls.fixed_count / len(cls.ops)
    ops: dict[str, Any] = {}
    for (name, _method), e in sorted(environment.stats.entries.items()):
        windows = {}
        for window, a, b in Clock.windows():
            if not SNAPSHOTS:
                break
            t0, n0, f0 = _count_at(a, name)
            t1, n1, f1 = _count_at(b, name)
            lat = LATENCIES.get((name, window), array("f"))
            windows[window] = {
                "seconds": round(t1 - t0, 1),
                "requests": n1 - n0,
                "failures": f1 - f0,
                "rate": (n1 - n0) / (t1 - t0) if t1 > t0 else None,
                "p50": percentile(lat, 0.50),
                "p95": percentile(lat, 0.95),
                "p99": percentile(lat, 0.99),
            }
        ops[name] = {
            "requests": e.num_requests,
            "failures": e.num_failures,
            "p50": e.get_response_time_percentile(0.50) if e.num_requests else None,
            "p95": e.get_response_time_percentile(0.95) if e.num_requests else None,
            "p99": e.get_response_time_percentile(0.99) if e.num_requests else None,
            "max": e.max_response_time if e.num_requests else None,
            "target_rate": targets.get(name),
            "windows": windows,
        }
    errors = [
        {"name": err.name, "error": str(err.error), "occurrences": err.occurrences}
        for err in environment.stats.errors.values()
    ]
    return {
        "scale": scale,
        "shape": Clock.shape,
        "duration": Clock.duration,
        "users": {cls.__name__: cls.fixed_count for cls in ALL_USERS},
        "user_rate": {cls.__name__: cls.rate for cls in ALL_USERS},
        "operations": ops,
        "total": {
            "requests": environment.stats.total.num_requests,
            "failures": environment.stats.total.num_failures,
        },
        "outcomes": dict(OUTCOMES),
        "errors": errors,
        "slo_ms": slo_objectives(options.slo),
        "max_fail_ratio": options.max_fail_ratio,
    }


def slo_objectives(spec: str) -> dict[str, float]:
    if spec.strip().lower() == "off":
        return {}
    out = dict(DEFAULT_SLO_MS)
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, value = part.partition("=")
        out[name.strip()] = float(value)
    return out


@events.quitting.add_listener
def _verdict(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, WorkerRunner) or environment.parsed_options is None:
        return
    data = summary(environment)
    breaches = []
    total = data["total"]
    ratio = total["failures"] / total["requests"] if total["requests"] else 0.0
    if ratio > data["max_fail_ratio"]:
        breaches.append(f"failure ratio {ratio:.4%} > {data['max_fail_ratio']:.4%}")
    for name, op in data["operations"].items():
        objective = data["slo_ms"].get(name)
        if objective is not None and op["p99"] is not None and op["p99"] > objective:
            breaches.append(f"{name} p99 {op['p99']:.0f} ms > {objective:.0f} ms")
    data["breaches"] = breaches
    data["passed"] = not breaches
    if environment.parsed_options.summary_json:
        Path(environment.parsed_options.summary_json).write_text(json.dumps(data, indent=1))
    for line in breaches:
        log.error("objective missed: %s", line)
    if not breaches:
        log.info("all objectives met (failure ratio %.4f%%)", 100 * ratio)
    environment.process_exit_code = 1 if breaches else 0
