"""What every console script shares: logging setup and turning user errors into a clean exit.

A user who mistypes a path should see one line saying which file is wrong, not a traceback;
programming errors keep their traceback so they can be reported.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable

from volfnet.errors import VolfnetError

#: Exit status for user errors, the same that argparse uses for bad arguments.
EXIT_USER_ERROR = 2
#: Exit status after Ctrl-C, the shell's convention (128 + SIGINT).
EXIT_INTERRUPTED = 130


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is logged, not the stream that was
    current at setup, so a ``main()`` called under a swapped stderr (tests) does not leave a
    handler pointing at a closed file."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(verbose: bool = False) -> None:
    """Log INFO (DEBUG with ``verbose``) to stderr in a short format; calling it again only
    changes the level, and handlers installed by others are left alone."""
    root = logging.getLogger()
    if not any(isinstance(handler, _StderrHandler) for handler in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S"))
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


def run_cli(func: Callable[[], object], verbose: bool = False) -> int:
    """Run a console script's work and return its exit status: 0 when ``func`` returns, 2
    after printing ``error: <message>`` to stderr for a :class:`VolfnetError`, 130 on Ctrl-C;
    neither with a traceback. Logging is set up first. Use as ``return run_cli(run)`` in
    ``main``, whose result the console script passes to ``sys.exit``."""
    setup_logging(verbose)
    try:
        func()
    except VolfnetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def check_model_choice(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The two ways to name a model (``-d DATASET -c CONFIG [--network] [--tag]`` or ``-m
    FOLDER``) are not mixed: ``-d`` needs ``-c``, and ``-m`` takes none of the others (the
    folder's name already says them). Exits through ``parser.error`` (code 2)."""
    if args.dataset is not None and not args.configuration:
        parser.error("-d/--dataset needs -c/--configuration")
    given = [flag for flag, value in (("-c", args.configuration), ("--network", args.network), ("--tag", getattr(args, "tag", ""))) if value]
    if args.model_folder is not None and given:
        parser.error(f"{' and '.join(given)} go with -d; a model folder already names its configuration, network and tag")
