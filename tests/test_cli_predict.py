"""volfnet_predict end to end through main([...]), and every command of documentation/inference.md."""

from __future__ import annotations

import os
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from helpers.images import put_nan, rewrite
from helpers.model_folder import DATASET_NAME, NUM_CLASSES, model_environment

from volfnet.cli import predict as cli
from volfnet.errors import VolfnetError
from volfnet.inference.export import load_probabilities
from volfnet.inference.locate import locate_model_folder
from volfnet.inference.predictor import Predictor

DOCUMENTATION = Path(__file__).resolve().parents[1] / "documentation" / "inference.md"
CODE_BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.DOTALL)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    with model_environment(tmp_path_factory.mktemp("cli_predict")) as model:
        yield model


def run(args: list, capsys) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def documented(language: str) -> list[str]:
    blocks = [body for lang, body in CODE_BLOCK.findall(DOCUMENTATION.read_text()) if lang == language]
    return blocks


def documented_commands() -> list[str]:
    lines = [line.split("#")[0].strip() for block in documented("bash") for line in block.splitlines()]
    return [line for line in lines if line.startswith("volfnet_predict")]


def test_every_documented_command_runs(setup, tmp_path, capsys):
    commands = documented_commands()
    assert len(commands) >= 6
    for index, command in enumerate(commands):
        output = tmp_path / f"out{index}"
        args = []
        for token in shlex.split(os.path.expandvars(command))[1:]:
            if token == "OUT":
                token = str(output)
            elif token == "IN" or token.startswith("IN/"):
                token = str(setup.input_folder) + token[2:]
            args.append(token)
        code, out, err = run(args, capsys)
        assert code == 0, f"{command}\n{err}"
        assert (output / "case_000.nii.gz").is_file(), command
        assert "1 case(s) predicted" in out or "skipped" in out, command
        if "--save-probabilities" in args:
            assert (output / "case_000.npz").is_file()


def test_documented_python_runs(setup, tmp_path):
    """The API example predicts; the loading example then reads what it wrote."""
    blocks = sorted(documented("python"), key=lambda block: "Predictor" not in block)
    assert len(blocks) == 2
    namespaces = []
    for block in blocks:
        code = block.replace('"IN"', repr(str(setup.input_folder))).replace('"OUT/', '"' + str(tmp_path / "out") + "/")
        code = code.replace('"OUT"', repr(str(tmp_path / "out")))
        namespaces.append({})
        exec(compile(code, str(DOCUMENTATION), "exec"), namespaces[-1])
    assert namespaces[0]["summary"].predicted == ["case_000"]
    segmentation = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "case_000.nii.gz")))
    for namespace in namespaces:
        probabilities = namespace["probabilities"].astype(np.float32)
        assert probabilities.shape == (NUM_CLASSES, *segmentation.shape)
        np.testing.assert_array_equal(np.argmax(probabilities, axis=0), segmentation)


def test_probabilities_through_the_cli_match_the_label_map(setup, tmp_path, capsys):
    code, _, err = run(["-i", setup.input_folder, "-o", tmp_path, "-d", "4", "-c", "3d_fullres", "-f", "0", "--save-probabilities"], capsys)
    assert code == 0, err
    probabilities = load_probabilities(tmp_path / "case_000.npz")
    assert probabilities.dtype == np.float32
    label = sitk.ReadImage(str(tmp_path / "case_000.nii.gz"))
    source = sitk.ReadImage(str(setup.input_folder / "case_000_0000.nii.gz"))
    assert label.GetSize() == source.GetSize() and label.GetDirection() == source.GetDirection()
    assert label.GetSpacing() == pytest.approx(source.GetSpacing()) and label.GetOrigin() == pytest.approx(source.GetOrigin())
    np.testing.assert_allclose(probabilities.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(probabilities.argmax(0), sitk.GetArrayFromImage(label))


def test_continue_predicts_only_what_is_missing_and_leaves_finished_files_alone(setup, tmp_path, capsys):
    images = tmp_path / "in"
    images.mkdir()
    for case in ("case_000", "case_002"):
        shutil.copyfile(setup.raw_folder / "imagesTr" / f"{case}_0000.nii.gz", images / f"{case}_0000.nii.gz")
    source = setup.raw_folder / "imagesTr" / "case_001_0000.nii.gz"
    rewrite(source, images / "case_001_0000.mha", change=put_nan)
    args = ["-i", images, "-o", tmp_path / "out", "-d", "4", "-c", "3d_fullres", "-f", "0", "--disable-tta", "-np", "0"]
    code, _, err = run(args, capsys)
    assert code == 2
    assert "case_001_0000.mha: image contains 1 NaN" in err and "1 of 3 case(s) could not be predicted" in err
    finished = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()}
    assert sorted(finished) == ["case_000.nii.gz", "case_002.nii.gz"]
    rewrite(source, images / "case_001_0000.mha")  # fixed
    code, out, err = run([*args, "--continue"], capsys)
    assert code == 0, err
    assert "1 case(s) predicted, 2 skipped" in out
    assert {name: (tmp_path / "out" / name).stat().st_mtime_ns for name in finished} == finished
    assert (tmp_path / "out" / "case_001.mha").is_file()


