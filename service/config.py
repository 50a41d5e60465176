"""Configuration, read once from the environment (``TRACE_*`` variables)."""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import platformdirs


def _int(name: str, default: int, low: int, high: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise SystemExit(f"{name} must be an integer, got {raw!r}") from exc
    return in_range(name, value, low, high)


def in_range(name: str, value: int, low: int, high: int | None = None) -> int:
    """``value``, or SystemExit naming ``name`` when it is outside low..high."""
    if value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise SystemExit(f"{name} must be {bounds}, got {value}")
    return value


def _flag(name: str) -> bool:
    """An on/off setting: 1/true/yes/on or 0/false/no/off (empty: off)."""
    raw = (os.environ.get(name) or "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise SystemExit(f"{name} must be on or off (1/true/yes/on, 0/false/no/off), got {raw!r}")


MIN_SECRET_BYTES = 16


def _secret(name: str, default: str) -> bytes:
    """A secret: ``default`` when unset (development: ``serve`` warns), and refused when
    set but short, an empty one above all (a unit file's ``=$UNSET``): a short key makes
    the keyed hashes of insured persons' numbers guessable (found by a probe)."""
    raw = os.environ.get(name)
    if raw is None:
        return default.encode()
    secret = raw.encode()
    if len(secret) < MIN_SECRET_BYTES:
        raise SystemExit(
            f"{name} must be at least {MIN_SECRET_BYTES} bytes (a long random secret), "
            f"got {len(secret)}; leave it unset only in development"
        )
    return secret


LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def bind_host(name: str, raw: str) -> str:
    """A bind address, or SystemExit naming ``name``: set but empty (or blank), it is
    refused, not bound as the server's own default (found by a probe)."""
    if not raw.strip():
        raise SystemExit(f"{name} must be a host name or address, got {raw!r}")
    return raw.strip()


def _choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = os.environ.get(name) or default
    if raw not in choices:
        raise SystemExit(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw


def _json_file(name: str) -> Path | None:
    """A JSON file that exists and reads (GS1's EPCIS schema): a wrong path stopped the
    start with a traceback after the embedded servers had started (found by a probe)."""
    raw = os.environ.get(name)
    if not raw:
        return None
    path = Path(raw).expanduser()
    try:
        json.loads(path.read_bytes())
    except OSError as exc:
        raise SystemExit(f"{name} must be a readable JSON file, got {raw!r}: {exc.strerror}") from exc
    except ValueError as exc:
        raise SystemExit(f"{name} must be a readable JSON file, got {raw!r}: not JSON ({exc})") from exc
    return path


def _log_level(name: str, default: str) -> str:
    raw = os.environ.get(name) or default
    if raw.lower() not in LOG_LEVELS:
        raise SystemExit(f"{name} must be one of {', '.join(LOG_LEVELS)}, got {raw!r}")
    return raw.lower()


def _positive(name: str, default: float, high: float) -> float:
    """A number above 0: a wait of 0 would answer every request that waits at all with a
    503 (TRACE_DB_ACQUIRE_SECONDS), a period of 0 would loop without pause
    (TRACE_FLAG_PROMOTE_SECONDS: a probe saw 1,600 transactions a second, idle)."""
    value = _float(name, default, high)
    if value == 0:
        raise SystemExit(f"{name} must be more than 0")
    return value


DAY_SECONDS = 24 * 3600
TEN_YEARS_HOURS = 10 * 365 * 24


def _float(name: str, default: float, high: float) -> float:
    """A finite number from 0 to ``high``: every time setting has a sane upper bound, so
    that no value taken here fails later (TRACE_FLAG_GRACE_HOURS=1e11 passed, then the
    app failed at startup: a timedelta of it overflows)."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise SystemExit(f"{name} must be a number, got {raw!r}") from exc
    if not math.isfinite(value):
        raise SystemExit(f"{name} must be a finite number, got {raw!r}")
    if value < 0:
        raise SystemExit(f"{name} must not be negative, got {raw!r}")
    if value > high:
        raise SystemExit(f"{name} must be at most {high:g}, got {raw!r}")
    return value


RateUnit = Literal["second", "minute", "hour", "day"]
RateLimit = tuple[RateUnit, int]
# requests per key, by role: far above what the test suite or the load tests send
DEFAULT_RATE_LIMITS = {
    "org": "500/second",
    "insurer": "2000/second",
    "investigator": "500/second",
    "admin": "2000/second",
}


def rate_limit(name: str, raw: str) -> RateLimit | None:
    """``"600/minute"`` → ``("minute", 600)``; a bare number is per second; ``"off"`` or
    a count of 0 (``"0"``, ``"0/minute"``) → None (no limit: "0" always meant that, and
    "0/second" refused every request of the role, found by a probe)."""
    text = raw.strip().lower()
    if text == "off":
        return None
    count, _, unit = text.partition("/")
    unit = unit or "second"
    if not (count.isascii() and count.isdigit()) or unit not in get_args(RateUnit):
        raise SystemExit(f"{name} must be N/second, N/minute, N/hour, N/day or off, got {raw!r}")
    if int(count) == 0:
        return None
    return unit, int(count)  # type: ignore[return-value]


def rate_limit_variable(role: str) -> str:
    """The environment variable that sets ``role``'s rate limit."""
    return f"TRACE_RATE_LIMIT_{role.upper()}"


def _rate_limits() -> dict[str, RateLimit | None]:
    return {
        role: rate_limit(rate_limit_variable(role), os.environ.get(rate_limit_variable(role)) or default)
        for role, default in DEFAULT_RATE_LIMITS.items()
    }


SERVERS = ("uvicorn", "granian")
DEFAULT_SERVER = "uvicorn"
# the service's log lines but a request's (_Lines)
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
ACCESS_LOGGER = "tracecode.access"  # a line a request, its message JSON (api/requestlog.py)


class _Lines(logging.Formatter):
    """A request's line as its JSON alone, so a log shipper reads each as one object;
    every other record with its time, level and logger (LOG_FORMAT)."""

    def format(self, record: logging.LogRecord) -> str:
        return record.getMessage() if record.name == ACCESS_LOGGER else super().format(record)


def setup_logging() -> None:
    """The process's logging on standard error, at INFO until TRACE_LOG_LEVEL narrows the
    service's own loggers; a no-op where it is set up already."""
    handler = logging.StreamHandler()
    handler.setFormatter(_Lines(LOG_FORMAT))
    logging.basicConfig(level=logging.INFO, handlers=[handler])


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the service can be told from outside.

    ``database_url`` / ``redis_url`` left empty mean "start a private embedded server in
    ``data_dir``".
    """

    database_url: str | None
    redis_url: str | None
    data_dir: Path
    host: str
    port: int
    workers: int
    server: str  # the HTTP server that runs the app: "uvicorn" or "granian" (TRACE_SERVER)
    db_pool_min: int
    db_pool_max: int
    max_body_bytes: int
    psn_secret: bytes
    log_level: str
    key_cache_seconds: float
    flag_grace_hours: float  # how long a suspicion a late upload may explain stays pending
    flag_promote_seconds: float  # how often pending flags past their window are opened
    # requests each API key may send, by role (TRACE_RATE_LIMIT_<ROLE>); None: unlimited
    rate_limits: dict[str, RateLimit | None]
    # GS1's EPCIS JSON Schema (EPCIS-JSON-Schema.json): when set, captures are validated
    # against it; otherwise only the fields the service reads are checked
    epcis_schema: Path | None = None
    # the console's session and CSRF cookies marked Secure: sent only over HTTPS (set it
    # when a TLS proxy serves the console)
    secure_cookies: bool = False
    # how long a request waits for a pooled connection before it is answered 503
    db_acquire_seconds: float = 10.0

    @classmethod
    def from_env(cls) -> Settings:
        data_dir = os.environ.get("TRACE_DATA_DIR") or platformdirs.user_data_dir("tracecode")
        return cls(
            database_url=os.environ.get("TRACE_DATABASE_URL") or None,
            redis_url=os.environ.get("TRACE_REDIS_URL") or None,
            data_dir=Path(data_dir).expanduser(),
            host=bind_host("TRACE_HOST", os.environ.get("TRACE_HOST", "127.0.0.1")),
            port=_int("TRACE_PORT", 8000, 1, 65535),
            workers=_int("TRACE_WORKERS", 1, 1),
            server=_choice("TRACE_SERVER", DEFAULT_SERVER, SERVERS),
            db_pool_min=(pool_min := _int("TRACE_DB_POOL_MIN", 2, 0)),
            db_pool_max=_int("TRACE_DB_POOL_MAX", max(10, pool_min), max(1, pool_min)),
            max_body_bytes=_int("TRACE_MAX_BODY_BYTES", 8 * 1024 * 1024, 1),
            psn_secret=_secret("TRACE_PSN_SECRET", "dev-only-change-me"),
            log_level=_log_level("TRACE_LOG_LEVEL", "info"),
            key_cache_seconds=_float("TRACE_KEY_CACHE_SECONDS", 60.0, DAY_SECONDS),
            flag_grace_hours=_float("TRACE_FLAG_GRACE_HOURS", 48.0, TEN_YEARS_HOURS),
            flag_promote_seconds=_positive("TRACE_FLAG_PROMOTE_SECONDS", 60.0, DAY_SECONDS),
            epcis_schema=_json_file("TRACE_EPCIS_SCHEMA"),
            rate_limits=_rate_limits(),
            secure_cookies=_flag("TRACE_SECURE_COOKIES"),
            db_acquire_seconds=_positive("TRACE_DB_ACQUIRE_SECONDS", 10.0, 3600),
        )
