"""NHSA 进销存 uploads: their events through the same ingest as POST /v1/events, and, in
the same transaction, their ledger records, deletions and the ledger's flags."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID, uuid5

import asyncpg

from service import metrics
from service.core import ledger as rules
from service.core.custody import Fact
from service.core.events import Incoming, Rejection
from service.core.flags import FlagKey, FlagRef, NewFlag
from service.core.sales import Consumption, kept_by_settlement
from service.core.settlement import person_hash
from service.interop.nhsa.envelope import text
from service.interop.nhsa.sales import NAMESPACE, Record, same_record
from service.store import codes as code_store
from service.store import events as event_store
from service.store import flags as flag_store
from service.store import ledger as ledger_store
from service.store import registry
from service.store import sales as sale_store
from service.store import settlements as setl_store
from service.store.conn import Conn
from service.usecases.events import IngestResult, ingest


@dataclass(slots=True)
class Uploaded:
    result: IngestResult
    records_new: int = 0  # ledger records stored by this upload (the rest were retries)
    deleted: list[str] = field(default_factory=list)  # fixmedins_bchno of records deleted now
    missing: list[Record] = field(default_factory=list)  # deletions of records never uploaded
    # deletions whose fixmedins_bchno names records of two interfaces (a 3505 and a 3506,
    # a 3503 and a 3504): which is meant is unknown, so neither is deleted; the interfaces
    ambiguous: list[tuple[Record, list[str]]] = field(default_factory=list)
    ledger_flag_kinds: list[str] = field(default_factory=list)  # stored by the ledger's write
    conflicts: list[Record] = field(default_factory=list)  # a serial uploaded before, other contents
    deleted_before: list[Record] = field(default_factory=list)  # a serial whose record a 3507 deleted
    targets: list[dict[str, Any]] = field(default_factory=list)  # the stored records deleted now
    # the settlements (standing or reversed) of the deleted sales' setl_ids when read, each
    # with the packs it paid for: a deleted sale's take of those stays (kept_by_settlement)
    paying: dict[str, frozenset[str]] = field(default_factory=dict)


class SettledMeanwhile(Exception):
    """A settlement of a deleted sale's setl_id that pays for packs was committed after
    the deletion read what they paid for: nothing of this transaction is kept, and the
    deletion is worked out again."""


# an upload runs again when one of its records was stored meanwhile (RecordsStored)
RECORD_ATTEMPTS = 5


def compensation_id(org: str, interface: str, bchno: str, original: UUID) -> UUID:
    """The compensating event of a deleted record's event: one id, however often deleted."""
    return uuid5(NAMESPACE, f"nhsa-delete/{org}/{interface}/{bchno}/{original}")


async def upload(
    pool: asyncpg.Pool, org: str, records: list[Record], msgid: str, envelope: dict[str, Any], now: datetime
) -> Uploaded:
    """Store the records' events, ledger entries and deletions, in one transaction.

    A record is its key, (interface, ``fixmedins_bchno``): sent again (a retry, the same
    record in a batch form, a row repeated in one upload) it is one fact, and its events
    are not taken again whatever codes it carries now (they count as duplicates); sent
    again with other contents it is listed in ``conflicts`` and changes nothing. Records
    are taken to be new: when one was stored already, nothing is kept and the upload runs
    again without it."""
    uploaded = Uploaded(IngestResult())
    deletions = [r for r in records if r.deletes]
    compensations = await _deletions(pool, org, deletions, uploaded, now)
    keys = [(r.entry.interface, r.entry.bchno) for r in records if r.entry is not None]
    stored: dict[tuple[str, str], dict[str, Any] | None] = {}
    for attempt in range(RECORD_ATTEMPTS):
        taken, again, uploaded.conflicts, uploaded.deleted_before = _sort_out(records, stored)
        events = [e for r in taken for e in r.events] + compensations
        entries = [r.entry for r in taken if r.entry is not None]
        # with no deletion, the records may be written with their events in one statement
        unchanged = None if uploaded.targets or not entries else _appender(org, entries, msgid, envelope)
        try:
            uploaded.result = await ingest(
                pool,
                events,
                [],  # a code that is no code made its row a bad row (sales.read_codes)
                also=_ledger_writer(org, entries, msgid, envelope, uploaded, compensations),
                also_unchanged=unchanged,
            )
            uploaded.records_new = len(entries)
            metrics.flags_raised(uploaded.ledger_flag_kinds)  # committed: counted once
            break
        except ledger_store.RecordsStored:
            if attempt == RECORD_ATTEMPTS - 1:
                raise
            async with pool.acquire() as conn:
                stored = await ledger_store.stored_rows(conn, org, keys)
        except SettledMeanwhile:
            if attempt == RECORD_ATTEMPTS - 1:
                raise
            uploaded.missing, uploaded.ambiguous = [], []
            compensations = await _deletions(pool, org, deletions, uploaded, now)
    uploaded.result.duplicates += sum(len(r.events) for r in again)
    return uploaded


