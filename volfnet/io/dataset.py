"""The nnU-Net v2 raw dataset layout, read as is.

``DatasetXXX_Name/dataset.json`` names the channels, labels and file ending;
``imagesTr/{case}_{CCCC}{ending}`` holds one file per channel (a picture may hold several:
an RGB PNG is three channels), ``labelsTr/{case}{ending}`` the
label map, and ``imagesTs/`` (optional) unlabelled test images in the same naming.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from volfnet.errors import VolfnetError
from volfnet.io.files import read_json
from volfnet.io.image_io import PICTURE_ENDINGS, SIDECAR_ENDING, SUPPORTED_ENDINGS, TIFF_ENDINGS, file_ending

DATASET_FOLDER_PATTERN = re.compile(r"^Dataset(\d{3})_(.+)$")
# nnU-Net's image file name: "{case}_{CCCC}" and the file ending, one file per channel
CHANNEL_FILE_PATTERN = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
REQUIRED_KEYS = ("channel_names", "labels", "numTraining", "file_ending")
#: nnU-Net's name for the label of voxels without annotation (sparse or partial labels): they
#: carry no loss, are never foreground centres and are left out of every score.
IGNORE_LABEL_NAME = "ignore"


@dataclass
class CaseFiles:
    """The files of one case: one image per channel and, for training cases, a label map."""

    case_id: str
    images: list[Path]
    label: Path | None = None


@dataclass
class DatasetJson:
    """The parts of ``dataset.json`` volfnet uses, validated."""

    channel_names: dict[int, str]
    labels: dict[str, int]
    num_training: int
    file_ending: str
    name: str = ""
    raw: dict = field(default_factory=dict)
    ignore_label: int | None = None  # the value of the ``"ignore"`` label; not in ``labels``
    #: Region datasets (nnU-Net's BraTS convention): the label values each region unites, in
    #: the order of the network's outputs; ``labels`` then maps each region's name to the
    #: value it is written as (``regions_class_order``). Empty for ordinary labels.
    regions: list[tuple[int, ...]] = field(default_factory=list)
    region_names: list[str] = field(default_factory=list)

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    @property
    def has_regions(self) -> bool:
        return bool(self.regions)

    @property
    def regions_class_order(self) -> list[int]:
        return [self.labels[name] for name in self.region_names]

    @property
    def label_values(self) -> list[int]:
        """The values a label map holds for its classes (regions: 0 and every value a region
        unites); the ignore label is not a class."""
        if self.has_regions:
            return sorted({0, *(v for region in self.regions for v in region)})
        return sorted(self.labels.values())

    @property
    def allowed_label_values(self) -> list[int]:
        """Every value a label map may hold: the classes and the ignore label."""
        return self.label_values + ([self.ignore_label] if self.ignore_label is not None else [])

    @property
    def foreground_labels(self) -> list[int]:
        return [v for v in self.label_values if v > 0]

    @property
    def num_classes(self) -> int:
        """Number of network outputs: background plus every foreground label, or one sigmoid
        output per region."""
        return len(self.regions) if self.has_regions else max(self.label_values) + 1

    @classmethod
    def load(cls, path: Path) -> DatasetJson:
        data = read_json(path)
        return cls.from_dict(data, str(path))

    @classmethod
    def from_dict(cls, data: dict, source: str) -> DatasetJson:
        missing = [k for k in REQUIRED_KEYS if k not in data]
        if "channel_names" in missing and "modality" in data:
            missing.remove("channel_names")
            data = {**data, "channel_names": data["modality"]}
        if missing:
            raise VolfnetError(f"{source}: missing required key(s) {missing}")
        try:
            channels = {int(k): str(v) for k, v in data["channel_names"].items()}
        except (AttributeError, ValueError) as exc:
            raise VolfnetError(f"{source}: channel_names must map channel indices to names") from exc
        if sorted(channels) != list(range(len(channels))) or not channels:
            raise VolfnetError(f"{source}: channel_names keys must be 0..N-1, got {sorted(channels)}")
        labels, regions, region_names, ignore_label = _parse_labels(data, source)
        ending = str(data["file_ending"])
        if ending not in SUPPORTED_ENDINGS:
            raise VolfnetError(f"{source}: file_ending {ending!r} is not supported; use one of {SUPPORTED_ENDINGS}")
        return cls(
            channel_names=channels,
            labels=labels,
            num_training=int(data["numTraining"]),
            file_ending=ending,
            name=str(data.get("name", "")),
            raw=dict(data),
            ignore_label=ignore_label,
            regions=regions,
            region_names=region_names,
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_labels(data: dict, source: str) -> tuple[dict[str, int], list[tuple[int, ...]], list[str], int | None]:
    """(labels, regions, region names, ignore label) from nnU-Net v2's ``labels`` and
    ``regions_class_order``. A dataset whose labels map a name to a list of values is region
    based: each non-background label is a region (the union of those values), and ``labels``
    becomes what a prediction is written as, each region's ``regions_class_order`` value."""
    raw_labels = dict(data["labels"])
    ignore_label = raw_labels.pop(IGNORE_LABEL_NAME, None)
    if ignore_label is not None and not _is_int(ignore_label):
        raise VolfnetError(f"{source}: the 'ignore' label must be one integer value, got {ignore_label!r}")
    if not any(isinstance(value, (list, tuple)) for value in raw_labels.values()):
        return _class_labels(raw_labels, ignore_label, source), [], [], ignore_label
    background = [name for name, value in raw_labels.items() if value in (0, [0])]
    if len(background) != 1 or not _is_int(raw_labels[background[0]]):
        raise VolfnetError(f"{source}: with region labels, background must be the single value 0 (one label mapped to 0)")
    names = [name for name in raw_labels if name != background[0]]
    regions = []
    for name in names:
        value = raw_labels[name]
        members = [value] if _is_int(value) else list(value) if isinstance(value, (list, tuple)) else None
        if members is None or not all(_is_int(v) for v in members):
            raise VolfnetError(f"{source}: region {name!r} must list integer label values, got {value!r}")
        if not members:
            raise VolfnetError(f"{source}: region {name!r} is empty")
        if min(members) <= 0:
            raise VolfnetError(f"{source}: region {name!r} holds {min(members)}; regions are made of foreground values (> 0)")
        regions.append(tuple(sorted(set(members))))
    order = data.get("regions_class_order")
    if order is None:
        raise VolfnetError(f"{source}: regions_class_order is required when labels are regions (lists of values), as in nnU-Net")
    if not isinstance(order, (list, tuple)) or len(order) != len(regions):
        count = len(order) if isinstance(order, (list, tuple)) else order
        raise VolfnetError(f"{source}: regions_class_order has {count} values but there are {len(regions)} regions")
    if not all(_is_int(v) and v > 0 for v in order):
        raise VolfnetError(f"{source}: regions_class_order must hold positive integers, got {order}")
    highest = max(v for region in regions for v in region)
    if ignore_label is not None and ignore_label <= highest:
        raise VolfnetError(f"{source}: the 'ignore' label must have the highest value (nnU-Net's rule), got {ignore_label} with regions up to {highest}")
    labels = {background[0]: 0, **{name: int(value) for name, value in zip(names, order)}}
    return labels, regions, names, ignore_label


