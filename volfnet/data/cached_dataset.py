"""Read-only access to preprocessed cases, memory-mapped, for the training data pipeline.

Training reads one small patch per sample from cases that together can be far larger than
RAM, so arrays are opened with ``mmap`` and only the voxels of a patch are ever paged in. A
bounded LRU of open cases avoids re-reading the ``.npy`` header and properties JSON for every
sample while keeping the number of maps (and of parsed class-location tables) bounded.

Nothing is opened at construction. :meth:`CachedDataset.open_all` opens every case up front;
called in the parent before workers are forked, the maps and location tables are shared by all
workers (an ``np.load`` memory map holds no file descriptor, only a read-only shared mapping,
which a forked child inherits intact). A spawned worker gets the dataset without open cases
and opens what it needs itself.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from volfnet.data.previous_stage import load_previous_stage, previous_stage_problems
from volfnet.errors import VolfnetError
from volfnet.io.case_store import (
    CaseProperties,
    case_file_problems,
    list_preprocessed_cases,
    load_case,
)

DEFAULT_MAX_OPEN_CASES = 512  # per worker: two maps and one location table each; far below vm.max_map_count


@dataclass(frozen=True)
class CachedCase:
    """One case as the sampler sees it.

    ``image`` (C, Z, Y, X) float32 and ``seg`` (1, Z, Y, X) are memory maps (views, never
    loaded copies). ``class_locations`` maps each foreground label present to an (N, 3) int32
    array of (z, y, x) voxels: compact arrays instead of the JSON's nested lists, which would
    cost roughly ten times the memory in every worker. ``properties`` is the case's JSON
    without its class locations. ``previous_stage`` (1, Z, Y, X) is the previous stage's label
    map on this grid (cascade configurations only), memory-mapped too.
    """

    case_id: str
    image: np.ndarray
    seg: np.ndarray
    class_locations: dict[int, np.ndarray]
    properties: CaseProperties
    previous_stage: np.ndarray | None = None

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.image.shape[1:])


class CachedDataset:
    """Cases of one preprocessed configuration folder, opened lazily and memory-mapped.

    ``case_ids`` restricts the dataset (a training fold); by default every case in the folder.
    Construction checks each case's files from their headers (present, not empty, as long as
    the header says), so a damaged cache is named before training starts; it stays cheap and
    safe to build in the parent process before workers start.

    ``previous_stage_folder`` (a cascade) holds each case's previous-stage label map
    (:mod:`volfnet.data.previous_stage`); every case must have one.
    """

    def __init__(
        self,
        folder: Path,
        case_ids: Sequence[str] | None = None,
        max_open_cases: int = DEFAULT_MAX_OPEN_CASES,
        previous_stage_folder: Path | None = None,
    ) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise VolfnetError(f"{self.folder}: preprocessed folder not found; run volfnet_plan_and_preprocess first")
        ids = list(case_ids) if case_ids is not None else list_preprocessed_cases(self.folder)
        if not ids:
            raise VolfnetError(f"{self.folder}: no preprocessed cases to train on")
        problems = [problem for case_id in ids for problem in case_file_problems(self.folder, case_id)]
        if problems:
            shown = "\n  ".join(problems[:10]) + (f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else "")
            raise VolfnetError(
                f"{self.folder}: {len(problems)} preprocessed file(s) missing or damaged (an interrupted run or a full disk):\n  "
                f"{shown}\nre-run volfnet_plan_and_preprocess: it redoes exactly these cases"
            )
        if max_open_cases < 1:
            raise VolfnetError(f"max_open_cases must be at least 1, got {max_open_cases}")
        self.previous_stage_folder = Path(previous_stage_folder) if previous_stage_folder is not None else None
        if self.previous_stage_folder is not None:
            missing = previous_stage_problems(self.previous_stage_folder, ids)
            if missing:
                shown = "\n  ".join(missing[:10]) + (f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else "")
                raise VolfnetError(
                    f"{self.previous_stage_folder}: {len(missing)} previous-stage segmentation(s) missing or damaged:\n  {shown}\n"
                    "the previous stage's final validation writes them: train every fold of it (or rerun with --val)"
                )
        self.case_ids: list[str] = ids
        self.max_open_cases = max_open_cases
        self._open: OrderedDict[str, CachedCase] = OrderedDict()

    def __len__(self) -> int:
        return len(self.case_ids)

    def __getitem__(self, index: int) -> CachedCase:
        return self.load(self.case_ids[index])

    def __getstate__(self) -> dict:
        # A spawned worker gets the dataset without the parent's open maps; it opens its own.
        state = self.__dict__.copy()
        state["_open"] = OrderedDict()
        return state

    def open_all(self) -> None:
        """Open every case now (at most ``max_open_cases``), e.g. before forking workers."""
        for case_id in self.case_ids[: self.max_open_cases]:
            self.load(case_id)

    def load(self, case_id: str) -> CachedCase:
        """The case, memory-mapped; opened on first use."""
        case = self._open.get(case_id)
        if case is not None:
            self._open.move_to_end(case_id)
            return case
        case = self._open_case(case_id)
        self._open[case_id] = case
        if len(self._open) > self.max_open_cases:
            self._open.popitem(last=False)
        return case

    def _open_case(self, case_id: str) -> CachedCase:
        try:
            image, seg, properties = load_case(self.folder, case_id, mmap=True)
        except VolfnetError as exc:
            raise VolfnetError(f"{exc}; re-run volfnet_plan_and_preprocess: it redoes damaged cases") from exc
        if seg is None:
            raise VolfnetError(f"{self.folder}: case {case_id} has no segmentation; training needs {case_id}_seg.npy")
        if image.ndim != 4 or seg.ndim != 4 or seg.shape[0] != 1 or image.shape[1:] != seg.shape[1:]:
            raise VolfnetError(
                f"{self.folder}: case {case_id} image {image.shape} and seg {seg.shape} do not fit "
                "(expected (C, Z, Y, X) and (1, Z, Y, X))"
            )
        locations = {}
        for label, points in properties.class_locations.items():
            array = np.asarray(points, dtype=np.int32).reshape(-1, 3)
            if len(array):
                locations[int(label)] = array
        properties = dataclasses.replace(properties, class_locations={})
        previous = None
        if self.previous_stage_folder is not None:
            previous = load_previous_stage(self.previous_stage_folder, case_id, image.shape[1:], mmap=True)
        return CachedCase(case_id=case_id, image=image, seg=seg, class_locations=locations, properties=properties, previous_stage=previous)
