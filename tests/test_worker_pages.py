"""The workers on the Overview and the queue picker on the Train page, through AppTest on a real data home."""
from __future__ import annotations

import pytest

from storage import db as store
from tests.pages_helpers import open_page


def _beat(worker_id: str, **info) -> None:
    host, pid, _ = worker_id.split(":")
    store.beat_worker(worker_id, host=host, pid=int(pid), **info)


@pytest.fixture
def two_workers(home):
    _beat("gpu-server:101:aa", device="cuda: NVIDIA H100 80GB HBM3 (bf16)", queues="training,gpu",
          job="training 20260101-000000-abcdef", kind="remote")
    _beat("lab-pc:202:bb", device="cpu: AMD EPYC (2 cores)", queues="training,inference", kind="local")
    return home


def _workers_table(at) -> dict:
    table = at.table[0].value
    return {"machine": list(table.index), **{c: list(table[c]) for c in table.columns}}


def test_the_overview_lists_every_worker_with_its_machine_device_and_job(two_workers):
    table = _workers_table(open_page())
    assert sorted(zip(table["machine"], table["state"], table["device"], table["working on"])) == [
        ("gpu-server", "running", "cuda: NVIDIA H100 80GB HBM3 (bf16)", "training 20260101-000000-abcdef"),
        ("lab-pc", "running", "cpu: AMD EPYC (2 cores)", "idle")]


def test_a_worker_that_stopped_beating_is_shown_as_gone(two_workers):
    from datetime import datetime, timedelta, timezone

    store.beat_worker("old-box:303:cc", host="old-box", pid=303)
    ten_minutes_ago = (datetime.now(timezone.utc) - timedelta(minutes=10)).isoformat(timespec="milliseconds")
    conn = store.connect()
    try:
        with conn.atomic():
            conn.execute("UPDATE workers SET beat_at = ? WHERE id = 'old-box:303:cc'", [ten_minutes_ago])
    finally:
        conn.close()
    table = _workers_table(open_page())
    assert dict(zip(table["machine"], table["state"]))["old-box"] == "gone"


def _silent(worker_id: str, minutes: float) -> None:
    from datetime import datetime, timedelta, timezone

    then = (datetime.now(timezone.utc) - timedelta(minutes=minutes)).isoformat(timespec="milliseconds")
    conn = store.connect()
    try:
        with conn.atomic():
            conn.execute("UPDATE workers SET beat_at = ? WHERE id = ?", [then, worker_id])
    finally:
        conn.close()


def test_workers_on_one_host_are_told_apart_and_gone_ones_can_be_forgotten(home):
    for pid in (11, 12, 13):
        _beat(f"vm:{pid}:x", queues="training")
    _silent("vm:11:x", 10)
    _silent("vm:12:x", 20)
    at = open_page()
    before = _workers_table(at)
    at.button(key="overview_forget_workers").click().run()
    after = _workers_table(at)
    assert (sorted(zip(before["process"], before["state"])), after["process"]) == (
        [("11", "gone"), ("12", "gone"), ("13", "running")], ["13"])


@pytest.mark.parametrize("status, shown", [
    ("running", "training {id}"),
    ("failed", "nothing now (its training {id} failed)"),   # the worker was killed; its run failed since
])
def test_what_a_worker_works_on_follows_its_runs_status(home, status, shown):
    model_id = store.create_model("run", {"epochs": 20}, "synthetic")
    store.update_model(model_id, status=status, heartbeat_at=store.utc_now())
    _beat("vm:21:x", job=f"training {model_id}")
    assert _workers_table(open_page())["working on"] == [shown.format(id=model_id)]


def test_a_run_without_a_finished_epoch_reads_the_same_on_the_overview_and_models(home):
    model_id = store.create_model("fresh", {"epochs": 20}, "synthetic")
    store.update_model(model_id, status="running", current_epoch=1, total_epochs=20, heartbeat_at=store.utc_now())
    _beat("vm:31:x", job=f"training {model_id}")
    overview = open_page().dataframe[0].value
    models = open_page("pages/models.py").dataframe[0].value
    assert (list(overview["epochs"]), list(overview["best epoch"]), list(overview["best val Dice"]),
            list(models["epochs"])) == (["0 / 20"], ["—"], ["—"], [0])


def test_the_train_page_offers_only_queues_with_a_live_worker(two_workers, monkeypatch):
    monkeypatch.setenv("ML_MANAGER_QUEUE", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("ML_MANAGER_QUEUES", "gpu,spare")
    at = open_page("pages/train.py")
    assert at.selectbox(key="train_queue").options == ["training (gpu-server, lab-pc)", "gpu (gpu-server)"]


def test_the_train_page_says_when_no_worker_takes_training_jobs(home, monkeypatch):
    monkeypatch.setenv("ML_MANAGER_QUEUE", "redis://127.0.0.1:1/0")
    at = open_page("pages/train.py")
    assert any("No worker takes training jobs" in w.value for w in at.warning)


def test_the_train_page_has_no_queue_picker_on_the_queue_file(two_workers, monkeypatch):
    monkeypatch.delenv("ML_MANAGER_QUEUE", raising=False)
    at = open_page("pages/train.py")
    assert [s.key for s in at.selectbox if s.key == "train_queue"] == []
