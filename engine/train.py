"""Training a vessel-segmentation U-Net: the config, early stopping, the loop and checkpoints.

``train(config, dataset, out_dir, on_event=None, should_stop=None, resume_from=None)`` knows nothing of
queues or pages: it reports through named events (see docs/ARCHITECTURE.md) and polls ``should_stop``
every batch and during validation. Checkpoints are plain dicts that load with ``weights_only=True``.
"""
from __future__ import annotations

import io
import math
import platform
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from engine.postprocess.calibration import calibrate_postprocess, pooled_dice
from engine.data import CHANNELS, NORMALIZATIONS, Dataset, DatasetError, PatchSampler, load_dataset
from engine.data import normalization_stats, split_indices
from engine.fov import FOV_DIAMETER_MEASURE
from engine.losses import LOSS_NAMES, build_loss
from storage.paths import atomic_write_bytes

SCHEDULES = ("cosine", "plateau", "none")
MONITORS = ("val_dice", "val_loss")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "bf16", "fp32")
STOP_REASONS = ("max_epochs", "early_stopping", "user_stop", "time_limit")


@dataclass(frozen=True)
class TrainingConfig:
    # --- model
    base_channels: int = 16  # channels of the first level (doubles per level); with bf16, 16 costs about what 8 does
    depth: int = 3  # down-sampling steps; 3 sees 8× context, enough for retinal vessels
    dropout_rate: float = 0.1  # Dropout2d at the bottleneck
    # --- preprocessing (saved with the model, applied again at inference)
    channel: str = "green"  # 'green' (best vessel contrast in fundus photos), 'gray' or 'rgb'
    clahe: bool = True  # contrast-limited adaptive histogram equalisation (clip 2, 8×8 tiles)
    normalization: str = "zscore"  # 'zscore' per image inside the FOV, or 'unit' (divide by 255)
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
    steps_per_epoch: int = 250  # optimiser steps (batches) per epoch (~30 s on 2 CPU cores); validation runs after each
    val_fraction: float = 0.2  # share of the images held out for validation (seeded split)
    augment: bool = True  # flips, rotations, zoom, brightness/contrast/gamma jitter
    max_zoom: float = 1.0  # augment: zoom patches by a factor in [1/max_zoom, max_zoom]; 1 = off
    any_angle: bool = False  # augment: rotate patches by any angle, not only by 90° steps
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
        for f in fields(self):
            value = getattr(self, f.name)
            kind = _FIELD_TYPES[f.name]
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, f.name, float(value))
            elif kind is bool and not isinstance(value, bool):
                raise ValueError(f"{f.name} must be true or false, not {value!r}.")
            elif kind is int and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"{f.name} must be a whole number, not {value!r}.")
            elif kind is str and not isinstance(value, str):
                raise ValueError(f"{f.name} must be text, not {value!r}.")
            elif kind is float and (isinstance(value, bool) or not isinstance(value, float)):
                raise ValueError(f"{f.name} must be a number, not {value!r}.")
        for name, (low, high, low_open) in _RANGES.items():
            value = getattr(self, name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, not {value}.")
            if value < low or value > high or (low_open and value == low):
                lower = f"greater than {low:g}" if low_open else f"at least {low:g}"
                raise ValueError(f"{name} must be {lower} and at most {high:g}, not {value:g}.")
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} {getattr(self, name)!r} is not known: choose one of {', '.join(allowed)}.")
        if self.patch_size % 2 ** self.depth:
            raise ValueError(
                f"patch_size {self.patch_size} must be a multiple of 2**depth = {2 ** self.depth}: "
                f"use {self.patch_size // 2 ** self.depth * 2 ** self.depth or 2 ** self.depth}."
            )
        if self.lr_schedule == "cosine" and self.min_learning_rate > self.learning_rate:
            raise ValueError("min_learning_rate must not exceed learning_rate.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainingConfig":
        if not isinstance(data, dict):
            raise ValueError(f"A training config must be a JSON object, not {type(data).__name__}.")
        unknown = sorted(set(data) - set(_FIELD_TYPES))
        if unknown:
            raise ValueError(f"Unknown training option(s) {', '.join(map(repr, unknown))}: {_known()}")
        return cls(**data)

    def with_updates(self, **changes: Any) -> "TrainingConfig":
        unknown = sorted(set(changes) - set(_FIELD_TYPES))
        if unknown:
            raise ValueError(f"Unknown training option(s) {', '.join(map(repr, unknown))}: {_known()}")
        return replace(self, **changes)


_FIELD_TYPES: dict[str, type] = {f.name: {"int": int, "float": float, "bool": bool, "str": str}[f.type]
                                 for f in fields(TrainingConfig)}
# name: (low, high, low is excluded)
_RANGES = {
    "base_channels": (1, 256, False), "depth": (1, 6, False), "dropout_rate": (0.0, 0.9, False),
    "dice_weight": (0.0, 1.0, False), "focal_alpha": (0.0, 1.0, False), "focal_gamma": (0.0, 10.0, False),
    "tversky_alpha": (0.0, 1.0, False), "tversky_beta": (0.0, 1.0, False),
    "learning_rate": (0.0, 1.0, True), "weight_decay": (0.0, 1.0, False), "batch_size": (1, 1024, False),
    "patch_size": (16, 1024, False), "epochs": (1, 100_000, False), "steps_per_epoch": (1, 1_000_000, False),
    "val_fraction": (0.0, 0.9, True), "ema_decay": (0.0, 0.99999, False), "max_zoom": (1.0, 2.0, False),
    "min_learning_rate": (0.0, 1.0, False),
    "plateau_factor": (0.0, 0.99, True),
    "plateau_patience": (0, 1000, False), "early_stopping_patience": (0, 100_000, False),
    "min_delta": (0.0, 1.0, False), "max_minutes": (0.0, 10_080.0, False), "seed": (0, 2**31 - 1, False),
    "num_threads": (0, 256, False), "checkpoint_every": (0, 100_000, False),
}
# The allowed values of every option that takes one of a few words.
CHOICES = {
    "channel": CHANNELS, "normalization": NORMALIZATIONS, "loss_function": LOSS_NAMES, "optimizer": ("adamw",),
    "lr_schedule": SCHEDULES, "early_stopping_monitor": MONITORS, "device": DEVICES,
    "precision": PRECISIONS,
}
# Settings that shape the network or its input; a resumed run must keep them.
ARCHITECTURE_KEYS = ("base_channels", "depth", "channel", "clahe", "normalization")


def _known() -> str:
    return "known options are " + ", ".join(_FIELD_TYPES) + "."


def parse_set_option(text: str) -> tuple[str, Any]:
    """Parse ``key=value`` (as given to ``--set``) into (key, value typed like the field)."""
    key, sep, raw = str(text).partition("=")
    key, raw = key.strip(), raw.strip()
    if not sep or not key:
        raise ValueError(f"--set expects key=value (for example learning_rate=0.001), not {text!r}.")
    if key not in _FIELD_TYPES:
        raise ValueError(f"Unknown training option {key!r}: {_known()}")
    kind = _FIELD_TYPES[key]
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
        raise ValueError(f"{key} must be {what}, not {raw!r}.") from None
    return key, raw


def monitor_mode(monitor: str) -> str:
    """``"max"`` for a metric where higher is better (``val_dice``), ``"min"`` for a loss."""
    return "max" if monitor == "val_dice" else "min"


class EarlyStopping:
    """Stop when the monitored metric has not improved by ``min_delta`` for ``patience`` epochs."""

    def __init__(self, monitor: str = "val_dice", patience: int = 15, min_delta: float = 1e-4):
        self.monitor, self.patience, self.min_delta = monitor, patience, min_delta
        self.mode = monitor_mode(monitor)
        self.best: float | None = None
        self.best_epoch = 0
        self.wait = 0  # epochs since the best

    def improves(self, value: float | None) -> bool:
        if value is None or not math.isfinite(value):
            return False
        if self.best is None:
            return True
        return value > self.best + self.min_delta if self.mode == "max" else value < self.best - self.min_delta

    def evaluate(self, value: float | None) -> tuple[bool, str]:
        """(should_stop, reason) if ``value`` were the next epoch's metric; changes nothing."""
        if self.improves(value):
            return False, f"{self.monitor} improved to {value:.4f}"
        wait = self.wait + 1
        if self.patience and wait >= self.patience:
            best = "none" if self.best is None else f"{self.best:.4f}"
            return True, (f"{self.monitor} did not improve by more than {self.min_delta:g} for {wait} epochs "
                          f"(best {best} at epoch {self.best_epoch})")
        return False, f"{self.monitor} has not improved for {wait} epoch(s)"

    def update(self, value: float | None, epoch: int) -> bool:
        """Record the epoch's metric; True when it is the new best."""
        if self.improves(value):
            self.best, self.best_epoch, self.wait = float(value), epoch, 0
            return True
        self.wait += 1
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"monitor": self.monitor, "patience": self.patience, "min_delta": self.min_delta,
                "best": self.best, "best_epoch": self.best_epoch, "wait": self.wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch, self.wait = state["best"], int(state["best_epoch"]), int(state["wait"])


class LRSchedule:
    """Cosine (per step, over the epochs or the time budget, whichever runs out first), plateau, or none."""

    def __init__(self, config: TrainingConfig, optimizer: torch.optim.Optimizer):
        self.config, self.optimizer = config, optimizer
        self.plateau = None
        if config.lr_schedule == "plateau":
            self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode=monitor_mode(config.early_stopping_monitor),
                factor=config.plateau_factor, patience=config.plateau_patience)

    def before_step(self, step: int, elapsed: float) -> None:
        c = self.config
        if c.lr_schedule != "cosine":
            return
        progress = step / (c.epochs * c.steps_per_epoch)
        if c.max_minutes > 0:
            progress = max(progress, elapsed / (c.max_minutes * 60))
        lr = c.min_learning_rate + (c.learning_rate - c.min_learning_rate) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def after_epoch(self, metric: float | None) -> None:
        if self.plateau is not None and metric is not None and math.isfinite(metric):
            self.plateau.step(metric)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.config.lr_schedule, "plateau": self.plateau.state_dict() if self.plateau else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.plateau is not None and state.get("plateau"):
            self.plateau.load_state_dict(state["plateau"])


