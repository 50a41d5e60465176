"""The tracecode command: serve, migrate, and manage API keys."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from service.config import DEFAULT_SERVER, SERVERS, Settings, bind_host, in_range, setup_logging

if TYPE_CHECKING:
    from service.core.auth import KeyRecord

log = logging.getLogger("tracecode")


def resolve_servers(settings: Settings, *, need_redis: bool = True) -> Settings:
    """Start the embedded PostgreSQL (and Valkey) when no URL is configured, and publish
    the URLs in the environment so worker processes use the same servers."""
    from service import embedded

    try:
        if not settings.database_url:
            url = embedded.start_postgres(settings.data_dir)
            log.info("embedded PostgreSQL in %s", settings.data_dir / "postgres")
            settings = replace(settings, database_url=url)
            os.environ["TRACE_DATABASE_URL"] = url
        if need_redis and not settings.redis_url:
            url = embedded.start_redis(settings.data_dir / "valkey")
            log.info("embedded Valkey in %s", settings.data_dir / "valkey")
            settings = replace(settings, redis_url=url)
            os.environ["TRACE_REDIS_URL"] = url
    except embedded.EmbeddedError as exc:  # one line naming the folder, not a traceback
        raise SystemExit(str(exc)) from None
    return settings


async def _migrate(url: str) -> list[str]:
    import asyncpg

    from service.store.migrations import migrate

    conn = await asyncpg.connect(url)
    try:
        return await migrate(conn)
    finally:
        await conn.close()


def cmd_migrate(settings: Settings, _: argparse.Namespace) -> int:
    settings = resolve_servers(settings, need_redis=False)
    assert settings.database_url
    applied = asyncio.run(_migrate(settings.database_url))
    print("applied: " + ", ".join(applied) if applied else "database is up to date")
    return 0


GRACEFUL_SECONDS = 10


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)  # a stop that was asked for: atexit hooks run


def _metrics_dir(parent: Path) -> Path:
    """A new folder for this serve's workers' metrics under ``parent``; those of serves
    that are no longer running are removed."""
    parent.mkdir(parents=True, exist_ok=True)
    for old in parent.iterdir():
        if old.is_dir() and old.name.isdigit() and not Path(f"/proc/{old.name}").exists():
            shutil.rmtree(old, ignore_errors=True)
        elif old.is_file():  # the flat layout of earlier releases
            old.unlink(missing_ok=True)
    mine = parent / str(os.getpid())
    shutil.rmtree(mine, ignore_errors=True)
    mine.mkdir()
    return mine


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    server = args.server or settings.server  # each checked: argparse's choices, Settings
    # checked before anything starts
    workers = in_range("--workers", args.workers, 1) if args.workers is not None else settings.workers
    port = in_range("--port", args.port, 1, 65535) if args.port is not None else settings.port
    host = bind_host("--host", args.host) if args.host is not None else settings.host
    _port_free(host, port)
    if "TRACE_PSN_SECRET" not in os.environ:
        log.warning(
            "TRACE_PSN_SECRET is not set: insured person numbers are keyed with a development "
            "secret. Set a long random secret in production, and keep it: changing it unlinks "
            "earlier settlements of the same person."
        )
    embedded_postgres, embedded_valkey = not settings.database_url, not settings.redis_url
    settings = resolve_servers(settings)
    assert settings.database_url
    applied = asyncio.run(_migrate(settings.database_url))
    if applied:
        log.info("migrations applied: %s", ", ".join(applied))
    if workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        # each worker writes its metrics here; /metrics adds them up. A folder of this
        # serve's own: a second serve on the same data (which then fails to bind) used to
        # empty the running one's, blanking its /metrics (found by a probe)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(_metrics_dir(settings.data_dir / "prometheus"))
    print(f"tracecode serving on http://{host}:{port} ({workers} worker(s), {server})", flush=True)
    # the embedded servers are watched while the service serves, and only then
    unwatch: Callable[[], None] = lambda: None  # noqa: E731
    if embedded_postgres or embedded_valkey:
        from service import embedded

        unwatch = embedded.supervise(settings.data_dir, postgres=embedded_postgres, valkey=embedded_valkey)
    try:
        (_granian if server == "granian" else _uvicorn)(host, port, workers, settings.log_level)
    finally:
        unwatch()  # before the exit hooks stop the embedded servers, not to restart them
    return 0


def _port_free(host: str, port: int) -> None:
    """SystemExit naming the port when another process listens there, before anything
    starts: uvicorn said so after "serving on" with exit 3, and Granian with a long
    traceback (found by a newcomer's walkthrough)."""
    import errno
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind
        try:
            probe.bind((host, port))
        except OSError as exc:
            # in use: said here; anything else (a host name, a privileged port) the server says
            if exc.errno == errno.EADDRINUSE:
                choose = "choose another with --port or TRACE_PORT"
                raise SystemExit(f"port {port} on {host} is in use ({exc.strerror}): {choose}") from None


def _uvicorn(host: str, port: int, workers: int, log_level: str) -> None:
    import uvicorn

    # uvicorn stops gracefully on SIGTERM, then raises the signal again to whatever
    # handler was there before. The default one ends the process at once, skipping the
    # atexit hooks that stop the embedded PostgreSQL and Valkey (SIGINT raises
    # KeyboardInterrupt, which runs them). So a SIGTERM exits like Ctrl-C does.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        access_log=False,
        server_header=False,
        # requests in flight may finish, then the rest (a console's live stream) is cut
        timeout_graceful_shutdown=GRACEFUL_SECONDS,
    )


