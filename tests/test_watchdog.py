"""Stale-run recovery is one function (engine.jobs.liveness.recover_stale_runs): on the queue file the worker
and the dashboard judge stale runs, on the Redis queue only the dashboard's watchdog (engine.jobs.watchdog)
does, and a lost queue entry goes back to the queue its kind goes to by default."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from engine.jobs import queue
from engine.jobs.liveness import recover_stale_runs
from engine.jobs.watchdog import DEFAULT_QUEUES
from storage import db as store

REDIS = "redis://127.0.0.1:1/0"  # never reached: the side that does not judge returns before asking


@pytest.mark.parametrize("queue_setting, watchdog, judges", [
    ("", False, True),      # queue file: the worker's start, its minute check, recover_if_no_worker
    ("", True, False),      # queue file: there is no watchdog to judge
    (REDIS, False, False),  # Redis: a worker's own check would judge heartbeats the dashboard has not heard
    (REDIS, True, True),    # Redis: the dashboard's watchdog judges
])
def test_one_side_judges_stale_runs(home, monkeypatch, queue_setting, watchdog, judges):
    monkeypatch.setenv("ML_MANAGER_QUEUE", queue_setting)
    model_id = store.create_model("stale?", {"epochs": 1}, "/nowhere")
    old = (datetime.now(timezone.utc) - timedelta(seconds=600)).isoformat(timespec="milliseconds")
    store.update_model(model_id, status="running", heartbeat_at=old, worker="elsewhere:1:abc")
    assert (recover_stale_runs(watchdog=watchdog) == [model_id]) is judges


@pytest.mark.parametrize("kind, name", [("model", queue.TRAINING), ("job", queue.INFERENCE)])
def test_a_lost_entry_goes_back_to_its_kinds_default_queue(kind, name):
    assert DEFAULT_QUEUES[kind] == name