def _sort_out(
    records: list[Record], stored: dict[tuple[str, str], dict[str, Any] | None]
) -> tuple[list[Record], list[Record], list[Record], list[Record]]:
    """(records to take, records sent again as they were, records sent again with other
    contents, records sent again after a 3507 deleted them), each key taken once: the
    stored record, else the upload's first row. A deleted record stays deleted, and one
    sent again is told so, not answered as stored (found by a probe: "success", and
    nothing counted)."""
    first = {key: row for key, row in stored.items() if row is not None}
    taken, again, conflicts, deleted = [], [], [], []
    for r in records:
        if r.entry is None:  # a deletion
            taken.append(r)
            continue
        key = (r.entry.interface, r.entry.bchno)
        if key in stored and stored[key] is None:
            deleted.append(r)
        elif key not in first:
            first[key] = r.entry.row
            taken.append(r)
        elif same_record(first[key], r.entry.row):
            again.append(r)
        else:
            conflicts.append(r)
    return taken, again, conflicts, deleted


async def _deletions(
    pool: asyncpg.Pool, org: str, deletions: list[Record], uploaded: Uploaded, now: datetime
) -> list[Incoming]:
    """The records the deletions delete (kept in ``uploaded``'s targets) and the events
    that undo them. A deleted sale gives back the units its own events took (a deleted
    return: its codes are sold again); the compensating events are built from the records
    as stored now, and their ids are fixed, so a deletion sent twice, or racing itself,
    is one fact."""
    if not deletions:
        return []
    targets: list[dict[str, Any]] = []
    async with pool.acquire() as conn:
        for d in deletions:
            bchno = text(d.row.get("fixmedins_bchno")) or ""  # as the row was read: 0 is "0"
            stored = await ledger_store.records_of(conn, org, d.deletes, bchno)
            live = [r for r in stored if not r.pop("deleted")]
            if len(live) > 1:  # one record per interface: a sale and a return, say
                uploaded.ambiguous.append((d, [r["interface"] for r in live]))
                continue
            targets += live
            if not stored:
                uploaded.missing.append(d)
        paying = await setl_store.paid_for(conn, [_setl_id(target) for target in targets])
    uploaded.targets, uploaded.paying = targets, paying
    return _compensations(org, targets, paying, now)


