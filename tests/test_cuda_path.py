"""The CUDA path that almost every user takes and the CPU suite cannot reach (issue 19):
mixed precision (bf16, and fp16 with a gradient scaler), channels-last, ``torch.compile``,
bit-exact resume with ``deterministic=true``, DistributedDataParallel over NCCL under
``torchrun``, prediction on the GPU against the CPU, and GPU memory given back after predicting
with a multi-fold model.

Every test needs a CUDA GPU and is skipped without one; ``benchmarks/gpu/check.sh`` runs them
(``pytest -m cuda``) with the rest of the GPU check. The set-ups are the tiny ones of the CPU
tests (``helpers.training``, ``helpers.model_folder``, ``helpers.commands``), so
the whole file takes a minute or two on one GPU (``torch.compile`` is most of it).
"""

from __future__ import annotations

import gc
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers.commands import TINY_TRAINING, model_folder, plan_dataset, run_bounded
from helpers.model_folder import model_environment
from helpers.training import Interrupted, InterruptingTask, PatchOnlyTask, blob_task, fast_config, make_blob_dataset

from volfnet.checkpoint import load_checkpoint
from volfnet.inference.predictor import Predictor
from volfnet.networks import runtime
from volfnet.io.case_store import load_case
from volfnet.training.distributed import free_port
from volfnet.training.loop import run_training

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run by benchmarks/gpu/check.sh on one)"),
]

DDP_DRIVER = Path(__file__).with_name("cuda_ddp_driver.py")
DDP_TIMEOUT = 300  # s: plan + two tiny epochs + final validation; past this the run hangs
# fp32 without TF32 differs between memory formats, devices and kernels only in summation order.
FP32_ATOL = 1e-4
FP32_RTOL = 1e-3
FP16_LOGIT_ATOL = 2e-2  # half-precision tiles on logits of order 1
LABEL_AGREEMENT = 0.999  # voxels whose argmax may flip where two classes' logits (nearly) tie
MEMORY_SLACK_BYTES = 1024**2  # allocator rounding, the Gaussian cache and cuDNN's small leftovers


def learning_config(**changes):
    """A few epochs that learn the blobs quickly (Adam, no spatial augmentation): the loss falls
    well beyond noise within 20 steps, so "decreasing" is a real check."""
    values = {
        "num_epochs": 4, "iterations_per_epoch": 5, "val_iterations": 1, "optimizer": "adam", "lr": 1e-2,
        "augmentation": {"rotation_p": 0.0, "scaling_p": 0.0},
    }
    values.update(changes)
    return fast_config(**values)


class DtypeRecordingTask(PatchOnlyTask):
    """Records the dtypes the network's first convolution produced while training, to show
    which precision autocast really ran in."""

    def build_network(self):
        network = super().build_network()
        self.conv_dtypes = set()
        first_conv = next(m for m in network.modules() if isinstance(m, torch.nn.Conv3d))
        first_conv.register_forward_hook(lambda _m, _i, output: self.conv_dtypes.add(output.dtype))
        return network


def assert_learns(losses: list[float]) -> None:
    assert all(math.isfinite(loss) for loss in losses), losses
    assert losses[-1] < 0.8 * losses[0], f"the training loss did not decrease: {losses}"


def no_tf32(monkeypatch) -> None:
    """Plain fp32 convolutions and matmuls, so that results differ only in summation order."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


# --- mixed precision -----------------------------------------------------------------------------


@pytest.mark.skipif(not (torch.cuda.is_available() and torch.cuda.is_bf16_supported()), reason="needs a CUDA GPU with bfloat16")
def test_bf16_autocast_trains_with_a_finite_decreasing_loss(tmp_path):
    config = learning_config()
    task = blob_task(tmp_path / "pre", config, task_class=DtypeRecordingTask)
    result = run_training(task, config, tmp_path / "run", device="cuda")
    assert_learns(result.log.train_loss)
    assert task.conv_dtypes == {torch.bfloat16}
    assert load_checkpoint(result.final_checkpoint)["grad_scaler_state_dict"] == {}  # bf16 needs no loss scaling


def test_fp16_with_grad_scaler_trains_with_a_finite_decreasing_loss(tmp_path, monkeypatch):
    """GPUs without bf16 (before Ampere) train in fp16 with a GradScaler: forced here."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    config = learning_config()  # gradient clipping on (12): the scaler's unscale_ path runs too
    task = blob_task(tmp_path / "pre", config, task_class=DtypeRecordingTask)
    result = run_training(task, config, tmp_path / "run", device="cuda")
    assert_learns(result.log.train_loss)
    assert task.conv_dtypes == {torch.float16}
    scaler = load_checkpoint(result.final_checkpoint)["grad_scaler_state_dict"]
    assert scaler and math.isfinite(scaler["scale"]) and scaler["scale"] > 0


