"""Batch inference through the queue: ``start_inference`` queues a job, ``run_inference_task`` runs it
(``engine.inference.batch``), ``cancel_inference`` and ``inference_status`` follow it. The job's row in
the run registry is its record; a job cancelled while it runs stops before its next image."""
from __future__ import annotations

import json
import os
from pathlib import Path

from engine.jobs.ledger import RegistryJob
from engine.jobs.queue import INFERENCE, check_queue, queue_for, queued_task, redis_errors, remote_link
from engine.jobs.runner import run_job
from storage import db as store


@queued_task()
def run_inference_task(job_id: str) -> None:
    """Predict every image of the job's folder or zip; outputs go to ``inference/<job_id>/`` (on a worker
    on another machine: through its remote link, which downloads the inputs and uploads the results).
    Either way the one runner (``engine.jobs.runner``) runs it."""
    link = remote_link()
    if link is not None:
        return link.infer(job_id)
    run_job(RegistryJob(job_id))


def start_inference(checkpoint_path: str | os.PathLike, input_path: str | os.PathLike, postprocess: dict | None,
                    model_id: str | None = None, scale: str | float = "auto", queue: str | None = None) -> str:
    """Queue a batch inference over a folder of images or a .zip; returns the job id.

    ``checkpoint_path`` is a source of ``engine.inference.predictor``: a ``.pt`` file, or ``CLASSICAL`` (the
    classical vesselness filter); ``scale``
    (``"auto"``, ``"none"`` or a factor; see ``engine.inference.predict.resolve_scale``) is how each photograph is
    resized for the model; ``queue`` the named Redis queue (default ``inference``; ignored on the SQLite queue
    file). Raises UserError with a sentence for anything unusable; nothing is queued then.
    """
    from engine.inference.batch import check_inputs
    from engine.inference.predictor import CLASSICAL
    from engine.fov import parse_scale

    scale = parse_scale(scale)
    queue = check_queue(queue, INFERENCE)
    checkpoint, source, settings = check_inputs(checkpoint_path, input_path, postprocess)
    if model_id is not None and model_id != CLASSICAL:
        store.get_model(model_id)
    q = queue_for(queue)
    job_id = store.create_inference_job(checkpoint, source, settings, model_id=model_id, scale=str(scale))
    task = run_inference_task.s(job_id)
    store.update_inference_job(job_id, task_id=task.id, queue=queue)
    try:
        with redis_errors("queue the job"):
            q.enqueue(task)
    except BaseException as exc:  # whatever stopped it, the row must not stay queued without a task; re-raised
        store.update_inference_job(job_id, status="failed", error=f"could not be queued: {exc}")
        raise
    return job_id


def cancel_inference(job_id: str) -> str:
    """Cancel a batch job: ``"cancelled"`` when queued (revoked, never starts), ``"cancelling"`` when running
    (it stops before its next image, keeping what it wrote). Unknown or finished jobs raise UserError."""
    outcome = store.request_cancel(job_id)
    row = store.get_inference_job(job_id)
    if outcome == "cancelled" and row["task_id"]:
        queue_for(row.get("queue")).revoke_by_id(row["task_id"])
    return outcome



def inference_status(job_id: str) -> dict:
    """A batch inference job's state, counts and output files."""
    row = store.get_inference_job(job_id)
    out = Path(row["output_dir"])
    results = out / "results.zip"
    return {
        "job_id": row["id"], "status": row["status"], "progress": row["progress"], "n_total": row["n_total"],
        "n_done": row["n_done"], "n_failed": row["n_failed"], "error": row["error"], "model_id": row["model_id"],
        "checkpoint_path": row["checkpoint_path"], "input_path": row["input_path"],
        "postprocess": json.loads(row["postprocess"] or "{}"), "output_dir": str(out),
        "stats_csv": str(out / "stats.csv") if (out / "stats.csv").exists() else None,
        "results_zip": str(results) if results.exists() else None,
        "created_at": row["created_at"], "started_at": row["started_at"], "finished_at": row["finished_at"],
        "heartbeat_at": row["heartbeat_at"], "queue": row.get("queue"), "worker": row.get("worker"),
    }