def _ledger_writer(
    org: str,
    entries: list[rules.Entry],
    msgid: str,
    envelope: dict[str, Any],
    uploaded: Uploaded,
    compensations: list[Incoming],
) -> Callable[[Conn, list[Rejection]], Awaitable[list[FlagRef]]]:
    """The ledger's part of the upload's transaction, run after its events: the records,
    the deletions (``compensations``: the events undoing the deleted records'), each
    item's ledger and the flags they raise."""

    async def write(conn: Conn, _refused: list[Rejection]) -> list[FlagRef]:
        uploaded.ledger_flag_kinds = []  # this attempt's (the transaction may run again)
        # A deleted sale's take of a pack its settlement paid for is not undone. What they
        # paid for was read before this transaction; read again now that the packs' rows
        # are locked: a settlement committed in between that pays for packs means working
        # the deletion out again (one committing later waits for these rows, and is
        # judged after this upload). A settlement's answer is stored with it and does not
        # change: only one committed meanwhile pays for more.
        sales = [_setl_id(stored) for stored in uploaded.targets if stored["interface"] == "3505"]
        if any(sales):
            paying = await setl_store.paid_for(conn, sales)
            if any(packs - uploaded.paying.get(s, frozenset()) for s, packs in paying.items()):
                raise SettledMeanwhile
        deleted_items = {stored["med_list_codg"] for stored in uploaded.targets}
        # the counted packs' rows before the items' ledgers, as every writer takes them
        # (code rows, then ledger rows: a sale written in one statement does too)
        counts = [e for e in entries if e.kind == rules.COUNT and e.codes]
        counted = sorted({c for e in counts for c in e.codes})
        states = await code_store.lock(conn, counted) if counted else {}
        standings = await ledger_store.lock_items(
            conn, org, [e.med_list_codg for e in entries] + [*deleted_items]
        )
        await ledger_store.insert(conn, entries, msgid, envelope)
        keys = [(stored["interface"], stored["fixmedins_bchno"]) for stored in uploaded.targets]
        uploaded.deleted = await ledger_store.mark_deleted(conn, org, keys, msgid) if keys else []

        # Each item's ledger moves on from where it stood when the new records follow it;
        # otherwise (a deletion, a count, a record older than its latest) it is computed
        # again from all its records.
        moved, figures, recompute = rules.append_items(standings, entries, deleted_items)
        out_moves = [e for e in entries if e.delta < 0]
        slow = [(e.interface, e.bchno) for e in out_moves if e.med_list_codg in recompute]
        # a computed item's stored moves out from the earliest record written or deleted
        # now are judged again: a sale sent late, or a purchase deleted, can leave a later
        # sale's ledger below zero
        since: dict[str, datetime] = {}
        changed = [(e.med_list_codg, e.at) for e in entries]
        for item, at in changed + [(t["med_list_codg"], t["at"]) for t in uploaded.targets]:
            if item in recompute:
                since[item] = min(since.get(item, at), at)
        if slow or since:
            figures.update(await ledger_store.below_zero(conn, org, slow, since))
        new = {(e.interface, e.bchno) for e in entries}
        stored = await ledger_store.entries(conn, org, [k for k in figures if k not in new])
        await ledger_store.save_items(conn, org, moved)
        await ledger_store.refresh_items(conn, org, sorted(recompute))
        flags: list[NewFlag] = rules.imbalance_flags(out_moves, figures)
        rejudged = rules.imbalance_flags(stored, figures)  # stored records left below zero now
        if counts:
            found = await registry.get_orgs(conn, [org])
            region = found[org].region if org in found else None
            # a count stands at its time: packs moved or sold since are judged as they were
            history: list[Fact] = []
            takes: list[Consumption] = []
            if late := rules.counted_late(counts, states):
                family = sorted({*late, *await code_store.ancestors_ever(conn, late)})
                history = await event_store.facts_for(conn, family)
                history += await sale_store.settlement_facts(conn, family)
                takes = await sale_store.of_codes(conn, late, open_only=False)
            made = sorted({s.product_id for s in states.values() if s.product_id})
            products = await registry.get_products(conn, made) if made else {}
            for e in counts:
                flags += rules.count_flags(e, rules.as_counted(e, states, history, takes), products, region)
        fresh: set[FlagKey] = set()
        raised = await flag_store.raise_flags(conn, flags + rejudged, fresh, uploaded.ledger_flag_kinds)
        # a flag that stood already, judged again with other figures, shows the ledger as
        # it is now (its status stays)
        await flag_store.restate(
            conn, [f for f in rejudged if f.key not in fresh], _refigured_by(entries, uploaded.targets, msgid)
        )
        # the answer names this upload's records' flags, and a stored record's only when
        # this upload raised it (not one it stood under already)
        reported = flags + [f for f in rejudged if f.key in fresh]
        # what only a deleted record raised (its STOCK_IMBALANCE, what a deleted count
        # found, what its undone sale or return raised) rests on nothing now: withdrawn;
        # a sale's under a setl_id rests on that id, unless its settlement billed the pack
        billed = await setl_store.billed_by(conn, [e.setl_id for e in compensations if e.type == "return"])
        undone = sorted({c for e in compensations if e.type == "return" and e.setl_id for c in e.codes})
        still_taken = await sale_store.of_codes(conn, undone, open_only=True) if undone else []
        sold_at = {i: t["at"] for t in uploaded.targets for i in t["event_ids"]}  # by the deleted events
        await flag_store.withdraw_resting_on(
            conn,
            rules.deleted_evidence(org, keys, compensations),
            sorted(
                {c for t in uploaded.targets for c in (t["med_list_codg"], *t["codes"])}
                | {c for e in compensations for c in e.codes}
            ),
            f"the record it rests on was deleted (NHSA 3507, msgid {msgid})",
            rules.deleted_sale_evidence(compensations, billed, still_taken, sold_at),
        )
        # and a move out flagged before that the records written or deleted now back again
        if since:
            standing = await flag_store.imbalances(conn, org, sorted(since))
            now_backed = rules.explained(standing, since, figures)
            await flag_store.withdraw(
                conn, [f.key for f in now_backed], [msgid], _explained_by(entries, uploaded.targets, msgid)
            )
        return [raised[f.key] for f in reported if f.key in raised]

    return write