class WeightAverage:
    """Exponential moving average of a model's weights and BatchNorm statistics (Polyak averaging).

    Patch-trained U-Nets with small batches swing by a few Dice points from one epoch to the next
    (see benchmarks/train_drive.py); the average follows the trend without the swings, so
    validation and early stopping judge the trend rather than the luck of one epoch. The decay is
    warmed up as in timm's ModelEma, ``min(decay, (1 + step) / (10 + step))``, so the first steps'
    random weights fade at once.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        import copy

        self.module = copy.deepcopy(model).eval()
        self.decay = decay
        for p in self.module.parameters():
            p.requires_grad_(False)
        pairs = list(zip(self.module.state_dict().values(), model.state_dict().values()))
        self._floats = [(a, b) for a, b in pairs if a.dtype.is_floating_point]
        self._others = [(a, b) for a, b in pairs if not a.dtype.is_floating_point]

    @torch.no_grad()
    def update(self, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_([a for a, _ in self._floats], [b for _, b in self._floats], 1.0 - decay)
        for a, b in self._others:
            a.copy_(b)


@dataclass
class TrainResult:
    stop_reason: str
    best_epoch: int
    best_metric: float | None
    epochs_run: int
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    history: list[dict] = field(default_factory=list)
    recommended_postprocess: dict | None = None
    calibration: dict | None = None  # dice_before, dice_after, steps


class TrainingError(ValueError):
    """Training cannot go on; the message says what to change."""


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 convolutions natively (CPU: AMX or AVX512-BF16; CUDA: Ampere on)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
        return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)
    return False


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for training (None: plain float32).

    bf16 autocast runs the convolutions in bfloat16 while weights, optimiser state, BatchNorm
    statistics and the loss stay float32. A CPU without native bf16 would emulate it, slower than
    float32, so 'auto' uses it only where the hardware has it (``native_bf16``; the README gives the
    measured speed-up). Validation and prediction always run in float32.

    Raises:
        TrainingError: bf16 asked for on Apple MPS.
    """
    if name == "fp32" or (name == "auto" and not native_bf16(device)):
        return None
    if device.type == "mps":
        raise TrainingError("precision 'bf16' is not available on Apple MPS: set precision to fp32 or auto.")
    return torch.bfloat16


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("device 'cuda' was asked for but no CUDA GPU is available: use device=auto or cpu.")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise TrainingError("device 'mps' was asked for but Apple's MPS is not available: use device=auto or cpu.")
    return torch.device(name)


