"""The post-processing tuner shared by the Model inference, Inference and Post-processing pages.

One ``st.fragment`` holds the controls and the view, so moving a slider re-runs only post-processing; the
photograph and its probability map are drawn once per page run.
"""
from __future__ import annotations

import json
import math

import cv2
import numpy as np
import streamlit as st

from engine.errors import UserError
from engine.imageio import encode_png
from engine.metrics import segmentation_metrics
from engine.postprocess import PostProcessConfig, PostProcessResult, enhanced_post_processing, warnings_for
from engine.postprocess.config import FIELDS
from ui.overlays import heatmap_bytes, overlay_bytes, photo_layers
from ui.uploads import digest_array

_KERNELS = list(range(FIELDS["opening_kernel"].low, FIELDS["opening_kernel"].high + 1, 2))  # odd sides only


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


def _slider(key, field, disabled=False):
    """A slider over the option's usual range (``FIELDS``), with its label and help."""
    spec = FIELDS[field]
    lo, hi, step = spec.slider()
    value = st.session_state.get(_wkey(key, field), lo)
    hi = max(hi, value)  # a preset beyond the usual range still fits
    return st.slider(spec.label_of(field), lo, hi, step=step, key=_wkey(key, field), help=spec.help, disabled=disabled,
                     on_change=_settings_changed, args=(key,))


def _label(field: str) -> str:
    return FIELDS[field].label_of(field)


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
    except UserError:  # invalid settings
        return None


def _controls(key: str, base: dict) -> PostProcessConfig:
    """Every PostProcessConfig option as a widget; returns the settings they show.

    Raises:
        UserError: the settings do not go together (e.g. hysteresis low above the threshold), with a
            sentence saying which value to change.
    """
    v = {}
    cb = {"on_change": _settings_changed, "args": (key,)}
    with st.expander("Threshold", expanded=True):
        v["threshold_mode"] = st.segmented_control(
            _label("threshold_mode"), list(FIELDS["threshold_mode"].choices), key=_wkey(key, "threshold_mode"),
            required=True, **cb, help=FIELDS["threshold_mode"].help)
        mode = v["threshold_mode"] or "fixed"
        v["threshold"] = _slider(key, "threshold", disabled=mode == "otsu")
        v["hysteresis_low"] = _slider(key, "hysteresis_low", disabled=mode != "hysteresis")
    with st.expander("Morphology", expanded=True):
        v["apply_opening"] = st.toggle(_label("apply_opening"), key=_wkey(key, "apply_opening"), **cb)
        v["opening_kernel"] = st.select_slider(_label("opening_kernel"), _KERNELS, key=_wkey(key, "opening_kernel"),
                                               **cb, help=FIELDS["opening_kernel"].help, disabled=not v["apply_opening"])
        v["apply_closing"] = st.toggle(_label("apply_closing"), key=_wkey(key, "apply_closing"), **cb)
        v["closing_kernel"] = st.select_slider(_label("closing_kernel"), _KERNELS, key=_wkey(key, "closing_kernel"),
                                               **cb, help=FIELDS["closing_kernel"].help, disabled=not v["apply_closing"])
        v["kernel_shape"] = st.selectbox(_label("kernel_shape"), list(FIELDS["kernel_shape"].choices),
                                         key=_wkey(key, "kernel_shape"), **cb)
    with st.expander("Components", expanded=True):
        v["min_component_size"] = _slider(key, "min_component_size")
        v["connectivity"] = st.segmented_control(_label("connectivity"), list(FIELDS["connectivity"].choices),
                                                 key=_wkey(key, "connectivity"), required=True, **cb,
                                                 help=FIELDS["connectivity"].help)
        v["confidence_threshold"] = _slider(key, "confidence_threshold")
    with st.expander("Shape and holes"):
        v["shape_filter"] = st.toggle(_label("shape_filter"), key=_wkey(key, "shape_filter"), **cb)
        v["min_elongation"] = _slider(key, "min_elongation", disabled=not v["shape_filter"])
        v["fill_holes_below"] = _slider(key, "fill_holes_below")
        v["from_logits"] = st.toggle(_label("from_logits"), key=_wkey(key, "from_logits"), disabled=True,
                                     help=FIELDS["from_logits"].help)
    if v["threshold_mode"] is None:  # segmented controls can be cleared by clicking again
        v["threshold_mode"] = base.get("threshold_mode", "fixed")
    if v["connectivity"] is None:
        v["connectivity"] = base.get("connectivity", 8)
    return PostProcessConfig.from_dict({**base, **v})


@st.cache_data(max_entries=32, show_spinner=False)
def _map_auc(prob_digest: str, truth_digest: str, fov_digest: str, _prob, _truth, _fov) -> float | None:
    return segmentation_metrics(_prob, _truth, fov=_fov).get("roc_auc")


