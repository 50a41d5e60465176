"""No 5xx from input (issue 13, item 2): schemathesis generates requests for every
operation of the served OpenAPI document and sends them, with an admin key, to the app
in this process. Bounded (a few dozen cases an operation, derandomized, so every run
sends the same requests); ``scripts/fuzz.py`` is the long run."""

from __future__ import annotations

import pytest
from litestar.testing import AsyncTestClient

from benchkit import fuzz
from service.app import create_app
from service.config import Settings
from tests.helpers import Api

EXAMPLES_PER_OPERATION = 40


def test_generated_requests_get_no_server_error(settings: Settings, admin: Api) -> None:
    app = create_app(settings)
    try:
        report = fuzz.fuzz(app, admin.key, max_examples=EXAMPLES_PER_OPERATION)
    finally:
        fuzz.stop()
    assert report.server_errors == []
    assert len(report.by_operation) >= 25, report.by_operation  # every operation was reached
    # the document says enough for requests to get past validation into the rules
    for operation in (
        "POST /v1/events",
        "POST /v1/settlements",
        "POST /v1/verify",
        "GET /v1/codes/{code}/verify",
        "GET /v1/codes/{code}/history",
    ):
        seen = {status: n for (name, status), n in report.outcomes.items() if name == operation}
        assert seen.get(200, 0) > 0, (operation, seen)


@pytest.mark.asyncio(loop_scope="session")
async def test_document_says_what_the_decoder_refuses(client: AsyncTestClient) -> None:  # type: ignore[type-arg]
    """Request bodies are decoded with forbid_unknown_fields: the document says
    additionalProperties false, so generated requests do not stop at "unknown field"."""
    doc = (await client.get("/schema/openapi.json")).json()
    schemas = doc["components"]["schemas"]
    for name in ("EventsIn", "EventIn", "SettlementIn", "LineIn", "VerifyIn", "OrgIn", "ProductIn"):
        assert schemas[name]["additionalProperties"] is False, name
    assert schemas["EventIn"]["properties"]["codes"]["examples"] == [["81234560000000000011"]]
