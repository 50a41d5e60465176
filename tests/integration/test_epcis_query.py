"""GS1 EPCIS 2.0 queries against the REST binding: the standard's parameters, those the
service does not offer, the resources it lacks, the EPC format header."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import quote

import pytest
import yaml

from tests.conftest import EPCIS_DIR
from tests.helpers import Api
from tests.integration.test_epcis import (
    P_LOC,
    _doc,
    _ev,
    _events,
    _journey,
    _pharma_world,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

READ_POINT = "urn:epc:id:sgln:9524567.98765.7"  # P1's GLN, extension 7
READ_POINT_LINK = "https://id.gs1.org/414/9524567987655/254/7"
INSPECTED = "urn:uuid:0f0f0f0f-0000-4000-8000-00000000000a"


async def _world(admin: Api) -> dict[str, Api]:
    """The journey, one capture an event, then P1's inspection: a disposition in its
    Web URI form and a read point."""
    keys = await _pharma_world(admin)
    for org, ev in _journey():
        assert (await keys[org].post("/epcis/capture", _doc(ev))).json()["success"]
    inspected = _ev(
        "ObjectEvent",
        7,
        P_LOC,
        action="OBSERVE",
        bizStep="inspecting",
        disposition="https://ref.gs1.org/cbv/Disp-in_progress",
        readPoint={"id": READ_POINT},
        epcList=["urn:epc:id:sgtin:0614141.107346.2"],
        eventID=INSPECTED,
    )
    resp = await keys["P1"].post("/epcis/capture", _doc(inspected))
    assert resp.json()["success"], resp.text
    return keys


def _when(raw: str) -> datetime:
    return datetime.fromisoformat(raw.replace("Z", "+00:00"))


async def test_the_standards_filters_on_what_is_stored(admin: Api) -> None:
    """Found by a probe: EQ_action, EQ_disposition, EQ_readPoint, EQ_eventID and the
    record time bounds were refused as not supported."""
    keys = await _world(admin)
    inv = keys["inv"]
    everything = _events(await inv.ok("GET", "/epcis/events?perPage=1000"))
    assert len(everything) == 8
    ids = [e["eventID"] for e in everything]
    times = sorted({e["recordTime"] for e in everything})
    assert len(times) > 2  # one capture a time: the bounds below cut the list
    middle = times[len(times) // 2]
    cases: list[tuple[dict[str, str], Callable[[dict[str, Any]], bool]]] = [
        ({"EQ_action": "ADD"}, lambda e: e.get("action") == "ADD"),
        ({"EQ_action": "ADD|DELETE"}, lambda e: e.get("action") in ("ADD", "DELETE")),
        ({"EQ_action": "OBSERVE", "EQ_bizStep": "shipping"}, lambda e: e.get("bizStep") == "shipping"),
        # a CBV disposition in any of its spellings, as EQ_bizStep takes a step
        ({"EQ_disposition": "in_progress"}, lambda e: e["eventID"] == INSPECTED),
        ({"EQ_disposition": "urn:epcglobal:cbv:disp:in_progress"}, lambda e: e["eventID"] == INSPECTED),
        ({"EQ_disposition": "cbv:Disp-in_progress|active"}, lambda e: e["eventID"] == INSPECTED),
        ({"EQ_disposition": "active"}, lambda e: False),
        # a read point in any form, as EQ_bizLocation takes a location
        ({"EQ_readPoint": READ_POINT}, lambda e: e["eventID"] == INSPECTED),
        ({"EQ_readPoint": READ_POINT_LINK}, lambda e: e["eventID"] == INSPECTED),
        ({"EQ_readPoint": P_LOC}, lambda e: False),  # the business location is another field
        (
            {"EQ_eventID": f"{ids[0]}|{INSPECTED.upper().replace('URN:UUID:', 'urn:uuid:')}"},
            lambda e: e["eventID"] in (ids[0], INSPECTED),
        ),
        ({"EQ_eventID": "urn:uuid:00000000-0000-4000-8000-000000000000"}, lambda e: False),
        ({"GE_recordTime": middle}, lambda e: _when(e["recordTime"]) >= _when(middle)),
        ({"LT_recordTime": middle}, lambda e: _when(e["recordTime"]) < _when(middle)),
        ({"GE_recordTime": times[1], "LT_recordTime": times[2]}, lambda e: e["recordTime"] == times[1]),
        # an extension event type (a URI, the binding's EPCISEventTypes) is one no event has
        ({"eventType": "example:MyExtensionEvent"}, lambda e: False),
        (
            {"eventType": "AggregationEvent|https://example.com/MyEvent"},
            lambda e: e["type"] == "AggregationEvent",
        ),
    ]
    for params, wanted in cases:
        resp = await inv.get("/epcis/events", **params)
        assert resp.status_code == 200, (params, resp.text)
        got = [e["eventID"] for e in _events(resp.json())]
        assert got == [e["eventID"] for e in everything if wanted(e)], params
    # a page at a time, the filter kept
    resp = await inv.get("/epcis/events", EQ_action="OBSERVE", perPage=2)
    assert "EQ_action=OBSERVE" in resp.headers["link"]
    for params in (
        {"EQ_action": "observe"},
        {"EQ_action": "ADD|MOVE"},
        {"GE_recordTime": "yesterday"},
        {"LT_recordTime": "2026-03-02T08:00:00"},
        {"eventType": "MyExtensionEvent"},
    ):
        resp = await inv.get("/epcis/events", **params)
        assert resp.status_code == 400, (params, resp.text)
        problem = resp.json()
        assert problem["type"] == "epcisException:QueryParameterException", problem
        assert problem["detail"].startswith(next(iter(params))), problem


def _binding() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((EPCIS_DIR / "schema" / "epcis-openapi.yaml").read_text())
    return loaded


def _query_parameters_of_events() -> list[str]:
    """The query parameters the binding names for GET /events."""
    binding = _binding()
    named = []
    for ref in binding["paths"]["/events"]["get"]["parameters"]:
        parameter = binding["components"]["parameters"][ref["$ref"].rsplit("/", 1)[1]]
        if parameter["in"] == "query":
            named.append(parameter["name"])
    return named


async def test_the_standards_parameters_not_offered_are_501_others_400(admin: Api) -> None:
    """Found by a probe: every parameter not offered was a 400 QueryParameterException,
    which says the client asked what the standard does not define; a parameter the
    standard defines and this service does not offer is the binding's 501."""
    keys = await _world(admin)
    inv = keys["inv"]
    offered = {
        "eventType",
        "GE_eventTime",
        "LT_eventTime",
        "GE_recordTime",
        "LT_recordTime",
        "EQ_action",
        "EQ_bizStep",
        "EQ_disposition",
        "EQ_readPoint",
        "EQ_bizLocation",
        "MATCH_epc",
        "MATCH_anyEPC",
        "MATCH_parentID",
        "EQ_eventID",
        "perPage",
        "nextPageToken",
    }
    binding = _query_parameters_of_events()
    assert offered <= set(binding)
    # and those named after a field, an extension or a unit
    flexible = [
        "EQ_example:myField",
        "EQ_INNER_example:myField",
        "EXISTS_ILMD_example:lot",
        "GE_value_KGM",
        "EQATTR_example:f_attr",
        "HASATTR_example:f",
        "EXISTS_errorDeclaration",
    ]
    for name in [*(n for n in binding if n not in offered), *flexible]:
        resp = await inv.client.get(f"/epcis/events?{quote(name, safe=':')}=1", headers=inv.headers)
        assert resp.status_code == 501, (name, resp.text)
        problem = resp.json()
        assert problem["type"] == "epcisException:ImplementationException", problem
        assert problem["detail"].startswith(name), problem
        assert resp.headers["GS1-EPCIS-Version"] == "2.0.0"
    # a name the standard has not (or an offered one in another case) is the client's error
    for name in ("foo", "eventtype", "ge_eventTime", "EQ_", "MATCH_something", "WD_place", "action"):
        resp = await inv.client.get(f"/epcis/events?{name}=1", headers=inv.headers)
        assert resp.status_code == 400, (name, resp.text)
        assert resp.json()["type"] == "epcisException:QueryParameterException", resp.text
    # both: the client's error first
    resp = await inv.client.get("/epcis/events?foo=1&orderBy=eventTime", headers=inv.headers)
    assert resp.status_code == 400, resp.text


