"""kill -9 of a command leaves no worker behind and no file written after the kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

DRIVER = Path(__file__).with_name("orphan_driver.py")

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc (Linux)")


def _process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state) of every process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # exited while we looked
            table[int(entry.name)] = (int(fields[1]), fields[0])
    return table


def _descendants(pid: int) -> set[int]:
    table = _process_table()
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, (parent, _) in table.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pids: set[int]) -> set[int]:
    table = _process_table()
    return {pid for pid in pids if pid in table and table[pid][1] != "Z"}  # a zombie has exited


@pytest.mark.parametrize("mode", ["map", "pool"])
def test_kill_9_of_the_parent_stops_every_worker(tmp_path, mode):
    process = subprocess.Popen([sys.executable, str(DRIVER), str(tmp_path), mode])
    try:
        deadline = time.monotonic() + 60
        while len(list(tmp_path.glob("started_*"))) < 2:  # both workers busy with an item
            assert time.monotonic() < deadline, "the workers never started"
            assert process.poll() is None, "the driver ended early"
            time.sleep(0.05)
        children = _descendants(process.pid)
        workers = {int(p.name.split("_")[1]) for p in tmp_path.glob("started_*")}
        assert workers <= children and len(children) >= 3  # workers, fork server, resource tracker
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        deadline = time.monotonic() + 5
        while _alive(children) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(children), f"processes left after kill -9 of their parent: {sorted(_alive(children))}"
        time.sleep(5)  # past the end of the items the workers were sleeping in
        assert not list(tmp_path.glob("result_*")), "a worker wrote a file after its parent was killed"
    finally:
        if process.poll() is None:
            process.kill()
