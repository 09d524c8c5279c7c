"""Multi-process training with DistributedDataParallel: torchrun, ``--num-gpus N`` and ranks.

Two ways in, one code path after that:

- ``torchrun`` (one or many nodes) starts every process itself and sets ``RANK``,
  ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; the training loop sees
  them (:func:`env_context`) and joins the process group (:func:`setup`).
- ``--num-gpus N`` on one machine: :func:`launch` spawns N processes on a free local port and
  runs the same function in each, with the process group already joined.

Conventions (documented in ``documentation/training.md``): every process trains on its own
batches of the plans' batch size (the effective batch is N times larger), drawn with its own
seed (:func:`rank_seed`); gradients are averaged by DDP; only rank 0 writes checkpoints, logs
and plots. NCCL on CUDA, gloo on the CPU (used by the tests).

Leaving, either way in (:func:`process_group`): :func:`shutdown` stops the worker pools the
process kept and leaves the group, at a barrier after a good run and at once after an error,
so a finished rank exits cleanly and a failed one exits at once; torchrun or :func:`launch`
then stops the others. (``documentation/cluster.md`` lists what is tested.)
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as torch_mp

from volfnet.errors import VolfnetError
from volfnet.parallel import shutdown_pools

logger = logging.getLogger(__name__)

ENV_RANK = "RANK"
ENV_WORLD_SIZE = "WORLD_SIZE"
ENV_LOCAL_RANK = "LOCAL_RANK"
ENV_MASTER_ADDR = "MASTER_ADDR"
ENV_MASTER_PORT = "MASTER_PORT"
LOCAL_ADDRESS = "127.0.0.1"
RANK_SEED_STRIDE = 1000  # rank r draws data with seed + 1000 r: disjoint from the validation offset below
VALIDATION_SEED_OFFSET = 500  # validation batches use another stream than training batches


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, logs and plots; the others only compute."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise VolfnetError(f"environment variable {name}={value!r} is not an integer") from None


def env_context() -> DistContext:
    """The context the launcher (torchrun or :func:`launch`) put in the environment; a single
    process when none did."""
    world_size = _env_int(ENV_WORLD_SIZE, 1)
    rank = _env_int(ENV_RANK, 0)
    local_rank = _env_int(ENV_LOCAL_RANK, rank)
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise VolfnetError(f"inconsistent distributed environment: RANK={rank}, WORLD_SIZE={world_size}, LOCAL_RANK={local_rank}")
    return DistContext(rank, world_size, local_rank)


def current_context() -> DistContext:
    """The joined process group's context, else :func:`env_context`."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), _env_int(ENV_LOCAL_RANK, dist.get_rank()))
    return env_context()


def backend_for(device_type: str) -> str:
    """NCCL between GPUs, gloo between CPU processes."""
    return "nccl" if device_type == "cuda" else "gloo"


def setup(device_type: str) -> tuple[DistContext, bool]:
    """Join the process group the environment describes, unless already joined. Returns the
    context and whether this call joined (and so must :func:`shutdown`)."""
    context = current_context()
    if not context.is_distributed or dist.is_initialized():
        return context, False
    if not dist.is_available():
        raise VolfnetError("this PyTorch build has no torch.distributed; train on one process")
    if device_type == "cuda":
        if context.local_rank >= torch.cuda.device_count():
            raise VolfnetError(
                f"LOCAL_RANK {context.local_rank} but only {torch.cuda.device_count()} GPU(s) visible on this node"
            )
        torch.cuda.set_device(context.local_rank)
    dist.init_process_group(backend_for(device_type), init_method="env://")
    logger.info("joined the process group: rank %d of %d (%s)", context.rank, context.world_size, backend_for(device_type))
    return context, True


