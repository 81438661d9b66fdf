"""Starting a run from the Train page: the form's submission key, *Measure this machine* and its plan, the
Start button's callback (which runs to the end even when a second click arrives) and what it says."""
from __future__ import annotations

import json
import secrets
import time

import streamlit as st

from engine.errors import UserError
from engine.training.config import TrainingConfig
from ui.readers import forget_queries, list_models
from ui.runtime import NOT_QUEUED, last_resort
from ui.training_form import changed_fields, form_values
from storage.db import ACTIVE_STATUSES

NOT_MEASURED = ("The machine could not be measured because of an unexpected error; details are in "
                "logs/dashboard.log. Start training still works with the form's values.")


def submission_key(held: bool) -> str:
    """The key of the Start form as drawn now: one per form submission, checked by the run registry.

    A key that queued a run is replaced only when the form is drawn enabled again (``held`` False, a few
    seconds later), so every click of a double click carries the key of the first.
    """
    s = st.session_state
    if "train_form_key" not in s or (s.get("train_form_used") == s["train_form_key"] and not held):
        s["train_form_key"] = secrets.token_hex(8)
    return s["train_form_key"]


def _plan_key(dataset: str | None, changed: dict) -> str:
    # a plan holds for one data set and one set of user changes (the time budget among them)
    return json.dumps([dataset, changed], sort_keys=True, default=str)


def request_measurement() -> None:
    """The Measure button's callback: the page's next run draws Start disabled, then measures."""
    st.session_state["train_measuring"] = True


def measuring() -> bool:
    """True while a measurement was asked for and has not ended (Start is drawn disabled meanwhile)."""
    return bool(st.session_state.get("train_measuring"))


def measure_if_requested(defaults: TrainingConfig) -> None:
    """Measure when the Measure button asked for it, with a spinner, then draw the page again so Start is
    enabled with the plan: a click on Start while the steps were timed would have queued the form unplanned."""
    if not measuring():
        return
    try:
        with st.spinner("Measuring this machine: timing a few training steps…", show_time=True):
            measure_plan(defaults)
    finally:
        st.session_state["train_measuring"] = False
    st.rerun()


def measure_plan(defaults: TrainingConfig) -> None:
    """"Measure this machine": plan the form's run for this machine and its time budget, keeping the
    fields the user changed; the plan is kept for this data set and these changes until they change."""
    from engine.training.planner import plan_for_folder

    s = st.session_state
    s["train_plan_error"] = None
    values, changed = form_values(defaults)
    dataset = s.get("train_dataset")
    if not dataset:
        s["train_plan_error"] = "Choose a data set first: the plan depends on its smallest image."
        return
    with last_resort(lambda text: s.__setitem__("train_plan_error", text), NOT_MEASURED, "measure this machine"):
        try:
            config, plan = plan_for_folder(TrainingConfig.from_dict(values), set(changed), dataset)
        except UserError as exc:
            s["train_plan_error"] = str(exc)
            return
        if plan is None:
            s["train_plan_error"] = "The data set has fewer than 2 images: training needs at least 2."
            return
        # the typed config, checked once here: Start training queues it as it is
        s["train_plan"] = {"key": _plan_key(dataset, changed), "config": config, "plan": plan.to_dict(),
                           "text": plan.explain()}


def planned_run(defaults: TrainingConfig) -> tuple[TrainingConfig, dict | None]:
    """The config Start training queues and its plan: the measured plan when it was made for the form's
    current data set and changes, else the form's values as they are (and None); the form's values are turned
    into a TrainingConfig here, once, and the typed object is what is queued.

    Raises:
        UserError: a value of the form does not fit its option.
    """
    s = st.session_state
    values, changed = form_values(defaults)
    saved = s.get("train_plan")
    if saved and saved["key"] == _plan_key(s.get("train_dataset"), changed):
        return saved["config"], saved["plan"]
    return TrainingConfig.from_dict(values), None


