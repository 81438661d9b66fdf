"""Retention and disk use (engine.housekeeping, `python -m engine prune`, POST /api/v1/prune), stale-run
recovery without a worker, and a training stopped before its first epoch.

Real data homes in tmp_path, real SQLite, a real worker (tests.worker_helpers.Worker) for the trainings, and a
real HTTP server (uvicorn) for the API route. Checkpoint files of the retention tables are plain files: the
registry and the pruning read only names and sizes; the worker tests write real ones.
"""
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
from engine.cli import main as cli_main
from engine.training.synthetic import make_synthetic_dataset
from storage import db as store
from storage import paths
from tests.browser_helpers import free_port
from tests.worker_helpers import Worker, load_checkpoint, status_of, wait_for

TINY = {"base_channels": 4, "depth": 2, "patch_size": 32, "batch_size": 2, "steps_per_epoch": 3, "epochs": 3,
        "num_threads": 1, "val_fraction": 0.25, "early_stopping_patience": 0, "calibrate_postprocess": False}
LONG = {**TINY, "epochs": 10_000}  # runs until stopped


def _model_with_files(names: list[str], status: str = "completed", size: int = 1000) -> str:
    """A model row with checkpoint files of ``size`` bytes (and their rows) in its folder."""
    model_id = store.create_model("m", {"epochs": 3}, "data")
    store.update_model(model_id, status=status)
    for name in names:
        path = paths.checkpoints_dir(model_id) / name
        path.write_bytes(b"x" * size)
        kind, epoch = (name[:-3], None) if name in ("best.pt", "last.pt") else ("epoch", int(name[6:9]))
        store.add_checkpoint(model_id, epoch, path, kind, 0.5)
    return model_id


def _names(model_id: str) -> list[str]:
    return sorted(c["name"] for c in store.model_checkpoints(model_id))


def _row_names(model_id: str) -> list[str]:
    conn = store.connect()
    try:
        return sorted(Path(p).name for (p,) in conn.execute("SELECT path FROM checkpoints WHERE model_id = ?",
                                                            [model_id]).fetchall())
    finally:
        conn.close()


def _epochs(*numbers: int) -> list[str]:
    return [f"epoch_{n:03d}.pt" for n in numbers]


# --------------------------------------------------------------------------- retention of checkpoints

@pytest.mark.parametrize("epochs, keep, left", [
    ((1, 2, 3, 4, 5), 3, (3, 4, 5)),
    ((1, 2, 3, 4, 5), 0, ()),
    ((1, 2), 3, (1, 2)),
    ((9, 10, 100), 1, (100,)),
    ((), 3, ()),
])
def test_prune_keeps_best_last_and_the_newest_epochs(home, epochs, keep, left):
    model_id = _model_with_files(["best.pt", "last.pt", *_epochs(*epochs)])
    housekeeping.prune_checkpoints(model_id, keep)
    assert _names(model_id) == sorted(["best.pt", "last.pt", *_epochs(*left)])


def test_pruned_checkpoints_lose_their_rows_too(home):
    model_id = _model_with_files(["best.pt", "last.pt", *_epochs(1, 2, 3, 4)])
    housekeeping.prune_checkpoints(model_id, 1)
    assert _row_names(model_id) == ["best.pt", "epoch_004.pt", "last.pt"]


def test_a_dry_run_removes_nothing(home):
    model_id = _model_with_files(["best.pt", *_epochs(1, 2, 3, 4)])
    plan = housekeeping.prune_checkpoints(model_id, 1, dry_run=True)
    assert (len(plan), _names(model_id)) == (3, sorted(["best.pt", *_epochs(1, 2, 3, 4)]))


@pytest.mark.parametrize("value, expected", [("", 3), ("0", 0), ("7", 7)])
def test_the_keep_setting_comes_from_the_environment(home, monkeypatch, value, expected):
    monkeypatch.setenv(housekeeping.KEEP_ENV, value)
    assert housekeeping.keep_epoch_checkpoints() == expected


@pytest.mark.parametrize("value", ["-1", "three", "2.5"])
def test_a_bad_keep_setting_is_a_sentence(home, monkeypatch, value):
    monkeypatch.setenv(housekeeping.KEEP_ENV, value)
    with pytest.raises(housekeeping.HousekeepingError, match="whole number of 0 or more"):
        housekeeping.keep_epoch_checkpoints()


