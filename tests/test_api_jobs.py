"""The HTTP API's routes with a real worker: trainings to the end, resuming and restarting, batch inference
and its results, cancelling, the shipped pretrained model.

One server and one worker (tests/api_helpers.py) serve the session; the trainings are tiny (32-pixel patches of
64×64 synthetic images, 4 base channels).
"""
from __future__ import annotations

import io
import json
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from engine.cli import main as cli_main
from engine.training.config import TrainingConfig
from engine.imageio import encode_png
from storage import db as store
from tests.api_helpers import LONG, TINY, api, download, wait_job  # noqa: F401 (a fixture)
from tests.worker_helpers import wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(api) -> str:
    """A model trained to the end through the API."""
    status, body = api.call("POST", "/api/v1/training/start",
                            {"name": "api-tiny", "dataset": "datasets/synth", "training_config": TINY})
    assert status == 202, body
    model_id = body["model_id"]
    wait_for(lambda: api.call("GET", f"/api/v1/training/status/{model_id}")[1]["status"] in ("completed", "failed"),
             120, 0.2, "the training to end")
    return model_id


# --------------------------------------------------------------------------- the routes, with a real worker

def test_health_reports_the_worker(api):
    status, body = api.call("GET", "/api/v1/health")
    assert status == 200
    assert body["dashboard"] == "up"
    assert body["worker"] == "up"
    assert body["worker_heartbeat_age_s"] < 30
    assert isinstance(body["queue_length"], int)


def test_training_runs_to_the_end(api, trained):
    status = api.call("GET", f"/api/v1/training/status/{trained}")[1]
    assert status["status"] == "completed"
    assert status["epochs_run"] == 3
    assert status["progress"] == 1.0


def test_status_has_the_cli_status_fields_and_history_on_request(api, trained, capsys):
    cli_main(["status", trained, "--json"])
    printed = json.loads(capsys.readouterr().out)
    plain = api.call("GET", f"/api/v1/training/status/{trained}")[1]
    with_history = api.call("GET", f"/api/v1/training/status/{trained}?history=1")[1]
    assert sorted(plain) == sorted(printed)
    assert plain["best"] == printed["best"]
    assert "history" not in plain
    assert [e["epoch"] for e in with_history["history"]] == [1, 2, 3]


def test_models_and_checkpoints(api, trained):
    models = api.call("GET", "/api/v1/models")[1]["models"]
    own = api.call("GET", f"/api/v1/models/{trained}/checkpoints")[1]["checkpoints"]
    every = api.call("GET", "/api/v1/checkpoints")[1]["checkpoints"]
    listed = next(m for m in models if m["id"] == trained)
    assert listed["config"]["epochs"] == 3
    assert [c["name"] for c in own] == ["best.pt", "last.pt"]
    assert trained in {c["model_id"] for c in every}


@pytest.mark.parametrize("body", [{}, {"resume": False}])
def test_starting_a_completed_model_again_is_a_conflict(api, trained, body):
    status, answer = api.call("POST", "/api/v1/training/start", {"model_id": trained, **body})
    assert status == 409
    assert "has already completed" in answer["error"]


@pytest.mark.parametrize("plan, patch_size, batch_size, explained", [(True, 32, 2, True), (False, None, None, False)])
def test_a_new_model_is_planned_unless_asked_not_to(api, plan, patch_size, batch_size, explained):
    status, body = api.call("POST", "/api/v1/training/start", {"name": "planned", "dataset": "datasets/synth",
                                                               "training_config": {**TINY, "epochs": 1}, "plan": plan})
    api.call("POST", "/api/v1/training/stop", {"model_id": body["model_id"]})
    shown = body["plan"] or {}
    assert status == 202
    assert shown.get("patch_size") == patch_size
    assert shown.get("batch_size") == batch_size
    assert bool(body["plan_text"]) is explained


def test_stopping_a_finished_model_is_a_conflict(api, trained):
    assert api.call("POST", "/api/v1/training/stop", {"model_id": trained})[0] == 409


def test_running_training_conflicts_on_start_and_stops(api):
    status, body = api.call("POST", "/api/v1/training/start",
                            {"name": "long", "dataset": str(api.home / "datasets" / "synth"), "training_config": LONG})
    model_id = body["model_id"]
    wait_for(lambda: api.call("GET", f"/api/v1/training/status/{model_id}")[1]["epoch"], 60, 0.1, "the first batch")
    again = api.call("POST", "/api/v1/training/start", {"model_id": model_id})
    stop = api.call("POST", "/api/v1/training/stop", {"model_id": model_id})
    wait_for(lambda: store.get_model(model_id)["status"] in ("completed", "failed", "stopped"), 30, 0.1,
             "the run to end")
    assert status == 202
    assert again[0] == 409
    assert stop == (200, {"model_id": model_id, "outcome": "stopping"})
    assert store.get_model(model_id)["stop_reason"] == "user_stop"


