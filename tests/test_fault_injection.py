"""The fault-injection check (benchmarks/reliability/kill_and_resume.py) on its quickest
command, so it keeps working: preprocessing killed at random moments three times, then run to
the end, leaves no process behind and ends with the same cache as an uninterrupted run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "reliability" / "kill_and_resume.py"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc (Linux)")
@pytest.mark.slow
def test_preprocessing_survives_repeated_kill_9(tmp_path):
    run = subprocess.run([sys.executable, str(SCRIPT), "--commands", "plan", "--kills", "3", "--work", str(tmp_path / "work")],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    (report,) = json.loads((tmp_path / "work" / "results.json").read_text())["commands"]
    assert report["name"] == "plan" and report["passed"]
    assert report["kills"] + report["finished_before_kill"] == 3 and report["kills"] >= 1
    assert report["orphans"] == [] and report["mismatches"] == []
    assert report["compared_files"] >= 20  # plans, fingerprint, stamp and three files per case
