"""Liveness and recovery: the worker's heartbeat, and failing the runs and jobs a dead worker left behind.

A background thread started with the worker beats every ``BEAT_S`` seconds for the worker and for
each run and job it executes (``ACTIVE``). Stale-run recovery is :func:`recover_stale_runs`, whoever
calls it: it marks runs whose heartbeat is older than ``ML_MANAGER_STALE_AFTER_S`` (default 60 s)
``failed`` (``engine.jobs.lifecycle.recover_stale``), each by one conditional UPDATE, so a worker starting
at that moment and the dashboard never both fail it. Freeing those rows is what releases the training
slots a killed worker held (the slots are rows, not Huey locks). Who calls it depends on the queue:

* The SQLite queue file: the worker at its start (where a run owned by a worker process that no longer
  exists is failed at once) and every minute (``check_stale_runs``); when no worker runs at all,
  ``recover_if_no_worker`` (called by the dashboard, the API and ``python -m engine status``).
* The Redis queue of several machines: only the dashboard's watchdog (``engine.jobs.watchdog``), every
  second, which also queues again what the queue lost.
"""
from __future__ import annotations

import os
import shutil
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import ContextManager, Iterator

from huey import crontab

from engine.jobs.lifecycle import recover_stale, stale_after_s
from engine.jobs.queue import huey, log, redis_url
from storage import db as store
from storage import paths

BEAT_S = 2.0  # worker / run heartbeat period
TEMP_MAX_AGE_S = 3600.0  # temporary files older than this are removed by the periodic check
RECOVER_EVERY_S = 10.0  # recover_if_no_worker looks at the registry at most this often per process


class ActiveWork:
    """The runs and batch jobs this process executes: the heartbeat beats for them, recovery spares them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: set[str] = set()
        self._jobs: set[str] = set()

    def run(self, model_id: str) -> ContextManager[None]:
        """Count ``model_id`` as trained by this process inside the ``with`` block."""
        return self._held(self._runs, model_id)

    def job(self, job_id: str) -> ContextManager[None]:
        """Count ``job_id`` as run by this process inside the ``with`` block."""
        return self._held(self._jobs, job_id)

    @contextmanager
    def _held(self, held: set[str], key: str) -> Iterator[None]:
        with self._lock:
            held.add(key)
        try:
            yield
        finally:
            with self._lock:
                held.discard(key)

    def snapshot(self) -> tuple[list[str], list[str]]:
        """(run ids, job ids) at this moment."""
        with self._lock:
            return list(self._runs), list(self._jobs)


ACTIVE = ActiveWork()
# What the heartbeat says of this worker besides its job: ``device`` and ``queues`` (set by `python -m engine
# worker`; huey_consumer on the SQLite queue file takes every job of its one queue).
WORKER_INFO: dict[str, str] = {}
_startup_lock = threading.Lock()
_started_pid: int | None = None


def recover_stale_runs(at_startup: bool = False, watchdog: bool = False) -> list[str]:
    """Mark abandoned runs and inference jobs ``failed`` (``lifecycle.recover_stale``), sparing what this
    process works on itself; returns their ids.

    Args:
        at_startup: a worker starting: also fail the rows of worker processes on this machine that no longer
            exist, whatever their heartbeat.
        watchdog: the dashboard's watchdog calls (``engine.jobs.watchdog``). With the Redis queue only the
            watchdog judges runs: workers on other machines (or on this one) beat through the dashboard, so
            while the dashboard is away or has just started their heartbeats are old, and a worker restarted
            on this machine leaves a process id that no longer runs; the watchdog judges those runs once their
            workers could beat. With the queue file only the others do.
    """
    if (redis_url() is not None) != watchdog:
        return []
    return recover_stale(at_startup, ACTIVE.snapshot())


_last_recovery = 0.0


def recover_if_no_worker(force: bool = False) -> list[str]:
    """Fail abandoned runs and jobs when no worker is alive to do it (for the dashboard, API and CLI).

    Does nothing while a worker's heartbeat is younger than ``stale_after_s()`` (that worker's periodic
    check takes care of it) and, unless ``force``, when this process looked less than ``RECOVER_EVERY_S``
    ago. Queued runs are left alone: their tasks wait in the queue for the next worker. With the Redis queue
    it does nothing: workers on other machines beat through the dashboard, so a dashboard that was away (or
    a command run while it is) has not heard them yet; the dashboard's watchdog judges those runs once its
    workers could beat (``engine.jobs.watchdog``).

    Returns:
        The ids of the runs and jobs marked ``failed`` by this call.
    """
    global _last_recovery
    if redis_url() is not None:
        return []
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
            runs, jobs = ACTIVE.snapshot()
            job = f"training {runs[0]}" if runs else f"inference {jobs[0]}" if jobs else None
            store.beat_worker(db=conn, job=job, **WORKER_INFO)
            store.beat_active(runs, jobs, db=conn)
        except Exception:  # noqa: BLE001 - the heartbeat thread's loop: keep beating, a locked moment passes
            log.exception("heartbeat failed")
            if conn is not None:
                conn.close()
            conn = None
        time.sleep(BEAT_S)


@huey.on_startup()
def worker_started() -> None:
    """Once per worker process: recover what a killed worker left, then start the heartbeat thread."""
    global _started_pid
    with _startup_lock:
        if _started_pid == os.getpid():
            return
        _started_pid = os.getpid()
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
    except (ImportError, OSError, RuntimeError):  # a broken install: the training task reports it properly
        log.exception("warming up the engine failed")

