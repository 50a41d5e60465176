"""``tracecode serve`` as a user starts it, on its own embedded PostgreSQL and Valkey in a
folder of the test's, for the tests that stop, kill or signal it. Whatever the test did,
nothing is left running afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from benchkit.localrun import free_port, start_service
from service.embedded import redis_answers, stop_postgres


@dataclass
class Serving:
    process: subprocess.Popen[bytes]
    port: int
    env: dict[str, str]  # the service's environment (for the CLI against its servers)
    data_dir: Path  # its embedded servers' data: postgres/, valkey/
    log: Path

    @property
    def valkey_dir(self) -> Path:
        return self.data_dir / "valkey"


def serve_env(data_dir: Path, log_level: str = "warning") -> dict[str, str]:
    """The environment of a serve on embedded servers in ``data_dir``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TRACE_DATABASE_URL", "TRACE_REDIS_URL", "PROMETHEUS_MULTIPROC_DIR")
    }
    env.update({"TRACE_DATA_DIR": str(data_dir), "TRACE_LOG_LEVEL": log_level})
    return env


@contextlib.asynccontextmanager
async def serving(
    tmp_path: Path,
    workers: int = 1,
    server: str | None = None,
    log_level: str = "warning",
    extra_env: dict[str, str] | None = None,
) -> AsyncIterator[Serving]:
    data_dir = tmp_path / "data"
    env = serve_env(data_dir, log_level)
    if server is not None:
        env["TRACE_SERVER"] = server
    env.update(extra_env or {})
    log = tmp_path / "service.log"
    port = free_port()
    process = await asyncio.to_thread(start_service, env, port, log, workers=workers)
    try:
        yield Serving(process, port, env, data_dir, log)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                await asyncio.to_thread(process.wait, 30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        await stop_embedded(data_dir)


async def stop_embedded(data_dir: Path) -> None:
    """Stop the embedded PostgreSQL and Valkey in ``data_dir``, if they run."""
    await asyncio.to_thread(stop_postgres, data_dir)
    if await asyncio.to_thread(redis_answers, data_dir / "valkey"):
        import redis

        sock = str(data_dir / "valkey" / "valkey.sock")
        with contextlib.suppress(redis.RedisError):
            redis.Redis(unix_socket_path=sock).shutdown(nosave=True)
