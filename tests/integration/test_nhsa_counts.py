"""Stock counts in the ledger: the balance starts again from the last count, and the
count's difference is measured against what the ledger held just before it, which
itself starts from the count before."""

from __future__ import annotations

import pytest

from tests.helpers import Api
from tests.integration.test_nhsa import _world, envelope, nhsa, sale
from tests.integration.test_nhsa_ledger import _ledger, count, deletion

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
