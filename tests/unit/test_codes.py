"""Unit tests for service.core.codes (pure parsing; no DB, no app)."""

from __future__ import annotations

import datetime
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.core.codes import (
    CodeKind,
    InvalidCode,
    ParsedCode,
    is_product_id,
    parse_code,
    strip_code,
    try_parse_code,
)

GS = "\x1d"
GTIN = "06901234567892"  # valid GTIN-14 (check digit 2)
GTIN_BAD = "06901234567893"
SSCC = "106141411234567897"  # valid SSCC-18 (check digit 7)
SSCC_BAD = "106141411234567890"
CSET82 = "!\"%&'()*+,-./0123456789:;<=>?ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"

# No example database (keeps the run side-effect free) and no deadline (the first biip
# call loads its GS1 prefix tables).
FAST = settings(max_examples=150, deadline=None, database=None)


def check_digit(payload: str) -> str:
    """GS1 mod-10 check digit, written independently of biip."""
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(payload)))
    return str((10 - total % 10) % 10)


def gs1(gtin: str = GTIN, serial: str = "SN123") -> ParsedCode:
    return ParsedCode(f"01{gtin}21{serial}", CodeKind.GS1, gtin, serial, None, None)


# --------------------------------------------------------------------------- CN20


def test_cn20_plain() -> None:
    code = "81234567890123456789"
    assert parse_code(code) == ParsedCode(code, CodeKind.CN20, "8123456", "7890123456789", None, None)


def test_cn20_surrounding_whitespace_is_stripped() -> None:
    assert parse_code(" \t81234567890123456789\r\n").canonical == "81234567890123456789"


# found by a probe: NHSA and the console dropped these around a code (str.strip()), and
# took a code /v1/events refused; only ASCII space, tab, CR and LF are dropped anywhere
@pytest.mark.parametrize("around", ["\u3000", "\xa0", "\u2003", "\u2028", "\x1c", "\x85", "\v", "\f"])
def test_no_other_whitespace_around_a_code_is_dropped(around: str) -> None:
    for raw in ("81234567890123456789" + around, around + "(01)06901234567892(21)ABC"):
        assert strip_code(raw) == raw
        with pytest.raises(InvalidCode):
            parse_code(raw)


def test_strip_code_drops_ascii_space_tab_cr_lf_only() -> None:
    assert strip_code(" \t\r\n8123\u3000 \r\n") == "8123\u3000"


@pytest.mark.parametrize(
    "raw",
    [
        "8123456789012345678",  # 19 digits
        "812345678901234567890",  # 21 digits
        "8123456789012345678A",  # letter
        "81234567890123456789X",
        "81234 567890123456789",  # inner space
        "8123456789-0123456789",
        "８１２３４５６７８９０１２３４５６７８９",  # full-width digits
        "٨١٢٣٤٥٦٧٨٩٠١٢٣٤٥٦٧٨٩",  # Arabic-Indic digits: isdigit() but not ASCII
        "\x1c81234567890123456789",  # FS is str.isspace() but not stripped
    ],
)
def test_cn20_invalid(raw: str) -> None:
    with pytest.raises(InvalidCode):
        parse_code(raw)


def test_mistyped_cn20_message_mentions_cn20() -> None:
    with pytest.raises(InvalidCode, match="CN20"):
        parse_code("8123456789012345678")


# --------------------------------------------------------------------------- GS1


@pytest.mark.parametrize(
    "raw",
    [
        f"(01){GTIN}(21)SN123",
        f"(21)SN123(01){GTIN}",
        f"01{GTIN}21SN123",  # canonical / raw, AI 21 last
        f"]d201{GTIN}21SN123",
        f"{GS}01{GTIN}21SN123",
        f"]d2{GS}01{GTIN}21SN123",
        f"21SN123{GS}01{GTIN}",
        f"]d221SN123{GS}01{GTIN}{GS}",
        f"01{GTIN}{GS}21SN123",  # GS after a fixed-length AI is allowed
        f"  ]d201{GTIN}21SN123\r\n",
    ],
)
def test_gs1_forms(raw: str) -> None:
    assert parse_code(raw) == gs1()


