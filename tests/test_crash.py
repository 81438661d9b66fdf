"""Crashes lose nothing: SIGKILL the real worker during a batch, during validation and during a
checkpoint write, restart it, and check what a user would find.

One run is killed four times: once in each phase and once in a random one (in a seeded random order,
each after a seeded random delay).
Each kill is aimed at its phase by watching the run's own traces and then *verified* on the frozen
worker: the test freezes it with SIGSTOP when the traces say it is in the phase, checks again while
nothing can move, and only then sends SIGKILL (otherwise SIGCONT and aim again):

* batch: the run's row shows a batch of the current epoch below the last one (the last batch is
  always recorded at once) and that epoch has no metrics row yet, or the epoch is over and saved
  down to its last checkpoint row (so the next epoch's batches run);
* validation: the last batch of the epoch is recorded, its metrics row is not, and no checkpoint
  is being written;
* checkpoint write: a temporary file of an atomic write (``.best.pt.<pid>.tmp`` …) is in the run's
  checkpoint folder.

After each kill the worker is restarted, and: both SQLite files pass ``PRAGMA integrity_check``; the
run is ``failed`` with a reason; every checkpoint row points at a file that ``engine.inference.predict.load_model``
loads; ``best.pt`` and ``last.pt`` load and ``last.pt`` never went back; no temporary file is left; the
metrics rows are contiguous. Then the run is continued from ``last.pt`` on the new worker and must go
on from the saved epoch; that continued run is the next trial's victim. Finally it is continued to
a raised epoch limit and completes with one contiguous curve.
"""
from __future__ import annotations

import os
import random
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from engine import jobs
from engine.training.synthetic import make_synthetic_dataset
from engine.inference.predict import load_model
from storage import db as store
from storage import paths
from tests.worker_helpers import Worker, load_checkpoint, wait_for

pytestmark = pytest.mark.slow

# Tiny and fast, but with enough batches per epoch (and validation images) for each phase to last a
# few tens of milliseconds; checkpoint_every=1 adds epoch_XXX.pt writes (and rows) to every epoch.
CRASH = {"base_channels": 4, "depth": 2, "patch_size": 32, "batch_size": 2, "steps_per_epoch": 20,
         "epochs": 1000, "num_threads": 1, "val_fraction": 0.5, "early_stopping_patience": 0,
         "calibrate_postprocess": False, "checkpoint_every": 1}
PHASES = ("batch", "validation", "checkpoint")
SEED = 6


class Probe:
    """Reads the run's traces (row, metrics, checkpoint folder) without touching the worker."""

    def __init__(self, model_id: str):
        self.model_id, self.folder = model_id, paths.checkpoints_dir(model_id)
        self.conn = sqlite3.connect(f"file:{paths.db_path()}?mode=ro", uri=True, timeout=10)

    def row(self) -> dict:
        cur = self.conn.execute("SELECT status, current_epoch, batch, batches, epochs_run FROM models WHERE id = ?",
                                [self.model_id])
        return dict(zip(("status", "epoch", "batch", "batches", "epochs_run"), cur.fetchone()))

    def logged(self, epoch: int) -> bool:
        return self.conn.execute("SELECT 1 FROM epochs WHERE model_id = ? AND epoch = ?",
                                 [self.model_id, epoch]).fetchone() is not None

    def temp_files(self) -> list[str]:
        return sorted(e.name for e in os.scandir(self.folder) if e.name.endswith(".tmp"))

    def saved(self, epoch: int) -> bool:
        """The epoch's last bookkeeping step (its epoch_XXX.pt row) is done."""
        return self.conn.execute("SELECT 1 FROM checkpoints WHERE model_id = ? AND kind = 'epoch' AND epoch = ?",
                                 [self.model_id, epoch]).fetchone() is not None

    def phase(self) -> str | None:
        """The phase the traces show now (None: between phases or not running)."""
        if self.temp_files():
            return "checkpoint"
        r = self.row()
        if r["status"] != "running" or not r["epoch"] or not r["batches"]:
            return None
        if self.logged(r["epoch"]):  # the epoch is over: once fully saved, the next one's batches run
            return "batch" if self.saved(r["epoch"]) else None
        if 1 <= (r["batch"] or 0) < r["batches"]:  # progress rows are throttled, but the last batch is always written
            return "batch"
        return "validation" if r["batch"] == r["batches"] else None

    def close(self) -> None:
        self.conn.close()


def freeze(pid: int, timeout: float = 5.0) -> None:
    """SIGSTOP ``pid`` and return once every one of its threads is stopped. kill() only queues the
    signal: a thread running on another core goes on for a moment (long enough to finish renaming a
    checkpoint), so the phase must not be read before /proc shows them all in state T."""
    os.kill(pid, signal.SIGSTOP)
    tasks, deadline = Path(f"/proc/{pid}/task"), time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:  # the state is the first field after the ")" that closes the thread's name
            states = {(t / "stat").read_text().rpartition(")")[2].split()[0] for t in tasks.iterdir()}
        except (FileNotFoundError, ProcessLookupError):  # a thread ended while listed: look again
            continue
        if states <= {"T", "t", "Z", "X"}:  # stopped, or a thread that has already ended
            return
        time.sleep(0.0002)
    raise AssertionError(f"the worker (pid {pid}) did not stop within {timeout} s of SIGSTOP")


