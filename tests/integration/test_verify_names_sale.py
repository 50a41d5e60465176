"""Verify of a used-up pack names what took its units, as the settlement path does
(API.md's ALREADY_SETTLED: "``detail`` names it"): a dispense event, a settlement, an
NHSA 3505 sale. To an organisation's own key only its own sales are named (another
organisation's is "another organisation's sale", as in its precheck); an insurer, an
investigator or an admin verifying at ``?org=`` sees them named, as in an insurer's
precheck. The sales are read only for packs with no units left, once a batch."""

from __future__ import annotations

from typing import Any

import pytest

from service.store import codes as code_store
from tests.helpers import Api, event
from tests.integration.test_nhsa import _world, envelope, nhsa, sale
from tests.integration.test_settlements import claim, stocked

pytestmark = pytest.mark.asyncio(loop_scope="session")

HIDDEN = "all 24 units were consumed by another organisation's sale"


def used_up(answer: dict[str, Any]) -> str:
    """The ALREADY_SETTLED detail of one verify answer (there must be one)."""
    [detail] = [r["detail"] for r in answer["reasons"] if r["reason"] == "ALREADY_SETTLED"]
    return str(detail)


async def verify_one(api: Api, code: str, org: str | None = None) -> dict[str, Any]:
    resp = await api.get(f"/v1/codes/{code}/verify", **({"org": org} if org else {}))
    assert resp.status_code == 200, resp.text
    out: dict[str, Any] = resp.json()
    return out


async def verify_many(api: Api, codes: list[str], org: str | None = None) -> list[dict[str, Any]]:
    body: dict[str, Any] = {"codes": codes, **({"org": org} if org else {})}
    out = await api.ok("POST", "/v1/verify", body)
    items: list[dict[str, Any]] = out["items"]
    return items


async def test_verify_names_the_dispense_or_settlement_that_used_the_pack_up(admin: Api) -> None:
    w = await stocked(admin, n=3)
    ins, p1 = w["insurer"], w["keys"]["P1"]
    dispensed, settled, fresh = w["codes"]
    sold = event("dispense", "P1", [dispensed], 30)
    await p1.events(sold)
    answer = await ins.ok("POST", "/v1/settlements", claim("S1", [{"quantity": 24, "codes": [settled]}]))
    assert answer["decision"] == "accepted"
    by_dispense = f"all 24 units were consumed by dispense event {sold['event_id']}"
    by_settlement = "all 24 units were consumed by settlement S1"

    # the selling organisation's own key: its sales named, worded as its precheck words them
    assert used_up(await verify_one(p1, dispensed)) == by_dispense
    assert used_up(await verify_one(p1, settled)) == by_settlement
    a, b, c = await verify_many(p1, [dispensed, settled, fresh])
    assert (used_up(a), used_up(b)) == (by_dispense, by_settlement)
    assert c["dispensable"] is True
    assert c["reasons"] == []
    line = [{"quantity": 24, "codes": [dispensed]}]
    precheck = await p1.ok("POST", "/v1/settlements", claim("PC", line, mode="precheck"))
    [said] = [r["detail"] for r in precheck["lines"][0]["reasons"] if r["reason"] == "ALREADY_SETTLED"]
    assert said == used_up(a)

    # another organisation's key, verifying at itself: neither sale is named
    h1 = await admin.key_for("org", "H1")
    for seen in [await verify_one(h1, dispensed), await verify_one(h1, settled)]:
        assert used_up(seen) == HIDDEN
        assert sold["event_id"] not in str(seen)
        assert "S1" not in str(seen)
    many = await verify_many(h1, [dispensed, settled, fresh])
    assert [used_up(x) for x in many[:2]] == [HIDDEN, HIDDEN]
    assert sold["event_id"] not in str(many)
    assert "S1" not in str(many)

    # an insurer, an investigator, an admin at ?org=H1: named, as in an insurer's precheck
    inv = await admin.key_for("investigator")
    for key in (ins, inv, admin):
        assert used_up(await verify_one(key, dispensed, org="H1")) == by_dispense
        x, y = await verify_many(key, [dispensed, settled], org="H1")
        assert (used_up(x), used_up(y)) == (by_dispense, by_settlement)
    insurers = await ins.ok("POST", "/v1/settlements", claim("PC", line, org="H1", mode="precheck"))
    assert by_dispense in str(insurers["lines"][0]["reasons"])


async def test_verify_names_an_nhsa_sale(admin: Api) -> None:
    """A 3505 sale with a setl_id is named by it; one without, by its dispense event."""
    w = await _world(admin)
    p2, (insured, cash, *_) = w["keys"]["P2"], w["units"]
    out = await nhsa(p2, envelope("3505", {"selinfo": sale("B1", [insured], 24, setl_id="S100")}))
    assert out["output"]["tracecode"]["accepted"] == 1, out
    out = await nhsa(p2, envelope("3505", {"selinfo": sale("B2", [cash], 24)}))
    assert out["output"]["tracecode"]["accepted"] == 1, out
    inv = await admin.key_for("investigator")
    history = await inv.ok("GET", f"/v1/codes/{cash}/history")
    [dispense_id] = [e["event_id"] for e in history["events"] if e["type"] == "dispense"]
    by_settlement = "all 24 units were consumed by settlement S100"
    by_dispense = f"all 24 units were consumed by dispense event {dispense_id}"

    assert used_up(await verify_one(p2, insured)) == by_settlement
    assert used_up(await verify_one(p2, cash)) == by_dispense
    x, y = await verify_many(p2, [insured, cash])
    assert (used_up(x), used_up(y)) == (by_settlement, by_dispense)

    p1 = w["keys"]["P1"]  # another organisation: nothing of P2's sales
    for answer in [await verify_one(p1, insured), *await verify_many(p1, [insured, cash])]:
        assert used_up(answer) == HIDDEN
        assert "S100" not in str(answer)
        assert dispense_id not in str(answer)

    ins = await admin.key_for("insurer")
    assert used_up(await verify_one(ins, cash, org="P1")) == by_dispense
    x, y = await verify_many(ins, [insured, cash], org="P1")
    assert (used_up(x), used_up(y)) == (by_settlement, by_dispense)


async def test_the_sales_are_read_once_a_batch_and_only_for_used_up_packs(
    admin: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Verify is the hottest read: a batch with used-up packs reads their sales in one
    statement a shard (one on plain PostgreSQL: Citus routes them by code), for those
    packs alone; a batch with none reads no sales at all."""
    w = await stocked(admin, n=4)
    p1, (a, b, c, d) = w["keys"]["P1"], w["codes"]
    await p1.events(event("dispense", "P1", [a], 30), event("dispense", "P1", [b], 31))
    await p1.events(event("dispense", "P1", [c], 32, quantity=6))  # a split sale: units left
    reads: list[list[str]] = []
    real = code_store.fetch_by_shard

    async def counted(conn: Any, sql: str, codes: Any, *args: object) -> Any:
        if "FROM consumptions" in sql:
            reads.append(sorted(codes))
        return await real(conn, sql, codes, *args)

    monkeypatch.setattr(code_store, "fetch_by_shard", counted)
    items = await verify_many(p1, [a, c, b, d, "not a code"])
    assert reads == [sorted([a, b])]
    assert [x["dispensable"] for x in items] == [False, True, False, True, False]
    reads.clear()
    await verify_many(p1, [c, d])
    await verify_one(p1, d)
    assert reads == []
    await verify_one(p1, b)
    assert reads == [[b]]
