"""Uploaded images and masks: decoded once (cached by the file's bytes), kept for the browser session, and
checked against each other's size."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import streamlit as st

from engine.errors import UserError
from engine.imageio import IMAGE_EXTENSIONS, check_same_size, read_image, read_mask_with_note

IMAGE_TYPES = sorted({ext.lstrip(".") for ext in IMAGE_EXTENSIONS})


@dataclass(frozen=True)
class Upload:
    """An uploaded image or mask, decoded once."""

    name: str
    digest: str  # hash of the file's bytes: the cache key of everything computed from it
    array: np.ndarray  # RGB uint8 (H, W, 3) for images, uint8 {0, 1} (H, W) for masks
    note: str | None = None  # e.g. "the mask was binarised at half its maximum"

    @property
    def stem(self) -> str:
        return Path(self.name).stem or "image"


def digest_bytes(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def digest_array(arr: np.ndarray) -> str:
    arr = np.ascontiguousarray(arr)
    return hashlib.blake2b(arr.tobytes() + str(arr.shape).encode(), digest_size=16).hexdigest()


@st.cache_data(max_entries=64, show_spinner=False)
def _decode(digest: str, name: str, kind: str, _data: bytes) -> tuple[np.ndarray, str | None]:
    if kind == "image":
        return read_image(_data, name), None
    return read_mask_with_note(_data, name)


def decode_upload(file, kind: str = "image") -> Upload:
    """Decode one ``UploadedFile``; raises ImageReadError (a sentence) for a bad file."""
    data = file.getvalue()
    digest = digest_bytes(data)
    array, note = _decode(digest, file.name, kind, data)
    return Upload(file.name, digest, array, note)


@dataclass(frozen=True)
class KeptFile:
    """An uploaded file kept for the browser session (an ``UploadedFile``'s ``name`` and ``getvalue()``)."""

    name: str
    data: bytes

    def getvalue(self) -> bytes:
        return self.data


def _kept_uploads(key: str, files: list) -> list:
    """The files of uploader ``key``: those it holds, else the ones kept from an earlier visit of the page.

    Streamlit forgets what an uploader held once a run draws another page; the files are kept here, and
    an uploader found without state (the page was left and opened again) shows them again until the user
    uploads others or removes them."""
    state, kept, restored = st.session_state, f"{key}__kept_files", f"{key}__restored"
    if files:
        state[kept] = [KeptFile(f.name, f.getvalue()) for f in files]
        state.pop(restored, None)
        return files
    if state.get(restored) or (state.get(f"{key}__was_drawn") is False and state.get(kept)):
        state[restored] = True
        names = ", ".join(f.name for f in state[kept])
        a, b = st.columns([4, 1], vertical_alignment="center")
        a.caption(f"Kept from your last visit to this page: {names}. Upload others to replace them.")
        b.button("Remove them", key=f"{key}__forget", on_click=_forget_uploads, args=(key,))
        return list(state[kept])
    state.pop(kept, None)  # the user removed them from the uploader
    return []


def _forget_uploads(key: str) -> None:
    for suffix in ("__kept_files", "__restored"):
        st.session_state.pop(f"{key}{suffix}", None)


def upload_images(label: str, *, key: str, kind: str = "image", multiple: bool = False, help: str | None = None) -> list[Upload]:
    """File uploader for images (``kind='image'``) or masks (``kind='mask'``); what it held is kept for the
    browser session, so a photograph stays after a visit to another page.

    Bad files are reported with ``st.error`` (one sentence each) and left out of the result (their number
    is in ``st.session_state[f"{key}__refused"]``, so a page does not add a hint beside the error); a file
    whose bytes equal an earlier one's is listed once (with a note).
    """
    # the uploader's own state is dropped when another page was drawn: then the kept files come back
    st.session_state[f"{key}__was_drawn"] = key in st.session_state
    files = st.file_uploader(label, type=IMAGE_TYPES, key=key, accept_multiple_files=multiple, help=help)
    files = files if isinstance(files, list) else ([files] if files is not None else [])
    files = _kept_uploads(key, files)
    uploads, seen = [], {}
    st.session_state[f"{key}__refused"] = 0
    for file in files:
        try:
            with st.spinner(f"Reading {file.name}…"):
                upload = decode_upload(file, kind)
        except UserError as exc:
            st.error(str(exc))
            st.session_state[f"{key}__refused"] += 1
            continue
        if upload.digest in seen:  # the same file chosen twice is one image
            st.caption(f"{file.name} holds the same image as {seen[upload.digest]}: it is used once.")
            continue
        seen[upload.digest] = file.name
        if upload.note:
            st.info(upload.note)
        uploads.append(upload)
    return uploads


def upload_image(label: str, *, key: str, kind: str = "image", help: str | None = None) -> Upload | None:
    found = upload_images(label, key=key, kind=kind, help=help)
    return found[0] if found else None


def matching_mask(image: Upload, mask: Upload | None, what: str) -> np.ndarray | None:
    """The mask's array when its size matches the image; otherwise an error sentence and None.

    A field-of-view mask with no pixel set would hide the whole image, so it is refused too.
    """
    if mask is None:
        return None
    try:
        check_same_size(image.array, mask.array, what)
    except UserError as exc:
        st.error(f"{exc} It is ignored until then.")
        return None
    if "field-of-view" in what and not mask.array.any():
        st.error(f"The {what} {mask.name} is all zero (no field of view), which would hide the whole image: "
                 "upload the mask made for this image. It is ignored until then.")
        return None
    return mask.array
