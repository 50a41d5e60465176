"""A 3507 deletion of a sale whose ``setl_id`` names a settlement that did not pay for
its pack (the settlement rejected, its line for that pack refused, the pack not billed):
the pack is given back, as for a sale with no settlement, and the flags its dispense
raised are withdrawn. Only a pack the settlement paid for stays taken (until the
insurer's reversal gives it back). Found in review: any settlement of the setl_id, paid
or not, kept every pack of the deleted sale taken, with nothing paying for it."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import Api
from tests.integration.test_nhsa import MED, _units_left, _world, envelope, nhsa, sale
from tests.integration.test_nhsa_deletions import (
    _shelf_pack,
    _standing_flags,
    delete_sale,
    delete_sale_settled_meanwhile,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

AT = "2026-03-05T10:00:00+08:00"  # the sale's time, sel_retn_time's default in sale()


def line(n: int, code: str, quantity: int = 24, *, split: bool = False, med: str = MED) -> dict[str, Any]:
    out: dict[str, Any] = {"line_no": n, "med_list_codg": med, "quantity": quantity, "codes": [code]}
    if split:
        out["split"] = True
    return out


def claim(setl_id: str, lines: list[dict[str, Any]], psn_no: str = "45000012345678") -> dict[str, Any]:
    return {"setl_id": setl_id, "org": "P2", "psn_no": psn_no, "at": AT, "lines": lines}


async def settled(insurer: Api, setl_id: str, lines: list[dict[str, Any]], decision: str) -> dict[str, Any]:
    answer: dict[str, Any] = await insurer.ok("POST", "/v1/settlements", claim(setl_id, lines))
    assert answer["decision"] == decision, answer
    return answer


async def sold_again(insurer: Api, setl_id: str, code: str) -> str:
    """Another person's settlement of ``code`` a day later: its decision."""
    again = {**claim(setl_id, [line(1, code)], psn_no="45000099999999"), "at": "2026-03-06T10:00:00+08:00"}
    answer = await insurer.ok("POST", "/v1/settlements", again)
    return str(answer["decision"])


@pytest.mark.parametrize("why", ["expired pack", "quantity billed wrong"])
async def test_a_sale_whose_settlement_was_rejected_is_given_back(admin: Api, why: str) -> None:
    """The 3505 under S6xx took the pack; the settlement S6xx was rejected (it took and
    paid nothing). Deleted, the sale gives the pack back; what it raised (an expired
    pack's EXPIRED) is the settlement's flag too (one sale: one flag per suspicion,
    ``core.flags.Evidence.sale``), and the settlement, which billed the pack, still
    rests on it: it stays. The pack may be sold again."""
    w = await _world(admin)
    p2 = w["keys"]["P2"]
    insurer = await admin.key_for("insurer")
    inv = await admin.key_for("investigator")
    n = 610 if why == "expired pack" else 611
    code = await _shelf_pack(w, n, expiry="2026-03-01" if why == "expired pack" else "2028-12-31")
    setl_id, bchno = f"S{n}", f"B{n}"
    out = await nhsa(p2, envelope("3505", {"selinfo": sale(bchno, [code], 24, setl_id=setl_id)}))
    raised = out["output"]["tracecode"]["flags"]
    assert [f["kind"] for f in raised] == (["EXPIRED"] if why == "expired pack" else []), out
    assert await _units_left(p2, code) == 0
    answer = await settled(insurer, setl_id, [line(1, code, 24 if why == "expired pack" else 12)], "rejected")
    own = [f["kind"] for f in answer["flags"]]  # the settlement's: resting on it, they stay
    assert own == [f["kind"] for f in raised], answer
    # the same flags: one sale
    assert [f["flag_id"] for f in answer["flags"]] == [f["flag_id"] for f in raised], answer

    await delete_sale(p2, bchno)
    assert await _units_left(p2, code) == 24
    assert await _standing_flags(inv, code) == sorted(own)
    if why != "expired pack":
        assert await sold_again(insurer, f"S{n}-2", code) == "accepted"


async def test_a_partly_paid_sale_gives_back_the_pack_its_settlement_refused(admin: Api) -> None:
    """The 3505 under S620 took packs A and B (whole packs: one event each); the
    settlement S620 paid for A and refused its line for B (a quantity that is not the
    pack's). Deleted, the sale gives back B only: A is the settlement's, taken until the
    insurer reverses it."""
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    insurer = await admin.key_for("insurer")
    a, b = u[0], u[1]
    await nhsa(p2, envelope("3505", {"selinfo": sale("B620", [a, b], 48, setl_id="S620")}))
    assert [await _units_left(p2, c) for c in (a, b)] == [0, 0]
    answer = await settled(insurer, "S620", [line(1, a), line(2, b, 12)], "partial")
    assert [x["payable"] for x in answer["lines"]] == [True, False], answer

    await delete_sale(p2, "B620")
    assert [await _units_left(p2, c) for c in (a, b)] == [0, 24]
    assert await sold_again(insurer, "S620-B", b) == "accepted"
    assert await sold_again(insurer, "S620-A", a) == "rejected"
    # the reversal gives A back
    await insurer.ok("POST", "/v1/settlements/S620/reversal", None)
    assert await _units_left(p2, a) == 24


