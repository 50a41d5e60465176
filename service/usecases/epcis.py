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

from service.core.custody import held_at
from service.core.events import Incoming, Rejection
from service.core.flags import FlagRef
from service.interop.epcis.mapping import (
    EventError,
    Mapped,
    Record,
    all_glns,
    canonical_id,
    content,
    former_ids,
    location_glns,
    map_event,
    unpacks_all,
)
from service.store import codes as code_store
from service.store import epcis as store
from service.store import events as event_store
from service.store import registry
from service.store import sales as sale_store
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


def _error(
    index: int,
    event_id: str | None,
    fld: str,
    message: str,
    exception: tuple[str, str, int] = ("ValidationException", "Validation failed", 400),
) -> dict[str, Any]:
    """One event's error in a capture job: the binding's exception, title and status."""
    name, title, status = exception
    return {
        "type": f"epcisException:{name}",
        "title": title,
        "status": status,
        "detail": f"eventList[{index}].{fld}: {message}",
        "eventIndex": index,
        "eventID": event_id,
        "field": fld,
    }


def _warning(index: int, m: Mapped) -> list[dict[str, Any]]:
    """The event's warning in a capture job (it is stored, with no custody effect), if any."""
    if m.warning is None:
        return []
    fld, message = m.warning
    detail = f"eventList[{index}].{fld}: {message}"
    return [{"eventIndex": index, "eventID": m.record.event_id, "field": fld, "detail": detail}]