def test_a_completed_model_continues_with_resume(api):
    model_id = api.call("POST", "/api/v1/training/start",
                        {"name": "again", "dataset": "datasets/synth", "training_config": {**TINY, "epochs": 1}})[1]["model_id"]
    wait_for(lambda: store.get_model(model_id)["status"] == "completed", 60, 0.1, "the first run")
    status, body = api.call("POST", "/api/v1/training/start",
                            {"model_id": model_id, "resume": True, "training_config": {**TINY, "epochs": 2}})
    wait_for(lambda: store.get_model(model_id)["status"] == "completed", 60, 0.1, "the continued run")
    assert status == 202
    assert body["task_id"] == store.get_model(model_id)["task_id"]
    assert [m["epoch"] for m in store.model_metrics(model_id)] == [1, 2]


@pytest.fixture(scope="module")
def resumed(api) -> tuple[str, int, dict]:
    """A model trained one epoch with settings far from the defaults, then continued with the README's
    body, which sends only the new epoch limit: (model id, HTTP status of the resume, its row's config)."""
    first = {**TINY, "epochs": 1, "val_fraction": 0.5, "max_minutes": 30.0}
    model_id = api.call("POST", "/api/v1/training/start",
                        {"name": "resume-me", "dataset": "datasets/synth", "training_config": first})[1]["model_id"]
    wait_for(lambda: store.get_model(model_id)["status"] == "completed", 60, 0.1, "the first run")
    status, body = api.call("POST", "/api/v1/training/start",
                            {"model_id": model_id, "resume": True, "training_config": {"epochs": 2}})
    wait_for(lambda: store.get_model(model_id)["status"] in ("completed", "failed"), 60, 0.1, "the continued run")
    return model_id, status, json.loads(store.get_model(model_id)["config"])


def test_resume_over_the_api_is_accepted_with_only_the_epochs(api, resumed):
    assert resumed[1] == 202


@pytest.mark.parametrize("field, expected", [
    ("epochs", 2),  # the one field sent
    ("base_channels", 4), ("depth", 2), ("patch_size", 32), ("batch_size", 2), ("steps_per_epoch", 3),
    ("val_fraction", 0.5), ("max_minutes", 30.0), ("num_threads", 1),  # every other one as stored
])
def test_resume_over_the_api_changes_only_the_fields_sent(api, resumed, field, expected):
    assert resumed[2][field] == expected


def test_resume_over_the_api_continues_the_curve(api, resumed):
    assert [m["epoch"] for m in store.model_metrics(resumed[0])] == [1, 2]


def test_the_status_counts_the_seconds_of_both_rounds(api, resumed):
    trained_s = api.call("GET", f"/api/v1/training/status/{resumed[0]}")[1]["trained_s"]
    first_round = sum(m["seconds"] for m in store.model_metrics(resumed[0])[:1])
    assert trained_s > first_round


def test_a_restart_keeps_the_stored_settings_it_was_not_sent(api):
    model_id = store.create_model("restart-me", {**TINY, "epochs": 3}, str(api.home / "datasets" / "synth"))
    status, _ = api.call("POST", "/api/v1/training/start", {"model_id": model_id, "training_config": {"epochs": 1}})
    config = json.loads(store.get_model(model_id)["config"])
    wait_for(lambda: store.get_model(model_id)["status"] in ("completed", "failed"), 60, 0.1, "the run to end")
    assert status == 202
    assert config == {**TrainingConfig.from_dict(TINY).to_dict(), "epochs": 1}  # all as stored, but the epochs


def test_a_model_id_may_be_a_number(api):
    status, answer = api.call("POST", "/api/v1/training/start", {"model_id": 123, "training_config": {"epochs": 2}})
    assert status == 404
    assert "'123'" in answer["error"]


def test_the_conflict_says_how_to_resume_in_json(api, trained):
    assert '"resume": true' in api.call("POST", "/api/v1/training/start", {"model_id": trained})[1]["error"]


@pytest.fixture(scope="module")
def finished_job(api) -> str:
    job_id = api.call("POST", "/api/v1/inference/start", {"model_id": "baseline", "input": "datasets/synth/images"})[1]
    return wait_job(api, job_id["job_id"])["job_id"]


