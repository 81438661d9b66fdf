"""Several machines, against real parts: a real Redis server, the dashboard started as `make run` starts it
on data home A, and two workers `python -m engine worker --server URL --token TOKEN` on data homes B and C
of their own (they never get A's path: everything they have came over HTTP).

Worker 1 takes the queues training, inference and cpu, worker 2 training and gpu; the queues spare and
local have no worker until a test starts one.
"""
from __future__ import annotations

import io
import json
import shutil
import socket
import time

import numpy as np
import pytest
import torch

from engine.training.synthetic import make_synthetic_dataset
from tests.remote_helpers import Dashboard, RedisServer, RemoteWorker, wait_for

pytestmark = pytest.mark.slow

TINY = {"base_channels": 4, "depth": 2, "patch_size": 32, "batch_size": 2, "steps_per_epoch": 3, "epochs": 3,
        "num_threads": 1, "val_fraction": 0.25, "early_stopping_patience": 0, "calibrate_postprocess": True}
LONG = {**TINY, "epochs": 10_000, "calibrate_postprocess": False}  # runs until stopped
STALE_S = 5
HOST = socket.gethostname()
ENDED = ("completed", "failed", "stopped")


class Lab:
    def __init__(self, base):
        self.base = base
        self.a = base / "A"
        make_synthetic_dataset(self.a / "datasets" / "synth", n_images=4, size=64, seed=1)
        self.redis = RedisServer(base / "redis", password="s3cret").start()
        self.dashboard = Dashboard(self.a, {"ML_MANAGER_QUEUE": self.redis.url, "ML_MANAGER_QUEUES": "gpu,cpu,spare,local",
                                            "ML_MANAGER_STALE_AFTER_S": str(STALE_S), "ML_MANAGER_MAX_UPLOAD_MB": "2"})
        self.w1 = self.worker(base / "B", "training,inference,cpu").start(wait=False)
        self.w2 = self.worker(base / "C", "training,gpu").start(wait=False)
        self.w1.wait_alive()
        self.w2.wait_alive()

    def worker(self, home, queues: str) -> RemoteWorker:
        """A worker given the Redis password on its own command line's environment."""
        return RemoteWorker(home, self.dashboard, queues, env={"ML_MANAGER_QUEUE": self.redis.url})

    def train(self, config: dict, queue: str | None = None, name: str = "remote") -> str:
        body = {"name": name, "dataset": "datasets/synth", "training_config": config, "plan": False}
        status, answer = self.dashboard.call("POST", "/api/v1/training/start", {**body, **({"queue": queue} if queue
                                                                                           else {})})
        assert status == 202, answer
        return answer["model_id"]

    def wait_end(self, model_id: str, timeout: float = 120) -> dict:
        return wait_for(lambda: (s := self.dashboard.status(model_id))["status"] in ENDED and s, timeout, 0.1,
                        f"model {model_id} to end")

    def wait_epochs(self, model_id: str, n: int) -> dict:
        return wait_for(lambda: ((s := self.dashboard.status(model_id))["epochs_run"] or 0) >= n and s, 120, 0.1,
                        f"{n} epoch(s) of {model_id}")

    def close(self) -> None:
        for worker in (self.w1, self.w2):
            worker.stop()
        self.dashboard.stop()
        self.redis.stop()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lab = Lab(tmp_path_factory.mktemp("lab"))
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture(scope="module")
def trained(lab) -> tuple[str, dict]:
    model_id = lab.train(TINY, name="remote-tiny", queue="gpu")
    return model_id, lab.wait_end(model_id)


# --------------------------------------------------------------------------- a run on a remote worker

def test_a_training_queued_through_the_api_completes_on_a_remote_worker(lab, trained):
    model_id, status = trained
    assert (status["status"], status["epochs_run"]) == ("completed", 3)


