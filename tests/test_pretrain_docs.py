"""Every command of documentation/pretraining.md, run on tiny datasets.

``volfnet_pretrain`` commands go through the real parser and :func:`prepare` (pool with its
preprocessing, network, settings, validation set, model folder, samples.png); the training
loop itself runs in test_pretrain_run.py, including ``--c``. ``volfnet_plan_and_preprocess``
commands run completely; ``volfnet_train`` commands are parsed (their runs are the training
tests') and the weights they would load are checked against the new plans.

The commands depend on each other as in the guide (the ``-d 4`` run leaves the checkpoint a
later plan step is given; a plan step makes the plans its fine-tuning check reads), so one
module fixture runs them all in the guide's order and records each one's failure; each command
then has a test of its own that reports its own failure, so one broken command hides no other."""

import re
import shlex
from pathlib import Path

import pytest
from helpers.checkpoints import pymic_checkpoint
from helpers.pretraining import make_image_folder, make_preprocessed_dataset
from helpers.raw_data import make_raw_dataset
from helpers.roots import make_roots, point_environment_at

from volfnet.checkpoint import save_checkpoint
from volfnet.cli.plan_and_preprocess import main as plan_main
from volfnet.cli.pretrain import build_parser, request_from_args
from volfnet.cli.train import build_parser as train_parser
from volfnet.networks.build import build_network
from volfnet.networks.fmunet import published_fmunet_topology
from volfnet.plans import Plans
from volfnet.training.initial_weights import load_initial_weights
from volfnet.training.pretrain import PreparedPretraining, prepare

GUIDE = Path(__file__).parents[1] / "documentation" / "pretraining.md"


def documented_commands() -> list[list[str]]:
    text = GUIDE.read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL):
        commands += [shlex.split(line.split("#")[0]) for line in block.splitlines() if line.strip()]
    return commands


COMMANDS = documented_commands()


# --- what the prepared pretraining runs must hold -------------------------------------------------


def check_default_run(result: PreparedPretraining, roots) -> None:
    assert result.run_folder == roots["results"] / "Dataset004_Hippocampus" / "fmunet__3d_fullres" / "pretrain"
    assert [s.name for s in result.pool.sources] == ["Dataset004_Hippocampus/imagesTr", "Dataset004_Hippocampus/imagesTs"]


def check_pooled_run(result: PreparedPretraining, roots) -> None:
    assert result.pool.group_names == ["Dataset004_Hippocampus", "Dataset005_Prostate", "extra/unlabelled_ct", "extra/more_ct"]
    assert result.pool.group_probabilities() == pytest.approx([0.2, 0.2, 0.4, 0.2])


def check_run_without_test_images(result: PreparedPretraining, roots) -> None:
    assert [s.name for s in result.pool.sources] == ["Dataset004_Hippocampus/imagesTr"]


def check_tuned_run(result: PreparedPretraining, roots) -> None:
    assert (result.config.lr, result.config.batch_size, result.config.total_iterations(), result.config.step_size) == (0.0005, 4, 20000, 4000)
    assert result.volf_config.fusion_mode == "box"


def check_pctnet_run(result: PreparedPretraining, roots) -> None:
    assert result.run_folder.parent.name == "pctnet__3d_fullres"


def check_published_run(result: PreparedPretraining, roots) -> None:
    assert result.run_folder.parent.name == "fmunet__3d_fullres__published"
    assert result.topology.feature_channels == [32, 64, 128, 256, 512]


# Checks of the ``volfnet_pretrain`` command with exactly these arguments...
RUN_CHECKS = {
    "-d 4": check_default_run,
    "-d 4 --no-test-images": check_run_without_test_images,
    "-d 4 --network pctnet": check_pctnet_run,
    "-d 4 --published": check_published_run,
}
# ... and of the first prepared ``volfnet_pretrain`` command with this flag (their paths are localised).
FIRST_RUN_WITH_FLAG_CHECKS = {"--images": check_pooled_run, "--iterations": check_tuned_run}


def test_the_guide_shows_the_commands_checked_here():
    programs = [c[0] for c in COMMANDS]
    assert programs.count("volfnet_pretrain") >= 8 and programs.count("volfnet_plan_and_preprocess") >= 3
    pretrain_lines = [" ".join(c[1:]) for c in COMMANDS if c[0] == "volfnet_pretrain"]
    assert set(RUN_CHECKS) <= set(pretrain_lines)
    assert all(any(flag in line for line in pretrain_lines) for flag in FIRST_RUN_WITH_FLAG_CHECKS)


