"""Who used the CPU, read from /proc: the service's process tree, its workers and the
connections each holds, a local PostgreSQL, the whole machine. Linux only; each reader
answers None (or nothing) where /proc does not say."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds of the process and its reaped children)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    # after "pid (comm) ": state ppid ... utime(11) stime(12) cutime(13) cstime(14)
    return int(fields[1]), sum(int(f) for f in fields[11:15]) / CLK_TCK


def processes() -> dict[int, tuple[int, float]]:
    """Every process: pid -> (parent pid, CPU seconds)."""
    return {int(p.name): s for p in Path("/proc").iterdir() if p.name.isdigit() and (s := stat(int(p.name)))}


def tree(root: int, found: dict[int, tuple[int, float]] | None = None) -> list[int]:
    """``root`` and its descendants ([] if ``root`` is gone)."""
    found = processes() if found is None else found
    if root not in found:
        return []
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in found.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def tree_cpu(root: int | None) -> float | None:
    """CPU seconds used so far by ``root`` and its descendants (None if it is gone)."""
    if root is None:
        return None
    found = processes()
    pids = tree(root, found)
    return sum(found[pid][1] for pid in pids) if pids else None


def machine_cpu() -> float | None:
    """Busy CPU seconds of the whole machine since boot (all processes, all CPUs),
    including the time the hypervisor took for others (steal): on a shared virtual
    machine that shows as CPU none of the measured processes used."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    # cpu user nice system idle iowait irq softirq steal ...; guest time is inside user
    busy = [int(first[i]) for i in (1, 2, 3, 6, 7, 8)]
    return sum(busy) / CLK_TCK


def used(before: dict[str, float | None], after: dict[str, float | None]) -> dict[str, float | None]:
    """CPU seconds each part used between two samples of {part: CPU seconds so far} that
    include ``machine`` (``machine_cpu``), and ``others``: what the machine used beyond
    the parts (None unless every part is known)."""
    out: dict[str, float | None] = {}
    for name, value in after.items():
        old = before[name]
        out[name] = None if value is None or old is None else value - old
    machine = out.pop("machine")
    known = [v for v in out.values() if v is not None]
    out["others"] = max(0.0, machine - sum(known)) if machine is not None and len(known) == len(out) else None
    out["machine"] = machine
    return out


def app_workers(server_pid: int) -> list[int]:
    """The worker processes of ``tracecode serve`` (uvicorn spawns them, Granian forks
    them): its Python descendants, not multiprocessing's resource tracker. With one
    worker, uvicorn serves in the main process: [server_pid]."""
    workers = []
    for pid in tree(server_pid)[1:]:
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
            if Path(argv[0]).name.startswith("python") and "resource_tracker" not in " ".join(argv):
                workers.append(pid)
    return workers or [server_pid]


def connections_per_worker(server_pid: int, port: int) -> list[int]:
    """Established client connections to ``port`` that each worker process holds, most
    first (the workers share one listening socket; the kernel decides who accepts)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()  # sl local remote state ... inode(9)
                if int(cols[1].rsplit(":", 1)[1], 16) == port and cols[3] == "01":
                    inodes.add(cols[9])
    counts = []
    for pid in app_workers(server_pid):
        held = 0
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    link = os.readlink(fd)
                    held += link.startswith("socket:[") and link[8:-1] in inodes
        counts.append(held)
    return sorted(counts, reverse=True)


def local_postmaster(backend_pid: int) -> int | None:
    """The parent of a PostgreSQL backend (``SELECT pg_backend_pid()``), when that
    backend is a process on this machine."""
    with contextlib.suppress(OSError):
        if Path(f"/proc/{backend_pid}/comm").read_text().startswith("postgres"):
            found = stat(backend_pid)
            return found[0] if found else None
    return None
