"""The queue object: it follows the data home, and it keeps the consumer huey_consumer starts on it."""
from __future__ import annotations

import signal

import pytest

from engine import jobs
from engine.jobs.queue import WorkerQueue
from storage import paths


@pytest.fixture
def signal_handlers():
    """huey's Consumer installs its own SIGINT/SIGTERM/SIGHUP handlers; give pytest its own back."""
    kept = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    yield
    for number, handler in kept.items():
        signal.signal(number, handler)


def test_create_consumer_keeps_the_consumer(home, signal_handlers):
    queue = WorkerQueue(name="test", results=False)
    consumer = queue.create_consumer(workers=1)
    assert queue.consumer is consumer


def test_shutting_down_is_false_while_the_consumer_runs(home, signal_handlers, monkeypatch):
    monkeypatch.setattr(jobs.huey, "consumer", WorkerQueue(name="test", results=False).create_consumer(workers=1))
    assert jobs.shutting_down() is False


def test_shutting_down_once_the_consumer_is_told_to_stop(home, signal_handlers, monkeypatch):
    consumer = WorkerQueue(name="test", results=False).create_consumer(workers=1)
    monkeypatch.setattr(jobs.huey, "consumer", consumer)
    consumer.stop_flag.set()
    assert jobs.shutting_down() is True


def test_no_consumer_means_no_shutdown(monkeypatch):
    monkeypatch.setattr(jobs.huey, "consumer", None)
    assert jobs.shutting_down() is False


def test_the_queue_file_is_the_data_homes(home):
    assert jobs.current_queue().storage.filename == str(paths.queue_path())


def test_each_data_home_has_its_own_queue(tmp_path, monkeypatch):
    counts = {}
    for name in ("a", "b"):
        monkeypatch.setenv("ML_MANAGER_HOME", str(tmp_path / name))
        if name == "a":
            jobs.current_queue().enqueue(jobs.stop_training_task.s("model-a"))
        counts[name] = jobs.queue_length()
    monkeypatch.setenv("ML_MANAGER_HOME", str(tmp_path / "a"))
    assert counts == {"a": 1, "b": 0}
    assert jobs.queue_length() == 1  # back in home a, its task is still there
