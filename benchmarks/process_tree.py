"""A process and its descendants, read from /proc (Linux): the one process-tree reader of the
benchmarks (peak memory in measure.py, CPU seconds of data pipelines, what survives a kill).

Plain standard library and no volfnet import, so the peers' virtual environments (nnU-Net's
side of a comparison) use it too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
COMMAND_CHARACTERS = 120  # of a command line kept for messages


@dataclass
class ProcessInfo:
    parent: int
    state: str  # "R", "S", ..., "Z" for a zombie (exited, not yet reaped)
    cpu_seconds: float  # user + system
    rss_kb: int
    command: str


def _read(pid: int) -> ProcessInfo | None:
    folder = Path(f"/proc/{pid}")
    try:
        text = (folder / "stat").read_text()
        command = (folder / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:COMMAND_CHARACTERS]
    except OSError:
        return None  # exited while we looked
    fields = text[text.rindex(")") + 2 :].split()  # the fields after "pid (comm) "
    rss_pages = int(fields[21])
    return ProcessInfo(int(fields[1]), fields[0], (int(fields[11]) + int(fields[12])) / CLOCK_TICKS,
                       rss_pages * os.sysconf("SC_PAGE_SIZE") // 1024, command)


def process_table() -> dict[int, ProcessInfo]:
    """Every live process by pid."""
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            info = _read(int(name))
            if info is not None:
                table[int(name)] = info
    return table


def descendants(root: int, table: dict[int, ProcessInfo] | None = None) -> set[int]:
    """The pids of ``root``'s children, their children, and so on (not ``root`` itself)."""
    table = process_table() if table is None else table
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, info in table.items() if info.parent in frontier} - found
        found |= frontier
    return found


def tree_cpu_seconds(root: int | None = None) -> float:
    """User + system CPU seconds of ``root`` (default: this process) and its live descendants."""
    root = os.getpid() if root is None else root
    table = process_table()
    return sum(table[pid].cpu_seconds for pid in {root} | descendants(root, table) if pid in table)


def tree_rss_kb(root: int) -> int:
    """Resident memory of ``root`` and its live descendants, in KiB."""
    table = process_table()
    return sum(table[pid].rss_kb for pid in {root} | descendants(root, table) if pid in table)
