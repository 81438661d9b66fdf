"""engine.metrics against values worked out by hand on small arrays."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from engine.metrics import METRIC_KEYS, RunningMetrics, pooled_metrics, roc_auc_score, segmentation_metrics
from engine.errors import UserError

PRED = np.array([[1, 1, 0, 0],
                 [1, 0, 0, 0],
                 [0, 0, 1, 0],
                 [0, 0, 0, 0]], dtype=np.uint8)
TARGET = np.array([[1, 1, 1, 0],
                   [0, 0, 0, 0],
                   [0, 0, 1, 1],
                   [0, 0, 0, 0]], dtype=np.uint8)
FOV_NO_LAST_COLUMN = np.ones((4, 4), np.uint8)
FOV_NO_LAST_COLUMN[:, 3] = 0

# tp=3 fp=1 fn=2 tn=10 without FOV; tp=3 fp=1 fn=1 tn=7 inside FOV_NO_LAST_COLUMN
HAND = [
    (PRED, TARGET, None, dict(dice=6 / 9, iou=3 / 6, precision=3 / 4, sensitivity=3 / 5,
                              specificity=10 / 11, accuracy=13 / 16)),
    (PRED, TARGET, FOV_NO_LAST_COLUMN, dict(dice=6 / 8, iou=3 / 5, precision=3 / 4, sensitivity=3 / 4,
                                            specificity=7 / 8, accuracy=10 / 12)),
    (PRED.astype(bool), TARGET * 255, None, dict(dice=6 / 9, accuracy=13 / 16)),  # any nonzero is a vessel
    (PRED * 0.8 + 0.1, TARGET, None, dict(dice=6 / 9, iou=3 / 6, accuracy=13 / 16)),  # probabilities, t=0.5
]


@pytest.mark.parametrize("pred, target, fov, expected", HAND)
def test_against_hand_counts(pred, target, fov, expected):
    got = segmentation_metrics(pred, target, fov)
    assert {k: got[k] for k in expected} == pytest.approx(expected)


@pytest.mark.parametrize(
    "pred, target, expected",
    [
        (np.zeros((4, 4)), np.zeros((4, 4)), dict(dice=1.0, iou=1.0, precision=1.0, sensitivity=1.0,
                                                  specificity=1.0, accuracy=1.0, cldice=1.0)),
        (np.zeros((4, 4)), TARGET, dict(dice=0.0, iou=0.0, precision=0.0, sensitivity=0.0,
                                        specificity=1.0, cldice=0.0)),
        (PRED, np.zeros((4, 4)), dict(dice=0.0, iou=0.0, precision=0.0, sensitivity=0.0,
                                      specificity=12 / 16, cldice=0.0)),
        (np.ones((4, 4)), np.ones((4, 4)), dict(dice=1.0, specificity=1.0, accuracy=1.0)),
    ],
    ids=["both empty", "empty prediction", "empty target", "both full"],
)
def test_empty_and_full_masks(pred, target, expected):
    got = segmentation_metrics(pred.astype(np.uint8), target)
    assert {k: got[k] for k in expected} == pytest.approx(expected)


def _line(row: int, start: int, stop: int, width: int = 1) -> np.ndarray:
    m = np.zeros((16, 24), np.uint8)
    m[row - width // 2:row + width // 2 + 1, start:stop] = 1
    return m


@pytest.mark.parametrize(
    "pred, target, cldice, dice",
    [
        # each skeleton lies inside the other mask (S of the 5-wide bar stays in its middle 3 rows)
        (_line(8, 2, 20, width=3), _line(8, 2, 20, width=5), 1.0, 2 * 54 / (54 + 90)),
        (_line(8, 2, 12), _line(8, 2, 22), 2 * 1.0 * 0.5 / 1.5, 2 * 10 / 30),  # Tprec 1, Tsens 10/20
        (_line(4, 2, 20), _line(10, 2, 20), 0.0, 0.0),  # parallel, disjoint
    ],
    ids=["thin inside thick", "half the length", "disjoint"],
)
def test_cldice_on_lines(pred, target, cldice, dice):
    got = segmentation_metrics(pred, target)
    assert (got["cldice"], got["dice"]) == pytest.approx((cldice, dice))


@pytest.mark.parametrize(
    "scores, labels, expected",
    [
        ([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], 0.75),
        ([0.5, 0.5, 0.2, 0.9], [1, 0, 0, 1], 3.5 / 4),  # one tied pair counts 1/2
        ([0.2, 0.3, 0.6, 0.7], [0, 0, 1, 1], 1.0),
        ([0.9, 0.8, 0.1, 0.2], [0, 0, 1, 1], 0.0),
        ([0.1, 0.9], [1, 1], None),
    ],
)
def test_roc_auc_hand_cases(scores, labels, expected):
    assert roc_auc_score(np.array(scores), np.array(labels)) == (None if expected is None else pytest.approx(expected))


def test_roc_auc_matches_pairwise_count_on_random_scores():
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(60), 1)  # many ties
    labels = rng.random(60) < 0.4
    pos, neg = scores[labels], scores[~labels]
    pairwise = np.mean([1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg)])
    assert roc_auc_score(scores, labels) == pytest.approx(pairwise)


def test_roc_auc_only_for_probability_maps():
    prob = np.array([[0.1, 0.4], [0.35, 0.8]], np.float32)
    target = np.array([[0, 0], [1, 1]], np.uint8)
    assert (segmentation_metrics(prob, target)["roc_auc"], segmentation_metrics(prob >= 0.5, target)["roc_auc"],
            segmentation_metrics(prob.round(), target)["roc_auc"]) == (pytest.approx(0.75), None, None)


def test_roc_auc_counts_only_fov_pixels():
    prob = np.array([[0.1, 0.4], [0.35, 0.8]], np.float32)
    target = np.array([[0, 0], [1, 1]], np.uint8)
    fov = np.array([[1, 0], [1, 1]], np.uint8)  # drops the 0.4 negative that outranks a positive
    assert segmentation_metrics(prob, target, fov)["roc_auc"] == pytest.approx(1.0)


def test_threshold_moves_the_binarisation():
    prob = np.array([[0.3, 0.6], [0.7, 0.1]], np.float32)
    target = np.array([[1, 1], [1, 0]], np.uint8)
    assert [segmentation_metrics(prob, target, threshold=t)["sensitivity"] for t in (0.2, 0.5, 0.65)] == \
        pytest.approx([1.0, 2 / 3, 1 / 3])


def test_keys_and_torch_input():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    got = segmentation_metrics(torch.tensor(PRED * 0.8 + 0.1)[None, None], torch.tensor(TARGET))
    assert tuple(got) == METRIC_KEYS and got["dice"] == pytest.approx(6 / 9)


def test_pooled_metrics_sum_counts_before_dividing():
    # image 1: tp=3 fp=1 fn=2 tn=10; image 2 (both empty): tn=16. Pooled: dice 6/9, accuracy 29/32.
    empty = np.zeros((4, 4), np.uint8)
    pooled = pooled_metrics([(PRED, TARGET, None), (empty, empty, None)])
    assert (pooled["dice"], pooled["accuracy"], pooled["specificity"], pooled["roc_auc"], pooled["n_images"]) == \
        (pytest.approx(6 / 9), pytest.approx(29 / 32), pytest.approx(26 / 27), None, 2)


def test_pooled_auc_ranks_all_pixels_together():
    # each image alone ranks perfectly (AUC 1.0), but pooled, b's negative 0.5 outranks a's positive 0.4
    a = (np.array([[0.1, 0.4]], np.float32).repeat(8, 0), np.array([[0, 1]]).repeat(8, 0), None)
    b = (np.array([[0.5, 0.9]], np.float32).repeat(8, 0), np.array([[0, 1]]).repeat(8, 0), None)
    assert (segmentation_metrics(*a[:2])["roc_auc"], pooled_metrics([a, b])["roc_auc"]) == (1.0, pytest.approx(0.75))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(pred=np.zeros((4, 5)), target=TARGET), "pred is 5x4 .* target is 4x4"),
        (dict(pred=PRED, target=TARGET, fov=np.ones((3, 4))), "fov is 4x3"),
        (dict(pred=PRED, target=TARGET, fov=np.zeros((4, 4))), "FOV mask is empty"),
        (dict(pred=np.full((4, 4), 1.5), target=TARGET), "outside \\[0, 1\\]"),
        (dict(pred=np.full((4, 4), np.nan), target=TARGET), "pred contains NaN"),
        (dict(pred=PRED, target=TARGET, threshold=2), "threshold must be a number between 0 and 1"),
        (dict(pred=np.zeros((2, 4, 4)), target=np.zeros((2, 4, 4))), "must be a 2-D map"),
    ],
)
def test_bad_input_gets_a_sentence(kwargs, message):
    with pytest.raises(UserError, match=message):
        segmentation_metrics(**kwargs)


@pytest.mark.parametrize("items, message", [([], "at least one"), ([(PRED, TARGET)], "must be a \\(pred, target, fov\\)")])
def test_pooled_bad_input(items, message):
    with pytest.raises(UserError, match=message):
        pooled_metrics(items)


# --------------------------------------------------------------------------- one image at a time

def _random_images(n, seed=0, size=48):
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        target = rng.random((size, size)) < 0.12
        prob = np.clip(target * 0.35 + rng.random((size, size)) * 0.65, 0, 1).astype(np.float32)
        fov = np.zeros((size, size), np.uint8)
        fov[4:-4, 4:-4] = 1
        images.append((prob, target.astype(np.uint8), fov))
    return images


@pytest.fixture(scope="module")
def running_and_pooled():
    images = _random_images(5)
    running = RunningMetrics()
    for prob, target, fov in images:
        running.add(prob >= 0.5, target, fov, prob=prob)
    masks = [(prob >= 0.5, target, fov) for prob, target, fov in images]
    pooled = pooled_metrics(masks)
    pooled["roc_auc"] = pooled_metrics(images)["roc_auc"]
    return running.result(), pooled


@pytest.mark.parametrize("key", [k for k in METRIC_KEYS if k != "roc_auc"] + ["n_images"])
def test_running_metrics_pool_exactly_like_pooled_metrics(running_and_pooled, key):
    running, pooled = running_and_pooled
    assert running[key] == pytest.approx(pooled[key], abs=1e-12)


def test_running_auc_is_the_exact_auc_to_four_decimals(running_and_pooled):
    running, pooled = running_and_pooled
    assert running["roc_auc"] == pytest.approx(pooled["roc_auc"], abs=1e-4)


def test_running_metrics_return_each_images_own_metrics():
    prob, target, fov = _random_images(1, seed=3)[0]
    own = RunningMetrics().add(prob >= 0.5, target, fov, prob=prob)
    assert own["dice"] == pytest.approx(segmentation_metrics(prob, target, fov)["dice"])


def test_running_metrics_of_masks_alone_have_no_auc():
    running = RunningMetrics()
    for prob, target, fov in _random_images(2):
        running.add(prob >= 0.5, target, fov)
    assert running.result()["roc_auc"] is None


def test_running_metrics_keep_nothing_of_the_images():
    running = RunningMetrics()
    for prob, target, fov in _random_images(12, size=96):
        running.add(prob >= 0.5, target, fov, prob=prob)
    kept = sum(a.nbytes for a in vars(running).values() if isinstance(a, np.ndarray))
    assert kept == 2 * running.bins * 8  # two histograms, whatever the number of images


def test_running_metrics_without_images_say_so():
    with pytest.raises(UserError, match="No image was scored"):
        RunningMetrics().result()
