"""Data sets of fundus images with vessel masks: finding, pairing, preprocessing, sampling, synthesising.

Two folder layouts are understood:

- DRIVE: ``images/``, ``1st_manual/`` (vessels), ``mask/`` (field of view); ``2nd_manual/`` is ignored.
- generic: ``images/``, ``masks/`` (vessels), optional ``fov/``.

Files are paired by their shared identifier, after stripping annotation suffixes used by public data
sets (``21_training.tif`` ↔ ``21_manual1.gif`` ↔ ``21_training_mask.gif``; ``name.png`` ↔ ``name_mask.png``,
``name_1stHO.png``, ``name.ah.ppm``). Every image is read through :mod:`engine.imageio`.
"""
from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from engine.imageio import IMAGE_EXTENSIONS, encode_png, read_image, read_mask
from storage.paths import atomic_write_bytes

CHANNELS = ("green", "gray", "rgb")
NORMALIZATIONS = ("zscore", "unit")  # z-score inside the FOV per image, or plain /255
EXTENSIONS = tuple(sorted(set(IMAGE_EXTENSIONS) | {".bmp"}))
_SUFFIX = re.compile(
    r"[._\-](?:training|train|test|manual\d*|mask|masks|fov|gt|label|labels|seg|vessels?|annotation|"
    r"\d(?:st|nd|rd|th)_?ho|ah|vk)$",
    re.IGNORECASE,
)


class DatasetError(ValueError):
    """A data set folder cannot be used; the message names the files and says what to change."""


@dataclass(frozen=True)
class Sample:
    id: str
    image_path: Path
    mask_path: Path
    fov_path: Path | None


def identifier(filename: str) -> str:
    """The identifier shared by an image and its annotations: the stem without annotation suffixes."""
    stem = Path(filename).name
    while Path(stem).suffix.lower() in EXTENSIONS:
        stem = stem[: -len(Path(stem).suffix)]
    key = stem
    while True:
        shorter = _SUFFIX.sub("", key)
        if shorter == key or not shorter:
            break
        key = shorter
    return key


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS
                  and not p.name.startswith("."))


def _names(paths: list[Path], limit: int = 5) -> str:
    shown = ", ".join(p.name for p in paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def _by_id(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in _image_files(folder):
        key = identifier(path.name).lower()
        if key in found:
            raise DatasetError(
                f"{found[key].name} and {path.name} in {folder} have the same identifier {identifier(path.name)!r}: "
                "keep one file per image in each folder."
            )
        found[key] = path
    return found


def _header_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as img:
            return img.size
    except Exception:
        raise DatasetError(f"{path.name} in {path.parent} is not a readable image: replace or remove it.") from None


class Dataset:
    """Image / vessel-mask / FOV triples found by :func:`load_dataset`, with an in-memory cache.

    ``arrays(i, channel, clahe)`` decodes and preprocesses sample ``i`` once and caches the result.
    """

    def __init__(self, root: Path, layout: str, pairs: list[Sample]):
        self.root = root
        self.layout = layout
        self.pairs = pairs
        self._cache: dict[tuple, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.pairs)

    def summary(self) -> dict[str, Any]:
        sizes = sorted({_header_size(s.image_path) for s in self.pairs})
        return {
            "path": str(self.root), "layout": self.layout, "n_images": len(self.pairs),
            "with_fov": sum(s.fov_path is not None for s in self.pairs),
            "sizes": [f"{w}x{h}" for w, h in sizes], "ids": [s.id for s in self.pairs],
        }

    def raw(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(image uint8 RGB, vessel mask uint8 {0,1}, FOV uint8 {0,1}) of sample ``i``."""
        s = self.pairs[i]
        image = read_image(s.image_path)
        mask = read_mask(s.mask_path)
        fov = read_mask(s.fov_path) if s.fov_path else np.ones(mask.shape, np.uint8)
        if not fov.any():
            raise DatasetError(f"The field-of-view mask {s.fov_path.name} in {s.fov_path.parent} is all zero, so "
                               f"{s.image_path.name} would have no pixel to learn from or score: replace it with the "
                               "mask made for this image, or remove the fov/ folder to use whole images.")
        return image, mask, fov

    def arrays(self, i: int, channel: str = "green", clahe: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(preprocessed float32 (C,H,W) in [0,1], mask, fov) of sample ``i``, decoded once and cached."""
        key = (i, channel, bool(clahe))
        with self._lock:
            if key not in self._cache:
                image, mask, fov = self.raw(i)
                self._cache[key] = (prepare_channels(image, channel, clahe), mask, fov)
            return self._cache[key]


def _resolve_root(path: Path) -> Path:
    """The folder that holds images/: ``path`` itself, its ``training/`` (DRIVE's download), or the one
    subfolder (up to two levels down) that holds it, as zips made of a whole folder often nest."""
    if not path.is_dir():
        raise DatasetError(f"The data set folder {path} does not exist: check the path.")
    if not (path / "images").is_dir() and (path / "training" / "images").is_dir():
        return path / "training"  # the DRIVE download's top folder
    root = path
    for _ in range(2):
        if (root / "images").is_dir():
            break
        subfolders = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "__MACOSX"))]
        if len(subfolders) != 1:
            break
        root = subfolders[0]
        if not (root / "images").is_dir() and (root / "training" / "images").is_dir():
            root = root / "training"
    return root if (root / "images").is_dir() else path


