"""Synthetic fundus-like images with known vessel trees, for tests, demos and the CLI's ``synthesize``."""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from engine.errors import UserError

from engine.imageio import encode_png
from storage.paths import atomic_write_bytes

def _draw_tree(canvas: np.ndarray, contrast: np.ndarray, rng: np.random.Generator, start: tuple[float, float],
               angle: float, width: float, depth: int, size: int) -> None:
    """Random-walk vessel with branches; draws width into ``canvas`` and contrast into ``contrast``."""
    y, x = start
    step = size / 60
    strength = rng.uniform(0.6, 1.0) * min(1.0, 0.35 + width / 4)
    length = int(rng.uniform(18, 40) * (0.8 if depth else 1.2))
    for n in range(length):
        angle += rng.normal(0, 0.18)
        ny, nx = y + step * math.sin(angle), x + step * math.cos(angle)
        thick = max(1, int(round(width)))
        cv2.line(canvas, (int(x * 8), int(y * 8)), (int(nx * 8), int(ny * 8)), 255, thick, cv2.LINE_AA, shift=3)
        cv2.line(contrast, (int(x * 8), int(y * 8)), (int(nx * 8), int(ny * 8)), float(strength), thick, cv2.LINE_AA,
                 shift=3)
        y, x = ny, nx
        if not (0 <= y < size and 0 <= x < size):
            return
        width = max(0.8, width * 0.985)
        if depth < 4 and n > 4 and rng.random() < 0.09:
            side = rng.choice([-1, 1])
            _draw_tree(canvas, contrast, rng, (y, x), angle + side * rng.uniform(0.5, 1.1), width * 0.7, depth + 1, size)


def synthetic_sample(size: int = 256, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One synthetic fundus-like (image RGB uint8, vessel mask {0,1}, circular FOV {0,1})."""
    rng = rng or np.random.default_rng()
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c = (size - 1) / 2
    r = np.hypot(yy - c, xx - c) / (size / 2)
    fov = (r < 0.94).astype(np.uint8)
    disc_y, disc_x = c + rng.uniform(-0.1, 0.1) * size, c + rng.choice([-1, 1]) * rng.uniform(0.25, 0.35) * size
    vessels = np.zeros((size, size), np.uint8)
    strength = np.zeros((size, size), np.float32)
    for k in range(int(rng.integers(4, 7))):
        base = k * 2 * math.pi / 6 + rng.normal(0, 0.3)
        _draw_tree(vessels, strength, rng, (disc_y, disc_x), base, rng.uniform(2.0, 4.0) * size / 256, 0, size)
    mask = (vessels >= 128).astype(np.uint8) * fov
    soft = cv2.GaussianBlur(vessels.astype(np.float32) / 255.0, (0, 0), 0.7) * strength
    vignette = np.clip(1.0 - 0.55 * r**2, 0, 1)
    disc = np.exp(-(((yy - disc_y) ** 2 + (xx - disc_x) ** 2) / (2 * (0.06 * size) ** 2)))
    texture = cv2.GaussianBlur(rng.normal(0, 1, (size, size)).astype(np.float32), (0, 0), size / 40)
    texture /= texture.std() + 1e-6
    tint = rng.uniform(0.85, 1.15, 3)
    base = np.stack([0.78, 0.42, 0.22]) * tint
    out = np.empty((size, size, 3), np.float32)
    for ch in range(3):
        level = base[ch] * vignette * (1 + 0.05 * texture) + 0.45 * disc
        level *= 1 - soft * (0.18, 0.45, 0.3)[ch]
        out[:, :, ch] = level + rng.normal(0, 0.02, (size, size))
    image = np.clip(out * 255 * fov[:, :, None], 0, 255).astype(np.uint8)
    return image, mask, fov


def make_synthetic_dataset(out_dir: str | Path, n_images: int = 12, size: int = 256, seed: int = 0) -> Path:
    """Write ``n_images`` synthetic samples in the generic layout (images/, masks/, fov/); returns ``out_dir``."""
    if not 1 <= int(n_images) <= 1000:
        raise UserError(f"n_images must be between 1 and 1000, not {n_images}.")
    if not 32 <= int(size) <= 2048:
        raise UserError(f"size must be between 32 and 2048 pixels, not {size}.")
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    for i in range(int(n_images)):
        image, mask, fov = synthetic_sample(int(size), rng)
        name = f"synth_{i + 1:03d}.png"
        atomic_write_bytes(out / "images" / name, encode_png(image))
        atomic_write_bytes(out / "masks" / name, encode_png(mask))
        atomic_write_bytes(out / "fov" / name, encode_png(fov))
    return out
