"""Forward and training-step time and peak memory of FMUNet and PCT-Net.

Each (network, width, patch, execution variant) runs in a fresh subprocess so that peak
memory is that configuration's alone. Variants: on CPU contiguous vs channels-last-3d fp32;
on CUDA fp32 vs autocast (bf16 where supported, else fp16), each contiguous and
channels-last-3d. Within a network/patch, the ratio column is time / the first variant's time
(the default, contiguous fp32). CPU memory is the growth of the process's peak RSS over the
built model and input; CUDA memory is ``max_memory_allocated``. CPU runs use ``--threads``
threads (default 1: on a shared 2-core machine 2-thread runs were ~3x slower and erratic).

    python benchmarks/networks/bench_networks.py [--device cpu|cuda] [--reps 3] [--threads 1] [--quick]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]

from volfnet.networks import runtime  # noqa: E402
from volfnet.networks.build import build_network_from_topology  # noqa: E402
from volfnet.networks.fmunet import published_fmunet_topology  # noqa: E402
from volfnet.networks.pctnet import published_pctnet_topology  # noqa: E402

CPU_CONFIGS = [  # (network, width label, channels, batch, patch)
    ("fmunet", "w16", (16, 32, 64, 128, 256), 1, (48, 64, 64)),
    ("fmunet", "w32 (published)", (32, 64, 128, 256, 512), 1, (48, 64, 64)),
    ("fmunet", "w16", (16, 32, 64, 128, 256), 1, (64, 96, 96)),
    ("pctnet", "w12", (12, 24, 64, 128, 256), 1, (32, 64, 64)),
    ("pctnet", "w24 (published)", (24, 48, 128, 256, 512), 1, (32, 64, 64)),
]
CUDA_CONFIGS = [
    ("fmunet", "w32 (published)", (32, 64, 128, 256, 512), 2, (64, 128, 128)),
    ("fmunet", "w32 (published)", (32, 64, 128, 256, 512), 2, (96, 160, 160)),
    ("pctnet", "w24 (published)", (24, 48, 128, 256, 512), 2, (64, 128, 128)),
]
QUICK_CONFIGS = [
    ("fmunet", "w8", (8, 16, 32, 64, 128), 1, (32, 48, 48)),
    ("pctnet", "w8", (8, 16, 32, 64, 128), 1, (16, 32, 32)),
]


def variants(device: str) -> list[dict[str, object]]:
    if device == "cpu":
        return [{"channels_last": False, "autocast": False}, {"channels_last": True, "autocast": False}]
    return [
        {"channels_last": cl, "autocast": ac} for ac in (False, True) for cl in (False, True)
    ]


def topology_for(network: str, channels, patch):
    if network == "fmunet":
        return published_fmunet_topology(0, channels)
    heads = (4, 8, 16) if channels[4] >= 256 else (2, 4, 8)
    return published_pctnet_topology(1, patch, channels, num_heads=heads)


def _rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_one(spec: dict[str, object]) -> dict[str, object]:
    """Time and memory for one configuration (runs inside a child process)."""
    device = torch.device(spec["device"])
    torch.set_num_threads(int(spec["threads"]))
    torch.manual_seed(0)
    topology = topology_for(spec["network"], spec["channels"], tuple(spec["patch"]))
    model = build_network_from_topology(topology, 1, 5, deep_supervision=True)
    model = runtime.prepare_model(model, device, bool(spec["channels_last"]))
    x = runtime.prepare_input(torch.randn(spec["batch"], 1, *spec["patch"]), device, bool(spec["channels_last"]))
    reps = int(spec["reps"])

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def forward() -> None:
        model.eval()
        with torch.no_grad(), runtime.autocast(device, bool(spec["autocast"])):
            model(x)

    def train_step() -> None:
        model.train()
        with runtime.autocast(device, bool(spec["autocast"])):
            outputs = model(x)
            loss = sum(o.float().mean() for o in outputs)
        loss.backward()
        model.zero_grad(set_to_none=True)

    def best(fn) -> float:
        fn()
        times = []
        for _ in range(reps):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - start)
        return min(times)

    baseline = _rss_mib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    fwd = best(forward)
    fwd_mem = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else _peak_rss_mib() - baseline
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step = best(train_step)
    step_mem = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else _peak_rss_mib() - baseline
    return {"forward_s": fwd, "train_step_s": step, "forward_mib": fwd_mem, "train_mib": step_mem,
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per measurement")
    parser.add_argument("--quick", action="store_true", help="two small configurations (a smoke run)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one JSON spec
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_one(json.loads(args.one))))
        return
    device = torch.device(args.device)
    configs = QUICK_CONFIGS if args.quick else (CUDA_CONFIGS if device.type == "cuda" else CPU_CONFIGS)
    dtype = runtime.autocast_dtype(device)
    print(f"device {device} (torch {torch.__version__}, {args.threads} CPU thread(s)), best of {args.reps}; "
          f"autocast dtype here: {dtype}; ratio = time / first row of the block")
    print(f"{'network':<7} {'width':<16} {'batch x patch':<16} {'params':>7} {'variant':<22} "
          f"{'fwd':>8} {'ratio':>6} {'step':>8} {'ratio':>6} {'fwd MiB':>8} {'step MiB':>9}")
    for network, label, channels, batch, patch in configs:
        base = None
        for variant in variants(device.type):
            spec = {"network": network, "channels": channels, "batch": batch, "patch": patch,
                    "device": device.type, "reps": args.reps, "threads": args.threads, **variant}
            done = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)], capture_output=True, text=True)
            name = ("channels-last" if variant["channels_last"] else "contiguous") + (
                f" {str(dtype).removeprefix('torch.')}" if variant["autocast"] and dtype else " fp32")
            if done.returncode != 0:
                print(f"{network:<7} {label:<16} {batch}x{'x'.join(map(str, patch)):<14} {'':>7} {name:<22} failed: "
                      f"{done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            base = base or r
            print(f"{network:<7} {label:<16} {batch}x{'x'.join(map(str, patch)):<14} {r['params_m']:>6.2f}M {name:<22} "
                  f"{r['forward_s']:>7.3f}s {r['forward_s'] / base['forward_s']:>6.2f} {r['train_step_s']:>7.3f}s "
                  f"{r['train_step_s'] / base['train_step_s']:>6.2f} {r['forward_mib']:>8.0f} {r['train_mib']:>9.0f}",
                  flush=True)


if __name__ == "__main__":
    main()
