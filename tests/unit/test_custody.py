"""The custody fold and its suspicions, without a database."""

from __future__ import annotations

import copy
import uuid
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from service.core.custody import Fact, World, as_logged, display_state, fold_order, replay, sort_key
from service.core.flags import Evidence, suspicion_flag

T0 = datetime(2026, 3, 1, tzinfo=UTC)
UNIT_A, UNIT_B = "81234560000000000011", "81234560000000000028"
CASE, PALLET = "00069012340000000016", "00069012340000000023"


def fact(type_: str, org: str, codes: tuple[str, ...], minutes: int, n: int, **extra: str) -> Fact:
    return Fact(uuid.UUID(int=n), type_, T0 + timedelta(minutes=minutes), org, codes, **extra)  # type: ignore[arg-type]


JOURNEY = [
    fact("commission", "M1", (UNIT_A, UNIT_B), 0, 1, lot="L1"),
    fact("pack", "M1", (UNIT_A, UNIT_B), 1, 2, parent=CASE),
    fact("pack", "M1", (CASE,), 2, 3, parent=PALLET),
    fact("ship", "M1", (PALLET,), 3, 4, to="D1"),
    fact("receive", "D1", (PALLET,), 4, 5),
    fact("unpack", "D1", (CASE,), 5, 6, parent=PALLET),
    fact("ship", "D1", (CASE,), 6, 7, to="P1"),
    fact("receive", "P1", (CASE,), 7, 8),
]


def test_containers_carry_their_contents_to_any_depth() -> None:
    world = replay(JOURNEY, keep={}, pack_units={"8123456": 24}, record=True)
    unit = world.states[UNIT_A]
    assert (unit.state, unit.custodian, unit.parent) == ("received", "P1", CASE)
    assert world.states[PALLET].custodian == "D1"  # the pallet stayed behind
    assert unit.units_left == 24
    assert display_state(unit) == "received"
    # the case packed onto the pallet and unpacked from it does not move the units, but
    # their history shows it, through the case (API.md: "or any container it was in")
    shown = [(f.type, via) for f, via in world.applied[UNIT_A]]
    assert shown == [
        ("commission", None),
        ("pack", None),
        ("pack", CASE),
        ("ship", PALLET),
        ("receive", PALLET),
        ("unpack", CASE),
        ("ship", CASE),
        ("receive", CASE),
    ]
    plain = replay(JOURNEY, keep={}, pack_units={"8123456": 24})  # not recorded: no history kept
    assert plain.applied == {}
    assert world.suspicions == []


def test_receive_by_a_party_that_was_not_shipped_to_is_diversion() -> None:
    world = replay([*JOURNEY, fact("receive", "P9", (UNIT_B,), 9, 9)], keep={}, pack_units={})
    assert [(s.kind, s.code, s.holder) for s in world.suspicions] == [("DIVERSION", UNIT_B, "P1")]


def test_a_dispense_by_one_that_does_not_hold_the_pack_takes_it_over() -> None:
    """README, "Custody follows every scan": the dispenser has the pack now (DIVERSION,
    once); a pack on its way keeps its destination on record, as a receipt by another
    does; the holder's own dispense, the destination's while on its way, and a settlement
    move nothing; a destroyed pack stays destroyed and its holder's."""
    world = replay([*JOURNEY, fact("dispense", "P9", (UNIT_B,), 9, 9)], keep={}, pack_units={})
    unit = world.states[UNIT_B]
    assert (unit.state, unit.custodian, unit.destination, unit.parent) == ("received", "P9", None, None)
    assert [(s.kind, s.holder) for s in world.suspicions] == [("DIVERSION", "P1")]
    assert world.states[UNIT_A].custodian == "P1"  # still in the case
    on_its_way = [*JOURNEY, fact("ship", "P1", (CASE,), 8, 9, to="D1")]
    world = replay([*on_its_way, fact("dispense", "P9", (CASE,), 9, 10)], keep={}, pack_units={})
    assert {c: (s.state, s.custodian, s.destination) for c, s in world.states.items() if c != PALLET} == {
        c: ("received", "P9", "D1") for c in (UNIT_A, UNIT_B, CASE)
    }
    # the destination's sale of a pack on its way to it, and the holder's sale (picked
    # out of the case before the case was shipped on): their own stock
    for own, where in (
        (fact("dispense", "D1", (UNIT_A,), 9, 10), "in_transit"),
        (fact("dispense", "P1", (UNIT_A,), 7, 10), "received"),
    ):
        world = replay([*on_its_way, own], keep={}, pack_units={})
        assert (world.states[UNIT_A].custodian, world.states[UNIT_A].state, world.suspicions) == (
            "P1",
            where,
            [],
        )
    sold = Fact.settlement("S1", T0 + timedelta(minutes=9), "P9", UNIT_A, sold=True)
    world = replay([*JOURNEY, sold], keep={}, pack_units={})
    assert world.states[UNIT_A].custodian == "P1"
    assert [s.kind for s in world.suspicions] == ["DIVERSION"]
    destroyed = [*JOURNEY, fact("destroy", "P1", (UNIT_A,), 8, 9), fact("dispense", "P9", (UNIT_A,), 9, 10)]
    world = replay(destroyed, keep={}, pack_units={})
    assert (world.states[UNIT_A].state, world.states[UNIT_A].custodian) == ("destroyed", "P1")


