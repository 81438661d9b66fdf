"""The dashboard's watchdog over the workers, with the Redis queue of several machines.

Workers on other machines beat through the dashboard (``engine.api_workers``), so the dashboard is the one
that judges their runs: every ``WATCH_EVERY_S`` it fails the runs and jobs whose worker stopped beating
(``engine.jobs.liveness.recover_stale_runs``, the one stale-run recovery, with "the worker on HOST stopped
(...)"), and queues again each queued run or job whose entry vanished from Redis (a Redis restarted without
persistence): :func:`requeue_lost`. A dashboard that was away gives every worker a whole stale period to beat
before it judges any run. The API's worker routes start it (:func:`start_watchdog`).
"""
from __future__ import annotations

import threading
import time
from typing import Callable

from engine.jobs.inference import run_inference_task
from engine.jobs.lifecycle import stale_after_s
from engine.jobs.liveness import BEAT_S, recover_stale_runs
from engine.jobs.queue import INFERENCE, TRAINING, log, queue_for
from engine.jobs.training import train_model_task
from storage import db as store

WATCH_EVERY_S = 1.0  # the watchdog's period: stale runs fail within the stale limit plus this
LOST_CHECK_S = 3.0  # a queued task missing from Redis in two checks this far apart is queued again
START_GRACE_S = 3 * BEAT_S  # after the dashboard starts, runs are judged stale only once workers could beat
# the queue a run ("model") and a batch job ("job") go to when their row names none
DEFAULT_QUEUES = {"model": TRAINING, "job": INFERENCE}


_watchdog: list[threading.Thread] = []


def start_watchdog(on_failed: Callable[[set[str]], None] = lambda ids: None) -> None:
    """Start (once per process) the thread that fails stale runs and queues lost jobs again.

    Args:
        on_failed: called with the ids of the runs and jobs each round failed (the API forgets their progress).
    """
    if _watchdog and _watchdog[0].is_alive():
        return
    thread = threading.Thread(target=_watch_forever, args=(on_failed,), name="ml-manager-watchdog", daemon=True)
    _watchdog[:] = [thread]
    thread.start()


def _watch_forever(on_failed: Callable[[set[str]], None]) -> None:
    missing: dict[str, float] = {}
    last_lost_check = 0.0
    # a dashboard that was down: every worker gets a whole stale period to beat (a restarted one imports torch
    # first, which takes seconds on a busy machine) before any run is judged by its old heartbeat
    time.sleep(max(START_GRACE_S, stale_after_s()))
    while True:
        time.sleep(WATCH_EVERY_S)
        try:
            on_failed(set(recover_stale_runs(watchdog=True)))
            if time.monotonic() - last_lost_check >= LOST_CHECK_S:
                last_lost_check = time.monotonic()
                requeue_lost(missing)
        except Exception:  # noqa: BLE001 - the thread's loop: Redis or the registry down for a moment, try again
            log.warning("the worker watchdog could not look at the queue", exc_info=True)


def requeue_lost(missing: dict[str, float]) -> list[str]:
    """Queue again each queued run or job whose task is in no Redis queue, on two checks in a row.

    Args:
        missing: task id -> when it was first missed; kept by the caller between checks.
    Returns:
        The ids of the runs and jobs queued again.
    """
    present: dict[str, set[str]] = {}
    again, seen = [], set()
    for row in store.queued_tasks():
        name = row["queue"] or DEFAULT_QUEUES[row["kind"]]
        if name not in present:
            q = queue_for(name)
            present[name] = {t.id for t in q.pending()} | {t.id for t in q.scheduled()}
        seen.add(row["task_id"])
        if row["task_id"] in present[name]:
            missing.pop(row["task_id"], None)
            continue
        if row["task_id"] not in missing:
            missing[row["task_id"]] = time.monotonic()
            continue
        if requeue(row["kind"], row["id"], row["task_id"], name):
            again.append(row["id"])
            log.warning("%s %s was queued again: its entry in the %s queue had vanished", row["kind"], row["id"], name)
        missing.pop(row["task_id"], None)
    for task_id in list(missing):
        if task_id not in seen:
            missing.pop(task_id)
    return again


def requeue(kind: str, key: str, old_task_id: str, queue: str) -> bool:
    """Enqueue a new task for a queued run (``kind`` "model") or job whose task ``old_task_id`` was lost;
    False when the row moved on meanwhile."""
    if kind == "model":
        row = store.get_model(key)
        task = train_model_task.s(key, None, row.get("resume_from"))
    else:
        task = run_inference_task.s(key)
    if not store.replace_task_id(kind, key, old_task_id, task.id):
        return False
    queue_for(queue).enqueue(task)
    return True
