"""`python -m engine backup DEST` (engine.housekeeping.backup) and the restore the README describes: a real
model row and checkpoint, a writer busy on the registry and the checkpoint while the backup runs, then the
backup used as a new data home where the model is read and its checkpoint loaded."""
from __future__ import annotations

import shutil
import sqlite3
import threading
from pathlib import Path

import pytest
import torch

from engine import housekeeping, jobs
from engine.cli import main as cli_main
from engine.training.synthetic import make_synthetic_dataset
from engine.inference.predict import load_model
from engine.training.checkpoint import save_checkpoint
from engine.training.config import TrainingConfig
from engine.training.loop import train
from storage import db as store
from storage import paths

TINY = {"base_channels": 4, "depth": 2, "patch_size": 32, "batch_size": 2, "steps_per_epoch": 2, "epochs": 1,
        "num_threads": 1, "val_fraction": 0.25, "early_stopping_patience": 0, "calibrate_postprocess": False}


@pytest.fixture
def trained(home, tmp_path) -> str:
    """A completed model in ``home`` with real best.pt / last.pt files and their rows."""
    data = make_synthetic_dataset(tmp_path / "synth", n_images=4, size=64, seed=2)
    model_id = store.create_model("backed up", TINY, str(data))
    result = train(TrainingConfig.from_dict(TINY), data, paths.checkpoints_dir(model_id))
    for kind, path in (("best", result.best_checkpoint), ("last", result.last_checkpoint)):
        store.add_checkpoint(model_id, result.best_epoch, path, kind, result.best_metric)
    store.update_model(model_id, status="completed", epochs_run=1, best_epoch=result.best_epoch)
    jobs.queue_length()  # makes queue.db, as the dashboard does
    return model_id


class Writer:
    """Keeps writing while the backup runs: epoch rows and heartbeats in the registry, and last.pt
    replaced atomically, as a training does."""

    def __init__(self, model_id: str):
        self.model_id, self.done, self.writes = model_id, threading.Event(), 0
        self.last = paths.checkpoints_dir(model_id) / "last.pt"
        self.thread = threading.Thread(target=self.run)

    def run(self) -> None:
        conn = store.connect()
        payload = torch.load(self.last, map_location="cpu", weights_only=True)
        try:
            while not self.done.is_set():
                self.writes += 1
                store.log_epoch(self.model_id, 100 + self.writes, 0.5, 0.5, 0.5, 1e-3, 1.0, db=conn)
                store.update_model(self.model_id, db=conn, heartbeat_at=store.utc_now())
                save_checkpoint(self.last, payload)
        finally:
            conn.close()

    def __enter__(self) -> "Writer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join(30)


def _restore(backup: Path, new_home: Path, monkeypatch) -> None:
    """The README's restore: with the dashboard and worker stopped, the backup folder becomes the data home."""
    shutil.copytree(backup, new_home)
    monkeypatch.setenv("ML_MANAGER_HOME", str(new_home))


def _integrity_check(path: Path) -> str:
    """SQLite's own consistency check of a database file: ``"ok"`` when the file is sound."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


def test_a_backup_taken_while_writing_restores_a_loadable_model(trained, tmp_path, monkeypatch):
    with Writer(trained) as writer:
        while writer.writes < 3:  # the writer is busy before the backup starts
            pass
        done = housekeeping.backup(tmp_path / "backup")
    _restore(tmp_path / "backup", tmp_path / "restored", monkeypatch)
    ckpts = {c["name"]: c["path"] for c in store.model_checkpoints(trained)}
    loaded = load_model(ckpts["best.pt"])
    assert (done["databases"], done["checkpoints"], store.get_model(trained)["name"], sorted(ckpts),
            _integrity_check(paths.db_path()), loaded.epoch,
            paths.is_inside(ckpts["best.pt"], tmp_path / "restored")) == (
        ["ml_manager.db", "queue.db"], 2, "backed up", ["best.pt", "last.pt"], "ok", 1, True)


def test_the_backed_up_queue_is_a_sound_database(trained, tmp_path):
    housekeeping.backup(tmp_path / "backup")
    conn = sqlite3.connect(tmp_path / "backup" / "queue.db")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


def test_cli_backup_prints_one_line(trained, tmp_path, capsys):
    code = cli_main(["backup", str(tmp_path / "b")])
    out = capsys.readouterr().out
    assert (code, out.startswith("backed up ml_manager.db"), out.count("\n")) == (0, True, 1)


@pytest.mark.parametrize("where, message", [
    ("inside home", "inside the data home"),
    ("not empty", "not an empty folder"),
    ("a file", "not an empty folder"),
])
def test_cli_backup_refuses_a_bad_destination_with_one_sentence(home, tmp_path, capsys, where, message):
    dest = {"inside home": home / "backup", "not empty": tmp_path / "full", "a file": tmp_path / "file"}[where]
    if where == "not empty":
        dest.mkdir()
        (dest / "x").write_text("x")
    elif where == "a file":
        dest.write_text("x")
    code = cli_main(["backup", str(dest)])
    err = capsys.readouterr().err
    assert (code, message in err, err.count("\n")) == (2, True, 1)