# --- memory format and compilation ---------------------------------------------------------------


def test_channels_last_training_matches_contiguous(tmp_path, monkeypatch):
    """The same run (fp32 without TF32, cuDNN deterministic) in both memory formats: channels-last
    must change speed only. It is off by default (runtime.CHANNELS_LAST_DEFAULT) until measured
    faster; switched on here the way the loop reads it."""
    no_tf32(monkeypatch)
    make_blob_dataset(tmp_path / "pre")
    config = fast_config(num_epochs=2, iterations_per_epoch=3, val_iterations=1, amp=False, deterministic=True)
    contiguous = run_training(blob_task(tmp_path / "pre", config), config, tmp_path / "contiguous", device="cuda")
    monkeypatch.setitem(runtime.CHANNELS_LAST_DEFAULT, "cuda", True)
    channels_last = run_training(blob_task(tmp_path / "pre", config), config, tmp_path / "channels_last", device="cuda")

    def conv_weight(model):  # one with several input channels: with one, both formats are the same layout
        return next(m for m in model.modules() if isinstance(m, torch.nn.Conv3d) and m.in_channels > 1).weight

    assert conv_weight(channels_last.model).is_contiguous(memory_format=torch.channels_last_3d)
    assert not conv_weight(contiguous.model).is_contiguous(memory_format=torch.channels_last_3d)
    np.testing.assert_allclose(channels_last.log.train_loss, contiguous.log.train_loss, rtol=FP32_RTOL)
    expected, got = contiguous.model.state_dict(), channels_last.model.state_dict()
    for key in expected:
        torch.testing.assert_close(got[key].contiguous(), expected[key].contiguous(), atol=FP32_ATOL, rtol=FP32_RTOL, msg=key)


def test_compiled_network_trains_and_saves_plain_weights(tmp_path, monkeypatch):
    config = learning_config(num_epochs=3, iterations_per_epoch=4, val_iterations=0, compile=True)  # no eval graph: one compile less
    task = blob_task(tmp_path / "pre", config)
    result = run_training(task, config, tmp_path / "run", device="cuda")
    assert_learns(result.log.train_loss)
    # The checkpoint holds the network's own keys (no torch.compile wrapper) and loads strictly,
    # and the compiled graph computes what the eager network does.
    eager = task.build_network()
    eager.load_state_dict(load_checkpoint(result.final_checkpoint)["model_state_dict"], strict=True)
    eager.to("cuda").eval()
    no_tf32(monkeypatch)
    sample = torch.randn(1, 1, 16, 16, 16, device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(eager)(sample)[0], eager(sample)[0], atol=FP32_ATOL, rtol=FP32_RTOL)


# --- exact resume --------------------------------------------------------------------------------


def test_resume_on_cuda_with_deterministic_gives_the_same_weights(tmp_path):
    """As the CPU resume test, on the GPU under mixed precision with ``deterministic=true``: an
    interrupted and resumed run must end bit-identical to an uninterrupted one."""
    make_blob_dataset(tmp_path / "pre", count=4)
    config = fast_config(num_epochs=4, iterations_per_epoch=2, val_iterations=1, deterministic=True)
    task = blob_task(tmp_path / "pre", config, task_class=InterruptingTask, dropout=0.3)  # dropout: the CUDA RNG must resume
    whole = run_training(task, config, tmp_path / "whole", device="cuda")
    task.interrupt_at = 5  # second batch of epoch 2; "latest" holds epoch 1
    with pytest.raises(Interrupted):
        run_training(task, config, tmp_path / "parts", device="cuda")
    task.interrupt_at = None
    resumed = run_training(task, config, tmp_path / "parts", resume=True, device="cuda")
    expected, got = whole.model.state_dict(), resumed.model.state_dict()
    differing = [key for key in expected if not torch.equal(expected[key], got[key])]
    if differing:
        # Tell a resume bug from kernels that are not deterministic: does a second uninterrupted run differ too?
        again = run_training(task, config, tmp_path / "again", device="cuda").model.state_dict()
        repeatable = all(torch.equal(expected[key], again[key]) for key in expected)
        cause = "resume restores something wrongly" if repeatable else "two uninterrupted runs differ too: some CUDA kernel is not deterministic"
        pytest.fail(f"{len(differing)} tensors differ after resuming (first: {differing[0]}); {cause}")
    assert resumed.log.train_loss == whole.log.train_loss


# --- DDP over NCCL under torchrun ----------------------------------------------------------------


