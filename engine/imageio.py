"""Reading user images and masks, with a clear sentence for every bad file.

Every image enters the program here, converted once to RGB ``uint8`` (H, W, 3); every mask
to ``uint8`` {0, 1} (H, W). Anything unreadable raises :class:`ImageReadError` (a
``UserError``) whose message says what was wrong and what to do. A gzip-compressed file
(``im0001.ppm.gz``) is inflated first, wherever an image or mask is read.
"""
from __future__ import annotations

import gzip
import io
import os
import struct
import zlib
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from engine.errors import UserError

# Refuse images whose header claims more pixels than this, before decoding them.
MAX_PIXELS = 40_000_000  # e.g. 8000 x 5000; DRIVE is 565 x 584
MIN_SIDE = 16  # smaller images carry no usable vessels
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".bmp")
# A gzip-compressed image (``im0001.ppm.gz``) is inflated at most to this many bytes: enough for an
# uncompressed image of MAX_PIXELS pixels with four 8-bit channels, and a stop for gzip bombs.
MAX_GZIP_BYTES = 4 * MAX_PIXELS
_GZIP_MAGIC = b"\x1f\x8b"

# Never decode a truncated file silently.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# Our own size check below runs before decoding; PIL's would turn a bomb into "unidentified".
Image.MAX_IMAGE_PIXELS = None

Source = Union[str, os.PathLike, bytes, BinaryIO]

# What reading a damaged, truncated or foreign file raises, from its header or its pixels: Pillow's own fuzz
# tests (Tests/oss-fuzz/test_fuzzers.py) accept OSError (UnidentifiedImageError, "image file is truncated",
# decoder errors), SyntaxError (a broken PNG chunk), ValueError, MemoryError, NotImplementedError and
# OverflowError; fuzzing this program's formats also met TypeError (a garbled TIFF tag); EOFError, IndexError,
# KeyError and struct.error are what a format's header parser raises where Pillow does not turn them into
# SyntaxError; zlib.error and EOFError come from inflating a damaged ``.gz``.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, TypeError, MemoryError, NotImplementedError, OverflowError,
                 EOFError, IndexError, KeyError, struct.error, zlib.error)


def is_image_name(name: str) -> bool:
    """True for a file name this program reads as an image (``x.png``, ``x.JPG``, ``x.ppm.gz``); False for
    hidden files (macOS ``._x.png``) and anything else."""
    if name.startswith("."):
        return False
    path = Path(name)
    if path.suffix.lower() == ".gz":
        path = Path(path.stem)
    return path.suffix.lower() in IMAGE_EXTENSIONS


def list_images(folder: Path, recursive: bool = False) -> list[Path]:
    """The image files in ``folder`` (see :func:`is_image_name`), sorted by path.

    Args:
        folder: an existing folder.
        recursive: also those in subfolders, leaving out hidden folders and macOS's ``__MACOSX``.
    """
    if not recursive:
        return sorted(p for p in folder.iterdir() if p.is_file() and is_image_name(p.name))
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_image_name(p.name)
                  and not any(part.startswith(".") or part == "__MACOSX" for part in p.relative_to(folder).parts))


class ImageReadError(UserError):
    """An image or mask could not be used; the message is meant for the user."""


def _label(source: Source, name: str | None) -> str:
    if name:
        return str(name)
    if isinstance(source, (str, os.PathLike)):
        return Path(source).name
    return getattr(source, "name", None) or "the file"


def _open(source: Source, name: str | None) -> tuple[Image.Image, str]:
    label = _label(source, name)
    if isinstance(source, (str, os.PathLike)):
        data = _read_file(Path(source), label)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        if hasattr(source, "seek"):
            source.seek(0)
        data = source.read()
    if data[:2] == _GZIP_MAGIC:  # recognised by content, so a renamed .gz is read as well
        data = _gunzip(data, label)
    if not data:
        raise ImageReadError(f"{label} is empty (0 bytes): upload the image file itself.")
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageReadError(
            f"{label} is not an image this program can read: use PNG, JPEG, TIFF, GIF, PPM or BMP."
        ) from None
    except DECODE_ERRORS:
        raise ImageReadError(f"{label} is truncated or damaged (its header cannot be read).") from None
    w, h = img.size
    if w * h > MAX_PIXELS:
        raise ImageReadError(_too_large(label, w, h))
    if min(w, h) < MIN_SIDE:
        raise ImageReadError(
            f"{label} is {w}×{h} pixels; images must be at least {MIN_SIDE}×{MIN_SIDE} pixels."
        )
    try:
        n_frames = getattr(img, "n_frames", 1)  # a TIFF reads every page's header to count them
    except DECODE_ERRORS:
        raise ImageReadError(f"{label} is truncated or damaged (its header cannot be read).") from None
    if n_frames > 1 and img.format != "TIFF":
        raise ImageReadError(
            f"{label} is an animation with {n_frames} frames: save the frame you want as a single image."
        )
    try:
        img.load()
    except DECODE_ERRORS:
        raise ImageReadError(
            f"{label} is truncated or damaged and could not be decoded: export it again."
        ) from None
    return img, label


