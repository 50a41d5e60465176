"""The command line as a new user runs it, and migrations applied once each."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import httpx
import pytest

from service.store.migrations import load_migrations, migrate
from tests.helpers import Api

pytestmark = pytest.mark.asyncio(loop_scope="session")

TRACECODE = str(Path(sys.executable).parent / "tracecode")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRACE_", "PROMETHEUS_"))}
    env["TRACE_DATA_DIR"] = str(data_dir)
    return env


def _serve(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [TRACECODE, "serve", "--port", str(port), "--workers", "2"],
        env=_env(data_dir),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise AssertionError("tracecode serve exited early")
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("tracecode serve did not become ready")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def test_serve_on_embedded_servers_keys_and_restart(tmp_path: Path) -> None:
    """With no URLs configured: serve starts private servers, the CLI makes the first
    admin key, data survives a restart, and a revoked key is refused."""
    await asyncio.to_thread(_first_run_and_restart, tmp_path / "data")


def _first_run_and_restart(data_dir: Path) -> None:
    port = _free_port()
    server = _serve(data_dir, port)
    try:
        made = subprocess.run(
            [TRACECODE, "key", "create", "--role", "admin", "--name", "ops desk"],
            env=_env(data_dir),
            capture_output=True,
            text=True,
            check=True,
        )
        secret = made.stdout.strip().splitlines()[-1]
        listed = subprocess.run(
            [TRACECODE, "key", "list"], env=_env(data_dir), capture_output=True, text=True, check=True
        )
        assert listed.stdout.splitlines()[0].split()[-1] == "NAME", listed.stdout
        assert listed.stdout.rstrip().endswith("ops desk"), listed.stdout  # who holds it
        headers = {"Authorization": f"Bearer {secret}"}
        org = {"id": "M1", "name": "Maker", "kind": "manufacturer", "region": "450100"}
        base = f"http://127.0.0.1:{port}"
        assert httpx.post(f"{base}/v1/orgs", json=org, headers=headers).status_code == 201
        metrics = httpx.get(f"{base}/metrics").text
        assert "tracecode_requests_total" in metrics or "tracecode_request" in metrics
    finally:
        _stop(server)
    assert (data_dir / "postgres" / "PG_VERSION").exists()

    server = _serve(data_dir, port)  # data survives a restart
    try:
        assert httpx.post(f"{base}/v1/orgs", json=org, headers=headers).status_code == 200
        key_id = secret.split(".")[0]
        revoked = subprocess.run(
            [TRACECODE, "key", "revoke", key_id], env=_env(data_dir), capture_output=True, text=True
        )
        assert revoked.returncode == 0, revoked.stderr
        # workers remember a valid key for TRACE_KEY_CACHE_SECONDS (2 s by default)
        deadline = time.monotonic() + 10
        while httpx.post(f"{base}/v1/orgs", json=org, headers=headers).status_code != 401:
            assert time.monotonic() < deadline, "a revoked key was still accepted after 10 s"
            time.sleep(0.2)
    finally:
        _stop(server)


async def test_migrations_once_each_even_when_raced(db) -> None:  # type: ignore[no-untyped-def]
    await db.execute("DROP DATABASE IF EXISTS migration_race")
    await db.execute("CREATE DATABASE migration_race")
    params = db._params  # same server, other database
    dsn_kwargs = {"host": db._addr if isinstance(db._addr, str) else db._addr[0], "user": params.user}
    if not isinstance(db._addr, str):
        dsn_kwargs["port"] = db._addr[1]
    try:
        conns = [await asyncpg.connect(database="migration_race", **dsn_kwargs) for _ in range(3)]
        applied = await asyncio.gather(*(migrate(c) for c in conns))
        total = sorted(name for names in applied for name in names)
        assert total == [m.name for m in load_migrations()]  # each applied exactly once
        assert await migrate(conns[0]) == []  # and a second run does nothing
        rows = await conns[0].fetch("SELECT version FROM schema_migrations ORDER BY version")
        assert [r["version"] for r in rows] == [m.version for m in load_migrations()]
        for c in conns:
            await c.close()
    finally:
        await db.execute("DROP DATABASE IF EXISTS migration_race")


async def test_typed_identities_migration_converts_stored_rows(db, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Rows stored with the old string identities (sale_key, dedup_key, reversed_by)
    come out of migration 0003 as typed columns, one flag per (code, kind, evidence)."""
    import shutil

    from service.store.migrations import MIGRATIONS_DIR

    await db.execute("DROP DATABASE IF EXISTS migration_0003")
    await db.execute("CREATE DATABASE migration_0003")
    params = db._params
    dsn_kwargs = {"host": db._addr if isinstance(db._addr, str) else db._addr[0], "user": params.user}
    if not isinstance(db._addr, str):
        dsn_kwargs["port"] = db._addr[1]
    for name in ("0001_foundation.sql", "0002_settlements_flags.sql"):
        shutil.copy(MIGRATIONS_DIR / name, tmp_path / name)
    conn = await asyncpg.connect(database="migration_0003", **dsn_kwargs)
    try:
        await migrate(conn, tmp_path)
        ret = "6f1c0c8e-0000-4000-8000-000000000009"
        disp = "6f1c0c8e-0000-4000-8000-000000000008"
        code = "0104006123456786" + "21A:B"  # a GS1 serial may hold ':'
        unit_a, unit_b = "81234560000000000011", "81234560000000000028"
        await conn.executemany(
            """INSERT INTO consumptions (code, sale_key, setl_id, event_id, org, at, units, reversed_at,
                                         reversed_by)
               VALUES ($1, $2, $3, $4::uuid, 'P1', now(), $5, now(), $6)""",
            [(unit_a, "S1", "S1", None, 24, "reversal"), (unit_b, f"event:{disp}", None, disp, 6, ret)],
        )
        await conn.executemany(
            "INSERT INTO flags (kind, code, at, detail, dedup_key) VALUES ($1, $2, now(), 'd', $3)",
            [
                ("DIVERSION", code, f"DIVERSION:{code}:setl:S:9"),
                ("DUPLICATE", unit_a, f"DUPLICATE:{unit_a}:event:{disp}"),
            ],
        )
        await migrate(conn)
        sales = await conn.fetch(
            "SELECT code, sale_kind, sale_id, reversed_by_event::text AS by FROM consumptions ORDER BY code"
        )
        assert [tuple(r) for r in sales] == [(unit_a, "settlement", "S1", None), (unit_b, "event", disp, ret)]
        flags = await conn.fetch("SELECT kind, source_kind, source_id FROM flags ORDER BY kind")
        assert [tuple(r) for r in flags] == [("DIVERSION", "settlement", "S:9"), ("DUPLICATE", "event", disp)]
    finally:
        await conn.close()
        await db.execute("DROP DATABASE IF EXISTS migration_0003")


