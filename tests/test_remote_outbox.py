"""A remote run carries on across a dashboard restart: against a real Redis server, the dashboard started as
`make run` starts it and a real worker `python -m engine worker --server URL --token TOKEN`.

The dashboard is stopped while a time-budgeted run trains and started again once the run has ended on the
worker, so every epoch, checkpoint and the outcome reach it only from the worker's outbox; once more with
the worker restarted in between.
"""
from __future__ import annotations

import json

import pytest

from engine.training.synthetic import make_synthetic_dataset
from tests.remote_helpers import Dashboard, RedisServer, RemoteWorker, wait_for

pytestmark = pytest.mark.slow

# Shorter than the dashboard's time away (most of the 36 s budget), so only the worker's news keeps the run alive;
# long enough for a restarted worker to import torch and beat on a machine busy with the rest of the suite.
STALE_S = 15
BUDGETED = {"base_channels": 4, "depth": 2, "patch_size": 32, "batch_size": 2, "steps_per_epoch": 3,
            "epochs": 10_000, "max_minutes": 0.6, "num_threads": 1, "val_fraction": 0.25,
            "early_stopping_patience": 0, "calibrate_postprocess": False}
ENDED = ("completed", "failed", "stopped")


class Lab:
    def __init__(self, base):
        self.base, self.a = base, base / "A"
        make_synthetic_dataset(self.a / "datasets" / "synth", n_images=4, size=64, seed=1)
        self.redis = RedisServer(base / "redis", password="s3cret").start()
        self.dashboard = Dashboard(self.a, {"ML_MANAGER_QUEUE": self.redis.url,
                                            "ML_MANAGER_STALE_AFTER_S": str(STALE_S)})
        self.worker = RemoteWorker(base / "B", self.dashboard, "training",
                                   env={"ML_MANAGER_QUEUE": self.redis.url}).start()

    def close(self) -> None:
        self.worker.stop()
        self.dashboard.stop()
        self.redis.stop()

    def kept_finish(self, model_id: str) -> bool:
        """Whether the run's outcome waits in the worker's outbox."""
        for report in (self.worker.home / "outbox").glob("*.json"):
            try:
                if json.loads(report.read_text())["path"].endswith(f"/{model_id}/finish"):
                    return True
            except FileNotFoundError:  # an out-of-date checkpoint's report, just removed
                continue
        return False

    def run_across_a_restart(self, restart_worker: bool) -> tuple[str, int, dict]:
        """A budgeted run whose epochs after the first, checkpoints and end happen while the dashboard is
        away; returns (model id, epochs recorded before, status at the end)."""
        status, answer = self.dashboard.call("POST", "/api/v1/training/start", {
            "name": "outbox", "dataset": "datasets/synth", "training_config": BUDGETED, "plan": False})
        assert status == 202, answer
        model_id = answer["model_id"]
        before = wait_for(lambda: self.dashboard.status(model_id)["epochs_run"], 120, 0.1, "the first epoch")
        self.dashboard.stop()
        wait_for(lambda: self.kept_finish(model_id), 120, 0.2, "the run's end kept in the outbox")
        if restart_worker:
            self.worker.stop()
            self.worker.start(wait=False)  # it waits for the dashboard
        self.dashboard.start()
        end = wait_for(lambda: (s := self.dashboard.status(model_id))["status"] in ENDED and s, 120, 0.2,
                       "the run to end on the dashboard")
        return model_id, before, end


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lab = Lab(tmp_path_factory.mktemp("outbox"))
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture(scope="module", params=["dashboard restarted", "dashboard and worker restarted"])
def restarted(lab, request):
    return (lab, *lab.run_across_a_restart(restart_worker=request.param != "dashboard restarted"))


def test_the_run_completes(restarted):
    lab, model_id, before, end = restarted
    assert (end["status"], end["error"], end["epochs_run"] > before) == ("completed", None, True)


def test_every_epoch_is_recorded(restarted):
    lab, model_id, before, end = restarted
    history = lab.dashboard.call("GET", f"/api/v1/training/status/{model_id}?history=1")[1]["history"]
    assert [h["epoch"] for h in history] == list(range(1, end["epochs_run"] + 1))


def test_the_final_checkpoints_are_on_the_dashboard(restarted):
    lab, model_id, before, end = restarted
    listed = lab.dashboard.call("GET", f"/api/v1/models/{model_id}/checkpoints")[1]["checkpoints"]
    last = next((c for c in listed if c["name"] == "last.pt"), {})
    assert (sorted(c["name"] for c in listed), last.get("epoch")) == (["best.pt", "last.pt"], end["epochs_run"])


def test_the_outbox_is_empty_afterwards(restarted):
    lab = restarted[0]
    wait_for(lambda: not list((lab.worker.home / "outbox").glob("*")), 30, 0.2, "the outbox to empty")
    assert list((lab.worker.home / "outbox").iterdir()) == []


def test_a_report_the_dashboard_could_not_take_is_one_line_in_the_log(restarted):
    text = restarted[0].worker.log.read_text()
    assert ("kept on this worker's disk" in text, "Traceback" in text) == (True, False)
