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

Both run the same tasks (``engine.jobs``) and the same run lifecycle (``engine.jobs.lifecycle``).
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from huey.exceptions import RetryTask

from engine.errors import UserError, error_text
from engine.inference.predictor import CLASSICAL
from engine.jobs import queue as queues
from engine.jobs.liveness import ActiveWork
from engine.remote.client import Dashboard, DashboardError
from engine.remote.outbox import Outbox
from storage import archives, paths
from storage import db as store

log = logging.getLogger("huey.ml_manager.remote")

SERVER_ENV, TOKEN_ENV = "ML_MANAGER_SERVER", "ML_MANAGER_TOKEN"
STOP_POLL_S = 0.5  # how often a remote training asks whether it was told to stop
BATCH_EVERY_S = 0.25  # batch progress goes to the dashboard at most this often
WAIT_RETRY_S = 1  # a run without a free training slot asks again after this many seconds


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

    # ------------------------------------------------------------------ training

    def train(self, model_id: str, resume: bool) -> None:
        """Claim a queued run, train it here, report it to the dashboard (RetryTask while no slot is free)."""
        base = f"/workers/trainings/{model_id}"
        with self.active.run(model_id):
            try:
                reply = self.post(f"{base}/claim", {"resume": resume})
            except DashboardError as exc:
                if exc.status in (404, 0):
                    log.warning("training %s not claimed: %s", model_id, exc)
                    if exc.status == 0:
                        raise RetryTask(delay=WAIT_RETRY_S) from None
                    return
                raise
            if reply["claimed"] is False:
                raise RetryTask(delay=WAIT_RETRY_S)
            if not reply["claimed"]:
                log.info("training task of %s skipped: the run is no longer queued", model_id)
                return
            try:
                self._train_claimed(model_id, reply)
            except Exception as exc:  # noqa: BLE001 - every failure becomes the run's error text
                log.exception("training of %s failed", model_id)
                try:
                    self.report(f"{base}/finish", {"error": error_text(exc)})
                except DashboardError as refused:
                    log.warning("the failure of %s was not recorded: %s", model_id, refused)

    def _train_claimed(self, model_id: str, reply: dict) -> None:
        from engine.training.config import TrainingConfig
        from engine.training.loop import train

        from engine.training.data import load_dataset

        base = f"/workers/trainings/{model_id}"
        dataset = []  # every data set of the run, each downloaded once per content hash, named as on the dashboard
        for index, info in enumerate(reply.get("datasets") or [reply["dataset"]]):
            ds = load_dataset(self.dataset(model_id, info, index))
            ds.label = str(info.get("name") or "") or None
            dataset.append(ds)
        out = paths.checkpoints_dir(model_id)
        for old in out.glob("*.pt"):  # what an earlier attempt here left: the dashboard holds the record
            old.unlink()
        resume_from = None
        if reply.get("resume"):
            target = paths.data_home() / "cache" / "resume" / f"{model_id}.pt"
            resume_from = self.api.download(f"{base}/last.pt", target, {"worker_id": self.worker_id})
        config = TrainingConfig.from_dict(reply["config"])
        if self.device != "auto":
            config = config.with_updates(device=self.device)
        plan = reply.get("plan")
        recorder, stopper = RemoteRecorder(self, model_id), RemoteStop(self, model_id)
        if resume_from is None:  # a continued run keeps its shapes: its checkpoint was trained with them
            config, plan = self.plan_here(model_id, config, plan, dataset)
        result = train(config, dataset, out, on_event=recorder, should_stop=stopper, resume_from=resume_from,
                       plan=plan)
        recorder.flush()
        for path, name in ((result.best_checkpoint, "best.pt"), (result.last_checkpoint, "last.pt")):
            if path is not None and recorder.uploaded.get(name) != Path(path).stat().st_mtime_ns:
                recorder.upload(Path(path), name, result.best_epoch, result.best_metric)
        self.report(f"{base}/finish", {
            "epochs_run": result.epochs_run, "best_epoch": result.best_epoch, "best_metric": result.best_metric,
            "has_best": result.best_checkpoint is not None, "stop_reason": result.stop_reason,
            "stop_cause": stopper.reason, "recommended_postprocess": result.recommended_postprocess})

    def plan_here(self, model_id: str, config: Any, plan: dict | None, dataset: list) -> tuple[Any, dict | None]:
        """A run planned on another kind of device (the dashboard's CPU) is planned again on this worker's
        (a GPU): shapes, precision and width measured here; the dashboard records the new plan.
        ``dataset``: the run's data sets (``engine.training.data.Dataset``)."""
        from engine.training.planner import replan_for_device

        replanned = replan_for_device(config, plan, dataset=dataset) if plan else None
        if replanned is None:
            return config, plan
        config, new_plan = replanned
        log.info("training %s planned again on this worker: %s", model_id, new_plan.explain())
        self.post(f"/workers/trainings/{model_id}/events",
                  {"events": [{"type": "plan", "config": config.to_dict(), "plan": new_plan.to_dict()}]})
        return config, new_plan.to_dict()

    def dataset(self, model_id: str, info: dict, index: int = 0) -> Path:
        """The run's ``index``-th data set in this worker's cache (``<data home>/cache/datasets/<sha256>``),
        downloaded once per content hash."""
        digest = info["sha256"]
        if not digest.isalnum():
            raise UserError("The dashboard sent a data set without a usable content hash.")
        folder = paths.data_home() / "cache" / "datasets" / digest
        if folder.is_dir():
            return folder
        archive = self.api.download(f"/workers/trainings/{model_id}/dataset", folder.with_name(f".{digest}.zip"),
                                    {"worker_id": self.worker_id, "index": str(index)})
        try:
            unpacked = archives.safe_extract_zip(archive, folder.with_name(f".{digest}.{os.getpid()}"))
            try:
                os.replace(unpacked, folder)
            except OSError:  # another thread got it first
                shutil.rmtree(unpacked, ignore_errors=True)
        finally:
            archive.unlink(missing_ok=True)
        return folder

    # ------------------------------------------------------------------ batch inference

    def infer(self, job_id: str) -> None:
        """Claim a queued batch job, run it here on downloaded images, upload its results."""
        from engine.inference.batch import run_images

        base = f"/workers/inference/{job_id}"
        with self.active.job(job_id):
            reply = self.post(f"{base}/claim")
            if not reply["claimed"]:
                log.info("inference job %s skipped: it is no longer queued", job_id)
                return
            try:
                out = paths.inference_dir(job_id)
                checkpoint = self._job_checkpoint(job_id, reply["checkpoint"])
                name = Path(reply["input"]["name"]).stem or "input"
                source = self.api.download(f"{base}/input", out / f".{name}.input.zip", {"worker_id": self.worker_id})
                state = {"cancelled": False}

                def progress(**counts) -> None:
                    answer = self.post(f"{base}/progress", counts)
                    state["cancelled"] = answer["status"] == "cancelled"

                outcome = run_images(reply["row"], out, source, on_progress=progress,
                                     cancelled=lambda: state["cancelled"], should_stop=queues.shutting_down,
                                     checkpoint=checkpoint)
                self.api.upload(f"{base}/results", out / "results.zip", {"worker_id": self.worker_id})
                self.post(f"{base}/finish", outcome)
            except Exception as exc:  # noqa: BLE001 - recorded on the job's row
                log.exception("inference job %s failed", job_id)
                try:
                    self.post(f"{base}/finish", {"failed": True, "error": error_text(exc)})
                except DashboardError:
                    log.exception("could not report the failure of job %s", job_id)

    def _job_checkpoint(self, job_id: str, info: Any) -> str:
        if info == CLASSICAL:  # the classical filter needs no file
            return CLASSICAL
        digest = info["sha256"]
        path = paths.data_home() / "cache" / "checkpoints" / f"{digest}.pt"
        if not path.is_file():
            self.api.download(f"/workers/inference/{job_id}/checkpoint", path, {"worker_id": self.worker_id})
        return str(path)


