"""Camera shifts: what another fundus camera does to a photograph, drawn at random for training.

Every shift works on a whole RGB uint8 photograph (H, W, 3) *before* channel selection, CLAHE and
normalisation, so the model learns from what the preprocessing leaves of it, exactly as a photograph
of another camera reaches the model at inference. Shifts are photometric: the vessel mask and the
field of view stay valid. Scale and rotation are geometric and live in the patch sampler
(``max_zoom``, ``any_angle``).

``SHIFTS`` names the kinds; ``apply_shift(image, name, strength, rng)`` applies one with a given strength
in [0, 1] (``benchmarks/cameras.py`` uses fixed strengths); ``random_camera(image, rng)`` applies each kind
with probability one half and a random strength, as training does.
"""
from __future__ import annotations

from typing import Callable

import cv2
import numpy as np

from engine.errors import UserError

# kind -> what it imitates (the words the benchmark and the Train page's help use)
SHIFTS = {
    "colour": "a colour and hue cast (white balance, sensor)",
    "gamma": "gamma and contrast (exposure, tone curve)",
    "illumination": "uneven illumination (a vignette or a gradient across the field)",
    "blur": "blur (focus, optics)",
    "sharpen": "sharpening (in-camera processing)",
    "jpeg": "JPEG compression, quality 95 down to 50",
    "noise": "sensor noise",
}


