"""Run PyMIC's own networks in the PyMIC peer environment (benchmarks/peer_envs.py).

PyMIC is a peer used only to measure against: it lives in ``benchmarks/_envs/pymic``
(git-ignored), never in volfnet's own environment, and volfnet never imports it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for its shared modules
from peer_envs import PEERS, peer_python  # noqa: E402

PYMIC_VERSION = next(p.split("==")[1] for p in PEERS["pymic"].packages if p.startswith("pymic=="))
WORKER = Path(__file__).resolve().parent / "pymic_worker.py"


def run_worker(job: Path) -> None:
    """Run ``pymic_worker.py`` on a job file inside the PyMIC environment."""
    subprocess.run([str(peer_python("pymic")), str(WORKER), str(job)], check=True)
