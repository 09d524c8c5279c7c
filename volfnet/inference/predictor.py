"""The predictor: trained networks + plans -> label maps in the geometry of the input scans.

One object serves three callers: ``volfnet_predict`` (raw images in a folder or a file), the
trainer's final validation (cases already in the preprocessing cache, networks in memory)
and Python users (arrays in memory). All share one path: preprocess exactly as in training
(:func:`volfnet.preprocessing.preprocessor.preprocess_array`), sliding window over the
average of the folds' logits with mirroring test-time augmentation
(:func:`volfnet.inference.sliding_window.predict_sliding_window`), export to the original
geometry (:mod:`volfnet.inference.export`), then the model folder's postprocessing.

For many cases the work overlaps: worker processes read and preprocess the next cases and a
background thread exports the previous one while the network predicts the current one.
Every output is written atomically with the label map last, so after a crash the finished
cases are valid and ``skip_existing`` predicts only the rest.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from volfnet.checkpoint import CheckpointSpec, load_checkpoint
from volfnet.errors import DataIntegrityError, VolfnetError
from volfnet.evaluation.postprocessing import POSTPROCESSING_FILE, PostprocessingDecision, load_postprocessing
from volfnet.inference.cascade import NextStageExport, labels_on_grid, with_previous_stage
from volfnet.inference.export import (
    DEFAULT_PROBABILITIES_DTYPE,
    ExportedPrediction,
    probabilities_path,
    LogitsHandover,
    logits_to_original,
    write_prediction,
)
from volfnet.inference.inputs import (
    InputCase,
    PreparedCase,
    find_input_cases,
    load_cached_case,
    load_input_case,
    prepare_case,
    read_input_images,
    single_file_case,
)
from volfnet.inference.openvino_backend import DEFAULT_BACKEND, OpenVinoNetwork, check_backend
from volfnet.inference.sliding_window import DEFAULT_STEP_FRACTION, DEFAULT_TILE_BATCH_SIZE, predict_sliding_window
from volfnet.inference.tta import min_forward_batch
from volfnet.io.dataset import DatasetJson
from volfnet.io.image_io import ImageGeometry, file_ending
from volfnet.model_folder import ModelFolder, checkpoint_path, fold_folder, model_folder_name
from volfnet.networks.build import build_network_from_topology
from volfnet.networks.runtime import full_resolution_outputs, resolve_device
from volfnet.parallel import select_part, worker_pool
from volfnet.paths import ensure_writable_dir
from volfnet.plans import ConfigurationPlan, Plans
from volfnet.io.case_store import CaseProperties

__all__ = ["DEFAULT_PREPROCESSING_WORKERS", "PredictionSummary", "Predictor", "default_preprocessing_workers"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

# With a GPU, preprocessing on the CPU can be slower than the network: two processes keep one
# case ready while the next is made (more only add memory, each holds a whole case). On the
# CPU the network already uses every core, and worker processes only compete with it:
# benchmarks/inference/predictor_memory.py measured 4.4 s/case inline, 4.6 with one process
# and 6.5 with two on a 2-core machine. The export thread overlaps in both cases.
DEFAULT_PREPROCESSING_WORKERS = {"cuda": 2, "cpu": 0}


@dataclass
class PredictionSummary:
    """What a folder prediction did: case ids predicted and skipped, and the wall time."""

    output_folder: Path
    predicted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0


def default_preprocessing_workers(device: torch.device) -> int:
    """Preprocessing processes for ``device`` (see :data:`DEFAULT_PREPROCESSING_WORKERS`)."""
    workers = DEFAULT_PREPROCESSING_WORKERS.get(device.type, 0)
    return max(0, min(workers, (os.cpu_count() or 1) - 1))


def _writable_array(data: np.ndarray) -> np.ndarray:
    """float32 data torch can wrap without a warning (memory maps are read-only: copied)."""
    data = np.asarray(data, dtype=np.float32)
    return data if data.flags.writeable and data.flags.c_contiguous else np.array(data, dtype=np.float32, order="C")


class Predictor:
    """Predicts label maps with one or more trained networks (folds, averaged).

    ``networks`` already hold their weights (the trainer passes its model; use
    :meth:`from_model_folder` for saved checkpoints). ``step_fraction``, ``use_mirroring``
    and ``tile_batch_size`` configure the sliding window; the mirrored axes are the
    configuration's ``mirror_axes`` (the ones training augmented) unless ``mirror_axes`` names
    fewer of them (2 passes per axis). ``backend="openvino"`` runs the networks with OpenVINO on
    the CPU (optional package; 1.6-2.2x faster forward passes here) and ``compile`` through
    ``torch.compile`` (3-20 s of compilation per window shape for 1.1-1.3x on the CPU): the
    speed levers for large volumes (documentation/inference.md). ``postprocessing`` is
    applied to every label map. ``num_workers`` preprocessing processes run ahead of the
    network in :meth:`predict_folder` (0: in this process; None: 2 with CUDA, 0 on the CPU).
    Probabilities are saved as ``probabilities_dtype`` (float32 by default).

    A cascade configuration (``3d_cascade_fullres``) also needs the previous stage's
    segmentation of every case: ``previous_stage`` is that stage's predictor (run on each case
    first), or ``previous_stage_folder`` holds its predictions in the scans' geometry (nnU-Net's
    ``-prev_stage_predictions``).
    """

    def __init__(
        self,
        networks: Sequence[nn.Module],
        plans: Plans,
        configuration_name: str,
        dataset_json: DatasetJson,
        device: torch.device | str | None = None,
        step_fraction: float = DEFAULT_STEP_FRACTION,
        use_mirroring: bool = True,
        tile_batch_size: int = DEFAULT_TILE_BATCH_SIZE,
        postprocessing: PostprocessingDecision | None = None,
        num_workers: int | None = None,
        probabilities_dtype: np.dtype | type = DEFAULT_PROBABILITIES_DTYPE,
        amp: bool | None = None,
        progress: bool = True,
        mirror_axes: Sequence[int] | None = None,
        compile: bool = False,
        backend: str = DEFAULT_BACKEND,
        previous_stage: Predictor | None = None,
        previous_stage_folder: Path | None = None,
    ) -> None:
        self.networks = list(networks)
        if not self.networks:
            raise VolfnetError("no network given to predict with")
        if num_workers is not None and num_workers < 0:
            raise VolfnetError(f"the number of preprocessing processes must be 0 or more, got {num_workers}")
        self.plans = plans
        self.configuration_name = configuration_name
        self.configuration: ConfigurationPlan = plans.configuration(configuration_name)
        self.dataset_json = dataset_json
        if dataset_json.num_channels != plans.num_input_channels:
            raise VolfnetError(
                f"dataset.json names {dataset_json.num_channels} channel(s) but the plans expect {plans.num_input_channels}"
            )
        self._set_previous_stage(previous_stage, previous_stage_folder)
        self.device = resolve_device(device)
        self.step_fraction = step_fraction
        self.use_mirroring = use_mirroring
        self.mirror_axes = _mirror_axes(self.configuration, mirror_axes) if use_mirroring else None
        self.tile_batch_size = tile_batch_size
        self.backend = check_backend(backend, self.device)
        if compile and self.backend != "torch":
            raise VolfnetError(f"compile applies to the torch backend; the {self.backend} backend compiles the network itself")
        self.compile = compile
        self._wrapped: list[nn.Module] | None = None  # OpenVINO or torch.compile wrappers, made on first use (deep supervision off)
        self.postprocessing = postprocessing
        self.num_workers = default_preprocessing_workers(self.device) if num_workers is None else num_workers
        self.probabilities_dtype = probabilities_dtype
        self.amp = amp
        self.progress = progress
        logger.info(
            "predictor: %d network(s) on %s (%s), patch %s, step %.2f, mirroring %s, postprocessing %s, %d preprocessing process(es)",
            len(self.networks), self.device, self.backend, self.patch_size, step_fraction,
            self.mirror_axes if self.mirror_axes else "off",
            "on" if postprocessing and (postprocessing.foreground_largest_component or postprocessing.per_label) else "off",
            self.num_workers,
        )

    # --- construction from a model folder ----------------------------------------------------

    @classmethod
    def from_model_folder(
        cls,
        folder: Path,
        folds: Sequence[int | str] | None = None,
        checkpoint: str = "final",
        device: torch.device | str | None = None,
        **options: Any,
    ) -> Predictor:
        """Load the given folds (default: every fold with ``checkpoint_<checkpoint>.pt``) of a
        model folder; ``options`` go to the constructor. Each network is built from its
        checkpoint's spec (deep supervision off) and its weights load strictly; every fold
        must agree with the others and with the folder's plans and dataset.json.
        ``postprocessing.json`` is applied when the folder has one (unless ``postprocessing``
        is given in ``options``)."""
        model = ModelFolder.open(Path(folder))
        selected = model.select_folds(folds, checkpoint)
        networks, first_spec = [], None
        for fold in selected:
            path = checkpoint_path(fold_folder(model.path, fold), checkpoint)
            network, spec = _load_fold_network(path, model)
            if first_spec is not None and spec.to_dict() != first_spec.to_dict():
                raise VolfnetError(f"{path}: its spec differs from fold {selected[0]}'s; folds of one model must share one architecture")
            first_spec = first_spec or spec
            networks.append(network)
        postprocessing_file = model.path / POSTPROCESSING_FILE
        previous_stage_options = {k: v for k, v in options.items() if k not in ("postprocessing", "previous_stage_folder")}
        if "postprocessing" not in options:  # an explicit postprocessing=None switches it off
            options["postprocessing"] = load_postprocessing(postprocessing_file) if postprocessing_file.is_file() else None
        logger.info("model %s: fold(s) %s, checkpoint_%s.pt", model.path, selected, checkpoint)
        previous = model.plans.configuration(model.configuration).previous_stage
        if previous is not None and options.get("previous_stage_folder") is None and options.get("previous_stage") is None:
            source = previous_stage_model_folder(model)
            logger.info("cascade: running the previous stage %s from %s first", previous, source)
            options["previous_stage"] = cls.from_model_folder(source, None, checkpoint, device, **previous_stage_options, postprocessing=None)
        return cls(networks, model.plans, model.configuration, model.dataset_json, device=device, **options)

    # --- properties --------------------------------------------------------------------------

    @property
    def patch_size(self) -> list[int]:
        """The sliding-window size: the training patch (PCT-Net: its fixed input size)."""
        return list(self.configuration.patch_size)

    @property
    def num_classes(self) -> int:
        return self.dataset_json.num_classes

    @property
    def num_input_channels(self) -> int:
        """Image channels per case (files to read); the network may take more (a cascade)."""
        return self.plans.num_input_channels

    @property
    def num_network_channels(self) -> int:
        return self.configuration.network_input_channels(self.plans.num_input_channels, len(self.dataset_json.foreground_labels))

    def _set_previous_stage(self, previous_stage: Predictor | None, previous_stage_folder: Path | None) -> None:
        wanted = self.configuration.previous_stage
        given = previous_stage is not None or previous_stage_folder is not None
        if wanted is None and given:
            raise VolfnetError(f"{self.configuration_name} is not a cascade configuration; it takes no previous stage")
        if previous_stage is not None and previous_stage_folder is not None:
            raise VolfnetError("give the previous stage as a predictor or as a folder of its predictions, not both")
        if previous_stage is not None:
            if previous_stage.configuration_name != wanted:
                raise VolfnetError(
                    f"{self.configuration_name} follows {wanted}, but the previous-stage model is {previous_stage.configuration_name}"
                )
            if previous_stage.plans.transpose_forward != self.plans.transpose_forward:
                raise VolfnetError("the previous-stage model was planned with another axis order; both stages must share one plans file")
        if previous_stage_folder is not None and not Path(previous_stage_folder).is_dir():
            raise VolfnetError(f"{previous_stage_folder}: folder of previous-stage predictions not found")
        self.previous_stage = previous_stage
        self.previous_stage_folder = Path(previous_stage_folder) if previous_stage_folder is not None else None

    # --- single cases -----------------------------------------------------------------------

    def predict_logits(self, data: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Float32 (K, Z, Y, X) logits, averaged over the networks, for a preprocessed
        (C, Z, Y, X) case (on the CPU)."""
        image = data if isinstance(data, torch.Tensor) else torch.from_numpy(_writable_array(data))
        if image.ndim != 4 or image.shape[0] != self.num_network_channels:
            raise VolfnetError(
                f"expected preprocessed data of shape ({self.num_network_channels}, Z, Y, X), got {list(image.shape)}"
                + (" (the image channels, then the previous stage's one-hot labels)" if self.configuration.previous_stage else "")
            )
        with full_resolution_outputs(self.networks):
            return predict_sliding_window(
                self._forward_networks(), image, self.patch_size, self.num_classes,
                step_fraction=self.step_fraction, mirror_axes=self.mirror_axes, tile_batch_size=self.tile_batch_size,
                device=self.device, amp=self.amp, progress=self.progress,
                min_forward_batch=min_forward_batch(self.device, self.configuration.network.feature_channels[0]),
            )

    def _forward_networks(self) -> list[nn.Module]:
        """The networks the sliding window calls: the PyTorch ones, or wrappers made once that
        run them through OpenVINO or ``torch.compile`` (static shapes: one window size and
        batch, so no dynamic-shape tracing)."""
        if self.backend == "torch" and not self.compile:
            return self.networks
        if self._wrapped is None:
            if self.backend == "openvino":
                self._wrapped = [OpenVinoNetwork(net) for net in self.networks]
            else:
                logger.info("compiling %d network(s) with torch.compile; the first window of each shape is slow", len(self.networks))
                self._wrapped = [cast(nn.Module, torch.compile(net, dynamic=False)) for net in self.networks]
        return self._wrapped

    def _to_original(self, handover: LogitsHandover, properties: CaseProperties, with_probabilities: bool) -> ExportedPrediction:
        """Export logits handed over to the export (freed once resampled)."""
        return logits_to_original(
            handover, properties, self.configuration.resampling, with_probabilities, self.postprocessing, self.probabilities_dtype,
            self._regions_class_order(),
        )

    def _export(
        self, handover: LogitsHandover, properties: CaseProperties, output_file: Path, save_probabilities: bool,
        next_stage: NextStageExport | None = None,
    ) -> Path:
        if next_stage is not None:  # the next stage's input first, from the same logits
            logits = handover.take()
            next_stage.write(logits, properties.case_id, properties.spacing_after_resampling)
            handover = LogitsHandover(logits)
            del logits
        prediction = self._to_original(handover, properties, save_probabilities)
        return write_prediction(prediction, properties.original_geometry, output_file)

    def _regions_class_order(self) -> list[int] | None:
        return self.dataset_json.regions_class_order if self.dataset_json.has_regions else None

    def next_stage_export(self, configuration: str, cases_folder: Path, output_folder: Path) -> NextStageExport:
        """Where this (previous) stage's predictions for ``configuration`` go (see
        :meth:`predict_cached_cases`)."""
        return NextStageExport(configuration, Path(cases_folder), Path(output_folder), self.configuration.resampling, self._regions_class_order())

    def network_input(self, prepared: PreparedCase) -> np.ndarray:
        """The case's data, with the previous stage's one-hot labels appended in a cascade (the
        previous stage is run here when the case brings its data instead of its labels)."""
        if self.configuration.previous_stage is None:
            return prepared.data
        labels = prepared.previous_stage
        if labels is None and prepared.previous_stage_case is not None and self.previous_stage is not None:
            low = prepared.previous_stage_case
            logits = self.previous_stage.predict_logits(self.previous_stage.network_input(low))
            labels = labels_on_grid(
                logits, prepared.data.shape[1:], low.properties.spacing_after_resampling,
                prepared.properties.spacing_after_resampling, self.configuration.resampling, self._regions_class_order(),
            )
            del logits
        if labels is None:
            raise VolfnetError(
                f"case {prepared.case_id}: {self.configuration_name} is a cascade and needs the {self.configuration.previous_stage} "
                "segmentation of the case (a previous-stage model or a folder of its predictions)"
            )
        return with_previous_stage(prepared.data, labels, self.dataset_json.foreground_labels)

    def _prepared_in_memory(self, image: np.ndarray, geometry: ImageGeometry, case_id: str, sources: list[Path]) -> PreparedCase:
        """A case held in memory, preprocessed (and for the previous stage too in a cascade)."""
        previous = self.configuration.previous_stage if self.previous_stage is not None else None
        return prepare_case(image, geometry, self.plans, self.configuration_name, case_id, sources, previous_stage_configuration=previous)

    def predict_preprocessed(
        self, data: np.ndarray, properties: CaseProperties, output_file: Path | None = None, save_probabilities: bool = False
    ) -> ExportedPrediction:
        """Predict a case already preprocessed (e.g. from the npy cache) and map it to its
        original geometry; written to ``output_file`` (+ ``<case>.npz``) when given. ``data``
        holds the network's channels (a cascade: the previous stage's one-hot labels too)."""
        prediction = self._to_original(LogitsHandover(self.predict_logits(data)), properties, save_probabilities)
        if output_file is not None:
            write_prediction(prediction, properties.original_geometry, Path(output_file))
        return prediction

    def predict_array(
        self, image: np.ndarray, geometry: ImageGeometry, case_id: str = "case", with_probabilities: bool = False
    ) -> ExportedPrediction:
        """Predict a (C, Z, Y, X) image held in memory, as read from its files, with its
        geometry; the label map (and probabilities) come back in that geometry."""
        image = np.asarray(image)
        if image.ndim != 4:
            raise VolfnetError(f"case {case_id}: expected a (C, Z, Y, X) image, got shape {list(image.shape)}")
        if list(image.shape[1:]) != list(geometry.shape):
            raise VolfnetError(f"case {case_id}: image shape {list(image.shape[1:])} differs from its geometry's {geometry.shape}")
        prepared = self._prepared_in_memory(image.astype(np.float32, copy=False), geometry, case_id, [])
        return self._to_original(LogitsHandover(self.predict_logits(self.network_input(prepared))), prepared.properties, with_probabilities)

    def predict_files(self, image_files: Sequence[Path], output_file: Path, save_probabilities: bool = False) -> ExportedPrediction:
        """Predict one case given as its channel files (in channel order; an RGB picture is three
        channels in one file) into ``output_file``."""
        files = [Path(p) for p in image_files]
        output_file = Path(output_file)
        if not files:
            raise VolfnetError(f"no image files given; the model expects {self.num_input_channels} channel(s)")
        if any(output_file.resolve() == p.resolve() for p in files):
            raise VolfnetError(f"{output_file}: the output would overwrite an input image; choose another output")
        image, geometry = read_input_images(files, self.num_input_channels)
        ending = file_ending(output_file)
        case_id = output_file.name[: -len(ending)] if ending else output_file.name
        if self.configuration.previous_stage is not None and self.previous_stage is None:
            raise VolfnetError(f"{self.configuration_name} is a cascade: predict folders (with --prev-stage) or load it with its previous stage")
        prepared = self._prepared_in_memory(image, geometry, case_id, files)
        return self.predict_preprocessed(self.network_input(prepared), prepared.properties, output_file, save_probabilities)

    # --- many cases ---------------------------------------------------------------------------

    def predict(
        self, input_path: Path, output_folder: Path, save_probabilities: bool = False, skip_existing: bool = False,
        part: int = 0, num_parts: int = 1,
    ) -> PredictionSummary:
        """Predict a folder (see :meth:`predict_folder`) or a single image file into ``output_folder``."""
        input_path = Path(input_path)
        if input_path.is_dir():
            return self.predict_folder(input_path, output_folder, save_probabilities, skip_existing, part, num_parts)
        case = single_file_case(input_path, self.num_input_channels)
        if case.output_file(output_folder).resolve() == input_path.resolve():
            raise VolfnetError(f"{input_path}: the output would overwrite the input image; choose another output folder")
        return self._predict_cases(select_part([case], part, num_parts), Path(output_folder), save_probabilities, skip_existing)

    def predict_folder(
        self, input_folder: Path, output_folder: Path, save_probabilities: bool = False, skip_existing: bool = False,
        part: int = 0, num_parts: int = 1,
    ) -> PredictionSummary:
        """Predict every case of ``input_folder`` into ``output_folder/<case><ending>``.

        Input naming: ``{case}_{CCCC}<ending>``, one file per channel, or (single-channel
        models) freely named files; see :func:`volfnet.inference.inputs.find_input_cases`.
        Outputs keep the input's ending. A case that cannot be read or preprocessed does not
        stop the others: all such problems are raised together at the end, after the other
        cases are written. ``skip_existing`` skips cases whose outputs exist. ``part`` of
        ``num_parts`` predicts only that share of the cases (see :func:`select_part`), so
        several jobs can split one folder between them.
        """
        input_folder, output_folder = Path(input_folder), Path(output_folder)
        if output_folder.resolve() == input_folder.resolve():
            raise VolfnetError(f"{output_folder}: the output folder is the input folder; predictions would mix with the images")
        cases = select_part(find_input_cases(input_folder, self.num_input_channels), part, num_parts)
        return self._predict_cases(cases, output_folder, save_probabilities, skip_existing)

    def predict_cached_cases(
        self,
        preprocessed_folder: Path,
        case_ids: Sequence[str],
        output_folder: Path,
        save_probabilities: bool = False,
        skip_existing: bool = False,
        previous_stage_folder: Path | None = None,
        next_stage: NextStageExport | None = None,
    ) -> PredictionSummary:
        """Predict cases from the preprocessing cache (``<case>.npy`` + ``<case>.json``) into
        ``output_folder/<case><dataset file ending>`` in their original geometry (the
        trainer's final validation). A cascade reads each case's previous-stage label map
        from ``previous_stage_folder``; ``next_stage`` (a previous stage's validation) also
        writes the label maps its next stage trains on."""
        ending = self.dataset_json.file_ending
        if self.configuration.previous_stage is not None and previous_stage_folder is None:
            raise VolfnetError(f"{self.configuration_name} is a cascade: cached cases need their previous-stage label maps")
        load = functools.partial(load_cached_case, preprocessed_folder=Path(preprocessed_folder), previous_stage_folder=previous_stage_folder)
        return self._run(
            list(case_ids), str, load, lambda case_id: Path(output_folder) / f"{case_id}{ending}",
            Path(output_folder), save_probabilities, skip_existing, use_processes=False, next_stage=next_stage,
        )

    def _predict_cases(self, cases: list[InputCase], output_folder: Path, save_probabilities: bool, skip_existing: bool) -> PredictionSummary:
        previous_configuration = self.configuration.previous_stage if self.previous_stage is not None else None
        if self.configuration.previous_stage is not None and previous_configuration is None and self.previous_stage_folder is None:
            raise VolfnetError(
                f"{self.configuration_name} is a cascade: give the {self.configuration.previous_stage} predictions (--prev-stage) "
                "or its model folder"
            )
        load = functools.partial(
            load_input_case, plans=self.plans, configuration_name=self.configuration_name,
            previous_stage_folder=self.previous_stage_folder, previous_stage_configuration=previous_configuration,
        )
        return self._run(
            cases, lambda case: case.case_id, load, lambda case: case.output_file(output_folder),
            output_folder, save_probabilities, skip_existing, use_processes=True,
        )

    def _run(
        self,
        items: list[T],
        case_id_of: Callable[[T], str],
        load: Callable[[T], PreparedCase],
        output_of: Callable[[T], Path],
        output_folder: Path,
        save_probabilities: bool,
        skip_existing: bool,
        use_processes: bool,
        next_stage: NextStageExport | None = None,
    ) -> PredictionSummary:
        start = time.perf_counter()
        ensure_writable_dir(output_folder, "output")
        summary = PredictionSummary(output_folder)
        todo = []
        for item in items:
            if skip_existing and _is_finished(output_of(item), save_probabilities):
                summary.skipped.append(case_id_of(item))
            else:
                todo.append(item)
        if summary.skipped:
            logger.info("%d case(s) already predicted in %s, skipping them", len(summary.skipped), output_folder)
        problems = self._pipeline(todo, case_id_of, load, output_of, save_probabilities, use_processes, summary.predicted, next_stage)
        summary.seconds = time.perf_counter() - start
        if problems:
            raise DataIntegrityError(
                problems,
                header=f"{len(problems)} of {len(todo)} case(s) could not be predicted; the other {len(summary.predicted)} "
                f"are in {output_folder} (fix these, then rerun with skip_existing / volfnet_predict --continue)",
            )
        logger.info("%d case(s) predicted, %d skipped, in %.1f s", len(summary.predicted), len(summary.skipped), summary.seconds)
        return summary

    def _loader(self, count: int, use_processes: bool) -> tuple[contextlib.AbstractContextManager, int]:
        """Executor that prepares cases ahead of the network, and how many cases it runs ahead.

        Raw images: ``num_workers`` forkserver processes (reading and cubic resampling are
        CPU work, kept out of the network's process). Cached cases: one thread (reading an
        npy file is I/O). One case, or ``num_workers=0``: inline.
        """
        if count < 2 or (use_processes and self.num_workers == 0):
            return contextlib.nullcontext(None), 0
        if use_processes:
            workers = min(self.num_workers, count)
            return worker_pool(workers), workers
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="volfnet-load"), 1

    def _pipeline(
        self,
        items: list[T],
        case_id_of: Callable[[T], str],
        load: Callable[[T], PreparedCase],
        output_of: Callable[[T], Path],
        save_probabilities: bool,
        use_processes: bool,
        predicted: list[str],
        next_stage: NextStageExport | None = None,
    ) -> list[str]:
        """Load ahead, predict in order, export behind; returns the per-case user errors."""
        problems: list[str] = []
        loader_context, ahead = self._loader(len(items), use_processes)
        with loader_context as loader, ThreadPoolExecutor(max_workers=1, thread_name_prefix="volfnet-export") as exporter:
            queue: deque[Future] = deque()
            upcoming = iter(items)

            def refill() -> None:
                while loader is not None and len(queue) < ahead:
                    item = next(upcoming, None)
                    if item is None:
                        return
                    queue.append(loader.submit(load, item))

            refill()
            pending: tuple[str, Future] | None = None
            try:
                for item in tqdm(items, desc="predicting", unit="case", disable=not self.progress or None):
                    case_id = case_id_of(item)
                    prepared = _settle(queue.popleft().result if loader is not None else functools.partial(load, item), case_id, problems)
                    refill()
                    if prepared is None:
                        continue
                    started = time.perf_counter()
                    logits = self.predict_logits(self.network_input(prepared))
                    logger.debug("case %s: network %.1f s", case_id, time.perf_counter() - started)
                    if pending is not None:
                        predicted.append(_finish(*pending))
                    # handed over: the export holds the only reference and frees them once resampled
                    pending = (case_id, exporter.submit(
                        self._export, LogitsHandover(logits), prepared.properties, output_of(item), save_probabilities, next_stage
                    ))
                    del logits, prepared
                if pending is not None:
                    predicted.append(_finish(*pending))
                    pending = None
            except BaseException:
                if loader is not None:
                    loader.shutdown(wait=False, cancel_futures=True)
                raise
        return problems


