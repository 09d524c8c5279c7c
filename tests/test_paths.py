"""Data roots: environment variables, the default with its one-line message, unwritable folders."""

import logging

import pytest

from volfnet import paths
from volfnet.errors import VolfnetError


def test_environment_variables_choose_the_roots(monkeypatch, tmp_path):
    monkeypatch.setenv("VOLFNET_raw", str(tmp_path / "r"))
    monkeypatch.setenv("VOLFNET_preprocessed", str(tmp_path / "p"))
    monkeypatch.setenv("VOLFNET_results", str(tmp_path / "s"))
    assert paths.raw_root() == tmp_path / "r"
    assert paths.preprocessed_root() == tmp_path / "p"
    assert paths.results_root() == tmp_path / "s"


def test_unset_variable_falls_back_with_one_message(monkeypatch, caplog):
    monkeypatch.delenv("VOLFNET_results", raising=False)
    monkeypatch.setattr(paths, "_warned", set())
    with caplog.at_level(logging.WARNING):
        first = paths.results_root()
        second = paths.results_root()
    assert first == second == paths.DEFAULT_BASE / "results"
    messages = [r.getMessage() for r in caplog.records if "VOLFNET_results" in r.getMessage()]
    assert len(messages) == 1 and str(first) in messages[0]


def test_folder_that_cannot_be_created_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(VolfnetError, match="cannot create preprocessed folder .*a_file/sub"):
        paths.ensure_writable_dir(blocker / "sub", "preprocessed")


def test_unwritable_output_folder_is_a_clear_error(roots, monkeypatch):
    from helpers.raw_data import make_raw_dataset
    from volfnet.planning.plan_and_preprocess import PlanAndPreprocessRequest, plan_and_preprocess
    from volfnet.planning.planner import PlannerOptions

    make_raw_dataset(roots["raw"], dataset_id=1, num_cases=2)
    blocker = roots["preprocessed"] / "file"
    blocker.write_text("x")
    monkeypatch.setenv("VOLFNET_preprocessed", str(blocker))
    with pytest.raises(VolfnetError, match="cannot create preprocessed folder"):
        plan_and_preprocess(PlanAndPreprocessRequest("1", PlannerOptions(compute_target="cpu"), num_workers=1, progress=False))
