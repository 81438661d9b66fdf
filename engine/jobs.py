"""The background worker: a Huey queue on SQLite that trains models and runs batch inference.

Start it with ``huey_consumer engine.jobs.huey -k thread -w 2 -m 0.5`` (``make run`` starts it). Use at least two
worker threads, so a batch inference never waits behind a training, and ``-m 0.5`` (longest idle
poll, seconds): with huey's default of 10 s a job queued after a quiet spell waits up to 10 s. The queue file is
``paths.queue_path()`` of the ``ML_MANAGER_HOME`` the process had when it imported this module; the
Python API below re-points the queue when the data home changes in-process (tests, scripts).

The record of every job is its row in the run registry (``storage.db``), never a Huey result:

* Trainings run one at a time (``ML_MANAGER_MAX_TRAININGS``, default 1). A training task that finds
  no free slot does not hold a worker thread: it asks Huey to retry it a second later and stays
  ``queued``; slots are granted first come, first served (``storage.db.claim_training_slot``). With
  two or more worker threads a batch inference therefore never waits behind a training.
* ``stop_training`` marks a running run ``stopping``; the training loop's ``should_stop`` reads the
  row at most every 0.5 s, so it stops within a second and saves ``last.pt``. The run then ends
  ``completed`` with ``stop_reason='user_stop'`` when it saved a best checkpoint, otherwise
  ``stopped`` (not a failure: no epoch had finished, the error column says so, and it can be started again). A run still waiting in the queue is revoked and
  marked ``failed`` with ``stop_reason='user_stop'`` and the error "stopped by the user before it started".
* A graceful shutdown of the worker (SIGINT) stops a running training the same way (``last.pt`` is
  kept) and marks it ``failed`` with an error that says so; ``start_training(..., resume=True)``
  continues it. Queued trainings stay in the queue for the next start.
* Liveness: a background thread started with the worker beats every ``BEAT_S`` seconds for the
  worker and for each run and job it executes. The periodic ``check_stale_runs`` (every minute) and
  the start-up hook mark runs whose heartbeat is older than ``ML_MANAGER_STALE_AFTER_S`` (default
  60 s) ``failed`` with "the worker stopped while training (last heartbeat …)"; at start-up a run
  owned by a worker process that no longer exists is failed at once. Freeing those rows is what
  releases the training slots a killed worker held (the slots are rows, not Huey locks). Start-up
  also removes leftover temporary files. When no worker runs at all, ``recover_if_no_worker`` (called by
  the dashboard, the API and ``python -m engine status``) does the same; each run is failed by one
  conditional UPDATE, so a worker starting at that moment and the dashboard never both fail it.
* Retention: after each ``epoch_XXX.pt`` it records, the worker deletes that model's epoch checkpoints
  beyond the newest ``ML_MANAGER_KEEP_EPOCH_CHECKPOINTS`` (``engine.housekeeping``).
"""
from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import socket
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from huey import SqliteHuey, crontab
from huey.exceptions import RetryTask

from engine.errors import WorkerShutdown
from storage import db as store
from storage import paths

# A child of huey's logger, so our messages land in the worker log that huey_consumer sets up.
log = logging.getLogger("huey.ml_manager")

BEAT_S = 2.0  # worker / run heartbeat period
STOP_POLL_S = 0.5  # how often a training reads its row for a stop request
WAIT_RETRY_S = 1  # a training waiting for a slot asks again after this many seconds
WAITER_FRESH_S = 30.0  # a queued run whose task has not asked for this long no longer holds its place
TEMP_MAX_AGE_S = 3600.0  # temporary files older than this are removed by the periodic check
RECOVER_EVERY_S = 10.0  # recover_if_no_worker looks at the registry at most this often per process
STOPPED_EARLY = ("stopped by the user before the first epoch finished, so no checkpoint of a finished epoch "
                 "exists: start it again to train it")

huey = SqliteHuey(name="ml_manager", filename=str(paths.queue_path()), results=False, strict_fifo=True, timeout=30)

_ACTIVE_RUNS: set[str] = set()  # model ids this process is training
_ACTIVE_JOBS: set[str] = set()  # inference job ids this process is running
_STATE_LOCK = threading.Lock()
_started_pid: int | None = None
_consumer_stop_flag: Any = None


