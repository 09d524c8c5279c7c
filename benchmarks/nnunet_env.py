"""nnU-Net v2's private virtual environment, shared by every benchmark that runs it.

nnU-Net is a peer we measure against, never a dependency of volfnet: it lives in
``benchmarks/_envs/nnunet`` (gitignored), created on first use. torch is pinned because that
release installs from local disk here; an unpinned torch pulls gigabytes of CUDA wheels.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

NNUNET_VENV = Path(__file__).resolve().parent / "_envs" / "nnunet"
TORCH_PIN = "torch==2.13.0"


def ensure_nnunet_venv() -> Path:
    """The ``bin`` folder of the nnU-Net environment, installing it when it is missing."""
    bin_dir = NNUNET_VENV / "bin"
    if not (bin_dir / "nnUNetv2_plan_and_preprocess").exists():
        print(f"installing nnunetv2 into {NNUNET_VENV}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(NNUNET_VENV)], check=True)
        subprocess.run([str(bin_dir / "pip"), "install", "-q", TORCH_PIN, "nnunetv2"], check=True)
    return bin_dir


if __name__ == "__main__":
    print(ensure_nnunet_venv())
