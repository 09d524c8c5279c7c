"""Fixtures and pytest hooks only; the helpers that make data, model folders and training
set-ups live in the ``helpers`` package."""

from __future__ import annotations

import pytest
import torch
from helpers.roots import make_roots, point_environment_at


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped without one; the GPU check runs them)")
    config.addinivalue_line("markers", "slow: end to end through several commands; `pytest -m 'not slow'` is the quick inner loop (CI runs all)")


@pytest.fixture
def one_torch_thread():
    """One intra-op thread: on a busy 2-core machine, OpenMP threads fighting for cores make
    tiny convolutions up to 50x slower. Use with ``pytestmark = pytest.mark.usefixtures(...)``."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def roots(tmp_path, monkeypatch):
    """Point the three VOLFNET_* roots at fresh folders under tmp_path."""
    paths = make_roots(tmp_path)
    point_environment_at(paths, monkeypatch)
    return paths
