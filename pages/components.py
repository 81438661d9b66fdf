"""Widgets shared by several pages: uploads, cached probability maps, errors as sentences, the
post-processing tuner, and cached storage reads (the training-curve figure is in ``pages.charts``).

UI functions draw widgets and return values; the computing lives in ``engine``. Probability maps
are cached per (checkpoint path + mtime, image bytes hash, field of view, image scale), so moving a
slider re-runs only post-processing, inside an ``st.fragment``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from logging.handlers import RotatingFileHandler
from pathlib import Path

import cv2
import numpy as np
import streamlit as st

from engine.imageio import IMAGE_EXTENSIONS, check_same_size, encode_png, read_image, read_mask_with_note
from engine.metrics import segmentation_metrics
from engine.postprocess import PostProcessConfig, PostProcessResult, enhanced_post_processing, warnings_for
from engine.vesselness import vesselness_map
from storage import paths
from storage.db import BASELINE, STOP_REASONS, TRAINING_STATUSES
from storage.db import WORKER_FRESH_S  # noqa: F401 - the pages read it from here
from engine.errors import UserError, user_error

logger = logging.getLogger("ml_manager.dashboard")

IMAGE_TYPES = sorted({ext.lstrip(".") for ext in IMAGE_EXTENSIONS})
BASELINE_SOURCE = BASELINE  # stands for the classical filter wherever a checkpoint path goes
KEPT_RGB = (40, 230, 90)  # green: vessel pixels the post-processing keeps
REMOVED_RGB = (255, 40, 220)  # magenta: pixels that passed the threshold but a filter removed
FOV_RGB = (255, 200, 0)  # amber: the outline of the field of view
_TINT = 0.65  # how strongly the overlay colours cover the photograph
_KERNELS = list(range(1, 32, 2))  # PostProcessConfig takes odd kernel sides 1..31


# --------------------------------------------------------------------------------------------
# Logging and errors
# --------------------------------------------------------------------------------------------
def configure_logging() -> Path:
    """Send the dashboard's log (and tracebacks) to ``<data home>/logs/dashboard.log``."""
    log_path = paths.logs_dir() / "dashboard.log"
    for name in ("ml_manager", "engine", "storage"):
        lg = logging.getLogger(name)
        ours = [h for h in lg.handlers if hasattr(h, "ml_manager_log")]
        if any(h.ml_manager_log == str(log_path) for h in ours):
            continue
        for h in ours:  # the data home changed (tests): move to the new file
            lg.removeHandler(h)
            h.close()
        handler = RotatingFileHandler(log_path, maxBytes=5_000_000, backupCount=3, encoding="utf-8")
        handler.ml_manager_log = str(log_path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
    return log_path


@contextmanager
def user_errors(doing: str):
    """Show a user's error as its sentence; log anything else (a bug) with its traceback and say where the
    log is, instead of showing a traceback."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - engine.errors.user_error tells a sentence from a bug
        if (error := user_error(exc)) is not None:
            logger.info("refused while %s: %s", doing, error, exc_info=True)
            st.error(str(error))
            return
        logger.exception("unexpected error while %s", doing)
        st.error(
            f"Something unexpected went wrong while {doing}. The details were written to the dashboard's log "
            f"({_log_path()}); try again, and report it if it happens again."
        )


def sentence_of(exc: Exception) -> str:
    """The sentence of a user's error, for a handler that shows it in its own place (``except Exception as
    exc: s[key] = sentence_of(exc)``); re-raises anything else, a bug, for ``user_errors``/``run_page`` to log."""
    if (error := user_error(exc)) is None:
        raise exc
    return str(error)


def _log_path() -> str:
    try:
        return str(paths.logs_dir() / "dashboard.log")
    except UserError:  # the data home cannot be written: the log goes to the terminal instead
        return "the terminal that runs the dashboard"


ENTRYPOINT_RAN = "app__entrypoint_ran"  # session-state flag app.py sets on every run, before its page runs

# The inputs a page keeps for the browser session: widget keys, or prefixes ending in "_" (never a button's
# or an uploader's key: their values cannot be set; uploads are kept by upload_images).
KEPT_INPUTS = ("train_name", "train_source", "train_registered", "train_folder", "train_synth_n", "train_synth_size",
               "train_synth_seed", "train_smoothing", "train_cfg_",
               "inf_model", "inf_ckpt_", "inf_pick", "inf_fov_choice", "inf_scale", "inf_scale_factor",
               "inf_batch_kind", "inf_batch_folder", "mi_ckpt", "mi_pick", "mi_fov_choice", "mi_scale",
               "mi_scale_factor", "pp_fov_choice", "models_compare")


def keep_page_inputs() -> None:
    """Keep what was typed and chosen on a page when another page is shown (app.py calls it before every page).

    Streamlit drops a widget's value at the end of a run that did not draw it, so the Train form came back
    empty after a look at Models. Re-assigning the value through session state, before any page draws,
    makes it the session's own (Streamlit's documented way to keep widget values across pages)."""
    state = st.session_state
    for name in list(state.keys()):
        if any(name == kept or (kept.endswith("_") and name.startswith(kept)) for kept in KEPT_INPUTS):
            state[name] = state[name]


def _leave_legacy_multipage_mode(page_file: str) -> None:
    """Make a page that was run without app.py go through app.py.

    Streamlit runs a ``pages/`` folder next to the entrypoint as a legacy (v1) multipage app until some
    session has called ``st.navigation``: a deep link such as ``/model_inference?model=…`` opened first
    on a fresh server runs this page's file alone, without app.py's page config, logging and page list
    (upstream: https://github.com/streamlit/streamlit/pull/10276, whose review found that a direct URL
    with a ``pages`` folder "completely switch[es] back to MPAv1"; related issue #9624). Streamlit
    documents the way out: "As soon as any session of your app executes the ``st.navigation`` command,
    your app will ignore the ``pages/`` directory (across all sessions)". So a session that has not run
    app.py yet calls ``st.navigation`` with this page alone and reruns; the rerun goes through app.py
    and keeps the URL, since app.py's url paths equal the file names.
    """
    if st.session_state.get(ENTRYPOINT_RAN):
        return
    # Once per session: AppTest starts every run in the legacy mode (app.py, the first run, sets the flag),
    # and a rerun on each of its runs would eat the button clicks of the tests.
    st.session_state[ENTRYPOINT_RAN] = True
    # The page must not be the default one: a default page's URL is "/", and the browser would report
    # this page's URL as not found. The rerun replaces this page list with app.py's.
    # The title is given: Streamlit infers it from the file name, and refuses names it cannot read a
    # title from (AppTest.from_function runs a page from a file named by a hash).
    title = Path(page_file).stem.replace("_", " ").strip().capitalize() or "Page"
    st.navigation([st.Page(_app_entrypoint, default=True), st.Page(page_file, title=title)], position="hidden")
    st.rerun()


def _app_entrypoint() -> None:
    """Stands for app.py in the page list above; never drawn (the rerun draws app.py's own)."""


def run_page(main: Callable[[], None], doing: str) -> None:
    """Run a page's ``main`` with logging configured and errors shown as sentences."""
    _leave_legacy_multipage_mode(main.__code__.co_filename)
    with user_errors(doing):
        configure_logging()  # a data home that cannot be written is reported here, as a sentence
        main()


# --------------------------------------------------------------------------------------------
# Uploads
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Upload:
    """An uploaded image or mask, decoded once."""

    name: str
    digest: str  # hash of the file's bytes: the cache key of everything computed from it
    array: np.ndarray  # RGB uint8 (H, W, 3) for images, uint8 {0, 1} (H, W) for masks
    note: str | None = None  # e.g. "the mask was binarised at half its maximum"

    @property
    def stem(self) -> str:
        return Path(self.name).stem or "image"


def digest_bytes(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def digest_array(arr: np.ndarray) -> str:
    arr = np.ascontiguousarray(arr)
    return hashlib.blake2b(arr.tobytes() + str(arr.shape).encode(), digest_size=16).hexdigest()


@st.cache_data(max_entries=64, show_spinner=False)
def _decode(digest: str, name: str, kind: str, _data: bytes) -> tuple[np.ndarray, str | None]:
    if kind == "image":
        return read_image(_data, name), None
    return read_mask_with_note(_data, name)


def decode_upload(file, kind: str = "image") -> Upload:
    """Decode one ``UploadedFile``; raises ImageReadError (a sentence) for a bad file."""
    data = file.getvalue()
    digest = digest_bytes(data)
    array, note = _decode(digest, file.name, kind, data)
    return Upload(file.name, digest, array, note)


@dataclass(frozen=True)
class KeptFile:
    """An uploaded file kept for the browser session (an ``UploadedFile``'s ``name`` and ``getvalue()``)."""

    name: str
    data: bytes

    def getvalue(self) -> bytes:
        return self.data


def _kept_uploads(key: str, files: list) -> list:
    """The files of uploader ``key``: those it holds, else the ones kept from an earlier visit of the page.

    Streamlit forgets what an uploader held once a run draws another page; the files are kept here, and
    an uploader found without state (the page was left and opened again) shows them again until the user
    uploads others or removes them."""
    state, kept, restored = st.session_state, f"{key}__kept_files", f"{key}__restored"
    if files:
        state[kept] = [KeptFile(f.name, f.getvalue()) for f in files]
        state.pop(restored, None)
        return files
    if state.get(restored) or (state.get(f"{key}__was_drawn") is False and state.get(kept)):
        state[restored] = True
        names = ", ".join(f.name for f in state[kept])
        a, b = st.columns([4, 1], vertical_alignment="center")
        a.caption(f"Kept from your last visit to this page: {names}. Upload others to replace them.")
        b.button("Remove them", key=f"{key}__forget", on_click=_forget_uploads, args=(key,))
        return list(state[kept])
    state.pop(kept, None)  # the user removed them from the uploader
    return []


def _forget_uploads(key: str) -> None:
    for suffix in ("__kept_files", "__restored"):
        st.session_state.pop(f"{key}{suffix}", None)


def upload_images(label: str, *, key: str, kind: str = "image", multiple: bool = False, help: str | None = None) -> list[Upload]:
    """File uploader for images (``kind='image'``) or masks (``kind='mask'``); what it held is kept for the
    browser session, so a photograph stays after a visit to another page.

    Bad files are reported with ``st.error`` (one sentence each) and left out of the result; a file
    whose bytes equal an earlier one's is listed once (with a note).
    """
    # the uploader's own state is dropped when another page was drawn: then the kept files come back
    st.session_state[f"{key}__was_drawn"] = key in st.session_state
    files = st.file_uploader(label, type=IMAGE_TYPES, key=key, accept_multiple_files=multiple, help=help)
    files = files if isinstance(files, list) else ([files] if files is not None else [])
    files = _kept_uploads(key, files)
    uploads, seen = [], {}
    for file in files:
        try:
            with st.spinner(f"Reading {file.name}…"):
                upload = decode_upload(file, kind)
        except UserError as exc:
            st.error(str(exc))
            continue
        if upload.digest in seen:  # the same file chosen twice is one image
            st.caption(f"{file.name} holds the same image as {seen[upload.digest]}: it is used once.")
            continue
        seen[upload.digest] = file.name
        if upload.note:
            st.info(upload.note)
        uploads.append(upload)
    return uploads


def upload_image(label: str, *, key: str, kind: str = "image", help: str | None = None) -> Upload | None:
    found = upload_images(label, key=key, kind=kind, help=help)
    return found[0] if found else None


def matching_mask(image: Upload, mask: Upload | None, what: str) -> np.ndarray | None:
    """The mask's array when its size matches the image; otherwise an error sentence and None.

    A field-of-view mask with no pixel set would hide the whole image, so it is refused too.
    """
    if mask is None:
        return None
    try:
        check_same_size(image.array, mask.array, what)
    except UserError as exc:
        st.error(f"{exc} It is ignored until then.")
        return None
    if "field-of-view" in what and not mask.array.any():
        st.error(f"The {what} {mask.name} is all zero (no field of view), which would hide the whole image: "
                 "upload the mask made for this image. It is ignored until then.")
        return None
    return mask.array


# --------------------------------------------------------------------------------------------
# Models and probability maps (cached)
# --------------------------------------------------------------------------------------------
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
        from engine.inference.predict import predict  # torch loads only on pages that need it

        prob = predict(load_checkpoint(source, mtime), _image, fov=_fov, scale=scale)
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


# --------------------------------------------------------------------------------------------
# Fast compositing
# --------------------------------------------------------------------------------------------
DISPLAY_QUALITY = 92  # JPEG quality of the images shown on screen (downloads stay lossless PNG)


def display_bytes(bgr_or_gray: np.ndarray) -> bytes:
    """JPEG bytes for display (encoding JPEG is many times faster than PNG, and each slider move encodes one);
    downloads stay lossless PNG."""
    ok, buf = cv2.imencode(".jpg", bgr_or_gray, [cv2.IMWRITE_JPEG_QUALITY, DISPLAY_QUALITY])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


@st.cache_resource(max_entries=16, show_spinner=False)
def _layers(digest: str, _image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, bytes]:
    """Per image, once: the photograph in BGR, its kept-tinted and removed-tinted versions, its JPEG."""
    bgr = cv2.cvtColor(_image, cv2.COLOR_RGB2BGR)
    tints = []
    for rgb in (KEPT_RGB, REMOVED_RGB):
        colour = np.empty_like(bgr)
        colour[:] = rgb[::-1]
        tints.append(cv2.addWeighted(bgr, 1 - _TINT, colour, _TINT, 0))
    return bgr, tints[0], tints[1], display_bytes(bgr)


@st.cache_resource(max_entries=16, show_spinner=False)
def heatmap_bytes(digest: str, _prob: np.ndarray) -> bytes:
    """The probability map as an inferno-coloured JPEG."""
    scaled = np.clip(np.nan_to_num(_prob) * 255 + 0.5, 0, 255).astype(np.uint8)
    return display_bytes(cv2.applyColorMap(scaled, cv2.COLORMAP_INFERNO))


@st.cache_resource(max_entries=16, show_spinner=False)
def _outline(fov_digest: str, _fov: np.ndarray) -> tuple:
    """The field of view's edge as contours; none when it is the whole image."""
    return () if _fov.all() else tuple(cv2.findContours(_fov.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0])


def overlay_bytes(image: np.ndarray, digest: str, mask: np.ndarray, removed: np.ndarray,
                  fov: np.ndarray | None = None, fov_digest: str = "") -> bytes:
    """JPEG of the photograph with kept pixels in green, removed ones in magenta and, when ``fov`` is
    given, the field of view's edge as a thin amber line."""
    bgr, kept, gone, _ = _layers(digest, image)
    out = bgr.copy()
    cv2.copyTo(gone, removed, out)  # uint8 masks: non-zero pixels are copied
    cv2.copyTo(kept, mask, out)
    if fov is not None and (outline := _outline(fov_digest or digest_array(fov), fov)):
        cv2.drawContours(out, outline, -1, FOV_RGB[::-1], max(1, round(max(out.shape[:2]) / 500)))
    return display_bytes(out)


# --------------------------------------------------------------------------------------------
# The post-processing tuner
# --------------------------------------------------------------------------------------------
def _wkey(key: str, field: str) -> str:
    return f"{key}_{field}"


def _seed(key: str, defaults: PostProcessConfig) -> dict:
    """Put the settings into the widgets' session state on every full page run, before the widgets are
    drawn: the defaults when they changed (another model or start option), otherwise each widget's
    current value, or the settings the view last used (``{key}__config``) for a widget Streamlit
    dropped while the tuner was not shown. Returns the defaults as a dict.

    Writing every widget's value, not only the ones Streamlit dropped, is what keeps the controls
    showing what the mask uses: a widget the browser unmounted (the photograph was replaced, so one
    run drew no tuner) is redrawn from its declared default (a slider at its minimum, no mode)
    unless the run sets its value through session state."""
    d = {f: _coerce(f, v) for f, v in defaults.to_dict().items()}
    state = st.session_state
    if state.get(f"{key}__defaults") != d:
        state[f"{key}__defaults"] = d
        state[f"{key}__config"] = d
        for field, value in d.items():
            state[_wkey(key, field)] = value
        return d
    config = {**d, **state.get(f"{key}__config", d)}
    for field in d:  # the widget's own value when Streamlit kept it (a change the user just made)
        wkey = _wkey(key, field)
        state[wkey] = state[wkey] if wkey in state else _coerce(field, config[field])
    return d


def _coerce(field: str, value):
    """Match the widget's number type (a JSON preset may hold 3 where a slider needs 3.0)."""
    default = getattr(PostProcessConfig(), field, None)
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _reset(key: str, d: dict) -> None:
    st.session_state[f"{key}__config"] = d
    for field, value in d.items():
        st.session_state[_wkey(key, field)] = value
    _settings_changed(key)


def _slider(key, field, label, lo, hi, step, help, disabled=False):
    value = st.session_state.get(_wkey(key, field), lo)
    hi = max(hi, value)  # a preset beyond the usual range still fits
    return st.slider(label, lo, hi, step=step, key=_wkey(key, field), help=help, disabled=disabled,
                     on_change=_settings_changed, args=(key,))


def _settings_changed(key: str) -> None:
    """Every control's on_change: with fragments linked to the tuner (``postprocess_tuner(linked=…)``, such as
    the batch section's sentence), re-run them with the tuner, so whatever describes the settings shows the
    new ones at once; without, the control's own fragment re-runs as usual."""
    linked = st.session_state.get(f"{key}__linked")
    if linked:
        st.rerun([f"{key}__tuner", *linked])


def tuner_settings(key: str) -> PostProcessConfig | None:
    """The settings the controls of tuner ``key`` show now, read from their widgets' state (so a fragment
    outside the tuner sees a move at once); None before the tuner was drawn or while they do not go together."""
    state = st.session_state
    base = state.get(f"{key}__config")
    if base is None:
        return None
    values = {f: state[_wkey(key, f)] for f in base if _wkey(key, f) in state}
    for field in ("threshold_mode", "connectivity"):  # segmented controls can be cleared
        if values.get(field) is None:
            values[field] = base[field]
    try:
        return PostProcessConfig.from_dict({**base, **values})
    except Exception as exc:  # noqa: BLE001 - invalid settings: None; a bug is re-raised
        sentence_of(exc)
        return None


def _controls(key: str, base: dict) -> PostProcessConfig:
    """Every PostProcessConfig option as a widget; returns the settings they show.

    Raises:
        ValueError: the settings do not go together (e.g. hysteresis low above the threshold), with a
            sentence saying which value to change.
    """
    v = {}
    cb = {"on_change": _settings_changed, "args": (key,)}
    with st.expander("Threshold", expanded=True):
        v["threshold_mode"] = st.segmented_control(
            "Mode", ["fixed", "otsu", "hysteresis"], key=_wkey(key, "threshold_mode"), required=True, **cb,
            help="fixed: keep pixels ≥ threshold. otsu: threshold from the map's histogram. "
                 "hysteresis: pixels ≥ threshold seed, connected pixels ≥ low are kept too.")
        mode = v["threshold_mode"] or "fixed"
        v["threshold"] = _slider(key, "threshold", "Threshold", 0.0, 1.0, 0.01,
                                 "0.6 is the usual start; lower keeps fainter vessels.", disabled=mode == "otsu")
        v["hysteresis_low"] = _slider(key, "hysteresis_low", "Hysteresis low", 0.0, 1.0, 0.01,
                                      "Faint pixels at or above this are kept when connected to a confident one.",
                                      disabled=mode != "hysteresis")
    with st.expander("Morphology", expanded=True):
        v["apply_opening"] = st.toggle("Opening (remove specks, thin bridges)", key=_wkey(key, "apply_opening"), **cb)
        v["opening_kernel"] = st.select_slider("Opening kernel (px)", _KERNELS, key=_wkey(key, "opening_kernel"), **cb,
                                               help="Odd side of the structuring element; larger removes more.",
                                               disabled=not v["apply_opening"])
        v["apply_closing"] = st.toggle("Closing (fill small gaps)", key=_wkey(key, "apply_closing"), **cb)
        v["closing_kernel"] = st.select_slider("Closing kernel (px)", _KERNELS, key=_wkey(key, "closing_kernel"), **cb,
                                               help="Odd side of the structuring element; larger joins farther "
                                                    "fragments.", disabled=not v["apply_closing"])
        v["kernel_shape"] = st.selectbox("Kernel shape", ["ellipse", "cross", "rect"], key=_wkey(key, "kernel_shape"), **cb)
    with st.expander("Components", expanded=True):
        v["min_component_size"] = _slider(key, "min_component_size", "Minimum component (px)", 0, 2000, 5,
                                          "Connected pieces smaller than this are removed; 0 switches the filter "
                                          "off. Start at 50.")
        v["connectivity"] = st.segmented_control("Connectivity", [4, 8], key=_wkey(key, "connectivity"), required=True, **cb,
                                                 help="8 joins pixels that touch at a corner; 4 only along edges.")
        v["confidence_threshold"] = _slider(key, "confidence_threshold", "Component confidence", 0.0, 1.0, 0.01,
                                            "A piece is removed when its mean probability is below this; 0 switches "
                                            "the filter off.")
    with st.expander("Shape and holes"):
        v["shape_filter"] = st.toggle("Vessel-shape filter (drop blobs and dots)", key=_wkey(key, "shape_filter"), **cb)
        v["min_elongation"] = _slider(
            key, "min_elongation", "Minimum length / width", 1.0, 20.0, 0.5,
            "Pieces shorter than this many times their width are removed, whatever their size: a disc "
            "scores about 0.8, a 2:1 ellipse about 1.6, vessel segments and branches score higher. "
            "Start at 3.", disabled=not v["shape_filter"])
        v["fill_holes_below"] = _slider(key, "fill_holes_below", "Fill holes below (px)", 0, 500, 1,
                                        "0 switches hole filling off.")
        v["from_logits"] = st.toggle("Input is logits", key=_wkey(key, "from_logits"), disabled=True,
                                     help="The maps shown here are already probabilities in [0, 1]; from_logits is "
                                          "for scripts that pass raw model outputs.")
    if v["threshold_mode"] is None:  # segmented controls can be cleared by clicking again
        v["threshold_mode"] = base.get("threshold_mode", "fixed")
    if v["connectivity"] is None:
        v["connectivity"] = base.get("connectivity", 8)
    return PostProcessConfig.from_dict({**base, **v})


@st.cache_data(max_entries=32, show_spinner=False)
def _map_auc(prob_digest: str, truth_digest: str, fov_digest: str, _prob, _truth, _fov) -> float | None:
    return segmentation_metrics(_prob, _truth, fov=_fov).get("roc_auc")


STEP_WORDS = {  # engine stats key -> the step's name in the step-by-step table
    ("removed", "opening"): "Opening removed specks",
    ("added", "closing"): "Closing filled gaps",
    ("removed", "size"): "Small pieces removed",
    ("removed", "confidence"): "Low-confidence pieces removed",
    ("removed", "shape"): "Shape filter removed",
    ("added", "holes"): "Holes filled",
    ("removed", "fov"): "Outside the field of view",
}


def step_rows(stats: dict) -> list[tuple[str, int]]:
    """The per-step pixel counts of ``enhanced_post_processing``'s stats as (step, signed pixels) rows, in
    the order the steps run: the thresholded pixels, each step's gain (+) or loss (-), then the kept pixels.
    Every row but the last adds up to the last, as the engine's identity
    ``pixels_kept + sum(pixels_removed) == pixels_thresholded + sum(pixels_added)`` promises."""
    removed, added = stats.get("pixels_removed") or {}, stats.get("pixels_added") or {}
    rows = [("Above the threshold", int(stats.get("pixels_thresholded") or 0))]
    for (way, step), words in STEP_WORDS.items():
        n = int((removed if way == "removed" else added).get(step) or 0)
        if n:
            rows.append((words, -n if way == "removed" else n))
    rows.append(("Kept as vessel", int(stats.get("pixels_kept") or 0)))
    return rows


def _show_stats(result: PostProcessResult) -> None:
    """The numbers a reader of the mask needs, in one line; the step-by-step counts behind an expander."""
    kept, removed, stats = int(result.mask.sum()), int(result.removed.sum()), result.stats or {}
    used = stats.get("threshold_used")
    st.markdown(
        f"**Vessel pixels kept:** {kept:,} · **Pixels removed by filters:** {removed:,} · "
        f"**Share of image:** {100 * kept / result.mask.size:.2f} % · "
        f"**Vessel pieces:** {stats.get('components_after', 0):,}"
        + (f" · **Threshold used:** {used:.2f}" if isinstance(used, (int, float)) else "")
    )
    with st.expander("Step by step"):
        rows = step_rows(stats)
        table = "\n".join(f"| {name} | {n:+,} |" if 0 < i < len(rows) - 1 else f"| {name} | {n:,} |"
                          for i, (name, n) in enumerate(rows))
        total_ms = (stats.get("timings_ms") or {}).get("total", 0.0)
        st.markdown(f"| Step | Pixels |\n|---|--:|\n{table}\n\nComputed in {total_ms:.0f} ms.")


METRIC_LABELS = {"dice": "Dice", "cldice": "clDice", "iou": "IoU", "precision": "Precision",
                 "sensitivity": "Sensitivity", "specificity": "Specificity", "accuracy": "Accuracy",
                 "roc_auc": "ROC AUC (map)"}


def _show_metrics(result, prob_map, truth, fov, digests, fov_scope) -> None:
    st.caption(f"Metrics against your ground truth, counted {fov_scope}.")
    m = dict(segmentation_metrics(result.mask, truth, fov=fov))
    m["roc_auc"] = _map_auc(digests["prob"], digests["truth"], digests["fov"], prob_map, truth, fov)
    names = list(METRIC_LABELS)
    for row in (names[:4], names[4:]):  # four a row: the values read in full from 1280 px up
        for col, name in zip(st.columns(len(row)), row):
            value = m.get(name)
            col.metric(METRIC_LABELS[name], "—" if value is None else f"{value:.3f}")


def _tuner_body(prob_map, image_rgb, key, fov, truth, base, digests, fov_scope, reset_label) -> PostProcessConfig | None:
    """The controls and the view; returns the settings the view used (None when they are invalid)."""
    # Controls wide enough for their labels at 1280 px; the view stays in sight while the lower sliders move
    left, right = st.columns([2, 3], gap="medium")
    with left:
        try:
            config, error = _controls(key, base), None
        except Exception as exc:  # noqa: BLE001 - invalid settings are a sentence; a bug is re-raised
            config, error = None, sentence_of(exc)
        st.button(reset_label, key=f"{key}_reset", on_click=_reset, args=(key, st.session_state[f"{key}__defaults"]))
    with right, st.container(key=f"{key}__view"):
        if config is None:
            st.error(error)
            return None
        _view(prob_map, image_rgb, key, config, fov, truth, digests, fov_scope)
        return config


def _view(prob_map, image_rgb, key, config, fov, truth, digests, fov_scope) -> None:
    # the settings the mask is made with, kept for _seed (widgets Streamlit dropped while no tuner was drawn)
    st.session_state[f"{key}__config"] = config.to_dict()
    result = enhanced_post_processing(prob_map, config=config, fov=fov)
    st.session_state[f"{key}__kept"] = int(result.mask.sum())  # read by tests
    edge = ", the amber line is the field of view's edge" if fov is not None and not fov.all() else ""
    st.image(overlay_bytes(image_rgb, digests["image"], result.mask, result.removed, fov, digests["fov"]), width="stretch",
             output_format="JPEG", caption=f"Mask on the image: green is kept, magenta was removed by the filters{edge}")
    _show_stats(result)
    for sentence in warnings_for(result.stats):  # a step that removed most of the vessels says so
        st.warning(sentence)
    if truth is not None:
        _show_metrics(result, prob_map, truth, fov, digests, fov_scope)
    st.session_state[f"{key}__holder"].update(config=config, mask=result.mask)  # read by the downloads


def _downloads(key: str, file_stem: str) -> None:
    """Downloads of the current mask and settings, outside the view fragment: their data is made when
    clicked, from what the view last showed (a dict shared with it), so a slider move redraws fewer elements."""
    holder = st.session_state.setdefault(f"{key}__holder", {})
    a, b = st.columns(2)
    a.download_button("Download mask (PNG)", lambda: encode_png(holder["mask"]), file_name=f"{file_stem}_mask.png",
                      mime="image/png", key=f"{key}_dl_mask", on_click="ignore")
    b.download_button("Download settings (JSON)", lambda: json.dumps(holder["config"].to_dict(), indent=2),
                      file_name=f"{file_stem}_postprocess.json", mime="application/json",
                      key=f"{key}_dl_settings", on_click="ignore")


def postprocess_tuner(
    prob_map: np.ndarray,
    image_rgb: np.ndarray,
    *,
    key: str,
    defaults: PostProcessConfig | None = None,
    fov: np.ndarray | None = None,
    truth: np.ndarray | None = None,
    file_stem: str = "image",
    fov_scope: str = "inside the field of view",
    reset_label: str = "Reset to the defaults",
    linked: tuple[str, ...] = (),
) -> PostProcessConfig:
    """Sliders and toggles for every post-processing option, the image, the probability heatmap,
    the mask overlaid on the image (removed pixels in a second colour), statistics, metrics when
    ``truth`` is given, and downloads. Controls and view are ``st.fragment``s: a slider re-runs
    only the view. ``fov`` (uint8 {0,1} (H, W)) limits mask and metrics, outlined on the overlay; ``fov_scope``
    says in words where the metrics are counted. The reset button, labelled ``reset_label``, brings back
    ``defaults``; settings carry over when the photograph changes.

    Returns the settings the mask on screen is made with: those the controls show, or the last valid
    ones while the controls show settings that do not go together (the view then says why). A slider
    move re-runs only the tuner, so code after the call sees a move on its page's next full run (the
    click of a button outside the tuner is one). ``linked`` names fragments (``st.fragment(key=…)``) drawn
    on the same page that show what the settings do; they re-run with the tuner on every move and read the
    settings with ``tuner_settings(key)``.
    """
    if prob_map.shape[:2] != image_rgb.shape[:2]:
        raise UserError(
            f"The probability map is {prob_map.shape[1]}×{prob_map.shape[0]} but the image is "
            f"{image_rgb.shape[1]}×{image_rgb.shape[0]}: they must come from the same image."
        )
    base = _seed(key, defaults or PostProcessConfig())
    digests = {
        "image": digest_array(image_rgb),
        "prob": digest_array(prob_map),
        "truth": digest_array(truth) if truth is not None else "",
        "fov": digest_array(fov) if fov is not None else "",
    }
    # One fragment holds the controls and the view: a slider re-runs only it. (Two fragments, the
    # controls' callbacks re-running the view with st.rerun(<key>), measured slower in the browser.)
    st.session_state.setdefault(f"{key}__holder", {})
    st.session_state[f"{key}__linked"] = list(linked)
    # the mask stays on screen while the controls below it are used (its column sticks under the header)
    st.html(f"<style>[data-testid='stLayoutWrapper']:has(> .st-key-{key}__view) "
            "{position: sticky; top: 3.75rem; z-index: 2;}</style>")
    config = st.fragment(_tuner_body, key=f"{key}__tuner")(prob_map, image_rgb, key, fov, truth, base, digests, fov_scope,
                                                                 reset_label)
    _downloads(key, file_stem)
    # The photograph and its map never change with the sliders: drawn outside the fragment, once per page run.
    a, b = st.columns(2)
    a.image(_layers(digests["image"], image_rgb)[3], width="stretch", output_format="JPEG", caption="Image")
    b.image(heatmap_bytes(digests["prob"], prob_map), width="stretch", output_format="JPEG",
            caption="Probability map (bright = likely vessel)")
    return config or PostProcessConfig.from_dict(st.session_state[f"{key}__config"])


# --------------------------------------------------------------------------------------------
# Storage reads (short cached queries) and small formatting helpers
# --------------------------------------------------------------------------------------------


# Each reader is a storage.db read, cached for 1.5 s per data home (pages poll them): the data home is part of
# the key, so tests (and a user) that switch homes never see another home's rows.
_READ_CACHE = dict(ttl=1.5, show_spinner=False, max_entries=256)


@st.cache_data(**_READ_CACHE)
def _list_models(home: str, status: str | tuple[str, ...] | None) -> list[dict]:
    from storage import db

    return db.list_models(status)


def list_models(status: str | tuple[str, ...] | None = None) -> list[dict]:
    """Every model, newest first (``storage.db.list_models``); ``status`` keeps only runs in that status."""
    return _list_models(str(paths.data_home()), status)


@st.cache_data(**_READ_CACHE)
def _model_checkpoints(home: str, model_id: str) -> list[dict]:
    from storage import db

    return db.model_checkpoints(model_id)


def model_checkpoints(model_id: str) -> list[dict]:
    """The checkpoints in one model's folder (``storage.db.model_checkpoints``)."""
    return _model_checkpoints(str(paths.data_home()), model_id)


@st.cache_data(**_READ_CACHE)
def _all_checkpoints(home: str) -> list[dict]:
    from storage import db

    return db.all_checkpoints()


def all_checkpoints() -> list[dict]:
    """The checkpoints of every completed model, newest model first (``storage.db.all_checkpoints``)."""
    return _all_checkpoints(str(paths.data_home()))


@st.cache_data(**_READ_CACHE)
def _model_metrics(home: str, model_id: str) -> list[dict]:
    from storage import db

    return db.model_metrics(model_id)


def model_metrics(model_id: str) -> list[dict]:
    """One model's per-epoch metrics in epoch order (``storage.db.model_metrics``)."""
    return _model_metrics(str(paths.data_home()), model_id)


@st.cache_data(**_READ_CACHE)
def _list_workers(home: str, max_age_s: float | None) -> list[dict]:
    from storage import db

    return db.list_workers(max_age_s)


def list_workers(max_age_s: float | None = None) -> list[dict]:
    """The workers that reported, newest first; with ``max_age_s`` only recent ones (``storage.db.list_workers``)."""
    return _list_workers(str(paths.data_home()), max_age_s)


@st.cache_data(**_READ_CACHE)
def _list_presets(home: str, model_id: str) -> list[dict]:
    from storage import db

    return db.list_presets(model_id)


def list_presets(model_id: str) -> list[dict]:
    """A model's saved post-processing presets, by name (``storage.db.list_presets``)."""
    return _list_presets(str(paths.data_home()), model_id)


@st.cache_data(**_READ_CACHE)
def _list_inference_jobs(home: str, model_id: str | None, limit: int | None) -> list[dict]:
    from storage import db

    return db.list_inference_jobs(model_id, limit)


def list_inference_jobs(model_id: str | None = None, limit: int | None = None) -> list[dict]:
    """Batch inference jobs, newest first (``storage.db.list_inference_jobs``)."""
    return _list_inference_jobs(str(paths.data_home()), model_id, limit)


@st.cache_data(**_READ_CACHE)
def _worker_heartbeat(home: str) -> datetime | None:
    from storage import db

    return db.worker_heartbeat()


def worker_heartbeat() -> datetime | None:
    """When any worker last reported on this data home (``storage.db.worker_heartbeat``)."""
    return _worker_heartbeat(str(paths.data_home()))


_READERS = (_list_models, _model_checkpoints, _all_checkpoints, _model_metrics, _list_workers, _list_presets,
            _list_inference_jobs, _worker_heartbeat)


def forget_queries() -> None:
    """Drop cached reads after this session wrote something."""
    for reader in _READERS:
        reader.clear()


def val_dice_words(value: float | None) -> str:
    """A model's best validation Dice in words; a run that trained on every image has none."""
    return "no validation images" if value is None else f"val Dice {value:.3f}"


def stop_reason_text(reason: str | None) -> str:
    """The stop reason in words, for people (``storage.db.STOP_REASONS``); the code stays in storage and the
    CLI's JSON."""
    return STOP_REASONS.get(reason or "", reason or "")


def age_text(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def run_duration(row: dict) -> float | None:
    """Seconds a run has trained, every part of a continued run counted: the epochs logged before its
    latest start, plus the wall time of that latest part."""
    from storage.db import parse_time, utc_now

    start = parse_time(row.get("started_at"))
    end = parse_time(row.get("finished_at")) or (parse_time(utc_now()) if row.get("status") in TRAINING_STATUSES else None)
    if not (start and end):
        return None
    earlier = sum(e.get("seconds") or 0.0 for e in model_metrics(row["id"])
                  if (logged := parse_time(e.get("logged_at"))) is not None and logged < start)
    return earlier + max(0.0, (end - start).total_seconds())


def worker_age() -> float | None:
    """Seconds since the worker last reported, None if it never ran on this data home."""
    from storage.db import age_seconds

    beat = worker_heartbeat()
    return age_seconds(beat.isoformat()) if beat else None


def start_worker() -> int:
    """Start the background worker (Huey consumer) for this data home; returns its process id."""
    import os
    import subprocess

    from engine.jobs.queue import worker_command

    root = Path(__file__).resolve().parents[1]
    log = open(paths.logs_dir() / "worker.log", "ab")
    proc = subprocess.Popen(
        worker_command(),
        cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, paths.HOME_ENV: str(paths.data_home())},
    )
    log.close()
    logger.info("started a worker, pid %s", proc.pid)
    return proc.pid
