"""engine.postprocess: properties on random maps (monotone in the threshold, removed pixels, the SciPy
reference, the per-step counts) and the shape of its output."""
from __future__ import annotations

import json

import numpy as np
import pytest

from engine.postprocess import PostProcessConfig, enhanced_post_processing
from tests.postprocess_helpers import BARE, smooth_random_map


# --- properties on random maps ---------------------------------------------------------------

MONOTONE = [  # thresholding, opening, closing, size filter and hysteresis are all increasing maps;
    # the confidence and shape filters are not (a larger component can have a lower mean), so they
    # are off here.
    dict(apply_opening=True, apply_closing=True, min_component_size=20, confidence_threshold=0.0),
    dict(threshold_mode="hysteresis", hysteresis_low=0.2, min_component_size=10, confidence_threshold=0.0),
    dict(apply_opening=True, kernel_shape="cross", opening_kernel=5, confidence_threshold=0.0,
         min_component_size=0, connectivity=4),
]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("options", MONOTONE)
def test_raising_the_threshold_never_adds_pixels(seed, options):
    prob = smooth_random_map(seed)
    masks = [enhanced_post_processing(prob, threshold=t, **options).mask for t in np.linspace(0.3, 0.9, 7)]
    assert all(not (later & (1 - earlier)).any() for earlier, later in zip(masks, masks[1:]))


ALL_ON = dict(shape_filter=True, min_component_size=5, confidence_threshold=0.5, threshold=0.55)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("options", [ALL_ON, {**ALL_ON, "threshold_mode": "otsu"},
                                     {**ALL_ON, "apply_closing": False, "fill_holes_below": 0}])
def test_removed_is_disjoint_from_mask_and_within_thresholded(seed, options):
    prob = smooth_random_map(seed)
    result = enhanced_post_processing(prob, **options)
    thresholded = enhanced_post_processing(prob, **{**options, **BARE, "shape_filter": False}).mask
    assert not (result.removed & result.mask).any()
    assert np.array_equal(result.removed, thresholded & (1 - result.mask))
    if options.get("apply_closing", True) is False:  # no closing, no hole filling: mask ⊆ thresholded
        assert not (result.mask & (1 - thresholded)).any()


