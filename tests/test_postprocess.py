"""engine.postprocess: each step on drawn maps, properties on random maps, config and bad input."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from engine.postprocess import PostProcessConfig, PostProcessResult, enhanced_post_processing
from tests.conftest import ROOT
from engine.errors import UserError

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


# --- one table row per step ----------------------------------------------------------------

def _blobs_small_and_large():
    p = blank()
    p[5:8, 5:8] = 0.9  # 9 px
    p[30:35, 30:35] = 0.9  # 25 px
    return p


def _line_and_blob():
    p = blank()
    p[10, 5:45] = 0.9  # 1x40 line: elongation 40
    p[30:35, 20:28] = 0.9  # 5x8 blob, 40 px, 5 px wide: vessel ratio 40 / 5**2 = 1.6
    return p


def _specks_and_block():
    p = blank()
    p[[3, 20, 40, 60], [50, 3, 58, 20]] = 0.9  # isolated 1-px specks
    p[30:37, 30:37] = 0.9
    return p


def _gap_line():
    p = blank()
    p[30:33, 5:60] = 0.9
    p[30:33, 32] = 0.0  # a 1-px gap
    return p


def _strong_and_weak():
    p = blank()
    p[20:23, 5:60] = 0.9  # confident vessel
    p[45:48, 5:60] = 0.65  # passes threshold, mean 0.65
    return p


def _ring(hole: int):
    p = blank()
    p[20:20 + hole + 4, 20:20 + hole + 4] = 0.9
    p[22:22 + hole, 22:22 + hole] = 0.0
    return p


def _notch_at_border():
    p = blank()
    p[0:5, 10:15] = 0.9
    p[0:4, 11:14] = 0.0  # a 12-px background notch that opens onto row 0
    return p


def _corner_cut_off():
    p = blank()
    p[0:6, 5] = 0.9
    p[5, 0:6] = 0.9  # a 25-px background corner enclosed by a vessel and two image edges
    return p


STEP_CASES = [
    # (name, map, options, pixels that must be 1, pixels that must be 0)
    ("size filter drops a 9-px blob", _blobs_small_and_large(), dict(min_component_size=20),
     [(32, 32)], [(6, 6)]),
    ("size filter off keeps it", _blobs_small_and_large(), dict(min_component_size=0), [(32, 32), (6, 6)], []),
    ("shape filter keeps a line, drops a blob of the same area", _line_and_blob(),
     dict(shape_filter=True, min_elongation=3.0), [(10, 5), (10, 44)], [(32, 24)]),
    ("shape filter keeps the blob at a lower minimum ratio", _line_and_blob(),
     dict(shape_filter=True, min_elongation=1.5), [(10, 5), (32, 24)], []),  # 40 px / 5 px wide: 1.6
    ("opening removes 1-px specks", _specks_and_block(), dict(apply_opening=True, kernel_shape="rect"),
     [(30, 30), (36, 36)], [(3, 50), (20, 3), (40, 58), (60, 20)]),
    ("opening off keeps specks", _specks_and_block(), dict(), [(3, 50), (33, 33)], []),
    ("closing joins a 1-px gap", _gap_line(), dict(apply_closing=True, kernel_shape="rect"), [(31, 32)], []),
    ("confidence filter drops a low-mean component", _strong_and_weak(),
     dict(confidence_threshold=0.8, threshold=0.6), [(21, 30)], [(46, 30)]),
    ("confidence filter off keeps it", _strong_and_weak(), dict(threshold=0.6), [(21, 30), (46, 30)], []),
    ("hole filling fills a 9-px hole", _ring(3), dict(fill_holes_below=10), [(23, 23)], []),
    ("hole filling leaves a hole of exactly the limit", _ring(3), dict(fill_holes_below=9), [], [(23, 23)]),
    ("hole filling leaves a large hole", _ring(10), dict(fill_holes_below=50), [], [(26, 26)]),
    ("hole filling leaves a small notch open to the image border", _notch_at_border(),
     dict(fill_holes_below=50), [(4, 12)], [(0, 12), (2, 12)]),
    ("hole filling leaves a corner that a vessel cuts off", _corner_cut_off(), dict(fill_holes_below=50),
     [(5, 3)], [(0, 0), (2, 2)]),
]


@pytest.mark.parametrize("name, prob, options, on, off", STEP_CASES, ids=[c[0] for c in STEP_CASES])
def test_each_step(name, prob, options, on, off):
    mask = run(prob, **options).mask
    assert [mask[p] for p in on] + [mask[p] for p in off] == [1] * len(on) + [0] * len(off)


def test_closing_makes_one_component():
    result = run(_gap_line(), apply_closing=True, kernel_shape="rect")
    assert (result.stats["components_before"], result.stats["pixels_added"]["closing"]) == (1, 3)


@pytest.mark.parametrize("connectivity, filled", [(8, 1), (4, 0)])
def test_hole_behind_a_diagonal_gap_follows_connectivity(connectivity, filled):
    p = blank()
    p[20:25, 20:25] = 0.9
    p[21:24, 21:24] = 0.0  # 9-px hole inside a 1-px wall ...
    p[20, 20] = 0.0  # ... whose corner is open only diagonally: a leak for 8-connected background only
    assert run(p, fill_holes_below=10, connectivity=connectivity).mask[22, 22] == filled


@pytest.mark.parametrize("below, filled, components_after", [(10, 8, 1), (8, 0, 2)])
def test_filling_the_hole_around_an_island_joins_them(below, filled, components_after):
    p = _ring(3)
    p[23, 23] = 0.9  # a 1-px island in the middle of the 9-px hole, which keeps 8 background pixels
    stats = run(p, fill_holes_below=below).stats
    assert (stats["pixels_added"]["holes"], stats["components_before"], stats["components_after"]) == (
        filled, 2, components_after)


def _branches():
    p = blank()
    p[10:13, 5:60] = 0.9  # strong vessel
    p[13:40, 30] = 0.45  # faint branch touching it
    p[30:60, 50] = 0.45  # faint segment on its own
    return p


@pytest.mark.parametrize(
    "options, attached, detached",
    [
        (dict(threshold_mode="hysteresis", threshold=0.8, hysteresis_low=0.3), 1, 0),
        (dict(threshold_mode="fixed", threshold=0.8), 0, 0),
        (dict(threshold_mode="fixed", threshold=0.3), 1, 1),
        (dict(threshold_mode="hysteresis", threshold=0.8, hysteresis_low=0.5), 0, 0),
    ],
)
def test_hysteresis_keeps_attached_faint_branch_only(options, attached, detached):
    mask = run(_branches(), **options).mask
    assert (mask[35, 30], mask[45, 50]) == (attached, detached)


@pytest.mark.parametrize("connectivity, kept", [(8, 1), (4, 0)])
def test_hysteresis_follows_connectivity(connectivity, kept):
    p = blank()
    p[10, 10] = 0.9
    p[11, 11] = 0.4  # touches the seed only diagonally
    assert run(p, threshold_mode="hysteresis", threshold=0.8, hysteresis_low=0.3,
               connectivity=connectivity).mask[11, 11] == kept


def _scipy_hysteresis(prob, low, high, connectivity):
    from scipy import ndimage as ndi

    structure = ndi.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    labels, n = ndi.label(prob >= np.float32(low), structure=structure)
    seeded = np.zeros(n + 1, dtype=bool)
    seeded[labels[prob >= np.float32(high)]] = True
    seeded[0] = False
    return seeded[labels].astype(np.uint8)


def _dots(seed: int, size: int = 160) -> np.ndarray:
    """1,600 separate seeded specks in weak noise: too many fills, so labelling takes over."""
    rng = np.random.default_rng(seed)
    p = (rng.random((size, size)) * 0.5).astype(np.float32)
    p[::4, ::4] = 0.95
    return p


def _count_regions(mask, connectivity):
    from scipy import ndimage as ndi

    return ndi.label(mask, structure=ndi.generate_binary_structure(2, 1 if connectivity == 4 else 2))[1]


@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("make, seed, low, high", [(smooth_random_map, s, 0.45, 0.8) for s in range(6)]
                         + [(_dots, s, 0.45, 0.9) for s in range(2)])
@pytest.mark.parametrize("max_seeds", [1000, 0])  # 0: every map goes through the labelling path
def test_hysteresis_equals_scipy_labelling(make, seed, low, high, connectivity, max_seeds, monkeypatch):
    from engine.postprocess import connectivity as cc

    monkeypatch.setattr(cc, "FILL_MAX_SEEDS", max_seeds)
    labelled = []
    monkeypatch.setattr(cc, "_hysteresis_by_labels", lambda *a, f=cc._hysteresis_by_labels: labelled.append(1) or f(*a))
    prob = make(seed)
    mask, regions = cc.hysteresis_mask(prob, low, high, connectivity)
    expected = _scipy_hysteresis(prob, low, high, connectivity)
    assert mask.dtype == np.uint8 and mask.flags.c_contiguous
    assert np.array_equal(mask, expected)
    assert regions == _count_regions(expected, connectivity)
    if make is _dots:  # the path taken is the one the docstring promises
        assert labelled, "1,600 separate seeded specks should be labelled, not filled one by one"
    elif max_seeds:
        assert not labelled


def test_fov_zeroes_everything_outside_it():
    prob = np.full((64, 64), 0.9, dtype=np.float32)
    yy, xx = np.mgrid[:64, :64]
    fov = ((yy - 32) ** 2 + (xx - 32) ** 2 < 28 ** 2).astype(np.uint8) * 255
    result = run(prob, fov=fov)
    assert (result.mask[fov == 0].max(), result.mask[fov > 0].min(),
            result.stats["pixels_removed"]["fov"]) == (0, 1, int((fov == 0).sum()))


def test_otsu_picks_a_threshold_between_two_modes():
    rng = np.random.default_rng(1)
    prob = np.where(np.arange(64)[None, :] < 32, 0.2, 0.8) + rng.normal(0, 0.04, (64, 64))
    prob = np.clip(prob, 0, 1).astype(np.float32)
    result = run(prob, threshold_mode="otsu")
    assert 0.3 < result.stats["threshold_used"] < 0.7
    assert (result.mask[:, :32].sum(), result.mask[:, 32:].min()) == (0, 1)


def test_otsu_histogram_is_taken_inside_the_fov():
    prob = np.full((64, 64), 0.0, dtype=np.float32)
    prob[:, 20:40] = 0.6
    prob[:, 40:] = 0.9
    fov = np.zeros((64, 64), np.uint8)
    fov[:, 20:] = 1  # inside: 0.6 and 0.9 only, so Otsu splits those
    assert run(prob, threshold_mode="otsu", fov=fov).stats["threshold_used"] > 0.6
    assert run(prob, threshold_mode="otsu").stats["threshold_used"] < 0.6


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


# --- call shapes: torch, logits, config ------------------------------------------------------

def test_torch_tensor_with_leading_dims_and_logits_match_numpy():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    logits = torch.randn(1, 1, 48, 40, generator=torch.Generator().manual_seed(0)) * 3
    prob = torch.sigmoid(logits)[0, 0].numpy()
    expected = enhanced_post_processing(prob, threshold=0.5, min_component_size=3).mask
    from_tensor = enhanced_post_processing(torch.sigmoid(logits), threshold=0.5, min_component_size=3).mask
    from_logits = enhanced_post_processing(logits, threshold=0.5, min_component_size=3, from_logits=True).mask
    assert np.array_equal(from_tensor, expected) and np.array_equal(from_logits, expected)


def test_module_imports_without_torch():
    code = "import sys, engine.postprocess; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False"


def test_legacy_positional_call_shape():
    prob = smooth_random_map(6)
    legacy = enhanced_post_processing(prob, "segmentation", 0.5, 10, 0.55)
    modern = enhanced_post_processing(prob, config=PostProcessConfig(threshold=0.5, min_component_size=10,
                                                                      confidence_threshold=0.55))
    assert np.array_equal(legacy.mask, modern.mask)


@pytest.mark.parametrize(
    "kwargs, expected_threshold",
    [
        (dict(config=PostProcessConfig(threshold=0.3)), 0.3),  # defaults do not override config
        (dict(config=PostProcessConfig(threshold=0.3), threshold=0.6), 0.6),  # explicit value does
        (dict(config=PostProcessConfig(threshold=0.3), threshold=0.7, opening_kernel=5), 0.7),
        (dict(), 0.6),
    ],
)
def test_config_and_explicit_arguments(kwargs, expected_threshold):
    assert enhanced_post_processing(smooth_random_map(0), **kwargs).stats["threshold_used"] == expected_threshold


def test_config_round_trips_through_json():
    config = PostProcessConfig(threshold=0.55, threshold_mode="hysteresis", hysteresis_low=0.25,
                               opening_kernel=5, kernel_shape="cross", connectivity=4, shape_filter=True,
                               min_elongation=2.5, fill_holes_below=30, from_logits=True)
    assert PostProcessConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize(
    "data, message",
    [
        ({"thresold": 0.5}, r"unknown post-processing option\(s\) 'thresold'"),
        ([("threshold", 0.5)], "must be a JSON object"),
        ({"threshold": 1.5}, "threshold must be between 0 and 1; got 1.5"),
        ({"threshold": float("nan")}, "threshold must be between 0 and 1"),
        ({"threshold": "0.5"}, "threshold must be a number"),
        ({"opening_kernel": 4}, "opening_kernel must be odd .* use 5"),
        ({"closing_kernel": 33}, "closing_kernel must be between 1 and 31"),
        ({"kernel_shape": "star"}, "kernel_shape must be one of 'ellipse', 'cross', 'rect'"),
        ({"threshold_mode": "adaptive"}, "threshold_mode must be one of"),
        ({"connectivity": 6}, "connectivity must be 4 or 8"),
        ({"min_component_size": -1}, "min_component_size must be between 0 and"),
        ({"min_component_size": 2.5}, "min_component_size must be a whole number"),
        ({"apply_opening": "yes"}, "apply_opening must be true or false"),
        ({"min_elongation": 0.5}, "min_elongation must be between 1 and"),
        ({"threshold_mode": "hysteresis", "threshold": 0.4, "hysteresis_low": 0.5},
         r"hysteresis_low \(0.5\) must not exceed threshold \(0.4\)"),
    ],
)
def test_bad_config_values(data, message):
    with pytest.raises(UserError, match=message):
        PostProcessConfig.from_dict(data)


def test_config_accepts_whole_floats_from_json():
    assert PostProcessConfig.from_dict({"min_component_size": 50.0}).min_component_size == 50


def _with_nan():
    p = smooth_random_map(0)
    p[3, 3] = np.nan
    return p


@pytest.mark.parametrize(
    "prob, kwargs, message",
    [
        (_with_nan(), {}, "contains NaN"),
        (np.zeros((2, 32, 32), np.float32), {}, r"must be a 2-D map .* got shape \(2, 32, 32\)"),
        (np.zeros(32, np.float32), {}, "must be a 2-D map"),
        (np.zeros((0, 5), np.float32), {}, "is empty"),
        (np.full((16, 16), 3.0, np.float32), {}, "outside \\[0, 1\\].*from_logits=True"),
        (np.full((16, 16), -0.1, np.float32), {}, "outside \\[0, 1\\]"),
        (np.array([["a", "b"], ["c", "d"]]), {}, "must be a numeric array"),
        (np.zeros((16, 16), np.float32), dict(fov=np.ones((16, 17))), "fov is 17x16 .* probability map is 16x16"),
        (np.zeros((16, 16), np.float32), dict(model_type="classification"), "model_type 'classification' is not supported"),
        (np.zeros((16, 16), np.float32), dict(threshold=2.0), "threshold must be between 0 and 1"),
        (np.zeros((16, 16), np.float32), dict(min_component_size=-5), "min_component_size must be between"),
        (np.zeros((16, 16), np.float32), dict(openingkernel=3), r"unknown post-processing option\(s\) 'openingkernel'"),
        (np.zeros((16, 16), np.float32), dict(config={"threshold": 0.5}), "config must be a PostProcessConfig"),
    ],
)
def test_bad_input_gets_a_sentence(prob, kwargs, message):
    with pytest.raises(UserError, match=message):
        enhanced_post_processing(prob, **kwargs)


@pytest.mark.parametrize("dtype", [np.float64, np.uint8, bool])
def test_other_numeric_dtypes_are_accepted(dtype):
    prob = np.zeros((32, 32), dtype=dtype)
    prob[5:20, 10:13] = 1
    assert enhanced_post_processing(prob, **BARE).mask[10, 11] == 1


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


# --- the confidence filter judges the pixels that passed the threshold, not those closing added ------

def _comb(value: float, gap: float = 0.05, teeth: int = 12):
    """Parallel 2-px vessels of probability ``value`` two pixels apart: a 5x5 closing joins them into
    one piece, half of it the gaps' low probabilities."""
    p = np.full((64, 64), gap, np.float32)
    for i in range(teeth):
        p[8 + 4 * i:10 + 4 * i, 8:56] = value
    return p


