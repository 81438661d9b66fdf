"""Segmentation metrics for vessel masks, counted inside the field of view.

``segmentation_metrics(pred, target, fov=None, threshold=0.5)`` scores one image;
``pooled_metrics([(pred, target, fov), ...])`` pools every FOV pixel of several images before
dividing, as retinal-vessel papers report DRIVE/STARE/CHASE results (not a mean of per-image
scores). ``RunningMetrics`` pools the same way one image at a time, in memory that does not grow
with the number of images (its AUC ranks histograms of the probabilities, ``AUC_BINS`` bins).

Inputs (numpy arrays or torch tensors, leading size-1 dimensions allowed):

* ``pred``: a probability map (float in [0, 1]; binarised as ``pred >= threshold``) or a binary
  mask (bool/integer, nonzero = vessel, or a float map holding only 0 and 1);
* ``target``: the ground truth, nonzero = vessel;
* ``fov``: optional mask, nonzero = inside; without it every pixel counts.

Keys: ``dice`` (= F1), ``iou``, ``precision``, ``sensitivity`` (recall), ``specificity``,
``accuracy``, ``roc_auc`` and ``cldice``.

* ``roc_auc`` is the rank (Mann-Whitney) AUC of the probabilities against the target, ties
  counted as one half. It is ``None`` when ``pred`` is binary (a mask has no ranking) or when
  the target has only one class inside the FOV (AUC is undefined then).
* ``cldice`` is the centerline Dice of Shit et al., "clDice - a Novel Topology-Preserving Loss
  Function for Tubular Structure Segmentation", CVPR 2021:
  ``Tprec = |S(P) ∩ L| / |S(P)|``, ``Tsens = |S(L) ∩ P| / |S(L)|``,
  ``cldice = 2 Tprec Tsens / (Tprec + Tsens)``, with S the skeleton
  (``skimage.morphology.skeletonize``) of each mask after zeroing outside the FOV.

Empty masks. A ratio whose denominator is zero is 1.0 when prediction and target agree
everywhere inside the FOV for what that ratio measures, and 0.0 otherwise. So when both masks
are empty dice, iou, precision, sensitivity and cldice are all 1.0; an empty prediction of a
non-empty target gets precision 0.0 (and dice, iou, sensitivity 0.0); a prediction on an empty
target gets sensitivity 0.0. An empty FOV raises ``UserError``.
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from engine.arrays import squeeze_to_2d, to_numpy
from engine.errors import UserError

METRIC_KEYS = ("dice", "iou", "precision", "sensitivity", "specificity", "accuracy", "roc_auc", "cldice")
_COUNT_KEYS = ("tp", "fp", "fn", "tn", "skel_p", "skel_p_in_t", "skel_t", "skel_t_in_p")
# RunningMetrics' AUC counts probabilities in this many equal bins of [0, 1]; pairs in one bin count as ties,
# which moves the AUC by less than the share of pairs that fall in one bin (under 1e-4 for vessel maps).
AUC_BINS = 1 << 16


def _as_map(value: Any, what: str) -> np.ndarray:
    return squeeze_to_2d(to_numpy(value, what), what)


def _binarise_pred(pred: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray | None]:
    """(binary mask, probabilities or None when pred is already binary)."""
    if pred.dtype == bool or np.issubdtype(pred.dtype, np.integer):
        return pred != 0, None
    pred = pred.astype(np.float32, copy=False)
    low, high = float(pred.min()), float(pred.max())
    if np.isnan(low) or np.isnan(high):
        raise UserError("pred contains NaN values: check the model output before scoring it.")
    if low < 0.0 or high > 1.0:
        raise UserError(
            f"pred has values from {low:.4g} to {high:.4g}, outside [0, 1]: pass probabilities "
            "(apply a sigmoid to logits) or a binary mask."
        )
    if np.all((pred == 0) | (pred == 1)):
        return pred != 0, None
    return pred >= np.float32(threshold), pred


def _skeleton(mask: np.ndarray) -> np.ndarray:
    from skimage.morphology import skeletonize  # imported here: importing skimage is slow, and most callers never skeletonize

    return skeletonize(mask) if mask.any() else mask


def _image_counts(pred: Any, target: Any, fov: Any, threshold: float) -> dict:
    """Confusion counts, skeleton counts and (for probability maps) scores inside the FOV."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.number)) or not (
        0.0 <= float(threshold) <= 1.0
    ):
        raise UserError(f"threshold must be a number between 0 and 1; got {threshold!r}.")
    pred_arr, target_arr = _as_map(pred, "pred"), _as_map(target, "target")
    if pred_arr.shape != target_arr.shape:
        raise UserError(
            f"pred is {pred_arr.shape[1]}x{pred_arr.shape[0]} (width x height) but target is "
            f"{target_arr.shape[1]}x{target_arr.shape[0]}: score a prediction against the mask of the same image."
        )
    if target_arr.dtype.kind == "f" and np.isnan(target_arr).any():
        raise UserError("target contains NaN values: pass a binary ground-truth mask.")
    binary, prob = _binarise_pred(pred_arr, float(threshold))
    truth = target_arr != 0
    if fov is None:
        inside = np.ones(truth.shape, dtype=bool)
    else:
        inside = _as_map(fov, "fov") != 0
        if inside.shape != truth.shape:
            raise UserError(
                f"fov is {inside.shape[1]}x{inside.shape[0]} (width x height) but the masks are "
                f"{truth.shape[1]}x{truth.shape[0]}: use the FOV mask that belongs to this image."
            )
        if not inside.any():
            raise UserError("the FOV mask is empty (no pixel inside): pass the image's real FOV mask, or none.")
    p, t = binary & inside, truth & inside
    tp = int(np.count_nonzero(p & t))
    n_p, n_t, n = int(np.count_nonzero(p)), int(np.count_nonzero(t)), int(np.count_nonzero(inside))
    skel_p, skel_t = _skeleton(p), _skeleton(t)
    counts = {
        "tp": tp, "fp": n_p - tp, "fn": n_t - tp, "tn": n - n_p - n_t + tp,
        "skel_p": int(np.count_nonzero(skel_p)), "skel_p_in_t": int(np.count_nonzero(skel_p & t)),
        "skel_t": int(np.count_nonzero(skel_t)), "skel_t_in_p": int(np.count_nonzero(skel_t & p)),
        "scores": None if prob is None else prob[inside], "labels": truth[inside],
    }
    return counts


