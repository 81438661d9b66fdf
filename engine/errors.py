"""The exceptions that cross package boundaries, and how a face tells a user's error from a bug.

Every error meant for a user is a :class:`UserError` (defined in ``storage.errors``, since storage raises
it too) whose message is a sentence saying what was wrong and what to do: ``CheckpointError``,
``DatasetError``, ``ImageReadError``, the registry's ``UnknownModelError``, ``WrongStateError``, ... The
dashboard, the API and the CLI pass what they catch to :func:`user_error`: a sentence is shown as it is,
anything else is a bug, logged with its traceback and shown as an internal error.
"""
from __future__ import annotations

import math

from storage.errors import UserError

__all__ = ["UserError", "StopRequested", "WorkerShutdown", "user_error", "error_text", "number_or_none"]


class StopRequested(Exception):
    """Raised inside long loops (validation, tiled prediction) when ``should_stop()`` turns true."""


class WorkerShutdown(RuntimeError):
    """The worker is shutting down; a batch job stops between two images."""


def user_error(exc: BaseException) -> UserError | None:
    """``exc`` as the sentence a face shows, or None when it is a bug.

    Args:
        exc: what a face (dashboard, HTTP API, CLI) caught.

    Returns:
        ``exc`` itself when it is a :class:`UserError`; None otherwise, a ``ValueError`` included (log its
        traceback, show "an internal error").
    """
    return exc if isinstance(exc, UserError) else None


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
