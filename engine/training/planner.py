"""Planning a training run for this machine and its time budget (nnU-Net's idea, applied to time).

The default recipe (128×128 patches, batch 8) never looks at the hardware. The planner measures a real
optimisation step of the configured U-Net for a few shapes that all move about the same number of
pixels per step, on each precision the device runs natively, and keeps the shape that processes the
most patch pixels per second. With a time budget it also raises ``epochs`` so that the budget, not
the epoch count, ends the run (the cosine schedule then anneals over the budget).

    config, plan = plan_training(config, user_fields={"epochs"})
    print(plan.explain())

Fields the user set are never changed. ``Plan`` is stored with the run (registry and checkpoint).
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Iterable

import torch

from engine.errors import UserError
from engine.training.config import TrainingConfig
from engine.training.device import native_bf16, resolve_device, resolve_precision

# (patch side, batch size): about the same patch pixels per step (128² × 8 ≈ 96² × 16 ≈ 64² × 32)
CANDIDATES = ((128, 8), (96, 16), (64, 32))
VALIDATION_SHARE = 0.1  # share of a time budget left for validation after each epoch
EPOCH_MARGIN = 1.5  # planned epochs cover this many times the planned steps, so the clock ends the run
# U-Net widths (base_channels) tried under a time budget, widest first. A width is kept when the budget
# gives it at least WIDE_ENOUGH_STEPS steps; otherwise the narrowest is used, which takes about twice
# the steps in the same time (benchmarks/train_drive.py compares them).
WIDTHS = (16, 8)
WIDE_ENOUGH_STEPS = 4000
# A budgeted run holds out a small validation split (for the validation curve, the choice of best.pt and
# the recommended settings) and is never stopped early: with early stopping a few held-out images picked
# an early epoch and stopped the run before the schedule annealed. On DRIVE at 10 minutes, holding out 2 of
# 16 images cost no measurable Dice against training on all 16 (README, "Quality for the time you give").
BUDGET_VAL_FRACTION = 0.1
BUDGET_PATIENCE = 0
PLANNED_FIELDS = ("patch_size", "batch_size", "precision", "epochs", "base_channels", "val_fraction",
                  "early_stopping_patience")
_DEVICE_WORDS = {"cpu": "this CPU", "cuda": "this GPU", "mps": "this Mac's GPU"}


class PlanError(UserError):
    """The run cannot be planned; the message says what to change."""


@dataclass(frozen=True)
class Plan:
    """What the planner chose and why.

    Attributes:
        patch_size, batch_size, precision: the chosen shape and arithmetic ('bf16' | 'fp32').
        seconds_per_step: the measured seconds of one optimisation step of the chosen shape.
        pixels_per_second: patch pixels processed per second by the chosen shape.
        candidates: every shape tried, as dicts with ``patch_size, batch_size, precision,
            seconds_per_step, pixels_per_second`` (the chosen one included), in the order tried.
        planned_steps: optimisation steps expected within the budget (None without a budget).
        max_minutes: the time budget in minutes (None without one).
        device: the device measured ('cpu', 'cuda', 'mps').
        changed: the config fields the plan changed, with their new values.
        base_channels: the U-Net width trained (None in plans made before widths were planned).
        widths: the widths measured under the budget, as dicts with ``base_channels, seconds_per_step,
            planned_steps``, widest first (empty when the width was not planned).
    """

    patch_size: int
    batch_size: int
    precision: str
    seconds_per_step: float
    pixels_per_second: float
    candidates: list[dict] = field(default_factory=list)
    planned_steps: int | None = None
    max_minutes: float | None = None
    device: str = "cpu"
    changed: dict = field(default_factory=dict)
    base_channels: int | None = None
    widths: list[dict] = field(default_factory=list)

    def explain(self) -> str:
        """One sentence for the user: the chosen shape, the steps it gets, and how it compared."""
        where = _DEVICE_WORDS.get(self.device, f"this {self.device}")
        text = f"{self.precision} on {where}: {self.patch_size}×{self.patch_size} patches, batch {self.batch_size}, "
        if self.widths and self.base_channels is not None:
            text += f"U-Net width {self.base_channels}, "
        if self.planned_steps is not None and self.max_minutes:
            text += f"about {self.planned_steps:,} steps in {self.max_minutes:g} min"
        else:
            text += f"about {self.seconds_per_step:.2g} s per step"
        others = [c for c in self.candidates if c["precision"] == self.precision
                  and (c["patch_size"], c["batch_size"]) != (self.patch_size, self.batch_size)]
        if others and others[0]["pixels_per_second"] > 0:
            ref = others[0]
            ratio = self.pixels_per_second / ref["pixels_per_second"]
            text += (f" ({ratio:.1f}× the patch pixels per second of {ref['patch_size']}×{ref['patch_size']} "
                     f"× {ref['batch_size']})")
        elif len(self.candidates) == 1:
            text += " (your patch size and batch size, measured)"
        wider = [w for w in self.widths if self.base_channels is not None and w["base_channels"] > self.base_channels]
        if wider:
            text += (f"; width {wider[0]['base_channels']} would get only about {wider[0]['planned_steps']:,} steps "
                     f"(fewer than {WIDE_ENOUGH_STEPS:,})")
        if self.changed.get("val_fraction") == 0.0:  # the plans of earlier versions
            text += "; every image trains and the last epoch is kept"
        elif "val_fraction" in self.changed:
            text += (f"; {self.changed['val_fraction']:.0%} of the images are held out for the validation curve "
                     "and the recommended settings")
        if self.changed.get("early_stopping_patience") == 0:
            text += "; the budget, not early stopping, ends the run"
        return text + "."

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict; ``Plan.from_dict(plan.to_dict()) == plan``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Plan":
        """The Plan ``to_dict`` wrote.

        Raises:
            PlanError: ``data`` is not a dict or has unknown or missing keys.
        """
        if not isinstance(data, dict):
            raise PlanError(f"A training plan must be a JSON object, not {type(data).__name__}.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise PlanError(f"Unknown training plan key(s) {', '.join(map(repr, unknown))}.")
        try:
            return cls(**{**data, "candidates": [dict(c) for c in data.get("candidates") or []],
                          "changed": dict(data.get("changed") or {}),
                          "widths": [dict(w) for w in data.get("widths") or []]})
        except TypeError:
            missing = sorted(k for k in ("patch_size", "batch_size", "precision", "seconds_per_step",
                                         "pixels_per_second") if k not in data)
            raise PlanError(f"The training plan lacks {', '.join(missing)}.") from None


def measure_step_seconds(config: TrainingConfig, patch_size: int, batch_size: int, precision: str,
                         device: str = "cpu", steps: int = 2) -> float:
    """Seconds of one real optimisation step of ``config``'s U-Net on random input of this shape.

    The step is the one train() takes: the config's U-Net (channels-last on a CPU), its loss, AdamW,
    bfloat16 autocast when ``precision`` is 'bf16'. One warm-up step is not timed.

    Args:
        config: the TrainingConfig whose model, loss and thread count are measured.
        patch_size, batch_size: the input shape, (batch_size, channels, patch_size, patch_size).
        precision: 'bf16' or 'fp32'.
        device: a torch device name.
        steps: timed steps; the median is returned.

    Returns:
        The median seconds per step (> 0).

    Raises:
        PlanError: ``precision`` is not 'bf16' or 'fp32', or ``steps`` is below 1.
    """
    from engine.training.checkpoint import build_model
    from engine.training.losses import build_loss

    if precision not in ("bf16", "fp32"):
        raise PlanError(f"precision must be 'bf16' or 'fp32' to be measured, not {precision!r}.")
    if steps < 1:
        raise PlanError(f"steps must be at least 1, not {steps}.")
    dev = torch.device(device)
    threads = torch.get_num_threads()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    try:
        generator = torch.Generator().manual_seed(config.seed)
        model = build_model(config).to(dev)
        if dev.type == "cpu":  # as train() does
            model = model.to(memory_format=torch.channels_last)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
        loss_fn = build_loss(config)
        channels = 3 if config.channel == "rgb" else 1
        x = torch.randn(batch_size, channels, patch_size, patch_size, generator=generator).to(dev)
        y = (torch.rand(batch_size, 1, patch_size, patch_size, generator=generator) > 0.9).float().to(dev)
        bf16 = precision == "bf16"

        def step() -> None:
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(x)
            loss = loss_fn(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)

        step()  # warm-up: allocations, kernel choice
        timings = []
        for _ in range(steps):
            start = time.perf_counter()
            step()
            timings.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return max(statistics.median(timings), 1e-9)


def _shapes(config: TrainingConfig, user: set[str], fits: Callable[[int], bool]) -> list[tuple[int, int]]:
    shapes: list[tuple[int, int]] = []
    pairs = [(config.patch_size, config.batch_size)] if {"patch_size", "batch_size"} <= user else CANDIDATES
    for patch, batch in pairs:
        patch = config.patch_size if "patch_size" in user else patch
        batch = config.batch_size if "batch_size" in user else batch
        if "patch_size" not in user and (patch % 2 ** config.depth or not fits(patch)):
            continue  # the U-Net cannot take it, or the smallest image is smaller
        if (patch, batch) not in shapes:
            shapes.append((patch, batch))
    return shapes or [(config.patch_size, config.batch_size)]


def plan_training(config: TrainingConfig, user_fields: Iterable[str] = (),
                  measure: Callable[..., float] = measure_step_seconds, device: str | None = None,
                  dataset: Any = None) -> tuple[TrainingConfig, Plan]:
    """Choose patch size, batch size and precision for this machine, and epochs for the time budget.

    Every candidate of ``CANDIDATES`` (fields the user set replace the candidate's) is measured on
    each precision the device runs natively (bf16 and fp32 where bf16 is native, else fp32; a config
    whose precision is 'bf16' or 'fp32' keeps it); the one with the most patch pixels per second wins
    (the first one tried on a tie). With ``max_minutes > 0`` the planned steps are the budget, less
    validation's share, over the measured seconds per step, and ``epochs`` (unless user-set) is raised
    to cover them with a margin, so the budget ends the run. Under a budget the U-Net width
    (``base_channels``, unless user-set) is the widest of ``WIDTHS`` (up to the config's) that still gets
    ``WIDE_ENOUGH_STEPS`` steps, else the narrowest, ``val_fraction`` (unless user-set) becomes
    ``BUDGET_VAL_FRACTION`` and ``early_stopping_patience`` (unless user-set) ``BUDGET_PATIENCE`` (off).

    Args:
        config: the training config as the user left it.
        user_fields: names of the fields the user set; the plan never changes them.
        measure: ``measure(config, patch_size, batch_size, precision, device=...) -> seconds per step``.
        device: the device to plan for; None resolves ``config.device``.
        dataset: a Dataset, a list of them, or (height, width) pairs; patches larger than the smallest image are
            not tried.

    Returns:
        (the config with the planned fields replaced, the Plan).

    Raises:
        PlanError: a name in ``user_fields`` is not a training option, or a measurement is not a positive number.
        TrainingError: ``config.device`` is not available.
    """
    user = set(user_fields)
    unknown = sorted(user - {f.name for f in fields(TrainingConfig)})
    if unknown:
        raise PlanError(f"Unknown training option(s) {', '.join(map(repr, unknown))} among the fields you set.")
    dev = resolve_device(config.device) if device is None else torch.device(device)
    bench = _Bench(config, user, measure, dev, dataset)
    tried = bench.shapes_of(config)
    best = max(tried, key=lambda c: c["pixels_per_second"])  # max keeps the first of equals
    changes: dict[str, Any] = {}
    if "patch_size" not in user:
        changes["patch_size"] = best["patch_size"]
    if "batch_size" not in user:
        changes["batch_size"] = best["batch_size"]
    if config.precision == "auto" and "precision" not in user:
        changes["precision"] = best["precision"]
    planned_steps = None
    budget = config.max_minutes if config.max_minutes > 0 else None
    seconds_per_step, widths, width = best["seconds_per_step"], [], config.base_channels
    if budget is not None and "base_channels" not in user:
        widths = _widths(config, bench, best, budget)
        chosen = next((w for w in widths if w["planned_steps"] >= WIDE_ENOUGH_STEPS), widths[-1])
        width, seconds_per_step = chosen["base_channels"], chosen["seconds_per_step"]
        changes["base_channels"] = width
        if width != config.base_channels:  # the best shape of the narrower U-Net may be another one
            tried = bench.shapes_of(config.with_updates(base_channels=width))
            best = max(tried, key=lambda c: c["pixels_per_second"])
            seconds_per_step = best["seconds_per_step"]
            changes.update({k: best[k] for k in ("patch_size", "batch_size", "precision") if k in changes})
    if budget is not None:
        if "val_fraction" not in user:
            changes["val_fraction"] = BUDGET_VAL_FRACTION
        if "early_stopping_patience" not in user:
            changes["early_stopping_patience"] = BUDGET_PATIENCE
        planned_steps = _steps(budget, seconds_per_step)
        needed = min(100_000, math.ceil(planned_steps * EPOCH_MARGIN / config.steps_per_epoch))
        if "epochs" not in user and needed > config.epochs:
            changes["epochs"] = needed
    changes = {k: v for k, v in changes.items() if getattr(config, k) != v}
    pixels_per_second = best["patch_size"] ** 2 * best["batch_size"] / seconds_per_step
    plan = Plan(best["patch_size"], best["batch_size"], best["precision"], seconds_per_step, pixels_per_second,
                tried, planned_steps, budget, dev.type, changes, width, widths)
    return config.with_updates(**changes), plan


class _Bench:
    """The measurements of one plan: each (width, patch, batch, precision) is measured once (the width step
    and the shapes of the chosen width share one shape), on the precisions the device runs natively."""

    def __init__(self, config: TrainingConfig, user: set[str], measure: Callable[..., float], dev: torch.device,
                 dataset: Any):
        self.user, self.measure, self.dev, self.dataset = user, measure, dev, dataset
        if config.precision != "auto" or "precision" in user:
            self.precisions = ["bf16" if resolve_precision(config.precision, dev) is not None else "fp32"]
        else:
            self.precisions = ["bf16", "fp32"] if native_bf16(dev) else ["fp32"]
        self.timings: dict[tuple, float] = {}

    def fits(self, patch: int) -> bool:
        """Whether ``patch`` fits the smallest image of the data set (always, without one)."""
        from engine.training.data import DatasetError, check_patch_size

        if self.dataset is None:
            return True
        try:
            check_patch_size(self.dataset, patch)
        except DatasetError:
            return False
        return True

    def seconds(self, cfg: TrainingConfig, patch: int, batch: int, precision: str) -> float:
        """Seconds per step of ``cfg`` at this shape; PlanError unless the measurement is a positive number."""
        key = (cfg.base_channels, patch, batch, precision)
        if key not in self.timings:
            seconds = float(self.measure(cfg, patch, batch, precision, device=str(self.dev.type)))
            if not (math.isfinite(seconds) and seconds > 0):
                raise PlanError(f"Measuring a training step gave {seconds} seconds; it must be a positive number.")
            self.timings[key] = seconds
        return self.timings[key]

    def shapes_of(self, cfg: TrainingConfig) -> list[dict]:
        """Every candidate shape of ``cfg`` on every precision, with its speed."""
        tried = []
        for precision in self.precisions:
            for patch, batch in _shapes(cfg, self.user, self.fits):
                seconds = self.seconds(cfg, patch, batch, precision)
                tried.append({"patch_size": patch, "batch_size": batch, "precision": precision,
                              "base_channels": cfg.base_channels, "seconds_per_step": seconds,
                              "pixels_per_second": patch * patch * batch / seconds})
        return tried


def _widths(config: TrainingConfig, bench: _Bench, best: dict, budget: float) -> list[dict]:
    """The widths tried under a budget, widest first (the config's and the narrower ``WIDTHS``), each with
    its seconds per step at the best shape and the steps the budget gives it."""
    widths = []
    for candidate in sorted({config.base_channels} | {w for w in WIDTHS if w < config.base_channels}, reverse=True):
        seconds = best["seconds_per_step"] if candidate == config.base_channels else bench.seconds(
            config.with_updates(base_channels=candidate), best["patch_size"], best["batch_size"], best["precision"])
        widths.append({"base_channels": candidate, "seconds_per_step": seconds, "planned_steps": _steps(budget, seconds)})
    return widths


def _steps(budget_minutes: float, seconds_per_step: float) -> int:
    """Optimisation steps that fit in the budget, less validation's share."""
    return max(1, int(budget_minutes * 60 * (1 - VALIDATION_SHARE) / seconds_per_step))


def replan_for_device(config: TrainingConfig, plan: dict | None, device: str | None = None, dataset: Any = None,
                      measure: Callable[..., float] = measure_step_seconds) -> tuple[TrainingConfig, Plan] | None:
    """The plan again, measured on ``device``, when the run was planned on another kind of device.

    A run is planned where it is submitted (the dashboard's machine); a worker on another machine (a GPU
    server) trains it on its own device, whose best shape, precision and width differ. The planned fields
    that the first plan changed, or that are at their defaults, go back to their defaults and are planned
    again here; every other field (the user's) is kept.

    Args:
        config: the run's config as planned (the registry's).
        plan: the first plan (``Plan.to_dict()``), or None (the run was not planned: nothing to do).
        device: the device this worker trains on; None resolves ``config.device``.
        dataset: a Dataset or (height, width) pairs, as for ``plan_training``.
        measure: as for ``plan_training``.

    Returns:
        (the config planned here, the Plan), or None when there was no plan or it was made on this kind of
        device.

    Raises:
        PlanError: ``plan`` is not a plan; TrainingError: the device is not available.
    """
    if not plan:
        return None
    first = Plan.from_dict(plan)
    dev = resolve_device(config.device) if device is None else resolve_device(device)
    if dev.type == first.device:
        return None
    defaults = TrainingConfig()
    # the fields the first plan changed, and those still at their defaults (a plan drops a field it chose
    # to leave at its default from ``changed``), are planned again; the rest are the user's
    free = {name for name in PLANNED_FIELDS
            if name in first.changed or getattr(config, name) == getattr(defaults, name)}
    unplanned = config.with_updates(**{name: getattr(defaults, name) for name in free})
    return plan_training(unplanned, set(PLANNED_FIELDS) - free, measure=measure, device=str(dev), dataset=dataset)


def plan_for_folder(config: TrainingConfig, user_fields: Iterable[str], folder: Any,
                    measure: Callable[..., float] = measure_step_seconds) -> tuple[TrainingConfig, Plan | None]:
    """``plan_training`` for the data set in ``folder``, or for several: patches larger than the smallest
    image of any of them are not tried.

    Args:
        folder: a data set folder, or a list of them (``engine.training.data.load_datasets``).

    Returns:
        (the planned config, the Plan); (``config``, None) when the sets hold fewer than 2 images together,
        which training refuses with its own sentence.

    Raises:
        DatasetError: a folder is not a usable data set, or the list is empty or names a set twice.
        PlanError, TrainingError: as ``plan_training``.
    """
    from engine.training.data import load_datasets

    sets = load_datasets(folder)
    if sum(len(ds) for ds in sets) < 2:
        return config, None
    return plan_training(config, user_fields, measure=measure, dataset=sets[0] if len(sets) == 1 else sets)
