"""The code keeps the promises setup.py makes: every module imports on the declared Python
(3.11) with the declared dependencies, ruff finds nothing (with ``target-version = "py311"``,
so syntax newer than the floor fails here), and mypy type-checks the package. Settings are in
pyproject.toml; the test extra installs both tools."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import volfnet

REPOSITORY = Path(__file__).resolve().parents[1]


def _modules() -> list[str]:
    return sorted(info.name for info in pkgutil.walk_packages(volfnet.__path__, prefix="volfnet."))


@pytest.mark.parametrize("name", _modules())
def test_every_module_imports(name):
    importlib.import_module(name)


def _tool(module: str, *args: str) -> subprocess.CompletedProcess:
    try:
        importlib.import_module(module)
    except ImportError:
        pytest.fail(f"{module} is not installed: install the test extra (pip install -e '.[test]')")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPOSITORY, capture_output=True, text=True, timeout=900)


def test_ruff_finds_nothing():
    run = _tool("ruff", "check", "volfnet", "tests", "benchmarks")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]


@pytest.mark.slow
def test_mypy_finds_nothing():
    run = _tool("mypy")  # files and settings: [tool.mypy] in pyproject.toml
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]


def test_one_version_string():
    setup_text = (REPOSITORY / "setup.py").read_text()
    assert "version=VERSION" in setup_text and '__version__ = "' in (REPOSITORY / "volfnet" / "__init__.py").read_text()
    assert f'version="{volfnet.__version__}"' not in setup_text  # read from volfnet/__init__.py, not repeated


def test_docstrings_name_modules_and_objects_that_exist():
    """A dotted ``volfnet.x.y`` in the code's text must import (module) or resolve (attribute):
    a docstring pointing at a renamed or never-written module misleads every reader."""
    import re

    missing = []
    for path in sorted((REPOSITORY / "volfnet").rglob("*.py")):
        for name in sorted(set(re.findall(r"(?<![\w.])volfnet(?:\.[a-z_0-9]+)+", path.read_text()))):
            parts = name.split(".")
            for cut in range(len(parts), 0, -1):
                try:
                    target = importlib.import_module(".".join(parts[:cut]))
                except ImportError:
                    continue
                try:
                    for attribute in parts[cut:]:
                        target = getattr(target, attribute)
                except AttributeError:
                    missing.append(f"{path.relative_to(REPOSITORY)}: {name}")
                break
            else:
                missing.append(f"{path.relative_to(REPOSITORY)}: {name}")
    assert not missing, missing


# Imports run downhill (DESIGN.md): a room imports only rooms of its own layer or below.
# io.files (atomic writes, JSON) is a leaf every layer may use, the plans included.
LAYERS = {
    0: ("errors", "values", "schema", "paths", "parallel", "plans", "volf", "io.files", "__init__", "__version__"),
    1: ("io", "networks", "data"),
    2: ("preprocessing", "evaluation", "checkpoint", "model_folder"),
    3: ("planning", "inference"),
    4: ("training", "model_selection", "model_sharing"),
    5: ("cli", "demo"),
}


def _layer(dotted: str) -> int:
    """The layer of ``volfnet.<dotted>``: its longest listed prefix decides (io.files before io)."""
    parts = dotted.split(".")
    for length in range(len(parts), 0, -1):
        for layer, rooms in LAYERS.items():
            if ".".join(parts[:length]) in rooms:
                return layer
    raise AssertionError(f"volfnet.{dotted} is in no layer of LAYERS: add it")


def _volfnet_imports(path: Path) -> list[str]:
    import ast

    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("volfnet"):
            module = node.module.removeprefix("volfnet").lstrip(".")
            found += [module] if module else [alias.name for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [alias.name.removeprefix("volfnet.") for alias in node.names if alias.name.startswith("volfnet.")]
    return found


def test_imports_run_downhill():
    uphill = []
    for path in sorted((REPOSITORY / "volfnet").rglob("*.py")):
        source = ".".join(path.relative_to(REPOSITORY / "volfnet").with_suffix("").parts)
        for target in _volfnet_imports(path):
            if _layer(target) > _layer(source):
                uphill.append(f"volfnet.{source} imports volfnet.{target}")
    assert not uphill, "\n".join(uphill)
    assert _layer("inference.predictor") < _layer("training.loop")  # inference never imports training
    assert _layer("networks.fmunet") < _layer("planning.planner")  # networks never import the planner