@pytest.mark.parametrize(
    ("setting", "value", "says"),
    [
        ("TRACE_PORT", "99999", "TRACE_PORT must be from 1 to 65535"),
        ("TRACE_WORKERS", "0", "TRACE_WORKERS must be at least 1"),
        ("TRACE_MAX_BODY_BYTES", "-5", "TRACE_MAX_BODY_BYTES must be at least 1"),
        ("TRACE_FLAG_PROMOTE_SECONDS", "0", "TRACE_FLAG_PROMOTE_SECONDS must be more than 0"),
        ("TRACE_KEY_CACHE_SECONDS", "nan", "TRACE_KEY_CACHE_SECONDS must be a finite number"),
        ("TRACE_FLAG_GRACE_HOURS", "1e11", "TRACE_FLAG_GRACE_HOURS must be at most 87600"),
        ("TRACE_FLAG_PROMOTE_SECONDS", "1e300", "TRACE_FLAG_PROMOTE_SECONDS must be at most 86400"),
        ("TRACE_KEY_CACHE_SECONDS", "86401", "TRACE_KEY_CACHE_SECONDS must be at most 86400"),
        ("TRACE_DB_ACQUIRE_SECONDS", "3601", "TRACE_DB_ACQUIRE_SECONDS must be at most 3600"),
        ("TRACE_DB_POOL_MAX", "0", "TRACE_DB_POOL_MAX must be at least 2"),  # the min, 2 by default
        ("TRACE_DB_POOL_MIN", "12", "TRACE_DB_POOL_MAX must be at least 12"),
        # a security probe: set but empty, the person hash was keyed with b""
        ("TRACE_PSN_SECRET", "", "TRACE_PSN_SECRET must be at least 16 bytes"),
        ("TRACE_PSN_SECRET", "short", "TRACE_PSN_SECRET must be at least 16 bytes"),
        # a newcomer's probe: a wrong schema path stopped the start with a traceback, after
        # the embedded servers had started; an empty host was bound as the server's default
        ("TRACE_EPCIS_SCHEMA", "/nonexistent/schema.json", "TRACE_EPCIS_SCHEMA must be a readable JSON file"),
        ("TRACE_EPCIS_SCHEMA", "/etc/hostname", "TRACE_EPCIS_SCHEMA must be a readable JSON file"),
        ("TRACE_HOST", " ", "TRACE_HOST must be a host name or address"),
        ("TRACE_SERVER", "gunicorn", "TRACE_SERVER must be one of uvicorn, granian"),
    ],
)
async def test_a_setting_out_of_range_stops_serve_before_anything_starts(
    tmp_path: Path, setting: str, value: str, says: str
) -> None:
    """Found by a probe: a port beyond 65535 bound another, 0 workers ran one, a promote
    period of 0 looped without pause, a body limit below 1 refused every body, NaN was
    taken as a cache time, pool sizes that asyncpg refuses failed with a traceback
    after the embedded servers had started, and so did a grace window of 1e11 hours
    (an OverflowError: each time setting now has an upper bound)."""
    env = {**_env(tmp_path / "data"), setting: value}
    if setting == "TRACE_DB_POOL_MIN":
        env["TRACE_DB_POOL_MAX"] = "4"
    done = await asyncio.to_thread(
        subprocess.run, [TRACECODE, "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert says in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "data" / "postgres").exists()  # nothing was started


async def test_an_embedded_postgres_that_does_not_start_is_one_line_naming_its_folder(tmp_path: Path) -> None:
    """Its data is there but PostgreSQL does not start (here a setting it refuses): serve
    stops with one line naming the folder and why, not a traceback (found by a probe,
    after a crash: a refused connection's traceback)."""
    data_dir = tmp_path / "data"
    made = await asyncio.to_thread(
        subprocess.run,
        [TRACECODE, "migrate"],
        env=_env(data_dir),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    with (data_dir / "postgres" / "postgresql.auto.conf").open("a") as conf:
        conf.write("shared_buffers = 'plenty'\n")
    done = await asyncio.to_thread(
        subprocess.run,
        [TRACECODE, "serve", "--port", str(_free_port())],
        env=_env(data_dir),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    said = done.stderr.strip().splitlines()[-1]
    assert str((data_dir / "postgres").resolve()) in said, done.stderr
    assert "postgresql.auto.conf" in said, done.stderr  # PostgreSQL's why
    assert "contains errors" in said, done.stderr


@pytest.mark.parametrize(("flag", "value"), [("--port", "0"), ("--workers", "0"), ("--host", " ")])
async def test_a_serve_flag_out_of_range_is_refused(tmp_path: Path, flag: str, value: str) -> None:
    done = await asyncio.to_thread(
        subprocess.run,
        [TRACECODE, "serve", flag, value],
        env=_env(tmp_path / "data"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert f"{flag} must be" in done.stderr, done.stderr
    assert not (tmp_path / "data" / "postgres").exists()


async def _cli(data_dir: Path, db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**_env(data_dir), "TRACE_DATABASE_URL": db_url}
    return await asyncio.to_thread(
        subprocess.run, [TRACECODE, *args], env=env, capture_output=True, text=True, timeout=60
    )


def _listed(out: str) -> list[list[str]]:
    """The rows of ``key list``'s table under its header."""
    header, *rows = out.splitlines()
    assert header.split() == ["KEY_ID", "ROLE", "ORG", "CREATED", "REVOKED", "NAME"], out
    return [row.split() for row in rows]


async def test_key_list_and_revoking_an_organisations_keys(admin: Api, db_url: str, tmp_path: Path) -> None:
    """``key list`` shows an admin the live keys, newest first, never a secret (``--all``
    the revoked ones too); ``key revoke --org`` revokes each live key of an organisation,
    and the running service refuses them."""
    for org_id in ("P1", "P2"):
        body = {"id": org_id, "name": org_id, "kind": "pharmacy", "region": "450100"}
        await admin.ok("POST", "/v1/orgs", body, 201)
    old, p1, p2, ins = [
        await admin.key_for(*spec) for spec in (("org", "P1"), ("org", "P1"), ("org", "P2"), ("insurer",))
    ]
    key_id = {k.key: k.key.split(".")[0] for k in (admin, old, p1, p2, ins)}
    await admin.ok("DELETE", f"/v1/keys/{key_id[old.key]}")

    listed = await _cli(tmp_path, db_url, "key", "list")
    assert listed.returncode == 0, listed.stderr
    rows = _listed(listed.stdout)
    assert [(r[0], r[1], r[2], r[4]) for r in rows] == [
        (key_id[ins.key], "insurer", "-", "-"),
        (key_id[p2.key], "org", "P2", "-"),
        (key_id[p1.key], "org", "P1", "-"),
        (key_id[admin.key], "admin", "-", "-"),
    ]
    assert not any(k.split(".", 1)[1] in listed.stdout for k in key_id)
    mine = await _cli(tmp_path, db_url, "key", "list", "--org", "P1", "--all")
    assert [(r[0], r[4] != "-") for r in _listed(mine.stdout)] == [
        (key_id[p1.key], False),
        (key_id[old.key], True),
    ]
    insurers = await _cli(tmp_path, db_url, "key", "list", "--role", "insurer")
    assert [r[0] for r in _listed(insurers.stdout)] == [key_id[ins.key]]
    unknown = await _cli(tmp_path, db_url, "key", "list", "--org", "NOPE")
    assert unknown.returncode == 1
    assert "unknown organisation NOPE" in unknown.stderr

    assert (await p1.get("/v1/codes/81234560000000000011/verify")).status_code == 200  # cached
    revoked = await _cli(tmp_path, db_url, "key", "revoke", "--org", "P1")
    assert revoked.returncode == 0, revoked.stderr
    assert revoked.stdout.splitlines() == [f"key {key_id[p1.key]} revoked"]
    status = 0
    for _ in range(50):  # announced by the database to this app, which runs elsewhere
        status = (await p1.get("/v1/codes/81234560000000000011/verify")).status_code
        if status == 401:
            break
        await asyncio.sleep(0.02)
    assert status == 401
    assert (await p2.get("/v1/codes/81234560000000000011/verify")).status_code == 200
    none_left = await _cli(tmp_path, db_url, "key", "list", "--org", "P1")
    assert none_left.stdout.startswith("no live keys")

    again = await _cli(tmp_path, db_url, "key", "revoke", "--org", "P1")
    assert (again.returncode, again.stdout.strip()) == (0, "organisation P1 has no live keys")
    nowhere = await _cli(tmp_path, db_url, "key", "revoke", "--org", "NOPE")
    assert (nowhere.returncode, nowhere.stderr.strip()) == (1, "no organisation NOPE")
    for args in ((), (key_id[p2.key], "--org", "P2")):
        wrong = await _cli(tmp_path, db_url, "key", "revoke", *args)
        assert wrong.returncode == 2, args
    assert (await p2.get("/v1/codes/81234560000000000011/verify")).status_code == 200


@pytest.mark.parametrize("server", ["uvicorn", "granian"])
async def test_serve_on_a_port_in_use_says_so_in_one_line_and_starts_nothing(
    tmp_path: Path, server: str
) -> None:
    """Found by a newcomer's walkthrough: uvicorn printed "serving on" and then the bind
    error (exit 3), Granian a 77-line traceback. One line names the port and how to
    choose another, exit 1, before any embedded server starts."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = await asyncio.to_thread(
            subprocess.run,
            [TRACECODE, "serve", "--port", str(port), "--server", server],
            env=_env(tmp_path / "data"),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1, done.stderr
    said = f"port {port} on 127.0.0.1 is in use (Address already in use)"
    wanted = [f"{said}: choose another with --port or TRACE_PORT"]
    assert done.stderr.strip().splitlines() == wanted, done.stderr
    assert not (tmp_path / "data" / "postgres").exists()
