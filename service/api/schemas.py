"""The response bodies of the HTTP API, one Struct per shape, as API.md describes them.

Handlers return these, so the OpenAPI document (``/schema/openapi.json``) states the
contract. Use cases may return dicts or typed objects; each handler turns its result
into one of these in a single ``msgspec.convert(..., from_attributes=True)``.

Values that are null today are declared ``X | None`` without a default, so they stay in
the body as null. Keys that are *left out* when empty (a history event's optional
fields) have a ``None`` default on a Struct with ``omit_defaults=True``. Evidence that
differs by flag kind (``refs``) stays a free-form object.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any
from uuid import UUID

import msgspec

# -- operations --------------------------------------------------------------------


class HealthOut(msgspec.Struct, omit_defaults=True):
    status: str  # live, ready or unavailable
    reason: str | None = None  # why it is unavailable (the error's class name)


# -- shared pieces -----------------------------------------------------------------


class FlagRef(msgspec.Struct):
    """A flag raised by a request (events, settlements)."""

    flag_id: str
    kind: str
    code: str


class ReasonOut(msgspec.Struct):
    """Why a code is not payable; ``code`` is null for a line-wide reason."""

    code: str | None
    reason: str
    detail: str


class FlagOut(msgspec.Struct, kw_only=True):
    flag_id: str
    kind: str
    code: str
    org: str | None
    region: str | None
    at: datetime
    raised_at: datetime
    status: str
    detail: str
    refs: dict[str, Any]


# -- registry ----------------------------------------------------------------------


class OrgOut(msgspec.Struct, omit_defaults=True):  # fixmedins_code, glns only when registered
    id: str
    name: str
    kind: str
    region: str
    fixmedins_code: str | None = None
    glns: list[str] = []


class PersonLimitOut(msgspec.Struct):
    units: int
    days: int


class ProductOut(msgspec.Struct):
    product_id: str
    name: str
    med_list_codg: str
    pack_units: int
    manufacturer: str
    level: str
    contains: int | None
    regions: list[str]
    trace_exempt: bool
    person_limit: PersonLimitOut | None


class KeyOut(msgspec.Struct):
    key_id: str
    secret: str
    role: str
    org: str | None
    name: str | None = None  # ⚠ our addition: who holds it, as given


class KeyRevoked(msgspec.Struct):
    key_id: str
    revoked_at: datetime


class KeyInfoOut(msgspec.Struct):
    """A key as listed: never its secret, nor the secret's hash."""

    key_id: str
    role: str
    org: str | None  # set for (and only for) an org key
    created_at: datetime
    revoked_at: datetime | None  # null while the key is live
    name: str | None = None  # ⚠ our addition: who holds it, as given


class KeyPage(msgspec.Struct):
    items: list[KeyInfoOut]  # newest first
    next_cursor: str | None  # pass back as ``cursor``; null on the last page


class OrgKeysRevoked(msgspec.Struct):
    org: str
    revoked: list[KeyRevoked]  # the keys that were live; empty when none was


# -- events ------------------------------------------------------------------------


class RejectedOut(msgspec.Struct):
    event_id: UUID
    code: str
    reason: str


class EventsOut(msgspec.Struct):
    accepted: int  # codes taken
    duplicates: int  # events already stored
    rejected: list[RejectedOut]
    flags: list[FlagRef]
    accepted_events: int


# -- codes -------------------------------------------------------------------------


class VerifyOut(msgspec.Struct):
    code: str
    known: bool
    product_id: str | None
    med_list_codg: str | None
    name: str | None
    lot: str | None
    expiry: date | None
    state: str | None
    custodian: str | None
    units_left: int | None
    dispensable: bool
    reasons: list[ReasonOut]


class VerifyPage(msgspec.Struct):
    items: list[VerifyOut]  # one per code, in request order


class HistoryEventOut(msgspec.Struct, kw_only=True, omit_defaults=True, rename={"from_org": "from"}):
    """An event on the code or on a container it was in (``via`` names the container),
    or the implicit unpack of a pack moved on its own (``implicit``). Fields the event
    does not carry are left out."""

    event_id: UUID
    type: str
    at: datetime
    org: str
    to: str | None = None
    from_org: str | None = None
    parent: str | None = None
    lot: str | None = None
    expiry: date | None = None
    produced: date | None = None
    quantity: int | None = None
    setl_id: str | None = None
    ref: str | None = None
    via: str | None = None
    # an unpack the service inferred: the pack was moved or sold on its own (event_id is
    # that move; for a settlement's, the settlement's id in the fold, setl_id names it)
    implicit: bool | None = None
    # an NHSA 3507 deletion: ``deleted``, an event of the record it deleted; ``undoes``,
    # on the compensation it stored, names that event. Neither counts: the state is the
    # fold of the other events
    deleted: bool | None = None
    undoes: UUID | None = None
    received_at: datetime


