"""The queue: the one Huey instance (``huey``) on the data home's SQLite queue file.

The worker is started on it, as huey recommends: ``huey_consumer engine.jobs.huey -k thread -w 2 -m 0.5``
(``make run`` and ``make worker`` do). Use at least two worker threads, so a batch inference never waits
behind a training, and ``-m 0.5`` (longest idle poll, seconds): with huey's default of 10 s a job queued
after a quiet spell waits up to 10 s. Tasks are registered on ``huey`` by ``engine.jobs.training``,
``engine.jobs.inference`` and ``engine.jobs.liveness``; importing ``engine.jobs`` imports all three.

Several machines (``ML_MANAGER_QUEUE=redis://[:password@]host:port/db``): every named queue is huey's own
``PriorityRedisHuey`` on that server (the stop task jumps the line, which plain ``RedisHuey`` refuses), one
instance per name (:func:`queue_for`): trainings go to ``training``, batch jobs to ``inference``, and
``ML_MANAGER_QUEUES`` names more (``gpu,big-memory``). The tasks queued there are the ones registered with
:func:`queued_task`, the same code as on the SQLite queue. Workers are then started with
``python -m engine worker`` (``engine.remote.worker``), which consumes the queues it is told to.
"""
from __future__ import annotations

import logging
import os
import re
import sys
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

from huey import PriorityRedisHuey, SqliteHuey
from huey.consumer import Consumer

from engine.errors import UserError
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
    return (consumer is not None and consumer.stop_flag.is_set()) or STOPPING.is_set()


def queue_length() -> int:
    """How many tasks wait in the worker's queue (trainings waiting for a slot are retried, so they count).

    Raises:
        StorageError: the Redis queue cannot be reached (the sentence says where it was looked for).
    """
    if redis_url() is None:
        return current_queue().pending_count()
    with redis_errors("count the waiting jobs"):
        return sum(queue_for(name).pending_count() for name in queue_names())


@contextmanager
def redis_errors(doing: str) -> Iterator[None]:
    """Turn a Redis connection failure inside the block into a StorageError sentence (a 503 from the API)."""
    from redis.exceptions import RedisError

    try:
        yield
    except RedisError as exc:
        where = urlsplit(redis_url() or "")
        raise paths.StorageError(
            f"The job queue (Redis at {where.hostname}:{where.port or 6379}) could not be reached to {doing} "
            f"({exc}): start Redis, or check {QUEUE_ENV}; nothing was changed.") from None


# --------------------------------------------------------------------------- several machines: Redis queues

QUEUE_ENV = "ML_MANAGER_QUEUE"
NAMES_ENV = "ML_MANAGER_QUEUES"
TRAINING, INFERENCE = "training", "inference"  # the queues a training and a batch job go to unless told otherwise
STOPPING = threading.Event()  # set by `python -m engine worker` when it is told to stop (its consumers' flag)
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
_QUEUED: list[tuple[Callable, int | None]] = []  # (function, priority) of every task a named queue runs
_instances: dict[tuple[str, str], PriorityRedisHuey] = {}
_remote: list[Any] = []  # the remote link of `python -m engine worker --server`, when this process is one


def redis_url() -> str | None:
    """The Redis queue's URL from ``ML_MANAGER_QUEUE``, or None for the SQLite queue file (unset or ``sqlite``).

    Raises:
        UserError: the setting is neither ``sqlite`` nor a ``redis://`` URL.
    """
    value = os.environ.get(QUEUE_ENV, "").strip()
    if value in ("", "sqlite"):
        return None
    if urlsplit(value).scheme not in ("redis", "rediss", "unix"):
        raise UserError(f"{QUEUE_ENV}={value!r} is not a queue this program knows: leave it unset (or 'sqlite') for "
                        "the queue file in the data home, or give a Redis URL such as redis://:password@host:6379/0.")
    return value


def queue_names() -> list[str]:
    """The queues jobs may be sent to: ``training``, ``inference``, then those named in ``ML_MANAGER_QUEUES``."""
    extra = [n.strip().lower() for n in os.environ.get(NAMES_ENV, "").split(",") if n.strip()]
    return list(dict.fromkeys([TRAINING, INFERENCE, *extra]))


