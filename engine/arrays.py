"""Turning what a caller passes (numpy arrays, torch tensors, lists) into the 2-D maps the engine works on.

This module imports neither torch nor streamlit: a tensor is read through its own
``detach().cpu().float().numpy()`` methods.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from engine.errors import UserError


def to_numpy(value: Any, what: str) -> np.ndarray:
    """A numpy array from a numpy array, a torch tensor (read without importing torch) or a list.

    Raises:
        UserError: naming ``what``, for complex or non-numeric data.
    """
    if hasattr(value, "detach") and hasattr(value, "cpu") and hasattr(value, "numpy"):
        value = value.detach().cpu()
        if value.dtype.is_complex:
            raise UserError(f"{what} is a complex tensor: pass real probabilities or logits.")
        value = value.float().numpy()
    arr = np.asarray(value)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise UserError(f"{what} must be a numeric array; got dtype {arr.dtype}.")
    if np.iscomplexobj(arr):
        raise UserError(f"{what} is complex: pass real probabilities or logits.")
    return arr


def squeeze_to_2d(arr: np.ndarray, what: str) -> np.ndarray:
    """``arr`` without its leading size-1 dimensions, which must leave a non-empty (H, W) map.

    Raises:
        UserError: naming ``what`` and the shape, for anything else.
    """
    shape = arr.shape
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise UserError(
            f"{what} must be a 2-D map (H, W), optionally with leading size-1 dimensions; got shape "
            f"{tuple(shape)}: pass a single channel, e.g. output[0, 0] or the vessel class only."
        )
    if min(arr.shape) == 0:
        raise UserError(f"{what} is empty (shape {tuple(shape)}): pass a map with at least one pixel.")
    return arr
