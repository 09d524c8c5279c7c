"""Small checks and conversions of plain values, shared by every layer (it imports nothing of
volfnet): is a setting a number, the mean that skips undefined values, and JSON that stays
valid when a metric is NaN or infinite."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def is_number(value: Any, finite: bool = True) -> bool:
    """An int or float (a bool is not a number here), finite unless ``finite=False``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value) or not finite


def nanmean(values: Sequence[float]) -> float:
    """Mean of the values that are not NaN; NaN when none is (an undefined metric stays undefined)."""
    finite = [float(v) for v in values if not math.isnan(float(v))]
    return sum(finite) / len(finite) if finite else math.nan


def json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by None (JSON's null), through dicts,
    lists and tuples: ``json.dumps`` would otherwise write ``NaN``, which is not JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value
