"""The stamp of a cache folder: which plans its cases were preprocessed with.

A cache is only valid for the plan fields that decide its content (transpose, spacing,
normalisation, resampling). Each cache folder records them in ``configuration.json``; when
the plans change, the stamp differs and every case is preprocessed again instead of training
on data made for other plans. Planning (labelled caches) and pretraining (pools of extra
images, whose stamp also names their source folder) share this rule.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from volfnet.io.files import atomic_write_json, read_cache_json
from volfnet.plans import Plans

CONFIGURATION_STAMP = "configuration.json"  # the configuration a cache folder was made with


def preprocessing_stamp(plans: Plans, configuration: str, **extra: Any) -> dict[str, Any]:
    """The fields that decide a cache's content (and ``extra`` entries, e.g. its source)."""
    config = plans.configuration(configuration)
    return {
        "transpose_forward": plans.transpose_forward,
        "spacing": config.spacing,
        "normalization": [dataclasses.asdict(n) for n in config.normalization],
        "resampling": dataclasses.asdict(config.resampling),
        **extra,
    }


def renew_stamp(folder: Path, stamp: dict[str, Any]) -> bool:
    """Write ``stamp`` into ``folder`` (created); True when the folder held a different stamp,
    so its cached cases were made with other plans and must be preprocessed again. An empty
    or damaged stamp counts as different: nothing says which plans the cases were made with."""
    path = Path(folder) / CONFIGURATION_STAMP
    stale = path.is_file() and read_cache_json(path) != stamp
    Path(folder).mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, stamp)
    return stale


def recorded_source(folder: Path) -> str | None:
    """The ``source`` a pool folder's stamp names, or None."""
    path = Path(folder) / CONFIGURATION_STAMP
    data = read_cache_json(path) if path.is_file() else None
    return data.get("source") if isinstance(data, dict) else None
