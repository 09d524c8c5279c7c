"""Share a trained model as one zip archive, and install such an archive safely.

An archive holds the files that make a model folder usable for prediction (see
:mod:`volfnet.model_folder`), under the path they have below ``VOLFNET_results``::

    manifest.json
    <DatasetXXX_Name>/<network>__<configuration>[__<tag>]/plans.json
                                                          dataset.json
                                                          postprocessing.json   (when the folder has one)
                                                          fold_<k>/checkpoint_<final|best>.pt   (the chosen folds)

``manifest.json`` names the archive format and its version, the volfnet version that wrote
it, the dataset, model folder, folds and checkpoint, and every file with its size and
SHA-256. Installing trusts nothing in the archive before checking it:

- every entry is a plain file or folder with a relative path: no absolute path, no ``..``
  component, no backslash, no symbolic link, no name given twice;
- the manifest's format is known and its version not newer than this code reads, and it
  lists only a model folder's files (plans, dataset.json, postprocessing.json, one
  checkpoint per listed fold);
- the files are exactly those of the manifest (none missing, none extra), every one with
  the listed size and SHA-256;
- the result opens as a model folder (plans and dataset.json readable by this volfnet) with
  a checkpoint for every listed fold.

The files are extracted into a hidden temporary folder beside the target, checked, and only
then renamed into place, so a bad archive (or a crash) installs nothing, and a model
folder that exists already is replaced only when asked (``force``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

from volfnet import __version__, paths
from volfnet.errors import VolfnetError
from volfnet.io.files import atomic_path
from volfnet.model_folder import (
    DATASET_FILE,
    PLANS_FILE,
    Fold,
    ModelFolder,
    checkpoint_path,
    fold_folder,
    parse_fold,
)

__all__ = [
    "ARCHIVE_FORMAT",
    "ARCHIVE_FORMAT_VERSION",
    "MANIFEST_FILE",
    "ArchiveManifest",
    "export_model",
    "install_model",
    "model_archive_files",
    "read_manifest",
]

logger = logging.getLogger(__name__)

ARCHIVE_FORMAT = "volfnet-model"
#: The newest manifest layout this code reads; an archive with a larger number is refused.
ARCHIVE_FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
POSTPROCESSING_FILE = "postprocessing.json"  # the name volfnet.evaluation.postprocessing writes
EXPORT_CHECKPOINTS = ("final", "best")  # the checkpoints prediction uses
REQUIRED_FILES = (PLANS_FILE, DATASET_FILE)  # besides one checkpoint per fold
OPTIONAL_FILES = (POSTPROCESSING_FILE,)
CHUNK_BYTES = 1 << 20
# A fixed time stamp for every entry: exporting the same folder twice gives the same archive.
ENTRY_TIME = (1980, 1, 1, 0, 0, 0)
DATASET_NAME = re.compile(r"^Dataset\d{3}_[A-Za-z0-9_\-.]+$")
MODEL_FOLDER_NAME = re.compile(r"^[A-Za-z0-9_\-.]+$")


@dataclass
class ArchiveManifest:
    """What ``manifest.json`` says about an archive."""

    format_version: int
    volfnet_version: str
    dataset: str
    model_folder: str
    folds: list[Fold]
    checkpoint: str
    files: dict[str, dict[str, Any]]  # archive path -> {"size": int, "sha256": str}

    @property
    def prefix(self) -> str:
        """``<dataset>/<model folder>/``: where every file of the archive lies."""
        return f"{self.dataset}/{self.model_folder}/"

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": ARCHIVE_FORMAT,
            "format_version": self.format_version,
            "volfnet_version": self.volfnet_version,
            "dataset": self.dataset,
            "model_folder": self.model_folder,
            "folds": list(self.folds),
            "checkpoint": self.checkpoint,
            "files": [{"path": path, **entry} for path, entry in self.files.items()],
        }


# --- export -------------------------------------------------------------------------------------


def _fold_checkpoint(fold: Fold, checkpoint: str) -> str:
    """``fold_<k>/checkpoint_<kind>.pt``, relative to the model folder."""
    return checkpoint_path(fold_folder(Path(), fold), checkpoint).as_posix()


def model_archive_files(model: ModelFolder, folds: Sequence[Fold], checkpoint: str) -> list[str]:
    """The files, relative to the model folder, that make ``model`` usable for prediction with
    ``folds``: plans, dataset.json, postprocessing.json when present, each fold's checkpoint.
    Installing accepts exactly these files (:data:`REQUIRED_FILES`, :data:`OPTIONAL_FILES`)."""
    files = list(REQUIRED_FILES) + [name for name in OPTIONAL_FILES if (model.path / name).is_file()]
    return files + [_fold_checkpoint(fold, checkpoint) for fold in folds]


def export_model(model_folder: Path, output_file: Path, folds: Sequence[str | int] | None = None, checkpoint: str = "final") -> ArchiveManifest:
    """Write ``model_folder`` (its plans, dataset.json, postprocessing.json and the
    ``checkpoint_<checkpoint>.pt`` of ``folds``; default every fold that has one) to the zip
    ``output_file``, atomically, with a manifest of checksums. Returns the manifest."""
    if checkpoint not in EXPORT_CHECKPOINTS:
        raise VolfnetError(f"checkpoint must be one of {EXPORT_CHECKPOINTS}, got {checkpoint!r}")
    model = ModelFolder.open(Path(model_folder))
    dataset = model.plans.dataset_name
    if not DATASET_NAME.match(dataset):
        raise VolfnetError(f"{model.path / PLANS_FILE}: dataset name {dataset!r} is not of the form DatasetXXX_Name")
    if not MODEL_FOLDER_NAME.match(model.path.name):
        raise VolfnetError(f"{model.path}: the model folder's name may hold only letters, digits, '_', '-' and '.' to be exported")
    selected = model.select_folds(folds, checkpoint)
    manifest = ArchiveManifest(ARCHIVE_FORMAT_VERSION, __version__, dataset, model.path.name, selected, checkpoint, {})
    output_file = Path(output_file)
    if output_file.suffix.lower() != ".zip":
        raise VolfnetError(f"{output_file}: the archive name must end in .zip")
    with atomic_path(output_file) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as archive:
            for relative in model_archive_files(model, selected, checkpoint):
                source = model.path / relative
                name = manifest.prefix + relative
                manifest.files[name] = _add_file(archive, source, name)
                logger.info("added %s (%d bytes)", name, manifest.files[name]["size"])
            archive.writestr(_entry(MANIFEST_FILE), json.dumps(manifest.to_dict(), indent=2) + "\n")
    logger.info("wrote %s: %s, folds %s, checkpoint_%s", output_file, manifest.prefix.rstrip("/"), selected, checkpoint)
    previous = model.plans.configuration(model.configuration).previous_stage
    if previous is not None:
        logger.warning(
            "%s is a cascade: it predicts with its %s model, which this archive does not hold; export that model folder "
            "too (volfnet_export_model -d %s -c %s), or predict with --prev-stage", model.configuration, previous, dataset, previous,
        )
    return manifest


def _entry(name: str, size: int = 0) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=ENTRY_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    info.file_size = size  # lets zipfile choose zip64 up front for files over 2 GiB
    return info


def _add_file(archive: zipfile.ZipFile, source: Path, name: str) -> dict[str, Any]:
    """Stream ``source`` into the archive as ``name``, hashing it on the way (one read)."""
    digest, size = hashlib.sha256(), 0
    with open(source, "rb") as handle, archive.open(_entry(name, source.stat().st_size), "w") as member:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
            member.write(chunk)
            size += len(chunk)
    return {"size": size, "sha256": digest.hexdigest()}


# --- checking an archive ------------------------------------------------------------------------


def _path_problem(name: str) -> str | None:
    """Why an entry name is unsafe to extract, or None."""
    if not name:
        return "an empty name"
    if "\\" in name:
        return "a backslash (Windows separator)"
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return "an absolute path"
    parts = name.rstrip("/").split("/")
    if ".." in parts:
        return "a '..' component (it would write outside the install folder)"
    if any(part in ("", ".") for part in parts):
        return "an empty or '.' component"
    return None


def _entry_kind(info: zipfile.ZipInfo) -> str:
    """``file``, ``folder``, ``symlink`` or ``special`` (device, pipe) from the entry's mode."""
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if kind == stat.S_IFLNK:
        return "symlink"
    if info.is_dir() or kind == stat.S_IFDIR:
        return "folder"
    if kind in (0, stat.S_IFREG):
        return "file"
    return "special"


