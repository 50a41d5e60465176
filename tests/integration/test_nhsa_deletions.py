"""A 3507 deletion undoes what the deleted record did, and only that: a deleted sale
gives back the units its own events took (nothing when they took nothing), never
another sale's or a settlement's."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis

from service.core.rules import CHINA
from tests.helpers import Api, cn20, event, sscc
from tests.integration.test_console import _sign_in
from tests.integration.test_nhsa import (
    IDS,
    MED,
    P1_CODE,
    SWAPPED,
    _units_left,
    _world,
    envelope,
    nhsa,
    sale,
    sale_return,
)
from tests.integration.test_nhsa_ledger import count, deletion

pytestmark = pytest.mark.asyncio(loop_scope="session")

MARCH_5_10, MARCH_5_11 = "2026-03-05 10:00:00", "2026-03-05 11:00:00"


def claim(setl_id: str, code: str, at: str, psn_no: str = "45000012345678") -> dict[str, Any]:
    return {
        "setl_id": setl_id,
        "org": "P2",
        "psn_no": psn_no,
        "at": at,
        "lines": [{"line_no": 1, "med_list_codg": MED, "quantity": 24, "codes": [code]}],
    }


async def sold_and_returned(api: Api, code: str, sold: str, returned: str) -> None:
    """``code`` sold whole (March 5, 10:00) under ``sold``, returned under ``returned``
    (March 6): the pack is on the shelf again."""
    await nhsa(api, envelope("3505", {"selinfo": sale(sold, [code], 24, sel_retn_time=MARCH_5_10)}))
    ret = sale_return(returned, [code], 24, sel_retn_time="2026-03-06 10:00:00")
    await nhsa(api, envelope("3506", {"selinfo": ret}))
    assert await _units_left(api, code) == 24


async def delete_sale(api: Api, bchno: str, msgid: str | None = None) -> dict[str, Any]:
    body = envelope("3507", {"data": deletion(bchno, "4")})
    if msgid is not None:
        body["msgid"] = msgid
    out = await nhsa(api, body)
    assert out["infcode"] == 0, out
    assert out["output"]["tracecode"]["deleted"] == [bchno]
    return out


async def test_deleting_the_upload_of_a_settled_sale_leaves_the_pack_settled(admin: Api) -> None:
    """The sale record only repeats the settlement (same setl_id): deleting it must not
    give the settlement's units back, or the pack could be settled and paid again."""
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    insurer = await admin.key_for("insurer")
    first = await insurer.ok("POST", "/v1/settlements", claim("S401", u[1], "2026-03-05T10:00:00+08:00"))
    assert first["decision"] == "accepted"
    await nhsa(p2, envelope("3505", {"selinfo": sale("B401", [u[1]], 24, setl_id="S401")}))
    await delete_sale(p2, "B401")
    assert await _units_left(p2, u[1]) == 0
    again = claim("S402", u[1], "2026-03-06T10:00:00+08:00", psn_no="45000099999999")
    assert (await insurer.ok("POST", "/v1/settlements", again))["decision"] == "rejected"


async def test_a_sale_uploaded_before_its_settlement_stays_sold_while_the_settlement_stands(
    admin: Api,
) -> None:
    """The sale took the units first; the settlement of the same setl_id is that sale.
    Deleting the upload leaves them taken; the insurer's reversal gives them back."""
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    insurer = await admin.key_for("insurer")
    await nhsa(p2, envelope("3505", {"selinfo": sale("B411", [u[1]], 24, setl_id="S411")}))
    accepted = await insurer.ok("POST", "/v1/settlements", claim("S411", u[1], "2026-03-05T10:00:00+08:00"))
    assert accepted["decision"] == "accepted"
    await delete_sale(p2, "B411")
    assert await _units_left(p2, u[1]) == 0
    await insurer.ok("POST", "/v1/settlements/S411/reversal", None)
    assert await _units_left(p2, u[1]) == 24


async def test_a_sale_naming_a_settlement_that_never_came_is_undone(admin: Api) -> None:
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    await nhsa(p2, envelope("3505", {"selinfo": sale("B421", [u[1]], 24, setl_id="S421")}))
    assert await _units_left(p2, u[1]) == 0
    await delete_sale(p2, "B421")
    assert await _units_left(p2, u[1]) == 24


async def test_deleting_a_duplicate_sale_leaves_the_genuine_one(admin: Api) -> None:
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    await nhsa(p2, envelope("3505", {"selinfo": sale("Z50", [u[0]], 24, sel_retn_time=MARCH_5_10)}))
    out = await nhsa(p2, envelope("3505", {"selinfo": sale("Z51", [u[0]], 24, sel_retn_time=MARCH_5_11)}))
    assert [f["kind"] for f in out["output"]["tracecode"]["flags"]] == ["DUPLICATE"]
    await delete_sale(p2, "Z51")
    assert await _units_left(p2, u[0]) == 0
    # the genuine sale's deletion still gives its units back
    await delete_sale(p2, "Z50")
    assert await _units_left(p2, u[0]) == 24


async def test_deleting_a_returned_sale_leaves_no_return_waiting(admin: Api) -> None:
    """The sale was returned already: its deletion gives back nothing, and leaves nothing
    behind that would undo the pack's next sale."""
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    await sold_and_returned(p2, u[0], "Z70", "R70")
    await delete_sale(p2, "Z70")
    assert await _units_left(p2, u[0]) == 24
    later = sale("Z71", [u[0]], 24, sel_retn_time="2026-03-07 10:00:00")
    await nhsa(p2, envelope("3505", {"selinfo": later}))
    assert await _units_left(p2, u[0]) == 0