def _class_labels(raw_labels: dict, ignore_label: int | None, source: str) -> dict[str, int]:
    """Integer labels: consecutive values 0..N-1, background 0, ignore above them all."""
    labels = {}
    for name, value in raw_labels.items():
        if not _is_int(value):
            raise VolfnetError(f"{source}: label {name!r} has value {value!r}; labels are integers or lists of integers (regions)")
        labels[str(name)] = value
    values = sorted(labels.values())
    if not values or values[0] != 0:
        raise VolfnetError(f"{source}: labels must include background with value 0")
    if ignore_label is not None and ignore_label <= values[-1]:
        raise VolfnetError(
            f"{source}: the 'ignore' label must have the highest value (nnU-Net's rule), got {ignore_label} "
            f"with classes up to {values[-1]}"
        )
    if values != list(range(len(values))):
        raise VolfnetError(f"{source}: label values must be consecutive integers 0..N-1, got {values}")
    return labels


def find_dataset_folder(identifier: str | int, root: Path) -> Path:
    """Find ``DatasetXXX_Name`` under ``root`` from an id (``4``, ``"004"``) or a full name."""
    text = str(identifier).strip()
    if not root.is_dir():
        raise VolfnetError(f"dataset root {root} does not exist")
    if text.isdigit():
        wanted = int(text)
        matches = [p for p in root.iterdir() if p.is_dir() and (m := DATASET_FOLDER_PATTERN.match(p.name)) and int(m.group(1)) == wanted]
        if not matches:
            available = sorted(p.name for p in root.iterdir() if DATASET_FOLDER_PATTERN.match(p.name))
            raise VolfnetError(f"no dataset with id {wanted} in {root} (found: {available or 'none'})")
        if len(matches) > 1:
            raise VolfnetError(f"dataset id {wanted} is ambiguous in {root}: {sorted(p.name for p in matches)}")
        return matches[0]
    candidate = root / text
    if not candidate.is_dir():
        raise VolfnetError(f"no dataset named {text!r} in {root}")
    return candidate


def dataset_id_and_name(folder_name: str) -> tuple[int, str]:
    match = DATASET_FOLDER_PATTERN.match(folder_name)
    if not match:
        raise VolfnetError(f"{folder_name!r} is not a dataset folder name (expected DatasetXXX_Name)")
    return int(match.group(1)), match.group(2)


def channel_file_name(case_id: str, channel: int, ending: str) -> str:
    """``{case}_{CCCC}{ending}``: the file of one channel of a case in nnU-Net's layout."""
    return f"{case_id}_{channel:04d}{ending}"


def parse_channel_file(name_without_ending: str) -> tuple[str, int] | None:
    """``("case_001", 2)`` for ``"case_001_0002"``; None for a name outside nnU-Net's rule."""
    match = CHANNEL_FILE_PATTERN.match(name_without_ending)
    return (match["case"], int(match["channel"])) if match else None