def _read_file(path: Path, label: str) -> bytes:
    """The bytes of the regular file ``path``; ImageReadError for folders, devices, pipes and unreadable files."""
    # A FIFO or a device would block or stream forever: read only regular files.
    if path.is_dir():
        raise ImageReadError(f"{label} is a folder, not an image file ({path}): choose the image inside it.")
    if not path.is_file():
        if os.path.lexists(path):
            raise ImageReadError(f"{label} is not a regular file ({path}): copy the image into a normal file first.")
        raise ImageReadError(f"{label}: no such file ({path}).")
    try:
        return path.read_bytes()
    except PermissionError:
        raise ImageReadError(
            f"{label} cannot be read: permission denied ({path}). Make it readable (for example chmod u+r) "
            "or copy it somewhere you can read."
        ) from None
    except OSError as exc:
        raise ImageReadError(f"{label} cannot be read ({exc.strerror or exc}): copy it again and retry.") from None


def _gunzip(data: bytes, label: str) -> bytes:
    """Inflate gzip ``data``, stopping past MAX_GZIP_BYTES (a gzip bomb) with an ImageReadError."""
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
            out = stream.read(MAX_GZIP_BYTES + 1)
    except (OSError, EOFError, zlib.error):  # BadGzipFile is an OSError; a cut file ends in EOFError
        raise ImageReadError(f"{label} is a damaged gzip file: compress the image again.") from None
    if len(out) > MAX_GZIP_BYTES:
        raise ImageReadError(
            f"{label} inflates to more than {MAX_GZIP_BYTES / 1e6:.0f} MB, more than any image this program "
            "reads: check the file, or downscale the image first."
        )
    return out


def _too_large(label: str, w: int | None = None, h: int | None = None) -> str:
    size = f" ({w}×{h} pixels)" if w else ""
    return (
        f"{label} is too large{size}: the limit is {MAX_PIXELS / 1e6:.0f} megapixels. "
        "Downscale or crop it first."
    )


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale 16-bit / 32-bit / float / bool data to uint8 0..255.

    Float data in [0, 1] is scaled by 255, data in [0, 255] is kept, larger values are scaled by
    their bit depth (12- or 16-bit data) or, past 16 bits, by their maximum. Non-finite float pixels
    are mapped, not refused: NaN (a "no data" pixel) becomes 0, +inf 255 and -inf 0; the scale comes
    from the finite pixels alone.
    """
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    positive_inf = np.isposinf(arr) if arr.dtype.kind == "f" else None
    arr = arr.astype(np.float64)
    finite = np.isfinite(arr)
    values = arr[finite]
    top = float(values.max()) if values.size else 0.0
    if top <= 1.0 and positive_inf is not None:
        scale = 255.0
    elif top <= 255:
        scale = 1.0
    elif top <= 65535:  # 16-bit (or 12-bit stored in 16): use the data's bit depth
        scale = 255.0 / (2 ** int(np.ceil(np.log2(top + 1))) - 1)
    else:  # 32-bit or float data beyond 16 bits: its own maximum is white
        scale = 255.0 / top
    out = np.clip(np.where(finite, arr, 0.0) * scale + 0.5, 0, 255).astype(np.uint8)
    if positive_inf is not None:
        out[positive_inf] = 255
    return out


def _check_finite(arr: np.ndarray, label: str) -> None:
    """Refuse float pixel data that holds no finite value at all (all NaN or infinite)."""
    if arr.dtype.kind == "f" and arr.size and not np.isfinite(arr).any():
        raise ImageReadError(
            f"{label} holds no usable pixel values (every pixel is NaN or infinite): export the image again."
        )


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of an image file from its header, without decoding its pixels; gzip-compressed too.

    Raises:
        ImageReadError: the file is missing, unreadable or not an image.
    """
    label = _label(path, None)
    data = _read_file(Path(path), label)
    if data[:2] == _GZIP_MAGIC:
        data = _gunzip(data, label)
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
    except DECODE_ERRORS:
        raise ImageReadError(f"{label} is not an image this program can read: replace or remove it.") from None
    return h, w


