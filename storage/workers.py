"""The workers: the ``workers`` table, one row per worker process with its last heartbeat (local workers
write it themselves, remote ones through the HTTP API), and the identity of this process as a worker."""
from __future__ import annotations

import os
import secrets
import socket
from datetime import datetime, timezone

from sqlite_utils import Database

from storage.connection import age_seconds, execute_write, fetch_rows, parse_time, using, utc_now


WORKER_FRESH_S = 30.0  # a worker whose heartbeat is older than this is not running (it beats every few seconds)


def this_worker_id() -> str:
    """Identity of the current process, stored on the runs it executes (``host:pid:start``)."""
    global _WORKER_ID
    if _WORKER_ID is None or _WORKER_ID[0] != os.getpid():
        _WORKER_ID = (os.getpid(), f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}")
    return _WORKER_ID[1]


_WORKER_ID: tuple[int, str] | None = None


def beat_worker(worker_id: str | None = None, db: Database | None = None, *, host: str | None = None,
                pid: int | None = None, device: str | None = None, queues: str | None = None,
                job: str | None = None, kind: str = "local") -> None:
    """Record that a worker process is alive (called every few seconds by each worker).

    Args:
        worker_id: ``host:pid:token`` (default: this process).
        host, pid: where it runs (default: this machine and process); a remote worker names its own.
        device: what it trains on, in words ("cuda: NVIDIA H100", "cpu: AMD EPYC 7B13").
        queues: the queue names it takes jobs from, comma-separated.
        job: what it works on now ("training <model id>", "inference <job id>"), or None when idle.
        kind: ``local`` (writes this registry itself) or ``remote`` (reports over the HTTP API).
    """
    worker_id = worker_id or this_worker_id()
    now = utc_now()
    sql = ("INSERT INTO workers (id, host, pid, started_at, beat_at, device, queues, job, kind) "
           "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET beat_at = excluded.beat_at, "
           "device = coalesce(excluded.device, device), queues = coalesce(excluded.queues, queues), "
           "job = excluded.job, kind = excluded.kind")
    with using(db) as db:
        execute_write(db, sql, [worker_id, host or socket.gethostname(), pid if pid is not None else os.getpid(),
                                now, now, device, queues, job, kind])


def worker_heartbeat(db: Database | None = None) -> datetime | None:
    """When any worker last reported, or None if no worker ever ran on this data home."""
    with using(db) as db:
        value = db.execute("SELECT max(beat_at) FROM workers").fetchone()[0]
    return parse_time(value)


def list_workers(max_age_s: float | None = None, db: Database | None = None) -> list[dict]:
    """The workers that ever reported, newest heartbeat first; with ``max_age_s`` only those that reported
    within that many seconds. Each row has ``age_s`` (seconds since its last heartbeat)."""
    with using(db) as db:
        rows = fetch_rows(db, "SELECT * FROM workers ORDER BY beat_at DESC")
    for row in rows:
        row["age_s"] = age_seconds(row["beat_at"])
    return [r for r in rows if max_age_s is None or (r["age_s"] is not None and r["age_s"] <= max_age_s)]


def forget_workers(older_than_s: float, db: Database | None = None) -> int:
    """Delete the rows of workers silent for longer than ``older_than_s``; returns how many went."""
    cutoff = datetime.fromtimestamp(datetime.now(timezone.utc).timestamp() - older_than_s, timezone.utc)
    with using(db) as db:
        return execute_write(db, "DELETE FROM workers WHERE beat_at < ?", [cutoff.isoformat(timespec="milliseconds")])