def _checked_entries(archive: zipfile.ZipFile, source: Path) -> dict[str, zipfile.ZipInfo]:
    """The archive's files by name, after refusing unsafe names, links and duplicates."""
    files: dict[str, zipfile.ZipInfo] = {}
    seen: set[str] = set()
    for info in archive.infolist():
        problem = _path_problem(info.filename)
        if problem:
            raise VolfnetError(f"{source}: unsafe entry {info.filename!r} in the archive: {problem}; nothing was installed")
        kind = _entry_kind(info)
        if kind in ("symlink", "special"):
            raise VolfnetError(f"{source}: entry {info.filename!r} is a {'symbolic link' if kind == 'symlink' else 'special file'}; nothing was installed")
        if info.flag_bits & 0x1:
            raise VolfnetError(f"{source}: entry {info.filename!r} is encrypted; nothing was installed")
        name = info.filename.rstrip("/")
        if name in seen:
            raise VolfnetError(f"{source}: entry {name!r} appears twice in the archive; nothing was installed")
        seen.add(name)
        if kind == "file":
            files[name] = info
    return files


def _manifest_error(source: Path, problem: str) -> VolfnetError:
    return VolfnetError(f"{source}: {MANIFEST_FILE}: {problem}; nothing was installed")


def _parse_manifest(data: Any, source: Path) -> ArchiveManifest:
    if not isinstance(data, dict) or data.get("format") != ARCHIVE_FORMAT:
        raise _manifest_error(source, f"not a volfnet model manifest (expected \"format\": \"{ARCHIVE_FORMAT}\")")
    version = data.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise _manifest_error(source, f"format_version must be a positive whole number, got {version!r}")
    writer = str(data.get("volfnet_version", "unknown"))
    if version > ARCHIVE_FORMAT_VERSION:
        raise _manifest_error(
            source,
            f"format version {version} is newer than this volfnet ({__version__}) reads (up to {ARCHIVE_FORMAT_VERSION}); "
            f"the archive was written by volfnet {writer}: upgrade volfnet to install it",
        )
    dataset, model_folder = data.get("dataset"), data.get("model_folder")
    if not isinstance(dataset, str) or not DATASET_NAME.match(dataset):
        raise _manifest_error(source, f"dataset must be a name DatasetXXX_Name, got {dataset!r}")
    if not isinstance(model_folder, str) or not MODEL_FOLDER_NAME.match(model_folder) or len(model_folder.split("__")) not in (2, 3):
        raise _manifest_error(source, f"model_folder must be <network>__<configuration>[__<tag>], got {model_folder!r}")
    checkpoint = data.get("checkpoint")
    if checkpoint not in EXPORT_CHECKPOINTS:
        raise _manifest_error(source, f"checkpoint must be one of {EXPORT_CHECKPOINTS}, got {checkpoint!r}")
    raw_folds = data.get("folds")
    if not isinstance(raw_folds, list) or not raw_folds:
        raise _manifest_error(source, f"folds must be a non-empty list, got {raw_folds!r}")
    try:
        folds = [parse_fold(f) for f in raw_folds]
    except VolfnetError as exc:
        raise _manifest_error(source, str(exc)) from None
    entries = data.get("files")
    if not isinstance(entries, list):
        raise _manifest_error(source, "files must be a list of {\"path\", \"size\", \"sha256\"}")
    manifest = ArchiveManifest(version, writer, dataset, model_folder, folds, checkpoint, {})
    for entry in entries:
        if not isinstance(entry, dict) or set(entry) != {"path", "size", "sha256"}:
            raise _manifest_error(source, f"a file entry must have exactly path, size and sha256, got {entry!r}")
        path, size, digest = entry["path"], entry["size"], entry["sha256"]
        problem = _path_problem(path) if isinstance(path, str) else "not a string"
        if problem:
            raise _manifest_error(source, f"unsafe file path {path!r}: {problem}")
        if not path.startswith(manifest.prefix):
            raise _manifest_error(source, f"file {path!r} lies outside the model folder {manifest.prefix}")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise _manifest_error(source, f"file {path!r}: size must be a whole number of bytes, got {size!r}")
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise _manifest_error(source, f"file {path!r}: sha256 must be 64 lowercase hex digits, got {digest!r}")
        if path in manifest.files:
            raise _manifest_error(source, f"file {path!r} is listed twice")
        manifest.files[path] = {"size": size, "sha256": digest}
    required = [manifest.prefix + name for name in (*REQUIRED_FILES, *(_fold_checkpoint(fold, checkpoint) for fold in folds))]
    allowed = set(required) | {manifest.prefix + name for name in OPTIONAL_FILES}
    for path in manifest.files:
        if path not in allowed:
            raise _manifest_error(
                source, f"file {path!r} is not part of a model folder with folds {folds} (plans, dataset.json, "
                f"postprocessing.json and one checkpoint_{checkpoint}.pt per fold)"
            )
    for path in required:
        if path not in manifest.files:
            raise _manifest_error(source, f"lists no {path}; the model would not be usable")
    return manifest