def _settle(get: Callable[[], PreparedCase], case_id: str, problems: list[str]) -> PreparedCase | None:
    """The prepared case, or None after recording a user error (bad file) for the report."""
    try:
        return get()
    except VolfnetError as exc:
        logger.error("case %s: %s", case_id, exc)
        problems.append(str(exc))
        return None
    except Exception as exc:
        exc.add_note(f"(raised while preparing case {case_id})")
        raise


def _finish(case_id: str, export: Future) -> str:
    """Wait for a case's export; its errors (disk full...) stop the run."""
    export.result()
    return case_id


def _is_finished(output_file: Path, save_probabilities: bool) -> bool:
    """Outputs are written atomically, label map last: existing files are complete."""
    return output_file.is_file() and (not save_probabilities or probabilities_path(output_file).is_file())


def _mirror_axes(configuration: ConfigurationPlan, requested: Sequence[int] | None) -> list[int]:
    """The axes to mirror: the configuration's, or the subset of them the caller names."""
    trained = [int(a) for a in configuration.mirror_axes]
    if requested is None:
        return trained
    axes = sorted({int(a) for a in requested})
    untrained = [a for a in axes if a not in trained]
    if untrained:
        raise VolfnetError(
            f"mirror axes {axes}: training mirrored only axes {trained} (0 = Z), so flips along {untrained} were never seen; "
            "choose among those"
        )
    return axes


