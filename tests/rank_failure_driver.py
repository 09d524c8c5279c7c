"""``volfnet_train`` with one failing process, for the failing-rank tests of
``test_training_launchers.py``.

Run as ``python rank_failure_driver.py ARGS`` (with ``--num-gpus 2``) or under
``torchrun ... rank_failure_driver.py ARGS``: the process of rank :data:`FAILING_RANK` raises at
its first training step, as a rank that hits a bug or runs out of memory would, while the other
rank goes on into the step's gradient all-reduce and waits there for a partner that never comes.
The patch is made at import, so it also holds in the processes ``--num-gpus`` spawns (they
import this script again as ``__mp_main__``).
"""

from __future__ import annotations

import os
import sys

from volfnet.training import loop

FAILING_RANK = "1"
MESSAGE = "simulated failure of rank 1 at its first training step"

_train_step = loop._Trainer._train_step


def _failing_train_step(self, batch):
    if os.environ.get("RANK") == FAILING_RANK:
        raise RuntimeError(MESSAGE)
    return _train_step(self, batch)


loop._Trainer._train_step = _failing_train_step

if __name__ == "__main__":
    from volfnet.cli.train import main

    raise SystemExit(main(sys.argv[1:]))
