"""core.receipts: what a received container counts, from its scans."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

from benchkit.codes import cn20, sscc
from service.core.receipts import Held, Scans, count_level

T0 = datetime(2026, 3, 2, tzinfo=UTC)
CASE, PALLET = sscc("06901234", 1), sscc("06901234", 2)


def test_a_case_counts_its_pack_scans_up_to_the_receipt_less_its_unpack_scans() -> None:
    pack, unpack, later = uuid4(), uuid4(), uuid4()
    scans = Scans(
        of={CASE: {pack: T0, unpack: T0 + timedelta(hours=1), later: T0 + timedelta(hours=3)}},
        types={pack: "pack", unpack: "unpack", later: "pack"},
        packs={pack: 12, unpack: 1, later: 5},
        maybe_containers={},
    )
    assert count_level([Held(CASE, T0 + timedelta(hours=2))], scans, {}) == (11, [])
    # received again later: counted again, with what was packed by then
    assert count_level([Held(CASE, T0 + timedelta(hours=4))], scans, {}) == (16, [])


def test_a_pallet_names_its_cases_to_count_next_and_a_cycle_stops() -> None:
    pallet_pack, case_pack = uuid4(), uuid4()
    maybe = cn20("8123457", 1)  # reads as a container only if its product is a case's
    scans = Scans(
        of={PALLET: {pallet_pack: T0}},
        types={pallet_pack: "pack"},
        packs={pallet_pack: 2},  # two loose packs on the pallet
        maybe_containers={pallet_pack: [CASE, maybe]},
    )
    at = T0 + timedelta(hours=1)
    packs, deeper = count_level([Held(PALLET, at)], scans, {})
    assert (packs, deeper) == (3, [Held(CASE, at, 1, (PALLET,))])  # the non-case code is a pack
    assert count_level([Held(PALLET, at)], scans, {"8123457": "case"})[1] == [
        Held(CASE, at, 1, (PALLET,)),
        Held(maybe, at, 1, (PALLET,)),
    ]
    # the case "holds" the pallet it is in (a malformed history): not counted round again
    looped = Scans({CASE: {case_pack: T0}}, {case_pack: "pack"}, {case_pack: 0}, {case_pack: [PALLET]})
    assert count_level(deeper, looped, {}) == (0, [])