async def test_deleting_the_first_of_two_split_sales_gives_back_its_own_units(admin: Api, db: Any) -> None:
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    first = sale("X050", [u[1]], 6, split="1", sel_retn_time=MARCH_5_10)
    second = sale("X051", [u[1]], 10, split="1", sel_retn_time=MARCH_5_11)
    await nhsa(p2, envelope("3505", {"selinfo": first}))
    await nhsa(p2, envelope("3505", {"selinfo": second}))
    assert await _units_left(p2, u[1]) == 8
    await delete_sale(p2, "X050")
    assert await _units_left(p2, u[1]) == 14
    # the history shows the sale and the return that undid it
    inv = await admin.key_for("investigator")
    history = await inv.ok("GET", f"/v1/codes/{u[1]}/history")
    assert [e["type"] for e in history["events"]][-3:] == ["dispense", "dispense", "return"]
    assert await db.fetchval("SELECT count(*) FROM events WHERE type = 'return' AND undoes IS NOT NULL") >= 1


async def test_deleting_a_whole_pack_sale_of_two_packs_gives_back_both(admin: Api) -> None:
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    await nhsa(p2, envelope("3505", {"selinfo": sale("X060", [u[2], u[3]], 48)}))
    assert [await _units_left(p2, c) for c in u[2:]] == [0, 0]
    await delete_sale(p2, "X060")
    assert [await _units_left(p2, c) for c in u[2:]] == [24, 24]
    # deleting it again is one fact
    again = await nhsa(p2, envelope("3507", {"data": deletion("X060", "4")}))
    assert again["output"]["tracecode"]["deleted"] == []
    assert [await _units_left(p2, c) for c in u[2:]] == [24, 24]


async def test_racing_deletions_of_one_record_report_one_deletion(admin: Api, db_url: str) -> None:
    """Four deletions of one sale at once: one return, one deletion reported. They race
    through the use case on a pool of their own, as request handlers do."""
    import asyncio
    from datetime import UTC, datetime

    from service.interop.nhsa import envelope as nhsa_envelope
    from service.interop.nhsa import inventory as nhsa_inventory
    from service.store.db import create_pool
    from service.usecases import nhsa as nhsa_usecase

    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    await nhsa(p2, envelope("3505", {"selinfo": sale("Z10", [u[0]], 24)}))
    env = nhsa_envelope.parse(envelope("3507", {"data": deletion("Z10", "4")}))
    now = datetime.now(UTC)
    pool = await create_pool(db_url, min_size=4, max_size=4)
    try:
        records = [nhsa_inventory.translate(env, "P2", now, IDS)[0] for _ in range(4)]
        uploads = [nhsa_usecase.upload(pool, "P2", r, env.msgid, {}, now) for r in records]
        done = await asyncio.gather(*uploads)
    finally:
        await pool.close()
    assert sum(len(d.deleted) for d in done) == 1
    assert sum(d.result.accepted_codes for d in done) == 1
    assert await _units_left(p2, u[0]) == 24


