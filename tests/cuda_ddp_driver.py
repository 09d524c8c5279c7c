"""``volfnet_train`` through DistributedDataParallel over NCCL on a single GPU, for the torchrun
test of ``test_cuda_path.py``.

Run as ``torchrun --nproc_per_node 1 cuda_ddp_driver.py ARGS`` (ARGS as for ``volfnet_train``).
A one-GPU machine can run only one NCCL process, and volfnet wraps the network in DDP only from
two processes on, so plain ``volfnet_train`` under this torchrun would never touch NCCL or DDP.
This driver joins an NCCL group of one, then makes volfnet treat the job as distributed, so the
multi-process code path runs for real: the DDP wrapper (ignored buffers, ``static_graph``), its
NCCL broadcast and gradient all-reduce, rank-0-only writing. It writes what it saw as JSON to
the file named by ``VOLFNET_TEST_DDP_REPORT``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from volfnet.training import distributed

REPORT_ENV = "VOLFNET_TEST_DDP_REPORT"


def main(argv: list[str]) -> int:
    from volfnet.cli.train import main as train_main

    torch.cuda.set_device(int(os.environ[distributed.ENV_LOCAL_RANK]))
    dist.init_process_group("nccl", init_method="env://")
    distributed.DistContext.is_distributed = property(lambda self: self.world_size > 1 or dist.is_initialized())
    wrappers = []
    original_init = nn.parallel.DistributedDataParallel.__init__

    def recording_init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        wrappers.append(self.device_ids)

    nn.parallel.DistributedDataParallel.__init__ = recording_init
    try:
        code = train_main(argv)
        seen = {"backend": dist.get_backend(), "world_size": dist.get_world_size(), "ddp_wrappers": len(wrappers), "device_ids": wrappers}
    finally:
        dist.destroy_process_group()
    Path(os.environ[REPORT_ENV]).write_text(json.dumps(seen))
    return code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
