"""Training through the queue: ``submit_training`` / ``start_training`` queue a run, ``train_model_task``
runs it on the worker, ``stop_training`` and ``training_status`` follow it.

* Trainings run one at a time (``ML_MANAGER_MAX_TRAININGS``, default 1). A training task that finds
  no free slot does not hold a worker thread: it asks Huey to retry it a second later and stays
  ``queued``; slots are granted first come, first served (``storage.db.claim_training_slot``). With
  two or more worker threads a batch inference therefore never waits behind a training.
* ``stop_training`` marks a running run ``stopping``; the training loop's ``should_stop`` reads the
  row at most every ``STOP_POLL_S``, so it stops within a second and saves ``last.pt``. The run then
  ends ``completed`` with ``stop_reason='user_stop'`` when it saved a best checkpoint, otherwise
  ``stopped`` (not a failure: no epoch had finished, the error column says so, and it can be started
  again). A run still waiting in the queue is revoked and marked ``failed`` with
  ``stop_reason='user_stop'`` and the error "stopped by the user before it started".
* A graceful shutdown of the worker (SIGINT) stops a running training the same way (``last.pt`` is
  kept) and marks it ``failed`` with an error that says so; ``start_training(..., resume=True)``
  continues it. Queued trainings stay in the queue for the next start.
* Retention: after each ``epoch_XXX.pt`` it records, the worker deletes that model's epoch checkpoints
  beyond the newest ``ML_MANAGER_KEEP_EPOCH_CHECKPOINTS`` (``engine.housekeeping``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.jobs.ledger import STOP_POLL_S, RegistryTraining
from engine.jobs.lifecycle import STOPPED_EARLY, ProgressRecorder, max_trainings
from engine.jobs.queue import TRAINING, check_queue, queue_for, queued_task, redis_errors, redis_url, remote_link
from engine.jobs.runner import StopPoller, run_training
from engine.progress import run_budget_s, run_progress
from storage import db as store
from storage import paths

if TYPE_CHECKING:
    from engine.training.config import TrainingConfig

__all__ = ["STOP_POLL_S", "STOPPED_EARLY", "ProgressRecorder", "StopPoller", "max_trainings", "settings_sources",
           "start_training",
           "stop_training", "stop_training_task", "submit_training", "train_model_task", "training_status"]


@queued_task()
def train_model_task(model_id: str, config: dict | None = None, resume_from: str | None = None) -> None:
    """Train one model (waits, without holding a worker thread, until a training slot is free).

    ``config`` None: the run's row holds it (the Redis queue carries only ids: the configuration was
    validated once, when the run was submitted). On a worker on another machine the run goes through its
    remote link (``engine.remote.worker``), which fetches all of it from the dashboard. Either way the one
    runner (``engine.jobs.runner``) runs it.
    """
    link = remote_link()
    if link is not None:
        return link.train(model_id, resume=bool(resume_from))
    run_training(RegistryTraining(model_id, config, resume_from))


@queued_task(priority=100)
def stop_training_task(model_id: str) -> str:
    """``stop_training`` through the queue (jumps ahead of other tasks; ``stop_training`` itself never waits)."""
    return stop_training(model_id)



# --------------------------------------------------------------------------- Python API

def _typed_config(config: Any) -> "TrainingConfig":
    """The face's one check: a TrainingConfig as it is, a dict (a Python caller's) checked into one
    (UserError names the bad option); None is the defaults."""
    from engine.training.config import TrainingConfig

    if isinstance(config, TrainingConfig):
        return config
    return TrainingConfig.from_dict(config if config is not None else {})


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


def start_training(model_id: str, training_config: Any, resume: bool = False, plan: dict | None = None,
                   queue: str | None = None) -> str:
    """Queue the training of an existing model row and return the Huey task id.

    ``training_config``: a ``TrainingConfig`` (or a dict, checked into one here).

    ``queue``: with the Redis queue, the named queue to send it to (None: the one it went to before, or
    ``training``); ignored on the SQLite queue file, which has one queue.

    ``plan``: the ``engine.training.planner.Plan.to_dict()`` that chose ``training_config``, written to the row
    (and by the worker into every checkpoint); None keeps the row's plan.

    Allowed for a model never started, for a ``failed`` or ``stopped`` one, and with ``resume=True`` for a ``completed``
    one: ``resume=True`` continues from its ``last.pt`` (epochs, optimiser, schedule, early stopping and
    the curves carry on; ``engine.training.checkpoint.check_resume`` says what to change when nothing is left to run).
    Anything else raises UserError and changes nothing.
    """
    return _queue_training(model_id, _typed_config(training_config), resume, plan, queue, config_stored=False)


def _queue_training(model_id: str, config: "TrainingConfig", resume: bool, plan: dict | None, queue: str | None,
                    config_stored: bool) -> str:
    """``start_training`` with the config checked already; ``config_stored``: the row holds it (a run
    ``submit_training`` just created), so it is not written again."""
    row = store.get_model(model_id)
    _check_startable(row, resume)
    queue = check_queue(queue, row.get("queue") or TRAINING)
    resume_from = None
    if resume:  # read the file before taking the registry's write lock
        from engine.training.checkpoint import check_resume

        last = paths.checkpoints_dir(model_id) / "last.pt"
        if not last.exists():
            raise store.WrongStateError(f"Model {model_id!r} has no last.pt to continue from (no epoch was "
                                        "saved): start it again without resume.")
        check_resume(last, config)
        resume_from = str(last)
    stored = config.to_dict()
    q = queue_for(queue)
    conn = store.connect()
    try:
        with store.immediate(conn):
            _check_startable(store.get_model(model_id, db=conn), resume)
            # the Redis queue carries only the id: a worker on another machine fetches the rest from the row
            task = train_model_task.s(model_id, None if redis_url() else stored, resume_from)
            now = store.utc_now()
            store.update_model(model_id, db=conn, status="queued", task_id=task.id, queued_at=now,
                               heartbeat_at=now, error=None, stop_reason=None, finished_at=None, started_at=None,
                               current_epoch=None, batch=None, eta_s=None, total_epochs=config.epochs,
                               patience=config.early_stopping_patience,
                               monitor=config.early_stopping_monitor, queue=queue, resume_from=resume_from,
                               **({} if config_stored else {"config": stored}), **({"plan": plan} if plan else {}))
            with redis_errors("queue the training"):
                q.enqueue(task)  # inside the transaction: if queueing fails, the row is rolled back
    finally:
        conn.close()
    return task.id


def settings_sources(config: dict, plan: dict | None = None, copied: dict | None = None, copied_from: str = "",
                     given: str = "set") -> dict[str, str]:
    """Where each setting of ``config`` that matters came from: ``{field: source}`` for the fields the plan
    changed (``"planned"``), those equal to the ``copied`` values of run ``copied_from`` (``"copied from run
    <id>"``) and the other fields that differ from TrainingConfig's defaults (``given``: ``"typed"`` from the
    Train form, ``"set"`` from an API or command-line submission). Fields left out are the defaults."""
    from engine.training.config import TrainingConfig

    defaults = TrainingConfig().to_dict()
    planned = set((plan or {}).get("changed") or {})
    sources = {}
    for name, value in config.items():
        if name in planned:
            sources[name] = "planned"
        elif copied and name in copied and copied[name] == value:
            sources[name] = f"copied from run {copied_from}"
        elif name in defaults and value != defaults[name]:
            sources[name] = given
    return sources


def submit_training(name: str, dataset: str | os.PathLike | list, config: Any, submission_key: str | None = None,
                    plan: dict | None = None, queue: str | None = None, sources: dict | None = None) -> str:
    """Create a model row for ``dataset`` and queue its training; returns the new model id.

    ``config``: a ``TrainingConfig`` (or a dict, checked into one here: the one check on its way to the worker).

    ``dataset``: one data set folder or a list of them, each in its own layout and resolution (the run
    trains on all of them, ``engine.training.loop.train``); the registry records every one.
    ``sources``: where each setting came from (``settings_sources``), stored with the run; None: the plan's
    fields are "planned" and the other settings that are not the defaults "set".

    ``queue``: with the Redis queue, the named queue it goes to (default ``training``; see ``start_training``).

    ``plan``: the ``engine.training.planner.Plan.to_dict()`` that chose ``config`` (see ``engine.training.planner``), kept
    in the row and in every checkpoint; None for a run that was not planned.

    ``submission_key``: one per submission of a form; a second call with the same key queues nothing
    (see ``storage.db.create_model``).

    Raises:
        storage.db.DuplicateSubmissionError: a run was queued with ``submission_key`` already.
        DatasetError: the list is empty, a folder is unusable (missing, empty, without vessel masks) or listed
            twice, the sets hold fewer than 2 images together (training holds one out for validation), a path
            is not valid UTF-8 (the run registry stores text), or the patch does not fit; nothing is created or
            queued.
        UserError: a bad config or name.
    """
    from engine.training.data import DatasetError, check_patch_size, load_datasets

    config = _typed_config(config)
    queue = check_queue(queue, TRAINING)
    items = list(dataset) if isinstance(dataset, (list, tuple)) else [dataset]
    folders = [Path(item).expanduser() for item in items]
    for what, text in [*(("data folder's path", str(folder.resolve())) for folder in folders),
                       ("model name", str(name))]:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # e.g. a Latin-1 folder name read on a UTF-8 system: b"caf\xe9" -> 'caf\udce9'
            try:  # show the undecodable bytes as escapes (\xe9), which any terminal prints
                shown = os.fsencode(text).decode("utf-8", "backslashreplace")
            except UnicodeEncodeError:
                shown = text.encode("utf-8", "backslashreplace").decode("utf-8")
            raise DatasetError(f"The {what} {shown} is not valid UTF-8 text, which the run registry cannot store: "
                               "rename it using letters, digits, '-' or '_'.") from None
    # DatasetError (a UserError) with a sentence when a folder is unusable or listed twice, the sets are too
    # small, or the patch cannot fit, before anything is queued: the user hears it now, not minutes later
    # from the worker.
    sets = load_datasets(folders)
    if sum(len(ds) for ds in sets) < 2:  # the same refusal train() makes, made before a row exists
        raise DatasetError(f"{sets[0].root} has {len(sets[0])} image(s); training needs at least 2 (one held out "
                           "for validation).")
    for ds in sets:
        check_patch_size(ds, config.patch_size)
    stored = config.to_dict()
    model_id = store.create_model(name, stored, [str(folder.resolve()) for folder in folders],
                                  submission_key=submission_key, plan=plan,
                                  settings_from=sources if sources is not None else settings_sources(stored, plan))
    try:
        _queue_training(model_id, config, False, None, queue, config_stored=True)
    except BaseException:
        from engine.housekeeping import delete_model

        store.update_model(model_id, status="failed", error="could not be queued")
        delete_model(model_id)
        raise
    return model_id


def stop_training(model_id: str) -> str:
    """Stop a run: ``"stopping"`` for a running one (it ends within a second), ``"cancelled"`` for a
    queued one (revoked, never starts). A finished run raises UserError and changes nothing."""
    outcome = store.request_stop(model_id)
    if outcome == "cancelled":
        row = store.get_model(model_id)
        if row["task_id"]:
            queue_for(row.get("queue")).revoke_by_id(row["task_id"])
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
    return {
        "model_id": row["id"], "name": row["name"], "status": row["status"], "stop_reason": row["stop_reason"],
        "error": row["error"], "epoch": epoch, "total_epochs": total, "epochs_run": done,
        "batch": row["batch"], "batches": row["batches"], "progress": run_progress(row),
        "latest": latest,
        "best": {"epoch": row["best_epoch"], "metric": row["best_metric"], "monitor": row["monitor"],
                 "val_dice": row["best_val_dice"]},
        "epochs_since_best": row["epochs_since_best"], "patience": row["patience"],
        "eta_s": row["eta_s"] if row["status"] in store.TRAINING_STATUSES else None,
        "trained_s": row.get("trained_s"),  # every round of a continued run; its budget is max_minutes of them all
        "budget_s": run_budget_s(row),
        "heartbeat_at": row["heartbeat_at"], "heartbeat_age_s": store.age_seconds(row["heartbeat_at"]),
        "created_at": row["created_at"], "started_at": row["started_at"], "finished_at": row["finished_at"],
        "dataset": row["dataset"], "datasets": store.model_datasets(row), "task_id": row["task_id"], "queue": row.get("queue"),
        "worker": row.get("worker"),
        "plan": json.loads(row["plan"]) if row.get("plan") else None,
    }


