"""Planning a training run for this machine and its time budget (nnU-Net's idea, applied to time).

The default recipe (128×128 patches, batch 8) never looks at the hardware. The planner measures a real
optimisation step of the configured U-Net for a few shapes that all move about the same number of
pixels per step, on each precision the device runs natively, and keeps the shape that processes the
most patch pixels per second. With a time budget it also raises ``epochs`` so that the budget, not
the epoch count, ends the run (the cosine schedule then anneals over the budget).

    config, plan = plan_training(config, user_fields={"epochs"})
    print(plan.explain())

Fields the user set are never changed. ``Plan`` is stored with the run (registry and checkpoint).
The plan's record and its explanation are :mod:`engine.training.plan`; the timings it compares come
from :mod:`engine.training.measure`.
"""
from __future__ import annotations

import math
import time
from dataclasses import fields
from typing import Any, Callable, Iterable

import torch

from engine.training.config import TrainingConfig
from engine.training.device import native_bf16, resolve_device, resolve_precision
from engine.training.measure import data_measure, measure_step_seconds, measure_validation_seconds
from engine.training.plan import WIDE_ENOUGH_STEPS, Plan, PlanError

__all__ = [
    "CANDIDATES", "VALIDATION_SHARE", "MEASURE_SECONDS", "SHAPE_SECONDS", "CHECKPOINTS_PER_BUDGET", "EPOCH_MARGIN",
    "WIDTHS", "BUDGET_VAL_FRACTION", "BUDGET_PATIENCE", "PLANNED_FIELDS",
    "plan_training", "replan_for_device", "plan_for_folder",
    # defined in engine.training.plan; re-exported for the packages that import them from here
    "Plan", "PlanError",
]

