"""The long schemathesis run (issue 13, item 2): requests generated from the served
OpenAPI document for every operation, sent with an admin key to the app in this process,
until ``--requests`` have been sent; any 5xx is listed and makes the exit status 1.
``tests/integration/test_fuzz.py`` is the bounded run the suite makes.

How to run (from the repository root)
    .venv/bin/python scripts/fuzz.py [--requests 100000] [--examples 500] [--seed 1]
        [--database-url URL] [--redis-url URL]

Each pass gives every operation up to ``--examples`` generated cases (plus the document's
examples), with seed ``--seed`` + pass number, so a run can be repeated exactly. Without
``--database-url`` / ``--redis-url`` a throwaway embedded PostgreSQL / Valkey is started
and deleted at exit (a given database is written to). Prints one line per operation and
pass, then the totals by status.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

from benchkit import fuzz
from benchkit.localrun import migrate, throwaway_postgres
from service.app import create_app
from service.cli import _create_key
from service.config import Settings


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=100_000, help="stop after this many (default 100000)")
    parser.add_argument("--examples", type=int, default=500, help="cases per operation and pass")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--database-url")
    parser.add_argument("--redis-url")
    args = parser.parse_args()

    database_url = args.database_url or throwaway_postgres("tracecode-fuzz-pg-")
    asyncio.run(migrate(database_url))
    redis_url = args.redis_url
    if not redis_url:
        from service.embedded import start_redis

        redis_url = start_redis(Path(tempfile.mkdtemp(prefix="tracecode-fuzz-valkey-")), throwaway=True)
    _, admin_key = asyncio.run(_create_key(database_url, "admin", None))
    app = create_app(replace(Settings.from_env(), database_url=database_url, redis_url=redis_url))

    started = time.monotonic()
    total = 0
    statuses: Counter[int] = Counter()
    server_errors: list[str] = []
    pass_no = 0
    try:
        while total < args.requests:
            pass_no += 1

            def progress(name: str, report: fuzz.Report, pass_no: int = pass_no, sent: int = total) -> None:
                count = report.by_operation[name]
                print(f"pass {pass_no}  {name:45} {count:6}  total {sent + report.requests}", flush=True)

            report = fuzz.fuzz(
                app, admin_key, max_examples=args.examples, seed=args.seed + pass_no, progress=progress
            )
            total += report.requests
            statuses.update(report.statuses)
            server_errors += report.server_errors
    finally:
        fuzz.stop()
    elapsed = time.monotonic() - started
    by_status = dict(sorted(statuses.items()))
    print(f"\n{total} requests in {elapsed:.0f} s ({pass_no} passes); by status: {by_status}")
    print(f"5xx: {len(server_errors)}")
    for line in server_errors[:50]:
        print("  " + line)
    return 1 if server_errors else 0


if __name__ == "__main__":
    sys.exit(main())
