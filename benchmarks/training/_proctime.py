"""CPU time of a process and all its live descendants, read from /proc (Linux).

Wall-clock throughput on a shared machine depends on what else runs; the CPU seconds a pipeline
spends per sample (summed over its main process and worker processes) do not, so the benchmark
reports both. Used by both sides of the benchmark (plain standard library, no volfnet import).
"""

from __future__ import annotations

import os

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            text = handle.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # fields after "pid (comm) "


def tree_cpu_seconds(root: int | None = None) -> float:
    """User + system CPU seconds of ``root`` (default: this process) and its live descendants."""
    root = os.getpid() if root is None else root
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat(int(name))
        if fields is None:
            continue
        parents[int(name)] = int(fields[1])  # ppid
        times[int(name)] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime
    total, frontier = 0.0, [root]
    seen = set()
    while frontier:
        pid = frontier.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += times.get(pid, 0.0)
        frontier.extend(child for child, parent in parents.items() if parent == pid)
    return total
