"""Runs PyMIC's own FMUNet on a job prepared by the volfnet benchmark (inside the PyMIC venv).

Job (JSON): ``weights`` (a state dict .pt), ``input`` (a tensor .pt), ``config`` (PyMIC
FMUNet parameters), ``output`` (.pt to write the eval-mode deep-supervision outputs to),
``device`` ("cpu" or "cuda"), ``threads`` (CPU threads, optional), ``timing_reps`` (0 = no timing) and ``timings`` (JSON written
with the best forward and training-step times in seconds, and the CUDA peak memory).
Only files loadable with ``weights_only=True`` are exchanged.
"""

from __future__ import annotations

import json
import sys
import time

import torch
from pymic.net.net3d.fmunet import FMUNet


def best_time(fn, reps: int, device: torch.device) -> float:
    fn()  # warm-up (oneDNN/cuDNN pick and compile kernels on the first call)
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def main(job_path: str) -> None:
    job = json.loads(open(job_path).read())
    device = torch.device(job.get("device", "cpu"))
    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    net = FMUNet(dict(job["config"]))
    net.load_state_dict(torch.load(job["weights"], map_location="cpu", weights_only=True))
    net.to(device)
    x = torch.load(job["input"], map_location="cpu", weights_only=True).to(device)
    net.set_stage("train")  # multiscale outputs; eval() below only switches dropout off
    net.eval()
    with torch.no_grad():
        outputs = net(x)
    torch.save([o.contiguous().cpu() for o in outputs], job["output"])
    reps = int(job.get("timing_reps", 0))
    if reps:
        def forward() -> None:
            net.eval()
            with torch.no_grad():
                net(x)

        def train_step() -> None:
            net.train()
            outs = net(x)
            sum(o.float().mean() for o in outs).backward()
            net.zero_grad(set_to_none=True)

        timings = {"forward_s": best_time(forward, reps, device)}
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        timings["train_step_s"] = best_time(train_step, reps, device)
        if device.type == "cuda":
            timings["train_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
        with open(job["timings"], "w") as handle:
            json.dump(timings, handle)


if __name__ == "__main__":
    main(sys.argv[1])
