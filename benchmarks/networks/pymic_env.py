"""Create (once) the isolated virtual environment that holds PyMIC for the comparisons.

PyMIC is a peer used only to measure against: it lives in ``benchmarks/_envs/pymic``
(git-ignored), never in volfnet's own environment, and volfnet never imports it. torch is
pinned to the version volfnet runs with, which installs from the local wheel cache.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import torch

ENV_DIR = Path(__file__).resolve().parents[1] / "_envs" / "pymic"
PYMIC_VERSION = "0.6.2"  # first PyPI release registering FMUNet (0.5.0 only has FMUNetV3)
WORKER = Path(__file__).resolve().parent / "pymic_worker.py"

logger = logging.getLogger(__name__)


def pymic_python() -> Path:
    """Path of the venv's python, creating the venv and installing PyMIC if needed."""
    python = ENV_DIR / "bin" / "python"
    if python.exists() and _has_pymic(python):
        return python
    logger.info("creating %s with pymic==%s (one time)", ENV_DIR, PYMIC_VERSION)
    subprocess.run([sys.executable, "-m", "venv", str(ENV_DIR)], check=True)
    torch_pin = f"torch=={torch.__version__.split('+')[0]}"
    subprocess.run(
        [str(ENV_DIR / "bin" / "pip"), "install", "-q", torch_pin, f"pymic=={PYMIC_VERSION}"], check=True
    )
    return python


def _has_pymic(python: Path) -> bool:
    result = subprocess.run([str(python), "-c", "import pymic.net.net3d.fmunet"], capture_output=True)
    return result.returncode == 0


def run_worker(job: Path) -> None:
    """Run ``pymic_worker.py`` on a job file inside the PyMIC venv."""
    subprocess.run([str(pymic_python()), str(WORKER), str(job)], check=True)
