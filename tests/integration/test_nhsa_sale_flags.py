"""One sale, one flag per suspicion, whatever channels it came through and in whatever
order: an NHSA 3505 (or 3502) uploaded before its pack's commission, a 3505 and a
settlement of one setl_id, a 3505 and a /v1/events dispense of one whole-pack sale.
Found by a probe of the flags raised through NHSA and EPCIS."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import Api, cn20, eid, event, pack_claim
from tests.integration.test_nhsa import MED, SALE_MINUTES, SWAPPED, _world, envelope, nhsa, sale
from tests.integration.test_nhsa_deletions import delete_sale
from tests.integration.test_nhsa_ledger import change

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def _flags(inv: Api, code: str, kind: str) -> list[dict[str, Any]]:
    """The flags of ``kind`` on ``code``, pending ones too."""
    out = []
    for status in ("", "&status=pending"):
        out += (await inv.ok("GET", f"/v1/flags?code={code}&kind={kind}{status}"))["items"]
    return out


async def _units_left(api: Api, code: str) -> int:
    verify = await api.ok("GET", f"/v1/codes/{code}/verify")
    return int(verify["units_left"])


async def _supplied(w: dict[str, Any], code: str, expiry: str = "2028-12-31") -> None:
    """``code`` commissioned by M1, shipped to P2 and received there (minutes 0 to 2)."""
    m, p2 = w["keys"]["M1"], w["keys"]["P2"]
    await m.events(event("commission", "M1", [code], 0, lot="L1", expiry=expiry, produced="2026-01-05"))
    await m.events(event("ship", "M1", [code], 1, to="P2"))
    await p2.events(event("receive", "P2", [code], 2))


@pytest.mark.parametrize("record", ["3505 sale", "3502 move"])
async def test_an_item_swapped_before_the_pack_is_commissioned_is_flagged_once_it_is(
    admin: Api, record: str
) -> None:
    """A 3505 billing another item than the pack's (串换), uploaded before the pack's
    commission, is PRODUCT_MISMATCH once the commission arrives, as in date order
    (README, Known limits). So is a 3502 recording a move of the pack under another item.
    Found by a probe: the event log kept no billed item, so the waiting sale was judged
    without it, and the move was never judged again."""
    w = await _world(admin)
    p2 = w["keys"]["P2"]
    inv = await admin.key_for("investigator")
    code = cn20(w["unit"], 50)
    if record == "3505 sale":
        body = envelope("3505", {"selinfo": sale("B-EARLY", [code], 24, med_list_codg=SWAPPED)})
        named = "dispense by P2: billed as"
    else:  # a transfer out (a ship naming no destination) recorded under another item
        body = envelope("3502", {"invinfo": change("T-EARLY", "102", 24, [code], med_list_codg=SWAPPED)})
        named = "ship by P2: recorded as"
    out = await nhsa(p2, body)
    assert out["infcode"] == 0, out
    assert not await _flags(inv, code, "PRODUCT_MISMATCH")  # the pack is not known yet
    await _supplied(w, code)
    [flag] = await _flags(inv, code, "PRODUCT_MISMATCH")
    assert (flag["status"], flag["org"], flag["refs"]["billed"]) == ("open", "P2", SWAPPED), flag
    assert flag["refs"]["items"] == [SWAPPED, MED]
    assert flag["detail"].startswith(f"{named} {SWAPPED}, the pack is {MED}"), flag


async def _sold_in_two_channels(admin: Api, kind: str, settlement_first: bool) -> str:
    """One sale under setl_id S-ONE of one pack, sent as a settlement and as a 3505 of
    that setl_id, in the order asked, with what makes it ``kind``: billed as another
    item (both say so), an expired pack, or a pack a cash sale used up an hour before.
    Returns the pack."""
    w = await _world(admin)
    p2 = w["keys"]["P2"]
    insurer = await admin.key_for("insurer")
    code, item = w["units"][0], MED
    if kind == "PRODUCT_MISMATCH":
        item = SWAPPED
    elif kind == "EXPIRED":
        code = cn20(w["unit"], 60)
        await _supplied(w, code, expiry="2026-03-04")
    else:  # DUPLICATE: sold for cash before
        cash = sale("B-CASH", [code], 24, sel_retn_time="2026-03-05 09:00:00")
        assert (await nhsa(p2, envelope("3505", {"selinfo": cash})))["infcode"] == 0
    claim = pack_claim("S-ONE", code, SALE_MINUTES, org="P2", item=item)
    upload = envelope("3505", {"selinfo": sale("B-ONE", [code], 24, setl_id="S-ONE", med_list_codg=item)})
    if settlement_first:
        await insurer.ok("POST", "/v1/settlements", claim)
        assert (await nhsa(p2, upload))["infcode"] == 0
    else:
        assert (await nhsa(p2, upload))["infcode"] == 0
        await insurer.ok("POST", "/v1/settlements", claim)
    return code


@pytest.mark.parametrize("kind", ["PRODUCT_MISMATCH", "EXPIRED", "DUPLICATE"])
@pytest.mark.parametrize("settlement_first", [True, False], ids=["settlement first", "3505 first"])
async def test_one_sale_as_a_settlement_and_a_3505_is_flagged_once(
    admin: Api, kind: str, settlement_first: bool
) -> None:
    """A sale's settlement and its 3505 (same setl_id, same pack) are one sale: each
    suspicion of it is one flag, resting on the settlement, whichever arrives first, and
    the organisation's figures count it once. Found by a probe: two flags of each kind,
    one on the settlement and one on the 3505's dispense event."""
    code = await _sold_in_two_channels(admin, kind, settlement_first)
    inv = await admin.key_for("investigator")
    [flag] = await _flags(inv, code, kind)
    assert (flag["org"], flag["refs"]["settlements"]) == ("P2", ["S-ONE"]), flag
    stats = await inv.ok("GET", "/v1/orgs/P2/stats")
    assert stats["flags_by_kind"][kind] == 1, stats
    listed = (await inv.ok("GET", "/v1/flags?org=P2&limit=1000"))["items"]
    assert stats["flagged"] == len(listed), (stats, listed)


