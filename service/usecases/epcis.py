"""EPCIS 2.0 capture: map a document's events, and store them as received, with the
capture job, in the same transaction as their custody commands (the same ingest as
/v1/events, the records written by its ``also``); and the queries, a page at a time."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import asyncpg

from service.core.events import Incoming, Rejection
from service.core.flags import FlagRef
from service.interop.epcis.mapping import EventError, Mapped, all_glns, location_glns, map_event
from service.store import epcis as store
from service.store import registry
from service.store.conn import Conn
from service.store.epcis import Job as Job
from service.store.epcis import Query as Query
from service.usecases.events import IngestResult, ingest


class ForeignLocation(Exception):
    """An event happened at a GLN the capturing organisation does not hold: a 403."""

    def __init__(self, index: int, gln: str) -> None:
        super().__init__(f"eventList[{index}]: GLN {gln} is not one of this organisation's")
        self.index = index
        self.gln = gln


@dataclass(frozen=True, slots=True)
class Captured:
    job: Job
    result: IngestResult


def _error(index: int, event_id: str | None, fld: str, message: str) -> dict[str, Any]:
    return {
        "type": "epcisException:ValidationException",
        "title": "Validation failed",
        "status": 400,
        "detail": f"eventList[{index}].{fld}: {message}",
        "eventIndex": index,
        "eventID": event_id,
        "field": fld,
    }


async def capture(
    pool: asyncpg.Pool,
    org: str,
    events: list[Mapping[str, Any]],
    behaviour: str,
    invalid: Mapping[int, tuple[str, str]],
    context: Sequence[Any] = (),
) -> Captured:
    """Capture ``events`` for ``org``. ``invalid``: events the schema refused, by index,
    as (field, message); ``context``: the document's own ``@context`` entries. With
    ``rollback`` any error stores nothing; with ``proceed`` the good events are stored.
    Raises ForeignLocation (nothing stored)."""
    created = datetime.now(UTC)
    glns = sorted({g for e in events for g in all_glns(e)})
    async with pool.acquire() as conn:
        by_gln = {gln: o.id for gln, o in (await registry.orgs_by_gln(conn, glns)).items()}
    for i, event in enumerate(events):
        for gln in location_glns(event):
            if by_gln.get(gln) != org:
                raise ForeignLocation(i, gln)
    errors: list[dict[str, Any]] = []
    mapped: list[Mapped] = []
    for i, event in enumerate(events):
        given = event.get("eventID")
        event_id = given if isinstance(given, str) else None
        if i in invalid:
            errors.append(_error(i, event_id, *invalid[i]))
            continue
        try:
            mapped.append(map_event(event, by_gln, org, created, context))
        except EventError as exc:
            errors.append(_error(i, event_id, exc.field, exc.message))
    if errors and behaviour == "rollback":
        mapped = []
    commands: list[Incoming] = [m.command for m in mapped if m.command is not None]
    refused: list[Rejection] = [r for m in mapped for r in m.refused]
    job = Job(
        capture_id=uuid.uuid4().hex,
        org=org,
        behaviour=behaviour,
        success=not errors,
        errors=errors,
        events=len(mapped),
        created_at=created,
        finished_at=created,
    )

    async def keep(conn: Conn) -> list[FlagRef]:
        nonlocal job
        await store.insert_events(conn, job.capture_id, org, [m.record for m in mapped])
        job = replace(job, finished_at=datetime.now(UTC))
        await store.insert_job(conn, job)
        return []

    # the custody commands, the events as received and the job: one transaction
    result = await ingest(pool, commands, refused, also=keep)
    return Captured(job, result)


async def get_job(pool: asyncpg.Pool, capture_id: str) -> Job | None:
    async with pool.acquire() as conn:
        return await store.get_job(conn, capture_id)


@dataclass(frozen=True, slots=True)
class EventPage:
    events: list[dict[str, Any]]  # as captured, in capture order
    next_token: int | None  # the nextPageToken of the next page; None on the last page


async def events(pool: asyncpg.Pool, q: Query, per_page: int) -> EventPage:
    """Up to ``per_page`` events matching ``q``, in capture order, after ``q.after_seq``."""
    async with pool.acquire() as conn:
        rows = await store.query(conn, replace(q, limit=per_page + 1))  # one more: a next page?
    page = rows[:per_page]
    return EventPage([body for _, body in page], page[-1][0] if len(rows) > per_page else None)


async def event(pool: asyncpg.Pool, event_id: str) -> dict[str, Any] | None:
    """One event by its eventID, as captured."""
    async with pool.acquire() as conn:
        rows = await store.query(conn, Query(event_id=event_id, limit=1))
    return rows[0][1] if rows else None
