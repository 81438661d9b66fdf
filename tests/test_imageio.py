"""engine.imageio: every bad file becomes a sentence; good files become RGB uint8."""
from __future__ import annotations

import gzip
import io
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import imageio
from engine.imageio import ImageReadError, MAX_PIXELS, check_same_size, read_image, read_mask, read_mask_with_note


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


RGB = Image.fromarray((np.arange(64 * 48 * 3) % 251).astype(np.uint8).reshape(48, 64, 3))


def _tiff_with_a_broken_second_page() -> bytes:
    """A 32×32 TIFF whose first page is whole and whose second page's header lacks its dimensions."""
    data = bytearray(_encode(Image.new("L", (32, 32)), "TIFF"))
    first = struct.unpack_from("<I", data, 4)[0]  # little-endian ("II*\0"), as Pillow writes it
    entries = struct.unpack_from("<H", data, first)[0]
    struct.pack_into("<I", data, first + 2 + 12 * entries, len(data))  # the first page's "next page" offset
    return bytes(data + struct.pack("<HHHII", 1, 262, 3, 1, 1) + bytes(4))  # a page with one tag, no size


@pytest.mark.parametrize(
    "data, expected",
    [
        (b"", "is empty"),
        (b"just some text, not pixels", "not an image"),
        (_encode(RGB, "PNG")[:200], "truncated or damaged"),
        (_encode(RGB, "JPEG")[:300], "truncated or damaged"),
        (_encode(Image.new("RGB", (1, 1)), "PNG"), "at least 16×16"),
        (_tiff_with_a_broken_second_page(), "truncated or damaged"),
    ],
    ids=["empty", "text", "truncated-png", "truncated-jpeg", "1x1", "tiff-broken-second-page"],
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


# --------------------------------------------------------------------------- float images with NaN / inf
def _float_tiff(values: np.ndarray) -> bytes:
    return _encode(Image.fromarray(values.astype(np.float32)), "TIFF")


def _with(value: float, where=(slice(0, 4), slice(0, 4)), base: float = 0.5) -> np.ndarray:
    arr = np.full((32, 32), base, np.float32)
    arr[where] = value
    return arr


@pytest.mark.parametrize(
    "values, corner, rest",
    [
        (_with(np.nan), 0, 128),  # NaN is "no data": black
        (_with(np.inf), 255, 128),  # brighter than anything: white
        (_with(-np.inf), 0, 128),
        (_with(np.nan, base=4000.0), 0, 249),  # the scale comes from the finite pixels: 12-bit data
    ],
    ids=["nan", "inf", "minus-inf", "nan-in-12-bit"],
)
def test_non_finite_pixels_are_mapped(values, corner, rest):
    arr = read_image(_float_tiff(values), name="float.tif")
    assert (arr[0, 0, 0], arr[-1, -1, 0]) == (corner, rest)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "minus-inf"])
def test_a_float_image_without_one_finite_pixel_is_a_sentence(value):
    with pytest.raises(ImageReadError, match=r"^void\.tif holds no usable pixel values \(every pixel is NaN"):
        read_image(_float_tiff(np.full((32, 32), value)), name="void.tif")


def test_a_float_mask_without_one_finite_pixel_is_a_sentence():
    with pytest.raises(ImageReadError, match="void.tif holds no usable pixel values"):
        read_mask(_float_tiff(np.full((32, 32), np.nan)), name="void.tif")


def test_nan_in_a_float_mask_is_background():
    values = np.zeros((32, 32), np.float32)
    values[:, 16:] = 1.0
    values[0, 0] = np.nan
    assert read_mask(_float_tiff(values)).sum() == 32 * 16


# --------------------------------------------------------------------------- paths that are not readable files
def _folder(tmp_path: Path) -> Path:
    (tmp_path / "a.png").mkdir()
    return tmp_path / "a.png"


def _fifo(tmp_path: Path) -> Path:
    os.mkfifo(tmp_path / "a.png")  # reading it would block forever
    return tmp_path / "a.png"


def _io_error(tmp_path: Path) -> Path:
    (tmp_path / "a.png").symlink_to("/proc/self/mem")  # a regular file whose first page cannot be read (EIO)
    return tmp_path / "a.png"


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda tmp: tmp / "a.png", r"^a\.png: no such file"),
        (_folder, r"^a\.png is a folder, not an image file"),
        (_fifo, r"^a\.png is not a regular file"),
        (_io_error, r"^a\.png cannot be read \(Input/output error\)"),
    ],
    ids=["missing", "folder", "fifo", "io-error"],
)
def test_paths_that_are_not_readable_images_give_a_sentence(tmp_path, make, expected):
    if make is _io_error and not Path("/proc/self/mem").exists():
        pytest.skip("needs Linux's /proc/self/mem to provoke a read error")
    path = make(tmp_path)
    with pytest.raises(ImageReadError, match=expected):
        read_image(path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_a_file_without_read_permission_gives_a_sentence(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(_encode(RGB, "PNG"))
    path.chmod(0)
    with pytest.raises(ImageReadError, match=r"^a\.png cannot be read: permission denied"):
        read_image(path)


# --------------------------------------------------------------------------- gzip-compressed images
@pytest.mark.parametrize("name", ["im0001.ppm.gz", "im0001.png.gz", "renamed.ppm"], ids=["ppm-gz", "png-gz", "no-suffix"])
def test_gzip_compressed_images_are_read_transparently(tmp_path, name):
    fmt = "PNG" if ".png" in name else "PPM"
    path = tmp_path / name
    path.write_bytes(gzip.compress(_encode(RGB, fmt)))
    assert np.array_equal(read_image(path), np.asarray(RGB))


def test_gzip_compressed_masks_are_read_transparently(tmp_path):
    values = np.zeros((32, 32), np.uint8)
    values[8:24, 8:24] = 255
    path = tmp_path / "mask.png.gz"
    path.write_bytes(gzip.compress(_encode(Image.fromarray(values), "PNG")))
    assert read_mask(path).sum() == 16 * 16


@pytest.mark.parametrize(
    "data, expected",
    [
        (gzip.compress(_encode(RGB, "PPM"))[:60], "is a damaged gzip file"),
        (b"\x1f\x8b" + b"not really gzip", "is a damaged gzip file"),
        (gzip.compress(b""), "is empty"),
        (gzip.compress(b"\0" * 20_000), "inflates to more than"),  # the cap is lowered below
    ],
    ids=["truncated", "garbage", "empty", "bomb"],
)
def test_bad_gzip_images_give_a_sentence(monkeypatch, data, expected):
    monkeypatch.setattr(imageio, "MAX_GZIP_BYTES", 10_000)  # a real bomb would need 160 MB of memory here
    with pytest.raises(ImageReadError, match=f"^im.ppm.gz {expected}"):
        read_image(data, name="im.ppm.gz")


@pytest.mark.parametrize("name, expected", [
    ("21_training.tif", True), ("Image_01L.JPG", True), ("im0001.ppm.gz", True), ("im0001.ah.ppm.GZ", True),
    ("._21_training.tif", False), (".hidden.png", False), ("notes.txt", False), ("archive.tar.gz", False),
    ("weights.pt", False),
])
def test_is_image_name(name, expected):
    from engine.imageio import is_image_name

    assert is_image_name(name) is expected