def test_activity_on_a_code_never_commissioned_is_suspected() -> None:
    world = replay([fact("receive", "P1", ("81234569999999999999",), 1, 1)], keep={}, pack_units={})
    assert [s.kind for s in world.suspicions] == ["UNKNOWN_CODE"]
    assert world.states["81234569999999999999"].commissioned is False  # held, but not known


def test_a_settlement_is_judged_and_takes_its_pack_out_of_its_case() -> None:
    """As a dispense of it would: the case's later moves leave the sold pack where it was
    sold, and an event dated before the sale makes the history be replayed."""
    settle = Fact.settlement("S1", T0 + timedelta(minutes=8), "P1", UNIT_A, sold=True)
    world = replay([*JOURNEY, settle, fact("ship", "P1", (CASE,), 9, 9, to="D1")], keep={}, pack_units={})
    assert world.suspicions == []
    unit = world.states[UNIT_A]
    assert (unit.custodian, unit.parent, unit.sold_at) == ("P1", None, T0 + timedelta(minutes=8))
    assert unit.last_at == T0 + timedelta(minutes=7)  # a sale moves no custody
    assert world.states[UNIT_B].custodian == "P1"  # still in the case: on its way to D1
    assert world.states[UNIT_B].destination == "D1"
    # a settlement judged only (its line was refused: it took nothing) leaves the pack in its case
    refused = Fact.settlement("S3", T0 + timedelta(minutes=8), "P1", UNIT_A)
    world = replay([*JOURNEY, refused], keep={}, pack_units={})
    assert (world.states[UNIT_A].parent, world.states[UNIT_A].sold_at) == (CASE, None)
    early = Fact.settlement("S2", T0 + timedelta(minutes=5), "P1", UNIT_A)  # before the ship to P1
    suspicious = replay([*JOURNEY, early], keep={}, pack_units={})
    assert [(s.kind, suspicion_flag(s).key) for s in suspicious.suspicions] == [
        ("DIVERSION", ("DIVERSION", UNIT_A, Evidence.settlement("S2")))
    ]


@settings(max_examples=200)
@given(order=st.permutations(range(len(JOURNEY))), split=st.integers(0, len(JOURNEY)))
def test_incremental_then_replay_equals_the_fold_in_order(order: list[int], split: int) -> None:
    """What ingest does: apply some facts, then fold everything again when older ones
    arrive. The result equals the in-order fold."""
    shuffled = [JOURNEY[i] for i in order]
    first = World(states={}, pack_units={"8123456": 24})
    first.apply_all(shuffled[:split])
    again = replay(shuffled, keep=first.states, pack_units={"8123456": 24})
    expected = replay(JOURNEY, keep={}, pack_units={"8123456": 24})
    assert {c: s.custody() for c, s in again.states.items()} == {
        c: s.custody() for c, s in expected.states.items()
    }


