"""The ledger a run reports to: one small interface, two implementations, as huey keeps its queue behind
``BaseStorage`` with ``SqliteStorage`` and ``RedisStorage`` beneath it.

A worker's task hands a ledger to the one runner (``engine.jobs.runner``), which never knows which ledger it
has. The verbs come in pairs: claim / finish (or fail), read the order / record the plan, ask whether a stop
was requested / record the events, checkpoints and progress.

* :class:`RegistryTraining` and :class:`RegistryJob` are the ledger of a worker on the dashboard's machine:
  the run registry (``storage.db``) through the run lifecycle (``engine.jobs.lifecycle``).
* ``engine.remote.ledger`` holds the ledger of a worker on another machine: the dashboard's HTTP API, the
  same routes and JSON bodies as the dashboard's side (``engine.api_workers``) expects.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ContextManager, Protocol

from engine.jobs import lifecycle
from engine.jobs.liveness import ACTIVE
from storage import db as store
from storage import paths

if TYPE_CHECKING:
    from engine.training.config import TrainingConfig
    from engine.training.loop import TrainResult

STOP_POLL_S = 0.5  # how often a training asks its ledger whether it was told to stop
WAIT_RETRY_S = 1  # a training without a free slot asks again after this many seconds


def json_safe(value: Any) -> Any:
    """``value`` as JSON can carry it: NaN and infinities (a diverged loss) as null, tuples as lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


@dataclass
class TrainingOrder:
    """What a claimed run trains with, read once where it starts.

    Attributes:
        config: the run's config, typed (checked when it was submitted; read here without checking again
            where the ledger can).
        plan: the ``engine.training.planner.Plan.to_dict()`` that chose it, or None.
        datasets: the run's data sets (loaded ``engine.training.data.Dataset`` objects, in order).
        out_dir: where its checkpoints go.
        resume_from: the ``last.pt`` it continues from, or None.
    """
    config: "TrainingConfig"
    plan: dict | None
    datasets: list
    out_dir: Path
    resume_from: str | Path | None = None


@dataclass
class JobOrder:
    """What a claimed batch job runs (the arguments of ``engine.inference.batch.run_images``)."""
    row: dict
    out: Path
    source: Path
    checkpoint: str | None = None


class TrainingLedger(Protocol):
    """Where a training run is claimed, read and recorded.

    ``claim`` -> ``read_order`` -> (``record_plan``) -> ``record_event`` for every event of the loop while
    ``stop_requested`` is polled -> ``record_final`` -> ``finish``; ``fail`` instead of ``finish`` when
    anything raised. ``close`` always ends it.
    """
    model_id: str

    def holding(self) -> ContextManager[None]:
        """Inside this block the worker's heartbeat names the run (entered before the claim)."""

    def claim(self) -> bool | None:
        """True: the run is this worker's; False: no free slot yet (ask again); None: no longer queued."""

    def read_order(self) -> TrainingOrder:
        """The claimed run's config, plan, data sets and checkpoint to continue from."""

    def record_plan(self, config: "TrainingConfig", plan: dict) -> None:
        """The run was planned again where it trains: this config and plan replace the submitted ones."""

    def stop_requested(self) -> bool:
        """True once the user asked the run to stop (the runner asks at most every ``STOP_POLL_S``)."""

    def record_event(self, event: dict) -> None:
        """One event of ``engine.training.loop.train`` (start, batch, epoch_end, checkpoint, calibration, …);
        never raises for a record that could not be written (it is logged)."""

    def record_final(self, result: "TrainResult") -> None:
        """The checkpoints as the run left them (best.pt may have changed since its event: calibration)."""

    def finish(self, outcome: dict) -> None:
        """End the run with ``outcome``: the keywords of ``engine.jobs.lifecycle.training_outcome``."""

    def fail(self, error: str) -> None:
        """End the run as failed with ``error`` (a sentence)."""

    def close(self) -> None:
        """Release what the ledger holds (a registry connection)."""


