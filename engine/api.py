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

This module holds the token, the guard and the route table; the routes live by concern:
``engine.api_training`` (trainings and models), ``engine.api_inference`` (batch jobs), ``engine.api_workers``
(workers on other machines), with the checks of a request's fields and paths in ``engine.api_requests``.
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

from engine import api_inference as inference
from engine import api_training as training
from engine import housekeeping, jobs
from engine.api_requests import ApiError, check_fields, flag_field, model_id_field
from engine.api_workers import worker_routes
from engine.errors import user_error
from engine.jobs.ledger import json_safe
from storage import db as store
from storage import paths

log = logging.getLogger("ml_manager.api")

PREFIX = "/api/v1"
# the original system's paths, answered by the same routes (an old script needs only the token); each with
# and without its trailing slash
LEGACY_PREFIX = "/ml_manager"
LEGACY_PATHS = ("/training/start", "/training/stop", "/training/status/{model_id}", "/inference/status/{job_id}")
TOKEN_FILE = "api_token"
MAX_BODY_BYTES = 1_000_000  # requests are small JSON objects; anything bigger is a mistake
_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


# --------------------------------------------------------------------------- the token

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


# --------------------------------------------------------------------------- health and housekeeping routes

def health(request: Request, body: None) -> tuple[int, dict]:
    """GET /health: the dashboard answers; the worker's last heartbeat; how many tasks wait in the queue."""
    jobs.recover_if_no_worker()  # with no worker up, an abandoned run would otherwise read "running" forever
    beat = store.worker_heartbeat()
    age = store.age_seconds(beat.isoformat()) if beat else None
    counts = {status: len(store.list_models(status=status)) for status in store.ACTIVE_STATUSES}
    return 200, {"dashboard": "up", "worker": "up" if age is not None and age < store.WORKER_FRESH_S else "down",
                 "worker_heartbeat_at": beat.isoformat() if beat else None, "worker_heartbeat_age_s": age,
                 "queue_length": jobs.queue_length(), "trainings": counts}


def prune(request: Request, body: dict) -> tuple[int, dict]:
    """POST /prune ``{[model_id, keep, inference_older_than, dry_run]}``: ``python -m engine prune``; answers
    ``{"removed": [{kind, owner, path, size_bytes}], "freed_bytes", "dry_run"}``."""
    check_fields(body, set(), {"model_id", "keep", "inference_older_than", "dry_run"})
    model_id = model_id_field(body) if "model_id" in body else None
    keep = body.get("keep")
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 0):
        raise ApiError(400, f"'keep' must be a whole number of 0 or more, not {json.dumps(keep)}.")
    days = body.get("inference_older_than")
    if days is not None and (isinstance(days, bool) or not isinstance(days, (int, float)) or days < 0):
        raise ApiError(400, f"'inference_older_than' must be a number of days of 0 or more, not {json.dumps(days)}.")
    dry_run = flag_field(body, "dry_run")
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
            except Exception as exc:  # noqa: BLE001 - the HTTP handler's last resort: a user's error is a
                # sentence, anything else (a bug) a logged 500, never a traceback sent to the caller
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
    t, i = training, inference
    table = [("GET", "/health", health), ("POST", "/training/start", t.training_start),
             ("POST", "/training/stop", t.training_stop), ("GET", "/training/status/{model_id}", t.training_status),
             ("GET", "/models", t.models), ("GET", "/models/{model_id}/checkpoints", t.model_checkpoints),
             ("GET", "/checkpoints", t.checkpoints), ("POST", "/inference/start", i.inference_start),
             ("GET", "/inference/status/{job_id}", i.inference_status),
             ("GET", "/inference/results/{job_id}", i.inference_results),
             ("POST", "/inference/cancel", i.inference_cancel), ("POST", "/prune", prune)]
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
