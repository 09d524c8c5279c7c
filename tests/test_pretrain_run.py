"""volfnet_pretrain end to end on a CPU: a tiny run that is interrupted, resumed with --c, learns
the fusion levels well above chance, and leaves a checkpoint that fine-tuning accepts."""

import dataclasses
import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
from matplotlib.image import imread
from helpers.pretraining import fast_overrides, make_preprocessed_dataset
from helpers.roots import make_roots, point_environment_at

from volfnet.checkpoint import checkpoint_spec, load_checkpoint
from volfnet.cli.pretrain import main
from volfnet.networks.build import build_network
from volfnet.plans import Plans
from volfnet.training.initial_weights import load_initial_weights
from volfnet.training.pretrain import PretrainRequest, prepare, resolve_topology
from volfnet.training.pretrain_task import VolFPretrainingTask
from volfnet.training.train import TrainRequest, resolve_pretrained
from volfnet.volf.visualize import PANEL_PIXELS

ITERATIONS = 80
PER_EPOCH = 16
INTERRUPT_AT = 2 * PER_EPOCH  # the first batch of epoch 2: epochs 0 and 1 are checkpointed
# A task a 4/8/16-wide FMUNet learns in 80 CPU steps: three fusion levels (alpha 0, 1/2, 1),
# blocks of 6-12 voxels, no intensity/scale augmentation, and white-noise-like texture, where a
# 50/50 mix of two independent crops has half the local variance of either. (Telling alpha 0
# from alpha 1 needs long-range context that such a short run does not learn.)
VOLF_SETTINGS = [
    "volf.fusion_mode=grid",  # the blocks above; auto would pick box fusion for images this close to the patch
    "volf.num_classes=3",
    "volf.augmentation_mode=0",
    "volf.block_size_min=[6,6,6]",
    "volf.block_size_max=[12,12,12]",
    "lr=0.003",
    f"iterations_per_epoch={PER_EPOCH}",
]
ARGS = ["-d", "1", "--iterations", str(ITERATIONS), "--val-samples", "16", "--device", "cpu", "-np", "1"]


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Interrupt:
    """A training producer that stops the run with Ctrl-C when batch ``index`` is due."""

    def __init__(self, producer, index):
        self.producer, self.index = producer, index

    def __call__(self, index):
        if index >= self.index:
            raise KeyboardInterrupt
        return self.producer(index)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("pretrain")
    roots = make_roots(base)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the 2 shared cores: one thread avoids contention with other jobs
    with pytest.MonkeyPatch.context() as patch:
        point_environment_at(roots, patch)
        make_preprocessed_dataset(roots, 1, "Noise", count=4, num_test=1, structure=0.5, noise=2.0)
        settings = [item for s in VOLF_SETTINGS + fast_overrides() for item in ("--set", s)]
        original = VolFPretrainingTask.training_producer
        patch.setattr(VolFPretrainingTask, "training_producer", lambda self, seed: Interrupt(original(self, seed), INTERRUPT_AT))
        interrupted = main(ARGS + settings)
        folder = roots["results"] / "Dataset001_Noise" / "fmunet__3d_fullres" / "pretrain"
        before = {
            "latest_epoch": load_checkpoint(folder / "checkpoint_latest.pt")["epoch"],
            "validation": digest(folder / "validation_set" / "images.npy") + digest(folder / "validation_set" / "labels.npy"),
        }
        patch.setattr(VolFPretrainingTask, "training_producer", original)
        resumed = main(ARGS + settings + ["--c"])
        yield {"roots": roots, "folder": folder, "interrupted": interrupted, "resumed": resumed, "before": before, "settings": settings}
    torch.set_num_threads(threads)


def chance_dice(labels: np.ndarray, num_classes: int) -> float:
    """The best mean Dice without looking at the image: a random guess by the class frequencies
    (class c gets Dice p_c, mean 1 / classes), or one constant class (2 p / (1 + p) for it)."""
    fractions = np.bincount(labels.ravel(), minlength=num_classes) / labels.size
    constant = max(2 * p / (1 + p) for p in fractions) / num_classes
    return max(1 / num_classes, constant)


