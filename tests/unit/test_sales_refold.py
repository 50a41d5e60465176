"""The sales of one pack folded in event time (``core.sales.refold``), without a database:
the same dispenses, settlements and returns give the same takes whatever order they are
listed in."""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

from service.core.events import Incoming
from service.core.ingest import standing_needed
from service.core.sales import (
    SETTLEMENT,
    Consumption,
    Dispense,
    Return,
    Sale,
    kept_by_settlement,
    match_returns,
    paid_packs,
    refold,
    restate,
)

CODE = "81234560000000000011"
T0 = datetime(2026, 3, 1, 8, tzinfo=UTC)


def at(minute: int) -> datetime:
    return T0 + timedelta(minutes=minute)


def sale(minute: int, quantity: int | None = None, org: str = "P1", setl_id: str | None = None) -> Dispense:
    return Dispense(uuid4(), org, at(minute), quantity, setl_id)


def back(minute: int, org: str = "P1", setl_id: str | None = None) -> Return:
    return Return(uuid4(), org, at(minute), setl_id, CODE)


def settled(minute: int, setl_id: str, units: int) -> Consumption:
    return Consumption(CODE, Sale(SETTLEMENT, setl_id), setl_id, None, "P1", at(minute), units)


def summary(
    dispenses: list[Dispense], returns: list[Return], settlements: tuple[Consumption, ...] = ()
) -> tuple[int, list[tuple[datetime, int, bool, UUID | None]], list[UUID]]:
    fold = refold(CODE, 24, dispenses, settlements, returns)
    assert fold is not None
    takes = sorted((t.at, t.units, t.reversed, t.reversed_by) for t in fold.takes)
    return fold.units_left, takes, sorted(fold.resales, key=str)


def test_a_return_gives_back_the_sellers_latest_sale_before_it() -> None:
    first, second, ret = sale(10, 10), sale(11, 5), back(12)
    left, takes, resales = summary([first, second], [ret])
    assert left == 14
    assert takes == [(at(10), 10, False, None), (at(11), 5, True, ret.event_id)]
    assert resales == []


def test_a_sale_of_a_used_up_pack_is_a_resale_until_a_return_gives_units_back() -> None:
    first, resale, ret, again = sale(10), sale(15), back(20), sale(30)
    left, takes, resales = summary([first, resale, again], [ret])
    assert left == 0
    assert takes == [(at(10), 24, True, ret.event_id), (at(30), 24, False, None)]
    assert resales == [resale.event_id]


def test_the_order_listed_does_not_matter() -> None:
    dispenses = [sale(10), sale(12, 5), sale(20, 10), sale(30)]
    returns = [back(15), back(25)]
    expected = summary(dispenses, returns)
    for order in itertools.permutations(dispenses):
        assert summary(list(order), list(reversed(returns))) == expected


def test_a_sale_takes_a_pack_once() -> None:
    """A dispense under a settlement that took the pack takes nothing again, and is no
    resale; nor is a second dispense of the same sale."""
    dispenses = [sale(12, setl_id="S1"), sale(13, setl_id="S1")]
    left, takes, resales = summary(dispenses, [], (settled(11, "S1", 24),))
    assert (left, len(takes), resales) == (0, 1, [])


def test_a_return_that_names_its_settlement_gives_back_that_sale() -> None:
    ret = back(20, setl_id="S1")
    left, takes, _ = summary([sale(10, 4, setl_id="S1"), sale(15, 6)], [ret])
    assert left == 18
    assert (at(10), 4, True, ret.event_id) in takes


def test_a_return_with_no_sale_before_it_gives_nothing_back() -> None:
    left, takes, _ = summary([sale(20, 5)], [back(10), back(30, org="P2")])
    assert (left, takes) == (19, [(at(20), 5, False, None)])


def test_a_settlement_that_finds_fewer_units_than_it_took_leaves_the_pack_as_it_is() -> None:
    assert refold(CODE, 24, [sale(5)], [settled(10, "S1", 24)], []) is None


def test_a_repeat_of_a_sale_is_no_resale() -> None:
    first = sale(10, setl_id="S1")
    again = replace(first, event_id=uuid4(), at=at(12))
    fold = refold(CODE, 24, [again, first], [], [])
    assert fold is not None
    assert (fold.units_left, fold.resales, fold.repeats) == (0, [], [again.event_id])


