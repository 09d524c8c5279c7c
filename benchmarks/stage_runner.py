"""Run a benchmark's console commands as stages: printed, logged, timed, skipped when done.

Each stage appends its command and output to ``work/commands.log``; its seconds go to
``work/stage_seconds.json`` at once, so a later failure keeps the times of the stages before
it, and a rerun that skips a finished stage still reports the time it took.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from pathlib import Path


ROOT_NAMES = ("raw", "preprocessed", "results")


class StageRunner:
    @classmethod
    def in_work_folder(cls, work: Path) -> StageRunner:
        """A runner whose commands see ``VOLFNET_raw/preprocessed/results`` under ``work``
        (created), so a benchmark never touches the user's own data folders."""
        work.mkdir(parents=True, exist_ok=True)
        return cls(work, {**os.environ, **{f"VOLFNET_{name}": str(work / name) for name in ROOT_NAMES}})

    def __init__(self, work: Path, env: dict[str, str]) -> None:
        self.env = env
        self.log = work / "commands.log"
        self.times_file = work / "stage_seconds.json"
        self.times: dict[str, float] = json.loads(self.times_file.read_text()) if self.times_file.is_file() else {}
        self.stages: list[dict] = []  # this invocation's stages, run or skipped, in order

    def run(self, name: str, command: list[str], done: Path | None = None) -> None:
        """Run ``command`` unless ``done`` exists; a failing command raises."""
        text = shlex.join(command)
        if done is not None and done.exists():
            print(f"[skip] {name}: {done} exists", flush=True)
        else:
            print(f"[run] {name}: {text}", flush=True)
            start = time.perf_counter()
            with open(self.log, "a") as log:
                log.write(f"\n$ {text}\n")
                log.flush()
                subprocess.run(command, env=self.env, stdout=log, stderr=subprocess.STDOUT, check=True)
            seconds = round(time.perf_counter() - start, 1)
            # Re-read first: another invocation on the same work folder may have added stages.
            if self.times_file.is_file():
                self.times.update(json.loads(self.times_file.read_text()))
            self.times[name] = seconds
            self.times_file.write_text(json.dumps(self.times, indent=1))
            print(f"      {self.times[name]:.0f} s", flush=True)
        self.stages.append({"stage": name, "command": text, "seconds": self.times.get(name)})
