"""The record of a training plan: what the planner (:mod:`engine.training.planner`) chose for this machine
and time budget, and the sentence that explains it to the user.

A ``Plan`` is stored with the run (the registry's ``plan`` column, as ``to_dict()`` JSON) and inside every
checkpoint, and read back with ``Plan.from_dict``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from engine.errors import UserError

# Under a time budget a U-Net width is kept when the budget gives it at least this many steps
# (engine.training.planner.WIDTHS); the explanation names the limit when a wider one fell short.
WIDE_ENOUGH_STEPS = 4000
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
        validation_s: the measured seconds of one validation pass of the chosen width (None: not measured).
        measured_s: the seconds measuring took (None in plans made before it was recorded).
        steps_per_epoch: the steps of one epoch of the planned run (None in older plans).
        shapes_left_out: candidate shapes not measured because measuring had taken ``SHAPE_SECONDS`` already.
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
    validation_s: float | None = None
    measured_s: float | None = None
    steps_per_epoch: int | None = None
    shapes_left_out: int = 0

    def explain(self) -> str:
        """One sentence for the user: the chosen shape, the steps it gets, and how it compared."""
        where = _DEVICE_WORDS.get(self.device, f"this {self.device}")
        measured = f" (measured in {self.measured_s:.1f} s)" if self.measured_s is not None else ""
        text = (f"{self.precision} on {where}{measured}: {self.patch_size}×{self.patch_size} patches, "
                f"batch {self.batch_size}, ")
        if self.widths and self.base_channels is not None:
            text += f"U-Net width {self.base_channels}, "
        if self.planned_steps is not None and self.max_minutes:
            text += f"about {self.planned_steps:,} steps in {self.max_minutes:g} min"
        else:
            text += f"about {self.seconds_per_step:.2g} s per step"
        others = [c for c in self.candidates if c["precision"] == self.precision
                  and (c["patch_size"], c["batch_size"]) != (self.patch_size, self.batch_size)]
        mine = [c for c in self.candidates if (c["patch_size"], c["batch_size"], c["precision"])
                == (self.patch_size, self.batch_size, self.precision)]
        if others and others[0]["pixels_per_second"] > 0:
            ref = others[0]  # both measured at one width, so the ratio compares shapes only
            ratio = (mine[0] if mine else {"pixels_per_second": self.pixels_per_second})["pixels_per_second"] \
                / ref["pixels_per_second"]
            text += (f" ({ratio:.1f}× the patch pixels per second of {ref['patch_size']}×{ref['patch_size']} "
                     f"× {ref['batch_size']})")
        elif len(self.candidates) == 1 and self.shapes_left_out:
            text += " (the only shape there was time to measure on this busy machine)"
        elif len(self.candidates) == 1:
            text += " (your patch size and batch size, measured)"
        wider = [w for w in self.widths if self.base_channels is not None and w["base_channels"] > self.base_channels]
        if wider and wider[-1]["planned_steps"] is None:  # the next wider one was not measured
            text += "; a wider U-Net would get fewer steps (it is slower per step; not measured)"
        elif wider:
            text += (f"; width {wider[-1]['base_channels']} would get only about {wider[-1]['planned_steps']:,} "
                     f"steps (fewer than {WIDE_ENOUGH_STEPS:,})")
        if self.max_minutes and self.steps_per_epoch and self.planned_steps:
            epoch_s = self.steps_per_epoch * self.seconds_per_step + (self.validation_s or 0.0)
            steps = f"{self.steps_per_epoch:,} step{'s' if self.steps_per_epoch != 1 else ''}"
            text += f"; {steps} per epoch, so a checkpoint is saved about every {epoch_s:.0f} s"
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

