"""Record PyMIC's FMUNet outputs for tests/test_networks_fmunet.py::PYMIC_REFERENCE.

Uses the test's deterministic weights (``seeded_state``) and input from
tests/helpers/fmunet_reference.py, runs PyMIC 0.6.2's
FMUNet on them in its own venv (see pymic_env.py) for res_mode 0, 1 and 2, and prints the
summaries as a Python literal to paste into the test, plus the maximum difference to
volfnet's FMUNet on the full outputs.

    python benchmarks/networks/make_pymic_reference.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))  # tests/ is not a package: its helpers import as pytest imports them

from helpers.fmunet_reference import REFERENCE_CHANNELS, output_summary, reference_input, reference_model  # noqa: E402
from pymic_env import run_worker  # noqa: E402


def main() -> None:
    x = reference_input()
    reference = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        torch.save(x, work / "input.pt")
        for res_mode in (0, 1, 2):
            model = reference_model(res_mode)
            torch.save(model.state_dict(), work / "weights.pt")
            job = {
                "weights": str(work / "weights.pt"),
                "input": str(work / "input.pt"),
                "output": str(work / "output.pt"),
                "config": {
                    "in_chns": 1,
                    "class_num": 5,
                    "feature_chns": list(REFERENCE_CHANNELS),
                    "res_mode": res_mode,
                    "multiscale_pred": True,
                },
            }
            (work / "job.json").write_text(json.dumps(job))
            run_worker(work / "job.json")
            pymic_outputs = torch.load(work / "output.pt", weights_only=True)
            with torch.no_grad():
                ours = model(x)
            diff = max(float((a - b).abs().max()) for a, b in zip(ours, pymic_outputs))
            print(f"res_mode {res_mode}: max |volfnet - pymic| = {diff:.3g}")
            reference[res_mode] = output_summary(pymic_outputs)
    print("PYMIC_REFERENCE: dict[int, list[dict[str, object]]] = {")
    for res_mode, outputs in reference.items():
        print(f"    {res_mode}: [")
        for out in outputs:
            samples = ", ".join(f"{v:.8g}" for v in out["samples"])
            print(
                f'        {{"shape": {out["shape"]}, "sum": {out["sum"]:.10g}, "abs_sum": {out["abs_sum"]:.10g},\n'
                f'         "samples": [{samples}]}},'
            )
        print("    ],")
    print("}")


if __name__ == "__main__":
    main()
