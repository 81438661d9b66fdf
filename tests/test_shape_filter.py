"""The vessel-shape filter: vessels of every shape are kept, compact blobs of every size go.

Structures are drawn with OpenCV on 256x256 canvases and run through ``enhanced_post_processing``
with only the shape filter on (threshold 0.5 on a 0/1 map; opening, closing, size and confidence
filters off).
"""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from engine.postprocess.calibration import calibrate_postprocess, pooled_dice
from engine.postprocess.connectivity import vessel_ratio_per_label, width_per_label
from engine.imageio import read_mask
from engine.postprocess import PostProcessConfig, enhanced_post_processing
from engine.errors import UserError

SIZE = 256
SHAPE_ONLY = dict(threshold=0.5, apply_opening=False, apply_closing=False, min_component_size=0,
                  confidence_threshold=0.0, shape_filter=True)


def canvas() -> np.ndarray:
    return np.zeros((SIZE, SIZE), np.uint8)


def segment(width: int, angle: float = 0.0, length: int = 120) -> np.ndarray:
    m = canvas()
    dx, dy = length / 2 * np.cos(np.radians(angle)), length / 2 * np.sin(np.radians(angle))
    cv2.line(m, (int(128 - dx), int(128 - dy)), (int(128 + dx), int(128 + dy)), 1, width)
    return m


def arc(width: int, degrees: int) -> np.ndarray:
    m = canvas()
    cv2.ellipse(m, (128, 128), (60, 60), 0, 0, degrees, 1, width)
    return m


def sinusoid(width: int) -> np.ndarray:
    m = canvas()
    xs = np.arange(20, 236)
    cv2.polylines(m, [np.stack([xs, 128 + 25 * np.sin(xs / 12.0)], 1).astype(np.int32)], False, 1, width)
    return m


def y_bifurcation(width: int) -> np.ndarray:
    m = canvas()
    for end in ((80, 50), (176, 50), (128, 220)):
        cv2.line(m, (128, 130), end, 1, width)
    return m


def t_bifurcation(width: int) -> np.ndarray:
    m = canvas()
    cv2.line(m, (40, 80), (216, 80), 1, width)
    cv2.line(m, (128, 80), (128, 220), 1, width)
    return m


def vessel_tree(seed: int) -> np.ndarray:
    """A trunk 3 px wide that branches twice per level into 2- and 1-px vessels."""
    rng = np.random.default_rng(seed)
    m = canvas()
    tips = [((128, 240), -np.pi / 2, 3)]
    while tips:
        (x, y), angle, width = tips.pop()
        length = rng.uniform(30, 50)
        end = (int(x + length * np.cos(angle)), int(y + length * np.sin(angle)))
        cv2.line(m, (int(x), int(y)), end, 1, width)
        if width > 1:
            tips += [(end, angle + side * rng.uniform(0.3, 0.7), width - 1) for side in (-1, 1)]
    return m


def disc(area: int) -> np.ndarray:
    m = canvas()
    cv2.circle(m, (128, 128), int(round(np.sqrt(area / np.pi))), 1, -1)
    return m


def ellipse(area: int, aspect: float, angle: int) -> np.ndarray:
    m = canvas()
    b = np.sqrt(area / np.pi / aspect)
    cv2.ellipse(m, (128, 128), (int(round(aspect * b)), int(round(b))), angle, 0, 360, 1, -1)
    return m


def dot_cluster(radius: int, spacing: int) -> np.ndarray:
    m = canvas()
    for i in range(4):
        for j in range(4):
            cv2.circle(m, (100 + i * spacing, 100 + j * spacing), radius, 1, -1)
    return m


def kept_fraction(drawn: np.ndarray, **options) -> float:
    mask = enhanced_post_processing(drawn.astype(np.float32), **{**SHAPE_ONLY, **options}).mask
    return float(mask.sum() / drawn.sum())


KEPT = [(f"{name}, {w} px wide", make, w) for w in (1, 2, 3) for name, make in (
    ("straight segment", lambda w: segment(w, 0)),
    ("diagonal segment", lambda w: segment(w, 45)),
    ("steep segment", lambda w: segment(w, 70)),
    ("three-quarter arc", lambda w: arc(w, 270)),
    ("semicircle", lambda w: arc(w, 180)),
    ("sinusoidal segment", sinusoid),
    ("Y bifurcation", y_bifurcation),
    ("T bifurcation", t_bifurcation),
)] + [(f"vessel tree {seed}", lambda w, s=seed: vessel_tree(s), None) for seed in range(3)]


