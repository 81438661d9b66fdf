"""engine.postprocess, step by step on drawn maps: each filter, hole filling, hysteresis (against SciPy's
labelling), the field of view, Otsu, and the confidence filter after closing."""
from __future__ import annotations

import numpy as np
import pytest

from tests.postprocess_helpers import blank, run, smooth_random_map, strong_and_weak


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
    ("confidence filter drops a low-mean component", strong_and_weak(),
     dict(confidence_threshold=0.8, threshold=0.6), [(21, 30)], [(46, 30)]),
    ("confidence filter off keeps it", strong_and_weak(), dict(threshold=0.6), [(21, 30), (46, 30)], []),
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
    ("a closing that adds nothing changes nothing", strong_and_weak(),
     dict(apply_closing=True, closing_kernel=3, confidence_threshold=0.8), [(21, 30)], [(46, 30)]),
    ("confidence at exactly the threshold stays", _comb(0.75),
     dict(apply_closing=True, closing_kernel=5, kernel_shape="rect", confidence_threshold=0.75), [(8, 30)], []),
]


@pytest.mark.parametrize("name, prob, options, on, off", CONFIDENCE_CASES, ids=[c[0] for c in CONFIDENCE_CASES])
def test_confidence_filter_ignores_pixels_closing_added(name, prob, options, on, off):
    mask = run(prob, **{"threshold": 0.5, **options}).mask
    assert [mask[p] for p in on] + [mask[p] for p in off] == [1] * len(on) + [0] * len(off)