def _colour(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    gains = 1.0 + strength * rng.uniform(-0.3, 0.3, size=3)  # per-channel white balance
    out = np.clip(image.astype(np.float32) * gains, 0, 255).astype(np.uint8)
    hsv = cv2.cvtColor(out, cv2.COLOR_RGB2HSV)
    hue = int(round(strength * rng.uniform(-10, 10)))  # OpenCV hue runs 0..179 (2° per unit)
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + hue) % 180
    sat = 1.0 + strength * rng.uniform(-0.35, 0.35)
    hsv[..., 1] = np.clip(hsv[..., 1] * sat, 0, 255).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def _gamma(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    gamma = float(np.exp(strength * rng.uniform(-0.5, 0.5)))  # 0.61 .. 1.65 at full strength
    contrast = 1.0 + strength * rng.uniform(-0.4, 0.3)
    brightness = strength * rng.uniform(-40, 25)
    lut = ((np.arange(256, dtype=np.float32) / 255.0) ** gamma * 255.0).astype(np.float32)
    x = lut[image]
    # the change of contrast and brightness fades out in the dark surround, which stays dark as on any camera
    weight = np.clip(x.max(axis=2, keepdims=True) / 40.0, 0, 1)
    mid = float(x[weight[..., 0] >= 1].mean()) if (weight >= 1).any() else float(x.mean())
    return np.clip(x + weight * ((x - mid) * (contrast - 1) + brightness), 0, 255).astype(np.uint8)


def _illumination(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    h, w = image.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy, xx = (yy - h / 2) / (h / 2), (xx - w / 2) / (w / 2)
    if rng.random() < 0.5:  # vignette: darker towards the rim, centred somewhere near the middle
        cy, cx = rng.uniform(-0.3, 0.3, size=2)
        r2 = (yy - cy) ** 2 + (xx - cx) ** 2
        field = 1.0 - strength * rng.uniform(0.25, 0.6) * np.clip(r2, 0, 2) / 2
    else:  # a linear gradient in a random direction
        angle = rng.uniform(0, 2 * np.pi)
        ramp = (np.cos(angle) * xx + np.sin(angle) * yy) / 2  # -0.7 .. 0.7
        field = 1.0 + strength * rng.uniform(0.3, 0.6) * ramp
    return np.clip(image.astype(np.float32) * field[..., None], 0, 255).astype(np.uint8)


def _blur(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    scale = max(image.shape[:2]) / 584  # the kernel grows with the photograph, DRIVE's height being 584
    sigma = max(0.3, strength * rng.uniform(0.6, 1.4) * scale)
    return cv2.GaussianBlur(image, (0, 0), sigma)


def _sharpen(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    scale = max(image.shape[:2]) / 584
    blurred = cv2.GaussianBlur(image, (0, 0), 1.5 * scale).astype(np.float32)
    amount = strength * rng.uniform(0.5, 1.5)  # unsharp masking
    return np.clip(cv2.addWeighted(image.astype(np.float32), 1 + amount, blurred, -amount, 0),
                   0, 255).astype(np.uint8)


def _jpeg(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    quality = int(round(95 - strength * rng.uniform(0.5, 1.0) * 45))  # 95 .. 50
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) if ok else image


def _noise(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    x = image.astype(np.float32)
    sigma = strength * rng.uniform(2.0, 8.0)
    cv2.setRNGSeed(int(rng.integers(2**31 - 1)))
    # shot noise grows with the signal, read noise does not
    normal = np.empty(x.shape, np.float32)
    cv2.randn(normal, 0.0, 1.0)  # OpenCV's generator is several times faster; seeded from rng below
    noisy = x + normal * (sigma * np.sqrt(np.maximum(x, 1) / 128) + sigma / 3)
    return np.clip(noisy, 0, 255).astype(np.uint8)


_APPLY: dict[str, Callable[[np.ndarray, float, np.random.Generator], np.ndarray]] = {
    "colour": _colour, "gamma": _gamma, "illumination": _illumination, "blur": _blur, "sharpen": _sharpen, "jpeg": _jpeg,
    "noise": _noise,
}


def apply_shift(image: np.ndarray, name: str, strength: float, rng: np.random.Generator) -> np.ndarray:
    """``image`` (uint8 RGB (H, W, 3)) as a camera of kind ``name`` would take it.

    Args:
        image: the photograph; not modified.
        name: one of :data:`SHIFTS`.
        strength: 0 (no change) .. 1 (the strongest shift trained on).
        rng: draws the shift's parameters (direction of a cast, position of a vignette, ...).

    Returns:
        A new uint8 RGB array of the same shape.

    Raises:
        UserError: an unknown ``name`` or a ``strength`` outside [0, 1].
    """
    if name not in _APPLY:
        raise UserError(f"Unknown camera shift {name!r}: choose one of {', '.join(SHIFTS)}.")
    if not 0.0 <= strength <= 1.0:
        raise UserError(f"strength must be between 0 and 1, not {strength}.")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise UserError(f"A camera shift needs an RGB uint8 image (H, W, 3), not {image.dtype} {image.shape}.")
    return _APPLY[name](image, strength, rng)


def random_camera(image: np.ndarray, rng: np.random.Generator, probability: float = 0.5) -> np.ndarray:
    """``image`` through a random camera: each kind of :data:`SHIFTS` with ``probability``, at a random
    strength, in a random order (JPEG always last, as a camera saves last; blur or sharpening, not both)."""
    kinds = [k for k in SHIFTS if k not in ("jpeg", "sharpen") and rng.random() < probability]
    if "blur" in kinds and rng.random() < 0.5:  # a camera blurs or sharpens, not both
        kinds[kinds.index("blur")] = "sharpen"
    rng.shuffle(kinds)
    if rng.random() < probability:
        kinds.append("jpeg")
    out = image
    for kind in kinds:
        out = _APPLY[kind](out, float(rng.uniform(0.3, 1.0)), rng)
    return out


def camera_variants(images: list[np.ndarray], fovs: list[np.ndarray], channel: str, clahe: bool,
                    normalization: str, rng: np.random.Generator) -> list[tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]]:
    """One random-camera version of each photograph, preprocessed as training preprocesses the originals.

    Args:
        images: uint8 RGB photographs (H, W, 3) at the training scale.
        fovs: their field-of-view masks (H, W), for the normalisation statistics.
        channel, clahe, normalization: the run's preprocessing (``TrainingConfig``).
        rng: draws the cameras.

    Returns:
        Per photograph (float32 (C, H, W) in [0, 1], (mean, std)), as ``PatchSampler.set_variants`` takes them.
    """
    from engine.training.preprocess import normalization_stats, prepare_channels

    out = []
    for image, fov in zip(images, fovs):
        x = prepare_channels(random_camera(image, rng), channel, clahe)
        out.append((x, normalization_stats(x, fov, normalization)))
    return out