@pytest.mark.parametrize("name, make, width", KEPT, ids=[c[0] for c in KEPT])
def test_vessels_are_kept(name, make, width):
    assert kept_fraction(make(width)) == 1.0


REMOVED = ([(f"disc of {a} px", disc(a)) for a in (20, 50, 100, 300, 441, 1000, 2000)]
           + [(f"ellipse of {a} px, aspect {r}, at {t} degrees", ellipse(a, r, t))
              for a in (20, 100, 441, 2000) for r in (1.5, 2.0) for t in (0, 30, 45, 90)]
           + [(f"cluster of dots of radius {r}", dot_cluster(r, 2 * r + 3)) for r in (1, 2, 3)])


@pytest.mark.parametrize("name, drawn", REMOVED, ids=[c[0] for c in REMOVED])
def test_compact_blobs_are_removed(name, drawn):
    assert kept_fraction(drawn) == 0.0


def test_a_large_blob_is_judged_whatever_its_size():
    drawn = disc(2000)  # far above the 300 px under which the earlier filter judged shapes
    cv2.line(drawn, (10, 20), (240, 20), 1, 2)  # and a vessel it does not touch
    result = enhanced_post_processing(drawn.astype(np.float32), **SHAPE_ONLY)
    assert (result.mask[128, 128], result.mask[20, 120]) == (0, 1)


@pytest.mark.parametrize("min_elongation, kept", [(10.0, 1), (70.0, 0)])
def test_min_elongation_is_the_length_to_width_ratio(min_elongation, kept):
    """A 3-px-wide upright bar 121 px long scores its length over its width: 121 / 3."""
    drawn = canvas()
    drawn[60:181, 100:103] = 1
    assert kept_fraction(drawn, min_elongation=min_elongation) == kept


@pytest.mark.parametrize("drawn, width, ratio", [
    (np.pad(np.ones((1, 9), np.uint8), 3), 1.0, 9.0),  # a 1-px line of 9 px scores 9
    (np.pad(np.ones((5, 40), np.uint8), 3), 5.0, 8.0),  # a 5x40 bar scores 40 / 5
    (np.pad(np.ones((7, 7), np.uint8), 3), 7.0, 1.0),  # a square scores 1
    (np.pad(np.ones((1, 9), np.uint8), ((0, 3), (3, 3))), 1.0, 9.0),  # on the image border: outside is background
])
def test_width_and_ratio_of_simple_shapes(drawn, width, ratio):
    n, labels = cv2.connectedComponents(drawn, connectivity=8)
    idx = np.flatnonzero(drawn)
    lab = labels.ravel()[idx]
    assert (width_per_label(drawn, lab, idx, n)[1], vessel_ratio_per_label(drawn, lab, idx, n)[1]) == (width, ratio)


def test_a_component_is_judged_alone():
    """A blob next to a bar (4-connectivity: touching only at a corner) changes neither's score."""
    drawn = np.zeros((40, 60), np.uint8)
    drawn[10:15, 5:45] = 1  # 5x40 bar
    drawn[15:26, 45:56] = 1  # 11x11 square touching the bar's corner diagonally
    n, labels = cv2.connectedComponents(drawn, connectivity=4)
    idx = np.flatnonzero(drawn)
    ratios = vessel_ratio_per_label(drawn, labels.ravel()[idx], idx, n)
    assert sorted(ratios[1:].tolist()) == [1.0, 8.0]


def test_removed_pixels_are_counted_per_step():
    blob = np.roll(disc(441), (-88, -88), axis=(0, 1))  # centred at (40, 40), clear of the tree
    drawn = vessel_tree(0) | blob
    drawn[:4, :4] = 1  # a 16-px square that the size filter takes first
    prob = drawn.astype(np.float32) * 0.9
    result = enhanced_post_processing(prob, **{**SHAPE_ONLY, "min_component_size": 20})
    stats = result.stats
    removed = stats["pixels_removed"]
    assert (removed["size"], removed["shape"], stats["components_removed"]["shape"]) == (16, int(blob.sum()), 1)
    assert stats["pixels_thresholded"] - sum(removed.values()) + sum(stats["pixels_added"].values()) == stats["pixels_kept"]
    assert stats["removed_total"] == int(result.removed.sum())


# --- settings saved before the filter changed ------------------------------------------------

