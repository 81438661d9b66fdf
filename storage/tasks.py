"""The queue's side of the registry, across runs (``models``) and batch jobs (``inference_jobs``): the rows
that wait in a queue with a task id, a task id replaced when its queue entry was lost, and the heartbeats a
worker stamps on the rows it holds or keeps in line."""
from __future__ import annotations

from sqlite_utils import Database

from storage.connection import execute_write, fetch_rows, using, utc_now


def queued_tasks(db: Database | None = None) -> list[dict]:
    """Every queued run and batch job that has a task in a queue: ``{kind: 'model'|'job', id, task_id, queue}``."""
    with using(db) as db:
        return (fetch_rows(db, "SELECT 'model' AS kind, id, task_id, queue FROM models "
                               "WHERE status = 'queued' AND task_id IS NOT NULL")
                + fetch_rows(db, "SELECT 'job' AS kind, id, task_id, queue FROM inference_jobs "
                                 "WHERE status = 'queued' AND task_id IS NOT NULL"))


def replace_task_id(kind: str, key: str, old_task_id: str, new_task_id: str, db: Database | None = None) -> bool:
    """Give a queued run (``kind`` "model") or batch job ("job") a new task id in place of ``old_task_id``
    (its queue entry was lost and it is queued again); False when the row moved on meanwhile."""
    table = {"model": "models", "job": "inference_jobs"}[kind]
    with using(db) as db:
        sql = f"UPDATE {table} SET task_id = ? WHERE id = ? AND status = 'queued' AND task_id = ?"
        return execute_write(db, sql, [new_task_id, key, old_task_id]) > 0


def beat_active(model_ids: list[str], job_ids: list[str], db: Database | None = None) -> None:
    """Stamp the heartbeat of the runs (those still running or stopping) and jobs a worker is working on."""
    now = utc_now()
    with using(db) as db, db.atomic():
        for model_id in model_ids:
            db.execute("UPDATE models SET heartbeat_at = ? WHERE id = ? AND status IN ('running', 'stopping')",
                       [now, model_id])
        for job_id in job_ids:
            db.execute("UPDATE inference_jobs SET heartbeat_at = ? WHERE id = ?", [now, job_id])


def beat_queued(db: Database | None = None) -> None:
    """Stamp the heartbeat of every queued run with a task: a starting worker keeps their place in line."""
    with using(db) as db:
        execute_write(db, "UPDATE models SET heartbeat_at = ? WHERE status = 'queued' AND task_id IS NOT NULL",
                      [utc_now()])