async def test_an_event_with_its_own_context_keeps_its_documents_too(admin: Api) -> None:
    """Found by a probe: an event that brought its own ``@context`` was kept with that
    only, so the ``example:`` prefix its document defined meant nothing in the answer."""
    keys = await _pharma_world(admin)
    doc = _doc()
    doc["@context"] = [*doc["@context"], {"example": "http://ns.example.com/epcis/"}]
    own = {"other": "http://other.example/ns/"}
    events = []
    for i, context in enumerate(([own], own, None)):
        e = _ev(
            "ObjectEvent",
            1,
            P_LOC,
            action="OBSERVE",
            bizStep="inspecting",
            epcList=[f"urn:epc:id:sgtin:0614141.107346.{500 + i}"],
        )
        e["eventID"] = f"urn:uuid:1b2c3d4e-0000-4000-8000-00000000abc{i}"
        e["example:myField"] = "the document's prefix"
        if context is not None:
            e["@context"] = context
            e["other:field"] = "the event's prefix"
        events.append(e)
    doc["epcisBody"]["eventList"] = events
    assert (await keys["P1"].post("/epcis/capture", doc)).json()["success"]
    for e, wanted in zip(
        events,
        ([{"example": "http://ns.example.com/epcis/"}, own],) * 2
        + ([{"example": "http://ns.example.com/epcis/"}],),
        strict=True,
    ):
        got = _events(await keys["inv"].ok("GET", f"/epcis/events/{e['eventID']}"))[0]
        assert got["@context"] == wanted, got
        assert got["example:myField"] == "the document's prefix"


