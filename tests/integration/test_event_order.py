"""Truth is by event time: the same events in any arrival order, in any batching, end in
the same state as when they arrive in order (property test through the public API)."""

from __future__ import annotations

import itertools
import uuid
from typing import Any

import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.core.custody import TYPE_RANK
from tests.helpers import Api, at, cn20, small_world, sscc

pytestmark = pytest.mark.asyncio(loop_scope="session")

_serials = itertools.count(1)


def _scenario(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A legitimate journey: commission, pack into cases (maybe a pallet), ship and
    receive through one or two distributors to a pharmacy, with unpacks, single-unit
    moves and a destroy along the way. Packs are often picked out of their case without
    an unpack scan (a distributor sends one straight to the pharmacy; the pharmacy
    sells, destroys or passes one on), and the case may then move on without them.
    Codes are placeholders u0.., c0.., p0."""
    n_units = draw(st.integers(2, 6))
    n_cases = draw(st.integers(1, 2))
    units = [f"u{i}" for i in range(n_units)]
    cases = [f"c{i}" for i in range(n_cases)]
    events: list[dict[str, Any]] = []
    t = 0

    def add(type_: str, org: str, codes: list[str], **extra: Any) -> None:
        nonlocal t
        # One organisation's scans may share an instant (commission and pack at once);
        # the service orders those by type. Another party's scan comes later in time.
        previous = events[-1] if events else None
        same_instant_ok = (
            previous is not None
            and previous["org"] == org
            and TYPE_RANK[type_] >= TYPE_RANK[previous["type"]]
        )
        t += draw(st.sampled_from([0, 1, 2] if same_instant_ok else [1, 2]))
        events.append({"type": type_, "org": org, "codes": codes, "t": t, **extra})

    add("commission", "M1", units, lot="L1", expiry="2029-06-30")
    for i, unit in enumerate(units):
        add("pack", "M1", [unit], parent=cases[i % n_cases])
    top = cases
    if draw(st.booleans()):
        add("pack", "M1", cases, parent="p0")
        top = ["p0"]
    hops = [*["D1", "D2"][: draw(st.integers(1, 2))], "P1"]
    holder = "M1"
    picked = False
    for hop in hops:
        add("ship", holder, top, to=hop)
        add("receive", hop, top, **({"from": holder} if draw(st.booleans()) else {}))
        holder = hop
        if top == ["p0"] and draw(st.booleans()):
            add("unpack", holder, cases, parent="p0")
            top = cases
        if hop != "P1" and not picked and draw(st.booleans()):
            # a distributor sends one pack from a case straight on, with no unpack scan
            picked = True
            add("ship", holder, [units[-1]], to="P1")
            add("receive", "P1", [units[-1]])
    # packs picked out of a case and sent on: their holders may sell them in the end
    sent = [("P1", units[-1])] if picked else []
    if draw(st.booleans()):
        loose = units[0]
        if draw(st.booleans()):
            add("unpack", holder, [loose], parent=cases[0])
        # otherwise picked with no unpack scan: the move below takes it out of its case
        ending = draw(st.sampled_from(["keep", "destroy", "dispense", "dispense and return", "send"]))
        if ending == "destroy":
            add("destroy", holder, [loose])
        elif ending.startswith("dispense"):
            add("dispense", holder, [loose], quantity=draw(st.integers(1, 24)))
            if ending.endswith("return"):
                add("return", holder, [loose])
        elif ending == "send":
            add("ship", holder, [loose], to="H1")
            add("receive", "H1", [loose])
            sent.append(("H1", loose))
    if draw(st.booleans()):
        # the rest goes back to a distributor, without the packs picked from it
        add("ship", holder, top, to="D1")
        add("receive", "D1", top)
    for org, pack in sent:
        if draw(st.booleans()):  # not a DIVERSION: the case did not take the pack along
            add("dispense", org, [pack], quantity=draw(st.integers(1, 24)))
    return events


scenarios = st.composite(_scenario)()


def _materialise(events: list[dict[str, Any]], base: int) -> tuple[list[dict[str, Any]], dict[str, str]]:
    names: dict[str, str] = {}

    def real(name: str) -> str:
        if name not in names:
            serial = base + len(names)
            names[name] = cn20("8123456", serial) if name.startswith("u") else sscc(serial)
        return names[name]

    out = []
    for i, e in enumerate(events):
        body: dict[str, Any] = {
            # same-instant events are ordered by type, then event id: ids rise with the
            # list position, so both copies of a scenario break ties the same way
            "event_id": str(uuid.UUID(int=((i + 1) << 80) | uuid.uuid4().int >> 48)),
            "type": e["type"],
            "at": at(e["t"]),
            "org": e["org"],
            "codes": [real(c) for c in e["codes"]],
        }
        for key in ("to", "from", "lot", "expiry", "quantity"):
            if key in e:
                body[key] = e[key]
        if "parent" in e:
            body["parent"] = real(e["parent"])
        out.append(body)
    return out, names


async def _post(admin: Api, events: list[dict[str, Any]], cuts: list[int]) -> None:
    start = 0
    for cut in [*sorted(set(cuts)), len(events)]:
        batch = events[start:cut]
        start = max(start, cut)
        if batch:
            resp = await admin.post("/v1/events", {"events": batch})
            assert resp.status_code == 200, resp.text
            assert resp.json()["rejected"] == []


async def _snapshot(inv: Api, names: dict[str, str]) -> dict[str, Any]:
    out = {}
    for name, code in names.items():
        h = await inv.ok("GET", f"/v1/codes/{code}/history")
        reverse = {v: k for k, v in names.items()}
        out[name] = (
            h["state"],
            h["custodian"],
            h["destination"],
            h["lot"],
            h["expiry"],
            h["known"],
            reverse.get(h["container"]),
            sorted(reverse[c] for c in h["contents"]),
            [(e["type"], e["at"], e["org"]) for e in h["events"]],
            h["units_left"],
        )
    return out


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scenario=scenarios, data=st.data())
async def test_any_arrival_order_converges(
    admin_world: tuple[Api, Api], scenario: list[dict[str, Any]], data: st.DataObject
) -> None:
    admin, inv = admin_world
    base = next(_serials) * 1000
    in_order, names_a = _materialise(scenario, base)
    await _post(admin, in_order, [])
    shuffled_events, names_b = _materialise(scenario, base + 500)
    order = data.draw(st.permutations(range(len(shuffled_events))))
    cuts = data.draw(st.lists(st.integers(0, len(shuffled_events)), max_size=4))
    await _post(admin, [shuffled_events[i] for i in order], cuts)
    assert await _snapshot(inv, names_b) == await _snapshot(inv, names_a)
    # a legitimate journey leaves no open flag, whatever order it arrived in
    for code in [*names_a.values(), *names_b.values()]:
        left_open = (await inv.ok("GET", f"/v1/flags?code={code}&status=open"))["items"]
        assert left_open == [], left_open


@pytest_asyncio.fixture(loop_scope="session")
async def admin_world(admin: Api) -> tuple[Api, Api]:
    await small_world(admin)
    return admin, await admin.key_for("investigator")
