"""Every console command in the README and documentation/ is one the CLI accepts.

The commands' behaviour is exercised by the tests of each command (several of which run the
documented lines themselves) and by the benchmark scripts; this test catches the drift that
slips past them: a renamed option, a removed flag, a typo in an example."""

from __future__ import annotations

import importlib
import importlib.util
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "documentation").glob("*.md"))]
CODE_BLOCK = re.compile(r"```bash\n(.*?)```", re.DOTALL)
MODULES = {
    "volfnet_convert_msd": "convert_msd",
    "volfnet_plan_and_preprocess": "plan_and_preprocess",
    "volfnet_pretrain": "pretrain",
    "volfnet_train": "train",
    "volfnet_predict": "predict",
    "volfnet_evaluate": "evaluate",
    "volfnet_demo": "demo",
    "volfnet_ensemble": "ensemble",
    "volfnet_apply_postprocessing": "apply_postprocessing",
    "volfnet_export_model": "export_model",
    "volfnet_install_model": "install_model",
    "volfnet_cv_summary": "cv_summary",
    "volfnet_find_best_configuration": "find_best_configuration",
}


def documented_lines() -> list[tuple[str, str]]:
    found = []
    for document in DOCUMENTS:
        for block in CODE_BLOCK.findall(document.read_text()):
            for line in block.splitlines():
                command = line.split(" #")[0].strip()
                for part in command.split("&&"):
                    part = part.strip()
                    if part.startswith(("volfnet_", "torchrun", "python benchmarks/")):
                        found.append((document.name, part))
    return found


def check_benchmark_command(document: str, line: str, script: str, args: list[str]) -> None:
    """The script exists; where it exposes ``parse_args()``, the documented arguments parse."""
    path = ROOT / script
    assert path.is_file(), f"{document}: {script} does not exist"
    if "def parse_args()" not in path.read_text():
        return
    spec = importlib.util.spec_from_file_location(f"documented_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sys.argv", [script, *args])
        try:
            module.parse_args()
        except SystemExit as exc:
            pytest.fail(f"{document}: `{line}` is rejected by {script} (exit {exc.code})")


def test_every_console_script_of_setup_py_is_checked():
    scripts = dict(re.findall(r'"(volfnet_\w+)=volfnet\.cli\.(\w+):main"', (ROOT / "setup.py").read_text()))
    assert scripts == MODULES


def test_the_documents_show_every_console_script():
    shown = {shlex.split(line)[0] for _, line in documented_lines()}
    assert set(MODULES) <= shown


@pytest.mark.parametrize(("document", "line"), documented_lines(), ids=lambda value: value[:60])
def test_documented_command_is_accepted(document, line):
    words = shlex.split(line)
    if words[0] == "python":
        check_benchmark_command(document, line, words[1], words[2:])
        return
    if words[0] == "torchrun":
        assert "-m" in words, f"{document}: torchrun without -m MODULE"
        module = words[words.index("-m") + 1]
        assert module.startswith("volfnet.cli.")
        name, args = module.rsplit(".", 1)[1], words[words.index("-m") + 2 :]
    else:
        assert words[0] in MODULES, f"{document}: unknown command {words[0]}"
        name, args = MODULES[words[0]], words[1:]
    parser = importlib.import_module(f"volfnet.cli.{name}").build_parser()
    try:
        parser.parse_args(args)
    except SystemExit as exc:
        pytest.fail(f"{document}: `{line}` is rejected by {words[0]} (exit {exc.code})")