@pytest.mark.parametrize(
    "raw",
    [
        f"(01){GTIN}(17)270531(10)LOT-1(21)SN123",
        f"(10)LOT-1(21)SN123(17)270531(01){GTIN}",
        f"01{GTIN}1727053110LOT-1{GS}21SN123",
        f"]d201{GTIN}21SN123{GS}10LOT-1{GS}17270531",
        f"]d210LOT-1{GS}1727053121SN123{GS}01{GTIN}",
        f"{GS}1727053101{GTIN}10LOT-1{GS}21SN123",
    ],
)
def test_gs1_with_lot_and_expiry_any_order(raw: str) -> None:
    parsed = parse_code(raw)
    assert parsed.canonical == f"01{GTIN}21SN123"
    assert parsed.kind is CodeKind.GS1
    assert parsed.product_id == GTIN
    assert parsed.serial == "SN123"
    assert parsed.lot == "LOT-1"
    assert parsed.expiry == datetime.date(2027, 5, 31)


def test_gs1_expiry_day_00_is_last_day_of_month() -> None:
    assert parse_code(f"(01){GTIN}(17)280200(21)1").expiry == datetime.date(2028, 2, 29)
    assert parse_code(f"(01){GTIN}(17)270400(21)1").expiry == datetime.date(2027, 4, 30)


def test_gs1_serial_may_contain_parentheses_in_hri() -> None:
    assert parse_code(f"(01){GTIN}(21)AB(C)D").serial == "AB(C)D"
    assert parse_code(f"01{GTIN}21AB(C)D").serial == "AB(C)D"


def test_gs1_serial_max_20_chars() -> None:
    serial = "A" * 20
    assert parse_code(f"01{GTIN}21{serial}").serial == serial
    assert parse_code(f"(01){GTIN}(21){serial}").serial == serial


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (f"(01){GTIN_BAD}(21)SN123", "check digit"),
        (f"01{GTIN_BAD}21SN123", "check digit"),  # canonical fast path
        (f"]d201{GTIN_BAD}21SN123", "check digit"),
        (f"]d221SN123{GS}01{GTIN_BAD}", "check digit"),
        (f"(01){GTIN}", "serial"),  # pack code needs a serial
        (f"]d201{GTIN}1727053110LOT", "serial"),
        ("(21)SN123", "GTIN"),
        ("]d221SN123", "GTIN"),
        (f"(01){GTIN}(21)1(21)2", "duplicate"),
        (f"(01){GTIN}(01){GTIN}(21)2", "duplicate"),
        (f"(00){SSCC}(01){GTIN}(21)1", "SSCC"),
        (f"]d200{SSCC}01{GTIN}21SN123", "SSCC"),
        (f"(01){GTIN}(21){'A' * 21}", ""),  # serial too long
        (f"01{GTIN}21{'A' * 21}", "too long"),
        (f"01{GTIN}21{'1' * 20}10123", "too long"),  # biip would split this into 21 + 10
        (f"01{GTIN}21AB#CD", ""),  # '#' is not in the GS1 character set
        (f"01{GTIN}21AB CD", ""),
        (f"(01){GTIN}(21)AB CD", ""),
        (f"(01){GTIN}(21)AB{GS}CD", "malformed"),
        (f"(01){GTIN}(21)", "malformed"),
        (f"(01) {GTIN}(21)SN123", ""),
        (f"(01){GTIN}(21)SN123(240)X", "unsupported"),
        (f"(01){GTIN}(21)SN123(11)270101", "unsupported"),
        (f"01{GTIN}21SN123{GS}11270101", "unsupported"),
        (f"(1){GTIN}(21)SN123", "malformed"),
        (f"(01){GTIN[:-1]}(21)SN123", ""),  # 13-digit GTIN
        (f"(01){GTIN}0(21)SN123", ""),  # 15-digit GTIN
        (f"(01){GTIN}(17)271301(21)1", ""),  # month 13
        (f"(01){GTIN}(17)270230(21)1", ""),  # 30 Feb
        (f"(01){GTIN}(17)2705(21)1", ""),
        (f"]d2(01){GTIN}(21)SN123", ""),  # brackets are not scanner output
        (f"]C101{GTIN}21SN123", ""),  # only the DataMatrix identifier is accepted
        ("]d2", "no GS1 data"),
        (GS, "no GS1 data"),
        ("()", "malformed"),
        ("(", "malformed"),
    ],
)
def test_gs1_invalid(raw: str, why: str) -> None:
    with pytest.raises(InvalidCode, match=re.escape(why) if why else None):
        parse_code(raw)


# --------------------------------------------------------------------------- SSCC


