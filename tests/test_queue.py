"""The queue object: it follows the data home, and it keeps the consumer huey_consumer starts on it."""
from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest

from engine import jobs
from engine.jobs.queue import WorkerQueue, worker_command
from storage import paths

ROOT = Path(__file__).resolve().parents[1]


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


def _makefile_worker_lines() -> dict[str, list[str]]:
    """The Makefile's two WORKER_CMD lines (Redis, SQLite queue file) as words after the program, with its
    variables' defaults filled in."""
    text = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    defaults = dict(re.findall(r"^(\w+)\s*\?=\s*(\S+)$", text, re.M))
    lines = re.findall(r"^WORKER_CMD = \S+ (.*)$", text, re.M)
    words = [[re.sub(r"\$\((\w+)\)", lambda m: defaults.get(m[1], m[0]), w) for w in line.split()] for line in lines]
    return {"redis" if "worker" in line[:3] else "sqlite": line for line in words}


@pytest.mark.parametrize("queue, setting", [("sqlite", None), ("redis", "redis://127.0.0.1:1/0")])
def test_make_run_starts_the_worker_that_worker_command_names(queue, setting, monkeypatch):
    monkeypatch.delenv("ML_MANAGER_QUEUES", raising=False)
    if setting:
        monkeypatch.setenv("ML_MANAGER_QUEUE", setting)
    else:
        monkeypatch.delenv("ML_MANAGER_QUEUE", raising=False)
    command = worker_command()
    # huey's console script in the Makefile, `python -m huey.bin.huey_consumer` here: the same consumer
    after_program = command[3:] if queue == "sqlite" else command[1:]
    assert _makefile_worker_lines()[queue] == after_program


def test_the_worker_command_polls_an_idle_queue_file_often(monkeypatch):
    monkeypatch.delenv("ML_MANAGER_QUEUE", raising=False)
    command = worker_command()
    assert float(command[command.index("-m", 2) + 1]) <= 0.5


@pytest.mark.parametrize("path", sorted(p for p in [*ROOT.glob("pages/*.py"), *ROOT.glob("ui/*.py"),
                                                     *ROOT.glob("engine/**/*.py"), *ROOT.glob("tests/*.py"),
                                                     *ROOT.glob("benchmarks/*.py")]),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_spells_the_worker_command_itself(path):
    spelled = re.search(r'"engine\.jobs\.huey",\s*"-k"', path.read_text()) is not None
    assert not spelled or str(path.relative_to(ROOT)) == "engine/jobs/queue.py"
