"""The training options: one frozen, validated dataclass, stored as JSON in the run's row and in every checkpoint.

``FIELDS`` declares every option once (type, default, range, choices, the Train form's section and label,
help); ``TrainingConfig`` is made from it. ``TrainingConfig()`` holds the defaults;
``TrainingConfig.from_dict(d)`` and ``with_updates(**kw)`` refuse unknown keys with a sentence naming the
known ones; ``TrainingConfig.from_stored(d)`` reads back what was stored without checking it again;
``parse_set_option`` reads the CLI's ``--set key=value``.
"""
from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any

from engine.errors import UserError
from engine.fields import Field, config_dataclass
from engine.training.data import CHANNELS, MAX_FOV_PX, NORMALIZATIONS
from engine.training.losses import LOSS_NAMES

SCHEDULES = ("cosine", "plateau", "none")
MONITORS = ("val_dice", "val_loss")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "bf16", "fp32")
# The Train form's sections, in the order it draws them; an option's ``group`` names one.
BASICS, LOSS, REGULARISATION, SCHEDULE, ADVANCED = GROUPS = (
    "Basics", "Loss", "Regularisation", "Early stopping and LR", "Advanced")

# Every training option, declared once: type, default, range (ends included; low_open excludes the low end),
# choices, the Train form's section and label, and the help the form shows beside it. The TrainingConfig
# dataclass is made from this table (in this order, which is that of the stored JSON and of the form's
# fields within a section); its checks (strict: typed values from JSON, the CLI and the form), the HTTP API's,
# the command line's help and the Train form all read it.
FIELDS: dict[str, Field] = {
    # --- model
    "base_channels": Field(int, 16, 1, 256, group=ADVANCED,  # channels of the first level (doubles per level)
                           help="Channels of the first U-Net level (doubling per level); more channels learn "
                                "finer detail and take longer per step."),
    "depth": Field(int, 3, 1, 6, group=ADVANCED,
                   help="Down-sampling steps of the U-Net; 3 sees 8× context, enough for retinal vessels."),
    "dropout_rate": Field(float, 0.1, 0.0, 0.9, group=REGULARISATION,  # Dropout2d at the bottleneck
                          help="Dropout at the bottleneck; 0.1–0.3 reduces over-fitting."),
    # --- preprocessing (saved with the model, applied again at inference)
    "channel": Field(str, "green", choices=CHANNELS, group=ADVANCED,
                     help="Input channel: green has the best vessel contrast in fundus photographs; rgb "
                          "gives the model all three."),
    "clahe": Field(bool, True, group=ADVANCED, label="CLAHE",  # clip 2, 8×8 tiles
                   help="Contrast-limited adaptive histogram equalisation before the network; saved with the "
                        "model and applied again at inference."),
    "normalization": Field(str, "zscore", choices=NORMALIZATIONS, group=ADVANCED,
                           help="zscore: per image inside the field of view; unit: divide by 255."),
    # see engine.training.data.MAX_FOV_PX; 0 = every data set at its own size
    "max_fov_px": Field(int, MAX_FOV_PX, 0, 100_000, group=ADVANCED,
                        help="Photographs whose field of view is wider than this many pixels are brought down to "
                             "it for training, and predicted at that scale; 1200 makes the vessels of 3504×2336 "
                             "photographs about as wide in pixels as those of 565×584 ones. 0 trains every data "
                             "set at its own size."),
    # --- loss
    "loss_function": Field(str, "combined_dice_focal", choices=LOSS_NAMES, group=LOSS,
                           help="Start with combined_dice_focal: Dice copes with thin vessels being a small share "
                                "of the pixels, focal with the hard pixels at their edges."),
    # combined loss = dice_weight·Dice + (1 − dice_weight)·Focal
    "dice_weight": Field(float, 0.7, 0.0, 1.0, group=LOSS,
                         help="Share of Dice in the combined loss; 0.7 is the recommended start."),
    "focal_alpha": Field(float, 0.25, 0.0, 1.0, group=LOSS,  # Lin et al.
                         help="Focal weight of vessel pixels (background gets 1 − alpha)."),
    "focal_gamma": Field(float, 2.0, 0.0, 10.0, group=LOSS,  # Lin et al.
                         help="Focal focusing exponent; 2 is the usual value."),
    "tversky_alpha": Field(float, 0.3, 0.0, 1.0, group=LOSS, help="Tversky weight of false positives."),
    "tversky_beta": Field(float, 0.7, 0.0, 1.0, group=LOSS,
                          help="Tversky weight of false negatives; above alpha favours thin vessels."),
    # --- optimisation
    "optimizer": Field(str, "adamw", choices=("adamw",), group=ADVANCED, help="AdamW, the only optimiser offered."),
    "learning_rate": Field(float, 3e-3, 0.0, 1.0, low_open=True, group=BASICS,  # cosine decay from it
                           help="Peak learning rate of AdamW."),
    "weight_decay": Field(float, 1e-4, 0.0, 1.0, group=REGULARISATION,  # AdamW's decoupled weight decay
                          help="Raise it (e.g. 1e-3) to reduce over-fitting: validation loss rising while "
                               "training loss falls."),
    "batch_size": Field(int, 8, 1, 1024, group=BASICS,
                        help="Patches per optimiser step. Lower it if memory runs out."),
    # 128 gives more context per pixel than 64
    "patch_size": Field(int, 128, 16, 1024, group=BASICS,
                        help="Side of the square training patches; a multiple of 2^depth."),
    "epochs": Field(int, 60, 1, 100_000, group=BASICS,
                    help="Upper limit; early stopping usually ends the run sooner."),
    "steps_per_epoch": Field(int, 250, 1, 1_000_000, group=BASICS,
                             help="Optimiser steps per epoch; validation runs after each epoch."),
    # with several data sets, this share of each set; the split is seeded
    "val_fraction": Field(float, 0.2, 0.0, 0.9, group=BASICS,
                          help="Share of the images held out for validation; 0 trains on every image and keeps "
                               "the newest epoch (nothing is then calibrated or stopped early)."),
    "balance_datasets": Field(bool, True, group=ADVANCED,
                              help="With several data sets, draw training patches from each set equally often, "
                                   "however many photographs it has; off draws every photograph equally often."),
    "augment": Field(bool, True, group=REGULARISATION,
                     help="Flips, rotations, zoom and brightness/contrast jitter: keep on for small data sets."),
    "max_zoom": Field(float, 1.0, 1.0, 2.0, group=REGULARISATION, label="Maximum zoom",
                      help="With augmentation on, zoom patches by a random factor between 1/max_zoom and "
                           "max_zoom (e.g. 1.25), for images taken at different scales; 1 turns zoom off. "
                           "Photographs from one camera rarely need it."),
    "any_angle": Field(bool, False, group=REGULARISATION, label="Rotate by any angle",
                       help="With augmentation on, rotate patches by any angle instead of only by multiples "
                            "of 90°."),
    "camera_augment": Field(float, 0.0, 0.0, 1.0, group=REGULARISATION, label="Other-camera share",
                            help="With augmentation on, the share of patches cut from the photograph as "
                                 "another camera would take it: colour cast, gamma and contrast, uneven "
                                 "illumination, blur or sharpening, JPEG, sensor noise. 0 turns it off; "
                                 "for photographs of other cameras than the training set's."),
    # about the last 500 steps
    "ema_decay": Field(float, 0.998, 0.0, 0.99999, group=REGULARISATION, label="Weight-average decay",
                       help="Validate and save a moving average of the weights: steadier curves and a better "
                            "chosen checkpoint. 0.998 averages about the last 500 steps; 0 turns it off."),
    # --- learning-rate schedule
    "lr_schedule": Field(str, "cosine", choices=SCHEDULES, group=SCHEDULE, label="LR schedule",
                         help="cosine anneals to the minimum LR; plateau lowers it when stuck."),
    "min_learning_rate": Field(float, 1e-5, 0.0, 1.0, group=SCHEDULE, label="Minimum learning rate",
                               help="Floor of the cosine schedule."),
    "plateau_factor": Field(float, 0.5, 0.0, 0.99, low_open=True, group=SCHEDULE,
                            help="plateau: multiply the LR by this when stuck."),
    "plateau_patience": Field(int, 5, 0, 1000, group=SCHEDULE,
                              help="plateau: epochs without improvement before lowering the LR."),
    # --- early stopping
    "early_stopping_monitor": Field(str, "val_dice", choices=MONITORS, group=SCHEDULE,
                                    label="Early-stopping monitor",
                                    help="val_dice (higher is better) or val_loss (lower is better)."),
    "early_stopping_patience": Field(int, 15, 0, 100_000, group=SCHEDULE, label="Early-stopping patience",
                                     help="Epochs without improvement before stopping; 10–20 is a good range. "
                                          "0 never stops early."),
    "min_delta": Field(float, 1e-4, 0.0, 1.0, group=SCHEDULE,
                       help="Smallest change that counts as an improvement."),
    # --- run
    # a run's total budget; with 'cosine' the LR anneals over this time
    "max_minutes": Field(float, 0.0, 0.0, 10_080.0, group=BASICS,
                         help="Minutes of training; the run ends when they are used up. 0 = no time limit, the "
                              "epochs end it. Measure this machine then sizes the run to fit them."),
    "seed": Field(int, 0, 0, 2**31 - 1, group=BASICS,  # seeds the split, the patches and the weights
                  help="Same seed, same result on CPU: change it to check a result is not luck."),
    "device": Field(str, "auto", choices=DEVICES, group=ADVANCED,
                    help="auto picks a CUDA GPU, then Apple MPS, then the CPU."),
    "precision": Field(str, "auto", choices=PRECISIONS, group=ADVANCED,
                       help="auto trains in bfloat16 where the processor does it natively (faster), else "
                            "float32. Prediction is always float32."),
    "num_threads": Field(int, 0, 0, 256, group=ADVANCED,
                         help="Torch CPU threads; 0 leaves torch's default (all cores)."),
    "checkpoint_every": Field(int, 0, 0, 100_000, group=ADVANCED,
                              help="Also keep epoch_XXX.pt every this many epochs; 0 keeps only best.pt and "
                                   "last.pt."),
    "calibrate_postprocess": Field(bool, True, group=ADVANCED, label="Calibrate post-processing",
                                   help="At the end, search the post-processing settings that give the best "
                                        "Dice on the validation images; the inference pages open with them."),
}


