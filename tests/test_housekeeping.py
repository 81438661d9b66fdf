"""Retention and disk use in engine.housekeeping: pruning epoch checkpoints, deleting one checkpoint,
inference results, data sets and uploads, disk use by kind. Real data homes in tmp_path, real SQLite.
The CLI, the API route, the pages and the worker: tests/test_housekeeping_{cli,api,pages,worker}.py."""
from __future__ import annotations

import pytest

from engine import housekeeping
from storage import db as store
from storage import paths
from tests.housekeeping_helpers import (
    checkpoint_names, checkpoint_row_names, epoch_names, inference_job, model_with_files,
)


# --------------------------------------------------------------------------- retention of checkpoints

@pytest.mark.parametrize("epochs, keep, left", [
    ((1, 2, 3, 4, 5), 3, (3, 4, 5)),
    ((1, 2, 3, 4, 5), 0, ()),
    ((1, 2), 3, (1, 2)),
    ((9, 10, 100), 1, (100,)),
    ((), 3, ()),
])
def test_prune_keeps_best_last_and_the_newest_epochs(home, epochs, keep, left):
    model_id = model_with_files(["best.pt", "last.pt", *epoch_names(*epochs)])
    housekeeping.prune_checkpoints(model_id, keep)
    assert checkpoint_names(model_id) == sorted(["best.pt", "last.pt", *epoch_names(*left)])


def test_pruned_checkpoints_lose_their_rows_too(home):
    model_id = model_with_files(["best.pt", "last.pt", *epoch_names(1, 2, 3, 4)])
    housekeeping.prune_checkpoints(model_id, 1)
    assert checkpoint_row_names(model_id) == ["best.pt", "epoch_004.pt", "last.pt"]


def test_a_dry_run_removes_nothing(home):
    model_id = model_with_files(["best.pt", *epoch_names(1, 2, 3, 4)])
    plan = housekeeping.prune_checkpoints(model_id, 1, dry_run=True)
    assert (len(plan), checkpoint_names(model_id)) == (3, sorted(["best.pt", *epoch_names(1, 2, 3, 4)]))


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
    model_id = model_with_files(["best.pt", *epoch_names(1, 2, 3)])
    read = paths.checkpoints_dir(model_id) / "epoch_001.pt"
    job_id = store.create_inference_job(str(read), str(home), {}, model_id=model_id)
    store.update_inference_job(job_id, status="running")
    housekeeping.prune_checkpoints(model_id, 0)
    assert checkpoint_names(model_id) == ["best.pt", "epoch_001.pt"]


# --------------------------------------------------------------------------- deleting one checkpoint

def _deletion_case(case: str) -> tuple[str, str]:
    if case == "best":
        return model_with_files(["best.pt", "last.pt"]), "best.pt"
    if case == "last of a running run":
        return model_with_files(["best.pt", "last.pt"], status="running"), "last.pt"
    if case == "unknown name":
        return model_with_files(["best.pt"]), "epoch_007.pt"
    model_id = model_with_files(["best.pt", *epoch_names(1)])
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
    before = checkpoint_names(model_id)
    with pytest.raises(housekeeping.HousekeepingError, match=message):
        housekeeping.delete_checkpoint(model_id, name)
    assert checkpoint_names(model_id) == before


@pytest.mark.parametrize("name", ["last.pt", "epoch_002.pt"])
def test_deleting_one_checkpoint_removes_its_file_and_row(home, name):
    model_id = model_with_files(["best.pt", "last.pt", *epoch_names(1, 2)])
    housekeeping.delete_checkpoint(model_id, name)
    assert (name in checkpoint_names(model_id), name in checkpoint_row_names(model_id)) == (False, False)


def test_inference_results_are_listed_with_their_size(home):
    job_id = inference_job("completed", size=2500)
    assert [(j["id"], j["size_bytes"]) for j in housekeeping.inference_results()] == [(job_id, 2500)]


def test_deleting_inference_results_removes_row_and_folder(home):
    job_id = inference_job("completed")
    housekeeping.delete_inference_results(job_id)
    assert (store.list_inference_jobs(), (home / "inference" / job_id).exists()) == ([], False)


@pytest.mark.parametrize("status", ["queued", "running"])
def test_inference_results_still_written_are_not_deleted(home, status):
    job_id = inference_job(status)
    with pytest.raises(store.WrongStateError, match="cancel it and wait"):
        housekeeping.delete_inference_results(job_id)
    assert (home / "inference" / job_id / "mask.png").exists()


def test_a_cancelled_job_still_stopping_is_kept(home):
    job_id = inference_job("running")
    store.request_cancel(job_id)  # cancelled, but the worker has not stopped yet (no finished_at)
    with pytest.raises(store.WrongStateError):
        housekeeping.delete_inference_results(job_id)
    assert (home / "inference" / job_id).exists()


def test_only_finished_results_older_than_the_limit_go(home):
    old, new, running = inference_job("completed", 40), inference_job("failed", 5), inference_job("running", 40)
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
    model_with_files(["best.pt"], size=1000)
    inference_job("completed", size=2000)
    (paths.datasets_dir() / "d").mkdir()
    (paths.datasets_dir() / "d" / "x.png").write_bytes(b"d" * 3000)
    (paths.uploads_dir() / "u.zip").write_bytes(b"u" * 4000)
    use = housekeeping.disk_use()
    assert ({k: v for k, v in use.items() if k != "databases"}, use["databases"] > 0) == (
        {"checkpoints": 1000, "inference results": 2000, "data sets": 3000, "uploads": 4000}, True)


def test_an_upload_is_listed_by_the_users_file_name(home):
    from storage import paths

    folder = paths.uploads_dir() / "4f1c0d2e9a" / "clinic_photos.zip"
    folder.parent.mkdir(parents=True)
    folder.write_bytes(b"PK\x05\x06" + b"\0" * 18)
    names = [e["name"] for e in housekeeping.stored_data() if e["kind"] == "upload"]
    assert names == ["clinic_photos.zip"]
