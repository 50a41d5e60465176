"""SQL for an ingest written in one statement, the optimistic path of
``usecases.events.ingest``: the events, the codes they touched, the code rows and the
sales (and an NHSA upload's ledger records), only if no code row (and no item's ledger)
the decision read has changed since."""

from __future__ import annotations

from collections.abc import Mapping

import asyncpg

from service.core.custody import CodeState
from service.core.ingest import Plan
from service.store import codes as code_store
from service.store import events as event_store
from service.store import ledger as ledger_store
from service.store import sales as sale_store
from service.store.conn import Conn, RetryTransaction, unique_violation


async def write_unchanged(
    conn: Conn,
    plan: Plan,
    codes: Mapping[str, CodeState],
    read: Mapping[str, code_store.AsRead],
    ledger: ledger_store.Appended | None = None,
) -> None:
    """Store ``plan`` (its events, their links, its sales) and the rows of ``codes`` in
    ONE statement, its own transaction, only if every row is still at the version it was
    read at and no event was stored meanwhile. Otherwise nothing is written, and the
    caller reads again: PostgreSQL raises SQLSTATE 40001 (``tracecode_changed_since_read``),
    or, where a concurrent request stored the same event's sale first, this raises
    RetryTransaction.
    ``codes`` holds every row the decision read, changed or not: each is written back
    with its version advanced, so two writers that read the same row cannot both win;
    only the columns that differ from the rows as ``read`` are sent.
    ``ledger``: an NHSA upload's records, written with the rest only if each item's
    ledger is still as read; one of the records stored already raises RecordsStored."""
    try:
        await _write(conn, codes, read, plan, ledger)
    except asyncpg.PostgresError as exc:
        if ledger_store.records_stored(exc):
            raise ledger_store.RecordsStored from exc
        if unique_violation(exc):  # a concurrent request stored the same event's sale first
            raise RetryTransaction from exc
        raise


async def _write(
    conn: Conn,
    codes: Mapping[str, CodeState],
    read: Mapping[str, code_store.AsRead],
    plan: Plan,
    ledger: ledger_store.Appended | None,
) -> None:
    order = sorted(codes)
    columns = code_store.changed_columns(read, codes.values())
    params, sets, arrays = code_store.update_arrays((codes[c] for c in order), columns)
    events = event_store.insert_arrays(plan.events)
    links = event_store.link_arrays(plan.facts)
    sales = sale_store.insert_arrays(plan.consumptions)
    # parameters: the rows' arrays, their versions and count, then the events', their
    # count, the links' and the sales' arrays
    versions_at = len(arrays) + 1
    events_at = versions_at + 2
    links_at = events_at + len(events) + 1
    sales_at = links_at + len(links)
    # then, with an NHSA upload, its ledger's
    ledger_ctes, ledger_unchanged = ("", "true")
    ledger_args: list[object] = []
    if ledger is not None:
        ledger_ctes, ledger_unchanged = ledger_store.append_sql(sales_at + len(sales))
        ledger_ctes = ",\n" + ledger_ctes
        ledger_args = ledger_store.append_arrays(ledger)
    await conn.execute(
        f"""WITH written AS ({code_store.update_unchanged_sql(params, sets, versions_at, columns)}),
            stored AS ({event_store.insert_sql(events_at)}),
            linked AS ({event_store.link_sql(links_at)}),
            sold AS ({sale_store.insert_sql(sales_at)}){ledger_ctes}
            SELECT CASE WHEN (SELECT count(*) FROM written) = ${versions_at + 1}::int
                             AND (SELECT count(*) FROM stored) = ${links_at - 1}::int
                             AND (SELECT count(*) FROM sold) = cardinality(${sales_at}::text[])
                             AND {ledger_unchanged}
                        THEN true ELSE tracecode_changed_since_read() END""",  # noqa: S608
        *arrays,
        [read[c].version for c in order],
        len(order),
        *events,
        len(plan.events),
        *links,
        *sales,
        *ledger_args,
    )