def _named(entries: list[rules.Entry], deleted: list[dict[str, Any]]) -> str:
    """An upload's records and deletions, as a history line names them (three at most)."""
    named = [f"{e.interface} {e.bchno}" for e in entries]
    named += [f"{t['interface']} {t['fixmedins_bchno']} deleted" for t in deleted]
    return ", ".join(named[:3]) + (f" and {len(named) - 3} more" if len(named) > 3 else "")


def _explained_by(entries: list[rules.Entry], deleted: list[dict[str, Any]], msgid: str) -> str:
    """The history line of a STOCK_IMBALANCE that an upload's records explained."""
    return (
        "explained by records uploaded later: the ledger no longer falls below zero"
        f" here ({_named(entries, deleted)}; msgid {msgid})"
    )


def _refigured_by(entries: list[rules.Entry], deleted: list[dict[str, Any]], msgid: str) -> str:
    """The history line of a standing STOCK_IMBALANCE whose figures an upload changed."""
    return (
        "figures changed by records uploaded later: the ledger still falls below zero"
        f" here, its evidence now as the ledger is ({_named(entries, deleted)}; msgid {msgid})"
    )


def _appender(
    org: str, entries: list[rules.Entry], msgid: str, envelope: dict[str, Any]
) -> Callable[[Conn], Awaitable[ledger_store.Appended | None]]:
    """The ledger's part of the optimistic ingest: the records, when they simply follow
    each item's ledger as read now (no count, none older than its latest record) and
    raise no flag; otherwise None, and ``_ledger_writer`` runs in the locked transaction."""

    async def read(conn: Conn) -> ledger_store.Appended | None:
        before = await ledger_store.read_items(conn, org, [e.med_list_codg for e in entries])
        after, figures, slow = rules.append_items(before, entries)
        if slow or rules.imbalance_flags([e for e in entries if e.delta < 0], figures):
            return None
        kept = {item: s for item, s in before.items() if s is not None}
        return ledger_store.Appended(org, entries, msgid, envelope, kept, after)

    return read