def test_the_results_zip_downloads_over_the_api(api, finished_job):
    status, kind, data = download(api, f"/api/v1/inference/results/{finished_job}")
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert (status, kind) == (200, "application/zip")
    assert "settings.json" in names
    assert len([n for n in names if n.startswith("masks/")]) == 4


@pytest.mark.parametrize("token, job, expected", [
    (None, "{job}", 401),              # still needs the token
    ("", "no-such-job", 404),
])
def test_the_results_download_is_refused_without_token_or_job(api, finished_job, token, job, expected):
    assert download(api, f"/api/v1/inference/results/{job.format(job=finished_job)}", token=token)[0] == expected


def test_the_results_of_a_queued_job_are_a_conflict(api):
    job_id = store.create_inference_job("baseline", str(api.home / "datasets" / "synth" / "images"), {})
    status, _, data = download(api, f"/api/v1/inference/results/{job_id}")
    api.call("POST", "/api/v1/inference/cancel", {"job_id": job_id})
    assert status == 409
    assert b"ask again" in data


@pytest.mark.parametrize("body, expected", [
    ({"which": "best", "postprocess": "recommended"}, "completed"),
    ({"which": "last", "postprocess": {"threshold": 0.5, "min_component_size": 0}}, "completed"),
    ({}, "completed"),
])
def test_inference_of_a_trained_model(api, trained, body, expected):
    status, answer = api.call("POST", "/api/v1/inference/start",
                              {"model_id": trained, "input": "datasets/synth/images", **body})
    job = wait_job(api, answer["job_id"])
    assert status == 202
    assert job["status"] == expected
    assert job["n_done"] == 4
    assert Path(job["results_zip"]).is_file()


def test_inference_of_a_checkpoint_path_and_the_baseline(api, trained):
    best = api.call("GET", f"/api/v1/models/{trained}/checkpoints")[1]["checkpoints"][0]["path"]
    by_path = api.call("POST", "/api/v1/inference/start", {"checkpoint": best, "input": "datasets/synth/images"})[1]
    baseline = api.call("POST", "/api/v1/inference/start", {"model_id": "baseline", "input": "datasets/synth/images"})[1]
    assert wait_job(api, by_path["job_id"])["status"] == "completed"
    assert wait_job(api, baseline["job_id"])["status"] == "completed"


def test_inference_with_a_missing_checkpoint_is_a_conflict(api):
    model_id = store.create_model("never-trained", TINY, str(api.home / "datasets" / "synth"))
    assert api.call("POST", "/api/v1/inference/start", {"model_id": model_id, "input": "datasets/synth/images"})[0] == 409


# --------------------------------------------------------------------------- cancelling batch inference

@pytest.fixture(scope="module")
def many_images(api) -> str:
    """400 small images: a baseline job over them runs for several seconds."""
    folder = api.home / "datasets" / "many"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(400):
        (folder / f"img_{i:03d}.png").write_bytes(encode_png(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)))
    return "datasets/many"


def test_cancel_a_running_job_ends_it_within_two_seconds_and_keeps_its_results(api, many_images):
    job_id = api.call("POST", "/api/v1/inference/start", {"model_id": "baseline", "input": many_images})[1]["job_id"]
    wait_for(lambda: store.get_inference_job(job_id)["n_done"] >= 2, 60, 0.02, "the job to process images")
    answer = api.call("POST", "/api/v1/inference/cancel", {"job_id": job_id})
    t0 = time.monotonic()
    wait_for(lambda: store.get_inference_job(job_id)["finished_at"], 5, 0.02, "the job to end")
    waited = time.monotonic() - t0
    job = api.call("GET", f"/api/v1/inference/status/{job_id}")[1]
    masks = len(list((api.home / "inference" / job_id / "masks").glob("*.png")))
    assert answer == (200, {"job_id": job_id, "outcome": "cancelling"})
    assert job["status"] == "cancelled"
    assert waited < 2.0
    assert job["n_done"] < 400  # it stopped before the end
    assert masks == job["n_done"]
    assert Path(job["results_zip"]).is_file()


def test_cancel_a_queued_job_and_a_finished_one(api):
    job_id = store.create_inference_job("baseline", str(api.home / "datasets" / "synth" / "images"), {})
    first = api.call("POST", "/api/v1/inference/cancel", {"job_id": job_id})
    second = api.call("POST", "/api/v1/inference/cancel", {"job_id": job_id})
    assert first[1]["outcome"] == "cancelled"
    assert store.get_inference_job(job_id)["status"] == "cancelled"
    assert second[0] == 409


