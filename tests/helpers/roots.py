"""The three data roots (``VOLFNET_raw``, ``VOLFNET_preprocessed``, ``VOLFNET_results``) that
every command reads from the environment, made as fresh folders for one test or one module."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT_NAMES = ("raw", "preprocessed", "results")


def make_roots(base: Path) -> dict[str, Path]:
    """Fresh ``raw``, ``preprocessed`` and ``results`` folders under ``base``, by root name."""
    roots = {name: base / name for name in ROOT_NAMES}
    for path in roots.values():
        path.mkdir(parents=True)
    return roots


def point_environment_at(roots: dict[str, Path], patch: pytest.MonkeyPatch) -> None:
    """Set the ``VOLFNET_*`` variables to ``roots`` (undone with ``patch``)."""
    for name, path in roots.items():
        patch.setenv(f"VOLFNET_{name}", str(path))
