"""The body of one background data worker, and what it sends home (batches, failure reports).

Kept free of torch so a spawned worker starts fast and a forked one never touches torch's
thread pools (unsafe after fork). Worker ``w`` of ``n`` makes batches ``start + w``,
``start + w + n``, ... in order and puts them on its own bounded queue; the bound is the
backpressure that keeps workers from filling RAM ahead of training.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

PUT_POLL_SECONDS = 0.1  # how often a worker blocked on a full queue checks for shutdown


@dataclass
class NumpyBatch:
    """A finished batch as numpy arrays, as workers ship it: ``data`` (B, C, *patch) float32 and
    ``target``, one int16 (B, 1, *scaled patch) array per deep-supervision output (full
    resolution first)."""

    index: int
    data: np.ndarray
    target: list[np.ndarray]
    case_ids: list[str]


@dataclass
class WorkerFailure:
    """What a worker sends when making a batch raised: the exception's type (by import path),
    its plain arguments and the formatted traceback text — no pickled exception object, which
    may not unpickle (or may unpickle into something else) in the main process."""

    worker_id: int
    batch_index: int
    module: str
    qualname: str
    args: tuple
    message: str
    traceback_text: str


def _plain_args(exc: BaseException) -> tuple:
    """The exception's arguments if they are plain values, else its message alone."""
    if all(isinstance(a, (str, int, float, bool, type(None))) for a in exc.args):
        return tuple(exc.args)
    return (str(exc),)


def run_worker(
    worker_id: int,
    num_workers: int,
    start_index: int,
    producer: Callable[[int], Any],
    output: Any,
    stop: Any,
) -> None:
    """Produce batches until ``stop`` is set, the parent dies, or the producer raises.

    A dead parent shows as a changed parent pid (the orphan is re-parented), so even a main
    process killed with SIGKILL leaves no worker running.
    """
    parent_pid = os.getppid()
    if threading.current_thread() is threading.main_thread():  # a worker process, not a test thread
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle; it stops us
        # One BLAS/OpenMP thread per worker: workers already use every core, and a multi-threaded
        # BLAS on tiny products spends more time spinning than computing.
        threadpool_limits(limits=1)
    index = start_index + worker_id
    while not stop.is_set() and os.getppid() == parent_pid:
        try:
            item: Any = producer(index)
        except Exception as exc:  # noqa: BLE001  (every failure goes home, with its traceback)
            output.put(
                WorkerFailure(
                    worker_id=worker_id,
                    batch_index=index,
                    module=type(exc).__module__,
                    qualname=type(exc).__qualname__,
                    args=_plain_args(exc),
                    message=str(exc),
                    traceback_text="".join(traceback.format_exception(exc)),
                )
            )
            return
        while not stop.is_set() and os.getppid() == parent_pid:
            try:
                output.put(item, timeout=PUT_POLL_SECONDS)
                break
            except queue.Full:
                continue
        index += num_workers
    if os.getppid() != parent_pid:
        # Orphaned: nobody will read what is still buffered; exit without flushing it. (When the
        # main process stops us, it keeps reading until we exit, so the flush completes and no
        # half-written batch is left in the pipe.)
        output.cancel_join_thread()