def versions() -> dict[str, str]:
    return {"torch": str(torch.__version__), "numpy": str(np.__version__), "python": platform.python_version()}


def save_checkpoint(path: Path, payload: dict[str, Any]) -> Path:
    buf = io.BytesIO()
    torch.save(payload, buf)
    return atomic_write_bytes(path, buf.getvalue())


def check_resume(checkpoint: str | Path, config: TrainingConfig) -> dict[str, Any]:
    """The checkpoint dict when ``config`` can continue it; otherwise TrainingError saying what to change.

    Refused: an unreadable file (CheckpointError), other architecture or preprocessing settings, no epoch
    left (``epochs`` not above the saved epoch), an early stop that would trigger again at once (patience
    not above the epochs already waited), a time budget already spent.
    """
    from engine.infer import load_checkpoint_dict

    ckpt = load_checkpoint_dict(checkpoint)
    missing = [k for k in ("state_dict", "optimizer", "early_stopping", "epoch", "config") if k not in ckpt]
    if missing:
        raise TrainingError(f"{Path(checkpoint).name} lacks {', '.join(missing)}, so training cannot continue "
                            "from it: continue from a last.pt written by this program.")
    changed = [k for k in ARCHITECTURE_KEYS if ckpt["config"].get(k) != getattr(config, k)]
    if changed:
        raise TrainingError(f"Cannot resume: the checkpoint was trained with different {', '.join(changed)}; "
                            "keep those settings as they were.")
    done, waited = int(ckpt["epoch"]), int(ckpt["early_stopping"].get("wait", 0))
    if done >= config.epochs:
        raise TrainingError(f"The checkpoint already ran {done} epoch(s) and epochs is {config.epochs}: "
                            f"raise epochs above {done} to continue.")
    if config.early_stopping_patience and waited >= config.early_stopping_patience:
        raise TrainingError(f"The run already went {waited} epoch(s) without improvement, which reaches "
                            f"early_stopping_patience {config.early_stopping_patience}: raise the patience "
                            f"above {waited} to continue.")
    spent = float(ckpt.get("elapsed_seconds", 0.0)) / 60
    if config.max_minutes and spent >= config.max_minutes:
        raise TrainingError(f"The run already used its time budget ({spent:.1f} of max_minutes "
                            f"{config.max_minutes:g}): raise max_minutes or set it to 0 to continue.")
    return ckpt


