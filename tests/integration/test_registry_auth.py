"""Registry and keys through the public API: 201/200/409, roles, 401/403."""

from __future__ import annotations

import pytest
from litestar.testing import AsyncTestClient

from tests.helpers import Api

pytestmark = pytest.mark.asyncio(loop_scope="session")

ORG = {"id": "M1", "name": "Maker", "kind": "manufacturer", "region": "450100"}
PRODUCT = {
    "product_id": "8123456",
    "name": "Amoxicillin",
    "med_list_codg": "X1",
    "pack_units": 24,
    "manufacturer": "M1",
}


async def test_org_created_then_same_then_conflict(admin: Api) -> None:
    first = await admin.post("/v1/orgs", ORG)
    assert first.status_code == 201
    assert first.json() == ORG
    again = await admin.post("/v1/orgs", ORG)
    assert again.status_code == 200
    changed = await admin.post("/v1/orgs", {**ORG, "name": "Other"})
    assert changed.status_code == 409
    assert changed.headers["content-type"].startswith("application/problem+json")


async def test_a_unique_value_held_by_another_org_is_a_409_naming_it(admin: Api) -> None:
    """A new organisation with another's fixmedins_code or GLN: 409 naming that field,
    not "organisation X exists with different attributes" of an id that does not exist
    (found by a probe); nothing stored."""
    await admin.ok("POST", "/v1/orgs", {**ORG, "id": "F1", "fixmedins_code": "H45010300777"}, 201)
    await admin.ok("POST", "/v1/orgs", {**ORG, "id": "G1", "glns": ["6901234000016"]}, 201)
    for field, clash in (
        ("fixmedins_code", {"fixmedins_code": "H45010300777"}),
        ("glns", {"glns": ["6901234000016"]}),
    ):
        resp = await admin.post("/v1/orgs", {**ORG, "id": "F2", **clash})
        assert resp.status_code == 409, resp.text
        body = resp.json()
        assert body["detail"].startswith(f"{field}: another organisation has"), body
        assert [e["field"] for e in body["errors"]] == [field], body
        assert (await admin.get("/v1/orgs/F2/stats")).status_code == 404


async def test_product_rules(admin: Api) -> None:
    await admin.ok("POST", "/v1/orgs", ORG, 201)
    created = await admin.ok("POST", "/v1/products", PRODUCT, 201)
    assert (created["level"], created["regions"], created["trace_exempt"]) == ("unit", [], False)
    assert (await admin.post("/v1/products", PRODUCT)).status_code == 200
    assert (await admin.post("/v1/products", {**PRODUCT, "pack_units": 12})).status_code == 409
    gtin = {**PRODUCT, "product_id": "06901234567892", "level": "case", "contains": 10}
    assert (await admin.post("/v1/products", gtin)).status_code == 201


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"product_id": "06901234567893"}, "product_id"),  # bad GTIN check digit
        ({"product_id": "12345"}, "product_id"),
        # found by a probe: a CN20 product identifier not beginning with 8 was taken, and
        # its codes then read as another maker's GS1 pack (0110614…21nn) or an SSCC (00…)
        ({"product_id": "0110614"}, "product_id"),
        ({"product_id": "0006901"}, "product_id"),
        ({"product_id": "9123456"}, "product_id"),
        ({"pack_units": 0}, "pack_units"),
        ({"pack_units": "24"}, "pack_units"),
        ({"manufacturer": "NOPE"}, "manufacturer"),
        ({"level": "box"}, "level"),
        ({"level": "case"}, "contains"),
        ({"regions": ["4x"]}, "regions[0]"),
        ({"colour": "red"}, "colour"),
        # found by a probe: a look-alike catalogue item was registered, and verify then
        # said dispensable for packs no settlement of the item could pay
        ({"med_list_codg": "XJ01 "}, "med_list_codg"),
        ({"med_list_codg": "\uff38J01"}, "med_list_codg"),  # a full-width X
        ({"med_list_codg": "XJ01\u200b"}, "med_list_codg"),
    ],
)
async def test_bad_product_is_400_naming_field(admin: Api, db, change: dict[str, object], field: str) -> None:  # type: ignore[no-untyped-def]
    await admin.ok("POST", "/v1/orgs", ORG, 201)
    resp = await admin.post("/v1/products", {**PRODUCT, **change})
    assert resp.status_code == 400, resp.text
    problem = resp.json()
    assert problem["status"] == 400
    assert problem["title"]
    assert problem["type"]
    assert field in [e["field"] for e in problem["errors"]], problem
    assert field in problem["detail"]
    assert await db.fetchval("SELECT count(*) FROM products") == 0


