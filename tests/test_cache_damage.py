"""Damaged cache files (zero-byte or cut short by a crash, a full disk, a power loss): a rerun
of preprocessing redoes exactly those cases, training names the file and says what to run,
and every atomic write is flushed to disk before and after its rename."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
from helpers.training import plan_tiny_dataset

from volfnet.cli.plan_and_preprocess import main as plan_main
from volfnet.cli.train import main as train_main
from volfnet.io import files
from volfnet.io.files import atomic_save_npy, atomic_write_json, load_npy, npy_problem, read_json

CASES = "3d_fullres"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cache(roots) -> Path:
    dataset = next(roots["preprocessed"].iterdir())
    return dataset


def _damage(cache: Path) -> dict[Path, bytes]:
    """Empty one case's image, cut another's seg short, empty a third's properties and the
    fingerprint; returns the damaged files' clean bytes."""
    cases = cache / CASES
    damaged = [cases / "case_000.npy", cases / "case_001_seg.npy", cases / "case_002.json", cache / "fingerprint.json"]
    clean = {path: path.read_bytes() for path in damaged}
    for path in damaged:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] if path.name.endswith("_seg.npy") else b"")
    return clean


def test_rerun_of_preprocessing_redoes_damaged_cases_and_leaves_the_rest(roots, caplog):
    plan_tiny_dataset(roots["raw"])
    cache = _cache(roots)
    untouched = {path: path.stat().st_mtime_ns for path in (cache / CASES).glob("case_00[34]*")}
    clean = _damage(cache)
    assert plan_main(["-d", "1", "--target", "cpu", "-np", "1", "--base-features", "4"]) == 0
    for path, data in clean.items():
        if path.suffix == ".npy":  # the arrays come out the same; the JSON may hold other sampled locations
            assert path.read_bytes() == data, f"{path} was not redone"
        else:
            assert read_json(path) is not None
    assert {path: path.stat().st_mtime_ns for path in untouched} == untouched, "finished cases were redone"
    assert f"{cache / 'fingerprint.json'}: the file is empty; making it again" in caplog.text


@pytest.mark.parametrize("victim, message", [
    ("case_000.npy", "case_000.npy: the file is empty"),
    ("case_001_seg.npy", r"case_001_seg.npy: file is truncated \(\d+ of \d+ bytes\)"),
    ("case_002.json", "case_002.json: the file is empty"),
])
def test_training_on_a_damaged_cache_names_the_file_and_says_to_rerun_preprocessing(roots, capsys, victim, message):
    plan_tiny_dataset(roots["raw"])
    path = _cache(roots) / CASES / victim
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if victim.endswith("_seg.npy") else b"")
    assert train_main(["1", CASES, "0", "--device", "cpu", "--set", "num_epochs=1", "--set", "iterations_per_epoch=1"]) == 2
    error = capsys.readouterr().err
    assert re.search(message, error) and "re-run volfnet_plan_and_preprocess" in error, error
    assert "Traceback" not in error and "EOFError" not in error


def test_npy_problems_are_found_from_the_header(tmp_path):
    path = tmp_path / "a.npy"
    atomic_save_npy(path, np.arange(1000, dtype=np.float32).reshape(10, 100))
    assert npy_problem(path) is None and load_npy(path).shape == (10, 100)
    data = path.read_bytes()
    path.write_bytes(data[:-1])
    assert npy_problem(path) == f"{path}: file is truncated ({len(data) - 1} of {len(data)} bytes)"
    path.write_bytes(b"")
    assert npy_problem(path) == f"{path}: the file is empty"
    with pytest.raises(files.VolfnetError, match=f"{re.escape(str(path))}: the file is empty"):
        load_npy(path)
    assert npy_problem(tmp_path / "missing.npy") == f"{tmp_path / 'missing.npy'}: file not found"


def test_atomic_writes_are_flushed_to_disk_before_and_after_the_rename(tmp_path, monkeypatch):
    """A power loss after a rename that was never flushed can leave a zero-length file under
    the final name: the data is flushed before the rename, the folder entry after it."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.path.realpath(f"/proc/self/fd/{fd}") if Path("/proc/self/fd").exists() else fd))
        real_fsync(fd)

    def replace(source, target):
        events.append(("replace", str(target)))
        real_replace(source, target)

    monkeypatch.setattr(files.os, "fsync", fsync)
    monkeypatch.setattr(files.os, "replace", replace)
    for write, name in ((lambda p: atomic_write_json(p, {"a": 1}), "x.json"), (lambda p: atomic_save_npy(p, np.zeros(3)), "x.npy")):
        events.clear()
        write(tmp_path / name)
        kinds = [kind for kind, _ in events]
        assert kinds == ["fsync", "replace", "fsync"], events
        if Path("/proc/self/fd").exists():
            assert Path(events[0][1]).name.startswith(f".{name}.")  # the temporary file, before its rename
            assert events[2][1] == str(tmp_path.resolve())  # then the folder holding the new name
