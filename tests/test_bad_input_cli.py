"""Bad input through the CLI: ``python -m engine`` in this process (``engine.cli.main``) and in a fresh
process, as a user types it. The table and its invariant: tests/bad_input_helpers.py."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.bad_input_helpers import (
    ACCEPTED, check_row, checkpoint_without, cli, cli_process, Ctx, evil_checkpoint, float_tiff, FUNDUS, GZ_FUNDUS,
    make_folder, no_marker, non_utf8_set, one_image_set, Row, Seen, unreadable_file, variant_checkpoint,
)

pytestmark = pytest.mark.timeout(120)


def predict_args(ctx: Ctx, image: bytes, name: str = "f.png", checkpoint: Path | None = None,
                 output: Path | None = None) -> list[str]:
    folder = make_folder(ctx, {name: image})
    return ["predict", "--checkpoint", str(checkpoint or ctx.best), "--input", str(folder / name),
            "--output", str(output or ctx.tmp / "out")]


def existing_file(ctx: Ctx) -> Path:
    (ctx.tmp / "results.png").write_bytes(b"an earlier result")
    return ctx.tmp / "results.png"


def one_line(ctx: Ctx, seen: Seen) -> None:
    assert len(seen.errors) == 1 and len(seen.errors[0].strip().splitlines()) == 1, seen.errors


ROWS: list[Row] = [
    Row("image-empty-cli-predict", cli,
        lambda ctx: ["predict", "--checkpoint", str(ctx.best), "--input", str(make_folder(ctx, {"e.png": b""}) / "e.png"),
                     "--output", str(ctx.tmp / "out")], r"error: e\.png is empty"),
    # ---- data sets
    Row("dataset-missing-cli", cli, lambda ctx: ["train", "--data", str(ctx.tmp / "nowhere"), "--out", str(ctx.tmp / "o")],
        r"error: The data folder .*nowhere does not exist"),
    # ---- configs (every numeric option is generated below)
    Row("config-nan-cli", cli, lambda ctx: ["train", "--data", str(ctx.dataset), "--out", str(ctx.tmp / "o"),
                                            "--set", "learning_rate=nan"], r"error: learning_rate must be a finite number"),
    Row("config-unknown-loss-cli", cli, lambda ctx: ["train", "--data", str(ctx.dataset), "--out", str(ctx.tmp / "o"),
                                                     "--set", "loss_function=magic"], r"error: loss_function 'magic' is not known"),
    # ---- checkpoints
    Row("checkpoint-pickle-cli", cli_process, lambda ctx: ["predict", "--checkpoint", str(evil_checkpoint(ctx)), "--input",
                                                  str(make_folder(ctx, {"f.png": FUNDUS}) / "f.png"), "--output",
                                                  str(ctx.tmp / "out")], r"error: evil\.pt contains objects", check=no_marker),
    # ---- storage
    Row("home-not-writable-cli", cli_process, lambda ctx: ["status"], r"error: The (data home|database) .* cannot be written",
        lock="home"),
    Row("db-read-only-cli-submit", cli_process, lambda ctx: ["submit", "--data", str(ctx.dataset), "--set", "epochs=1",
                                               "--set", "patch_size=32"],
        r"error: The database .* cannot be written", lock="db"),
    # ---- float images with NaN / inf pixels: mapped (NaN black, +inf white) unless no pixel is finite
    Row("image-float-inf-cli-predict", cli_process, lambda ctx: predict_args(ctx, float_tiff(math.inf), "f.tif"),
        None, ACCEPTED),
    Row("image-float-all-nan-cli-predict", cli_process,
        lambda ctx: predict_args(ctx, float_tiff(math.nan, True), "f.tif"),
        r"^error: f\.tif holds no usable pixel values", check=one_line),
    # ---- files that are not readable images
    Row("image-unreadable-cli-predict", cli,
        lambda ctx: predict_args(ctx, FUNDUS)[:4] + [str(unreadable_file(ctx)), "--output", str(ctx.tmp / "out")],
        r"^error: locked\.png cannot be read", check=one_line),
    Row("image-gzip-cli-predict", cli, lambda ctx: predict_args(ctx, GZ_FUNDUS, "im0001.ppm.gz"), None, ACCEPTED),
    # ---- checkpoints whose fields have the wrong type (as an edited file has)
    Row("checkpoint-metrics-list-cli", cli_process,
        lambda ctx: predict_args(ctx, FUNDUS, checkpoint=variant_checkpoint(ctx, metrics=[0.8])),
        r"^error: variant\.pt: its metrics is a list", check=one_line),
    Row("checkpoint-epoch-word-cli", cli, lambda ctx: predict_args(ctx, FUNDUS, checkpoint=variant_checkpoint(
        ctx, epoch="seven")), r"^error: variant\.pt: its epoch is 'seven'", check=one_line),
    Row("checkpoint-format-missing-cli", cli_process,
        lambda ctx: predict_args(ctx, FUNDUS, checkpoint=checkpoint_without(ctx, "format_version")),
        r"^error: variant\.pt is not a checkpoint of this program", check=one_line),
    # ---- predict: images and field-of-view masks of the wrong size
    Row("predict-output-is-a-file", cli, lambda ctx: predict_args(ctx, FUNDUS, output=existing_file(ctx)),
        r"^error: --output must be a folder, but .*results\.png is a file", check=one_line),
    Row("predict-output-inside-a-file-cli", cli_process,
        lambda ctx: predict_args(ctx, FUNDUS, output=existing_file(ctx) / "masks"),
        r"^error: --output must be a folder, but .*results\.png is a file", check=one_line),
    # ---- queuing a training that train() would refuse
    Row("submit-one-image-cli", cli_process, lambda ctx: ["submit", "--data", str(one_image_set(ctx))],
        r"^error: .* has 1 image\(s\); training needs at least 2", check=one_line),
    Row("submit-non-utf8-folder-cli", cli_process, lambda ctx: ["submit", "--data", str(non_utf8_set(ctx))],
        r"^error: The data folder's path .*caf\\xe9 is not valid UTF-8 text", check=one_line),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input_gets_a_sentence_and_changes_nothing(row: Row, ctx: Ctx):
    check_row(row, ctx)
