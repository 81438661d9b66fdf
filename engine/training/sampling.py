"""Which images train and which patches they give: the seeded split and the :class:`PatchSampler`.

The split and the patches draw from seeded ``numpy`` generators, so the same seed gives the same
images, patches and augmentations.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from engine.errors import UserError
from engine.training.data import check_patch_size
from engine.training.layouts import DatasetError


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded split into (train, val) indices; at least one of each when there are two or more images."""
    if n < 1:
        raise DatasetError("The data set is empty.")
    order = np.random.default_rng(seed).permutation(n).tolist()
    n_val = 0 if val_fraction <= 0 or n < 2 else min(n - 1, max(1, round(n * val_fraction)))
    return sorted(order[n_val:]), sorted(order[:n_val])


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
                 max_zoom: float = 1.0, any_angle: bool = False, groups: list[int] | None = None):
        """``groups``: the data set each image comes from; a patch then comes from each data set equally
        often (a set is drawn first, then one of its images). None: every image equally often."""
        check_patch_size([img.shape[-2:] for img in images], patch_size)
        if max_zoom < 1.0:
            raise UserError(f"max_zoom must be at least 1 (1 = no zoom), not {max_zoom}.")
        self.images, self.masks, self.stats = images, masks, stats
        self.patch, self.augment = patch_size, augment
        self.max_zoom, self.any_angle = max_zoom, any_angle
        self.centres = [np.argwhere(f > 0) if f.any() else np.argwhere(np.ones_like(f)) for f in fovs]
        self.variants: list[tuple[np.ndarray, tuple[np.ndarray, np.ndarray]] | None] = [None] * len(images)
        self.variant_share = 0.0
        self.groups = None
        if groups is not None and len(set(groups)) > 1:
            if len(groups) != len(images):
                raise UserError(f"{len(groups)} data set labels for {len(images)} images: give one per image.")
            self.groups = [[i for i, g in enumerate(groups) if g == label] for label in sorted(set(groups))]

    def _draw_image(self, rng: np.random.Generator) -> int:
        if self.groups is None:
            return int(rng.integers(len(self.images)))
        members = self.groups[int(rng.integers(len(self.groups)))]
        return members[int(rng.integers(len(members)))]

    def set_variants(self, variants: list[tuple[np.ndarray, tuple[np.ndarray, np.ndarray]] | None],
                     share: float) -> None:
        """Other versions of the images (e.g. as another camera took them: same shape, same mask and FOV),
        each with its normalisation stats, or None; a patch comes from image ``i``'s variant with
        probability ``share``. Variants never change which pixels are drawn, only their values."""
        if len(variants) != len(self.images):
            raise UserError(f"{len(variants)} variants for {len(self.images)} images: give one (or None) per image.")
        for v, img in zip(variants, self.images):
            if v is not None and v[0].shape != img.shape:
                raise UserError(f"A variant of shape {v[0].shape} cannot stand for an image of shape {img.shape}.")
        self.variants, self.variant_share = list(variants), float(share)

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
            i = self._draw_image(rng)
            img, msk = self.images[i], self.masks[i]
            mean, std = self.stats[i]
            if self.variant_share > 0 and self.variants[i] is not None and rng.random() < self.variant_share:
                img, (mean, std) = self.variants[i]
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
            xs.append((xi - mean) / std)
            ys.append(yi)
        return np.ascontiguousarray(np.stack(xs), np.float32), np.ascontiguousarray(np.stack(ys), np.float32)