@pytest.mark.parametrize("raw", [f"(00){SSCC}", f"]d200{SSCC}", f"{GS}00{SSCC}", f"]d2{GS}00{SSCC}{GS}"])
def test_sscc_forms(raw: str) -> None:
    assert parse_code(raw) == ParsedCode(f"00{SSCC}", CodeKind.SSCC, None, SSCC, None, None)


@pytest.mark.parametrize(
    "raw",
    [
        f"(00){SSCC_BAD}",
        f"]d200{SSCC_BAD}",
        f"(00){SSCC[:-1]}",
        f"(00){SSCC}0",
        f"(00){SSCC}(21)1",
        f"(00){SSCC}(10)LOT",
    ],
)
def test_sscc_invalid(raw: str) -> None:
    with pytest.raises(InvalidCode):
        parse_code(raw)


def test_twenty_digit_canonical_forms_round_trip() -> None:
    # "00"+SSCC-18 and "01"+GTIN+"21"+2-digit serial are 20 digits; with a valid check
    # digit they read back as what they are, so every canonical form round-trips.
    canonical = parse_code(f"(00){SSCC}").canonical
    assert parse_code(canonical).kind is CodeKind.SSCC
    assert parse_code(f"]d2{canonical}").kind is CodeKind.SSCC
    assert parse_code(f"01{GTIN}2112").kind is CodeKind.GS1
    assert parse_code(f"(01){GTIN}(21)12").canonical == f"01{GTIN}2112"
    # a real CN20 (product identifiers begin with 8) stays CN20
    assert parse_code("81234560000000000017").kind is CodeKind.CN20


# --------------------------------------------------------------------------- misc


@pytest.mark.parametrize("raw", ["", "   ", "\r\n", "hello", "0", "(", "]d", "01"])
def test_garbage_is_invalid(raw: str) -> None:
    with pytest.raises(InvalidCode):
        parse_code(raw)
    assert try_parse_code(raw) is None


def test_max_raw_length() -> None:
    with pytest.raises(InvalidCode, match="200"):
        parse_code("8" * 20 + " " * 181)
    assert parse_code("8" * 20 + " " * 180).kind is CodeKind.CN20


@pytest.mark.parametrize("value", [None, 12345678901234567890, b"81234567890123456789", 1.5])
def test_non_str_is_invalid(value: object) -> None:
    bad: Any = value
    with pytest.raises(InvalidCode):
        parse_code(bad)
    assert try_parse_code(bad) is None
    assert is_product_id(bad) is False


def test_invalid_code_is_value_error() -> None:
    assert issubclass(InvalidCode, ValueError)


def test_try_parse_code_returns_parsed() -> None:
    assert try_parse_code(f"(01){GTIN}(21)SN123") == gs1()


def test_code_kind_values() -> None:
    assert [str(k) for k in CodeKind] == ["cn20", "gs1", "sscc"]


def test_parsed_code_is_frozen() -> None:
    parsed = parse_code("81234567890123456789")
    with pytest.raises(AttributeError):
        parsed.canonical = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("8123456", True),
        ("0000000", False),  # a CN20 product identifier begins with 8
        ("0110614", False),  # else its codes could read as GS1 (01)…(21)nn or an SSCC
        ("0006901", False),
        ("9123456", False),
        (GTIN, True),
        (GTIN_BAD, False),
        ("812345", False),
        ("81234567", False),
        ("812345A", False),
        ("８１２３４５６", False),
        (" 8123456", False),
        ("6901234567892", False),  # GTIN-13 is not a product id; must be GTIN-14
        ("", False),
    ],
)
def test_is_product_id(value: str, expected: bool) -> None:
    assert is_product_id(value) is expected


# --------------------------------------------------------------------------- properties

digits = st.text(alphabet="0123456789", min_size=13, max_size=13)
valid_gtins = digits.map(lambda p: p + check_digit(p))
serials = st.text(alphabet=CSET82, min_size=1, max_size=20)
lots = st.text(alphabet=CSET82, min_size=1, max_size=20)
_today = datetime.date.today()
# Stay well inside GS1's two-digit-year window (current year -49 .. +50).
expiries = st.dates(
    min_value=datetime.date(_today.year - 30, 1, 1),
    max_value=datetime.date(_today.year + 30, 12, 31),
)


