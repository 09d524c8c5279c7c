"""Driver for tests/test_parallel_orphans.py: runs slow per-item work in a volfnet process
pool and is killed with ``kill -9`` while the workers are busy.

    python orphan_driver.py OUT_FOLDER {map,pool}

Each worker writes ``OUT/started_<pid>`` when it begins an item, sleeps, then writes
``OUT/result_<item>``; after a kill of this process no result file may appear.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import volfnet.parallel

SLEEP_SECONDS = 4.0


def slow_item(args: tuple[str, int]) -> int:
    folder, item = Path(args[0]), args[1]
    (folder / f"started_{__import__('os').getpid()}").touch()
    time.sleep(SLEEP_SECONDS)
    (folder / f"result_{item}").write_text(str(item))
    return item


if __name__ == "__main__":
    out, mode = sys.argv[1], sys.argv[2]
    items = [(out, item) for item in range(4)]
    if mode == "map":  # the kept pools of plan_and_preprocess, evaluate, conversion
        volfnet.parallel.parallel_map(slow_item, items, num_workers=2, progress=False)
    else:  # the predictor's loader pool
        with volfnet.parallel.worker_pool(2) as pool:
            list(pool.map(slow_item, items))