async def test_no_key_unknown_key_revoked_key_are_401(client: AsyncTestClient, admin: Api) -> None:  # type: ignore[type-arg]
    body = {"events": []}
    assert (await client.post("/v1/events", json=body)).status_code == 401
    stranger = Api(client, "k_0000.nope")
    assert (await stranger.post("/v1/orgs", ORG)).status_code == 401
    insurer = await admin.key_for("insurer")
    key_id = insurer.key.split(".")[0]
    revoked = await admin.ok("DELETE", f"/v1/keys/{key_id}")
    assert revoked["key_id"] == key_id
    resp = await insurer.post("/v1/orgs", ORG)
    assert resp.status_code == 401
    assert resp.headers["content-type"].startswith("application/problem+json")
    assert (
        await admin.client.request("DELETE", "/v1/keys/k_missing", headers=admin.headers)
    ).status_code == 404


async def test_roles_are_enforced_and_refused_requests_store_nothing(admin: Api, db) -> None:  # type: ignore[no-untyped-def]
    await admin.ok("POST", "/v1/orgs", ORG, 201)
    await admin.ok("POST", "/v1/orgs", {**ORG, "id": "P1", "kind": "pharmacy"}, 201)
    for role, org in (("insurer", None), ("investigator", None), ("org", "M1")):
        key = await admin.key_for(role, org)
        resp = await key.post("/v1/orgs", {**ORG, "id": f"X-{role}"})
        assert resp.status_code == 403, (role, resp.text)
        assert (await key.post("/v1/keys", {"role": "admin"})).status_code == 403
    assert await db.fetchval("SELECT count(*) FROM orgs WHERE id LIKE 'X-%'") == 0
    maker = await admin.key_for("org", "M1")
    as_other = {
        "events": [
            {
                "event_id": "8f0c5c52-8d43-4d7e-9d59-6a2f0d9b7a10",
                "type": "receive",
                "at": "2026-03-02T08:00:00+08:00",
                "org": "P1",
                "codes": ["81234560000000000001"],
            }
        ]
    }
    assert (await maker.post("/v1/events", as_other)).status_code == 403
    assert await db.fetchval("SELECT count(*) FROM events") == 0


async def test_key_rules(admin: Api) -> None:
    assert (await admin.post("/v1/keys", {"role": "org"})).status_code == 400
    assert (await admin.post("/v1/keys", {"role": "insurer", "org": "M1"})).status_code == 400
    assert (await admin.post("/v1/keys", {"role": "org", "org": "NOPE"})).status_code == 400
    assert (await admin.post("/v1/keys", {"role": "root"})).status_code == 400
    out = await admin.ok("POST", "/v1/keys", {"role": "investigator"}, 201)
    assert out["secret"].startswith(out["key_id"] + ".")


async def test_health_metrics_openapi(client: AsyncTestClient) -> None:  # type: ignore[type-arg]
    assert (await client.get("/health/live")).status_code == 200
    assert (await client.get("/health/ready")).json() == {"status": "ready"}
    schema = (await client.get("/schema/openapi.json")).json()
    for path in ("/v1/events", "/v1/settlements", "/v1/flags", "/v1/verify", "/v1/orgs"):
        assert path in schema["paths"], path
    assert "EventIn" in str(schema["components"]["schemas"])
    metrics = (await client.get("/metrics")).text
    assert "tracecode_db_pool_connections" in metrics


async def test_a_revoke_from_another_process_reaches_the_key_cache(admin: Api, db_url: str) -> None:  # type: ignore[no-untyped-def]
    """Keys are cached (TRACE_KEY_CACHE_SECONDS), but a revoke made elsewhere (the CLI,
    another worker) is announced by the database and refused at once."""
    import asyncio

    import asyncpg

    from service.store import registry

    assert admin.client.app.state.key_cache.live  # listening, so caching
    insurer = await admin.key_for("insurer")
    assert (await insurer.get("/v1/settlements/none")).status_code == 404  # now cached
    conn = await asyncpg.connect(db_url)
    try:
        await registry.revoke_key(conn, insurer.key.split(".")[0])  # not through this app
    finally:
        await conn.close()
    status = 0
    for _ in range(50):
        status = (await insurer.get("/v1/settlements/none")).status_code
        if status == 401:
            break
        await asyncio.sleep(0.02)
    assert status == 401


