"""Widgets shared by the two inference pages: checkpoint labels, the upload-and-tune workspace,
presets, and batch jobs run by the worker."""
from __future__ import annotations

import io
import json
import os
import uuid
import zipfile

import streamlit as st

from engine.imageio import encode_png
from engine.postprocess import PostProcessConfig, enhanced_post_processing
from pages.components import (
    current_postprocess,
    forget_queries,
    matching_mask,
    postprocess_tuner,
    probability_map,
    query,
    upload_image,
    upload_images,
)
from storage import paths


def checkpoint_label(c: dict) -> str:
    metric = f", metric {c['metric']:.3f}" if c.get("metric") is not None else ""
    epoch = f"epoch {c['epoch']}" if c.get("epoch") is not None else "epoch ?"
    return f"{c['name']} ({c['kind']}, {epoch}{metric}, {(c.get('size_bytes') or 0) / 1e6:.1f} MB)"


def start_from(model: dict | None, key: str) -> PostProcessConfig | None:
    """Which settings the tuner opens with: the model's recommended ones, a saved preset, or defaults."""
    choices: dict[str, dict | None] = {}
    if model and model.get("recommended_postprocess"):
        choices["Recommended by training"] = json.loads(model["recommended_postprocess"])
    for preset in query("list_presets", model["id"]) if model else []:
        choices[f"Preset: {preset['name']}"] = preset["config"]
    choices["Defaults (threshold 0.6, min component 50 px)"] = None
    pick = st.selectbox("Start the tuner from", list(choices), key=f"{key}_start_from")
    try:
        return PostProcessConfig.from_dict(choices[pick]) if choices[pick] else None
    except ValueError as exc:
        st.warning(f"The saved settings cannot be used ({exc}); the tuner opens with the defaults.")
        return None


def workspace(source: str, *, key: str, defaults: PostProcessConfig | None) -> None:
    """Upload images, pick one to tune on, optional ground truth, the tuner, and all masks as a zip."""
    images = upload_images("Fundus images", key=f"{key}_images", multiple=True,
                           help="PNG, JPEG, TIFF, GIF, PPM or BMP; several at once.")
    if not images:
        st.info("Upload one or more fundus photographs to see the model's vessel map (the images of a synthetic "
                f"data set are in `{paths.datasets_dir()}/synthetic_…/images/`).")
        return
    names = [u.name for u in images]
    index = st.selectbox("Image to tune on", range(len(images)), format_func=names.__getitem__,
                         key=f"{key}_pick") if len(images) > 1 else 0
    image = images[index or 0]
    truth_up = upload_image(f"Ground-truth mask of {image.name} (optional)", key=f"{key}_truth_{image.digest[:10]}",
                            kind="mask", help="Adds Dice, clDice and the other metrics.")
    truth = matching_mask(image, truth_up, "ground-truth mask")
    prob = probability_map(source, image)
    postprocess_tuner(prob, image.array, key=f"{key}_tuner", defaults=defaults, truth=truth, file_stem=image.stem)
    if len(images) > 1:
        maps = [(u.stem, probability_map(source, u)) for u in images]  # cached: computed once per image
        config = current_postprocess(f"{key}_tuner") or PostProcessConfig()

        def all_masks() -> bytes:
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
                for stem, prob_map in maps:
                    zf.writestr(f"{stem}_mask.png", encode_png(enhanced_post_processing(prob_map, config=config).mask))
                zf.writestr("postprocess.json", json.dumps(config.to_dict(), indent=2))
            return buf.getvalue()

        st.download_button(f"Download the masks of all {len(images)} images (zip)", all_masks,
                           file_name="masks.zip", mime="application/zip", key=f"{key}_all_masks", on_click="ignore")


def save_preset_controls(model_id: str, key: str) -> None:
    a, b = st.columns([3, 1], vertical_alignment="bottom")
    name = a.text_input("Save the current settings as a preset named", key=f"{key}_preset_name",
                        placeholder="thin vessels")
    if b.button("Save preset", key=f"{key}_preset_save"):
        from storage.db import save_preset

        config = current_postprocess(f"{key}_tuner")
        if config is None:
            st.error("Upload an image and tune the settings first; then save them.")
            return
        save_preset(model_id, name, config.to_dict())
        forget_queries()
        st.success(f"Saved preset '{name.strip()}'. It is offered under 'Start the tuner from'.")


# --------------------------------------------------------------------------------------------
# Batch jobs
# --------------------------------------------------------------------------------------------
def batch_controls(source: str, model_id: str | None, key: str) -> None:
    """Queue a batch job over a folder or a zip with the tuner's current settings."""
    from engine.jobs import start_inference

    st.subheader("Batch inference")
    kind = st.radio("Images to process", ["Folder path", "Zip upload"], key=f"{key}_batch_kind", horizontal=True)
    folder, upload = None, None
    if kind == "Folder path":
        folder = st.text_input("Folder with images", key=f"{key}_batch_folder",
                               placeholder="../shared/data/drive/training/images").strip()
    else:
        upload = st.file_uploader("Zip of images", type=["zip"], key=f"{key}_batch_zip")
    if st.button("Run on all images", key=f"{key}_batch_go", type="primary", disabled=not (folder or upload)):
        if upload is not None:
            folder = str(paths.atomic_write_bytes(paths.uploads_dir() / f"{uuid.uuid4().hex}.zip", upload.getvalue()))
        config = current_postprocess(f"{key}_tuner") or PostProcessConfig()
        job_id = start_inference(source, folder, config.to_dict(), model_id=model_id)
        st.session_state.setdefault(f"{key}_jobs", []).insert(0, job_id)
        forget_queries()
        st.success(f"Queued job {job_id} with the tuner's current settings.")


@st.fragment(run_every=2)
def batch_jobs(key: str, model_id: str | None = None) -> None:
    """Status, progress and results of recent batch jobs (refreshes every 2 s)."""
    from engine.jobs import inference_status

    jobs = query("list_inference_jobs", model_id, 5)
    if not jobs:
        return
    from engine.vesselness import BASELINE_NAME

    names = {m["id"]: m["name"] for m in query("list_models")} | {"baseline": BASELINE_NAME}
    for row in jobs:
        job = inference_status(row["id"])
        source = names.get(job["model_id"], job["model_id"] or "a checkpoint")
        if job["model_id"] != "baseline":
            source += f" ({os.path.basename(job['checkpoint_path'])})"
        with st.container(border=True):
            st.write(f"Job `{job['job_id']}` · {source} on `{os.path.basename(job['input_path'])}` · "
                     f"**{job['status']}** · {job['n_done'] or 0} / {job['n_total'] or '?'} "
                     f"images" + (f", {job['n_failed']} failed" if job["n_failed"] else ""))
            if job["status"] in ("queued", "running"):
                st.progress(float(job["progress"] or 0.0))
            if job["error"]:
                st.error(job["error"])
            if job["results_zip"]:
                path = job["results_zip"]
                st.download_button("Download results (zip)", lambda p=path: open(p, "rb").read(),
                                   file_name=f"inference_{job['job_id']}.zip", mime="application/zip",
                                   key=f"{key}_job_dl_{job['job_id']}", on_click="ignore")
            elif job["status"] == "queued":
                st.caption("Waiting for the worker: is it running? See the Overview page.")
