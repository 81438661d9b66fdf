"""The queue's task bodies, run in this process with huey's ``call_local`` on a real temporary data home
and real SQLite: seconds, where tests/test_jobs.py starts a real ``huey_consumer`` for what only a consumer
shows (one training at a time across worker threads, stop requests while training, a killed or stopped
worker, recovery at start-up).

The runs are queued as the dashboard queues them (``submit_training``, ``start_inference``), so the task
reads the row the dashboard wrote. Huey's immediate mode (``huey.immediate = True``) is not used:
``start_training`` enqueues inside the registry's write transaction (a failed enqueue rolls the row back),
and immediate mode would run the whole training inside that transaction, its writes waiting on its own lock.
"""
from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
from huey.exceptions import RetryTask

import engine.jobs as jobs
from engine.training.synthetic import make_synthetic_dataset
from storage import db as store
from storage import paths

TINY = {"base_channels": 4, "depth": 2, "patch_size": 32, "batch_size": 2, "steps_per_epoch": 2, "epochs": 2,
        "num_threads": 1, "val_fraction": 0.25, "early_stopping_patience": 0, "calibrate_postprocess": False}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("data") / "synth", n_images=4, size=64, seed=1)


def queued_config(model_id: str) -> dict:
    """The config as the queued task carries it: the one the registry row holds."""
    return json.loads(store.get_model(model_id)["config"])


# --------------------------------------------------------------------------- training

@pytest.fixture(scope="module")
def trained(tmp_path_factory, dataset) -> str:
    """The id of one tiny run, queued as the dashboard does and trained to its end by the task body."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ML_MANAGER_HOME", str(tmp_path_factory.mktemp("home")))
        model_id = jobs.submit_training("in-process", dataset, TINY)
        jobs.train_model_task.call_local(model_id, queued_config(model_id))
        yield model_id


@pytest.mark.parametrize("field, expected", [
    ("status", "completed"),
    ("stop_reason", "max_epochs"),
    ("epochs_run", 2),
    ("error", None),
    ("eta_s", None),
])
def test_the_training_task_records_the_end_of_the_run(trained, field, expected):
    assert store.get_model(trained)[field] == expected


def test_the_training_task_logs_every_epoch(trained):
    assert [m["epoch"] for m in store.model_metrics(trained)] == [1, 2]


def test_the_training_task_writes_best_and_last(trained):
    assert sorted(p.name for p in paths.checkpoints_dir(trained).glob("*.pt")) == ["best.pt", "last.pt"]


def test_the_training_task_registers_the_checkpoints_it_wrote(trained):
    assert sorted(c["name"] for c in store.model_checkpoints(trained)) == ["best.pt", "last.pt"]


def test_the_training_task_records_a_finish_time(trained):
    assert store.get_model(trained)["finished_at"] is not None


def test_a_training_task_of_a_run_stopped_while_queued_trains_nothing(home, dataset):
    model_id = jobs.submit_training("cancelled", dataset, TINY)
    jobs.stop_training(model_id)
    jobs.train_model_task.call_local(model_id, queued_config(model_id))
    assert list(paths.checkpoints_dir(model_id).glob("*.pt")) == []


def test_a_training_task_of_a_run_stopped_while_queued_leaves_its_row(home, dataset):
    model_id = jobs.submit_training("cancelled", dataset, TINY)
    jobs.stop_training(model_id)
    before = store.get_model(model_id)
    jobs.train_model_task.call_local(model_id, queued_config(model_id))
    assert store.get_model(model_id) == before


def test_a_training_task_waits_while_another_run_holds_the_slot(home, dataset):
    busy = store.create_model("busy", TINY, str(dataset))
    store.update_model(busy, status="running")
    model_id = jobs.submit_training("waiting", dataset, TINY)
    with pytest.raises(RetryTask):  # huey runs it again after WAIT_RETRY_S
        jobs.train_model_task.call_local(model_id, queued_config(model_id))


def test_a_waiting_training_task_stays_queued(home, dataset):
    busy = store.create_model("busy", TINY, str(dataset))
    store.update_model(busy, status="running")
    model_id = jobs.submit_training("waiting", dataset, TINY)
    with pytest.raises(RetryTask):
        jobs.train_model_task.call_local(model_id, queued_config(model_id))
    assert store.get_model(model_id)["status"] == "queued"


@pytest.fixture
def failed_run(home, dataset, tmp_path) -> str:
    """A run whose data set was deleted after it was queued, through the training task."""
    copy = shutil.copytree(dataset, tmp_path / "deleted")
    model_id = jobs.submit_training("lost data", copy, TINY)
    shutil.rmtree(copy)
    jobs.train_model_task.call_local(model_id, queued_config(model_id))
    return model_id


def test_a_training_that_raises_is_recorded_as_failed(failed_run):
    assert store.get_model(failed_run)["status"] == "failed"


def test_a_failed_training_records_what_went_wrong(failed_run):
    assert "deleted does not exist" in store.get_model(failed_run)["error"]  # the folder, by its name


# --------------------------------------------------------------------------- batch inference

@pytest.fixture(scope="module")
def baseline_job(tmp_path_factory, dataset) -> dict:
    """The status of a classical-filter job over the four images, run by the inference task body."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ML_MANAGER_HOME", str(tmp_path_factory.mktemp("home")))
        job_id = jobs.start_inference("baseline", dataset / "images", {"min_component_size": 10}, model_id="baseline")
        jobs.run_inference_task.call_local(job_id)
        yield jobs.inference_status(job_id)


@pytest.mark.parametrize("field, expected", [
    ("status", "completed"),
    ("n_total", 4),
    ("n_done", 4),
    ("n_failed", 0),
    ("model_id", "baseline"),
    ("error", None),
])
def test_the_inference_task_records_the_job(baseline_job, field, expected):
    assert baseline_job[field] == expected


def test_the_inference_task_zips_a_mask_per_image(baseline_job):
    names = zipfile.ZipFile(baseline_job["results_zip"]).namelist()
    assert sorted(n for n in names if n.startswith("masks/")) == [
        "masks/synth_001.png", "masks/synth_002.png", "masks/synth_003.png", "masks/synth_004.png"]


def test_the_inference_task_writes_the_masks_to_the_jobs_folder(baseline_job):
    assert len(list((Path(baseline_job["output_dir"]) / "masks").glob("*.png"))) == 4


def test_an_inference_task_of_a_cancelled_job_runs_nothing(home, dataset):
    job_id = jobs.start_inference("baseline", dataset / "images", {}, model_id="baseline")
    jobs.cancel_inference(job_id)
    jobs.run_inference_task.call_local(job_id)
    assert not (paths.data_home() / "inference" / job_id / "masks").exists()


def test_an_inference_task_of_a_cancelled_job_keeps_it_cancelled(home, dataset):
    job_id = jobs.start_inference("baseline", dataset / "images", {}, model_id="baseline")
    jobs.cancel_inference(job_id)
    jobs.run_inference_task.call_local(job_id)
    assert jobs.inference_status(job_id)["status"] == "cancelled"
