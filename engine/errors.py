"""The exceptions that cross package boundaries.

Every error meant for a user is a ``ValueError`` whose message is a sentence saying what was wrong and
what to do; the dashboard, the API and the CLI show it as it is. ``UserError`` is the base of the engine's
own (``CheckpointError``, ``DatasetError``, ``ImageReadError``, ...). Callers catch ``ValueError``, not
``UserError``, because the registry's errors (``storage``, which cannot import the engine) and the
config dataclasses' validation errors are such sentences too.
"""
from __future__ import annotations


class UserError(ValueError):
    """A problem the user can fix; the message is the sentence shown to them."""


class StopRequested(Exception):
    """Raised inside long loops (validation, tiled prediction) when ``should_stop()`` turns true."""


class WorkerShutdown(RuntimeError):
    """The worker is shutting down; a batch job stops between two images."""


def error_text(exc: BaseException) -> str:
    """What a job's row says about an exception: our ValueErrors already are sentences; anything else is
    named, with a pointer to the worker log that holds its traceback."""
    if isinstance(exc, (ValueError, WorkerShutdown)):
        return str(exc)
    return f"{type(exc).__name__}: {exc} (the traceback is in the worker log)"
