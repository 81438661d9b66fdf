"""Scoring a predictor on a data set the way ``python -m engine evaluate`` does, one photograph at a time.

``evaluate_dataset(predictor, dataset)`` predicts every photograph (or the chosen ones) at its own size, as a
clinician's photograph is predicted (its field-of-view mask when the data set has one, else estimated; scale
automatic unless told), binarises the map with the given post-processing or threshold, and pools the metrics
over every FOV pixel with :class:`engine.metrics.RunningMetrics`: nothing of a photograph is kept once it is
scored, so memory does not grow with the number of photographs.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from engine.metrics import RunningMetrics


@dataclass
class Evaluation:
    """Pooled metrics (with ``n_images``), each photograph's own, and the seconds each took."""

    pooled: dict
    per_image: list[dict] = field(default_factory=list)

    @property
    def seconds_per_image(self) -> float:
        return float(np.mean([row["seconds"] for row in self.per_image])) if self.per_image else 0.0


def binarise(prob: np.ndarray, config: Any, threshold: float, fov: np.ndarray | None) -> np.ndarray:
    """The mask of a probability map: ``config`` (a ``PostProcessConfig``) applied, or ``prob >= threshold``
    when it is None."""
    if config is None:
        return (prob >= threshold).astype(np.uint8)
    from engine.postprocess import enhanced_post_processing

    return enhanced_post_processing(prob, config=config, fov=fov).mask


def evaluate_dataset(predictor, dataset, indices: Sequence[int] | None = None, config: Any = None,
                     threshold: float = 0.5, scale: str | float = "auto", tta: bool = False,
                     on_image: Callable[[dict], None] | None = None) -> Evaluation:
    """Score ``predictor`` (an ``engine.inference.predictor.Predictor``) on ``dataset`` (a
    ``engine.training.data.Dataset``).

    Args:
        indices: the photographs to score (default: all).
        config: post-processing (``PostProcessConfig``) that makes each mask; None: ``prob >= threshold``.
        scale, tta: as for ``Predictor.predict``.
        on_image: called with each photograph's row as soon as it is scored.
    Returns:
        The pooled metrics and one row per photograph (``id``, the metrics, ``fov`` supplied or estimated,
        ``scale_factor``, ``seconds``).
    Raises:
        UserError: a photograph or mask that cannot be read or scored (the sentence names it).
    """
    running, rows = RunningMetrics(), []
    for i in range(len(dataset)) if indices is None else indices:
        sample = dataset.pairs[i]
        t0 = time.perf_counter()
        image, mask, fov = dataset.raw(i)  # the supplied FOV mask, or the estimated one
        prediction = predictor.predict(image, fov, scale=scale, tta=tta)
        pred = binarise(prediction.map, config, threshold, fov)
        metrics = running.add(pred, mask, fov, prob=prediction.map)
        row = {"id": sample.id, **{k: _plain(v) for k, v in metrics.items()},
               "fov": "supplied" if sample.fov_path else "estimated", "scale_factor": prediction.factor,
               "seconds": time.perf_counter() - t0}
        rows.append(row)
        if on_image is not None:
            on_image(row)
        del image, mask, fov, prediction, pred
    return Evaluation({k: _plain(v) for k, v in running.result().items()}, rows)


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, (np.floating, np.integer)) else value