def max_trainings() -> int:
    """How many trainings may run at once (``ML_MANAGER_MAX_TRAININGS``, default 1)."""
    try:
        return max(1, int(os.environ.get("ML_MANAGER_MAX_TRAININGS", "1")))
    except ValueError:
        return 1


def stale_after_s() -> float:
    """Heartbeat age after which a running run counts as abandoned (``ML_MANAGER_STALE_AFTER_S``)."""
    try:
        return max(5.0, float(os.environ.get("ML_MANAGER_STALE_AFTER_S", "60")))
    except ValueError:
        return 60.0


def _queue() -> SqliteHuey:
    """The Huey instance, pointed at the current data home's queue file."""
    wanted = str(paths.queue_path())
    if huey.storage.filename != wanted:
        with _STATE_LOCK:
            if huey.storage.filename != wanted:
                huey.storage_kwargs["filename"] = wanted
                huey.storage = huey.create_storage()
    return huey


def _shutting_down() -> bool:
    flag = _consumer_stop_flag
    return bool(flag is not None and flag.is_set())


def _find_consumer_stop_flag() -> Any:
    """The running consumer's stop flag (set on SIGINT), so long tasks can end early and cleanly."""
    from huey.consumer import Consumer

    for obj in gc.get_objects():
        if isinstance(obj, Consumer) and obj.huey is huey:
            return obj.stop_flag
    return None


# --------------------------------------------------------------------------- training

class _StopWatch:
    """``should_stop`` for the training loop: a stop request in the row, or the worker shutting down."""

    def __init__(self, model_id: str, conn):
        self.model_id, self.conn = model_id, conn
        self.reason: str | None = None  # "user" | "shutdown"
        self._last = 0.0

    def __call__(self) -> bool:
        if self.reason:
            return True
        if _shutting_down():
            self.reason = "shutdown"
            return True
        now = time.monotonic()
        if now - self._last >= STOP_POLL_S:
            self._last = now
            status = store.model_status(self.model_id, db=self.conn)
            if status is None or status == "stopping":
                self.reason = "user"
        return self.reason is not None


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
            left = min(left, max(0.0, self.started_at + self.max_minutes * 60 - now))
        return left

    def __call__(self, event: dict) -> None:
        try:
            self._handle(event)
        except Exception:  # noqa: BLE001 - a registry hiccup must not kill the training; it is logged
            self.failures += 1
            log.exception("could not record %s event of model %s", event.get("type"), self.model_id)

    def _handle(self, event: dict) -> None:
        kind, now = event.get("type"), store.utc_now()
        update = lambda **f: store.update_model(self.model_id, db=self.conn, **f)  # noqa: E731
        if kind == "start":
            self.started_at = self.clock()
            self.start_epoch, self.total_epochs = event["start_epoch"], event["total_epochs"]
            self.steps = max(1, event["steps_per_epoch"])
            resumed = {}
            if self.start_epoch > 1:  # a continued run: its curve goes on from the checkpoint's epoch
                # rows of an epoch whose checkpoint a crash lost are run again
                store.forget_epochs_from(self.model_id, self.start_epoch, db=self.conn)
                resumed = dict(epochs_run=self.start_epoch - 1, best_epoch=event.get("best_epoch") or None,
                               best_metric=event.get("best_metric"), epochs_since_best=event.get("epochs_since_best"))
            update(total_epochs=self.total_epochs, batches=self.steps, current_epoch=self.start_epoch, batch=0,
                   heartbeat_at=now, **resumed)
        elif kind == "batch":
            if self.first_batch is None:
                self.first_batch = (self.clock(), (event["epoch"] - self.start_epoch) * self.steps + event["step"])
            if self.clock() - self._last_write < 0.25 and event["step"] != event["steps"]:
                return
            self._last_write = self.clock()
            update(current_epoch=event["epoch"], batch=event["step"], batches=event["steps"],
                   eta_s=self.eta(event["epoch"], event["step"]), heartbeat_at=now)
        elif kind == "epoch_end":
            self.epochs_done += 1
            store.log_epoch(self.model_id, event["epoch"], event["train_loss"], event["val_loss"], event["val_dice"],
                            event["lr"], event["seconds"], db=self.conn)
            fields = dict(epochs_run=event["epoch"], current_epoch=event["epoch"], best_epoch=event["best_epoch"],
                          best_metric=event["best_metric"], epochs_since_best=event["epochs_since_best"],
                          patience=event["patience"], eta_s=self.eta(event["epoch"] + 1, 0), heartbeat_at=now)
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


