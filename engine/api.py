"""The HTTP API: JSON routes under ``/api/v1/``, thin wrappers over ``engine.jobs`` and ``storage.db``.

``server.py`` serves them next to the dashboard, on the dashboard's own host and port
(``st.App("app.py", routes=api_routes())``, started by ``make run``). Every route answers JSON, except
``GET /inference/results/{job_id}``, which answers the job's results zip; every error a caller can cause is ``{"error": "<sentence>"}`` with the sentence the CLI prints:

====  ==================================================================================
400   bad input: malformed JSON, a wrong type, an unknown field, an invalid setting
401   no ``Authorization: Bearer <token>`` header, or a wrong token
403   a foreign ``Origin`` (another web page in the user's browser), or a path outside the allowed folders
404   unknown model, job or route
405   a known route called with the wrong method
409   the run or job is in the wrong state (starting a running model, stopping a finished one)
413   a body over 1 MB
415   a POST whose body is not ``application/json``
503   the data home cannot be used (the sentence says what to change)
====  ==================================================================================

Security: a web page open in the user's browser can send requests to 127.0.0.1, so every request
needs the bearer token from ``<data home>/api_token`` (made on first start, mode 0600), which a page
cannot read; requests that carry an ``Origin`` other than the dashboard's own, or a
``Sec-Fetch-Site`` of another site, are refused; no route sends CORS headers; POST bodies must be
``application/json``, which a page cannot send to another origin without the preflight that is
refused. Paths in requests (data sets, inputs, checkpoints) must resolve, links followed, inside the
data home or a folder listed in ``ML_MANAGER_API_FOLDERS`` (separated by ``os.pathsep``).
"""
from __future__ import annotations

import hmac
import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any, Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Match, Route

from engine import housekeeping, jobs
from engine.api_workers import worker_routes
from engine.jobs.ledger import json_safe
from engine.training.config import config_with_changes
from engine.inference.predictor import CLASSICAL, SHIPPED, Predictor
from engine.pretrained import PRETRAINED_ID, pretrained_available, pretrained_entry
from storage import db as store
from storage import paths
from engine.errors import UserError, user_error
from engine.fields import Field

log = logging.getLogger("ml_manager.api")

PREFIX = "/api/v1"
# the original system's paths, answered by the same routes (an old script needs only the token); each with
# and without its trailing slash
LEGACY_PREFIX = "/ml_manager"
LEGACY_PATHS = ("/training/start", "/training/stop", "/training/status/{model_id}", "/inference/status/{job_id}")
TOKEN_FILE = "api_token"
FOLDERS_ENV = "ML_MANAGER_API_FOLDERS"
MAX_BODY_BYTES = 1_000_000  # requests are small JSON objects; anything bigger is a mistake
_JSON_COLUMNS = ("config", "recommended_postprocess", "postprocess", "datasets")
_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


class ApiError(UserError):
    """A request the API refuses, with the HTTP status to answer and a sentence for the caller."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------------- token and allowed folders

def token_path() -> Path:
    """``<data home>/api_token``: the file that holds the API's bearer token."""
    return paths.data_home() / TOKEN_FILE


