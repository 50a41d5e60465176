"""Settlement line rules, without a database."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime

from service.core.custody import CodeState
from service.core.registry import Org, Product
from service.core.sales import Consumption, Return, Sale, draw, match_returns
from service.core.settlement import Claim, Line, canonical_codes, decision, fingerprints, judge

ORG = Org("P1", "Qingxiu Pharmacy", "pharmacy", "450103")
PRODUCT = Product("8123456", "Amoxicillin", "X1", 24, "M1", "unit", None, ("45",), False)
A, B = "81234560000000000011", "81234560000000000028"


def pack(code: str, left: int = 24) -> CodeState:
    return CodeState(
        code=code,
        kind="cn20",
        product_id="8123456",
        last_at=datetime(2026, 3, 1, tzinfo=UTC),
        state="received",
        commissioned=True,
        custodian="P1",
        lot="L1",
        expiry=date(2028, 1, 1),
        pack_units=24,
        units_left=left,
    )


def run(
    lines: list[Line],
    states: dict[str, CodeState],
    earlier: dict[str, list[Consumption]] | None = None,
    exempt: set[str] | None = None,
) -> list[list[str]]:
    outcomes = judge(
        setl_id="S9",
        lines=lines,
        canonical={c: c for ln in lines for c in ln.codes},
        states=states,
        products={"8123456": PRODUCT},
        exempt_codgs=exempt or set(),
        org=ORG,
        on=date(2026, 3, 5),
        earlier=earlier or {},
    )
    return [[r.reason for r in o.reasons] for o in outcomes]


def test_whole_pack_quantity_must_match_and_split_draws_in_order() -> None:
    states = {A: pack(A), B: pack(B, left=5)}
    assert run([Line(1, "X1", 24, False, (A,))], states) == [[]]
    assert run([Line(1, "X1", 25, False, (A,))], states) == [["QUANTITY_MISMATCH"]]
    assert run([Line(1, "X1", 29, True, (B, A))], states) == [[]]
    assert run([Line(1, "X1", 30, True, (B,))], states) == [["QUANTITY_MISMATCH"]]


def test_a_payable_line_leaves_less_for_the_next() -> None:
    states = {A: pack(A)}
    assert run([Line(1, "X1", 20, True, (A,)), Line(2, "X1", 10, True, (A,))], states) == [
        [],
        ["QUANTITY_MISMATCH"],
    ]
    earlier = {
        A: [Consumption(A, Sale.of_settlement("S1"), "S1", None, "P1", datetime(2026, 3, 4, tzinfo=UTC), 4)]
    }
    assert run([Line(1, "X1", 24, False, (A,))], {A: pack(A, left=20)}, earlier) == [["ALREADY_SETTLED"]]


def test_missing_codes_unless_exempt_and_the_decision() -> None:
    assert run([Line(1, "GAUZE", 2, False, ())], {}, exempt={"GAUZE"}) == [[]]
    assert run([Line(1, "X1", 2, False, ())], {}) == [["MISSING_CODES"]]
    assert run([Line(1, "Y9", 24, False, (A,))], {A: pack(A)}) == [["PRODUCT_MISMATCH"]]


def test_draw_and_returns() -> None:
    assert draw({A: 3, B: 24}, [A, B], 5) == [(A, 3), (B, 2)]
    assert draw({A: 3, B: 0}, [A, B], None) == [(A, 3)]
    at = datetime(2026, 3, 2, tzinfo=UTC)
    import uuid

    late, early = Sale("event", "late"), Sale("event", "early")
    sales = [
        Consumption(A, late, None, None, "P1", datetime(2026, 3, 3, tzinfo=UTC), 24),
        Consumption(A, early, None, None, "P1", datetime(2026, 3, 1, tzinfo=UTC), 24),
    ]
    ret = Return(uuid.UUID(int=1), "P1", at, None, A)
    assert [(r.code, s.sale, r.event_id) for r, s in match_returns([ret], sales)] == [
        (A, early, uuid.UUID(int=1))
    ]  # not a sale after the return
    assert match_returns([Return(uuid.UUID(int=2), "H1", at, None, A)], sales) == []  # only the seller's
    assert decision([]) == "accepted"


# A settlement's fingerprint as releases stored it, for one claim under one secret:
# before for_org was added to Claim (06e7c61^), and from then on (dab1166).
SECRET = b"0123456789abcdef-secret"
STORED_BEFORE_FOR_ORG = "a87a6213834c7d4a2c40126eb76830ffbf7166f339047cfab7c69aca0af741f8"
STORED_WITH_FOR_ORG = "481376921a1784a9c7782b3597a2967301a5a513155112ec08edc2554d965b1a"


def test_a_settlement_stored_by_an_earlier_release_is_replayed_by_its_fingerprint() -> None:
    """Found by an upgrade probe: for_org, a field added to Claim for whom an answer is
    shown to, went into the fingerprint, so every settlement stored before it was
    answered 409 ("a different body") when sent again unchanged after the upgrade. The
    fingerprint is what the claim asks, as before; the form of the releases that hashed
    for_org is still matched."""
    line = Line(1, "XJ01", 24, False, ("83912345678901234567",))
    claim = Claim("S0001", "P1", "P00001", datetime(2026, 3, 5, 2, 0, tzinfo=UTC), "settle", (line,))
    forms = [f.hex() for f in fingerprints(SECRET, claim, canonical_codes(claim))]
    assert forms == [STORED_BEFORE_FOR_ORG, STORED_WITH_FOR_ORG]
    # the same claim answered to its organisation is the same request
    assert fingerprints(SECRET, replace(claim, for_org=True), canonical_codes(claim))[0].hex() == forms[0]