OLD_PRESET = {"threshold": 0.55, "shape_filter": True, "min_elongation": 2.5, "shape_max_area": 120}


@pytest.mark.parametrize("saved, expected", [
    (OLD_PRESET, PostProcessConfig(threshold=0.55, shape_filter=True, min_elongation=2.5)),
    ({**OLD_PRESET, "shape_filter": False}, PostProcessConfig(threshold=0.55, min_elongation=2.5)),
    ({"shape_max_area": 300}, PostProcessConfig()),
])
def test_old_presets_still_load(saved, expected):
    assert PostProcessConfig.from_dict(json.loads(json.dumps(saved))) == expected


@pytest.mark.parametrize("saved, notes", [
    (OLD_PRESET, ["These settings were saved with an older vessel-shape filter: its size limit ('shape_max_area') "
                  "is no longer used, because the filter now judges every piece, whatever its size, by its length "
                  "against its width ('min_elongation'). With the shape filter on, compare the kept vessels with "
                  "what you saw before."]),
    ({"shape_max_area": 300}, ["These settings were saved with an older vessel-shape filter: its size limit "
                               "('shape_max_area') is no longer used, because the filter now judges every piece, "
                               "whatever its size, by its length against its width ('min_elongation')."]),
    (PostProcessConfig(shape_filter=True).to_dict(), []),
    ("not a dict", []),
])
def test_notes_explain_what_an_old_preset_changes(saved, notes):
    assert PostProcessConfig.notes_from_dict(saved) == notes


def test_the_retired_option_is_refused_in_a_call_with_a_sentence():
    with pytest.raises(UserError, match="'shape_max_area' is no longer an option: .* remove it"):
        enhanced_post_processing(canvas().astype(np.float32), shape_max_area=300)


# --- real data and calibration ----------------------------------------------------------------

@pytest.mark.parametrize("index", [0, 1, 2])
def test_expert_vessels_of_drive_are_kept(drive_dir, index):
    path = sorted((drive_dir / "1st_manual").iterdir())[index]
    vessels = read_mask(path)
    assert kept_fraction(vessels) >= 0.97


def _vessels_and_blobs(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A vessel tree (the truth) and 12 confident round blobs of 150-700 px, clear of the tree, that no
    other step removes."""
    rng = np.random.default_rng(seed)
    truth = vessel_tree(seed)
    prob = truth.astype(np.float32) * 0.9
    near_tree = cv2.dilate(truth, np.ones((35, 35), np.uint8))
    blobs = 0
    while blobs < 12:
        x, y = (int(v) for v in rng.integers(16, 240, 2))
        if not near_tree[y, x]:
            cv2.circle(prob, (x, y), int(rng.integers(7, 15)), 0.9, -1)
            blobs += 1
    return prob, truth, np.ones_like(truth)


def test_calibration_turns_the_shape_filter_on_where_it_helps():
    probs, masks, fovs = zip(*[_vessels_and_blobs(seed) for seed in range(2)])
    recommended, report = calibrate_postprocess(list(probs), list(masks), list(fovs))
    assert (recommended["shape_filter"], report["steps"][-1].startswith("shape_filter True")) == (True, True)
    assert report["dice_after"] > report["dice_before"] + 0.1


def test_calibration_leaves_the_shape_filter_off_on_clean_vessels():
    truth = vessel_tree(0)
    recommended, _ = calibrate_postprocess([truth.astype(np.float32) * 0.9], [truth], [np.ones_like(truth)])
    assert recommended["shape_filter"] is False


def test_pooled_dice_of_the_filtered_map_is_the_truth():
    prob, truth, fov = _vessels_and_blobs(3)
    mask = enhanced_post_processing(prob, **SHAPE_ONLY).mask
    assert pooled_dice([mask], [truth], [fov]) == 1.0


def test_a_blob_wider_than_the_fast_distance_range_is_still_judged():
    """A disc 600 px across: taxicab distances pass 255, where the uint8 transform stops counting."""
    drawn = np.zeros((640, 640), np.uint8)
    cv2.circle(drawn, (320, 320), 300, 1, -1)
    cv2.line(drawn, (0, 2), (639, 2), 1, 1)
    n, labels = cv2.connectedComponents(drawn, connectivity=8)
    idx = np.flatnonzero(drawn)
    ratios = vessel_ratio_per_label(drawn, labels.ravel()[idx], idx, n)
    assert sorted(np.round(ratios[1:], 2).tolist()) == [0.78, 640.0]  # capped at 255 the disc would score 1.09
