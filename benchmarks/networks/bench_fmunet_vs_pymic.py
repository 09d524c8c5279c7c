"""volfnet's FMUNet against PyMIC's own FMUNet: same weights, same input, same device.

For each configuration, PyMIC 0.6.2 runs in its own venv (created on first use, see
pymic_env.py) on the weights volfnet's model was initialised with. The script prints the best
forward (eval, no grad) and training-step (forward + backward of the 4 deep-supervision
outputs, train mode) times, their ratio (volfnet / PyMIC: below 1 is faster), and the maximum
absolute difference of the four eval-mode outputs. Rounds alternate between the two
implementations so that load from other processes hits both alike. Both use ``--threads``
CPU threads (default 1: on a shared 2-core machine, thread barriers under contention made
2-thread runs ~3x slower and erratic).

    python benchmarks/networks/bench_fmunet_vs_pymic.py [--reps 3] [--rounds 2] [--threads 1] [--quick]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]

from pymic_env import PYMIC_VERSION, run_worker  # noqa: E402
from volfnet.networks.fmunet import FMUNet, published_fmunet_topology  # noqa: E402

CONFIGS = [  # (name, feature channels, res_mode, input shape)
    ("published w32", (32, 64, 128, 256, 512), 0, (1, 1, 48, 64, 64)),
    ("w16", (16, 32, 64, 128, 256), 0, (1, 1, 48, 64, 64)),
    ("w16 res_mode 1", (16, 32, 64, 128, 256), 1, (2, 1, 32, 64, 64)),
]
QUICK_CONFIGS = [("w8", (8, 16, 32, 64, 128), 0, (1, 1, 32, 48, 48))]


def best_time(fn, reps: int, device: torch.device) -> float:
    fn()  # warm-up
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


def time_volfnet(model: FMUNet, x: torch.Tensor, reps: int, device: torch.device) -> dict[str, float]:
    def forward() -> None:
        model.eval()
        with torch.no_grad():
            model(x)

    def train_step() -> None:
        model.train()
        outputs = model(x)
        sum(o.float().mean() for o in outputs).backward()
        model.zero_grad(set_to_none=True)

    result = {"forward_s": best_time(forward, reps, device)}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    result["train_step_s"] = best_time(train_step, reps, device)
    if device.type == "cuda":
        result["train_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def run_config(name, channels, res_mode, shape, reps, rounds, device, threads, work: Path) -> dict[str, object]:
    torch.manual_seed(0)
    model = FMUNet.from_topology(published_fmunet_topology(res_mode, channels), shape[1], 5).to(device)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, work / "weights.pt")
    torch.save(x, work / "input.pt")
    job = {
        "weights": str(work / "weights.pt"),
        "input": str(work / "input.pt"),
        "output": str(work / "output.pt"),
        "timings": str(work / "timings.json"),
        "device": device.type,
        "threads": threads,
        "timing_reps": reps,
        "config": {
            "in_chns": shape[1],
            "class_num": 5,
            "feature_chns": list(channels),
            "res_mode": res_mode,
            "multiscale_pred": True,
        },
    }
    (work / "job.json").write_text(json.dumps(job))
    x = x.to(device)
    ours: list[dict[str, float]] = []
    theirs: list[dict[str, float]] = []
    for _ in range(rounds):
        ours.append(time_volfnet(model, x, reps, device))
        run_worker(work / "job.json")
        theirs.append(json.loads((work / "timings.json").read_text()))
    model.eval()
    with torch.no_grad():
        outputs = [o.cpu() for o in model(x)]
    reference = torch.load(work / "output.pt", weights_only=True)
    best = lambda runs, key: min(r[key] for r in runs)  # noqa: E731
    return {
        "name": name,
        "shape": shape,
        "fwd": (best(ours, "forward_s"), best(theirs, "forward_s")),
        "train": (best(ours, "train_step_s"), best(theirs, "train_step_s")),
        "peak": (ours[0].get("train_peak_mib"), theirs[0].get("train_peak_mib")),
        "max_diff": max(float((a - b).abs().max()) for a, b in zip(outputs, reference)),
        "max_abs": max(float(b.abs().max()) for b in reference),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions per round (best is kept)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating volfnet/PyMIC rounds")
    parser.add_argument("--quick", action="store_true", help="one small configuration (a smoke run)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for both implementations")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    configs = QUICK_CONFIGS if args.quick else CONFIGS
    print(f"volfnet FMUNet vs PyMIC {PYMIC_VERSION} FMUNet on {device} (torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads); times are the best of {args.rounds}x{args.reps}; ratio = volfnet/PyMIC")
    header = f"{'config':<16} {'input':<18} {'fwd volf':>9} {'fwd pymic':>9} {'ratio':>6} {'step volf':>9} {'step pymic':>10} {'ratio':>6} {'max|diff|':>10} {'max|out|':>9}"
    if device.type == "cuda":
        header += f" {'peak MiB volf/pymic':>20}"
    print(header)
    with tempfile.TemporaryDirectory() as tmp:
        for name, channels, res_mode, shape in configs:
            r = run_config(name, channels, res_mode, shape, args.reps, args.rounds, device, args.threads, Path(tmp))
            line = (
                f"{r['name']:<16} {'x'.join(map(str, r['shape'])):<18} {r['fwd'][0]:>8.3f}s {r['fwd'][1]:>8.3f}s "
                f"{r['fwd'][0] / r['fwd'][1]:>6.2f} {r['train'][0]:>8.3f}s {r['train'][1]:>9.3f}s "
                f"{r['train'][0] / r['train'][1]:>6.2f} {r['max_diff']:>10.2e} {r['max_abs']:>9.3f}"
            )
            if device.type == "cuda":
                line += f" {r['peak'][0]:>9.0f}/{r['peak'][1]:.0f}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
