"""nnU-Net v2's side of the data-pipeline benchmark; runs inside the nnU-Net virtual environment.

Two commands, driven by ``data_pipeline.py`` (it never imports this file):

``export PRE_FOLDER OUT_FOLDER``
    Read nnU-Net's preprocessed 3d_fullres cases with nnU-Net's own dataset class and write
    them as plain ``.npy`` arrays plus a JSON of shapes and class locations, so volfnet's
    pipeline is fed exactly the same arrays.

``measure PRE_FOLDER --workers N --batches B --warmup W``
    Time nnU-Net's training data pipeline as its trainer builds it (``nnUNetDataLoader`` with
    the initial patch size, ``get_training_transforms``, deep-supervision scales, and
    ``NonDetMultiThreadedAugmenter`` with nnU-Net's ``num_cached``; ``SingleThreadedAugmenter``
    for 0 workers) and print one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/, for process_tree
from process_tree import tree_cpu_seconds


def export(pre_folder: str, out_folder: str) -> None:
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

    os.makedirs(out_folder, exist_ok=True)
    dataset = nnUNetDatasetBlosc2(pre_folder)
    index = {}
    for identifier in dataset.identifiers:
        data, seg, _, properties = dataset.load_case(identifier)
        np.save(os.path.join(out_folder, f"{identifier}.npy"), np.asarray(data[:], dtype=np.float32))
        np.save(os.path.join(out_folder, f"{identifier}_seg.npy"), np.asarray(seg[:]).astype(np.int8))
        locations = {
            str(int(label)): np.asarray(points)[:, 1:].astype(int).tolist()
            for label, points in properties["class_locations"].items()
            if len(points)
        }
        index[identifier] = {
            "shape": [int(s) for s in data.shape[1:]],
            "spacing": [float(s) for s in properties["spacing"]],
            "class_locations": locations,
        }
    with open(os.path.join(out_folder, "cases.json"), "w") as handle:
        json.dump(index, handle)
    print(f"exported {len(index)} cases", file=sys.stderr)


def measure(pre_folder: str, workers: int, batches: int, warmup: int) -> None:
    from batchgenerators.dataloading.nondet_multi_threaded_augmenter import (
        NonDetMultiThreadedAugmenter,
    )
    from batchgenerators.dataloading.single_threaded_augmenter import (
        SingleThreadedAugmenter,
    )
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.training.data_augmentation.compute_initial_patch_size import (
        get_patch_size,
    )
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    dataset_folder = os.path.dirname(pre_folder.rstrip("/"))
    plans = PlansManager(os.path.join(dataset_folder, "nnUNetPlans.json"))
    configuration = plans.get_configuration("3d_fullres")
    labels = plans.get_label_manager(load_json(os.path.join(dataset_folder, "dataset.json")))
    patch = configuration.patch_size
    # as nnUNetTrainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size (3D, not dummy-2D)
    rotation = (-30.0 / 360 * 2.0 * np.pi, 30.0 / 360 * 2.0 * np.pi)
    initial_patch = get_patch_size(patch, rotation, rotation, rotation, (0.85, 1.25))
    ds_scales = [list(s) for s in 1 / np.cumprod(np.vstack(configuration.pool_op_kernel_sizes), axis=0)][:-1]
    transforms = nnUNetTrainer.get_training_transforms(
        patch, rotation, ds_scales, (0, 1, 2), False, use_mask_for_norm=configuration.use_mask_for_norm,
        is_cascaded=False, foreground_labels=labels.foreground_labels, regions=None, ignore_label=None,
    )
    dataset = nnUNetDatasetBlosc2(pre_folder)
    loader = nnUNetDataLoader(
        dataset, configuration.batch_size, initial_patch, patch, labels, oversample_foreground_percent=0.33,
        sampling_probabilities=None, pad_sides=None, transforms=transforms,
    )
    if workers == 0:
        augmenter = SingleThreadedAugmenter(loader, None)
    else:
        augmenter = NonDetMultiThreadedAugmenter(
            loader, None, num_processes=workers, num_cached=max(6, workers // 2), seeds=None, pin_memory=False, wait_time=0.002
        )
    for _ in range(warmup):
        batch = next(augmenter)
    cpu_start, start = tree_cpu_seconds(), time.perf_counter()
    for _ in range(batches):
        batch = next(augmenter)
    elapsed = time.perf_counter() - start
    cpu = tree_cpu_seconds() - cpu_start
    if workers:
        augmenter._finish()
    print(json.dumps({
        "side": "nnunet",
        "workers": workers,
        "batch_size": configuration.batch_size,
        "patch": list(patch),
        "initial_patch": [int(v) for v in initial_patch],
        "targets": [list(t.shape) for t in batch["target"]],
        "seconds": elapsed,
        "samples_per_second": batches * configuration.batch_size / elapsed,
        "cpu_ms_per_sample": 1000 * cpu / (batches * configuration.batch_size),
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    export_parser = commands.add_parser("export")
    export_parser.add_argument("pre_folder")
    export_parser.add_argument("out_folder")
    measure_parser = commands.add_parser("measure")
    measure_parser.add_argument("pre_folder")
    measure_parser.add_argument("--workers", type=int, default=2)
    measure_parser.add_argument("--batches", type=int, default=50)
    measure_parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    if args.command == "export":
        export(args.pre_folder, args.out_folder)
    else:
        measure(args.pre_folder, args.workers, args.batches, args.warmup)


if __name__ == "__main__":
    main()
