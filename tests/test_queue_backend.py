"""The queue backend setting (ML_MANAGER_QUEUE), queue names, and how a remote worker reaches Redis."""
from __future__ import annotations

import pytest

from engine.jobs import queue
from engine.remote.worker import queue_url_for_worker
from storage.paths import StorageError
from engine.errors import UserError


@pytest.mark.parametrize("value, expected", [
    (None, None), ("", None), ("sqlite", None),
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("redis://:secret@lab-pc:6380/2", "redis://:secret@lab-pc:6380/2"),
])
def test_the_queue_setting(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv(queue.QUEUE_ENV, raising=False)
    else:
        monkeypatch.setenv(queue.QUEUE_ENV, value)
    assert queue.redis_url() == expected


def test_an_unknown_queue_setting_is_a_sentence(monkeypatch):
    monkeypatch.setenv(queue.QUEUE_ENV, "mysql://db/queue")
    with pytest.raises(UserError, match="is not a queue this program knows"):
        queue.redis_url()


@pytest.mark.parametrize("setting, name, expected", [
    (None, None, None), (None, "training", None), (None, "inference", None),
    ("redis://h:1/0", None, "training"), ("redis://h:1/0", "gpu", "gpu"), ("redis://h:1/0", "training", "training"),
])
def test_the_queue_a_job_goes_to(monkeypatch, setting, name, expected):
    monkeypatch.setenv(queue.NAMES_ENV, "gpu")
    if setting is None:
        monkeypatch.delenv(queue.QUEUE_ENV, raising=False)
    else:
        monkeypatch.setenv(queue.QUEUE_ENV, setting)
    assert queue.check_queue(name, "training") == expected


@pytest.mark.parametrize("setting, name, words", [
    (None, "gpu", "needs the Redis queue"),
    ("redis://h:1/0", "nowhere", "There is no queue 'nowhere'"),
    ("redis://h:1/0", "Bad Name!", "is not usable"),
])
def test_a_queue_that_cannot_be_used_is_a_sentence(monkeypatch, setting, name, words):
    monkeypatch.setenv(queue.NAMES_ENV, "gpu")
    if setting is None:
        monkeypatch.delenv(queue.QUEUE_ENV, raising=False)
    else:
        monkeypatch.setenv(queue.QUEUE_ENV, setting)
    with pytest.raises(UserError, match=words):
        queue.check_queue(name, "training")


def test_the_queue_names_are_training_inference_and_the_named_ones(monkeypatch):
    monkeypatch.setenv(queue.NAMES_ENV, " gpu, big-memory ,gpu")
    assert queue.queue_names() == ["training", "inference", "gpu", "big-memory"]


def test_an_unreachable_redis_is_a_sentence_not_a_traceback(monkeypatch):
    monkeypatch.setenv(queue.QUEUE_ENV, "redis://127.0.0.1:1/0")  # nothing listens on port 1
    with pytest.raises(StorageError, match=r"Redis at 127.0.0.1:1\) could not be reached"):
        queue.queue_length()


@pytest.mark.parametrize("queue_url, server, expected", [
    ("redis://127.0.0.1:6379/0", "http://lab-pc:8501", "redis://lab-pc:6379/0"),
    ("redis://:s3cret@localhost:6380/1", "http://10.0.0.5:8501", "redis://:s3cret@10.0.0.5:6380/1"),
    ("redis://redis-box:6379/0", "http://lab-pc:8501", "redis://redis-box:6379/0"),
])
def test_a_remote_worker_reaches_the_dashboards_redis(queue_url, server, expected):
    assert queue_url_for_worker(queue_url, server) == expected


# --- issue 31: a shell that sends a job knows the queues that running workers take jobs from -----------------

@pytest.mark.parametrize("registered, name, accepted", [
    ("training,gpu", "gpu", True),         # a worker started with --queues training,gpu
    ("training,gpu", "big-memory", False),
    ("", "gpu", False),
])
def test_a_queue_a_running_worker_takes_jobs_from_needs_no_setting(home, monkeypatch, registered, name, accepted):
    from storage import db as store

    monkeypatch.setenv(queue.QUEUE_ENV, "redis://127.0.0.1:1/0")
    monkeypatch.delenv(queue.NAMES_ENV, raising=False)
    store.beat_worker("lab-gpu:1:a", host="lab-gpu", pid=1, queues=registered, kind="remote")
    try:
        got = queue.check_queue(name, "training") == name
    except UserError:
        got = False
    assert got == accepted


def test_submit_refuses_an_unknown_queue_before_measuring_the_machine(home, monkeypatch, tmp_path, capsys):
    import time

    from engine.cli import main
    from engine.training.synthetic import make_synthetic_dataset

    monkeypatch.setenv(queue.QUEUE_ENV, "redis://127.0.0.1:1/0")
    monkeypatch.delenv(queue.NAMES_ENV, raising=False)
    data = make_synthetic_dataset(tmp_path / "data", n_images=3, size=256, seed=1)
    import engine.jobs  # noqa: F401 - loaded before the clock starts: the command's own imports are not its checks
    import engine.training.planner  # noqa: F401
    started = time.monotonic()
    code = main(["submit", "--data", str(data), "--queue", "gpu", "--set", "max_minutes=10"])
    seconds = time.monotonic() - started
    # measuring takes seconds (7.7 s in the report); a refusal before it takes milliseconds
    assert (code, capsys.readouterr().err.startswith("error: There is no queue 'gpu'"), seconds < 2) == (2, True, True)
