"""Small file helpers: atomic writes of JSON and npy, and strict JSON reads.

Every write goes to a temporary name in the same folder and is renamed into place, so a
crash (or ``kill -9``) never leaves a file that looks complete but is not.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from volfnet.errors import VolfnetError


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _to_jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in JSON")


def atomic_write_json(path: Path, data: Any, indent: int | None = 2) -> None:
    """Write ``data`` as JSON, atomically; indented for people by default, compact
    (``indent=None``, several times faster to write) for machine-sized files."""
    text = json.dumps(data, indent=indent, default=_to_jsonable)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")


def read_json(path: Path) -> Any:
    """Read a JSON file; a missing or malformed file is a :class:`VolfnetError` naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise VolfnetError(f"{path}: file not found") from exc
    except json.JSONDecodeError as exc:
        raise VolfnetError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    """Save an array as ``.npy`` (memory-mappable, no pickle), atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, np.ascontiguousarray(array), allow_pickle=False)


def load_npy(path: Path, mmap: bool = True) -> np.ndarray:
    """Load an ``.npy`` file, memory-mapped by default; pickled content is refused."""
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError as exc:
        raise VolfnetError(f"{path}: file not found") from exc
    except (ValueError, OSError) as exc:
        raise VolfnetError(f"{path}: unreadable npy file ({exc})") from exc