def kill_in(worker: Worker, probe: Probe, phase: str, timeout: float = 60.0) -> None:
    """SIGKILL the worker at a moment it is verifiably (while frozen by SIGSTOP) in ``phase``."""
    pid, deadline = worker.proc.pid, time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe.phase() == phase:
            freeze(pid)
            if probe.phase() == phase:  # nothing moves now: this is where it dies
                os.kill(pid, signal.SIGKILL)
                worker.proc.wait(10)
                return
            os.kill(pid, signal.SIGCONT)
        time.sleep(0.001 if phase == "checkpoint" else 0.005)
    raise AssertionError(f"the worker was never seen in the {phase} phase within {timeout} s")


def sql(query: str, *params, db: Path | None = None) -> list[tuple]:
    conn = sqlite3.connect(db or paths.db_path(), timeout=10)
    try:
        return conn.execute(query, params).fetchall()
    finally:
        conn.close()


def epochs_of(model_id: str) -> list[int]:
    return [m["epoch"] for m in store.model_metrics(model_id)]


def check_after_restart(model_id: str, saved_before: int) -> int:
    """Everything a user relies on after a crash; returns the epoch of last.pt."""
    folder = paths.checkpoints_dir(model_id)
    row = store.get_model(model_id)
    checks = [sql("PRAGMA integrity_check", db=db)[0][0] for db in (paths.db_path(), paths.queue_path())]
    rows = sql("SELECT path, epoch, kind FROM checkpoints WHERE model_id = ?", model_id)
    loaded = {Path(path).name: (load_model(path).epoch, epoch) for path, epoch, _ in rows}
    best, last = (load_checkpoint(folder / name) for name in ("best.pt", "last.pt"))
    logged = epochs_of(model_id)
    assert (checks, row["status"], "stopped (last heartbeat" in (row["error"] or ""),
            sorted(p.name for p in folder.iterdir() if p.name.startswith(".")),
            all(file_epoch >= row_epoch for file_epoch, row_epoch in loaded.values()),
            last["epoch"] >= saved_before, best["epoch"] <= last["epoch"] + 1,
            logged == list(range(1, len(logged) + 1)), len(logged) >= last["epoch"]) == (
        ["ok", "ok"], "failed", True, [], True, True, True, True, True), (row, loaded, logged)
    return last["epoch"]


def resume_and_check(model_id: str, config: dict, saved: int) -> None:
    """Continue the run from last.pt; it must go on from epoch saved + 1 with the curve intact."""
    jobs.start_training(model_id, config, resume=True)
    last = paths.checkpoints_dir(model_id) / "last.pt"
    ckpt = wait_for(lambda: (c := load_checkpoint(last))["epoch"] > saved and c, 120, 0.05,
                    f"the continued run to save epoch {saved + 1}")
    first_new = sql("SELECT min(epoch) FROM epochs WHERE model_id = ? AND logged_at >= (SELECT queued_at "
                    "FROM models WHERE id = ?)", model_id, model_id)[0][0]
    history = [h["epoch"] for h in ckpt["history"]]
    assert (first_new, history) == (saved + 1, list(range(1, ckpt["epoch"] + 1)))


def test_sigkill_in_every_phase_loses_nothing_and_the_run_resumes(tmp_path, monkeypatch):
    rng = random.Random(SEED)
    home = tmp_path / "home"
    monkeypatch.setenv("ML_MANAGER_HOME", str(home))
    data = make_synthetic_dataset(tmp_path / "synth", n_images=6, size=96, seed=2)
    phases = [*PHASES, rng.choice(PHASES)]
    rng.shuffle(phases)
    worker = Worker(home).start()
    model_id, saved, hits = jobs.submit_training("crash", data, CRASH), 0, []
    try:
        wait_for((paths.checkpoints_dir(model_id) / "last.pt").exists, 120, what="a first last.pt")
        for phase in phases:
            time.sleep(rng.uniform(0.0, 0.3))  # a random moment of the epoch to start aiming from
            probe = Probe(model_id)
            try:
                kill_in(worker, probe, phase)
                hits.append((phase, probe.row()["epoch"], probe.temp_files()))
            finally:
                probe.close()
            worker = Worker(home).start()
            wait_for(lambda: store.get_model(model_id)["status"] == "failed", 30, what="the run to be failed")
            saved = check_after_restart(model_id, saved)
            resume_and_check(model_id, CRASH, saved)
        assert all(temps for phase, _, temps in hits if phase == "checkpoint"), hits
        # Stopped by the user now, it is continued to a raised limit and completes with one contiguous curve.
        jobs.stop_training(model_id)
        wait_for(lambda: store.get_model(model_id)["status"] == "completed", 30, what="the stop")
        saved = load_checkpoint(paths.checkpoints_dir(model_id) / "last.pt")["epoch"]
        jobs.start_training(model_id, {**CRASH, "epochs": saved + 2}, resume=True)
        wait_for(lambda: store.get_model(model_id)["status"] in ("completed", "failed"), 120, what="the end")
        row = store.get_model(model_id)
        assert (row["status"], row["stop_reason"], row["epochs_run"], epochs_of(model_id),
                all(load_model(c["path"]) for c in store.model_checkpoints(model_id))) == (
            "completed", "max_epochs", saved + 2, list(range(1, saved + 3)), True)
    finally:
        if worker.proc.poll() is None:
            worker.stop()
