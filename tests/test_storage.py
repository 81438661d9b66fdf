"""The run registry on a real SQLite file: schema, queries, state changes, concurrent readers."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from engine import housekeeping
from storage import db as store
from storage import paths
from storage.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
CONFIG = {"epochs": 5, "early_stopping_patience": 3, "early_stopping_monitor": "val_dice"}


@pytest.fixture
def database(home):
    """A migrated registry file in the temporary data home."""
    conn = store.connect()
    yield conn
    conn.close()


@pytest.fixture
def model_id(database):
    return store.create_model("unet-a", CONFIG, "/data/set", db=database)


def _touch(path: Path, size: int = 10) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    return path


# --------------------------------------------------------------------------- connection and schema

def test_connection_is_in_wal_mode(database):
    assert database.journal_mode == "wal"


def test_connection_waits_30_s_for_a_lock(database):
    assert database.execute("PRAGMA busy_timeout").fetchone()[0] == 30000


def test_migrations_are_recorded_once(home):
    store.connect().close()
    store.connect().close()
    conn = store.connect()
    names = [r["name"] for r in conn["_sqlite_migrations"].rows]
    conn.close()
    assert names == ["0001_initial", "0002_submission_key", "0003_inference_scale", "0004_plan",
                     "0005_trained_seconds", "0006_queues_and_workers", "0007_settings_from", "0008_datasets"]


def test_two_processes_creating_the_file_at_once_both_succeed(home):
    code = "from storage import db; db.connect().close(); print('ok')"
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(3)]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [out.strip() for out, _ in outputs] == ["ok"] * 3, [err for _, err in outputs]


def test_storage_never_imports_torch_or_streamlit():
    code = "import sys, storage.db; print(sorted(m for m in ('torch', 'streamlit') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


# --------------------------------------------------------------------------- models

@pytest.mark.parametrize("field, expected", [
    ("name", "unet-a"),
    ("status", "queued"),
    ("total_epochs", 5),
    ("patience", 3),
])
def test_create_and_get_model(database, model_id, field, expected):
    assert store.get_model(model_id, db=database)[field] == expected


def test_a_created_model_keeps_its_config_as_json(database, model_id):
    assert json.loads(store.get_model(model_id, db=database)["config"]) == CONFIG


def test_timestamps_are_iso_utc(database, model_id):
    assert store.parse_time(store.get_model(model_id, db=database)["created_at"]).utcoffset().total_seconds() == 0


def test_list_models_newest_first_and_by_status(database):
    first = store.create_model("a", CONFIG, "d", db=database)
    time.sleep(0.01)
    second = store.create_model("b", CONFIG, "d", db=database)
    store.update_model(first, status="completed", db=database)
    assert [m["id"] for m in store.list_models(db=database)] == [second, first]
    assert [m["id"] for m in store.list_models(status="completed", db=database)] == [first]


@pytest.mark.parametrize("call", [
    lambda d: store.get_model("nope", db=d),
    lambda d: store.update_model("nope", status="failed", db=d),
    lambda d: store.forget_model("nope", db=d),
    lambda d: store.log_epoch("nope", 1, 0.1, 0.1, 0.5, 1e-3, 1.0, db=d),
    lambda d: store.model_metrics("nope", db=d),
    lambda d: store.add_checkpoint("nope", 1, "/tmp/x.pt", "best", 0.5, db=d),
    lambda d: store.model_checkpoints("nope", db=d),
    lambda d: store.request_stop("nope", db=d),
    lambda d: store.save_preset("nope", "p", {}, db=d),
], ids=["get", "update", "delete", "log_epoch", "metrics", "add_checkpoint", "checkpoints", "stop", "preset"])
def test_unknown_model_id_is_a_clear_value_error(database, call):
    with pytest.raises(store.UnknownModelError, match="no model with id 'nope'"):
        call(database)


@pytest.mark.parametrize("fields, message", [
    ({"status": "paused"}, "not one of queued"),
    ({"stop_reason": "bored"}, "not one of max_epochs"),
    ({"colour": "red"}, "no field"),
])
def test_bad_model_update_changes_nothing(database, model_id, fields, message):
    before = store.get_model(model_id, db=database)
    with pytest.raises(UserError, match=message):
        store.update_model(model_id, db=database, **fields)
    assert store.get_model(model_id, db=database) == before


@pytest.mark.parametrize("name, config", [("", CONFIG), ("  ", CONFIG), ("ok", "epochs=3")])
def test_create_model_refuses_bad_input(database, name, config):
    with pytest.raises(UserError):
        store.create_model(name, config, "d", db=database)
    assert store.list_models(db=database) == []


def test_update_model_encodes_dicts_as_json(database, model_id):
    store.update_model(model_id, recommended_postprocess={"threshold": 0.4}, db=database)
    assert json.loads(store.get_model(model_id, db=database)["recommended_postprocess"]) == {"threshold": 0.4}


@pytest.mark.parametrize("status, only_if, changed", [
    ("running", ("running", "stopping"), True),
    ("completed", ("running", "stopping"), False),
])
def test_update_model_compare_and_set(database, model_id, status, only_if, changed):
    store.update_model(model_id, status=status, db=database)
    result = store.update_model(model_id, only_if_status=only_if, status="failed", db=database)
    assert result is changed
    assert store.get_model(model_id, db=database)["status"] == ("failed" if changed else status)


@pytest.mark.parametrize("status", ["queued", "running", "stopping"])
def test_delete_refuses_active_runs(database, model_id, status):
    store.update_model(model_id, status=status, db=database)
    with pytest.raises(UserError, match=f"is {status}; stop it"):
        store.forget_model(model_id, db=database)
    assert store.get_model(model_id, db=database)["status"] == status


def test_delete_removes_rows_and_folder(database, model_id):
    ckpt = _touch(paths.checkpoints_dir(model_id) / "best.pt")
    store.add_checkpoint(model_id, 1, ckpt, "best", 0.5, db=database)
    store.log_epoch(model_id, 1, 0.3, 0.3, 0.5, 1e-3, 1.0, db=database)
    store.update_model(model_id, status="completed", db=database)
    housekeeping.delete_model(model_id)
    left = [database.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("models", "epochs", "checkpoints")]
    assert left == [0, 0, 0]
    assert not (paths.data_home() / "models" / model_id).exists()


# --------------------------------------------------------------------------- state changes used by the worker

def test_claim_serves_runs_first_come_first_served(database):
    ids = []
    for name in ("a", "b", "c"):
        ids.append(store.create_model(name, CONFIG, "d", db=database))
        store.update_model(ids[-1], task_id=f"t-{name}", heartbeat_at=store.utc_now(), db=database)  # as enqueued
        time.sleep(0.005)
    claims = [store.claim_training_slot(i, 1, 30, "w", db=database) for i in reversed(ids)]  # c, b wait; a runs
    assert claims == [False, False, True]
    store.update_model(ids[0], status="completed", db=database)
    assert [store.claim_training_slot(i, 1, 30, "w", db=database) for i in (ids[2], ids[1])] == [False, True]


def test_claim_allows_several_when_configured(database):
    ids = [store.create_model(n, CONFIG, "d", db=database) for n in "ab"]
    assert [store.claim_training_slot(i, 2, 30, "w", db=database) for i in ids] == [True, True]


def test_a_waiter_that_stopped_polling_does_not_block_the_queue(database):
    gone = store.create_model("gone", CONFIG, "d", db=database)
    store.update_model(gone, task_id="t1", heartbeat_at="2000-01-01T00:00:00.000+00:00", db=database)
    time.sleep(0.005)
    later = store.create_model("later", CONFIG, "d", db=database)
    assert store.claim_training_slot(later, 1, 30, "w", db=database) is True


def test_claim_of_a_run_no_longer_queued_returns_none(database, model_id):
    store.update_model(model_id, status="failed", db=database)
    assert store.claim_training_slot(model_id, 1, 30, "w", db=database) is None


@pytest.mark.parametrize("status, outcome, after", [
    ("queued", "cancelled", "failed"),
    ("running", "stopping", "stopping"),
    ("stopping", "stopping", "stopping"),
])
def test_request_stop(database, model_id, status, outcome, after):
    store.update_model(model_id, status=status, db=database)
    assert store.request_stop(model_id, db=database) == outcome
    assert store.get_model(model_id, db=database)["status"] == after


def test_stop_before_start_is_recorded_as_user_stop(database, model_id):
    store.request_stop(model_id, db=database)
    row = store.get_model(model_id, db=database)
    assert row["stop_reason"] == "user_stop"
    assert row["error"] == "stopped by the user before it started"


@pytest.mark.parametrize("status", ["completed", "failed"])
def test_stop_for_a_finished_run_is_refused_and_changes_nothing(database, model_id, status):
    store.update_model(model_id, status=status, db=database)
    before = store.get_model(model_id, db=database)
    with pytest.raises(UserError, match="already finished"):
        store.request_stop(model_id, db=database)
    assert store.get_model(model_id, db=database) == before


# --------------------------------------------------------------------------- metrics and checkpoints

def test_log_epoch_is_idempotent_per_epoch(database, model_id):
    store.log_epoch(model_id, 1, 0.9, 0.8, 0.1, 1e-3, 2.0, db=database)
    store.log_epoch(model_id, 2, 0.7, 0.6, 0.3, 1e-3, 2.0, db=database)
    store.log_epoch(model_id, 1, 0.5, 0.4, 0.2, 1e-3, 2.0, db=database)
    assert [(m["epoch"], m["train_loss"]) for m in store.model_metrics(model_id, db=database)] == [(1, 0.5), (2, 0.7)]


@pytest.mark.parametrize("epoch", [0, -1, 1.5, "2"])
def test_log_epoch_refuses_bad_epoch(database, model_id, epoch):
    with pytest.raises(UserError, match="epoch must be"):
        store.log_epoch(model_id, epoch, 0.1, 0.1, 0.1, 0.1, 0.1, db=database)


def test_add_checkpoint_upserts_per_path(database, model_id):
    ckpt = _touch(paths.checkpoints_dir(model_id) / "best.pt", 5)
    store.add_checkpoint(model_id, 1, ckpt, "best", 0.4, db=database)
    _touch(ckpt, 7)
    store.add_checkpoint(model_id, 3, ckpt, "best", 0.6, db=database)
    assert [(c["epoch"], c["metric"], c["size_bytes"]) for c in store.model_checkpoints(model_id, db=database)] == [
        (3, 0.6, 7)]


def test_add_checkpoint_refuses_unknown_kind(database, model_id):
    with pytest.raises(UserError, match="kind 'final'"):
        store.add_checkpoint(model_id, 1, "/tmp/x.pt", "final", 0.5, db=database)


def test_model_checkpoints_reconciles_rows_with_its_own_folder(database, model_id):
    folder = paths.checkpoints_dir(model_id)
    other = store.create_model("other", CONFIG, "d", db=database)
    for name, kind, epoch in (("best.pt", "best", 4), ("last.pt", "last", 6), ("epoch_002.pt", "epoch", 2)):
        store.add_checkpoint(model_id, epoch, _touch(folder / name), kind, 0.5, db=database)
    (folder / "epoch_002.pt").unlink()                      # row left, file gone: not listed
    _touch(folder / "epoch_005.pt")                         # file without a row: listed from its name
    _touch(folder / ".best.pt.123.tmp")                     # an atomic write in progress: ignored
    store.add_checkpoint(other, 1, _touch(paths.checkpoints_dir(other) / "best.pt"), "best", 0.9, db=database)
    listed = [(c["name"], c["kind"], c["epoch"]) for c in store.model_checkpoints(model_id, db=database)]
    assert listed == [("best.pt", "best", 4), ("last.pt", "last", 6), ("epoch_005.pt", "epoch", 5)]


def test_all_checkpoints_lists_completed_models_only(database):
    done = store.create_model("done", CONFIG, "d", db=database)
    busy = store.create_model("busy", CONFIG, "d", db=database)
    for mid, status in ((done, "completed"), (busy, "running")):
        store.add_checkpoint(mid, 1, _touch(paths.checkpoints_dir(mid) / "best.pt"), "best", 0.7, db=database)
        store.update_model(mid, status=status, best_val_dice=0.7, db=database)
    assert [(c["model_id"], c["model_name"], c["kind"]) for c in store.all_checkpoints(db=database)] == [
        (done, "done", "best")]


# --------------------------------------------------------------------------- inference jobs, presets, worker

def test_inference_job_lifecycle(database, model_id):
    job = store.create_inference_job("/x/best.pt", "/in", {"threshold": 0.5}, model_id=model_id, db=database)
    store.update_inference_job(job, status="running", n_total=4, n_done=2, progress=0.5, db=database)
    row = store.get_inference_job(job, db=database)
    assert row["status"] == "running"
    assert row["progress"] == 0.5
    assert json.loads(row["postprocess"]) == {"threshold": 0.5}
    assert row["output_dir"] == str(paths.data_home() / "inference" / job)
    assert [j["id"] for j in store.list_inference_jobs(model_id=model_id, db=database)] == [job]
    assert store.list_inference_jobs(status="completed", db=database) == []


@pytest.mark.parametrize("call, error", [
    (lambda d: store.get_inference_job("nope", db=d), store.UnknownJobError),
    (lambda d: store.update_inference_job("nope", status="running", db=d), store.UnknownJobError),
    (lambda d: store.create_inference_job("/x.pt", "/in", {}, model_id="nope", db=d), store.UnknownModelError),
])
def test_bad_inference_job_calls(database, call, error):
    with pytest.raises(error):
        call(database)


def test_presets_are_saved_per_model_and_overwritten_by_name(database, model_id):
    store.save_preset(model_id, "thin", {"threshold": 0.4}, db=database)
    store.save_preset(model_id, "thin", {"threshold": 0.3}, db=database)
    store.save_preset(store.BASELINE, "frangi", {"threshold": 0.2}, db=database)
    assert [(p["name"], p["config"]) for p in store.list_presets(model_id, db=database)] == [
        ("thin", {"threshold": 0.3})]


def test_worker_heartbeat(database):
    before = store.worker_heartbeat(db=database)
    store.beat_worker(db=database)
    assert before is None
    assert store.age_seconds(store.worker_heartbeat(db=database).isoformat()) < 5


def test_functions_open_the_current_home_without_db_argument(home):
    model_id = store.create_model("plain", CONFIG, "d")
    assert store.get_model(model_id)["name"] == "plain"
    assert paths.db_path().exists()


# --------------------------------------------------------------------------- concurrency

WRITER = """
import sys
from storage import db
model_id = sys.argv[1]
for i in range(300):
    db.update_model(model_id, batch=i, heartbeat_at=db.utc_now())
    db.log_epoch(model_id, i % 20 + 1, 0.1, 0.1, 0.5, 1e-3, 1.0)