def _granian(host: str, port: int, workers: int, log_level: str) -> None:
    """Granian: its HTTP/1.1 and the sockets in Rust, the app in each worker's event loop.
    On SIGINT or SIGTERM it stops its workers (each given GRACEFUL_SECONDS) and returns,
    so the exit hooks stop the embedded servers."""
    from granian import Granian
    from granian.constants import Interfaces
    from granian.log import LogLevels

    Granian(
        "service.app:create_app",
        factory=True,
        address=host,
        port=port,
        interface=Interfaces.ASGI,
        workers=workers,
        log_level=LogLevels(log_level.lower()),
        log_access=False,
        workers_kill_timeout=GRACEFUL_SECONDS,
        respawn_failed_workers=True,  # a worker that dies is replaced, as uvicorn does
    ).serve()


async def _create_key(url: str, role: str, org: str | None, name: str | None = None) -> tuple[str, str]:
    import asyncpg

    from service.core.auth import Role, new_key, token_hash
    from service.store import registry
    from service.store.migrations import migrate

    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
        if org is not None and await registry.get_org(conn, org) is None:
            raise SystemExit(f"unknown organisation {org}; register it first (POST /v1/orgs)")
        key_id, secret = new_key()
        await registry.insert_key(conn, key_id, token_hash(secret), Role(role), org, name)
        return key_id, secret
    finally:
        await conn.close()


async def _revoke_key(url: str, key_id: str) -> bool:
    import asyncpg

    from service.store import registry

    conn = await asyncpg.connect(url)
    try:
        return await registry.revoke_key(conn, key_id) is not None
    finally:
        await conn.close()


async def _revoke_org_keys(url: str, org: str) -> list[str] | None:
    import asyncpg

    from service.store import registry

    conn = await asyncpg.connect(url)
    try:
        if await registry.get_org(conn, org) is None:
            return None
        async with conn.transaction():
            return [key_id for key_id, _ in await registry.revoke_org_keys(conn, org)]
    finally:
        await conn.close()


async def _list_keys(url: str, org: str | None, role: str | None, everything: bool) -> list[KeyRecord]:
    import asyncpg

    from service.core.auth import Role
    from service.store import registry

    conn = await asyncpg.connect(url)
    try:
        if org is not None and await registry.get_org(conn, org) is None:
            raise SystemExit(f"unknown organisation {org}")
        return await registry.list_keys(
            conn, org=org, role=Role(role) if role else None, revoked=None if everything else False
        )
    finally:
        await conn.close()


def _when(at: datetime | None) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if at is not None else "-"