class RemoteRecorder:
    """``on_event`` of a remote training: events to the dashboard, best.pt / last.pt / epoch_XXX.pt uploaded
    when written, all through the link's outbox (kept on disk while the dashboard is away)."""

    def __init__(self, link: RemoteLink, model_id: str):
        self.link, self.model_id = link, model_id
        self.base = f"/workers/trainings/{model_id}"
        self.pending: list[dict] = []
        self.uploaded: dict[str, int] = {}  # name -> mtime of the file last uploaded
        self.status: str | None = None
        self._last_sent = 0.0
        self.failures = 0

    def __call__(self, event: dict) -> None:
        kind = event.get("type")
        try:
            if kind == "checkpoint":
                name = {"best": "best.pt", "last": "last.pt"}.get(event["kind"]) or Path(event["path"]).name
                self.upload(Path(event["path"]), name, event.get("epoch"), event.get("metric"))
                return
            if kind not in ("start", "batch", "epoch_end", "calibration"):
                return
            self.pending.append(_plain(event))
            if kind != "batch" or time.monotonic() - self._last_sent >= BATCH_EVERY_S:
                self.flush()
        except DashboardError as exc:  # refused (an unreachable dashboard keeps the report in the outbox)
            self.failures += 1
            log.warning("%s of model %s not recorded: %s", kind, self.model_id, exc)

    def flush(self) -> None:
        if self.pending and len(self.link.outbox):  # kept for later: the progress within an epoch is stale then
            self.pending = [e for e in self.pending if e["type"] != "batch"]
        if not self.pending:
            return
        events, self.pending = self.pending, []
        self._last_sent = time.monotonic()
        answer = self.link.report(f"{self.base}/events", {"events": events})
        if answer is not None:
            self.status = answer["status"]

    def upload(self, path: Path, name: str, epoch: int | None, metric: float | None) -> None:
        mtime = path.stat().st_mtime_ns
        self.link.outbox.send("PUT", f"{self.base}/checkpoints/{name}", file=path,
                              query={"worker_id": self.link.worker_id, "epoch": epoch, "metric": metric})
        self.uploaded[name] = mtime


def _plain(event: dict) -> dict:
    """An event as JSON can carry it (NaN losses as null)."""
    import math

    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in event.items()
            if isinstance(v, (str, int, float, bool, dict, list, type(None)))}


class RemoteStop:
    """``should_stop`` of a remote training: the run's status on the dashboard, or this worker stopping."""

    def __init__(self, link: RemoteLink, model_id: str):
        self.link, self.model_id = link, model_id
        self.reason: str | None = None
        self._last = 0.0

    def __call__(self) -> bool:
        if self.reason:
            return True
        if queues.shutting_down():
            self.reason = "shutdown"
            return True
        now = time.monotonic()
        if now - self._last >= STOP_POLL_S:
            self._last = now
            try:
                status = self.link.api.call("GET", f"/workers/trainings/{self.model_id}/status")["status"]
            except DashboardError:
                return False  # the dashboard away for a moment: keep training, ask again
            if status != "running":
                self.reason = "user"
        return self.reason is not None


# --------------------------------------------------------------------------- the command

def _describe(device: str) -> str:
    try:
        from engine.training.device import describe_device, resolve_device

        return describe_device(resolve_device(device))
    except Exception as exc:  # noqa: BLE001 - a worker without the asked-for device still reports
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
        except Exception:  # noqa: BLE001 - keep beating
            log.exception("heartbeat failed")
        stop.wait(BEAT_S)
