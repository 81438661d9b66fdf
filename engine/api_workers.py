"""The dashboard's side of workers on other machines: the HTTP routes they report through, under ``/api/v1/``.

A worker started with ``python -m engine worker --server URL --token TOKEN`` (``engine.remote.worker``) has
its own data home and never reads the dashboard's files: it takes a job's id from the Redis queue and asks
these routes for everything else. Every route needs the API token, like the rest of the API
(``engine.api``), and every route about a run or a job names the worker (``worker_id``): only the worker
that claimed a run may report on it, upload its checkpoints or end it.

=======  ===========================================  ==================================================
method   route                                        what
=======  ===========================================  ==================================================
GET      /workers                                     every worker that reported: host, device, queues, job
GET      /workers/hello                               the Redis queue (never its password), the queue names
POST     /workers/beat                                a worker's heartbeat (and that of its runs and jobs)
POST     /workers/trainings/{id}/claim                take a queued run: its config, plan and data set
GET      /workers/trainings/{id}/dataset              a data set as a zip (``?index=N``: the run's Nth; cached here
                                                      by content hash)
GET      /workers/trainings/{id}/last.pt              the checkpoint a continued run starts from
GET      /workers/trainings/{id}/status               the run's status (``stopping`` = stop now)
POST     /workers/trainings/{id}/events               the training loop's events (progress, epochs)
PUT      /workers/trainings/{id}/checkpoints/{name}   best.pt, last.pt or epoch_XXX.pt, checked, then registered
POST     /workers/trainings/{id}/finish               the run's outcome
POST     /workers/inference/{id}/claim                take a queued batch job
GET      /workers/inference/{id}/checkpoint           the job's checkpoint file
GET      /workers/inference/{id}/input                the job's images as a zip
POST     /workers/inference/{id}/progress             images done (answers the job's status: cancelled?)
PUT      /workers/inference/{id}/results              results.zip (prob/, masks/, stats.csv, settings.json)
POST     /workers/inference/{id}/finish               the job's outcome
=======  ===========================================  ==================================================

An uploaded checkpoint is refused with a sentence, and nothing registered, when it is larger than
``ML_MANAGER_MAX_UPLOAD_MB`` (default 512), does not load with ``torch.load(..., weights_only=True)`` (a
truncated file, a pickle that carries code), or is not this program's format version.

With the Redis queue the dashboard also watches over the workers (:func:`start_watchdog`): a run or job
whose worker stopped beating is failed with "the worker on HOST stopped (...)", and a queued job whose
queue entry vanished (Redis restarted without persistence) is queued again.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from engine import jobs
from engine.errors import UserError, number_or_none, user_error
from storage.db import checkpoint_file
from engine.fields import Field
from engine.jobs import lifecycle
from engine.jobs.liveness import BEAT_S
from storage import archives, paths
from storage import db as store

log = logging.getLogger("ml_manager.api")

UPLOAD_ENV = "ML_MANAGER_MAX_UPLOAD_MB"
CHECKPOINT_NAMES = ("best.pt", "last.pt")
EPOCH_CHECKPOINT = re.compile(r"epoch_\d{3,6}\.pt")  # what checkpoint_every writes: epoch_004.pt
WATCH_EVERY_S = 1.0  # the watchdog's period: stale runs fail within the stale limit plus this
LOST_CHECK_S = 3.0  # a queued task missing from Redis in two checks this far apart is queued again
START_GRACE_S = 3 * BEAT_S  # after the dashboard starts, runs are judged stale only once workers could beat
PREFIX = "/api/v1"
# what a remote training reports (checkpoints: PUT); "plan": the run planned again on the worker's device
EVENT_TYPES = ("plan", "start", "batch", "epoch_end", "calibration")


class UploadRefused(UserError):
    """An upload the dashboard will not register; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def max_upload_bytes() -> int:
    """The largest checkpoint or results upload accepted (``ML_MANAGER_MAX_UPLOAD_MB``, default 512)."""
    megabytes = number_or_none(os.environ.get(UPLOAD_ENV, "512"))
    return int((512 if megabytes is None else megabytes) * 1024 * 1024)


# --------------------------------------------------------------------------- content-addressed archives

_hash_cache: dict[tuple, str] = {}
_archive_lock = threading.Lock()


