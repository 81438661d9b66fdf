"""Post-processing of a vessel probability map into a clean binary mask.

``enhanced_post_processing`` turns a model's probability map (or logits) into a ``uint8``
{0, 1} mask in seven switchable steps, in this order:

1. thresholding: ``fixed`` (keep ``prob >= threshold``), ``otsu`` (threshold from the map's
   256-level histogram, inside the FOV when one is given) or ``hysteresis`` (pixels
   ``>= threshold`` are seeds; pixels ``>= hysteresis_low`` connected to a seed are kept);
2. opening (``opening_kernel``, ``kernel_shape``): removes specks and thin bridges;
3. closing (``closing_kernel``): fills small gaps and joins near fragments;
4. component size filter: components smaller than ``min_component_size`` pixels go;
5. confidence filter: components whose confidence is below ``confidence_threshold`` go. A
   component's confidence is the mean probability of its *evidence*, the pixels that passed
   thresholding and opening; the pixels closing added are judged by the evidence around them, not
   by their own (low) probabilities, so a kernel that joins the whole tree into one piece cannot
   lower its confidence and remove it. A component with no evidence (closing alone made it) goes;
6. vessel-shape filter (``shape_filter``): components whose vessel ratio is below ``min_elongation``
   go (dots, blobs and discs of any size, not vessel segments, arcs or branches);
7. hole filling: a hole is a background region enclosed by vessel pixels on every side (it does
   not touch the image border); holes with fewer than ``fill_holes_below`` pixels become
   foreground. Background connectivity is the complement of ``connectivity`` (8 -> 4, 4 -> 8).
   A notch or corner open to the image border is never filled, whatever its size (unlike
   ``skimage.morphology.remove_small_holes``, which fills small border regions too). Then the
   FOV mask zeroes everything outside it.

The vessel ratio judges how tube-like a component is: ``width = 2 * d_max - 1``, its width at the
widest point, where ``d_max`` is the largest taxicab distance from one of its pixels to the background
(pixels outside the image count as background); ``area / width`` is the length of a tube that wide
with the same area, and ``vessel ratio = length / width = area / width**2``. A straight bar scores its
length over its width (a 1-pixel line of n pixels scores n); arcs, tortuous segments and branching
vessels score their total length over their widest width, so bending does not lower the score. A disc
scores about 0.8, an ellipse about 0.8 times its aspect ratio, a square or dot about 1, whatever their
size. A diagonal vessel scores up to half of an upright one of the same size (taxicab distances run
along the axes). Rough blob outlines do not raise the score, since only the widest point counts; a
short vessel that carries a wide lump can score low.

Every step works on the whole image through a few OpenCV calls and ``np.bincount`` over foreground
pixels only (one labelling, no per-component loop), so it stays fast enough to re-run on every
slider move; ``benchmarks/postprocess.py`` compares it with a plain scikit-image/SciPy implementation
of the same steps (identical masks) and records the measurements behind these choices.

This module imports neither torch nor streamlit: a torch tensor is converted through its own
``detach().cpu().float().numpy()`` methods.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import cv2
import numpy as np

from engine.arrays import squeeze_to_2d, to_numpy
from engine.errors import UserError
from engine.postprocess.config import KERNEL_SHAPES, PostProcessConfig, check_option_names
from engine.postprocess.connectivity import (count_components, hysteresis_mask, label_components,
                                             merges_through_holes, small_hole_pixels, vessel_ratio_per_label)

MODEL_TYPES = ("segmentation",)


@dataclass
class PostProcessResult:
    """``mask``: final uint8 {0,1} (H, W); ``removed``: uint8 {0,1}, pixels that passed
    thresholding but a later step removed; ``stats``: JSON-ready counts and timings."""

    mask: np.ndarray
    removed: np.ndarray
    stats: dict = field(default_factory=dict)


def prepare_probabilities(model_output: Any, from_logits: bool = False) -> np.ndarray:
    """Validated float32 (H, W) probabilities in [0, 1] from numpy/torch probabilities or logits."""
    arr = squeeze_to_2d(to_numpy(model_output, "model_output"), "model_output")
    prob = np.ascontiguousarray(arr, dtype=np.float32)
    low, high = float(prob.min()), float(prob.max())  # NaN and inf propagate into min/max
    if math.isnan(low) or math.isnan(high):
        raise UserError(
            "model_output contains NaN values: the model or its input is broken; check the image and checkpoint."
        )
    if from_logits:
        with np.errstate(over="ignore"):
            prob = 1.0 / (1.0 + np.exp(-prob))
        return prob.astype(np.float32, copy=False)
    if low < 0.0 or high > 1.0:
        raise UserError(
            f"model_output has values from {low:.4g} to {high:.4g}, outside [0, 1]: pass probabilities, "
            "or set from_logits=True if these are logits."
        )
    return prob


def prepare_fov(fov: Any, shape: tuple) -> np.ndarray:
    """uint8 {0,1} field-of-view mask of the given (H, W) shape; nonzero means inside."""
    arr = squeeze_to_2d(to_numpy(fov, "fov"), "fov")
    if arr.shape != tuple(shape):
        raise UserError(
            f"fov is {arr.shape[1]}x{arr.shape[0]} (width x height) but the probability map is "
            f"{shape[1]}x{shape[0]}: use the FOV mask that belongs to this image."
        )
    return np.ascontiguousarray(arr != 0).view(np.uint8)


# --- thresholding ---------------------------------------------------------------------------

def quantize_probabilities(prob: np.ndarray) -> np.ndarray:
    """uint8 levels 0..255 of a [0, 1] float32 map, rounded half to even; Otsu works on these.

    ``cv2.convertScaleAbs`` gives exactly ``np.rint(prob * np.float32(255))`` on [0, 1], every exact
    half included, an order of magnitude faster than numpy.
    """
    return cv2.convertScaleAbs(prob, alpha=255.0)


def otsu_level(levels: np.ndarray, fov: np.ndarray | None = None) -> int:
    """Otsu's level on uint8 levels (inside ``fov``): pixels ``> level`` are foreground.

    Same maximisation as ``skimage.filters.threshold_otsu`` on integer images (histogram
    trimmed to the occupied range), in float64. A map with a single level returns that level,
    so nothing is kept: without two classes there is nothing to separate.
    """
    mask = None if fov is None else fov
    hist = cv2.calcHist([levels], [0], mask, [256], [0, 256]).ravel().astype(np.float64)
    occupied = np.flatnonzero(hist)
    if occupied.size == 0:
        return 255
    start, end = occupied[0], occupied[-1] + 1
    if end - start == 1:
        return int(start)
    counts = hist[start:end]
    centres = np.arange(start, end, dtype=np.float64)
    weight1 = np.cumsum(counts)
    weight2 = np.cumsum(counts[::-1])[::-1]
    mean1 = np.cumsum(counts * centres) / weight1
    mean2 = (np.cumsum((counts * centres)[::-1]) / weight2[::-1])[::-1]
    variance12 = weight1[:-1] * weight2[1:] * (mean1[:-1] - mean2[1:]) ** 2
    return int(centres[int(np.argmax(variance12))])


def _threshold(prob: np.ndarray, cfg: PostProcessConfig, fov: np.ndarray | None, stats: dict) -> np.ndarray:
    if cfg.threshold_mode == "fixed":
        stats["threshold_used"] = cfg.threshold
        return (prob >= np.float32(cfg.threshold)).view(np.uint8)
    if cfg.threshold_mode == "otsu":
        levels = quantize_probabilities(prob)
        level = otsu_level(levels, fov)
        # kept <=> level_of(p) > level <=> p >= (level + 0.5) / 255 (up to rounding ties)
        stats["threshold_used"] = round(min(1.0, (level + 0.5) / 255.0), 6)
        stats["otsu_level"] = level
        return cv2.threshold(levels, level, 1, cv2.THRESH_BINARY)[1]
    stats["threshold_used"] = cfg.threshold
    mask, regions = hysteresis_mask(prob, cfg.hysteresis_low, cfg.threshold, cfg.connectivity)
    stats["hysteresis_regions_kept"] = regions
    return mask


# --- component filters ----------------------------------------------------------------------

def _filter_components(mask, prob, cfg, stats, removed, timings, evidence=None):
    """Steps 4-6 on one labelling; returns the filtered mask, the labels and which labels were kept.

    ``evidence``: the mask before closing (None when closing changed nothing); the confidence filter
    averages the probability over a component's evidence pixels only.
    """
    start = time.perf_counter()
    n, labels = label_components(mask, cfg.connectivity)
    idx = np.flatnonzero(mask.view(bool))
    lab = labels.ravel()[idx]
    area = np.bincount(lab, minlength=n)
    keep = np.ones(n, dtype=bool)
    keep[0] = False
    stats["components_before"] = int(n - 1)
    timings["label"] = _ms(start)

    def drop(step: str, condition: np.ndarray) -> None:
        gone = keep & condition
        keep[gone] = False
        stats["components_removed"][step] = int(np.count_nonzero(gone))
        removed[step] = int(area[gone].sum())

    start = time.perf_counter()
    if cfg.min_component_size > 0:
        drop("size", area < cfg.min_component_size)
    timings["size_filter"] = _ms(start)

    start = time.perf_counter()
    if cfg.confidence_threshold > 0:
        weights = prob.ravel()[idx]
        if evidence is None:
            support = area
        else:  # pixels closing added carry no weight: a gap filled between vessels does not dilute them
            inside = evidence.ravel()[idx].astype(bool)
            weights = np.where(inside, weights, np.float32(0))
            support = np.bincount(lab[inside], minlength=n)
        total = np.bincount(lab, weights=weights, minlength=n)
        mean_prob = np.where(support > 0, total / np.maximum(support, 1), 0.0)  # no evidence: confidence 0
        drop("confidence", mean_prob < cfg.confidence_threshold)
    timings["confidence_filter"] = _ms(start)

    start = time.perf_counter()
    if cfg.shape_filter and keep.any():
        # judged on the labelled mask: a component's ratio does not depend on the others (see connectivity)
        drop("shape", vessel_ratio_per_label(mask, lab, idx, n) < cfg.min_elongation)
    timings["shape_filter"] = _ms(start)

    if keep[1:].all():
        return mask, labels, keep
    out = mask.copy()
    out.ravel()[idx[~keep[lab]]] = 0
    return out, labels, keep


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 3)


# --- what the user should hear -------------------------------------------------------------

# step -> (what removed the pixels, what to do to keep them), in the words the tuner shows
STEP_ADVICE = {
    "opening": ("Opening", "turn 'Opening' off or choose a smaller 'Opening kernel (px)'"),
    "size": ("The size filter", "lower 'Minimum component (px)'"),
    "confidence": ("The confidence filter", "lower 'Component confidence'"),
    "shape": ("The vessel-shape filter", "lower 'Minimum length / width' or turn the vessel-shape filter off"),
    "fov": ("The field of view", "check that the field of view covers the retina"),
}


def warnings_for(stats: Mapping[str, Any], share: float = 0.5, noisy_components: int = 20,
                 small_px: float = 100.0) -> list[str]:
    """Sentences for every step that removed more than ``share`` of the thresholded pixels, and one when the
    mask is still noisy: at least ``noisy_components`` pieces remain and they average under ``small_px`` pixels
    (a vessel tree is a few large pieces; specks are many small ones).

    Args:
        stats: ``PostProcessResult.stats`` (reads ``pixels_thresholded``, ``pixels_removed``, ``pixels_kept``
            and ``components_after``).
        share: the fraction of the thresholded pixels above which a step is reported.
        noisy_components: the number of pieces in the final mask from which small pieces count as noise.
        small_px: the average size in pixels under which those pieces are small.

    Returns:
        One sentence per such step, in pipeline order, saying which step removed how much and which
        control keeps the pixels, e.g. "The confidence filter removed 61 % of the thresholded pixels:
        lower 'Component confidence' to keep them."; empty when no step did (or nothing passed the
        threshold). A step after closing can remove more pixels than were thresholded (closing added
        the others); the sentence then gives both counts.
    """
    thresholded = int(stats.get("pixels_thresholded") or 0)
    removed = stats.get("pixels_removed") or {}
    sentences = []
    for step, (who, advice) in STEP_ADVICE.items():
        n = int(removed.get(step) or 0)
        if thresholded <= 0 or n <= share * thresholded:
            continue
        if n <= thresholded:
            what = f"{100 * n / thresholded:.0f} % of the thresholded pixels"
        else:
            what = f"{n:,} pixels, more than the {thresholded:,} that passed the threshold (closing added the others)"
        sentences.append(f"{who} removed {what}: {advice} to keep them.")
    pieces, kept = int(stats.get("components_after") or 0), int(stats.get("pixels_kept") or 0)
    if pieces >= noisy_components and kept < small_px * pieces:
        sentences.append(f"The mask is still noisy: {pieces:,} separate pieces remain, {kept / pieces:.0f} pixels "
                         "each on average. Raise 'Threshold' (0.6–0.8 is the usual range), raise 'Minimum "
                         "component (px)' or turn 'Opening' on to remove the specks.")
    return sentences


# --- the public entry point -----------------------------------------------------------------

# The positional parameters after ``model_type`` that earlier versions took (``enhanced_post_processing(prob,
# "segmentation", 0.5, 10, 0.55)``); they are the same overrides as the keywords of these names.
POSITIONAL_OPTIONS = ("threshold", "min_component_size", "confidence_threshold")


def enhanced_post_processing(
    model_output: Any,
    model_type: str = "segmentation",
    *positional: Any,
    config: PostProcessConfig | None = None,
    fov: Any = None,
    **options: Any,
) -> PostProcessResult:
    """Threshold, clean and filter a vessel probability map; see the module docstring.

    ``model_output``: (H, W) probabilities in [0, 1] (numpy or torch, leading size-1 dims
    allowed), or logits with ``from_logits=True``. ``config`` supplies every option (the defaults of
    ``PostProcessConfig`` without one); ``**options`` (any ``PostProcessConfig`` field, e.g.
    ``threshold=0.5``) override it, and so do up to three positional values after ``model_type``
    (``threshold``, ``min_component_size``, ``confidence_threshold``, the call shape of earlier versions).
    ``fov``: optional (H, W) mask, nonzero inside. Thresholds are probabilities even for logits (they
    apply after the sigmoid).

    ``stats``: ``threshold_mode``, ``threshold_used``, ``pixels_thresholded``,
    ``components_before`` (components the filters judged, after opening/closing),
    ``components_after`` (in the final mask), ``components_removed`` per filter,
    ``pixels_removed`` per step (opening, size, confidence, shape, fov),
    ``pixels_added`` (closing, holes), ``holes_filled`` (number of holes filled),
    ``pixels_kept``, ``removed_total`` (pixels in ``removed``; closing may restore pixels that
    opening took, so this can be less than the sum of the steps) and ``timings_ms`` per step
    plus ``total``. The per-step counts add up::

        pixels_kept + sum(pixels_removed.values()) == pixels_thresholded + sum(pixels_added.values())

    A filter after closing can remove pixels closing added, so one step can remove more pixels than
    were thresholded; :func:`warnings_for` turns a step that removed more than half of them into a
    sentence for the user.

    Hole filling (``fill_holes_below > 0``) fills a background region only when vessel pixels
    enclose it completely (it does not touch the image border) and it has fewer than
    ``fill_holes_below`` pixels; background connectivity is the complement of ``connectivity``.
    It runs before the FOV mask is applied.
    """
    t_all = time.perf_counter()
    cfg = _resolve_config(model_type, positional, config, options)
    run = _Run(cfg)
    start = time.perf_counter()
    prob = prepare_probabilities(model_output, cfg.from_logits)
    fov_mask = None if fov is None else prepare_fov(fov, prob.shape)
    run.timings["prepare"] = _ms(start)

    start = time.perf_counter()
    run.thresholded = run.mask = _threshold(prob, cfg, fov_mask, run.stats)
    run.count = run.stats["pixels_thresholded"] = int(cv2.countNonZero(run.thresholded))
    run.timings["threshold"] = _ms(start)

    evidence = _open_and_close(run)
    run.mask, labels, keep = _filter_components(run.mask, prob, cfg, run.stats, run.removed_px, run.timings, evidence)
    run.components_after = int(np.count_nonzero(keep))
    run.count = int(cv2.countNonZero(run.mask))
    _fill_holes(run, labels, keep)
    removed = _apply_fov(run, fov_mask, labels)
    return run.result(removed, t_all)



def _resolve_config(model_type: str, positional: tuple, config: PostProcessConfig | None,
                    options: dict[str, Any]) -> PostProcessConfig:
    """The config the call asks for: ``config`` (or the defaults) with the positional and keyword overrides.

    Raises:
        UserError: an unsupported ``model_type``, a ``config`` that is not a PostProcessConfig, or an
            option out of its range (PostProcessConfig's checks).
        TypeError: too many positional values, or one given twice.
    """
    if model_type not in MODEL_TYPES:
        raise UserError(
            f"model_type {model_type!r} is not supported: enhanced_post_processing handles only "
            "'segmentation' outputs (a per-pixel vessel probability map)."
        )
    if config is not None and not isinstance(config, PostProcessConfig):
        raise UserError(
            f"config must be a PostProcessConfig; got {type(config).__name__} "
            "(use PostProcessConfig.from_dict(...) for a dict)."
        )
    if len(positional) > len(POSITIONAL_OPTIONS):
        raise TypeError(f"enhanced_post_processing takes at most {2 + len(POSITIONAL_OPTIONS)} positional "
                        f"arguments ({len(positional) + 2} given): pass the other options by name.")
    for name in POSITIONAL_OPTIONS[:len(positional)]:
        if name in options:
            raise TypeError(f"enhanced_post_processing got multiple values for argument {name!r}")
    overrides = {**dict(zip(POSITIONAL_OPTIONS, positional)), **options}
    check_option_names(overrides)
    return dataclasses.replace(config, **overrides) if config is not None else PostProcessConfig(**overrides)


@dataclasses.dataclass
class _Run:
    """What the steps of one ``enhanced_post_processing`` call share: the mask so far, its pixel count, and
    the counts and timings that become ``stats``."""
    cfg: PostProcessConfig
    thresholded: np.ndarray | None = None
    mask: np.ndarray | None = None
    count: int = 0
    components_after: int = 0
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    removed_px: dict[str, int] = dataclasses.field(
        default_factory=lambda: {"opening": 0, "size": 0, "confidence": 0, "shape": 0, "fov": 0})
    added_px: dict[str, int] = dataclasses.field(default_factory=lambda: {"closing": 0, "holes": 0})
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.stats.update(threshold_mode=self.cfg.threshold_mode,
                          components_removed={"size": 0, "confidence": 0, "shape": 0})

    def result(self, removed: np.ndarray, t_all: float) -> PostProcessResult:
        """The final mask (contiguous uint8, never a view of the thresholded array), ``removed`` and ``stats``."""
        mask = np.ascontiguousarray(self.mask, dtype=np.uint8)
        if mask is self.thresholded:  # nothing ran after thresholding; never hand out a view of a bool array
            mask = mask.copy()
        self.stats.update(components_after=self.components_after, pixels_removed=self.removed_px,
                          pixels_added=self.added_px, pixels_kept=self.count,
                          removed_total=int(cv2.countNonZero(removed)))
        self.timings["total"] = _ms(t_all)
        self.stats["timings_ms"] = self.timings
        return PostProcessResult(mask=mask, removed=removed, stats=self.stats)


def _open_and_close(run: _Run) -> np.ndarray | None:
    """Opening, then closing, each when on and wider than 1 px. Returns the mask before closing when closing
    added pixels (the confidence filter judges a component by what the model itself marked), else None."""
    cfg, evidence = run.cfg, None
    shape_id = KERNEL_SHAPES[cfg.kernel_shape]
    for step, op, on, size in (("opening", cv2.MORPH_OPEN, cfg.apply_opening, cfg.opening_kernel),
                               ("closing", cv2.MORPH_CLOSE, cfg.apply_closing, cfg.closing_kernel)):
        start = time.perf_counter()
        if on and size > 1:
            before = run.mask
            run.mask = cv2.morphologyEx(run.mask, op, cv2.getStructuringElement(shape_id, (size, size)))
            new = int(cv2.countNonZero(run.mask))
            if op == cv2.MORPH_OPEN:
                run.removed_px[step] = run.count - new
            else:
                run.added_px[step] = new - run.count
                evidence = before if new != run.count else None
            run.count = new
        run.timings[step] = _ms(start)
    return evidence


def _fill_holes(run: _Run, labels: np.ndarray, keep: np.ndarray) -> None:
    """Fill background regions of fewer than ``fill_holes_below`` pixels that vessel pixels enclose."""
    start = time.perf_counter()
    run.stats["holes_filled"] = 0
    if run.cfg.fill_holes_below > 0:
        idx, hole_ids = small_hole_pixels(run.mask, run.cfg.fill_holes_below, run.cfg.connectivity)
        if idx.size:
            run.mask = run.mask.copy() if run.mask is run.thresholded else run.mask
            run.mask.ravel()[idx] = 1
            run.added_px["holes"], run.count = int(idx.size), run.count + int(idx.size)
            run.stats["holes_filled"] = int(np.unique(hole_ids).size)
            # a filled hole that touches several components (a ring around an island) joins them
            run.components_after -= merges_through_holes(labels, keep, idx, hole_ids, run.cfg.connectivity)
    run.timings["fill_holes"] = _ms(start)


def _apply_fov(run: _Run, fov_mask: np.ndarray | None, labels: np.ndarray) -> np.ndarray:
    """Cut the mask to the field of view; returns ``removed``, the thresholded pixels not in the final mask."""
    start = time.perf_counter()
    if fov_mask is not None:
        run.mask = cv2.bitwise_and(run.mask, fov_mask)
        new = int(cv2.countNonZero(run.mask))
        run.removed_px["fov"], run.count = run.count - new, new
        if run.removed_px["fov"] > 0:  # the FOV edge can split or delete components: count again
            run.components_after = count_components(run.mask, run.cfg.connectivity, scratch=labels)
    removed = cv2.subtract(run.thresholded, run.mask)
    run.timings["fov"] = _ms(start)
    return removed
