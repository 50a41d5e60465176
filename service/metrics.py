"""Service metrics beyond the per-route request rate and latency that Litestar's
Prometheus middleware records. Multi-process aware through PROMETHEUS_MULTIPROC_DIR."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

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
FLAGS_PUBLISHED = Counter("tracecode_flags_published_total", "Flags published to the Redis stream")
FLAGS_PUBLISH_FAILED = Counter(
    "tracecode_flags_publish_failed_total",
    "Flags that could not be published because Redis was unavailable (they are retried)",
)
FLAGS_UNPUBLISHED = Gauge(
    "tracecode_flags_unpublished", "Flags waiting for the Redis stream", multiprocess_mode="max"
)
FLAGS_PROMOTED = Counter(
    "tracecode_flags_promoted_total", "Pending flags opened because their grace window passed unexplained"
)
FLAGS_RAISED = Counter("tracecode_flags_raised_total", "Flags raised, by kind", ["kind"])
SETTLEMENTS = Counter(
    "tracecode_settlements_total", "Settlements answered, by mode and decision", ["mode", "decision"]
)
