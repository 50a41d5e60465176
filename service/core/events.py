"""Supply-chain events: what each type needs, and which codes of an event are taken.

Pure rules over plain values; the use case in ``service/usecases/events.py`` loads the
inputs and stores the outcome.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping
from datetime import date, datetime, timedelta
from uuid import UUID

import msgspec

from service.core.codes import LABEL_MISMATCH, ParsedCode, label_disagrees
from service.core.custody import CodeState, Fact, product_of
from service.core.registry import UNIT, Org, Product
from service.core.rules import INVALID_CODE

MAX_CODES_PER_REQUEST = 10_000
MAX_FUTURE = timedelta(minutes=10)

# Rejection reasons for single codes of an event (API.md lists the first four; the
# rest name the other reasons a code cannot be taken).
UNKNOWN_PRODUCT = "UNKNOWN_PRODUCT"
NOT_MANUFACTURER = "NOT_MANUFACTURER"
COMMISSION_CONFLICT = "COMMISSION_CONFLICT"
UNKNOWN_ORG = "UNKNOWN_ORG"
NOT_A_CONTAINER = "NOT_A_CONTAINER"
REPEATED_CODE = "REPEATED_CODE"
# the event_id is another organisation's event (an id is one organisation's: a retry of
# someone else's event is no retry, and must not pass for one)
EVENT_ID_TAKEN = "EVENT_ID_TAKEN"


def scanned_labels(type_: str, scanned: list[ParsedCode]) -> tuple[ParsedCode, ...]:
    """Of a dispense's codes as scanned, those whose labels carry a lot or expiry
    (``Incoming.labels``); other events' scans are not compared."""
    if type_ != "dispense":
        return ()
    return tuple(p for p in scanned if p.lot is not None or p.expiry is not None)


def label_mismatch(type_: str, code: ParsedCode, lot: str | None, expiry: date | None) -> bool:
    """Does a commission's code carry a lot (10) or expiry (17) on its label other than
    the event's (``LABEL_MISMATCH``)? The commission records them; a later scan of the
    pack is judged against that record (``core.rules.code_reasons``, the sale's flags)."""
    return type_ == "commission" and label_disagrees(code, lot, expiry) is not None


def take_codes(
    event_id: UUID,
    type_: str,
    scanned: Iterable[tuple[str, str | None, ParsedCode | None]],
    lot: str | None,
    expiry: date | None,
) -> tuple[list[str], list[Rejection], tuple[ParsedCode, ...]]:
    """An event's codes as scanned, each (as sent, its canonical code or None for no code,
    what its label says or None): the codes taken, in order, the refused ones (not a
    code: INVALID_CODE, as sent; a commission's label of another lot or expiry:
    LABEL_MISMATCH; a code named twice: REPEATED_CODE), and the labels a dispense scanned
    (:func:`scanned_labels`). One rule for /v1/events and EPCIS."""
    taken: dict[str, None] = {}  # in order, and a set (a list's "in" made 10,000 codes quadratic)
    refused: list[Rejection] = []
    labels: list[ParsedCode] = []
    for raw, code, label in scanned:
        if code is None:
            refused.append(Rejection(event_id, raw[:200], INVALID_CODE))
        elif label is not None and label_mismatch(type_, label, lot, expiry):
            refused.append(Rejection(event_id, code, LABEL_MISMATCH))
        elif code in taken:
            refused.append(Rejection(event_id, code, REPEATED_CODE))
        else:
            taken[code] = None
            if label is not None:
                labels.append(label)
    return list(taken), refused, scanned_labels(type_, labels)


class Incoming(msgspec.Struct, frozen=True):
    """One event of a request, shape-checked, codes already in canonical form."""

    event_id: UUID
    type: str
    at: datetime
    org: str
    codes: tuple[str, ...]
    to: str | None = None
    from_org: str | None = None
    parent: str | None = None
    lot: str | None = None
    expiry: date | None = None
    produced: date | None = None
    quantity: int | None = None
    setl_id: str | None = None
    ref: str | None = None
    # the catalogue item a dispense was billed as (NHSA sale uploads carry it), or an NHSA
    # 3502 move was recorded under: a pack of another product raises PRODUCT_MISMATCH
    # (串换), as a settlement line does
    med_list_codg: str | None = None
    # an NHSA 3507 deletion's compensation names the event it undoes: a return, the
    # dispense whose units it gives back; a dispense, the return whose units it takes
    # again. None otherwise
    undoes: UUID | None = None
    # the codes of a dispense as scanned whose labels carry a lot or expiry (GS1 AIs 10,
    # 17): a sale of a pack whose label disagrees with its record raises LABEL_MISMATCH
    # (``core.flags.dispense_flags``). Read at the sale, not stored
    labels: tuple[ParsedCode, ...] = ()

    def fact(self, codes: tuple[str, ...]) -> Fact:
        return Fact(
            event_id=self.event_id,
            type=self.type,
            at=self.at,
            org=self.org,
            codes=codes,
            to=self.to,
            parent=self.parent,
            lot=self.lot,
            expiry=self.expiry,
            produced=self.produced,
            undoes=self.undoes,
        )


class Rejection(msgspec.Struct, frozen=True):
    event_id: UUID
    code: str
    reason: str


EARLIEST_YEAR = 2000


def time_problem(at: datetime, now: datetime) -> str | None:
    """Why an event or settlement time cannot be taken, or None."""
    if at.tzinfo is None:
        return "must carry a UTC offset (RFC 3339)"
    if at.year < EARLIEST_YEAR:
        return f"is before the year {EARLIEST_YEAR}"  # checked before any arithmetic can overflow
    if at > now + MAX_FUTURE:
        return "is more than 10 minutes in the future"
    return None