async def test_the_epc_format_asked_is_given_or_refused(admin: Api) -> None:
    """Found by a probe: ``GS1-EPC-Format`` was ignored, so a client asking for URNs
    (or, by the binding's default, Digital Links) got both forms as they were captured.
    The service answers EPCs as captured, says so on every answer, and refuses a
    translation it does not make."""
    keys = await _world(admin)
    inv = keys["inv"]
    link = "https://id.gs1.org/01/10614141073464/21/9"
    e = _ev("ObjectEvent", 8, P_LOC, action="OBSERVE", bizStep="inspecting", epcList=[link])
    assert (await keys["P1"].post("/epcis/capture", _doc(e))).json()["success"]
    for path in ("/epcis/events", f"/epcis/events/{INSPECTED}"):
        for asked in (None, "Never_Translates", "No_Preference"):
            headers = {**inv.headers, **({"GS1-EPC-Format": asked} if asked else {})}
            resp = await inv.client.get(path, headers=headers)
            assert resp.status_code == 200, (path, asked, resp.text)
            assert resp.headers["GS1-EPC-Format"] == "Never_Translates"
        for asked, status, exception in (
            ("Always_EPC_URN", 406, "NotAcceptableException"),
            ("Always_GS1_Digital_Link", 406, "NotAcceptableException"),
            ("always_epc_urn", 400, "ValidationException"),
        ):
            resp = await inv.client.get(path, headers={**inv.headers, "GS1-EPC-Format": asked})
            assert resp.status_code == status, (path, asked, resp.text)
            assert resp.json()["type"] == f"epcisException:{exception}", resp.text
            assert "GS1-EPC-Format" in resp.json()["detail"]
            assert resp.headers["GS1-EPC-Format"] == "Never_Translates"
    # as captured: a URN stays a URN, a Digital Link a Digital Link
    epcs = [
        x for ev in _events(await inv.ok("GET", "/epcis/events?perPage=1000")) for x in ev.get("epcList", [])
    ]
    assert link in epcs
    assert "urn:epc:id:sgtin:0614141.107346.2" in epcs


