"""The post-processing options: one frozen, validated dataclass, stored as JSON with presets and checkpoints."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from typing import Any, Iterable, Mapping

import cv2

from engine.errors import UserError
from engine.fields import Field

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
    """UserError naming every key that is not a PostProcessConfig field, and the valid ones."""
    known = {f.name for f in dataclasses.fields(PostProcessConfig)}
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
        for name, spec in FIELDS.items():
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


# Every option's spec (lenient: the dashboard's sliders give numpy scalars, presets written by other tools
# 50.0), checked in this order by __post_init__; ``help`` and ``usual`` are what the tuner's widgets show.
_FRACTION = dict(low=0.0, high=1.0, lenient=True)
FIELDS: dict[str, Field] = {
    "threshold": Field(float, 0.6, **_FRACTION,
                       help="0.6 is the usual start; lower keeps fainter vessels."),
    "hysteresis_low": Field(float, 0.3, **_FRACTION,
                            help="Faint pixels at or above this are kept when connected to a confident one."),
    "confidence_threshold": Field(float, 0.6, **_FRACTION,
                                  help="A piece is removed when its mean probability is below this; 0 switches "
                                       "the filter off."),
    "min_elongation": Field(float, 3.0, 1.0, 1000.0, lenient=True, usual=(1.0, 20.0, 0.5),
                            help="Pieces shorter than this many times their width are removed, whatever their "
                                 "size: a disc scores about 0.8, a 2:1 ellipse about 1.6, vessel segments and "
                                 "branches score higher. Start at 3."),
    "apply_opening": Field(bool, True, lenient=True),
    "apply_closing": Field(bool, True, lenient=True),
    "shape_filter": Field(bool, False, lenient=True),
    "from_logits": Field(bool, False, lenient=True,
                         help="The maps shown here are already probabilities in [0, 1]; from_logits is for "
                              "scripts that pass raw model outputs."),
    "opening_kernel": Field(int, 3, 1, MAX_KERNEL, lenient=True,
                            help="Odd side of the structuring element; larger removes more."),
    "closing_kernel": Field(int, 3, 1, MAX_KERNEL, lenient=True,
                            help="Odd side of the structuring element; larger joins farther fragments."),
    "min_component_size": Field(int, 50, 0, 100_000_000, lenient=True, usual=(0, 2000, 5),
                                help="Connected pieces smaller than this are removed; 0 switches the filter off. "
                                     "Start at 50."),
    "fill_holes_below": Field(int, 0, 0, 100_000_000, lenient=True, usual=(0, 500, 1),
                              help="0 switches hole filling off."),
    "connectivity": Field(int, 8, 4, 8, lenient=True, choices=(4, 8),
                          help="8 joins pixels that touch at a corner; 4 only along edges."),
    "threshold_mode": Field(str, "fixed", choices=THRESHOLD_MODES, lenient=True,
                            help="fixed: keep pixels ≥ threshold. otsu: threshold from the map's histogram. "
                                 "hysteresis: pixels ≥ threshold seed, connected pixels ≥ low are kept too."),
    "kernel_shape": Field(str, "ellipse", choices=tuple(KERNEL_SHAPES), lenient=True),
}