class HistorySaleOut(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Units of the code consumed by one sale; ``event_id`` only for a dispense event.
    ``reversed``: the insurer reversed the settlement; ``returned_by``: the return event
    that gave the units back (a return is not a reversal)."""

    setl_id: str | None
    org: str
    at: datetime
    units: int
    reversed: bool
    event_id: UUID | None = None
    returned_by: UUID | None = None


class HistoryOut(msgspec.Struct):
    code: str
    known: bool
    kind: str | None
    product_id: str | None
    product: ProductOut | None
    lot: str | None
    expiry: date | None
    produced: date | None
    container: str | None
    contents: list[str]
    state: str | None
    custodian: str | None
    destination: str | None
    units_left: int | None
    pack_units: int | None
    events: list[HistoryEventOut]
    settlements: list[HistorySaleOut]
    flags: list[FlagOut]


# -- settlements -------------------------------------------------------------------


class SettlementLineOut(msgspec.Struct):
    line_no: int
    payable: bool
    reasons: list[ReasonOut]
    units: int  # billed by this line: consumed, or its quantity without codes (0 unless payable)


class SettlementOut(msgspec.Struct, omit_defaults=True):
    setl_id: str
    decision: str  # accepted, partial or rejected
    lines: list[SettlementLineOut]
    flags: list[FlagRef]
    # our addition, only in the answer to a settlement sent again after its reversal
    reversed: bool = False
    reversed_at: datetime | None = None


class StoredLineOut(msgspec.Struct):
    line_no: int
    med_list_codg: str
    quantity: int
    split: bool
    codes: list[str]


class StoredClaimOut(msgspec.Struct):
    """The settlement request as stored: the person only as ``psn_hash``."""

    setl_id: str
    org: str
    psn_hash: str
    at: str  # as stored (RFC 3339), not re-formatted
    mode: str
    lines: list[StoredLineOut]


class RestoredOut(msgspec.Struct):
    code: str
    units: int


class ReversalOut(msgspec.Struct):
    setl_id: str
    reversed: bool
    restored: list[RestoredOut]


class SettlementRecordOut(msgspec.Struct):
    setl_id: str
    org: str
    at: datetime
    request: StoredClaimOut
    answer: SettlementOut
    decision: str | None
    reversed: bool
    reversed_at: datetime | None
    reversal: ReversalOut | None
    created_at: datetime


# -- flags -------------------------------------------------------------------------


class FlagPage(msgspec.Struct):
    items: list[FlagOut]  # newest first
    next_cursor: str | None  # pass back as ``cursor``; null on the last page


class FlagChangeOut(msgspec.Struct):
    at: datetime
    status: str
    note: str | None
    by_key: str | None


class FlagDetailOut(FlagOut, kw_only=True):
    history: list[FlagChangeOut]  # each status change, oldest first


# -- investigation -----------------------------------------------------------------


class LotRecallOut(msgspec.Struct):
    reason: str
    at: datetime


class LotOut(msgspec.Struct):
    product_id: str
    lot: str
    codes: int
    units_left: int
    by_state: dict[str, int]
    by_custodian: dict[str, int]
    recalled: bool
    recall: LotRecallOut | None
    # the recalled codes by where they are (by_state shows each as recalled): dispensed
    # (with patients), received (on a shelf), in_transit, ...
    recalled_by_state: dict[str, int] = msgspec.field(default_factory=dict)
    # ⚠ our additions: by_custodian counts every code under its last holder, sold out and
    # destroyed ones too; these say which of them are still held, and where on their way
    by_custodian_and_state: dict[str, dict[str, int]] = msgspec.field(default_factory=dict)
    held_by_custodian: dict[str, int] = msgspec.field(default_factory=dict)  # neither sold out nor destroyed
    in_transit_to: dict[str, int] = msgspec.field(default_factory=dict)  # on their way, by destination
    # ⚠ our addition: the expiry dates its codes carry (one, nearly always), earliest first
    expiries: list[date] = msgspec.field(default_factory=list)


class RecallOut(msgspec.Struct):
    product_id: str
    lot: str
    reason: str
    codes_recalled: int


class OrgStatsOut(msgspec.Struct):
    org: str
    received: int  # the codes its receives named: a case or pallet counts as one code
    # ⚠ our addition: those codes counted as packs, a case or pallet as the packs in it then
    received_packs: int
    dispensed: int
    dispensed_units: int
    settled: int
    settled_units: int
    settlements: dict[str, int]  # by decision
    flagged: int
    flags_by_kind: dict[str, int]
    flags_by_status: dict[str, int]


class LedgerItemOut(msgspec.Struct):
    """One catalogue item in an institution's 进销存 ledger (from its NHSA uploads)."""

    med_list_codg: str
    units_in: int  # purchases, transfers and other receipts, donations, patient returns
    units_out: int  # purchase returns, transfers and other issues, sales, losses, destruction
    by_kind: dict[str, int]  # units by kind (purchase, sale, transfer_in, ...)
    balance: int  # the last counted stock plus the moves after it (no count: in - out)
    counted: int | None  # the last stock count (3501)
    counted_at: datetime | None
    count_difference: int | None  # the count less what the ledger held before it
    records: int  # uploaded records that count (deleted ones do not)


class LedgerOut(msgspec.Struct):
    org: str
    items: list[LedgerItemOut]
