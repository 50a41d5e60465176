"""GS1 EPCIS 2.0: which event an eventID, or an event's contents, names."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import msgspec
import pytest

from service.interop.epcis.mapping import NAMESPACE
from tests.helpers import Api, event
from tests.integration.test_epcis import (
    D_LOC,
    GLN_D1,
    P_LOC,
    SSCC_URN,
    UNITS,
    _doc,
    _ev,
    _events,
    _journey,
    _pharma_world,
    kept_before,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def _to_pharmacy(keys: dict[str, Api]) -> None:
    """The three units commissioned, packed and shipped to P1, which receives them."""
    for org, ev in _journey()[:-1]:
        assert (await keys[org].post("/epcis/capture", _doc(ev))).json()["success"]


async def test_a_uuid_event_id_names_one_event_whatever_its_case(admin: Api, db: Any) -> None:
    """Found by a probe: a UUID compares case-insensitively (RFC 9562), yet
    ``urn:uuid:6A1F…`` after ``urn:uuid:6a1f…`` was another event under the same fact id:
    sent again, the same event was listed twice; a dispense of another pack under it was
    listed and had no custody effect (the fact was the first one's). One UUID is one
    event: the same contents are a duplicate, other contents a 409."""
    keys = await _pharma_world(admin)
    await _to_pharmacy(keys)
    u = "6a1f0c2e-3b4d-4e5f-8a9b-0c1d2e3f4a5b"
    seen = _ev("ObjectEvent", 5.5, P_LOC, action="OBSERVE", bizStep="inspecting", epcList=[SSCC_URN])
    first = await keys["P1"].ok("POST", "/epcis/capture", _doc({**seen, "eventID": f"urn:uuid:{u}"}), 202)
    assert first["success"], first
    for spelling in (f"urn:uuid:{u.upper()}", f"URN:UUID:{u}", f"Urn:Uuid:{u[:8].upper()}{u[8:]}"):
        job = await keys["P1"].ok("POST", "/epcis/capture", _doc({**seen, "eventID": spelling}), 202)
        assert job["success"], (spelling, job)
        changed = {**seen, "bizStep": "storing", "eventID": spelling, "@context": _doc()["@context"]}
        refused = await keys["P1"].ok("POST", "/epcis/events", changed, 409)
        assert refused["type"] == "epcisException:ResourceAlreadyExistsException", refused
        found = _events(await keys["inv"].ok("GET", f"/epcis/events/{spelling}"))
        assert [e["bizStep"] for e in found] == ["inspecting"], (spelling, found)
    listed = _events(await keys["inv"].ok("GET", "/epcis/events?EQ_bizStep=inspecting|storing"))
    assert [e["eventID"] for e in listed] == [f"urn:uuid:{u}"], listed

    # a dispense of pack 1, then one of pack 2 under the same UUID in upper case
    sold = "urn:uuid:0b7c3a52-5e1d-4f0a-8b9c-7d6e5f4a3b21"
    one = _ev("ObjectEvent", 6, P_LOC, action="OBSERVE", bizStep="dispensing", eventID=sold,
              epcList=["urn:epc:id:sgtin:0614141.107346.1"])  # fmt: skip
    assert (await keys["P1"].ok("POST", "/epcis/capture", _doc(one), 202))["success"]
    two = {**one, "eventID": sold.upper().replace("URN:UUID:", "urn:uuid:")}
    two["epcList"] = ["urn:epc:id:sgtin:0614141.107346.2"]
    job = await keys["P1"].ok("POST", "/epcis/capture", _doc(two), 202)
    assert [e["type"] for e in job["errors"]] == ["epcisException:ResourceAlreadyExistsException"], job
    query = "/epcis/events?EQ_bizStep=dispensing&MATCH_epc=urn:epc:id:sgtin:0614141.107346.2"
    assert not _events(await keys["inv"].ok("GET", query))
    assert (await keys["P1"].ok("GET", f"/v1/codes/{UNITS[1]}/verify"))["dispensable"]

    # kept by the version before under its UUID in upper case: sent again as it was, the
    # same event, still found as written
    kept = "urn:uuid:9C6F0F4E-1A7B-4D8E-9A51-2F0C7D3B6E10"
    stored = _ev("ObjectEvent", 5.7, P_LOC, action="OBSERVE", bizStep="storing", epcList=[SSCC_URN])
    await kept_before(db, stored, kept)
    job = await keys["P1"].ok("POST", "/epcis/capture", _doc({**stored, "eventID": kept}), 202)
    assert job["success"], job
    listed = _events(await keys["inv"].ok("GET", "/epcis/events?EQ_bizStep=storing"))
    assert [e["eventID"] for e in listed] == [kept], listed
    assert len(_events(await keys["inv"].ok("GET", f"/epcis/events/{kept}"))) == 1


async def test_an_event_without_event_id_is_one_fact_however_its_places_are_spelled(
    admin: Api, db: Any
) -> None:
    """Found by a probe: an event without eventID is named by its contents as read, but
    its places and parties were read as written: a dispense sent again with its
    ``bizLocation`` as a Digital Link instead of an SGLN was a second dispense (a
    DUPLICATE), and a receive whose source's type was the CBV URI instead of the bare
    ``location`` a second receive. Each place, party and type is read as the service reads
    it; an event kept by the version before under its contents as written keeps its id."""
    keys = await _pharma_world(admin)
    for org, ev in _journey()[:5]:  # the case is shipped to P1
        assert (await keys[org].post("/epcis/capture", _doc(ev))).json()["success"]
    received = _ev(
        "ObjectEvent",
        5,
        P_LOC,
        action="OBSERVE",
        bizStep="receiving",
        readPoint={"id": P_LOC},
        epcList=[SSCC_URN],
        sourceList=[{"type": "location", "source": D_LOC}],
        destinationList=[{"type": "owning_party", "destination": "urn:epc:id:pgln:9524567.98765"}],
    )
    again = {
        **received,
        "bizLocation": {"id": "https://id.gs1.org/414/9524567987655"},
        "readPoint": {"id": "urn:epc:id:sgln:9524567.98765.0"},
        "sourceList": [
            {"type": "https://ref.gs1.org/cbv/SDT-location", "source": f"https://id.gs1.org/414/{GLN_D1}"}
        ],
        "destinationList": [
            {
                "type": "https://ref.gs1.org/cbv/SDT-owning_party",
                "destination": "https://id.gs1.org/417/9524567987655",
            }
        ],
    }
    sold = _ev("ObjectEvent", 6, P_LOC, action="OBSERVE", bizStep="dispensing",
               epcList=["urn:epc:id:sgtin:0614141.107346.1"])  # fmt: skip
    sold_again = {**sold, "bizLocation": {"id": "https://id.gs1.org/414/9524567987655"}}
    for sent in (received, again, sold, sold_again):
        job = await keys["P1"].ok("POST", "/epcis/capture", _doc(sent), 202)
        assert job["success"], (sent, job)
    for step in ("receiving", "dispensing"):
        listed = _events(
            await keys["inv"].ok("GET", f"/epcis/events?EQ_bizStep={step}&EQ_bizLocation={P_LOC}")
        )
        assert len(listed) == 1, (step, listed)
    history = await keys["inv"].ok("GET", f"/v1/codes/{UNITS[0]}/history")
    types = [e["type"] for e in history["events"]]
    assert (types.count("receive"), types.count("dispense")) == (2, 1), history
    assert not history["flags"], history

    # kept by the version before under the hash of its contents, its places as written
    last = _ev("ObjectEvent", 7, P_LOC, action="OBSERVE", bizStep="dispensing",
               epcList=["urn:epc:id:sgtin:0614141.107346.2"])  # fmt: skip
    read = {**last, "epcList": [UNITS[1]]}
    fact = uuid.uuid5(NAMESPACE, hashlib.sha256(msgspec.json.encode(read, order="sorted")).hexdigest())
    assert (await keys["P1"].events({**event("dispense", "P1", [UNITS[1]], 7), "event_id": str(fact)}))[
        "accepted"
    ] == 1
    await kept_before(db, last, f"urn:uuid:{fact}")
    assert (await keys["P1"].ok("POST", "/epcis/capture", _doc(last), 202))["success"]
    history = await keys["inv"].ok("GET", f"/v1/codes/{UNITS[1]}/history")
    assert [e["type"] for e in history["events"]].count("dispense") == 1, history
    assert not history["flags"], history
    assert len(_events(await keys["inv"].ok("GET", "/epcis/events?EQ_bizStep=dispensing"))) == 2
