"""Trainer settings as one typed dataclass, three presets, and ``--set key=value`` overrides.

Every number the training loop uses lives here with its default, so a user changes the learning
rate, the schedule or the batch size on the command line (``--set lr=3e-3``) instead of
subclassing a trainer. The presets are the starting points: nnU-Net's proven recipe for
training from scratch, a gentler one for fine-tuning a pretrained network, and the VolF
recipe for self-supervised pretraining. The configuration actually used is stored in every
checkpoint, so a resumed run continues with the same settings.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from volfnet.data.augmentation import AugmentationConfig
from volfnet.data.patch_sampler import FOREGROUND_OVERSAMPLING
from volfnet.errors import VolfnetError
from volfnet.schema import build_from_json
from volfnet.values import is_number

FLOAT32_MAX = 3.4028234663852886e38  # optimisers keep the learning rate in float32

OPTIMIZERS = ("sgd", "adam", "adamw")
# Which weights of a --pretrained checkpoint initialise the network: all that fit, or the
# encoder's alone (decoder and head start from random weights).
PRETRAINED_WEIGHTS = ("all", "encoder")
SCHEDULES = ("poly", "warmup_poly", "step", "constant")
AUGMENTATION_PREFIX = "augmentation."

DEFAULT_SEED = 12345  # nnU-Net's split seed; any fixed value makes runs repeatable
DEFAULT_CHECKPOINT_EVERY = 10  # epochs between "latest" checkpoints: at most ~10 epochs lost to a crash


@dataclass
class TrainerConfig:
    """Everything the training loop (and the task builders) read. Units: epochs and iterations
    count optimiser steps; ``checkpoint_every`` and ``plot_every`` count epochs.

    The schedule is a function of the global iteration (see :func:`volfnet.training.optim.learning_rate`):
    ``poly`` ``lr * (1 - t/T) ** poly_exponent``; ``warmup_poly`` a linear warm-up over
    ``warmup_iterations`` (or ``warmup_fraction`` of all iterations when that is 0), then poly
    over the rest; ``step`` multiplies by ``step_gamma`` every ``step_size`` iterations;
    ``constant`` keeps ``lr``.
    """

    num_epochs: int = 1000
    iterations_per_epoch: int = 250
    val_iterations: int = 50
    batch_size: int | None = None  # per process; None: the plans' batch size
    optimizer: str = "sgd"
    lr: float = 1e-2
    weight_decay: float = 3e-5
    momentum: float = 0.99
    nesterov: bool = True
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    schedule: str = "poly"
    poly_exponent: float = 0.9
    warmup_iterations: int = 0
    warmup_fraction: float = 0.0
    step_size: int = 20000
    step_gamma: float = 0.5
    grad_clip: float | None = 12.0  # max gradient norm; None or 0 disables clipping
    # Staged fine-tuning (see volfnet.training.optim.encoder_lr_factor): the encoder's learning
    # rate is 0 for the first encoder_frozen_iterations (decoder and head warm up on fixed
    # pretrained features), then ramps linearly to encoder_lr_scale x the schedule's rate over
    # encoder_warmup_iterations. The defaults (1.0, 0, 0) train the whole network alike.
    encoder_lr_scale: float = 1.0
    encoder_frozen_iterations: int = 0
    encoder_warmup_iterations: int = 0
    # With --pretrained: "all" weights that fit, or the "encoder" alone (see FINETUNE_PRETRAINED_WEIGHTS)
    pretrained_weights: str = "all"
    amp: bool = True  # mixed precision on CUDA (bf16 where supported, else fp16 + GradScaler); CPU stays fp32
    compile: bool = False  # torch.compile the network: faster steps on recent GPUs, minutes of start-up
    # channels-last (NDHWC) memory for network and batches; None: the device's default
    # (networks.runtime.CHANNELS_LAST_DEFAULT: off on the CPU, where it measured slower)
    channels_last: bool | None = None
    deterministic: bool = False  # cuDNN deterministic algorithms instead of benchmark-chosen ones
    seed: int = DEFAULT_SEED
    num_workers: int | None = None  # training data workers; None: one per CPU (at most 12)
    val_num_workers: int | None = None  # None: half the training workers, at least 1 (0 when training uses 0)
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY
    snapshot_every: int = 0  # epochs between kept weight snapshots (checkpoint_it<N>.pt); 0: none
    plot_every: int = 1
    dice_ema: float = 0.9  # moving average of the pseudo Dice: ema = dice_ema * ema + (1 - dice_ema) * dice
    progress_bar: bool = True
    # Optimiser steps with a NaN/inf loss or gradients are skipped (with a warning); this many in
    # a row stop training with an error. One bad batch or a transient overflow recovers at the
    # next step, while a diverged run (or data full of NaN) fails every step: 10 stops that
    # within seconds, yet no run ends for a few bad batches. fp16's GradScaler skips steps
    # whose gradients overflow while it tunes its scale; those do not count (only a NaN/inf loss).
    max_nonfinite_steps: int = 10
    # Loss (read by the tasks; see volfnet.training.losses)
    dice_weight: float = 1.0
    ce_weight: float = 1.0
    dice_smooth: float = 1e-5
    batch_dice: bool | None = None  # None: the plans decide (segmentation) or the task's default
    dice_include_background: bool = False
    deep_supervision: bool = True  # nnU-Net's loss at every decoder scale; MIS-FM trains the last output only
    class_weights: list[float] | None = None  # per network output class, background first
    # Data (read by the segmentation task)
    oversampling: float = FOREGROUND_OVERSAMPLING
    augmentation: dict[str, Any] = field(default_factory=dict)  # AugmentationConfig fields to change

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise :class:`VolfnetError` naming the first bad setting."""
        for name in ("num_epochs", "iterations_per_epoch", "checkpoint_every", "plot_every", "step_size", "max_nonfinite_steps"):
            _require(_is_int(getattr(self, name)) and getattr(self, name) >= 1, name, "an integer >= 1")
        for name in ("val_iterations", "warmup_iterations", "seed", "encoder_frozen_iterations", "encoder_warmup_iterations", "snapshot_every"):
            _require(_is_int(getattr(self, name)) and getattr(self, name) >= 0, name, "an integer >= 0")
        for name in ("batch_size",):
            value = getattr(self, name)
            _require(value is None or (_is_int(value) and value >= 1), name, "null or an integer >= 1")
        for name in ("num_workers", "val_num_workers"):
            value = getattr(self, name)
            _require(value is None or (_is_int(value) and value >= 0), name, "null or an integer >= 0")
        _require(self.optimizer in OPTIMIZERS, "optimizer", f"one of {list(OPTIMIZERS)}")
        _require(self.schedule in SCHEDULES, "schedule", f"one of {list(SCHEDULES)}")
        _require(self.pretrained_weights in PRETRAINED_WEIGHTS, "pretrained_weights", f"one of {list(PRETRAINED_WEIGHTS)}")
        # Optimisers hold the rate in float32: above its range torch fails with an opaque error.
        _require(is_number(self.lr) and 0 < self.lr < FLOAT32_MAX, "lr", "a positive float32 number")
        for name in ("weight_decay", "poly_exponent", "dice_weight", "ce_weight", "encoder_lr_scale"):
            _require(is_number(getattr(self, name)) and getattr(self, name) >= 0, name, "a number >= 0")
        _require(is_number(self.dice_smooth) and self.dice_smooth >= 0, "dice_smooth", "a number >= 0")
        _require(self.dice_weight + self.ce_weight > 0, "dice_weight", "positive, or ce_weight positive")
        _require(is_number(self.momentum) and 0 <= self.momentum < 1, "momentum", "a number in [0, 1)")
        _require(is_number(self.step_gamma) and 0 < self.step_gamma <= 1, "step_gamma", "a number in (0, 1]")
        _require(is_number(self.warmup_fraction) and 0 <= self.warmup_fraction < 1, "warmup_fraction", "a number in [0, 1)")
        _require(is_number(self.dice_ema) and 0 <= self.dice_ema < 1, "dice_ema", "a number in [0, 1)")
        _require(is_number(self.oversampling) and 0 <= self.oversampling <= 1, "oversampling", "a number in [0, 1]")
        _require(
            isinstance(self.betas, list) and len(self.betas) == 2 and all(is_number(b) and 0 <= b < 1 for b in self.betas),
            "betas", "two numbers in [0, 1), e.g. [0.9, 0.999]",
        )
        _require(self.grad_clip is None or (is_number(self.grad_clip) and self.grad_clip >= 0), "grad_clip", "null or a number >= 0")
        _require(
            self.class_weights is None
            or (isinstance(self.class_weights, list) and all(is_number(w) and w >= 0 for w in self.class_weights) and any(self.class_weights)),
            "class_weights", "null or a list of non-negative numbers, one per class (background first)",
        )
        for name in ("nesterov", "amp", "compile", "deterministic", "progress_bar", "dice_include_background", "deep_supervision"):
            _require(isinstance(getattr(self, name), bool), name, "true or false")
        _require(self.batch_dice is None or isinstance(self.batch_dice, bool), "batch_dice", "null, true or false")
        _require(self.channels_last is None or isinstance(self.channels_last, bool), "channels_last", "null, true or false")
        _require(isinstance(self.augmentation, dict), "augmentation", "an object of augmentation fields")
        self.augmentation_config()  # raises for unknown or bad augmentation fields
        if self.schedule == "warmup_poly" and self.warmup_iterations == 0 and self.warmup_fraction == 0:
            raise VolfnetError("schedule 'warmup_poly' needs warmup_iterations > 0 or warmup_fraction > 0")
        if self.warmup_steps() >= self.total_iterations() and self.schedule == "warmup_poly":
            raise VolfnetError(
                f"the warm-up ({self.warmup_steps()} iterations) must be shorter than the training "
                f"({self.total_iterations()} iterations); lower warmup_iterations or use warmup_fraction"
            )

    def stages_encoder(self) -> bool:
        """Whether the encoder gets its own learning rate (a scale or a frozen start)."""
        return self.encoder_lr_scale != 1.0 or self.encoder_frozen_iterations > 0 or self.encoder_warmup_iterations > 0

    def total_iterations(self) -> int:
        return self.num_epochs * self.iterations_per_epoch

    def warmup_steps(self) -> int:
        """Warm-up length in iterations: ``warmup_iterations``, else ``warmup_fraction`` of all."""
        if self.warmup_iterations > 0:
            return self.warmup_iterations
        return round(self.warmup_fraction * self.total_iterations())

    def augmentation_config(self) -> AugmentationConfig:
        """nnU-Net's augmentation with this config's changes applied."""
        return AugmentationConfig().replaced(self.augmentation)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "trainer config") -> TrainerConfig:
        """Rebuild from :meth:`to_dict` output (e.g. a checkpoint); unknown keys are an error."""
        try:
            return build_from_json(cls, data, source)
        except (TypeError, ValueError) as exc:
            raise VolfnetError(f"{source}: {exc}") from exc

    def replaced(self, **changes: Any) -> TrainerConfig:
        """A validated copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)



def _require(condition: bool, name: str, expected: str) -> None:
    if not condition:
        raise VolfnetError(f"trainer setting {name} must be {expected}")


def supervised_defaults() -> TrainerConfig:
    """Training from scratch: nnU-Net v2's recipe (SGD with Nesterov momentum 0.99, lr 1e-2,
    poly 0.9, weight decay 3e-5, gradient clipping at 12, Dice + CE without background)."""
    return TrainerConfig()


#: Fine-tuning uses MIS-FM's recipe (:data:`RECIPES` ``misfm``: Adam 1e-3, poly 0.8, no deep
#: supervision), the recipe behind every published VolF gain. On MSD Hippocampus with 10
#: labelled cases it fine-tunes a VolF-pretrained FMUNet to 0.82 Dice in 400 CPU iterations,
#: where nnU-Net's SGD recipe (the preset before) left it at 0.36 (four seeds each; the evidence
#: table is in documentation/training.md). Under SGD a pretrained encoder moves slowly (its
#: relative gradient is 0.2-0.5 of a random encoder's); Adam's per-parameter steps do not care.
FINETUNE_RECIPE = "misfm"
#: Fine-tuning loads every pretrained weight that fits (encoder and decoder; the VolF head has
#: other classes and stays random). Loading the encoder alone (``pretrained_weights=encoder``)
#: won on the Hippocampus validation split (400 iterations: 0.837 vs 0.825, four seeds) but
#: failed a class on one seed in three of the demo and in four at 200 Hippocampus iterations:
#: over all eleven paired short-budget runs its held-out Dice was 0.6 points lower on average.
#: All weights is the robust default; see documentation/training.md, "Fine-tuning defaults".
FINETUNE_PRETRAINED_WEIGHTS = "all"


def finetune_defaults() -> TrainerConfig:
    """Fine-tuning a pretrained network: :func:`supervised_defaults` with the
    :data:`FINETUNE_RECIPE` applied (Adam, lr 1e-3, weight decay 1e-5, poly 0.8, no warm-up,
    no clipping, no deep supervision), loading every pretrained weight that fits
    (:data:`FINETUNE_PRETRAINED_WEIGHTS`). See ``documentation/training.md`` for the measurements."""
    recipe = copy.deepcopy(RECIPES[FINETUNE_RECIPE])
    return TrainerConfig().replaced(**recipe, pretrained_weights=FINETUNE_PRETRAINED_WEIGHTS)


def pretraining_defaults() -> TrainerConfig:
    """VolF pretraining as in the VolF paper and PyMIC: Adam (L2 weight decay 1e-5), lr 1e-3
    halved every 20k iterations over 100k iterations; loss (soft Dice with background, over
    the batch, + CE) / 2; no gradient clipping."""
    return TrainerConfig(
        num_epochs=100,
        iterations_per_epoch=1000,
        val_iterations=50,
        optimizer="adam",
        lr=1e-3,
        weight_decay=1e-5,
        schedule="step",
        step_size=20000,
        step_gamma=0.5,
        grad_clip=None,
        dice_weight=0.5,
        ce_weight=0.5,
        batch_dice=True,
        dice_include_background=True,
    )


PRESETS = {"supervised": supervised_defaults, "finetune": finetune_defaults, "pretraining": pretraining_defaults}

#: Optimiser recipes a user switches to with one ``--set recipe=NAME`` (later ``--set`` keys
#: still change single fields). ``nnunet``: nnU-Net v2's SGD recipe (the default from scratch).
#: ``misfm``: the recipe behind the published VolF gains, used by MIS-FM and PyMIC for both the
#: scratch baseline and fine-tuning: Adam with L2 weight decay 1e-5, lr 1e-3, poly 0.8, no
#: warm-up, no clipping, no deep supervision (../shared/specs/volf_finetuning_evidence.md).
RECIPE_KEY = "recipe"
RECIPE_FIELDS = (
    "optimizer", "lr", "weight_decay", "momentum", "nesterov", "betas", "schedule", "poly_exponent",
    "warmup_iterations", "warmup_fraction", "grad_clip", "deep_supervision",
)
_NNUNET = TrainerConfig()  # the dataclass defaults are nnU-Net's recipe: one place for its numbers
RECIPES: dict[str, dict[str, Any]] = {
    "nnunet": {name: getattr(_NNUNET, name) for name in RECIPE_FIELDS},
    "misfm": {
        **{name: getattr(_NNUNET, name) for name in RECIPE_FIELDS},
        "optimizer": "adam", "lr": 1e-3, "weight_decay": 1e-5, "poly_exponent": 0.8, "grad_clip": None, "deep_supervision": False,
    },
}


def parse_value(text: str) -> Any:
    """A ``--set`` value: JSON (numbers, true/false, null, lists), else the bare word as a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_trainer_override(config: TrainerConfig, assignment: str) -> TrainerConfig:
    """Apply one ``key=value`` (value in JSON; bare words are strings), e.g. ``lr=3e-3``,
    ``optimizer=adam``, ``batch_size=4``, ``grad_clip=null``, ``augmentation.rotation_p=0`` or
    ``recipe=misfm`` (every field of that entry of :data:`RECIPES` at once).
    Returns a new, validated config; an unknown key is an error that lists the valid ones."""
    return apply_trainer_overrides(config, [assignment])