def bound_problem(at: datetime) -> str | None:
    """Why a time cannot bound a query (``since``, ``GE_eventTime``, ...), or None: it
    carries an offset, and PostgreSQL's timestamptz and an offset near year 1 or 9999
    do not mix (was a 500)."""
    if at.tzinfo is None:
        return "must carry a UTC offset (RFC 3339)"
    if not EARLIEST_YEAR <= at.year < 9999:
        return f"must be between the years {EARLIEST_YEAR} and 9998"
    return None


def identifier_problem(name: str, *, shown: bool = True) -> str | None:
    """What is wrong with an identifier as named (a lot printed on the pack, a catalogue
    item's code): a look-alike (an invisible character, a direction mark, a space at an
    end, a full-width letter) would be another identifier that reads the same to a
    person, so a recall of the printed lot would miss it, or an investigator would take
    one institution's made-up item for the real one. Not ``shown``: the message does not
    repeat the identifier (a person's number)."""
    if name != name.strip():
        return "no spaces at either end"
    # not printable: control, format (direction marks), separator other than the ASCII
    # space, surrogate, private-use or unassigned characters
    if not name.isprintable():
        return "control, invisible or unassigned characters are not allowed"
    if not name.isascii() and (plain := unicodedata.normalize("NFKC", name)) != name:
        return "must be written in its plain form" + (f" ({plain!r})" if shown else "")
    return None


def shape_errors(
    *,
    type_: str,
    at: datetime,
    now: datetime,
    to: str | None,
    parent: str | None,
    lot: str | None,
    expiry: date | None,
    quantity: int | None,
    setl_id: str | None,
) -> list[tuple[str, str]]:
    """Field problems that make the whole request a 400: (field, message) pairs."""
    errors: list[tuple[str, str]] = []
    problem = time_problem(at, now)
    if problem:
        errors.append(("at", problem))
    if lot is not None and (problem := identifier_problem(lot)):
        errors.append(("lot", problem))
    if type_ == "commission":
        if not lot:
            errors.append(("lot", "a commission needs the lot"))
        if expiry is None:
            errors.append(("expiry", "a commission needs the expiry date"))
    if type_ in ("pack", "unpack") and not parent:
        errors.append(("parent", f"a {type_} needs the container code"))
    if type_ != "ship" and to is not None:
        errors.append(("to", "only a ship names a destination"))
    if type_ == "ship" and not to:
        errors.append(("to", "a ship needs the destination organisation"))
    if type_ not in ("pack", "unpack") and parent is not None:
        errors.append(("parent", "only pack and unpack name a container"))
    if quantity is not None and type_ != "dispense":
        errors.append(("quantity", "only a dispense carries a quantity"))
    if setl_id is not None and type_ not in ("dispense", "return"):
        errors.append(("setl_id", "only a dispense or return carries a settlement id"))
    return errors


def judge(
    events: list[Incoming],
    states: Mapping[str, CodeState],
    products: Mapping[str, Product],
    orgs: Mapping[str, Org],
) -> tuple[list[Fact], list[Rejection]]:
    """Decide, code by code, what each event may take. Returns the facts (events cut
    down to their accepted codes; events left with none are dropped) and the rejections."""
    facts: list[Fact] = []
    rejected: list[Rejection] = []
    # commissions seen earlier in this same request, so two in one batch conflict too
    commissioned: dict[str, tuple[object, ...]] = {}
    for event in events:
        reason = _event_reason(event, products, orgs)
        taken: list[str] = []
        for code in event.codes:
            why = reason or _code_reason(event, code, states, products, commissioned)
            if why:
                rejected.append(Rejection(event.event_id, code, why))
            else:
                taken.append(code)
        if taken:
            facts.append(event.fact(tuple(taken)))
    return facts, rejected


def _event_reason(
    event: Incoming,
    products: Mapping[str, Product],
    orgs: Mapping[str, Org],
) -> str | None:
    """A reason that refuses every code of the event, or None."""
    for org in (event.org, event.to, event.from_org):
        if org is not None and org not in orgs:
            return UNKNOWN_ORG
    if event.type == "commission" and orgs[event.org].kind != "manufacturer":
        return NOT_MANUFACTURER
    if event.type == "pack" and event.parent is not None:
        product = products.get(product_of(event.parent) or "")
        if product is not None and product.level == UNIT:
            return NOT_A_CONTAINER
    return None


def _code_reason(
    event: Incoming,
    code: str,
    states: Mapping[str, CodeState],
    products: Mapping[str, Product],
    commissioned: dict[str, tuple[object, ...]],
) -> str | None:
    if event.type in ("pack", "unpack") and code == event.parent:
        return NOT_A_CONTAINER
    if event.type != "commission":
        return None
    product_id = product_of(code)
    product = products.get(product_id) if product_id else None
    if product is None:
        return UNKNOWN_PRODUCT
    if product.manufacturer != event.org:
        return NOT_MANUFACTURER
    wanted = (event.org, event.lot, event.expiry, event.produced)
    earlier = commissioned.get(code)
    if earlier is None:
        state = states.get(code)
        if state is not None and state.commissioned:
            earlier = (state.commissioned_by, state.lot, state.expiry, state.produced)
    if earlier is not None and earlier != wanted:
        return COMMISSION_CONFLICT
    commissioned[code] = wanted
    return None
