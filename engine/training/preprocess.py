"""Preprocessing a fundus photograph into the model's input: the channel(s), CLAHE and normalisation.

Training (:class:`~engine.training.data.Dataset`, :class:`~engine.training.sampling.PatchSampler`) and
prediction (:mod:`engine.inference.predict`) prepare images the same way, through these functions.
"""
from __future__ import annotations

import cv2
import numpy as np

from engine.errors import UserError
from engine.fov import estimate_fov

CHANNELS = ("green", "gray", "rgb")
NORMALIZATIONS = ("zscore", "unit")  # z-score inside the FOV per image, or plain /255


def prepare_channels(image: np.ndarray, channel: str = "green", clahe: bool = True) -> np.ndarray:
    """Select the channel(s) of an RGB uint8 image and apply CLAHE; float32 (C, H, W) in [0, 1]."""
    if channel == "green":
        planes = [image[:, :, 1]]
    elif channel == "gray":
        planes = [cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)]
    elif channel == "rgb":
        planes = [image[:, :, c] for c in range(3)]
    else:
        raise UserError(f"Unknown channel {channel!r}: choose one of {', '.join(CHANNELS)}.")
    if clahe:
        op = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))
        planes = [op.apply(np.ascontiguousarray(p)) for p in planes]
    return np.stack(planes).astype(np.float32) / 255.0


def normalization_stats(x: np.ndarray, fov: np.ndarray, normalization: str = "zscore") -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (mean, std) to subtract/divide by, shape (C, 1, 1); statistics come from FOV pixels."""
    c = x.shape[0]
    if normalization == "unit":
        return np.zeros((c, 1, 1), np.float32), np.ones((c, 1, 1), np.float32)
    if normalization != "zscore":
        raise UserError(f"Unknown normalization {normalization!r}: choose one of {', '.join(NORMALIZATIONS)}.")
    inside = fov.astype(bool)
    pixels = x[:, inside] if inside.sum() > 16 else x.reshape(c, -1)
    mean = pixels.mean(axis=1).reshape(c, 1, 1)
    std = np.maximum(pixels.std(axis=1), 1e-3).reshape(c, 1, 1)
    return mean.astype(np.float32), std.astype(np.float32)


def preprocess(image: np.ndarray, fov: np.ndarray | None = None, channel: str = "green", clahe: bool = True,
               normalization: str = "zscore") -> np.ndarray:
    """Model input float32 (C, H, W) from an RGB uint8 image, exactly as in training."""
    fov = estimate_fov(image) if fov is None else fov
    x = prepare_channels(image, channel, clahe)
    mean, std = normalization_stats(x, fov, normalization)
    return (x - mean) / std

