"""GS1 EPCIS 2.0: organisations' GLNs, capture and query."""

from __future__ import annotations

import pytest

from tests.helpers import Api

pytestmark = pytest.mark.asyncio(loop_scope="session")

GLN_M1 = "0614141073467"  # urn:epc:id:sgln:0614141.07346.*
GLN_D1 = "0012345111112"  # urn:epc:id:sgln:0012345.11111.*


async def test_orgs_register_their_glns(admin: Api) -> None:
    body = {"id": "M1", "name": "M1", "kind": "manufacturer", "region": "450100", "glns": [GLN_M1]}
    out = await admin.ok("POST", "/v1/orgs", body, 201)
    assert out["glns"] == [GLN_M1]
    await admin.ok("POST", "/v1/orgs", body, 200)
    await admin.ok("POST", "/v1/orgs", {**body, "glns": []}, 409)
    # a GLN belongs to one organisation
    other = {"id": "D1", "name": "D1", "kind": "distributor", "region": "450100", "glns": [GLN_M1]}
    await admin.ok("POST", "/v1/orgs", other, 409)
    # nothing of the refused organisation was kept
    await admin.ok("POST", "/v1/orgs", {**other, "glns": [GLN_D1]}, 201)
    bad = await admin.ok("POST", "/v1/orgs", {**other, "id": "D2", "glns": ["0012345111119"]}, 400)
    assert bad["errors"][0]["field"] == "glns[0]"
    bad = await admin.ok("POST", "/v1/orgs", {**other, "id": "D2", "glns": ["12345"]}, 400)
    assert bad["errors"][0]["field"].startswith("glns")
    plain = await admin.ok("POST", "/v1/orgs", {**other, "id": "D3", "glns": []}, 201)
    assert "glns" not in plain