async def test_a_sale_of_a_pack_its_settlement_did_not_bill_gives_that_pack_back(admin: Api) -> None:
    """The 3505 under S625 took A and B; the settlement S625 billed A only. Deleted, the
    sale gives back B, which nothing paid for."""
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    insurer = await admin.key_for("insurer")
    a, b = u[0], u[1]
    await nhsa(p2, envelope("3505", {"selinfo": sale("B625", [a, b], 48, setl_id="S625")}))
    await settled(insurer, "S625", [line(1, a)], "accepted")
    await delete_sale(p2, "B625")
    assert [await _units_left(p2, c) for c in (a, b)] == [0, 24]


async def test_a_reversed_partly_paid_sale_gives_nothing_more(admin: Api) -> None:
    """S630 paid for A and refused B, then was reversed: the reversal gave back what the
    sale took (its own organisation's packs). The deletion gives nothing more, and A's
    history still lists the reversed settlement."""
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    insurer = await admin.key_for("insurer")
    inv = await admin.key_for("investigator")
    a, b = u[0], u[1]
    await nhsa(p2, envelope("3505", {"selinfo": sale("B630", [a, b], 48, setl_id="S630")}))
    await settled(insurer, "S630", [line(1, a), line(2, b, 12)], "partial")
    await insurer.ok("POST", "/v1/settlements/S630/reversal", None)
    assert [await _units_left(p2, c) for c in (a, b)] == [24, 24]
    history = (await inv.ok("GET", f"/v1/codes/{a}/history"))["settlements"]
    await delete_sale(p2, "B630")
    assert [await _units_left(p2, c) for c in (a, b)] == [24, 24]
    assert (await inv.ok("GET", f"/v1/codes/{a}/history"))["settlements"] == history
    assert [(s["setl_id"], s["reversed"]) for s in history] == [("S630", True)]


async def test_a_split_sale_partly_paid_stays_taken(admin: Api) -> None:
    """A split sale (trdn_flag 1) is one event over its packs: 30 units, 24 from A and 6
    from B. S640 paid for A's units and refused its line for B. The event is kept or
    undone as a whole, and a settlement paid for part of it: the deletion leaves it
    taken (the conservative reading: nothing the settlement may have paid for comes
    back), until the reversal gives it back."""
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    insurer = await admin.key_for("insurer")
    a, b = u[0], u[1]
    await nhsa(p2, envelope("3505", {"selinfo": sale("B640", [a, b], 30, split="1", setl_id="S640")}))
    assert [await _units_left(p2, c) for c in (a, b)] == [0, 18]
    lines = [line(1, a, 24, split=True), line(2, b, 6, split=True, med="X")]  # B's line: another item
    answer = await settled(insurer, "S640", lines, "partial")
    assert [x["payable"] for x in answer["lines"]] == [True, False], answer
    await delete_sale(p2, "B640")
    assert [await _units_left(p2, c) for c in (a, b)] == [0, 18]
    await insurer.ok("POST", "/v1/settlements/S640/reversal", None)
    assert [await _units_left(p2, c) for c in (a, b)] == [24, 24]


async def test_a_split_sale_whose_settlement_was_rejected_is_given_back(admin: Api) -> None:
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    insurer = await admin.key_for("insurer")
    a, b = u[0], u[1]
    await nhsa(p2, envelope("3505", {"selinfo": sale("B645", [a, b], 30, split="1", setl_id="S645")}))
    await settled(insurer, "S645", [line(1, a, 30, split=True)], "rejected")  # a holds 24
    await delete_sale(p2, "B645")
    assert [await _units_left(p2, c) for c in (a, b)] == [24, 24]


async def test_a_rejected_settlement_committed_while_a_deletion_is_worked_out_leaves_it_as_it_was(
    admin: Api, db_url: str, monkeypatch: Any
) -> None:
    """A settlement of the deleted sale committed between the deletion's read and its
    transaction is read again inside it (one that pays for the pack makes the deletion
    work itself out again: test_nhsa_deletions). A rejected one pays for nothing: the
    pack comes back all the same."""
    w = await _world(admin)
    p2 = w["keys"]["P2"]
    insurer = await admin.key_for("insurer")
    code = await _shelf_pack(w, 650)
    await nhsa(p2, envelope("3505", {"selinfo": sale("B650", [code], 24, setl_id="S650")}))

    async def settle() -> None:
        await settled(insurer, "S650", [line(1, code, 12)], "rejected")

    done = await delete_sale_settled_meanwhile(db_url, monkeypatch, "B650", settle)
    assert done.deleted == ["B650"]
    assert done.result.accepted_codes == 1  # the compensating return
    assert await _units_left(p2, code) == 24
