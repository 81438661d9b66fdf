"""What every route for workers checks of a request: who asks (``worker_id``), that this worker holds the run
or job it reports on, the numbers it sends, and the size of an upload."""
from __future__ import annotations

import json
import os
from typing import Any

from starlette.requests import Request

from engine.errors import UserError, number_or_none
from engine.fields import Field
from engine.jobs import lifecycle
from storage import db as store

UPLOAD_ENV = "ML_MANAGER_MAX_UPLOAD_MB"


class UploadRefused(UserError):
    """An upload the dashboard will not register; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def max_upload_bytes() -> int:
    """The largest checkpoint or results upload accepted (``ML_MANAGER_MAX_UPLOAD_MB``, default 512)."""
    megabytes = number_or_none(os.environ.get(UPLOAD_ENV, "512"))
    return int((512 if megabytes is None else megabytes) * 1024 * 1024)


def asking_worker(body: dict | None, request: Request) -> str:
    """The ``worker_id`` of the body, or of the query string (a download or an upload).

    Raises:
        UserError: it is missing, or not a worker's id.
    """
    value = (body or {}).get("worker_id") if body is not None else request.query_params.get("worker_id")
    if value is None:
        value = request.query_params.get("worker_id")
    if not isinstance(value, str) or value.count(":") < 2 or len(value) > 300:
        raise UserError(f"'worker_id' must be the worker's id (host:pid:token), not {json.dumps(value)}.")
    return value


def held_run(model_id: str, worker: str, statuses: tuple[str, ...] = store.TRAINING_STATUSES) -> dict:
    """The run's row when ``worker`` holds it; WrongStateError (409) with a sentence otherwise."""
    row = store.get_model(model_id)
    if row["worker"] != worker or row["status"] not in statuses:
        holder = f"held by the worker on {lifecycle.worker_host(row['worker'])}" if row["worker"] else "not claimed"
        raise store.WrongStateError(f"Model {model_id!r} is {row['status']} and {holder}, not by this worker: "
                                    "nothing was registered.")
    return row


def held_job(job_id: str, worker: str) -> dict:
    """The job's row when ``worker`` runs it; WrongStateError (409) with a sentence otherwise."""
    row = store.get_inference_job(job_id)
    if row["worker"] != worker or row["status"] not in ("running", "cancelled") or row["finished_at"]:
        raise store.WrongStateError(f"Inference job {job_id!r} is {row['status']} and not run by this worker: "
                                    "nothing was registered.")
    return row


_NUMBERS = {int: Field(int), float: Field(float)}  # a worker's counts and scores: typed, finite


def body_number(body: dict, key: str, kind: type = int, optional: bool = True) -> Any:
    """``body[key]`` as a finite ``kind`` (None when absent and ``optional``); UserError with a sentence otherwise."""
    value = body.get(key)
    if value is None and optional:
        return None
    return _NUMBERS[kind].check(value, f"'{key}'", json.dumps)


async def read_upload(request: Request) -> bytes:
    """The request's body; UploadRefused (413) once it grows past :func:`max_upload_bytes`."""
    limit = max_upload_bytes()
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise UploadRefused(413, f"The upload is {int(length)} bytes; the dashboard takes at most {limit} "
                                 f"({UPLOAD_ENV}): nothing was registered.")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise UploadRefused(413, f"The upload is over {limit} bytes, the most the dashboard takes "
                                     f"({UPLOAD_ENV}): nothing was registered.")
        chunks.append(chunk)
    return b"".join(chunks)