# (patch side, batch size): about the same patch pixels per step (128² × 8 ≈ 96² × 16 ≈ 64² × 32)
CANDIDATES = ((128, 8), (96, 16), (64, 32))
VALIDATION_SHARE = 0.1  # share of a time budget left for validation when validation was not measured
MEASURE_SECONDS = 10.0  # measuring a plan takes about this long at most, even on a busy machine
SHAPE_SECONDS = 5.0  # shapes after the first are measured only while measuring has taken less than this
CHECKPOINTS_PER_BUDGET = 10  # a budgeted run ends an epoch, and saves a checkpoint, at least this often
EPOCH_MARGIN = 1.5  # planned epochs cover this many times the planned steps, so the clock ends the run
# U-Net widths (base_channels) tried under a time budget, widest first. A width is kept when the budget
# gives it at least WIDE_ENOUGH_STEPS steps; otherwise the narrowest is used, which takes about twice
# the steps in the same time (benchmarks/train_drive.py compares them).
WIDTHS = (16, 8)
# A budgeted run holds out a small validation split (for the validation curve, the choice of best.pt and
# the recommended settings) and is never stopped early: with early stopping a few held-out images picked
# an early epoch and stopped the run before the schedule annealed. On DRIVE at 10 minutes, holding out 2 of
# 16 images cost no measurable Dice against training on all 16 (README, "Quality for the time you give").
BUDGET_VAL_FRACTION = 0.1
BUDGET_PATIENCE = 0
PLANNED_FIELDS = ("patch_size", "batch_size", "precision", "epochs", "base_channels", "val_fraction",
                  "early_stopping_patience", "steps_per_epoch")


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
                  measure: Callable[..., float] | None = None, device: str | None = None,
                  dataset: Any = None,
                  measure_validation: Callable[[TrainingConfig, list[tuple[int, int]]], float] | None = None,
                  ) -> tuple[TrainingConfig, Plan]:
    """Choose patch size, batch size and precision for this machine, and width, epochs and steps per epoch
    for the time budget.

    Every candidate of ``CANDIDATES`` (fields the user set replace the candidate's) is measured on
    each precision the device runs natively (bf16 and fp32 where bf16 is native, else fp32; a config
    whose precision is 'bf16' or 'fp32' keeps it); the one with the most patch pixels per second wins
    (the first one tried on a tie). Shapes after the first are measured only while measuring has taken
    less than ``SHAPE_SECONDS``, so a plan takes about ``MEASURE_SECONDS`` at most.

    With ``max_minutes > 0``: the U-Net width (``base_channels``, unless user-set) is the widest of
    ``WIDTHS`` (up to the config's), measured at the first candidate shape, that still gets
    ``WIDE_ENOUGH_STEPS`` steps, else the one that gets the most (then the shapes are measured at that width); ``steps_per_epoch`` (unless user-set) is lowered so that an
    epoch and its validation take at most a ``CHECKPOINTS_PER_BUDGET``-th of the budget (a checkpoint is
    saved after every epoch); the planned steps are the budget less the measured validation after every
    epoch (``VALIDATION_SHARE`` of it when validation was not measured) over the seconds per step;
    ``epochs`` (unless user-set) is raised to cover them with a margin, so the budget ends the run;
    ``val_fraction`` (unless user-set) becomes ``BUDGET_VAL_FRACTION`` and ``early_stopping_patience``
    (unless user-set) ``BUDGET_PATIENCE`` (off).

    Args:
        config: the training config as the user left it.
        user_fields: names of the fields the user set; the plan never changes them.
        measure: ``measure(config, patch_size, batch_size, precision, device=...) -> seconds per step``;
            None: ``data_measure(dataset)`` for a Dataset (real batches of its images), else
            ``measure_step_seconds`` (random input).
        device: the device to plan for; None resolves ``config.device``.
        dataset: a Dataset, a list of them, or (height, width) pairs; patches larger than the smallest image are
            not tried, and the sizes of the validation images (at the training scale) price validation.
        measure_validation: ``measure_validation(config, sizes) -> seconds`` of one validation pass over
            images of these (height, width); None: ``measure_validation_seconds`` when ``dataset`` is
            given, else validation is not measured.

    Returns:
        (the config with the planned fields replaced, the Plan).

    Raises:
        PlanError: a name in ``user_fields`` is not a training option, or a measurement is not a positive number.
        TrainingError: ``config.device`` is not available.
    """
    started = time.perf_counter()
    user = set(user_fields)
    unknown = sorted(user - {f.name for f in fields(TrainingConfig)})
    if unknown:
        raise PlanError(f"Unknown training option(s) {', '.join(map(repr, unknown))} among the fields you set.")
    dev = resolve_device(config.device) if device is None else torch.device(device)
    if measure is None:
        measure = data_measure(dataset) if _datasets(dataset) else measure_step_seconds
    if measure_validation is None and dataset is not None:
        measure_validation = lambda cfg, sizes: measure_validation_seconds(cfg, sizes, str(dev.type))  # noqa: E731
    budget = config.max_minutes if config.max_minutes > 0 else None
    changes: dict[str, Any] = {}
    if budget is not None:  # before measuring: the split decides which image the steps are timed on
        if "val_fraction" not in user:
            changes["val_fraction"] = BUDGET_VAL_FRACTION
        if "early_stopping_patience" not in user:
            changes["early_stopping_patience"] = BUDGET_PATIENCE
    bench = _Bench(config.with_updates(**changes), user, measure, dev, dataset)
    planned_steps, validation_s, steps_per_epoch = None, None, config.steps_per_epoch
    widths, width, cfg = [], config.base_channels, bench.config
    spe_free = "steps_per_epoch" not in user
    plan_width = budget is not None and "base_channels" not in user
    narrowest = min({config.base_channels} | {w for w in WIDTHS if w < config.base_channels}) if plan_width \
        else config.base_channels
    if budget is not None:  # validation is timed on the narrowest width measured (the cheapest), then scaled
        sizes = _validation_sizes(dataset, bench.config)
        if measure_validation is not None and sizes is not None:
            validation_s = float(measure_validation(bench.config.with_updates(base_channels=narrowest), sizes))
    if plan_width:
        # the widths compare at one shape (the first), so their steps compare; then the shapes at the chosen width
        widths = _widths(bench, _shapes(bench.config, user, bench.fits)[0], bench.precisions[0], budget,
                         validation_s, config.steps_per_epoch, spe_free)
        measured = [w for w in widths if w["planned_steps"] is not None]
        enough = [w for w in measured if w["planned_steps"] >= WIDE_ENOUGH_STEPS]
        # the widest with enough steps, else the one with the most (the wider of equals): never a width that
        # gets fewer steps than a wider one
        chosen = enough[0] if enough else max(measured, key=lambda w: w["planned_steps"])
        width = chosen["base_channels"]
        changes["base_channels"] = width
        cfg = bench.config.with_updates(base_channels=width)
        if validation_s is not None:  # validation takes as much longer as a step does at the chosen width
            validation_s *= chosen["seconds_per_step"] / measured[-1]["seconds_per_step"]
    tried = bench.shapes_of(cfg)
    best = max(tried, key=lambda c: c["pixels_per_second"])  # max keeps the first of equals
    if "patch_size" not in user:
        changes["patch_size"] = best["patch_size"]
    if "batch_size" not in user:
        changes["batch_size"] = best["batch_size"]
    if config.precision == "auto" and "precision" not in user:
        changes["precision"] = best["precision"]
    seconds_per_step = best["seconds_per_step"]
    if budget is not None:
        steps_per_epoch = _steps_per_epoch(budget, seconds_per_step, validation_s, config.steps_per_epoch, spe_free)
        if spe_free:
            changes["steps_per_epoch"] = steps_per_epoch
        planned_steps = _steps(budget, seconds_per_step, validation_s, steps_per_epoch)
        if widths:  # the other widths' steps at the chosen shape, in proportion to those at the first one
            at_first = next(w["planned_steps"] for w in widths if w["base_channels"] == width)
            widths = [{**w, "planned_steps": max(1, round(w["planned_steps"] * planned_steps / at_first))}
                      if w["planned_steps"] is not None else w for w in widths]
        needed = min(100_000, math.ceil(planned_steps * EPOCH_MARGIN / steps_per_epoch))
        if "epochs" not in user and needed > config.epochs:
            changes["epochs"] = needed
    changes = {k: v for k, v in changes.items() if getattr(config, k) != v}
    pixels_per_second = best["patch_size"] ** 2 * best["batch_size"] / seconds_per_step
    plan = Plan(best["patch_size"], best["batch_size"], best["precision"], seconds_per_step, pixels_per_second,
                tried, planned_steps, budget, dev.type, changes, width, widths, validation_s,
                round(time.perf_counter() - started, 2), steps_per_epoch if budget is not None else None,
                bench.left_out)
    return config.with_updates(**changes), plan


