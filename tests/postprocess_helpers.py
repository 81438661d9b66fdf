"""Shared by tests/test_postprocess*.py: drawn and random probability maps, and ``run`` with every step off
but the one a test switches on."""
from __future__ import annotations

import numpy as np

from engine.postprocess import PostProcessResult, enhanced_post_processing


# Every step off: each test switches on only the step it checks.
BARE = dict(apply_opening=False, apply_closing=False, min_component_size=0, confidence_threshold=0.0)


def blank(h: int = 64, w: int = 64) -> np.ndarray:
    return np.zeros((h, w), dtype=np.float32)


def run(prob, **options) -> PostProcessResult:
    return enhanced_post_processing(prob, **{**BARE, **options})


def smooth_random_map(seed: int, size: int = 64) -> np.ndarray:
    """A vessel-ish random probability map: smoothed noise stretched to [0, 1]."""
    import cv2

    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.random((size, size)).astype(np.float32), (0, 0), 1.5)
    return ((noise - noise.min()) / (noise.max() - noise.min())).astype(np.float32)


def strong_and_weak():
    p = blank()
    p[20:23, 5:60] = 0.9  # confident vessel
    p[45:48, 5:60] = 0.65  # passes threshold, mean 0.65
    return p