def _hri_safe(value: str) -> bool:
    # In bracketed HRI, data like "(10)" inside a value is indistinguishable from an AI.
    return re.search(r"\([0-9]{2,4}\)", value) is None


def _is_cn20_shaped(value: str) -> bool:
    return len(value) == 20 and value.isdigit()


@FAST
@given(
    gtin=valid_gtins,
    serial=serials,
    lot=st.none() | lots,
    expiry=st.none() | expiries,
    order=st.randoms(use_true_random=False),
    prefix=st.sampled_from(["", "]d2", GS, f"]d2{GS}"]),
    extra_gs=st.booleans(),
)
def test_prop_all_forms_agree(
    gtin: str,
    serial: str,
    lot: str | None,
    expiry: datetime.date | None,
    order: Any,
    prefix: str,
    extra_gs: bool,
) -> None:
    elements = [("01", gtin), ("21", serial)]
    if lot is not None:
        elements.append(("10", lot))
    if expiry is not None:
        elements.append(("17", expiry.strftime("%y%m%d")))
    order.shuffle(elements)
    canonical = f"01{gtin}21{serial}"

    variable = {"10", "21"}
    raw = prefix + "".join(
        ai + data + (GS if (ai in variable or extra_gs) and i < len(elements) - 1 else "")
        for i, (ai, data) in enumerate(elements)
    )
    forms = [] if _is_cn20_shaped(raw) else [raw]  # 20 digits: CN20 by contract
    if all(_hri_safe(data) for _, data in elements):
        forms.append("".join(f"({ai}){data}" for ai, data in elements))
    if lot is None and expiry is None and not _is_cn20_shaped(canonical):
        forms.append(canonical)

    for form in forms:
        parsed = parse_code(form)
        assert parsed.kind is CodeKind.GS1, form
        assert parsed.canonical == canonical, form
        assert parsed.product_id == gtin
        assert parsed.serial == serial
        assert parsed.lot == lot
        assert parsed.expiry == expiry

    # Canonical form is itself valid input and a fixed point (unless it is 20 digits,
    # which the contract reads as CN20).
    if not _is_cn20_shaped(canonical):
        again = parse_code(canonical)
        assert again.canonical == canonical
        assert parse_code(again.canonical) == again


@FAST
@given(
    code=st.text(alphabet="0123456789", min_size=20, max_size=20).filter(
        lambda s: not s.startswith(("00", "01"))
    )
)
def test_prop_any_20_digits_is_cn20(code: str) -> None:
    parsed = parse_code(code)
    assert parsed == ParsedCode(code, CodeKind.CN20, code[:7], code[7:], None, None)
    assert parse_code(parsed.canonical) == parsed
    assert is_product_id(parsed.product_id or "") is code.startswith("8")


@FAST
@given(
    gtin=valid_gtins,
    serial=serials.filter(_hri_safe),
    delta=st.integers(min_value=1, max_value=9),
)
def test_prop_wrong_gtin_check_digit_is_invalid(gtin: str, serial: str, delta: int) -> None:
    bad = gtin[:13] + str((int(gtin[13]) + delta) % 10)
    assert is_product_id(gtin)
    assert not is_product_id(bad)
    for form in (f"01{bad}21{serial}", f"]d201{bad}21{serial}", f"(01){bad}(21){serial}"):
        if _is_cn20_shaped(form):
            continue  # 20 digits: CN20 by contract
        with pytest.raises(InvalidCode):
            parse_code(form)


@FAST
@given(payload=st.text(alphabet="0123456789", min_size=17, max_size=17), delta=st.integers(1, 9))
def test_prop_sscc_check_digit(payload: str, delta: int) -> None:
    sscc = payload + check_digit(payload)
    assert parse_code(f"(00){sscc}").serial == sscc
    bad = payload + str((int(check_digit(payload)) + delta) % 10)
    with pytest.raises(InvalidCode):
        parse_code(f"]d200{bad}")


gs1ish_text = st.text(alphabet="0123456789()]d2\x1dAZaz!%?_ -", max_size=60)


@FAST
@given(raw=st.one_of(st.text(max_size=250), gs1ish_text, st.binary(), st.integers(), st.none()))
def test_prop_never_raises_anything_but_invalid_code(raw: Any) -> None:
    try:
        parsed = parse_code(raw)
    except InvalidCode:
        assert try_parse_code(raw) is None
        return
    assert isinstance(parsed, ParsedCode)
    assert try_parse_code(raw) == parsed
