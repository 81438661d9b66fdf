"""Widgets shared by the pages that predict on an uploaded photograph: its field of view and image
scale (also on the Post-processing page), checkpoint labels, the upload-and-tune workspace, presets,
and batch jobs run by the worker."""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import streamlit as st

from engine.errors import UserError
from engine.inference.batch import unique_names
from engine.inference.predictor import Predictor
from engine.fov import estimate_fov, fov_diameter
from engine.imageio import encode_png
from engine.postprocess import PostProcessConfig, enhanced_post_processing
from ui.maps import predictor_of, probability_map
from ui.readers import forget_queries, list_inference_jobs, list_models, list_presets
from ui.tuner import postprocess_tuner, tuner_settings
from ui.uploads import matching_mask, Upload, upload_image, upload_images
from storage import paths
from storage.db import JOB_ACTIVE_STATUSES, age_seconds


# --------------------------------------------------------------------------------------------
# Field of view and image scale
# --------------------------------------------------------------------------------------------
FOV_CHOICES = {"estimated": "Estimated from the photograph", "upload": "Upload a mask",
               "whole": "Whole image (no field of view)"}
SCALE_CHOICES = {"auto": "Automatic", "none": "As it is", "factor": "Resize by a factor"}


@dataclass(frozen=True)
class FieldOfView:
    """The field of view an image is predicted, post-processed and scored in."""

    mask: np.ndarray  # uint8 {0, 1} (H, W): 1 inside
    choice: str  # a key of FOV_CHOICES: where the mask came from
    scope: str  # where the metrics are counted, in words ("inside the estimated field of view", …)


@st.cache_data(max_entries=64, show_spinner="Estimating the field of view…")
def _estimated_fov(digest: str, _image: np.ndarray) -> np.ndarray:
    return estimate_fov(_image)


def default_fov(image: Upload, choice: str = "estimated") -> FieldOfView:
    """The field of view of ``image`` without a mask: estimated from it, or the whole image (``choice="whole"``)."""
    if choice == "whole":
        return FieldOfView(np.ones(image.array.shape[:2], np.uint8), "whole", "over the whole image")
    mask = _estimated_fov(image.digest, image.array)
    if mask.all():  # no dark surround around the retina (a crop, a scan): nothing to leave out
        return FieldOfView(mask, "estimated", "over the whole image (no dark surround to estimate a field of view from)")
    return FieldOfView(mask, "estimated", "inside the estimated field of view")


def field_of_view(image: Upload, *, key: str, upload_key: str | None = None) -> FieldOfView:
    """The 'Field of view' choice for ``image``: estimated from it (the default), an uploaded mask (its
    uploader, keyed ``upload_key``, appears), or the whole image. Until a usable mask is uploaded, the
    field of view is estimated."""
    choice = st.radio("Field of view", list(FOV_CHOICES), format_func=FOV_CHOICES.get, key=f"{key}_fov_choice",
                      horizontal=True, help="Pixels outside it never become vessels and are left out of the metrics. "
                      "Its width in pixels is the photograph's scale.")
    if choice == "upload":
        up = upload_image(f"Field-of-view mask of {image.name}", kind="mask",
                          key=upload_key or f"{key}_fov_{image.digest[:10]}",
                          help="White inside the field of view, black outside, as large as the photograph.")
        mask = matching_mask(image, up, "field-of-view mask")
        if mask is not None:
            return FieldOfView(mask, "upload", "inside your field-of-view mask")
        st.caption("Until a mask is uploaded, the field of view is estimated from the photograph.")
    return default_fov(image, "whole" if choice == "whole" else "estimated")


def scale_control(source: str, *, key: str) -> str | float:
    """The 'Image scale' control: ``"auto"`` (the default), ``"none"`` or a resize factor. The classical
    filter brings its own scale, so the control is disabled for it."""
    fixed = not predictor_of(source).scale_control
    mode = st.radio("Image scale", list(SCALE_CHOICES), format_func=SCALE_CHOICES.get, key=f"{key}_scale",
                    horizontal=True, disabled=fixed,
                    help="Automatic resizes the photograph so that its field of view is as wide, in pixels, as "
                         "the model's training images were; the map is resized back to the photograph's size.")
    if mode != "factor" or fixed:
        return "auto" if fixed else (mode or "auto")
    return float(st.number_input("Resize factor", min_value=0.05, max_value=20.0, value=1.0, step=0.05,
                                 key=f"{key}_scale_factor", help="Below 1 shrinks the photograph before the model "
                                 "sees it, above 1 enlarges it; the map is resized back to the photograph's size."))


