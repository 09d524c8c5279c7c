"""Run a command and measure its wall time and the peak memory of its whole process tree.

Peak memory is the largest sum of resident set sizes over the command and every process it
started (worker pools included), sampled every 50 ms from /proc (process_tree.py); Linux only.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from process_tree import tree_rss_kb

SAMPLE_SECONDS = 0.05


@dataclass
class Measurement:
    seconds: float
    peak_rss_mb: float
    returncode: int
    output: str


def measure(command: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> Measurement:
    """Run ``command`` to completion; return wall time, peak tree RSS and the output."""
    start = time.perf_counter()
    process = subprocess.Popen(command, env={**os.environ, **(env or {})}, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = 0
    output_chunks: list[str] = []
    import threading

    reader = threading.Thread(target=lambda: output_chunks.append(process.stdout.read()), daemon=True)
    reader.start()
    while process.poll() is None:
        peak = max(peak, tree_rss_kb(process.pid))
        time.sleep(SAMPLE_SECONDS)
    reader.join()
    return Measurement(time.perf_counter() - start, peak / 1024, process.returncode, "".join(output_chunks))
