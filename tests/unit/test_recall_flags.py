"""RECALLED raised by a recall on the dispenses stored before it (core.flags.recall_flags):
the same flag a dispense raises arriving after the recall (core.flags.dispense_flags)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from uuid import uuid4

from service.core.custody import CodeState
from service.core.events import Incoming
from service.core.flags import dispense_flags, reached_by_recall, recall_flags
from service.core.registry import Org, Product

ORG = Org("P1", "Qingxiu Pharmacy", "pharmacy", "450103")
PRODUCT = Product("8123456", "Amoxicillin", "X1", 24, "M1", "unit", None, ("45",), False)
RECALLED_AT = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
A, B = "81234560000000000011", "81234560000000000028"


def pack(code: str, last_at: datetime) -> CodeState:
    return CodeState(
        code=code,
        kind="cn20",
        product_id="8123456",
        last_at=last_at,
        state="received",
        commissioned=True,
        custodian="P1",
        lot="L1",
        expiry=date(2028, 1, 1),
        pack_units=24,
        units_left=24,
        recalled=True,
    )


def sale(code: str, minutes: float, setl_id: str | None = None) -> Incoming:
    return Incoming(
        uuid4(), "dispense", RECALLED_AT + timedelta(minutes=minutes), "P1", (code,), setl_id=setl_id
    )


def test_a_stored_sale_at_or_after_the_recall_gets_the_flag_a_late_one_gets() -> None:
    states = {A: pack(A, RECALLED_AT + timedelta(minutes=5)), B: pack(B, RECALLED_AT)}
    ahead, at_the_instant = sale(A, 5), sale(B, 0)
    raised = recall_flags([ahead, at_the_instant], states, {"P1": ORG}, RECALLED_AT)
    for event in (ahead, at_the_instant):
        code = event.codes[0]
        recalls = {("8123456", "L1"): RECALLED_AT}
        products = {"8123456": PRODUCT}
        by_ingest = dispense_flags(event, [code], states, products, {"P1": ORG}, [], recalls=recalls)
        assert [f for f in raised if f.code == code] == by_ingest


def test_a_sale_before_the_recall_or_taken_by_its_settlement_is_not_flagged() -> None:
    states = {A: pack(A, RECALLED_AT), B: pack(B, RECALLED_AT)}
    earlier = sale(A, -0.5)
    billed = sale(B, 3, setl_id="S1")
    assert recall_flags([earlier, billed], states, {"P1": ORG}, RECALLED_AT, {(B, "S1")}) == []
    # the same billed sale whose dispense took the pack itself is flagged
    assert [f.code for f in recall_flags([billed], states, {"P1": ORG}, RECALLED_AT)] == [B]


def test_only_packs_that_saw_an_event_since_the_recall_are_read() -> None:
    old = pack(A, RECALLED_AT - timedelta(seconds=1))
    new = pack(B, RECALLED_AT)
    assert reached_by_recall([old, new], RECALLED_AT) == [B]
