"""The run lifecycle, one state machine for every worker, the dashboard's own and those on other machines.

A training run goes ``queued`` -> ``running`` (a worker claimed a training slot: :func:`claim_training`)
-> ``stopping`` (the user asked; ``storage.db.request_stop``) -> ``completed`` / ``stopped`` / ``failed``
(:func:`finish_training`, :func:`fail_training`). While it runs, its worker's heartbeat keeps its row fresh;
a run whose heartbeat is older than ``stale_after_s()`` is failed by :func:`recover_stale` with "the worker
on HOST stopped (...)". A batch job goes ``queued`` -> ``running`` (:func:`claim_job`) -> ``completed`` /
``failed`` / ``cancelled``.

A worker on the dashboard's machine calls these functions itself (through the registry's ledger,
``engine.jobs.ledger``, which the one runner ``engine.jobs.runner`` drives); a worker on another machine
sends the same events over the HTTP API and the dashboard calls them for it (``engine.api_workers``).
Either way ``ProgressRecorder`` turns the training loop's events into the row's progress, so the two paths
cannot drift apart.
"""
from __future__ import annotations

import os
import socket
import sqlite3
import time
from datetime import datetime, timezone
from typing import Any, Callable

from engine.errors import UserError
from engine.jobs.queue import log
from storage import db as store
from storage import paths

WAITER_FRESH_S = 30.0  # a queued run whose task has not asked for this long no longer holds its place
STOPPED_EARLY = ("stopped by the user before the first epoch finished, so no checkpoint of a finished epoch "
                 "exists: start it again to train it")


def max_trainings() -> int:
    """How many trainings may run at once (``ML_MANAGER_MAX_TRAININGS``, default 1)."""
    try:
        return max(1, int(os.environ.get("ML_MANAGER_MAX_TRAININGS", "1")))
    except ValueError:
        return 1


def claim_training(model_id: str, worker: str) -> bool | None:
    """Try to move a queued run to ``running`` for ``worker``: True (it runs), False (no free slot yet: ask
    again shortly), None (it is no longer queued, or gone)."""
    try:
        return store.claim_training_slot(model_id, max_trainings(), WAITER_FRESH_S, worker)
    except store.UnknownModelError:
        return None


def claim_job(job_id: str, worker: str) -> bool:
    """Move a queued batch job to ``running`` for ``worker``; False when it is no longer queued."""
    try:
        return store.claim_inference_job(job_id, worker)
    except store.UnknownJobError:
        return False


