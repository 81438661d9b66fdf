"""One predictor for every source of a vessel probability map: a trained checkpoint, the model shipped
with the program, or the classical vesselness filter that needs no training.

A *source* is what the registry stores in an inference job's ``checkpoint_path`` and what the pages pass
around: the path of a ``.pt`` file, ``SHIPPED`` (the shipped model's file) or ``CLASSICAL`` (the filter;
the stored value old rows, presets and API clients use). Everything that predicts, describes a map or
reads recommended settings goes through :class:`Predictor`::

    predictor = Predictor.open(CLASSICAL)           # or SHIPPED, or "models/<id>/checkpoints/best.pt"
    prediction = predictor.predict(image, fov)      # .map: float32 (H, W) in [0, 1]; .factor: the resize used
    predictor.name, predictor.kind, predictor.tta   # "Classical vesselness (Frangi)", "classical", False
    predictor.recommended_settings()                # the checkpoint's calibrated post-processing, or None

Constructing a ``Predictor`` reads nothing; the model loads on first use (``open`` loads it at once, so
that a damaged file is refused before any work starts).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from engine.pretrained import PRETRAINED_NAME, PRETRAINED_PATH
from engine.vesselness import BASELINE_NAME, FOV_DIAMETER
from storage.db import BASELINE

CLASSICAL = BASELINE  # the source (and model id) that stands for the classical vesselness filter
SHIPPED = str(PRETRAINED_PATH)  # the shipped model: a path, so it can never be mistaken for a model id
KINDS = ("checkpoint", "shipped", "classical")


@dataclass(frozen=True)
class Prediction:
    """A probability map at the photograph's own size and the factor the photograph was resized by to make it."""

    map: np.ndarray  # float32 (H, W) in [0, 1]; 0 outside the field of view
    factor: float  # 1.0: the model or filter saw the photograph as it is


