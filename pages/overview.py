"""Overview: is the worker alive, what is running and queued, every model with links to its pages, and the
disk use of the data home (inference results, data sets and uploads can be deleted here)."""
import streamlit as st

from engine.pretrained import PRETRAINED_NAME, pretrained_available
from storage.db import WORKER_FRESH_S
from ui.formatting import age_text, run_duration, stop_reason_text
from ui.readers import forget_queries, list_models
from ui.runtime import run_page
from ui.workers import start_worker, worker_age
from ui.housekeeping import disk_use_summary, inference_results_controls, stored_data_controls
from ui.workers import live_workers, workers_table
from engine.progress import run_budget_s, run_progress
from storage.db import TRAINING_STATUSES


def worker_panel() -> None:
    age = worker_age()
    if age is not None and age <= WORKER_FRESH_S:
        n = len(live_workers())
        who = f"{n} workers are" if n > 1 else "The worker is"
        st.success(f"{who} running (last heartbeat {age_text(age)} ago).", icon=":material/check_circle:")
        return
    when = "has never run on this data home" if age is None else f"last reported {age_text(age)} ago"
    st.warning(
        f"The worker is not running (it {when}): queued training and batch inference wait for it. "
        "Start it with `make worker` in a terminal (`make run` starts it with the dashboard), or here.",
        icon=":material/warning:",
    )
    if st.button("Start the worker", key="overview_start_worker"):
        pid = start_worker()
        st.info(f"Worker started (process {pid}); it reports within a few seconds.")


def model_table(models: list[dict]) -> None:
    rows = [
        {
            "name": m["name"],
            "status": m["status"],
            "best val Dice": "—" if m.get("best_val_dice") is None else f"{m['best_val_dice']:.3f}",
            "best epoch": "—" if m.get("best_epoch") is None else str(m["best_epoch"]),
            "epochs": f"{m.get('epochs_run') or 0} / {m.get('total_epochs') or '?'}",  # finished, as on Models
            "duration": age_text(run_duration(m)),
            "stop reason": stop_reason_text(m.get("stop_reason")) or (m.get("error") or "")[:60],
            "details": f"/models?model={m['id']}",
            "inference": f"/model_inference?model={m['id']}",
        }
        for m in models
    ]
    st.dataframe(
        rows, hide_index=True, width="stretch", key="overview_models",
        column_config={
            "details": st.column_config.LinkColumn(display_text="open"),
            "inference": st.column_config.LinkColumn(display_text="try it"),
        },
    )


@st.fragment(run_every=3)
def live() -> None:
    from engine.jobs import recover_if_no_worker  # here, not at import: it opens the queue, which a
    #   data home that cannot be written refuses; inside the page, that refusal is shown as a sentence

    if recover_if_no_worker():  # runs whose worker died are failed here when no worker is up to do it
        forget_queries()
    worker_panel()
    workers_table()
    models = list_models()
    running = [m for m in models if m["status"] in TRAINING_STATUSES]
    queued = [m for m in models if m["status"] == "queued"]
    a, b, c = st.columns(3)
    a.metric("Running", len(running))
    b.metric("Queued", len(queued))
    c.metric("Models", len(models))
    for m in running:
        epoch, total, budget = m.get("current_epoch") or 0, m.get("total_epochs") or 1, run_budget_s(m)
        done = (f"{age_text(m.get('trained_s'))} of {age_text(budget)} trained, epoch {epoch}" if budget
                else f"epoch {epoch} / {total}")  # a time budget, not the epoch limit, ends a budgeted run
        st.progress(run_progress(m) or 0.0, text=f"{m['name']} ({m['status']}): {done}, ETA {age_text(m.get('eta_s'))}")
    if not models:
        shipped = pretrained_available()
        st.info("No models of your own yet: train one on the Train page"
                + (f", or try the {PRETRAINED_NAME} shipped with the program on a photograph right away."
                   if shipped else ", or tune post-processing on any image right away."))
        st.page_link("pages/train.py", label="Train a first model (no data needed: generate a synthetic set)",
                     icon=":material/model_training:")
        if shipped:
            st.page_link("pages/inference.py", label=f"Try the {PRETRAINED_NAME} on a photograph",
                         icon=":material/image_search:")
        st.page_link("pages/postprocess.py", label="Tune post-processing on an image (classical filter, no model)",
                     icon=":material/tune:")
        return
    model_table(models)


def main() -> None:
    st.title("ML Manager")
    st.caption("Train vessel-segmentation models, watch them learn, and tune how their output becomes a mask.")
    live()
    if st.button("Refresh now", key="overview_refresh"):
        forget_queries()
    disk_use()


def disk_use() -> None:
    st.subheader("Disk use")
    disk_use_summary()
    with st.expander("Batch inference results"):
        inference_results_controls()
    with st.expander("Data sets and uploads"):
        stored_data_controls()
    st.caption("Old epoch checkpoints are deleted on the Models page, or with `python -m engine prune`.")


run_page(main, "showing the overview")