def folder_hash(folder: Path) -> str:
    """SHA-256 over the relative paths and bytes of every visible file under ``folder`` (remembered while
    no file's size or time changes)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    key = (str(folder), tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files))
    if key not in _hash_cache:
        digest = hashlib.sha256()
        for path in files:
            digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
            digest.update(b"\0")
        _hash_cache[key] = digest.hexdigest()
    return _hash_cache[key]


def file_hash(path: Path) -> str:
    """SHA-256 of one file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_archive(folder: Path) -> tuple[str, Path]:
    """(content hash, zip) of a folder; the zip is kept in ``<data home>/cache/archives/<hash>.zip``."""
    digest = folder_hash(folder)
    target = paths.data_home() / "cache" / "archives" / f"{digest}.zip"
    with _archive_lock:
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            archives.zip_folder(folder, target)
    return digest, target


# --------------------------------------------------------------------------- request helpers

def _worker_id(body: dict | None, request: Request) -> str:
    value = (body or {}).get("worker_id") if body is not None else request.query_params.get("worker_id")
    if value is None:
        value = request.query_params.get("worker_id")
    if not isinstance(value, str) or value.count(":") < 2 or len(value) > 300:
        raise UserError(f"'worker_id' must be the worker's id (host:pid:token), not {json.dumps(value)}.")
    return value


def _held_run(model_id: str, worker: str, statuses: tuple[str, ...] = store.TRAINING_STATUSES) -> dict:
    """The run's row when ``worker`` holds it; WrongStateError (409) with a sentence otherwise."""
    row = store.get_model(model_id)
    if row["worker"] != worker or row["status"] not in statuses:
        holder = f"held by the worker on {lifecycle.worker_host(row['worker'])}" if row["worker"] else "not claimed"
        raise store.WrongStateError(f"Model {model_id!r} is {row['status']} and {holder}, not by this worker: "
                                    "nothing was registered.")
    return row


def _held_job(job_id: str, worker: str) -> dict:
    row = store.get_inference_job(job_id)
    if row["worker"] != worker or row["status"] not in ("running", "cancelled") or row["finished_at"]:
        raise store.WrongStateError(f"Inference job {job_id!r} is {row['status']} and not run by this worker: "
                                    "nothing was registered.")
    return row


_NUMBERS = {int: Field(int), float: Field(float)}  # a worker's counts and scores: typed, finite


def _number(body: dict, key: str, kind: type = int, optional: bool = True) -> Any:
    value = body.get(key)
    if value is None and optional:
        return None
    return _NUMBERS[kind].check(value, f"'{key}'", json.dumps)


async def _read_upload(request: Request) -> bytes:
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


# --------------------------------------------------------------------------- the workers

def workers_list(request: Request, body: None) -> tuple[int, dict]:
    """GET /workers: every worker that reported, newest heartbeat first, with ``alive``."""
    rows = store.list_workers()
    for row in rows:
        row["alive"] = row["age_s"] is not None and row["age_s"] <= store.WORKER_FRESH_S
        row["queues"] = [q for q in (row.get("queues") or "").split(",") if q]
    return 200, {"workers": rows, "queues": jobs.queue_names() if jobs.redis_url() else []}


def hello(request: Request, body: None) -> tuple[int, dict]:
    """GET /workers/hello: what a worker needs before it can take jobs."""
    url = jobs.redis_url()
    if url is None:
        raise store.WrongStateError("The dashboard uses the queue file on its own machine, which workers on other "
                                    "machines cannot reach: start it with ML_MANAGER_QUEUE=redis://host:6379/0 "
                                    "(see the README's Several machines).")
    return 200, {"queue": queue_without_password(url), "queue_password": bool(urlsplit(url).password),
                 "queues": jobs.queue_names(), "stale_after_s": lifecycle.stale_after_s(), "beat_s": BEAT_S,
                 "max_upload_bytes": max_upload_bytes()}


