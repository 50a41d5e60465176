"""A settlement written by the load-test seeder is one the service would have stored:
the same claim sent to the API again is a replay and gets the stored answer back, not
a 409 (the seeder hashes with the service's own ``person_hash`` and ``fingerprints``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import asyncpg
import pytest

from benchkit.api import claim_body
from loadtests import seed
from service.config import Settings
from service.core.settlement import Claim, Line
from tests.helpers import Api, cn20, small_world

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_a_seeded_settlement_sent_again_is_a_replay(
    admin: Api, db: asyncpg.Connection, settings: Settings
) -> None:
    w = await small_world(admin)
    insurer = await admin.key_for("insurer")
    # as the seeder makes an insured sale: one line, a UTC time in the past
    codes = (cn20(w["unit"], 1), cn20(w["unit"], 2))
    line = Line(1, "XJ01CAA040A001010104256", 48, False, codes)
    at = datetime.now(UTC) - timedelta(hours=1)
    claim = Claim("S00000000000000a1", "P1", "440100199001011234", at, "settle", (line,))
    row = seed.settlement(settings.psn_secret, claim)
    await db.copy_records_to_table("settlements", records=[row], columns=seed.COLUMNS["settlements"])
    stored = await admin.client.get(f"/v1/settlements/{claim.setl_id}", headers=insurer.headers)
    assert stored.status_code == 200, stored.text

    body = claim_body(claim)
    answer = await insurer.ok("POST", "/v1/settlements", body)
    assert answer == stored.json()["answer"]
    assert answer["decision"] == "accepted"
    # the API takes the time in UTC: the same instant at another offset is the same claim
    beijing = {**body, "at": at.astimezone(timezone(timedelta(hours=8))).isoformat()}
    assert await insurer.ok("POST", "/v1/settlements", beijing) == answer
    # and the check is real: another body under the same id is refused
    changed = {**body, "psn_no": "440100199001019999"}
    await insurer.ok("POST", "/v1/settlements", changed, status=409)
