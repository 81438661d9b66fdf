"""Post-processing calibration on validation images, and the pooled Dice it (and the trainer) scores by.

At the end of training, ``engine.training.loop.train`` calls ``calibrate_postprocess`` on the best checkpoint's
validation probability maps and stores the winner in the checkpoint as the model's recommended
``PostProcessConfig``, with the Dice before and after.
"""
from __future__ import annotations

from typing import Any

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
# smaller gains are noise that costs Dice on unseen images (docs/BENCHMARKS.md, "Quality for the time you give").
CALIBRATION_MIN_GAIN = 0.002
# ... and may lower the Dice of at most this share of the validation images (rounded down: none of 1-3).
LOSING_SHARE = 0.25
# The trainer calibrates only with this many validation images; with fewer it recommends the plain map. On
# DRIVE, settings chosen on 2 validation images changed the unseen images' Dice by +0.0003, 0, +0.0016,
# -0.0013 and -0.0145 in five runs (docs/BENCHMARKS.md, "Calibrating post-processing on few images").
MIN_CALIBRATION_IMAGES = 3
# The usual conservative advice for noisy vessel maps, which the explanation compares the choice with.
USUAL_THRESHOLDS = (0.6, 0.7, 0.8)
USUAL_MIN_SIZES = (50, 100)
USUAL_ADVICE = "threshold 0.6–0.8, opening and closing, smallest component 50–100 px"
_PLAIN = {"threshold": 0.5, "threshold_mode": "fixed", "apply_opening": False, "apply_closing": False,
          "min_component_size": 0, "confidence_threshold": 0.0, "shape_filter": False, "fill_holes_below": 0,
          "from_logits": False}