async def test_a_deletion_of_a_sale_stored_while_it_reads_is_answered_as_one_before_the_sale(
    admin: Api, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by a concurrency probe: a 3507 racing the 3505 it deletes answered "success"
    and deleted nothing (2 in 300 runs), so the pharmacy took the sale for gone while it
    stood. The deletion read the records that count, then whether any existed, in two
    statements: the sale committed in between was neither. One statement reads both now,
    and here the sale is stored right after it: the deletion came first (-1, no record),
    as in one order the two could have run in; sent again, it deletes the sale."""
    from datetime import UTC, datetime

    from service.interop.nhsa import envelope as nhsa_envelope
    from service.interop.nhsa import sales as nhsa_sales
    from service.store import ledger as ledger_store
    from service.store.db import create_pool
    from service.usecases import nhsa as nhsa_usecase

    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    env = nhsa_envelope.parse(envelope("3505", {"selinfo": sale("Z20", [u[0]], 24)}))
    read = ledger_store.records_of

    async def sale_stored_right_after(*args: Any) -> list[dict[str, Any]]:
        found = await read(*args)
        monkeypatch.setattr(ledger_store, "records_of", read)  # once
        pool = await create_pool(db_url, min_size=1, max_size=1)
        try:
            records, _ = nhsa_sales.translate(env, "P2", datetime.now(UTC), IDS)
            await nhsa_usecase.upload(pool, "P2", records, env.msgid, {}, datetime.now(UTC))
        finally:
            await pool.close()
        return found

    monkeypatch.setattr(ledger_store, "records_of", sale_stored_right_after)
    first = await nhsa(p2, envelope("3507", {"data": deletion("Z20", "4")}))
    assert first["infcode"] == -1, first
    assert "no record of this type was uploaded with it" in first["err_msg"], first
    assert await _units_left(p2, u[0]) == 0  # the sale stands, as the answer says
    again = await nhsa(p2, envelope("3507", {"data": deletion("Z20", "4")}))
    assert again["output"]["tracecode"]["deleted"] == ["Z20"], again
    assert await _units_left(p2, u[0]) == 24


async def test_deleting_a_return_that_named_its_settlement_sells_the_pack_again(admin: Api) -> None:
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    await nhsa(p2, envelope("3505", {"selinfo": sale("X030", [u[0]], 24, setl_id="S30")}))
    await nhsa(p2, envelope("3506", {"selinfo": sale_return("R030", [u[0]], 24, setl_id="S30")}))
    assert await _units_left(p2, u[0]) == 24
    await delete_sale(p2, "R030")
    assert await _units_left(p2, u[0]) == 0


async def test_deleting_a_return_that_gave_nothing_back_leaves_the_pack(admin: Api) -> None:
    """A return of a pack this pharmacy never sold gave nothing back (it waits for a sale
    that does not come). Deleting it sold the pack (a dispense as a sale of its own): a
    shelf pack consumed, and its next genuine sale refused. Now it sells nothing, and the
    deleted return never gives anything back: not to the pack's next sale either."""
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    ret = sale_return("R040", [u[1]], 24, sel_retn_time="2026-03-06 09:00:00")
    assert (await nhsa(p2, envelope("3506", {"selinfo": ret})))["infcode"] == 0
    assert await _units_left(p2, u[1]) == 24
    await delete_sale(p2, "R040")
    assert await _units_left(p2, u[1]) == 24
    # a sale dated before the deleted return comes later: it is not undone
    early = sale("Z041", [u[1]], 24, sel_retn_time=MARCH_5_10)
    out = await nhsa(p2, envelope("3505", {"selinfo": early}))
    assert out["output"]["tracecode"]["accepted"] == 1, out
    assert out["output"]["tracecode"]["flags"] == [], out
    assert await _units_left(p2, u[1]) == 0


async def test_deleting_one_return_of_two_packs_sells_again_only_what_it_gave_back(admin: Api) -> None:
    """R050 returns u0 (sold under X050) and u1 (never sold here): deleting it sells u0
    again and leaves u1 on the shelf."""
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    await nhsa(p2, envelope("3505", {"selinfo": sale("X050", [u[0]], 24, sel_retn_time=MARCH_5_10)}))
    ret = sale_return("R050", [u[0], u[1]], 48, sel_retn_time="2026-03-06 09:00:00")
    await nhsa(p2, envelope("3506", {"selinfo": ret}))
    assert [await _units_left(p2, c) for c in u[:2]] == [24, 24]
    await delete_sale(p2, "R050")
    assert [await _units_left(p2, c) for c in u[:2]] == [0, 24]


@pytest.mark.parametrize("interface", ["3505", "3506"])
async def test_a_deleted_record_of_a_code_not_yet_commissioned_sells_nothing_when_it_is(
    admin: Api, interface: str
) -> None:
    """A sale (or return) of a code the service does not know yet waits for its
    commission; deleted before that, it never takes anything (its waiting dispense was
    applied as a sale once the commission came)."""
    w = await _world(admin)
    p2 = w["keys"]["P2"]
    code = cn20(w["unit"], 90 if interface == "3505" else 91)
    row = sale("Z090", [code], 24) if interface == "3505" else sale_return("R090", [code], 24)
    assert (await nhsa(p2, envelope(interface, {"selinfo": row})))["infcode"] == 0
    await delete_sale(p2, row["fixmedins_bchno"])
    await w["keys"]["M1"].events(event("commission", "M1", [code], 3, lot="L1", expiry="2028-12-31"))
    assert await _units_left(p2, code) == 24


@pytest.mark.parametrize("order", ["return first", "sale first", "one batch"])
async def test_deleting_a_sale_and_its_return_leaves_the_pack_as_it_was(admin: Api, order: str) -> None:
    """Both records stop counting, in whichever order they are deleted: the pack is on the
    shelf, whole (it was sold again by the return's deletion, and the sale's deletion then
    found its take given back already)."""
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    await sold_and_returned(p2, u[0], "Z80", "R80")
    if order == "one batch":
        out = await nhsa(p2, envelope("3507A", {"goodDetail": [deletion("Z80", "4"), deletion("R80", "4")]}))
        assert sorted(out["output"]["tracecode"]["deleted"]) == ["R80", "Z80"], out
    else:
        for bchno in ("R80", "Z80") if order == "return first" else ("Z80", "R80"):
            await delete_sale(p2, bchno)
    assert await _units_left(p2, u[0]) == 24
    # and the pack sells as any shelf pack does
    out = await nhsa(p2, envelope("3505", {"selinfo": sale("Z81", [u[0]], 24, sel_retn_time=MARCH_5_11)}))
    assert out["output"]["tracecode"]["flags"] == [], out
    assert await _units_left(p2, u[0]) == 0


async def test_deleting_the_return_of_a_split_sale_takes_again_only_its_units(admin: Api) -> None:
    """6 units sold, returned, then 10 sold from the pack: deleting the return makes the
    6-unit sale stand again, so 8 are left (it took the whole pack's remainder)."""
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    await nhsa(p2, envelope("3505", {"selinfo": sale("X90", [u[1]], 6, split="1", sel_retn_time=MARCH_5_10)}))
    ret = sale_return("R90", [u[1]], 6, sel_retn_time="2026-03-06 10:00:00")
    await nhsa(p2, envelope("3506", {"selinfo": ret}))
    later = sale("X91", [u[1]], 10, split="1", sel_retn_time="2026-03-06 11:00:00")
    await nhsa(p2, envelope("3505", {"selinfo": later}))
    assert await _units_left(p2, u[1]) == 14
    await delete_sale(p2, "R90")
    assert await _units_left(p2, u[1]) == 8


async def test_a_settlement_committed_while_a_deletion_is_worked_out_keeps_its_units(
    admin: Api, db_url: str, monkeypatch: Any
) -> None:
    """A deletion reads which deleted sales' settlements stand before its transaction. A
    settlement of the sale committed just after that read (here: between the read and
    the transaction, every time) is seen again inside the transaction, once the pack's
    row is locked, and the deletion is worked out again: the pack stays the
    settlement's. Before, its units came back while the settlement stood, and the pack
    could have been settled and paid a second time. The deletion runs through the use
    case on a pool of its own (the in-process client answers one request at a time)."""
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    insurer = await admin.key_for("insurer")
    await nhsa(p2, envelope("3505", {"selinfo": sale("B511", [u[0]], 24, setl_id="S511")}))

    async def settle() -> None:
        answer = await insurer.ok("POST", "/v1/settlements", claim("S511", u[0], "2026-03-05T10:00:00+08:00"))
        assert answer["decision"] == "accepted"  # the sale it repeats: paid, once

    done = await delete_sale_settled_meanwhile(db_url, monkeypatch, "B511", settle)
    assert done.deleted == ["B511"]
    assert done.result.accepted_codes == 0  # no compensating return
    assert await _units_left(p2, u[0]) == 0


async def delete_sale_settled_meanwhile(
    db_url: str, monkeypatch: Any, batch: str, settle: Callable[[], Awaitable[None]]
) -> Any:
    """P2's 3507 deletion of its sale ``batch``, with ``settle`` run (once) between the
    deletion's first read of which settlements stand and its transaction, as a
    settlement committed just then would be. The deletion runs through the use case on a
    pool of its own (the in-process client answers one request at a time); its result."""
    from service.interop.nhsa import envelope as nhsa_envelope
    from service.interop.nhsa import inventory as nhsa_inventory
    from service.store.db import create_pool
    from service.usecases import nhsa as nhsa_usecase

    worked_out = nhsa_usecase._deletions
    committed: list[bool] = []

    async def settled_meanwhile(*args: Any, **kwargs: Any) -> Any:
        found = await worked_out(*args, **kwargs)
        if not committed:
            await settle()
            committed.append(True)
        return found

    monkeypatch.setattr(nhsa_usecase, "_deletions", settled_meanwhile)
    env = nhsa_envelope.parse(envelope("3507", {"data": deletion(batch, "4")}))
    now = datetime.now(UTC)
    records, errors = nhsa_inventory.translate(env, "P2", now, IDS)
    assert not errors
    pool = await create_pool(db_url, min_size=1, max_size=1)
    try:
        return await nhsa_usecase.upload(pool, "P2", records, env.msgid, {}, now)
    finally:
        await pool.close()


async def _shelf_pack(
    w: dict[str, Any], serial: int, *, lot: str = "L1", expiry: str = "2028-12-31", product: str | None = None
) -> str:
    """A new pack of the unit product (or of ``product``), received by P2."""
    code = cn20(product or w["unit"], serial)
    m, p2 = w["keys"]["M1"], w["keys"]["P2"]
    await m.events(event("commission", "M1", [code], 0, lot=lot, expiry=expiry, produced="2026-01-05"))
    await m.events(event("ship", "M1", [code], 1, to="P2"))
    await p2.events(event("receive", "P2", [code], 2))
    return code


async def _standing_flags(inv: Api, code: str) -> list[str]:
    kinds = []
    for status in ("pending", "open"):
        kinds += [f["kind"] for f in (await inv.ok("GET", f"/v1/flags?code={code}&status={status}"))["items"]]
    return sorted(kinds)


@pytest.mark.parametrize("seed", range(16))
async def test_deleted_records_end_as_if_they_had_never_been_sent(admin: Api, seed: int) -> None:
    """Three to five sales (whole packs, 6 or 10 units) and returns of one pack, an hour
    apart, uploaded in a random order, then some of them deleted in a random order: the
    pack ends with the units and standing flags of another pack that was sent only the
    records left standing, in time order. Found by a probe: deleting the first of two
    sales of a pack (the second a DUPLICATE) put the pack back on the shelf, payable
    again, though the second sale still stood."""
    rng = random.Random(seed)
    w = await _world(admin)
    p2 = w["keys"]["P2"]
    inv = await admin.key_for("investigator")
    steps = [rng.choice(["whole", "whole", "6", "10", "return"]) for _ in range(rng.choice([3, 4, 5]))]
    gone = set(rng.sample(range(len(steps)), rng.randint(1, len(steps) - 1)))

    def row(run: str, i: int, code: str) -> tuple[str, dict[str, Any]]:
        when = f"2026-03-05 {10 + i:02d}:00:00"
        bchno = f"D{seed}{run}{i}"
        if steps[i] == "return":
            return "3506", sale_return(bchno, [code], 24, sel_retn_time=when)
        split = steps[i] != "whole"
        units = 24 if not split else int(steps[i])
        return "3505", sale(bchno, [code], units, split="1" if split else "0", sel_retn_time=when)

    async def send(code: str, run: str, indexes: list[int]) -> None:
        for i in indexes:
            interface, body = row(run, i, code)
            assert (await nhsa(p2, envelope(interface, {"selinfo": body})))["infcode"] == 0

    deleted_pack = await _shelf_pack(w, 500 + 2 * seed)
    await send(deleted_pack, "a", rng.sample(range(len(steps)), len(steps)))
    for i in rng.sample(sorted(gone), len(gone)):
        await delete_sale(p2, f"D{seed}a{i}")
    standing_pack = await _shelf_pack(w, 501 + 2 * seed)
    await send(standing_pack, "b", [i for i in range(len(steps)) if i not in gone])

    got = (await _units_left(p2, deleted_pack), await _standing_flags(inv, deleted_pack))
    wanted = (await _units_left(p2, standing_pack), await _standing_flags(inv, standing_pack))
    assert got == wanted, (steps, sorted(gone))


async def test_a_deleted_sale_of_a_pack_that_was_shipped_away_leaves_no_suspicion(admin: Api) -> None:
    """A sale entered by mistake: the pack was in fact sent on to P1, which receives it
    after the pharmacy deleted the sale. The pack is P1's, whole and dispensable, and no
    flag stands: the deletion's compensation (a return by P2) used to be folded after
    P1's receipt, a DIVERSION against P2 ("held by P1"), and what the mistaken sale
    raised stayed."""
    w = await _world(admin)
    p2, p1, u = w["keys"]["P2"], w["keys"]["P1"], w["units"]
    inv = await admin.key_for("investigator")
    await nhsa(p2, envelope("3505", {"selinfo": sale("Z95", [u[0]], 24, sel_retn_time=MARCH_5_10)}))
    shipped = event("ship", "P2", [u[0]], 60 * 24 * 8, to="P1")  # March 10
    assert (await p2.events(shipped))["rejected"] == []
    await delete_sale(p2, "Z95")
    assert (await p1.events(event("receive", "P1", [u[0]], 60 * 24 * 8 + 360)))["rejected"] == []
    answer = await p1.ok("GET", f"/v1/codes/{u[0]}/verify")
    assert (answer["custodian"], answer["units_left"], answer["dispensable"]) == ("P1", 24, True), answer
    assert await _standing_flags(inv, u[0]) == []


async def test_a_deletion_naming_a_sale_and_a_return_deletes_neither(admin: Api) -> None:
    """A 3505 and a 3506 (of another pack) share fixmedins_bchno X96: a 3507 of X96 with
    inv_data_type 4 cannot say which one it means. It deleted both (the other pack sold
    again, both records out of the ledger: found by a probe); now it deletes neither and
    says why (infcode -1), and nothing changes."""
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    await nhsa(p2, envelope("3505", {"selinfo": sale("X96", [u[0]], 24, sel_retn_time=MARCH_5_10)}))
    await nhsa(p2, envelope("3505", {"selinfo": sale("X97", [u[1]], 24, sel_retn_time=MARCH_5_10)}))
    ret = sale_return("X96", [u[1]], 24, sel_retn_time="2026-03-06 10:00:00")
    assert (await nhsa(p2, envelope("3506", {"selinfo": ret})))["infcode"] == 0
    before = [await _units_left(p2, c) for c in u[:2]]
    assert before == [0, 24]
    out = await nhsa(p2, envelope("3507", {"data": deletion("X96", "4")}))
    assert out["infcode"] == -1, out
    assert "fixmedins_bchno" in out["err_msg"], out
    assert "3505" in out["err_msg"], out
    assert "3506" in out["err_msg"], out
    assert [await _units_left(p2, c) for c in u[:2]] == before
    # in a batch, the row is listed and the others are deleted; the rows not taken are
    # listed in the order of the rows, whatever kept each (they were listed by kind)
    rows = [deletion("X96", "4"), deletion("X98", "4"), deletion("X97", "9"), deletion("X97", "4")]
    out = await nhsa(p2, envelope("3507A", {"goodDetail": rows}))
    assert out["output"]["tracecode"]["deleted"] == ["X97"], out
    listed = out["output"]["goodErrDetail"]
    assert [e["fixmedins_bchno"] for e in listed] == ["X96", "X98", "X97"], out
    assert [e["msgRslt"][: len("input.goodDetail[0]")] for e in listed] == [
        f"input.goodDetail[{i}]" for i in range(3)
    ], listed


async def test_deleting_a_return_raises_nothing_against_its_compensation(admin: Api) -> None:
    """Sold, returned, the return deleted after the pack's expiry: the deletion's
    compensation sells nothing of its own and is not judged (it raised EXPIRED, dated
    at the deletion: found in review)."""
    w = await _world(admin)
    m, p2 = w["keys"]["M1"], w["keys"]["P2"]
    inv = await admin.key_for("investigator")
    code = cn20(w["unit"], 777)
    await m.events(event("commission", "M1", [code], 0, lot="L1", expiry="2026-03-10", produced="2026-01-05"))
    await m.events(event("ship", "M1", [code], 1, to="P2"))
    await p2.events(event("receive", "P2", [code], 2))
    await nhsa(p2, envelope("3505", {"selinfo": sale("EXP1", [code], 24, sel_retn_time=MARCH_5_10)}))
    ret = sale_return("EXP2", [code], 24, sel_retn_time="2026-03-06 10:00:00")
    assert (await nhsa(p2, envelope("3506", {"selinfo": ret})))["infcode"] == 0
    before = await _standing_flags(inv, code)
    out = await delete_sale(p2, "EXP2")
    assert out["output"]["tracecode"]["flags"] == [], out
    assert await _standing_flags(inv, code) == before
    assert await _units_left(p2, code) == 0


async def test_deleting_the_upload_of_a_refunded_settled_sale_keeps_the_settlement_in_history(
    admin: Api,
) -> None:
    """The 3505 repeats settlement S411b, which was paid and then refunded. Deleting the
    upload erased the settlement's take, and the pack's history no longer listed S411b
    (found by a probe). The settlement's sale is the settlement's: its deletion leaves it
    as it stands, reversed, and the pack whole."""
    w = await _world(admin)
    p2, u = w["keys"]["P2"], w["units"]
    insurer = await admin.key_for("insurer")
    inv = await admin.key_for("investigator")
    await nhsa(p2, envelope("3505", {"selinfo": sale("B412", [u[2]], 24, setl_id="S412")}))
    paid = await insurer.ok("POST", "/v1/settlements", claim("S412", u[2], "2026-03-05T10:00:00+08:00"))
    assert paid["decision"] == "accepted"
    await insurer.ok("POST", "/v1/settlements/S412/reversal", None)
    before = (await inv.ok("GET", f"/v1/codes/{u[2]}/history"))["settlements"]
    assert [(s["setl_id"], s["reversed"]) for s in before] == [("S412", True)]
    await delete_sale(p2, "B412")
    after = (await inv.ok("GET", f"/v1/codes/{u[2]}/history"))["settlements"]
    assert after == before
    assert await _units_left(p2, u[2]) == 24


async def test_what_only_a_deleted_record_raised_is_withdrawn(
    admin: Api, server_urls: tuple[str, str]
) -> None:
    """A sale beyond the ledger (STOCK_IMBALANCE), a stock count of a pack D1 holds
    (DIVERSION) and one of a pack sold already (DUPLICATE) rest on their records alone:
    deleted by a 3507 (the counts in one 3507A), each flag is auto_cleared by the system,
    its history naming the deletion, and the feed says so. A flag an investigator took
    up stays as they left it. Found by a probe: they all stood."""
    w = await _world(admin)  # P2 bought 96 units
    m, d1, p2, u = w["keys"]["M1"], w["keys"]["D1"], w["keys"]["P2"], w["units"]
    inv = await admin.key_for("investigator")
    elsewhere = cn20(w["unit"], 79)
    await m.events(
        event("commission", "M1", [elsewhere], 0, lot="L1", expiry="2028-12-31"),
        event("ship", "M1", [elsewhere], 1, to="D1"),
    )
    await d1.events(event("receive", "D1", [elsewhere], 2))
    await nhsa(p2, envelope("3505", {"selinfo": sale("S1", [u[0]], 24, sel_retn_time=MARCH_5_10)}))
    raised = {}
    for bchno, body in (
        ("BIG1", {"selinfo": sale("BIG1", [], 200, sel_retn_time=MARCH_5_11)}),
        ("BIG2", {"selinfo": sale("BIG2", [], 200, sel_retn_time=MARCH_5_11)}),
        ("KDIV", {"invinfo": count("KDIV", 1, "2026-03-06", elsewhere)}),
        ("KDUP", {"invinfo": count("KDUP", 1, "2026-03-06", u[0])}),
    ):
        out = await nhsa(p2, envelope("3505" if bchno.startswith("BIG") else "3501", body))
        [raised[bchno]] = out["output"]["tracecode"]["flags"]
    assert [raised[b]["kind"] for b in raised] == ["STOCK_IMBALANCE"] * 2 + ["DIVERSION", "DUPLICATE"]
    taken_up = raised.pop("BIG2")["flag_id"]
    await inv.ok("PATCH", f"/v1/flags/{taken_up}", {"status": "investigating", "note": "calling them"})

    await delete_sale(p2, "BIG1")
    await delete_sale(p2, "BIG2")
    out = await nhsa(p2, envelope("3507A", {"goodDetail": [deletion("KDIV", "1"), deletion("KDUP", "1")]}))
    assert out["output"]["tracecode"]["deleted"] == ["KDIV", "KDUP"], out

    r = aioredis.from_url(server_urls[1])
    try:
        for bchno, f in raised.items():
            flag = await inv.ok("GET", f"/v1/flags/{f['flag_id']}")
            assert flag["status"] == "auto_cleared", (bchno, flag)
            last = flag["history"][-1]
            assert (last["status"], last["by_key"]) == ("auto_cleared", "system"), (bchno, flag["history"])
            assert "3507" in last["note"], last
            for _ in range(100):  # the feed's publisher runs every second at most
                entries = await r.xrange("flags")
                fed = [e[1][b"status"] for e in entries if e[1][b"flag_id"].decode() == f["flag_id"]]
                if fed[-1:] == [b"auto_cleared"]:
                    break
                await asyncio.sleep(0.05)
            assert fed[-1:] == [b"auto_cleared"], (bchno, fed)
    finally:
        await r.aclose()
    assert (await inv.ok("GET", f"/v1/flags/{taken_up}"))["status"] == "investigating"


def _msgid(serial: int) -> str:
    """A deletion's own msgid (the envelope's is the same for every upload)."""
    return f"{P1_CODE}20260306{serial:010d}"


async def _withdrawn_by(inv: Api, feed: aioredis.Redis, flag_id: str, msgid: str) -> None:
    """The flag was withdrawn by the deletion ``msgid``: auto_cleared by the system, the
    last line of its history naming that deletion, and the feed says so."""
    flag = await inv.ok("GET", f"/v1/flags/{flag_id}")
    assert flag["status"] == "auto_cleared", flag
    last = flag["history"][-1]
    assert (last["status"], last["by_key"]) == ("auto_cleared", "system"), flag["history"]
    assert msgid in last["note"], last
    for _ in range(100):  # the feed's publisher runs every second at most
        fed = [e[1][b"status"] for e in await feed.xrange("flags") if e[1][b"flag_id"].decode() == flag_id]
        if fed[-1:] == [b"auto_cleared"]:
            break
        await asyncio.sleep(0.05)
    assert fed[-1:] == [b"auto_cleared"], fed


FAR = "XA02BCA000A001010100009"  # the catalogue item of a product sold only in Beijing (11)


@pytest.mark.parametrize(
    "kind", ["EXPIRED", "RECALLED", "OUT_OF_REGION", "PRODUCT_MISMATCH", "DUPLICATE", "DIVERSION"]
)
async def test_what_a_deleted_sale_raised_on_its_pack_is_withdrawn(
    admin: Api, server_urls: tuple[str, str], kind: str
) -> None:
    """A 3505 sale of an expired pack, of a recalled lot, of a product not sold in the
    region, or billed as another item raises that flag on its dispense. Deleted by a 3507,
    the sale is as if never sent, and so is what it raised (and its STOCK_IMBALANCE, where
    it billed an item never bought): auto_cleared by the system, the history naming the
    deletion's msgid, on the feed. Found by a probe: they stayed open, the pack back on
    the shelf."""
    w = await _world(admin)
    p2 = w["keys"]["P2"]
    inv = await admin.key_for("investigator")
    row: dict[str, Any] = {"sel_retn_time": MARCH_5_10}
    if kind == "EXPIRED":
        code = await _shelf_pack(w, 600, expiry="2026-03-04")
    elif kind == "RECALLED":
        code = await _shelf_pack(w, 601, lot="LR601")
        recall = {"product_id": w["unit"], "lot": "LR601", "reason": "impurity"}
        await inv.ok("POST", "/v1/recalls", recall, 201)
        # sold after the recall was ordered (one dated before it sold a pack not recalled yet)
        later = datetime.now(UTC) + timedelta(minutes=1)
        row["sel_retn_time"] = later.astimezone(CHINA).strftime("%Y-%m-%d %H:%M:%S")
    elif kind == "OUT_OF_REGION":
        product = {"product_id": "8123458", "name": "Beijing only", "med_list_codg": FAR,
                   "pack_units": 24, "manufacturer": "M1", "regions": ["11"]}  # fmt: skip
        await admin.ok("POST", "/v1/products", product, 201)
        code = await _shelf_pack(w, 602, product="8123458")
        row["med_list_codg"] = FAR
    elif kind == "PRODUCT_MISMATCH":
        code = await _shelf_pack(w, 603)
        row["med_list_codg"] = SWAPPED
    elif kind == "DUPLICATE":  # sold already, an hour before
        code = await _shelf_pack(w, 604)
        first = sale("Z599", [code], 24, sel_retn_time="2026-03-05 09:00:00")
        assert (await nhsa(p2, envelope("3505", {"selinfo": first})))["output"]["tracecode"]["flags"] == []
    else:  # a pack D1 holds, sold by P2
        code = cn20(w["unit"], 605)
        await w["keys"]["M1"].events(
            event("commission", "M1", [code], 0, lot="L1", expiry="2028-12-31", produced="2026-01-05"),
            event("ship", "M1", [code], 1, to="D1"),
        )
        await w["keys"]["D1"].events(event("receive", "D1", [code], 2))
    out = await nhsa(p2, envelope("3505", {"selinfo": sale("Z600", [code], 24, **row)}))
    raised = out["output"]["tracecode"]["flags"]
    assert kind in [f["kind"] for f in raised], out
    assert await _units_left(p2, code) == 0

    msgid = _msgid(600)
    await delete_sale(p2, "Z600", msgid)
    assert await _units_left(p2, code) == (0 if kind == "DUPLICATE" else 24)
    feed = aioredis.from_url(server_urls[1])
    try:
        for f in raised:
            await _withdrawn_by(inv, feed, f["flag_id"], msgid)
    finally:
        await feed.aclose()
    # none stands on the pack for the sale (an OUT_OF_REGION at its receipt does)
    standing = await _standing_flags(inv, code)
    assert standing == (["OUT_OF_REGION"] if kind == "OUT_OF_REGION" else []), standing


async def test_a_deleted_sale_withdraws_its_own_flags_only_and_leaves_those_taken_up(
    admin: Api, server_urls: tuple[str, str]
) -> None:
    """An expired pack sold (Z610), returned, sold again (Z611): each sale's EXPIRED rests
    on its own dispense. Deleting Z611 withdraws its flag and leaves Z610's, the same
    suspicion of the same pack resting on a sale that stands. Another expired pack's sale
    (Z612), whose EXPIRED an investigator took up, stays as they left it when Z612 is
    deleted. Deleting twice is one fact: nothing more in the flag's history."""
    w = await _world(admin)
    p2 = w["keys"]["P2"]
    inv = await admin.key_for("investigator")
    code = await _shelf_pack(w, 610, expiry="2026-03-04")
    other = await _shelf_pack(w, 611, expiry="2026-03-04")

    async def expired(bchno: str, pack: str, when: str) -> str:
        out = await nhsa(p2, envelope("3505", {"selinfo": sale(bchno, [pack], 24, sel_retn_time=when)}))
        [flag] = out["output"]["tracecode"]["flags"]
        assert flag["kind"] == "EXPIRED", out
        return str(flag["flag_id"])

    first = await expired("Z610", code, MARCH_5_10)
    ret = sale_return("R610", [code], 24, sel_retn_time="2026-03-06 10:00:00")
    assert (await nhsa(p2, envelope("3506", {"selinfo": ret})))["infcode"] == 0
    second = await expired("Z611", code, "2026-03-07 10:00:00")
    taken_up = await expired("Z612", other, MARCH_5_10)
    await inv.ok("PATCH", f"/v1/flags/{taken_up}", {"status": "investigating", "note": "calling them"})

    await delete_sale(p2, "Z611", _msgid(611))
    await delete_sale(p2, "Z612", _msgid(612))
    feed = aioredis.from_url(server_urls[1])
    try:
        await _withdrawn_by(inv, feed, second, _msgid(611))
    finally:
        await feed.aclose()
    assert (await inv.ok("GET", f"/v1/flags/{first}"))["status"] == "open"
    kept = await inv.ok("GET", f"/v1/flags/{taken_up}")
    assert kept["status"] == "investigating", kept
    assert [h["by_key"] == "system" for h in kept["history"]] == [False], kept["history"]
    assert await _units_left(p2, code) == 24

    history = (await inv.ok("GET", f"/v1/flags/{second}"))["history"]
    again = await nhsa(p2, envelope("3507", {"data": deletion("Z611", "4")}))
    assert again["output"]["tracecode"]["deleted"] == [], again
    assert (await inv.ok("GET", f"/v1/flags/{second}"))["history"] == history


async def test_what_a_deleted_return_raised_is_withdrawn(admin: Api, server_urls: tuple[str, str]) -> None:
    """A 3506 return by P2 of a pack D1 holds: a DIVERSION on the return's event. Deleted
    by a 3507, the return is as if never sent: the flag is withdrawn by the deletion,
    naming it (not as explained by later events)."""
    w = await _world(admin)
    p2 = w["keys"]["P2"]
    inv = await admin.key_for("investigator")
    code = cn20(w["unit"], 620)
    await w["keys"]["M1"].events(
        event("commission", "M1", [code], 0, lot="L1", expiry="2028-12-31", produced="2026-01-05"),
        event("ship", "M1", [code], 1, to="D1"),
    )
    await w["keys"]["D1"].events(event("receive", "D1", [code], 2))
    ret = sale_return("R620", [code], 24, sel_retn_time="2026-03-06 10:00:00")
    out = await nhsa(p2, envelope("3506", {"selinfo": ret}))
    raised = out["output"]["tracecode"]["flags"]
    assert [f["kind"] for f in raised] == ["DIVERSION"], out

    await delete_sale(p2, "R620", _msgid(620))
    feed = aioredis.from_url(server_urls[1])
    try:
        await _withdrawn_by(inv, feed, raised[0]["flag_id"], _msgid(620))
    finally:
        await feed.aclose()
    assert await _standing_flags(inv, code) == []


async def test_history_after_a_deleted_sale_shows_the_case_moves_that_carried_the_pack(admin: Api) -> None:
    """A 3505 sale picked a pack out of its case (no unpack scan), and a 3507 deleted it:
    the pack never left the case, which then went on to P1. The stored state said so, but
    the history folded the deleted sale's pick and left out the moves of the case that
    carried the pack (found by a probe). Both the deleted sale and the return that undoes
    it are still listed, marked."""
    w = await _world(admin)
    m, p1, p2 = w["keys"]["M1"], w["keys"]["P1"], w["keys"]["P2"]
    packs, case = [cn20(w["unit"], 31), cn20(w["unit"], 32)], sscc(31)
    await m.events(
        event("commission", "M1", packs, 0, lot="L1", expiry="2028-12-31", produced="2026-01-05"),
        event("pack", "M1", packs, 1, parent=case),
        event("ship", "M1", [case], 2, to="P2"),
    )
    await p2.events(event("receive", "P2", [case], 3))
    await nhsa(p2, envelope("3505", {"selinfo": sale("B431", [packs[0]], 24, sel_retn_time=MARCH_5_10)}))
    await delete_sale(p2, "B431")
    await p2.events(event("ship", "P2", [case], 5 * 24 * 60, to="P1"))
    await p1.events(event("receive", "P1", [case], 5 * 24 * 60 + 60))

    inv = await admin.key_for("investigator")
    h = await inv.ok("GET", f"/v1/codes/{packs[0]}/history")
    assert (h["custodian"], h["container"], h["units_left"]) == ("P1", case, 24)
    shown = [(e["type"], e["org"], e.get("via"), e.get("implicit")) for e in h["events"]]
    assert ("ship", "P2", case, None) in shown, shown
    assert ("receive", "P1", case, None) in shown, shown
    assert ("unpack", "P2", None, True) not in shown, shown  # the deleted sale's pick counts for nothing
    [sold] = [e for e in h["events"] if e["type"] == "dispense"]
    [undone] = [e for e in h["events"] if e["type"] == "return"]
    assert sold.get("deleted") is True, sold
    assert undone["undoes"] == sold["event_id"], undone
    assert "deleted" not in undone
    assert "undoes" not in sold

    # and the console's code page marks both
    browser = admin.client
    browser.cookies.clear()
    try:
        assert (await _sign_in(browser, inv.key)).status_code == 303
        browser.cookies.set("console_lang", "en")
        page = (await browser.get("/console/codes", params={"q": packs[0]})).text
    finally:
        browser.cookies.clear()
    assert "its record was deleted by a 3507: does not count" in page
    assert "undoes a record a 3507 deleted: does not count" in page
