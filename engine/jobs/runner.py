"""One runner for every worker: a training or a batch job, claimed, run and recorded through a ledger
(``engine.jobs.ledger``): the run registry on the dashboard's machine, the dashboard's HTTP API on another
(``engine.remote.ledger``). The runner never knows which one it has.

A training: claim (huey's ``RetryTask`` while no slot is free) -> read the config, plan and data sets ->
plan again where it trains when the plan was measured on another kind of device (recorded once, through
the ledger) -> ``engine.training.loop.train`` with one stop poller and the ledger's recorder -> the final
checkpoints -> finish. A batch job: claim -> read -> ``engine.inference.batch.run_images`` with the
ledger's progress and cancel flag -> finish.
"""
from __future__ import annotations

import time
from typing import Any, Callable

from huey.exceptions import RetryTask

from engine.errors import error_text
from engine.jobs.ledger import STOP_POLL_S, WAIT_RETRY_S, JobLedger, TrainingLedger
from engine.jobs.queue import log, shutting_down

__all__ = ["StopPoller", "run_job", "run_training", "training_outcome_of"]


class StopPoller:
    """``should_stop`` for the training loop: the worker shutting down, or a stop request, which
    ``stop_requested`` (the ledger's) is asked at most every ``STOP_POLL_S``.

    ``reason`` says why it stopped: ``"shutdown"``, ``"user"`` or None.
    """

    def __init__(self, stop_requested: Callable[[], bool], worker_stopping: Callable[[], bool] = shutting_down):
        self.stop_requested, self.worker_stopping = stop_requested, worker_stopping
        self.reason: str | None = None
        self._last = 0.0

    def __call__(self) -> bool:
        if self.reason:
            return True
        if self.worker_stopping():
            self.reason = "shutdown"
            return True
        now = time.monotonic()
        if now - self._last >= STOP_POLL_S:
            self._last = now
            if self.stop_requested():
                self.reason = "user"
        return self.reason is not None


def training_outcome_of(result: Any, stop_cause: str | None) -> dict:
    """How a training ended, as the ledger's ``finish`` takes it (the keywords of
    ``engine.jobs.lifecycle.training_outcome``, and the body of a remote worker's finish report)."""
    return {"epochs_run": result.epochs_run, "best_epoch": result.best_epoch, "best_metric": result.best_metric,
            "has_best": result.best_checkpoint is not None, "stop_reason": result.stop_reason,
            "stop_cause": stop_cause, "recommended_postprocess": result.recommended_postprocess}


def run_training(ledger: TrainingLedger) -> None:
    """Claim a queued run and train it to its end, everything recorded through ``ledger``.

    Raises:
        RetryTask: no training slot is free yet (huey runs the task again after ``WAIT_RETRY_S``).
    """
    with ledger.holding():  # before the claim, so the stale check never sees it ownerless
        claimed = ledger.claim()
        if not claimed:
            if claimed is False:
                raise RetryTask(delay=WAIT_RETRY_S)
            log.info("training task of %s skipped: the run is no longer queued", ledger.model_id)
            return
        try:
            _train(ledger)
        except Exception as exc:  # noqa: BLE001 - the task's boundary: every failure becomes the run's error text
            log.exception("training of %s failed", ledger.model_id)
            ledger.fail(error_text(exc))
        finally:
            ledger.close()


def _train(ledger: TrainingLedger) -> None:
    from engine.training.loop import train

    order = ledger.read_order()
    config, plan = order.config, order.plan
    if order.resume_from is None and plan:  # a continued run keeps its shapes: its checkpoint was trained with them
        config, plan = _plan_here(ledger, config, plan, order.datasets)
    stopper = StopPoller(ledger.stop_requested)
    result = train(config, order.datasets, order.out_dir, on_event=ledger.record_event, should_stop=stopper,
                   resume_from=order.resume_from, plan=plan)
    ledger.record_final(result)
    ledger.finish(training_outcome_of(result, stopper.reason))


def _plan_here(ledger: TrainingLedger, config: Any, plan: dict, datasets: list) -> tuple[Any, dict]:
    """A run planned on another kind of device (the dashboard's CPU) is planned again on this worker's (a
    GPU): shapes, precision and width measured here, recorded once through the ledger."""
    from engine.training.planner import replan_for_device

    replanned = replan_for_device(config, plan, dataset=datasets)
    if replanned is None:
        return config, plan
    config, new_plan = replanned
    log.info("training %s planned again on this worker: %s", ledger.model_id, new_plan.explain())
    ledger.record_plan(config, new_plan.to_dict())
    return config, new_plan.to_dict()


def run_job(ledger: JobLedger) -> None:
    """Claim a queued batch job and predict every image of it, everything recorded through ``ledger``."""
    from engine.inference.batch import run_images

    with ledger.holding():
        if not ledger.claim():
            log.info("inference job %s skipped: it is no longer queued", ledger.job_id)
            return
        try:
            order = ledger.read_order()
            outcome = run_images(order.row, order.out, order.source, on_progress=ledger.record_progress,
                                 cancelled=ledger.cancelled, should_stop=shutting_down, checkpoint=order.checkpoint)
            ledger.finish(outcome)
        except Exception as exc:  # noqa: BLE001 - the task's boundary: every failure is recorded on the job's row
            log.exception("inference job %s failed", ledger.job_id)
            ledger.fail(error_text(exc))