def load_dataset(path: str | Path) -> Dataset:
    """Find the image / mask / FOV triples in ``path`` (DRIVE or generic layout) and check them."""
    root = _resolve_root(Path(path).expanduser())
    if not (root / "images").is_dir():
        raise DatasetError(
            f"{root} has no images/ folder: put the photographs in images/ and the vessel masks in masks/ "
            "(optionally the field-of-view masks in fov/), or use the DRIVE layout (images/, 1st_manual/, mask/)."
        )
    if (root / "1st_manual").is_dir():
        layout, mask_dir, fov_dir = "drive", root / "1st_manual", root / "mask"
    elif (root / "masks").is_dir():
        layout, mask_dir, fov_dir = "generic", root / "masks", root / "fov"
    else:
        raise DatasetError(f"{root} has images/ but no masks/ (or DRIVE's 1st_manual/) folder with the vessel masks.")
    images, masks = _by_id(root / "images"), _by_id(mask_dir)
    fovs = _by_id(fov_dir) if fov_dir.is_dir() else None
    if not images:
        nested = sorted(p.name + "/" for p in (root / "images").iterdir() if p.is_dir() and not p.name.startswith("."))
        if nested:
            raise DatasetError(f"{root / 'images'} holds no images directly, only the folder(s) {', '.join(nested[:5])}: "
                               "put the photographs straight into images/ (and their masks into masks/).")
        raise DatasetError(f"{root / 'images'} holds no images ({', '.join(EXTENSIONS)}): the data set is empty.")
    problems = []
    for what, folder, table in (("vessel mask", mask_dir, masks), ("field-of-view mask", fov_dir, fovs)):
        if table is None:
            continue
        missing = [images[k] for k in images if k not in table]
        orphans = [table[k] for k in table if k not in images]
        if missing:
            problems.append(f"no {what} in {folder.name}/ for {_names(missing)}")
        if orphans:
            problems.append(f"no image in images/ for {_names(orphans)} in {folder.name}/")
    if problems:
        raise DatasetError("Unpaired files: " + "; ".join(problems) + ". Add or rename the files so that they pair.")
    pairs = [Sample(identifier(images[k].name), images[k], masks[k], fovs[k] if fovs is not None else None)
             for k in sorted(images)]
    mismatched = []
    for s in pairs:
        size = _header_size(s.image_path)
        for other in (s.mask_path, s.fov_path):
            if other is not None and _header_size(other) != size:
                w, h = _header_size(other)
                mismatched.append(f"{other.name} is {w}×{h} but {s.image_path.name} is {size[0]}×{size[1]}")
    if mismatched:
        raise DatasetError("Size mismatch: " + "; ".join(mismatched[:5]) + ". Use the masks made for these images.")
    return Dataset(root, layout, pairs)


# --------------------------------------------------------------------------- preprocessing