def test_an_epoch_checkpoint_read_by_a_running_job_is_kept(home):
    model_id = _model_with_files(["best.pt", *_epochs(1, 2, 3)])
    read = paths.checkpoints_dir(model_id) / "epoch_001.pt"
    job_id = store.create_inference_job(str(read), str(home), {}, model_id=model_id)
    store.update_inference_job(job_id, status="running")
    housekeeping.prune_checkpoints(model_id, 0)
    assert _names(model_id) == ["best.pt", "epoch_001.pt"]


# --------------------------------------------------------------------------- deleting one checkpoint

def _deletion_case(case: str) -> tuple[str, str]:
    if case == "best":
        return _model_with_files(["best.pt", "last.pt"]), "best.pt"
    if case == "last of a running run":
        return _model_with_files(["best.pt", "last.pt"], status="running"), "last.pt"
    if case == "unknown name":
        return _model_with_files(["best.pt"]), "epoch_007.pt"
    model_id = _model_with_files(["best.pt", *_epochs(1)])
    job_id = store.create_inference_job(str(paths.checkpoints_dir(model_id) / "epoch_001.pt"), "in", {})
    store.update_inference_job(job_id, status="running")
    return model_id, "epoch_001.pt"


@pytest.mark.parametrize("case, message", [
    ("best", "only best checkpoint"),
    ("last of a running run", "still active"),
    ("unknown name", "has no checkpoint named"),
    ("read by a running job", "read by a batch inference job"),
])
def test_refused_checkpoint_deletions_say_why_and_keep_the_file(home, case, message):
    model_id, name = _deletion_case(case)
    before = _names(model_id)
    with pytest.raises(housekeeping.HousekeepingError, match=message):
        housekeeping.delete_checkpoint(model_id, name)
    assert _names(model_id) == before


@pytest.mark.parametrize("name", ["last.pt", "epoch_002.pt"])
def test_deleting_one_checkpoint_removes_its_file_and_row(home, name):
    model_id = _model_with_files(["best.pt", "last.pt", *_epochs(1, 2)])
    housekeeping.delete_checkpoint(model_id, name)
    assert (name in _names(model_id), name in _row_names(model_id)) == (False, False)


# --------------------------------------------------------------------------- inference results, data, disk use

def _job(status: str, days_old: float = 0.0, size: int = 2000) -> str:
    job_id = store.create_inference_job("baseline", "in", {}, model_id=store.BASELINE)
    created = (datetime.now(timezone.utc) - timedelta(days=days_old)).isoformat(timespec="milliseconds")
    store.update_inference_job(job_id, status=status, created_at=created,
                               finished_at=None if status in ("queued", "running") else created)
    (paths.inference_dir(job_id) / "mask.png").write_bytes(b"p" * size)
    return job_id


def test_inference_results_are_listed_with_their_size(home):
    job_id = _job("completed", size=2500)
    assert [(j["id"], j["size_bytes"]) for j in housekeeping.inference_results()] == [(job_id, 2500)]


def test_deleting_inference_results_removes_row_and_folder(home):
    job_id = _job("completed")
    housekeeping.delete_inference_results(job_id)
    assert (store.list_inference_jobs(), (home / "inference" / job_id).exists()) == ([], False)


@pytest.mark.parametrize("status", ["queued", "running"])
def test_inference_results_still_written_are_not_deleted(home, status):
    job_id = _job(status)
    with pytest.raises(store.WrongStateError, match="cancel it and wait"):
        housekeeping.delete_inference_results(job_id)
    assert (home / "inference" / job_id / "mask.png").exists()


def test_a_cancelled_job_still_stopping_is_kept(home):
    job_id = _job("running")
    store.request_cancel(job_id)  # cancelled, but the worker has not stopped yet (no finished_at)
    with pytest.raises(store.WrongStateError):
        housekeeping.delete_inference_results(job_id)
    assert (home / "inference" / job_id).exists()


def test_only_finished_results_older_than_the_limit_go(home):
    old, new, running = _job("completed", 40), _job("failed", 5), _job("running", 40)
    housekeeping.delete_old_inference_results(30)
    assert sorted(j["id"] for j in store.list_inference_jobs()) == sorted([new, running])


