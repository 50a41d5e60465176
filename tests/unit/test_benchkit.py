"""The shared test and benchmark tooling agrees with the service: generated codes are
in the canonical forms the service's parser gives back, percentiles are nearest-rank,
and a claim's body is read back by the API as the same claim."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import msgspec
import pytest

from benchkit.api import claim_body, event
from benchkit.codes import cn20, sscc
from benchkit.stats import percentile
from service.api.settlements import SettlementIn, _claim
from service.core.codes import CodeKind, parse_code
from service.core.settlement import Claim, Line


@pytest.mark.parametrize("serial", [0, 1, 7, 123_456_789])
def test_generated_sscc_is_canonical_for_the_service(serial: int) -> None:
    code = sscc("06901234", serial)
    parsed = parse_code(code)
    assert (parsed.kind, parsed.canonical) == (CodeKind.SSCC, code)


def test_generated_cn20_is_canonical_for_the_service() -> None:
    code = cn20("8123456", 42)
    parsed = parse_code(code)
    assert (parsed.kind, parsed.canonical, parsed.product_id) == (CodeKind.CN20, code, "8123456")


def test_sscc_refuses_a_prefix_too_long() -> None:
    with pytest.raises(ValueError, match="17 digits"):
        sscc("0690123412", 12_345_678)


def test_percentile_is_nearest_rank() -> None:
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert [percentile(values, q) for q in (0.0, 0.2, 0.5, 0.99, 1.0)] == [1.0, 1.0, 3.0, 5.0, 5.0]
    assert percentile([], 0.5) is None


def test_event_body_writes_dates_as_iso_8601() -> None:
    at = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
    body = event("commission", "M1", ("a",), at, lot="L1", expiry=date(2030, 12, 31))
    assert {k: v for k, v in body.items() if k != "event_id"} == {
        "type": "commission",
        "org": "M1",
        "codes": ["a"],
        "at": "2026-03-02T08:00:00+00:00",
        "lot": "L1",
        "expiry": "2030-12-31",
    }
    # "from" is a Python keyword: the sender is named from_org, as in service.core.events.Incoming
    assert event("receive", "D1", [], "2026-03-02T08:00:00Z", from_org="M1")["from"] == "M1"


def test_the_api_reads_a_claim_body_back_as_the_same_claim() -> None:
    at = datetime.now(UTC).replace(microsecond=123_456) - timedelta(hours=1)
    line = Line(1, "XJ01CAA040A001010104256", 30, True, ("8123456000000000001", " 81234560000000002 "))
    claim = Claim("S1", "P1", "440100199001011234", at, "settle", (line,))
    assert _claim(msgspec.convert(claim_body(claim), SettlementIn)) == claim
    # at another offset: the API takes the time in UTC
    shifted = {**claim_body(claim), "at": at.astimezone(timezone(timedelta(hours=8))).isoformat()}
    assert _claim(msgspec.convert(shifted, SettlementIn)) == claim


def test_procs_finds_a_child_its_cpu_and_the_connections_it_holds() -> None:
    """benchkit.procs, which the benchmarks' CPU and connection figures come from: a
    child Python process that burns CPU and accepts three connections is found as a
    worker of this process, its CPU time counts, and the connections are its."""
    import os
    import socket
    import subprocess
    import sys

    from benchkit import procs

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.listen()
    code = (
        "import socket, sys, time\n"
        "s = socket.socket(fileno=int(sys.argv[1]))\n"
        "held = [s.accept()[0] for _ in range(3)]\n"
        "end = time.process_time() + 0.3\n"
        "while time.process_time() < end: pass\n"
        "print('ready', flush=True)\n"
        "sys.stdin.read()\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", code, str(listener.fileno())],
        pass_fds=[listener.fileno()],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    ) as child:
        listener.close()
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        try:
            assert child.stdout is not None
            assert child.stdout.readline() == b"ready\n"
            me = os.getpid()
            assert child.pid in procs.tree(me)
            assert child.pid in procs.app_workers(me)
            used = procs.tree_cpu(child.pid)
            assert used is not None
            assert used >= 0.2  # the 0.3 s it burnt, in clock ticks
            assert procs.connections_per_worker(me, port)[0] == 3
            assert procs.machine_cpu() is not None
        finally:
            for c in clients:
                c.close()
            child.kill()
