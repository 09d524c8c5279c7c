"""Shared pieces of the inference benchmarks: test inputs, network weights, runner processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # benchmarks/, for its shared modules
from peer_envs import peer_python  # noqa: E402
from tiny_unet import build  # noqa: E402

WORK = HERE.parent / "_work" / "inference"
RUNNER = HERE / "runner.py"


def ensure_monai() -> Path:
    """The Python of the private MONAI environment (see benchmarks/peer_envs.py)."""
    return peer_python("monai")


def write_case(name: str, shape: tuple[int, int, int], channels: int, classes: int, width: int) -> tuple[Path, Path]:
    """A smooth random volume (blobs, like organs on CT) and the network weights, as files."""
    WORK.mkdir(parents=True, exist_ok=True)
    image_path, weights_path = WORK / f"{name}_image.npy", WORK / f"{name}_weights.pt"
    rng = np.random.default_rng(0)
    coarse = torch.from_numpy(rng.standard_normal((1, channels, *[max(s // 8, 1) for s in shape])).astype(np.float32))
    image = torch.nn.functional.interpolate(coarse, size=shape, mode="trilinear", align_corners=False)[0]
    np.save(image_path, image.numpy())
    torch.save(build(channels, classes, width, seed=0).state_dict(), weights_path)
    return image_path, weights_path


def run(python: Path | str, impl: str, image: Path, weights: Path, options: list[str], output: Path | None = None) -> dict:
    """Run the runner in a fresh process; return its JSON report."""
    command = [str(python), str(RUNNER), "--impl", impl, "--input", str(image), "--weights", str(weights), *options]
    if output is not None:
        command += ["--output", str(output)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table, columns padded to their widest cell."""
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    lines = ["| " + " | ".join(str(c).ljust(w) for c, w in zip(line, widths)) + " |" for line in [header, *rows]]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
