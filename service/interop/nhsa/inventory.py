"""3501 stock count, 3502 inventory change, 3503 purchase, 3504 purchase return and 3507
deletion (and their batch forms) as ledger records, with the events that 3502's trace
codes become; and the 3508/3511/3513 queries' inputs. Pure: no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

from service.core.codes import NOT_A_CODE, ParsedCode, try_parse_code
from service.core.events import EARLIEST_YEAR, Incoming, time_problem
from service.core.ledger import COUNT, DATA_TYPES, INV_CHG_TYPES, Entry
from service.core.rules import CHINA
from service.core.settlement import person_number_problem
from service.interop.nhsa.envelope import (
    DELETION,
    INVENTORY_CHANGE,
    PURCHASE,
    PURCHASE_RETURN,
    STOCK_COUNT,
    Envelope,
    FieldError,
    as_answered,
    calendar_date,
    catalogue_item,
    china_time,
    code_text,
    flag01,
    lot_dates,
    number,
    optional_text,
    price,
    required_text,
    rx_flag,
    whole_units,
)
from service.interop.nhsa.sales import (
    ITEM_LENGTH,
    Record,
    RowError,
    event_id,
    kept_row,
    read_codes,
)
from service.interop.nhsa.sales import (
    translate as _translate,
)

_ITEM = ("med_list_codg", "fixmedins_hilist_id", "fixmedins_hilist_name", "fixmedins_bchno", "rx_flag")
REQUIRED = {
    STOCK_COUNT: _ITEM,
    INVENTORY_CHANGE: _ITEM,
    PURCHASE: (
        *_ITEM,
        "manu_lotnum",
        "spler_name",
        "prodentp_name",
        "aprvno",
        "purc_retn_opter_name",
    ),
    PURCHASE_RETURN: (*_ITEM, "spler_name", "purc_invo_no", "purc_retn_opter_name"),
}
# FIELDS.md's lengths of the text fields of 3501–3504 rows, each checked when given (a row
# is kept as sent): the item block's, 3502's, then 3503's and 3504's
MAX_LENGTH = {
    **ITEM_LENGTH,
    "inv_chg_type": 6,
    "inv_chg_opter_name": 50,
    "dynt_no": 50,
    "spler_name": 200,
    "spler_pmtno": 50,
    "prodentp_name": 200,
    "aprvno": 100,
    "purc_invo_codg": 50,
    "purc_invo_no": 50,
    "purc_retn_opter_name": 50,
    "medins_prod_purc_no": 50,
}


def translate(envelope: Envelope, org: str, now: datetime, ids: bytes) -> tuple[list[Record], list[RowError]]:
    return _translate(envelope, org, now, ids, _record)


def count_units(value: Any, field: str) -> int:
    """A counted stock: a whole number of smallest units, zero allowed."""
    n = number(value, field)
    if n == 0:
        return 0
    return whole_units(value, field)


def _record(
    envelope: Envelope, org: str, now: datetime, ids: bytes, index: int, path: str, row: dict[str, Any]
) -> Record:
    interface = envelope.interface
    record = Record(index, path, row)
    if interface == DELETION:
        bchno = required_text(row, "fixmedins_bchno", "fixmedins_bchno", 30)
        data_type = required_text(row, "inv_data_type", "inv_data_type")
        if data_type not in DATA_TYPES:
            raise FieldError("inv_data_type", f"must be one of {', '.join(DATA_TYPES)}, not {data_type!r}")
        record.deletes = DATA_TYPES[data_type]
        return record
    required = REQUIRED[interface]
    for key in required:
        required_text(row, key, key, MAX_LENGTH.get(key))
    for key, length in MAX_LENGTH.items():
        if key not in required:
            optional_text(row, key, key, length)
    bchno = required_text(row, "fixmedins_bchno", "fixmedins_bchno", 30)
    codg = catalogue_item(required_text(row, "med_list_codg", "med_list_codg", 50))
    rx_flag(row)
    codes: list[ParsedCode] = []
    events: list[Incoming] = []
    if interface == STOCK_COUNT:
        day = calendar_date(row.get("invdate"), "invdate")
        # ⚠ a stock count (盘存, the opening inventory) stands at the start of its day
        at = datetime.combine(day, time(), CHINA)
        problem = time_problem(at, now)  # the rule of every other time field
        if problem:
            raise FieldError("invdate", problem)
        units = count_units(row.get("inv_cnt"), "inv_cnt")
        kind = COUNT
        lot_dates(row, manu=False, expy=False)
        codes = read_codes(row)
    elif interface == INVENTORY_CHANGE:
        chg = required_text(row, "inv_chg_type", "inv_chg_type", 6)
        if chg not in INV_CHG_TYPES:
            raise FieldError("inv_chg_type", f"must be one of {', '.join(INV_CHG_TYPES)}, not {chg!r}")
        kind, event_type = INV_CHG_TYPES[chg]
        price(row.get("pric"), "pric")
        units = whole_units(row.get("cnt"), "cnt")
        at = _when(row, "inv_chg_time", now)
        if flag01(row.get("trdn_flag"), "trdn_flag"):
            # a part of a pack (拆零) moving is not the pack moving: the ledger only, its
            # codes kept as sent (found by a probe: 2 units destroyed destroyed all 24)
            event_type = None
        codes = read_codes(row)
        if event_type is not None:  # not a count gain or loss (103/104), nor a part pack: the ledger only
            # ⚠ 3502 names no counterpart: a transfer or return out is a ship with no
            # destination, a receipt a receive with no sender
            events = [
                Incoming(
                    event_id(ids, envelope.fixmedins_code, interface, bchno, p.canonical),
                    event_type,
                    at,
                    org,
                    (p.canonical,),
                    ref=bchno,
                    med_list_codg=codg,
                )
                for p in codes
            ]
    else:  # purchase, purchase return
        units = whole_units(row.get("purc_retn_cnt"), "purc_retn_cnt")
        at = _when(row, "purc_retn_stoin_time", now)
        if row.get("finl_trns_pric") not in (None, ""):
            price(row.get("finl_trns_pric"), "finl_trns_pric")
        if interface == PURCHASE:
            flag01(row.get("prod_geay_flag"), "prod_geay_flag")
            lot_dates(row, manu=True, expy=True)
            kind = "purchase"
        else:
            lot_dates(row, manu=False, expy=False)
            kind = "purchase_return"
    record.events = events
    record.entry = Entry(
        org=org,
        interface=interface,
        bchno=bchno,
        med_list_codg=codg,
        kind=kind,
        units=units,
        at=at,
        codes=tuple(p.canonical for p in codes),
        event_ids=tuple(e.event_id for e in events),
        row=kept_row(row),
    )
    return record


def _when(row: dict[str, Any], key: str, now: datetime) -> datetime:
    at = china_time(row.get(key), key)
    problem = time_problem(at, now)
    if problem:
        raise FieldError(key, problem)
    return at


QUERY_PAGE_MAX = 1000  # records a query answers at most at once (page_size)


@dataclass(frozen=True, slots=True)
class Query:
    """A 3508/3511/3513 query's input."""

    item: str | None  # medins_list_codg (the institution's item code, or the catalogue code) ⚠
    med_list_codg: str | None
    bchno: str | None
    code: str | None
    mdtrt_id: str | None
    psn_no: str | None  # the insured person (3511, 3513), found by its keyed hash
    begin: datetime  # UTC, inclusive
    end: datetime  # UTC, exclusive (the day after enddate)
    page_num: int = 1  # ⚠ our paging: which page of page_size records, from 1
    page_size: int = QUERY_PAGE_MAX


