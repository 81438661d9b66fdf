"""The post-processing options: one frozen, validated dataclass, stored as JSON with presets and checkpoints."""
from __future__ import annotations

import dataclasses
from dataclasses import replace
from typing import Any, Iterable, Mapping

import cv2

from engine.errors import UserError
from engine.fields import Field, config_dataclass

THRESHOLD_MODES = ("fixed", "otsu", "hysteresis")
KERNEL_SHAPES = {"ellipse": cv2.MORPH_ELLIPSE, "cross": cv2.MORPH_CROSS, "rect": cv2.MORPH_RECT}
MAX_KERNEL = 31  # larger kernels erase vessels on any fundus image we know of

# Every post-processing option, declared once: type, default, range (ends included), choices, and the label
# and help of the tuner's widget, with ``usual`` its slider's range where narrower than the allowed one.
# Lenient: the dashboard's sliders give numpy scalars, presets written by other tools 50.0. The
# PostProcessConfig dataclass is made from this table, in this order (that of the stored JSON).
_FRACTION = dict(low=0.0, high=1.0, lenient=True)
FIELDS: dict[str, Field] = {
    # probability a pixel needs (fixed) or a seed needs (hysteresis)
    "threshold": Field(float, 0.6, **_FRACTION,
                       help="0.6 is the usual start; lower keeps fainter vessels."),
    "threshold_mode": Field(str, "fixed", choices=THRESHOLD_MODES, lenient=True, label="Mode",
                            help="fixed: keep pixels ≥ threshold. otsu: threshold from the map's histogram. "
                                 "hysteresis: pixels ≥ threshold seed, connected pixels ≥ low are kept too."),
    "hysteresis_low": Field(float, 0.3, **_FRACTION,
                            help="Faint pixels at or above this are kept when connected to a confident one."),
    # erode then dilate: removes specks and 1-px bridges; an odd kernel side in pixels (1 = no effect)
    "apply_opening": Field(bool, True, lenient=True, label="Opening (remove specks, thin bridges)"),
    "opening_kernel": Field(int, 3, 1, MAX_KERNEL, lenient=True, label="Opening kernel (px)",
                            help="Odd side of the structuring element; larger removes more."),
    # dilate then erode: closes small gaps
    "apply_closing": Field(bool, True, lenient=True, label="Closing (fill small gaps)"),
    "closing_kernel": Field(int, 3, 1, MAX_KERNEL, lenient=True, label="Closing kernel (px)",
                            help="Odd side of the structuring element; larger joins farther fragments."),
    "kernel_shape": Field(str, "ellipse", choices=tuple(KERNEL_SHAPES), lenient=True),
    "min_component_size": Field(int, 50, 0, 100_000_000, lenient=True, usual=(0, 2000, 5),
                                label="Minimum component (px)",
                                help="Connected pieces smaller than this are removed; 0 switches the filter off. "
                                     "Start at 50."),
    "connectivity": Field(int, 8, 4, 8, lenient=True, choices=(4, 8),
                          help="8 joins pixels that touch at a corner; 4 only along edges."),
    # the mean probability of a component's thresholded pixels
    "confidence_threshold": Field(float, 0.6, **_FRACTION, label="Component confidence",
                                  help="A piece is removed when its mean probability is below this; 0 switches "
                                       "the filter off."),
    # remove compact (non-vessel-like) components of any size
    "shape_filter": Field(bool, False, lenient=True, label="Vessel-shape filter (drop blobs and dots)"),
    # the vessel ratio is a component's length / width
    "min_elongation": Field(float, 3.0, 1.0, 1000.0, lenient=True, usual=(1.0, 20.0, 0.5),
                            label="Minimum length / width",
                            help="Pieces shorter than this many times their width are removed, whatever their "
                                 "size: a disc scores about 0.8, a 2:1 ellipse about 1.6, vessel segments and "
                                 "branches score higher. Start at 3."),
    # enclosed holes (background not touching the image border) with fewer pixels are filled; border notches
    # stay open
    "fill_holes_below": Field(int, 0, 0, 100_000_000, lenient=True, usual=(0, 500, 1),
                              label="Fill holes below (px)",
                              help="0 switches hole filling off."),
    "from_logits": Field(bool, False, lenient=True, label="Input is logits",  # a sigmoid is applied first
                         help="The maps shown here are already probabilities in [0, 1]; from_logits is for "
                              "scripts that pass raw model outputs."),
}
# __post_init__ checks the numbers, then the switches, the whole numbers (those with choices last) and the
# words, so that a preset with several bad values is refused for the same one as by earlier versions.
_CHECK_ORDER = sorted(FIELDS.items(), key=lambda item: ((float, bool, int, str).index(item[1].kind),
                                                        bool(item[1].choices)))


# Options of earlier versions that settings saved then may still carry: from_dict ignores them and
# PostProcessConfig.notes_from_dict tells the user why.
RETIRED_OPTIONS = {
    "shape_max_area": "These settings were saved with an older vessel-shape filter: its size limit "
                      "('shape_max_area') is no longer used, because the filter now judges every piece, "
                      "whatever its size, by its length against its width ('min_elongation').",
}


def check_option_names(names: Iterable[str]) -> None:
    """UserError naming every key that is not a PostProcessConfig field, and the valid ones."""
    known = set(FIELDS)
    retired = sorted(set(names) & set(RETIRED_OPTIONS))
    if retired:
        raise UserError(
            f"{', '.join(map(repr, retired))} is no longer an option: the vessel-shape filter judges every "
            "component whatever its size; remove it (PostProcessConfig.from_dict ignores it in saved settings)."
        )
    unknown = sorted(set(names) - known)
    if unknown:
        raise UserError(
            f"unknown post-processing option(s) {', '.join(map(repr, unknown))}: "
            f"valid options are {', '.join(sorted(known))}."
        )


@config_dataclass(FIELDS)
class PostProcessConfig:
    """Every post-processing option, one field per entry of ``FIELDS`` (its type and default), in that order;
    validated on creation, stored as JSON via to_dict()."""

    def __post_init__(self) -> None:
        for name, spec in _CHECK_ORDER:
            value = spec.check(getattr(self, name), name)
            if name.endswith("_kernel") and value % 2 == 0:
                raise UserError(f"{name} must be odd so the kernel has a centre; got {value}: use {value + 1}.")
            self._set(name, value)
        if self.threshold_mode == "hysteresis" and self.hysteresis_low > self.threshold:
            raise UserError(
                f"hysteresis_low ({self.hysteresis_low:g}) must not exceed threshold ({self.threshold:g}): "
                "lower hysteresis_low or raise threshold."
            )

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def at_scale(self, factor: float) -> "PostProcessConfig":
        """These settings for the same photograph resized by ``factor`` (e.g. 0.5: half the width): the sizes in
        pixels follow it (areas by ``factor``², kernel sides by ``factor``, kept odd and at least 1), everything
        else is unchanged. A preview made with them approximates the full-size mask; it is not the same mask."""
        if factor == 1.0:
            return self

        def side(k: int) -> int:
            return max(1, int(round((k - 1) * factor / 2)) * 2 + 1)

        def area(n: int) -> int:
            return int(round(n * factor * factor)) if n else 0

        return replace(self, opening_kernel=side(self.opening_kernel), closing_kernel=side(self.closing_kernel),
                       min_component_size=area(self.min_component_size), fill_holes_below=area(self.fill_holes_below))

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
            UserError: ``data`` is not a dict, has an unknown key, or a value out of range.
        """
        if not isinstance(data, Mapping):
            raise UserError(
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