def _ratio(num: float, den: float, agree: bool) -> float:
    if den == 0:
        return 1.0 if agree else 0.0
    return float(num) / float(den)


def roc_auc_score(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Rank AUC: P(score of a random positive > that of a random negative), ties count 1/2.

    ``None`` when only one class is present. Average ranks of tied scores, computed with one
    ``np.unique`` (sort) and per-value counts of positives.
    """
    scores = np.asarray(scores).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    n_pos = int(np.count_nonzero(labels))
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    values, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based rank shared by each tie group
    positives_per_value = np.bincount(inverse[labels], minlength=values.size)
    rank_sum = float(np.dot(positives_per_value, average_rank))
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def _metrics_from_counts(c: dict, scores: np.ndarray | None, labels: np.ndarray | None) -> dict:
    tp, fp, fn, tn = c["tp"], c["fp"], c["fn"], c["tn"]
    both_empty = tp + fp + fn == 0
    t_prec = _ratio(c["skel_p_in_t"], c["skel_p"], agree=fn == 0)
    t_sens = _ratio(c["skel_t_in_p"], c["skel_t"], agree=fp == 0)
    if both_empty:
        cldice = 1.0
    elif t_prec + t_sens == 0:
        cldice = 0.0
    else:
        cldice = 2.0 * t_prec * t_sens / (t_prec + t_sens)
    return {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn, agree=both_empty),
        "iou": _ratio(tp, tp + fp + fn, agree=both_empty),
        "precision": _ratio(tp, tp + fp, agree=fn == 0),
        "sensitivity": _ratio(tp, tp + fn, agree=fp == 0),
        "specificity": _ratio(tn, tn + fp, agree=fn == 0),
        "accuracy": _ratio(tp + tn, tp + tn + fp + fn, agree=True),
        "roc_auc": None if scores is None else roc_auc_score(scores, labels),
        "cldice": cldice,
    }


def segmentation_metrics(pred: Any, target: Any, fov: Any = None, threshold: float = 0.5) -> dict:
    """Metrics of one prediction against its ground truth, counted inside ``fov``; see the module doc."""
    c = _image_counts(pred, target, fov, threshold)
    return _metrics_from_counts(c, c["scores"], c["labels"])


def pooled_metrics(items: Iterable[tuple[Any, Any, Any]], threshold: float = 0.5) -> dict:
    """Metrics over all FOV pixels of several ``(pred, target, fov)`` images pooled together.

    Confusion and skeleton counts are summed before dividing; ``roc_auc`` ranks every FOV pixel
    of every image together (``None`` if any prediction is binary). Adds ``n_images``.
    """
    totals: dict[str, int] = {}
    scores, labels = [], []
    probabilistic = True
    n_images = 0
    for n_images, item in enumerate(items, start=1):
        try:
            pred, target, fov = item
        except (TypeError, ValueError):
            raise UserError(
                f"item {n_images} must be a (pred, target, fov) tuple; use fov=None when there is no FOV mask."
            ) from None
        c = _image_counts(pred, target, fov, threshold)
        for key in _COUNT_KEYS:
            totals[key] = totals.get(key, 0) + c[key]
        if c["scores"] is None:
            probabilistic = False
        elif probabilistic:
            scores.append(c["scores"])
            labels.append(c["labels"])
    if n_images == 0:
        raise UserError("pooled_metrics needs at least one (pred, target, fov) image.")
    if probabilistic:
        result = _metrics_from_counts(totals, np.concatenate(scores), np.concatenate(labels))
    else:
        result = _metrics_from_counts(totals, None, None)
    result["n_images"] = n_images
    return result


def _histogram_auc(positives: np.ndarray, negatives: np.ndarray) -> float | None:
    """Rank AUC from per-bin counts of positive and negative scores (ties within a bin count 1/2)."""
    n_pos, n_neg = int(positives.sum()), int(negatives.sum())
    if n_pos == 0 or n_neg == 0:
        return None
    below = np.cumsum(negatives) - negatives  # negatives in lower bins
    wins = float(np.dot(positives.astype(np.float64), below + negatives / 2.0))
    return wins / (float(n_pos) * float(n_neg))


class RunningMetrics:
    """Metrics pooled over every FOV pixel of images added one at a time, as :func:`pooled_metrics` gives them,
    in memory that does not depend on how many images are added: confusion and skeleton counts are summed,
    and the probabilities of vessel and background pixels are counted in ``AUC_BINS`` bins for the AUC.

    Example::

        running = RunningMetrics()
        for image in images:
            per_image = running.add(mask, truth, fov, prob)   # this image's metrics
        pooled = running.result()                          # pooled metrics, with n_images
    """

    def __init__(self, bins: int = AUC_BINS):
        self.bins = int(bins)
        self.totals = dict.fromkeys(_COUNT_KEYS, 0)
        self.positives = np.zeros(self.bins, np.int64)
        self.negatives = np.zeros(self.bins, np.int64)
        self.probabilistic = True
        self.n_images = 0

    def _histograms(self, prob: Any, target: Any, fov: Any) -> tuple[np.ndarray, np.ndarray]:
        """Per-bin counts of the probabilities of the vessel and of the background pixels inside ``fov``."""
        prob_arr, target_arr = _as_map(prob, "prob"), _as_map(target, "target")
        _, scores = _binarise_pred(prob_arr, 0.5)
        if scores is None:
            raise UserError("prob must be a probability map in [0, 1], not a binary mask: AUC ranks probabilities.")
        if prob_arr.shape != target_arr.shape:
            raise UserError(f"prob is {prob_arr.shape[1]}x{prob_arr.shape[0]} (width x height) but target is "
                            f"{target_arr.shape[1]}x{target_arr.shape[0]}: use the map of the same image.")
        inside = np.ones(target_arr.shape, bool) if fov is None else _as_map(fov, "fov") != 0
        index = np.minimum((scores[inside] * self.bins).astype(np.int64), self.bins - 1)
        labels = target_arr[inside] != 0
        return (np.bincount(index[labels], minlength=self.bins), np.bincount(index[~labels], minlength=self.bins))

    def add(self, pred: Any, target: Any, fov: Any = None, prob: Any = None, threshold: float = 0.5) -> dict:
        """Count one image in; returns its own metrics.

        Args:
            pred: its mask (or a probability map, binarised at ``threshold``).
            target, fov: as for :func:`segmentation_metrics`.
            prob: the probability map its AUC ranks (default: ``pred`` when that is a map); without one the
                pooled AUC is None.
        Raises:
            UserError: as :func:`segmentation_metrics`.
        """
        c = _image_counts(pred, target, fov, threshold)
        scores = c.pop("scores")
        c.pop("labels")
        ranked = prob if prob is not None else (pred if scores is not None else None)
        if ranked is None:
            self.probabilistic = False
            auc = None
        else:
            positives, negatives = self._histograms(ranked, target, fov)
            auc = _histogram_auc(positives, negatives)
            self.positives += positives
            self.negatives += negatives
        for key in _COUNT_KEYS:
            self.totals[key] += c[key]
        self.n_images += 1
        return {**_metrics_from_counts(c, None, None), "roc_auc": auc}

    def result(self) -> dict:
        """The pooled metrics of every image added so far, with ``n_images``.

        Raises:
            UserError: no image was added.
        """
        if not self.n_images:
            raise UserError("No image was scored: there is nothing to pool.")
        result = _metrics_from_counts(self.totals, None, None)
        result["roc_auc"] = _histogram_auc(self.positives, self.negatives) if self.probabilistic else None
        result["n_images"] = self.n_images
        return result
