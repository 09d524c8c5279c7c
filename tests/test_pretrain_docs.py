"""Every command of documentation/pretraining.md, run on tiny datasets.

``volfnet_pretrain`` commands go through the real parser and :func:`prepare` (pool with its
preprocessing, network, settings, validation set, model folder, samples.png); the training
loop itself runs in test_pretrain_run.py, including ``--c``. ``volfnet_plan_and_preprocess``
commands run completely; ``volfnet_train`` commands are parsed (their runs are the training
tests') and the weights they would load are checked against the new plans."""

import re
import shlex
from pathlib import Path

import pytest
from conftest import make_raw_dataset
from pretrain_helpers import make_image_folder, make_preprocessed_dataset
from test_plan_fit_checkpoint import pymic_checkpoint

from volfnet.checkpoint import save_checkpoint
from volfnet.cli.plan_and_preprocess import main as plan_main
from volfnet.cli.pretrain import build_parser, request_from_args
from volfnet.cli.train import build_parser as train_parser
from volfnet.networks.build import build_network
from volfnet.networks.fmunet import published_fmunet_topology
from volfnet.plans import Plans
from volfnet.training.initial_weights import load_initial_weights
from volfnet.training.pretrain import prepare

GUIDE = Path(__file__).parents[1] / "documentation" / "pretraining.md"


def documented_commands() -> list[list[str]]:
    text = GUIDE.read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL):
        commands += [shlex.split(line.split("#")[0]) for line in block.splitlines() if line.strip()]
    return commands


@pytest.fixture
def guide_world(roots, tmp_path, monkeypatch):
    """Datasets 4 and 5 as the guide names them, its folders, and its checkpoint files."""
    make_preprocessed_dataset(roots, 4, "Hippocampus", count=3, num_test=1)
    make_raw_dataset(roots["raw"], dataset_id=5, name="Prostate", num_cases=3, shape=(20, 40, 44), spacing=(2.0, 1.0, 1.0))
    make_preprocessed_dataset(roots, 5, "Prostate", count=2, seed=3)
    for name in ("unlabelled_ct", "more_ct"):
        make_image_folder(tmp_path / "data" / name, count=1)
    monkeypatch.chdir(tmp_path)
    pymic_checkpoint(tmp_path / "fmunet_abk1k_volf.pt", published_fmunet_topology(1))
    return roots, tmp_path


def localise(words: list[str], roots, tmp_path) -> list[str]:
    return [w.replace("/data/", f"{tmp_path}/data/").replace("VOLFNET_results/", f"{roots['results']}/") for w in words]


def test_every_documented_command(guide_world):
    roots, tmp_path = guide_world
    commands = [localise(c, roots, tmp_path) for c in documented_commands()]
    programs = [c[0] for c in commands]
    assert programs.count("volfnet_pretrain") >= 8 and programs.count("volfnet_plan_and_preprocess") >= 3
    prepared = {}
    for words in commands:
        program, argv = words[0], words[1:]
        line = " ".join(argv)
        if program == "volfnet_pretrain":
            request = request_from_args(build_parser().parse_args(argv))
            if request.resume:  # runs in test_pretrain_run.py
                assert request.datasets == ["4"]
                continue
            request.validation_samples, request.progress, request.preprocess_workers = 2, False, 1
            result = prepare(request, write=True)
            assert (result.run_folder / "samples.png").is_file() and (result.run_folder / "validation_set").is_dir()
            prepared[line] = result
            if line == "-d 4":  # what a finished run leaves for the guide's --pretrained path: weights + spec
                task = result.task()
                state = {"model_state_dict": task.build_network().state_dict(), "spec": task.spec().to_dict()}
                save_checkpoint(result.run_folder / "checkpoint_final.pt", state)
        elif program == "volfnet_plan_and_preprocess":
            if argv == ["-d", "4"]:  # dataset 4 exists only preprocessed here; planning is test_plan_and_preprocess's
                continue
            assert plan_main(argv + ["-np", "1"]) == 0, line
            if "--pretrained" in argv:
                check_fine_tuning_fits(roots, Path(argv[argv.index("--pretrained") + 1]))
        else:
            assert program == "volfnet_train"
            args = train_parser().parse_args(argv)
            assert args.pretrained is not None
    default = prepared["-d 4"]
    assert default.run_folder == roots["results"] / "Dataset004_Hippocampus" / "fmunet__3d_fullres" / "pretrain"
    assert [s.name for s in default.pool.sources] == ["Dataset004_Hippocampus/imagesTr", "Dataset004_Hippocampus/imagesTs"]
    pooled = prepared[next(k for k in prepared if "--images" in k)]
    assert pooled.pool.group_names == ["Dataset004_Hippocampus", "Dataset005_Prostate", "extra/unlabelled_ct", "extra/more_ct"]
    assert pooled.pool.group_probabilities() == pytest.approx([0.2, 0.2, 0.4, 0.2])
    assert [s.name for s in prepared["-d 4 --no-test-images"].pool.sources] == ["Dataset004_Hippocampus/imagesTr"]
    tuned = prepared[next(k for k in prepared if "--iterations" in k)]
    assert (tuned.config.lr, tuned.config.batch_size, tuned.config.total_iterations(), tuned.config.step_size) == (0.0005, 4, 20000, 4000)
    assert tuned.volf_config.fusion_mode == "box"
    assert prepared["-d 4 --network pctnet"].run_folder.parent.name == "pctnet__3d_fullres"
    published = prepared["-d 4 --published"]
    assert published.run_folder.parent.name == "fmunet__3d_fullres__published"
    assert published.topology.feature_channels == [32, 64, 128, 256, 512]


def check_fine_tuning_fits(roots, checkpoint: Path) -> None:
    plans = Plans.load(roots["preprocessed"] / "Dataset005_Prostate" / "plans.json")
    plan = plans.configuration("3d_fullres")
    if checkpoint.name == "fmunet_abk1k_volf.pt":
        assert plan.network == published_fmunet_topology(1)
        return
    model = build_network(plans, "3d_fullres", 1, 3)
    report = load_initial_weights(model, checkpoint, None)
    assert all(k.startswith("out_layers.") for k in report.skipped)

