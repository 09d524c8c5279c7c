"""The peers' private virtual environments (nnU-Net, PyMIC, MONAI), one rule for all of them.

Peers are what we measure against, never dependencies of volfnet: each lives in
``benchmarks/_envs/<name>`` (git-ignored), created on first use and repaired when its import
check fails. torch is pinned to the release this Python runs (the same numerics on both sides
of a comparison; here that release installs from local disk, while an unpinned torch pulls
gigabytes of CUDA wheels). Plain standard library, so any benchmark script can import it.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

ENVS = Path(__file__).resolve().parent / "_envs"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Peer:
    packages: tuple[str, ...]  # what pip installs besides the pinned torch
    check: str  # Python that succeeds once the environment is usable


PEERS = {
    "nnunet": Peer(("nnunetv2",), "import nnunetv2"),
    # 0.6.2: the first PyPI release registering FMUNet (0.5.0 only has FMUNetV3); imops for its VolF resizing
    "pymic": Peer(("pymic==0.6.2", "imops"), "import pymic.net.net3d.fmunet, imops"),
    "monai": Peer(("monai",), "import monai"),
}


def torch_pin() -> str:
    """``torch==<the release this Python runs>`` (without a local build suffix such as +cpu)."""
    return f"torch=={metadata.version('torch').split('+')[0]}"


def peer_python(name: str) -> Path:
    """The Python of peer ``name``'s environment, creating or repairing it first when needed."""
    peer = PEERS[name]
    folder = ENVS / name
    python = folder / "bin" / "python"
    if python.exists() and subprocess.run([str(python), "-c", peer.check], capture_output=True, check=False).returncode == 0:
        return python
    logger.info("installing %s into %s (one time)", " ".join(peer.packages), folder)
    print(f"installing {' '.join(peer.packages)} into {folder}", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", torch_pin(), *peer.packages], check=True)
    return python


def peer_bin(name: str) -> Path:
    """The ``bin`` folder of peer ``name``'s environment (its console scripts)."""
    return peer_python(name).parent


if __name__ == "__main__":  # python benchmarks/peer_envs.py [nnunet pymic monai]: create them ahead of time
    for peer_name in sys.argv[1:] or list(PEERS):
        if peer_name not in PEERS:
            raise SystemExit(f"unknown peer {peer_name!r}; choose from {sorted(PEERS)}")
        print(peer_name, peer_python(peer_name))