def api_token() -> str:
    """The API's bearer token, created on first use (random, 43 characters, file mode 0600).

    Returns:
        The token text, without the trailing newline.
    Raises:
        StorageError: the data home cannot be written, or the token file is empty.
    """
    path = token_path()
    if not path.exists():
        # Write a private temp file, then link it into place: two processes starting at once agree on
        # one token, and no reader ever sees a half-written file.
        tmp = path.with_name(f".{TOKEN_FILE}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(32) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
        except OSError as exc:
            raise paths.not_writable(path.parent, exc) from None
        finally:
            tmp.unlink(missing_ok=True)
    if path.stat().st_mode & 0o077:  # a copied or hand-made file: make it private again
        path.chmod(0o600)
    token = path.read_text().strip()
    if len(token) < 16:
        raise paths.StorageError(f"The API token file {path} holds no usable token: delete it and restart "
                                 "`make run`, which makes a new one.")
    return token


def allowed_folders() -> list[Path]:
    """The folders whose files requests may name: the data home, then those in ``ML_MANAGER_API_FOLDERS``."""
    extra = os.environ.get(FOLDERS_ENV, "")
    return [paths.data_home(), *(Path(p).expanduser().resolve() for p in extra.split(os.pathsep) if p.strip())]


def allowed_path(value: Any, what: str) -> Path:
    """Resolve a path from a request (relative ones from the data home), links followed.

    Args:
        value: the path as the caller sent it.
        what: the request field, for the error sentence.
    Returns:
        The resolved absolute path (it may not exist; the engine says so).
    Raises:
        ApiError: 400 when ``value`` is not a non-empty text, 403 when it resolves outside every allowed folder.
    """
    text = _text_value(value, what, "a path such as 'datasets/synthetic'")
    if "\x00" in text:
        raise ApiError(400, f"'{what}' contains a NUL character: send a plain path.")
    raw = Path(text).expanduser()
    path = (raw if raw.is_absolute() else paths.data_home() / raw).resolve()
    folders = allowed_folders()
    if not any(paths.is_inside(path, folder) for folder in folders):
        raise ApiError(403, f"The {what} {text!r} is outside the folders the API may read "
                            f"({', '.join(str(f) for f in folders)}): copy it into the data home, or add its folder "
                            f"to {FOLDERS_ENV} (separated by '{os.pathsep}') and restart the dashboard.")
    return path


def allowed_datasets(value: Any) -> Path | list[Path]:
    """The data set folder(s) of a training request: one path, or a list of paths (each as ``allowed_path``).

    Raises:
        ApiError: 400 when ``value`` is neither a non-empty text nor a non-empty list of them, 403 as ``allowed_path``.
    """
    if not isinstance(value, list):
        return allowed_path(value, "dataset")
    if not value:
        raise ApiError(400, "'dataset' is an empty list: give one data set folder, or a list of them such as "
                            "[\"datasets/drive\", \"datasets/chase\"].")
    return [allowed_path(item, "dataset") for item in value]


# --------------------------------------------------------------------------- request fields

def _text_value(value: Any, key: str, example: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ApiError(400, f"'{key}' must be a non-empty text, such as {example}; got {json.dumps(value)}.")
    return value.strip()


def _fields(body: dict, required: set[str], optional: set[str] = frozenset()) -> None:
    """Refuse unknown and missing fields, naming them and the allowed ones."""
    unknown = sorted(set(body) - required - set(optional))
    if unknown:
        known = ", ".join(sorted(required | set(optional)))
        raise ApiError(400, f"Unknown field(s) {', '.join(unknown)}: this request takes {known}.")
    missing = sorted(required - set(body))
    if missing:
        raise ApiError(400, f"Missing field(s) {', '.join(missing)}: this request needs {', '.join(sorted(required))}.")


def _text(body: dict, key: str, example: str = "an id from GET /api/v1/models") -> str:
    return _text_value(body.get(key), key, example)


def _model_id(body: dict, key: str = "model_id") -> str:
    """A model id from the body: text, or a whole number (older clients send ids as numbers)."""
    value = body.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return _text_value(value, key, "an id from GET /api/v1/models")


FLAG = Field(bool, False)
SETTINGS = Field(dict, what='a JSON object of settings such as {"epochs": 20}')


def _flag(body: dict, key: str) -> bool:
    return FLAG.check(body.get(key, FLAG.default), f"'{key}'", json.dumps)


def _object(body: dict, key: str) -> dict:
    return SETTINGS.check(body.get(key), f"'{key}'", json.dumps)


def _query_flag(request: Request, key: str) -> bool:
    value = request.query_params.get(key, "0").strip().lower()
    if value not in ("1", "true", "yes", "0", "false", "no", ""):
        raise ApiError(400, f"?{key}= takes 1 or 0, not {value!r}.")
    return value in ("1", "true", "yes")


def _decoded(row: dict) -> dict:
    """A registry row with its JSON text columns as JSON values."""
    return {k: (json.loads(v) if k in _JSON_COLUMNS and isinstance(v, str) and v else v) for k, v in row.items()}


# --------------------------------------------------------------------------- routes (run in a worker thread)

def health(request: Request, body: None) -> tuple[int, dict]:
    """GET /health: the dashboard answers; the worker's last heartbeat; how many tasks wait in the queue."""
    jobs.recover_if_no_worker()  # with no worker up, an abandoned run would otherwise read "running" forever
    beat = store.worker_heartbeat()
    age = store.age_seconds(beat.isoformat()) if beat else None
    counts = {status: len(store.list_models(status=status)) for status in store.ACTIVE_STATUSES}
    return 200, {"dashboard": "up", "worker": "up" if age is not None and age < store.WORKER_FRESH_S else "down",
                 "worker_heartbeat_at": beat.isoformat() if beat else None, "worker_heartbeat_age_s": age,
                 "queue_length": jobs.queue_length(), "trainings": counts}


def training_start(request: Request, body: dict) -> tuple[int, dict]:
    """POST /training/start: ``{model_id[, resume, training_config]}`` (re)starts or continues a model;
    ``{name, dataset[, training_config, plan]}`` creates one and queues it (``dataset``: a folder, or a list of
    folders that the run trains on together), planned for this machine
    (``engine.training.planner``; the keys of ``training_config`` are kept) unless ``"plan": false``. A new
    model's answer carries ``plan`` (``Plan.to_dict()``, or None) and ``plan_text`` (a sentence, or None)."""
    if "model_id" in body:
        _fields(body, {"model_id"}, {"resume", "training_config", "queue"})
        model_id, resume = _model_id(body), _flag(body, "resume")
        row = store.get_model(model_id)
        if row["status"] == "completed" and not resume:
            raise store.WrongStateError(f"Model {model_id!r} has already completed: send \"resume\": true to continue "
                                        "it from its last.pt, or create a new model to train again.")
        # the stored config (the plan's choices included) is the base; only the fields sent change
        changes = _object(body, "training_config") if "training_config" in body else {}
        config = config_with_changes(json.loads(row["config"]), changes)
        task_id = jobs.start_training(model_id, config, resume=resume, queue=body.get("queue"))
    else:
        _fields(body, {"name", "dataset"}, {"training_config", "plan", "queue"})
        name = _text(body, "name", "'unet-dice-v1'")
        folder = allowed_datasets(body["dataset"])
        config = _object(body, "training_config") if "training_config" in body else {}
        plan = None
        if "plan" not in body or _flag(body, "plan"):
            from engine.training.planner import plan_for_folder
            from engine.training.config import TrainingConfig

            planned, plan = plan_for_folder(TrainingConfig.from_dict(config), set(config), folder)
            config = planned.to_dict()
        model_id = jobs.submit_training(name, folder, config, plan=plan.to_dict() if plan else None,
                                        queue=body.get("queue"))
        task_id = store.get_model(model_id)["task_id"]
        return 202, {"model_id": model_id, "task_id": task_id, "status": "queued",
                     "plan": plan.to_dict() if plan else None, "plan_text": plan.explain() if plan else None}
    return 202, {"model_id": model_id, "task_id": task_id, "status": "queued"}


def training_stop(request: Request, body: dict) -> tuple[int, dict]:
    """POST /training/stop ``{model_id}``: outcome ``stopping`` (a running run) or ``cancelled`` (a queued one)."""
    _fields(body, {"model_id"})
    model_id = _model_id(body)
    return 200, {"model_id": model_id, "outcome": jobs.stop_training(model_id)}


def training_status(request: Request, body: None) -> tuple[int, dict]:
    """GET /training/status/{model_id}[?history=1]: ``python -m engine status --json``'s object, plus the
    per-epoch metrics under ``history`` when asked."""
    model_id = request.path_params["model_id"]
    history = _query_flag(request, "history")
    jobs.recover_if_no_worker()
    status = jobs.training_status(model_id)
    if history:
        status["history"] = store.model_metrics(model_id)
    return 200, status


def models(request: Request, body: None) -> tuple[int, dict]:
    """GET /models[?status=…]: every model's row, newest first."""
    status = request.query_params.get("status")
    if status is not None and status not in store.STATUSES:
        raise ApiError(400, f"?status= takes one of {', '.join(store.STATUSES)}, not {status!r}.")
    jobs.recover_if_no_worker()
    return 200, {"models": [_decoded(row) for row in store.list_models(status=status)]}


def model_checkpoints(request: Request, body: None) -> tuple[int, dict]:
    """GET /models/{model_id}/checkpoints: that model's checkpoint files (best, last, then epochs)."""
    return 200, {"checkpoints": store.model_checkpoints(request.path_params["model_id"])}


def checkpoints(request: Request, body: None) -> tuple[int, dict]:
    """GET /checkpoints: the shipped pretrained model, then the checkpoints of every completed model."""
    shipped = pretrained_entry()
    return 200, {"checkpoints": ([shipped] if shipped else []) + store.all_checkpoints()}


def inference_start(request: Request, body: dict) -> tuple[int, dict]:
    """POST /inference/start: ``{model_id[, which: best|last] | checkpoint, input[, postprocess][, scale]}``.

    ``model_id`` may be ``"baseline"`` (the classical vesselness filter) or ``"pretrained"`` (the shipped
    model); ``postprocess`` is an object of
    post-processing settings, ``"recommended"`` (the model's calibrated settings) or absent (the defaults).
    """
    _fields(body, {"input"}, {"checkpoint", "model_id", "which", "postprocess", "scale", "queue"})
    if ("checkpoint" in body) == ("model_id" in body):
        raise ApiError(400, f"Give either 'model_id' (with 'which': 'best' or 'last', or the id '{CLASSICAL}') or "
                            "'checkpoint' (the path of a .pt file), not both or neither.")
    model_id = None
    if "checkpoint" in body:
        if "which" in body:
            raise ApiError(400, "'which' chooses a checkpoint of 'model_id'; with 'checkpoint' leave it out.")
        checkpoint = str(allowed_path(body["checkpoint"], "checkpoint"))
    else:
        model_id = _model_id(body)
        if model_id == PRETRAINED_ID:
            checkpoint, model_id = SHIPPED, None
            if body.get("postprocess") == "recommended":  # a missing file is refused below, with its sentence
                recommended = Predictor(SHIPPED).recommended_settings() if pretrained_available() else None
                body = {**body, "postprocess": recommended or {}}
        elif model_id == CLASSICAL:
            checkpoint = CLASSICAL
        else:
            checkpoint = _checkpoint_of(model_id, body.get("which", "best"))
    source = allowed_path(body["input"], "input")
    settings = body.get("postprocess")
    if settings == "recommended":
        settings = _recommended(model_id)
    elif settings is not None and not isinstance(settings, dict):
        raise ApiError(400, "'postprocess' must be an object of post-processing settings such as "
                            f"{{\"threshold\": 0.5}}, or \"recommended\"; got {json.dumps(settings)}.")
    job_id = jobs.start_inference(checkpoint, source, settings, model_id=model_id, scale=body.get("scale", "auto"),
                                  queue=body.get("queue"))
    return 202, {"job_id": job_id, "status": "queued"}


def _checkpoint_of(model_id: str, which: Any) -> str:
    if which not in ("best", "last"):
        raise ApiError(400, f"'which' takes \"best\" or \"last\", not {json.dumps(which)}.")
    found = [c for c in store.model_checkpoints(model_id) if c["name"] == f"{which}.pt"]
    if not found:
        raise store.WrongStateError(f"Model {model_id!r} has no {which}.pt yet: wait until an epoch has ended, "
                                    "or choose the other checkpoint.")
    return found[0]["path"]


def _recommended(model_id: str | None) -> dict:
    if model_id is None or model_id == CLASSICAL:
        raise ApiError(400, "\"recommended\" post-processing belongs to a trained model: give its 'model_id', or "
                            "send the settings as an object.")
    recommended = store.get_model(model_id)["recommended_postprocess"]
    if not recommended:
        raise store.WrongStateError(f"Model {model_id!r} has no recommended post-processing (it is made when a "
                                    "training ends with calibrate_postprocess on): send the settings as an object.")
    return json.loads(recommended)


def inference_status(request: Request, body: None) -> tuple[int, dict]:
    """GET /inference/status/{job_id}: state, counts and output files of a batch inference job."""
    return 200, jobs.inference_status(request.path_params["job_id"])


def inference_results(request: Request, body: None) -> tuple[int, Path]:
    """GET /inference/results/{job_id}: the job's results.zip (masks, probability maps, stats.csv,
    settings.json) as ``application/zip``; 409 while it is not written yet."""
    job_id = request.path_params["job_id"]
    status = jobs.inference_status(job_id)
    if status["results_zip"] is None:
        if status["status"] in store.JOB_ACTIVE_STATUSES:
            raise store.WrongStateError(f"Job {job_id!r} is {status['status']}: its results zip is written when it "
                                        "ends; ask again once GET /api/v1/inference/status says completed.")
        raise store.WrongStateError(f"Job {job_id!r} ended {status['status']} without a results zip"
                                    + (f" ({status['error']})" if status.get("error") else "") + ".")
    return 200, Path(status["results_zip"])


def inference_cancel(request: Request, body: dict) -> tuple[int, dict]:
    """POST /inference/cancel ``{job_id}``: outcome ``cancelled`` (a queued job) or ``cancelling`` (a running one)."""
    _fields(body, {"job_id"})
    job_id = _text(body, "job_id", "an id from POST /api/v1/inference/start")
    return 200, {"job_id": job_id, "outcome": jobs.cancel_inference(job_id)}


def prune(request: Request, body: dict) -> tuple[int, dict]:
    """POST /prune ``{[model_id, keep, inference_older_than, dry_run]}``: ``python -m engine prune``; answers
    ``{"removed": [{kind, owner, path, size_bytes}], "freed_bytes", "dry_run"}``."""
    _fields(body, set(), {"model_id", "keep", "inference_older_than", "dry_run"})
    model_id = _model_id(body) if "model_id" in body else None
    keep = body.get("keep")
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 0):
        raise ApiError(400, f"'keep' must be a whole number of 0 or more, not {json.dumps(keep)}.")
    days = body.get("inference_older_than")
    if days is not None and (isinstance(days, bool) or not isinstance(days, (int, float)) or days < 0):
        raise ApiError(400, f"'inference_older_than' must be a number of days of 0 or more, not {json.dumps(days)}.")
    dry_run = _flag(body, "dry_run")
    removed = housekeeping.prune(model_id, keep=keep, inference_older_than=days, dry_run=dry_run)
    return 200, {"removed": [r.to_dict() for r in removed], "freed_bytes": housekeeping.freed_bytes(removed),
                 "dry_run": dry_run}


# --------------------------------------------------------------------------- the guard every request passes

def _json_response(status: int, data: Any, headers: dict | None = None) -> Response:
    return Response(json.dumps(json_safe(data), default=str), status_code=status, media_type="application/json",
                    headers={"Cache-Control": "no-store", **(headers or {})})


def _status_of(exc: Exception) -> int:
    if isinstance(exc, ApiError):
        return exc.status
    if isinstance(exc, (store.UnknownModelError, store.UnknownJobError)):
        return 404
    if isinstance(exc, store.WrongStateError):
        return 409
    if isinstance(exc, paths.StorageError):
        return 503
    return 400  # every other user error of the engine is a sentence about the request


class _Guard:
    """Checks origin, token and body of every API request, runs the route in a thread, answers JSON."""

    def __init__(self, token: str):
        self.token = token.encode()

    def check(self, request: Request) -> None:
        origin = request.headers.get("origin")
        port = (request.scope.get("server") or (None, None))[1]
        if origin is not None and origin.rstrip("/").lower() not in (f"http://127.0.0.1:{port}",
                                                                      f"http://localhost:{port}"):
            raise ApiError(403, f"Requests from the web page {origin} are refused: call the API from a program "
                                "or script on this computer, not from a web page.")
        if request.headers.get("sec-fetch-site", "none").lower() not in ("none", "same-origin"):
            raise ApiError(403, "Requests from other web sites are refused: call the API from a program or "
                                "script on this computer.")
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise ApiError(401, f"This request has no API token: send the header 'Authorization: Bearer <token>' "
                                f"with the token from {token_path()}.")
        if not hmac.compare_digest(value.strip().encode(), self.token):
            raise ApiError(401, f"The API token is wrong: use the one in {token_path()} (it is made anew only "
                                "when that file is deleted and the dashboard restarted).")

    async def body(self, request: Request) -> dict:
        kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if kind != "application/json":
            raise ApiError(415, f"The body must be JSON with the header 'Content-Type: application/json' "
                                f"(got {kind or 'none'}).")
        length = request.headers.get("content-length", "0")
        if length.isdigit() and int(length) > MAX_BODY_BYTES:
            raise ApiError(413, f"The body is {int(length)} bytes; requests take at most {MAX_BODY_BYTES}.")
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            raise ApiError(413, f"The body is {len(raw)} bytes; requests take at most {MAX_BODY_BYTES}.")
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"The body is not valid JSON ({exc}): send an object such as "
                                "{\"model_id\": \"…\"}.") from None
        if not isinstance(body, dict):
            raise ApiError(400, f"The body must be a JSON object such as {{\"model_id\": \"…\"}}, not a "
                                f"{type(body).__name__}.")
        return body

    def wrap(self, route: Callable[[Request, Any], tuple[int, Any]], method: str):
        async def endpoint(request: Request) -> Response:
            try:
                self.check(request)
                body = await self.body(request) if method == "POST" else None
                status, data = await run_in_threadpool(route, request, body)
            except Exception as exc:  # noqa: BLE001 - a user's error is a sentence, anything else a logged 500
                if (error := user_error(exc)) is None and not isinstance(exc, OSError):
                    log.exception("API request %s %s failed", request.method, request.url.path)
                    return _json_response(500, {"error": "The server failed on this request; the details are in "
                                                         "the dashboard's log."})
                status = _status_of(exc) if error is not None else 400
                message = str(error) if error is not None else (
                    f"{exc.strerror or exc} ({exc.filename})" if exc.filename else str(exc))
                headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
                return _json_response(status, {"error": message}, headers)
            if isinstance(data, Path):  # a file to download (the results zip)
                return FileResponse(data, media_type="application/zip", filename=f"{data.parent.name}_{data.name}",
                                    headers={"Cache-Control": "no-store"})
            return _json_response(status, data)

        return endpoint


