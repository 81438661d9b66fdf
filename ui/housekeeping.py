"""Disk-use widgets: what the data home holds by kind, inference results, data sets and uploads (Overview
page), and one model's checkpoints with their sizes and deletion (Models page). Every deletion asks first."""
from __future__ import annotations

from typing import Any, Callable

import streamlit as st

from engine import housekeeping
from engine.errors import UserError
from ui.readers import forget_queries


def mb(n: int | None) -> float:
    """Bytes as megabytes, rounded for tables."""
    return round((n or 0) / 1e6, 2)


def _flash(section: str) -> None:
    """Show, once, the outcome of the last deletion made in ``section`` (its list may have changed since)."""
    message = st.session_state.pop(f"hk_msg_{section}", None)
    if message:
        getattr(st, message[0])(message[1])


def _confirm(key: str, section: str, label: str, question: str, action: Callable[..., str], *args: Any,
             disabled: bool = False) -> None:
    """A button that asks ``question`` with Yes / Cancel before running ``action(*args)``; the sentence
    ``action`` returns (or the error's) is shown by ``_flash(section)`` after the rerun."""
    s = st.session_state
    if s.get(f"{key}_ask") != args:
        st.button(label, key=key, disabled=disabled, on_click=s.__setitem__, args=(f"{key}_ask", args))
        return
    st.warning(question)
    a, b = st.columns(2)
    a.button("Yes, delete", key=f"{key}_yes", type="primary", on_click=_run, args=(key, section, action, args))
    b.button("Cancel", key=f"{key}_no", on_click=s.__setitem__, args=(f"{key}_ask", None))


def _run(key: str, section: str, action: Callable[..., str], args: tuple) -> None:
    st.session_state[f"{key}_ask"] = None
    try:
        st.session_state[f"hk_msg_{section}"] = ("success", action(*args))
    except UserError as exc:  # in use, only best, gone meanwhile: a sentence
        st.session_state[f"hk_msg_{section}"] = ("error", str(exc))
    forget_queries()


def _freed(removed: list[housekeeping.Removal]) -> str:
    return f"Deleted {len(removed)} item(s), {mb(housekeeping.freed_bytes(removed))} MB freed."


# --------------------------------------------------------------------------- Overview: disk use

def disk_use_summary() -> None:
    """One metric per kind of data (checkpoints, inference results, data sets, uploads, databases)."""
    use = housekeeping.disk_use()
    st.caption(f"The data home uses {mb(sum(use.values()))} MB in all.")
    for column, (kind, size) in zip(st.columns(len(use)), use.items()):
        column.metric(kind.capitalize(), f"{mb(size)} MB")


def inference_results_controls() -> None:
    """Batch inference results with their size; delete one, or every finished one older than N days."""
    _flash("jobs")
    jobs = housekeeping.inference_results()
    if not jobs:
        st.caption("No batch inference results.")
        return
    st.dataframe([{"job": j["id"], "model": j["model_id"], "status": j["status"], "size (MB)": mb(j["size_bytes"]),
                   "created": (j["created_at"] or "")[:19].replace("T", " ")} for j in jobs],
                 hide_index=True, width="stretch", key="hk_jobs_table")
    finished = [j["id"] for j in jobs if not j["in_use"]]
    pick = st.selectbox("Inference results to delete", finished, key="hk_job_pick", index=None,
                        placeholder="Choose a finished job")
    if pick:
        _confirm("hk_job_delete", "jobs", "Delete these results",
                 f"Delete the results of job {pick}? This cannot be undone.",
                 lambda job: f"Deleted job {job} ({mb(housekeeping.delete_inference_results(job).size_bytes)} MB).",
                 pick)
    days = st.number_input("Older than (days)", min_value=0, value=30, step=1, key="hk_jobs_days")
    old = housekeeping.delete_old_inference_results(days, dry_run=True)
    _confirm("hk_jobs_old", "jobs",
             f"Delete {len(old)} result(s) older than {days} days ({mb(housekeeping.freed_bytes(old))} MB)",
             f"Delete every finished batch inference result created more than {days} days ago?",
             lambda d: _freed(housekeeping.delete_old_inference_results(d)), days, disabled=not old)


def stored_data_controls() -> None:
    """Data sets and uploaded files with their size; delete one that nothing running reads."""
    _flash("data")
    entries = housekeeping.stored_data()
    if not entries:
        st.caption("No data sets or uploads in the data home.")
        return
    st.dataframe([{"kind": e["kind"], "name": e["name"], "size (MB)": mb(e["size_bytes"]),
                   "in use": e["in_use"] or ""} for e in entries], hide_index=True, width="stretch",
                 key="hk_data_table")
    free = {e["path"]: f"{e['kind']}: {e['name']}" for e in entries if not e["in_use"]}
    pick = st.selectbox("Data set or upload to delete", list(free), format_func=free.get, key="hk_data_pick",
                        index=None, placeholder="Choose one")
    if pick:
        _confirm("hk_data_delete", "data", "Delete it", f"Delete {free[pick]}? Models trained on it keep working, but "
                 "cannot be trained further on it. This cannot be undone.",
                 lambda path: f"Deleted {free[path]} ({mb(housekeeping.delete_stored_data(path).size_bytes)} MB).",
                 pick)


# --------------------------------------------------------------------------- Models: one model's checkpoints

def checkpoint_controls(model: dict, ckpts: list[dict]) -> None:
    """Total size of a model's checkpoints; "Delete older checkpoints" (epoch files beyond the newest N) and
    "Delete this checkpoint" (never best.pt, the only best)."""
    mid = model["id"]
    _flash(f"ckpt_{mid}")
    st.caption(f"{len(ckpts)} checkpoint(s), {mb(sum(c['size_bytes'] or 0 for c in ckpts))} MB in all.")
    try:
        default_keep = housekeeping.keep_epoch_checkpoints()
    except UserError as exc:
        st.warning(str(exc))
        default_keep = housekeeping.DEFAULT_KEEP
    a, b = st.columns(2)
    with a:
        keep = st.number_input("Epoch checkpoints to keep", min_value=0, value=default_keep, step=1,
                               key=f"hk_keep_{mid}", help="best.pt and last.pt are always kept.")
        plan = housekeeping.checkpoint_prune_plan(mid, int(keep))
        _confirm(f"hk_prune_{mid}", f"ckpt_{mid}",
                 f"Delete older checkpoints ({len(plan)}, {mb(housekeeping.freed_bytes(plan))} MB)",
                 f"Delete the {len(plan)} epoch checkpoint(s) older than the newest {keep}?",
                 lambda m, k: _freed(housekeeping.prune_checkpoints(m, k)), mid, int(keep), disabled=not plan)
    with b:
        names = [c["name"] for c in ckpts if c["name"] != "best.pt"]
        pick = st.selectbox("Checkpoint to delete", names, key=f"hk_ckpt_pick_{mid}", index=None,
                            placeholder="Choose one (best.pt is always kept)")
        if pick:
            _confirm(f"hk_ckpt_delete_{mid}", f"ckpt_{mid}", "Delete this checkpoint",
                     f"Delete {pick} of {model['name']}? This cannot be undone.",
                     lambda m, n: f"Deleted {n} ({mb(housekeeping.delete_checkpoint(m, n).size_bytes)} MB).",
                     mid, pick)
