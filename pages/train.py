"""Train: choose one or more data sets, see their summaries, fill the training form, start, and watch runs live."""
import streamlit as st

from ui.readers import list_models
from ui.runtime import run_page
from ui.training_datasets import choose_datasets
from ui.training_form import form_defaults, start_from_picker, training_form
from ui.training_monitor import run_monitor
from ui.training_submit import (
    measure_if_requested, measuring, plan_line, release_start_button, request_measurement, scroll_to_monitor,
    start_button_held, submission_key, submit_callback, submit_message,
)
from ui.workers import queue_picker
from storage.db import ACTIVE_STATUSES


@st.fragment(run_every=2)
def monitor() -> None:
    st.header("Training monitor")
    smoothing = st.slider("Smoothing", 0.0, 0.95, 0.0, 0.05, key="train_smoothing",
                          help="Exponential moving average; the raw curve stays faint behind the smoothed one.")
    rows = [m for m in list_models() if m["status"] in ACTIVE_STATUSES]
    watch = st.session_state.get("train_watch")
    if watch and all(m["id"] != watch for m in rows):
        rows += [m for m in list_models() if m["id"] == watch]  # keeps showing its final status
    release_start_button()
    if not rows:
        st.caption("No active run.")
    for row in rows:
        with st.container(border=True):
            run_monitor(row, smoothing)


def main() -> None:
    st.title("Train")
    defaults = form_defaults()
    dataset, usable = choose_datasets()
    st.session_state["train_dataset"] = dataset
    # Not an st.form: a form sends what was typed only when submitted, so a name or a time budget typed
    # before visiting another page was lost. Each field reaches the server as it is left, and the page's
    # inputs are kept for the browser session (ui.runtime.keep_page_inputs).
    with st.container(border=True):
        st.text_input("Model name", key="train_name", placeholder="unet-dice-v1")
        queue_picker("train_queue")
        start_from_picker()
        values = training_form(defaults)
        # The run is queued inside the button's callback with the key the form was drawn with; the
        # registry creates one run per key (in one transaction), so the second click of a double click,
        # whenever the server sees it, finds the first run. The button is drawn disabled for a few
        # seconds after a run was queued, and only then gets a new key.
        held = start_button_held()
        submission_key(held)
        a, b = st.columns(2)
        a.button("Start training", type="primary", key="train_start", disabled=not usable or held or measuring(),
                 on_click=submit_callback, args=(defaults,), width="stretch",
                 help="One click queues one run: a double click does not queue it twice.")
        b.button("Measure this machine", key="train_measure", disabled=not usable or measuring(), width="stretch",
                 on_click=request_measurement)
        measure_if_requested(defaults)  # in the script body, after Start is drawn disabled: the spinner shows
    plan_line(defaults, dataset, values)
    submit_message()
    monitor()
    if st.session_state.pop("train_scroll", False):
        scroll_to_monitor()


run_page(main, "showing the Train page")