class ProgressRecorder:
    """``on_event`` for the training loop: writes progress, epochs, checkpoints to the registry.

    Args:
        model_id: the run's registry id.
        conn: the worker's registry connection.
        max_minutes: the run's time budget (0: none); the time left caps the ETA.
        clock: seconds, monotonic (tests pass their own).
    """

    def __init__(self, model_id: str, conn, max_minutes: float = 0.0, clock: Callable[[], float] = time.monotonic):
        self.model_id, self.conn, self.clock = model_id, conn, clock
        self.max_minutes = max_minutes
        self.start_epoch, self.total_epochs, self.steps = 1, 1, 1
        self.started_at: float | None = None
        self.elapsed_before = 0.0  # seconds a continued run trained before this start (its budget counts them)
        self.first_batch: tuple[float, int] | None = None  # (time, steps done) at the first batch report
        self.epochs_done = 0
        self._last_write = 0.0
        self.failures = 0

    def eta(self, epoch: int, step: int) -> float | None:
        """Seconds left, from the speed measured since the first batch report (loading the images and the
        first step's warm-up are not speed; validation is, once an epoch has ended); None until measured."""
        now = self.clock()
        done = (epoch - self.start_epoch) * self.steps + step
        total = (self.total_epochs - self.start_epoch + 1) * self.steps
        if self.first_batch is None or done <= self.first_batch[1] or now <= self.first_batch[0]:
            return None
        per_step = (now - self.first_batch[0]) / (done - self.first_batch[1])
        left = max(0.0, per_step * (total - done))
        if self.max_minutes and self.started_at is not None:
            left = min(left, max(0.0, self.max_minutes * 60 - self.trained_s()))
        return left

    def trained_s(self) -> float:
        """Seconds the run has trained, the rounds before a resume included (0 before the start event)."""
        if self.started_at is None:
            return 0.0
        return self.elapsed_before + self.clock() - self.started_at

    def __call__(self, event: dict) -> None:
        try:
            self._handle(event)
        except (sqlite3.Error, OSError, UserError, KeyError, TypeError, ValueError):
            # a registry hiccup (locked, a disk error, the run gone) or a malformed event from a remote worker
            # must not kill the training; it is logged
            self.failures += 1
            log.exception("could not record %s event of model %s", event.get("type"), self.model_id)

    def _handle(self, event: dict) -> None:
        kind, now = event.get("type"), store.utc_now()
        update = lambda **f: store.update_model(self.model_id, db=self.conn, **f)  # noqa: E731
        if kind == "start":
            self.started_at = self.clock()
            self.elapsed_before = float(event.get("elapsed_before") or 0.0)
            self.start_epoch, self.total_epochs = event["start_epoch"], event["total_epochs"]
            self.steps = max(1, event["steps_per_epoch"])
            resumed = {}
            if self.start_epoch > 1:  # a continued run: its curve goes on from the checkpoint's epoch
                # rows of an epoch whose checkpoint a crash lost are run again
                store.forget_epochs_from(self.model_id, self.start_epoch, db=self.conn)
                resumed = dict(epochs_run=self.start_epoch - 1, best_epoch=event.get("best_epoch") or None,
                               best_metric=event.get("best_metric"), epochs_since_best=event.get("epochs_since_best"))
            update(total_epochs=self.total_epochs, batches=self.steps, current_epoch=self.start_epoch, batch=0,
                   heartbeat_at=now, trained_s=self.elapsed_before, **resumed)
        elif kind == "batch":
            if self.first_batch is None:
                self.first_batch = (self.clock(), (event["epoch"] - self.start_epoch) * self.steps + event["step"])
            if self.clock() - self._last_write < 0.25 and event["step"] != event["steps"]:
                return
            self._last_write = self.clock()
            update(current_epoch=event["epoch"], batch=event["step"], batches=event["steps"],
                   eta_s=self.eta(event["epoch"], event["step"]), trained_s=self.trained_s(), heartbeat_at=now)
        elif kind == "epoch_end":
            self.epochs_done += 1
            store.log_epoch(self.model_id, event["epoch"], event["train_loss"], event["val_loss"], event["val_dice"],
                            event["lr"], event["seconds"], db=self.conn)
            fields = dict(epochs_run=event["epoch"], current_epoch=event["epoch"], best_epoch=event["best_epoch"],
                          best_metric=event["best_metric"], epochs_since_best=event["epochs_since_best"],
                          patience=event["patience"], eta_s=self.eta(event["epoch"] + 1, 0), trained_s=self.trained_s(),
                          heartbeat_at=now)
            if event.get("is_best"):
                fields["best_val_dice"] = event["val_dice"]
            update(**fields)
        elif kind == "checkpoint":
            store.add_checkpoint(self.model_id, event["epoch"], event["path"], event["kind"], event["metric"],
                                 db=self.conn)
            if event["kind"] == "epoch":  # retention: epoch_XXX.pt files beyond the newest N go now
                from engine.housekeeping import prune_checkpoints

                prune_checkpoints(self.model_id)
        elif kind == "calibration":
            update(recommended_postprocess=event["recommended"])


def training_outcome(epochs_run: int, best_epoch: int | None, best_metric: float | None, has_best: bool,
                     stop_reason: str | None, stop_cause: str | None,
                     recommended_postprocess: dict | None = None) -> dict[str, Any]:
    """The row's fields for a training that ended.

    Args:
        epochs_run, best_epoch, best_metric: from the training's result.
        has_best: a best checkpoint was saved.
        stop_reason: the loop's ``stop_reason``.
        stop_cause: ``"user"`` (a stop request), ``"shutdown"`` (the worker was told to stop) or None.
        recommended_postprocess: the calibrated post-processing settings, if any.
    """
    fields: dict[str, Any] = dict(epochs_run=epochs_run, best_epoch=best_epoch or None, best_metric=best_metric)
    if recommended_postprocess:
        fields["recommended_postprocess"] = recommended_postprocess
    if stop_cause == "shutdown":
        fields.update(status="failed", error=(
            f"the worker was shut down during training after {epochs_run} epoch(s); last.pt was kept: "
            "Continue training (or start_training with resume=True) carries on from it"))
    elif stop_reason == "user_stop":
        fields.update(status="completed" if has_best else "stopped", stop_reason="user_stop",
                      error=None if has_best else STOPPED_EARLY)
    else:
        fields.update(status="completed", stop_reason=stop_reason, error=None)
    return fields


