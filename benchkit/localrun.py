"""Servers on this machine for the benchmarks and the tests that need real ones:
``tracecode serve`` as a child process (several workers, a real port), a throwaway
embedded PostgreSQL, and the service's own migrations applied to it."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from service.config import DEFAULT_RATE_LIMITS, rate_limit_variable
from service.store.migrations import migrate as apply_migrations

TRACECODE = Path(sys.executable).parent / "tracecode"
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ready(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as s:
        s.sendall(b"GET /health/ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        return s.recv(64).startswith(b"HTTP/1.1 200")
    return False


def start_service(
    env: dict[str, str], port: int, log_path: Path, *, workers: int = 1, timeout: float = 90
) -> subprocess.Popen[bytes]:
    """Start the service and wait until /health/ready answers 200. Raises RuntimeError
    (with the end of its log) if it exits or is not ready in time; it is then stopped.

    Benchmarks and load tests measure capacity, not the per-key rate limiter: unless
    ``env`` says otherwise, the service they start has no rate limits."""
    env = {**{rate_limit_variable(role): "off" for role in DEFAULT_RATE_LIMITS}, **env}
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(  # noqa: S603 - our own console script
            [str(TRACECODE), "serve", "--port", str(port), "--workers", str(workers)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the service exited early:\n{log_path.read_text()[-3000:]}")
        if _ready(port):
            return proc
        time.sleep(0.2)
    stop_service(proc)
    raise RuntimeError(f"the service was not ready within {timeout:.0f} s:\n{log_path.read_text()[-3000:]}")


def stop_service(proc: subprocess.Popen[bytes], grace: float = 15) -> None:
    """SIGINT (a graceful stop, which also stops embedded servers), then SIGKILL."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def create_admin_key(env: dict[str, str]) -> str:
    """A new admin key through the CLI, as a new user makes the first one."""
    done = subprocess.run(  # noqa: S603 - our own console script
        [str(TRACECODE), "key", "create", "--role", "admin"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip().splitlines()[-1]


def throwaway_postgres(prefix: str = "tracecode-bench-pg-") -> str:
    """Start an embedded PostgreSQL in a new temporary folder; return its URL. It is
    stopped and the folder deleted at exit (after a service started later has stopped)."""
    from service.embedded import start_postgres

    return start_postgres(Path(tempfile.mkdtemp(prefix=prefix)), throwaway=True)


async def migrate(url: str) -> list[str]:
    """Apply the service's migrations (``service.store.migrations``) to the database at
    ``url``; return the names applied now."""
    conn = await asyncpg.connect(url)
    try:
        return await apply_migrations(conn)
    finally:
        await conn.close()


def run_bench(
    database_url: str | None,
    prefix: str,
    run: Callable[[str, Path], Coroutine[Any, Any, T]],
) -> T:
    """A benchmark's set-up and tear-down: the given database (or a throwaway embedded
    one), migrated, and a scratch folder for the service it starts; ``run(url, folder)``."""
    url = database_url or throwaway_postgres()
    asyncio.run(migrate(url))
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        return asyncio.run(run(url, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