class Predictor:
    """A trained checkpoint, the shipped model or the classical filter, behind one interface."""

    def __init__(self, source: str | Path, device: str = "cpu"):
        self.source = str(source)
        self.device = device
        if self.source == CLASSICAL:
            self.kind = "classical"
        elif Path(self.source).resolve() == PRETRAINED_PATH.resolve():
            self.kind = "shipped"
        else:
            self.kind = "checkpoint"

    @classmethod
    def open(cls, source: str | Path, device: str = "cpu") -> Predictor:
        """The predictor of ``source``, its model loaded. Raises CheckpointError (a sentence) for a missing,
        damaged or foreign checkpoint file."""
        predictor = cls(source, device)
        if predictor.kind != "classical":
            predictor.loaded  # noqa: B018 - load now, so that a bad file is refused here
        return predictor

    def __repr__(self) -> str:
        return f"Predictor({self.source!r}, kind={self.kind!r})"

    # ------------------------------------------------------------------ the model
    @cached_property
    def loaded(self):
        """The loaded model (``engine.inference.predict.LoadedModel``); None for the classical filter."""
        if self.kind == "classical":
            return None
        from engine.inference.predict import load_model  # torch loads only where a model predicts

        return load_model(self.source, self.device)

    @property
    def fov_diameter(self) -> float | None:
        """The field-of-view width, in pixels, the model was trained at (the filter's sigmas suit
        ``engine.vesselness.FOV_DIAMETER``); None when a checkpoint does not record it."""
        return FOV_DIAMETER if self.kind == "classical" else self.loaded.fov_diameter

    @property
    def fov_range(self) -> tuple[float, float] | None:
        """The narrowest and widest field of view, in pixels, the model was trained at (one data set: both its
        one scale); None when a checkpoint records none."""
        if self.kind == "classical":
            return (FOV_DIAMETER, FOV_DIAMETER)
        low_high = self.loaded.fov_range
        if low_high is None and self.loaded.fov_diameter is not None:
            return (self.loaded.fov_diameter, self.loaded.fov_diameter)
        return low_high

    # ------------------------------------------------------------------ describing itself
    @property
    def name(self) -> str:
        """What the pages call it: the filter's or the shipped model's name, else the checkpoint's file name."""
        return {"classical": BASELINE_NAME, "shipped": PRETRAINED_NAME}.get(self.kind, Path(self.source).name)

    @property
    def words(self) -> str:
        """What a batch job's settings.json says made its maps (the file name for a model)."""
        return "classical vesselness filter" if self.kind == "classical" else Path(self.source).name

    @property
    def whose(self) -> str:
        """Whose vessel map it is, in words: "the classical filter's" or "the model's"."""
        return "the classical filter's" if self.kind == "classical" else "the model's"

    @property
    def tta(self) -> bool:
        """Whether flip test-time augmentation applies (a model; the filter has nothing to flip)."""
        return self.kind != "classical"

    @property
    def dashboard_tta(self) -> bool:
        """Whether the dashboard's pages and batch jobs predict with flips (``DASHBOARD_TTA`` for a model)."""
        from engine.inference.predict import DASHBOARD_TTA

        return DASHBOARD_TTA and self.tta

    @property
    def tta_words(self) -> str:
        """The dashboard's test-time augmentation in words, ``"none"`` where there is none."""
        from engine.inference.predict import TTA_WORDS

        return TTA_WORDS if self.dashboard_tta else "none"

    @property
    def scale_control(self) -> bool:
        """Whether the dashboard lets the user choose the image scale: the filter always brings its own
        ("auto": its sigmas suit one field-of-view width)."""
        return self.kind != "classical"

    def progress_words(self, size: str) -> str:
        """What computing a map at ``size`` (e.g. "540×540 px") does, for a spinner."""
        if self.kind == "classical":
            return f"Computing the classical vesselness map at {size}…"
        return f"Predicting at {size}…"

    # ------------------------------------------------------------------ recommended settings
    def recommended_settings(self) -> dict | None:
        """The post-processing settings calibrated when the checkpoint was trained (held in its file); None for
        the classical filter or a checkpoint without them."""
        return None if self.kind == "classical" else self.loaded.recommended_postprocess

    def recommended_reasons(self) -> list[str] | None:
        """The calibration's sentences: how the recommended settings differ from the usual advice, and why."""
        return None if self.kind == "classical" else (self.loaded.calibration or {}).get("explanation")

    # ------------------------------------------------------------------ predicting
    def scale_factor(self, fov: np.ndarray, scale: str | float = "auto") -> float:
        """The factor a photograph with this field of view is resized by (see
        ``engine.inference.predict.resolve_scale``; the filter: ``engine.vesselness.baseline_scale``)."""
        if self.kind == "classical":
            from engine.vesselness import baseline_scale

            return baseline_scale(fov, scale)
        from engine.inference.predict import resolve_scale

        return resolve_scale(self.loaded, fov, scale)

    def predict(self, image: Any, fov: Any = None, scale: str | float = "auto", tta: bool | None = None) -> Prediction:
        """The vessel probability map of an RGB photograph at its own size.

        Args:
            image: uint8 (H, W, 3).
            fov: its field of view (H, W), nonzero inside; estimated from the photograph when None.
            scale: ``"auto"`` (to the model's or filter's field-of-view width), ``"none"`` or a factor.
            tta: predict the flipped photographs too and average (a model only); None: as the dashboard does.

        Returns:
            The map (float32 (H, W) in [0, 1], 0 outside the field of view) and the resize factor used.

        Raises:
            UserError: an image or field of view of the wrong shape, type or size, or an unknown ``scale``.
        """
        from engine.fov import estimate_fov

        if self.kind == "classical":
            from engine.vesselness import vesselness_map

            prob = vesselness_map(image, fov, scale)  # checks the image and the field of view
        else:
            from engine.inference.predict import predict

            prob = predict(self.loaded, image, tta=self.dashboard_tta if tta is None else tta, fov=fov, scale=scale)
        if fov is None:
            fov = estimate_fov(np.asarray(image))
        mask = np.asarray(fov)
        mask = mask.max(axis=2) if mask.ndim == 3 else mask
        return Prediction(prob, self.scale_factor((mask != 0).astype(np.uint8), scale))
