"""The field of view (FOV) of a fundus photograph and the scale it sets.

A fundus camera images the retina as a bright disc (often clipped at the top and bottom) on a
dark surround. Everything this program measures or draws is limited to that disc: pixels outside
it never count in a metric and never become vessel pixels.

The *scale* of a photograph is the diameter of its FOV in pixels, measured as the longer side of
the FOV's bounding box (a disc clipped at the top and bottom keeps its full width). A model
records the median scale of its training images; at prediction an image of another scale is
resized to the model's scale first (see :func:`engine.inference.predict.resolve_scale`).
"""
from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np
from engine.errors import UserError

# A pixel is inside when it is brighter than the surround by this share of the (disc - surround)
# contrast, and by at least MIN_STEP grey levels.
CONTRAST_SHARE = 0.12
MIN_STEP = 6.0
# The surround counts as dark when its level is below this share of the retina's.
DARK_SURROUND = 0.5
# An estimate covering less than this share of the image is not a fundus disc: use the whole image.
MIN_COVER = 0.10
# A FOV covering more than this share of the image has no visible edge: its scale is unknown.
WHOLE_IMAGE = 0.97
# The estimated edge is pulled in by this share of the diameter: JPEG ringing and the camera's
# vignette make the outermost ring unreliable.
EDGE_EROSION = 0.003
# Larger photographs are estimated at this longer side and the mask enlarged back.
WORK_SIDE = 1024


