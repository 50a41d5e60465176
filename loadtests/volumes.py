"""The load model: from published national figures to request rates at the province peak.

This module is the one place the numbers live. ``loadtests/README.md`` shows the same
arithmetic step by step, the Locust file takes its operation rates from
:data:`PROVINCE_PEAK_RPS`, and ``python loadtests/volumes.py`` prints the whole
derivation (run it after changing an assumption and copy the output into the README).

Everything here is plain arithmetic over named assumptions; no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DAY_S = 86_400
HOUR_S = 3_600

# --- published figures -----------------------------------------------------------------
SETTLEMENTS_PER_YEAR = 6.7e9  # insured outpatient settlements in China a year
INSTITUTION_CODES_PER_DAY = 300e6  # trace codes uploaded a day by insured institutions (late 2025)
PROVINCE_SHARE = 0.09  # a province of ~9% of the population (Guangdong: ~127 M of ~1,410 M)

# --- assumptions: what one sale, one pack and one case mean ---------------------------
CODES_PER_SETTLEMENT = 3.0  # ~2 drug lines per outpatient settlement x ~1.5 packs a line
UPLOADS_PER_PACK_AT_INSTITUTIONS = 2  # each pack is uploaded on receipt and at the sale
VERIFY_PER_PACK_DISPENSED = 1.2  # one scan per pack, plus re-scans and pharmacist checks
VERIFY_BATCH_SHARE = 0.02  # share of verifications sent as POST /v1/verify (stock checks) ...
VERIFY_BATCH_SIZE = 50  # ... of 50 codes a request
PACKS_PER_SALE = 2.5  # dispense events: packs handed out per sale (insured or not)
SPLIT_SALE_SHARE = 0.15  # sales that are split-pack (拆零): a dispense with a quantity
PHARMACY_SHARE = 0.60  # of dispensing; hospitals take the other 40%
PHARMACY_SPLIT_SHARE = 0.10  # split-pack share of pharmacy sales (hospitals: see below)
PRECHECK_PER_SETTLEMENT = 0.20  # engines pre-check one claim in five before settling
REVERSAL_SHARE = 0.005  # settlements refunded (reversed) the same hour
SETTLEMENT_READ_SHARE = 0.01  # settlements read back (GET) by the engine
FRAUD_SHARE = 0.01  # settlement attempts on an already consumed code (回流药): rejected
CASE_SIZE = 20  # packs in a case (SSCC), order of magnitude for most products
LOOSE_SHARE = 0.5  # of distributor deliveries: loose packs (pharmacies) vs whole cases (hospitals)
COMMISSION_BATCH = 500  # codes in one commission upload by a manufacturer's line
CASES_PER_PACK_REQUEST = 25  # pack events (one per case) in one upload
CASES_PER_SHIPMENT = 25  # cases in one manufacturer -> distributor shipment
PACKS_PER_DELIVERY = CASE_SIZE  # a delivery to a pharmacy or hospital: about one case's worth
HISTORY_READS_PER_S = 5.0  # investigators' history reads at a province's peak (people + screening)
FLAG_READS_PER_S = 1.0  # flag list reads at a province's peak

# --- assumptions: when it happens ------------------------------------------------------
# Dispensing and settlement follow outpatient hours; warehouses and factories run flatter.
DISPENSING_PEAK_HOUR_SHARE = 0.11  # busiest hour (Mon 9-10 am) holds 11% of the day (flat: 4.2%)
DISPENSING_MONDAY = 1.25  # Monday vs the average day of the year (weekends are quieter)
DISPENSING_FLU_SEASON = 1.25  # a flu-season week vs the yearly average
SUPPLY_PEAK_HOUR_SHARE = 0.09  # two shifts
SUPPLY_MONDAY = 1.10
SUPPLY_FLU_SEASON = 1.20  # restocking for the season
BURST = 1.20  # busiest minute vs the average of the busiest hour (both sides)


def peak_factor(hour_share: float, monday: float, season: float, burst: float = BURST) -> float:
    """Peak rate / average rate over the year."""
    return hour_share * (DAY_S / HOUR_S) * monday * season * burst


DISPENSING_PEAK = peak_factor(DISPENSING_PEAK_HOUR_SHARE, DISPENSING_MONDAY, DISPENSING_FLU_SEASON)
SUPPLY_PEAK = peak_factor(SUPPLY_PEAK_HOUR_SHARE, SUPPLY_MONDAY, SUPPLY_FLU_SEASON)

# --- national daily volumes -------------------------------------------------------------
SETTLEMENTS_PER_DAY = SETTLEMENTS_PER_YEAR / 365
SETTLED_CODES_PER_DAY = SETTLEMENTS_PER_DAY * CODES_PER_SETTLEMENT
PACKS_DISPENSED_PER_DAY = INSTITUTION_CODES_PER_DAY / UPLOADS_PER_PACK_AT_INSTITUTIONS
PACKS_RECEIVED_PER_DAY = PACKS_DISPENSED_PER_DAY  # steady state: what is sold was delivered
VERIFICATIONS_PER_DAY = PACKS_DISPENSED_PER_DAY * VERIFY_PER_PACK_DISPENSED
# Supply-chain code scans per pack (manufacturers and distributors; the institution's
# receive is part of the 300 M): commission 1, pack 1 + 1/C for the case label, the
# manufacturer's ship 1/C, the distributor's receive 1/C, then the delivery: whole cases
# (1-L)/C, or unpack (1 + 1/C) and ship loose (1), L of the time.
SUPPLY_SCANS_PER_PACK = (
    1
    + (1 + 1 / CASE_SIZE)
    + 2 / CASE_SIZE
    + (1 - LOOSE_SHARE) / CASE_SIZE
    + LOOSE_SHARE * (2 + 1 / CASE_SIZE)
)
SUPPLY_SCANS_PER_DAY = PACKS_RECEIVED_PER_DAY * SUPPLY_SCANS_PER_PACK


@dataclass(frozen=True)
class Peak:
    """Rates at a peak, per second."""

    settlements: float
    codes_settled: float
    verifications: float
    packs_dispensed: float
    packs_received: float  # by pharmacies and hospitals
    supply_scans: float  # codes named by manufacturers' and distributors' events
    supply_events: float  # scan events (one event = one scan of a unit or case label)


def peak(share: float) -> Peak:
    d = DISPENSING_PEAK * share / DAY_S
    s = SUPPLY_PEAK * share / DAY_S
    cases = PACKS_RECEIVED_PER_DAY * s / CASE_SIZE
    # events: commission per batch, pack one per case, ship/receive per shipment, one
    # unpack+ship per loose delivery, one ship per whole-case delivery
    supply_events = (
        PACKS_RECEIVED_PER_DAY * s / COMMISSION_BATCH
        + cases
        + 2 * cases / CASES_PER_SHIPMENT
        + cases * LOOSE_SHARE * 2
        + cases * (1 - LOOSE_SHARE)
    )
    return Peak(
        settlements=SETTLEMENTS_PER_DAY * d,
        codes_settled=SETTLED_CODES_PER_DAY * d,
        verifications=VERIFICATIONS_PER_DAY * d,
        packs_dispensed=PACKS_DISPENSED_PER_DAY * d,
        packs_received=PACKS_RECEIVED_PER_DAY * s,
        supply_scans=SUPPLY_SCANS_PER_DAY * s,
        supply_events=supply_events,
    )


PROVINCE = peak(PROVINCE_SHARE)
NATIONAL = peak(1.0)


def request_rates(p: Peak) -> dict[str, float]:
    """HTTP requests per second, by operation (the names the Locust file reports)."""
    sales = p.packs_dispensed / PACKS_PER_SALE
    hospital_split = (SPLIT_SALE_SHARE - PHARMACY_SHARE * PHARMACY_SPLIT_SHARE) / (1 - PHARMACY_SHARE)
    deliveries = p.packs_received / PACKS_PER_DELIVERY
    cases = p.packs_received / CASE_SIZE
    return {
        # settlement engines (insurer keys)
        "settle": p.settlements,
        "precheck": p.settlements * PRECHECK_PER_SETTLEMENT,
        "reversal": p.settlements * REVERSAL_SHARE,
        "settlement_get": p.settlements * SETTLEMENT_READ_SHARE,
        # pharmacies
        "pharmacy.verify": p.verifications * PHARMACY_SHARE * (1 - VERIFY_BATCH_SHARE),
        "pharmacy.verify_batch": p.verifications * PHARMACY_SHARE * VERIFY_BATCH_SHARE / VERIFY_BATCH_SIZE,
        "pharmacy.dispense": sales * PHARMACY_SHARE * (1 - PHARMACY_SPLIT_SHARE),
        "pharmacy.dispense_split": sales * PHARMACY_SHARE * PHARMACY_SPLIT_SHARE,
        "pharmacy.receive": deliveries * LOOSE_SHARE,
        # hospitals
        "hospital.verify": p.verifications * (1 - PHARMACY_SHARE) * (1 - VERIFY_BATCH_SHARE),
        "hospital.verify_batch": (
            p.verifications * (1 - PHARMACY_SHARE) * VERIFY_BATCH_SHARE / VERIFY_BATCH_SIZE
        ),
        "hospital.dispense": sales * (1 - PHARMACY_SHARE) * (1 - hospital_split),
        "hospital.dispense_split": sales * (1 - PHARMACY_SHARE) * hospital_split,
        "hospital.receive": deliveries * (1 - LOOSE_SHARE),
        # distributors
        "receive_dist": cases / CASES_PER_SHIPMENT,
        "ship_case": cases * (1 - LOOSE_SHARE),
        "ship_loose": cases * LOOSE_SHARE,
        # manufacturers
        "commission": p.packs_received / COMMISSION_BATCH,
        "pack": cases / CASES_PER_PACK_REQUEST,
        "ship_mfr": cases / CASES_PER_SHIPMENT,
        # investigators (not proportional to sales)
        "history": HISTORY_READS_PER_S * p.settlements / PROVINCE.settlements,
        "flags": FLAG_READS_PER_S * p.settlements / PROVINCE.settlements,
    }


PROVINCE_PEAK_RPS = request_rates(PROVINCE)
NATIONAL_PEAK_RPS = request_rates(NATIONAL)


def by_operation(rates: dict[str, float]) -> dict[str, float]:
    """Rates summed over who sends them (``pharmacy.verify`` + ``hospital.verify`` ...)."""
    out: dict[str, float] = {}
    for name, rate in rates.items():
        op = name.split(".")[-1]
        out[op] = out.get(op, 0.0) + rate
    return out


def _fmt(x: float) -> str:
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def report() -> str:
    lines = [
        f"settlements/day            = {SETTLEMENTS_PER_YEAR:.3g} / 365 = {SETTLEMENTS_PER_DAY / 1e6:.2f} M",
        f"codes settled/day          = {SETTLEMENTS_PER_DAY / 1e6:.2f} M x {CODES_PER_SETTLEMENT} "
        f"= {SETTLED_CODES_PER_DAY / 1e6:.1f} M",
        f"packs dispensed/day        = {INSTITUTION_CODES_PER_DAY / 1e6:.0f} M / "
        f"{UPLOADS_PER_PACK_AT_INSTITUTIONS} = {PACKS_DISPENSED_PER_DAY / 1e6:.0f} M "
        f"(insured outpatient share {SETTLED_CODES_PER_DAY / PACKS_DISPENSED_PER_DAY:.0%})",
        f"verifications/day          = {PACKS_DISPENSED_PER_DAY / 1e6:.0f} M x {VERIFY_PER_PACK_DISPENSED} "
        f"= {VERIFICATIONS_PER_DAY / 1e6:.0f} M",
        f"supply scans per pack      = {SUPPLY_SCANS_PER_PACK:.2f}",
        f"supply scans/day           = {PACKS_RECEIVED_PER_DAY / 1e6:.0f} M x {SUPPLY_SCANS_PER_PACK:.2f} "
        f"= {SUPPLY_SCANS_PER_DAY / 1e6:.0f} M",
        f"dispensing peak factor     = {DISPENSING_PEAK_HOUR_SHARE} x 24 x {DISPENSING_MONDAY} x "
        f"{DISPENSING_FLU_SEASON} x {BURST} = {DISPENSING_PEAK:.2f}",
        f"supply peak factor         = {SUPPLY_PEAK_HOUR_SHARE} x 24 x {SUPPLY_MONDAY} x "
        f"{SUPPLY_FLU_SEASON} x {BURST} = {SUPPLY_PEAK:.2f}",
        "",
        "| per second | average day, national | province peak | national peak |",
        "|---|---:|---:|---:|",
    ]
    avg = peak(1.0)
    rows = [
        ("settlements", "settlements"),
        ("codes settled", "codes_settled"),
        ("point-of-care verifications", "verifications"),
        ("packs dispensed (dispense events' codes)", "packs_dispensed"),
        ("packs received by pharmacies/hospitals", "packs_received"),
        ("supply-chain code scans", "supply_scans"),
        ("supply-chain scan events", "supply_events"),
    ]
    for label, attr in rows:
        factor = (
            DISPENSING_PEAK
            if attr in ("settlements", "codes_settled", "verifications", "packs_dispensed")
            else SUPPLY_PEAK
        )
        average = getattr(avg, attr) / factor
        province, national = _fmt(getattr(PROVINCE, attr)), _fmt(getattr(NATIONAL, attr))
        lines.append(f"| {label} | {_fmt(average)} | {province} | {national} |")
    lines += ["", "| operation | province peak req/s | national peak req/s |", "|---|---:|---:|"]
    for name, rate in PROVINCE_PEAK_RPS.items():
        lines.append(f"| {name} | {_fmt(rate)} | {_fmt(NATIONAL_PEAK_RPS[name])} |")
    total_p, total_n = sum(PROVINCE_PEAK_RPS.values()), sum(NATIONAL_PEAK_RPS.values())
    lines.append(f"| **all** | **{_fmt(total_p)}** | **{_fmt(total_n)}** |")
    return "\n".join(lines)


def users_needed(rate: float, per_user: float) -> int:
    return max(1, math.ceil(rate / per_user))


if __name__ == "__main__":
    print(report())
