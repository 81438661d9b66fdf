"""Train: choose one or more data sets, see their summaries, fill the training form, start, and watch runs live."""
from pathlib import Path

import streamlit as st

from engine.training.data import load_dataset
from ui.readers import list_models
from ui.runtime import run_page, sentence_of
from ui.workers import queue_picker
from ui.training_form import (
    dataset_delete_controls, dataset_summary, datasets_problem, first_usable, form_defaults, generate_synthetic,
    measure_if_requested, measuring, more_datasets, plan_line, registered_datasets, release_start_button,
    request_measurement, run_monitor, scroll_to_monitor, start_button_held, start_from_picker, submission_key,
    submit_callback, submit_message, training_form,
)
from storage import paths
from storage.archives import unpack_dataset_zip
from storage.db import ACTIVE_STATUSES

SOURCES = ["Registered data set", "Folder path", "Upload a zip", "Generate a synthetic data set"]


def choose_dataset() -> str | None:
    s = st.session_state
    if s.get("train_generated"):  # generated in the last run, below the radio: select it before drawing it
        _use_registered(s.pop("train_generated"))
    # A new data home has no data set: open on the synthetic generator, the one choice that needs no data.
    source = st.radio("Data set", SOURCES, key="train_source", horizontal=True,
                      index=0 if registered_datasets() else SOURCES.index("Generate a synthetic data set"))
    if source == "Registered data set":
        names = registered_datasets()
        if not names:
            st.info("No data set in the data home yet: upload a zip, give a folder or generate a synthetic one.")
            return None
        if s.get("train_registered") not in names:  # deleted meanwhile, or a first visit
            s.pop("train_registered", None)
        picked = st.selectbox("Registered data sets", names, key="train_registered",
                              index=0 if "train_registered" in s else first_usable(names),
                              help="Newest first; the newest one that can be read is chosen when the page opens.")
        dataset_delete_controls(picked)
        return str(paths.datasets_dir() / picked)
    if source == "Folder path":
        folder = st.text_input("Folder (DRIVE, STARE, CHASE_DB1 or HRF as downloaded, or images/ + masks/ [+ fov/])",
                               key="train_folder", placeholder="../shared/data/drive/training")
        return folder.strip() or None
    if source == "Upload a zip":
        up = st.file_uploader("Zip of a DRIVE, STARE, CHASE_DB1 or HRF download, or of images/ and masks/ "
                              "(optionally fov/)", type=["zip"], key="train_zip")
        st.button("Unpack into the data home", key="train_unpack", disabled=up is None, on_click=_unpack)
        if s.get("train_unpack_error"):
            st.error(s["train_unpack_error"])
        return None
    a, b, c = st.columns(3)
    a.number_input("Images", 2, 200, 8, key="train_synth_n")
    b.number_input("Size (px)", 32, 1024, 256, step=32, key="train_synth_size")  # fits the default 128 px patches
    c.number_input("Seed", 0, 10_000, 0, key="train_synth_seed")
    if st.button("Generate the synthetic data set", key="train_synth_go"):
        # in the script body, not a callback: the spinner is drawn under the button while it works
        with st.spinner("Generating the synthetic data set…", show_time=True):
            folder = generate_synthetic(int(s["train_synth_n"]), int(s["train_synth_size"]), int(s["train_synth_seed"]))
        s["train_generated"] = Path(folder).name
        st.rerun()
    st.caption("Synthetic fundus-like images with known vessels, to try the whole product without data. "
               "The default form is sized for real data and runs for tens of minutes on a CPU; for a first "
               "try set Epochs 5 and Steps per epoch 20 (a few minutes).")
    return None


def _use_registered(name: str) -> None:
    st.session_state["train_source"], st.session_state["train_registered"] = SOURCES[0], name


def _unpack() -> None:
    up = st.session_state.get("train_zip")
    st.session_state["train_unpack_error"] = None
    try:  # load_dataset judges the unpacked folder: a zip without a data set leaves nothing behind
        _use_registered(unpack_dataset_zip(up.getvalue(), up.name, check=load_dataset).name)
    except Exception as exc:  # noqa: BLE001 - a user's error is its sentence; a bug is raised
        st.session_state["train_unpack_error"] = sentence_of(exc)


def show_summary(path: str) -> bool:
    try:
        summary, sample = dataset_summary(path)
    except Exception as exc:  # noqa: BLE001 - a user's error is its sentence; a bug is raised
        st.error(sentence_of(exc))
        return False
    a, b = st.columns([2, 1])
    with a:
        st.metric("Image / mask pairs", summary["n_images"])
        annotation = summary["annotation"].replace("*", r"\*").replace("_", r"\_")  # CHASE_DB1's *_1stHO
        estimated = " (the others' is estimated)" if summary["with_fov"] < summary["n_images"] else ""
        st.write(f"Layout: **{summary['layout']}** · vessels from {annotation} · sizes: {', '.join(summary['sizes'])}"
                 f" · with FOV mask: {summary['with_fov']}{estimated} · folder: `{summary['path']}`")
        st.caption(summary["scale"])
        for note in summary["notes"]:
            st.caption(note)
    b.image(sample, caption=f"{summary['ids'][0]} with its vessel mask (green)", width="stretch")
    return True


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


def choose_datasets() -> tuple[str | list[str] | None, bool]:
    """(the run's data set, or its list of data sets; whether all of them can train), each set's summary shown."""
    first = choose_dataset()
    if not first:
        return None, False
    usable = show_summary(first)
    folders = [first, *more_datasets(first)]
    for folder in folders[1:]:
        usable = show_summary(folder) and usable
    if usable and len(folders) > 1 and (problem := datasets_problem(folders)):
        st.error(problem)
        usable = False
    return (folders if len(folders) > 1 else first), usable


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