def cmd_key_list(settings: Settings, args: argparse.Namespace) -> int:
    settings = resolve_servers(settings, need_redis=False)
    assert settings.database_url
    keys = asyncio.run(_list_keys(settings.database_url, args.org, args.role, args.all))
    if not keys:
        print("no keys" if args.all else "no live keys (--all lists revoked ones too)")
        return 0
    rows = [("KEY_ID", "ROLE", "ORG", "CREATED", "REVOKED", "NAME")]
    rows += [
        (k.key_id, k.role.value, k.org or "-", _when(k.created_at), _when(k.revoked_at), k.name or "-")
        for k in keys
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def cmd_key_create(settings: Settings, args: argparse.Namespace) -> int:
    if (args.role == "org") != (args.org is not None):
        print("an org key needs --org; other roles take none", file=sys.stderr)
        return 2
    settings = resolve_servers(settings, need_redis=False)
    assert settings.database_url
    name = args.name.strip() if args.name else None
    if args.name is not None and not (name and len(name) <= 200):
        print("--name: 1 to 200 characters", file=sys.stderr)
        return 2
    key_id, secret = asyncio.run(_create_key(settings.database_url, args.role, args.org, name))
    print(f"key {key_id} created (role {args.role}); the secret below is shown only once:")
    print(secret)
    return 0


def cmd_key_revoke(settings: Settings, args: argparse.Namespace) -> int:
    if (args.key_id is None) == (args.org is None):
        print("give a KEY_ID or --org ORG (not both)", file=sys.stderr)
        return 2
    settings = resolve_servers(settings, need_redis=False)
    assert settings.database_url
    if args.org is not None:
        revoked = asyncio.run(_revoke_org_keys(settings.database_url, args.org))
        if revoked is None:
            print(f"no organisation {args.org}", file=sys.stderr)
            return 1
        for key_id in revoked:
            print(f"key {key_id} revoked")
        if not revoked:
            print(f"organisation {args.org} has no live keys")
        return 0
    if not asyncio.run(_revoke_key(settings.database_url, args.key_id)):
        print(f"no key {args.key_id}", file=sys.stderr)
        return 1
    print(f"key {args.key_id} revoked")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tracecode", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP service (starts embedded servers if needed)")
    serve.add_argument("--host", default=None, help="bind address (TRACE_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (TRACE_PORT, default 8000)")
    serve.add_argument("--workers", type=int, default=None, help="worker processes (TRACE_WORKERS)")
    serve.add_argument(
        "--server", choices=SERVERS, default=None, help=f"HTTP server (TRACE_SERVER, {DEFAULT_SERVER})"
    )
    serve.set_defaults(run=cmd_serve)
    sub.add_parser("migrate", help="apply database migrations").set_defaults(run=cmd_migrate)
    key = sub.add_parser("key", help="manage API keys").add_subparsers(dest="key_command", required=True)
    create = key.add_parser("create", help="create a key; its secret is the last line printed")
    create.add_argument("--role", required=True, choices=["org", "insurer", "investigator", "admin"])
    create.add_argument("--org", default=None, help="the organisation of an org key")
    create.add_argument(
        "--name", default=None, help="who holds it (a person, a system): a flag's history names them"
    )
    create.set_defaults(run=cmd_key_create)
    revoke = key.add_parser("revoke", help="revoke a key, or every live key of an organisation")
    revoke.add_argument("key_id", nargs="?", default=None)
    revoke.add_argument("--org", default=None, help="revoke every live key of this organisation")
    revoke.set_defaults(run=cmd_key_revoke)
    listing = key.add_parser("list", help="list the live keys, newest first (never their secrets)")
    listing.add_argument("--org", default=None, help="only this organisation's keys")
    listing.add_argument("--role", default=None, choices=["org", "insurer", "investigator", "admin"])
    listing.add_argument("--all", action="store_true", help="revoked keys too")
    listing.set_defaults(run=cmd_key_list)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    setup_logging()
    return int(args.run(Settings.from_env(), args))


if __name__ == "__main__":
    sys.exit(main())