def queue_without_password(url: str) -> str:
    """The Redis URL without its user and password: the API token does not reveal them; a worker is given
    the password on its own machine (``ML_MANAGER_QUEUE``)."""
    parts = urlsplit(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def beat(request: Request, body: dict) -> tuple[int, dict]:
    """POST /workers/beat ``{worker_id, host, pid, device, queues, job, runs, jobs, outbox, outbox_runs}``:
    ``outbox`` is the count of reports waiting on the worker's disk, ``outbox_runs`` {model id: the worker id
    that claimed it} the runs they are about; those runs stay fresh, so the watchdog does not fail them."""
    worker = _worker_id(body, request)
    queues = body.get("queues") or []
    if not isinstance(queues, list) or not all(isinstance(q, str) for q in queues):
        raise UserError("'queues' must be a list of queue names such as [\"training\"].")
    runs = [r for r in body.get("runs") or [] if isinstance(r, str)]
    held_jobs = [j for j in body.get("jobs") or [] if isinstance(j, str)]
    text = {k: (str(body[k])[:200] if body.get(k) is not None else None) for k in ("host", "device", "job")}
    store.beat_worker(worker, host=text["host"] or lifecycle.worker_host(worker), pid=_number(body, "pid"),
                      device=text["device"], queues=",".join(queues), job=text["job"], kind="remote")
    mine_runs = [r for r in runs if _holds(store.get_model, r, worker)]
    waiting = body.get("outbox_runs") if _number(body, "outbox") else None
    if isinstance(waiting, dict):  # a run that ended (or a worker started again) while the dashboard was away
        mine_runs += [r for r, w in waiting.items() if isinstance(r, str) and isinstance(w, str)
                      and _holds(store.get_model, r, w)]
    mine_jobs = [j for j in held_jobs if _holds(store.get_inference_job, j, worker)]
    store.beat_active(mine_runs, mine_jobs)
    return 200, {"ok": True}


def _holds(get: Callable[[str], dict], key: str, worker: str) -> bool:
    try:
        return get(key)["worker"] == worker
    except UserError:  # the run or job is gone
        return False


# --------------------------------------------------------------------------- trainings

def training_claim(request: Request, body: dict) -> tuple[int, dict]:
    """POST /workers/trainings/{id}/claim ``{worker_id, resume}``: ``claimed`` true (with ``config``,
    ``plan``, ``datasets`` [{sha256, bytes, name}, …] (every data set the run trains on, in order; ``dataset``
    is the first), ``resume``), false (no free slot: ask again), or null (not queued)."""
    from engine.training.data import load_dataset

    model_id, worker = request.path_params["model_id"], _worker_id(body, request)
    claimed = lifecycle.claim_training(model_id, worker)
    if not claimed:
        return 200, {"claimed": claimed}
    row = store.get_model(model_id)
    try:
        sets = []
        for folder in map(Path, store.model_datasets(row)):
            if not folder.is_dir():
                raise UserError(f"The data set folder {folder} is no longer on the dashboard's machine: register the "
                                "data set again and start a new run.")
            digest, archive = folder_archive(folder)
            # the set's name as the dashboard knows it: the worker trains on it under its content hash
            sets.append({"sha256": digest, "bytes": archive.stat().st_size, "name": load_dataset(folder).name})
        resume = bool(body.get("resume"))
        if resume and not (paths.checkpoints_dir(model_id) / "last.pt").is_file():
            raise UserError(f"Model {model_id!r} has no last.pt on the dashboard to continue from: start it again "
                            "without resume.")
    except (UserError, OSError) as exc:
        lifecycle.fail_training(model_id, str(exc))
        raise
    return 200, {"claimed": True, "name": row["name"], "config": json.loads(row["config"]),
                 "plan": json.loads(row["plan"]) if row.get("plan") else None, "resume": resume,
                 "dataset": sets[0], "datasets": sets}


def training_dataset(request: Request, body: None) -> Path:
    """GET /workers/trainings/{id}/dataset[?index=N]: the run's Nth data set (default the first) as a zip."""
    row = _held_run(request.path_params["model_id"], _worker_id(None, request))
    folders = store.model_datasets(row)
    index = request.query_params.get("index", "0")
    if not index.isdigit() or int(index) >= len(folders):
        raise UserError(f"?index= takes a number from 0 to {len(folders) - 1}: the run has {len(folders)} data "
                        f"set(s), not {index!r}.")
    return folder_archive(Path(folders[int(index)]))[1]


def training_last(request: Request, body: None) -> Path:
    model_id = request.path_params["model_id"]
    _held_run(model_id, _worker_id(None, request))
    last = paths.checkpoints_dir(model_id) / "last.pt"
    if not last.is_file():
        raise store.WrongStateError(f"Model {model_id!r} has no last.pt to continue from.")
    return last


def training_state(request: Request, body: None) -> tuple[int, dict]:
    """GET /workers/trainings/{id}/status: ``{status}``; ``stopping`` (or anything but running) means stop."""
    return 200, {"status": store.model_status(request.path_params["model_id"])}


_recorders: dict[tuple[str, str], lifecycle.ProgressRecorder] = {}
_recorders_lock = threading.Lock()


def _recorder(model_id: str, worker: str, row: dict) -> lifecycle.ProgressRecorder:
    with _recorders_lock:
        key = (model_id, worker)
        if key not in _recorders:
            budget = float(json.loads(row["config"]).get("max_minutes") or 0.0)
            _recorders[key] = lifecycle.ProgressRecorder(model_id, None, max_minutes=budget)
        return _recorders[key]


def training_events(request: Request, body: dict) -> tuple[int, dict]:
    """POST /workers/trainings/{id}/events ``{worker_id, events: [...]}``: recorded as a local worker's
    (``lifecycle.ProgressRecorder``); answers ``{status}`` so the worker sees a stop request at once."""
    model_id, worker = request.path_params["model_id"], _worker_id(body, request)
    row = _held_run(model_id, worker)
    events = body.get("events")
    if not isinstance(events, list) or not all(isinstance(e, dict) and e.get("type") in EVENT_TYPES for e in events):
        raise UserError(f"'events' must be a list of training events of the types {', '.join(EVENT_TYPES)}.")
    recorder = _recorder(model_id, worker, row)
    for event in events:
        if event["type"] == "plan":
            record_worker_plan(model_id, row, event)
        else:
            recorder(event)
    store.beat_active([model_id], [])
    return 200, {"status": store.model_status(model_id)}


def record_worker_plan(model_id: str, row: dict, event: dict) -> None:
    """A worker on another kind of device planned the run again (``planner.replan_for_device``): its config
    and plan replace the registry's, once both are valid and only the planned fields (and the device) changed.

    Raises:
        UserError: the config or plan is not valid, or a field the user chose changed.
    """
    from engine.training.config import TrainingConfig
    from engine.training.planner import PLANNED_FIELDS, Plan

    if not isinstance(event.get("config"), dict) or not isinstance(event.get("plan"), dict):
        raise UserError("A plan event must carry the planned 'config' and 'plan' as JSON objects.")
    config = TrainingConfig.from_dict(event["config"]).to_dict()
    plan = Plan.from_dict(event["plan"]).to_dict()
    stored = TrainingConfig.from_dict(json.loads(row["config"])).to_dict()
    changed = sorted(k for k in config if config[k] != stored.get(k) and k not in (*PLANNED_FIELDS, "device"))
    if changed:
        raise UserError(f"A worker's plan may change only the planned fields, not {', '.join(changed)}.")
    store.update_model(model_id, config=config, plan=plan)


def check_checkpoint(path: Path, model_id: str) -> dict:
    """Load an uploaded checkpoint the way every checkpoint is loaded (weights only, this format version);
    returns it. Raises UploadRefused (400) with the loader's sentence."""
    from engine.training.checkpoint import load_checkpoint_dict

    try:
        return load_checkpoint_dict(path)
    except UserError as exc:
        raise UploadRefused(400, f"The checkpoint uploaded for model {model_id} was refused: {exc} Nothing was "
                                 "registered.") from None


async def training_checkpoint(request: Request) -> dict:
    """PUT /workers/trainings/{id}/checkpoints/{name}?worker_id=&epoch=&metric= with the file as the body."""
    model_id, name = request.path_params["model_id"], request.path_params["name"]
    worker = _worker_id(None, request)
    if name not in CHECKPOINT_NAMES and not EPOCH_CHECKPOINT.fullmatch(name):
        raise UserError(f"Workers upload {', '.join(CHECKPOINT_NAMES)} and epoch_XXX.pt, not {name!r}.")
    await run_in_threadpool(_held_run, model_id, worker)
    data = await _read_upload(request)
    return await run_in_threadpool(_register_checkpoint, model_id, name, worker, data, request.query_params)


def _register_checkpoint(model_id: str, name: str, worker: str, data: bytes, query) -> dict:
    folder = paths.checkpoints_dir(model_id)
    tmp = folder / f".{name}.{secrets.token_hex(4)}.upload.tmp"
    try:
        tmp.write_bytes(data)
        ckpt = check_checkpoint(tmp, model_id)
        _held_run(model_id, worker)  # still its run after the load, which takes a moment
        os.replace(tmp, folder / name)
    finally:
        tmp.unlink(missing_ok=True)
    metric = query.get("metric")
    kind = name[:-3] if name in CHECKPOINT_NAMES else "epoch"
    store.add_checkpoint(model_id, int(ckpt.get("epoch") or 0) or None, folder / name, kind,
                         float(metric) if metric not in (None, "", "null") else None)
    if kind == "epoch":  # retention, as for a run on the dashboard's machine: the newest N epoch files stay
        from engine.housekeeping import prune_checkpoints

        prune_checkpoints(model_id)
    return {"name": name, "bytes": len(data), "epoch": ckpt.get("epoch")}


def training_finish(request: Request, body: dict) -> tuple[int, dict]:
    """POST /workers/trainings/{id}/finish ``{worker_id, error}`` or ``{worker_id, epochs_run, best_epoch,
    best_metric, has_best, stop_reason, stop_cause, recommended_postprocess}``."""
    model_id, worker = request.path_params["model_id"], _worker_id(body, request)
    _held_run(model_id, worker)
    with _recorders_lock:
        _recorders.pop((model_id, worker), None)
    if body.get("error"):
        lifecycle.fail_training(model_id, str(body["error"])[:2000])
    else:
        stop_reason = body.get("stop_reason")
        if stop_reason not in store.STOP_REASONS:
            raise UserError(f"'stop_reason' must be one of {', '.join(store.STOP_REASONS)}.")
        recommended = body.get("recommended_postprocess")
        lifecycle.finish_training(model_id, lifecycle.training_outcome(
            _number(body, "epochs_run") or 0, _number(body, "best_epoch"), _number(body, "best_metric", float),
            bool(body.get("has_best")) and (paths.checkpoints_dir(model_id) / "best.pt").is_file(), stop_reason,
            body.get("stop_cause") if body.get("stop_cause") in ("user", "shutdown") else None,
            recommended if isinstance(recommended, dict) else None))
    return 200, {"status": store.model_status(model_id)}


# --------------------------------------------------------------------------- batch inference

def job_claim(request: Request, body: dict) -> tuple[int, dict]:
    """POST /workers/inference/{id}/claim ``{worker_id}``: ``claimed`` false, or the job with its
    checkpoint (``baseline`` or {sha256, name}) and its input zip ({sha256, name})."""
    job_id, worker = request.path_params["job_id"], _worker_id(body, request)
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
    row = _held_job(request.path_params["job_id"], _worker_id(None, request))
    path = checkpoint_file(row["checkpoint_path"])
    if path is None:
        raise UserError("This job uses the classical vesselness filter: it has no checkpoint to download.")
    return path


def job_input(request: Request, body: None) -> Path:
    return _job_input(_held_job(request.path_params["job_id"], _worker_id(None, request)))[1]


def job_progress(request: Request, body: dict) -> tuple[int, dict]:
    """POST /workers/inference/{id}/progress ``{worker_id, n_total, n_done, n_failed, progress}``: answers
    ``{status}``; ``cancelled`` means stop before the next image."""
    job_id, worker = request.path_params["job_id"], _worker_id(body, request)
    _held_job(job_id, worker)
    counts = {k: _number(body, k) for k in ("n_total", "n_done", "n_failed")}
    progress = _number(body, "progress", float)
    store.update_inference_job(job_id, heartbeat_at=store.utc_now(), progress=progress,
                               **{k: v for k, v in counts.items() if v is not None})
    return 200, {"status": store.get_inference_job(job_id)["status"]}


async def job_results(request: Request) -> dict:
    """PUT /workers/inference/{id}/results?worker_id= with results.zip as the body."""
    job_id, worker = request.path_params["job_id"], _worker_id(None, request)
    await run_in_threadpool(_held_job, job_id, worker)
    data = await _read_upload(request)
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
    job_id, worker = request.path_params["job_id"], _worker_id(body, request)
    row = _held_job(job_id, worker)
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


# --------------------------------------------------------------------------- routes

def worker_routes(guard: Any) -> list[Route]:
    """The routes above, each behind the API's guard (token, origin, JSON bodies); starts the watchdog
    when the dashboard uses the Redis queue.

    Args:
        guard: ``engine.api``'s guard: ``check(request)`` refuses a request, ``wrap(route, method)`` makes
            a JSON endpoint of a route function.
    """
    json_routes = [("GET", "/workers", workers_list), ("GET", "/workers/hello", hello),
                   ("POST", "/workers/beat", beat),
                   ("POST", "/workers/trainings/{model_id}/claim", training_claim),
                   ("GET", "/workers/trainings/{model_id}/status", training_state),
                   ("POST", "/workers/trainings/{model_id}/events", training_events),
                   ("POST", "/workers/trainings/{model_id}/finish", training_finish),
                   ("POST", "/workers/inference/{job_id}/claim", job_claim),
                   ("POST", "/workers/inference/{job_id}/progress", job_progress),
                   ("POST", "/workers/inference/{job_id}/finish", job_finish)]
    files = [("/workers/trainings/{model_id}/dataset", training_dataset),
             ("/workers/trainings/{model_id}/last.pt", training_last),
             ("/workers/inference/{job_id}/checkpoint", job_checkpoint),
             ("/workers/inference/{job_id}/input", job_input)]
    uploads = [("/workers/trainings/{model_id}/checkpoints/{name}", training_checkpoint),
               ("/workers/inference/{job_id}/results", job_results)]
    routes = [Route(PREFIX + path, guard.wrap(func, method), methods=[method]) for method, path, func in json_routes]
    routes += [Route(PREFIX + path, _file_endpoint(guard, func), methods=["GET"]) for path, func in files]
    routes += [Route(PREFIX + path, _upload_endpoint(guard, func), methods=["PUT"]) for path, func in uploads]
    if jobs.redis_url() is not None:
        start_watchdog()
    return routes


def _error(exc: Exception) -> Response:
    if isinstance(exc, (store.UnknownModelError, store.UnknownJobError)):
        status = 404
    elif isinstance(exc, store.WrongStateError):
        status = 409
    else:
        status = getattr(exc, "status", 400)
    error = user_error(exc)
    message = str(error) if error is not None else f"{getattr(exc, 'strerror', None) or exc}"
    return Response(json.dumps({"error": message}), status_code=status, media_type="application/json",
                    headers={"Cache-Control": "no-store", **({"WWW-Authenticate": "Bearer"} if status == 401 else {})})


def _file_endpoint(guard: Any, route: Callable[[Request, None], Path]):
    async def endpoint(request: Request) -> Response:
        try:
            guard.check(request)
            path = await run_in_threadpool(route, request, None)
        except Exception as exc:  # noqa: BLE001 - a user's error is a sentence, anything else a logged 500
            if user_error(exc) is None and not isinstance(exc, OSError):
                log.exception("worker download %s failed", request.url.path)
                return _error(UploadRefused(500, "The server failed on this request; the details are in its log."))
            return _error(exc)
        return FileResponse(path, media_type="application/octet-stream", headers={"Cache-Control": "no-store"})

    return endpoint


def _upload_endpoint(guard: Any, route: Callable[[Request], Any]):
    async def endpoint(request: Request) -> Response:
        try:
            guard.check(request)
            data = await route(request)
        except Exception as exc:  # noqa: BLE001 - a user's error is a sentence, anything else a logged 500
            if user_error(exc) is None and not isinstance(exc, OSError):
                log.exception("worker upload %s failed", request.url.path)
                return _error(UploadRefused(500, "The server failed on this request; the details are in its log."))
            return _error(exc)
        return Response(json.dumps(data), status_code=200, media_type="application/json",
                        headers={"Cache-Control": "no-store"})

    return endpoint


# --------------------------------------------------------------------------- the watchdog (Redis queue only)

_watchdog: list[threading.Thread] = []


def start_watchdog() -> None:
    """Start (once per process) the thread that fails stale runs and queues lost jobs again."""
    if _watchdog and _watchdog[0].is_alive():
        return
    thread = threading.Thread(target=_watch_forever, name="ml-manager-watchdog", daemon=True)
    _watchdog[:] = [thread]
    thread.start()


def _watch_forever() -> None:
    missing: dict[str, float] = {}
    last_lost_check = 0.0
    # a dashboard that was down: every worker gets a whole stale period to beat (a restarted one imports torch
    # first, which takes seconds on a busy machine) before any run is judged by its old heartbeat
    time.sleep(max(START_GRACE_S, lifecycle.stale_after_s()))
    while True:
        time.sleep(WATCH_EVERY_S)
        try:
            failed = set(lifecycle.recover_stale())
            with _recorders_lock:  # the progress of runs that will not report again
                for key in [k for k in _recorders if k[0] in failed]:
                    _recorders.pop(key)
            if time.monotonic() - last_lost_check >= LOST_CHECK_S:
                last_lost_check = time.monotonic()
                requeue_lost(missing)
        except Exception:  # noqa: BLE001 - Redis or the registry down for a moment: try again next time
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
        name = row["queue"] or (jobs.queue_names()[0] if row["kind"] == "model" else jobs.queue_names()[1])
        if name not in present:
            q = jobs.queue_for(name)
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
        task = jobs.train_model_task.s(key, None, row.get("resume_from"))
    else:
        task = jobs.run_inference_task.s(key)
    if not store.replace_task_id(kind, key, old_task_id, task.id):
        return False
    jobs.queue_for(queue).enqueue(task)
    return True