CONFIDENCE_CASES = [
    # (name, map, options, pixels that must be 1, pixels that must be 0)
    ("closing joins confident vessels: the piece stays", _comb(0.9),
     dict(apply_closing=True, closing_kernel=5, kernel_shape="rect", confidence_threshold=0.6), [(8, 30), (10, 30)], []),
    ("closing joins weak vessels: the piece still goes", _comb(0.65),
     dict(apply_closing=True, closing_kernel=5, kernel_shape="rect", confidence_threshold=0.8), [], [(8, 30), (10, 30)]),
    ("without closing every pixel counts", _comb(0.9), dict(confidence_threshold=0.6), [(8, 30)], [(10, 30)]),
    ("a closing that adds nothing changes nothing", _strong_and_weak(),
     dict(apply_closing=True, closing_kernel=3, confidence_threshold=0.8), [(21, 30)], [(46, 30)]),
    ("confidence at exactly the threshold stays", _comb(0.75),
     dict(apply_closing=True, closing_kernel=5, kernel_shape="rect", confidence_threshold=0.75), [(8, 30)], []),
]


@pytest.mark.parametrize("name, prob, options, on, off", CONFIDENCE_CASES, ids=[c[0] for c in CONFIDENCE_CASES])
def test_confidence_filter_ignores_pixels_closing_added(name, prob, options, on, off):
    mask = run(prob, **{"threshold": 0.5, **options}).mask
    assert [mask[p] for p in on] + [mask[p] for p in off] == [1] * len(on) + [0] * len(off)


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