def scale_note(source: str, image: np.ndarray, fov: np.ndarray, scale: str | float) -> str:
    """What the image scale does to ``image`` (uint8 (H, W, 3)) with this model and field of view, in words."""
    predictor = predictor_of(source)
    if not predictor.scale_control:  # the filter's sigmas suit one scale: it resizes on its own (scale "auto")
        factor, (h, w) = predictor.scale_factor(fov), image.shape[:2]
        if factor == 1.0:
            return "Image scale: the classical filter uses the photograph as it is."
        return (f"Image scale: the classical filter sees the photograph ×{factor:.2f} ({round(w * factor):,}×"
                f"{round(h * factor):,} px), so that its field of view is about {predictor.fov_diameter:,.0f} px "
                "across as its filters expect; the map is resized back.")
    note = _scale_words(predictor, image, fov, scale)
    words = predictor.tta_words
    return f"{note} {words[0].upper()}{words[1:]}." if predictor.dashboard_tta else note


def _scale_words(predictor, image: np.ndarray, fov: np.ndarray, scale: str | float) -> str:
    """What the image scale does to ``image`` with this model (not the classical filter), in words."""
    factor, diameter, trained = predictor.scale_factor(fov, scale), fov_diameter(fov), predictor.fov_diameter
    h, w = image.shape[:2]
    size = f"{round(w * factor):,}×{round(h * factor):,} px"
    if scale == "none":
        return f"As it is: the model sees the photograph at its own size ({w:,}×{h:,} px)."
    if scale != "auto":
        return f"Resized ×{factor:.2f}: the model sees {size}, and the map is resized back to {w:,}×{h:,} px."
    if trained is None:
        return "Automatic: this model does not record the scale of its training images, so the photograph is used as it is."
    if diameter is None:
        return ("Automatic: the field of view covers the whole image, so the photograph's scale is unknown and it is "
                "used as it is; choose a resize factor if its vessels are much wider or thinner than the model's.")
    low, high = predictor.fov_range or (trained, trained)
    at = f"{trained:,.0f} px" if low == high else f"fields of view from {low:,.0f} to {high:,.0f} px across"
    seen = f"Automatic: this photograph's field of view is {diameter:,.0f} px across and the model was trained at {at}"
    if factor == 1.0:
        return f"{seen}, close enough to use it as it is." if low == high else f"{seen}, so it is used as it is."
    way, back = ("shrunk", "enlarged") if factor < 1 else ("enlarged", "shrunk")
    return f"{seen}, so it is {way} ×{factor:.2f} (to {size}) for the model and the map is {back} back."


# --------------------------------------------------------------------------------------------
# Checkpoints, the workspace, presets
# --------------------------------------------------------------------------------------------


MONITOR_WORDS = {"val_dice": "val Dice", "val_loss": "val loss"}


def monitor_of(model: dict | None) -> str:
    """The validation score a model's checkpoints were judged by (its training config's early-stopping monitor)."""
    try:
        config = json.loads((model or {}).get("config") or "{}")
    except (TypeError, json.JSONDecodeError):
        config = {}
    return config.get("early_stopping_monitor") or "val_dice"


def checkpoint_label(c: dict, monitor: str = "val_dice") -> str:
    """A checkpoint in words: its file, kind, epoch, the score it was judged by (``monitor``) and size."""
    score = f", {MONITOR_WORDS.get(monitor, monitor)} {c['metric']:.3f}" if c.get("metric") is not None else ""
    epoch = f"epoch {c['epoch']}" if c.get("epoch") is not None else "epoch ?"
    return f"{c['name']} ({c['kind']}, {epoch}{score}, {(c.get('size_bytes') or 0) / 1e6:.1f} MB)"