def served_urls(address: str, port: int) -> list[str]:
    """The URLs the dashboard answers on when it listens on ``address``: every address of this machine
    (the loopback first) for ``0.0.0.0`` or ``::``, else ``address`` itself."""
    import socket

    if address not in ("0.0.0.0", "::", ""):
        host = f"[{address}]" if ":" in address else address
        return [f"http://{host}:{port}"]
    found = ["127.0.0.1"]
    try:
        found += [info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)]
    except OSError:
        pass
    try:  # the address other machines reach this one by (a UDP "connection" sends nothing)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))
            found.append(probe.getsockname()[0])
    except OSError:
        pass
    return [f"http://{a}:{port}" for a in dict.fromkeys(found) if a != "0.0.0.0"]


def api_routes(token: str | None = None) -> list[Route]:
    """The API's Starlette routes, for ``st.App(..., routes=api_routes())``.

    Args:
        token: the bearer token requests must carry; default ``api_token()`` (read or made now).
    Returns:
        One route per endpoint under ``/api/v1/``, the original system's four paths under ``/ml_manager/``
        (``LEGACY_PATHS``, trailing slash or not) as aliases with the same guard, then a catch-all that
        answers 404/405 as JSON.
    """
    guard = _Guard(token or api_token())
    table = [("GET", "/health", health), ("POST", "/training/start", training_start),
             ("POST", "/training/stop", training_stop), ("GET", "/training/status/{model_id}", training_status),
             ("GET", "/models", models), ("GET", "/models/{model_id}/checkpoints", model_checkpoints),
             ("GET", "/checkpoints", checkpoints), ("POST", "/inference/start", inference_start),
             ("GET", "/inference/status/{job_id}", inference_status),
             ("GET", "/inference/results/{job_id}", inference_results), ("POST", "/inference/cancel", inference_cancel),
             ("POST", "/prune", prune)]
    routes = [Route(PREFIX + path, guard.wrap(func, method), methods=[method]) for method, path, func in table]
    routes += [Route(LEGACY_PREFIX + path + slash, guard.wrap(func, method), methods=[method])
               for method, path, func in table if path in LEGACY_PATHS for slash in ("", "/")]
    routes += worker_routes(guard)  # engine.api_workers: what workers on other machines report through

    def no_route(request: Request, body: None) -> tuple[int, dict]:
        if any(route.matches(request.scope)[0] == Match.PARTIAL for route in routes):
            allowed = [m for route in routes if route.matches(request.scope)[0] == Match.PARTIAL
                       for m in sorted(route.methods or ()) if m != "HEAD"]
            raise ApiError(405, f"{request.url.path} takes {' or '.join(allowed)}, not {request.method}.")
        raise ApiError(404, f"There is no API route {request.method} {request.url.path}: the routes are listed in "
                            "the README's HTTP API section.")

    return routes + [Route(PREFIX + "/{rest:path}", guard.wrap(no_route, "ANY"), methods=_ALL_METHODS)]
