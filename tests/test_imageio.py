"""engine.imageio: every bad file becomes a sentence; good files become RGB uint8."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from engine.imageio import ImageReadError, MAX_PIXELS, check_same_size, read_image, read_mask, read_mask_with_note


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


RGB = Image.fromarray((np.arange(64 * 48 * 3) % 251).astype(np.uint8).reshape(48, 64, 3))


@pytest.mark.parametrize(
    "data, expected",
    [
        (b"", "is empty"),
        (b"just some text, not pixels", "not an image"),
        (_encode(RGB, "PNG")[:200], "truncated or damaged"),
        (_encode(RGB, "JPEG")[:300], "truncated or damaged"),
        (_encode(Image.new("RGB", (1, 1)), "PNG"), "at least 16×16"),
    ],
    ids=["empty", "text", "truncated-png", "truncated-jpeg", "1x1"],
)
def test_bad_images_give_a_sentence(data, expected):
    with pytest.raises(ImageReadError, match=expected):
        read_image(data, name="upload.png")


def test_huge_header_is_refused_before_decoding():
    # A real PNG header that claims 30000×30000 pixels; the body is never decoded.
    import struct
    import zlib

    def chunk(tag, payload):
        return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload))

    data = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\x00" * 1000))
        + chunk(b"IEND", b"")
    )
    with pytest.raises(ImageReadError, match=f"limit is {MAX_PIXELS // 1_000_000} megapixels"):
        read_image(data, name="bomb.png")


@pytest.mark.parametrize(
    "img, fmt",
    [
        (RGB, "PNG"),
        (RGB.convert("L"), "PNG"),
        (RGB.convert("RGBA"), "PNG"),
        (RGB.convert("CMYK"), "JPEG"),
        (Image.fromarray((np.arange(48 * 64).reshape(48, 64) * 20).astype(np.uint16)), "TIFF"),
        (RGB.convert("P"), "GIF"),
        (RGB, "BMP"),
        (RGB, "PPM"),
    ],
    ids=["rgb", "gray", "rgba", "cmyk", "16bit-tiff", "gif", "bmp", "ppm"],
)
def test_good_images_become_rgb_uint8(img, fmt):
    arr = read_image(_encode(img, fmt))
    assert arr.shape == (48, 64, 3) and arr.dtype == np.uint8 and arr.max() > 0


def test_animated_gif_is_refused():
    frames = [Image.new("L", (32, 32), c) for c in (0, 128, 255)]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    with pytest.raises(ImageReadError, match="animation with 3 frames"):
        read_image(data, name="anim.gif")


@pytest.mark.parametrize(
    "values",
    [np.array([0, 255]), np.array([0, 1]), np.array([False, True])],
    ids=["0-255", "0-1", "bool"],
)
def test_binary_masks_read_as_zero_one(values):
    arr = np.resize(values, (32, 32))
    img = Image.fromarray(arr.astype(bool)) if values.dtype == bool else Image.fromarray(arr.astype(np.uint8))
    mask = read_mask(_encode(img, "PNG"))
    assert set(np.unique(mask)) == {0, 1}


def test_graded_mask_is_binarised_with_a_note():
    arr = np.resize(np.array([0, 50, 200, 255], np.uint8), (32, 32))
    mask, note = read_mask_with_note(_encode(Image.fromarray(arr), "PNG"), name="m.png")
    assert note is not None and "binarised" in note
    assert mask.sum() == (arr >= 127.5).sum()


def test_mask_of_another_size_is_named():
    with pytest.raises(ImageReadError, match="mask is 10×20 pixels but the image is 64×48"):
        check_same_size(np.zeros((48, 64, 3)), np.zeros((20, 10)))
