"""The batch inference jobs: the ``inference_jobs`` table, one row per job over a folder or zip of photographs.

Registering a job, reading and changing its row, its claim by a worker, a cancel, an abandoned job failed,
and forgetting a finished one. The ``postprocess`` column is stored and returned as JSON text.
"""
from __future__ import annotations

import json
from typing import Any

from sqlite_utils import Database

from storage import paths
from storage.connection import check_fields, encode_json, execute_write, fetch_rows, immediate, new_id, using, utc_now
from storage.errors import UserError, WrongStateError
from storage.runs import get_model
from storage.vocabulary import BASELINE, JOB_STATUSES


class UnknownJobError(UserError):
    """No inference job with the given id exists."""


# --------------------------------------------------------------------------- a job's row

def create_inference_job(checkpoint_path: str, input_path: str, postprocess: dict, model_id: str | None = None,
                         db: Database | None = None, scale: str = "auto") -> str:
    """Register a batch inference job (status ``queued``) and return its id; ``scale`` is how its
    photographs are resized for the model (``"auto"``, ``"none"`` or a factor, as text)."""
    job_id = new_id()
    record = {"id": job_id, "model_id": model_id, "checkpoint_path": str(checkpoint_path), "scale": str(scale),
              "input_path": str(input_path), "postprocess": json.dumps(postprocess or {}, sort_keys=True),
              "status": "queued", "progress": 0.0, "n_total": 0, "n_done": 0, "n_failed": 0,
              "output_dir": str(paths.data_home() / "inference" / job_id), "created_at": utc_now()}
    with using(db) as db:
        if model_id is not None and model_id != BASELINE:
            get_model(model_id, db=db)
        db["inference_jobs"].insert(record)
    return job_id


def get_inference_job(job_id: str, db: Database | None = None) -> dict:
    """The job's row; an unknown id raises :class:`UnknownJobError`."""
    with using(db) as db:
        rows = fetch_rows(db, "SELECT * FROM inference_jobs WHERE id = ?", [job_id])
    if not rows:
        raise UnknownJobError(f"There is no inference job with id {job_id!r}; check the id in the job list.")
    return rows[0]


def update_inference_job(job_id: str, db: Database | None = None, **fields: Any) -> None:
    """Set fields of an inference job's row."""
    if "status" in fields and fields["status"] not in JOB_STATUSES:
        raise UserError(f"job status {fields['status']!r} is not one of {', '.join(JOB_STATUSES)}.")
    with using(db) as db:
        get_inference_job(job_id, db=db)
        if fields:
            check_fields("inference_jobs", fields, db)
            db["inference_jobs"].update(job_id, encode_json(fields))


def list_inference_jobs(model_id: str | None = None, limit: int | None = None, db: Database | None = None,
                        status: str | None = None) -> list[dict]:
    """Inference jobs, newest first; only one model's with ``model_id``, only one status with ``status``."""
    where, params = [], []
    if model_id is not None:
        where, params = ["model_id = ?"], [model_id]
    if status is not None:
        where, params = where + ["status = ?"], params + [status]
    sql = "SELECT * FROM inference_jobs" + (" WHERE " + " AND ".join(where) if where else "")
    sql += " ORDER BY created_at DESC, id DESC"
    if limit:
        sql, params = sql + " LIMIT ?", params + [int(limit)]
    with using(db) as db:
        return fetch_rows(db, sql, params)


# --------------------------------------------------------------------------- a job's state changes

def claim_inference_job(job_id: str, worker: str, db: Database | None = None) -> bool:
    """Move a queued batch job to ``running`` for ``worker`` in one conditional UPDATE; False when it is no
    longer queued (cancelled, or claimed by another worker)."""
    now = utc_now()
    with using(db) as db:
        return execute_write(db, "UPDATE inference_jobs SET status = 'running', started_at = ?, heartbeat_at = ?, "
                                 "worker = ? WHERE id = ? AND status = 'queued'", [now, now, worker, job_id]) > 0


def inference_cancelled(job_id: str, db: Database | None = None) -> bool:
    """Whether the job has been cancelled (read by the worker before each image)."""
    with using(db) as db:
        row = db.execute("SELECT status FROM inference_jobs WHERE id = ?", [job_id]).fetchone()
    return row is not None and row[0] == "cancelled"


def request_cancel(job_id: str, db: Database | None = None) -> str:
    """Cancel a batch inference job: its status becomes ``cancelled`` at once.

    Returns ``"cancelled"`` for a job that had not started (it never will; ``finished_at`` is set now) or
    ``"cancelling"`` for a running one: the worker reads the status before each image, stops there, keeps
    the images written so far and sets ``finished_at``. Raises UnknownJobError for an unknown id and
    WrongStateError for a job that has already ended.
    """
    with using(db) as db, immediate(db):
        row = get_inference_job(job_id, db=db)
        if row["status"] == "queued":
            db.execute("UPDATE inference_jobs SET status = 'cancelled', finished_at = ?, "
                       "error = 'cancelled by the user before it started' WHERE id = ?", [utc_now(), job_id])
            return "cancelled"
        if row["status"] == "running":
            db.execute("UPDATE inference_jobs SET status = 'cancelled' WHERE id = ?", [job_id])
            return "cancelling"
        raise WrongStateError(f"Inference job {job_id!r} has already ended ({row['status']}); there is nothing "
                              "to cancel.")


def fail_stale_job(job_id: str, error: str, stale_before: str | None, db: Database | None = None) -> bool:
    """:func:`fail_stale_model` for a running inference job: one conditional UPDATE; True when it changed."""
    sql = "UPDATE inference_jobs SET status = 'failed', finished_at = ?, error = ? WHERE id = ? AND status = 'running'"
    params: list = [utc_now(), error, job_id]
    if stale_before is not None:
        sql, params = sql + " AND (heartbeat_at IS NULL OR heartbeat_at < ?)", params + [stale_before]
    with using(db) as db:
        return execute_write(db, sql, params) > 0


# A job still read or written by a worker: queued, running, or cancelled while running (the worker sets
# finished_at when it has stopped, before its next image).
_JOB_IN_USE = "(status IN ('queued', 'running') OR (status = 'cancelled' AND finished_at IS NULL))"


def active_inference_jobs(db: Database | None = None) -> list[dict]:
    """Jobs a worker may still read or write: queued, running, or cancelled and not yet stopped."""
    with using(db) as db:
        return fetch_rows(db, f"SELECT * FROM inference_jobs WHERE {_JOB_IN_USE} ORDER BY created_at DESC")


def forget_inference_job(job_id: str, db: Database | None = None) -> None:
    """Remove a finished inference job's row (``engine.housekeeping.delete_inference_results`` removes its
    output folder too).

    Raises:
        UnknownJobError: no such job.
        WrongStateError: the job is queued or running (cancel it and wait until it has stopped).
    """
    with using(db) as db:
        with immediate(db):
            row = get_inference_job(job_id, db=db)
            if db.execute(f"DELETE FROM inference_jobs WHERE id = ? AND NOT {_JOB_IN_USE}", [job_id]).rowcount == 0:
                raise WrongStateError(f"Inference job {job_id!r} is {row['status']} and still writing its results: "
                                      "cancel it and wait until it has stopped before deleting it.")
