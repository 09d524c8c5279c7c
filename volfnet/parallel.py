"""Run one function per item (usually per case) in worker processes, with a progress bar.

Used by every per-case stage (integrity check, MSD conversion, fingerprint, preprocessing,
evaluation), so they share one behaviour:

- Results come back in input order.
- Workers come from a *fork server*: a clean process, started once per run, that imports
  the program once and forks a worker per pool slot. Forking the parent itself could
  deadlock a child (the parent runs threads: torch, SimpleITK), and spawning re-imports
  torch and volfnet in every worker, which costs seconds per pool. Functions must be
  module-level (``functools.partial`` of one is fine) and arguments picklable.
- Pools are kept for the life of the process and reused by later stages (integrity check,
  fingerprint and preprocessing run back to back), so workers start once per run. The
  interpreter's exit stops them; a process that ends another way must call
  :func:`shutdown_pools` itself. A spawned process (a ``--num-gpus`` training rank) is one:
  multiprocessing's exit joins its child processes *before* any atexit handler runs, and a
  kept pool's idle workers never exit on their own, so the rank would hang after its work.
- Workers never outlive the process that started them. ``kill -9`` of a command gives it no
  chance to stop its pool, and the fork server's children would otherwise live on (reparented
  to PID 1) and keep writing into the cache, racing with a rerun. Each worker runs a thread
  that blocks on the pipe multiprocessing keeps from the parent (its *sentinel*, which
  becomes readable when the parent is gone, however it ended) and then exits at once. A pipe
  works on Linux and macOS alike, costs nothing while waiting and reacts within
  milliseconds; ``prctl(PR_SET_PDEATHSIG)`` is Linux-only and would watch the fork server,
  not the command.
- A worker's exception comes back as itself, with a note naming the item, never as a bare
  "worker died". Only a worker killed from outside (usually for lack of memory) becomes a
  :class:`VolfnetError` that says so and suggests fewer workers.
- With ``collect_user_errors`` every item's :class:`VolfnetError` is gathered and raised
  together as one :class:`DataIntegrityError`, so a user fixes all bad files in one pass.
"""

from __future__ import annotations

import atexit
import functools
import multiprocessing
import multiprocessing.connection
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from tqdm import tqdm

from volfnet.errors import DataIntegrityError, VolfnetError

T = TypeVar("T")
R = TypeVar("R")

# Per-case work is file reading plus one core of numpy/scipy; past eight processes the disk
# is the bottleneck while memory (one case per worker) keeps growing.
MAX_DEFAULT_WORKERS = 8
WORKER_START_METHOD = "forkserver"  # see the module docstring


_POOLS: dict[int, ProcessPoolExecutor] = {}
#: Exit status of a worker whose parent died (128 + SIGKILL, the parent's usual fate).
ORPHAN_EXIT_CODE = 137


def _exit_when_parent_dies() -> None:
    """Pool initializer: exit this worker as soon as the process that started it is gone."""
    parent = multiprocessing.parent_process()
    if parent is None:  # not a multiprocessing child: nothing to watch
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(ORPHAN_EXIT_CODE)  # no cleanup: the parent that would use the results is gone

    threading.Thread(target=watch, name="volfnet-parent-watch", daemon=True).start()


def worker_pool(num_workers: int) -> ProcessPoolExecutor:
    """A fork-server process pool whose workers exit when this process dies (see the module
    docstring); every process pool in volfnet comes from here."""
    context = multiprocessing.get_context(WORKER_START_METHOD)
    return ProcessPoolExecutor(max_workers=num_workers, mp_context=context, initializer=_exit_when_parent_dies)


def _pool(num_workers: int) -> ProcessPoolExecutor:
    """A process pool of ``num_workers`` workers, started on first use and then reused."""
    pool = _POOLS.get(num_workers)
    if pool is None:
        pool = _POOLS[num_workers] = worker_pool(num_workers)
    return pool


def _discard_pool(num_workers: int, wait: bool = False) -> None:
    pool = _POOLS.pop(num_workers, None)
    if pool is not None:
        pool.shutdown(wait=wait, cancel_futures=True)