def _is_dataset(dataset: Any) -> bool:
    return dataset is not None and hasattr(dataset, "raw") and hasattr(dataset, "pairs")


def _datasets(dataset: Any) -> list | None:
    """The Datasets ``dataset`` stands for (one, or a list of them); None for (height, width) pairs or nothing."""
    if _is_dataset(dataset):
        return [dataset]
    if isinstance(dataset, (list, tuple)) and dataset and all(_is_dataset(d) for d in dataset):
        return list(dataset)
    return None


def _validation_sizes(dataset: Any, config: TrainingConfig) -> list[tuple[int, int]] | None:
    """(height, width) of the images the config's split validates on, each set's at about its training scale (a
    photograph wider than ``max_fov_px`` is brought down to it); None without a data set."""
    from engine.imageio import image_size
    from engine.training.sampling import split_indices

    sets = _datasets(dataset)
    if sets is None:
        if dataset is None or len(dataset) < 2:
            return None
        _, val = split_indices(len(dataset), config.val_fraction, config.seed)
        return [tuple(int(v) for v in dataset[i]) for i in val]
    if sum(len(ds) for ds in sets) < 2:
        return None
    sizes = []
    for ds in sets:
        for i in split_indices(len(ds), config.val_fraction, config.seed)[1]:
            h, w = image_size(ds.pairs[i].image_path)
            # the field of view spans about the photograph's longer side: the header is enough to price it
            factor = min(1.0, config.max_fov_px / max(h, w)) if config.max_fov_px else 1.0
            sizes.append((max(1, round(h * factor)), max(1, round(w * factor))))
    return sizes


