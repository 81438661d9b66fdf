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


THRESHOLDS = tuple(round(0.3 + 0.05 * i, 2) for i in range(11))  # 0.30 … 0.80
MIN_SIZES = (0, 10, 20, 30, 50, 80, 100, 120)
CONFIDENCES = (0.55, 0.6, 0.65, 0.7)  # minimum mean probability of a kept component
VESSEL_RATIOS = (2.0, 3.0, 5.0)  # shape filter: minimum length / width of a kept component
# A step must raise the pooled validation Dice by this much to be kept: with a few validation images,
# smaller gains are noise that costs Dice on unseen images (the README's DRIVE results give the runs).
CALIBRATION_MIN_GAIN = 0.002
# The usual conservative advice for noisy vessel maps, which the explanation compares the choice with.
USUAL_THRESHOLDS = (0.6, 0.7, 0.8)
USUAL_MIN_SIZES = (50, 100)
USUAL_ADVICE = "threshold 0.6–0.8, opening and closing, smallest component 50–100 px"
_PLAIN = {"threshold": 0.5, "threshold_mode": "fixed", "apply_opening": False, "apply_closing": False,
          "min_component_size": 0, "confidence_threshold": 0.0, "shape_filter": False, "fill_holes_below": 0,
          "from_logits": False}


def calibrate_postprocess(probs: list[np.ndarray], masks: list[np.ndarray], fovs: list[np.ndarray],
                          min_gain: float = CALIBRATION_MIN_GAIN) -> tuple[dict, dict]:
    """Choose post-processing on validation images the way nnU-Net does: keep a step only if Dice improves.

    Starts from a plain 0.5 threshold, then searches the threshold (0.30–0.80), ``min_component_size``
    (up to 120 px, 50–100 included), the components' ``confidence_threshold``, opening, closing and the
    vessel-shape filter (``min_elongation`` from ``VESSEL_RATIOS``) in turn; a step is kept only when it
    raises the pooled validation Dice by at least ``min_gain``. The usual conservative advice
    (:data:`USUAL_ADVICE`, at its best combination) is scored too, for the explanation.

    Args:
        probs: probability maps (H, W) in [0, 1], one per validation image.
        masks: their vessel masks (H, W), nonzero on vessels.
        fovs: their fields of view (H, W), nonzero inside; Dice pools the pixels inside.

    Returns:
        (PostProcessConfig dict, report). The report holds ``dice_before`` (0.5, nothing else),
        ``dice_after``, ``steps`` (each kept step and its value, e.g. ``"min_component_size 30"``),
        ``trials`` (the Dice of every setting the explanation quotes), ``usual`` (the best of the usual
        advice: its settings and Dice) and ``explanation`` (sentences on how the choice differs from the
        usual advice and why).
    """
    def score(settings: dict) -> float:
        cfg = PostProcessConfig(**settings)
        preds = [enhanced_post_processing(p, config=cfg, fov=f).mask for p, f in zip(probs, fovs)]
        return pooled_dice(preds, masks, fovs)

    current = dict(_PLAIN)
    raw = {t: pooled_dice([p >= t for p in probs], masks, fovs) for t in THRESHOLDS}  # THRESHOLDS holds 0.5
    before = best = raw[0.5]
    steps = []
    t_best = max(raw, key=raw.get)
    if raw[t_best] >= best + min_gain:
        current["threshold"], best = t_best, raw[t_best]
        steps.append(f"threshold {t_best}")
    trials: dict = {"threshold": {str(t): d for t, d in raw.items()}}
    searches = [("min_component_size", [{"min_component_size": v} for v in MIN_SIZES[1:]]),
                ("confidence_threshold", [{"confidence_threshold": v} for v in CONFIDENCES]),
                ("apply_opening", [{"apply_opening": True}]), ("apply_closing", [{"apply_closing": True}]),
                ("shape_filter", [{"shape_filter": True, "min_elongation": r} for r in VESSEL_RATIOS])]
    for key, candidates in searches:
        base = best
        results = [score({**current, **c}) for c in candidates]
        trials[key] = {"without": base, "with": {str(next(iter(c.values())) if key != "shape_filter" else
                                                     c["min_elongation"]): d for c, d in zip(candidates, results)}}
        i = int(np.argmax(results))  # the first of equal scores, as max() over the values did
        if results[i] >= best + min_gain:
            current.update(candidates[i])
            best = results[i]
            steps.append(", ".join(f"{k} {v}" for k, v in candidates[i].items()))
    usual = max(({**_PLAIN, "threshold": t, "apply_opening": True, "apply_closing": True, "min_component_size": m}
                 for t in USUAL_THRESHOLDS for m in USUAL_MIN_SIZES), key=score)
    usual_dice = score(usual)
    recommended = PostProcessConfig(**current).to_dict()
    report = {"dice_before": before, "dice_after": best, "steps": steps, "trials": trials,
              "usual": {"threshold": usual["threshold"], "min_component_size": usual["min_component_size"],
                        "dice": usual_dice}}
    report["explanation"] = explain_calibration(recommended, report)
    return recommended, report


