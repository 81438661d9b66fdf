"""engine.postprocess: call shapes (torch, logits, the legacy positional call), PostProcessConfig, bad
input, and the warnings it gives."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from engine.postprocess import PostProcessConfig, enhanced_post_processing, warnings_for
from tests.conftest import ROOT
from engine.errors import UserError
from tests.postprocess_helpers import BARE, smooth_random_map


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
    ("many small pieces remain", {**_stats(3000), "components_after": 120, "pixels_kept": 3000},
     ["The mask is still noisy: 120 separate pieces remain, 25 pixels each on average. Raise 'Threshold' (0.6–0.8 "
      "is the usual range), raise 'Minimum component (px)' or turn 'Opening' on to remove the specks."]),
    ("a few large pieces: a vessel tree", {**_stats(30000), "components_after": 12, "pixels_kept": 30000}, []),
    ("many pieces, but large ones", {**_stats(30000), "components_after": 40, "pixels_kept": 30000}, []),
]


@pytest.mark.parametrize("name, stats, expected", WARNING_CASES, ids=[c[0] for c in WARNING_CASES])
def test_warnings_for(name, stats, expected):
    from engine.postprocess import warnings_for

    assert warnings_for(stats) == expected


def test_speckled_noise_left_by_the_settings_gets_the_noisy_mask_hint():
    """A vessel band and 200 isolated specks, with the size filter and opening off: the hint names the fix,
    and a larger smallest component removes them and the hint."""
    prob = np.zeros((200, 200), np.float32)
    prob[95:105, :] = 0.9
    rng = np.random.default_rng(0)
    prob[rng.integers(0, 200, 200), rng.integers(0, 200, 200)] = 0.9
    noisy = PostProcessConfig(threshold=0.5, apply_opening=False, min_component_size=0, confidence_threshold=0.0)
    quiet = PostProcessConfig(threshold=0.5, apply_opening=False, min_component_size=20, confidence_threshold=0.0)
    hints = [[w.startswith("The mask is still noisy") for w in warnings_for(enhanced_post_processing(prob, config=c).stats)]
             for c in (noisy, quiet)]
    assert hints == [[True], []]


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


def test_the_readme_troubleshooting_says_what_to_do_about_a_noisy_mask():
    troubleshooting = (ROOT / "README.md").read_text(encoding="utf-8").split("## Troubleshooting", 1)[1]
    entry = troubleshooting.split("**The mask is still noisy.**", 1)[1].split("\n\n", 1)[0]
    assert all(words in entry for words in ("*Threshold*", "0.6–0.8", "*Minimum component (px)*", "*Opening*"))


@pytest.mark.parametrize("factor, field, expected", [
    (0.5, "opening_kernel", 3),  # 5 px at half size: 2.5 -> the nearest odd side, 3
    (0.5, "closing_kernel", 1),  # 3 px -> 1.5 -> 1 (no effect)
    (0.5, "min_component_size", 25),  # an area: 100 px -> a quarter
    (0.5, "fill_holes_below", 10),
    (0.5, "threshold", 0.6),  # not a size: unchanged
    (1.0, "min_component_size", 100),
])
def test_at_scale_scales_the_sizes_in_pixels(factor, field, expected):
    config = PostProcessConfig(opening_kernel=5, closing_kernel=3, min_component_size=100, fill_holes_below=40)
    assert getattr(config.at_scale(factor), field) == expected