def plan_line(defaults: TrainingConfig, dataset: str | None, values: dict) -> None:
    """The "Plan for this machine" line under the form, for ``dataset`` and the form's ``values``."""
    s = st.session_state
    saved, error = s.get("train_plan"), s.get("train_plan_error")
    changed = changed_fields(defaults, values)
    if error:
        st.error(error)
    elif saved and saved["key"] == _plan_key(dataset, changed):
        st.info(f"Plan for this machine: {saved['text']} Start training uses it; the fields you changed stay "
                "as you set them.")
    elif saved:
        st.caption("Plan for this machine: the form or the data set changed since the last measurement; "
                   "Measure this machine again to plan for them (Start training uses the form as it is).")
    else:
        st.caption("Plan for this machine: Measure this machine times a few training steps (about 10 seconds) and "
                   "chooses patch size, batch size, precision and, with a time budget, the U-Net width, epochs and "
                   "steps per epoch (a checkpoint at least every tenth of the budget); the fields you "
                   "changed stay as you set them. Without it, Start training uses the form as it is.")


def submit_callback(defaults: TrainingConfig) -> None:
    from engine.jobs import submit_training
    from engine.jobs.training import settings_sources
    from storage.db import DuplicateSubmissionError

    s = st.session_state
    s["train_message"] = None
    name, dataset, key = (s.get("train_name") or "").strip(), s.get("train_dataset"), s.get("train_form_key")
    if not dataset:
        s["train_message"] = ("error", "Choose a data set first (a folder, a zip, a registered or a synthetic one).")
        return
    with last_resort(lambda text: s.__setitem__("train_message", ("error", text)), NOT_QUEUED,
                     "queue a training run"):
        try:
            config, plan = planned_run(defaults)
            origin = s.get("train_form_origin") or {}
            sources = settings_sources(config.to_dict(), plan, origin.get("values"), origin.get("run", ""), "typed")
            model_id = submit_training(name or f"unet-{time.strftime('%m%d-%H%M%S')}", dataset, config,
                                       submission_key=key, plan=plan, queue=s.get("train_queue"), sources=sources)
        except DuplicateSubmissionError as exc:  # the second click of a double click: the first one's run stands
            s["train_watch"] = exc.model_id
            s["train_message"] = ("success", f"Queued model {exc.model_id}: it starts as soon as the worker has a "
                                             "free slot (a second click did not queue it twice).")
            forget_queries()
            return
        except UserError as exc:
            s["train_message"] = ("error", str(exc))
            return
        s["train_form_used"] = key
        s["train_submitted_at"] = time.monotonic()  # draws the Start button disabled for SUBMIT_HOLD_S
        s["train_watch"], s["train_scroll"] = model_id, True
        planned = " It runs as planned for this machine." if plan else ""
        s["train_message"] = ("success", f"Queued model {model_id}: it starts as soon as the worker has a free "
                                         f"slot; follow it in the Training monitor below.{planned}")
        forget_queries()


@st.fragment(run_every=2)
def submit_message() -> None:
    """The outcome of the last Start click; "Queued model …" goes away once that run has ended."""
    s = st.session_state
    message = s.get("train_message")
    if message and message[0] == "success" and s.get("train_watch"):
        row = next((m for m in list_models() if m["id"] == s["train_watch"]), None)
        if row is not None and row["status"] not in ACTIVE_STATUSES:  # None: a read from before
            message = s["train_message"] = None
    if message:
        getattr(st, message[0])(message[1])


def scroll_to_monitor() -> None:
    """Bring the Training monitor into view, once, after a run was queued: it is drawn below the long form,
    out of sight of the Start button. (Streamlit has no scroll command: a tiny script in an iframe does it.)"""
    st.iframe("""<script>
      const doc = window.parent.document;
      let tries = 0;
      const go = () => {
        const h = [...doc.querySelectorAll('h2')].find(e => e.innerText.trim().startsWith('Training monitor'));
        if (h) h.scrollIntoView({block: 'start'}); else if (tries++ < 50) setTimeout(go, 100);
      };
      go();
    </script>""", height=1, tab_index=-1, alt="scrolls the Training monitor into view")


SUBMIT_HOLD_S = 3.0  # the Start button stays disabled this long after a run was queued


def start_button_held() -> bool:
    """True while the Start button is shown disabled after a submission; clears the hold once it expired."""
    at = st.session_state.get("train_submitted_at")
    if at is not None and time.monotonic() - at >= SUBMIT_HOLD_S:
        st.session_state.pop("train_submitted_at", None)
        return False
    return at is not None


def release_start_button() -> None:
    """Called by the monitor (which re-runs every 2 s): redraw the page once the hold has expired."""
    at = st.session_state.get("train_submitted_at")
    if at is not None and time.monotonic() - at >= SUBMIT_HOLD_S:
        st.session_state.pop("train_submitted_at", None)
        st.rerun(scope="app")