# A map of more pixels than this is tuned on a preview of about this many: post-processing a 3504×2336 map takes
# about half a second on 2 cores, too slow to follow a slider. The downloaded mask is always made at full size.
PREVIEW_PIXELS = 2_000_000


def preview_factor(shape: tuple[int, ...]) -> float:
    """The factor the tuner's view shrinks a map of ``shape`` by (1.0: shown at full size)."""
    h, w = shape[:2]
    return 1.0 if h * w <= PREVIEW_PIXELS else math.sqrt(PREVIEW_PIXELS / (h * w))


@st.cache_data(max_entries=8, show_spinner=False)
def _preview(digest: str, factor: float, kind: str, _array: np.ndarray) -> np.ndarray:
    """``_array`` shrunk by ``factor``: averaged for a photograph or a map, nearest for a mask."""
    h, w = _array.shape[:2]
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    return cv2.resize(_array, size, interpolation=cv2.INTER_NEAREST if kind == "mask" else cv2.INTER_AREA)


def _full_mask(holder: dict) -> np.ndarray:
    """The mask the settings on screen make at full size (the view may show a preview)."""
    if holder.get("mask") is not None:
        return holder["mask"]
    return enhanced_post_processing(holder["prob"], config=holder["config"], fov=holder["fov"]).mask


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


def _tuner_body(prob_map, image_rgb, key, fov, truth, base, digests, fov_scope, reset_label,
                preview: dict | None = None) -> PostProcessConfig | None:
    """The controls and the view; returns the settings the view used (None when they are invalid)."""
    # Controls wide enough for their labels at 1280 px; the view stays in sight while the lower sliders move
    left, right = st.columns([2, 3], gap="medium")
    with left:
        try:
            config, error = _controls(key, base), None
        except UserError as exc:  # invalid settings are a sentence
            config, error = None, str(exc)
        st.button(reset_label, key=f"{key}_reset", on_click=_reset, args=(key, st.session_state[f"{key}__defaults"]))
    with right, st.container(key=f"{key}__view"):
        if config is None:
            st.error(error)
            return None
        _view(prob_map, image_rgb, key, config, fov, truth, digests, fov_scope, preview)
        return config


def _view(prob_map, image_rgb, key, config, fov, truth, digests, fov_scope, preview=None) -> None:
    # the settings the mask is made with, kept for _seed (widgets Streamlit dropped while no tuner was drawn)
    st.session_state[f"{key}__config"] = config.to_dict()
    holder = st.session_state[f"{key}__holder"]
    holder.update(config=config, mask=None, prob=prob_map, fov=fov)  # read by the downloads
    if preview is not None:  # a large photograph: the sliders work on a smaller copy, and say so
        factor = preview["factor"]
        h, w = prob_map.shape[:2]
        prob_map, image_rgb, fov, truth, digests = (preview["prob"], preview["image"], preview["fov"], preview["truth"],
                                                    preview["digests"])
        st.caption(f"Preview at {prob_map.shape[1]:,}×{prob_map.shape[0]:,} px (×{factor:.2f}), so that the sliders "
                   f"answer at once: sizes in pixels are scaled to it. “Download mask” makes the full "
                   f"{w:,}×{h:,} px mask with these settings, as batch jobs do.")
        config = config.at_scale(factor)
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
    if preview is None:
        holder["mask"] = result.mask


def _downloads(key: str, file_stem: str) -> None:
    """Downloads of the current mask and settings, outside the view fragment: their data is made when
    clicked, from what the view last showed (a dict shared with it), so a slider move redraws fewer elements."""
    holder = st.session_state.setdefault(f"{key}__holder", {})
    a, b = st.columns(2)
    a.download_button("Download mask (PNG)", lambda: encode_png(_full_mask(holder)), file_name=f"{file_stem}_mask.png",
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
    factor, preview = preview_factor(prob_map.shape), None
    if factor < 1.0:
        preview = {"factor": factor, "prob": _preview(digests["prob"], factor, "map", prob_map),
                   "image": _preview(digests["image"], factor, "image", image_rgb),
                   "fov": _preview(digests["fov"], factor, "mask", fov) if fov is not None else None,
                   "truth": _preview(digests["truth"], factor, "mask", truth) if truth is not None else None,
                   "digests": {k: f"{v}@{factor:.4f}" if v else v for k, v in digests.items()}}
    config = st.fragment(_tuner_body, key=f"{key}__tuner")(prob_map, image_rgb, key, fov, truth, base, digests, fov_scope,
                                                                 reset_label, preview)
    _downloads(key, file_stem)
    # The photograph and its map never change with the sliders: drawn outside the fragment, once per page run.
    a, b = st.columns(2)
    a.image(photo_layers(digests["image"], image_rgb)[3], width="stretch", output_format="JPEG", caption="Image")
    b.image(heatmap_bytes(digests["prob"], prob_map), width="stretch", output_format="JPEG",
            caption="Probability map (bright = likely vessel)")
    return config or PostProcessConfig.from_dict(st.session_state[f"{key}__config"])