def shutdown(synchronize: bool = False) -> None:
    """Leave the job: stop the worker pools this process kept (the final validation's
    evaluation starts one) and leave the process group. Stopping the pools matters in a
    spawned rank: its exit joins every child process before atexit handlers could stop them,
    so idle pool workers would keep it (and ``--num-gpus``) waiting forever.

    ``synchronize`` (after a run that ended well): wait at a barrier first, so no rank tears
    down its gloo or NCCL connections while another still uses them (rank 0 writes the last
    files after the others are done). Without it a finished rank could abort in gloo's
    teardown ("terminate called without an active exception", once in a CI run). After an
    error there is no barrier: the other ranks may never arrive."""
    shutdown_pools(wait=True)
    if dist.is_available() and dist.is_initialized():
        if synchronize:
            barrier()
        dist.destroy_process_group()


@contextmanager
def process_group(device_type: str) -> Iterator[DistContext]:
    """Join the process group the environment describes for the block (unless already
    joined) and leave it after: at a barrier when the block ended well, at once after an
    error (see :func:`shutdown`)."""
    context, joined = setup(device_type)
    try:
        yield context
    except BaseException:
        if joined:
            shutdown()
        raise
    if joined:
        shutdown(synchronize=True)


def rank_seed(seed: int, rank: int) -> int:
    """The training-data seed of ``rank``: every process draws other patches."""
    return int(seed) + RANK_SEED_STRIDE * int(rank)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over every process in place (no-op on one process); returns it."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def free_port() -> int:
    """A TCP port nobody listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCAL_ADDRESS, 0))
        return int(sock.getsockname()[1])


def launch(fn: Callable[..., Any], num_processes: int, args: Sequence[Any] = (), device_type: str = "cuda") -> None:
    """Run ``fn(*args)`` in ``num_processes`` new processes on this machine, each already in the
    process group (rank = local rank). ``fn`` and ``args`` must be picklable (a module-level
    function). A :class:`VolfnetError` in any process is re-raised here with its message.

    A process that raises leaves the job at once (:func:`shutdown`), and the first non-zero exit
    makes torch stop the others, which may be waiting for it in a collective: the call raises
    promptly instead of leaving them to gloo's or NCCL's 30-minute timeout."""
    if isinstance(num_processes, bool) or not isinstance(num_processes, int) or num_processes < 1:
        raise VolfnetError(f"the number of processes must be a positive integer, got {num_processes!r}")
    if device_type == "cuda" and num_processes > torch.cuda.device_count():
        raise VolfnetError(f"--num-gpus {num_processes} but only {torch.cuda.device_count()} GPU(s) are visible")
    port = free_port()
    errors = torch_mp.get_context("spawn").SimpleQueue()
    logger.info("starting %d training processes (%s, port %d)", num_processes, backend_for(device_type), port)
    try:
        torch_mp.spawn(
            _run_rank,
            args=(fn, tuple(args), num_processes, port, device_type, errors, logging.getLogger().getEffectiveLevel()),
            nprocs=num_processes,
            join=True,
        )
    except (torch_mp.ProcessRaisedException, torch_mp.ProcessExitedException):
        messages = []
        while not errors.empty():
            messages.append(errors.get())
        if messages:
            raise VolfnetError("; ".join(messages)) from None
        raise


def _run_rank(
    local_rank: int, fn: Callable[..., Any], args: tuple, world_size: int, port: int, device_type: str, errors: Any, log_level: int
) -> None:
    """Body of one spawned process: set the environment torchrun would, join, run, leave.
    A spawned interpreter starts without logging; rank 0 logs at the parent's level, the
    others only warnings, so the console shows one run, not N copies."""
    logging.basicConfig(
        level=log_level if local_rank == 0 else max(log_level, logging.WARNING),
        format=f"%(asctime)s [rank {local_rank}] %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    os.environ.update(
        {
            ENV_RANK: str(local_rank),
            ENV_LOCAL_RANK: str(local_rank),
            ENV_WORLD_SIZE: str(world_size),
            ENV_MASTER_ADDR: LOCAL_ADDRESS,
            ENV_MASTER_PORT: str(port),
        }
    )
    try:
        with process_group(device_type):  # after an error this process leaves at once, and launch stops the others
            fn(*args)
    except VolfnetError as exc:
        errors.put(f"process {local_rank}: {exc}")
        raise