def target_rings_map(seed: int, size: int = 96) -> np.ndarray:
    """Noisy concentric rings around a central dot: small ring-shaped holes around islands, so
    filling them joins components."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    prob = np.zeros((size, size), np.float32)
    for cy, cx in rng.uniform(8, size - 8, (6, 2)):
        r = np.hypot(yy - cy, xx - cx)
        prob = np.maximum(prob, np.where(r < 14, 0.5 + 0.5 * np.cos(2 * np.pi * r / rng.uniform(4, 7)), 0))
    return np.clip(prob + rng.normal(0, 0.1, prob.shape), 0, 1).astype(np.float32)


HOLE_CASES = [  # (map maker, options)
    (smooth_random_map, dict(threshold=0.5, min_component_size=0, confidence_threshold=0.0, apply_opening=False,
                             fill_holes_below=40)),
    (smooth_random_map, dict(threshold=0.4, min_component_size=0, confidence_threshold=0.0, connectivity=4,
                             apply_opening=False, fill_holes_below=60)),
    (smooth_random_map, dict(threshold_mode="otsu", shape_filter=True, min_component_size=0, fill_holes_below=100)),
    (target_rings_map, dict(threshold=0.5, min_component_size=0, confidence_threshold=0.0, apply_opening=False,
                            apply_closing=False, fill_holes_below=60)),
    (target_rings_map, dict(threshold=0.5, min_component_size=0, confidence_threshold=0.0, apply_opening=False,
                            connectivity=4, fill_holes_below=60)),
    (target_rings_map, dict(threshold=0.5, min_component_size=3, fill_holes_below=60)),
]


@pytest.mark.filterwarnings("ignore:.*binary_(opening|closing).*deprecated:FutureWarning")
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("use_fov", [False, True])
@pytest.mark.parametrize("make_map, options", HOLE_CASES)
def test_matches_the_scipy_reference_and_counts_components_exactly(seed, use_fov, make_map, options):
    """Same mask as benchmarks/postprocess.py's SciPy reference (enclosed holes only), and
    components_after equal to a fresh labelling even where filled holes join an island to its ring."""
    import cv2

    from benchmarks.postprocess import reference_post_processing

    prob = make_map(seed, size=96)
    fov = np.zeros(prob.shape, np.uint8)
    cv2.circle(fov, (48, 48), 40, 1, -1)
    config = PostProcessConfig(**options)
    result = enhanced_post_processing(prob, config=config, fov=fov if use_fov else None)
    expected = reference_post_processing(prob, config, fov if use_fov else None)
    components = cv2.connectedComponents(result.mask, connectivity=config.connectivity)[0] - 1
    assert (np.array_equal(result.mask, expected), result.stats["components_after"]) == (True, components)


def test_stats_are_json_ready_and_consistent():
    prob = smooth_random_map(4)
    result = enhanced_post_processing(prob, threshold=0.5, shape_filter=True, fill_holes_below=4)
    stats = json.loads(json.dumps(result.stats))
    assert stats["pixels_kept"] == int(result.mask.sum())
    assert stats["removed_total"] == int(result.removed.sum())
    assert stats["pixels_thresholded"] == int((prob >= np.float32(0.5)).sum())
    assert set(stats["timings_ms"]) >= {"threshold", "opening", "closing", "label", "size_filter",
                                        "confidence_filter", "shape_filter", "fill_holes", "fov", "total"}
    import cv2

    assert stats["components_after"] == cv2.connectedComponents(result.mask, connectivity=8)[0] - 1


def test_output_types_and_input_left_alone():
    prob = smooth_random_map(5)
    before = prob.copy()
    result = enhanced_post_processing(prob, **BARE)
    assert (result.mask.dtype, result.mask.shape, result.removed.dtype, result.mask.flags.writeable) == (
        np.uint8, prob.shape, np.uint8, True)
    assert np.array_equal(prob, before)


IDENTITY_CASES = [
    dict(threshold=0.5),
    dict(threshold=0.4, apply_opening=False, closing_kernel=9),
    dict(threshold=0.5, opening_kernel=5, closing_kernel=7, shape_filter=True, fill_holes_below=30),
    dict(threshold_mode="otsu", closing_kernel=11, confidence_threshold=0.8),
    dict(threshold_mode="hysteresis", threshold=0.7, hysteresis_low=0.4, fill_holes_below=50),
]


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("use_fov", [False, True])
@pytest.mark.parametrize("options", IDENTITY_CASES)
def test_per_step_counts_add_up(options, use_fov, seed):
    """kept + removed per step == thresholded + added per step, the identity the docstring states."""
    import cv2

    prob = smooth_random_map(seed)
    fov = np.zeros(prob.shape, np.uint8)
    cv2.circle(fov, (32, 32), 26, 1, -1)
    stats = enhanced_post_processing(prob, fov=fov if use_fov else None, **options).stats
    assert (stats["pixels_kept"] + sum(stats["pixels_removed"].values())
            == stats["pixels_thresholded"] + sum(stats["pixels_added"].values()))


@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("scratch_shape", [None, (64, 64), (4, 4)])  # (4, 4): too small, so not used
def test_count_components_labels_only_the_bounding_box(connectivity, scratch_shape):
    import cv2

    from engine.postprocess.connectivity import count_components

    mask = (smooth_random_map(7) > 0.6).astype(np.uint8)
    mask[:10] = 0
    mask[:, -6:] = 0
    scratch = None if scratch_shape is None else np.full(scratch_shape, -1, np.int32)
    expected = cv2.connectedComponents(mask, connectivity=connectivity)[0] - 1
    assert expected > 3
    assert count_components(mask, connectivity, scratch) == expected
    assert count_components(np.zeros((8, 8), np.uint8), connectivity, scratch) == 0