def read_manifest(archive: zipfile.ZipFile, source: Path) -> ArchiveManifest:
    """The archive's manifest, validated (format, version, names, sizes, checksums' form)."""
    try:
        text = archive.read(MANIFEST_FILE)
    except KeyError:
        raise VolfnetError(f"{source}: no {MANIFEST_FILE} in the archive; it was not written by volfnet_export_model; nothing was installed") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise VolfnetError(f"{source}: {MANIFEST_FILE} is damaged ({exc}); nothing was installed") from exc
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _manifest_error(source, f"not valid JSON ({exc})") from exc
    return _parse_manifest(data, source)


def _open_archive(source: Path) -> zipfile.ZipFile:
    if not source.is_file():
        raise VolfnetError(f"{source}: archive not found")
    try:
        return zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as exc:
        raise VolfnetError(f"{source}: not a zip archive (truncated or corrupt: {exc}); nothing was installed") from exc


# --- install ------------------------------------------------------------------------------------


def _extract_checked(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, expected: dict[str, Any], source: Path) -> None:
    """Copy one entry to ``target``, stopping as soon as it exceeds the listed size; then
    compare size and SHA-256 with the manifest."""
    digest, size = hashlib.sha256(), 0
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with archive.open(info) as member, open(target, "wb") as handle:
            while chunk := member.read(CHUNK_BYTES):
                size += len(chunk)
                if size > expected["size"]:
                    raise VolfnetError(
                        f"{source}: {info.filename} is larger than the {expected['size']} bytes the manifest lists (altered); nothing was installed"
                    )
                digest.update(chunk)
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise VolfnetError(f"{source}: {info.filename} is damaged ({exc}); nothing was installed") from exc
    if size != expected["size"]:
        raise VolfnetError(f"{source}: {info.filename} has {size} bytes, the manifest lists {expected['size']} (altered or truncated); nothing was installed")
    if digest.hexdigest() != expected["sha256"]:
        raise VolfnetError(f"{source}: {info.filename} does not match its SHA-256 in the manifest (altered or damaged); nothing was installed")