def train(config: TrainingConfig, dataset: str | Path | Dataset, out_dir: str | Path,
          on_event: Callable[[dict], None] | None = None, should_stop: Callable[[], bool] | None = None,
          resume_from: str | Path | None = None, plan: dict | None = None) -> TrainResult:
    """Train a U-Net; writes best.pt / last.pt (and epoch_XXX.pt) to ``out_dir``. See docs/ARCHITECTURE.md.

    ``plan``: the ``engine.planner.Plan.to_dict()`` that chose this config (None: not planned); every
    checkpoint carries it as ``"plan"``. A resumed run without one keeps the checkpoint's.
    """
    from engine.infer import ARCH, FORMAT_VERSION, StopRequested, build_model, sliding_window_logits

    if not isinstance(config, TrainingConfig):
        raise TypeError("config must be a TrainingConfig (use TrainingConfig.from_dict for a dict).")
    ds = dataset if isinstance(dataset, Dataset) else load_dataset(dataset)
    if len(ds) < 2:
        raise DatasetError(f"{ds.root} has {len(ds)} image(s); training needs at least 2 (one held out for validation).")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    emit = on_event or (lambda event: None)
    stop_requested = should_stop or (lambda: False)
    c = config
    device = resolve_device(c.device)
    autocast_dtype = resolve_precision(c.precision, device)
    if c.num_threads:
        torch.set_num_threads(c.num_threads)

    train_idx, val_idx = split_indices(len(ds), c.val_fraction, c.seed)
    prepared = {i: ds.arrays(i, c.channel, c.clahe) for i in train_idx + val_idx}
    stats = {i: normalization_stats(prepared[i][0], prepared[i][2], c.normalization) for i in prepared}
    sampler = PatchSampler([prepared[i][0] for i in train_idx], [prepared[i][1] for i in train_idx],
                           [prepared[i][2] for i in train_idx], [stats[i] for i in train_idx], c.patch_size, c.augment,
                           c.max_zoom, c.any_angle)
    val_x = [torch.from_numpy((prepared[i][0] - stats[i][0]) / stats[i][1]).to(device) for i in val_idx]
    val_y = [torch.from_numpy(prepared[i][1].astype(np.float32)).to(device) for i in val_idx]
    val_masks = [prepared[i][1] for i in val_idx]
    val_fovs = [prepared[i][2] for i in val_idx]

    torch.manual_seed(c.seed)
    model = build_model(c).to(device)
    if device.type == "cpu":  # channels-last convolutions are 1.3-2× faster on CPUs (oneDNN)
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=c.learning_rate, weight_decay=c.weight_decay)
    schedule = LRSchedule(c, optimizer)
    stopper = EarlyStopping(c.early_stopping_monitor, c.early_stopping_patience, c.min_delta)
    loss_fn = build_loss(c)
    history: list[dict] = []
    start_epoch, elapsed_before, global_step = 1, 0.0, 0
    if resume_from is not None:
        ckpt = check_resume(resume_from, c)
        model.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        for group in optimizer.param_groups:  # a resumed run may change the learning rate settings
            group["initial_lr"] = c.learning_rate
        schedule.load_state_dict(ckpt.get("scheduler") or {})
        stopper.load_state_dict(ckpt["early_stopping"])
        history = list(ckpt.get("history") or [])
        start_epoch = int(ckpt["epoch"]) + 1
        elapsed_before = float(ckpt.get("elapsed_seconds", 0.0))
        global_step = int(ckpt["epoch"]) * c.steps_per_epoch
        if plan is None:
            plan = ckpt.get("plan")
    # the average starts from what predicts ("state_dict", loaded above); a run saved with an average
    # kept the optimiser's own weights apart, and the optimiser continues from those
    average = WeightAverage(model, c.ema_decay) if c.ema_decay > 0 else None
    if resume_from is not None and ckpt.get("train_state_dict") is not None:
        model.load_state_dict(ckpt["train_state_dict"])
    evaluated = average.module if average is not None else model

    def payload(epoch: int, metrics: dict) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION, "arch": ARCH, "state_dict": evaluated.state_dict(),
            "train_state_dict": model.state_dict() if average is not None else None, "config": c.to_dict(),
            "preprocessing": {"channel": c.channel, "clahe": c.clahe, "normalization": c.normalization},
            "epoch": epoch, "metrics": metrics, "versions": versions(), "optimizer": optimizer.state_dict(),
            "scheduler": schedule.state_dict(), "early_stopping": stopper.state_dict(), "history": history,
            "recommended_postprocess": None, "calibration": None, "elapsed_seconds": elapsed(),
            "scale": {"fov_diameter": ds.scales()["target"], "measure": FOV_DIAMETER_MEASURE}, "plan": plan,
        }

    t_start = time.monotonic()

    def elapsed() -> float:
        return elapsed_before + time.monotonic() - t_start

    best_path, last_path = out / "best.pt", out / "last.pt"
    emit({"type": "start", "start_epoch": start_epoch, "total_epochs": c.epochs, "steps_per_epoch": c.steps_per_epoch,
          "n_train": len(train_idx), "n_val": len(val_idx), "device": str(device),
          "precision": "bf16" if autocast_dtype is not None else "fp32",
          "best_epoch": stopper.best_epoch, "best_metric": stopper.best, "epochs_since_best": stopper.wait})
    stop_reason, epoch_done = "max_epochs", start_epoch - 1
    if c.max_minutes and elapsed() >= c.max_minutes * 60:
        stop_reason = "time_limit"
    for epoch in range(start_epoch, c.epochs + 1):
        if stop_reason != "max_epochs":
            break
        t_epoch = time.monotonic()
        model.train()
        rng = np.random.default_rng([c.seed, epoch])
        torch.manual_seed(c.seed * 100_003 + epoch)
        losses: list[float] = []
        last_emit = 0.0
        for step in range(1, c.steps_per_epoch + 1):
            if stop_requested():
                stop_reason = "user_stop"
                break
            if c.max_minutes and elapsed() >= c.max_minutes * 60:
                stop_reason = "time_limit"
                break
            xb, yb = (torch.from_numpy(a).to(device) for a in sampler.sample(c.batch_size, rng))
            schedule.before_step(global_step, elapsed())
            with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                logits = model(xb)
            loss = loss_fn(logits.float(), yb)
            if not torch.isfinite(loss):
                raise TrainingError(f"The loss became {loss.item()} at epoch {epoch}, step {step}: "
                                    "lower learning_rate (for example by 10×) and train again.")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if average is not None:
                average.update(global_step)
            global_step += 1
            losses.append(loss.item())
            now = time.monotonic()
            if now - last_emit >= 0.5 or step == c.steps_per_epoch:
                last_emit = now
                emit({"type": "batch", "epoch": epoch, "step": step, "steps": c.steps_per_epoch, "loss": losses[-1]})
        if stop_reason == "user_stop" or not losses:
            break
        try:
            val_loss, val_dice, _ = _validate(evaluated, val_x, val_y, val_masks, val_fovs, loss_fn, stop_requested,
                                              sliding_window_logits)
        except StopRequested:
            stop_reason = "user_stop"
            break
        monitored = val_dice if c.early_stopping_monitor == "val_dice" else val_loss
        schedule.after_epoch(monitored)
        should_end, reason = stopper.evaluate(monitored)
        is_best = stopper.update(monitored, epoch)
        epoch_done = epoch
        seconds = time.monotonic() - t_epoch
        record = {"type": "epoch_end", "epoch": epoch, "total_epochs": c.epochs, "train_loss": float(np.mean(losses)),
                  "val_loss": val_loss, "val_dice": val_dice, "lr": optimizer.param_groups[0]["lr"],
                  "seconds": seconds, "elapsed": elapsed(), "patches_per_s": len(losses) * c.batch_size / seconds,
                  "best_epoch": stopper.best_epoch, "best_metric": stopper.best,
                  "epochs_since_best": stopper.wait, "patience": c.early_stopping_patience, "is_best": is_best,
                  "steps": len(losses), "reason": reason}
        history.append(record)
        metrics = {k: record[k] for k in ("train_loss", "val_loss", "val_dice")}
        emit(record)
        if is_best:
            save_checkpoint(best_path, payload(epoch, metrics))
            emit({"type": "checkpoint", "kind": "best", "epoch": epoch, "path": str(best_path), "metric": monitored})
        save_checkpoint(last_path, payload(epoch, metrics))
        emit({"type": "checkpoint", "kind": "last", "epoch": epoch, "path": str(last_path), "metric": monitored})
        if c.checkpoint_every and epoch % c.checkpoint_every == 0:
            path = out / f"epoch_{epoch:03d}.pt"
            save_checkpoint(path, payload(epoch, metrics))
            emit({"type": "checkpoint", "kind": "epoch", "epoch": epoch, "path": str(path), "metric": monitored})
        if should_end:
            stop_reason = "early_stopping"

    if stop_reason == "user_stop":
        # Keep the weights trained so far; the epoch number stays that of the last completed epoch.
        last_metrics = {k: history[-1][k] for k in ("train_loss", "val_loss", "val_dice")} if history else {}
        save_checkpoint(last_path, payload(epoch_done, last_metrics))
        emit({"type": "checkpoint", "kind": "last", "epoch": epoch_done, "path": str(last_path),
              "metric": stopper.best})

    recommended = calibration = None
    if stop_reason != "user_stop" and c.calibrate_postprocess and best_path.exists() and val_idx:
        best_ckpt = torch.load(best_path, map_location=device, weights_only=True)
        evaluated.load_state_dict(best_ckpt["state_dict"])
        _, _, probs = _validate(evaluated, val_x, val_y, val_masks, val_fovs, loss_fn, None, sliding_window_logits)
        recommended, calibration = calibrate_postprocess(probs, val_masks, val_fovs)
        for path in (best_path, last_path):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            ckpt["recommended_postprocess"], ckpt["calibration"] = recommended, calibration
            save_checkpoint(path, ckpt)
        emit({"type": "calibration", "recommended": recommended, "dice_before": calibration["dice_before"],
              "dice_after": calibration["dice_after"]})
    emit({"type": "end", "stop_reason": stop_reason, "best_epoch": stopper.best_epoch, "best_metric": stopper.best,
          "epochs_run": epoch_done})
    return TrainResult(stop_reason, stopper.best_epoch, stopper.best, epoch_done,
                       best_path if best_path.exists() else None, last_path if last_path.exists() else None,
                       history, recommended, calibration)


def _validate(model, val_x, val_y, masks, fovs, loss_fn, should_stop, sliding_window_logits):
    """(mean loss over images, Dice pooled over FOV pixels at 0.5, probability maps)."""
    was_training = model.training
    model.eval()
    losses, probs = [], []
    try:
        with torch.inference_mode():
            for x, y in zip(val_x, val_y):
                if should_stop is not None and should_stop():
                    from engine.infer import StopRequested
                    raise StopRequested
                logits = sliding_window_logits(model, x, should_stop=should_stop)
                losses.append(float(loss_fn(logits[None, None], y[None, None])))
                probs.append(torch.sigmoid(logits).cpu().numpy())
    finally:
        model.train(was_training)
    return float(np.mean(losses)), pooled_dice([p >= 0.5 for p in probs], masks, fovs), probs
