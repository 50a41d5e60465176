"""One sale, one flag per suspicion, whatever channels it came through and in whatever
order: an NHSA 3505 (or 3502) uploaded before its pack's commission, a 3505 and a
settlement of one setl_id, a 3505 and a /v1/events dispense of one whole-pack sale.
Found by a probe of the flags raised through NHSA and EPCIS."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import Api, cn20, event
from tests.integration.test_nhsa import MED, SWAPPED, _world, envelope, nhsa, sale
from tests.integration.test_nhsa_ledger import change

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def _flags(inv: Api, code: str, kind: str) -> list[dict[str, Any]]:
    """The flags of ``kind`` on ``code``, pending ones too."""
    out = []
    for status in ("", "&status=pending"):
        out += (await inv.ok("GET", f"/v1/flags?code={code}&kind={kind}{status}"))["items"]
    return out


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
