"""The ledger of a worker on another machine: the dashboard's HTTP API (``engine.api_workers``).

The same interface as the run registry's (``engine.jobs.ledger``), so the one runner (``engine.jobs.runner``)
trains here as it does beside the dashboard. Routes and JSON bodies are the dashboard's; reports about a
run (its events, checkpoints and end) go through the link's outbox (``engine.remote.outbox``), which keeps
them on this worker's disk while the dashboard cannot be reached.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, ContextManager

from engine.errors import UserError
from engine.inference.predictor import CLASSICAL
from engine.jobs.ledger import JobOrder, TrainingOrder, json_safe
from engine.remote.client import DashboardError
from storage import archives, paths

if TYPE_CHECKING:
    from engine.training.config import TrainingConfig
    from engine.training.loop import TrainResult

log = logging.getLogger("huey.ml_manager.remote")

BATCH_EVERY_S = 0.25  # batch progress goes to the dashboard at most this often
EVENT_TYPES = ("start", "batch", "epoch_end", "calibration")  # the loop's events the dashboard records
JSON_TYPES = (str, int, float, bool, dict, list, type(None))


class RemoteTraining:
    """A training's ledger over HTTP: ``/workers/trainings/{id}/…`` on the dashboard.

    Args:
        link: the worker's link (``engine.remote.worker.RemoteLink``: client, worker id, outbox, device).
        model_id: the run's id on the dashboard.
        resume: the task asked to continue the run from its ``last.pt``.
    """

    def __init__(self, link: Any, model_id: str, resume: bool):
        self.link, self.model_id, self.resume = link, model_id, resume
        self.base = f"/workers/trainings/{model_id}"
        self.reply: dict = {}
        self.recorder = RemoteRecorder(link, model_id)

    def holding(self) -> ContextManager[None]:
        return self.link.active.run(self.model_id)

    def claim(self) -> bool | None:
        try:
            self.reply = self.link.post(f"{self.base}/claim", {"resume": self.resume})
        except DashboardError as exc:
            if exc.status in (404, 0):
                log.warning("training %s not claimed: %s", self.model_id, exc)
                return False if exc.status == 0 else None  # unreachable: ask again shortly
            raise
        return self.reply["claimed"]

    def read_order(self) -> TrainingOrder:
        """Downloads what the run needs (data sets cached by content hash, the last.pt it continues from)."""
        from engine.training.config import TrainingConfig
        from engine.training.data import load_dataset

        reply = self.reply
        datasets = []  # every data set of the run, each downloaded once per content hash, named as on the dashboard
        for index, info in enumerate(reply.get("datasets") or [reply["dataset"]]):
            ds = load_dataset(self.dataset(info, index))
            ds.label = str(info.get("name") or "") or None
            datasets.append(ds)
        out = paths.checkpoints_dir(self.model_id)
        for old in out.glob("*.pt"):  # what an earlier attempt here left: the dashboard holds the record
            old.unlink()
        resume_from = None
        if reply.get("resume"):
            target = paths.data_home() / "cache" / "resume" / f"{self.model_id}.pt"
            resume_from = self.link.api.download(f"{self.base}/last.pt", target, {"worker_id": self.link.worker_id})
        # the stored config as the dashboard checked it; a worker told its device (--device, one of DEVICES)
        # trains on it, whatever the run's setting
        stored = reply["config"]
        if self.link.device != "auto" and isinstance(stored, dict):
            stored = {**stored, "device": self.link.device}
        return TrainingOrder(TrainingConfig.from_stored(stored), reply.get("plan"), datasets, out, resume_from)

    def dataset(self, info: dict, index: int = 0) -> Path:
        """The run's ``index``-th data set in this worker's cache (``<data home>/cache/datasets/<sha256>``),
        downloaded once per content hash."""
        digest = info["sha256"]
        if not digest.isalnum():
            raise UserError("The dashboard sent a data set without a usable content hash.")
        folder = paths.data_home() / "cache" / "datasets" / digest
        if folder.is_dir():
            return folder
        archive = self.link.api.download(f"{self.base}/dataset", folder.with_name(f".{digest}.zip"),
                                         {"worker_id": self.link.worker_id, "index": str(index)})
        try:
            unpacked = archives.safe_extract_zip(archive, folder.with_name(f".{digest}.{os.getpid()}"))
            try:
                os.replace(unpacked, folder)
            except OSError:  # another thread got it first
                shutil.rmtree(unpacked, ignore_errors=True)
        finally:
            archive.unlink(missing_ok=True)
        return folder

    def record_plan(self, config: "TrainingConfig", plan: dict) -> None:
        self.link.post(f"{self.base}/events", {"events": [{"type": "plan", "config": config.to_dict(), "plan": plan}]})

    def stop_requested(self) -> bool:
        try:
            status = self.link.api.call("GET", f"{self.base}/status")["status"]
        except DashboardError:
            return False  # the dashboard away for a moment: keep training, ask again
        return status != "running"

    def record_event(self, event: dict) -> None:
        self.recorder(event)

    def record_final(self, result: "TrainResult") -> None:
        recorder = self.recorder
        recorder.flush()
        last = recorder.uploaded.get("last.pt", (None, None, None))[1:]  # its epoch and metric, as its event said
        best = (result.best_epoch, result.best_metric)
        for path, name, (epoch, metric) in ((result.best_checkpoint, "best.pt", best),
                                            (result.last_checkpoint, "last.pt", last)):
            if path is not None and recorder.uploaded.get(name, (None,))[0] != Path(path).stat().st_mtime_ns:
                recorder.upload(Path(path), name, epoch, metric)

    def finish(self, outcome: dict) -> None:
        self.link.report(f"{self.base}/finish", outcome)

    def fail(self, error: str) -> None:
        try:
            self.link.report(f"{self.base}/finish", {"error": error})
        except DashboardError as refused:
            log.warning("the failure of %s was not recorded: %s", self.model_id, refused)

    def close(self) -> None:
        pass


class RemoteRecorder:
    """``on_event`` of a remote training: events to the dashboard, best.pt / last.pt / epoch_XXX.pt uploaded
    when written, all through the link's outbox (kept on disk while the dashboard is away)."""

    def __init__(self, link: Any, model_id: str):
        self.link, self.model_id = link, model_id
        self.base = f"/workers/trainings/{model_id}"
        self.pending: list[dict] = []
        self.uploaded: dict[str, tuple] = {}  # name -> (mtime, epoch, metric) of its last upload
        self._last_sent = 0.0

    def __call__(self, event: dict) -> None:
        kind = event.get("type")
        try:
            if kind == "checkpoint":
                name = {"best": "best.pt", "last": "last.pt"}.get(event["kind"]) or Path(event["path"]).name
                self.upload(Path(event["path"]), name, event.get("epoch"), event.get("metric"))
                return
            if kind not in EVENT_TYPES:
                return
            self.pending.append(json_safe({k: v for k, v in event.items() if isinstance(v, JSON_TYPES)}))
            if kind != "batch" or time.monotonic() - self._last_sent >= BATCH_EVERY_S:
                self.flush()
        except DashboardError as exc:  # refused (an unreachable dashboard keeps the report in the outbox)
            log.warning("%s of model %s not recorded: %s", kind, self.model_id, exc)

    def flush(self) -> None:
        if self.pending and len(self.link.outbox):  # kept for later: the progress within an epoch is stale then
            self.pending = [e for e in self.pending if e["type"] != "batch"]
        if not self.pending:
            return
        events, self.pending = self.pending, []
        self._last_sent = time.monotonic()
        self.link.report(f"{self.base}/events", {"events": events})

    def upload(self, path: Path, name: str, epoch: int | None, metric: float | None) -> None:
        mtime = path.stat().st_mtime_ns
        self.link.outbox.send("PUT", f"{self.base}/checkpoints/{name}", file=path,
                              query={"worker_id": self.link.worker_id, "epoch": epoch, "metric": metric})
        self.uploaded[name] = (mtime, epoch, metric)