async def test_an_organisation_is_given_its_nhsa_code_and_glns_after_it_was_registered(admin: Api) -> None:
    """Found by an upgrade probe: an organisation registered without them could never
    upload NHSA records or capture EPCIS events (POST /v1/orgs again is a 409, and no
    route gave them). PATCH /v1/orgs/{id} adds them: its code once, GLNs besides its own."""
    from tests.integration.test_epcis import _doc, _ev
    from tests.integration.test_nhsa import envelope
    from tests.integration.test_nhsa_ledger import purchase

    code, gln, gln2 = "H45010300901", "6900000000014", "6900000000021"
    pharmacy = {"id": "P9", "name": "Late joiner", "kind": "pharmacy", "region": "450103"}
    await admin.ok("POST", "/v1/orgs", pharmacy, 201)
    p9 = await admin.key_for("org", "P9")
    upload = envelope("3503", {"purcinfo": purchase("C901", 5)}, fixmedins_code=code)
    assert (await p9.post("/v1/nhsa", upload)).json()["infcode"] == -1  # not its code yet
    capture = _doc(_ev("ObjectEvent", 0, "urn:epc:id:sgln:6900000.00001.0", action="OBSERVE",
                       epcList=["urn:epc:id:sgtin:0614141.107346.901"]))  # fmt: skip
    assert (await p9.post("/epcis/capture", capture)).status_code == 403  # not its location yet

    given = await admin.ok("PATCH", "/v1/orgs/P9", {"fixmedins_code": code, "glns": [gln]})
    assert given == {**pharmacy, "fixmedins_code": code, "glns": [gln]}
    assert (await p9.post("/v1/nhsa", upload)).json()["infcode"] == 0
    assert (await p9.post("/epcis/capture", capture)).status_code == 202
    # sent again: nothing changes; more GLNs are added to its own
    assert await admin.ok("PATCH", "/v1/orgs/P9", {"fixmedins_code": code, "glns": [gln]}) == given
    more = await admin.ok("PATCH", "/v1/orgs/P9", {"glns": [gln2]})
    assert more == {**given, "glns": [gln, gln2]}
    # its code is kept; what another organisation holds is refused, naming it
    other = await admin.client.patch("/v1/orgs/P9", headers=admin.headers, json={"fixmedins_code": "H1"})
    assert other.status_code == 409
    assert other.json()["errors"][0]["field"] == "fixmedins_code"
    await admin.ok("POST", "/v1/orgs", {**pharmacy, "id": "P8"}, 201)
    for field, clash in (("fixmedins_code", {"fixmedins_code": code}), ("glns", {"glns": [gln2]})):
        taken = await admin.client.patch("/v1/orgs/P8", headers=admin.headers, json=clash)
        assert taken.status_code == 409, taken.text
        assert taken.json()["errors"] == [{"field": field, "message": taken.json()["errors"][0]["message"]}]
        assert taken.json()["detail"].startswith(f"{field}: another organisation has"), taken.json()
    # refused as every admin route refuses
    for path, body, status in (
        ("/v1/orgs/NOPE", {"glns": [gln]}, 404),
        ("/v1/orgs/P8", {"glns": ["6900000000015"]}, 400),  # check digit
        ("/v1/orgs/P8", {"name": "Renamed"}, 400),  # only identifiers are added
    ):
        resp = await admin.client.patch(path, headers=admin.headers, json=body)
        assert resp.status_code == status, (path, body, resp.text)
    assert (await p9.client.patch("/v1/orgs/P9", headers=p9.headers, json={"glns": []})).status_code == 403
    assert await admin.ok("PATCH", "/v1/orgs/P8", {}) == {**pharmacy, "id": "P8"}


async def test_an_nhsa_code_given_by_another_worker_is_read_again(admin: Api, db) -> None:  # type: ignore[no-untyped-def]
    """Each worker keeps the organisations it has read: one that kept P7 before another
    worker gave it its code reads it again when an upload names a code it lacks, rather
    than refusing the upload until a restart."""
    from tests.integration.test_nhsa import envelope
    from tests.integration.test_nhsa_ledger import purchase

    p7_org = {"id": "P7", "name": "P7", "kind": "pharmacy", "region": "450103"}
    await admin.ok("POST", "/v1/orgs", p7_org, 201)
    p7 = await admin.key_for("org", "P7")
    upload = envelope("3503", {"purcinfo": purchase("C701", 5)}, fixmedins_code="H45010300701")
    assert (await p7.post("/v1/nhsa", upload)).json()["infcode"] == -1  # kept without a code
    await db.execute("UPDATE orgs SET fixmedins_code = 'H45010300701' WHERE id = 'P7'")  # another worker
    assert (await p7.post("/v1/nhsa", upload)).json()["infcode"] == 0