def read_image(source: Source, name: str | None = None) -> np.ndarray:
    """Read a photograph as RGB uint8 (H, W, 3).

    Gray images are replicated to three channels, RGBA loses its alpha channel, CMYK and
    palette images are converted, 16-bit, 32-bit and float images are scaled to 8 bits. In float
    images a NaN pixel becomes black, +inf white and -inf black.

    Args:
        source: a path, the file's bytes, or a binary file object; gzip-compressed or not.
        name: the file name to use in messages (default: the path's name).

    Returns:
        uint8 (H, W, 3).

    Raises:
        ImageReadError: a missing, unreadable (permissions, a folder, a pipe), empty, damaged, too
            large or too small file, an animation, a damaged or oversized gzip file, or a float image
            without a single finite pixel.
    """
    img, label = _open(source, name)
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        raw = np.asarray(img)
        _check_finite(raw, label)
        gray = _to_uint8(raw)
        return np.repeat(gray[:, :, None], 3, axis=2).copy()
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA").convert("RGB")
    elif mode != "RGB":
        img = img.convert("RGB")
    arr = np.asarray(img)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ImageReadError(f"{label} has an unsupported pixel format ({mode}).")
    return _to_uint8(arr).copy()


def read_mask(source: Source, name: str | None = None) -> np.ndarray:
    """Read a binary mask as uint8 {0, 1} (H, W).

    Accepted: {0, 255}, {0, 1}, boolean / 1-bit, and colour masks (any channel set).
    A mask with other values is binarised at half its maximum; :func:`read_mask_with_note` says how.
    Sources and errors are those of :func:`read_image`; NaN pixels of a float mask are background.
    """
    arr = _mask_array(source, name)[0]
    return arr


def read_mask_with_note(source: Source, name: str | None = None) -> tuple[np.ndarray, str | None]:
    """Like :func:`read_mask`, also returning a sentence when the mask had to be binarised."""
    return _mask_array(source, name)


def _mask_array(source: Source, name: str | None) -> tuple[np.ndarray, str | None]:
    img, label = _open(source, name)
    if img.mode == "1":
        return np.asarray(img, dtype=bool).astype(np.uint8), None
    if img.mode in ("RGB", "RGBA", "P", "CMYK", "LA", "PA"):
        arr = np.asarray(img.convert("RGB")).max(axis=2)
    else:
        arr = np.asarray(img)
        if arr.ndim == 3:
            arr = arr.max(axis=2)
        _check_finite(arr, label)
        if arr.dtype.kind == "f":  # NaN is "no data" (background), +inf foreground, as read_image maps them
            arr = _to_uint8(arr)
    values = np.unique(arr)
    top = float(values.max()) if values.size else 0.0
    if top == 0:
        return np.zeros(arr.shape, np.uint8), None
    if len(values) <= 2 and values.min() == 0:
        return (arr > 0).astype(np.uint8), None
    mask = (arr.astype(np.float64) >= top / 2).astype(np.uint8)
    note = (
        f"{label} is not a binary mask ({len(values)} distinct values); it was binarised at half "
        f"its maximum ({top / 2:g}): pixels at or above count as foreground."
    )
    return mask, note


def check_same_size(image: np.ndarray, mask: np.ndarray, what: str = "mask") -> None:
    """Raise a sentence when a mask's H×W differs from its image's."""
    if image.shape[:2] != mask.shape[:2]:
        ih, iw = image.shape[:2]
        mh, mw = mask.shape[:2]
        raise ImageReadError(
            f"The {what} is {mw}×{mh} pixels but the image is {iw}×{ih}: use the {what} made for this image."
        )


def encode_png(arr: np.ndarray) -> bytes:
    """PNG bytes of a uint8 array (H, W) or (H, W, 3); masks {0,1} are written as {0,255}."""
    a = np.asarray(arr)
    if a.dtype == bool or (a.ndim == 2 and a.dtype == np.uint8 and a.max(initial=0) <= 1):
        a = a.astype(np.uint8) * 255
    buf = io.BytesIO()
    Image.fromarray(_to_uint8(a)).save(buf, format="PNG")
    return buf.getvalue()
