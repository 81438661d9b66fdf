"""Batch inference over a folder or a zip of images, as run by the worker's ``run_inference_task``.

For every image: a probability map (``engine.inference.predictor.Predictor``: a trained checkpoint, the
shipped model or the classical vesselness filter), then ``enhanced_post_processing`` with the job's settings.
Outputs, all written atomically into ``inference/<job_id>/``::

    prob/<name>.png     probability × 255 (uint8 grey)
    masks/<name>.png    the post-processed mask (0 / 255)
    stats.csv           one row per image: size, vessel pixels and fraction, components, timing, error
    results.zip         prob/, masks/ and stats.csv together, for download

An image that cannot be read is listed in stats.csv with its error and counted in ``n_failed``; the
other images are still processed. A job cancelled while it runs (``storage.db.request_cancel``) stops
before its next image; stats.csv and results.zip then hold the images done until then. A zip is
unpacked with ``storage.archives.safe_extract_zip`` (no escaping paths, links, or zip bombs) into
``inference/<job_id>/input/``.
"""
from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np

from engine.errors import UserError, WorkerShutdown
from engine.fov import estimate_fov
from engine.imageio import IMAGE_EXTENSIONS, encode_png, is_image_name, list_images, read_image
from engine.inference.predictor import CLASSICAL, Predictor
from storage.db import checkpoint_file
from storage import archives, paths

STATS_COLUMNS = ("image", "width", "height", "vessel_pixels", "vessel_fraction", "components", "mean_probability",
                 "threshold_used", "pixels_removed", "fov_fraction", "scale_factor", "seconds", "error")
MAX_IMAGES = 10_000
RESULT_PARTS = ("prob", "masks", "stats.csv", "settings.json")  # what results.zip holds


def check_inputs(checkpoint_path, input_path, postprocess) -> tuple[str, str, dict]:
    """Validate a job before it is queued: (checkpoint, input, post-processing dict); UserError otherwise,
    also for a folder or zip that holds no image."""
    from engine.postprocess import PostProcessConfig

    checkpoint = str(checkpoint_path)
    if checkpoint_file(checkpoint) is not None:
        ckpt = Path(checkpoint).expanduser()
        if not ckpt.is_file():
            raise UserError(f"No checkpoint file at {checkpoint}: choose a checkpoint from the list, or "
                            f"'{CLASSICAL}'.")
        checkpoint = str(ckpt.resolve())
    source = Path(input_path).expanduser()
    if source.is_file() and source.suffix.lower() == ".zip":
        members = archives.check_zip(source)  # ArchiveError (a UserError) for unsafe or broken archives
        if not any(is_image_name(rel.name) and not any(p.startswith(".") for p in rel.parts) for _, rel in members):
            raise UserError(f"{source.name} holds no images ({', '.join(IMAGE_EXTENSIONS)}): zip a folder of "
                             "fundus photographs and upload that.")
    elif not source.is_dir():
        raise UserError(f"{input_path} is neither a folder nor a .zip file: give a folder of images or a zip of them.")
    elif not list_images(source, recursive=True):
        raise UserError(f"{input_path} holds no images ({', '.join(IMAGE_EXTENSIONS)}): choose another folder.")
    settings = PostProcessConfig.from_dict(postprocess or {}).to_dict()
    return checkpoint, str(source.resolve()), settings


def unique_names(stems: list[str], suffix: str) -> list[str]:
    """One file name per stem, ``stem + suffix``, numbered (``_2``, ``_3``) where stems repeat (case ignored)."""
    names, seen = [], set()
    for stem in stems:
        name, n = f"{stem}{suffix}", 1
        while name.lower() in seen:
            n += 1
            name = f"{stem}_{n}{suffix}"
        seen.add(name.lower())
        names.append(name)
    return names


def _output_names(files: list[Path], root: Path) -> list[str]:
    """A unique, flat PNG name per input (sub/a.tif -> sub__a.png; a.png + a.tif -> a.png, a_2.png)."""
    return unique_names(["__".join(file.relative_to(root).with_suffix("").parts) for file in files], ".png")


def _one_image(file: Path, name: str, out: Path, predictor: Predictor, scale: str | float, pp_config) -> dict:
    from engine.postprocess import enhanced_post_processing

    t0 = time.monotonic()
    image = read_image(file)
    fov = estimate_fov(image)
    prediction = predictor.predict(image, fov, scale)
    prob, factor = np.clip(np.asarray(prediction.map, dtype=np.float32), 0.0, 1.0), prediction.factor
    result = enhanced_post_processing(prob, config=pp_config, fov=fov)
    paths.atomic_write_bytes(out / "prob" / name, encode_png(np.round(prob * 255).astype(np.uint8)))
    paths.atomic_write_bytes(out / "masks" / name, encode_png(result.mask.astype(np.uint8)))
    h, w = result.mask.shape
    vessels = int(result.mask.sum())
    return {"width": w, "height": h, "vessel_pixels": vessels, "vessel_fraction": round(vessels / (h * w), 6),
            "components": result.stats.get("components_after"), "mean_probability": round(float(prob.mean()), 6),
            "threshold_used": result.stats.get("threshold_used"), "pixels_removed": result.stats.get("removed_total"),
            "fov_fraction": round(float(fov.mean()), 6), "scale_factor": round(float(factor), 4),
            "seconds": round(time.monotonic() - t0, 3), "error": ""}


