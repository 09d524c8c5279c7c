"""Check the planner's cost model against measurements on this machine (CPU, fp32).

For a few FMUNet and PCT-Net configurations, one training step (forward, loss, backward,
SGD step) runs in a fresh subprocess; the table compares the peak resident memory it adds
and its time with what ``volfnet.planning.cost`` predicts (``cpu_memory_gb``,
``training_gflop``). The planner's GPU figures use the same activation count with
mixed-precision bytes; check them with ``--device cuda`` on a GPU machine.

    python benchmarks/planner_memory.py [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CONFIGURATIONS = [
    ("fmunet", [1.0, 1.0, 1.0], [32, 48, 40], 16, 2),
    ("fmunet", [1.0, 1.0, 1.0], [48, 64, 64], 16, 2),
    ("fmunet", [3.0, 1.0, 1.0], [16, 96, 96], 16, 2),
    ("fmunet", [1.0, 1.0, 1.0], [32, 64, 64], 32, 2),
    ("pctnet", [2.0, 1.0, 1.0], [32, 64, 64], 16, 2),
]

STEP = r"""
import json, resource, sys, time, torch
from volfnet.networks.build import build_network_from_topology
from volfnet.planning.topology import fmunet_topology, pctnet_topology
name, spacing, patch, base, batch, device = json.loads(sys.argv[1])
torch.set_num_threads(2)
builder = fmunet_topology if name == "fmunet" else pctnet_topology
topology = builder(spacing, patch, base, 512)
net = build_network_from_topology(topology, 1, 3, deep_supervision=True).to(device)
optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.99)
x = torch.randn(batch, 1, *patch, device=device)
def step():
    outputs = net(x)
    loss = sum(o.float().mean() for o in outputs)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
step()  # warm-up: allocator pools and optimiser state exist afterwards
if device == "cuda":
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter(); step()
if device == "cuda":
    torch.cuda.synchronize()
seconds = time.perf_counter() - start
peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(json.dumps({"peak_gb": peak, "seconds": seconds}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    from volfnet.planning.cost import measure_cost
    from volfnet.planning.topology import fmunet_topology, pctnet_topology

    print("| network | patch | width | batch | predicted GB | measured GB | ratio | GFLOP/step | s/step | GFLOP/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, spacing, patch, base, batch in CONFIGURATIONS:
        builder = fmunet_topology if name == "fmunet" else pctnet_topology
        topology = builder(spacing, patch, base, 512)
        cost = measure_cost(topology, patch, 1, 3)
        predicted = cost.gpu_memory_gb(batch) if args.device == "cuda" else cost.cpu_memory_gb(batch)
        output = subprocess.run(
            [sys.executable, "-c", STEP, json.dumps([name, spacing, patch, base, batch, args.device])],
            capture_output=True, text=True, check=True,
        ).stdout
        measured = json.loads(output.strip().splitlines()[-1])
        gflop = cost.training_gflop(batch)
        print(
            f"| {name} | {'x'.join(map(str, patch))} | {base} | {batch} | {predicted:.2f} | {measured['peak_gb']:.2f} | "
            f"{measured['peak_gb'] / predicted:.2f} | {gflop:.1f} | {measured['seconds']:.2f} | {gflop / measured['seconds']:.1f} |"
        )
    print("\nCPU: measured = peak resident memory of the whole process (incl. ~0.4 GB for torch itself).")


if __name__ == "__main__":
    main()