def _setl_id(stored: dict[str, Any]) -> str | None:
    row = stored["row_data"]
    return text(row.get("setl_id")) if isinstance(row, dict) else None


def _compensations(
    org: str, targets: list[dict[str, Any]], paying: dict[str, frozenset[str]], now: datetime
) -> list[Incoming]:
    """The events that undo deleted sales and sale returns.

    A deleted sale: one return per event of the record, naming that event (``undoes``),
    so that it gives back the units that very sale took, and nothing when it took
    nothing (a resend of a settled sale, a DUPLICATE, a sale returned already). An event
    whose pack a settlement of the sale's ``setl_id`` paid for (``paying``) is not undone
    (``core.sales.kept_by_settlement``): that take is the settlement's, its units taken
    until the insurer reverses it, and given back by that reversal (a refunded one stays
    in the pack's history). A deleted return: one dispense per event of the record,
    naming that event, which sells again what it gave back, and nothing when it gave
    nothing back.

    ⚠ Only sales and returns are undone so: a 3502 record's receive, ship or destroy is a
    scan of a physical move, and its deletion changes the ledger only."""
    out = []
    for stored in targets:
        interface = stored["interface"]
        codes = tuple(stored["codes"])
        if interface not in ("3505", "3506") or not codes:
            continue
        bchno = stored["fixmedins_bchno"]
        setl_id = _setl_id(stored)
        at = max(now, stored["at"] + timedelta(seconds=1))
        ref = f"3507:{bchno}"
        ids: list[UUID] = list(stored["event_ids"])
        if interface == "3505":
            # whole packs: one event per code, in order; a split sale: one event of all
            whole = len(ids) == len(codes)
            sold = list(zip(ids, [(c,) for c in codes], strict=True)) if whole else [(ids[0], codes)]
            paid = paying.get(setl_id or "", frozenset())
            out += [
                Incoming(
                    compensation_id(org, interface, bchno, original),
                    "return",
                    at,
                    org,
                    packs,
                    setl_id=setl_id,
                    ref=ref,
                    undoes=original,
                )
                for original, packs in sold
                if not kept_by_settlement(packs, paid)
            ]
            continue
        # a deleted return (one event per pack): what each event gave back is sold again,
        # as a sale of its own (the sale the return undid keeps its reversal: under its
        # setl_id it could not consume again); an event that gave nothing back, waiting
        # for its sale or matching none, gives nothing back later either
        out += [
            Incoming(compensation_id(org, interface, bchno, original), "dispense", at, org, (code,), ref=ref,
                     undoes=original)
            for original, code in zip(ids, codes, strict=True)
        ]  # fmt: skip
    return out


async def ledger(pool: asyncpg.Pool, org: str, med_list_codg: str | None) -> list[dict[str, Any]] | None:
    """The institution's ledger per catalogue item; None for an unknown organisation."""
    async with pool.acquire() as conn:
        if await registry.get_org(conn, org) is None:
            return None
        return await ledger_store.ledger(conn, org, med_list_codg)


async def records(
    pool: asyncpg.Pool,
    org: str,
    interfaces: tuple[str, ...],
    *,
    page: int,
    page_size: int,
    psn_no: str | None = None,
    secret: bytes = b"",
    **filters: Any,
) -> tuple[int, list[dict[str, Any]]]:
    """How many of the institution's records match, and the ``page``-th ``page_size`` of
    them (from 1), oldest first. ``psn_no``: the person's records only, found by the keyed
    hash (under ``secret``) that every record keeps instead of the number."""
    if psn_no:
        filters["psn_hash"] = person_hash(secret, psn_no)
    async with pool.acquire() as conn:
        return await ledger_store.records(
            conn,
            org,
            interfaces,
            ledger_store.RecordFilters(**filters),
            offset=(page - 1) * page_size,
            limit=page_size,
        )