def settings_sentence(config: PostProcessConfig) -> str:
    """Post-processing settings as one short sentence for people (the JSON is in the downloads)."""
    c = config
    if c.threshold_mode == "otsu":
        parts = ["threshold from the map's histogram (Otsu)"]
    elif c.threshold_mode == "hysteresis":
        parts = [f"threshold {c.threshold:.2f} with faint connected pixels down to {c.hysteresis_low:.2f}"]
    else:
        parts = [f"threshold {c.threshold:.2f}"]
    if c.apply_opening and c.opening_kernel > 1:
        parts.append(f"opening {c.opening_kernel} px")
    if c.apply_closing and c.closing_kernel > 1:
        parts.append(f"closing {c.closing_kernel} px")
    if c.min_component_size:
        parts.append(f"pieces under {c.min_component_size:,} px removed")
    if c.confidence_threshold:
        parts.append(f"pieces of mean probability under {c.confidence_threshold:.2f} removed")
    if c.shape_filter:
        parts.append(f"pieces shorter than {c.min_elongation:g} × their width removed")
    if c.fill_holes_below:
        parts.append(f"holes under {c.fill_holes_below} px filled")
    text = ", ".join(parts) + ("" if len(parts) > 1 else ", no other filter")
    return text[0].upper() + text[1:] + "."


DEFAULTS_LABEL = "Defaults (threshold 0.6, min component 50 px)"


@dataclass(frozen=True)
class StartPoint:
    """The settings the tuner opens with, and how to name them."""

    config: PostProcessConfig | None  # None: the defaults
    label: str  # the option chosen under 'Start the tuner from'
    words: str  # how a batch job run with them is described ("with the model's recommended settings")


def start_from(model: dict | None, key: str, recommended: dict | None = None, scope: str = "",
               why: list[str] | None = None) -> StartPoint:
    """'Start the tuner from': the model's recommended settings (its registry row's, else ``recommended``)
    first when there are any, then its saved presets, then the defaults. ``scope`` names what the choice
    belongs to (a model or checkpoint), so another model opens on its own first option. A preset saved
    with retired options says what changed, with ``st.info``; ``why`` (the calibration's sentences) is
    shown under the recommended settings."""
    choices: dict[str, dict | None] = {}
    if model and model.get("recommended_postprocess"):
        recommended = json.loads(model["recommended_postprocess"])
    if recommended:
        choices["Recommended by training"] = recommended
    for preset in list_presets(model["id"]) if model else []:
        choices[f"Preset: {preset['name']}"] = preset["config"]
    choices[DEFAULTS_LABEL] = None
    scope = scope or (model["id"] if model else "")
    pick = st.selectbox("Start the tuner from", list(choices), key=f"{key}_start_from_{scope}" if scope else f"{key}_start_from")
    words = {"Recommended by training": "with the model's recommended settings",
             DEFAULTS_LABEL: "with the default settings"}.get(pick, f"with the preset '{pick.removeprefix('Preset: ')}'")
    if pick.startswith("Preset: "):  # a preset saved before an option was retired says what changed
        for note in PostProcessConfig.notes_from_dict(choices[pick]):
            st.info(note)
    try:
        config = PostProcessConfig.from_dict(choices[pick]) if choices[pick] else None
    except UserError as exc:  # settings this version refuses
        st.warning(f"The saved settings cannot be used ({exc}); the tuner opens with the defaults.")
        return StartPoint(None, DEFAULTS_LABEL, "with the default settings")
    st.caption(settings_sentence(config or PostProcessConfig()))
    if why and pick == "Recommended by training":
        with st.expander("How these settings differ from the usual advice, and why"):
            for sentence in why:
                st.markdown(f"- {sentence}")
    return StartPoint(config, pick, words)


def synthetic_images_hint() -> str:
    """Where photographs to try are: the images folder of a synthetic data set that exists, else how to make one."""
    found = sorted(paths.datasets_dir().glob("synthetic_*/images"))
    if found:
        return f"(the images of a synthetic data set are in `{found[0]}`)"
    return "(to have some to try, generate a synthetic data set on the Train page)"