def _misnamed_file_problem(path: Path, ending: str) -> str:
    """Why a file in an images folder is not a channel file: another image format (one
    dataset uses one format, so a PNG among NIfTI volumes is an error) or a bad name."""
    other = file_ending(path)
    if other in SUPPORTED_ENDINGS and other != ending:
        return f"{path}: is a {other} file but dataset.json file_ending is {ending}; one dataset uses one image format"
    return f"{path}: name does not follow {{case}}_{{CCCC}}{ending}"


def _is_sidecar(path: Path, ending: str) -> bool:
    """A TIFF stack's spacing sidecar ``{case}.json`` (see image_io), not an image."""
    return ending in TIFF_ENDINGS and path.name.endswith(SIDECAR_ENDING)


def channel_problems(folder: Path, case_id: str, present: set[int], num_channels: int, ending: str) -> list[str]:
    """Missing or unexpected channel files of one case. Medical formats hold one channel per
    file, so every channel needs its file; a picture may hold several (RGB), so its files
    must be channels 0..n-1 without gaps and may be fewer: reading counts their components."""
    where = folder / case_id
    if ending in PICTURE_ENDINGS:
        files = len(present)
        gaps = [c for c in range(files) if c not in present]
        if gaps:
            return [f"{where}: missing channel file(s) {[f'{c:04d}' for c in gaps]} (files must be numbered 0000 upwards)"]
        if files > num_channels:
            return [f"{where}: has {files} channel files but dataset.json names {num_channels} channel(s)"]
        return []
    problems = []
    missing = [c for c in range(num_channels) if c not in present]
    extra = [c for c in sorted(present) if c >= num_channels]
    if missing:
        problems.append(f"{where}: missing channel(s) {[f'{c:04d}' for c in missing]}")
    if extra:
        problems.append(f"{where}: unexpected channel(s) {[f'{c:04d}' for c in extra]} (dataset.json has {num_channels})")
    return problems


def _usable_channel_files(files: dict[int, Path], num_channels: int, ending: str, problems: list[str]) -> list[Path] | None:
    """The files a case is read from, or None when it cannot be read: a volume case needs
    channels 0..N-1 (extra files are reported but do not stop it), a picture case a clean set."""
    if ending in PICTURE_ENDINGS:
        return None if problems else [files[c] for c in sorted(files)]
    if any(c not in files for c in range(num_channels)):
        return None
    return [files[c] for c in range(num_channels)]


def list_cases(images_dir: Path, ending: str, num_channels: int, labels_dir: Path | None = None) -> tuple[list[CaseFiles], list[str]]:
    """Group ``images_dir`` files into cases by the ``{case}_{CCCC}{ending}`` naming.

    Returns the cases and a list of problems (wrong names, missing channels, missing labels),
    so callers can report every problem at once. For pictures (PNG, BMP, TIFF) a case may
    have fewer files than channels (an RGB file holds three); see :func:`channel_problems`.
    """
    problems: list[str] = []
    channel_files: dict[str, dict[int, Path]] = {}
    for path in sorted(images_dir.iterdir()) if images_dir.is_dir() else []:
        if path.name.startswith(".") or _is_sidecar(path, ending):
            continue
        parsed = parse_channel_file(path.name[: -len(ending)]) if path.name.endswith(ending) else None
        if parsed is None:
            problems.append(_misnamed_file_problem(path, ending))
            continue
        channel_files.setdefault(parsed[0], {})[parsed[1]] = path
    cases = []
    for case_id, files in sorted(channel_files.items()):
        case_problems = channel_problems(images_dir, case_id, set(files), num_channels, ending)
        problems.extend(case_problems)
        label = None
        if labels_dir is not None:
            label = labels_dir / f"{case_id}{ending}"
            if not label.is_file():
                problems.append(f"{label}: label file missing for case {case_id}")
        usable = _usable_channel_files(files, num_channels, ending, case_problems)
        if usable is not None:
            cases.append(CaseFiles(case_id, usable, label))
    return cases, problems


@dataclass
class RawDataset:
    """A raw dataset folder with its dataset.json and case lists."""

    folder: Path
    dataset_json: DatasetJson

    @classmethod
    def open(cls, identifier: str | int, root: Path) -> RawDataset:
        folder = find_dataset_folder(identifier, root)
        return cls(folder, DatasetJson.load(folder / "dataset.json"))

    @property
    def name(self) -> str:
        return self.folder.name

    def training_cases(self) -> tuple[list[CaseFiles], list[str]]:
        images = self.folder / "imagesTr"
        if not images.is_dir():
            return [], [f"{images}: folder missing"]
        return list_cases(images, self.dataset_json.file_ending, self.dataset_json.num_channels, self.folder / "labelsTr")

    def test_cases(self) -> tuple[list[CaseFiles], list[str]]:
        images = self.folder / "imagesTs"
        if not images.is_dir():
            return [], []
        return list_cases(images, self.dataset_json.file_ending, self.dataset_json.num_channels)
