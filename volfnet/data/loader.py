"""A multiprocess batch loader: deterministic order, bounded prefetch, honest errors.

Batch ``i`` (counting from ``start_index``) is made by worker ``i % N`` and delivered in order,
and every batch is seeded by its own index (see :mod:`volfnet.data.batches`), so a fixed seed
gives the same sequence of batches for any worker count, ``num_workers=0`` included.

When a worker raises, the main process re-raises the *same* exception type with the same
message, chained to the worker's formatted traceback (nnU-Net's "background workers are no
longer alive" hides exactly this). A worker that dies without a word (the out-of-memory
killer, a segfault in a C extension) is reported with its exit signal and what to try.

Workers are started with ``fork`` where the platform has it: they start in milliseconds and
share the parent's imported modules and read-only pages. That is safe here because workers
only run numpy/scipy code (never torch, whose thread pools do not survive a fork), open their
own memory maps after the fork, and re-derive every random number from the batch index.
``spawn`` (the only choice on Windows and macOS defaults) works too; the producer is then
pickled to each worker.
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing as mp
import queue
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self

import torch
from threadpoolctl import threadpool_limits

from volfnet.data.worker import NumpyBatch, WorkerFailure, run_worker
from volfnet.errors import VolfnetError
from volfnet.parallel import available_cpus

logger = logging.getLogger(__name__)

MAX_DEFAULT_WORKERS = 12  # beyond this, training is GPU-bound and every extra worker only costs RAM
DEFAULT_PREFETCH_PER_WORKER = 2  # batches a worker may run ahead: hides jitter, bounds RAM
GET_POLL_SECONDS = 0.5  # how often the main process checks that a silent worker is still alive
JOIN_TIMEOUT_SECONDS = 5.0  # grace period for workers to stop before they are terminated
DRAIN_POLL_SECONDS = 0.01  # while stopping: how often queues are emptied for the exiting workers


@dataclass
class Batch:
    """A batch as torch tensors: ``data`` (B, C, *patch) float32, ``target`` one int16 tensor
    per deep-supervision output (cast to int64 on the device), ``case_ids`` per sample."""

    index: int
    data: torch.Tensor
    target: list[torch.Tensor]
    case_ids: list[str]


class WorkerTraceback(Exception):
    """Carries a worker's formatted traceback as the cause of the re-raised exception."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return "\n" + self.text


class WorkerError(RuntimeError):
    """A worker failed with an exception whose type cannot be rebuilt here, or died silently."""


def default_num_workers() -> int:
    """One worker per usable CPU, at most ``MAX_DEFAULT_WORKERS``."""
    return min(MAX_DEFAULT_WORKERS, available_cpus())


def _rebuild_exception(failure: WorkerFailure) -> BaseException:
    """The worker's exception as the same type with the same message, chained to the worker's
    traceback; a :class:`WorkerError` naming the type when that type cannot be had here."""
    exc: BaseException | None = None
    try:
        target: Any = importlib.import_module(failure.module)
        for part in failure.qualname.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError):
        target = None
    if isinstance(target, type) and issubclass(target, Exception):
        try:
            exc = target(*failure.args)
        except Exception:  # noqa: BLE001  (a constructor that wants other arguments)
            exc = None
        if exc is None or str(exc) != failure.message:
            # Keep the type and the exact message without running a custom __init__.
            exc = target.__new__(target)
            exc.args = failure.args
            if str(exc) != failure.message:
                exc.args = (failure.message,)
    if exc is None:
        exc = WorkerError(f"{failure.module}.{failure.qualname}: {failure.message}")
    exc.__cause__ = WorkerTraceback(
        f"data-loading worker {failure.worker_id} failed on batch {failure.batch_index}:\n{failure.traceback_text}"
    )
    return exc


