"""The post-processing options: one frozen, validated dataclass, stored as JSON with presets and checkpoints."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import cv2
import numpy as np

THRESHOLD_MODES = ("fixed", "otsu", "hysteresis")
KERNEL_SHAPES = {"ellipse": cv2.MORPH_ELLIPSE, "cross": cv2.MORPH_CROSS, "rect": cv2.MORPH_RECT}
MAX_KERNEL = 31  # larger kernels erase vessels on any fundus image we know of



# Options of earlier versions that settings saved then may still carry: from_dict ignores them and
# PostProcessConfig.notes_from_dict tells the user why.
RETIRED_OPTIONS = {
    "shape_max_area": "These settings were saved with an older vessel-shape filter: its size limit "
                      "('shape_max_area') is no longer used, because the filter now judges every piece, "
                      "whatever its size, by its length against its width ('min_elongation').",
}


def check_option_names(names: Iterable[str]) -> None:
    """ValueError naming every key that is not a PostProcessConfig field, and the valid ones."""
    known = {f.name for f in dataclasses.fields(PostProcessConfig)}
    retired = sorted(set(names) & set(RETIRED_OPTIONS))
    if retired:
        raise ValueError(
            f"{', '.join(map(repr, retired))} is no longer an option: the vessel-shape filter judges every "
            "component whatever its size; remove it (PostProcessConfig.from_dict ignores it in saved settings)."
        )
    unknown = sorted(set(names) - known)
    if unknown:
        raise ValueError(
            f"unknown post-processing option(s) {', '.join(map(repr, unknown))}: "
            f"valid options are {', '.join(sorted(known))}."
        )


@dataclass(frozen=True)
class PostProcessConfig:
    """Every post-processing option; validated on creation, stored as JSON via to_dict()."""

    threshold: float = 0.6  # probability a pixel needs (fixed) or a seed needs (hysteresis)
    threshold_mode: str = "fixed"  # 'fixed' | 'otsu' | 'hysteresis'
    hysteresis_low: float = 0.3  # hysteresis: weaker pixels kept when connected to a seed
    apply_opening: bool = True  # erode then dilate: removes specks and 1-px bridges
    opening_kernel: int = 3  # odd kernel side in pixels, 1..31 (1 = no effect)
    apply_closing: bool = True  # dilate then erode: closes small gaps
    closing_kernel: int = 3  # odd kernel side in pixels, 1..31 (1 = no effect)
    kernel_shape: str = "ellipse"  # 'ellipse' | 'cross' | 'rect'
    min_component_size: int = 50  # components with fewer pixels are removed; 0 = off
    connectivity: int = 8  # 4 or 8: which neighbours join a component
    confidence_threshold: float = 0.6  # components whose thresholded pixels' mean probability is lower go; 0 = off
    shape_filter: bool = False  # remove compact (non-vessel-like) components of any size
    min_elongation: float = 3.0  # shape filter: components whose vessel ratio (length / width) is below this go
    fill_holes_below: int = 0  # fill enclosed holes (background not touching the image border)
    #                            with fewer pixels than this; border notches stay open; 0 = off
    from_logits: bool = False  # the input is logits: apply a sigmoid first

    def __post_init__(self) -> None:
        for name in ("threshold", "hysteresis_low", "confidence_threshold"):
            self._set(name, _as_float(name, getattr(self, name), 0.0, 1.0))
        self._set("min_elongation", _as_float("min_elongation", self.min_elongation, 1.0, 1000.0))
        for name in ("apply_opening", "apply_closing", "shape_filter", "from_logits"):
            self._set(name, _as_bool(name, getattr(self, name)))
        for name in ("opening_kernel", "closing_kernel"):
            value = _as_int(name, getattr(self, name), 1, MAX_KERNEL)
            if value % 2 == 0:
                raise ValueError(f"{name} must be odd so the kernel has a centre; got {value}: use {value + 1}.")
            self._set(name, value)
        for name in ("min_component_size", "fill_holes_below"):
            self._set(name, _as_int(name, getattr(self, name), 0, 100_000_000))
        self._set("connectivity", _as_int("connectivity", self.connectivity, 4, 8))
        if self.connectivity not in (4, 8):
            raise ValueError(f"connectivity must be 4 or 8; got {self.connectivity}.")
        self._set("threshold_mode", _as_choice("threshold_mode", self.threshold_mode, THRESHOLD_MODES))
        self._set("kernel_shape", _as_choice("kernel_shape", self.kernel_shape, tuple(KERNEL_SHAPES)))
        if self.threshold_mode == "hysteresis" and self.hysteresis_low > self.threshold:
            raise ValueError(
                f"hysteresis_low ({self.hysteresis_low:g}) must not exceed threshold ({self.threshold:g}): "
                "lower hysteresis_low or raise threshold."
            )

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def to_dict(self) -> dict:
        """Plain JSON-ready dict of every option."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PostProcessConfig":
        """Build from a dict (e.g. parsed JSON); missing keys take defaults, unknown keys are refused.

        Keys of earlier versions that are no longer used (``RETIRED_OPTIONS``, e.g. ``shape_max_area``
        in presets and checkpoints saved before the shape filter judged components of every size) are
        accepted and ignored; ``notes_from_dict`` says what that changes.

        Raises:
            ValueError: ``data`` is not a dict, has an unknown key, or a value out of range.
        """
        if not isinstance(data, Mapping):
            raise ValueError(
                f"post-processing settings must be a JSON object (a dict); got {type(data).__name__}."
            )
        data = {k: v for k, v in data.items() if k not in RETIRED_OPTIONS}
        check_option_names(data)
        return cls(**data)

    @staticmethod
    def notes_from_dict(data: Mapping[str, Any]) -> list[str]:
        """Sentences for the user about settings ``from_dict`` loads differently than they were saved.

        Returns one sentence per retired key in ``data`` (see ``RETIRED_OPTIONS``); an empty list for
        current settings or anything that is not a dict.
        """
        if not isinstance(data, Mapping):
            return []
        notes = []
        for key in sorted(set(data) & set(RETIRED_OPTIONS)):
            note = RETIRED_OPTIONS[key]
            if key == "shape_max_area" and data.get("shape_filter") is True:
                note += " With the shape filter on, compare the kept vessels with what you saw before."
            notes.append(note)
        return notes


# --- validation helpers ---------------------------------------------------------------------

def _as_float(name: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number between {low:g} and {high:g}; got {value!r}.")
    value = float(value)
    if not (low <= value <= high):  # also catches NaN
        raise ValueError(f"{name} must be between {low:g} and {high:g}; got {value:g}.")
    return value


def _as_int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)  # JSON written by other tools may carry 50.0
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be a whole number between {low} and {high}; got {value!r}.")
    value = int(value)
    if not (low <= value <= high):
        raise ValueError(f"{name} must be between {low} and {high}; got {value}.")
    return value


def _as_bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be true or false; got {value!r}.")
    return bool(value)


def _as_choice(name: str, value: Any, choices: tuple) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}.")
    return value
