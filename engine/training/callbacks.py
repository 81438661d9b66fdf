"""What the training loop consults after each step or epoch: early stopping, the learning-rate schedule,
and the moving average of the weights (each with a ``state_dict`` that checkpoints carry for resuming)."""
from __future__ import annotations

import copy
import math
from typing import Any

import torch

from engine.training.config import MONITORS, TrainingConfig

def monitor_mode(monitor: str) -> str:
    """``"max"`` for a metric where higher is better (``val_dice``), ``"min"`` for a loss."""
    return "max" if monitor == "val_dice" else "min"


class EarlyStopping:
    """Stop when the monitored metric has not improved by more than ``min_delta`` for ``patience`` epochs.

    It owns what it has seen: ``best`` (the best metric, None before the first), ``best_epoch`` (0 before)
    and ``wait`` (epochs since the best); ``state_dict()`` / ``load_state_dict()`` carry them across a resume.

    Args:
        monitor: ``"val_dice"`` (higher is better) or ``"val_loss"`` (lower is better).
        patience: epochs without improvement that end the run; 0 never stops early.
        min_delta: the smallest change that counts as an improvement (≥ 0).

    Raises:
        ValueError: an unknown ``monitor``, a negative ``patience`` or ``min_delta``.

    Example::

        stopper = EarlyStopping("val_dice", patience=2)
        for epoch, dice in enumerate([0.50, 0.60, 0.60, 0.59], 1):
            should_end, reason = stopper.evaluate(dice)  # asks, changes nothing
            stopper.update(dice, epoch)                  # records; True for a new best
            if should_end:
                break  # at epoch 4: "val_dice did not improve ... for 2 epochs (best 0.6000 at epoch 2)"
    """

    def __init__(self, monitor: str = "val_dice", patience: int = 15, min_delta: float = 1e-4):
        if monitor not in MONITORS:
            raise ValueError(f"monitor must be one of {', '.join(MONITORS)}, not {monitor!r}")
        if patience < 0 or min_delta < 0:
            raise ValueError(f"patience ({patience}) and min_delta ({min_delta}) must be at least 0")
        self.monitor, self.patience, self.min_delta = monitor, patience, min_delta
        self.mode = monitor_mode(monitor)
        self.best: float | None = None
        self.best_epoch = 0
        self.wait = 0  # epochs since the best

    def improves(self, value: float | None) -> bool:
        """Returns: True when ``value`` beats ``best`` by more than ``min_delta`` (None and NaN never do)."""
        if value is None or not math.isfinite(value):
            return False
        if self.best is None:
            return True
        return value > self.best + self.min_delta if self.mode == "max" else value < self.best - self.min_delta

    def evaluate(self, value: float | None) -> tuple[bool, str]:
        """What ``update(value, ...)`` would mean; changes nothing.

        Returns:
            (should_stop, reason): whether the run should end after an epoch with this metric, and why, in words.
        """
        if self.improves(value):
            return False, f"{self.monitor} improved to {value:.4f}"
        wait = self.wait + 1
        if self.patience and wait >= self.patience:
            best = "none" if self.best is None else f"{self.best:.4f}"
            return True, (f"{self.monitor} did not improve by more than {self.min_delta:g} for {wait} epochs "
                          f"(best {best} at epoch {self.best_epoch})")
        return False, f"{self.monitor} has not improved for {wait} epoch(s)"

    def update(self, value: float | None, epoch: int) -> bool:
        """Record ``epoch``'s metric. Returns: True when it is the new best."""
        if self.improves(value):
            self.best, self.best_epoch, self.wait = float(value), epoch, 0
            return True
        self.wait += 1
        return False

    def keep_newest(self, epoch: int) -> None:
        """Record ``epoch`` as the best without a metric: a run with no validation images keeps its newest
        weights. ``best`` and ``wait`` stay as they are."""
        self.best_epoch = epoch

    def state_dict(self) -> dict[str, Any]:
        """Returns: the settings and ``best``, ``best_epoch``, ``wait`` (plain values, for a checkpoint)."""
        return {"monitor": self.monitor, "patience": self.patience, "min_delta": self.min_delta,
                "best": self.best, "best_epoch": self.best_epoch, "wait": self.wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state_dict()``'s ``best``, ``best_epoch`` and ``wait``; the settings stay this
        object's (a resumed run may change its patience).

        Raises:
            KeyError: ``state`` lacks one of the three.
        """
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
