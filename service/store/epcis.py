"""SQL for captured EPCIS events and capture jobs."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec

from service.interop.epcis.mapping import Record
from service.store.conn import Conn
from service.store.db import fetch_for_values


@dataclass(frozen=True, slots=True)
class Job:
    capture_id: str
    org: str
    behaviour: str
    success: bool
    errors: list[dict[str, Any]]
    events: int
    created_at: datetime
    finished_at: datetime
    warnings: list[dict[str, Any]]  # events stored with no custody effect, and why


async def insert_events(conn: Conn, capture_id: str, org: str, records: list[Record]) -> set[str]:
    """Keep the records; an eventID stored before is left as it was. Returns the eventIDs
    stored now."""
    if not records:
        return set()
    rows = await conn.fetch(
        """INSERT INTO epcis_events (event_id, fact_id, capture_id, org, event_type, event_time,
                                     action, biz_step, biz_location, epcs, parent_id, body, match_keys)
           SELECT r.event_id, r.fact_id, $1, $2, r.event_type, r.event_time, r.action, r.biz_step,
                  r.biz_location, ARRAY(SELECT jsonb_array_elements_text(r.epcs)), r.parent_id, r.body,
                  ARRAY(SELECT jsonb_array_elements_text(r.match_keys))
           FROM jsonb_to_recordset($3::jsonb) AS r(event_id text, fact_id uuid, event_type text,
                event_time timestamptz, action text, biz_step text, biz_location text, epcs jsonb,
                parent_id text, body jsonb, match_keys jsonb)
           ON CONFLICT (event_id) DO NOTHING RETURNING event_id""",
        capture_id,
        org,
        [
            {
                "event_id": r.event_id,
                "fact_id": str(r.fact_id),
                "event_type": r.type,
                "event_time": r.event_time.isoformat(),
                "action": r.action,
                "biz_step": r.biz_step,
                "biz_location": r.biz_location,
                "epcs": list(r.epcs),
                "parent_id": r.parent_id,
                "body": r.body,
                "match_keys": list(r.match_keys),
            }
            for r in records
        ],
    )
    return {r["event_id"] for r in rows}


async def stored(conn: Conn, event_ids: list[str]) -> dict[str, tuple[str, dict[str, Any]]]:
    """(organisation, body as captured) of each of ``event_ids`` stored already."""
    if not event_ids:
        return {}
    rows = await conn.fetch(
        "SELECT event_id, org, body FROM epcis_events WHERE event_id = ANY($1::text[])", event_ids
    )
    return {r["event_id"]: (r["org"], r["body"]) for r in rows}


async def existing(conn: Conn, event_ids: list[str]) -> set[str]:
    """Those of ``event_ids`` stored already."""
    if not event_ids:
        return set()
    rows = await conn.fetch("SELECT event_id FROM epcis_events WHERE event_id = ANY($1::text[])", event_ids)
    return {r["event_id"] for r in rows}


async def insert_job(conn: Conn, job: Job) -> None:
    await conn.execute(
        """INSERT INTO epcis_captures (capture_id, org, behaviour, success, errors, events,
                                       created_at, finished_at, warnings)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)""",
        job.capture_id,
        job.org,
        job.behaviour,
        job.success,
        job.errors,
        job.events,
        job.created_at,
        job.finished_at,
        job.warnings,
    )


async def get_job(conn: Conn, capture_id: str) -> Job | None:
    row = await conn.fetchrow("SELECT * FROM epcis_captures WHERE capture_id = $1", capture_id)
    if row is None:
        return None
    return Job(
        capture_id=row["capture_id"],
        org=row["org"],
        behaviour=row["behaviour"],
        success=row["success"],
        errors=row["errors"],
        events=row["events"],
        created_at=row["created_at"],
        finished_at=row["finished_at"],
        warnings=row["warnings"],
    )


@dataclass(frozen=True, slots=True)
class Query:
    event_types: list[str] | None = None
    ge_time: datetime | None = None
    lt_time: datetime | None = None
    biz_steps: list[str] | None = None
    biz_locations: list[str] | None = None
    epcs: list[str] | None = None  # MATCH_epc: epcList / childEPCs
    any_epcs: list[str] | None = None  # MATCH_anyEPC: any EPC named, parent included, no class
    parent_ids: list[str] | None = None
    # the match_keys each of those four lists matches (mapping.query_keys), besides
    # the identifiers as written
    biz_location_keys: list[str] = field(default_factory=list)
    epc_keys: list[str] = field(default_factory=list)
    any_epc_keys: list[str] = field(default_factory=list)
    parent_id_keys: list[str] = field(default_factory=list)
    event_ids: list[str] | None = None  # EQ_eventID (and one event by its id)
    actions: list[str] | None = None  # EQ_action
    # EQ_disposition: each value in every spelling of it (mapping.disposition_spellings)
    dispositions: list[str] | None = None
    read_points: list[str] | None = None  # EQ_readPoint as written, and its match_keys:
    read_point_keys: list[str] = field(default_factory=list)
    ge_record_time: datetime | None = None
    lt_record_time: datetime | None = None
    after_seq: int = 0
    limit: int = 100


async def query(conn: Conn, q: Query) -> list[tuple[int, dict[str, Any]]]:
    """(seq, body) of the matching events in capture order, after ``after_seq``; the body
    as captured, with ``recordTime`` the time this service recorded it (the standard has
    the repository set it, and ignore one given at capture).
    MATCH_epc narrows by the indexed ``epcs`` (every EPC and class named), then keeps
    events whose ``epcList``/``childEPCs`` hold one; MATCH_anyEPC likewise, with
    ``parentID``, ``inputEPCList`` and ``outputEPCList`` too, never a ``quantityList``'s
    class (the binding's list); ``@>`` is false, not an error, where a document stored
    without the schema has an object there. Each of those, EQ_bizLocation and
    MATCH_parentID also match by the indexed ``match_keys``: the identifiers in any form;
    EQ_readPoint too, for events captured since its key was kept (older ones: as written).
    EQ_disposition and EQ_readPoint read the stored JSON (no column, no index of their
    own), and the record times are not indexed: alone, each walks the events in capture
    order until a page is found, which on a large table with few matches reads most of it;
    with an indexed filter (an EPC, a location, a time) they narrow what that found."""
    # the GIN index of EPCs or the time index, as the filters given fit
    rows = await fetch_for_values(
        conn,
        """SELECT seq, body::text AS body, record_time FROM epcis_events
           WHERE seq > $1
             AND ($2::text[] IS NULL OR event_type = ANY($2))
             AND ($3::timestamptz IS NULL OR event_time >= $3)
             AND ($4::timestamptz IS NULL OR event_time < $4)
             AND ($5::text[] IS NULL OR biz_step = ANY($5))
             AND ($6::text[] IS NULL OR biz_location = ANY($6) OR match_keys && $12::text[])
             AND ($7::text[] IS NULL OR match_keys && $13::text[] OR (epcs && $7 AND EXISTS (
                   SELECT 1 FROM unnest($7) m
                   WHERE body->'epcList' @> to_jsonb(m) OR body->'childEPCs' @> to_jsonb(m))))
             AND ($8::text[] IS NULL OR match_keys && $14::text[] OR (epcs && $8 AND EXISTS (
                   SELECT 1 FROM unnest($8) m
                   WHERE body->>'parentID' = m
                      OR body->'epcList' @> to_jsonb(m) OR body->'childEPCs' @> to_jsonb(m)
                      OR body->'inputEPCList' @> to_jsonb(m) OR body->'outputEPCList' @> to_jsonb(m))))
             AND ($9::text[] IS NULL OR parent_id = ANY($9) OR match_keys && $15::text[])
             AND ($10::text[] IS NULL OR event_id = ANY($10))
             AND ($16::text[] IS NULL OR action = ANY($16))
             AND ($17::text[] IS NULL OR body->>'disposition' = ANY($17))
             AND ($18::text[] IS NULL OR body->'readPoint'->>'id' = ANY($18) OR match_keys && $19::text[])
             AND ($20::timestamptz IS NULL OR record_time >= $20)
             AND ($21::timestamptz IS NULL OR record_time < $21)
           ORDER BY seq LIMIT $11""",
        q.after_seq,
        q.event_types,
        q.ge_time,
        q.lt_time,
        q.biz_steps,
        q.biz_locations,
        q.epcs,
        q.any_epcs,
        q.parent_ids,
        q.event_ids,
        q.limit,
        q.biz_location_keys,
        q.epc_keys,
        q.any_epc_keys,
        q.parent_id_keys,
        q.actions,
        q.dispositions,
        q.read_points,
        q.read_point_keys,
        q.ge_record_time,
        q.lt_record_time,
    )
    return [(r["seq"], _recorded(msgspec.json.decode(r["body"]), r["record_time"])) for r in rows]


def _recorded(body: dict[str, Any], at: datetime) -> dict[str, Any]:
    body["recordTime"] = at.isoformat().replace("+00:00", "Z")
    return body