# --- model folder loading ---------------------------------------------------------------------


def previous_stage_model_folder(model: ModelFolder) -> Path:
    """The model folder of a cascade's previous stage: same dataset, network and tag (else the
    untagged one), e.g. ``fmunet__3d_lowres`` beside ``fmunet__3d_cascade_fullres``."""
    previous = model.plans.configuration(model.configuration).previous_stage
    if previous is None:
        raise VolfnetError(f"{model.path}: {model.configuration} has no previous stage")
    tag = model.path.name.split("__")[2] if model.path.name.count("__") == 2 else ""
    candidates = [model.path.with_name(model_folder_name(model.network, previous, tag))]
    if tag:
        candidates.append(model.path.with_name(model_folder_name(model.network, previous)))
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise VolfnetError(
        f"{model.path}: the cascade needs its previous stage's model {candidates[0]}, which is not there: train "
        f"{previous} (every fold), or predict with --prev-stage FOLDER holding its predictions"
    )


def _load_fold_network(path: Path, model: ModelFolder) -> tuple[nn.Module, CheckpointSpec]:
    """Build one fold's network from its checkpoint's spec and load the weights strictly."""
    checkpoint = load_checkpoint(path)
    spec = model.segmentation_spec(checkpoint, path)
    network = build_network_from_topology(spec.network, spec.num_input_channels, spec.num_classes, deep_supervision=False)
    try:
        network.load_state_dict(checkpoint["model_state_dict"], strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:500]
        raise VolfnetError(f"{path}: the weights do not fit the network its spec describes ({detail})") from None
    network.eval()
    return network, spec


