"""``python -m engine worker``: a worker that takes jobs from named queues, on this machine or on another.

* ``python -m engine worker --server URL --token TOKEN [--queues training,inference] [--device auto|cpu|cuda]``
  (or ``ML_MANAGER_SERVER`` / ``ML_MANAGER_TOKEN``) runs on a machine that does not have the dashboard's
  data home. It asks the dashboard for the Redis queue (``GET /api/v1/workers/hello``), consumes the named
  queues with huey, and does everything else over the HTTP API (``engine.api_workers``): it claims a run
  and gets its validated config and plan, downloads the data set once (cached in its own data home by
  content hash), reports every event and a heartbeat, reads stop requests, and uploads its checkpoints
  and the recommended post-processing as they change (kept in its outbox, ``engine.remote.outbox``, while
  the dashboard cannot be reached); batch jobs download their images and checkpoint and upload results.zip.
* Without ``--server`` it is a worker on the dashboard's machine: it writes the registry itself, like
  ``huey_consumer engine.jobs.huey`` (``make run`` starts that one on the SQLite queue file, this one on Redis).

Both run the same tasks (``engine.jobs``) through the one runner (``engine.jobs.runner``); this module only
hands it the dashboard's HTTP API as the ledger (``engine.remote.ledger``) instead of the run registry.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from engine.errors import UserError
from engine.jobs import queue as queues
from engine.jobs.liveness import ActiveWork
from engine.jobs.runner import run_job, run_training
from engine.remote.client import Dashboard, DashboardError
from engine.remote.ledger import RemoteJob, RemoteTraining
from engine.remote.outbox import Outbox
from storage import paths
from storage import db as store

log = logging.getLogger("huey.ml_manager.remote")

SERVER_ENV, TOKEN_ENV = "ML_MANAGER_SERVER", "ML_MANAGER_TOKEN"


def queue_url_for_worker(queue_url: str, server_url: str) -> str:
    """The dashboard's Redis URL as this machine reaches it: a loopback host (the dashboard's own view)
    becomes the host of the dashboard's address."""
    parts, server = urlsplit(queue_url), urlsplit(server_url)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1") or not server.hostname:
        return queue_url
    auth, _, _ = parts.netloc.rpartition("@")
    host = f"{server.hostname}:{parts.port or 6379}"
    return parts._replace(netloc=f"{auth}@{host}" if auth else host).geturl()


class RemoteLink:
    """How the tasks of a worker on another machine run: everything through the dashboard's API.

    Args:
        dashboard: the API client.
        worker_id: this worker's id (``host:pid:token``), sent with every report.
        device: ``auto``, ``cpu`` or ``cuda``: what this worker trains on (a run's own ``device`` setting is
            replaced by it).
    """

    def __init__(self, dashboard: Dashboard, worker_id: str, device: str = "auto"):
        self.api, self.worker_id, self.device = dashboard, worker_id, device
        self.active = ActiveWork()  # what this worker runs now: its heartbeat names it
        self.outbox = Outbox(dashboard, paths.data_home() / "outbox")  # reports the dashboard could not take yet

    def current(self) -> tuple[list[str], list[str]]:
        runs, jobs = self.active.snapshot()
        return sorted(runs), sorted(jobs)

    def post(self, path: str, body: dict | None = None) -> Any:
        return self.api.call("POST", path, {"worker_id": self.worker_id, **(body or {})})

    def report(self, path: str, body: dict) -> Any:
        """POST a report about a run through the outbox: the dashboard's answer, or None when it was kept on
        disk for later (DashboardError: refused)."""
        return self.outbox.send("POST", path, {"worker_id": self.worker_id, **body})

    # ------------------------------------------------------------------ the two tasks, through the one runner

    def train(self, model_id: str, resume: bool) -> None:
        """Claim a queued run, train it here, report it to the dashboard (RetryTask while no slot is free)."""
        run_training(RemoteTraining(self, model_id, resume))

    def infer(self, job_id: str) -> None:
        """Claim a queued batch job, run it here on downloaded images, upload its results."""
        run_job(RemoteJob(self, job_id))


# --------------------------------------------------------------------------- the command

def _describe(device: str) -> str:
    try:
        from engine.training.device import describe_device, resolve_device

        return describe_device(resolve_device(device))
    except (UserError, RuntimeError) as exc:  # no such device (torch's own error for a broken driver too)
        return f"{device} (unavailable: {exc})"


