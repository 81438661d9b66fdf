"""Bad input through the engine: a data set folder (``load_dataset``) or a training run on it (``train``),
a zip import (``storage.archives``), a training config (every numeric option with NaN, a negative, zero
and an absurd value), a checkpoint (``load_model``), and one batch with an unreadable file. The table
and its invariant: tests/bad_input_helpers.py."""
from __future__ import annotations

import csv
import dataclasses
import io
import math
from pathlib import Path

import numpy as np
import pytest

from engine.imageio import encode_png
from engine.training.synthetic import make_synthetic_dataset
from engine.training.config import TrainingConfig
from storage import paths
from storage import db as store

from tests.bad_input_helpers import (
    ACCEPTED, check_row, checkpoint, checkpoint_without, config, config_json, Ctx, dataset_files, dataset_folder,
    encode, evil_checkpoint, FUNDUS, make_folder, MASK, no_marker, nothing_escaped, pair,
    PHOTO, Row, TINY, train_on, unreadable_file, variant_checkpoint, zip_bytes, zip_import,
)

pytestmark = pytest.mark.timeout(120)


def synth_files(ctx: Ctx, n: int = 3) -> dict[str, bytes]:
    src = make_synthetic_dataset(ctx.tmp / "synth_src", n_images=n, size=64, seed=3)
    return dataset_files(src)


def truncated_checkpoint(ctx: Ctx) -> Path:
    path = ctx.tmp / "cut.pt"
    raw = ctx.best.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return path


def empty_images_folder(ctx: Ctx) -> Path:
    (ctx.tmp / "set" / "images").mkdir(parents=True)
    return make_folder(ctx, {"masks/a.png": FUNDUS})