UNIT_C = "81234560000000000035"
# M packs three units into a case and the case goes M -> D1 -> P1 (no pallet).
CASE_JOURNEY = [
    fact("commission", "M1", (UNIT_A, UNIT_B, UNIT_C), 0, 101, lot="L1"),
    fact("pack", "M1", (UNIT_A, UNIT_B, UNIT_C), 1, 102, parent=CASE),
    fact("ship", "M1", (CASE,), 2, 103, to="D1"),
    fact("receive", "D1", (CASE,), 3, 104),
    fact("ship", "D1", (CASE,), 4, 105, to="P1"),
    fact("receive", "P1", (CASE,), 5, 106),
]
# P1 picks UNIT_A out of the case without scanning an unpack and sends it to G1; then
# the case goes back to D1.
PICK = [
    fact("ship", "P1", (UNIT_A,), 6, 107, to="G1"),
    fact("receive", "G1", (UNIT_A,), 7, 108),
    fact("ship", "P1", (CASE,), 8, 109, to="D1"),
]


def test_a_code_moved_on_its_own_leaves_its_container() -> None:
    world = replay([*CASE_JOURNEY, *PICK], keep={}, pack_units={"8123456": 24}, record=True)
    picked = world.states[UNIT_A]
    assert (picked.state, picked.custodian, picked.parent) == ("received", "G1", None)
    for unit in (UNIT_B, UNIT_C):  # the rest of the case went back to D1
        s = world.states[unit]
        assert (s.state, s.destination, s.parent) == ("in_transit", "D1", CASE)
    assert world.children[CASE] == {UNIT_B, UNIT_C}
    assert world.left == {(UNIT_A, uuid.UUID(int=107)): CASE}  # the ship to G1 took it out
    assert [f.event_id.int for f, _ in world.applied[UNIT_A]][-2:] == [107, 108]  # not 109
    # G1 now holds it: settling it there is nothing suspicious
    settle = Fact.settlement("S1", T0 + timedelta(minutes=9), "G1", UNIT_A)
    world.apply(settle)
    assert world.suspicions == []


def test_each_move_type_picks_a_pack_out_of_its_case() -> None:
    for type_ in ("ship", "receive", "dispense", "return", "destroy"):
        move = fact(type_, "P1", (UNIT_A,), 6, 107, **({"to": "G1"} if type_ == "ship" else {}))
        world = replay([*CASE_JOURNEY, move], keep={}, pack_units={})
        assert world.states[UNIT_A].parent is None, type_
        assert world.states[UNIT_B].parent == CASE, type_


def test_a_code_named_with_its_container_stays_inside_it() -> None:
    both = fact("ship", "P1", (UNIT_A, CASE), 6, 107, to="G1")  # the unit listed first
    world = replay([*CASE_JOURNEY, both], keep={}, pack_units={}, record=True)
    unit = world.states[UNIT_A]
    assert (unit.state, unit.destination, unit.parent) == ("in_transit", "G1", CASE)
    assert world.left == {}


def test_nested_a_pack_leaves_its_case_and_the_case_stays_on_the_pallet() -> None:
    on_pallet = JOURNEY[:5]  # the pallet received at D1, the case (UNIT_A, UNIT_B) on it
    damaged = fact("destroy", "D1", (UNIT_A,), 6, 6)
    world = replay([*on_pallet, damaged], keep={}, pack_units={}, record=True)
    assert world.states[UNIT_A].parent is None
    assert world.left == {(UNIT_A, uuid.UUID(int=6)): CASE}  # its direct container
    assert (world.states[UNIT_B].parent, world.states[CASE].parent) == (CASE, PALLET)
    # named together with the pallet two levels up, a pack travels inside both
    world.apply(fact("ship", "D1", (PALLET, UNIT_B), 7, 7, to="P1"))
    assert (world.states[UNIT_B].parent, world.states[UNIT_B].destination) == (CASE, "P1")
    assert world.states[UNIT_A].destination is None  # already out: the pallet left without it
    assert world.suspicions == []


def test_a_case_moved_on_its_own_leaves_its_pallet_with_its_contents() -> None:
    pallet_journey = JOURNEY[:5]  # the pallet received at D1, the case still on it
    world = replay([*pallet_journey, fact("ship", "D1", (CASE,), 6, 6, to="P1")], keep={}, pack_units={})
    assert world.states[CASE].parent is None
    for unit in (UNIT_A, UNIT_B):
        assert (world.states[unit].parent, world.states[unit].destination) == (CASE, "P1")