class RemoteJob:
    """A batch job's ledger over HTTP: ``/workers/inference/{id}/…`` on the dashboard; the images and the
    checkpoint are downloaded, results.zip uploaded before the job ends."""

    def __init__(self, link: Any, job_id: str):
        self.link, self.job_id = link, job_id
        self.base = f"/workers/inference/{job_id}"
        self.reply: dict = {}
        self._cancelled = False
        self.out: Path | None = None

    def holding(self) -> ContextManager[None]:
        return self.link.active.job(self.job_id)

    def claim(self) -> bool:
        self.reply = self.link.post(f"{self.base}/claim")
        return bool(self.reply["claimed"])

    def read_order(self) -> JobOrder:
        reply = self.reply
        self.out = paths.inference_dir(self.job_id)
        checkpoint = self._checkpoint(reply["checkpoint"])
        name = Path(reply["input"]["name"]).stem or "input"
        source = self.link.api.download(f"{self.base}/input", self.out / f".{name}.input.zip",
                                        {"worker_id": self.link.worker_id})
        return JobOrder(reply["row"], self.out, source, checkpoint)

    def _checkpoint(self, info: Any) -> str:
        if info == CLASSICAL:  # the classical filter needs no file
            return CLASSICAL
        path = paths.data_home() / "cache" / "checkpoints" / f"{info['sha256']}.pt"
        if not path.is_file():
            self.link.api.download(f"{self.base}/checkpoint", path, {"worker_id": self.link.worker_id})
        return str(path)

    def record_progress(self, **counts: Any) -> None:
        answer = self.link.post(f"{self.base}/progress", counts)
        self._cancelled = answer["status"] == "cancelled"

    def cancelled(self) -> bool:
        return self._cancelled

    def finish(self, outcome: dict) -> None:
        self.link.api.upload(f"{self.base}/results", self.out / "results.zip", {"worker_id": self.link.worker_id})
        self.link.post(f"{self.base}/finish", outcome)

    def fail(self, error: str) -> None:
        try:
            self.link.post(f"{self.base}/finish", {"failed": True, "error": error})
        except DashboardError:
            log.exception("could not report the failure of job %s", self.job_id)
