"""The words the registry stores in its columns, spelled once: the status groups of runs and batch jobs,
the reasons a training ends (with the words the dashboard shows for each), the kinds of checkpoint, and
the value that stands for the classical filter (:data:`BASELINE`, read through :func:`checkpoint_file`).
"""
from __future__ import annotations

import os
from pathlib import Path

# A run's status (models.status).
# stopped: the user stopped the run before its first epoch ended, so no epoch's checkpoint exists; the ``error``
# column says so in words, and the run can be started again (not continued).
STATUSES = ("queued", "running", "stopping", "completed", "failed", "stopped")
ACTIVE_STATUSES = ("queued", "running", "stopping")  # a run a worker holds or will start: not to be deleted
TRAINING_STATUSES = ("running", "stopping")  # a worker is training it now
# Why a training ended: the code stored in the row (and the CLI's JSON), and the words the dashboard shows.
STOP_REASONS = {
    "max_epochs": "reached its last epoch",
    "early_stopping": "early stopping (no better validation score for `patience` epochs)",
    "user_stop": "stopped by the user",
    "time_limit": "its time budget ran out",  # max_minutes ran out
}
CHECKPOINT_KINDS = ("best", "last", "epoch")  # checkpoints.kind
# A batch inference job's status (inference_jobs.status).
JOB_STATUSES = ("queued", "running", "completed", "failed", "cancelled")
JOB_ACTIVE_STATUSES = ("queued", "running")  # a batch job waiting for or in the worker
BASELINE = "baseline"  # model id / checkpoint path that stands for the classical vesselness baseline


def checkpoint_file(source: str | os.PathLike) -> Path | None:
    """The file an inference job's stored ``checkpoint_path`` reads (a checkpoint or the shipped model), None
    for the classical filter (``BASELINE``)."""
    return None if str(source) == BASELINE else Path(source)
