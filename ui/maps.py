"""Checkpoints the dashboard may load, their predictors, and probability maps, cached.

A source is a checkpoint path, ``SHIPPED`` or ``CLASSICAL`` (``engine.inference.predictor``). Predictors are
cached per (source, mtime); probability maps per (source + mtime, image bytes hash, field of view, image
scale), so moving a slider re-runs only post-processing.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import streamlit as st

from engine.errors import UserError
from engine.inference.predictor import CLASSICAL, SHIPPED, Predictor
from storage.db import checkpoint_file
from storage import paths
from ui.runtime import logger
from ui.uploads import Upload, digest_array


@st.cache_resource(max_entries=4, show_spinner="Loading the model…")
def load_predictor(source: str, mtime: float) -> Predictor:
    """The predictor of a source, its model loaded; ``mtime`` makes a rewritten best.pt load again."""
    return Predictor.open(source)  # torch loads only for a model


def predictor_of(source: str) -> Predictor:
    """The cached predictor of a source the dashboard may load (see :func:`dashboard_checkpoint`)."""
    source = dashboard_checkpoint(source)
    return load_predictor(source, checkpoint_mtime(source))


def dashboard_checkpoint(path: str) -> str:
    """``path`` when the dashboard may load it: the classical filter, the shipped pretrained model, or a ``.pt``
    file inside the data home's models folder. Anything else (a path typed or pasted from elsewhere) is refused
    with a sentence: checkpoints are pickles, and only this program's own files are trusted to hold them."""
    if checkpoint_file(path) is None:
        return path
    if Path(path).resolve() == Path(SHIPPED).resolve():
        return str(Path(SHIPPED).resolve())
    models = paths.models_dir()
    if not paths.is_inside(path, models):
        raise UserError(f"{path} is outside the data home's models folder ({models}): the dashboard loads only "
                         "checkpoints of models trained here. Copy a checkpoint into a run folder, or use the "
                         "command line (python -m engine predict --checkpoint …).")
    return str(Path(path).resolve())


def checkpoint_mtime(path: str) -> float:
    file = checkpoint_file(path)
    if file is None:
        return 0.0
    try:
        return file.stat().st_mtime
    except FileNotFoundError:
        raise UserError(f"The checkpoint {path} no longer exists: pick another one.") from None


@st.cache_data(max_entries=64, show_spinner=False)
def _probability_map(source: str, mtime: float, digest: str, fov_digest: str, scale: str | float,
                     _image: np.ndarray, _fov: np.ndarray | None) -> np.ndarray:
    t0 = time.monotonic()
    prob = load_predictor(source, mtime).predict(_image, _fov, scale).map  # flips as the dashboard does
    logger.info("probability map %s by %s, scale %s: %.1f s", _image.shape, Path(source).name, scale, time.monotonic() - t0)
    return prob


def probability_map(source: str, image: Upload, fov: np.ndarray | None = None, scale: str | float = "auto") -> np.ndarray:
    """float32 (H, W) probability map of ``image`` under a source (a checkpoint path, SHIPPED or CLASSICAL),
    computed once per (model, image, ``fov``, ``scale``); 0 outside ``fov`` (uint8 (H, W); estimated when None).
    ``scale``: see ``engine.inference.predict.resolve_scale``. Raises UserError (a sentence) for a checkpoint the
    dashboard may not load."""
    source = dashboard_checkpoint(source)
    fov_digest = "estimated" if fov is None else digest_array(fov)
    mtime = checkpoint_mtime(source)
    if not load_predictor(source, mtime).scale_control:  # the classical filter brings its own scale: one entry
        scale = "auto"
    # st.spinner shows only when the work lasts: a cached map (a slider move) draws nothing
    with st.spinner(map_progress_text(source, mtime, image.array, fov, scale)):
        return _probability_map(source, mtime, image.digest, fov_digest, scale, image.array, fov)


def map_progress_text(source: str, mtime: float, image: np.ndarray, fov: np.ndarray | None, scale: str | float) -> str:
    """What computing the probability map of ``image`` (uint8 (H, W, 3)) does, in words, for its spinner:
    the size the model sees, or the classical filter."""
    h, w = image.shape[:2]
    predictor = load_predictor(source, mtime)
    factor = 1.0 if fov is None else predictor.scale_factor(fov, scale if predictor.scale_control else "auto")
    return predictor.progress_words(f"{round(w * factor):,}×{round(h * factor):,} px")
