"""The custody fold and its suspicions, without a database."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from service.core.custody import Fact, World, display_state, replay
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
    vias = [via for _, via in world.applied[UNIT_A]]
    assert vias == [
        None,
        None,
        PALLET,
        PALLET,
        CASE,
        CASE,
    ]  # packing or unpacking the case itself does not touch units
    assert world.suspicions == []


def test_receive_by_a_party_that_was_not_shipped_to_is_diversion() -> None:
    world = replay([*JOURNEY, fact("receive", "P9", (UNIT_B,), 9, 9)], keep={}, pack_units={})
    assert [(s.kind, s.code, s.holder) for s in world.suspicions] == [("DIVERSION", UNIT_B, "P1")]


def test_activity_on_a_code_never_commissioned_is_suspected() -> None:
    world = replay([fact("receive", "P1", ("81234569999999999999",), 1, 1)], keep={}, pack_units={})
    assert [s.kind for s in world.suspicions] == ["UNKNOWN_CODE"]
    assert world.states["81234569999999999999"].commissioned is False  # held, but not known


def test_a_settlement_is_judged_without_changing_anything() -> None:
    settle = Fact.settlement("S1", T0 + timedelta(minutes=8), "P1", UNIT_A)
    world = replay([*JOURNEY, settle], keep={}, pack_units={})
    assert world.suspicions == []
    assert world.states[UNIT_A].last_at == T0 + timedelta(minutes=7)
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