class _Bench:
    """The measurements of one plan: each (width, patch, batch, precision) is measured once (the width step
    and the shapes of the chosen width share one shape), on the precisions the device runs natively."""

    def __init__(self, config: TrainingConfig, user: set[str], measure: Callable[..., float], dev: torch.device,
                 dataset: Any):
        self.config, self.user, self.measure, self.dev, self.dataset = config, user, measure, dev, dataset
        self.started = time.perf_counter()
        self.left_out = 0
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

    def shapes_of(self, cfg: TrainingConfig, first_only: bool = False) -> list[dict]:
        """Every candidate shape of ``cfg`` on every precision, with its speed (only the first with
        ``first_only``; only those measured before ``SHAPE_SECONDS`` passed, and the first, on a slow machine)."""
        tried: list[dict] = []
        for precision in self.precisions:
            for patch, batch in _shapes(cfg, self.user, self.fits):
                measured = (cfg.base_channels, patch, batch, precision) in self.timings
                if tried and (first_only or not measured and time.perf_counter() - self.started > SHAPE_SECONDS):
                    if not first_only:
                        self.left_out = len(self.precisions) * len(_shapes(cfg, self.user, self.fits)) - len(tried)
                    return tried
                seconds = self.seconds(cfg, patch, batch, precision)
                tried.append({"patch_size": patch, "batch_size": batch, "precision": precision,
                              "base_channels": cfg.base_channels, "seconds_per_step": seconds,
                              "pixels_per_second": patch * patch * batch / seconds})
        return tried


def _widths(bench: _Bench, shape: tuple[int, int], precision: str, budget: float, validation_s: float | None,
            steps_per_epoch: int, spe_free: bool) -> list[dict]:
    """The widths tried under a budget, widest first (the config's and the narrower ``WIDTHS``), each with
    its seconds per step at one shape and the steps the budget gives it, so the steps compare.

    They are measured narrowest first, and a wider one only while the narrower gets ``WIDE_ENOUGH_STEPS``:
    a wider U-Net is slower per step, so it cannot get the steps the narrower one lacks (its
    ``seconds_per_step`` and ``planned_steps`` are then None). ``validation_s`` is that of the narrowest.
    """
    config = bench.config
    widths: list[dict] = []
    for candidate in sorted({config.base_channels} | {w for w in WIDTHS if w < config.base_channels}):
        if widths and (widths[-1]["planned_steps"] is None or widths[-1]["planned_steps"] < WIDE_ENOUGH_STEPS):
            widths.append({"base_channels": candidate, "seconds_per_step": None, "planned_steps": None})
            continue
        seconds = bench.seconds(config.with_updates(base_channels=candidate), *shape, precision)
        val = None if validation_s is None else validation_s * seconds / (widths[0]["seconds_per_step"]
                                                                          if widths else seconds)
        spe = _steps_per_epoch(budget, seconds, val, steps_per_epoch, spe_free)
        widths.append({"base_channels": candidate, "seconds_per_step": seconds,
                       "planned_steps": _steps(budget, seconds, val, spe)})
    return widths[::-1]


def _steps_per_epoch(budget_minutes: float, seconds_per_step: float, validation_s: float | None, configured: int,
                     free: bool) -> int:
    """Steps per epoch so that an epoch and its validation take at most a ``CHECKPOINTS_PER_BUDGET``-th of the
    budget (``configured`` when the user set it, and never more than it)."""
    if not free:
        return configured
    epoch_s = budget_minutes * 60 / CHECKPOINTS_PER_BUDGET
    train_s = epoch_s - (validation_s or 0.0) if validation_s is not None else epoch_s * (1 - VALIDATION_SHARE)
    train_s = max(train_s, epoch_s / 2)  # validation longer than an epoch's share: half of it still trains
    return max(1, min(configured, int(train_s / seconds_per_step)))


def _steps(budget_minutes: float, seconds_per_step: float, validation_s: float | None = None,
           steps_per_epoch: int = 1) -> int:
    """Optimisation steps that fit in the budget, less validation: measured after every epoch, or its share."""
    budget_s = budget_minutes * 60
    if validation_s is None:
        return max(1, int(budget_s * (1 - VALIDATION_SHARE) / seconds_per_step))
    epoch_s = steps_per_epoch * seconds_per_step + validation_s
    return max(1, int(budget_s / epoch_s * steps_per_epoch))


def replan_for_device(config: TrainingConfig, plan: dict | None, device: str | None = None, dataset: Any = None,
                      measure: Callable[..., float] | None = None) -> tuple[TrainingConfig, Plan] | None:
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
                    measure: Callable[..., float] | None = None) -> tuple[TrainingConfig, Plan | None]:
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