@settings(max_examples=200)
@given(order=st.permutations(range(len(CASE_JOURNEY) + len(PICK))), split=st.integers(0, 9))
def test_picks_converge_incrementally_and_by_replay(order: list[int], split: int) -> None:
    """Apply a prefix of the arrival order to the stored states, then either the rest
    incrementally (when it is all newer, as ingest does) or everything again."""
    journey = [*CASE_JOURNEY, *PICK]
    shuffled = [journey[i] for i in order]
    expected = replay(journey, keep={}, pack_units={"8123456": 24})
    first = World(states={}, pack_units={"8123456": 24})
    first.apply_all(shuffled[:split])
    rest = shuffled[split:]
    if all(s.last_at < min((f.at for f in rest), default=T0) for s in first.states.values()):
        # fresh states as the store would hand them back (children rebuilt from parent)
        stored = {c: copy.copy(s) for c, s in first.states.items()}
        world = World(states=stored, pack_units={"8123456": 24})
        world.apply_all(rest)
    else:
        world = replay(shuffled, keep=first.states, pack_units={"8123456": 24})
    assert {c: s.custody() for c, s in world.states.items()} == {
        c: s.custody() for c, s in expected.states.items()
    }


def test_a_receive_of_a_pack_shipped_to_no_named_destination_is_not_suspect() -> None:
    """An NHSA 3502 transfer out names no counterparty: whoever receives the pack next
    fits, and holds it."""
    shipped = Fact(uuid.uuid4(), "ship", T0 + timedelta(minutes=8), "P1", (UNIT_A,))
    received = Fact(uuid.uuid4(), "receive", T0 + timedelta(minutes=9), "H1", (UNIT_A,))
    world = replay([*JOURNEY, shipped, received], keep={}, pack_units={})
    assert world.suspicions == []
    assert (world.states[UNIT_A].state, world.states[UNIT_A].custodian) == ("received", "H1")


# Cross-docking: D1 takes in the pallet and sends the case on to P1 in the same minute,
# and P1 takes it in and sells a pack from it in that minute too.
CROSS_DOCK = [
    fact("commission", "M1", (UNIT_A, UNIT_B), 0, 301, lot="L1"),
    fact("pack", "M1", (UNIT_A, UNIT_B), 1, 302, parent=CASE),
    fact("pack", "M1", (CASE,), 2, 303, parent=PALLET),
    fact("ship", "M1", (PALLET,), 3, 399, to="D1"),
    fact("receive", "D1", (PALLET,), 3, 305),
    fact("ship", "D1", (CASE,), 3, 304, to="P1"),
    fact("receive", "P1", (CASE,), 3, 300),
    fact("dispense", "P1", (UNIT_A,), 3, 306),
]


def test_at_one_instant_an_organisation_receives_before_it_ships_on() -> None:
    world = replay(CROSS_DOCK, keep={}, pack_units={"8123456": 24})
    assert [(f.type, f.org) for f in fold_order(CROSS_DOCK)][3:] == [
        ("ship", "M1"),
        ("receive", "D1"),
        ("ship", "D1"),
        ("receive", "P1"),
        ("dispense", "P1"),
    ]
    case, unit = world.states[CASE], world.states[UNIT_B]
    assert (case.state, case.custodian, case.parent) == ("received", "P1", None)
    assert (unit.state, unit.custodian) == ("received", "P1")
    assert world.states[PALLET].custodian == "D1"
    assert world.suspicions == []


@settings(max_examples=200)
@given(order=st.permutations(range(len(CROSS_DOCK))), split=st.integers(0, len(CROSS_DOCK)))
def test_the_fold_order_is_a_function_of_the_facts(order: list[int], split: int) -> None:
    """Whatever order the facts arrive in, and wherever ingest replays, the same order
    and the same states."""
    shuffled = [CROSS_DOCK[i] for i in order]
    assert fold_order(shuffled) == fold_order(CROSS_DOCK)
    first = World(states={}, pack_units={"8123456": 24})
    first.apply_all(shuffled[:split])
    again = replay(shuffled, keep=first.states, pack_units={"8123456": 24})
    expected = replay(CROSS_DOCK, keep={}, pack_units={"8123456": 24})
    assert {c: s.custody() for c, s in again.states.items()} == {
        c: s.custody() for c, s in expected.states.items()
    }


