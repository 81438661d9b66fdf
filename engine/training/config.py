"""The training options: one frozen, validated dataclass, stored as JSON in the run's row and in every checkpoint.

``TrainingConfig()`` holds the defaults (each with a comment); ``TrainingConfig.from_dict(d)`` and
``with_updates(**kw)`` refuse unknown keys with a sentence naming the known ones; ``parse_set_option``
reads the CLI's ``--set key=value``. ``CHOICES`` lists the allowed words of every option that takes one.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from engine.errors import UserError
from engine.fields import Field
from engine.training.data import CHANNELS, MAX_FOV_PX, NORMALIZATIONS
from engine.training.losses import LOSS_NAMES

SCHEDULES = ("cosine", "plateau", "none")
MONITORS = ("val_dice", "val_loss")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "bf16", "fp32")


@dataclass(frozen=True)
class TrainingConfig:
    # --- model
    base_channels: int = 16  # channels of the first level (doubles per level)
    depth: int = 3  # down-sampling steps; 3 sees 8× context, enough for retinal vessels
    dropout_rate: float = 0.1  # Dropout2d at the bottleneck
    # --- preprocessing (saved with the model, applied again at inference)
    channel: str = "green"  # 'green' (best vessel contrast in fundus photos), 'gray' or 'rgb'
    clahe: bool = True  # contrast-limited adaptive histogram equalisation (clip 2, 8×8 tiles)
    normalization: str = "zscore"  # 'zscore' per image inside the FOV, or 'unit' (divide by 255)
    max_fov_px: int = MAX_FOV_PX  # photographs with a wider field of view train (and predict) brought down to it
    #                               (see engine.training.data.MAX_FOV_PX); 0 = every data set at its own size
    # --- loss
    loss_function: str = "combined_dice_focal"  # or 'dice', 'focal', 'tversky', 'bce'
    dice_weight: float = 0.7  # combined loss = dice_weight·Dice + (1 − dice_weight)·Focal
    focal_alpha: float = 0.25  # focal weight of vessel pixels (background gets 1 − alpha), Lin et al.
    focal_gamma: float = 2.0  # focal focusing exponent, Lin et al.
    tversky_alpha: float = 0.3  # Tversky weight of false positives
    tversky_beta: float = 0.7  # Tversky weight of false negatives (> alpha favours thin vessels)
    # --- optimisation
    optimizer: str = "adamw"  # AdamW, the only optimiser offered
    learning_rate: float = 3e-3  # peak learning rate (AdamW, cosine decay)
    weight_decay: float = 1e-4  # AdamW decoupled weight decay
    batch_size: int = 8  # patches per step
    patch_size: int = 128  # side of the square training patches, in pixels: 128 gives more context than 64 per pixel
    epochs: int = 60  # maximum number of epochs
    steps_per_epoch: int = 250  # optimiser steps (batches) per epoch; validation runs after each
    val_fraction: float = 0.2  # share of the images held out for validation (seeded split); 0 = train on all
    #                            (with several data sets, this share of each set)
    balance_datasets: bool = True  # with several data sets, draw patches from each set equally often
    augment: bool = True  # flips, rotations, zoom, brightness/contrast/gamma jitter
    max_zoom: float = 1.0  # augment: zoom patches by a factor in [1/max_zoom, max_zoom]; 1 = off
    any_angle: bool = False  # augment: rotate patches by any angle, not only by 90° steps
    camera_augment: float = 0.0  # augment: share of patches cut from the image as another camera would take it
    #                              (colour cast, gamma, uneven light, blur/sharpen, JPEG, noise); 0 = off
    ema_decay: float = 0.998  # validate and save an exponential moving average of the weights (~500 steps); 0 = off
    # --- learning-rate schedule
    lr_schedule: str = "cosine"  # 'cosine' (to min_learning_rate by the last epoch), 'plateau' or 'none'
    min_learning_rate: float = 1e-5  # floor of the cosine schedule
    plateau_factor: float = 0.5  # 'plateau': multiply the LR by this ...
    plateau_patience: int = 5  # ... after this many epochs without improvement
    # --- early stopping
    early_stopping_monitor: str = "val_dice"  # 'val_dice' (higher is better) or 'val_loss' (lower is better)
    early_stopping_patience: int = 15  # epochs without improvement before stopping; 0 = never stop early
    min_delta: float = 1e-4  # smallest change that counts as an improvement
    # --- run
    max_minutes: float = 0.0  # wall-clock budget; 0 = none. With 'cosine' the LR anneals over this time
    seed: int = 0  # seeds the split, the patches and the weights: same seed, same result on CPU
    device: str = "auto"  # 'auto' picks cuda, then mps, then cpu
    precision: str = "auto"  # training arithmetic: 'auto' = bf16 where the chip does it natively, else 'fp32'
    num_threads: int = 0  # torch CPU threads; 0 = leave torch's default
    checkpoint_every: int = 0  # also keep epoch_XXX.pt every this many epochs; 0 = off
    calibrate_postprocess: bool = True  # search post-processing on the validation images at the end

    def __post_init__(self) -> None:
        for name, spec in FIELDS.items():
            object.__setattr__(self, name, spec.check(getattr(self, name), name))
        if self.patch_size % 2 ** self.depth:
            raise UserError(
                f"patch_size {self.patch_size} must be a multiple of 2**depth = {2 ** self.depth}: "
                f"use {self.patch_size // 2 ** self.depth * 2 ** self.depth or 2 ** self.depth}."
            )
        if self.lr_schedule == "cosine" and self.min_learning_rate > self.learning_rate:
            raise UserError("min_learning_rate must not exceed learning_rate.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainingConfig":
        if not isinstance(data, dict):
            raise UserError(f"A training config must be a JSON object, not {type(data).__name__}.")
        unknown = sorted(set(data) - set(FIELDS))
        if unknown:
            raise UserError(f"Unknown training option(s) {', '.join(map(repr, unknown))}: {_known()}")
        return cls(**data)

    def with_updates(self, **changes: Any) -> "TrainingConfig":
        unknown = sorted(set(changes) - set(FIELDS))
        if unknown:
            raise UserError(f"Unknown training option(s) {', '.join(map(repr, unknown))}: {_known()}")
        return replace(self, **changes)


# name: (low, high, low is excluded); every number has a range
_RANGES = {
    "base_channels": (1, 256, False), "depth": (1, 6, False), "dropout_rate": (0.0, 0.9, False),
    "dice_weight": (0.0, 1.0, False), "focal_alpha": (0.0, 1.0, False), "focal_gamma": (0.0, 10.0, False),
    "tversky_alpha": (0.0, 1.0, False), "tversky_beta": (0.0, 1.0, False),
    "learning_rate": (0.0, 1.0, True), "weight_decay": (0.0, 1.0, False), "batch_size": (1, 1024, False),
    "patch_size": (16, 1024, False), "epochs": (1, 100_000, False), "steps_per_epoch": (1, 1_000_000, False),
    "val_fraction": (0.0, 0.9, False), "ema_decay": (0.0, 0.99999, False), "max_zoom": (1.0, 2.0, False),
    "camera_augment": (0.0, 1.0, False),
    "min_learning_rate": (0.0, 1.0, False),
    "plateau_factor": (0.0, 0.99, True),
    "plateau_patience": (0, 1000, False), "early_stopping_patience": (0, 100_000, False),
    "min_delta": (0.0, 1.0, False), "max_minutes": (0.0, 10_080.0, False), "seed": (0, 2**31 - 1, False),
    "num_threads": (0, 256, False), "checkpoint_every": (0, 100_000, False), "max_fov_px": (0, 100_000, False),
}
# The allowed values of every option that takes one of a few words.
CHOICES = {
    "channel": CHANNELS, "normalization": NORMALIZATIONS, "loss_function": LOSS_NAMES, "optimizer": ("adamw",),
    "lr_schedule": SCHEDULES, "early_stopping_monitor": MONITORS, "device": DEVICES,
    "precision": PRECISIONS,
}
# What each option does and its usual range, in the words the Train page's form shows beside it.
HELP = {
    "epochs": ("Upper limit; early stopping usually ends the run sooner."),
    "batch_size": ("Patches per optimiser step. Lower it if memory runs out."),
    "patch_size": ("Side of the square training patches; a multiple of 2^depth."),
    "steps_per_epoch": ("Optimiser steps per epoch; validation runs after each epoch."),
    "learning_rate": ("Peak learning rate of AdamW."),
    "val_fraction": ("Share of the images held out for validation; 0 trains on every image and keeps "
                     "the newest epoch (nothing is then calibrated or stopped early)."),
    "max_fov_px": ("Photographs whose field of view is wider than this many pixels are brought down to it for "
                   "training, and predicted at that scale; 1200 makes the vessels of 3504×2336 photographs about "
                   "as wide in pixels as those of 565×584 ones. 0 trains every data set at its own size."),
    "balance_datasets": ("With several data sets, draw training patches from each set equally often, however "
                         "many photographs it has; off draws every photograph equally often."),
    "seed": ("Same seed, same result on CPU: change it to check a result is not luck."),
    "loss_function": ("Start with combined_dice_focal: Dice copes with thin vessels being a small "
                              "share of the pixels, focal with the hard pixels at their edges."),
    "dice_weight": ("Share of Dice in the combined loss; 0.7 is the recommended start."),
    "focal_alpha": ("Focal weight of vessel pixels (background gets 1 − alpha)."),
    "focal_gamma": ("Focal focusing exponent; 2 is the usual value."),
    "tversky_alpha": ("Tversky weight of false positives."),
    "tversky_beta": ("Tversky weight of false negatives; above alpha favours thin vessels."),
    "weight_decay": ("Raise it (e.g. 1e-3) to reduce over-fitting: validation loss rising while "
                                       "training loss falls."),
    "dropout_rate": ("Dropout at the bottleneck; 0.1–0.3 reduces over-fitting."),
    "ema_decay": ("Validate and save a moving average of the weights: steadier curves and a "
                                    "better chosen checkpoint. 0.998 averages about the last 500 steps; 0 turns it off."),
    "augment": ("Flips, rotations, zoom and brightness/contrast jitter: keep on for small data "
                                  "sets."),
    "max_zoom": ("With augmentation on, zoom patches by a random factor between 1/max_zoom and "
                                   "max_zoom (e.g. 1.25), for images taken at different scales; 1 turns zoom off. "
                                   "Photographs from one camera rarely need it."),
    "any_angle": ("With augmentation on, rotate patches by any angle instead of only by multiples "
                                    "of 90°."),
    "camera_augment": ("With augmentation on, the share of patches cut from the photograph as "
                                         "another camera would take it: colour cast, gamma and contrast, uneven "
                                         "illumination, blur or sharpening, JPEG, sensor noise. 0 turns it off; "
                                         "for photographs of other cameras than the training set's."),
    "early_stopping_monitor": ("val_dice (higher is better) or val_loss (lower is better)."),
    "early_stopping_patience": ("Epochs without improvement before stopping; 10–20 is a "
                                                         "good range. 0 never stops early."),
    "min_delta": ("Smallest change that counts as an improvement."),
    "lr_schedule": ("cosine anneals to the minimum LR; plateau lowers it when stuck."),
    "min_learning_rate": ("Floor of the cosine schedule."),
    "plateau_factor": ("plateau: multiply the LR by this when stuck."),
    "plateau_patience": ("plateau: epochs without improvement before lowering the LR."),
    "max_minutes": ("Minutes of training; the run ends when they are used up. 0 = no time limit, the "
                              "epochs end it. Measure this machine then sizes the run to fit them."),
    "base_channels": ("Channels of the first U-Net level (doubling per level); more channels learn "
                                  "finer detail and take longer per step."),
    "depth": ("Down-sampling steps of the U-Net; 3 sees 8× context, enough for retinal vessels."),
    "channel": ("Input channel: green has the best vessel contrast in fundus photographs; rgb "
                            "gives the model all three."),
    "clahe": ("Contrast-limited adaptive histogram equalisation before the network; saved with the "
                          "model and applied again at inference."),
    "normalization": ("zscore: per image inside the field of view; unit: divide by 255."),
    "optimizer": ("AdamW, the only optimiser offered."),
    "device": ("auto picks a CUDA GPU, then Apple MPS, then the CPU."),
    "precision": ("auto trains in bfloat16 where the processor does it natively (faster), else "
                              "float32. Prediction is always float32."),
    "num_threads": ("Torch CPU threads; 0 leaves torch's default (all cores)."),
    "checkpoint_every": ("Also keep epoch_XXX.pt every this many epochs; 0 keeps only best.pt and "
                                     "last.pt."),
    "calibrate_postprocess": ("At the end, search the post-processing settings that give the best "
                                          "Dice on the validation images; the inference pages open with them."),
}
# Every option's spec (strict: typed values from JSON, the CLI and the form), checked in __post_init__.
FIELDS: dict[str, Field] = {
    f.name: Field({"int": int, "float": float, "bool": bool, "str": str}[f.type], f.default,
                  *_RANGES.get(f.name, (None, None, False)), choices=CHOICES.get(f.name, ()),
                  help=HELP.get(f.name, ""))
    for f in fields(TrainingConfig)
}
# Settings that shape the network or its input; a resumed run must keep them.
ARCHITECTURE_KEYS = ("base_channels", "depth", "channel", "clahe", "normalization")


def config_with_changes(stored: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """The settings a restarted or continued run trains with: its stored config (what the plan chose
    included) with only the fields in ``changes`` replaced; a field not sent keeps its stored value.

    Args:
        stored: the run's config as its registry row holds it (a ``TrainingConfig`` dict).
        changes: the fields the caller sent, e.g. ``{"epochs": 40}``.
    Returns:
        A validated ``TrainingConfig`` dict.
    Raises:
        UserError: ``changes`` is not an object, names an unknown option, or makes an invalid config
            (the sentence names the option).
    """
    if not isinstance(changes, dict):
        raise UserError(f"The changed training options must be a JSON object such as {{\"epochs\": 40}}, "
                         f"not {type(changes).__name__}.")
    base = {k: v for k, v in (stored or {}).items() if k in FIELDS}  # a retired option is dropped
    return TrainingConfig.from_dict(base).with_updates(**changes).to_dict()


def more_time_changes(config: dict[str, Any], trained_minutes: float, epochs_done: int,
                      more_minutes: float) -> dict[str, Any]:
    """The changes that continue a run with a time budget for ``more_minutes`` more minutes.

    ``max_minutes`` is a run's total budget (the minutes trained before a resume count), so it becomes
    ``trained_minutes + more_minutes``; ``epochs`` becomes the highest limit, so that the clock and never an
    epoch limit ends the run: an estimate from the pace so far failed when the new epochs ran faster (a
    "+0.5 min" continuation ended at epoch 15 of its raised limit, silently short of its time). The cosine
    schedule follows the time budget when it runs out first (``callbacks.LRSchedule``), so the high limit
    does not flatten it.

    Args:
        config: the run's stored config (a ``TrainingConfig`` dict).
        trained_minutes: minutes the run has trained so far (its last.pt's ``elapsed_seconds`` / 60).
        epochs_done: the epoch its last.pt holds.
        more_minutes: how much longer to train, in minutes (greater than 0).
    Returns:
        ``{"max_minutes": …, "epochs": …}`` to pass to ``config_with_changes``.
    Raises:
        UserError: ``more_minutes`` is not a positive number.
    """
    if isinstance(more_minutes, bool) or not isinstance(more_minutes, (int, float)) or not more_minutes > 0:
        raise UserError(f"The minutes to train on must be a number above 0, not {more_minutes!r}.")
    return {"max_minutes": round(trained_minutes + float(more_minutes), 2), "epochs": FIELDS["epochs"].high}


def _known() -> str:
    return "known options are " + ", ".join(FIELDS) + "."


def parse_set_option(text: str) -> tuple[str, Any]:
    """Parse ``key=value`` (as given to ``--set``) into (key, value typed like the field)."""
    key, sep, raw = str(text).partition("=")
    key, raw = key.strip(), raw.strip()
    if not sep or not key:
        raise UserError(f"--set expects key=value (for example learning_rate=0.001), not {text!r}.")
    if key not in FIELDS:
        raise UserError(f"Unknown training option {key!r}: {_known()}")
    kind = FIELDS[key].kind
    try:
        if kind is bool:
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                raise ValueError
            return key, raw.lower() in ("true", "1", "yes", "on")
        if kind is int:
            return key, int(raw)
        if kind is float:
            return key, float(raw)
    except ValueError:
        what = {bool: "true or false", int: "a whole number", float: "a number"}[kind]
        raise UserError(f"{key} must be {what}, not {raw!r}.") from None
    return key, raw




class TrainingError(UserError):
    """Training cannot go on with these settings; the message says which one to change."""
