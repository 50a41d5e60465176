"""One structured log line per request, numbered by a request id the client can quote;
never a secret or a person number in it."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import AsyncTestClient

from benchkit.localrun import TRACECODE
from tests.helpers import Api, cn20, world
from tests.integration.served import serving

pytestmark = pytest.mark.asyncio(loop_scope="session")

PSN_NO = "450103199001011234"


async def test_one_log_line_per_request_names_the_request_and_key_but_no_secret_or_person(
    admin: Api,
    client: AsyncTestClient,
    caplog: pytest.LogCaptureFixture,  # type: ignore[type-arg]
) -> None:
    w = await world(admin)
    insurer: Api = w["insurer"]
    body = {
        "setl_id": "LOG1",
        "org": "P1",
        "psn_no": PSN_NO,
        "at": "2026-03-05T10:00:00+08:00",
        "lines": [
            {
                "line_no": 1,
                "med_list_codg": "XJ01CAA040A001010104256",
                "quantity": 24,
                "codes": [cn20(w["unit"], 1)],
            }
        ],
    }
    headers = {**insurer.headers, "X-Request-ID": "pos-7.batch_42:1"}
    with caplog.at_level(logging.INFO, logger="tracecode.access"):
        resp = await client.post("/v1/settlements", headers=headers, json=body)
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-request-id"] == "pos-7.batch_42:1"
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "tracecode.access"]
    assert len(lines) == 1
    line = lines[0]
    assert line["event"] == "request"
    assert (line["request_id"], line["method"], line["route"], line["status"]) == (
        "pos-7.batch_42:1",
        "POST",
        "/v1/settlements",
        200,
    )
    assert isinstance(line["duration_ms"], float | int)
    assert line["duration_ms"] >= 0
    key_id, _, secret = insurer.key.partition(".")
    assert line["key_id"] == key_id
    assert secret not in caplog.text
    assert insurer.key not in caplog.text
    assert PSN_NO not in caplog.text


async def test_the_request_id_is_in_problem_details_and_generated_when_not_sane(
    admin: Api,
    client: AsyncTestClient,
    caplog: pytest.LogCaptureFixture,  # type: ignore[type-arg]
) -> None:
    with caplog.at_level(logging.INFO, logger="tracecode.access"):
        given = await client.get("/v1/settlements/NOPE", headers={**admin.headers, "X-Request-ID": "r-1"})
        odd = await client.get("/v1/nowhere", headers={"X-Request-ID": "no spaces <allowed>"})
        unkeyed = await client.get("/v1/flags")
    assert given.status_code == 404
    assert (given.json()["request_id"], given.headers["x-request-id"]) == ("r-1", "r-1")
    # an id that could forge or break a log line is replaced by a fresh one
    assert odd.status_code == 404
    assert odd.headers["x-request-id"] != "no spaces <allowed>"
    assert odd.json()["request_id"] == odd.headers["x-request-id"]
    assert unkeyed.status_code == 401
    assert unkeyed.json()["request_id"] == unkeyed.headers["x-request-id"]
    logged: list[dict[str, Any]] = [
        json.loads(r.getMessage()) for r in caplog.records if r.name == "tracecode.access"
    ]
    assert [(x["request_id"], x["status"], x["route"], x["key_id"]) for x in logged] == [
        ("r-1", 404, "/v1/settlements/{setl_id}", admin.key.partition(".")[0]),
        (odd.headers["x-request-id"], 404, None, None),
        (unkeyed.headers["x-request-id"], 401, "/v1/flags", None),
    ]


async def test_every_worker_of_serve_logs_its_requests_at_info_and_none_at_warning(tmp_path: Path) -> None:
    """``tracecode serve --workers 2`` as run in production: each worker process sets up
    its logging from TRACE_LOG_LEVEL (a spawned worker starts with none)."""
    for level in ("info", "warning"):
        (tmp_path / level).mkdir()
        async with serving(tmp_path / level, workers=2, log_level=level) as s:
            for i in range(20):  # a new connection each: the kernel spreads them over the workers
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{s.port}") as c:
                    resp = await c.get("/health/live", headers={"X-Request-ID": f"{level}-{i}"})
                    assert resp.status_code == 200
        # a request's line is its JSON alone (a log shipper reads each as one object)
        lines = [json.loads(line) for line in s.log.read_text().splitlines() if '"event":"request"' in line]
        logged = {line["request_id"] for line in lines if line["route"] == "/health/live"}
        if level == "info":
            assert logged == {f"info-{i}" for i in range(20)}, s.log.read_text()[-2000:]
        else:
            assert not lines, lines[:3]


async def test_an_unknown_log_level_stops_serve_naming_the_variable(tmp_path: Path) -> None:
    env = {**os.environ, "TRACE_LOG_LEVEL": "verbose", "TRACE_DATA_DIR": str(tmp_path)}
    done = await asyncio.to_thread(
        subprocess.run,
        [str(TRACECODE), "serve", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "TRACE_LOG_LEVEL must be one of debug, info, warning, error, critical" in done.stderr
    assert "Traceback" not in done.stderr, done.stderr


async def test_a_console_page_is_logged_under_the_signed_in_key(
    admin: Api,
    client: AsyncTestClient,
    caplog: pytest.LogCaptureFixture,  # type: ignore[type-arg]
) -> None:
    """A console page's request is the signed-in key's, as an API request is its bearer's
    (found by a newcomer's walkthrough: console lines said null)."""
    inv = await admin.key_for("investigator")
    client.cookies.clear()
    try:
        page = await client.get("/console/signin")
        token = page.text.split('name="_csrf_token" value="', 1)[1].split('"', 1)[0]
        signed = await client.post(
            "/console/signin", data={"key": inv.key, "_csrf_token": token}, follow_redirects=False
        )
        assert signed.status_code in (302, 303), signed.text
        with caplog.at_level(logging.INFO, logger="tracecode.access"):
            resp = await client.get("/console/flags")
        assert resp.status_code == 200, resp.text
    finally:
        client.cookies.clear()
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "tracecode.access"]
    assert [line["route"] for line in lines] == ["/console/flags"], lines
    assert lines[0]["key_id"] == inv.key.partition(".")[0], lines
    assert inv.key not in caplog.text