def _error_text(exc: BaseException) -> str:
    """A user-facing sentence for an exception (our ValueErrors already are sentences)."""
    if isinstance(exc, (ValueError, WorkerShutdown)):
        return str(exc)
    return f"{type(exc).__name__}: {exc} (the traceback is in the worker log)"


@huey.task()
def train_model_task(model_id: str, config: dict, resume_from: str | None = None) -> None:
    """Train one model (waits, without holding a worker thread, until a training slot is free)."""
    with _STATE_LOCK:
        _ACTIVE_RUNS.add(model_id)  # before the claim, so the stale check never sees it ownerless
    try:
        claimed = store.claim_training_slot(model_id, max_trainings(), WAITER_FRESH_S, store.this_worker_id())
    except store.UnknownModelError:
        claimed = None
    if not claimed:
        with _STATE_LOCK:
            _ACTIVE_RUNS.discard(model_id)
        if claimed is False:
            raise RetryTask(delay=WAIT_RETRY_S)
        log.info("training task of %s skipped: the run is no longer queued", model_id)
        return
    try:
        _run_training(model_id, config, resume_from)
    finally:
        with _STATE_LOCK:
            _ACTIVE_RUNS.discard(model_id)


def _run_training(model_id: str, config: dict, resume_from: str | None) -> None:
    conn = store.connect()
    try:
        _train_and_record(model_id, config, resume_from, conn)
    finally:
        conn.close()


def _train_and_record(model_id: str, config: dict, resume_from: str | None, conn) -> None:
    budget = float(config.get("max_minutes") or 0.0) if isinstance(config, dict) else 0.0
    stopper, progress = _StopWatch(model_id, conn), ProgressRecorder(model_id, conn, max_minutes=budget)
    finish = lambda **f: store.update_model(model_id, db=conn, only_if_status=("running", "stopping"),  # noqa: E731
                                            finished_at=store.utc_now(), eta_s=None, **f)
    try:
        from engine.training.config import TrainingConfig
        from engine.training.loop import train

        row = store.get_model(model_id, db=conn)
        plan = json.loads(row["plan"]) if row.get("plan") else None  # the row is the record of the plan
        result = train(TrainingConfig.from_dict(config), row["dataset"], paths.checkpoints_dir(model_id),
                       on_event=progress, should_stop=stopper, resume_from=resume_from, plan=plan)
    except Exception as exc:  # noqa: BLE001 - every failure becomes the run's error text
        log.exception("training of %s failed", model_id)
        finish(status="failed", error=_error_text(exc))
        return
    if result.best_checkpoint is not None:  # the checkpoint event wrote this row already; this covers a lost write
        store.add_checkpoint(model_id, result.best_epoch, result.best_checkpoint, "best", result.best_metric, db=conn)
    fields: dict[str, Any] = dict(epochs_run=result.epochs_run, best_epoch=result.best_epoch or None,
                                  best_metric=result.best_metric)
    if result.recommended_postprocess:
        fields["recommended_postprocess"] = result.recommended_postprocess
    if stopper.reason == "shutdown":
        fields.update(status="failed", error=(
            f"the worker was shut down during training after {result.epochs_run} epoch(s); last.pt was kept: "
            "Continue training (or start_training with resume=True) carries on from it"))
    elif result.stop_reason == "user_stop":
        has_best = result.best_checkpoint is not None
        fields.update(status="completed" if has_best else "stopped", stop_reason="user_stop",
                      error=None if has_best else STOPPED_EARLY)
    else:
        fields.update(status="completed", stop_reason=result.stop_reason, error=None)
    finish(**fields)


@huey.task(priority=100)
def stop_training_task(model_id: str) -> str:
    """``stop_training`` through the queue (jumps ahead of other tasks; ``stop_training`` itself never waits)."""
    return stop_training(model_id)


# --------------------------------------------------------------------------- batch inference

