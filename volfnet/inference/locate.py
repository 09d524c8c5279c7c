"""Find a trained model folder from a dataset id or name, a configuration and a network.

``volfnet_predict -d 4 -c 3d_fullres`` must work where the user only knows the dataset id:
the dataset folder is looked up under the results root (or, by id, under the preprocessed
root, whose folder has the same name), and the network defaults to the one the plans chose.
"""

from __future__ import annotations

from pathlib import Path

from volfnet import paths
from volfnet.errors import VolfnetError
from volfnet.io.dataset import find_dataset_folder
from volfnet.model_folder import PLANS_FILE, model_folder_path
from volfnet.plans import Plans

MODEL_FOLDER_SEPARATOR = "__"  # <network>__<configuration>, see volfnet.model_folder


def _dataset_name(dataset: str | int, results_root: Path, preprocessed_root: Path) -> str:
    """The ``DatasetXXX_Name`` folder name: from the results root, else the preprocessed root."""
    try:
        return find_dataset_folder(dataset, results_root).name
    except VolfnetError as results_error:
        try:
            name = find_dataset_folder(dataset, preprocessed_root).name
        except VolfnetError:
            raise results_error from None
        raise VolfnetError(f"dataset {name} has no trained models in {results_root}; train one first") from None


def _trained_networks(dataset_folder: Path, configuration: str, tag: str = "") -> list[str]:
    suffix = f"{MODEL_FOLDER_SEPARATOR}{configuration}" + (f"{MODEL_FOLDER_SEPARATOR}{tag}" if tag else "")
    return sorted(p.name[: -len(suffix)] for p in dataset_folder.glob(f"*{suffix}") if p.is_dir() and not p.name.startswith("."))


def default_network(dataset_name: str, configuration: str, results_root: Path, preprocessed_root: Path, tag: str = "") -> str:
    """The network the dataset's plans chose for ``configuration``; without plans, the only
    network trained for it (with ``tag``, among the folders of that tag)."""
    plans_file = preprocessed_root / dataset_name / PLANS_FILE
    if plans_file.is_file():
        return Plans.load(plans_file).configuration(configuration).network.name
    trained = _trained_networks(results_root / dataset_name, configuration, tag)
    if len(trained) == 1:
        return trained[0]
    raise VolfnetError(
        f"{results_root / dataset_name}: cannot tell which network to use for {configuration} "
        f"(trained: {trained or 'none'}, and no {plans_file}); name one with --network"
    )


def locate_model_folder(dataset: str | int, configuration: str, network: str | None = None, tag: str = "") -> Path:
    """``<results>/<DatasetXXX_Name>/<network>__<configuration>[__<tag>]``, checked to exist."""
    results_root, preprocessed_root = paths.results_root(), paths.preprocessed_root()
    name = _dataset_name(dataset, results_root, preprocessed_root)
    network = network or default_network(name, configuration, results_root, preprocessed_root, tag)
    folder = model_folder_path(name, network, configuration, results_root, tag)
    if not folder.is_dir():
        available = sorted(p.name for p in (results_root / name).iterdir() if p.is_dir() and MODEL_FOLDER_SEPARATOR in p.name and not p.name.startswith("."))
        raise VolfnetError(f"{folder}: no such model folder (in {results_root / name}: {available or 'none'})")
    return folder
