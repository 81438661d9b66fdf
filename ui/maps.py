"""Checkpoints the dashboard may load, and probability maps, cached.

Probability maps are cached per (checkpoint path + mtime, image bytes hash, field of view, image scale), so
moving a slider re-runs only post-processing. ``BASELINE_SOURCE`` stands for the classical filter wherever a
checkpoint path goes.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import streamlit as st

from engine.errors import UserError
from engine.vesselness import vesselness_map
from storage import paths
from storage.db import BASELINE
from ui.runtime import logger
from ui.uploads import Upload, digest_array

BASELINE_SOURCE = BASELINE  # stands for the classical filter wherever a checkpoint path goes


@st.cache_resource(max_entries=4, show_spinner="Loading the model…")
def load_checkpoint(path: str, mtime: float):
    """The loaded model of a checkpoint; ``mtime`` makes a rewritten best.pt load again."""
    from engine.inference.predict import load_model  # torch loads only on pages that need it

    return load_model(path)


def dashboard_checkpoint(path: str) -> str:
    """``path`` when the dashboard may load it: the baseline, the shipped pretrained model, or a ``.pt`` file
    inside the data home's models folder. Anything else (a path typed or pasted from elsewhere) is refused
    with a sentence: checkpoints are pickles, and only this program's own files are trusted to hold them."""
    if path == BASELINE_SOURCE:
        return path
    from engine.pretrained import PRETRAINED_PATH

    if Path(path).resolve() == PRETRAINED_PATH.resolve():
        return str(PRETRAINED_PATH.resolve())
    models = paths.models_dir()
    if not paths.is_inside(path, models):
        raise UserError(f"{path} is outside the data home's models folder ({models}): the dashboard loads only "
                         "checkpoints of models trained here. Copy a checkpoint into a run folder, or use the "
                         "command line (python -m engine predict --checkpoint …).")
    return str(Path(path).resolve())


def checkpoint_mtime(path: str) -> float:
    if path == BASELINE_SOURCE:
        return 0.0
    try:
        return Path(path).stat().st_mtime
    except FileNotFoundError:
        raise UserError(f"The checkpoint {path} no longer exists: pick another one.") from None


@st.cache_data(max_entries=64, show_spinner=False)
def _probability_map(source: str, mtime: float, digest: str, fov_digest: str, scale: str | float,
                     _image: np.ndarray, _fov: np.ndarray | None) -> np.ndarray:
    t0 = time.monotonic()
    if source == BASELINE_SOURCE:
        prob = vesselness_map(_image, _fov)
    else:
        from engine.inference.predict import DASHBOARD_TTA, predict  # torch loads only on pages that need it

        prob = predict(load_checkpoint(source, mtime), _image, fov=_fov, scale=scale, tta=DASHBOARD_TTA)
    logger.info("probability map %s by %s, scale %s: %.1f s", _image.shape, Path(source).name, scale, time.monotonic() - t0)
    return prob


def probability_map(source: str, image: Upload, fov: np.ndarray | None = None, scale: str | float = "auto") -> np.ndarray:
    """float32 (H, W) probability map of ``image`` under a checkpoint path (or BASELINE_SOURCE), computed once per
    (model, image, ``fov``, ``scale``); 0 outside ``fov`` (uint8 (H, W); estimated when None). ``scale``: see
    ``engine.inference.predict.resolve_scale``. Raises UserError (a sentence) for a checkpoint the dashboard may not load."""
    source = dashboard_checkpoint(source)
    fov_digest = "estimated" if fov is None else digest_array(fov)
    scale = "none" if source == BASELINE_SOURCE else scale  # one cache entry whatever the scale control says
    mtime = checkpoint_mtime(source)
    # st.spinner shows only when the work lasts: a cached map (a slider move) draws nothing
    with st.spinner(map_progress_text(source, mtime, image.array, fov, scale)):
        return _probability_map(source, mtime, image.digest, fov_digest, scale, image.array, fov)


def map_progress_text(source: str, mtime: float, image: np.ndarray, fov: np.ndarray | None, scale: str | float) -> str:
    """What computing the probability map of ``image`` (uint8 (H, W, 3)) does, in words, for its spinner:
    the size the model sees, or the classical filter."""
    h, w = image.shape[:2]
    if fov is None:
        factor = 1.0
    elif source == BASELINE_SOURCE:
        from engine.vesselness import baseline_scale

        factor = baseline_scale(fov)
    else:
        from engine.inference.predict import resolve_scale

        factor = resolve_scale(load_checkpoint(source, mtime), fov, scale)
    size = f"{round(w * factor):,}×{round(h * factor):,} px"
    return f"Computing the classical vesselness map at {size}…" if source == BASELINE_SOURCE else f"Predicting at {size}…"