@pytest.mark.parametrize("settlement", ["none", "of another pack"])
async def test_what_a_deleted_sale_under_a_setl_id_raised_is_withdrawn(admin: Api, settlement: str) -> None:
    """A 3505 under a setl_id raises what it finds as a sale on that settlement id (one
    sale, one flag): deleted (NHSA 3507), what it raised on a pack that no settlement of
    that id billed rests on nothing, and is withdrawn, as one resting on its event was
    (a settlement that billed the pack keeps it:
    ``test_nhsa_deletion_of_an_unpaid_sale``)."""
    w = await _world(admin)
    p2 = w["keys"]["P2"]
    inv = await admin.key_for("investigator")
    code = cn20(w["unit"], 70)
    await _supplied(w, code, expiry="2026-03-04")
    if settlement == "of another pack":
        insurer = await admin.key_for("insurer")
        other = pack_claim("S-DEL", w["units"][0], SALE_MINUTES, "P2")
        paid = await insurer.ok("POST", "/v1/settlements", other)
        assert paid["decision"] == "accepted", paid
    out = await nhsa(p2, envelope("3505", {"selinfo": sale("B-DEL", [code], 24, setl_id="S-DEL")}))
    assert [f["kind"] for f in out["output"]["tracecode"]["flags"]] == ["EXPIRED"], out
    [flag] = await _flags(inv, code, "EXPIRED")
    assert (flag["status"], flag["refs"]["settlements"]) == ("open", ["S-DEL"]), flag
    await delete_sale(p2, "B-DEL")
    assert (await inv.ok("GET", f"/v1/flags/{flag['flag_id']}"))["status"] == "auto_cleared"
    assert await _units_left(p2, code) == 24


