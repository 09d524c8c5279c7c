"""Fault injection: ``kill -9`` every long-running command at random moments, many times in a
row, on tiny data; then check what volfnet promises after a crash (documentation/reliability.md).

    python benchmarks/reliability/kill_and_resume.py [--kills 10] [--seed 0] [--work DIR]
        [--commands plan pretrain train predict evaluate]

Two copies of one small synthetic dataset (the demo's generator) are processed side by side:

- *clean*: each command runs once, uninterrupted, and is timed;
- *faulty*: each command is started, killed with SIGKILL after a random time between 0 and its
  clean duration, restarted as a user would (``--c`` for training once a checkpoint exists,
  ``--continue`` for prediction), killed again, ``--kills`` times, then run to the end. An
  attempt that finishes before its kill time counts as such, and its outputs are deleted so
  the next attempts interrupt real work again.

After every kill: every process the command had started (pool workers, fork server, resource
tracker, data workers) must be gone within a few seconds. After the final run: its outputs
must equal the clean run's (preprocessed arrays and predictions byte for byte, JSON files by
content with the two roots' paths masked, checkpoints tensor by tensor), so no partial or
damaged file was taken for a finished one. Hidden ``.*.tmp`` files left by killed writes are
counted (never read by volfnet; safe to delete when no job runs).

The report goes to ``results.json`` and ``results.md`` in ``--work`` (default
``benchmarks/_work/reliability``); the exit status is non-zero if any check failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from volfnet.checkpoint import load_checkpoint
from volfnet.demo.synthetic import DemoDatasetSizes, write_demo_dataset
from volfnet.io.files import atomic_write_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for its shared modules
from process_tree import descendants, process_table  # noqa: E402

REPOSITORY = Path(__file__).resolve().parents[2]
DATASET_ID = 990
DATASET = f"Dataset{DATASET_ID:03d}_Kill"
CONFIGURATION = "3d_fullres"
SIZES = DemoDatasetSizes(train=6, test=3, unlabelled=0)
ORPHAN_GRACE_SECONDS = 5.0
COMMON_TRAINING = ["--device", "cpu", "--set", "num_workers=1", "--set", "progress_bar=false", "--set", "val_iterations=2"]

logger = logging.getLogger("kill_and_resume")


@dataclass
class CommandReport:
    name: str
    clean_seconds: float = 0.0
    kills: int = 0
    finished_before_kill: int = 0
    orphans: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    compared_files: int = 0
    leftover_tmp_files: int = 0
    final_exit_code: int = 0

    @property
    def passed(self) -> bool:
        return not self.orphans and not self.mismatches and self.final_exit_code == 0 and self.compared_files > 0


# --------------------------------------------------------------------------------------------
# the process table (Linux /proc)


def still_running(pids: set[int]) -> dict[int, str]:
    table = process_table()
    return {pid: table[pid].command for pid in pids if pid in table and table[pid].state != "Z"}  # a zombie has exited


# --------------------------------------------------------------------------------------------
# the commands


@dataclass
class Command:
    name: str
    argv: Callable[[Path], list[str]]  # root -> the command to (re)start
    outputs: Callable[[Path], Path]  # root -> the folder whose files are compared
    finished: Callable[[Path], list[Path]] | None = None  # root -> what to delete to start over (default: outputs)


def roots_environment(root: Path) -> dict[str, str]:
    return {**os.environ, **{f"VOLFNET_{name}": str(root / name) for name in ("raw", "preprocessed", "results")},
            "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def model_folder(root: Path) -> Path:
    return root / "results" / DATASET / f"fmunet__{CONFIGURATION}"


def train_argv(root: Path) -> list[str]:
    fold = model_folder(root) / "fold_0"
    resume = ["--c"] if (fold / "checkpoint_latest.pt").is_file() else []
    return ["volfnet_train", str(DATASET_ID), CONFIGURATION, "0", *COMMON_TRAINING, "--set", "num_epochs=4",
            "--set", "iterations_per_epoch=3", *resume]


def pretrain_argv(root: Path) -> list[str]:
    pretrain = model_folder(root) / "pretrain"
    resume = ["--c"] if (pretrain / "checkpoint_latest.pt").is_file() else []
    return ["volfnet_pretrain", "-d", str(DATASET_ID), "--iterations", "12", "-np", "2", *COMMON_TRAINING,
            "--set", "iterations_per_epoch=3", *resume]


COMMANDS = {
    "plan": Command(
        "plan",
        lambda root: ["volfnet_plan_and_preprocess", "-d", str(DATASET_ID), "--target", "cpu_small", "-np", "2"],
        lambda root: root / "preprocessed" / DATASET,
    ),
    "pretrain": Command("pretrain", pretrain_argv, lambda root: model_folder(root) / "pretrain"),
    "train": Command("train", train_argv, lambda root: model_folder(root) / "fold_0"),
    "predict": Command(
        "predict",
        lambda root: ["volfnet_predict", "-i", str(root / "raw" / DATASET / "imagesTs"), "-o", str(root / "predictions"),
                      "-m", str(model_folder(root)), "-f", "0", "--device", "cpu", "-np", "2", "--continue"],
        lambda root: root / "predictions",
    ),
    "evaluate": Command(
        "evaluate",
        lambda root: ["volfnet_evaluate", str(root / "raw" / DATASET / "labelsTs"), str(root / "predictions"), "-d", str(DATASET_ID),
                      "-np", "2"],
        lambda root: root / "predictions",
        lambda root: [root / "predictions" / name for name in ("summary.json", "summary.csv")],
    ),
}


def start_over(command: Command, root: Path) -> None:
    """Delete what a finished run wrote, so the next attempts interrupt real work again."""
    for path in command.finished(root) if command.finished else [command.outputs(root)]:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def run_to_end(command: Command, root: Path, log: Path) -> tuple[int, float]:
    start = time.perf_counter()
    with open(log, "a") as handle:
        code = subprocess.run(command.argv(root), env=roots_environment(root), stdout=handle, stderr=subprocess.STDOUT).returncode
    return code, time.perf_counter() - start


def kill_at_random(command: Command, root: Path, log: Path, seconds: float, report: CommandReport) -> bool:
    """Start the command, SIGKILL it after ``seconds`` and check its processes all end; False
    if it finished first."""
    with open(log, "a") as handle:
        process = subprocess.Popen(command.argv(root), env=roots_environment(root), stdout=handle, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + seconds
    children: set[int] = set()
    while time.monotonic() < deadline and process.poll() is None:
        children |= descendants(process.pid)  # workers come and go: remember every one seen
        time.sleep(0.02)
    if process.poll() is not None:
        return False
    children |= descendants(process.pid)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    report.kills += 1
    grace = time.monotonic() + ORPHAN_GRACE_SECONDS
    while still_running(children) and time.monotonic() < grace:
        time.sleep(0.05)
    for pid, line in still_running(children).items():
        report.orphans.append(f"kill {report.kills} after {seconds:.2f} s: pid {pid} still running ({line})")
        os.kill(pid, signal.SIGKILL)  # leave nothing behind for the next attempt
    return True


# --------------------------------------------------------------------------------------------
# comparing outputs


def _without_timings(value: object) -> object:
    if isinstance(value, dict):
        return {key: _without_timings(item) for key, item in value.items() if "seconds" not in key}
    if isinstance(value, list):
        return [_without_timings(item) for item in value]
    return value


def _masked_json(path: Path, root: Path) -> object:
    """The JSON's content with the run's root masked and wall-clock timings dropped."""
    return _without_timings(json.loads(path.read_text().replace(str(root), "<root>")))


def _same_checkpoint(a: Path, b: Path) -> str | None:
    first, second = load_checkpoint(a)["model_state_dict"], load_checkpoint(b)["model_state_dict"]
    if first.keys() != second.keys():
        return "different weight names"
    different = [key for key in first if not torch.equal(first[key], second[key])]
    return f"weights differ in {len(different)} tensor(s), e.g. {different[0]}" if different else None


def compare_outputs(clean: Path, faulty: Path, clean_root: Path, faulty_root: Path, report: CommandReport) -> None:
    """Every file of the clean run's folder must exist in the faulty one with equal content."""
    for path in sorted(p for p in clean.rglob("*") if p.is_file() and not p.name.startswith(".")):
        relative = path.relative_to(clean)
        other = faulty / relative
        if path.suffix in (".png", ".log", ".txt"):
            continue  # logs and pictures of timings differ between any two runs
        report.compared_files += 1
        if not other.is_file():
            report.mismatches.append(f"{relative}: missing after the interrupted runs")
        elif path.suffix == ".json":
            if _masked_json(path, clean_root) != _masked_json(other, faulty_root):
                report.mismatches.append(f"{relative}: content differs")
        elif path.suffix == ".pt":
            problem = _same_checkpoint(path, other)
            if problem:
                report.mismatches.append(f"{relative}: {problem}")
        elif path.read_bytes() != other.read_bytes():
            report.mismatches.append(f"{relative}: bytes differ")
    report.leftover_tmp_files = sum(1 for p in faulty.rglob(".*.tmp"))


