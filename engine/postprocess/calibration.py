"""Post-processing calibration on validation images, and the pooled Dice it (and the trainer) scores by.

At the end of training, ``engine.training.loop.train`` calls ``calibrate_postprocess`` on the best checkpoint's
validation probability maps and stores the winner in the checkpoint as the model's recommended
``PostProcessConfig``, with the Dice before and after.
"""
from __future__ import annotations

import numpy as np

from engine.postprocess.config import PostProcessConfig
from engine.postprocess.pipeline import enhanced_post_processing


def _dice_counts(prob: np.ndarray, mask: np.ndarray, fov: np.ndarray, threshold: float = 0.5) -> tuple[int, int, int]:
    inside = fov.astype(bool)
    pred, true = (prob >= threshold)[inside], mask.astype(bool)[inside]
    return int((pred & true).sum()), int(pred.sum()), int(true.sum())


def pooled_dice(preds: list[np.ndarray], masks: list[np.ndarray], fovs: list[np.ndarray]) -> float:
    """Dice of binary predictions pooled over the FOV pixels of all images."""
    tp = sp = st = 0
    for p, m, f in zip(preds, masks, fovs):
        a, b, c = _dice_counts(p.astype(np.float32), m, f, 0.5)
        tp, sp, st = tp + a, sp + b, st + c
    return 2 * tp / (sp + st) if sp + st else 1.0


THRESHOLDS = tuple(round(0.3 + 0.05 * i, 2) for i in range(9))  # 0.30 … 0.70
MIN_SIZES = (0, 10, 20, 30, 50, 80, 120)
CONFIDENCES = (0.55, 0.6, 0.65, 0.7)  # minimum mean probability of a kept component
VESSEL_RATIOS = (2.0, 3.0, 5.0)  # shape filter: minimum length / width of a kept component
# A step must raise the pooled validation Dice by this much to be kept: with a few validation images,
# smaller gains are noise that costs Dice on unseen images (the README's DRIVE results give the runs).
CALIBRATION_MIN_GAIN = 0.002


def calibrate_postprocess(probs: list[np.ndarray], masks: list[np.ndarray], fovs: list[np.ndarray],
                          min_gain: float = CALIBRATION_MIN_GAIN) -> tuple[dict, dict]:
    """Choose post-processing on validation images the way nnU-Net does: keep a step only if Dice improves.

    Starts from a plain 0.5 threshold, then searches the threshold, ``min_component_size``, the components'
    ``confidence_threshold``, opening, closing and the vessel-shape filter (``min_elongation`` from
    ``VESSEL_RATIOS``) in turn; a step is kept only when it raises the pooled validation Dice by at least
    ``min_gain``. Returns (PostProcessConfig dict, {dice_before, dice_after, steps}); ``steps`` names each
    kept step and its value, e.g. ``"min_component_size 30"``.
    """
    def score(settings: dict) -> float:
        cfg = PostProcessConfig(**settings)
        preds = [enhanced_post_processing(p, config=cfg, fov=f).mask for p, f in zip(probs, fovs)]
        return pooled_dice(preds, masks, fovs)

    current = {"threshold": 0.5, "threshold_mode": "fixed", "apply_opening": False, "apply_closing": False,
               "min_component_size": 0, "confidence_threshold": 0.0, "shape_filter": False, "fill_holes_below": 0,
               "from_logits": False}
    raw = {t: pooled_dice([p >= t for p in probs], masks, fovs) for t in THRESHOLDS}  # THRESHOLDS holds 0.5
    before = best = raw[0.5]
    steps = []
    t_best = max(raw, key=raw.get)
    if raw[t_best] >= best + min_gain:
        current["threshold"], best = t_best, raw[t_best]
        steps.append(f"threshold {t_best}")
    searches = [[{key: v} for v in values] for key, values in (
        ("min_component_size", MIN_SIZES[1:]), ("confidence_threshold", CONFIDENCES),
        ("apply_opening", (True,)), ("apply_closing", (True,)))]
    searches.append([{"shape_filter": True, "min_elongation": r} for r in VESSEL_RATIOS])
    for candidates in searches:
        trials = [score({**current, **c}) for c in candidates]
        i = int(np.argmax(trials))  # the first of equal scores, as max() over the values did
        if trials[i] >= best + min_gain:
            current.update(candidates[i])
            best = trials[i]
            steps.append(", ".join(f"{k} {v}" for k, v in candidates[i].items()))
    recommended = PostProcessConfig(**current).to_dict()
    return recommended, {"dice_before": before, "dice_after": best, "steps": steps}
