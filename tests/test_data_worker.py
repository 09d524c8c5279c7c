"""The worker loop in isolation, run in a thread: its share of the batch indices, its stop, and
failures reported as plain data."""

from __future__ import annotations

import queue
import threading

from helpers.workers import FailingProducer

from volfnet.data.worker import WorkerFailure, run_worker


class QueueWithCancel(queue.Queue):
    """queue.Queue plus the multiprocessing-queue method the worker calls on shutdown."""

    cancelled = False

    def cancel_join_thread(self) -> None:
        self.cancelled = True


def run_in_thread(producer, worker_id: int, num_workers: int, start: int, maxsize: int = 2):
    output, stop = QueueWithCancel(maxsize=maxsize), threading.Event()
    thread = threading.Thread(target=run_worker, args=(worker_id, num_workers, start, producer, output, stop))
    thread.start()
    return output, stop, thread


def test_worker_makes_its_share_of_indices_in_order_and_stops():
    output, stop, thread = run_in_thread(FailingProducer(fail_at=-1), worker_id=1, num_workers=3, start=10)
    indices = [output.get(timeout=5).index for _ in range(4)]
    stop.set()
    while thread.is_alive():
        try:
            output.get(timeout=0.1)
        except queue.Empty:
            pass
    assert indices == [11, 14, 17, 20]
    assert not output.cancelled  # stopped by its parent: what it buffered is flushed, not cut off


def test_worker_reports_failure_as_plain_data_and_ends():
    output, _stop, thread = run_in_thread(FailingProducer(fail_at=4), worker_id=0, num_workers=2, start=0)
    items = [output.get(timeout=5) for _ in range(3)]
    thread.join(5)
    assert not thread.is_alive()
    assert [i.index for i in items[:2]] == [0, 2]
    failure = items[2]
    assert isinstance(failure, WorkerFailure)
    assert (failure.module, failure.qualname, failure.args, failure.batch_index) == ("builtins", "ValueError", ("boom at batch 4",), 4)
    assert "in _explode" in failure.traceback_text and failure.traceback_text.rstrip().endswith("ValueError: boom at batch 4")
