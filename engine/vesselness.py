"""A model-free baseline: multi-scale Frangi vesselness as a probability-like map.

``vesselness_map(image_rgb, fov=None)`` works on the green channel (where retinal vessels
have the most contrast), equalised with CLAHE, then:

1. pixels near or outside the FOV edge are set to the median inside it, so the bright/dark
   rim of the fundus disc is not mistaken for a vessel;
2. ``skimage.filters.frangi`` with ``black_ridges=True`` (vessels are dark on a bright retina)
   at sigmas 2, 3 and 4 pixels;
3. the response ``v`` is squashed monotonically to ``v / (v + s)`` with ``s`` its 85th
   percentile inside the FOV, so about the top 15 % of FOV pixels (the vessel fraction of a
   DRIVE image is ~12 %) lie above 0.5, and nothing saturates (rank order, hence ROC AUC, is
   kept exactly); outside the FOV the map is 0.

Without ``fov`` the FOV is estimated from the image (:func:`engine.fov.estimate_fov`: the bright
disc of a fundus photograph, or the whole image when there is no dark surround).

The sigmas and the threshold were chosen on DRIVE's training images; the README gives the scores.
"""
from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from engine.fov import estimate_fov, fov_diameter, parse_scale, rescale, scale_factor
from engine.errors import UserError

BASELINE_NAME = "Classical vesselness (Frangi)"
SIGMAS = (2.0, 3.0, 4.0)  # vessel half-widths probed, in pixels (DRIVE vessels are 1-10 px wide)
CLAHE_CLIP = 2.0  # CLAHE contrast limit on 8x8 tiles
RIM_EROSION = 7  # pixels of the FOV rim replaced by the median before filtering
SCALE_PERCENTILE = 85.0  # the response at this FOV percentile maps to 0.5
FOV_DIAMETER = 540.0  # the FOV diameter (pixels) the sigmas suit: DRIVE's photographs


def _check_image(image_rgb: Any) -> np.ndarray:
    image = np.asarray(image_rgb)
    if image.ndim != 3 or image.shape[2] != 3:
        raise UserError(
            f"vesselness_map needs an RGB image of shape (H, W, 3); got shape {image.shape}: "
            "read the file with engine.imageio.read_image."
        )
    if image.dtype != np.uint8:
        raise UserError(f"vesselness_map needs uint8 RGB pixels; got dtype {image.dtype}: use read_image.")
    if min(image.shape[:2]) < 16:
        raise UserError(f"the image is {image.shape[1]}x{image.shape[0]}; it must be at least 16x16 pixels.")
    return image


def baseline_scale(fov: np.ndarray, scale: str | float = "auto") -> float:
    """The factor :func:`vesselness_map` resizes a photograph with this FOV by (see its ``scale``)."""
    scale = parse_scale(scale)
    if scale == "auto":
        return scale_factor(FOV_DIAMETER, fov_diameter(fov))
    return 1.0 if scale == "none" else scale


def vesselness_map(image_rgb: Any, fov: Any = None, scale: str | float = "auto") -> np.ndarray:
    """float32 (H, W) map in [0, 1], high on vessels; 0 outside the FOV. See the module docstring.

    Args:
        image_rgb: uint8 (H, W, 3).
        fov: field-of-view mask (H, W), nonzero inside; estimated when None.
        scale: ``"auto"`` filters the photograph resized so that its FOV is ``FOV_DIAMETER`` pixels
            across (the scale the filter's sigmas are chosen for; the map is resized back), ``"none"``
            filters it as it is, a number resizes it by that factor.

    Raises:
        UserError: an image or FOV of the wrong shape or type, an empty FOV, an unknown ``scale``.
    """
    image = _check_image(image_rgb)
    if fov is None:
        inside = estimate_fov(image)
    else:
        inside = np.asarray(fov)
        if inside.shape != image.shape[:2]:
            raise UserError(
                f"fov is {inside.shape[-1]}x{inside.shape[0]} (width x height) but the image is "
                f"{image.shape[1]}x{image.shape[0]}: use the FOV mask that belongs to this image."
            )
        inside = (inside != 0).astype(np.uint8)
    if not inside.any():
        raise UserError("the FOV mask is empty (no pixel inside): pass the image's real FOV mask, or none.")
    factor = baseline_scale(inside, scale)
    if factor == 1.0:
        return _vesselness(image, inside)
    h, w = inside.shape
    small = _vesselness(rescale(image, factor), rescale(inside, factor, "mask"))
    return np.clip(cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR), 0, 1) * inside


def _vesselness(image: np.ndarray, inside: np.ndarray) -> np.ndarray:
    from skimage.filters import frangi  # imported here: importing skimage is slow, and pages import this module

    if not inside.any():  # shrunk below one pixel of FOV
        inside = np.ones(inside.shape, np.uint8)
    core = cv2.erode(inside, np.ones((RIM_EROSION, RIM_EROSION), np.uint8)).astype(bool)
    if not core.any():  # a FOV thinner than the rim erosion: use it as it is
        core = inside.astype(bool)

    green = cv2.createCLAHE(clipLimit=CLAHE_CLIP, tileGridSize=(8, 8)).apply(np.ascontiguousarray(image[..., 1]))
    enhanced = green.astype(np.float32) / 255.0
    enhanced[~core] = np.median(enhanced[core])
    response = frangi(enhanced, sigmas=SIGMAS, black_ridges=True).astype(np.float32)
    response[~core] = 0.0
    scale = float(np.percentile(response[core], SCALE_PERCENTILE))
    if not np.isfinite(scale) or scale <= 0.0:
        scale = float(response.max()) or 1.0  # a flat image: nearly no response anywhere
    prob = response / (response + np.float32(scale))
    return np.nan_to_num(prob, nan=0.0).astype(np.float32)