async def test_a_client_that_leaves_while_sending_its_body_is_no_server_error(tmp_path: Path) -> None:
    """A client that closed its connection while sending its body was logged as an
    internal error and counted as a 500, which the alerts call a bug (found by a probe: a
    keep-alive connection closed as the client reused it). Nothing was stored and no one
    reads the answer: it is counted and logged as 499, nginx's "client closed request"."""
    from benchkit.localrun import create_admin_key

    async with serving(tmp_path, log_level="info") as s:
        key = await asyncio.to_thread(create_admin_key, s.env)
        for path in ("/v1/settlements", "/v1/nhsa", "/epcis/capture"):
            _, writer = await asyncio.open_connection("127.0.0.1", s.port)
            writer.write(
                f"POST {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {key}\r\n"
                'Content-Type: application/json\r\nContent-Length: 500\r\n\r\n{"setl_id": '.encode()
            )
            await writer.drain()
            writer.close()
            await writer.wait_closed()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{s.port}") as c:
            for _ in range(50):  # each request's line is written as it ends
                lines = [json.loads(x) for x in s.log.read_text().splitlines() if '"event":"request"' in x]
                if len([x for x in lines if x["method"] == "POST"]) == 3:
                    break
                await asyncio.sleep(0.1)
            metrics = (await c.get("/metrics")).text
    posted = {x["route"]: x["status"] for x in lines if x["method"] == "POST"}
    assert posted == {"/v1/settlements": 499, "/v1/nhsa": 499, "/epcis/capture": 499}, posted
    assert 'status_code="500"' not in metrics
    assert "internal error" not in s.log.read_text()
    counted = re.findall(r'tracecode_requests_total\{([^}]*path="/v1/settlements"[^}]*)\} (\S+)', metrics)
    assert [(labels, n) for labels, n in counted if 'status_code="499"' in labels and n == "1.0"], counted