def test_data_sets_and_uploads_are_listed_and_deleted_unless_in_use(home):
    (paths.datasets_dir() / "mine" / "images").mkdir(parents=True)
    (paths.datasets_dir() / "mine" / "images" / "a.png").write_bytes(b"i" * 3000)
    (paths.uploads_dir() / "batch.zip").write_bytes(b"z" * 500)
    busy = paths.datasets_dir() / "busy"
    busy.mkdir()
    model_id = store.create_model("training on busy", {"epochs": 3}, str(busy))
    store.update_model(model_id, status="running")
    listed = {e["name"]: (e["kind"], e["size_bytes"], bool(e["in_use"])) for e in housekeeping.stored_data()}
    assert listed == {"mine": ("data set", 3000, False), "busy": ("data set", 0, True),
                      "batch.zip": ("upload", 500, False)}


def test_a_data_set_in_use_is_not_deleted(home):
    busy = paths.datasets_dir() / "busy"
    busy.mkdir()
    store.update_model(store.create_model("t", {"epochs": 3}, str(busy)), status="running")
    with pytest.raises(housekeeping.HousekeepingError, match="active training"):
        housekeeping.delete_stored_data(busy)
    assert busy.exists()


def test_deleting_an_upload_removes_it(home):
    upload = paths.uploads_dir() / "batch.zip"
    upload.write_bytes(b"z" * 500)
    housekeeping.delete_stored_data(upload)
    assert not upload.exists()


def test_disk_use_is_counted_by_kind(home):
    _model_with_files(["best.pt"], size=1000)
    _job("completed", size=2000)
    (paths.datasets_dir() / "d").mkdir()
    (paths.datasets_dir() / "d" / "x.png").write_bytes(b"d" * 3000)
    (paths.uploads_dir() / "u.zip").write_bytes(b"u" * 4000)
    use = housekeeping.disk_use()
    assert ({k: v for k, v in use.items() if k != "databases"}, use["databases"] > 0) == (
        {"checkpoints": 1000, "inference results": 2000, "data sets": 3000, "uploads": 4000}, True)


# --------------------------------------------------------------------------- the CLI

def test_cli_prune_prints_each_removal_and_the_space_freed(home, capsys):
    model_id = _model_with_files(["best.pt", *_epochs(1, 2, 3)], size=1_500_000)
    code = cli_main(["prune", model_id, "--keep", "1"])
    out = capsys.readouterr().out.splitlines()
    assert (code, out) == (0, [f"removed checkpoint models/{model_id}/checkpoints/epoch_001.pt (1.5 MB)",
                               f"removed checkpoint models/{model_id}/checkpoints/epoch_002.pt (1.5 MB)",
                               "2 item(s); freed 3.0 MB"])


def test_cli_prune_dry_run_changes_nothing(home, capsys):
    model_id = _model_with_files(["best.pt", *_epochs(1, 2, 3)])
    _job("completed", 40)
    code = cli_main(["prune", "--keep", "0", "--inference-older-than", "30", "--dry-run"])
    last = capsys.readouterr().out.splitlines()[-1]
    assert (code, last, len(_names(model_id)), len(store.list_inference_jobs())) == (
        0, "4 item(s); would free 0.0 MB", 4, 1)