async def test_the_bindings_resources_not_offered_are_501_in_its_shape(admin: Api) -> None:
    """Found by a probe: the binding's resources the service lacks were 404s, GET
    /epcis/capture and other methods 405s of the service's own problem type, and none
    carried the binding's version headers."""
    keys = await _pharma_world(admin)
    inv, m1 = keys["inv"], keys["M1"]
    not_offered = [
        (inv, "GET", "/epcis"),
        (m1, "GET", "/epcis/capture"),
        (admin, "GET", "/epcis/capture"),
        *(
            (inv, "GET", f"/epcis/{r}")
            for r in (
                "eventTypes",
                "epcs",
                "bizSteps",
                "bizLocations",
                "readPoints",
                "dispositions",
                "queries",
            )
        ),
        (inv, "GET", "/epcis/eventTypes/ObjectEvent/events"),
        (inv, "GET", f"/epcis/epcs/{quote('https://id.gs1.org/01/10614141073464/21/1', safe=':/')}/events"),
        (inv, "GET", "/epcis/bizLocations/urn:epc:id:sgln:0614141.07346.0"),
        (inv, "POST", "/epcis/queries"),
        (inv, "GET", "/epcis/queries/SimpleEventQuery/events"),
        (inv, "DELETE", "/epcis/queries/mine"),
        (inv, "DELETE", "/epcis/nextPageToken/123"),
    ]
    for who, method, path in not_offered:
        resp = await who.client.request(
            method, path, headers=who.headers, json={} if method == "POST" else None
        )
        assert resp.status_code == 501, (method, path, resp.text)
        assert resp.json()["type"] == "epcisException:ImplementationException", resp.text
        assert resp.headers["GS1-EPCIS-Version"] == "2.0.0", path
    # without a key, still the binding's 401
    resp = await inv.client.get("/epcis/eventTypes")
    assert resp.status_code == 401, resp.text
    # a path the binding has not: 404; a method it has not: 405 naming those allowed
    for method, path, status in (
        ("GET", "/epcis/nothing", 404),
        ("GET", "/epcis/events/urn:uuid:00000000-0000-4000-8000-000000000000", 404),
        ("PUT", "/epcis/events", 405),
        ("DELETE", "/epcis/events/urn:uuid:00000000-0000-4000-8000-000000000000", 405),
    ):
        resp = await inv.client.request(method, path, headers=inv.headers)
        assert resp.status_code == status, (method, path, resp.text)
        expected = "NoSuchResourceException" if status == 404 else "ImplementationException"
        assert resp.json()["type"] == f"epcisException:{expected}", resp.text
        assert resp.headers["GS1-EPCIS-Version"] == "2.0.0", path
        assert resp.headers["GS1-CBV-Version"] == "2.0.0", path
        if status == 405:
            assert "GET" in resp.headers["allow"], resp.headers


async def test_an_accept_that_takes_no_json_is_not_acceptable(admin: Api) -> None:
    """Found by a probe: ``Accept: application/xml`` (the binding's XML) was answered 200
    in JSON. It is a 406 NotAcceptableException; an Accept that takes JSON, or anything,
    is answered."""
    inv = await admin.key_for("investigator")
    for accept, status in (
        ("application/xml", 406),
        ("text/xml, application/xml;q=0.9", 406),
        ("application/json", 200),
        ("application/ld+json", 200),
        ("text/html, application/xhtml+xml, */*;q=0.8", 200),
    ):
        resp = await inv.client.get("/epcis/events", headers={**inv.headers, "Accept": accept})
        assert resp.status_code == status, (accept, resp.text)
        if status == 406:
            assert resp.json()["type"] == "epcisException:NotAcceptableException", resp.json()
