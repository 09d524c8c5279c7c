"""``volfnet_export_model`` / ``volfnet_install_model`` end to end on a tiny model folder:
export, install into another results root, predict with both (byte-identical outputs), and
every kind of bad archive refused with its problem named and nothing installed."""

from __future__ import annotations

import hashlib
import json
import stat
import zipfile
from pathlib import Path

import pytest
from helpers.model_folder import DATASET_NAME, model_environment

from volfnet import __version__
from volfnet.cli.export_model import main as export_main
from volfnet.cli.install_model import main as install_main
from volfnet.cli.predict import main as predict_main
from volfnet.errors import VolfnetError
from volfnet.evaluation.postprocessing import POSTPROCESSING_FILE, PostprocessingDecision, save_postprocessing
from volfnet.model_sharing import ARCHIVE_FORMAT_VERSION, MANIFEST_FILE, export_model, install_model

MODEL = f"{DATASET_NAME}/fmunet__3d_fullres"
EXPECTED_FILES = {
    f"{MODEL}/plans.json", f"{MODEL}/dataset.json", f"{MODEL}/{POSTPROCESSING_FILE}",
    f"{MODEL}/fold_0/checkpoint_final.pt", f"{MODEL}/fold_1/checkpoint_final.pt",
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A model folder (two folds, a postprocessing decision) exported with the CLI."""
    base = tmp_path_factory.mktemp("sharing")
    with model_environment(base / "source") as setup:
        save_postprocessing(PostprocessingDecision(foreground_largest_component=True), setup.model_folder / POSTPROCESSING_FILE)
        archive = base / "model.zip"
        assert export_main(["-d", "4", "-c", "3d_fullres", "-f", "0", "1", "--checkpoint", "final", "-o", str(archive)]) == 0
        yield setup, archive, base


def entries(archive: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(archive) as z:
        return {info.filename: z.read(info) for info in z.infolist()}


def rebuild(source: Path, target: Path, change) -> Path:
    """Copy an archive entry by entry after ``change(dict name -> bytes)``; values may also be
    ``(ZipInfo, bytes)`` for entries with special attributes."""
    contents = entries(source)
    change(contents)
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in contents.items():
            if isinstance(data, tuple):
                z.writestr(*data)
            else:
                z.writestr(zipfile.ZipInfo(name), data)
    return target


def change_manifest(contents: dict, **changes) -> None:
    manifest = json.loads(contents[MANIFEST_FILE])
    manifest.update(changes)
    contents[MANIFEST_FILE] = json.dumps(manifest).encode()


def test_the_archive_holds_the_model_files_and_a_checksummed_manifest(exported):
    setup, archive, _ = exported
    contents = entries(archive)
    assert set(contents) == EXPECTED_FILES | {MANIFEST_FILE}
    manifest = json.loads(contents[MANIFEST_FILE])
    assert manifest["format"] == "volfnet-model" and manifest["format_version"] == ARCHIVE_FORMAT_VERSION
    assert manifest["volfnet_version"] == __version__
    assert (manifest["dataset"], manifest["model_folder"], manifest["folds"], manifest["checkpoint"]) == (
        DATASET_NAME, "fmunet__3d_fullres", [0, 1], "final")
    listed = {entry["path"]: entry for entry in manifest["files"]}
    assert set(listed) == EXPECTED_FILES
    for name, entry in listed.items():
        original = (setup.model_folder / name[len(MODEL) + 1:]).read_bytes()
        assert contents[name] == original
        assert entry == {"path": name, "size": len(original), "sha256": hashlib.sha256(original).hexdigest()}
    assert not any("best" in name for name in contents)  # only the chosen checkpoint
    again = export_model(setup.model_folder, archive.with_name("again.zip"), [0, 1], "final")
    assert archive.with_name("again.zip").read_bytes() == archive.read_bytes()  # reproducible
    assert again.files == {entry["path"]: {"size": entry["size"], "sha256": entry["sha256"]} for entry in manifest["files"]}


def test_installed_model_predicts_byte_for_byte_like_the_original(exported, tmp_path, monkeypatch, capsys):
    setup, archive, _ = exported
    other = tmp_path / "other_results"
    monkeypatch.setenv("VOLFNET_results", str(other))
    assert install_main([str(archive)]) == 0
    installed = other / DATASET_NAME / "fmunet__3d_fullres"
    assert f"installed {installed}" in capsys.readouterr().out
    assert sorted(str(p.relative_to(other)) for p in other.rglob("*") if p.is_file()) == sorted(EXPECTED_FILES)
    common = ["-i", str(setup.input_folder), "--device", "cpu", "--disable-tta", "-np", "0", "--save-probabilities"]
    assert predict_main([*common, "-m", str(setup.model_folder), "-o", str(tmp_path / "original")]) == 0
    assert predict_main([*common, "-m", str(installed), "-o", str(tmp_path / "installed")]) == 0
    for name in ("case_000.nii.gz", "case_000.npz"):
        assert (tmp_path / "original" / name).read_bytes() == (tmp_path / "installed" / name).read_bytes(), name

    # an installed model is not replaced without --force; with it, it is
    (installed / "stale.txt").write_text("from before")
    assert install_main([str(archive)]) == 2
    assert "--force" in capsys.readouterr().err and (installed / "stale.txt").is_file()
    assert install_main([str(archive), "--force"]) == 0
    assert not (installed / "stale.txt").exists() and (installed / "fold_1" / "checkpoint_final.pt").is_file()
    assert [p.name for p in (other / DATASET_NAME).iterdir()] == ["fmunet__3d_fullres"]  # no staging left behind


def _altered(contents):
    name = f"{MODEL}/fold_0/checkpoint_final.pt"
    data = bytearray(contents[name])
    data[len(data) // 2] ^= 0xFF
    contents[name] = bytes(data)


def _symlink(contents):
    info = zipfile.ZipInfo(f"{MODEL}/link")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    contents["link"] = (info, b"/etc/passwd")


def _listed_foreign_file(contents):
    """A file that is in the manifest, with a correct checksum, but is no part of a model."""
    data = b"#!/bin/sh\necho hi\n"
    contents[f"{MODEL}/run.sh"] = data
    manifest = json.loads(contents[MANIFEST_FILE])
    manifest["files"].append({"path": f"{MODEL}/run.sh", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    contents[MANIFEST_FILE] = json.dumps(manifest).encode()


BAD_ARCHIVES = {
    "altered file": (_altered, "fold_0/checkpoint_final.pt does not match its SHA-256"),
    "missing file": (lambda c: c.pop(f"{MODEL}/fold_1/checkpoint_final.pt"), f"missing from the archive: {MODEL}/fold_1/checkpoint_final.pt"),
    "extra file": (lambda c: c.update({f"{MODEL}/notes.txt": b"hi"}), f"not in the manifest: {MODEL}/notes.txt"),
    "parent path": (lambda c: c.update({"../evil": b"x"}), "unsafe entry '../evil' in the archive: a '..' component"),
    "nested parent path": (lambda c: c.update({f"{MODEL}/../../../evil": b"x"}), "a '..' component"),
    "absolute path": (lambda c: c.update({"/tmp/evil": b"x"}), "unsafe entry '/tmp/evil' in the archive: an absolute path"),
    "symbolic link": (_symlink, "is a symbolic link"),
    "newer format": (lambda c: change_manifest(c, format_version=ARCHIVE_FORMAT_VERSION + 1), "is newer than this volfnet"),
    "listed foreign file": (_listed_foreign_file, f"file '{MODEL}/run.sh' is not part of a model folder"),
    "no manifest": (lambda c: c.pop(MANIFEST_FILE), "no manifest.json"),
    "foreign manifest": (lambda c: change_manifest(c, format="something-else"), "not a volfnet model manifest"),
    "manifest path escapes": (lambda c: change_manifest(c, model_folder="../fmunet__3d_fullres"), "model_folder must be"),
}


@pytest.mark.parametrize("kind", list(BAD_ARCHIVES))
def test_a_bad_archive_is_refused_and_installs_nothing(exported, tmp_path, monkeypatch, capsys, kind):
    _, archive, _ = exported
    change, message = BAD_ARCHIVES[kind]
    bad = rebuild(archive, tmp_path / "bad.zip", change)
    results = tmp_path / "results"  # not there yet: a failed install must not leave it behind either
    monkeypatch.setenv("VOLFNET_results", str(results))
    assert install_main([str(bad)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(bad) in err, err
    assert not results.exists()  # nothing installed, no staging folder, no dataset folder
    assert not (tmp_path / "evil").exists() and not Path("/tmp/evil").exists()


def test_not_a_zip_and_missing_archive(tmp_path):
    junk = tmp_path / "model.zip"
    junk.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(VolfnetError, match="not a zip archive"):
        install_model(junk, tmp_path / "results")
    with pytest.raises(VolfnetError, match="archive not found"):
        install_model(tmp_path / "nothing.zip", tmp_path / "results")
    assert not (tmp_path / "results").exists()


def test_export_refuses_what_it_cannot_export(exported, monkeypatch, capsys):
    setup, _, base = exported
    for env, name in (("VOLFNET_raw", "raw"), ("VOLFNET_preprocessed", "preprocessed"), ("VOLFNET_results", "results")):
        monkeypatch.setenv(env, str(base / "source" / name))
    out = base / "never.zip"
    assert export_main(["-m", str(setup.model_folder), "-f", "3", "-o", str(out)]) == 2
    assert "no checkpoint for fold 3 (folds with checkpoint_final.pt" in capsys.readouterr().err
    assert export_main(["-d", "4", "-c", "3d_fullres", "--tag", "nope", "-o", str(out)]) == 2
    assert "fmunet__3d_fullres__nope: no such model folder" in capsys.readouterr().err
    assert export_main(["-m", str(setup.model_folder), "-o", str(base / "model.tar")]) == 2
    assert "must end in .zip" in capsys.readouterr().err
    assert not out.exists()
    # -chk best exports the best checkpoints; the default folds are all that have one
    best = base / "best.zip"
    assert export_main(["-m", str(setup.model_folder), "-chk", "best", "-o", str(best)]) == 0
    manifest = json.loads(entries(best)[MANIFEST_FILE])
    assert manifest["checkpoint"] == "best" and manifest["folds"] == [0, 1]
    assert f"{MODEL}/fold_1/checkpoint_best.pt" in entries(best)