def test_a_dispense_of_a_sale_its_settlement_took_takes_nothing_again() -> None:
    """The settlement (10:05) took 2 units; its dispense, dated 10:00, arrives late:
    no second take, and no resale."""
    fold = refold(CODE, 10, [sale(20, 2), sale(0, 2, setl_id="S")], [settled(5, "S", 2)], [])
    assert fold is not None
    assert (fold.units_left, len(fold.takes), fold.resales) == (6, 2, [])


def test_at_one_instant_a_return_that_came_first_undoes_the_sale_that_came_after() -> None:
    """A return and a whole-pack sale of the same minute: whichever arrived first, the
    return gives the sale back (as a waiting return does when its sale arrives)."""
    ret = replace(back(10), received=at(11))
    first = replace(sale(10), received=at(12))
    for stored_first in (ret, first):
        arriving = first if stored_first is ret else replace(ret, received=None)
        dispenses = [d for d in (stored_first, arriving) if isinstance(d, Dispense)]
        returns = [r for r in (stored_first, arriving) if isinstance(r, Return)]
        fold = refold(CODE, 24, dispenses, [], returns)
        assert fold is not None
        assert (fold.units_left, [t.reversed_by for t in fold.takes]) == (24, [ret.event_id])


def test_a_sale_sent_twice_is_taken_by_its_earliest_dispense() -> None:
    later, earlier = sale(10, 5, setl_id="S"), sale(0, 5, setl_id="S")
    fold = refold(CODE, 24, [later, earlier], [], [])
    assert fold is not None
    assert [(t.event_id, t.at) for t in fold.takes] == [(earlier.event_id, at(0))]
    assert fold.repeats == [later.event_id]


def test_a_deleted_sale_is_left_out_and_the_resale_after_it_takes_the_pack() -> None:
    """NHSA 3507: the first of two sales of the pack was deleted (its compensation, a
    return naming it). The second sale, a resale while the first stood, takes the pack."""
    first, second = sale(10), sale(20)
    deletion = Return(uuid4(), "P1", at(30), None, CODE, undoes=first.event_id)
    left, takes, resales = summary([first, second], [deletion])
    assert (left, takes, resales) == (0, [(at(20), 24, False, None)], [])


def test_a_deleted_return_is_left_out_with_its_compensation() -> None:
    """A deleted return (its compensation, a dispense naming it) gives nothing back: the
    sale before it stands, and the sale after it is a resale."""
    first, ret, again = sale(10), back(15), sale(20)
    deletion = replace(sale(30), undoes=ret.event_id)
    left, takes, resales = summary([first, again, deletion], [ret])
    assert (left, takes, resales) == (0, [(at(10), 24, False, None)], [again.event_id])


# a return of a sale that a standing settlement pays for gives nothing back: the refund does

STANDS = {"S1": frozenset({CODE})}  # settlement S1 stands and paid for the pack


def test_a_return_of_a_settlements_own_take_waits_for_the_refund() -> None:
    ret = back(20, setl_id="S1")
    left, takes, _ = summary([], [ret], (settled(10, "S1", 24),))
    assert (left, takes) == (0, [(at(10), 24, False, None)])


def test_a_return_of_a_dispense_under_a_standing_settlement_waits() -> None:
    dispense, ret, again = sale(10, setl_id="S1"), back(20), sale(30)
    fold = refold(CODE, 24, [dispense, again], [], [ret], standing=STANDS)
    assert fold is not None
    assert (fold.units_left, [t.reversed for t in fold.takes], fold.resales) == (0, [False], [again.event_id])
    # not stored (or refunded): the return gives the sale back, and the later sale takes the pack
    fold = refold(CODE, 24, [dispense, again], [], [ret])
    assert fold is not None
    assert (fold.units_left, [t.reversed for t in fold.takes], fold.resales) == (0, [True, False], [])


def test_a_settlement_that_paid_for_another_pack_does_not_pay_for_the_sale() -> None:
    """S1 paid for another pack only (or for none: refused): P1's patient's return of this
    one gives it back."""
    other = {"S1": frozenset({"81234560000000000099"})}
    fold = refold(CODE, 24, [sale(10, setl_id="S1")], [], [back(20)], standing=other)
    assert fold is not None
    assert (fold.units_left, [t.reversed for t in fold.takes]) == (24, [True])