@pytest.mark.parametrize(
    "channel", ["/v1/events", "3505", "one batch"], ids=["3505 then event", "event then 3505", "one batch"]
)
async def test_one_whole_pack_sale_as_a_3505_and_a_dispense_event_is_one_sale(
    admin: Api, db: Any, channel: str
) -> None:
    """One whole-pack sale sent as a 3505 (no setl_id) and as a dispense event of the
    same organisation at the same instant, in either order, is one sale (API.md: a fact
    sent twice in two formats is one fact): the second is taken as an event, takes
    nothing more, and is no resale (DUPLICATE). A split sale (a quantity) is left as it
    is (README). Found by a probe: two sales and an open DUPLICATE. "one batch": the
    sale sent twice under two event ids in one /v1/events request (judged in arrival
    order, not folded again in event time), one sale all the same."""
    w = await _world(admin)
    p2, code = w["keys"]["P2"], w["units"][0]
    inv = await admin.key_for("investigator")
    upload = envelope("3505", {"selinfo": sale("B-TWICE", [code], 24)})
    # the 3505's time, 2026-03-05 10:00 China time
    dispense = event("dispense", "P2", [code], SALE_MINUTES)

    async def by_event() -> None:
        out = await p2.events(dispense)
        assert (out["accepted"], out["rejected"]) == (1, []), out

    async def by_nhsa() -> None:
        out = await nhsa(p2, upload)
        assert out["output"]["tracecode"]["accepted"] == 1, out

    if channel == "/v1/events":  # the event second
        await by_nhsa()
        await by_event()
    elif channel == "one batch":
        out = await p2.events(dispense, {**dispense, "event_id": eid()})
        assert (out["accepted"], out["rejected"]) == (2, []), out
    else:
        await by_event()
        await by_nhsa()
    assert not await _flags(inv, code, "DUPLICATE")
    assert await _units_left(p2, code) == 0
    rows = await db.fetch("SELECT units FROM consumptions WHERE code = $1", code)
    assert [r["units"] for r in rows] == [24]
    stats = await inv.ok("GET", "/v1/orgs/P2/stats")
    assert stats["dispensed"] == 1, stats


@pytest.mark.parametrize("copy_setl", ["S-K", None], ids=["copy under S-K", "copy without setl_id"])
@pytest.mark.parametrize("order", ["3505 first", "event first"])
async def test_deleting_one_copy_of_a_sale_leaves_the_sales_flag_to_the_other(
    admin: Api, copy_setl: str | None, order: str
) -> None:
    """An expired pack sold once, sent as a 3505 under S-K and as a dispense event at the
    same instant (under S-K, or with no setl_id: the same sale sent again). A 3507 then
    deletes the 3505: the other copy still sells the pack, and so the sale's EXPIRED
    stands. It was withdrawn with the 3505 in three of the four orders (found by a
    probe): the deletion took it for the deleted record's alone."""
    w = await _world(admin)
    p2 = w["keys"]["P2"]
    inv = await admin.key_for("investigator")
    code = cn20(w["unit"], 77)
    await _supplied(w, code, expiry="2026-03-04")
    upload = envelope("3505", {"selinfo": sale("B-K", [code], 24, setl_id="S-K")})
    copy = event("dispense", "P2", [code], SALE_MINUTES, **({"setl_id": copy_setl} if copy_setl else {}))
    if order == "3505 first":
        await nhsa(p2, upload)
        await p2.events(copy)
    else:
        await p2.events(copy)
        await nhsa(p2, upload)
    await delete_sale(p2, "B-K")
    assert await _units_left(p2, code) == 0
    page = await inv.ok("GET", f"/v1/flags?code={code}&kind=EXPIRED")
    assert [f["status"] for f in page["items"]] == ["open"], page["items"]
