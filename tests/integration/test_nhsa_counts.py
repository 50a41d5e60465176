"""Stock counts in the ledger: the balance starts again from the last count, and the
count's difference is measured against what the ledger held just before it, which
itself starts from the count before."""

from __future__ import annotations

import pytest

from tests.helpers import Api
from tests.integration.test_nhsa import _world, envelope, nhsa, sale
from tests.integration.test_nhsa_ledger import OTHER, _ledger, count, deletion

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_a_count_is_measured_from_the_count_before_it(admin: Api) -> None:
    w = await _world(admin)  # its purchase: 96 units on 2026-03-01
    p2 = w["keys"]["P2"]
    inv = await admin.key_for("investigator")
    await nhsa(p2, envelope("3501", {"invinfo": count("K1", 200, "2026-03-02")}))
    await nhsa(p2, envelope("3505", {"selinfo": sale("Y001", [], 24, sel_retn_time="2026-03-03 10:00:00")}))
    await nhsa(p2, envelope("3501", {"invinfo": count("K2", 170, "2026-03-04")}))
    led = await _ledger(inv)
    assert led["counted"] == 170
    assert led["balance"] == 170
    assert led["count_difference"] == 170 - (200 - 24)
    # without the earlier count, the later one is measured from the purchase
    await nhsa(p2, envelope("3507", {"data": deletion("K1", "1")}))
    led = await _ledger(inv)
    assert led["count_difference"] == 170 - (96 - 24)


async def test_a_pack_counted_under_another_item_is_product_mismatch(admin: Api) -> None:
    """A 3502 move recorded under an item its pack is not raises PRODUCT_MISMATCH (串换:
    one item's ledger moves while another's packs do); a 3501 count of a pack the
    pharmacy holds, filed under another item, raised nothing (found by a probe). It is
    the same suspicion: the count's, open at once, and a deletion of the count withdraws
    it. A pack counted under its own item raises nothing."""
    w = await _world(admin)
    p2, [mine, other, *_] = w["keys"]["P2"], w["units"]
    inv = await admin.key_for("investigator")
    out = await nhsa(
        p2, envelope("3501", {"invinfo": count("KSWAP", 1, "2026-03-03", mine, med_list_codg=OTHER)})
    )
    [flag] = out["output"]["tracecode"]["flags"]
    assert (flag["kind"], flag["code"]) == ("PRODUCT_MISMATCH", mine), out
    stored = await inv.ok("GET", f"/v1/flags/{flag['flag_id']}")
    assert stored["status"] == "open", stored
    assert stored["refs"]["billed"] == OTHER, stored["refs"]
    assert stored["refs"]["fixmedins_bchno"] == "KSWAP", stored["refs"]
    assert "KSWAP" in stored["detail"], stored["detail"]

    own = await nhsa(p2, envelope("3501", {"invinfo": count("KOWN", 1, "2026-03-03", other)}))
    assert own["output"]["tracecode"]["flags"] == [], own

    await nhsa(p2, envelope("3507", {"data": deletion("KSWAP", "1")}))
    assert (await inv.ok("GET", f"/v1/flags/{flag['flag_id']}"))["status"] == "auto_cleared"
