"""The routes through which a worker on another machine runs a batch inference job: claim it, download its
checkpoint and images, report its progress, upload its results and end it (``engine.api_workers`` lists them)."""
from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from engine.api_archives import file_hash, folder_archive
from engine.api_worker_requests import UploadRefused, asking_worker, body_number, held_job, read_upload
from engine.errors import UserError
from engine.jobs import lifecycle
from storage import archives, paths
from storage import db as store
from storage.db import checkpoint_file


def job_claim(request: Request, body: dict) -> tuple[int, dict]:
    """POST /workers/inference/{id}/claim ``{worker_id}``: ``claimed`` false, or the job with its
    checkpoint (``baseline`` or {sha256, name}) and its input zip ({sha256, name})."""
    job_id, worker = request.path_params["job_id"], asking_worker(body, request)
    if not lifecycle.claim_job(job_id, worker):
        return 200, {"claimed": False}
    row = store.get_inference_job(job_id)
    try:
        checkpoint, path = row["checkpoint_path"], checkpoint_file(row["checkpoint_path"])
        if path is not None:  # the classical filter travels as its name
            if not path.is_file():
                raise UserError(f"The checkpoint {path.name} is no longer on the dashboard's machine: choose another.")
            checkpoint = {"sha256": file_hash(path), "name": path.name}
        digest, _ = _job_input(row)
    except (UserError, OSError) as exc:
        store.update_inference_job(job_id, status="failed", finished_at=store.utc_now(), error=str(exc))
        raise
    fields = {k: row[k] for k in ("checkpoint_path", "postprocess", "scale", "input_path", "model_id")}
    return 200, {"claimed": True, "row": fields, "checkpoint": checkpoint,
                 "input": {"sha256": digest, "name": Path(row["input_path"]).name}}


def _job_input(row: dict) -> tuple[str, Path]:
    source = Path(row["input_path"])
    if source.is_file():
        return file_hash(source), source
    if not source.is_dir():
        raise UserError(f"The job's images ({source}) are no longer on the dashboard's machine: submit it again.")
    return folder_archive(source)


def job_checkpoint(request: Request, body: None) -> Path:
    """GET /workers/inference/{id}/checkpoint: the job's checkpoint file."""
    row = held_job(request.path_params["job_id"], asking_worker(None, request))
    path = checkpoint_file(row["checkpoint_path"])
    if path is None:
        raise UserError("This job uses the classical vesselness filter: it has no checkpoint to download.")
    return path


def job_input(request: Request, body: None) -> Path:
    """GET /workers/inference/{id}/input: the job's images as a zip."""
    return _job_input(held_job(request.path_params["job_id"], asking_worker(None, request)))[1]


def job_progress(request: Request, body: dict) -> tuple[int, dict]:
    """POST /workers/inference/{id}/progress ``{worker_id, n_total, n_done, n_failed, progress}``: answers
    ``{status}``; ``cancelled`` means stop before the next image."""
    job_id, worker = request.path_params["job_id"], asking_worker(body, request)
    held_job(job_id, worker)
    counts = {k: body_number(body, k) for k in ("n_total", "n_done", "n_failed")}
    progress = body_number(body, "progress", float)
    store.update_inference_job(job_id, heartbeat_at=store.utc_now(), progress=progress,
                               **{k: v for k, v in counts.items() if v is not None})
    return 200, {"status": store.get_inference_job(job_id)["status"]}


async def job_results(request: Request) -> dict:
    """PUT /workers/inference/{id}/results?worker_id= with results.zip as the body."""
    job_id, worker = request.path_params["job_id"], asking_worker(None, request)
    await run_in_threadpool(held_job, job_id, worker)
    data = await read_upload(request)
    return await run_in_threadpool(_register_results, job_id, data)


def _register_results(job_id: str, data: bytes) -> dict:
    from engine.inference.batch import RESULT_PARTS

    out = paths.inference_dir(job_id)
    token = secrets.token_hex(4)
    upload, unpacked = out / f".results.{token}.zip", out / f".results.{token}"
    try:
        upload.write_bytes(data)
        try:
            archives.safe_extract_zip(upload, unpacked)
        except UserError as exc:
            raise UploadRefused(400, f"The results uploaded for job {job_id} were refused: {exc} Nothing was "
                                     "registered.") from None
        for part in RESULT_PARTS:
            source, target = unpacked / part, out / part
            if source.exists():
                if target.is_dir():
                    shutil.rmtree(target)
                os.replace(source, target)
        os.replace(upload, out / "results.zip")
    finally:
        upload.unlink(missing_ok=True)
        shutil.rmtree(unpacked, ignore_errors=True)
    return {"bytes": len(data)}


def job_finish(request: Request, body: dict) -> tuple[int, dict]:
    """POST /workers/inference/{id}/finish ``{worker_id, error}`` or ``{worker_id, status, error, progress}``
    (``engine.inference.batch.job_outcome``; no status for a cancelled job)."""
    job_id, worker = request.path_params["job_id"], asking_worker(body, request)
    row = held_job(job_id, worker)
    fields: dict[str, Any] = {"finished_at": store.utc_now(), "error": str(body["error"])[:2000]
                              if body.get("error") else None}
    status = body.get("status")
    if body.get("failed"):
        fields["status"] = "failed"
    elif status is not None and row["status"] != "cancelled":
        if status not in ("completed", "failed"):
            raise UserError("'status' must be \"completed\" or \"failed\".")
        fields.update(status=status, progress=1.0)
    store.update_inference_job(job_id, **fields)
    return 200, {"status": store.get_inference_job(job_id)["status"]}
