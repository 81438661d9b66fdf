"""The background worker in the dashboard: its age and the Overview's "Start the worker", the table of
workers (Overview) and the queue picker (Train page).

Both draw nothing new for a dashboard on the SQLite queue file (``ML_MANAGER_QUEUE`` unset), apart from the
table, which then lists the one worker on this machine."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from engine.errors import UserError
from storage import paths
from storage.db import WORKER_FRESH_S
from ui.formatting import age_text
from ui.readers import forget_queries, list_inference_jobs, list_models, list_workers, worker_heartbeat
from ui.runtime import logger

GONE_AFTER_S = 3600.0  # workers silent for longer than this are left out of the table


def live_workers() -> list[dict]:
    """The workers whose heartbeat is fresh."""
    return list_workers(WORKER_FRESH_S)


def working_on(job: str | None, runs: dict[str, dict]) -> str:
    """What a worker works on, as its run's row says now: a worker killed mid-run last reported "training X",
    but X failed since, so it says so instead of "working on" it."""
    if not job:
        return "idle"
    kind, _, run_id = job.partition(" ")
    row = runs.get(run_id)
    if row is None or row.get("status") in ("queued", "running", "stopping"):
        return job
    return f"nothing now (its {kind} {run_id} {row['status']})"


def workers_table() -> None:
    """Every worker heard from in the last hour: machine, process, start, chip, queues, what it does, and whether
    it is alive; gone ones can be forgotten."""
    rows = list_workers(GONE_AFTER_S)
    if not rows:
        return
    import pandas as pd

    runs = {**{j["id"]: j for j in list_inference_jobs()}, **{m["id"]: m for m in list_models()}}
    table = pd.DataFrame(
        [{"machine": w["host"], "process": str(w.get("pid") or "—"),
          "started": (w.get("started_at") or "—")[:19].replace("T", " "),
          "state": "running" if (w["age_s"] or 1e9) <= WORKER_FRESH_S else "gone",
          "device": w.get("device") or "—", "queues": (w.get("queues") or "all").replace(",", ", "),
          "working on": working_on(w.get("job"), runs), "last heartbeat": f"{age_text(w['age_s'])} ago",
          "reports": "over the network" if w.get("kind") == "remote" else "on this machine"} for w in rows])
    st.table(table.set_index("machine"))  # a few rows of text: a plain table, readable and copyable
    if (table["state"] == "gone").any():
        st.button("Forget gone workers", key="overview_forget_workers", on_click=_forget_gone,
                  help="Removes the rows of workers that stopped reporting; a worker that starts again reappears.")


def _forget_gone() -> None:
    from storage.db import forget_workers

    forget_workers(WORKER_FRESH_S)
    forget_queries()


def queue_picker(key: str, default: str = "training") -> str | None:
    """With the Redis queue: a choice among the queues that have a live worker (or a sentence that none
    has); returns the queue chosen, None on the SQLite queue file (one queue, nothing to choose)."""
    from engine.jobs import queue_names, redis_url

    try:
        if redis_url() is None:
            return None
    except UserError as exc:
        st.error(str(exc))
        return None
    serving: dict[str, list[str]] = {}
    for worker in live_workers():
        for name in (worker.get("queues") or "").split(","):
            if name:
                serving.setdefault(name, []).append(worker["host"])
    offered = [name for name in queue_names() if name in serving and name != "inference"]
    if not offered:
        st.warning("No worker takes training jobs right now: a run queued now waits in the queue "
                   f"{default!r} until a worker for it starts (python -m engine worker).", icon=":material/warning:")
        return default
    label = {name: f"{name} ({', '.join(sorted(set(serving[name])))})" for name in offered}
    return st.selectbox("Queue", offered, key=key, format_func=label.get,
                        index=offered.index(default) if default in offered else 0,
                        help="Which workers may take this run: only queues with a running worker are offered.")


def worker_age() -> float | None:
    """Seconds since the worker last reported, None if it never ran on this data home."""
    from storage.db import age_seconds

    beat = worker_heartbeat()
    return age_seconds(beat.isoformat()) if beat else None


def start_worker() -> int:
    """Start the background worker (Huey consumer) for this data home; returns its process id."""
    import os
    import subprocess

    from engine.jobs.queue import worker_command

    root = Path(__file__).resolve().parents[1]
    log = open(paths.logs_dir() / "worker.log", "ab")
    proc = subprocess.Popen(
        worker_command(),
        cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, paths.HOME_ENV: str(paths.data_home())},
    )
    log.close()
    logger.info("started a worker, pid %s", proc.pid)
    return proc.pid
