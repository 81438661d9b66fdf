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

With the Redis queue the dashboard also watches over the workers (``engine.jobs.watchdog``, started by
:func:`worker_routes`): a run or job whose worker stopped beating is failed with "the worker on HOST stopped
(...)", and a queued job whose queue entry vanished (Redis restarted without persistence) is queued again.

The routes themselves live by concern: ``engine.api_worker_training`` (runs), ``engine.api_worker_jobs``
(batch jobs), with the checks every one makes in ``engine.api_worker_requests`` and the zips they send in
``engine.api_archives``.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from engine import api_worker_jobs as job_routes
from engine import api_worker_training as training_routes
from engine import jobs
from engine.api_worker_requests import UploadRefused, asking_worker, body_number, max_upload_bytes
from engine.errors import UserError, user_error
from engine.jobs import lifecycle
from engine.jobs.liveness import BEAT_S
from engine.jobs.watchdog import start_watchdog
from storage import db as store

log = logging.getLogger("ml_manager.api")

PREFIX = "/api/v1"


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
    worker = asking_worker(body, request)
    queues = body.get("queues") or []
    if not isinstance(queues, list) or not all(isinstance(q, str) for q in queues):
        raise UserError("'queues' must be a list of queue names such as [\"training\"].")
    runs = [r for r in body.get("runs") or [] if isinstance(r, str)]
    held_jobs = [j for j in body.get("jobs") or [] if isinstance(j, str)]
    text = {k: (str(body[k])[:200] if body.get(k) is not None else None) for k in ("host", "device", "job")}
    store.beat_worker(worker, host=text["host"] or lifecycle.worker_host(worker), pid=body_number(body, "pid"),
                      device=text["device"], queues=",".join(queues), job=text["job"], kind="remote")
    mine_runs = [r for r in runs if _holds(store.get_model, r, worker)]
    waiting = body.get("outbox_runs") if body_number(body, "outbox") else None
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


# --------------------------------------------------------------------------- routes

def worker_routes(guard: Any) -> list[Route]:
    """Every route for workers, each behind the API's guard (token, origin, JSON bodies); starts the watchdog
    (``engine.jobs.watchdog``) when the dashboard uses the Redis queue.

    Args:
        guard: ``engine.api``'s guard: ``check(request)`` refuses a request, ``wrap(route, method)`` makes
            a JSON endpoint of a route function.
    """
    t, j = training_routes, job_routes
    json_routes = [("GET", "/workers", workers_list), ("GET", "/workers/hello", hello),
                   ("POST", "/workers/beat", beat),
                   ("POST", "/workers/trainings/{model_id}/claim", t.training_claim),
                   ("GET", "/workers/trainings/{model_id}/status", t.training_state),
                   ("POST", "/workers/trainings/{model_id}/events", t.training_events),
                   ("POST", "/workers/trainings/{model_id}/finish", t.training_finish),
                   ("POST", "/workers/inference/{job_id}/claim", j.job_claim),
                   ("POST", "/workers/inference/{job_id}/progress", j.job_progress),
                   ("POST", "/workers/inference/{job_id}/finish", j.job_finish)]
    files = [("/workers/trainings/{model_id}/dataset", t.training_dataset),
             ("/workers/trainings/{model_id}/last.pt", t.training_last),
             ("/workers/inference/{job_id}/checkpoint", j.job_checkpoint),
             ("/workers/inference/{job_id}/input", j.job_input)]
    uploads = [("/workers/trainings/{model_id}/checkpoints/{name}", t.training_checkpoint),
               ("/workers/inference/{job_id}/results", j.job_results)]
    routes = [Route(PREFIX + path, guard.wrap(func, method), methods=[method]) for method, path, func in json_routes]
    routes += [Route(PREFIX + path, _file_endpoint(guard, func), methods=["GET"]) for path, func in files]
    routes += [Route(PREFIX + path, _upload_endpoint(guard, func), methods=["PUT"]) for path, func in uploads]
    if jobs.redis_url() is not None:
        start_watchdog(on_failed=t.forget_progress)
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
    """A download: ``route`` (run in a worker thread) names the file to send."""
    async def answer(request: Request) -> Response:
        path = await run_in_threadpool(route, request, None)
        return FileResponse(path, media_type="application/octet-stream", headers={"Cache-Control": "no-store"})

    return _streaming(guard, answer, "download")


def _upload_endpoint(guard: Any, route: Callable[[Request], Any]):
    """An upload: ``route`` reads the body and answers what it registered, as JSON."""
    async def answer(request: Request) -> Response:
        data = await route(request)
        return Response(json.dumps(data), status_code=200, media_type="application/json",
                        headers={"Cache-Control": "no-store"})

    return _streaming(guard, answer, "upload")


def _streaming(guard: Any, answer: Callable[[Request], Any], what: str):
    async def endpoint(request: Request) -> Response:
        try:
            guard.check(request)
            return await answer(request)
        except Exception as exc:  # noqa: BLE001 - the HTTP handler's last resort: a user's error is a sentence,
            # anything else (a bug) a logged 500, never a traceback sent to the worker
            if user_error(exc) is None and not isinstance(exc, OSError):
                log.exception("worker %s %s failed", what, request.url.path)
                return _error(UploadRefused(500, "The server failed on this request; the details are in its log."))
            return _error(exc)

    return endpoint