def test_parts_split_a_folder_between_jobs_without_overlap(setup, tmp_path, capsys):
    images = tmp_path / "in"
    images.mkdir()
    for index in range(3):
        shutil.copyfile(setup.raw_folder / "imagesTr" / "case_000_0000.nii.gz", images / f"scan{index}_0000.nii.gz")
    predicted = []
    for part in (0, 1):
        output = tmp_path / f"part{part}"
        args = ["-i", images, "-o", output, "-d", "4", "-c", "3d_fullres", "-f", "0", "--disable-tta", "-np", "0"]
        code, out, err = run([*args, "--part", part, "--num-parts", 2], capsys)
        assert code == 0, err
        predicted.append(sorted(p.name for p in output.iterdir()))
    assert predicted == [["scan0.nii.gz", "scan2.nii.gz"], ["scan1.nii.gz"]]
    code, _, err = run(["-i", images, "-o", tmp_path / "x", "-d", "4", "-c", "3d_fullres", "--part", 2, "--num-parts", 2], capsys)
    assert code == 2 and "--part must be between 0 and 1 (--num-parts 2), got 2" in err


def test_options_reach_the_predictor(setup, tmp_path, capsys, monkeypatch):
    seen = {}
    original = Predictor.from_model_folder.__func__

    def recording(cls, folder, **kwargs):
        seen.update(kwargs, folder=folder)
        return original(cls, folder, **kwargs)

    monkeypatch.setattr(Predictor, "from_model_folder", classmethod(recording))
    code, _, err = run(["-i", setup.input_folder, "-o", tmp_path, "-d", DATASET_NAME, "-c", "3d_fullres", "-f", "1", "0",
                        "-chk", "best", "--disable-tta", "--step", "0.75", "--device", "cpu", "-np", "0"], capsys)
    assert code == 0, err
    assert seen["folder"] == setup.model_folder
    assert seen["folds"] == ["1", "0"] and seen["checkpoint"] == "best" and seen["device"] == "cpu"
    assert seen["use_mirroring"] is False and seen["step_fraction"] == 0.75 and seen["num_workers"] == 0
    assert seen["mirror_axes"] is None  # every axis training mirrored
    assert seen["backend"] == "torch" and seen["compile"] is False


def test_mirror_axes_outside_the_trained_ones_are_a_one_line_error(setup, tmp_path, capsys):
    trained = setup.plans.configuration("3d_fullres").mirror_axes
    code, _, err = run(["-i", setup.input_folder, "-o", tmp_path, "-m", setup.model_folder, "--mirror-axes", "2", "7"], capsys)
    assert code == 2 and f"mirror axes [2, 7]: training mirrored only axes {trained} (0 = Z)" in err and "Traceback" not in err
    code, _, err = run(["-i", setup.input_folder, "-o", tmp_path / "out", "-m", setup.model_folder, "--device", "cpu",
                        "--mirror-axes", str(trained[-1]), "-np", "0"], capsys)
    assert code == 0, err
    assert (tmp_path / "out" / "case_000.nii.gz").is_file()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["-f", "3"], "fold_3/checkpoint_final.pt: no checkpoint for fold 3"),
        (["-f", "7"], "fold_7/checkpoint_final.pt: no checkpoint for fold 7 (folds with checkpoint_final.pt: [0, 1])"),
        (["-f", "-1"], "fold -1 is out of range"),
        (["-chk", "best", "-f", "all"], "fold_all/checkpoint_best.pt: no checkpoint for fold all"),
    ],
)
def test_fold_problems_are_one_line_errors(setup, tmp_path, capsys, extra, message):
    code, _, err = run(["-i", setup.input_folder, "-o", tmp_path, "-d", "4", "-c", "3d_fullres", *extra], capsys)
    assert code == 2 and message in err and "Traceback" not in err


def test_output_folder_equal_to_input_folder_is_refused(setup, capsys):
    code, _, err = run(["-i", setup.input_folder, "-o", setup.input_folder, "-d", "4", "-c", "3d_fullres"], capsys)
    assert code == 2 and "the output folder is the input folder" in err


def test_unknown_dataset_and_missing_configuration(setup, tmp_path, capsys):
    code, _, err = run(["-i", setup.input_folder, "-o", tmp_path, "-d", "5", "-c", "3d_fullres"], capsys)
    assert code == 2 and "no dataset with id 5" in err
    code, _, err = run(["-i", setup.input_folder, "-o", tmp_path, "-d", "4", "-c", "3d_lowres"], capsys)
    assert code == 2 and "3d_lowres" in err
    with pytest.raises(SystemExit) as info:
        cli.main(["-i", str(setup.input_folder), "-o", str(tmp_path), "-d", "4"])
    assert info.value.code == 2 and "needs -c/--configuration" in capsys.readouterr().err


def test_model_folder_is_found_without_the_preprocessed_plans(setup, tmp_path, monkeypatch):
    monkeypatch.setenv("VOLFNET_preprocessed", str(tmp_path / "elsewhere"))
    assert locate_model_folder("4", "3d_fullres") == setup.model_folder  # the one network trained for it
    with pytest.raises(VolfnetError, match="no such model folder"):
        locate_model_folder(DATASET_NAME, "3d_fullres", network="pctnet")


def truncate(path: Path, fraction: float = 0.6) -> None:
    """Keep the first ``fraction`` of a file's bytes (a copy cut short, a disk filled up)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def test_a_truncated_gzip_image_fails_its_case_names_the_file_and_the_others_are_predicted(setup, tmp_path, capsys):
    images = tmp_path / "in"
    images.mkdir()
    for case in ("case_000", "case_001"):
        shutil.copyfile(setup.raw_folder / "imagesTr" / f"{case}_0000.nii.gz", images / f"{case}_0000.nii.gz")
    truncate(images / "case_001_0000.nii.gz")
    sitk.ReadImage(str(images / "case_001_0000.nii.gz"))  # ITK itself reads the cut file without an error
    code, _, err = run(["-i", images, "-o", tmp_path / "out", "-m", setup.model_folder, "--device", "cpu", "--disable-tta"], capsys)
    assert code != 0
    assert f"{images / 'case_001_0000.nii.gz'}: file is truncated (the gzip stream ends early" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["case_000.nii.gz"]
