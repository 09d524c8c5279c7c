"""FMUNet's forward pass on the CPU: PyTorch eager vs torch.compile vs OpenVINO, same weights.

    python benchmarks/inference/cpu_backends.py [--repeats 3]

The network is the `cpu` target's FMUNet 16-128 for a BraTS-size two-channel MRI (the plans of
benchmarks/inference/large_volumes.py, rebuilt here from a fingerprint), float32, 2 threads,
seeded random weights. Per window shape and batch: milliseconds per forward pass (best of
``--repeats`` after one warm-up), the one-off compilation/conversion seconds, and the largest
logit difference to eager PyTorch. OpenVINO columns need ``pip install openvino``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
import sys

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from volfnet.inference.openvino_backend import OpenVinoNetwork, openvino_available  # noqa: E402
from volfnet.networks.build import build_network_from_topology  # noqa: E402
from volfnet.planning.planner import Planner, PlannerOptions  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from large_volumes import CASES, dataset_file_json, fingerprint  # noqa: E402

THREADS = 2
SHAPES = [((32, 48, 32), 2), ((32, 48, 32), 1), ((24, 48, 48), 2), ((24, 48, 48), 1), ((64, 96, 64), 1)]


def best_ms(run, x: torch.Tensor, repeats: int) -> tuple[float, float, torch.Tensor]:
    """(first call seconds, best later call ms, output)."""
    start = time.perf_counter()
    output = run(x)
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        output = run(x)
        times.append(time.perf_counter() - start)
    return first, min(times) * 1000, output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    case = CASES["brats"]
    plans = Planner(fingerprint(case), dataset_file_json(case), "Dataset900_brats", PlannerOptions(compute_target="cpu")).plan()
    topology = plans.configuration(case.configuration).network
    torch.manual_seed(0)
    network = build_network_from_topology(topology, len(case.channels), 4, deep_supervision=False).eval()
    print(f"FMUNet {topology.feature_channels}, {THREADS} threads, torch {torch.__version__}")
    print("| window, batch | eager ms | torch.compile ms (compile s) | max diff | OpenVINO ms (convert s) | max diff | OpenVINO speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for shape, batch in SHAPES:
        x = torch.randn(batch, len(case.channels), *shape)
        with torch.inference_mode():
            _, eager_ms, reference = best_ms(network, x, args.repeats)
            compiled = torch.compile(network, dynamic=False)
            compile_s, compiled_ms, output = best_ms(compiled, x, args.repeats)
            compile_diff = float((output - reference).abs().max())
        openvino = "not installed | | "
        if openvino_available():
            convert_s, ov_ms, ov_output = best_ms(OpenVinoNetwork(network, THREADS), x, args.repeats)
            openvino = f"{ov_ms:.0f} ({convert_s:.1f}) | {float((ov_output - reference).abs().max()):.1e} | {eager_ms / ov_ms:.2f}x"
        print(f"| {'x'.join(map(str, shape))}, {batch} | {eager_ms:.0f} | {compiled_ms:.0f} ({compile_s:.1f}) | {compile_diff:.1e} | {openvino} |", flush=True)


if __name__ == "__main__":
    main()
