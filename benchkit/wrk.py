"""wrk, a native HTTP load generator (Debian's package ``wrk``), beside the Python ones:
its own C threads and keep-alive connections cost far less CPU per request than Locust
or an asyncio client, so on a shared machine it gives a truer ceiling for one operation."""

from __future__ import annotations

import re
import resource
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Result:
    rate: float  # requests/s
    p50_ms: float
    p99_ms: float
    errors: int  # socket errors and answers other than 2xx/3xx
    cpu_seconds: float  # wrk's own CPU time
    requests: int  # requests answered in all
    seconds: float  # the run's length as wrk measured it


def available() -> bool:
    return shutil.which("wrk") is not None


def script(path: Path, requests: list[tuple[str, str]]) -> Path:
    """A wrk script that sends GET ``path`` with ``Authorization: Bearer key`` for each
    (path, key) in turn, round and round."""
    listed = ",\n".join(f'  {{"{p}", "{k}"}}' for p, k in requests)
    path.write_text(
        f"""requests = {{
{listed}
}}
i = 0
request = function()
  i = i % #requests + 1
  return wrk.format("GET", requests[i][1], {{["Authorization"] = "Bearer " .. requests[i][2]}})
end
"""
    )
    return path


def post_script(path: Path, target: str, key: str, bodies: Path, threads: int) -> Path:
    """A wrk script that POSTs each line of the file ``bodies`` to ``target`` once, with
    ``Authorization: Bearer key``: the lines are dealt to the ``threads`` threads in turn
    (line n to thread n mod threads), and a thread that has sent all of its lines starts
    again from its first (so more requests than lines sends some again)."""
    path.write_text(
        f"""local counter = 0
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end
function init(args)
  bodies = {{}}
  local n = 0
  for line in io.lines("{bodies}") do
    if n % {threads} == id then bodies[#bodies + 1] = line end
    n = n + 1
  end
  i = 0
end
local headers = {{["Authorization"] = "Bearer {key}", ["Content-Type"] = "application/json"}}
request = function()
  i = i % #bodies + 1
  return wrk.format("POST", "{target}", headers, bodies[i])
end
"""
    )
    return path


def run(url: str, *, seconds: int, connections: int, threads: int = 2, lua: Path | None = None) -> Result:
    """wrk against ``url`` (the script's paths replace its path) for ``seconds``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    command += ["-s", str(lua)] if lua else []
    out = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout  # noqa: S603
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return Result(
        rate=float(_find(r"Requests/sec:\s+([\d.]+)", out)[0]),
        p50_ms=_ms(*_find(r"^\s+50%\s+([\d.]+)(us|ms|s|m)\s*$", out)),
        p99_ms=_ms(*_find(r"^\s+99%\s+([\d.]+)(us|ms|s|m)\s*$", out)),
        errors=sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
        + sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out)),
        cpu_seconds=after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime,
        requests=int(_find(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)[0]),
        seconds=_ms(*_find(r"\d+ requests in ([\d.]+)(us|ms|s|m)", out)) / 1000,
    )


def _find(pattern: str, text: str) -> tuple[str, ...]:
    found = re.search(pattern, text, re.M)
    if found is None:
        raise RuntimeError(f"wrk's output has no {pattern!r}:\n{text}")
    return found.groups()


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]
