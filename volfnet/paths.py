"""The three data roots (raw, preprocessed, results), nnU-Net style.

Each root comes from an environment variable. Where a variable is unset, volfnet falls back
to a folder under ``~/volfnet_data`` and says so once in the log, so a newcomer's first run
works and they know where their data went.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from volfnet.errors import VolfnetError

logger = logging.getLogger(__name__)

ENV_RAW = "VOLFNET_raw"
ENV_PREPROCESSED = "VOLFNET_preprocessed"
ENV_RESULTS = "VOLFNET_results"

DEFAULT_BASE = Path.home() / "volfnet_data"
_DEFAULT_SUBFOLDER = {ENV_RAW: "raw", ENV_PREPROCESSED: "preprocessed", ENV_RESULTS: "results"}
_warned: set[str] = set()


def _root(env_name: str) -> Path:
    value = os.environ.get(env_name)
    if value:
        return Path(value).expanduser()
    path = DEFAULT_BASE / _DEFAULT_SUBFOLDER[env_name]
    if env_name not in _warned:
        _warned.add(env_name)
        logger.warning("%s is not set; using %s (set %s to choose another folder)", env_name, path, env_name)
    return path


def raw_root() -> Path:
    """Folder holding raw datasets (``DatasetXXX_Name/``)."""
    return _root(ENV_RAW)


def preprocessed_root() -> Path:
    """Folder holding preprocessed datasets (plans, fingerprints, npy caches)."""
    return _root(ENV_PREPROCESSED)


def results_root() -> Path:
    """Folder holding trained and pretrained models."""
    return _root(ENV_RESULTS)


def ensure_writable_dir(path: Path, what: str) -> Path:
    """Create ``path`` if needed and check that we can write into it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VolfnetError(f"cannot create {what} folder {path}: {exc.strerror or exc}") from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise VolfnetError(f"{what} folder {path} is not writable")
    return path