def _describe_exit(worker_id: int, exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name if -exitcode in signal.valid_signals() else str(-exitcode)
        reason = f"was killed by signal {name}"
        if -exitcode == signal.SIGKILL:
            reason += " (most often the operating system's out-of-memory killer)"
    else:
        reason = f"exited with code {exitcode} without reporting an error"
    return (
        f"data-loading worker {worker_id} {reason}; try fewer workers (num_workers) or more RAM, "
        "or num_workers=0 to run the pipeline in the main process and see the error directly"
    )


def _to_torch(batch: NumpyBatch, pin_memory: bool) -> Batch:
    data = torch.from_numpy(batch.data)
    target = [torch.from_numpy(t) for t in batch.target]
    if pin_memory:
        data = data.pin_memory()
        target = [t.pin_memory() for t in target]
    return Batch(index=batch.index, data=data, target=target, case_ids=list(batch.case_ids))


class BatchLoader:
    """An endless, ordered stream of batches from ``producer(index)``, made in the background.

    ``num_workers`` None means :func:`default_num_workers`; 0 runs the producer in this process
    (for debugging: a failure raises where it happens). ``start_index`` resumes a stream.
    ``pin_memory`` pins batches for fast CUDA copies; without CUDA it is skipped with a note.
    A producer's optional ``prepare()`` (e.g. open the dataset) is called once, here: before
    forking, so what it sets up is shared by all workers, or before running in-process.
    Use as a context manager or call :meth:`close`; workers also stop if this process dies.
    """

    def __init__(
        self,
        producer: Callable[[int], NumpyBatch],
        num_workers: int | None = None,
        start_index: int = 0,
        prefetch_per_worker: int = DEFAULT_PREFETCH_PER_WORKER,
        pin_memory: bool = False,
        start_method: str | None = None,
    ) -> None:
        num_workers = default_num_workers() if num_workers is None else num_workers
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise VolfnetError(f"num_workers must be a non-negative integer, got {num_workers!r}")
        if prefetch_per_worker < 1:
            raise VolfnetError(f"prefetch_per_worker must be at least 1, got {prefetch_per_worker}")
        if start_index < 0:
            raise VolfnetError(f"start_index must not be negative, got {start_index}")
        if pin_memory and not torch.cuda.is_available():
            logger.info("pin_memory requested but CUDA is not available; batches are not pinned")
            pin_memory = False
        self.producer = producer
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.next_index = start_index
        self._start_index = start_index
        self._closed = False
        self._processes: list[Any] = []
        self._queues: list[Any] = []
        self._stop: Any = None
        if num_workers > 0:
            self._start(prefetch_per_worker, start_method)
        else:
            self._prepare_producer()

    def _prepare_producer(self) -> None:
        prepare = getattr(self.producer, "prepare", None)
        if callable(prepare):
            started = time.perf_counter()
            prepare()
            logger.debug("prepared the batch producer in %.1f s", time.perf_counter() - started)

    def _start(self, prefetch: int, start_method: str | None) -> None:
        if start_method is None:
            start_method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        context: Any = mp.get_context(start_method)  # fork or spawn: both make Process objects
        if start_method == "fork":
            self._prepare_producer()  # once here, shared by every forked worker
        self._stop = context.Event()
        for worker_id in range(self.num_workers):
            output = context.Queue(maxsize=prefetch)
            process = context.Process(
                target=run_worker,
                args=(worker_id, self.num_workers, self._start_index, self.producer, output, self._stop),
                name=f"volfnet-data-{worker_id}",
                daemon=True,
            )
            process.start()
            self._queues.append(output)
            self._processes.append(process)
        logger.debug("started %d data workers (%s)", self.num_workers, start_method)

    def __iter__(self) -> BatchLoader:
        return self

    def __next__(self) -> Batch:
        if self._closed:
            raise RuntimeError("this BatchLoader is closed")
        index = self.next_index
        if self.num_workers == 0:
            with threadpool_limits(limits=1):  # as in a worker (see volfnet.data.worker)
                batch = self.producer(index)
        else:
            batch = self._receive((index - self._start_index) % self.num_workers, index)
        self.next_index += 1
        return _to_torch(batch, self.pin_memory)

    def _receive(self, worker_id: int, index: int) -> NumpyBatch:
        output, process = self._queues[worker_id], self._processes[worker_id]
        while True:
            try:
                item = output.get(timeout=GET_POLL_SECONDS)
                break
            except queue.Empty:
                if process.is_alive():
                    continue
            try:  # it may have finished writing just before it stopped
                item = output.get(timeout=GET_POLL_SECONDS)
                break
            except queue.Empty:
                exitcode = process.exitcode
                self.close()
                raise WorkerError(_describe_exit(worker_id, exitcode)) from None
        if isinstance(item, WorkerFailure):
            self.close()
            raise _rebuild_exception(item)
        if item.index != index:
            self.close()
            raise RuntimeError(f"data worker {worker_id} delivered batch {item.index} where {index} was due")
        return item

    def close(self) -> None:
        """Stop and reap every worker (terminating any that do not stop in time)."""
        if self._closed:
            return
        self._closed = True
        if self._stop is not None:
            self._stop.set()
        # Keep reading while workers finish: a worker exits only after its queue's feeder thread
        # has written everything it buffered, and that needs a reader on the other end.
        deadline = time.monotonic() + JOIN_TIMEOUT_SECONDS
        while any(p.is_alive() for p in self._processes) and time.monotonic() < deadline:
            for process, output in zip(self._processes, self._queues):
                if process.is_alive():  # a dead worker's pipe may end in a half-written batch
                    _drain(output)
            time.sleep(DRAIN_POLL_SECONDS)
        for process in self._processes:
            if process.is_alive():
                logger.warning("data worker %s did not stop in time; terminating it", process.name)
                process.terminate()
            process.join(JOIN_TIMEOUT_SECONDS)
        for output in self._queues:
            output.close()
            output.cancel_join_thread()
        self._processes, self._queues = [], []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            self.close()


def _drain(output: Any) -> None:
    """Read whatever a queue holds, so its worker can finish writing and exit."""
    try:
        while True:
            output.get(timeout=DRAIN_POLL_SECONDS)
    except (queue.Empty, OSError, ValueError, EOFError):
        return