class JobLedger(Protocol):
    """Where a batch inference job is claimed, read and recorded: ``claim`` -> ``read_order`` ->
    ``record_progress`` (``cancelled`` asked before each image) -> ``finish`` or ``fail``."""
    job_id: str

    def holding(self) -> ContextManager[None]:
        """Inside this block the worker's heartbeat names the job."""

    def claim(self) -> bool:
        """True: the job is this worker's; False: it is no longer queued."""

    def read_order(self) -> JobOrder:
        """The job's row, output folder, input and checkpoint as found on this machine."""

    def record_progress(self, **counts: Any) -> None:
        """``n_total``, ``n_done``, ``n_failed``, ``progress`` as images finish."""

    def cancelled(self) -> bool:
        """True once the user cancelled the job."""

    def finish(self, outcome: dict) -> None:
        """End the job with ``outcome`` (``engine.inference.batch.job_outcome``)."""

    def fail(self, error: str) -> None:
        """End the job as failed with ``error``."""


# --------------------------------------------------------------------------- the registry

class RegistryTraining:
    """The ledger of a training on the dashboard's machine: the run registry.

    Args:
        model_id: the run's registry id.
        config: the config the task carries (the SQLite queue's message), or None: the row's.
        resume_from: the ``last.pt`` to continue from, or None.
    """

    def __init__(self, model_id: str, config: "dict | TrainingConfig | None" = None, resume_from: str | None = None):
        self.model_id, self.config, self.resume_from = model_id, config, resume_from
        self.conn = None
        self.progress: lifecycle.ProgressRecorder | None = None

    def holding(self) -> ContextManager[None]:
        return ACTIVE.run(self.model_id)

    def claim(self) -> bool | None:
        return lifecycle.claim_training(self.model_id, store.this_worker_id())

    def read_order(self) -> TrainingOrder:
        from engine.training.config import TrainingConfig
        from engine.training.data import load_datasets

        self.conn = store.connect()
        row = store.get_model(self.model_id, db=self.conn)
        config = self.config if self.config is not None else json.loads(row["config"])
        if not isinstance(config, TrainingConfig):  # the row's JSON, checked when the run was submitted
            config = TrainingConfig.from_stored(config)
        self.progress = lifecycle.ProgressRecorder(self.model_id, self.conn, max_minutes=config.max_minutes or 0.0)
        plan = json.loads(row["plan"]) if row.get("plan") else None  # the row is the record of the plan
        return TrainingOrder(config, plan, load_datasets(store.model_datasets(row)),
                             paths.checkpoints_dir(self.model_id), self.resume_from)

    def record_plan(self, config: "TrainingConfig", plan: dict) -> None:
        store.update_model(self.model_id, db=self.conn, config=config.to_dict(), plan=plan)

    def stop_requested(self) -> bool:
        status = store.model_status(self.model_id, db=self.conn)
        return status is None or status == "stopping"

    def record_event(self, event: dict) -> None:
        self.progress(event)

    def record_final(self, result: "TrainResult") -> None:
        if result.best_checkpoint is not None:  # the checkpoint event wrote this row already; this covers a lost write
            store.add_checkpoint(self.model_id, result.best_epoch, result.best_checkpoint, "best", result.best_metric,
                                 db=self.conn)

    def finish(self, outcome: dict) -> None:
        lifecycle.finish_training(self.model_id, lifecycle.training_outcome(**outcome), self.conn)

    def fail(self, error: str) -> None:
        lifecycle.fail_training(self.model_id, error, self.conn)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class RegistryJob:
    """The ledger of a batch job on the dashboard's machine: the job's row in the run registry."""

    def __init__(self, job_id: str):
        self.job_id = job_id

    def holding(self) -> ContextManager[None]:
        return ACTIVE.job(self.job_id)

    def claim(self) -> bool:
        return lifecycle.claim_job(self.job_id, store.this_worker_id())

    def read_order(self) -> JobOrder:
        row = store.get_inference_job(self.job_id)
        return JobOrder(row, paths.inference_dir(self.job_id), Path(row["input_path"]))

    def record_progress(self, **counts: Any) -> None:
        store.update_inference_job(self.job_id, heartbeat_at=store.utc_now(), **counts)

    def cancelled(self) -> bool:
        return store.inference_cancelled(self.job_id)

    def finish(self, outcome: dict) -> None:
        store.update_inference_job(self.job_id, finished_at=store.utc_now(), **outcome)

    def fail(self, error: str) -> None:
        store.update_inference_job(self.job_id, status="failed", finished_at=store.utc_now(), error=error)