@config_dataclass(FIELDS)
class TrainingConfig:
    """Every training option, one field per entry of ``FIELDS`` (its type and default), in that order.

    ``TrainingConfig()`` holds the defaults; ``from_dict`` reads what a user sent, ``from_stored`` what this
    program stored; ``to_dict`` is the JSON stored in the run's row and in every checkpoint.
    """

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
        """The config a user (a form, a JSON body, a file) sent, every value checked; missing keys take the
        defaults.

        Raises:
            UserError: ``data`` is not an object, names an unknown option or holds a value that does not fit.
        """
        _check_names(data)
        return cls(**data)

    @classmethod
    def from_stored(cls, data: dict[str, Any]) -> "TrainingConfig":
        """The config this program stored (``to_dict``'s JSON in a run's row or a checkpoint), without checking
        every value again: they were checked when it was made. Keys are handled as ``from_dict`` handles them
        (an unknown one is refused, a missing one takes its default); a whole number stored for a number
        becomes a float. Never use it on what a user sent: that is ``from_dict``'s.

        Raises:
            UserError: ``data`` is not an object or names an unknown option.
        """
        _check_names(data)
        config = object.__new__(cls)
        for name, spec in FIELDS.items():
            value = data.get(name, spec.default)
            if spec.kind is float and type(value) is int:
                value = float(value)
            object.__setattr__(config, name, value)
        return config

    def with_updates(self, **changes: Any) -> "TrainingConfig":
        unknown = sorted(set(changes) - set(FIELDS))
        if unknown:
            raise UserError(f"Unknown training option(s) {', '.join(map(repr, unknown))}: {_known()}")
        return replace(self, **changes)


