"""The run registry's one import for callers: ``from storage import db as store``, then ``store.<name>``.

The registry is one SQLite file (``paths.db_path()``) read by the dashboard and written by the worker. Each
table lives in its own module, and this module re-exports their public names (``__all__``), so a caller
never needs to know which module holds a name:

- ``storage.connection``: opening the file (WAL, busy timeout, migrations), ``immediate`` transactions,
  times and ids;
- ``storage.vocabulary``: the words stored in columns (statuses, stop reasons, ``BASELINE``);
- ``storage.runs``: runs (``models``), ``storage.epochs``: their epoch metrics, ``storage.checkpoints``:
  their checkpoint files, ``storage.presets``: post-processing presets;
- ``storage.inference_jobs``: batch inference jobs;
- ``storage.workers``: worker heartbeats, ``storage.tasks``: the queued tasks and heartbeats across runs
  and jobs.

Every query function takes an optional ``db=`` (a connection from :func:`connect`); without it, the
function opens ``paths.db_path()`` of the current ``ML_MANAGER_HOME`` and closes it again. Timestamps are
ISO-8601 UTC strings (``2025-01-31T12:00:00.123+00:00``). JSON columns (``config``,
``recommended_postprocess``, ``postprocess``, ``datasets``) are stored and returned as JSON strings, except
presets, whose ``config`` comes back as a dict. Modules inside ``storage/`` import from the table modules
directly, never from here.
"""
from __future__ import annotations

from storage.checkpoints import add_checkpoint, all_checkpoints, forget_checkpoints, model_checkpoints
from storage.connection import BUSY_TIMEOUT_S, age_seconds, connect, immediate, parse_time, utc_now
from storage.epochs import forget_epochs_from, latest_epoch, log_epoch, model_metrics
from storage.errors import WrongStateError
from storage.inference_jobs import (UnknownJobError, active_inference_jobs, claim_inference_job,
                                    create_inference_job, fail_stale_job, forget_inference_job, get_inference_job,
                                    inference_cancelled, list_inference_jobs, request_cancel, update_inference_job)
from storage.presets import list_presets, save_preset
from storage.runs import (DuplicateSubmissionError, UnknownModelError, claim_training_slot, create_model,
                          fail_stale_model, forget_model, get_model, list_models, model_datasets, model_status,
                          request_stop, retire_dataset, update_model)
from storage.tasks import beat_active, beat_queued, queued_tasks, replace_task_id
from storage.vocabulary import (ACTIVE_STATUSES, BASELINE, CHECKPOINT_KINDS, JOB_ACTIVE_STATUSES, JOB_STATUSES,
                                STATUSES, STOP_REASONS, TRAINING_STATUSES, checkpoint_file)
from storage.workers import (WORKER_FRESH_S, beat_worker, forget_workers, list_workers, this_worker_id,
                             worker_heartbeat)

__all__ = [
    # storage.connection
    "BUSY_TIMEOUT_S", "age_seconds", "connect", "immediate", "parse_time", "utc_now",
    # storage.vocabulary
    "ACTIVE_STATUSES", "BASELINE", "CHECKPOINT_KINDS", "JOB_ACTIVE_STATUSES", "JOB_STATUSES", "STATUSES",
    "STOP_REASONS", "TRAINING_STATUSES", "checkpoint_file",
    # storage.errors
    "WrongStateError",
    # storage.runs
    "DuplicateSubmissionError", "UnknownModelError", "claim_training_slot", "create_model", "fail_stale_model",
    "forget_model", "get_model", "list_models", "model_datasets", "model_status", "request_stop",
    "retire_dataset", "update_model",
    # storage.epochs
    "forget_epochs_from", "latest_epoch", "log_epoch", "model_metrics",
    # storage.checkpoints
    "add_checkpoint", "all_checkpoints", "forget_checkpoints", "model_checkpoints",
    # storage.presets
    "list_presets", "save_preset",
    # storage.inference_jobs
    "UnknownJobError", "active_inference_jobs", "claim_inference_job", "create_inference_job", "fail_stale_job",
    "forget_inference_job", "get_inference_job", "inference_cancelled", "list_inference_jobs", "request_cancel",
    "update_inference_job",
    # storage.workers
    "WORKER_FRESH_S", "beat_worker", "forget_workers", "list_workers", "this_worker_id", "worker_heartbeat",
    # storage.tasks
    "beat_active", "beat_queued", "queued_tasks", "replace_task_id",
]