ROWS: list[Row] = [
    # ---- masks
    Row("mask-other-size-in-dataset", dataset_folder,
        lambda ctx: make_folder(ctx, {**pair("a.png"), "masks/a.png": encode_png(MASK[:64, :64])}),
        r"Size mismatch: a\.png is 64×64 but a\.png is 96×96"),
    Row("fov-all-zero-training", train_on,
        lambda ctx: ({}, make_folder(ctx, {**synth_files(ctx), "fov/synth_002.png": encode_png(np.zeros((64, 64), np.uint8))})),
        r"field-of-view mask synth_002\.png .* is all zero"),
    # ---- data sets
    Row("dataset-empty-images-folder", dataset_folder, empty_images_folder, r"images holds no images .*the data set is empty"),
    Row("dataset-no-pairs", dataset_folder, lambda ctx: make_folder(ctx, {"images/a.png": FUNDUS, "masks/b.png": FUNDUS}),
        r"Unpaired files: no vessel mask in masks/ for a\.png; no image in images/ for b\.png"),
    Row("dataset-duplicate-ids", dataset_folder,
        lambda ctx: make_folder(ctx, {**pair("a.png"), "images/a.tif": encode(PHOTO, "TIFF")}),
        r"a\.png and a\.tif in .* have the same identifier 'a'"),
    Row("dataset-images-without-masks", dataset_folder,
        lambda ctx: make_folder(ctx, {**pair("a.png"), "images/b.png": FUNDUS, "images/c.png": FUNDUS}),
        r"no vessel mask in masks/ for b\.png, c\.png"),
    Row("dataset-nested-one-level", dataset_folder,
        lambda ctx: make_folder(ctx, {f"my_set/{k}": v for k, v in synth_files(ctx).items()}), None, ACCEPTED),
    Row("dataset-images-in-subfolders", dataset_folder,
        lambda ctx: make_folder(ctx, {"images/left/a.png": FUNDUS, "masks/a.png": FUNDUS}),
        r"holds no images directly, only the folder\(s\) left/"),
    Row("dataset-missing-folder", dataset_folder, lambda ctx: ctx.tmp / "nowhere", r"does not exist: check the path"),
    # ---- zip imports
    Row("zip-dotdot-paths", zip_import, lambda ctx: zip_bytes({**pair("a.png"), "../../../escaped.txt": b"x"}),
        r"leaves its folder", check=nothing_escaped),
    Row("zip-absolute-paths", zip_import, lambda ctx: zip_bytes({**pair("a.png"), "/tmp/escaped_abs.txt": b"x"}),
        r"absolute path", check=nothing_escaped),
    Row("zip-bomb", zip_import, lambda ctx: zip_bytes({**pair("a.png"), "masks/b.png": b"\0" * 50_000_000}),
        r"zip bomb; it was refused"),
    Row("zip-not-a-zip", zip_import, lambda ctx: b"PK\x03\x04 but not really", r"not a zip archive"),
    Row("zip-nested-folders", zip_import,
        lambda ctx: zip_bytes({f"export/drive/{k}": v for k, v in synth_files(ctx).items()}), None, ACCEPTED),
    # ---- configs (every numeric option is generated below)
    Row("config-unknown-loss", config, lambda ctx: {"loss_function": "magic"},
        r"loss_function 'magic' is not known: choose one of .*dice"),
    Row("config-unknown-scheduler", config, lambda ctx: {"lr_schedule": "warp"},
        r"lr_schedule 'warp' is not known: choose one of cosine, plateau, none"),
    Row("config-unknown-option", config_json, lambda ctx: {"learning_rat": 0.1},
        r"Unknown training option\(s\) 'learning_rat': known options are"),
    Row("config-patch-larger-than-images", train_on, lambda ctx: ({"patch_size": 128}, ctx.dataset),
        r"patch_size 128 is larger than the smallest image \((synth_\d+\.png, )?64×64 pixels\): set patch_size to 64"),
    # ---- checkpoints
    Row("checkpoint-pickle-runs-code", checkpoint, evil_checkpoint, r"contains objects other than weights .* not loaded",
        check=no_marker),
    Row("checkpoint-truncated", checkpoint, truncated_checkpoint, r"cut\.pt is not a readable checkpoint \(truncated"),
    Row("checkpoint-other-architecture", checkpoint, lambda ctx: variant_checkpoint(ctx, arch="resnet50"),
        r"holds a 'resnet50' model; this program reads 'unet' models only"),
    Row("checkpoint-newer-format", checkpoint, lambda ctx: variant_checkpoint(ctx, format_version=99),
        r"checkpoint format 99, newer than this program's \(1\): update the program"),
    # ---- checkpoints whose fields have the wrong type (as an edited file has)
    Row("checkpoint-metrics-list", checkpoint, lambda ctx: variant_checkpoint(ctx, metrics=[0.8]),
        r"variant\.pt: its metrics is a list, not a table"),
    Row("checkpoint-metrics-text", checkpoint, lambda ctx: variant_checkpoint(ctx, metrics="dice 0.8"),
        r"its metrics is a str, not a table"),
    Row("checkpoint-recommended-text", checkpoint, lambda ctx: variant_checkpoint(ctx, recommended_postprocess="best"),
        r"its recommended_postprocess is a str, not a table"),
    Row("checkpoint-epoch-word", checkpoint, lambda ctx: variant_checkpoint(ctx, epoch="seven"),
        r"its epoch is 'seven', not a whole number"),
    Row("checkpoint-epoch-none", checkpoint, lambda ctx: variant_checkpoint(ctx, epoch=None),
        r"its epoch is None, not a whole number"),
    Row("checkpoint-epoch-negative", checkpoint, lambda ctx: variant_checkpoint(ctx, epoch=-3),
        r"its epoch is -3, not a whole number of at least 0"),
    Row("checkpoint-epoch-fraction", checkpoint, lambda ctx: variant_checkpoint(ctx, epoch=2.5),
        r"its epoch is 2\.5"),
    Row("checkpoint-weights-list", checkpoint, lambda ctx: variant_checkpoint(ctx, state_dict=[1, 2]),
        r"its weights \(state_dict\) are not a table of tensors"),
    Row("checkpoint-weights-not-tensors", checkpoint,
        lambda ctx: variant_checkpoint(ctx, state_dict={"inc.0.weight": "heavy"}), r"are not a table of tensors"),
    Row("checkpoint-config-unknown-keys", checkpoint,
        lambda ctx: variant_checkpoint(ctx, config={**TrainingConfig(**TINY).to_dict(), "warp_speed": 9}),
        r"has settings this program does not accept \(.*warp_speed"),
    Row("checkpoint-config-list", checkpoint, lambda ctx: variant_checkpoint(ctx, config=["unet"]),
        r"its settings \(config\) are not a table of options"),
    Row("checkpoint-format-missing", checkpoint, lambda ctx: checkpoint_without(ctx, "format_version"),
        r"variant\.pt is not a checkpoint of this program \(it records no checkpoint format\)"),
    Row("checkpoint-format-text", checkpoint, lambda ctx: variant_checkpoint(ctx, format_version="1"),
        r"has an unknown checkpoint format \('1'\)"),
    Row("checkpoint-format-zero", checkpoint, lambda ctx: variant_checkpoint(ctx, format_version=0),
        r"has an unknown checkpoint format \(0\)"),
]

