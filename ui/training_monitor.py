"""The live monitor of one training run: its status in words, progress and ETA, curves and the Stop button
(and *Continue training* once it stopped or failed)."""
from __future__ import annotations

import streamlit as st

from engine.errors import UserError
from engine.progress import run_budget_s, run_progress
from ui.charts import curves_figure
from ui.formatting import age_text, stop_reason_text, val_dice_words
from ui.readers import forget_queries, model_metrics
from ui.training_continue import continue_controls
from storage.db import TRAINING_STATUSES


def status_text(row: dict) -> str:
    """A run's status in words: a run the user stopped reads "stopped (by you) after epoch 2 of 5", not
    "completed" (the registry's status, which says it kept a best checkpoint)."""
    if row.get("stop_reason") == "user_stop" and row.get("status") in ("completed", "stopped"):
        if run_budget_s(row) and row.get("trained_s") is not None:  # the budget, not the epoch limit, measures it
            return (f"stopped (by you) after epoch {row.get('epochs_run') or 0}, {age_text(row['trained_s'])} of "
                    f"{age_text(run_budget_s(row))} trained")
        return f"stopped (by you) after epoch {row.get('epochs_run') or 0} of {row.get('total_epochs') or '?'}"
    return row.get("status") or ""


def _stop(model_id: str) -> None:
    from engine.jobs import stop_training

    try:
        st.session_state[f"train_stop_msg_{model_id}"] = stop_training(model_id)
    except UserError as exc:
        st.session_state[f"train_stop_msg_{model_id}"] = str(exc)
    st.session_state["train_watch"] = model_id  # keep showing it once it stopped, with Continue training
    forget_queries()


def run_monitor(row: dict, smoothing: float) -> None:
    """Progress, ETA, curves and the Stop button of one run."""
    mid, status = row["id"], row["status"]
    epoch, total = row.get("current_epoch") or 0, row.get("total_epochs") or 1
    shown = status_text(row)
    st.subheader(f"{row['name']} · {shown}" + (f" ({stop_reason_text(row['stop_reason'])})"
                                               if row.get("stop_reason") and shown == status else ""))
    if status in TRAINING_STATUSES:
        batch = f"batch {row.get('batch') or 0} / {row.get('batches') or '?'}"
        budget = run_budget_s(row)
        if budget:  # the time budget ends the run, not the epoch limit the plan raised past it
            text = (f"{age_text(row.get('trained_s'))} of {age_text(budget)} trained, epoch {epoch}, {batch}, "
                    f"ETA {age_text(row.get('eta_s'))}")
        else:
            text = f"epoch {epoch} / {total}, {batch}, ETA {age_text(row.get('eta_s'))}"
        st.progress(run_progress(row) or 0.0, text=text)
    elif status == "queued":
        st.info("Waiting for the worker to start it.")
    elif status == "failed" and row.get("error"):
        st.error(f"The run failed: {row['error']}")
    metrics = model_metrics(mid)
    best = row.get("best_epoch")
    if metrics:
        since, patience = row.get("epochs_since_best"), row.get("patience")
        if row.get("best_val_dice") is None and best:
            st.caption(f"Newest epoch {best}: every image trains, so no validation score judges the epochs.")
        else:
            st.caption(f"Best epoch {best or '—'} ({val_dice_words(row.get('best_val_dice'))}) · epochs since best: "
                       f"{since if since is not None else '—'} / {patience or '∞'}")
        st.plotly_chart(curves_figure([(row["name"], metrics, best)], smoothing), key=f"train_curves_{mid}")
    if status in ("queued", "running"):
        st.button("Stop", key=f"train_stop_{mid}", on_click=_stop, args=(mid,))
    elif status == "stopping":
        st.button("stopping…", key=f"train_stop_{mid}", disabled=True)
    elif status == "failed" or row.get("stop_reason") in ("user_stop", "time_limit"):
        continue_controls(row, "train_continue")
