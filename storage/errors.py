"""The root of every error meant for a user.

It lives in ``storage`` because both layers raise it and ``storage`` cannot import the engine;
``engine.errors`` re-exports it. The message is the sentence a face (the dashboard, the HTTP API, the
CLI) shows as it is; anything a face catches that is not a ``UserError`` is a bug, logged with its
traceback.
"""
from __future__ import annotations


class UserError(ValueError):
    """A problem the user can fix; the message is the sentence shown to them.

    It is still a ``ValueError`` so that code written against the engine's documented ``ValueError``
    sentences (the config dataclasses, ``pytest.raises(ValueError)`` in callers' tests) keeps working;
    the faces catch ``UserError``, never ``ValueError``.
    """
