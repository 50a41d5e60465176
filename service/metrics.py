"""The service's metrics: per-route requests (counted by ``api.requestlog``, which sees
every answer's real status) and what the service does. Multi-process aware through
PROMETHEUS_MULTIPROC_DIR."""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, multiprocess

# Requests by route template ("unmatched" when no route matched), with the names and labels
# Litestar's Prometheus middleware gave them. They are counted outside everything, so a
# 401 or 429 from a middleware, or a 503 from the key look-up, is counted as answered:
# Litestar's middleware counted those as 200 with no duration (found by a probe).
REQUEST_LABELS = ("method", "path", "status_code", "app_name")
REQUESTS = Counter("tracecode_requests_total", "Total requests", REQUEST_LABELS)
REQUEST_ERRORS = Counter("tracecode_requests_error_total", "Total errors in requests", REQUEST_LABELS)
REQUEST_SECONDS = Histogram(
    "tracecode_request_duration_seconds", "Request duration, in seconds", REQUEST_LABELS
)
REQUESTS_IN_PROGRESS = Gauge(
    "tracecode_requests_in_progress",
    "Requests being answered (the route is not known before routing)",
    ("method", "app_name"),
    multiprocess_mode="livesum",
)
APP_NAME = "tracecode"


METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str) -> str:
    """The method as a label: any other a client sends is OTHER (labels are series)."""
    return method if method in METHODS else "OTHER"


def request_answered(method: str, path: str, status: int, seconds: float) -> None:
    labels = (method_label(method), path, str(status), APP_NAME)
    REQUESTS.labels(*labels).inc()
    REQUEST_SECONDS.labels(*labels).observe(seconds)
    if status >= 500:
        REQUEST_ERRORS.labels(*labels).inc()


EVENTS = Counter("tracecode_events_total", "Events accepted, by type", ["type"])
EVENT_DUPLICATES = Counter("tracecode_event_duplicates_total", "Events already stored (retries)")
CODES_ACCEPTED = Counter(
    "tracecode_codes_accepted_total", "Codes taken by ingest, one per code of each accepted event"
)
CODES_REJECTED = Counter("tracecode_codes_rejected_total", "Codes rejected, by reason", ["reason"])
REPLAYS = Counter(
    "tracecode_replays_total",
    "Ingest batches that arrived out of event-time order and were replayed",
)
DB_POOL_SIZE = Gauge(
    "tracecode_db_pool_connections", "Open database connections", multiprocess_mode="livesum"
)
DB_POOL_IN_USE = Gauge(
    "tracecode_db_pool_in_use", "Database connections checked out", multiprocess_mode="livesum"
)
# what the pools may open: the measure of their use (the open connections are not: the
# pool opens them on demand and closes idle ones after 5 minutes, so one request on a
# quiet worker had its one open connection 100 % in use)
DB_POOL_MAX = Gauge(
    "tracecode_db_pool_max",
    "Database connections the pool may open (TRACE_DB_POOL_MAX; summed over workers)",
    multiprocess_mode="livesum",
)
DB_POOL_WAITING = Gauge(
    "tracecode_db_pool_waiting",
    "Requests waiting for a database connection to come free or to open",
    multiprocess_mode="livesum",
)
# Answered 503 for the database (requests, and readiness probes, which a load balancer
# sends without traffic), by cause: "unreachable" (refused or lost connections, a
# restarting server, a statement or a new connection not answered in time) or "pool" (no
# pooled connection came free within TRACE_DB_ACQUIRE_SECONDS, a readiness probe's 2 s,
# all of them in use: the database may be answering). Both causes are there from the
# start, so the first 503 of each is an increase Prometheus sees, not a new series.
DB_UNAVAILABLE = Counter(
    "tracecode_db_unavailable_total",
    "Requests and readiness probes answered 503 for the database, by cause (unreachable, pool)",
    ["cause"],
)
for _cause in ("unreachable", "pool"):
    DB_UNAVAILABLE.labels(_cause)
FLAGS_PUBLISHED = Counter("tracecode_flags_published_total", "Flags published to the Redis stream")
FLAGS_PUBLISH_FAILED = Counter(
    "tracecode_flags_publish_failed_total",
    "Flags that could not be published because Redis was unavailable (they are retried)",
)
FLAGS_UNPUBLISHED = Gauge(
    "tracecode_flags_unpublished", "Flags waiting for the Redis stream", multiprocess_mode="livemax"
)
FLAGS_PROMOTED = Counter(
    "tracecode_flags_promoted_total", "Pending flags opened because their grace window passed unexplained"
)
FLAGS_RAISED = Counter("tracecode_flags_raised_total", "Flags raised, by kind", ["kind"])


def flags_raised(kinds: Iterable[str]) -> None:
    """Count the flags a committed transaction stored (``store.flags.raise_flags``'s
    ``stored_now``): every flag, whoever raised it, once."""
    for kind in kinds:
        FLAGS_RAISED.labels(kind).inc()


SETTLEMENTS = Counter(
    "tracecode_settlements_total", "Settlements answered, by mode and decision", ["mode", "decision"]
)
OPTIMISTIC = Counter(
    "tracecode_optimistic_writes_total",
    "Settlements and small ingests tried without locks, by outcome: written; raced (a row "
    "changed, or an id was taken, since it was read: read and tried again); locked (the "
    "request needed, or after its tries took, the locked transaction)",
    ["operation", "outcome"],
)
GC_PAUSES = Histogram(
    "tracecode_gc_pause_seconds",
    "Pauses of Python's cyclic garbage collector (the whole worker stops), by generation",
    ["generation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
)


class _GcTimer:
    """Times each collection through ``gc.callbacks`` (one per process)."""

    def __init__(self) -> None:
        self.started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self.started = time.perf_counter()
        else:
            GC_PAUSES.labels(str(info["generation"])).observe(time.perf_counter() - self.started)


def time_gc_pauses() -> None:
    """Record the garbage collector's pauses in GC_PAUSES (once per process)."""
    if not any(isinstance(cb, _GcTimer) for cb in gc.callbacks):
        gc.callbacks.append(_GcTimer())


def forget_dead_workers() -> None:
    """Drop the live gauges of worker processes that are gone (a worker killed and
    replaced): their last values (pool connections, flags waiting) stayed in /metrics
    for ever (found by a probe). Each worker calls it as it starts."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not folder:
        return
    for path in Path(folder).glob("gauge_live*_*.db"):
        pid = path.stem.rpartition("_")[2]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            multiprocess.mark_process_dead(int(pid), folder)  # type: ignore[no-untyped-call]