def run_worker(server: str | None, token: str | None, queue_names: list[str], device: str = "auto",
               threads: int = 1) -> int:
    """Run a worker until SIGINT or SIGTERM; returns the exit status.

    Args:
        server, token: the dashboard's address and API token (None: a worker on the dashboard's machine).
        queue_names: the queues to take jobs from.
        device: what trainings run on here (``auto``, ``cpu``, ``cuda``).
        threads: worker threads per queue.
    Raises:
        UserError: an unusable option, an unreachable dashboard, a dashboard without the Redis queue.
    """
    from engine import jobs
    from engine.jobs import liveness

    dashboard = None
    if server:
        dashboard = Dashboard(server, token or "")
        hello = _hello(dashboard)
        os.environ[queues.QUEUE_ENV] = os.environ.get(queues.QUEUE_ENV) or _queue_url(hello, server)
        os.environ[queues.NAMES_ENV] = ",".join(hello["queues"])
    known = jobs.queue_names()
    if jobs.redis_url() is None:
        raise UserError(f"python -m engine worker takes jobs from the Redis queue: set {queues.QUEUE_ENV}="
                        "redis://host:6379/0 (on the SQLite queue file, make worker starts the worker).")
    unknown = [q for q in queue_names if q not in known]
    if unknown or not queue_names:
        raise UserError(f"Unknown queue(s) {', '.join(unknown) or '(none given)'}: choose from {', '.join(known)} "
                        f"(more are named in {queues.NAMES_ENV} on the dashboard).")
    description = _describe(device)
    worker_id = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
    if dashboard is not None:
        link = RemoteLink(dashboard, worker_id, device)
        queues.set_remote(link)
        beat = lambda: _remote_beat(dashboard, link, description, queue_names)  # noqa: E731
    else:
        worker_id = store.this_worker_id()
        liveness.WORKER_INFO.update(device=description, queues=",".join(queue_names))
        liveness.worker_started()
        beat = None
    consumers = [jobs.queue_for(name).create_consumer(workers=threads, worker_type="thread", periodic=False,
                                                      initial_delay=0.1, backoff=1.15, max_delay=0.5)
                 for name in queue_names]
    huey_log = logging.getLogger("huey.consumer")
    for i, consumer in enumerate(consumers):
        level = huey_log.level
        if i:  # every consumer logs the same start-up block (settings, tasks); once is enough
            huey_log.setLevel(logging.WARNING)
        try:
            consumer.start()
        finally:
            huey_log.setLevel(level)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if beat is not None:
        threading.Thread(target=_beat_forever, args=(beat, stop), name="ml-manager-remote-beat", daemon=True).start()
    log.info("worker %s (%s) takes jobs from %s%s", worker_id, description, ", ".join(queue_names),
             f" for the dashboard at {server}" if server else "")
    print(f"worker {worker_id} on {description}: queues {', '.join(queue_names)}"
          + (f", dashboard {server}" if server else ""), flush=True)
    while not stop.wait(1.0):
        pass
    queues.STOPPING.set()  # running tasks end early and cleanly (last.pt kept)
    for consumer in consumers:
        consumer.stop(graceful=True)
    if beat is not None:
        try:
            beat()
        except DashboardError:
            pass
        left = link.outbox.drain()
        if left:
            log.warning("%d report(s) wait in %s: this worker sends them when it starts again", left,
                        link.outbox.folder)
    return 0


def _hello(dashboard: Dashboard) -> dict:
    """``GET /workers/hello``, asked again every few seconds while the dashboard cannot be reached (a worker
    started before the dashboard, or one with reports to deliver, waits for it)."""
    from engine.jobs.liveness import BEAT_S

    waiting = False
    while True:
        try:
            return dashboard.call("GET", "/workers/hello")
        except DashboardError as exc:
            if exc.status != 0 or queues.STOPPING.is_set():
                raise
            if not waiting:
                log.warning("%s This worker waits for it.", exc)
                waiting = True
            try:
                time.sleep(BEAT_S)
            except KeyboardInterrupt:
                raise UserError("The worker was stopped while it waited for the dashboard.") from None


def _queue_url(hello: dict, server: str) -> str:
    """The Redis address from the dashboard's hello, which never carries a password.

    Raises:
        UserError: the queue needs a password, which the worker must be given on its own.
    """
    url = queue_url_for_worker(hello["queue"], server)
    if hello.get("queue_password"):
        parts = urlsplit(url)
        raise UserError(f"The dashboard's Redis queue needs a password, which the dashboard does not hand out: "
                        f"start this worker with {queues.QUEUE_ENV}=redis://:PASSWORD@{parts.netloc}{parts.path}.")
    return url


def _remote_beat(dashboard: Dashboard, link: RemoteLink, description: str, queue_names: list[str]) -> None:
    """One heartbeat, which also names the runs whose reports wait in the outbox (so the dashboard does not
    fail them as abandoned), then the outbox sent."""
    runs, held_jobs = link.current()
    job = (f"training {runs[0]}" if runs else f"inference {held_jobs[0]}" if held_jobs else None)
    dashboard.call("POST", "/workers/beat", {
        "worker_id": link.worker_id, "host": socket.gethostname(), "pid": os.getpid(), "device": description,
        "queues": queue_names, "job": None if queues.STOPPING.is_set() else job, "runs": runs, "jobs": held_jobs,
        "outbox": len(link.outbox), "outbox_runs": link.outbox.runs()})
    link.outbox.drain()


def _beat_forever(beat, stop: threading.Event) -> None:
    from engine.jobs.liveness import BEAT_S

    while not stop.is_set():
        try:
            beat()
        except DashboardError as exc:
            log.warning("heartbeat not delivered: %s", exc)
        except Exception:  # noqa: BLE001 - the heartbeat thread's boundary: a bug is logged, the beat goes on
            log.exception("heartbeat failed")
        stop.wait(BEAT_S)
