"""GS1 EPCIS 2.0: which event an eventID, or an event's contents, names."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from tests.helpers import BASE_TIME, Api
from tests.integration.test_epcis import (
    P_LOC,
    SSCC_URN,
    UNITS,
    _doc,
    _ev,
    _events,
    _journey,
    _pharma_world,
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
    await db.execute(
        """INSERT INTO epcis_events (event_id, fact_id, capture_id, org, event_type, event_time, action,
                                     biz_step, biz_location, epcs, parent_id, body)
           VALUES ($1, $2, 'before', 'P1', 'ObjectEvent', $3, 'OBSERVE', 'storing', $4, $5, NULL,
                   $6::jsonb)""",
        kept,
        uuid.UUID(kept[len("urn:uuid:") :]),
        BASE_TIME.replace(minute=5, second=42),
        P_LOC,
        [SSCC_URN],
        json.dumps({**stored, "eventID": kept}),
    )
    job = await keys["P1"].ok("POST", "/epcis/capture", _doc({**stored, "eventID": kept}), 202)
    assert job["success"], job
    listed = _events(await keys["inv"].ok("GET", "/epcis/events?EQ_bizStep=storing"))
    assert [e["eventID"] for e in listed] == [kept], listed
    assert len(_events(await keys["inv"].ok("GET", f"/epcis/events/{kept}"))) == 1
