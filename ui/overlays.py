"""Fast compositing of what the pages show: the photograph with the kept (green) and removed (magenta)
pixels and the field of view's outline (amber), and the probability map as a heat map."""
from __future__ import annotations

import cv2
import numpy as np
import streamlit as st

from ui.uploads import digest_array

KEPT_RGB = (40, 230, 90)  # green: vessel pixels the post-processing keeps
REMOVED_RGB = (255, 40, 220)  # magenta: pixels that passed the threshold but a filter removed
FOV_RGB = (255, 200, 0)  # amber: the outline of the field of view
_TINT = 0.65  # how strongly the overlay colours cover the photograph


DISPLAY_QUALITY = 92  # JPEG quality of the images shown on screen (downloads stay lossless PNG)


def display_bytes(bgr_or_gray: np.ndarray) -> bytes:
    """JPEG bytes for display (encoding JPEG is many times faster than PNG, and each slider move encodes one);
    downloads stay lossless PNG."""
    ok, buf = cv2.imencode(".jpg", bgr_or_gray, [cv2.IMWRITE_JPEG_QUALITY, DISPLAY_QUALITY])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


@st.cache_resource(max_entries=16, show_spinner=False)
def photo_layers(digest: str, _image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, bytes]:
    """Per image, once: the photograph in BGR, its kept-tinted and removed-tinted versions, its JPEG."""
    bgr = cv2.cvtColor(_image, cv2.COLOR_RGB2BGR)
    tints = []
    for rgb in (KEPT_RGB, REMOVED_RGB):
        colour = np.empty_like(bgr)
        colour[:] = rgb[::-1]
        tints.append(cv2.addWeighted(bgr, 1 - _TINT, colour, _TINT, 0))
    return bgr, tints[0], tints[1], display_bytes(bgr)


@st.cache_resource(max_entries=16, show_spinner=False)
def heatmap_bytes(digest: str, _prob: np.ndarray) -> bytes:
    """The probability map as an inferno-coloured JPEG."""
    scaled = np.clip(np.nan_to_num(_prob) * 255 + 0.5, 0, 255).astype(np.uint8)
    return display_bytes(cv2.applyColorMap(scaled, cv2.COLORMAP_INFERNO))


@st.cache_resource(max_entries=16, show_spinner=False)
def _outline(fov_digest: str, _fov: np.ndarray) -> tuple:
    """The field of view's edge as contours; none when it is the whole image."""
    return () if _fov.all() else tuple(cv2.findContours(_fov.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0])


def overlay_bytes(image: np.ndarray, digest: str, mask: np.ndarray, removed: np.ndarray,
                  fov: np.ndarray | None = None, fov_digest: str = "") -> bytes:
    """JPEG of the photograph with kept pixels in green, removed ones in magenta and, when ``fov`` is
    given, the field of view's edge as a thin amber line."""
    bgr, kept, gone, _ = photo_layers(digest, image)
    out = bgr.copy()
    cv2.copyTo(gone, removed, out)  # uint8 masks: non-zero pixels are copied
    cv2.copyTo(kept, mask, out)
    if fov is not None and (outline := _outline(fov_digest or digest_array(fov), fov)):
        cv2.drawContours(out, outline, -1, FOV_RGB[::-1], max(1, round(max(out.shape[:2]) / 500)))
    return display_bytes(out)