def test_interrupted_run_resumes_with_c_and_keeps_its_validation_set(run):
    folder = run["folder"]
    assert run["interrupted"] == 130 and run["before"]["latest_epoch"] == 2
    assert run["resumed"] == 0
    for kind in ("latest", "best", "final"):
        assert (folder / f"checkpoint_{kind}.pt").is_file()
    log = load_checkpoint(folder / "checkpoint_final.pt")["logs"]
    assert log["epoch"] == [0, 1, 2, 3, 4]
    validation = digest(folder / "validation_set" / "images.npy") + digest(folder / "validation_set" / "labels.npy")
    assert validation == run["before"]["validation"]
    settings = json.loads((folder / "pretrain_settings.json").read_text())
    assert settings["volf"]["num_classes"] == 3 and settings["validation_samples"] == 16
    assert settings["volf"]["fusion_mode"] == "grid"
    assert [p["name"] for p in settings["pool"]] == ["Dataset001_Noise/imagesTr", "Dataset001_Noise/imagesTs"]
    samples = imread(folder / "samples.png")
    assert samples.shape[1] == 5 * PANEL_PIXELS  # foreground, background, fused image, label, prediction
    for name in ("progress.png", "log.txt"):
        assert (folder / name).is_file()
    assert (folder.parent / "plans.json").is_file() and (folder.parent / "dataset.json").is_file()


def test_validation_dice_over_the_fusion_levels_rises_well_above_chance(run):
    log = load_checkpoint(run["folder"] / "checkpoint_final.pt")["logs"]
    labels = np.load(run["folder"] / "validation_set" / "labels.npy")
    chance = chance_dice(labels, 3)
    first, last = log["mean_dice"][0], log["mean_dice"][-1]
    print(f"mean Dice over levels 0..2: first epoch {first:.3f}, last {last:.3f}, chance {chance:.3f}")
    assert last >= chance + 0.1
    assert last >= first + 0.1
    assert log["pseudo_dice"][-1][1] > 0.4  # the 50/50 mix level, at first barely predicted


def test_checkpoint_seeds_fine_tuning_of_a_segmentation_network_without_its_head(run):
    checkpoint = load_checkpoint(run["folder"] / "checkpoint_final.pt")
    spec = checkpoint_spec(checkpoint)
    plans = Plans.load(run["roots"]["preprocessed"] / "Dataset001_Noise" / "plans.json")
    plan = plans.configuration("3d_fullres")
    assert spec.kind == "volf_pretraining" and spec.num_classes == 3 and spec.num_input_channels == 1
    assert spec.network == plan.network and spec.patch_size == plan.patch_size and spec.spacing == plan.spacing
    assert spec.normalization == plan.normalization and spec.labels == {"background": 0, "alpha_1_2": 1, "alpha_2_2": 2}
    # background + 3 structures: everything loads except the output convolutions of the heads
    model = build_network(plans, "3d_fullres", num_input_channels=1, num_classes=4)
    target = dataclasses.replace(spec, kind="segmentation", num_classes=4)
    report = load_initial_weights(model, run["folder"] / "checkpoint_final.pt", target)
    assert sorted(report.skipped) == sorted(k for k in checkpoint["model_state_dict"] if k.startswith("out_layers.") and ".2." in k)
    assert len(report.loaded) == len(checkpoint["model_state_dict"]) - len(report.skipped)
    assert set(report.missing) == set(report.skipped)
    loaded = model.state_dict()["encoder.en_conv1.conv_list.0.3.weight"]
    assert torch.equal(loaded, checkpoint["model_state_dict"]["encoder.en_conv1.conv_list.0.3.weight"])


