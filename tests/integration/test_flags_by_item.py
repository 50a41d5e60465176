"""GET /v1/flags?med_list_codg=: the flags that name a catalogue item (README, "Flags by
catalogue item"): STOCK_IMBALANCE its item, PRODUCT_MISMATCH the item billed and the
pack's own item, EXCESS_PURCHASE the item bought, each in ``refs.items``. Found by a
probe: the filter matched a flag's code, so it found STOCK_IMBALANCE only (an
EXCESS_PURCHASE's code is one pack, a PRODUCT_MISMATCH's the pack swapped)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import pytest

from service.store.migrations import MIGRATIONS_DIR
from tests.helpers import Api, cn20, event, pack_claim
from tests.integration.test_nhsa import SALE_MINUTES, envelope, nhsa, sale
from tests.integration.test_nhsa import _world as nhsa_world

pytestmark = pytest.mark.asyncio(loop_scope="session")

MED = "XJ01CAA040A001010104256"  # the item of nhsa_world's packs (product 8123456)
ITEM = "XA02BCA000A001010100009"  # another item, of a product with a person limit
ITEM_PRODUCT = "8123458"


async def _flags(inv: Api, **filters: str) -> list[dict[str, Any]]:
    out = await inv.ok("GET", "/v1/flags?" + urlencode(filters))
    items: list[dict[str, Any]] = out["items"]
    return items


async def _story(admin: Api) -> dict[str, Any]:
    """Flags of every kind that concerns an item, on ITEM and MED, and one that names
    none (a DUPLICATE): what each raised, by name."""
    w = await nhsa_world(admin)
    p2, m1, [a, b, c, _] = w["keys"]["P2"], w["keys"]["M1"], w["units"]
    insurer = await admin.key_for("insurer")
    await admin.ok(
        "POST",
        "/v1/products",
        {
            "product_id": ITEM_PRODUCT,
            "name": "Omeprazole 20mg x 24",
            "med_list_codg": ITEM,
            "pack_units": 24,
            "manufacturer": "M1",
            "regions": ["45"],
            "person_limit": {"units": 20, "days": 30},
        },
        201,
    )
    x = cn20(ITEM_PRODUCT, 1)
    await m1.events(event("commission", "M1", [x], 0, lot="L9", expiry="2028-12-31"))
    await m1.events(event("ship", "M1", [x], 1, to="P2"))
    await p2.events(event("receive", "P2", [x], 2))

    def claim(setl_id: str, item: str, code: str) -> dict[str, Any]:
        return pack_claim(setl_id, code, SALE_MINUTES, org="P2", item=item)

    raised: dict[str, Any] = {}
    # a pack of ITEM bought by one person past its limit: EXCESS_PURCHASE, on the pack
    out = await insurer.ok("POST", "/v1/settlements", claim("S-ITEM", ITEM, x))
    [raised["excess"]] = out["flags"]
    # a MED pack billed as ITEM by a settlement: PRODUCT_MISMATCH, the line refused
    out = await insurer.ok("POST", "/v1/settlements", claim("S-SWAP", ITEM, a))
    [raised["settled swap"]] = out["flags"]
    # a MED pack billed as ITEM by a 3505: PRODUCT_MISMATCH, and STOCK_IMBALANCE on ITEM
    # (the institution bought none of it)
    out = await nhsa(p2, envelope("3505", {"selinfo": sale("B-SWAP", [b], 24, med_list_codg=ITEM)}))
    [raised["sold swap"], raised["imbalance"]] = out["output"]["tracecode"]["flags"]
    # a flag that names no item: a MED pack sold twice (an hour apart: at one instant,
    # one whole-pack sale sent again, core.sales.sent_again)
    await nhsa(p2, envelope("3505", {"selinfo": sale("B-C1", [c], 24)}))
    again = sale("B-C2", [c], 24, sel_retn_time="2026-03-05 11:00:00")
    out = await nhsa(p2, envelope("3505", {"selinfo": again}))
    [raised["duplicate"]] = out["output"]["tracecode"]["flags"]
    kinds = {name: f["kind"] for name, f in raised.items()}
    assert kinds == {
        "excess": "EXCESS_PURCHASE",
        "settled swap": "PRODUCT_MISMATCH",
        "sold swap": "PRODUCT_MISMATCH",
        "imbalance": "STOCK_IMBALANCE",
        "duplicate": "DUPLICATE",
    }, raised
    w.update(inv=await admin.key_for("investigator"), raised=raised)
    return w


def _ids(flags: list[dict[str, Any]]) -> list[str]:
    return [f["flag_id"] for f in flags]


async def _check_found_by_item(inv: Api, raised: dict[str, Any]) -> None:
    ids = {name: f["flag_id"] for name, f in raised.items()}
    newest_first = sorted(ids.values(), key=int, reverse=True)
    by_item = await _flags(inv, med_list_codg=ITEM)
    assert _ids(by_item) == [i for i in newest_first if i != ids["duplicate"]], by_item
    # the pack's own item: the two mismatches of MED packs
    assert _ids(await _flags(inv, med_list_codg=MED)) == [ids["sold swap"], ids["settled swap"]]
    assert _ids(await _flags(inv, med_list_codg=ITEM, kind="EXCESS_PURCHASE")) == [ids["excess"]]
    assert _ids(await _flags(inv, med_list_codg=ITEM, org="P9")) == []
    assert await _flags(inv, med_list_codg="XNOSUCHITEM") == []
    # each names what it concerns in refs.items
    found = {f["flag_id"]: f["refs"] for f in by_item}
    assert found[ids["excess"]]["items"] == [ITEM]
    assert found[ids["imbalance"]]["items"] == [ITEM]
    for name in ("settled swap", "sold swap"):
        assert (found[ids[name]]["billed"], found[ids[name]]["items"]) == (ITEM, [ITEM, MED]), name


async def test_the_item_filter_finds_every_flag_that_names_the_item(admin: Api) -> None:
    w = await _story(admin)
    await _check_found_by_item(w["inv"], w["raised"])
    # a code and an item together stay a 400 (one or the other)
    code = w["raised"]["duplicate"]["code"]
    assert (await w["inv"].get(f"/v1/flags?code={code}&med_list_codg={ITEM}")).status_code == 400


async def _refs(db: Any) -> dict[int, str]:
    return {r["flag_id"]: r["refs"] for r in await db.fetch("SELECT flag_id, refs::text AS refs FROM flags")}


async def test_flags_stored_before_refs_items_are_given_them_by_the_migration(admin: Api, db: Any) -> None:
    """Flags stored before ``refs.items`` (and a settlement's PRODUCT_MISMATCH before
    ``refs.billed``) get the same refs from 0024_flag_items_filled.sql as the rules now
    give them, and the filter finds them; applied again, it changes nothing."""
    w = await _story(admin)
    before = await _refs(db)
    await db.execute(
        """UPDATE flags
           SET refs = refs - 'items' - CASE WHEN source_kind = 'settlement' THEN 'billed' ELSE '' END
           WHERE refs ? 'items'"""
    )
    assert await _flags(w["inv"], med_list_codg=ITEM) == []  # as stored before
    fill = (MIGRATIONS_DIR / "0024_flag_items_filled.sql").read_text()
    await db.execute(fill)
    assert await _refs(db) == before
    await _check_found_by_item(w["inv"], w["raised"])
    await db.execute(fill)
    assert await _refs(db) == before