def _stats(thresholded: int, **removed) -> dict:
    return {"pixels_thresholded": thresholded,
            "pixels_removed": {"opening": 0, "size": 0, "confidence": 0, "shape": 0, "fov": 0, **removed}}


WARNING_CASES = [
    ("nothing removed", _stats(1000), []),
    ("exactly half is not reported", _stats(1000, confidence=500), []),
    ("confidence removed 61 %", _stats(1000, confidence=610),
     ["The confidence filter removed 61 % of the thresholded pixels: lower 'Component confidence' to keep them."]),
    ("more than were thresholded", _stats(36523, confidence=56353),
     ["The confidence filter removed 56,353 pixels, more than the 36,523 that passed the threshold (closing added "
      "the others): lower 'Component confidence' to keep them."]),
    ("two steps, in pipeline order", _stats(100, size=60, opening=70),
     ["Opening removed 70 % of the thresholded pixels: turn 'Opening' off or choose a smaller 'Opening kernel "
      "(px)' to keep them.",
      "The size filter removed 60 % of the thresholded pixels: lower 'Minimum component (px)' to keep them."]),
    ("shape filter", _stats(10, shape=9),
     ["The vessel-shape filter removed 90 % of the thresholded pixels: lower 'Minimum length / width' or turn the "
      "vessel-shape filter off to keep them."]),
    ("nothing passed the threshold", _stats(0), []),
]


@pytest.mark.parametrize("name, stats, expected", WARNING_CASES, ids=[c[0] for c in WARNING_CASES])
def test_warnings_for(name, stats, expected):
    from engine.postprocess import warnings_for

    assert warnings_for(stats) == expected


def test_closing_kernel_9_keeps_the_drive_vessel_tree(drive_dir):
    """DRIVE 21, vesselness map, threshold 0.45, opening off, closing 9: closing joins the tree into one
    piece; it stays, and no step removes more than half of the thresholded pixels."""
    from engine.imageio import read_image, read_mask
    from engine.postprocess import warnings_for
    from engine.vesselness import vesselness_map

    fov = read_mask(drive_dir / "mask" / "21_training_mask.gif")
    prob = vesselness_map(read_image(drive_dir / "images" / "21_training.tif"), fov)
    config = PostProcessConfig(threshold=0.45, apply_opening=False, closing_kernel=9)
    assert warnings_for(enhanced_post_processing(prob, config=config, fov=fov).stats) == []