def test_other_processes_read_what_the_first_prepared(run):
    overrides = [s for s in run["settings"] if s != "--set"]
    request = PretrainRequest(
        datasets=["1"], iterations=ITERATIONS, overrides=overrides, validation_samples=16, progress=False, resume=True
    )
    first = prepare(request, write=True)
    other = prepare(request, write=False)
    assert [s.case_ids for s in other.pool.sources] == [s.case_ids for s in first.pool.sources]
    assert other.validation_set == first.validation_set and other.volf_config == first.volf_config
    assert other.config == first.config and other.config.val_iterations == 8  # 16 samples in batches of 2
    assert other.config.step_size == 16 and other.config.total_iterations() == ITERATIONS  # lr halved every fifth


def test_tagged_run_gets_its_own_model_folder_that_tagged_fine_tuning_finds(run):
    overrides = [s for s in run["settings"] if s != "--set"]
    request = PretrainRequest(datasets=["1"], iterations=ITERATIONS, overrides=overrides, validation_samples=16, progress=False, tag="boxes")
    prepared = prepare(request, write=True)
    tagged = run["roots"]["results"] / "Dataset001_Noise" / "fmunet__3d_fullres__boxes"
    assert prepared.model_folder == tagged and prepared.run_folder == tagged / "pretrain"
    assert json.loads((tagged / "pretrain" / "pretrain_settings.json").read_text())["datasets"] == ["Dataset001_Noise"]
    assert (tagged / "plans.json").is_file() and (tagged / "pretrain" / "validation_set" / "images.npy").is_file()
    shutil.copyfile(run["folder"] / "checkpoint_final.pt", tagged / "pretrain" / "checkpoint_final.pt")
    train_request = TrainRequest(dataset="1", configuration="3d_fullres", fold=0, tag="boxes", pretrained="final")
    assert resolve_pretrained(train_request, tagged) == tagged / "pretrain" / "checkpoint_final.pt"
    untagged = PretrainRequest(datasets=["1"], iterations=ITERATIONS, overrides=overrides, validation_samples=16, progress=False)
    assert prepare(untagged, write=False).model_folder == run["folder"].parent


def test_network_choices(run):
    plans = Plans.load(run["roots"]["preprocessed"] / "Dataset001_Noise" / "plans.json")
    same, patch = resolve_topology(plans, "3d_fullres", None, False)
    assert same == plans.configuration("3d_fullres").network and patch == [24, 24, 24]
    pct, pct_patch = resolve_topology(plans, "3d_fullres", "pctnet", False)
    assert pct.name == "pctnet" and pct.input_size == pct_patch
    assert all(p % d == 0 for p, d in zip(pct_patch, pct.total_downsampling()))
    published, published_patch = resolve_topology(plans, "3d_fullres", "fmunet", True)
    assert published.feature_channels == [32, 64, 128, 256, 512] and published_patch == [32, 32, 32]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["-d", "42"], "no dataset with id 42"),
        (["-d", "1", "--set", "volf.nonsense=1"], "no option 'nonsense'"),
        (["-d", "1", "--set", "nonsense=1"], "unknown trainer setting 'nonsense'"),
        (["-d", "1", "--iterations", "10", "--set", "num_epochs=3"], "--iterations N or --set num_epochs=N"),
        (["-d", "1", "--set", "volf.patch_size=[22,22,22]"], "not divisible"),
        (["-d", "1", "--weights", "1", "2"], "one weight per dataset"),
        (["-d", "1", "--tag", "a__b"], "model tag 'a__b' must not contain '__'"),
    ],
)
def test_cli_reports_bad_input_in_one_line(run, capsys, extra, message):
    assert main(extra + ["--device", "cpu"]) == 2
    assert message in capsys.readouterr().err


def test_snapshot_every_reaches_the_pretraining_config(run):
    overrides = [s for s in run["settings"] if s != "--set"] + ["snapshot_every=5"]
    request = PretrainRequest(datasets=["1"], iterations=ITERATIONS, overrides=overrides, validation_samples=16, progress=False)
    assert prepare(request, write=False).config.snapshot_every == 5