class _RolledBack(Exception):
    """Raised inside the capture's transaction so that nothing of a refused document stays."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(errors)} events refused")
        self.errors = errors


def _refusals(
    indexed: Sequence[tuple[int, Mapped]], rejected: Sequence[Rejection]
) -> tuple[list[dict[str, Any]], set[int]]:
    """An error for each event some of whose identifiers were refused (as a parse or
    by the custody rules, as /v1/events' ``rejected``), and the indexes of those whose
    every identifier was refused: they did not happen."""
    by_fact: dict[uuid.UUID, list[Rejection]] = {}
    for r in rejected:
        by_fact.setdefault(r.event_id, []).append(r)
    errors: list[dict[str, Any]] = []
    refused: set[int] = set()
    for i, m in indexed:
        if m.command is None:
            continue
        mine = [*m.refused, *by_fact.get(m.command.event_id, [])]
        if not mine:
            continue
        named = ", ".join(f"{r.code} {r.reason}" for r in mine[:10])
        more = f" and {len(mine) - 10} more" if len(mine) > 10 else ""
        fld = "childEPCs" if m.record.type == "AggregationEvent" else "epcList"
        errors.append(_error(i, m.record.event_id, fld, f"refused: {named}{more}"))
        if {r.code for r in mine} >= set(m.command.codes):
            refused.add(i)
    return errors, refused


async def capture(
    pool: asyncpg.Pool,
    org: str,
    events: list[Mapping[str, Any]],
    behaviour: str,
    invalid: Mapping[int, tuple[str, str]],
    context: Sequence[Any] = (),
) -> Captured:
    """Capture ``events`` for ``org``. ``invalid``: events the schema refused, by index,
    as (field, message); ``context``: the document's own ``@context`` entries. An event
    is refused when it cannot be mapped, when its eventID names another event captured
    before (``_taken``), or when some of its identifiers are refused (not codes, or by
    the custody rules). With ``rollback`` any refusal stores nothing (the custody effects
    of the other events are undone in the same transaction); with ``proceed`` the others
    are stored, and so is an event some of whose codes were taken (as /v1/events takes
    them), while one with none taken is not.
    Raises ForeignLocation (nothing stored)."""
    created = datetime.now(UTC)
    glns = sorted({g for e in events for g in all_glns(e)})
    former = sorted({i for e in events for i in former_ids(e)})
    async with pool.acquire() as conn:
        by_gln = {gln: o.id for gln, o in (await registry.orgs_by_gln(conn, glns)).items()}
        earlier = await store.existing(conn, former)  # stored under the ids given before
    for i, event in enumerate(events):
        for gln in location_glns(event):
            if by_gln.get(gln) != org:
                raise ForeignLocation(i, gln)
    errors: list[dict[str, Any]] = []
    indexed: list[tuple[int, Mapped]] = []
    for i, event in enumerate(events):
        given = event.get("eventID")
        event_id = given if isinstance(given, str) else None
        if i in invalid:
            errors.append(_error(i, event_id, *invalid[i]))
            continue
        try:
            m = map_event(event, by_gln, org, created, context, earlier=earlier)
        except EventError as exc:
            errors.append(_error(i, event_id, exc.field, exc.message))
            continue
        indexed.append((i, m))
    # an AggregationEvent DELETE naming no children takes what its container held at its
    # time (the stored facts and this capture's own), in event-time order
    emptying = sorted(
        (m.record.event_time, n) for n, (i, m) in enumerate(indexed) if unpacks_all(events[i]) is not None
    )
    if emptying:
        async with pool.acquire() as conn:  # one connection for them all
            for _, n in emptying:
                i, m = indexed[n]
                parent = unpacks_all(events[i])
                assert parent is not None
                others = [o.command for _, o in indexed if o.command is not None]
                held = await _held_at(conn, parent, m.record.event_time, others)
                indexed[n] = (i, map_event(events[i], by_gln, org, created, context, {parent: held}, earlier))
    for attempt in range(CAPTURE_ATTEMPTS):
        try:
            return await _store(pool, org, behaviour, created, errors, indexed)
        except _TakenMeanwhile:
            if attempt == CAPTURE_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


async def _held_at(conn: Conn, parent: str, at: datetime, others: Sequence[Incoming]) -> list[str]:
    """The codes ``parent`` held just before an unpack at ``at`` (``core.custody.held_at``),
    from the stored facts of every code ever inside it and of the containers around
    them, the settlements that took packs out, and ``others`` (the capture's own
    commands)."""
    inside = set(await code_store.descendants_ever(conn, [parent]))
    inside |= {c for o in others if o.type == "pack" and o.parent == parent for c in o.codes}
    family = {parent, *inside, *await code_store.ancestors_ever(conn, [parent, *inside])}
    facts = await event_store.facts_for(conn, family)
    facts += await sale_store.settlement_facts(conn, sorted(inside))
    stored = {f.event_id for f in facts}
    for o in others:
        codes = tuple(c for c in o.codes if c in family)
        if codes and o.event_id not in stored:
            facts.append(o.fact(codes))
    return held_at(parent, inside, at, facts)


# a capture runs again when an eventID it took as new was stored meanwhile as another event
CAPTURE_ATTEMPTS = 3


class _TakenMeanwhile(Exception):
    """Another capture stored one of this capture's new eventIDs, as another event,
    after it was looked up: nothing of this transaction is kept, and it runs again."""


def _taken(prior: tuple[str, dict[str, Any]] | None, org: str, record: Record) -> bool:
    """Does the record's eventID name another event, captured before? A captured event
    is not changed: the same eventID with other contents, or from another organisation,
    is refused; sent again with the same contents (``mapping.content``: its ``recordTime``
    and the ``@context`` it came with aside, its time as an instant, ...), it is one
    fact. An error declaration of an organisation's own event is taken as a duplicate
    (README, EPCIS: not done); one of an event not captured is stored, with no custody
    effect (``mapping``)."""
    if prior is None:
        return False
    stored_org, body = prior
    if stored_org == org and "errorDeclaration" in record.body:
        return False
    return stored_org != org or content(body) != content(record.body)


def _same_fact(stored: asyncpg.Record | None, took: set[str], command: Incoming) -> bool:
    """Is the fact stored under the command's id (None: none) the command's own? Sent
    once through /v1/events and once as EPCIS it is one fact; another event under its id
    is refused, as within EPCIS (the repository would have kept an event the custody
    log does not hold: found by a probe). Compared by what both formats carry: the codes
    by their number, and every code the stored fact took (``took``) among the command's
    (one it refused may be left out: a second probe found a ship of one pack captured as
    that of another, the repository listing the other as shipped); and the settlement of
    a dispense that names one. Read before the capture's transaction: a /v1/events
    upload of the same id committed in between is not compared (README, EPCIS)."""
    if stored is None:
        return True
    if not took <= set(command.codes):
        return False
    if command.setl_id is not None and command.setl_id != stored["setl_id"]:
        return False  # another sale (an event naming no settlement says less, not otherwise)
    given = (
        command.type,
        command.at,
        command.org,
        command.to,
        command.parent,
        command.lot,
        len(command.codes),
    )
    return given == (
        stored["type"],
        stored["at"],
        stored["org"],
        stored["to_org"],
        stored["parent"],
        stored["lot"],
        stored["code_count"],
    )


def _taken_error(index: int, event_id: str) -> dict[str, Any]:
    message = f"{event_id} was captured before as another event; a captured event is not changed"
    exception = ("ResourceAlreadyExistsException", "Event already captured", 409)
    return _error(index, event_id, "eventID", f"{message} (send it under a new eventID)", exception)


async def _store(
    pool: asyncpg.Pool,
    org: str,
    behaviour: str,
    created: datetime,
    errors: list[dict[str, Any]],
    indexed: list[tuple[int, Mapped]],
) -> Captured:
    """The mapped events' custody commands, the events as received and the job, in one
    transaction; ``errors`` (the events that did not map) and the eventIDs taken already
    decide what is stored, by the capture's ``behaviour``."""
    async with pool.acquire() as conn:
        priors = await store.stored(conn, [m.record.event_id for _, m in indexed])
        # facts under these events' ids that came another way (/v1/events, a urn:uuid
        # eventID being the fact's own id): the same fact again, or another one
        elsewhere = await event_store.fields(
            conn, [m.command.event_id for _, m in indexed if m.command and m.record.event_id not in priors]
        )
        took = await event_store.named_codes(conn, list(elsewhere)) if elsewhere else {}
    taken = {i for i, m in indexed if _taken(priors.get(m.record.event_id), org, m.record)}
    taken |= {
        i
        for i, m in indexed
        if m.command
        and not _same_fact(elsewhere.get(m.command.event_id), took.get(m.command.event_id, set()), m.command)
    }
    # an eventID given twice in the document: the first is the event, another with
    # other contents is refused (one with the same is the same fact)
    first: dict[str, Record] = {}
    for i, m in indexed:
        seen = first.setdefault(m.record.event_id, m.record)
        if seen is not m.record and _taken((org, seen.body), org, m.record):
            taken.add(i)
    errors = sorted(
        [*errors, *(_taken_error(i, m.record.event_id) for i, m in indexed if i in taken)],
        key=lambda e: int(e["eventIndex"]),
    )
    indexed = [] if errors and behaviour == "rollback" else [(i, m) for i, m in indexed if i not in taken]
    mapped = [m for _, m in indexed]
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
        warnings=[],
    )

    async def keep(conn: Conn, rejected: list[Rejection]) -> list[FlagRef]:
        nonlocal job
        refusals, gone = _refusals(indexed, rejected)
        if refusals and behaviour == "rollback":
            raise _RolledBack(refusals)
        kept = [m.record for i, m in indexed if i not in gone]
        new = await store.insert_events(conn, job.capture_id, org, kept)
        unseen = [r for r in kept if r.event_id not in new and r.event_id not in priors]
        if unseen:  # stored by another capture since they were looked up
            now = await store.stored(conn, [r.event_id for r in unseen])
            if any(_taken(now.get(r.event_id), org, r) for r in unseen):
                raise _TakenMeanwhile
        every = sorted([*errors, *refusals], key=lambda e: int(e["eventIndex"]))
        warnings = [w for i, m in indexed if i not in gone for w in _warning(i, m)]
        job = replace(
            job,
            success=not every,
            errors=every,
            events=len(kept),
            finished_at=datetime.now(UTC),
            warnings=warnings,
        )
        await store.insert_job(conn, job)
        return []

    # the custody commands, the events as received and the job: one transaction
    try:
        result = await ingest(pool, commands, refused, also=keep)
    except _RolledBack as exc:
        job = replace(job, success=False, errors=exc.errors, events=0, finished_at=datetime.now(UTC))
        async with pool.acquire() as conn:
            await store.insert_job(conn, job)
        return Captured(job, IngestResult())
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
    """One event by its eventID (a UUID one in any case: ``mapping.canonical_id``), as
    captured; one an earlier version kept under another spelling of its UUID, as written."""
    async with pool.acquire() as conn:
        for named in dict.fromkeys((canonical_id(event_id), event_id)):
            rows = await store.query(conn, Query(event_ids=[named], limit=1))
            if rows:
                return rows[0][1]
    return None