def job_scale(row: dict) -> str | float:
    """How the job resizes photographs for the model: ``"auto"`` (also for jobs made before this was
    recorded), ``"none"`` or a factor."""
    from engine.fov import parse_scale

    return parse_scale(row.get("scale") or "auto")


def job_settings(row: dict, pp_config) -> dict:
    """What a job's results were made with, written beside them as settings.json."""
    from engine.training.checkpoint import versions

    checkpoint = row["checkpoint_path"]
    predictor = Predictor(checkpoint)  # describes itself without loading
    return {"checkpoint": checkpoint, "model_id": row.get("model_id"), "model": predictor.words,
            "postprocess": pp_config.to_dict(), "scale": job_scale(row), "field_of_view": "estimated from each image",
            "test_time_augmentation": predictor.tta_words,
            "input": row["input_path"], "versions": versions()}


def job_outcome(n_total: int, n_failed: int, n_done: int, cancelled: bool) -> dict:
    """The row's fields for a batch job that ended (without ``status`` when it was cancelled: the status
    says so already)."""
    if cancelled:
        return {"error": f"cancelled by the user after {n_done} of {n_total} image(s); their results were kept"}
    error = None
    if n_failed:
        error = f"{n_failed} of {n_total} image(s) could not be processed; see the error column of stats.csv"
    return {"status": "failed" if n_failed == n_total else "completed", "error": error, "progress": 1.0}


def run_images(row: dict, out: Path, source: Path, on_progress: Callable[..., None], cancelled: Callable[[], bool],
               should_stop: Callable[[], bool] = lambda: False, checkpoint: str | None = None) -> dict:
    """Predict every image of a job and write its outputs into ``out`` (prob/, masks/, stats.csv,
    settings.json, results.zip); the registry is touched only through the callbacks, so a worker on
    another machine runs the same code.

    Args:
        row: the job's row (``checkpoint_path``, ``postprocess``, ``scale``, ``input_path``).
        out: the job's output folder.
        source: the input folder or zip as found on this machine.
        on_progress: called with ``n_total, n_done, n_failed, progress`` keywords as images finish.
        cancelled: True once the user cancelled the job (read before each image).
        should_stop: True when the worker shuts down (raises WorkerShutdown before the next image).
        checkpoint: the checkpoint file on this machine (default: the row's ``checkpoint_path``).
    Returns:
        The fields that end the job's row (:func:`job_outcome`).
    """
    from engine.postprocess import PostProcessConfig

    if source.is_file():
        root = archives.safe_extract_zip(source, out / "input") if not (out / "input").exists() else out / "input"
    else:
        root = source
    files = list_images(root, recursive=True)
    if not files:
        raise UserError(f"{source.name} holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
    if len(files) > MAX_IMAGES:
        raise UserError(f"{source.name} holds {len(files)} images; the limit per job is {MAX_IMAGES}: split it.")
    pp_config = PostProcessConfig.from_dict(json.loads(row["postprocess"] or "{}"))
    predictor, scale = Predictor.open(checkpoint or row["checkpoint_path"]), job_scale(row)
    on_progress(n_total=len(files), n_done=0, n_failed=0, progress=0.0)
    stats, failed, stopped = [], 0, False
    for i, (file, name) in enumerate(zip(files, _output_names(files, root)), start=1):
        if should_stop():
            raise WorkerShutdown(f"the worker was shut down after {i - 1} of {len(files)} images; submit the job again")
        if cancelled():  # storage.db.request_cancel: stop here, keep what is written
            stopped = True
            break
        try:
            record = _one_image(file, name, out, predictor, scale, pp_config)
        except (UserError, ValueError) as exc:  # a user's error, or numpy's on a strange file
            failed += 1
            record = {"error": str(exc)}
        except OSError as exc:  # one file the system refuses fails its own row, never the whole job
            failed += 1
            record = {"error": f"{file.name} could not be read or its results written ({exc.strerror or exc}): "
                               "check the file's permissions and the free disk space, then run the job again."}
        stats.append({"image": str(file.relative_to(root)), **record})
        on_progress(n_total=len(files), n_done=i, n_failed=failed, progress=i / len(files))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=STATS_COLUMNS, restval="")
    writer.writeheader()
    writer.writerows(stats)
    paths.atomic_write_bytes(out / "stats.csv", buf.getvalue().encode())
    paths.atomic_write_bytes(out / "settings.json", json.dumps(job_settings(row, pp_config), indent=2).encode())
    archives.zip_folder(out, out / "results.zip", include=RESULT_PARTS)
    return job_outcome(len(files), failed, len(stats), stopped)