# At one minute D1 sells UNIT_A out of the case and ships the rest of the case (UNIT_B)
# on to P1, and P1 takes it in and sells UNIT_B; the ids put every sale before every ship.
SELL_AND_SHIP_ON = [
    *JOURNEY[:6],
    fact("dispense", "D1", (UNIT_A,), 6, 503),
    fact("ship", "D1", (CASE,), 6, 504, to="P1"),
    fact("receive", "P1", (CASE,), 6, 505),
    fact("settle", "P1", (UNIT_B,), 6, 501, setl_id="S1", sold=True),  # type: ignore[arg-type]
]


def test_at_one_instant_an_organisation_sells_before_it_ships_on() -> None:
    """A pack sold out of a case stays with its seller when the rest of the case is
    shipped on in the same minute; what the case brings in is sold after its receipt."""
    assert [(f.type, f.org) for f in fold_order(SELL_AND_SHIP_ON)][6:] == [
        ("dispense", "D1"),
        ("ship", "D1"),
        ("receive", "P1"),
        ("settle", "P1"),
    ]
    world = replay(SELL_AND_SHIP_ON, keep={}, pack_units={"8123456": 24})
    sold, sent = world.states[UNIT_A], world.states[UNIT_B]
    assert (sold.state, sold.custodian, sold.destination, sold.parent) == ("received", "D1", None, None)
    assert (sent.state, sent.custodian, sent.parent) == ("received", "P1", None)
    assert world.suspicions == []


@settings(max_examples=100)
@given(order=st.permutations(range(6, len(SELL_AND_SHIP_ON))))
def test_selling_before_shipping_on_is_a_function_of_the_facts(order: list[int]) -> None:
    shuffled = SELL_AND_SHIP_ON[:6] + [SELL_AND_SHIP_ON[i] for i in order]
    assert fold_order(shuffled) == fold_order(SELL_AND_SHIP_ON)


def test_shipping_to_each_other_in_one_instant_keeps_every_fact() -> None:
    """X and Y ship to each other and receive in the same second: a cycle of waits. No
    fact is lost and the order is still the same for the same facts."""
    swap = [
        fact("ship", "D1", (UNIT_A,), 3, 401, to="D2"),
        fact("receive", "D2", (UNIT_A,), 3, 402),
        fact("ship", "D2", (UNIT_B,), 3, 403, to="D1"),
        fact("receive", "D1", (UNIT_B,), 3, 404),
    ]
    got = fold_order(swap)
    assert sorted(f.event_id.int for f in got) == [401, 402, 403, 404]
    assert fold_order(reversed(swap)) == got


def test_an_instant_without_an_organisation_both_receiving_and_shipping_keeps_sort_key_order() -> None:
    facts = [f for f in JOURNEY]
    assert fold_order(reversed(facts)) == sorted(facts, key=sort_key)


def test_a_deleted_sale_is_listed_where_the_whole_log_puts_it() -> None:
    """A history lists a 3507-deleted sale and its compensation among the events that
    count, in fold order: a sale in the second its seller ships the case on comes before
    the ship (the fold's order), not after it as the time-and-type order has it (found
    by a review)."""
    sold = fact("dispense", "P2", (UNIT_A,), 10, 4)  # a 3505 sale, deleted later
    facts = [
        fact("commission", "M1", (UNIT_A,), 0, 1, lot="L1"),
        fact("pack", "M1", (UNIT_A,), 1, 2, parent=CASE),
        fact("receive", "P2", (CASE,), 5, 3),
        sold,
        fact("ship", "P2", (CASE,), 10, 5, to="P1"),  # the same second as the sale
        Fact(uuid.UUID(int=6), "return", T0 + timedelta(minutes=60), "P2", (UNIT_A,), undoes=sold.event_id),
    ]
    world, listed = as_logged(UNIT_A, facts)
    whole_log = [f.event_id for f in fold_order(facts)]
    shown = [f.event_id for f, _ in listed]
    assert shown == [e for e in whole_log if e in shown]
    assert sold.event_id in shown
    assert world.states[UNIT_A].parent == CASE  # the deleted sale's pick counts for nothing
