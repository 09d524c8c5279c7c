"""Typed dataclasses from JSON: the one strict reader behind plans.json, trainer settings and
checkpoint specs.

Type-hint driven: each field is converted to its annotated type (dataclasses, lists, dicts,
optionals, numbers, strings, booleans), and unknown fields are an error naming the field, so
a typo in a hand-edited file does not go unnoticed.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any


def build_from_json(kind: Any, value: Any, where: str) -> Any:
    """Build ``kind`` (a dataclass, list/dict of them, or a plain type) from JSON data.

    Explicit, type-hint driven and strict: unknown fields are an error naming the field, so a
    typo in a hand-edited plans file does not go unnoticed.
    """
    origin = typing.get_origin(kind)
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected an object, got {value!r}")
        hints = typing.get_type_hints(kind)
        names = {f.name for f in dataclasses.fields(kind)}
        unknown = set(value) - names
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {sorted(unknown)}")
        return kind(**{k: build_from_json(hints[k], v, f"{where}.{k}") for k, v in value.items()})
    if origin is list:
        (item,) = typing.get_args(kind)
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        return [build_from_json(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _, item = typing.get_args(kind)
        return {k: build_from_json(item, v, f"{where}.{k}") for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if value is None:
            return None
        return build_from_json(args[0], value, where)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true/false, got {value!r}")
        return value
    if kind is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a string, got {value!r}")
        return value
    return value