def _as_rgb_or_gray(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        if arr.dtype == np.uint8:  # cv2.max is much faster than ndarray.max over the channel axis
            return cv2.max(cv2.max(arr[..., 0], arr[..., 1]), arr[..., 2])
        return arr[..., :3].max(axis=2)
    if arr.ndim == 2:
        return arr
    raise UserError(f"A field of view needs an image of shape (H, W) or (H, W, 3); got shape {arr.shape}.")


def estimate_fov(image: np.ndarray) -> np.ndarray:
    """The bright fundus disc of a photograph, as a mask.

    The brightest channel is median-filtered (against JPEG noise), thresholded between the level of
    the image's corners (the surround) and the level of its centre (the retina), reduced to its
    largest component (which drops a camera's text overlay), its holes filled (dark vessels and
    lesions inside stay inside), opened to smooth the rim and eroded by a few pixels.

    Args:
        image: uint8 RGB (H, W, 3) or grey (H, W) photograph.

    Returns:
        uint8 {0, 1} mask (H, W). The whole image (all ones) when no dark surround is found.

    Raises:
        UserError: the array is not an image of one of the shapes above.
    """
    lum = np.ascontiguousarray(_as_rgb_or_gray(image), dtype=np.uint8)
    h, w = lum.shape
    if min(h, w) < 8:
        return np.ones((h, w), np.uint8)
    if max(h, w) > WORK_SIDE:  # the disc's outline needs no more pixels than this: estimate it smaller
        f = WORK_SIDE / max(h, w)
        small = _estimate(cv2.resize(lum, (max(8, round(w * f)), max(8, round(h * f))), interpolation=cv2.INTER_AREA))
        return (cv2.resize(small * 255, (w, h), interpolation=cv2.INTER_LINEAR) >= 128).astype(np.uint8)
    return _estimate(lum)


def _estimate(lum: np.ndarray) -> np.ndarray:
    h, w = lum.shape
    lum = cv2.medianBlur(lum, 5)
    k = max(2, min(h, w) // 20)
    corners = np.concatenate([lum[:k, :k].ravel(), lum[:k, -k:].ravel(), lum[-k:, :k].ravel(), lum[-k:, -k:].ravel()])
    surround = float(np.percentile(corners, 90))
    retina = float(np.median(lum[h // 4: 3 * h // 4, w // 4: 3 * w // 4]))
    if retina - surround < 2 * MIN_STEP or surround > DARK_SURROUND * retina:  # a crop of the retina, a scan
        return np.ones((h, w), np.uint8)
    level = surround + max(CONTRAST_SHARE * (retina - surround), MIN_STEP)
    inside = (lum > level).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(inside, connectivity=8)
    if n > 1:
        inside = (labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8)
    outside = np.pad(inside, 1)  # flood the surround from a frame; what it cannot reach is a hole
    cv2.floodFill(outside, np.zeros((h + 4, w + 4), np.uint8), (0, 0), 1)
    inside[outside[1:-1, 1:-1] == 0] = 1
    diameter = fov_diameter(inside) or max(h, w)
    r = max(1, int(round(diameter / 200)))
    inside = cv2.morphologyEx(inside, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1,) * 2))
    erode = int(round(EDGE_EROSION * diameter))
    if erode:
        inside = cv2.erode(inside, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * erode + 1,) * 2))
    if inside.mean() < MIN_COVER:
        return np.ones((h, w), np.uint8)
    return inside


def fov_diameter(fov: np.ndarray) -> float | None:
    """The scale of a photograph: its FOV's diameter in pixels (the longer side of its bounding box).

    Args:
        fov: mask (H, W); nonzero is inside.

    Returns:
        The diameter, or None when the FOV has no visible edge (it covers nearly the whole image, as
        for a crop of the retina) or is empty: then the photograph's scale is unknown.
    """
    inside = np.asarray(fov) != 0
    if inside.ndim != 2 or not inside.any() or inside.mean() > WHOLE_IMAGE:
        return None
    cols, rows = np.flatnonzero(inside.any(axis=0)), np.flatnonzero(inside.any(axis=1))
    return float(max(cols[-1] - cols[0], rows[-1] - rows[0]) + 1)


# How a checkpoint names the measure its "scale" records.
FOV_DIAMETER_MEASURE = "field-of-view diameter in pixels (longer side of its bounding box)"
# Images whose scale is within this share of the target are used as they are.
SCALE_TOLERANCE = 0.10


def scale_factor(target: float | None, diameter: float | None) -> float:
    """The resize factor that brings a FOV of ``diameter`` pixels to ``target`` (1.0 when either is
    unknown, or when they differ by no more than ``SCALE_TOLERANCE``)."""
    if not target or not diameter:
        return 1.0
    factor = target / diameter
    return 1.0 if abs(factor - 1.0) <= SCALE_TOLERANCE else factor


def range_factor(low: float | None, high: float | None, diameter: float | None) -> float:
    """The resize factor that brings a FOV of ``diameter`` pixels into [``low``, ``high``], the scales a model
    was trained at: a wider one down to ``high``, a narrower one up to ``low``, one inside as it is (1.0 when
    the diameter is unknown, or within ``SCALE_TOLERANCE`` of the nearest bound)."""
    if not low or not high or not diameter:
        return 1.0
    return scale_factor(min(max(diameter, low), high), diameter)


def rescale(array: np.ndarray, factor: float, kind: str = "image", min_side: int = 16) -> np.ndarray:
    """``array`` (H, W[, C]) resized by ``factor``: area averaging to shrink and cubic to enlarge a photograph,
    nearest neighbour for a mask (``kind="mask"``), linear for a probability map (``kind="map"``)."""
    if factor == 1.0:
        return array
    h, w = array.shape[:2]
    size = (max(min_side, round(w * factor)), max(min_side, round(h * factor)))
    if kind == "mask":
        method = cv2.INTER_NEAREST
    elif kind == "map":
        method = cv2.INTER_LINEAR
    else:
        method = cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC
    return cv2.resize(array, size, interpolation=method)


SCALE_CHOICES = ("auto", "none")


def parse_scale(value: Any) -> str | float:
    """``"auto"``, ``"none"`` or a positive resize factor, from what a user typed or sent.

    Raises:
        UserError: anything else, with a sentence saying what is accepted.
    """
    if isinstance(value, str):
        text = value.strip().lower()
        if text in SCALE_CHOICES:
            return text
        try:
            value = float(text)
        except ValueError:
            raise UserError(f"scale must be auto, none or a resize factor such as 0.5, not {value!r}.") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0.05 <= value <= 20:
        raise UserError(f"scale must be auto, none or a resize factor between 0.05 and 20, not {value!r}.")
    return float(value)