@atexit.register
def shutdown_pools(wait: bool = False) -> None:
    """Stop every kept pool (also called at interpreter exit); with ``wait``, return only once
    their workers have exited (queued items are cancelled, running ones finish)."""
    for num_workers in list(_POOLS):
        _discard_pool(num_workers, wait)


def available_cpus() -> int:
    """CPUs this process may use (respects affinity / container limits where the OS says)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_num_workers() -> int:
    """Worker processes for per-case stages: one per usable CPU, at most ``MAX_DEFAULT_WORKERS``."""
    return min(MAX_DEFAULT_WORKERS, available_cpus())


def select_part(cases: Sequence[T], part: int, num_parts: int) -> list[T]:
    """Share ``part`` (0-based) of ``num_parts`` of the sorted cases: every ``num_parts``-th case
    from index ``part``. Jobs started with the same folder and ``num_parts`` and parts
    0..num_parts-1 predict every case exactly once, with no coordination between them."""
    if isinstance(num_parts, bool) or not isinstance(num_parts, int) or num_parts < 1:
        raise VolfnetError(f"--num-parts must be a positive integer, got {num_parts!r}")
    if isinstance(part, bool) or not isinstance(part, int) or not 0 <= part < num_parts:
        raise VolfnetError(f"--part must be between 0 and {num_parts - 1} (--num-parts {num_parts}), got {part!r}")
    return list(cases[part::num_parts])



def _item_name(item: Any) -> str:
    name = getattr(item, "case_id", None)
    if name is None and isinstance(item, tuple) and item:
        name = getattr(item[0], "case_id", None)
    return str(name) if name is not None else repr(item)[:80]


def _call_with_args(function: Callable[..., R], args: tuple) -> R:
    return function(*args)


def starmap_function(function: Callable[..., R]) -> Callable[[tuple], R]:
    """Wrap ``function`` so that :func:`parallel_map` can pass it argument tuples."""
    return functools.partial(_call_with_args, function)


def parallel_map(
    function: Callable[[T], R],
    items: Iterable[T],
    num_workers: int = 1,
    desc: str | None = None,
    collect_user_errors: bool = False,
    progress: bool = True,
) -> list[R]:
    """``[function(item) for item in items]`` over ``num_workers`` spawned processes."""
    items = list(items)
    if num_workers < 1:
        raise VolfnetError(f"the number of worker processes must be at least 1, got {num_workers}")
    results: list[Any] = [None] * len(items)
    problems: list[str] = []

    def settle(index: int, get: Callable[[], Any]) -> None:
        try:
            results[index] = get()
        except BrokenProcessPool as exc:
            _discard_pool(num_workers)
            raise VolfnetError(
                f"a worker process died abruptly while working on {_item_name(items[index])} "
                f"(usually: killed for lack of memory); rerun with fewer workers than {num_workers}"
            ) from exc
        except VolfnetError as exc:
            if not collect_user_errors:
                raise
            problems.append(str(exc))
        except Exception as exc:
            exc.add_note(f"(raised while working on {_item_name(items[index])})")
            raise

    with tqdm(total=len(items), desc=desc, unit="case", disable=not progress or None) as bar:
        if num_workers == 1 or len(items) < 2:
            for index, item in enumerate(items):
                settle(index, functools.partial(function, item))
                bar.update()
        else:
            pool = _pool(num_workers)
            futures = {pool.submit(function, item): index for index, item in enumerate(items)}
            try:
                for future in as_completed(futures):
                    settle(futures[future], future.result)
                    bar.update()
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
    if problems:
        raise DataIntegrityError(sorted(problems), header=f"{desc or 'processing'} failed")
    return results


def parallel_starmap(function: Callable[..., R], tasks: Sequence[tuple], num_workers: int = 1, desc: str | None = None, collect_user_errors: bool = False) -> list[R]:
    """:func:`parallel_map` for functions taking several arguments, one tuple per call."""
    return parallel_map(starmap_function(function), tasks, num_workers, desc, collect_user_errors)
