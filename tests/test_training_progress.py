"""The per-epoch log (moving average, JSON), log.txt, progress.png and the RNG states."""

from __future__ import annotations

import json
import logging
import math
import random

import numpy as np
import pytest
import torch

from volfnet.training.progress import (
    LOG_FILE,
    LOG_JSON,
    PROGRESS_PNG,
    ProgressWriter,
    TrainingLog,
    format_epoch,
)
from volfnet.training.rng import capture_rng_states, restore_rng_states


def test_moving_average_and_best_follow_nnunet():
    log = TrainingLog(class_names=["1", "2"])
    assert log.append(0, 1.0, 0.9, [0.4, 0.6], 0.01, 2.0, ema_weight=0.9)  # first value: the raw mean
    assert log.ema_dice == [pytest.approx(0.5)]
    assert log.append(1, 0.8, 0.7, [0.9, math.nan], 0.009, 2.0, ema_weight=0.9)  # NaN classes left out
    assert log.mean_dice[1] == pytest.approx(0.9) and log.ema_dice[1] == pytest.approx(0.54)  # 0.9 x the previous 0.5 + 0.1 x the new 0.9
    assert not log.append(2, 0.7, 0.7, [0.0, 0.0], 0.008, 2.0, ema_weight=0.9)
    assert (log.best_epoch, log.best_ema_dice) == (1, pytest.approx(0.54))
    assert TrainingLog.from_dict(log.to_dict()) == log
    assert "pseudo Dice [1 0.9000, 2 nan] mean 0.9000 (moving average 0.5400)" in format_epoch(log, 1)


def test_writer_writes_log_text_json_and_plot(tmp_path):
    log = TrainingLog(class_names=["1"])
    for epoch in range(3):
        log.append(epoch, 1.0 / (epoch + 1), 1.2 / (epoch + 1), [math.nan if epoch == 0 else 0.3 * epoch], 0.01, 1.5, 0.9)
    with ProgressWriter(tmp_path) as writer:
        logging.getLogger("volfnet.training.test").info("hello from the run")
        writer.write(log, plot=True)
    logging.getLogger("volfnet.training.test").info("after close")
    text = (tmp_path / LOG_FILE).read_text()
    assert "hello from the run" in text and "after close" not in text
    data = json.loads((tmp_path / LOG_JSON).read_text())  # valid JSON: NaN written as null
    assert data["pseudo_dice"][0] == [None] and data["epoch"] == [0, 1, 2]
    assert (tmp_path / PROGRESS_PNG).read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.glob(".*.tmp"))


def test_rng_states_survive_a_weights_only_round_trip(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    torch.save({"rng": capture_rng_states()}, tmp_path / "state.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    restore_rng_states(torch.load(tmp_path / "state.pt", weights_only=True)["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]
