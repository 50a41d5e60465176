"""The served OpenAPI document is the contract: every endpoint's live answers, successes
and the main errors, validate against it (openapi-core checks the status is documented,
the content type is the documented one, and the body matches its schema)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import msgspec
import pytest
from litestar.testing import AsyncTestClient
from openapi_core import Config, OpenAPI
from openapi_core.testing import MockRequest, MockResponse

from tests.helpers import Api, at, cn20, event, small_world, sscc

pytestmark = [
    pytest.mark.asyncio(loop_scope="session"),
    # Litestar writes "allowEmptyValue": false on every parameter, which OpenAPI deprecates
    pytest.mark.filterwarnings("ignore:Use of allowEmptyValue property is deprecated:DeprecationWarning"),
]

CODG = "XJ01CAA040A001010104256"
PUBLIC = ("/health/live", "/health/ready", "/metrics")
ERRORS_EXERCISED = {400, 401, 403, 404, 409, 413}
# errors a route answers in its own format: /v1/nhsa's other institution and over-size body, in the
# response envelope (a 35xx client reads infcode and err_msg)
OWN_FORMAT = {
    ("/v1/nhsa", "403"): "#/components/schemas/NhsaOut",
    ("/v1/nhsa", "413"): "#/components/schemas/NhsaOut",
    ("/v1/nhsa", "429"): "#/components/schemas/NhsaOut",
    ("/v1/nhsa", "500"): "#/components/schemas/NhsaOut",
    ("/v1/nhsa", "503"): "#/components/schemas/NhsaOut",
}


async def _spec(client: AsyncTestClient) -> dict[str, Any]:  # type: ignore[type-arg]
    resp = await client.get("/schema/openapi.json")
    assert resp.status_code == 200
    spec: dict[str, Any] = resp.json()
    return spec


@dataclass
class Contract:
    """Sends requests and checks each answer against the document."""

    client: AsyncTestClient  # type: ignore[type-arg]
    openapi: OpenAPI
    seen: set[tuple[str, str, int]] = field(default_factory=set)  # (method, path template, status)

    async def call(
        self,
        key: Api | None,
        method: str,
        template: str,
        status: int,
        *,
        query: dict[str, str] | None = None,
        body: Any = None,
        raw: bytes | None = None,
        documented: bool = True,
        **path: str,
    ) -> Any:
        """``documented=False``: a request the document does not describe that still gets a
        2xx (an NHSA envelope refused in the platform's own answer, infcode -1)."""
        url = template.format(**{k: quote(v, safe="") for k, v in path.items()})
        headers = dict(key.headers) if key else {}
        content = raw if raw is not None else (msgspec.json.encode(body) if body is not None else None)
        if content is not None:
            headers["content-type"] = "application/json"
        resp = await self.client.request(method, url, headers=headers, params=query, content=content)
        assert resp.status_code == status, (method, url, resp.status_code, resp.text)
        request = MockRequest(
            "http://testserver.local",
            method,
            url,
            args=query,
            headers=headers,
            data=content,
        )
        if resp.status_code < 300 and documented:  # a request the service took must match its form
            self.openapi.validate_request(request)
        self.openapi.validate_response(
            request,
            MockResponse(
                resp.content,
                status_code=resp.status_code,
                headers=dict(resp.headers),
                content_type=resp.headers.get("content-type", ""),
            ),
        )
        self.seen.add((method.lower(), template, resp.status_code))
        return resp.json() if "json" in resp.headers.get("content-type", "") else resp.text


def _operations(spec: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method, path) for path, item in spec["paths"].items() for method in item}