@huey.task()
def run_inference_task(job_id: str) -> None:
    """Predict every image of the job's folder or zip; outputs go to ``inference/<job_id>/``."""
    from engine.inference.batch import run_job

    row = store.get_inference_job(job_id)
    if row["status"] != "queued":
        log.info("inference job %s skipped: it is %s", job_id, row["status"])
        return
    with _STATE_LOCK:
        _ACTIVE_JOBS.add(job_id)
    try:
        store.update_inference_job(job_id, status="running", started_at=store.utc_now(),
                                   heartbeat_at=store.utc_now(), worker=store.this_worker_id())
        run_job(job_id, should_stop=_shutting_down)
    except Exception as exc:  # noqa: BLE001 - recorded on the job's row
        log.exception("inference job %s failed", job_id)
        store.update_inference_job(job_id, status="failed", finished_at=store.utc_now(), error=_error_text(exc))
    finally:
        with _STATE_LOCK:
            _ACTIVE_JOBS.discard(job_id)


# --------------------------------------------------------------------------- liveness and recovery

def _worker_gone(worker: str | None) -> bool:
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


def recover_stale_runs(at_startup: bool = False) -> list[str]:
    """Mark abandoned runs and inference jobs ``failed``; returns their ids."""
    limit, me, failed = stale_after_s(), store.this_worker_id(), []
    cutoff = datetime.fromtimestamp(time.time() - limit, timezone.utc).isoformat(timespec="milliseconds")
    with _STATE_LOCK:
        mine = set(_ACTIVE_RUNS) | set(_ACTIVE_JOBS)
    conn = store.connect()
    try:
        candidates = [("model", r) for r in store.list_models(status=("running", "stopping"), db=conn)]
        candidates += [("job", r) for r in store.list_inference_jobs(status="running", db=conn)]
        for kind, row in candidates:
            if row["worker"] == me and row["id"] in mine:
                continue
            age = store.age_seconds(row["heartbeat_at"])
            gone = at_startup and _worker_gone(row["worker"])
            if not (gone or age is None or age > limit):
                continue
            beat = row["heartbeat_at"] or "never"
            # One conditional UPDATE decides: another process recovering the same row at once, or a worker
            # whose beat arrived since we read it, makes it change nothing here.
            stale_before = None if gone else cutoff
            if kind == "model":
                changed = store.fail_stale_model(
                    row["id"], f"the worker stopped while training (last heartbeat {beat}); the checkpoints saved "
                               "until then were kept, and Continue training carries on from last.pt",
                    stale_before, db=conn)
            else:
                changed = store.fail_stale_job(
                    row["id"], f"the worker stopped while this job ran (last heartbeat {beat}); submit it again",
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


_last_recovery = 0.0


def recover_if_no_worker(force: bool = False) -> list[str]:
    """Fail abandoned runs and jobs when no worker is alive to do it (for the dashboard, API and CLI).

    Does nothing while a worker's heartbeat is younger than ``stale_after_s()`` (that worker's periodic
    check takes care of it) and, unless ``force``, when this process looked less than ``RECOVER_EVERY_S``
    ago. Queued runs are left alone: their tasks wait in the queue for the next worker.

    Returns:
        The ids of the runs and jobs marked ``failed`` by this call.
    """
    global _last_recovery
    now = time.monotonic()
    if not force and now - _last_recovery < RECOVER_EVERY_S:
        return []
    _last_recovery = now
    beat = store.worker_heartbeat()
    if beat is not None and store.age_seconds(beat.isoformat()) <= stale_after_s():
        return []
    return recover_stale_runs(at_startup=False)


def remove_temp_files(max_age_s: float = TEMP_MAX_AGE_S) -> list[Path]:
    """Delete leftovers of interrupted atomic writes and extractions (``.name.*`` entries) in the data home."""
    home, removed = paths.data_home(), []
    cutoff = time.time() - max_age_s
    places = [home / "models", home / "inference", home / "datasets", home / "uploads"]
    candidates = [p for place in places if place.is_dir() for p in place.glob(".*")]
    candidates += list((home / "models").glob("*/checkpoints/.*.tmp")) + list((home / "inference").glob("*/.*"))
    candidates += list((home / "inference").glob("*/*/.*.tmp"))
    for path in candidates:
        try:
            if path.lstat().st_mtime > cutoff:
                continue
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
            removed.append(path)
        except OSError:
            continue
    return removed


@huey.periodic_task(crontab(minute="*"))
def check_stale_runs() -> list[str]:
    """Every minute: fail runs whose heartbeat is too old, remove old temporary files."""
    failed = recover_stale_runs(at_startup=False)
    remove_temp_files()
    return failed


def _beat_forever() -> None:
    conn = None
    while True:
        try:
            conn = conn or store.connect()
            store.beat_worker(db=conn)
            with _STATE_LOCK:
                runs, jobs = list(_ACTIVE_RUNS), list(_ACTIVE_JOBS)
            store.beat_active(runs, jobs, db=conn)
        except Exception:  # noqa: BLE001 - keep beating; a locked moment passes
            log.exception("heartbeat failed")
            if conn is not None:
                conn.close()
            conn = None
        time.sleep(BEAT_S)


@huey.on_startup()
def worker_started() -> None:
    """Once per worker process: recover what a killed worker left, then start the heartbeat thread."""
    global _started_pid, _consumer_stop_flag
    with _STATE_LOCK:
        if _started_pid == os.getpid():
            return
        _started_pid = os.getpid()
    _consumer_stop_flag = _find_consumer_stop_flag()
    store.beat_worker()
    failed = recover_stale_runs(at_startup=True)
    # Runs still queued keep their place in line: their tasks are in queue.db and ask again shortly.
    store.beat_queued()
    removed = remove_temp_files(max_age_s=60.0)
    log.info("worker %s started: %d abandoned run(s) failed, %d temporary file(s) removed",
             store.this_worker_id(), len(failed), len(removed))
    threading.Thread(target=_beat_forever, name="ml-manager-heartbeat", daemon=True).start()
    threading.Thread(target=_warm_up, name="ml-manager-warm-up", daemon=True).start()


def _warm_up() -> None:
    """Import torch and the trainer in the background, so the first training starts seconds sooner."""
    try:
        import engine.inference.predict  # noqa: F401
        import engine.training.loop  # noqa: F401
    except Exception:  # noqa: BLE001 - the training task will report the same error properly
        log.exception("warming up the engine failed")


# --------------------------------------------------------------------------- Python API

def _training_config(config: Any) -> dict:
    """A validated TrainingConfig dict from a dict or a TrainingConfig (ValueError names the bad option)."""
    from engine.training.config import TrainingConfig

    if isinstance(config, TrainingConfig):
        return config.to_dict()
    return TrainingConfig.from_dict(config if config is not None else {}).to_dict()


def _check_startable(row: dict, resume: bool) -> None:
    if (row["status"] == "queued" and not row["task_id"]) or row["status"] in (
            ("failed", "completed") if resume else ("failed", "stopped")):
        return
    what = {"queued": "is already queued", "running": "is running", "stopping": "is stopping",
            "stopped": "was stopped before its first epoch finished, so there is nothing to continue: start it "
                       "again without resume",
            "completed": "has already completed; continue it with resume=True (the Continue training button) "
                         "or create a new model to train again"}[row["status"]]
    raise store.WrongStateError(f"Model {row['id']!r} {what}.")


def start_training(model_id: str, training_config: Any, resume: bool = False, plan: dict | None = None) -> str:
    """Queue the training of an existing model row and return the Huey task id.

    ``plan``: the ``engine.training.planner.Plan.to_dict()`` that chose ``training_config``, written to the row
    (and by the worker into every checkpoint); None keeps the row's plan.

    Allowed for a model never started, for a ``failed`` or ``stopped`` one, and with ``resume=True`` for a ``completed``
    one: ``resume=True`` continues from its ``last.pt`` (epochs, optimiser, schedule, early stopping and
    the curves carry on; ``engine.training.checkpoint.check_resume`` says what to change when nothing is left to run).
    Anything else raises ValueError and changes nothing.
    """
    config = _training_config(training_config)
    _check_startable(store.get_model(model_id), resume)
    resume_from = None
    if resume:  # read the file before taking the registry's write lock
        from engine.training.checkpoint import check_resume
        from engine.training.config import TrainingConfig

        last = paths.checkpoints_dir(model_id) / "last.pt"
        if not last.exists():
            raise store.WrongStateError(f"Model {model_id!r} has no last.pt to continue from (no epoch was "
                                        "saved): start it again without resume.")
        check_resume(last, TrainingConfig.from_dict(config))
        resume_from = str(last)
    q = _queue()
    conn = store.connect()
    try:
        with store.immediate(conn):
            _check_startable(store.get_model(model_id, db=conn), resume)
            task = train_model_task.s(model_id, config, resume_from)
            now = store.utc_now()
            store.update_model(model_id, db=conn, status="queued", task_id=task.id, config=config, queued_at=now,
                               heartbeat_at=now, error=None, stop_reason=None, finished_at=None, started_at=None,
                               current_epoch=None, batch=None, eta_s=None, total_epochs=config["epochs"],
                               patience=config["early_stopping_patience"],
                               monitor=config["early_stopping_monitor"], **({"plan": plan} if plan else {}))
            q.enqueue(task)  # inside the transaction: if queueing fails, the row is rolled back
    finally:
        conn.close()
    return task.id


def submit_training(name: str, dataset: str | os.PathLike, config: Any, submission_key: str | None = None,
                    plan: dict | None = None) -> str:
    """Create a model row for ``dataset`` and queue its training; returns the new model id.

    ``plan``: the ``engine.training.planner.Plan.to_dict()`` that chose ``config`` (see ``engine.training.planner``), kept
    in the row and in every checkpoint; None for a run that was not planned.

    ``submission_key``: one per submission of a form; a second call with the same key queues nothing
    (see ``storage.db.create_model``).

    Raises:
        storage.db.DuplicateSubmissionError: a run was queued with ``submission_key`` already.
        DatasetError: the folder is unusable, holds fewer than 2 images (training holds one out for
            validation), its path is not valid UTF-8 (the run registry stores text), or the patch does
            not fit; nothing is created or queued.
        ValueError: a bad config or name.
    """
    from engine.training.data import DatasetError, check_patch_size, load_dataset

    config = _training_config(config)
    folder = Path(dataset).expanduser()
    for what, text in (("data folder's path", str(folder.resolve())), ("model name", str(name))):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # e.g. a Latin-1 folder name read on a UTF-8 system: b"caf\xe9" -> 'caf\udce9'
            try:  # show the undecodable bytes as escapes (\xe9), which any terminal prints
                shown = os.fsencode(text).decode("utf-8", "backslashreplace")
            except UnicodeEncodeError:
                shown = text.encode("utf-8", "backslashreplace").decode("utf-8")
            raise DatasetError(f"The {what} {shown} is not valid UTF-8 text, which the run registry cannot store: "
                               "rename it using letters, digits, '-' or '_'.") from None
    # DatasetError (a ValueError) with a sentence when the folder is unusable, too small, or the patch
    # cannot fit, before anything is queued: the user hears it now, not minutes later from the worker.
    ds = load_dataset(folder)
    if len(ds) < 2:  # the same refusal train() makes, made before a row exists
        raise DatasetError(f"{ds.root} has {len(ds)} image(s); training needs at least 2 (one held out for validation).")
    check_patch_size(ds, int(config["patch_size"]))
    model_id = store.create_model(name, config, str(folder.resolve()), submission_key=submission_key, plan=plan)
    try:
        start_training(model_id, config)
    except BaseException:
        store.update_model(model_id, status="failed", error="could not be queued")
        store.delete_model(model_id)
        raise
    return model_id


def stop_training(model_id: str) -> str:
    """Stop a run: ``"stopping"`` for a running one (it ends within a second), ``"cancelled"`` for a
    queued one (revoked, never starts). A finished run raises ValueError and changes nothing."""
    outcome = store.request_stop(model_id)
    if outcome == "cancelled":
        task_id = store.get_model(model_id)["task_id"]
        if task_id:
            _queue().revoke_by_id(task_id)
    return outcome


def training_status(model_id: str) -> dict:
    """Everything a page or script shows about a run, as plain JSON-ready values."""
    conn = store.connect()
    try:
        row = store.get_model(model_id, db=conn)
        latest = store.latest_epoch(model_id, db=conn)
    finally:
        conn.close()
    total, epoch = row["total_epochs"], row["current_epoch"]
    done = row["epochs_run"] or 0
    progress = None
    if total:
        inside = (row["batch"] or 0) / row["batches"] if row["batches"] and row["status"] in ("running", "stopping") else 0
        progress = 1.0 if row["status"] == "completed" else min(1.0, (done + (inside if epoch and epoch > done else 0)) / total)
    return {
        "model_id": row["id"], "name": row["name"], "status": row["status"], "stop_reason": row["stop_reason"],
        "error": row["error"], "epoch": epoch, "total_epochs": total, "epochs_run": done,
        "batch": row["batch"], "batches": row["batches"], "progress": progress,
        "latest": latest,
        "best": {"epoch": row["best_epoch"], "metric": row["best_metric"], "monitor": row["monitor"],
                 "val_dice": row["best_val_dice"]},
        "epochs_since_best": row["epochs_since_best"], "patience": row["patience"],
        "eta_s": row["eta_s"] if row["status"] in ("running", "stopping") else None,
        "heartbeat_at": row["heartbeat_at"], "heartbeat_age_s": store.age_seconds(row["heartbeat_at"]),
        "created_at": row["created_at"], "started_at": row["started_at"], "finished_at": row["finished_at"],
        "dataset": row["dataset"], "task_id": row["task_id"],
        "plan": json.loads(row["plan"]) if row.get("plan") else None,
    }


def start_inference(checkpoint_path: str | os.PathLike, input_path: str | os.PathLike, postprocess: dict | None,
                    model_id: str | None = None, scale: str | float = "auto") -> str:
    """Queue a batch inference over a folder of images or a .zip; returns the job id.

    ``checkpoint_path`` is a ``.pt`` file or ``"baseline"`` (the classical vesselness filter); ``scale``
    (``"auto"``, ``"none"`` or a factor; see ``engine.inference.predict.resolve_scale``) is how each photograph is
    resized for the model. Raises ValueError with a sentence for anything unusable; nothing is queued then.
    """
    from engine.inference.batch import check_inputs
    from engine.fov import parse_scale

    scale = parse_scale(scale)
    checkpoint, source, settings = check_inputs(checkpoint_path, input_path, postprocess)
    if model_id is not None and model_id != store.BASELINE:
        store.get_model(model_id)
    q = _queue()
    job_id = store.create_inference_job(checkpoint, source, settings, model_id=model_id, scale=str(scale))
    task = run_inference_task.s(job_id)
    store.update_inference_job(job_id, task_id=task.id)
    try:
        q.enqueue(task)
    except Exception as exc:
        store.update_inference_job(job_id, status="failed", error=f"could not be queued: {exc}")
        raise
    return job_id


def cancel_inference(job_id: str) -> str:
    """Cancel a batch job: ``"cancelled"`` when queued (revoked, never starts), ``"cancelling"`` when running
    (it stops before its next image, keeping what it wrote). Unknown or finished jobs raise ValueError."""
    outcome = store.request_cancel(job_id)
    if outcome == "cancelled" and (task_id := store.get_inference_job(job_id)["task_id"]):
        _queue().revoke_by_id(task_id)
    return outcome


def queue_length() -> int:
    """How many tasks wait in the worker's queue (trainings waiting for a slot are retried, so they count)."""
    return _queue().pending_count()


def inference_status(job_id: str) -> dict:
    """A batch inference job's state, counts and output files."""
    row = store.get_inference_job(job_id)
    out = Path(row["output_dir"])
    results = out / "results.zip"
    return {
        "job_id": row["id"], "status": row["status"], "progress": row["progress"], "n_total": row["n_total"],
        "n_done": row["n_done"], "n_failed": row["n_failed"], "error": row["error"], "model_id": row["model_id"],
        "checkpoint_path": row["checkpoint_path"], "input_path": row["input_path"],
        "postprocess": json.loads(row["postprocess"] or "{}"), "output_dir": str(out),
        "stats_csv": str(out / "stats.csv") if (out / "stats.csv").exists() else None,
        "results_zip": str(results) if results.exists() else None,
        "created_at": row["created_at"], "started_at": row["started_at"], "finished_at": row["finished_at"],
        "heartbeat_at": row["heartbeat_at"],
    }
