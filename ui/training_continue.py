"""*Continue training* for a stopped or failed run (from its last.pt), and *Start it again* for a run stopped
before its first epoch; the Train page's monitor and the Models page draw them."""
from __future__ import annotations

import json
import time

import streamlit as st

from engine.errors import UserError
from ui.formatting import age_text
from ui.readers import forget_queries
from ui.runtime import NOT_QUEUED, last_resort
from storage import paths


@st.cache_data(ttl=60, show_spinner=False, max_entries=64)
def resume_point(path: str, mtime: float) -> dict:
    """What last.pt holds for continuing: its epoch, epochs without improvement, minutes trained."""
    from engine.training.checkpoint import load_checkpoint_dict

    ckpt = load_checkpoint_dict(path)  # CheckpointError (a UserError) with a sentence; not cached
    stopper = ckpt.get("early_stopping") or {}
    return {"epoch": int(ckpt.get("epoch") or 0), "wait": int(stopper.get("wait") or 0),
            "minutes": float(ckpt.get("elapsed_seconds") or 0.0) / 60}


def _restart(model_id: str, config_json: str, key: str) -> None:
    """Queue a run that was stopped before its first epoch again, from the start, with its own settings."""
    from engine.jobs import start_training
    from engine.training.config import TrainingConfig

    try:
        start_training(model_id, TrainingConfig.from_stored(json.loads(config_json)))  # checked when submitted
        st.session_state[f"{key}_msg_{model_id}"] = ("success", "Queued again from the start.")
    except UserError as exc:
        st.session_state[f"{key}_msg_{model_id}"] = ("error", str(exc))
    forget_queries()


def continue_controls(row: dict, key: str) -> None:
    """"Continue training" for a stopped or failed run: queues it with resume=True from its last.pt."""
    mid, s = row["id"], st.session_state
    message = s.get(f"{key}_msg_{mid}")
    if message:  # a success is shown once; an error stays until the next click
        getattr(st, message[0])(message[1])
        if message[0] == "success":
            s.pop(f"{key}_msg_{mid}")
    if row["status"] == "stopped":  # stopped before its first epoch ended: nothing to continue, all to redo
        st.caption("It was stopped before its first epoch finished, so there is no checkpoint to continue from.")
        st.button("Start it again", key=f"{key}_restart_{mid}", on_click=_restart, args=(mid, row["config"], key))
        return
    if row["status"] not in ("completed", "failed"):
        return
    last = paths.checkpoints_dir(mid) / "last.pt"
    if not last.is_file():
        if row["status"] == "failed":
            st.caption("No last.pt was saved (no epoch finished), so this run cannot be continued: start a new one.")
        return
    try:
        point = resume_point(str(last), last.stat().st_mtime)
    except UserError as exc:  # the checkpoint cannot be read (CheckpointError)
        st.warning(f"This run cannot be continued: {exc}")
        return
    config = json.loads(row["config"])
    saved, patience, budget = point["epoch"], config.get("early_stopping_patience", 0), config.get("max_minutes", 0)
    # Not an st.form: Enter in a form's lone number input submits it, which continued runs twice unasked.
    # Here Enter only sets the number; the button alone queues the continuation.
    st.markdown(f"**Continue training** from last.pt (epoch {saved}, {age_text(point['minutes'] * 60)} trained): "
                "the curves, the optimiser, the schedule and early stopping carry on.")
    cols = st.columns(3)
    if budget:  # a run with a time budget: asked in minutes; the clock ends it (more_time_changes)
        plan = json.loads(row["plan"]) if row.get("plan") else {}
        more = float((plan or {}).get("max_minutes") or budget)
        minutes = cols[0].number_input("More minutes of training", min_value=0.1, max_value=10_080.0, value=more,
                                       step=0.5, format="%g", key=f"{key}_more_minutes_{mid}",
                                       help="How much longer it trains from here; the run ends when that time is up.")
        adds = (f"It adds {minutes:g} minutes: the time budget goes from {point['minutes']:.2f} minutes trained to "
                f"{point['minutes'] + minutes:.2f}, and the run ends when that time is up, whatever epoch it reached.")
    else:
        fields = {"epochs": max(saved + 1, config["epochs"] if config["epochs"] > saved else 2 * saved)}
        until = cols[0].number_input("Train until epoch", min_value=saved + 1, max_value=100_000, step=1,
                                     value=fields["epochs"], key=f"{key}_epochs_{mid}",
                                     help="Raise it to train longer than the original limit; with the cosine "
                                          "schedule the learning rate follows the new length from here.")
        adds = (f"It adds {int(until) - saved} epochs: from epoch {saved + 1} to epoch {int(until)}, unless early "
                "stopping ends it sooner.")
    if patience and point["wait"] >= patience:
        cols[1].number_input("Early-stopping patience", min_value=point["wait"] + 1, max_value=100_000, step=1,
                             value=point["wait"] + patience, key=f"{key}_early_stopping_patience_{mid}",
                             help=f"It stopped after {point['wait']} epochs without improvement; allow more.")
    st.caption(adds)
    st.button("Continue training", key=f"{key}_go_{mid}", on_click=_continue, args=(mid, config, key, point))


def continue_changes(model_id: str, config: dict, key: str, point: dict) -> dict:
    """The fields the Continue form changes, from its widgets' values: more minutes for a run with a time
    budget (its total budget and epoch limit follow), else the epoch to train until; the patience when shown."""
    from engine.training.config import more_time_changes

    s = st.session_state
    if config.get("max_minutes"):
        changes = more_time_changes(config, point["minutes"], point["epoch"],
                                    float(s[f"{key}_more_minutes_{model_id}"]))
    else:
        changes = {"epochs": int(s[f"{key}_epochs_{model_id}"])}
    if f"{key}_early_stopping_patience_{model_id}" in s:
        changes["early_stopping_patience"] = int(s[f"{key}_early_stopping_patience_{model_id}"])
    return changes


def _continue(model_id: str, config: dict, key: str, point: dict) -> None:
    from engine.jobs import start_training
    from engine.training.config import config_with_changes

    s = st.session_state
    recent = time.monotonic() - s.get(f"{key}_queued_{model_id}", -1e9) < 15
    with last_resort(lambda text: s.__setitem__(f"{key}_msg_{model_id}", ("error", text)), NOT_QUEUED,
                     f"continue model {model_id}"):
        try:
            changes = continue_changes(model_id, config, key, point)
            start_training(model_id, config_with_changes(config, changes), resume=True)
        except UserError as exc:  # a second click of a double click finds it queued already
            s[f"{key}_msg_{model_id}"] = ("info", "It was queued a moment ago; it was not queued twice.") \
                if recent else ("error", str(exc))
        else:
            how_long = (f"for {float(s[f'{key}_more_minutes_{model_id}']):g} more minutes (until "
                        f"{changes['max_minutes']:g} minutes trained in all)" if config.get("max_minutes")
                        else f"up to epoch {changes['epochs']} ({changes['epochs'] - point['epoch']} more epochs)")
            s[f"{key}_msg_{model_id}"] = ("success", f"Queued: it continues {how_long} as soon as the worker has a "
                                                     "free slot (watch it on the Train page).")
            s["train_watch"], s[f"{key}_queued_{model_id}"] = model_id, time.monotonic()
    forget_queries()