def test_a_return_of_the_latest_sale_paid_by_a_settlement_waits_not_an_older_sale() -> None:
    """Split sales: 6 units self-paid (minute 10), 6 paid by settlement S1 (11), a return
    (12): the latest sale is S1's, so the return waits for its refund; it does not give
    back the older self-paid sale instead (found by a review: had it been S1's patient,
    S1's refund would then give back 6 more, 10 units on record for 6 on the shelf)."""
    ret = back(12)
    left, takes, _ = summary([sale(10, 6)], [ret], (settled(11, "S1", 6),))
    assert left == 12
    assert takes == [(at(10), 6, False, None), (at(11), 6, False, None)]


def test_the_step_by_step_matching_waits_at_a_paid_sale() -> None:
    older = Consumption(CODE, Sale.of_dispense(uuid4(), None), None, uuid4(), "P1", at(5), 6)
    paid_take = Consumption(CODE, Sale(SETTLEMENT, "S1"), "S1", uuid4(), "P1", at(10), 6)
    ret = back(20)
    assert match_returns([ret], [paid_take, older], STANDS) == []  # newest first
    assert match_returns([ret], [paid_take, older]) == [(ret, paid_take)]


def test_the_step_by_step_matching_gives_nothing_at_a_refunded_sale() -> None:
    """The latest sale before the return was refunded (its settlement's reversal gave its
    units back): the return gives nothing, not the older cash sale instead. A sale a
    patient's return gave back is passed over, and a refunded sale dated after the
    return is not its sale (found by a probe: the matching left refunded takes out, and
    the return gave back the older cash sale)."""
    cash = Consumption(CODE, Sale.of_dispense(uuid4(), None), None, uuid4(), "P1", at(5), 6)
    refunded = replace(settled(10, "S1", 6), reversed=True)  # reversed_by None: the reversal
    ret = back(20)
    assert match_returns([ret], [refunded, cash]) == []
    assert match_returns([ret], [refunded, cash], STANDS) == []
    later = replace(refunded, at=at(30))
    assert match_returns([ret], [later, cash]) == [(ret, cash)]
    returned = replace(refunded, reversed_by=uuid4())  # a patient's return gave it back
    assert match_returns([ret], [returned, cash]) == [(ret, cash)]
    # two returns: the first gives back the cash sale after the refund, the second nothing
    cash_after = replace(cash, sale=Sale.of_dispense(uuid4(), None), at=at(15))
    second = back(25)
    assert match_returns([ret, second], [cash_after, refunded, cash]) == [(ret, cash_after)]


def test_a_batch_without_returns_reads_no_settlement() -> None:
    dispense = Incoming(event_id=uuid4(), type="dispense", at=at(10), org="P1", codes=(CODE,), setl_id="S1")
    assert standing_needed([dispense], [], {}, [], []) == set()
    ret = Incoming(event_id=uuid4(), type="return", at=at(20), org="P1", codes=(CODE,))
    assert standing_needed([dispense, ret], [], {}, [], []) == {"S1"}


def test_a_split_sale_beyond_what_is_left_takes_it_and_is_a_resale_in_any_order() -> None:
    first, beyond, within = sale(10, 20), sale(20, 6), sale(30, 4)
    for order in itertools.permutations([first, beyond, within]):
        fold = refold(CODE, 24, list(order), (), [])
        assert fold is not None
        assert fold.units_left == 0
        assert sorted((t.at, t.units) for t in fold.takes) == [(at(10), 20), (at(20), 4)]
        assert sorted(fold.resales, key=str) == sorted([beyond.event_id, within.event_id], key=str)
        assert fold.short == {beyond.event_id: 4}  # the last 4 found nothing: used up


