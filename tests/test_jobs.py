"""The queue with a real ``huey_consumer`` process on a temporary data home, real SQLite and real training.

Each test that needs a worker starts ``huey_consumer engine.jobs.huey -k thread -w 2`` in a context
manager (``tests.worker_helpers.Worker``, as huey's own tests/base.py does) with ML_MANAGER_HOME set
before it starts, and stops it with SIGINT. Trainings are tiny (64×64 synthetic images, 4 base channels, a few steps per epoch).
"""
from __future__ import annotations

import json
import os
import sqlite3
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from engine import jobs
from engine.cli import main as cli_main
from engine.training.synthetic import make_synthetic_dataset
from storage import db as store
from storage import paths
from tests.worker_helpers import Worker, load_checkpoint, status_of, wait_for
from engine.errors import UserError

TINY = {"base_channels": 4, "depth": 2, "patch_size": 32, "batch_size": 2, "steps_per_epoch": 3, "epochs": 3,
        "num_threads": 1, "val_fraction": 0.25, "early_stopping_patience": 0, "calibrate_postprocess": False}
LONG = {**TINY, "epochs": 10_000}  # runs until stopped

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("data") / "synth", n_images=4, size=64, seed=1)


@pytest.fixture(scope="module")
def shared_home(tmp_path_factory):
    """One data home and one worker for the tests that do not kill it."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ML_MANAGER_HOME", str(home))
        with Worker(home) as worker:
            yield worker


@pytest.fixture
def worker(shared_home, monkeypatch):
    monkeypatch.setenv("ML_MANAGER_HOME", str(shared_home.home))
    assert shared_home.proc.poll() is None, "the shared worker died"
    return shared_home


# --------------------------------------------------------------------------- with a running worker

def test_training_completes_with_checkpoint_rows_matching_files(worker, dataset):
    model_id = jobs.submit_training("complete", dataset, {**TINY, "calibrate_postprocess": True})
    wait_for(lambda: status_of(model_id) in ("completed", "failed"), 120, what="the training to end")
    status, row = jobs.training_status(model_id), store.get_model(model_id)
    files = sorted(p.name for p in paths.checkpoints_dir(model_id).glob("*.pt"))
    listed = store.model_checkpoints(model_id)
    conn = store.connect()
    rows = conn.execute("SELECT count(*) FROM checkpoints WHERE model_id = ?", [model_id]).fetchone()[0]
    conn.close()
    assert status["status"] == "completed"
    assert status["stop_reason"] == "max_epochs"
    assert status["epochs_run"] == 3
    assert status["progress"] == 1.0
    assert [m["epoch"] for m in store.model_metrics(model_id)] == [1, 2, 3]
    assert files == ["best.pt", "last.pt"]
    assert sorted(c["name"] for c in listed) == files
    assert rows == 2
    assert [load_checkpoint(c["path"])["epoch"] for c in listed] == [c["epoch"] for c in listed]
    assert json.loads(row["recommended_postprocess"])["threshold"] > 0


def test_reader_polling_status_while_the_worker_writes_sees_no_error(worker, dataset):
    model_id = jobs.submit_training("polled", dataset, {**TINY, "epochs": 4})
    errors, reads = [], 0
    while True:
        try:
            current = jobs.training_status(model_id)
            store.model_metrics(model_id)
            reads += 1
        except Exception as exc:  # noqa: BLE001 - any failure counts
            errors.append(repr(exc))
            current = {"status": "?"}
        if current["status"] in ("completed", "failed"):
            break
        assert reads + len(errors) < 100_000, "the training never ended"
    assert current["status"] == "completed"
    assert errors == []
    assert reads > 20


def test_stop_ends_the_run_within_two_seconds_as_user_stop(worker, dataset):
    model_id = jobs.submit_training("stopped", dataset, LONG)
    wait_for(lambda: (store.get_model(model_id)["epochs_run"] or 0) >= 1, 120, what="a first epoch")
    asked = time.monotonic()
    assert jobs.stop_training(model_id) == "stopping"
    wait_for(lambda: status_of(model_id) not in ("running", "stopping"), 10, 0.02, "the run to end")
    took = time.monotonic() - asked
    status = jobs.training_status(model_id)
    last = load_checkpoint(paths.checkpoints_dir(model_id) / "last.pt")
    assert status["status"] == "completed"
    assert status["stop_reason"] == "user_stop"
    assert took < 2.0
    assert last["epoch"] >= 1


def test_stop_before_the_first_epoch_ends_leaves_a_stopped_user_stop_with_last_pt(worker, dataset):
    model_id = jobs.submit_training("early stop", dataset, {**LONG, "steps_per_epoch": 100_000})
    wait_for(lambda: (store.get_model(model_id)["batch"] or 0) >= 1, 120, what="the first batches")
    jobs.stop_training(model_id)
    wait_for(lambda: status_of(model_id) not in ("running", "stopping"), 10, what="the run to end")
    row = store.get_model(model_id)
    assert row["status"] == "stopped"
    assert row["stop_reason"] == "user_stop"
    assert row["error"] == jobs.STOPPED_EARLY
    assert load_checkpoint(paths.checkpoints_dir(model_id) / "last.pt")["epoch"] == 0


def test_trainings_run_one_after_another_while_inference_finishes(worker, dataset, tiny_checkpoint):
    first = jobs.submit_training("first", dataset, LONG)
    second = jobs.submit_training("second", dataset, TINY)
    third = jobs.submit_training("third", dataset, TINY)
    wait_for(lambda: status_of(first) == "running", 60, what="the first training to start")
    job = jobs.start_inference(tiny_checkpoint, dataset / "images", {"min_component_size": 0})
    seen_waiting = set()

    def inference_done():
        seen_waiting.update(m for m in (second, third) if status_of(m) == "queued")
        assert status_of(second) == "queued", "the second training started while the first was running"
        return jobs.inference_status(job)["status"] in ("completed", "failed")

    wait_for(inference_done, 60, 0.1, "the inference job")
    assert jobs.stop_training(third) == "cancelled"  # still waiting: revoked, never starts
    # A user stop ends 'completed' only once a best checkpoint exists: on an idle machine the inference
    # job can finish before the first epoch does, so wait for that epoch rather than race it.
    wait_for(lambda: (store.get_model(first)["epochs_run"] or 0) >= 1, 120, what="the first epoch of the first run")
    assert status_of(second) == "queued"
    jobs.stop_training(first)
    wait_for(lambda: status_of(second) in ("completed", "failed"), 120, what="the second training")
    time.sleep(1.5)  # the revoked task would have been picked up by now
    a, b, c = (store.get_model(m) for m in (first, second, third))
    inf = jobs.inference_status(job)
    assert inf["status"] == "completed"
    assert inf["n_done"] == 4
    assert inf["finished_at"] < a["finished_at"]  # the inference job did not wait for the training
    assert seen_waiting == {second, third}
    assert a["status"] == "completed"
    assert b["status"] == "completed"
    assert b["started_at"] >= a["finished_at"]  # one training after the other
    assert c["status"] == "failed"
    assert c["stop_reason"] == "user_stop"
    assert c["started_at"] is None


def test_inference_writes_maps_masks_stats_and_zip(worker, dataset, tiny_checkpoint, tmp_path):
    import zipfile

    bundle = tmp_path / "images.zip"
    with zipfile.ZipFile(bundle, "w") as zf:
        for image in sorted((dataset / "images").glob("*.png"))[:2]:
            zf.write(image, f"batch/{image.name}")
        zf.writestr("batch/broken.png", b"not an image")
    job = jobs.start_inference(tiny_checkpoint, bundle, {"threshold": 0.5})
    wait_for(lambda: jobs.inference_status(job)["status"] in ("completed", "failed"), 60, what="the job")
    status = jobs.inference_status(job)
    out = Path(status["output_dir"])
    lines = (out / "stats.csv").read_text().splitlines()
    names = sorted(zipfile.ZipFile(status["results_zip"]).namelist())
    settings = json.loads(zipfile.ZipFile(status["results_zip"]).read("settings.json"))
    assert status["status"] == "completed"
    assert status["n_total"] == 3
    assert status["n_failed"] == 1
    assert len(lines) == 4
    assert "error" in lines[0]
    assert sorted(p.name for p in (out / "masks").glob("*.png")) == ["synth_001.png", "synth_002.png"]
    assert names == ["masks/synth_001.png", "masks/synth_002.png", "prob/synth_001.png", "prob/synth_002.png",
                     "settings.json", "stats.csv"]
    assert settings["postprocess"]["threshold"] == 0.5
    assert settings["scale"] == "auto"
    assert settings["field_of_view"] == "estimated from each image"


def test_baseline_inference_runs_without_a_checkpoint(worker, dataset):
    job = jobs.start_inference("baseline", dataset / "images", {"min_component_size": 10}, model_id="baseline")
    wait_for(lambda: jobs.inference_status(job)["status"] in ("completed", "failed"), 60, what="the baseline job")
    status = jobs.inference_status(job)
    assert status["status"] == "completed"
    assert status["n_done"] == 4
    assert status["n_failed"] == 0
    assert status["model_id"] == "baseline"


def test_cli_submit_status_stop(worker, dataset, capsys):
    assert cli_main(["submit", "--data", str(dataset), "--set", "epochs=2", "--set", "base_channels=4",
                     "--set", "depth=2", "--set", "patch_size=32", "--set", "steps_per_epoch=2",
                     "--set", "num_threads=1", "--set", "calibrate_postprocess=false", "--name", "cli"]) == 0
    model_id = capsys.readouterr().out.strip()
    wait_for(lambda: status_of(model_id) in ("completed", "failed"), 120, what="the CLI training")
    assert cli_main(["status", model_id, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    code = cli_main(["stop", model_id])
    err = capsys.readouterr().err
    assert shown["model_id"] == model_id
    assert shown["status"] == "completed"
    assert shown["total_epochs"] == 2
    assert code == 2
    assert "already finished" in err


# --------------------------------------------------------------------------- workers that die or are stopped

def test_kill_9_during_training_then_restart_recovers(tmp_path, monkeypatch, dataset):
    home = tmp_path / "home"
    monkeypatch.setenv("ML_MANAGER_HOME", str(home))
    first = Worker(home).start()
    model_id = jobs.submit_training("killed", dataset, LONG)
    wait_for(lambda: (store.get_model(model_id)["epochs_run"] or 0) >= 1, 120, what="a first epoch")
    time.sleep(0.3)  # in the middle of the next epoch's batches
    first.kill()
    assert status_of(model_id) == "running"  # nobody has noticed yet
    with Worker(home):
        wait_for(lambda: status_of(model_id) == "failed", 30, what="the restarted worker to fail the run")
        error = store.get_model(model_id)["error"]
        loaded = [load_checkpoint(c["path"])["epoch"] for c in store.model_checkpoints(model_id)]
        checks = [sqlite3.connect(p).execute("PRAGMA integrity_check").fetchone()[0]
                  for p in (paths.db_path(), paths.queue_path())]
        again = jobs.submit_training("after", dataset, {**TINY, "epochs": 1})
        wait_for(lambda: status_of(again) in ("completed", "failed"), 120, what="a new training")
        assert f"the worker on {socket.gethostname()} stopped (last heartbeat" in error
        assert len(loaded) >= 2
        assert min(loaded) >= 1
        assert checks == ["ok", "ok"]
        assert status_of(again) == "completed"


def test_sigint_stops_the_worker_gracefully_and_the_run_is_not_left_running(tmp_path, monkeypatch, dataset):
    home = tmp_path / "home"
    monkeypatch.setenv("ML_MANAGER_HOME", str(home))
    worker = Worker(home).start()
    model_id = jobs.submit_training("interrupted", dataset, LONG)
    wait_for(lambda: (store.get_model(model_id)["batch"] or 0) >= 1, 120, what="the first batches")
    asked = time.monotonic()
    code = worker.stop(timeout=30)
    took = time.monotonic() - asked
    row = store.get_model(model_id)
    assert code == 0
    assert took < 10
    assert row["status"] == "failed"
    assert "shut down" in row["error"]
    assert (paths.checkpoints_dir(model_id) / "last.pt").exists()


# --------------------------------------------------------------------------- without a worker

def _snapshot():
    q = jobs.current_queue()
    return (store.list_models(), store.list_inference_jobs(), q.pending_count(), q.scheduled_count())


@pytest.fixture
def finished_model(home):
    model_id = store.create_model("done", TINY, "/nowhere")
    store.update_model(model_id, status="completed", stop_reason="max_epochs")
    return model_id


@pytest.mark.parametrize("call, message", [
    (lambda d, m: jobs.start_training("no-such-model", TINY), "no model with id"),
    (lambda d, m: jobs.submit_training("bad", d, {**TINY, "epochs": 0}), "epochs must be"),
    (lambda d, m: jobs.submit_training("bad", d, {**TINY, "colour": "red"}), "Unknown training option"),
    (lambda d, m: jobs.submit_training("bad", d.parent / "missing", TINY), "does not exist"),
    (lambda d, m: jobs.submit_training("", d, TINY), "needs a name"),
    (lambda d, m: jobs.submit_training("big", d, {**TINY, "patch_size": 512}), "patch_size 512 is larger"),
    (lambda d, m: jobs.stop_training(m), "already finished"),
    (lambda d, m: jobs.stop_training("no-such-model"), "no model with id"),
    (lambda d, m: jobs.start_training(m, TINY), "already completed"),
    (lambda d, m: jobs.start_training(m, {**TINY, "loss_function": "magic"}), "loss_function"),
    (lambda d, m: jobs.training_status("no-such-model"), "no model with id"),
    (lambda d, m: jobs.inference_status("no-such-job"), "no inference job"),
    (lambda d, m: jobs.start_inference(d / "missing.pt", d / "images", {}), "No checkpoint file"),
    (lambda d, m: jobs.start_inference("baseline", d / "nothing-here", {}), "neither a folder nor a .zip"),
    (lambda d, m: jobs.start_inference("baseline", d / "images", {"threshold": 3}), "threshold"),
], ids=["start-unknown", "bad-epochs", "unknown-key", "missing-data", "no-name", "patch-too-big", "stop-finished", "stop-unknown",
        "restart-completed", "bad-config-on-start", "status-unknown", "job-unknown", "no-checkpoint", "no-input",
        "bad-postprocess"])
def test_bad_calls_raise_a_sentence_and_change_nothing(home, dataset, finished_model, call, message):
    before = _snapshot()
    with pytest.raises(UserError, match=message):
        call(dataset, finished_model)
    assert _snapshot() == before


def test_a_queued_training_stops_without_starting(home, dataset):
    model_id = jobs.submit_training("waiting", dataset, TINY)
    task_id = store.get_model(model_id)["task_id"]
    outcome = jobs.stop_training(model_id)
    row = store.get_model(model_id)
    assert outcome == "cancelled"
    assert row["status"] == "failed"
    assert row["stop_reason"] == "user_stop"
    assert row["error"] == "stopped by the user before it started"
    assert jobs.current_queue().is_revoked(task_id)


def test_a_failed_run_can_be_resumed_from_last_pt(home, dataset, tiny_checkpoint):
    import shutil

    model_id = store.create_model("resumable", TINY, str(dataset))
    store.update_model(model_id, status="failed", error="the worker was shut down")
    shutil.copy(tiny_checkpoint, paths.checkpoints_dir(model_id) / "last.pt")
    task_id = jobs.start_training(model_id, {**TINY, "epochs": 5}, resume=True)
    row = store.get_model(model_id)
    assert row["status"] == "queued"
    assert row["task_id"] == task_id
    assert row["error"] is None
    assert row["total_epochs"] == 5
    assert jobs.current_queue().pending_count() == 1


# --------------------------------------------------------------------------- recovery, in-process

def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("worker_of, heartbeat_age, at_startup, fails", [
    ("dead", 3, True, True),        # the process that ran it is gone: failed at start-up at once
    ("dead", 3, False, False),      # the minute check waits for the heartbeat to go stale
    ("alive", 3, True, False),      # another live worker on this machine still runs it
    ("alive", 600, False, True),    # alive but silent for ten minutes: failed
    (None, None, False, True),      # never reported at all
])
def test_recover_stale_runs(home, worker_of, heartbeat_age, at_startup, fails):
    import socket
    from datetime import datetime, timedelta, timezone

    model_id = store.create_model("stale?", TINY, "/nowhere")
    pid = {"dead": _dead_pid(), "alive": os.getppid(), None: None}[worker_of]
    beat = None if heartbeat_age is None else (
        datetime.now(timezone.utc) - timedelta(seconds=heartbeat_age)).isoformat(timespec="milliseconds")
    store.update_model(model_id, status="running", heartbeat_at=beat,
                       worker=None if pid is None else f"{socket.gethostname()}:{pid}:abc")
    failed = jobs.recover_stale_runs(at_startup=at_startup)
    row = store.get_model(model_id)
    assert (model_id in failed) is fails
    assert row["status"] == ("failed" if fails else "running")
    assert ("stopped (last heartbeat" in (row["error"] or "")) is fails


def test_an_inference_job_of_a_dead_worker_is_failed_at_start_up(home):
    import socket

    job = store.create_inference_job("baseline", "/nowhere", {})
    store.update_inference_job(job, status="running", heartbeat_at=store.utc_now(),
                               worker=f"{socket.gethostname()}:{_dead_pid()}:abc")
    failed = jobs.recover_stale_runs(at_startup=True)
    row = store.get_inference_job(job)
    assert failed == [job]
    assert row["status"] == "failed"
    assert row["error"].startswith(f"the worker on {socket.gethostname()} stopped (last heartbeat")


def test_remove_temp_files_keeps_fresh_and_real_files(home):
    folder = paths.checkpoints_dir("m1")
    old, fresh, real = folder / ".last.pt.123.tmp", folder / ".best.pt.456.tmp", folder / "best.pt"
    for path in (old, fresh, real):
        path.write_bytes(b"x")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    os.utime(real, (time.time() - 7200, time.time() - 7200))
    removed = jobs.remove_temp_files(max_age_s=3600)
    assert removed == [old]
    assert fresh.exists()
    assert real.exists()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, dataset) -> Path:
    """A real checkpoint trained in-process (one short epoch)."""
    from engine.training.config import TrainingConfig
    from engine.training.loop import train

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("ckpt")
    result = train(TrainingConfig.from_dict({**TINY, "epochs": 1}), dataset, out)
    return result.best_checkpoint


# --------------------------------------------------------------------------- the ETA

class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _recorder(home, max_minutes=0.0):
    from engine.jobs import ProgressRecorder
    from storage import db as store

    clock = Clock()
    model_id = store.create_model("eta", {}, str(home))
    recorder = ProgressRecorder(model_id, store.connect(), max_minutes=max_minutes, clock=clock)
    recorder({"type": "start", "start_epoch": 1, "total_epochs": 3, "steps_per_epoch": 100})
    return recorder, clock


def test_the_first_eta_waits_for_measured_speed(home):
    recorder, clock = _recorder(home)
    clock.now += 60  # loading the images took a minute: that is not the training's speed
    recorder({"type": "batch", "epoch": 1, "step": 1, "steps": 100, "loss": 1.0})
    assert recorder.eta(1, 1) is None


def test_the_eta_comes_from_the_speed_since_the_first_batch(home):
    recorder, clock = _recorder(home)
    clock.now += 60
    recorder({"type": "batch", "epoch": 1, "step": 1, "steps": 100, "loss": 1.0})
    clock.now += 10  # 10 more steps in 10 s: 289 steps left at 1 s each
    assert recorder.eta(1, 11) == pytest.approx(289)


def test_the_time_budget_caps_the_eta(home):
    recorder, clock = _recorder(home, max_minutes=2)
    recorder({"type": "batch", "epoch": 1, "step": 1, "steps": 100, "loss": 1.0})
    clock.now += 10  # 1 s a step would need 289 s more, but the budget ends 110 s from now
    assert recorder.eta(1, 11) == pytest.approx(110)


def test_a_continued_run_s_eta_counts_the_minutes_it_trained_before(home):
    from engine.jobs import ProgressRecorder
    from storage import db as store

    clock = Clock()
    recorder = ProgressRecorder(store.create_model("eta", {}, str(home)), store.connect(), max_minutes=2, clock=clock)
    recorder({"type": "start", "start_epoch": 4, "total_epochs": 60, "steps_per_epoch": 100, "elapsed_before": 80.0})
    recorder({"type": "batch", "epoch": 4, "step": 1, "steps": 100, "loss": 1.0})
    clock.now += 10  # 80 s trained before and 10 s now: 30 s of the 2-minute budget are left
    assert recorder.eta(4, 11) == pytest.approx(30)


def test_the_recorder_writes_the_seconds_trained_in_all_rounds(home):
    from engine.jobs import ProgressRecorder
    from storage import db as store

    clock, model_id = Clock(), store.create_model("trained", {}, str(home))
    recorder = ProgressRecorder(model_id, store.connect(), max_minutes=2, clock=clock)
    recorder({"type": "start", "start_epoch": 4, "total_epochs": 60, "steps_per_epoch": 100, "elapsed_before": 80.0})
    clock.now += 5
    recorder({"type": "batch", "epoch": 4, "step": 100, "steps": 100, "loss": 1.0})
    assert store.get_model(model_id)["trained_s"] == pytest.approx(85)


@pytest.mark.parametrize("config, trained_s, expected", [
    ({"max_minutes": 2.0}, 90.0, 0.75),   # budgeted: three quarters of the time spent, epoch 3 of 60
    ({"max_minutes": 2.0}, None, 2.5 / 60),  # before the worker wrote the seconds: the epochs
    ({"max_minutes": 0.0}, 90.0, 2.5 / 60),  # no budget: the epochs
    ({"max_minutes": 2.0}, 500.0, 1.0),   # never above 1
])
def test_a_budgeted_run_s_progress_is_its_share_of_the_budget(config, trained_s, expected):
    from engine.progress import run_progress

    row = {"status": "running", "total_epochs": 60, "epochs_run": 2, "current_epoch": 3, "batch": 20, "batches": 40,
           "config": json.dumps(config), "trained_s": trained_s}
    assert run_progress(row) == pytest.approx(expected)


@pytest.mark.parametrize("trained, done, more, expected", [
    (1.33, 3, 2.0, {"max_minutes": 3.33, "epochs": 100_000}),   # the clock, never an epoch limit, ends it
    (1.0, 10, 5.0, {"max_minutes": 6.0, "epochs": 100_000}),
    (2.0, 8, 0.5, {"max_minutes": 2.5, "epochs": 100_000}),     # was raised to 15 only, and ended there early
])
def test_more_time_raises_the_budget_by_the_minutes_asked(trained, done, more, expected):
    from engine.training.config import more_time_changes

    assert more_time_changes({"epochs": 60}, trained, done, more) == expected


@pytest.mark.parametrize("more", [0, -1, "2", True])
def test_more_time_must_be_a_positive_number(more):
    from engine.training.config import more_time_changes

    with pytest.raises(UserError, match="above 0"):
        more_time_changes({"epochs": 60}, 1.0, 2, more)