def check_queue(name: str | None, default: str) -> str | None:
    """The queue a job goes to: ``name`` checked (None: ``default``); always None on the SQLite queue file,
    which has one queue.

    Raises:
        UserError: an unknown queue name, or a named queue while ``ML_MANAGER_QUEUE`` is unset.
    """
    if name is None or name == "":
        return default if redis_url() else None
    if not isinstance(name, str) or not _NAME.match(name):
        raise UserError(f"The queue name {name!r} is not usable: use lower-case letters, digits, '-' or '_' "
                        "(at most 32), such as 'gpu'.")
    if redis_url() is None:
        if name in (TRAINING, INFERENCE):
            return None
        raise UserError(f"The queue {name!r} needs the Redis queue of several machines: start the dashboard and "
                        f"workers with {QUEUE_ENV}=redis://host:6379/0 (see the README's Several machines).")
    if name not in queue_names() and name not in worker_queues():
        known = list(dict.fromkeys([*queue_names(), *worker_queues()]))
        raise UserError(f"There is no queue {name!r}: no running worker takes jobs from it. Choose one of "
                        f"{', '.join(known)}, or start a worker with --queues {name} (or add it to {NAMES_ENV}, "
                        "comma-separated, where the job is sent from).")
    return name


def worker_queues() -> list[str]:
    """The queue names that workers which reported in the last ``WORKER_FRESH_S`` seconds take jobs from, as
    this data home's registry holds them (a shell that sends a job need not repeat ``ML_MANAGER_QUEUES``)."""
    from storage import db as store

    if not paths.db_path().exists():  # asking must not make a data home
        return []
    names = [q.strip() for w in store.list_workers(max_age_s=store.WORKER_FRESH_S)
             for q in (w.get("queues") or "").split(",") if q.strip()]
    return list(dict.fromkeys(names))


def queued_task(priority: int | None = None) -> Callable:
    """``huey.task(priority=...)`` that also registers the task on every named Redis queue (:func:`queue_for`)."""
    def decorator(func: Callable):
        _QUEUED.append((func, priority))
        return huey.task(priority=priority)(func)
    return decorator


def queue_for(name: str | None) -> SqliteHuey | PriorityRedisHuey:
    """The huey instance of a named queue: the SQLite queue file's ``huey`` when ``ML_MANAGER_QUEUE`` is
    unset (it has one queue, whatever the name), else huey's ``PriorityRedisHuey`` named ``ml_manager.<name>``
    on the Redis server, with every :func:`queued_task` registered (a task's name is its module and function,
    so a message queued by the dashboard runs the same function on any worker)."""
    url = redis_url()
    if url is None or name is None:
        return current_queue()
    key = (url, name)
    with _lock:
        if key not in _instances:
            instance = PriorityRedisHuey(name=f"ml_manager.{name}", url=url, results=False)
            for func, priority in _QUEUED:
                instance.task(priority=priority)(func)
            _instances[key] = instance
        return _instances[key]


MAX_DELAY_S = 0.5  # the consumer's longest wait between polls of an idle queue file: a queued job starts within it
# (huey's default, 10 s, made a job queued from the Overview wait that long)


def worker_command(workers: int = 2, max_delay_s: float = MAX_DELAY_S) -> list[str]:
    """The one command that starts a worker on this machine for this data home (``make run``'s own line is
    checked against it by ``tests/test_layout.py``).

    Args:
        workers: worker threads of huey's consumer on the SQLite queue file.
        max_delay_s: its longest wait between polls of an idle queue file.

    Returns:
        argv starting with this Python: huey's consumer on the SQLite queue file
        (``-k thread -w N -m 0.5 -C``: threads, a short poll delay, no health-check thread), or
        ``-m engine worker`` taking every named queue of the Redis queue.

    Raises:
        UserError: ``ML_MANAGER_QUEUE`` is set to something that is not a queue.
    """
    if redis_url() is None:
        return [sys.executable, "-m", "huey.bin.huey_consumer", "engine.jobs.huey", "-k", "thread",
                "-w", str(workers), "-m", str(max_delay_s), "-C"]
    return [sys.executable, "-m", "engine", "worker", "--queues", ",".join(queue_names())]


def set_remote(link: Any) -> None:
    """Make this process a worker on another machine: its tasks run through ``link`` (``engine.remote.worker``)."""
    _remote[:] = [link]


def remote_link() -> Any:
    """The remote link :func:`set_remote` installed, or None in a worker that writes the registry itself."""
    return _remote[0] if _remote else None
