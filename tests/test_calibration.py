"""Post-processing calibration: the range it searches (threshold to 0.8, opening/closing, smallest component
50–100 px), the rule that keeps a step only where validation Dice rises, and the words that compare the
choice with the usual conservative advice."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from engine.postprocess.calibration import MIN_SIZES, THRESHOLDS, calibrate_postprocess, explain_calibration


def vessels(seed: int, size: int = 192) -> np.ndarray:
    """Thin vessels: lines 1-2 px wide across a square, uint8 {0,1}."""
    rng = np.random.default_rng(seed)
    m = np.zeros((size, size), np.uint8)
    for _ in range(10):
        a, b = (tuple(int(v) for v in rng.integers(0, size, 2)) for _ in range(2))
        cv2.line(m, a, b, 1, int(rng.integers(1, 3)))
    return m


def specks(truth: np.ndarray, seed: int, side: int, n: int = 25) -> np.ndarray:
    """``n`` squares of ``side`` px clear of the vessels, uint8 {0,1}."""
    rng = np.random.default_rng(seed + 100)
    near = cv2.dilate(truth, np.ones((side + 9, side + 9), np.uint8))
    out = np.zeros_like(truth)
    while out.sum() < n * side * side:
        y, x = (int(v) for v in rng.integers(0, truth.shape[0] - side, 2))
        if not near[y:y + side, x:x + side].any() and not out[max(0, y - 3):y + side + 3, max(0, x - 3):x + side + 3].any():
            out[y:y + side, x:x + side] = 1
    return out


def calibrate(probs, truths):
    return calibrate_postprocess(list(probs), list(truths), [np.ones_like(t) for t in truths])


def test_the_search_covers_the_usual_advice():
    assert (max(THRESHOLDS), {50, 80, 100} <= set(MIN_SIZES)) == (0.8, True)


def test_threshold_up_to_0_8_is_chosen_where_validation_says_so():
    """Vessels at 0.85 and a haze of false pixels at 0.78: only a threshold of 0.8 separates them."""
    truths = [vessels(s) for s in range(2)]
    probs = []
    for s, t in enumerate(truths):
        haze = (np.random.default_rng(s).random(t.shape) < 0.2) & (t == 0)
        probs.append(np.where(t == 1, 0.85, np.where(haze, 0.78, 0.05)).astype(np.float32))
    recommended, _ = calibrate(probs, truths)
    assert recommended["threshold"] == 0.8


def test_smallest_component_in_the_50_100_range_removes_confident_specks():
    """Confident 8×8 specks (64 px) far from the vessels: removed by a smallest component of 80 px."""
    truths = [vessels(s) for s in range(2)]
    probs = [np.clip(t + specks(t, s, 8), 0, 1).astype(np.float32) * 0.9 for s, t in enumerate(truths)]
    recommended, report = calibrate(probs, truths)
    assert recommended["min_component_size"] == 80
    assert any(line.startswith("Smallest component 80 px") for line in report["explanation"])


@pytest.mark.parametrize("key, word", [("apply_opening", "No opening"), ("apply_closing", "No closing")])
def test_morphology_that_costs_dice_on_thin_vessels_stays_off_and_says_why(key, word):
    truths = [vessels(s) for s in range(2)]
    recommended, report = calibrate([t.astype(np.float32) * 0.9 for t in truths], truths)
    assert recommended[key] is False
    assert any(line.startswith(word) for line in report["explanation"])


def test_opening_is_kept_where_it_removes_noise():
    """Single-pixel salt on thick vessels: opening removes the salt and keeps the vessels."""
    truths = [cv2.dilate(vessels(s), np.ones((5, 5), np.uint8)) for s in range(2)]
    probs = []
    for s, t in enumerate(truths):
        salt = (np.random.default_rng(s).random(t.shape) < 0.05) & (t == 0)
        probs.append(np.where(t == 1, 0.9, np.where(salt, 0.95, 0.05)).astype(np.float32))
    recommended, report = calibrate(probs, truths)
    assert recommended["apply_opening"] is True
    assert any(line.startswith("Opening on") for line in report["explanation"])


def test_a_gain_below_the_margin_keeps_the_plain_threshold():
    """A perfect map: no step can raise Dice, so nothing is kept and the report says so in numbers."""
    truths = [vessels(s) for s in range(2)]
    recommended, report = calibrate([t.astype(np.float32) * 0.9 for t in truths], truths)
    assert (recommended["threshold"], recommended["min_component_size"], report["steps"]) == (0.5, 0, [])


def test_the_explanation_compares_with_the_usual_advice_in_numbers():
    truths = [vessels(s) for s in range(2)]
    recommended, report = calibrate([t.astype(np.float32) * 0.9 for t in truths], truths)
    last = report["explanation"][-1]
    assert last.startswith("The usual advice at its best") and f"{report['usual']['dice']:.3f}" in last


def test_a_low_threshold_is_explained_against_0_6_to_0_8():
    """Faint vessel edges at 0.55: any threshold of the usual range loses them."""
    truths = [cv2.dilate(vessels(s), np.ones((3, 3), np.uint8)) for s in range(2)]
    probs = [np.where(t == 1, 0.55, 0.05).astype(np.float32) for t in truths]
    for p, t in zip(probs, truths):
        p[cv2.erode(t, np.ones((3, 3), np.uint8)) == 1] = 0.95
    recommended, report = calibrate(probs, truths)
    assert recommended["threshold"] < 0.6
    assert report["explanation"][0].startswith(f"Threshold {recommended['threshold']:g} instead of the usual 0.6–0.8")


def test_explain_calibration_rebuilds_the_words_from_the_report():
    truths = [vessels(s) for s in range(2)]
    recommended, report = calibrate([t.astype(np.float32) * 0.9 for t in truths], truths)
    assert explain_calibration(recommended, report) == report["explanation"]



def one_gains_one_loses():
    """Image A: vessels and confident 8×8 false specks; image B: vessels and 8×8 true pieces drawn as they are.
    A smallest component of 10-120 px raises the pooled Dice (A's specks go) but lowers B's (its pieces go)."""
    a, b = vessels(0), vessels(1)
    a_specks, b_pieces = specks(a, 0, 8, n=60), specks(b, 1, 8, n=12)
    truths = [a, np.clip(b + b_pieces, 0, 1)]
    probs = [np.clip(a + a_specks, 0, 1).astype(np.float32) * 0.9, truths[1].astype(np.float32) * 0.9]
    return probs, truths


def test_a_step_that_gains_only_by_losing_on_one_image_is_not_kept():
    probs, truths = one_gains_one_loses()
    recommended, report = calibrate(probs, truths)
    refused = report["refused"]["min_component_size"]
    assert (recommended["min_component_size"], refused["dice"] > refused["without"] + 0.002,
            refused["images_worse"]) == (0, True, 1)


def test_a_refused_step_is_explained_with_the_image_it_hurts():
    probs, truths = one_gains_one_loses()
    _, report = calibrate(probs, truths)
    assert any(line.startswith("A smallest component of") and "lowered it on 1 of the 2 validation images" in line
               for line in report["explanation"])


def test_the_same_step_is_kept_where_every_image_gains():
    probs, truths = one_gains_one_loses()
    recommended, report = calibrate([probs[0], probs[0]], [truths[0], truths[0]])
    assert (recommended["min_component_size"] > 0, "min_component_size" in report["refused"]) == (True, False)


def test_with_many_images_a_step_may_lose_on_a_quarter_of_them():
    """Three images where the specks go and one where true pieces go: kept (1 of 4 loses); the 2-image case
    above refuses the same step (1 of 2 loses)."""
    probs, truths = one_gains_one_loses()
    recommended, _ = calibrate([probs[0]] * 3 + [probs[1]], [truths[0]] * 3 + [truths[1]])
    assert recommended["min_component_size"] > 0


def test_with_too_few_images_nothing_is_chosen_and_the_sentence_says_why():
    probs, truths = one_gains_one_loses()
    recommended, report = calibrate_postprocess([probs[0]] * 2, [truths[0]] * 2, [np.ones_like(truths[0])] * 2, min_images=3)
    assert (recommended["min_component_size"], report["steps"], report["too_few"]) == (0, [], {"images": 2, "needed": 3})
    assert report["explanation"] == explain_calibration(recommended, report)
    assert report["explanation"][0].startswith("The plain map at 0.5: with 2 validation images, post-processing is not chosen")