def test_its_curves_are_in_the_dashboards_registry(lab, trained):
    history = lab.dashboard.call("GET", f"/api/v1/training/status/{trained[0]}?history=1")[1]["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]


def test_its_checkpoints_are_in_the_dashboards_data_home(lab, trained):
    listed = lab.dashboard.call("GET", f"/api/v1/models/{trained[0]}/checkpoints")[1]["checkpoints"]
    assert sorted((c["name"], c["path"].startswith(str(lab.a))) for c in listed) == [("best.pt", True),
                                                                                      ("last.pt", True)]


@pytest.mark.parametrize("name", ["best.pt", "last.pt"])
def test_each_checkpoint_is_recorded_with_its_own_epochs_metric(lab, trained, name):
    """As a local worker records them: best.pt with the best epoch's score, last.pt with the last epoch's."""
    history = lab.dashboard.call("GET", f"/api/v1/training/status/{trained[0]}?history=1")[1]["history"]
    listed = lab.dashboard.call("GET", f"/api/v1/models/{trained[0]}/checkpoints")[1]["checkpoints"]
    row = next(c for c in listed if c["name"] == name)
    assert row["metric"] == next(h["val_dice"] for h in history if h["epoch"] == row["epoch"])


def test_its_recommended_settings_are_in_the_registry(lab, trained):
    models = lab.dashboard.call("GET", "/api/v1/models")[1]["models"]
    row = next(m for m in models if m["id"] == trained[0])
    assert isinstance(row["recommended_postprocess"], dict) and "threshold" in row["recommended_postprocess"]


def test_the_uploaded_checkpoint_predicts(lab, trained):
    from engine.inference.predict import load_model, predict

    loaded = load_model(lab.a / "models" / trained[0] / "checkpoints" / "best.pt")
    image = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    prob = predict(loaded, image)
    assert prob.shape == (64, 64) and float(prob.min()) >= 0.0 and float(prob.max()) <= 1.0


def test_the_worker_trained_on_its_own_copy_of_the_data_set(lab, trained):
    cached = list((lab.w2.home / "cache" / "datasets").iterdir())
    assert [sorted(p.name for p in c.iterdir()) for c in cached] == [["fov", "images", "masks"]]


def test_workers_are_listed_with_host_device_and_queues(lab, trained):
    workers = {w["pid"]: w for w in lab.dashboard.call("GET", "/api/v1/workers")[1]["workers"] if w["alive"]}
    assert [(workers[w.pid]["host"], workers[w.pid]["device"].startswith("cpu: "), workers[w.pid]["queues"])
            for w in (lab.w1, lab.w2)] == [(HOST, True, ["training", "inference", "cpu"]), (HOST, True, ["training", "gpu"])]


# --------------------------------------------------------------------------- what a person sees

@pytest.mark.browser
def test_the_overview_in_a_browser_lists_both_workers(lab, trained):
    import os
    from pathlib import Path

    from tests.browser_helpers import chromium_path, launch, wait_idle

    if chromium_path() is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(lab.dashboard.url)
            page.get_by_text("2 workers are running").wait_for(timeout=60_000)
            wait_idle(page)
            table = page.locator("[data-testid='stTable']").first
            table.wait_for(timeout=30_000)
            rows = sorted(r for r in table.locator("tbody tr").all_inner_texts() if "running" in r.split())
            if os.environ.get("ML_MANAGER_SCREENSHOTS"):  # the whole page drawn, not its placeholders
                page.get_by_text("Batch inference results", exact=True).wait_for(timeout=30_000)
                wait_idle(page)
                page.wait_for_timeout(2000)
                page.screenshot(path=str(Path(os.environ["ML_MANAGER_SCREENSHOTS"]) / "overview_workers.png"))
        finally:
            browser.close()
    assert [(r.split()[0], "training, inference, cpu" in r or "training, gpu" in r) for r in rows] == [
        (HOST, True), (HOST, True)]


def test_epoch_checkpoints_of_a_remote_run_reach_the_dashboard(lab):
    model_id = lab.train({**TINY, "epochs": 4, "checkpoint_every": 2, "calibrate_postprocess": False}, queue="gpu")
    status = lab.wait_end(model_id)
    listed = lab.dashboard.call("GET", f"/api/v1/models/{model_id}/checkpoints")[1]["checkpoints"]
    assert (status["status"], sorted((c["name"], c["path"].startswith(str(lab.a))) for c in listed)) == (
        "completed", [("best.pt", True), ("epoch_002.pt", True), ("epoch_004.pt", True), ("last.pt", True)])


# --------------------------------------------------------------------------- queues

def test_a_job_on_the_gpu_queue_runs_on_the_worker_of_that_queue(lab):
    model_id = lab.train({**TINY, "epochs": 1, "calibrate_postprocess": False}, queue="gpu")
    status = lab.wait_end(model_id)
    assert (status["status"], lab.w2.runs(status["worker"])) == ("completed", True)


def test_an_unknown_queue_is_refused_with_a_sentence(lab):
    status, body = lab.dashboard.call("POST", "/api/v1/training/start", {
        "name": "x", "dataset": "datasets/synth", "training_config": TINY, "plan": False, "queue": "nowhere"})
    assert (status, body["error"].startswith("There is no queue 'nowhere'")) == (400, True)


# --------------------------------------------------------------------------- stop, resume elsewhere, a second run

def test_stop_ends_a_remote_run_within_two_seconds_and_another_worker_continues_it(lab):
    model_id = lab.train(LONG, queue="gpu")
    lab.wait_epochs(model_id, 1)
    asked = time.monotonic()
    assert lab.dashboard.call("POST", "/api/v1/training/stop", {"model_id": model_id})[1]["outcome"] == "stopping"
    stopped = lab.wait_end(model_id, 10)
    took = time.monotonic() - asked
    done = stopped["epochs_run"]
    status, _ = lab.dashboard.call("POST", "/api/v1/training/start", {
        "model_id": model_id, "resume": True, "queue": "cpu", "training_config": {**LONG, "epochs": done + 1}})
    resumed = lab.wait_end(model_id)
    history = lab.dashboard.call("GET", f"/api/v1/training/status/{model_id}?history=1")[1]["history"]
    assert (stopped["status"], took < 2.0, status, resumed["status"], lab.w1.runs(resumed["worker"]),
            resumed["epochs_run"], [h["epoch"] for h in history]) == (
        "completed", True, 202, "completed", True, done + 1, list(range(1, done + 2)))


def test_a_second_run_on_the_same_data_set_downloads_nothing(lab, trained):
    cache = lab.w2.home / "cache" / "datasets"
    before = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    status = lab.wait_end(lab.train({**TINY, "epochs": 1, "calibrate_postprocess": False}, queue="gpu"))
    after = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    assert (status["status"], lab.w2.runs(status["worker"]), after) == ("completed", True, before)


def test_a_worker_on_the_dashboards_machine_writes_the_registry_itself(lab):
    """What `make run` starts with the Redis queue: `python -m engine worker` without --server, on data home A."""
    import os
    import subprocess
    import sys

    from tests.remote_helpers import ROOT

    env = {**os.environ, "ML_MANAGER_HOME": str(lab.a), "ML_MANAGER_QUEUE": lab.redis.url, "OMP_NUM_THREADS": "1",
           "ML_MANAGER_QUEUES": "gpu,cpu,spare,local"}
    with open(lab.a / "logs" / "local-worker.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "engine", "worker", "--queues", "local"], cwd=ROOT, env=env,
                                stdout=log, stderr=log)
    try:
        status = lab.wait_end(lab.train({**TINY, "epochs": 1, "calibrate_postprocess": False}, queue="local"))
        workers = {w["pid"]: w for w in lab.dashboard.call("GET", "/api/v1/workers")[1]["workers"]}
    finally:
        proc.send_signal(2)
        proc.wait(30)
    assert (status["status"], status["worker"].split(":")[1], workers[proc.pid]["kind"],
            workers[proc.pid]["queues"]) == ("completed", str(proc.pid), "local", ["local"])


# --------------------------------------------------------------------------- batch inference

def _many_images(lab, n: int) -> str:
    folder = lab.a / "datasets" / f"many{n}"
    if not folder.exists():
        folder.mkdir()
        source = sorted((lab.a / "datasets" / "synth" / "images").iterdir())
        for i in range(n):
            shutil.copy(source[i % len(source)], folder / f"img_{i:03d}{source[0].suffix}")
    return f"datasets/many{n}"


def test_a_batch_job_runs_end_to_end_on_a_remote_worker(lab, trained):
    status, body = lab.dashboard.call("POST", "/api/v1/inference/start", {
        "model_id": trained[0], "input": "datasets/synth/images", "postprocess": "recommended"})
    assert status == 202, body
    job = wait_for(lambda: (j := lab.dashboard.job(body["job_id"]))["status"] not in ("queued", "running") and j,
                   60, 0.1, "the batch job")
    out = lab.a / "inference" / body["job_id"]
    assert (job["status"], lab.w1.runs(job["worker"]), job["n_done"], len(list((out / "masks").glob("*.png"))),
            (out / "results.zip").is_file(), (out / "stats.csv").read_text().count("\n")) == (
        "completed", True, 4, 4, True, 5)


def test_a_batch_job_cancelled_on_a_remote_worker_stops_and_keeps_its_results(lab, trained):
    folder = _many_images(lab, 150)
    body = lab.dashboard.call("POST", "/api/v1/inference/start", {"model_id": trained[0], "input": folder})[1]
    wait_for(lambda: (lab.dashboard.job(body["job_id"])["n_done"] or 0) >= 2, 60, 0.05, "the job to start")
    assert lab.dashboard.call("POST", "/api/v1/inference/cancel", {"job_id": body["job_id"]})[1]["outcome"] == \
        "cancelling"
    job = wait_for(lambda: (j := lab.dashboard.job(body["job_id"]))["finished_at"] and j, 30, 0.1, "the job to stop")
    assert (job["status"], job["n_done"] < 150, job["results_zip"] is not None) == ("cancelled", True, True)


# --------------------------------------------------------------------------- refusals

@pytest.fixture
def held_run(lab):
    """A run on the queue nobody serves, claimed by this test as worker 'testhost:1:abc'."""
    model_id = lab.train(LONG, queue="spare", name="held")
    answer = lab.dashboard.call("POST", f"/api/v1/workers/trainings/{model_id}/claim",
                                {"worker_id": "testhost:1:abc"})[1]
    assert answer["claimed"] is True, answer
    yield model_id
    lab.dashboard.call("POST", f"/api/v1/workers/trainings/{model_id}/finish",
                       {"worker_id": "testhost:1:abc", "error": "test over"})


def _upload(lab, model_id: str, data: bytes, worker: str = "testhost:1:abc") -> tuple[int, dict]:
    return lab.dashboard.call("PUT", f"/api/v1/workers/trainings/{model_id}/checkpoints/best.pt?worker_id={worker}",
                              raw=data, content_type="application/octet-stream")


class Payload:  # a pickle that carries a class: weights_only refuses it
    pass


def _pickled() -> bytes:
    buf = io.BytesIO()
    torch.save({"format_version": 1, "payload": Payload()}, buf)
    return buf.getvalue()


def _real_checkpoint(lab, trained) -> bytes:
    return (lab.a / "models" / trained[0] / "checkpoints" / "best.pt").read_bytes()


@pytest.mark.parametrize("case, status, words", [
    ("truncated", 400, "not a readable checkpoint"),
    ("pickled", 400, "objects other than weights"),
    ("too big", 413, "at most"),
    ("another worker", 409, "not by this worker"),
])
def test_a_bad_checkpoint_upload_is_refused_with_a_sentence_and_nothing_registered(lab, trained, held_run, case,
                                                                                   status, words):
    data = {"truncated": _real_checkpoint(lab, trained)[:5000], "pickled": _pickled(),
            "too big": b"\0" * (3 * 1024 * 1024), "another worker": _real_checkpoint(lab, trained)}[case]
    got = _upload(lab, held_run, data, "otherhost:2:def" if case == "another worker" else "testhost:1:abc")
    listed = lab.dashboard.call("GET", f"/api/v1/models/{held_run}/checkpoints")[1]["checkpoints"]
    assert (got[0], words in got[1]["error"], listed) == (status, True, [])


def test_an_upload_for_another_models_run_is_refused(lab, trained, held_run):
    got = _upload(lab, trained[0], _real_checkpoint(lab, trained))
    assert (got[0], "completed" in got[1]["error"]) == (409, True)


def test_a_good_upload_of_the_holding_worker_is_registered(lab, trained, held_run):
    got = _upload(lab, held_run, _real_checkpoint(lab, trained))
    listed = lab.dashboard.call("GET", f"/api/v1/models/{held_run}/checkpoints")[1]["checkpoints"]
    assert (got[0], [c["name"] for c in listed]) == (200, ["best.pt"])


@pytest.mark.parametrize("path, method", [("/api/v1/workers/beat", "POST"), ("/api/v1/workers", "GET"),
                                          ("/api/v1/workers/trainings/x/checkpoints/best.pt?worker_id=a:1:b", "PUT")])
def test_a_wrong_token_is_refused_with_a_sentence(lab, path, method):
    status, body = lab.dashboard.call(method, path, {"worker_id": "a:1:b"} if method == "POST" else None,
                                      token="wrong-token-0123456789")
    assert (status, body["error"].startswith("The API token is wrong")) == (401, True)


def test_a_worker_with_a_wrong_token_says_so_and_exits(lab):
    import subprocess
    import sys

    from tests.remote_helpers import ROOT

    done = subprocess.run([sys.executable, "-m", "engine", "worker", "--server", lab.dashboard.url, "--token",
                           "wrong-token-0123456789"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr.startswith("error: The API token is wrong")) == (2, True)


@pytest.mark.parametrize("path", ["/api/v1/workers/hello", "/api/v1/workers", "/api/v1/health"])
def test_the_users_token_never_gets_the_redis_password(lab, path):
    status, body = lab.dashboard.call("GET", path)
    assert (status, lab.redis.password in json.dumps(body)) == (200, False)


def test_a_worker_without_the_redis_password_says_so_and_exits(lab):
    import os
    import subprocess
    import sys

    from tests.remote_helpers import ROOT

    env = {k: v for k, v in os.environ.items() if k != "ML_MANAGER_QUEUE"}
    env["ML_MANAGER_HOME"] = str(lab.base / "no-password")
    try:
        done = subprocess.run([sys.executable, "-m", "engine", "worker", "--server", lab.dashboard.url, "--token",
                               lab.dashboard.token, "--queues", "spare"], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=60)
    except subprocess.TimeoutExpired:  # it got the password and took jobs
        done = subprocess.CompletedProcess([], None, "", "")
    assert (done.returncode, done.stderr.startswith("error: The dashboard's Redis queue needs a password")) == (
        2, True)


# --------------------------------------------------------------------------- failures of parts

def test_kill_9_of_a_remote_worker_fails_its_run_with_the_host_and_the_other_takes_the_next(lab):
    first = lab.train(LONG, name="doomed")
    status = lab.wait_epochs(first, 1)
    second = lab.train({**TINY, "epochs": 1, "calibrate_postprocess": False}, name="next")
    victim, survivor = (lab.w1, lab.w2) if lab.w1.runs(status["worker"]) else (lab.w2, lab.w1)
    victim.kill()
    killed = time.monotonic()
    failed = lab.wait_end(first, STALE_S + 20)
    took = time.monotonic() - killed
    after = lab.wait_end(second)
    victim.start()
    assert (failed["status"], failed["error"].startswith(f"the worker on {HOST} stopped (last heartbeat"),
            STALE_S - 1 <= took <= STALE_S + 8, after["status"], survivor.runs(after["worker"])) == (
        "failed", True, True, "completed", True)


def test_a_job_queued_while_redis_restarts_empty_still_runs(lab):
    model_id = lab.train({**TINY, "epochs": 1, "calibrate_postprocess": False}, queue="spare", name="lost")
    lab.redis.restart()  # no persistence: the queue entry is gone
    spare = lab.worker(lab.base / "D", "spare").start()
    try:
        status = lab.wait_end(model_id, 60)
    finally:
        spare.stop()
    assert (status["status"], spare.runs(status["worker"])) == ("completed", True)



# --------------------------------------------------------------------------- a plan made on the worker

def _registry_row(lab, model_id: str) -> dict:
    import sqlite_utils

    return sqlite_utils.Database(lab.a / "ml_manager.db")["models"].get(model_id)


def _plan_event(config: dict) -> dict:
    from engine.training.planner import Plan

    plan = Plan(32, 4, "fp32", 0.01, 32 * 32 * 4 / 0.01, device="cuda", changed={"batch_size": 4}).to_dict()
    return {"worker_id": "testhost:1:abc", "events": [{"type": "plan", "config": config, "plan": plan}]}


def test_a_plan_made_on_the_workers_device_replaces_the_registrys(lab, held_run):
    config = {**json.loads(_registry_row(lab, held_run)["config"]), "batch_size": 4}
    status, _ = lab.dashboard.call("POST", f"/api/v1/workers/trainings/{held_run}/events", _plan_event(config))
    row = _registry_row(lab, held_run)
    assert status == 200
    assert json.loads(row["config"])["batch_size"] == 4
    assert json.loads(row["plan"])["device"] == "cuda"


def test_a_workers_plan_that_changes_a_users_field_is_refused(lab, held_run):
    before = _registry_row(lab, held_run)["config"]
    config = {**json.loads(before), "learning_rate": 0.5}
    status, body = lab.dashboard.call("POST", f"/api/v1/workers/trainings/{held_run}/events", _plan_event(config))
    assert status == 400
    assert "learning_rate" in body["error"]
    assert _registry_row(lab, held_run)["config"] == before


# --------------------------------------------------------------------------- several data sets

def test_a_run_on_two_data_sets_trains_on_both_each_downloaded_once(lab):
    """The worker fetches each set once (by content hash), trains on both, and its checkpoint names them
    as the dashboard does; a second run on them downloads nothing."""
    make_synthetic_dataset(lab.a / "datasets" / "synth3", n_images=3, size=80, seed=3)
    body = {"name": "two-sets", "dataset": ["datasets/synth", "datasets/synth3"], "plan": False,
            "training_config": {**TINY, "epochs": 1, "calibrate_postprocess": False}, "queue": "cpu"}
    ends, cached = [], []
    for _ in range(2):
        answer = lab.dashboard.call("POST", "/api/v1/training/start", body)[1]
        ends.append(lab.wait_end(answer["model_id"])["status"])
        cached.append({p.name: p.stat().st_mtime_ns for p in (lab.w1.home / "cache" / "datasets").iterdir()})
    best = torch.load(lab.a / "models" / answer["model_id"] / "checkpoints" / "best.pt", weights_only=True)
    counts = {len(list((lab.w1.home / "cache" / "datasets" / name / "images").iterdir())) for name in cached[1]}
    assert (ends, [s["name"] for s in best["scale"]["datasets"]], cached[0] == cached[1], counts) == (
        ["completed", "completed"], ["synth", "synth3"], True, {3, 4})
