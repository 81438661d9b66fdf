"""Bad input through the dashboard (Streamlit AppTest): uploads on the Post-processing page, the
Model inference page, a typed checkpoint path, the Train page's zip upload. The table and its invariant:
tests/bad_input_helpers.py."""
from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from engine.imageio import encode_png, read_image
from engine.training.config import TrainingConfig
from storage import paths
from storage import db as store

from tests.bad_input_helpers import (
    ACCEPTED, check_row, Ctx, dashboard_model_page, dashboard_page, dashboard_save_preset,
    dashboard_typed_checkpoint, dashboard_upload, dashboard_zip, encode, evil_checkpoint, FOV, FUNDUS, IMAGE, MASK,
    no_marker, nothing_escaped, pair, PHOTO, Row, Seen, TINY, zip_bytes,
)

pytestmark = pytest.mark.timeout(120)


def huge_header_png() -> bytes:
    """A real PNG header claiming 30000×30000 pixels with a tiny body: decoding it would fail differently."""
    def chunk(tag: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + chunk(b"IEND", b""))


def animated_gif() -> bytes:
    frames = [PHOTO.convert("P"), PHOTO.rotate(90).convert("P")]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def tiff16() -> bytes:
    return encode(Image.fromarray((IMAGE[:, :, 1].astype(np.uint16) * 257)), "TIFF")


def graded_mask() -> bytes:
    return encode_png((MASK * 120 + np.indices(MASK.shape)[1] % 7).astype(np.uint8))


def escaping_path(ctx: Ctx) -> Path:
    """``<home>/models/../../evil.pt``: typed to look as if it were inside the data home."""
    evil_checkpoint(ctx)
    return ctx.home / "models" / ".." / ".." / "evil.pt"


def evil_model_in_home(ctx: Ctx) -> str:
    """A second (completed) model whose best.pt carries code: as if a run folder had been tampered with."""
    model_id = store.create_model("tampered", TrainingConfig(**TINY).to_dict(), str(ctx.dataset))
    evil_checkpoint(ctx, paths.checkpoints_dir(model_id) / "best.pt")
    store.update_model(model_id, status="completed")
    return model_id


def rgb_converted(data: bytes) -> Callable[[Ctx, Seen], None]:
    def check(ctx: Ctx, seen: Seen) -> None:
        arr = read_image(data)
        assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3 and arr.max() > 0
    return check


def upload(name: str, data: bytes) -> Callable[[Ctx], dict]:
    return lambda ctx: {"pp_image": (name, data)}


def with_image(key: str, name: str, data: bytes) -> Callable[[Ctx], dict]:
    return lambda ctx: {"pp_image": ("fundus.png", FUNDUS), key: (name, data)}

RGBA = encode(PHOTO.convert("RGBA"), "PNG")
CMYK = encode(PHOTO.convert("CMYK"), "JPEG")
GRAY = encode(PHOTO.convert("L"), "PNG")
TIFF16 = tiff16()

ROWS: list[Row] = [
    Row("image-empty", dashboard_upload, upload("empty.png", b""), r"empty\.png is empty \(0 bytes\)"),
    Row("image-text-named-png", dashboard_upload, upload("notes.png", b"meeting at 10, bring the slides\n"),
        r"notes\.png is not an image this program can read: use PNG, JPEG"),
    Row("image-truncated-png", dashboard_upload, upload("cut.png", FUNDUS[: len(FUNDUS) // 2]),
        r"cut\.png is truncated or damaged"),
    Row("image-truncated-jpeg", dashboard_upload, upload("cut.jpg", encode(PHOTO, "JPEG")[:1500]),
        r"cut\.jpg is truncated or damaged"),
    Row("image-1x1", dashboard_upload, upload("dot.png", encode(Image.new("RGB", (1, 1)), "PNG")),
        r"dot\.png is 1×1 pixels; images must be at least 16×16"),
    Row("image-header-30000x30000", dashboard_upload, upload("huge.png", huge_header_png()),
        r"huge\.png is too large \(30000×30000 pixels\): the limit is 40 megapixels"),
    Row("image-animated-gif", dashboard_upload, upload("blink.gif", animated_gif()),
        r"blink\.gif is an animation with 2 frames: save the frame you want"),
    Row("image-16bit-tiff", dashboard_upload, upload("deep.tif", TIFF16), None, ACCEPTED, check=rgb_converted(TIFF16)),
    Row("image-rgba-png", dashboard_upload, upload("alpha.png", RGBA), None, ACCEPTED, check=rgb_converted(RGBA)),
    Row("image-cmyk-jpeg", dashboard_upload, upload("print.jpg", CMYK), None, ACCEPTED, check=rgb_converted(CMYK)),
    Row("image-grayscale", dashboard_upload, upload("gray.png", GRAY), None, ACCEPTED, check=rgb_converted(GRAY)),
    # ---- masks
    Row("mask-graded-values", dashboard_upload, with_image("pp_truth", "graded.png", graded_mask()),
        r"graded\.png is not a binary mask \(\d+ distinct values\); it was binarised at half its maximum", ACCEPTED),
    Row("mask-other-size", dashboard_upload, with_image("pp_truth", "small.png", encode_png(MASK[:64, :64])),
        r"mask is 64×64 pixels but the image is 96×96"),
    Row("fov-all-zero-upload", dashboard_upload,
        with_image("pp_fov", "fov.png", encode_png(np.zeros_like(FOV))), r"fov\.png is all zero \(no field of view\)"),
    # ---- zip imports
    Row("zip-dotdot-dashboard", dashboard_zip, lambda ctx: zip_bytes({**pair("a.png"), "../../../escaped.txt": b"x"}),
        r"leaves its folder", check=nothing_escaped),
    # ---- checkpoints
    Row("checkpoint-pickle-dashboard", dashboard_model_page, evil_model_in_home,
        r"best\.pt contains objects other than weights", check=no_marker),
    Row("checkpoint-outside-home-typed", dashboard_typed_checkpoint, lambda ctx: shutil.copy(ctx.best, ctx.tmp / "copy.pt"),
        r"copy\.pt is outside the data home's models folder"),
    Row("checkpoint-escape-home-typed", dashboard_typed_checkpoint, escaping_path,
        r"is outside the data home's models folder", check=no_marker),
    Row("checkpoint-inside-home-typed", dashboard_typed_checkpoint, lambda ctx: ctx.best, None, ACCEPTED),
    # ---- storage
    Row("home-not-writable-dashboard", dashboard_page, lambda ctx: "overview.py", r"cannot be written", lock="home"),
    Row("db-read-only-dashboard-preset", dashboard_save_preset, lambda ctx: ctx.model_id,
        r"The database .*ml_manager\.db cannot be written", lock="db"),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input_gets_a_sentence_and_changes_nothing(row: Row, ctx: Ctx):
    check_row(row, ctx)