# --- running the guide ----------------------------------------------------------------------------


def make_guide_world(roots, base: Path) -> None:
    """Datasets 4 and 5 as the guide names them, its folders, and its checkpoint files."""
    make_preprocessed_dataset(roots, 4, "Hippocampus", count=3, num_test=1)
    make_raw_dataset(roots["raw"], dataset_id=5, name="Prostate", num_cases=3, shape=(20, 40, 44), spacing=(2.0, 1.0, 1.0))
    make_preprocessed_dataset(roots, 5, "Prostate", count=2, seed=3)
    for name in ("unlabelled_ct", "more_ct"):
        make_image_folder(base / "data" / name, count=1)
    pymic_checkpoint(base / "fmunet_abk1k_volf.pt", published_fmunet_topology(1))


def localise(words: list[str], roots, base: Path) -> list[str]:
    return [w.replace("/data/", f"{base}/data/").replace("VOLFNET_results/", f"{roots['results']}/") for w in words]


def run_pretrain_command(argv: list[str], roots, prepared_lines: list[str]) -> None:
    """Prepare the run and check it; ``prepared_lines``: the argument lines prepared before."""
    line = " ".join(argv)
    request = request_from_args(build_parser().parse_args(argv))
    if request.resume:  # runs in test_pretrain_run.py
        assert request.datasets == ["4"]
        return
    checks = [RUN_CHECKS[line]] if line in RUN_CHECKS else []
    checks += [check for flag, check in FIRST_RUN_WITH_FLAG_CHECKS.items() if flag in line and not any(flag in k for k in prepared_lines)]
    prepared_lines.append(line)
    request.validation_samples, request.progress, request.preprocess_workers = 2, False, 1
    result = prepare(request, write=True)
    assert (result.run_folder / "samples.png").is_file() and (result.run_folder / "validation_set").is_dir()
    if line == "-d 4":  # what a finished run leaves for the guide's --pretrained path: weights + spec
        task = result.task()
        state = {"model_state_dict": task.build_network().state_dict(), "spec": task.spec().to_dict()}
        save_checkpoint(result.run_folder / "checkpoint_final.pt", state)
    for check in checks:
        check(result, roots)


def run_plan_command(argv: list[str], roots) -> None:
    if argv == ["-d", "4"]:  # dataset 4 exists only preprocessed here; planning is test_plan_and_preprocess's
        return
    assert plan_main(argv + ["-np", "1"]) == 0, " ".join(argv)
    if "--pretrained" in argv:
        check_fine_tuning_fits(roots, Path(argv[argv.index("--pretrained") + 1]))


def check_fine_tuning_fits(roots, checkpoint: Path) -> None:
    plans = Plans.load(roots["preprocessed"] / "Dataset005_Prostate" / "plans.json")
    plan = plans.configuration("3d_fullres")
    if checkpoint.name == "fmunet_abk1k_volf.pt":
        assert plan.network == published_fmunet_topology(1)
        return
    model = build_network(plans, "3d_fullres", 1, 3)
    report = load_initial_weights(model, checkpoint, None)
    assert all(k.startswith("out_layers.") for k in report.skipped)


@pytest.fixture(scope="module")
def guide_failures(tmp_path_factory) -> dict[int, BaseException | None]:
    """Run every command of the guide in its order, in one world; the failure of each (by its
    index in :data:`COMMANDS`), or None where it passed."""
    base = tmp_path_factory.mktemp("guide")
    roots = make_roots(base)
    failures: dict[int, BaseException | None] = {}
    prepared_lines: list[str] = []
    with pytest.MonkeyPatch.context() as patch:
        point_environment_at(roots, patch)
        patch.chdir(base)
        make_guide_world(roots, base)
        for index, words in enumerate(COMMANDS):
            program, argv = words[0], localise(words, roots, base)[1:]
            try:
                if program == "volfnet_pretrain":
                    run_pretrain_command(argv, roots, prepared_lines)
                elif program == "volfnet_plan_and_preprocess":
                    run_plan_command(argv, roots)
                else:
                    assert program == "volfnet_train"
                    assert train_parser().parse_args(argv).pretrained is not None
                failures[index] = None
            except (Exception, SystemExit) as error:  # SystemExit: a parser refused the line
                failures[index] = error
    return failures


@pytest.mark.parametrize("index", range(len(COMMANDS)), ids=[" ".join(words) for words in COMMANDS])
def test_documented_command(guide_failures, index):
    failure = guide_failures[index]
    if failure is not None:
        raise failure