def test_a_deleted_sale_stays_taken_only_for_a_pack_its_settlement_paid_for() -> None:
    """``core.sales.kept_by_settlement`` on ``paid_packs``: a refused line pays for
    nothing, a payable one for the packs it names; a split sale's one event over several
    packs stays taken when any of them was paid for."""
    other = CODE[:-1] + "2"
    request = {
        "lines": [
            {"line_no": 1, "codes": [CODE]},
            {"line_no": 2, "codes": [other]},
        ]
    }
    refused = {"lines": [{"line_no": 1, "payable": False}, {"line_no": 2, "payable": False}]}
    partly = {"lines": [{"line_no": 1, "payable": True}, {"line_no": 2, "payable": False}]}
    assert paid_packs(request, refused) == frozenset()
    assert not kept_by_settlement([CODE], paid_packs(request, refused))
    paid = paid_packs(request, partly)
    assert paid == {CODE}
    assert kept_by_settlement([CODE], paid)
    assert not kept_by_settlement([other], paid)
    assert kept_by_settlement([CODE, other], paid)  # one split event: kept whole


def test_one_whole_pack_sale_sent_twice_in_two_formats_is_one_sale_in_any_order() -> None:
    """A whole-pack sale sent as two dispenses (a 3505 and an EPCIS event: two event ids)
    by the same organisation at the same instant, under no two setl_ids, is one sale
    (``core.sales.sent_again``): it takes the pack once and is no resale, whichever is
    listed first. Not another organisation's, not another instant's, not a split sale,
    not two setl_ids: those are a resale."""
    for first, second in itertools.permutations([sale(10), sale(10, setl_id="S1")]):
        fold = refold(CODE, 24, [first, second], [], [])
        assert fold is not None
        assert (fold.units_left, fold.resales, len(fold.takes)) == (0, [], 1)
        # at one instant, the one folded first takes the pack
        assert {fold.takes[0].event_id, *fold.repeats} == {first.event_id, second.event_id}
    stored = replace(sale(10, setl_id="S1"), received=at(20))  # folded first
    for other in (sale(10, org="P2"), sale(11), sale(10, quantity=24), sale(10, setl_id="S2")):
        fold = refold(CODE, 24, [stored, other], [], [])
        assert fold is not None
        assert fold.resales == [other.event_id], other


def test_a_settlement_arriving_now_goes_after_what_arrived_before_it_at_its_instant() -> None:
    """A late claim's take (``settling``) is folded last at its instant, as what arrives
    now is; a stored settlement's take first. The return of minute 20 was stored before
    the claim of minute 20 arrives: it gives back the cash sale (minute 10), and the claim
    takes from what that leaves. Stored first, the same claim's take is the sale the
    return meets, and the return waits for its refund."""
    cash, ret = replace(sale(10, 6), received=at(11)), replace(back(20), received=at(21))
    claim = settled(20, "X", 6)
    arriving = refold(CODE, 24, [cash], [], [ret], settling=[claim])
    assert arriving is not None
    assert arriving.units_left == 18
    assert {(t.sale.kind, t.reversed_by) for t in arriving.takes} == {
        ("event", ret.event_id),
        (SETTLEMENT, None),
    }
    stored = refold(CODE, 24, [cash], [claim], [ret])
    assert stored is not None
    assert stored.units_left == 12  # the return waits for X's refund


def test_restate_brings_recorded_takes_to_the_fold() -> None:
    """``core.sales.restate``: a recorded take given back that the fold leaves standing is
    reopened; a sale the fold adds is recorded; a take whose units changed is erased and
    recorded again."""
    cash, later, ret = sale(10, 6), sale(30, 18), back(25)
    recorded_cash = Consumption(CODE, Sale("event", str(cash.event_id)), None, cash.event_id, "P1", at(10), 6,
                                reversed=True, reversed_by=ret.event_id)  # fmt: skip
    recorded_later = Consumption(
        CODE, Sale("event", str(later.event_id)), None, later.event_id, "P1", at(30), 18
    )
    claim = settled(20, "X", 6)
    fold = refold(CODE, 24, [cash, later], [], [ret], settling=[claim])
    assert fold is not None
    restated = restate(fold, [recorded_cash, recorded_later])
    assert restated.reopened == [recorded_cash]  # the return waits for X's refund
    assert restated.erased == [recorded_later]  # it found 12 units, not 18
    assert sorted((t.sale.id, t.units) for t in restated.added) == sorted(
        [("X", 6), (str(later.event_id), 12)]
    )
    assert restated.given_back == []
    assert fold.resales == [later.event_id]
    assert fold.units_left == 0
