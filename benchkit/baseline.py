"""The benchmarks' baseline: the service's own use cases called straight on a pool, the
same work without HTTP, JSON and validation. What the service adds on top of these calls
is what a benchmark's service / baseline ratio prices."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from service.core.events import Incoming
from service.core.settlement import Claim
from service.usecases import events as event_usecase
from service.usecases import settlements as settlement_usecase


async def settle(pool: asyncpg.Pool, claim: Claim, secret: bytes) -> str:
    """Settle ``claim`` as ``POST /v1/settlements`` does; the decision (``accepted``, ...).
    Only the decision is read, here alone, so the answer's type may change."""
    answer = await settlement_usecase.settle(pool, claim, secret)
    return str(answer["decision"])


async def ingest(pool: asyncpg.Pool, events: Sequence[Incoming]) -> int:
    """Store ``events`` (codes in canonical form) as ``POST /v1/events`` does; the
    number of codes accepted."""
    result = await event_usecase.ingest(pool, list(events), refused=[])
    return result.accepted_codes
