"""Bad input through the Python API a script calls: ``read_image``, ``predict``, ``submit_training`` and
the storage functions. The table and its invariant: tests/bad_input_helpers.py."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from engine.imageio import read_image
from engine.inference.predict import load_model
from engine.training.config import TrainingConfig
from storage import db as store

from tests.bad_input_helpers import (
    ACCEPTED, api, check_row, Ctx, float_tiff, GZ_FUNDUS, IMAGE, make_folder, non_utf8_set, one_image_set, Row,
    TINY, unreadable_file,
)

pytestmark = pytest.mark.timeout(120)


def submit(folder: Path) -> Callable[[], Any]:
    def call():
        from engine.jobs import submit_training

        return submit_training("refused", folder, TrainingConfig(**TINY))
    return call


def predict_on(image: np.ndarray, fov: np.ndarray | None = None) -> Callable[[Ctx], Callable[[], Any]]:
    def build(ctx: Ctx) -> Callable[[], Any]:
        from engine.inference.predict import predict

        return lambda: predict(load_model(ctx.best), image, fov=fov)
    return build


ROWS: list[Row] = [
    # ---- storage
    Row("db-read-only-api", api, lambda ctx: lambda: store.create_model("new", {}, "x"),
        r"The database .*ml_manager\.db cannot be written .*Nothing was changed", lock="db"),
    # ---- float images with NaN / inf pixels: mapped (NaN black, +inf white) unless no pixel is finite
    Row("image-float-some-nan", api, lambda ctx: lambda: read_image(float_tiff(math.nan)), None, ACCEPTED),
    Row("image-float-some-inf", api, lambda ctx: lambda: read_image(float_tiff(math.inf)), None, ACCEPTED),
    Row("image-float-all-nan", api, lambda ctx: lambda: read_image(float_tiff(math.nan, True), name="void.tif"),
        r"^void\.tif holds no usable pixel values \(every pixel is NaN or infinite\)"),
    Row("image-float-all-inf", api, lambda ctx: lambda: read_image(float_tiff(math.inf, True), name="void.tif"),
        r"^void\.tif holds no usable pixel values"),
    # ---- files that are not readable images
    Row("image-is-a-folder", api, lambda ctx: lambda: read_image(make_folder(ctx, {"a.png/x": b"x"}) / "a.png"),
        r"^a\.png is a folder, not an image file"),
    Row("image-unreadable", api, lambda ctx: lambda: read_image(unreadable_file(ctx)), r"^locked\.png cannot be read"),
    Row("image-gzip-damaged", api, lambda ctx: lambda: read_image(GZ_FUNDUS[:40], name="im0001.ppm.gz"),
        r"^im0001\.ppm\.gz is a damaged gzip file"),
    # ---- predict: images and field-of-view masks of the wrong size
    Row("predict-empty-image", api, predict_on(np.zeros((0, 0, 3), np.uint8)), r"0×0 pixels"),
    Row("predict-fov-other-size", api, predict_on(IMAGE, np.ones((64, 64), np.uint8)),
        r"64×64 pixels but the image is 96×96"),
    # ---- queuing a training that train() would refuse
    Row("submit-one-image", api, lambda ctx: submit(one_image_set(ctx)),
        r"has 1 image\(s\); training needs at least 2"),
    Row("submit-non-utf8-folder", api, lambda ctx: submit(non_utf8_set(ctx)),
        r"The data folder's path .*caf\\xe9 is not valid UTF-8 text"),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input_gets_a_sentence_and_changes_nothing(row: Row, ctx: Ctx):
    check_row(row, ctx)