def query(envelope: Envelope) -> Query:
    """The query's ``input.data``. Raises FieldError naming the field."""
    row = envelope.rows[0]
    if not isinstance(row, dict):
        raise FieldError("input.data", "must be an object")
    from service.interop.nhsa.envelope import lower_keys

    try:
        row = lower_keys(row)
    except FieldError as exc:
        raise FieldError(f"input.data.{exc.field}", exc.message) from None

    def named(key: str, length: int | None = None) -> str | None:
        try:
            return optional_text(row, key, key, length)
        except FieldError as exc:
            raise FieldError(f"input.data.{exc.field}", exc.message) from None

    code = named("fixmedins_code", 30)
    if code is not None and code != envelope.fixmedins_code:
        raise FieldError("input.data.fixmedins_code", "must be the envelope's fixmedins_code")
    try:
        begin = calendar_date(row.get("begndate"), "begndate")
        end = calendar_date(row.get("enddate"), "enddate")
    except FieldError as exc:
        raise FieldError(f"input.data.{exc.field}", exc.message) from None
    for key, day in (("begndate", begin), ("enddate", end)):
        if not EARLIEST_YEAR <= day.year < 9999:  # as /v1/flags' since and until
            raise FieldError(f"input.data.{key}", f"must be between the years {EARLIEST_YEAR} and 9998")
    if end < begin:
        raise FieldError("input.data.enddate", "is before begndate")
    item, bchno = named("medins_list_codg", 150), named("fixmedins_bchno", 30)
    if envelope.interface == "3508" and item is None and bchno is None:
        raise FieldError("input.data.medins_list_codg", "or fixmedins_bchno is required")
    try:  # a code's field: only the whitespace every route drops around a code is dropped
        code = code_text(row, "drug_trac_codg", "drug_trac_codg", 100)
    except FieldError as exc:
        raise FieldError(f"input.data.{exc.field}", exc.message) from None
    parsed = try_parse_code(code) if code is not None else None  # a code in any of its forms
    if code is not None and parsed is None:
        # a filter that is no code would match nothing: refused, as /v1/flags?code= is,
        # not answered "success" with no rows (found by a probe: "abc", a full-width digit)
        raise FieldError("input.data.drug_trac_codg", NOT_A_CODE)

    def page(key: str, maximum: int, default: int) -> int:
        value = row.get(key)
        if value is None or value == "":
            return default
        n = number(value, f"input.data.{key}")
        if n != n.to_integral_value() or not 1 <= n <= maximum:
            raise FieldError(f"input.data.{key}", f"must be a whole number from 1 to {maximum}")
        return int(n)

    # the person: by psn_no, kept as its keyed hash; the ID number and name name the same
    # person and are not kept, so alone they cannot filter (⚠ beside psn_no: not compared)
    psn_no = named("psn_no", 30)
    if psn_no is not None and (problem := person_number_problem(psn_no)) is not None:
        # kept records carry the hash of a number written plainly: a look-alike finds none
        raise FieldError("input.data.psn_no", problem)
    for key in ("certno", "psn_name"):
        if psn_no is None and named(key, 50) is not None:
            raise FieldError(
                f"input.data.{key}",
                "cannot filter: no ID number or name is kept with a record; filter by psn_no",
            )
    return Query(
        item=item,
        med_list_codg=named("med_list_codg", 50),
        bchno=bchno,
        code=parsed.canonical if parsed is not None else None,
        mdtrt_id=named("mdtrt_id", 30),
        psn_no=psn_no,
        begin=_day_start(begin),
        end=_day_start(end + timedelta(days=1)),
        page_num=page("page_num", 10_000_000, 1),
        page_size=page("page_size", QUERY_PAGE_MAX, QUERY_PAGE_MAX),
    )


def _day_start(day: date) -> datetime:
    return datetime.combine(day, time(), CHINA)


def camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def answer_row(record: dict[str, Any], fixmedins_code: str, **extra: Any) -> dict[str, Any]:
    """A stored record as the platform's camelCase output row, its fields as read
    (``envelope.as_answered``: times in China time, quantities and prices numbers)."""
    row = {
        camel(k): as_answered(k, v)
        for k, v in record["row_data"].items()
        if k not in ("drugtracinfo", "drug_trac_codg")
    }
    row.update(fixmedinsCode=fixmedins_code, fixmedinsBchno=record["fixmedins_bchno"])
    row["medListCodg"] = record["med_list_codg"]
    row["valiFlag"] = "1"
    row["crteTime"] = record["received_at"].astimezone(CHINA).strftime("%Y-%m-%d %H:%M:%S")
    row.update(extra)
    return row