# --------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10, help="kills per command before the final run (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    parser.add_argument("--work", type=Path, default=REPOSITORY / "benchmarks" / "_work" / "reliability")
    parser.add_argument("--commands", nargs="+", choices=list(COMMANDS), default=list(COMMANDS))
    return parser.parse_args()


def write_report(work: Path, reports: list[CommandReport], args: argparse.Namespace) -> None:
    data = {"kills_per_command": args.kills, "seed": args.seed, "commands": [asdict(r) | {"passed": r.passed} for r in reports]}
    atomic_write_json(work / "results.json", data)
    lines = ["| command | clean run (s) | kills survived | finished before the kill | orphans | files compared | mismatches | leftover .tmp | result |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in reports:
        lines.append(f"| {r.name} | {r.clean_seconds:.1f} | {r.kills} | {r.finished_before_kill} | {len(r.orphans)} | {r.compared_files} | "
                     f"{len(r.mismatches)} | {r.leftover_tmp_files} | {'pass' if r.passed else 'FAIL'} |")
    for r in reports:
        lines += [f"- {r.name}: {problem}" for problem in r.orphans + r.mismatches]
    (work / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not Path("/proc/self/stat").exists():
        raise SystemExit("this check reads the process table from /proc (Linux)")
    work = args.work.resolve()
    if work.exists():
        shutil.rmtree(work)
    clean_root, faulty_root = work / "clean", work / "faulty"
    for root in (clean_root, faulty_root):
        for name in ("raw", "preprocessed", "results"):
            (root / name).mkdir(parents=True)
        write_demo_dataset(root / "raw" / DATASET, SIZES, seed=0)
    rng = random.Random(args.seed)
    reports = []
    for name in args.commands:
        command, report = COMMANDS[name], CommandReport(name)
        code, report.clean_seconds = run_to_end(command, clean_root, work / f"clean_{name}.log")
        if code != 0:
            raise SystemExit(f"the clean run of {name} failed (exit {code}); see {work / f'clean_{name}.log'}")
        for attempt in range(args.kills):
            seconds = rng.uniform(0.0, report.clean_seconds)
            logger.info("%s: attempt %d, kill after %.2f s", name, attempt + 1, seconds)
            if not kill_at_random(command, faulty_root, work / f"faulty_{name}.log", seconds, report):
                report.finished_before_kill += 1
                start_over(command, faulty_root)
        report.final_exit_code, _ = run_to_end(command, faulty_root, work / f"faulty_{name}.log")
        compare_outputs(command.outputs(clean_root), command.outputs(faulty_root), clean_root, faulty_root, report)
        logger.info("%s: %d kill(s), %s", name, report.kills, "pass" if report.passed else "FAIL")
        reports.append(report)
    write_report(work, reports, args)
    return 0 if all(r.passed for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
