"""The exceptions that cross package boundaries, and how a face tells a user's error from a bug.

Every error meant for a user is a :class:`UserError` (defined in ``storage.errors``, since storage raises
it too) whose message is a sentence saying what was wrong and what to do: ``CheckpointError``,
``DatasetError``, ``ImageReadError``, the registry's ``UnknownModelError``, ``WrongStateError``, ... The
dashboard, the API and the CLI pass what they catch to :func:`user_error`: a sentence is shown as it is,
anything else is a bug, logged with its traceback and shown as an internal error.
"""
from __future__ import annotations

import math
from pathlib import Path

from storage.errors import UserError

__all__ = ["UserError", "StopRequested", "WorkerShutdown", "user_error", "error_text", "number_or_none"]

_ROOT = Path(__file__).resolve().parents[1]
# These modules still raise plain ValueError sentences for users (the two config dataclasses' checks, the
# training package's data, loss and model checks, prediction's shape and scale checks): they are being
# reworked in another change and move to UserError there. Until then, a ValueError raised *inside* one of
# them is taken as a sentence; a ValueError raised anywhere else is a bug. This tuple is the whole shim.
PLAIN_SENTENCE_MODULES = ("engine/postprocess/", "engine/training/", "engine/inference/predict.py")


class StopRequested(Exception):
    """Raised inside long loops (validation, tiled prediction) when ``should_stop()`` turns true."""


class WorkerShutdown(RuntimeError):
    """The worker is shutting down; a batch job stops between two images."""


def _raised_in(exc: BaseException) -> str:
    """The file, relative to the project, of the innermost Python frame of ``exc``'s traceback ('' if none)."""
    tb = exc.__traceback__
    if tb is None:
        return ""
    while tb.tb_next is not None:
        tb = tb.tb_next
    try:
        return Path(tb.tb_frame.f_code.co_filename).resolve().relative_to(_ROOT).as_posix()
    except ValueError:  # a frame outside the project (a library's own code): not one of ours
        return ""


def user_error(exc: BaseException) -> UserError | None:
    """``exc`` as the sentence a face shows, or None when it is a bug.

    Args:
        exc: what a face (dashboard, HTTP API, CLI) caught.

    Returns:
        ``exc`` itself when it is a :class:`UserError`; a ``UserError`` with its message when it is a plain
        ``ValueError`` raised inside one of :data:`PLAIN_SENTENCE_MODULES`; None otherwise (log its traceback,
        show "an internal error").
    """
    if isinstance(exc, UserError):
        return exc
    if isinstance(exc, ValueError) and _raised_in(exc).startswith(PLAIN_SENTENCE_MODULES):
        error = UserError(str(exc))
        error.__cause__ = exc
        return error
    return None


def error_text(exc: BaseException) -> str:
    """What a job's row says about an exception: a user's error is already a sentence; anything else is
    named, with a pointer to the worker log that holds its traceback."""
    if isinstance(exc, WorkerShutdown) or user_error(exc) is not None:
        return str(exc)
    return f"{type(exc).__name__}: {exc} (the traceback is in the worker log)"


def number_or_none(text: object) -> float | None:
    """``text`` as a finite float, or None when it is not a number: how a face reads a typed number without
    catching ``ValueError`` (which, caught around more than a conversion, would hide bugs)."""
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None