@pytest.mark.parametrize("argv, message", [
    (["prune", "--keep", "-2"], "--keep takes a whole number"),
    (["prune", "--inference-older-than", "soon"], "number of days"),
])
def test_cli_prune_bad_arguments_exit_2_with_one_line(home, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(argv)
    err = capsys.readouterr().err
    assert (exit_info.value.code, message in err, err.count("\n")) == (2, True, 1)


def test_cli_prune_of_an_unknown_model_is_one_sentence(home, capsys):
    code = cli_main(["prune", "nope"])
    err = capsys.readouterr().err
    assert (code, err) == (2, "error: There is no model with id 'nope'; check the id in the model list.\n")


# --------------------------------------------------------------------------- the API route, over real HTTP

@pytest.fixture
def api(home):
    """The API's routes served by uvicorn on a free port in this process; ``call(body, headers)``."""
    import http.client

    import uvicorn
    from starlette.applications import Starlette

    from engine.api import api_routes

    token, port = "t" * 32, free_port()
    server = uvicorn.Server(uvicorn.Config(Starlette(routes=api_routes(token)), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 20, 0.05, "uvicorn to start")

    def call(body, headers=None, raw=None):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        sent = {"Authorization": f"Bearer {token}", "Content-Type": "application/json", **(headers or {})}
        try:
            conn.request("POST", "/api/v1/prune", body=raw if raw is not None else json.dumps(body), headers=sent)
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        finally:
            conn.close()

    yield call
    server.should_exit = True
    thread.join(10)


def test_api_prune_removes_and_reports_like_the_cli(api):
    model_id = _model_with_files(["best.pt", *_epochs(1, 2, 3)], size=1000)
    status, body = api({"model_id": model_id, "keep": 2})
    assert (status, body["freed_bytes"], [Path(r["path"]).name for r in body["removed"]], _names(model_id)) == (
        200, 1000, ["epoch_001.pt"], ["best.pt", *_epochs(2, 3)])


def test_api_prune_dry_run_changes_nothing(api):
    model_id = _model_with_files(["best.pt", *_epochs(1, 2, 3)], size=1000)
    status, body = api({"keep": 0, "dry_run": True})
    assert (status, body["freed_bytes"], body["dry_run"], len(_names(model_id))) == (200, 3000, True, 4)


@pytest.mark.parametrize("body, headers, raw, expected", [
    ({"keep": -1}, None, None, 400),
    ({"keep": "2"}, None, None, 400),
    ({"inference_older_than": -3}, None, None, 400),
    ({"dry_run": "yes"}, None, None, 400),
    ({"older": 3}, None, None, 400),
    ({"model_id": "nope"}, None, None, 404),
    ({}, {"Authorization": "Bearer wrong-token-wrong-token"}, None, 401),
    ({}, {"Origin": "http://evil.example"}, None, 403),
    ({}, {"Content-Type": "text/plain"}, None, 415),
    (None, None, b"[1, 2]", 400),
])
def test_api_prune_refusals(api, body, headers, raw, expected):
    status, answer = api(body, headers, raw)
    assert (status, isinstance(answer.get("error"), str)) == (expected, True)


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
    assert (status_of(model_id), _names(model_id), _row_names(model_id)) == ("completed", expected, expected)


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


# --------------------------------------------------------------------------- the pages (AppTest)

def _app(page: str | None = None):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=60)
    at.run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_the_overview_shows_disk_use_by_kind(home):
    _model_with_files(["best.pt"], size=2_000_000)
    at = _app()
    shown = {m.label: m.value for m in at.metric}
    assert (shown["Checkpoints"], shown["Inference results"], shown["Uploads"]) == ("2.0 MB", "0.0 MB", "0.0 MB")


def test_the_overview_deletes_inference_results_after_asking(home):
    job_id = _job("completed")
    at = _app()
    at.selectbox(key="hk_job_pick").select(job_id).run()
    at.button(key="hk_job_delete").click().run()
    asked = store.list_inference_jobs() != []
    at.button(key="hk_job_delete_yes").click().run()
    assert (asked, store.list_inference_jobs(), [s.value for s in at.success]) == (
        True, [], [f"Deleted job {job_id} (0.0 MB)."])


def test_the_models_page_deletes_older_checkpoints_and_one_checkpoint(home, monkeypatch):
    monkeypatch.setenv(housekeeping.KEEP_ENV, "3")  # the page's default for "Epoch checkpoints to keep"
    model_id = _model_with_files(["best.pt", "last.pt", *_epochs(1, 2, 3, 4)])
    at = _app("pages/models.py")
    at.selectbox(key="models_detail").select(model_id).run()
    at.button(key=f"hk_prune_{model_id}").click().run()
    at.button(key=f"hk_prune_{model_id}_yes").click().run()
    after_prune = _names(model_id)
    at.selectbox(key=f"hk_ckpt_pick_{model_id}").select("epoch_002.pt").run()
    at.button(key=f"hk_ckpt_delete_{model_id}").click().run()
    at.button(key=f"hk_ckpt_delete_{model_id}_yes").click().run()
    assert (after_prune, _names(model_id)) == (sorted(["best.pt", "last.pt", *_epochs(2, 3, 4)]),
                                               sorted(["best.pt", "last.pt", *_epochs(3, 4)]))


def test_an_upload_is_listed_by_the_users_file_name(home):
    from storage import paths

    folder = paths.uploads_dir() / "4f1c0d2e9a" / "clinic_photos.zip"
    folder.parent.mkdir(parents=True)
    folder.write_bytes(b"PK\x05\x06" + b"\0" * 18)
    names = [e["name"] for e in housekeeping.stored_data() if e["kind"] == "upload"]
    assert names == ["clinic_photos.zip"]
