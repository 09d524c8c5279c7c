"""``volfnet_train`` end to end through ``main([...])`` on a tiny planned and preprocessed
dataset: training with final validation, resume, validation only, fine-tuning, bad input."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
from helpers.raw_data import make_raw_dataset
from helpers.training import plan_tiny_dataset

from volfnet.checkpoint import load_checkpoint
from volfnet.cli.plan_and_preprocess import main as plan_main
from volfnet.cli.train import build_parser
from volfnet.cli.train import main as train_main
from volfnet.training.config import apply_trainer_overrides, supervised_defaults
from volfnet.training.splits import SPLITS_FILE

TINY = [
    "--device", "cpu",
    "--set", "num_epochs=1", "--set", "iterations_per_epoch=2", "--set", "val_iterations=1",
    "--set", "num_workers=0", "--set", "progress_bar=false",
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def planned(roots):
    plan_tiny_dataset(roots["raw"])
    return roots


@pytest.fixture(scope="module")
def shared_roots(tmp_path_factory):
    """Roots for the error cases (which write nothing): dataset 1 preprocessed, dataset 2
    planned only. Made once for the module."""
    base = tmp_path_factory.mktemp("roots")
    patch = pytest.MonkeyPatch()
    for name, variable in (("raw", "VOLFNET_raw"), ("preprocessed", "VOLFNET_preprocessed"), ("results", "VOLFNET_results")):
        (base / name).mkdir()
        patch.setenv(variable, str(base / name))
    plan_tiny_dataset(base / "raw")
    make_raw_dataset(base / "raw", dataset_id=2, num_cases=5, shape=(16, 20, 20))
    assert plan_main(["-d", "2", "--target", "cpu", "--plan-only"]) == 0
    yield base
    patch.undo()


def test_train_resume_validate_and_finetune(planned, capsys):
    model = planned["results"] / "Dataset001_Toy" / "fmunet__3d_fullres"
    fold0 = model / "fold_0"
    assert train_main(["1", "3d_fullres", "0", *TINY]) == 0
    assert "training done" in capsys.readouterr().out
    assert (model / "plans.json").is_file() and (model / "dataset.json").is_file()
    splits = json.loads((planned["preprocessed"] / "Dataset001_Toy" / SPLITS_FILE).read_text())
    assert len(splits) == 5
    summary = json.loads((fold0 / "validation" / "summary.json").read_text())
    assert summary["num_cases"] == 1 and summary["per_case"][0]["case"] == splits[0]["val"][0]
    assert (fold0 / "validation" / f"{splits[0]['val'][0]}.nii.gz").is_file()
    for name in ("checkpoint_final.pt", "checkpoint_latest.pt", "log.txt", "training_log.json", "progress.png"):
        assert (fold0 / name).is_file(), name

    # --c continues from latest; --set extends the run, the stored settings are kept otherwise
    assert train_main(["1", "3d_fullres", "0", "--c", "--device", "cpu", "--set", "num_epochs=2"]) == 0
    final = load_checkpoint(fold0 / "checkpoint_final.pt")
    assert final["epoch"] == 2 and final["iteration"] == 4 and final["trainer_config"]["num_workers"] == 0

    # --val redoes only the final validation
    (fold0 / "validation" / "summary.json").unlink()
    assert train_main(["1", "3d_fullres", "0", "--val", "--device", "cpu"]) == 0
    assert (fold0 / "validation" / "summary.json").is_file()

    # --pretrained without a path: this model's pretrain/checkpoint_final.pt (a tagged model
    # falls back to the untagged folder, where volfnet_pretrain writes); fine-tuning preset (MIS-FM's Adam)
    (model / "pretrain").mkdir()
    shutil.copyfile(fold0 / "checkpoint_final.pt", model / "pretrain" / "checkpoint_final.pt")
    assert train_main(["1", "3d_fullres", "1", *TINY, "--tag", "finetuned", "--pretrained"]) == 0
    tuned = load_checkpoint(planned["results"] / "Dataset001_Toy" / "fmunet__3d_fullres__finetuned" / "fold_1" / "checkpoint_final.pt")
    assert (tuned["trainer_config"]["optimizer"], tuned["trainer_config"]["lr"], tuned["trainer_config"]["schedule"]) == ("adam", 1e-3, "poly")
    assert tuned["trainer_config"]["pretrained_weights"] == "all"  # the preset loads every weight that fits
    tuned_log = (planned["results"] / "Dataset001_Toy" / "fmunet__3d_fullres__finetuned" / "fold_1" / "log.txt").read_text()
    assert "not an encoder weight" not in tuned_log

    # fold all, the encoder only, from a checkpoint file
    source = fold0 / "checkpoint_final.pt"
    assert train_main(["1", "3d_fullres", "all", *TINY, "--pretrained", str(source), "--set", "pretrained_weights=encoder"]) == 0
    assert (model / "fold_all" / "validation" / "summary.json").is_file()
    assert "not an encoder weight (encoder-only loading)" in (model / "fold_all" / "log.txt").read_text()
    assert load_checkpoint(model / "fold_all" / "checkpoint_final.pt")["trainer_config"]["pretrained_weights"] == "encoder"


def test_num_gpus_starts_one_training_process_per_gpu(planned, monkeypatch):
    """The --num-gpus wiring: the processes are started through distributed.launch with the
    request (the multi-process run itself is tested in test_training_distributed.py)."""
    started = []

    def fake_launch(fn, num_processes, args, device_type):
        started.append((num_processes, device_type))
        fn(*args)  # one process, in here

    monkeypatch.setattr("volfnet.training.train.distributed.launch", fake_launch)
    assert train_main(["1", "3d_fullres", "0", *TINY, "--num-gpus", "2"]) == 0
    assert started == [(2, "cpu")]
    assert (planned["results"] / "Dataset001_Toy" / "fmunet__3d_fullres" / "fold_0" / "checkpoint_final.pt").is_file()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["1", "3d_fullres", "7"], r"fold 7 does not exist: the splits have folds 0..4 \(and 'all'\)"),
        (["1", "3d_fullres", "-1"], "fold -1 is out of range: folds are numbered from 0"),
        (["9", "3d_fullres", "0"], "dataset 9 is not preprocessed .*run `volfnet_plan_and_preprocess -d 9 -c 3d_fullres` first"),
        (["1", "3d_lowres", "0"], r"configuration '3d_lowres' is not in .*plans.json \(planned: \['2d', '3d_fullres'\]\)"),
        (["1", "3d_fullres", "0", "--c"], "cannot resume: .*checkpoint_latest.pt does not exist"),
        (["1", "3d_fullres", "0", "--pretrained"], "no pretrained checkpoint at .*pretrain/checkpoint_final.pt: run `volfnet_pretrain -d 1"),
        (["1", "3d_fullres", "0", "--pretrained", "missing.pt"], "pretrained checkpoint missing.pt does not exist"),
        (["1", "3d_fullres", "0", "--network", "pctnet"], "use fmunet, not pctnet"),
        (["1", "3d_fullres", "0", "--set", "lr=fast"], "lr must be a positive float32 number"),
        (["1", "3d_fullres", "0", "--set", "speed=2"], "unknown trainer setting 'speed'; valid keys"),
        (["1", "3d_fullres", "0", "--val"], "checkpoint_final.pt does not exist: train this fold first"),
        (["2", "3d_fullres", "0"], "no preprocessed labelled cases for configuration 3d_fullres; run `volfnet_plan_and_preprocess -d 2 -c 3d_fullres`"),
    ],
)
def test_bad_input_is_a_clear_error(shared_roots, capsys, argv, message):
    assert train_main([*argv, "--device", "cpu"]) == 2
    error = capsys.readouterr().err
    assert error.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in error
    assert re.search(message, error), error



def documented_train_commands() -> list[list[str]]:
    """Every ``volfnet_train`` command in documentation/training.md, as argument lists."""
    text = (Path(__file__).parents[1] / "documentation" / "training.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL):
        for line in block.splitlines():
            words = shlex.split(line.split("#")[0])
            if "volfnet_train" in words:
                commands.append(words[words.index("volfnet_train") + 1:])
            elif "volfnet.cli.train" in words:
                commands.append(words[words.index("volfnet.cli.train") + 1:])
    return commands


def test_documented_commands_parse_and_their_settings_are_valid():
    """The commands in the guide are valid (the runs themselves are the tests above and in
    test_training_distributed.py); their --set values pass the trainer's checks."""
    commands = documented_train_commands()
    assert len(commands) >= 10
    for argv in commands:
        args = build_parser().parse_args(argv)
        apply_trainer_overrides(supervised_defaults(), args.overrides)