def workspace(source: str, *, key: str, start: StartPoint, linked: tuple[str, ...] = ()
              ) -> tuple[str | float | None, PostProcessConfig | None]:
    """Upload images, pick one to tune on, optional ground truth, the tuner (re-running the ``linked``
    fragments with it), and all masks as a zip.
    Returns (the image scale the page uses: ``"auto"``, ``"none"`` or a factor; the settings the tuner's
    mask is made with), both None while no image is uploaded (no tuner on screen)."""
    images = upload_images("Fundus images", key=f"{key}_images", multiple=True,
                           help="PNG, JPEG, TIFF, GIF, PPM or BMP, up to 40 megapixels each; several at once.")
    if not images:
        if not st.session_state.get(f"{key}_images__refused"):  # beside an error, the error alone says what to do
            st.info(f"Upload one or more fundus photographs to see {predictor_of(source).whose} vessel map "
                    f"{synthetic_images_hint()}.")
        return None, None
    names = [u.name for u in images]
    index = st.selectbox("Image to tune on", range(len(images)), format_func=names.__getitem__,
                         key=f"{key}_pick") if len(images) > 1 else 0
    image = images[index or 0]
    truth_up = upload_image(f"Ground-truth mask of {image.name} (optional)", key=f"{key}_truth_{image.digest[:10]}",
                            kind="mask", help="Adds Dice, clDice and the other metrics.")
    truth = matching_mask(image, truth_up, "ground-truth mask")
    left, right = st.columns(2)
    with left:
        fov = field_of_view(image, key=key)
    with right:
        scale = scale_control(source, key=key)
    prob = probability_map(source, image, fov.mask, scale)
    st.caption(scale_note(source, image.array, fov.mask, scale))
    config = postprocess_tuner(prob, image.array, key=f"{key}_tuner", defaults=start.config, fov=fov.mask, truth=truth,
                               file_stem=image.stem, fov_scope=fov.scope, reset_label=f"Reset to: {start.label}",
                               linked=linked)
    if len(images) > 1:  # the others: the tuned image's field-of-view choice, with their own estimate
        fovs = [fov if u is image else default_fov(u, fov.choice) for u in images]
        maps = [(name, probability_map(source, u, f.mask, scale), f.mask)  # cached
                for name, u, f in zip(unique_names([u.stem for u in images], "_mask.png"), images, fovs)]

        def all_masks() -> bytes:
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
                for name, prob_map, fov_mask in maps:
                    mask = enhanced_post_processing(prob_map, config=config, fov=fov_mask).mask
                    zf.writestr(name, encode_png(mask))
                zf.writestr("postprocess.json", json.dumps(config.to_dict(), indent=2))
            return buf.getvalue()

        st.download_button(f"Download the masks of all {len(images)} images (zip)", all_masks,
                           file_name="masks.zip", mime="application/zip", key=f"{key}_all_masks", on_click="ignore")
    return scale, config


def save_preset_controls(model_id: str, key: str, config: PostProcessConfig | None) -> None:
    """Save ``config`` (the tuner's settings; None while no image is on screen) as a preset of the model."""
    a, b = st.columns([3, 1], vertical_alignment="bottom")
    name = a.text_input("Save the current settings as a preset named", key=f"{key}_preset_name",
                        placeholder="thin vessels")
    if b.button("Save preset", key=f"{key}_preset_save"):
        from storage.db import save_preset

        if config is None:
            st.error("Upload an image and tune the settings first; then save them.")
            return
        save_preset(model_id, name, config.to_dict())
        forget_queries()
        st.success(f"Saved preset '{name.strip()}'. It is offered under 'Start the tuner from'.")


# --------------------------------------------------------------------------------------------
# Batch jobs
# --------------------------------------------------------------------------------------------
def stored_upload_name(name: str) -> str:
    """The user's file name, made safe to store: its last path part, with characters other than
    letters, digits, spaces and ``._-()`` replaced by ``_``."""
    base = re.sub(r"[^\w .()-]", "_", os.path.basename(name.replace("\\", "/"))).strip(" .") or "images.zip"
    return base if base.lower().endswith(".zip") else f"{base}.zip"


SCALE_WORDS = {"auto": "the scale is automatic", "none": "each image is used at its own size"}


def batch_sentence_key(key: str) -> str:
    """The key of the fragment that says what a batch job will do; the tuner re-runs it on every move."""
    return f"{key}__batch_sentence"


def _batch_sentence(tuner_key: str | None, config: PostProcessConfig, words: str, scale: str | float,
                    flips: str = "") -> None:
    """What a click on Run on all images does, with the tuner's settings as they are now (``tuner_key``), else
    ``config``: a fragment that re-runs with the tuner, so it never describes the settings of a move before.
    ``flips``: the words saying test-time flips are on ("; ..."), or ""."""
    config = (tuner_settings(tuner_key) if tuner_key else None) or config
    sentence = settings_sentence(config)
    scaled = SCALE_WORDS.get(scale) or f"each image is resized ×{scale:.2f}"
    st.caption(f"Every image is processed {words}: {sentence[0].lower()}{sentence[1:]} Each image's field of view "
               f"is estimated from it, and {scaled}{flips}.")