def _verify_model(folder: Path, manifest: ArchiveManifest, source: Path) -> None:
    try:
        model = ModelFolder.open(folder)
    except VolfnetError as exc:
        raise VolfnetError(f"{source}: the model inside does not open with this volfnet ({exc}); nothing was installed") from None
    missing = [fold for fold in manifest.folds if not checkpoint_path(fold_folder(folder, fold), manifest.checkpoint).is_file()]
    if missing:
        raise VolfnetError(
            f"{source}: the manifest lists folds {missing} but the archive has no checkpoint_{manifest.checkpoint}.pt for them; nothing was installed"
        )
    logger.debug("verified %s: %s, folds %s", source, model.configuration, manifest.folds)


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def install_model(archive_file: Path, results_root: Path | None = None, force: bool = False) -> Path:
    """Check ``archive_file`` and install its model folder as
    ``<results_root>/<dataset>/<model folder>`` (default root: ``VOLFNET_results``); returns
    that folder. An existing model folder is replaced only with ``force``. Any problem is a
    :class:`VolfnetError` naming it, and leaves the results root as it was."""
    source = Path(archive_file)
    root = paths.results_root() if results_root is None else Path(results_root)
    with _open_archive(source) as archive:
        entries = _checked_entries(archive, source)
        manifest = read_manifest(archive, source)
        listed = set(manifest.files)
        present = set(entries) - {MANIFEST_FILE}
        missing, extra = sorted(listed - present), sorted(present - listed)
        if missing:
            raise VolfnetError(f"{source}: the manifest lists {len(missing)} file(s) missing from the archive: {', '.join(missing)}; nothing was installed")
        if extra:
            raise VolfnetError(f"{source}: {len(extra)} file(s) in the archive are not in the manifest: {', '.join(extra)}; nothing was installed")
        target = root / manifest.dataset / manifest.model_folder
        if target.exists() and not force:
            raise VolfnetError(f"{target}: a model folder is installed there already; pass --force to replace it")
        made = [folder for folder in (target.parent, *target.parent.parents) if not folder.exists()]  # deepest first
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{manifest.model_folder}.", suffix=".installing", dir=target.parent))
        installed = False
        try:
            staged = staging / manifest.model_folder
            for name in sorted(manifest.files):
                relative = PurePosixPath(name[len(manifest.prefix):])
                _extract_checked(archive, entries[name], staged.joinpath(*relative.parts), manifest.files[name], source)
            _verify_model(staged, manifest, source)
            _move_into_place(staged, target, staging)
            installed = True
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            for folder in made if not installed else []:
                with contextlib.suppress(OSError):  # made here a moment ago; removed only while empty
                    folder.rmdir()
    logger.info("installed %s (volfnet %s archive): folds %s, checkpoint_%s", target, manifest.volfnet_version, manifest.folds, manifest.checkpoint)
    return target


def _move_into_place(staged: Path, target: Path, staging: Path) -> None:
    """Rename the checked folder onto ``target``; an existing target is moved aside first and
    put back if the rename fails, then deleted with the staging folder."""
    for folder in [staged, *(p for p in staged.rglob("*") if p.is_dir())]:
        _fsync_folder(folder)
    previous = staging / "previous"
    replaced = target.exists()
    if replaced:
        os.replace(target, previous)
    try:
        os.replace(staged, target)
    except OSError:
        if replaced:
            os.replace(previous, target)
        raise
    _fsync_folder(target.parent)
    if replaced:
        logger.info("replaced the model folder that was at %s", target)
