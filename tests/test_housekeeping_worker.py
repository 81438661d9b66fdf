"""Stale-run recovery without a worker, and with a real worker (tests.worker_helpers.Worker): the epoch
checkpoints it keeps, pruning during a training, and a training stopped before its first epoch."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from engine import housekeeping, jobs
from engine.training.synthetic import make_synthetic_dataset
from storage import db as store
from storage import paths
from tests.worker_helpers import Worker, load_checkpoint, status_of, wait_for
from tests.housekeeping_helpers import checkpoint_names, checkpoint_row_names


TINY = {"base_channels": 4, "depth": 2, "patch_size": 32, "batch_size": 2, "steps_per_epoch": 3, "epochs": 3,
        "num_threads": 1, "val_fraction": 0.25, "early_stopping_patience": 0, "calibrate_postprocess": False}
LONG = {**TINY, "epochs": 10_000}  # runs until stopped


# --------------------------------------------------------------------------- stale runs with no worker

def _iso(seconds_ago: float) -> str:
    return (datetime.now(timezone.utc) - timedelta(seconds=seconds_ago)).isoformat(timespec="milliseconds")


def _dead_worker() -> str:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return f"{socket.gethostname()}:{proc.pid}:gone"


def _abandoned(status: str = "running", beat_age: float = 3600.0) -> str:
    model_id = store.create_model("abandoned", {"epochs": 3}, "data")
    store.update_model(model_id, status=status, heartbeat_at=_iso(beat_age), worker=_dead_worker())
    return model_id


@pytest.mark.parametrize("status, beat_age, worker_beat_age, expected", [
    ("running", 3600, None, "failed"),  # no worker ever ran
    ("stopping", 3600, 3600, "failed"),  # the worker stopped an hour ago
    ("running", 3600, 0, "running"),  # a worker is up: its own periodic check decides
    ("running", 1, None, "running"),  # beat a second ago
    ("queued", 3600, None, "queued"),  # waits in the queue for the next worker
])
def test_recovery_without_a_worker(home, status, beat_age, worker_beat_age, expected):
    model_id = _abandoned(status, beat_age)
    if worker_beat_age is not None:
        store.beat_worker("another-worker")
        conn = store.connect()
        with conn.atomic():
            conn.execute("UPDATE workers SET beat_at = ?", [_iso(worker_beat_age)])
        conn.close()
    jobs.recover_if_no_worker(force=True)
    assert status_of(model_id) == expected


def test_the_recovered_run_says_the_worker_stopped(home):
    model_id = _abandoned()
    jobs.recover_if_no_worker(force=True)
    assert store.get_model(model_id)["error"].startswith(f"the worker on {socket.gethostname()} stopped (last heartbeat")


def test_concurrent_recoveries_fail_each_run_exactly_once(home):
    """8 threads (each its own connection), half recovering as the dashboard does and half as a starting
    worker does, released together over 10 abandoned runs: every run is failed by exactly one of them."""
    runs = [_abandoned() for _ in range(10)]
    barrier, won = threading.Barrier(8), []

    def racer(i: int) -> None:
        barrier.wait()
        won.extend(jobs.recover_stale_runs(at_startup=True) if i % 2 else jobs.recover_if_no_worker(force=True))

    threads = [threading.Thread(target=racer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(won) == sorted(runs)


@pytest.mark.slow
def test_a_starting_worker_and_the_dashboard_fail_an_abandoned_run_once(home):
    model_id = _abandoned()
    won, done = [], threading.Event()

    def dashboard() -> None:
        while not done.is_set():
            won.extend(jobs.recover_if_no_worker(force=True))
            time.sleep(0.01)

    thread = threading.Thread(target=dashboard)
    thread.start()
    try:
        with Worker(home):
            time.sleep(1.0)
    finally:
        done.set()
        thread.join(30)
    by_worker = (home / "logs" / "worker.log").read_text().count(f"model {model_id} marked failed")
    assert (len(won) + by_worker, status_of(model_id)) == (1, "failed")


# --------------------------------------------------------------------------- with a real worker

@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("data") / "synth", n_images=4, size=64, seed=1)


@pytest.fixture(scope="module")
def shared_worker(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ML_MANAGER_HOME", str(home))
        mp.setenv(housekeeping.KEEP_ENV, "2")
        with Worker(home) as worker:
            yield worker


@pytest.fixture
def worker(shared_worker, monkeypatch):
    monkeypatch.setenv("ML_MANAGER_HOME", str(shared_worker.home))
    monkeypatch.setenv(housekeeping.KEEP_ENV, "2")
    assert shared_worker.proc.poll() is None, "the shared worker died"
    return shared_worker


@pytest.mark.slow
def test_the_worker_keeps_only_the_newest_epoch_checkpoints(worker, dataset):
    model_id = jobs.submit_training("kept", dataset, {**TINY, "epochs": 5, "checkpoint_every": 1})
    wait_for(lambda: status_of(model_id) in ("completed", "failed"), 180, what="the training to end")
    expected = ["best.pt", "epoch_004.pt", "epoch_005.pt", "last.pt"]
    assert (status_of(model_id), checkpoint_names(model_id), checkpoint_row_names(model_id)) == ("completed", expected, expected)


@pytest.mark.slow
def test_pruning_during_a_training_removes_nothing_it_writes(worker, dataset):
    model_id = jobs.submit_training("busy", dataset, {**LONG, "checkpoint_every": 1})
    wait_for(lambda: (store.get_model(model_id)["epochs_run"] or 0) >= 2, 180, what="two epochs")
    removed = housekeeping.prune(model_id, keep=0)
    with pytest.raises(housekeeping.HousekeepingError, match="still active"):
        housekeeping.delete_checkpoint(model_id, "last.pt")
    after = store.get_model(model_id)["epochs_run"]
    wait_for(lambda: store.get_model(model_id)["epochs_run"] > after, 120, what="one more epoch")
    jobs.stop_training(model_id)
    wait_for(lambda: status_of(model_id) not in ("running", "stopping"), 30, what="the run to end")
    folder = paths.checkpoints_dir(model_id)
    assert (all(Path(r.path).name.startswith("epoch_") for r in removed), status_of(model_id),
            load_checkpoint(folder / "best.pt")["epoch"] >= 1, load_checkpoint(folder / "last.pt")["epoch"] > after
            ) == (True, "completed", True, True)


@pytest.mark.slow
def test_a_stop_before_the_first_epoch_is_not_a_failure_and_can_start_again(worker, dataset):
    model_id = jobs.submit_training("early stop", dataset, {**LONG, "steps_per_epoch": 100_000})
    wait_for(lambda: (store.get_model(model_id)["batch"] or 0) >= 1, 120, what="the first batches")
    jobs.stop_training(model_id)
    wait_for(lambda: status_of(model_id) not in ("running", "stopping"), 10, what="the run to end")
    row = store.get_model(model_id)
    jobs.start_training(model_id, json.loads(row["config"]))
    restarted = status_of(model_id)
    jobs.stop_training(model_id)
    wait_for(lambda: status_of(model_id) not in ("queued", "running", "stopping"), 60, what="the restart to end")
    assert (row["status"], row["stop_reason"], row["error"], restarted in ("queued", "running")) == (
        "stopped", "user_stop", jobs.STOPPED_EARLY, True)
