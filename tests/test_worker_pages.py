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
