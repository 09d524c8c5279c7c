"""Shared test helpers, one module per job (synthetic data, model folders, training set-ups...).

Test files import them as ``from helpers.raw_data import make_raw_dataset``: pytest puts tests/
on ``sys.path`` (tests/ has no ``__init__.py``), and spawned worker processes inherit that path.
This file imports nothing, so that a spawned data worker unpickling a producer from
:mod:`helpers.workers` does not import torch."""