def apply_trainer_overrides(config: TrainerConfig, assignments: list[str]) -> TrainerConfig:
    """Apply several ``key=value`` overrides in order, then validate the result once: settings
    that only make sense together (``schedule=warmup_poly`` and ``warmup_fraction=0.05``) may
    come in any order."""
    values = config.to_dict()
    for assignment in assignments:
        values = _override(values, assignment)
    return dataclasses.replace(config, **values)


def _override(values: dict[str, Any], assignment: str) -> dict[str, Any]:
    """``values`` (the fields of a config) with one ``key=value`` applied; names are checked
    here, values when the config is built."""
    if "=" not in assignment:
        raise VolfnetError(f"trainer override {assignment!r} must look like key=value (e.g. lr=0.001)")
    key, raw = (part.strip() for part in assignment.split("=", 1))
    value = parse_value(raw)
    if key == RECIPE_KEY:
        if value not in RECIPES:
            raise VolfnetError(f"unknown recipe {raw!r}; choose one of {sorted(RECIPES)}")
        return {**values, **copy.deepcopy(RECIPES[value])}  # a config never shares the recipe's lists
    if key.startswith(AUGMENTATION_PREFIX):
        name = key[len(AUGMENTATION_PREFIX):]
        changes = {**values["augmentation"], name: value}
        AugmentationConfig().replaced(changes)  # raises naming the field when it is unknown or bad
        return {**values, "augmentation": changes}
    if key not in values:
        valid = ", ".join([*values, f"{AUGMENTATION_PREFIX}<field>", RECIPE_KEY])
        raise VolfnetError(f"unknown trainer setting {key!r}; valid keys: {valid}")
    # Types are checked by check(); a JSON integer where a float is expected (lr=1) is accepted.
    if isinstance(values[key], float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    return {**values, key: value}
