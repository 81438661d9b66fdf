"""A real worker for tests: ``Worker(home)`` starts ``huey_consumer engine.jobs.huey -k thread -w 2 -m 0.5``
on a data home (as huey's own tests/base.py does) and stops it with SIGINT, or kills it with SIGKILL.
Used by tests/test_jobs.py, tests/test_crash.py and tests/test_resume.py.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import torch

from engine.jobs.queue import worker_command
from storage import db as store

ROOT = Path(__file__).resolve().parents[1]


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def status_of(model_id: str) -> str:
    return store.get_model(model_id)["status"]


class Worker:
    """A real consumer process on ``home``; ``with Worker(home):`` starts it and stops it with SIGINT."""

    def __init__(self, home: Path, workers: int = 2):
        self.home, self.workers, self.proc = home, workers, None
        self.log = home / "logs" / "worker.log"

    def start(self) -> "Worker":
        self.log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "ML_MANAGER_HOME": str(self.home), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        since = time.time()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(worker_command(self.workers), cwd=ROOT, env=env, stdout=log, stderr=log)
        wait_for(lambda: self._beat_since(since), 60, 0.1, "the worker's first heartbeat")
        return self

    def _beat_since(self, since: float) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"the worker exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
        conn = store.connect()
        try:  # this process's own beat, not the last one of a worker killed a moment ago
            beat = conn.execute("SELECT max(beat_at) FROM workers WHERE pid = ?", [self.proc.pid]).fetchone()[0]
        finally:
            conn.close()
        return beat is not None and store.parse_time(beat).timestamp() >= since - 0.5

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(timeout)
        return self.proc.returncode

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def __enter__(self) -> "Worker":
        return self.start()

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.stop()
            except subprocess.TimeoutExpired:
                self.kill()


def load_checkpoint(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)