def finish_training(model_id: str, fields: dict[str, Any], conn=None) -> bool:
    """End a running (or stopping) run with ``fields`` (:func:`training_outcome`); False when it had ended
    already (recovered as stale, say), in which case nothing changes."""
    return store.update_model(model_id, db=conn, only_if_status=store.TRAINING_STATUSES,
                              finished_at=store.utc_now(), eta_s=None, **fields)


def fail_training(model_id: str, error: str, conn=None) -> bool:
    """End a running run as ``failed`` with ``error`` (a sentence)."""
    return finish_training(model_id, {"status": "failed", "error": error}, conn)


def stale_after_s() -> float:
    """Heartbeat age after which a running run counts as abandoned (``ML_MANAGER_STALE_AFTER_S``)."""
    try:
        return max(5.0, float(os.environ.get("ML_MANAGER_STALE_AFTER_S", "60")))
    except ValueError:
        return 60.0


def worker_host(worker: str | None) -> str:
    """The machine a worker id (``host:pid:token``) names; "an unknown machine" without one."""
    return (worker or "").partition(":")[0] or "an unknown machine"


def stale_error(kind: str, worker: str | None, beat: str) -> str:
    """The sentence a run (``kind`` "model") or a batch job ("job") gets when its worker stopped beating."""
    if kind == "model":
        return (f"the worker on {worker_host(worker)} stopped (last heartbeat {beat}) while training; the "
                "checkpoints saved until then were kept, and Continue training carries on from last.pt")
    return f"the worker on {worker_host(worker)} stopped (last heartbeat {beat}) while this job ran; submit it again"


def worker_gone(worker: str | None) -> bool:
    """True when ``worker`` (``host:pid:token``) is a process on this machine that no longer runs."""
    if not worker:
        return True
    host, _, rest = worker.partition(":")
    pid_text, _, _ = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False  # another machine: only the heartbeat's age can tell
    if int(pid_text) == os.getpid():
        return worker != store.this_worker_id()  # same pid, other token: this process was re-executed
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def recover_stale(at_startup: bool = False, spare: tuple[list[str], list[str]] = ([], [])) -> list[str]:
    """Mark abandoned runs and inference jobs ``failed``; returns their ids.

    Args:
        at_startup: also fail, whatever their heartbeat, the rows of worker processes on this machine that
            no longer exist (a worker starting after a crash).
        spare: (run ids, job ids) this process works on itself, left alone.
    """
    limit, me, failed = stale_after_s(), store.this_worker_id(), []
    cutoff = datetime.fromtimestamp(time.time() - limit, timezone.utc).isoformat(timespec="milliseconds")
    runs, jobs = spare
    mine = set(runs) | set(jobs)
    conn = store.connect()
    try:
        candidates = [("model", r) for r in store.list_models(status=store.TRAINING_STATUSES, db=conn)]
        candidates += [("job", r) for r in store.list_inference_jobs(status="running", db=conn)]
        for kind, row in candidates:
            if row["worker"] == me and row["id"] in mine:
                continue
            age = store.age_seconds(row["heartbeat_at"])
            gone = at_startup and worker_gone(row["worker"])
            if not (gone or age is None or age > limit):
                continue
            beat = row["heartbeat_at"] or "never"
            # One conditional UPDATE decides: another process recovering the same row at once, or a worker
            # whose beat arrived since we read it, makes it change nothing here.
            stale_before = None if gone else cutoff
            if kind == "model":
                changed = store.fail_stale_model(row["id"], stale_error("model", row["worker"], beat),
                                                 stale_before, db=conn)
            else:
                changed = store.fail_stale_job(row["id"], stale_error("job", row["worker"], beat),
                                               stale_before, db=conn)
            if changed:
                failed.append(row["id"])
                log.warning("%s %s marked failed: last heartbeat %s", kind, row["id"], beat)
                if kind == "model":  # its writer is gone: a half-written checkpoint is of no use to anyone
                    for tmp in paths.checkpoints_dir(row["id"]).glob(".*.tmp"):
                        tmp.unlink(missing_ok=True)
    finally:
        conn.close()
    return failed