def test_torchrun_one_process_trains_through_ddp_over_nccl(tmp_path, monkeypatch):
    """``torchrun --nproc_per_node 1`` with one GPU: NCCL refuses two processes on one GPU, and
    volfnet uses DDP only from two processes on, so the driver joins an NCCL group of one and
    takes the multi-process path (DDP wrapper, NCCL broadcast and gradient all-reduce) itself."""
    roots = plan_dataset(tmp_path, "fmunet")
    report = tmp_path / "ddp.json"
    monkeypatch.setenv("VOLFNET_TEST_DDP_REPORT", str(report))
    rendezvous = ["--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{free_port()}"]
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "1", *rendezvous,
        str(DDP_DRIVER), "1", "3d_fullres", "0", "--device", "cuda", *TINY_TRAINING, "--tag", "nccl",
    ]
    done = run_bounded(command, roots, DDP_TIMEOUT)
    assert done.returncode == 0, done.tail()
    assert "Traceback" not in done.stderr, done.tail()
    seen = json.loads(report.read_text())
    assert seen["backend"] == "nccl" and seen["world_size"] == 1 and seen["ddp_wrappers"] == 1, seen
    fold = model_folder(roots, "fmunet", "nccl") / "fold_0"
    final = torch.load(fold / "checkpoint_final.pt", weights_only=True)
    assert final["epoch"] == 2 and all(torch.isfinite(t).all() for t in final["model_state_dict"].values() if t.is_floating_point())
    assert json.loads((fold / "validation" / "summary.json").read_text())["num_cases"] == 2


# --- prediction ----------------------------------------------------------------------------------


def label_agreement(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float((a == b).mean())


def test_prediction_on_cuda_matches_the_cpu(tmp_path, monkeypatch):
    no_tf32(monkeypatch)
    with model_environment(tmp_path) as model:
        data, _, _ = load_case(model.preprocessed_folder, "case_001", with_seg=False)
        options = {"num_workers": 0, "progress": False}
        cpu = Predictor.from_model_folder(model.model_folder, device="cpu", **options)
        fp32 = Predictor.from_model_folder(model.model_folder, device="cuda", amp=False, **options)
        fp16 = Predictor.from_model_folder(model.model_folder, device="cuda", **options)  # the default on CUDA
        reference = cpu.predict_logits(data)
        on_gpu = fp32.predict_logits(data)
        assert on_gpu.device.type == "cpu" and on_gpu.dtype == torch.float32
        torch.testing.assert_close(on_gpu, reference, atol=FP32_ATOL, rtol=FP32_RTOL)
        half = fp16.predict_logits(data)
        assert float((half - reference).abs().max()) <= FP16_LOGIT_ATOL * max(1.0, float(reference.abs().max()))
        assert label_agreement(half.argmax(0).numpy(), reference.argmax(0).numpy()) >= LABEL_AGREEMENT

        # End to end from raw files: background preprocessing processes (the CUDA default) and export.
        fp32.num_workers = 2
        fp32.predict_folder(model.raw_folder / "imagesTr", tmp_path / "cuda")
        cpu.predict_folder(model.raw_folder / "imagesTr", tmp_path / "cpu")
        for path in sorted((tmp_path / "cpu").glob("*.nii.gz")):
            expected = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
            got = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "cuda" / path.name)))
            assert label_agreement(got, expected) >= LABEL_AGREEMENT, path.name


def test_gpu_memory_is_given_back_after_predicting_with_several_folds(tmp_path):
    """After a case, the GPU holds the folds' weights and nothing else (no logits, tiles or
    accumulation buffers); a second case adds nothing; dropping the predictor frees it all."""
    with model_environment(tmp_path) as model:
        data, _, _ = load_case(model.preprocessed_folder, "case_001", with_seg=False)
        gc.collect()
        torch.cuda.synchronize()
        baseline = torch.cuda.memory_allocated()
        predictor = Predictor.from_model_folder(model.model_folder, device="cuda", num_workers=0, progress=False)
        assert len(predictor.networks) == 2
        predictor.predict_logits(data)
        torch.cuda.synchronize()
        weights = sum(t.numel() * t.element_size() for net in predictor.networks for t in [*net.parameters(), *net.buffers()])
        after_one = torch.cuda.memory_allocated() - baseline
        assert weights <= after_one <= weights + MEMORY_SLACK_BYTES, (weights, after_one)
        predictor.predict_logits(data)
        torch.cuda.synchronize()
        assert torch.cuda.memory_allocated() - baseline <= after_one + MEMORY_SLACK_BYTES
        del predictor
        gc.collect()
        assert torch.cuda.memory_allocated() - baseline <= MEMORY_SLACK_BYTES

