"""Picklable batch producers that the data-loader tests hand to worker processes. No torch
import here (nor in ``helpers/__init__.py``): a spawned worker imports this module to unpickle
them, and must stay as light as volfnet's own workers."""

from __future__ import annotations

import os
import signal

import numpy as np

from volfnet.data.worker import NumpyBatch
from volfnet.errors import DataIntegrityError


class FailingProducer:
    """Makes tiny batches whose data is the batch index; fails on ``fail_at`` as ``kind`` says."""

    def __init__(self, fail_at: int, kind: str = "value") -> None:
        self.fail_at = fail_at
        self.kind = kind

    def __call__(self, index: int) -> NumpyBatch:
        if index == self.fail_at:
            self._explode(index)
        data = np.full((1, 1, 2, 2, 2), index, np.float32)
        return NumpyBatch(index=index, data=data, target=[np.zeros((1, 1, 2, 2, 2), np.int16)], case_ids=[str(index)])

    def _explode(self, index: int) -> None:
        if self.kind == "value":
            raise ValueError(f"boom at batch {index}")
        if self.kind == "integrity":
            raise DataIntegrityError(["case_007: label 9 not in dataset.json"])
        if self.kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
