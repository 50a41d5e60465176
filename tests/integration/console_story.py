"""One pack's journey for the console's tests: a GS1 pack packed into a case, the case
shipped and received, the pack picked out of the case without an unpack scan, one upload
late, and the pack ending at an organisation whose name is markup."""

from __future__ import annotations

from typing import Any

from tests.helpers import Api, event, sscc, world

GTIN = "06901234567892"
BRACKETED = f"(01){GTIN}(21)SER1"
CANONICAL = f"01{GTIN}21SER1"
RAW_SCAN = "]d221SER1\x1d01" + GTIN  # as a scanner types it: symbology id, GS separator
EVIL = '<script>alert("x")</script> Pharmacy'


async def journey(admin: Api) -> dict[str, Any]:
    w = await world(admin)
    await admin.ok(
        "POST", "/v1/orgs", {"id": "X1", "name": EVIL, "kind": "pharmacy", "region": "110101"}, 201
    )
    await admin.ok(
        "POST",
        "/v1/products",
        {
            "product_id": GTIN,
            "name": "Cefixime 100mg x 6",
            "med_list_codg": "G1",
            "pack_units": 6,
            "manufacturer": "M1",
            "regions": ["45"],
        },
        201,
    )
    m, d1, p1 = w["keys"]["M1"], w["keys"]["D1"], w["keys"]["P1"]
    x1 = await admin.key_for("org", "X1")
    case = sscc(77)
    await m.events(
        event("commission", "M1", [BRACKETED], 0, lot="L9", expiry="2028-12-31"),
        event("pack", "M1", [BRACKETED], 1, parent=case),
        event("ship", "M1", [case], 2, to="D1"),
    )
    await d1.events(event("receive", "D1", [case], 3))
    # the pharmacy's receive is uploaded before the distributor's ship (a late upload)
    await p1.events(event("receive", "P1", [BRACKETED], 5))
    await d1.events(event("ship", "D1", [BRACKETED], 4, to="P1"))  # picked out of the case
    await p1.events(event("ship", "P1", [BRACKETED], 6, to="X1"))
    out = await x1.events(event("receive", "X1", [BRACKETED], 7))
    w["case"] = case
    w["open_flags"] = [f["flag_id"] for f in out["flags"]]
    return w