print('done')
"""


def test_reader_never_sees_database_locked_while_another_process_writes(home, model_id):
    writer = subprocess.Popen([sys.executable, "-c", WRITER, model_id], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    errors, reads = [], 0

    def read_in_thread():
        nonlocal reads
        while writer.poll() is None:
            try:
                store.get_model(model_id)
                store.model_metrics(model_id)
                reads += 1
            except Exception as exc:  # noqa: BLE001 - the test counts every kind of failure
                errors.append(repr(exc))

    reader = threading.Thread(target=read_in_thread)
    reader.start()
    out, err = writer.communicate(timeout=120)
    reader.join()
    assert out.strip() == "done", err
    assert errors == []
    assert reads > 0


# --------------------------------------------------------------------------- one submission, one run

def test_a_submission_key_creates_one_run(database):
    first = store.create_model("unet-a", CONFIG, "/data/set", db=database, submission_key="k1")
    with pytest.raises(store.DuplicateSubmissionError) as caught:
        store.create_model("unet-a", CONFIG, "/data/set", db=database, submission_key="k1")
    assert caught.value.model_id == first
    assert len(store.list_models(db=database)) == 1


def test_runs_without_a_key_never_clash(database):
    for _ in range(2):
        store.create_model("unet-a", CONFIG, "/data/set", db=database)
    assert len(store.list_models(db=database)) == 2


def test_two_processes_submitting_one_key_at_once_create_one_run(home):
    """The check and the insert share one write transaction: racing processes cannot both insert."""
    store.connect().close()
    code = ("import sys; from storage import db\n"
            "try: db.create_model('race', {'epochs': 1}, '/d', submission_key='same')\n"
            "except db.DuplicateSubmissionError: pass\n")
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT) for _ in range(4)]
    assert [p.wait(60) for p in procs] + [len(store.list_models())] == [0, 0, 0, 0, 1]


# --------------------------------------------------------------------------- deleting data sets

def _dataset(name: str) -> Path:
    folder = paths.datasets_dir() / name
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "a.png").write_bytes(b"x")
    return folder


def test_delete_dataset_removes_its_folder(database):
    folder = _dataset("spare")
    housekeeping.delete_dataset("spare")
    assert sorted(p.name for p in paths.datasets_dir().iterdir()) == []
    assert not folder.exists()


@pytest.mark.parametrize("status, refused", [("queued", True), ("running", True), ("stopping", True),
                                             ("completed", False), ("failed", False)])
def test_delete_dataset_is_refused_while_a_run_uses_it(database, status, refused):
    folder = _dataset("busy")
    mid = store.create_model("busy-run", CONFIG, str(folder.resolve() / "images"), db=database)
    store.update_model(mid, db=database, status=status)
    try:
        housekeeping.delete_dataset("busy")
    except store.WrongStateError as exc:
        assert "busy-run" in str(exc)
    assert folder.exists() == refused


@pytest.mark.parametrize("name", ["", "missing", "../outside", ".hidden"])
def test_delete_dataset_refuses_what_is_not_a_data_set(database, name):
    paths.datasets_dir().mkdir(parents=True, exist_ok=True)
    with pytest.raises(UserError, match="no data set"):
        housekeeping.delete_dataset(name)