def test_cli_cancel(api, many_images, capsys):
    job_id = api.call("POST", "/api/v1/inference/start", {"model_id": "baseline", "input": many_images})[1]["job_id"]
    wait_for(lambda: store.get_inference_job(job_id)["status"] == "running", 60, 0.02, "the job to start")
    code = cli_main(["cancel", job_id])
    wait_for(lambda: store.get_inference_job(job_id)["finished_at"], 5, 0.02, "the job to end")
    again = cli_main(["cancel", job_id])
    out = capsys.readouterr()
    assert code == 0
    assert "cancelling" in out.out
    assert again == 2
    assert "already ended" in out.err
    assert store.get_inference_job(job_id)["status"] == "cancelled"


# --------------------------------------------------------------------------- the shipped pretrained model

def test_the_global_checkpoint_list_starts_with_the_pretrained_model(api):
    every = api.call("GET", "/api/v1/checkpoints")[1]["checkpoints"]
    assert every[0]["model_id"] == "pretrained"


def test_the_pretrained_model_is_marked_protected(api):
    every = api.call("GET", "/api/v1/checkpoints")[1]["checkpoints"]
    assert every[0]["protected"] is True


@pytest.mark.parametrize("postprocess", ["recommended", {"threshold": 0.5}])
def test_inference_with_the_pretrained_model(api, postprocess):
    status, answer = api.call("POST", "/api/v1/inference/start",
                              {"model_id": "pretrained", "input": "datasets/synth/images", "postprocess": postprocess})
    assert wait_job(api, answer["job_id"])["status"] == "completed"


@pytest.mark.parametrize("scale, expected", [(None, "auto"), ("none", "none"), (0.5, 0.5)])
def test_inference_records_the_scale_it_was_asked_for(api, scale, expected):
    body = {"model_id": "baseline", "input": "datasets/synth/images", **({} if scale is None else {"scale": scale})}
    job = wait_job(api, api.call("POST", "/api/v1/inference/start", body)[1]["job_id"])
    settings = json.loads(zipfile.ZipFile(job["results_zip"]).read("settings.json"))
    assert settings["scale"] == expected


@pytest.mark.parametrize("scale", ["huge", 0, -1, True, [1]])
def test_a_bad_scale_is_refused_with_a_sentence(api, scale):
    status, answer = api.call("POST", "/api/v1/inference/start",
                              {"model_id": "baseline", "input": "datasets/synth/images", "scale": scale})
    assert status == 400
    assert answer["error"].startswith("scale must be")


# --------------------------------------------------------------------------- the original system's paths

@pytest.mark.parametrize("method, legacy, current, body, token", [
    ("GET", "/ml_manager/training/status/{model}/", "/api/v1/training/status/{model}", None, ""),
    ("GET", "/ml_manager/training/status/{model}", "/api/v1/training/status/{model}", None, ""),
    ("GET", "/ml_manager/inference/status/{job}/", "/api/v1/inference/status/{job}", None, ""),
    ("GET", "/ml_manager/inference/status/{job}", "/api/v1/inference/status/{job}", None, ""),
    ("POST", "/ml_manager/training/stop/", "/api/v1/training/stop", {"model_id": "{model}"}, ""),
    ("POST", "/ml_manager/training/start/", "/api/v1/training/start", {"model_id": "{model}"}, ""),
    ("POST", "/ml_manager/training/start", "/api/v1/training/start", {"model_id": "{model}"}, ""),
    ("GET", "/ml_manager/training/status/{model}/", "/api/v1/training/status/{model}", None, None),  # no token
    ("POST", "/ml_manager/training/stop/", "/api/v1/training/stop", {"model_id": "{model}"}, "wrong"),
])
def test_the_original_systems_paths_answer_as_the_api(api, trained, finished_job, method, legacy, current, body,
                                                      token):
    def answer(path: str) -> tuple:
        fill = {"model": trained, "job": finished_job}
        sent = {k: v.format(**fill) for k, v in body.items()} if body else None
        status, data = api.call(method, path.format(**fill), sent, token=token)
        return status, data.get("error") or data.get("status")
    assert answer(legacy) == answer(current)


def test_the_original_systems_start_queues_a_run(api):
    status, body = api.call("POST", "/ml_manager/training/start/",
                            {"name": "legacy-start", "dataset": "datasets/synth", "training_config": TINY,
                             "plan": False})
    assert (status, api.status(body.get("model_id", "?")).get("name")) == (202, "legacy-start")
