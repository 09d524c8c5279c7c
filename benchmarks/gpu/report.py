"""Collect the GPU check's parts into one JSON and one markdown report (the last step of check.sh).

Reads ``OUT/parts/``: ``cuda_tests.xml`` (pytest's JUnit report), ``memory_model.json`` and
``speed.json``, plus the exit status of each step; writes ``OUT/gpu_check.json`` and
``OUT/gpu_check.md``, and exits non-zero when any check failed or did not produce its result
(a step killed by its time limit leaves no file, and so fails).

    python benchmarks/gpu/report.py OUT --device "NAME" --status tests=0 memory_model=0 speed=0 [--smoke]
"""

from __future__ import annotations

import argparse
import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from xml.etree import ElementTree

from common import markdown_table, write_json

logger = logging.getLogger("report")

def read_tests(path: Path) -> dict:
    """Outcome per test from pytest's JUnit XML: passed, failed (with the message), skipped (with the reason)."""
    if not path.is_file():
        return {"passed": False, "error": f"{path.name} missing: pytest did not finish", "tests": []}
    tests = []
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        outcome, detail = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                message = (child.get("message") or child.tag).splitlines()
                outcome, detail = "failed", message[0][:300] if message else child.tag
            elif child.tag == "skipped":
                outcome, detail = "skipped", child.get("message") or ""
        tests.append({"test": name, "outcome": outcome, "detail": detail, "seconds": float(case.get("time", 0))})
    counts = {kind: sum(t["outcome"] == kind for t in tests) for kind in ("passed", "failed", "skipped")}
    return {"passed": counts["failed"] == 0 and bool(tests), "counts": counts, "tests": tests}


def read_part(path: Path) -> dict:
    if not path.is_file():
        return {"passed": False, "error": f"{path.name} missing: the script failed or ran out of time"}
    return json.loads(path.read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--device", default="unknown")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--status", nargs="*", default=[], help="STEP=EXIT_STATUS of each step")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    status = {step: int(code) for step, code in (item.split("=", 1) for item in args.status)}
    parts = args.out / "parts"
    checks = {
        "cuda_tests": read_tests(parts / "cuda_tests.xml"),
        "memory_model": read_part(parts / "memory_model.json"),
        "speed": read_part(parts / "speed.json"),
    }
    for step, code in status.items():
        if step in checks and code != 0:
            checks[step]["passed"] = False
            checks[step].setdefault("error", f"exit status {code}")
    passed = all(check["passed"] for check in checks.values())
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")

    lines = [f"# volfnet GPU check{' (smoke run: CPU plumbing only, nothing measured on a GPU)' if args.smoke else ''}", "",
             f"Device: {args.device}  ", f"Date: {stamp}  ", f"Result: **{'passed' if passed else 'FAILED'}**", ""]
    lines.append(markdown_table(["check", "result", "note"], [
        [name, "passed" if check["passed"] else "FAILED", check.get("error", "")] for name, check in checks.items()
    ]))
    tests = checks["cuda_tests"].get("tests", [])
    if tests:
        lines += ["", "## CUDA tests (pytest -m cuda)", "", markdown_table(
            ["test", "outcome", "seconds", "detail"], [[t["test"], t["outcome"], f"{t['seconds']:.1f}", t["detail"]] for t in tests])]
    if "table" in checks["memory_model"]:
        context = checks["memory_model"].get("context_gib")
        note = f"Measured = peak allocated of a training step + CUDA context ({context:.2f} GiB)." if context is not None else ""
        lines += ["", "## Planner memory model vs a measured training step", "", checks["memory_model"]["table"], "", note]
    if "table" in checks["speed"]:
        lines += ["", "## Speed", "", checks["speed"]["title"], "", checks["speed"]["table"]]
    markdown = "\n".join(lines) + "\n"
    (args.out / "gpu_check.md").write_text(markdown)
    write_json(args.out / "gpu_check.json", {"device": args.device, "date": stamp, "smoke": args.smoke, "passed": passed, "checks": checks})
    print(markdown)
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