def prepare_channels(image: np.ndarray, channel: str = "green", clahe: bool = True) -> np.ndarray:
    """Select the channel(s) of an RGB uint8 image and apply CLAHE; float32 (C, H, W) in [0, 1]."""
    if channel == "green":
        planes = [image[:, :, 1]]
    elif channel == "gray":
        planes = [cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)]
    elif channel == "rgb":
        planes = [image[:, :, c] for c in range(3)]
    else:
        raise ValueError(f"Unknown channel {channel!r}: choose one of {', '.join(CHANNELS)}.")
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
        raise ValueError(f"Unknown normalization {normalization!r}: choose one of {', '.join(NORMALIZATIONS)}.")
    inside = fov.astype(bool)
    pixels = x[:, inside] if inside.sum() > 16 else x.reshape(c, -1)
    mean = pixels.mean(axis=1).reshape(c, 1, 1)
    std = np.maximum(pixels.std(axis=1), 1e-3).reshape(c, 1, 1)
    return mean.astype(np.float32), std.astype(np.float32)


def estimate_fov(image: np.ndarray) -> np.ndarray:
    """A field-of-view mask for an image without one: pixels brighter than the dark border, or all."""
    bright = image.max(axis=2) if image.ndim == 3 else image
    fov = (bright > 20).astype(np.uint8)
    fov = cv2.morphologyEx(fov, cv2.MORPH_OPEN, np.ones((5, 5), np.uint8))
    return fov if fov.mean() > 0.2 else np.ones(bright.shape, np.uint8)


def preprocess(image: np.ndarray, fov: np.ndarray | None = None, channel: str = "green", clahe: bool = True,
               normalization: str = "zscore") -> np.ndarray:
    """Model input float32 (C, H, W) from an RGB uint8 image, exactly as in training."""
    fov = estimate_fov(image) if fov is None else fov
    x = prepare_channels(image, channel, clahe)
    mean, std = normalization_stats(x, fov, normalization)
    return (x - mean) / std


# --------------------------------------------------------------------------- splitting and sampling