# Every numeric TrainingConfig option, each with NaN, a negative, zero and an absurd value.
ZERO_MEANS_SOMETHING = {  # zero is a real setting here ("off", "none", "no weight"), so it is accepted
    "dropout_rate", "dice_weight", "focal_alpha", "focal_gamma", "tversky_alpha", "tversky_beta", "weight_decay",
    "min_learning_rate", "plateau_patience", "early_stopping_patience", "min_delta", "max_minutes", "seed",
    "num_threads", "checkpoint_every", "ema_decay", "val_fraction", "camera_augment", "max_fov_px",
}
NUMERIC = [f for f in dataclasses.fields(TrainingConfig) if f.type in ("int", "float")]
for f in NUMERIC:
    whole = f.type == "int"
    for label, value in (("nan", math.nan), ("negative", -1 if whole else -1.0), ("zero", 0 if whole else 0.0),
                         ("absurd", 10**12 if whole else 1e12)):
        ok = label == "zero" and f.name in ZERO_MEANS_SOMETHING
        ROWS.append(Row(f"config-{f.name}-{label}", config, lambda ctx, n=f.name, v=value: {n: v},
                        None if ok else rf"^{f.name} must be ", ok))


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input_gets_a_sentence_and_changes_nothing(row: Row, ctx: Ctx):
    check_row(row, ctx)


def test_every_numeric_option_has_its_four_rows():
    ids = {r.id for r in ROWS}
    assert NUMERIC and all(f"config-{f.name}-{v}" in ids for f in NUMERIC for v in ("nan", "negative", "zero", "absurd"))
    assert ZERO_MEANS_SOMETHING <= {f.name for f in NUMERIC}


# --------------------------------------------------------------------------- batch inference
def test_one_unreadable_file_fails_only_its_own_row_of_a_batch(ctx):
    from engine.jobs.ledger import RegistryJob
    from engine.jobs.runner import run_job

    folder = unreadable_file(ctx).parent
    (folder / "good.png").write_bytes(FUNDUS)
    (folder / "blocked.png").write_bytes(FUNDUS)
    job_id = store.create_inference_job(store.BASELINE, str(folder), {})
    (paths.inference_dir(job_id) / "prob" / "blocked.png").mkdir(parents=True)  # its result cannot be written
    run_job(RegistryJob(job_id))  # what the worker's task runs
    job = store.get_inference_job(job_id)
    stats = (paths.inference_dir(job_id) / "stats.csv").read_text()
    rows = {r["image"]: r for r in csv.DictReader(io.StringIO(stats))}
    assert (job["status"], job["n_done"], job["n_failed"]) == ("completed", 3, 2)
    assert rows["locked.png"]["error"].startswith("locked.png cannot be read")
    assert rows["blocked.png"]["error"].startswith("blocked.png could not be read or its results written")
    assert rows["good.png"]["error"] == ""
