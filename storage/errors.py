"""The root of every error meant for a user, and the registry's :class:`WrongStateError`.

``UserError`` lives in ``storage`` because both layers raise it and ``storage`` cannot import the engine;
``engine.errors`` re-exports it. The message is the sentence a face (the dashboard, the HTTP API, the
CLI) shows as it is; anything a face catches that is not a ``UserError`` is a bug, logged with its
traceback.
"""
from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; the message is the sentence shown to them.

    It is deliberately not a ``ValueError``: a ``ValueError`` raised by a bug (a library's, a builtin's,
    our own) must reach the log, never a user as if it were a sentence for them. Every check that speaks
    to a user raises this (or a subclass); the faces catch only this.
    """


class WrongStateError(UserError):
    """The run or job is in a state that does not allow the request (starting a running model, stopping a
    finished one); the message says which state and what to do instead."""
