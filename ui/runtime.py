"""What every page run needs: the dashboard's log, errors shown as sentences, the inputs a page keeps for
the browser session, and ``run_page``, which every page script calls.

A user's error (``engine.errors.user_error``) is shown as its sentence; anything else is a bug, logged
with its traceback to ``<data home>/logs/dashboard.log`` and shown as a sentence that says where the log is.
These are the dashboard's two last resorts: ``user_errors`` (every page, through ``run_page``) and
``last_resort`` (a button's callback, which Streamlit runs outside the page); every other handler in ui/ and
pages/ catches ``UserError``.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import contextmanager
from logging.handlers import RotatingFileHandler
from pathlib import Path

import streamlit as st

from engine.errors import UserError, user_error
from storage import paths

logger = logging.getLogger("ml_manager.dashboard")

def configure_logging() -> Path:
    """Send the dashboard's log (and tracebacks) to ``<data home>/logs/dashboard.log``."""
    log_path = paths.logs_dir() / "dashboard.log"
    for name in ("ml_manager", "engine", "storage"):
        lg = logging.getLogger(name)
        ours = [h for h in lg.handlers if hasattr(h, "ml_manager_log")]
        if any(h.ml_manager_log == str(log_path) for h in ours):
            continue
        for h in ours:  # the data home changed (tests): move to the new file
            lg.removeHandler(h)
            h.close()
        handler = RotatingFileHandler(log_path, maxBytes=5_000_000, backupCount=3, encoding="utf-8")
        handler.ml_manager_log = str(log_path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
    return log_path


@contextmanager
def _last_resort(doing: str, on_sentence: Callable[[str], None] | None, on_bug: Callable[[], None]):
    """The dashboard's one last resort: a user's error (``UserError``) goes to ``on_sentence`` when given;
    anything else (a bug) is logged with its traceback and ``on_bug`` tells the user, never a traceback."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - the last resort of a page's run and of a button's callback
        if on_sentence is not None and (error := user_error(exc)) is not None:
            logger.info("refused while %s: %s", doing, error, exc_info=True)
            on_sentence(str(error))
            return
        logger.exception("unexpected error while %s", doing)
        on_bug()


def user_errors(doing: str):
    """Show a user's error as its sentence; log anything else (a bug) with its traceback and say where the
    log is, instead of showing a traceback (``run_page``'s last resort)."""
    return _last_resort(doing, st.error, lambda: st.error(
        f"Something unexpected went wrong while {doing}. The details were written to the dashboard's log "
        f"({_log_path()}); try again, and report it if it happens again."))


# What a button says when queuing failed on a bug (the traceback is in the log).
NOT_QUEUED = "The run could not be queued because of an unexpected error; details are in logs/dashboard.log."


def last_resort(say: Callable[[str], None], sentence: str, doing: str):
    """The last resort of a button's callback (Streamlit runs it before the page, outside ``run_page``'s), or
    of a step whose outcome the page shows in its own place: a bug (the block catches a user's ``UserError``
    itself) is logged with its traceback, and ``say(sentence)`` tells the user, where the outcome is shown;
    the block is left.

    Args:
        say: puts the sentence where the page shows this outcome (a session-state message).
        sentence: what to tell the user, naming the log.
        doing: what was being done, for the log.
    """
    return _last_resort(f"trying to {doing}", None, lambda: say(sentence))


def _log_path() -> str:
    try:
        return str(paths.logs_dir() / "dashboard.log")
    except UserError:  # the data home cannot be written: the log goes to the terminal instead
        return "the terminal that runs the dashboard"


ENTRYPOINT_RAN = "app__entrypoint_ran"  # session-state flag app.py sets on every run, before its page runs

# The inputs a page keeps for the browser session: widget keys, or prefixes ending in "_" (never a button's
# or an uploader's key: their values cannot be set; uploads are kept by upload_images).
KEPT_INPUTS = ("train_name", "train_source", "train_registered", "train_folder", "train_more_registered",
               "train_more_folders", "train_synth_n", "train_synth_size",
               "train_synth_seed", "train_smoothing", "train_cfg_", "train_start_from",
               "inf_model", "inf_ckpt_", "inf_pick", "inf_fov_choice", "inf_scale", "inf_scale_factor",
               "inf_batch_kind", "inf_batch_folder", "mi_ckpt", "mi_pick", "mi_fov_choice", "mi_scale",
               "mi_scale_factor", "pp_fov_choice", "models_compare")


def keep_page_inputs() -> None:
    """Keep what was typed and chosen on a page when another page is shown (app.py calls it before every page).

    Streamlit drops a widget's value at the end of a run that did not draw it, so the Train form came back
    empty after a look at Models. Re-assigning the value through session state, before any page draws,
    makes it the session's own (Streamlit's documented way to keep widget values across pages)."""
    state = st.session_state
    for name in list(state.keys()):
        if any(name == kept or (kept.endswith("_") and name.startswith(kept)) for kept in KEPT_INPUTS):
            state[name] = state[name]


def _leave_legacy_multipage_mode(page_file: str) -> None:
    """Make a page that was run without app.py go through app.py.

    Streamlit runs a ``pages/`` folder next to the entrypoint as a legacy (v1) multipage app until some
    session has called ``st.navigation``: a deep link such as ``/model_inference?model=…`` opened first
    on a fresh server runs this page's file alone, without app.py's page config, logging and page list
    (upstream: https://github.com/streamlit/streamlit/pull/10276, whose review found that a direct URL
    with a ``pages`` folder "completely switch[es] back to MPAv1"; related issue #9624). Streamlit
    documents the way out: "As soon as any session of your app executes the ``st.navigation`` command,
    your app will ignore the ``pages/`` directory (across all sessions)". So a session that has not run
    app.py yet calls ``st.navigation`` with this page alone and reruns; the rerun goes through app.py
    and keeps the URL, since app.py's url paths equal the file names.
    """
    if st.session_state.get(ENTRYPOINT_RAN):
        return
    # Once per session: AppTest starts every run in the legacy mode (app.py, the first run, sets the flag),
    # and a rerun on each of its runs would eat the button clicks of the tests.
    st.session_state[ENTRYPOINT_RAN] = True
    # The page must not be the default one: a default page's URL is "/", and the browser would report
    # this page's URL as not found. The rerun replaces this page list with app.py's.
    # The title is given: Streamlit infers it from the file name, and refuses names it cannot read a
    # title from (AppTest.from_function runs a page from a file named by a hash).
    title = Path(page_file).stem.replace("_", " ").strip().capitalize() or "Page"
    st.navigation([st.Page(_app_entrypoint, default=True), st.Page(page_file, title=title)], position="hidden")
    st.rerun()


def _app_entrypoint() -> None:
    """Stands for app.py in the page list above; never drawn (the rerun draws app.py's own)."""


def run_page(main: Callable[[], None], doing: str) -> None:
    """Run a page's ``main`` with logging configured and errors shown as sentences."""
    _leave_legacy_multipage_mode(main.__code__.co_filename)
    with user_errors(doing):
        configure_logging()  # a data home that cannot be written is reported here, as a sentence
        main()
