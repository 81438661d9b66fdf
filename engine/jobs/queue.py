"""The queue: the one Huey instance (``huey``) on the data home's SQLite queue file.

The worker is started on it, as huey recommends: ``huey_consumer engine.jobs.huey -k thread -w 2 -m 0.5``
(``make run`` and ``make worker`` do). Use at least two worker threads, so a batch inference never waits
behind a training, and ``-m 0.5`` (longest idle poll, seconds): with huey's default of 10 s a job queued
after a quiet spell waits up to 10 s. Tasks are registered on ``huey`` by ``engine.jobs.training``,
``engine.jobs.inference`` and ``engine.jobs.liveness``; importing ``engine.jobs`` imports all three.
"""
from __future__ import annotations

import logging
import threading

from huey import SqliteHuey
from huey.consumer import Consumer

from storage import paths

# A child of huey's logger, so our messages land in the worker log that huey_consumer sets up.
log = logging.getLogger("huey.ml_manager")


class WorkerQueue(SqliteHuey):
    """``SqliteHuey`` on ``storage.paths.queue_path()`` that keeps the consumer started on it.

    Both are huey's public extension points: ``huey_consumer`` builds the worker through
    ``create_consumer(**options)``, and huey builds its storage through ``get_storage(**kwargs)``.
    """

    consumer: Consumer | None = None  # set in the worker process by create_consumer

    def create_consumer(self, **options) -> Consumer:
        """The consumer ``huey_consumer`` runs; kept so tasks can see its stop flag (:func:`shutting_down`)."""
        self.consumer = super().create_consumer(**options)
        return self.consumer

    def get_storage(self, **kwargs):
        """huey's SQLite storage on the queue file of the current data home."""
        return super().get_storage(**{**kwargs, "filename": str(paths.queue_path())})


huey = WorkerQueue(name="ml_manager", results=False, strict_fifo=True, timeout=30)
_lock = threading.Lock()


def current_queue() -> WorkerQueue:
    """``huey``, on the queue file of the data home this process uses now.

    The worker, the dashboard, the API and the CLI keep the data home they started with, so this is
    ``huey`` as built at import. A process that changes ``ML_MANAGER_HOME`` while it runs (the tests,
    a script over several homes) gets ``huey`` with its storage built again for the new home through
    ``create_storage()``, the call huey itself makes when its ``immediate`` mode changes. In immediate
    mode (tasks run in the calling thread, on huey's in-memory storage) nothing is rebuilt.
    """
    wanted = str(paths.queue_path())
    if not huey.immediate and huey.storage.filename != wanted:
        with _lock:
            if huey.storage.filename != wanted:
                huey.storage = huey.create_storage()
    return huey


def shutting_down() -> bool:
    """True once this process's consumer was told to stop (SIGINT): long tasks end early and cleanly."""
    consumer = huey.consumer
    return consumer is not None and consumer.stop_flag.is_set()


def queue_length() -> int:
    """How many tasks wait in the worker's queue (trainings waiting for a slot are retried, so they count)."""
    return current_queue().pending_count()