def split_indices(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded split into (train, val) indices; at least one of each when there are two or more images."""
    if n < 1:
        raise DatasetError("The data set is empty.")
    order = np.random.default_rng(seed).permutation(n).tolist()
    n_val = 0 if val_fraction <= 0 or n < 2 else min(n - 1, max(1, round(n * val_fraction)))
    return sorted(order[n_val:]), sorted(order[:n_val])


def check_patch_size(sizes: "Dataset | list[tuple[int, int]]", patch_size: int) -> None:
    """Refuse a training patch larger than the smallest image (it would be mostly padding).

    ``sizes``: a :class:`Dataset` (its headers are read) or (height, width) pairs.
    """
    if isinstance(sizes, Dataset):
        found = [(_header_size(s.image_path)[::-1], s.image_path.name) for s in sizes.pairs]
    else:
        found = [(tuple(int(v) for v in hw), None) for hw in sizes]
    if not found:
        return
    (h, w), name = min(found, key=lambda item: min(item[0]))
    if patch_size > min(h, w):
        which = f" ({name}, {w}×{h} pixels)" if name else f" ({w}×{h} pixels)"
        fit = max(16, min(h, w) // 16 * 16)
        raise DatasetError(f"patch_size {patch_size} is larger than the smallest image{which}: "
                           f"set patch_size to {fit} or less, or use larger images.")


class PatchSampler:
    """Random training patches with flips, rotations, zoom and brightness/contrast/gamma jitter.

    ``images`` are (C,H,W) float in [0,1] (before normalisation), with masks, FOVs and per-image
    normalisation stats. Patch centres are drawn inside the FOV. With ``augment``, a patch is rotated
    by any angle (``any_angle``; else by a multiple of 90°) and zoomed by a factor drawn log-uniformly
    from [1/``max_zoom``, ``max_zoom``] in one affine warp, the mask warped alike and thresholded at 0.5
    so it stays binary; without zoom or free rotation it is a plain crop.
    """

    def __init__(self, images: list[np.ndarray], masks: list[np.ndarray], fovs: list[np.ndarray],
                 stats: list[tuple[np.ndarray, np.ndarray]], patch_size: int, augment: bool = True,
                 max_zoom: float = 1.0, any_angle: bool = False):
        check_patch_size([img.shape[-2:] for img in images], patch_size)
        if max_zoom < 1.0:
            raise ValueError(f"max_zoom must be at least 1 (1 = no zoom), not {max_zoom}.")
        self.images, self.masks, self.stats = images, masks, stats
        self.patch, self.augment = patch_size, augment
        self.max_zoom, self.any_angle = max_zoom, any_angle
        self.centres = [np.argwhere(f > 0) if f.any() else np.argwhere(np.ones_like(f)) for f in fovs]

    def _crop(self, a: np.ndarray, y: int, x: int) -> np.ndarray:
        p = self.patch
        h, w = a.shape[-2:]
        pad = [(0, 0)] * (a.ndim - 2) + [(0, max(0, p - h)), (0, max(0, p - w))]
        if pad[-1][1] or pad[-2][1]:
            a = np.pad(a, pad, mode="reflect" if min(h, w) > p // 2 else "edge")
        return a[..., y:y + p, x:x + p]

    def _warp(self, img: np.ndarray, msk: np.ndarray, cy: int, cx: int, angle: float,
              zoom: float) -> tuple[np.ndarray, np.ndarray]:
        """The patch centred on (cy, cx), rotated by ``angle`` degrees and zoomed; reflected at the image's edge."""
        p = self.patch
        m = cv2.getRotationMatrix2D((float(cx), float(cy)), angle, zoom)
        m[:, 2] += (p / 2 - cx, p / 2 - cy)

        def warp(a: np.ndarray) -> np.ndarray:
            return cv2.warpAffine(np.ascontiguousarray(a, np.float32), m, (p, p), flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_REFLECT_101)
        return np.stack([warp(c) for c in img]), (warp(msk) > 0.5)[None].astype(np.float32)

    def sample(self, batch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        p = self.patch
        geometric = self.augment and (self.max_zoom > 1.0 or self.any_angle)
        xs, ys = [], []
        for _ in range(batch_size):
            i = int(rng.integers(len(self.images)))
            img, msk = self.images[i], self.masks[i]
            cy, cx = self.centres[i][rng.integers(len(self.centres[i]))]
            if geometric:
                zoom = math.exp(rng.uniform(math.log(1 / self.max_zoom), math.log(self.max_zoom))) \
                    if self.max_zoom > 1.0 else 1.0
                angle = rng.uniform(0, 360) if self.any_angle else 0.0
                xi, yi = self._warp(img, msk, cy, cx, angle, zoom)
            else:
                h, w = img.shape[-2:]
                y = int(np.clip(cy - p // 2, 0, max(0, h - p)))
                x = int(np.clip(cx - p // 2, 0, max(0, w - p)))
                xi, yi = self._crop(img, y, x).copy(), self._crop(msk, y, x)[None].astype(np.float32)
            if self.augment:
                gamma = math.exp(rng.uniform(-0.25, 0.25))
                contrast, brightness = rng.uniform(0.85, 1.15), rng.uniform(-0.08, 0.08)
                xi = np.clip(xi, 0, 1) ** gamma
                mid = xi.mean()
                xi = (xi - mid) * contrast + mid + brightness
                if not self.any_angle:
                    k = int(rng.integers(4))
                    xi, yi = np.rot90(xi, k, (1, 2)), np.rot90(yi, k, (1, 2))
                if rng.random() < 0.5:
                    xi, yi = xi[:, :, ::-1], yi[:, :, ::-1]
            mean, std = self.stats[i]
            xs.append((xi - mean) / std)
            ys.append(yi)
        return np.ascontiguousarray(np.stack(xs), np.float32), np.ascontiguousarray(np.stack(ys), np.float32)


# --------------------------------------------------------------------------- synthetic data

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
        raise ValueError(f"n_images must be between 1 and 1000, not {n_images}.")
    if not 32 <= int(size) <= 2048:
        raise ValueError(f"size must be between 32 and 2048 pixels, not {size}.")
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    for i in range(int(n_images)):
        image, mask, fov = synthetic_sample(int(size), rng)
        name = f"synth_{i + 1:03d}.png"
        atomic_write_bytes(out / "images" / name, encode_png(image))
        atomic_write_bytes(out / "masks" / name, encode_png(mask))
        atomic_write_bytes(out / "fov" / name, encode_png(fov))
    return out