def calibrate_postprocess(probs: list[np.ndarray], masks: list[np.ndarray], fovs: list[np.ndarray],
                          min_gain: float = CALIBRATION_MIN_GAIN, min_images: int = 1) -> tuple[dict, dict]:
    """Choose post-processing on validation images the way nnU-Net does: keep a step only if Dice improves.

    Starts from a plain 0.5 threshold, then searches the threshold (0.30–0.80), ``min_component_size``
    (up to 120 px, 50–100 included), the components' ``confidence_threshold``, opening, closing and the
    vessel-shape filter (``min_elongation`` from ``VESSEL_RATIOS``) in turn; a step is kept only when it
    raises the pooled validation Dice by at least ``min_gain`` and lowers the Dice of at most a quarter of
    the validation images (``LOSING_SHARE``; none of up to 3 images: a gain that comes from one image while
    another loses is a property of that image, not of the model: on DRIVE, a smallest component of 80 px
    chosen that way on two validation images cost each of the four unseen images Dice, 0.0076 pooled).
    The usual conservative advice
    (:data:`USUAL_ADVICE`, at its best combination) is scored too, for the explanation.

    With fewer than ``min_images`` validation images nothing is searched: the plain map is recommended and
    the report says why (``too_few``). The trainer asks for ``MIN_CALIBRATION_IMAGES``.

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
    search = _Search(probs, masks, fovs, min_gain)
    before = search.best  # the plain map at 0.5
    if len(probs) < min_images:  # too few to choose by: the plain map, and a sentence saying why
        recommended = PostProcessConfig(**_PLAIN).to_dict()
        report = {"dice_before": before, "dice_after": before, "steps": [], "trials": {}, "refused": {},
                  "usual": None, "too_few": {"images": len(probs), "needed": min_images}}
        report["explanation"] = explain_calibration(recommended, report)
        return recommended, report
    scored = {t: (search.best, search.best_images) if t == 0.5 else search.dice_per_image([p >= t for p in probs])
              for t in THRESHOLDS}
    trials: dict = {"threshold": {str(t): d for t, (d, _) in scored.items()}}
    search.consider("threshold", [{"threshold": t} for t in THRESHOLDS], [scored[t] for t in THRESHOLDS])
    for key, candidates in _SEARCHES:
        base = search.best
        results = [search.score_images({**search.current, **c}) for c in candidates]
        trials[key] = {"without": base, "with": {str(_shown(key, c)): d for c, (d, _) in zip(candidates, results)}}
        search.consider(key, candidates, results)
    usual_dice, usual = max(((search.score_images(u)[0], u) for u in (
        {**_PLAIN, "threshold": t, "apply_opening": True, "apply_closing": True, "min_component_size": m}
        for t in USUAL_THRESHOLDS for m in USUAL_MIN_SIZES)), key=lambda scored_advice: scored_advice[0])
    recommended = PostProcessConfig(**search.current).to_dict()
    report = {"dice_before": before, "dice_after": search.best, "steps": search.steps, "trials": trials,
              "refused": search.refused,
              "usual": {"threshold": usual["threshold"], "min_component_size": usual["min_component_size"],
                        "dice": usual_dice}}
    report["explanation"] = explain_calibration(recommended, report)
    return recommended, report


_SEARCHES = [("min_component_size", [{"min_component_size": v} for v in MIN_SIZES[1:]]),
             ("confidence_threshold", [{"confidence_threshold": v} for v in CONFIDENCES]),
             ("apply_opening", [{"apply_opening": True}]), ("apply_closing", [{"apply_closing": True}]),
             ("shape_filter", [{"shape_filter": True, "min_elongation": r} for r in VESSEL_RATIOS])]


def _shown(key: str, option: dict) -> Any:
    """The value a trial or a refused step is reported by: the threshold, the size, the vessel ratio, ..."""
    return option["min_elongation"] if key == "shape_filter" else next(iter(option.values()))


class _Search:
    """The settings chosen so far in one calibration, the Dice they reach (pooled and per image), and the
    rule that keeps a step (see ``calibrate_postprocess``)."""

    def __init__(self, probs: list[np.ndarray], masks: list[np.ndarray], fovs: list[np.ndarray], min_gain: float):
        self.probs, self.masks, self.fovs, self.min_gain = probs, masks, fovs, min_gain
        self.current, self.steps, self.refused = dict(_PLAIN), [], {}
        self.best, self.best_images = self.dice_per_image([p >= 0.5 for p in probs])  # the plain map to beat

    def dice_per_image(self, preds: list[np.ndarray]) -> tuple[float, list[float]]:
        """(pooled Dice, Dice of each image) of binary predictions."""
        return pooled_dice(preds, self.masks, self.fovs), [
            pooled_dice([p], [m], [f]) for p, m, f in zip(preds, self.masks, self.fovs)]

    def score_images(self, settings: dict) -> tuple[float, list[float]]:
        """The Dice of the validation maps post-processed with ``settings``."""
        cfg = PostProcessConfig(**settings)
        return self.dice_per_image([enhanced_post_processing(p, config=cfg, fov=f).mask
                                    for p, f in zip(self.probs, self.fovs)])

    def _losing(self, images: list[float]) -> int:
        return sum(d < b for d, b in zip(images, self.best_images))

    def consider(self, key: str, options: list[dict], results: list[tuple[float, list[float]]]) -> None:
        """Keep the best option that gains ``min_gain`` pooled and lowers at most ``LOSING_SHARE`` of the
        images; note as refused the best one that gains pooled only by lowering more of them."""
        gaining = [i for i, (d, _) in enumerate(results) if d >= self.best + self.min_gain]
        allowed = int(len(self.probs) * LOSING_SHARE)
        fair = [i for i in gaining if self._losing(results[i][1]) <= allowed]
        if fair:
            i = max(fair, key=lambda j: results[j][0])  # the first of equal scores
            self.current.update(options[i])
            self.steps.append(", ".join(f"{k} {v}" for k, v in options[i].items()))
            self.best, self.best_images = results[i]
        elif gaining:
            i = max(gaining, key=lambda j: results[j][0])
            self.refused[key] = {"value": _shown(key, options[i]), "dice": results[i][0], "without": self.best,
                                 "images_worse": self._losing(results[i][1]), "images": len(self.probs)}


def explain_calibration(recommended: dict, report: dict) -> list[str]:
    """Sentences on how ``recommended`` differs from the usual conservative advice and why, from the
    Dice the calibration measured on the validation images (``report`` as ``calibrate_postprocess`` returns it)."""
    if report.get("too_few"):
        n, needed = report["too_few"]["images"], report["too_few"]["needed"]
        return [f"The plain map at 0.5: with {n} validation image{'s' if n != 1 else ''}, post-processing is not "
                f"chosen (that takes at least {needed}), because settings chosen on so few images cost unseen "
                "images Dice more often than they gain it; the tuner's sliders show what each step would do."]
    trials, words = report["trials"], []
    refused = report.get("refused") or {}  # reports of earlier versions have none
    t = recommended["threshold"]
    raw = trials["threshold"]
    if "threshold" in refused:
        words.append(_refused_words("threshold", refused["threshold"]))
    elif USUAL_THRESHOLDS[0] <= t <= USUAL_THRESHOLDS[-1]:
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
        if key in refused:
            words.append(_refused_words(key, refused[key]))
        elif recommended[key]:
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
    if "min_component_size" in refused:
        words.append(_refused_words("min_component_size", refused["min_component_size"]))
    elif size:
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
    words += [_refused_words(key, refused[key]) for key in ("confidence_threshold", "shape_filter") if key in refused]
    usual = report["usual"]
    words.append(f"The usual advice at its best on these images (threshold {usual['threshold']:g}, opening and "
                 f"closing, smallest component {usual['min_component_size']} px) scores {usual['dice']:.3f}, "
                 f"against {report['dice_after']:.3f} for these settings.")
    return words


_STEP_NAMES = {"threshold": "Threshold {:g}", "min_component_size": "A smallest component of {} px",
               "confidence_threshold": "A confidence filter of {:g}", "apply_opening": "Opening",
               "apply_closing": "Closing", "shape_filter": "The vessel-shape filter at a length / width of {:g}"}


def _refused_words(key: str, refused: dict) -> str:
    """The sentence for a step that raised the pooled validation Dice only by lowering some image's."""
    what = _STEP_NAMES[key].format(refused["value"])
    n, of = refused["images_worse"], refused["images"]
    allowed = int(of * LOSING_SHARE)
    return (f"{what} is not used: it raised the validation Dice of the images together from "
            f"{refused['without']:.3f} to {refused['dice']:.3f}, but lowered it on {n} of the {of} validation "
            f"images; a step may lower at most a quarter of them (here {allowed or 'none'}), because a gain that "
            "one image brings while another loses is more likely that image's than the model's.")