def _check_names(data: Any) -> None:
    if not isinstance(data, dict):
        raise UserError(f"A training config must be a JSON object, not {type(data).__name__}.")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise UserError(f"Unknown training option(s) {', '.join(map(repr, unknown))}: {_known()}")


# Settings that shape the network or its input; a resumed run must keep them.
ARCHITECTURE_KEYS = ("base_channels", "depth", "channel", "clahe", "normalization")


def config_with_changes(stored: dict[str, Any], changes: dict[str, Any]) -> "TrainingConfig":
    """The settings a restarted or continued run trains with: its stored config (what the plan chose
    included) with only the fields in ``changes`` replaced; a field not sent keeps its stored value.

    Args:
        stored: the run's config as its registry row holds it (a ``TrainingConfig`` dict).
        changes: the fields the caller sent, e.g. ``{"epochs": 40}``.
    Returns:
        The ``TrainingConfig``, checked once here with the changes in it (the stored part is read back with
        ``from_stored``: it was checked when the run was submitted).
    Raises:
        UserError: ``changes`` is not an object, names an unknown option, or makes an invalid config
            (the sentence names the option).
    """
    if not isinstance(changes, dict):
        raise UserError(f"The changed training options must be a JSON object such as {{\"epochs\": 40}}, "
                         f"not {type(changes).__name__}.")
    base = {k: v for k, v in (stored or {}).items() if k in FIELDS}  # a retired option is dropped
    return TrainingConfig.from_stored(base).with_updates(**changes)


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