def batch_controls(source: str, model_id: str | None, key: str, start: StartPoint, scale: str | float | None,
                   tuned: PostProcessConfig | None) -> None:
    """Queue a batch job over a folder or a zip with the settings the page shows: the tuner's (``tuned``) and
    the image scale's when an image is on screen (``scale`` is not None), else those chosen under 'Start the
    tuner from' (``start``) and the automatic scale. A folder or zip the job could not read is refused here, with
    its sentence, and nothing is queued."""
    from engine.jobs import start_inference

    st.subheader("Batch inference")
    if scale is not None:
        config, words = tuned or start.config or PostProcessConfig(), "with the settings on screen"
    else:
        config, words, scale = start.config or PostProcessConfig(), start.words, "auto"
    predictor = predictor_of(source)
    flips = f"; {predictor.tta_words}" if predictor.dashboard_tta else ""
    st.fragment(_batch_sentence, key=batch_sentence_key(key))(f"{key}_tuner" if tuned is not None else None, config,
                                                             words, scale, flips)
    kind = st.radio("Images to process", ["Folder path", "Zip upload"], key=f"{key}_batch_kind", horizontal=True)
    folder, upload = None, None
    if kind == "Folder path":
        folder = st.text_input("Folder with images", key=f"{key}_batch_folder",
                               placeholder="../shared/data/drive/training/images").strip()
    else:
        upload = st.file_uploader("Zip of images", type=["zip"], key=f"{key}_batch_zip")
    if st.button("Run on all images", key=f"{key}_batch_go", type="primary", disabled=not (folder or upload)):
        stored = None
        if upload is not None:  # kept under the user's own name, in a folder of its own
            stored = paths.uploads_dir() / uuid.uuid4().hex / stored_upload_name(upload.name)
            folder = str(paths.atomic_write_bytes(stored, upload.getvalue()))
        job_id = None
        try:
            job_id = start_inference(source, folder, config.to_dict(), model_id=model_id, scale=scale)
        except UserError as exc:  # checked before queuing: nothing is queued
            st.error(str(exc))
            return
        finally:  # refused, or a bug (raised, for the page to log): the stored zip goes
            if job_id is None and stored is not None:
                shutil.rmtree(stored.parent, ignore_errors=True)
        st.session_state.setdefault(f"{key}_jobs", []).insert(0, job_id)
        forget_queries()
        st.success(f"Queued job {job_id} {words}.")


QUEUED_QUIET_S = 5.0  # a running worker picks a job up within a second or two: only a longer wait is worth a word


def input_name(path: str) -> str:
    """A batch job's input as a person tells it apart: the folder with its parent (``drive/images``), or
    the uploaded zip's own name."""
    p = Path(path)
    if p.suffix.lower() == ".zip" or p.parent == p:
        return p.name
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name


@st.fragment(run_every=2)
def batch_jobs(key: str, model_id: str | None = None) -> None:
    """Status, progress and results of recent batch jobs (refreshes every 2 s)."""
    from engine.jobs import inference_status

    jobs = list_inference_jobs(model_id, 5)
    if not jobs:
        return
    names = {m["id"]: m["name"] for m in list_models()}
    for row in jobs:
        job = inference_status(row["id"])
        predictor = Predictor(job["checkpoint_path"])  # describes itself without loading
        if predictor.kind == "checkpoint":
            source = f"{names.get(job['model_id'], job['model_id'] or 'a checkpoint')} ({predictor.name})"
        else:
            source = predictor.name
        with st.container(border=True):
            st.write(f"Job `{job['job_id']}` · {source} on `{input_name(job['input_path'])}` · "
                     f"started {(job['created_at'] or '')[11:16]} UTC · "
                     f"**{job['status']}** · {job['n_done'] or 0} / {job['n_total'] or '?'} "
                     f"images" + (f", {job['n_failed']} failed" if job["n_failed"] else ""))
            if job["status"] in JOB_ACTIVE_STATUSES:
                st.progress(float(job["progress"] or 0.0))
            if job["error"]:
                st.error(job["error"])
            if job["results_zip"]:
                path = job["results_zip"]
                st.download_button("Download results (zip)", lambda p=path: open(p, "rb").read(),
                                   file_name=f"inference_{job['job_id']}.zip", mime="application/zip",
                                   key=f"{key}_job_dl_{job['job_id']}", on_click="ignore")
            elif job["status"] == "queued" and (age_seconds(job["created_at"]) or 0) > QUEUED_QUIET_S:
                st.caption("Waiting for the worker: is it running? See the Overview page.")