def explain_calibration(recommended: dict, report: dict) -> list[str]:
    """Sentences on how ``recommended`` differs from the usual conservative advice and why, from the
    Dice the calibration measured on the validation images (``report`` as ``calibrate_postprocess`` returns it)."""
    trials, words = report["trials"], []
    t = recommended["threshold"]
    raw = trials["threshold"]
    if USUAL_THRESHOLDS[0] <= t <= USUAL_THRESHOLDS[-1]:
        words.append(f"Threshold {t:g}, within the usual 0.6–0.8: it raised the validation Dice from "
                     f"{raw['0.5']:.3f} at 0.5 to {raw[str(t)]:.3f}.")
    else:
        usual = ", ".join(f"{u:g}: {raw[str(u)]:.3f}" for u in USUAL_THRESHOLDS)
        best_usual = max(raw[str(u)] for u in USUAL_THRESHOLDS)
        effect = ("removes thin vessels and vessel edges rather than noise, so it costs Dice"
                  if best_usual < raw[str(t)] - CALIBRATION_MIN_GAIN else "gains nothing")
        words.append(f"Threshold {t:g} instead of the usual 0.6–0.8: on this model's maps a higher threshold "
                     f"{effect} (validation Dice {raw[str(t)]:.3f} at {t:g}; {usual}).")
    for key, name in (("apply_opening", "Opening"), ("apply_closing", "Closing")):
        trial = trials[key]
        d_with = trial["with"]["True"]
        if recommended[key]:
            words.append(f"{name} on: it raised the validation Dice from {trial['without']:.3f} to {d_with:.3f}.")
        elif d_with < trial["without"] - CALIBRATION_MIN_GAIN / 2:
            what = "erodes thin vessels and cuts them at their narrowest points" if key == "apply_opening" else \
                "merges vessels that run close together and fills the gaps between them"
            words.append(f"No {name.lower()}: on this model's maps it {what} (validation Dice "
                         f"{trial['without']:.3f} without, {d_with:.3f} with).")
        else:
            words.append(f"No {name.lower()}: it changed the validation Dice by less than "
                         f"{CALIBRATION_MIN_GAIN:g} ({trial['without']:.3f} without, {d_with:.3f} with), "
                         "so the vessels are left as the model drew them.")
    size = recommended["min_component_size"]
    sizes = trials["min_component_size"]
    usual_sizes = ", ".join(f"{m} px: {sizes['with'][str(m)]:.3f}" for m in USUAL_MIN_SIZES)
    if size:
        words.append(f"Smallest component {size} px: removing smaller pieces raised the validation Dice from "
                     f"{sizes['without']:.3f} to {sizes['with'][str(size)]:.3f} ({usual_sizes}).")
    elif max(sizes["with"][str(m)] for m in USUAL_MIN_SIZES) < sizes["without"] - CALIBRATION_MIN_GAIN / 2:
        words.append(f"No smallest component size: the small pieces on this model's maps are more often "
                     f"vessel (ends and short branches drawn apart from their vessel) than noise, so removing "
                     f"them costs Dice (validation Dice {sizes['without']:.3f} keeping every piece; {usual_sizes}).")
    else:
        words.append(f"No smallest component size: removing small pieces changed the validation Dice by less "
                     f"than {CALIBRATION_MIN_GAIN:g} ({sizes['without']:.3f} keeping every piece; {usual_sizes}), "
                     "so nothing the model drew is removed.")
    usual = report["usual"]
    words.append(f"The usual advice at its best on these images (threshold {usual['threshold']:g}, opening and "
                 f"closing, smallest component {usual['min_component_size']} px) scores {usual['dice']:.3f}, "
                 f"against {report['dice_after']:.3f} for these settings.")
    return words