async def test_document_declares_problems_security_and_media_types(client: AsyncTestClient) -> None:  # type: ignore[type-arg]
    spec = await _spec(client)
    assert spec["openapi"].startswith("3.1")
    assert spec["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": spec["components"]["securitySchemes"]["bearer"]["description"],
    }
    problem = spec["components"]["schemas"]["Problem"]
    assert {"type", "title", "status", "detail"} <= set(problem["required"])
    for path, item in spec["paths"].items():
        for method, op in item.items():
            where = f"{method.upper()} {path}"
            if path in PUBLIC:
                assert "security" not in op, where
            else:
                assert op["security"] == [{"bearer": []}], where
                assert {"400", "401", "403"} <= set(op["responses"]), where
            for status, answer in op["responses"].items():
                content = answer.get("content", {})
                if (path, status) in OWN_FORMAT:  # answered in its own envelope, not a problem
                    assert list(content) == ["application/json"], (where, status)
                    assert content["application/json"]["schema"] == {"$ref": OWN_FORMAT[path, status]}
                elif status.startswith(("4", "5")) and path not in PUBLIC:
                    assert list(content) == ["application/problem+json"], (where, status)
                    assert content["application/problem+json"]["schema"] == {
                        "$ref": "#/components/schemas/Problem"
                    }
                elif status.startswith("2") and path != "/metrics":
                    assert list(content) == ["application/json"], (where, status)
                    assert "$ref" in content["application/json"]["schema"], (where, status)
            if "requestBody" in op:
                assert "413" in op["responses"], where
    assert list(spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    # what a probe of the contract found missing or wrong: the headers the answers carry,
    # and NHSA's 415, which it never gives (a body of any media type is read, and
    # refused in the response envelope when it is no envelope)
    for path in ("/epcis/capture", "/epcis/events"):
        located = spec["paths"][path]["post"]["responses"]["202"]["headers"]["Location"]
        assert located["schema"]["type"] == "string", located
    assert "Link" in spec["paths"]["/epcis/events"]["get"]["responses"]["200"]["headers"]
    assert "415" not in spec["paths"]["/v1/nhsa"]["post"]["responses"]


async def test_every_endpoint_answers_as_documented(client: AsyncTestClient, admin: Api) -> None:  # type: ignore[type-arg]
    spec = await _spec(client)
    # openapi-core reads only application/json as JSON unless told
    config = Config(extra_media_type_deserializers={"application/problem+json": msgspec.json.decode})
    c = Contract(client, OpenAPI.from_dict(spec, config=config))
    w = await small_world(admin)
    m1, d1, p1, h1 = (w["keys"][org] for org in ("M1", "D1", "P1", "H1"))
    inv = await admin.key_for("investigator")
    ins = await admin.key_for("insurer")
    codes = [cn20(w["unit"], i) for i in range(1, 5)]
    case = sscc(7)

    # operations
    await c.call(None, "GET", "/health/live", 200)
    await c.call(None, "GET", "/health/ready", 200)
    await c.call(None, "GET", "/metrics", 200)

    # registry: created, the same again, a different body, refusals
    org = {"id": "P2", "name": "P2 Ltd", "kind": "pharmacy", "region": "450103"}
    await c.call(admin, "POST", "/v1/orgs", 201, body=org)
    await c.call(admin, "POST", "/v1/orgs", 200, body=org)
    await c.call(admin, "POST", "/v1/orgs", 409, body={**org, "name": "Other"})
    await c.call(p1, "POST", "/v1/orgs", 403, body=org)
    await c.call(None, "POST", "/v1/orgs", 401, body=org)
    ids = {"fixmedins_code": "H45010300002"}
    await c.call(admin, "PATCH", "/v1/orgs/{org}", 200, body=ids, org="P2")
    await c.call(admin, "PATCH", "/v1/orgs/{org}", 409, body={"fixmedins_code": "H1"}, org="P2")
    await c.call(admin, "PATCH", "/v1/orgs/{org}", 404, body=ids, org="NOPE")
    await c.call(admin, "PATCH", "/v1/orgs/{org}", 400, body={"name": "Other"}, org="P2")
    await c.call(p1, "PATCH", "/v1/orgs/{org}", 403, body=ids, org="P2")
    product = {
        "product_id": "8123458",
        "name": "Ibuprofen",
        "med_list_codg": "XM01AEI",
        "pack_units": 20,
        "manufacturer": "M1",
    }
    await c.call(admin, "POST", "/v1/products", 201, body=product)
    await c.call(admin, "POST", "/v1/products", 200, body=product)
    await c.call(admin, "POST", "/v1/products", 409, body={**product, "pack_units": 10})
    bad = await c.call(admin, "POST", "/v1/products", 400, body={**product, "pack_units": "20"})
    assert bad["errors"][0]["field"] == "pack_units"
    bad = await c.call(admin, "POST", "/v1/products", 400, body={**product, "colour": "red"})
    assert bad["errors"][0]["field"] == "colour"
    await c.call(admin, "POST", "/v1/products", 400, raw=b"{nope")
    key = await c.call(admin, "POST", "/v1/keys", 201, body={"role": "insurer"})
    await c.call(admin, "DELETE", "/v1/keys/{key_id}", 200, key_id=key["key_id"])
    await c.call(admin, "DELETE", "/v1/keys/{key_id}", 404, key_id="nope")
    page = await c.call(admin, "GET", "/v1/keys", 200, query={"limit": "1"})
    assert page["next_cursor"]
    await c.call(admin, "GET", "/v1/keys", 200, query={"cursor": page["next_cursor"], "revoked": "true"})
    await c.call(admin, "GET", "/v1/keys", 400, query={"revoked": "maybe"})
    await c.call(p1, "GET", "/v1/keys", 403)
    p2_key = await c.call(admin, "POST", "/v1/keys", 201, body={"role": "org", "org": "P2"})
    done = await c.call(admin, "POST", "/v1/orgs/{org}/keys/revoke", 200, org="P2")
    assert [r["key_id"] for r in done["revoked"]] == [p2_key["key_id"]]
    await c.call(admin, "POST", "/v1/orgs/{org}/keys/revoke", 404, org="NOPE")
    await c.call(p1, "POST", "/v1/orgs/{org}/keys/revoke", 403, org="P1")

    # events: a journey into a case, to the pharmacy; a key acting for another org
    out = await c.call(
        m1,
        "POST",
        "/v1/events",
        200,
        body={
            "events": [
                event("commission", "M1", [*codes, "junk"], 0, lot="L1", expiry="2030-12-31"),
                event("pack", "M1", codes, 1, parent=case),
                event("ship", "M1", [case], 2, to="D1"),
            ]
        },
    )
    assert out["rejected"][0]["reason"] == "INVALID_CODE"
    await c.call(d1, "POST", "/v1/events", 200, body={"events": [event("receive", "D1", [case], 3)]})
    await c.call(d1, "POST", "/v1/events", 200, body={"events": [event("ship", "D1", [case], 4, to="P1")]})
    await c.call(p1, "POST", "/v1/events", 200, body={"events": [event("receive", "P1", [case], 5)]})
    # a hospital receives two packs it was never sent: two DIVERSION flags (pending)
    out = await c.call(
        h1, "POST", "/v1/events", 200, body={"events": [event("receive", "H1", codes[2:4], 6)]}
    )
    assert out["flags"], out
    await c.call(p1, "POST", "/v1/events", 403, body={"events": [event("receive", "D1", [case], 6)]})
    await c.call(m1, "POST", "/v1/events", 400, body={"events": [event("ship", "M1", [case], 7)]})  # no "to"
    huge = b'{"events": [' + b"0," * (2 * 1024 * 1024 + 1) + b"0]}"
    await c.call(m1, "POST", "/v1/events", 413, raw=huge)

    # codes
    await c.call(p1, "GET", "/v1/codes/{code}/verify", 200, code=codes[0])
    await c.call(ins, "GET", "/v1/codes/{code}/verify", 200, code=codes[0], query={"org": "P1"})
    await c.call(ins, "GET", "/v1/codes/{code}/verify", 400, code=codes[0])  # no org named
    await c.call(p1, "GET", "/v1/codes/{code}/verify", 403, code=codes[0], query={"org": "P2"})
    await c.call(p1, "POST", "/v1/verify", 200, body={"codes": [codes[0], "junk"]})
    await c.call(p1, "POST", "/v1/verify", 400, body={"codes": []})
    await c.call(inv, "GET", "/v1/codes/{code}/history", 200, code=codes[0])
    await c.call(inv, "GET", "/v1/codes/{code}/history", 200, code=case)
    await c.call(inv, "GET", "/v1/codes/{code}/history", 404, code=cn20(w["unit"], 99))
    await c.call(inv, "GET", "/v1/codes/{code}/history", 400, code="junk")
    await c.call(p1, "GET", "/v1/codes/{code}/history", 403, code=codes[0])

    # settlements: settled, read back, replayed, conflicting, reversed
    claim = {
        "setl_id": "S1",
        "org": "P1",
        "psn_no": "450103199001011234",
        "at": at(60),
        "lines": [
            {"line_no": 1, "med_list_codg": CODG, "quantity": 24, "codes": [codes[0]]},
            {"line_no": 2, "med_list_codg": CODG, "quantity": 6, "split": True, "codes": [codes[1]]},
            {"line_no": 3, "med_list_codg": CODG, "quantity": 24, "codes": ["junk"]},
        ],
    }
    await c.call(ins, "POST", "/v1/settlements", 200, body=claim)
    await c.call(ins, "POST", "/v1/settlements", 200, body=claim)
    await c.call(ins, "POST", "/v1/settlements", 409, body={**claim, "psn_no": "1"})
    again = {**claim, "setl_id": "S2", "lines": claim["lines"][:1]}
    out = await c.call(ins, "POST", "/v1/settlements", 200, body=again)
    assert out["flags"], out  # a resold pack
    await c.call(p1, "POST", "/v1/settlements", 200, body={**again, "setl_id": "S3", "mode": "precheck"})
    await c.call(p1, "POST", "/v1/settlements", 403, body=again)
    await c.call(
        ins,
        "POST",
        "/v1/settlements",
        400,
        body={**claim, "lines": [{**claim["lines"][0], "quantity": "24"}]},
    )
    await c.call(ins, "GET", "/v1/settlements/{setl_id}", 200, setl_id="S1")
    await c.call(ins, "GET", "/v1/settlements/{setl_id}", 404, setl_id="NOPE")
    await c.call(ins, "POST", "/v1/settlements/{setl_id}/reversal", 200, setl_id="S1")
    await c.call(ins, "POST", "/v1/settlements/{setl_id}/reversal", 200, setl_id="S1")
    await c.call(ins, "GET", "/v1/settlements/{setl_id}", 200, setl_id="S1")  # with its reversal
    await c.call(ins, "POST", "/v1/settlements/{setl_id}/reversal", 404, setl_id="NOPE")
    await c.call(inv, "GET", "/v1/settlements/{setl_id}", 403, setl_id="S1")

    # flags
    await c.call(inv, "GET", "/v1/flags", 200, query={"limit": "1"})
    page = await c.call(inv, "GET", "/v1/flags", 200, query={"limit": "1", "status": "pending"})
    assert page["next_cursor"]
    await c.call(inv, "GET", "/v1/flags", 200, query={"cursor": page["next_cursor"], "status": "pending"})
    await c.call(inv, "GET", "/v1/flags", 400, query={"kind": "NOPE"})
    await c.call(inv, "GET", "/v1/flags", 400, query={"limit": "0"})
    await c.call(None, "GET", "/v1/flags", 401)
    await c.call(Api(client, "not-a-key"), "GET", "/v1/flags", 401)
    await c.call(ins, "GET", "/v1/flags", 403)
    flag_id = page["items"][0]["flag_id"]
    await c.call(inv, "GET", "/v1/flags/{flag_id}", 200, flag_id=flag_id)
    await c.call(inv, "GET", "/v1/flags/{flag_id}", 404, flag_id="999999")
    change = {"status": "investigating", "note": "looking"}
    await c.call(inv, "PATCH", "/v1/flags/{flag_id}", 200, flag_id=flag_id, body=change)
    await c.call(inv, "PATCH", "/v1/flags/{flag_id}", 404, flag_id="999999", body=change)
    await c.call(inv, "PATCH", "/v1/flags/{flag_id}", 400, flag_id=flag_id, body={"status": "gone"})
    # our addition: a change made against a status the flag no longer has
    stale = {"status": "dismissed", "expected_status": "open"}
    await c.call(inv, "PATCH", "/v1/flags/{flag_id}", 409, flag_id=flag_id, body=stale)
    current = {"status": "open", "expected_status": "investigating"}
    await c.call(inv, "PATCH", "/v1/flags/{flag_id}", 200, flag_id=flag_id, body=current)

    # NHSA uploads: envelope errors answer in the platform's envelope (infcode -1)
    await c.call(p1, "POST", "/v1/nhsa", 200, body={"infno": "3505"}, documented=False)
    await c.call(p1, "POST", "/v1/nhsa", 413, raw=huge)  # over the size limit: the envelope too

    # investigation
    await c.call(inv, "GET", "/v1/lots/{product_id}/{lot}", 200, product_id=w["unit"], lot="L1")
    await c.call(inv, "GET", "/v1/lots/{product_id}/{lot}", 404, product_id=w["unit"], lot="L9")
    recall = {"product_id": w["unit"], "lot": "L1", "reason": "contamination"}
    await c.call(inv, "POST", "/v1/recalls", 201, body=recall)
    await c.call(inv, "POST", "/v1/recalls", 200, body=recall)
    await c.call(inv, "POST", "/v1/recalls", 400, body={**recall, "product_id": "8999999"})
    await c.call(inv, "GET", "/v1/lots/{product_id}/{lot}", 200, product_id=w["unit"], lot="L1")
    await c.call(inv, "GET", "/v1/lots", 200, query={"product_id": w["unit"], "lot": "L1"})
    await c.call(inv, "GET", "/v1/lots", 404, query={"product_id": w["unit"], "lot": "../L9"})
    await c.call(inv, "GET", "/v1/lots", 400, query={"product_id": "abc", "lot": "L1"})
    await c.call(p1, "GET", "/v1/lots", 403, query={"product_id": w["unit"], "lot": "L1"})
    await c.call(inv, "GET", "/v1/orgs/{org}/stats", 200, org="P1")
    await c.call(inv, "GET", "/v1/orgs/{org}/stats", 404, org="NOPE")
    await c.call(p1, "GET", "/v1/orgs/{org}/stats", 403, org="P1")
    await c.call(inv, "GET", "/v1/orgs/{org}/ledger", 200, org="P1", query={"med_list_codg": CODG})
    await c.call(inv, "GET", "/v1/orgs/{org}/ledger", 404, org="NOPE")
    await c.call(p1, "GET", "/v1/orgs/{org}/ledger", 403, org="P1")
    # after the recall: a verify and a history with reasons and flags of every kind seen
    await c.call(p1, "GET", "/v1/codes/{code}/verify", 200, code=codes[2])
    await c.call(inv, "GET", "/v1/codes/{code}/history", 200, code=codes[1])
    await c.call(inv, "GET", "/v1/codes/history", 200, query={"code": codes[1]})
    await c.call(inv, "GET", "/v1/codes/history", 400, query={"code": "nonsense"})
    await c.call(inv, "GET", "/v1/codes/history", 404, query={"code": cn20(w["unit"], 999)})
    await c.call(p1, "GET", "/v1/codes/history", 403, query={"code": codes[1]})

    # EPCIS 2.0: an event at the pharmacy's own location (no GLNs registered: none named)
    ev = {
        "type": "ObjectEvent",
        "action": "OBSERVE",
        "epcList": ["urn:epc:id:sgtin:0614141.107346.2017"],
        "eventTime": at(70),
        "eventTimeZoneOffset": "+00:00",
    }
    doc = {
        "type": "EPCISDocument",
        "schemaVersion": "2.0",
        "creationDate": at(70),
        "epcisBody": {"eventList": [ev]},
        "@context": ["https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"],
    }
    job = await c.call(p1, "POST", "/epcis/capture", 202, body=doc)
    await c.call(p1, "GET", "/epcis/capture/{capture_id}", 200, capture_id=job["captureID"])
    await c.call(
        p1, "POST", "/epcis/events", 202, body={**ev, "@context": doc["@context"][0], "eventTime": at(71)}
    )
    found = await c.call(inv, "GET", "/epcis/events", 200, query={"perPage": "1"})
    event_id = found["epcisBody"]["queryResults"]["resultsBody"]["eventList"][0]["eventID"]
    await c.call(inv, "GET", "/epcis/events/{event_id}", 200, event_id=event_id)

    answered = {(method, path) for method, path, status in c.seen if status < 300}
    assert answered == _operations(spec), _operations(spec) - answered
    errors = {status for _, _, status in c.seen if status >= 400}
    assert errors >= ERRORS_EXERCISED, errors
