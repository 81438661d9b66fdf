"""The run registry: one SQLite file (``paths.db_path()``) read by the dashboard, written by the worker.

Every connection is in WAL mode with a busy timeout, so a page reading while the worker writes
waits a moment instead of failing with "database is locked". The schema lives in
``storage/migrations.py`` and is brought up to date whenever a connection opens.

Every query function takes an optional ``db=`` (a connection from :func:`connect`); without it,
the function opens ``paths.db_path()`` of the current ``ML_MANAGER_HOME`` and closes it again.
Timestamps are ISO-8601 UTC strings (``2025-01-31T12:00:00.123+00:00``). JSON columns
(``config``, ``recommended_postprocess``, ``postprocess``, ``datasets``) are stored and returned as JSON strings,
except presets, whose ``config`` comes back as a dict.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from sqlite_utils import Database

from storage import paths
from storage.migrations import MIGRATIONS
from storage.errors import UserError

BUSY_TIMEOUT_S = 30.0  # how long a connection waits for another writer before giving up
# stopped: the user stopped the run before its first epoch ended, so no epoch's checkpoint exists; the ``error``
# column says so in words, and the run can be started again (not continued).
STATUSES = ("queued", "running", "stopping", "completed", "failed", "stopped")
ACTIVE_STATUSES = ("queued", "running", "stopping")  # a run a worker holds or will start: not to be deleted
TRAINING_STATUSES = ("running", "stopping")  # a worker is training it now
# Why a training ended: the code stored in the row (and the CLI's JSON), and the words the dashboard shows.
STOP_REASONS = {
    "max_epochs": "reached its last epoch",
    "early_stopping": "early stopping (no better validation score for `patience` epochs)",
    "user_stop": "stopped by the user",
    "time_limit": "its time budget ran out",  # max_minutes ran out
}
CHECKPOINT_KINDS = ("best", "last", "epoch")
JOB_STATUSES = ("queued", "running", "completed", "failed", "cancelled")
JOB_ACTIVE_STATUSES = ("queued", "running")  # a batch job waiting for or in the worker
BASELINE = "baseline"  # model id / checkpoint path that stands for the classical vesselness baseline


def checkpoint_file(source: str | os.PathLike) -> Path | None:
    """The file an inference job's stored ``checkpoint_path`` reads (a checkpoint or the shipped model), None
    for the classical filter (``BASELINE``)."""
    return None if str(source) == BASELINE else Path(source)

_JSON_FIELDS = {"config", "recommended_postprocess", "postprocess", "plan", "settings_from", "datasets"}


class UnknownModelError(UserError):
    """No model with the given id exists."""


class UnknownJobError(UserError):
    """No inference job with the given id exists."""


class WrongStateError(UserError):
    """The run or job is in a state that does not allow the request (starting a running model, stopping a
    finished one); the message says which state and what to do instead."""


class DuplicateSubmissionError(UserError):
    """A run was already created with this submission key (a double click on Start); ``model_id`` is that run."""

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        super().__init__(f"This form was submitted already and queued model {model_id}; it was not queued twice. "
                         "Change a setting or reload the page to queue another run.")


# --------------------------------------------------------------------------- basics

def utc_now() -> str:
    """The current time as an ISO-8601 UTC string with milliseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def parse_time(value: str | None) -> datetime | None:
    """An ISO timestamp from the database as an aware datetime (None stays None)."""
    if not value:
        return None
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def age_seconds(value: str | None) -> float | None:
    """Seconds since an ISO timestamp, or None when there is none."""
    moment = parse_time(value)
    return None if moment is None else (datetime.now(timezone.utc) - moment).total_seconds()


def new_id() -> str:
    """A short, sortable, file-name-safe id such as ``20250131-120000-3fa9c2``."""
    return f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def this_worker_id() -> str:
    """Identity of the current process, stored on the runs it executes (``host:pid:start``)."""
    global _WORKER_ID
    if _WORKER_ID is None or _WORKER_ID[0] != os.getpid():
        _WORKER_ID = (os.getpid(), f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}")
    return _WORKER_ID[1]


_WORKER_ID: tuple[int, str] | None = None


def connect(path: str | os.PathLike | None = None) -> Database:
    """Open (creating and migrating if needed) the registry, in WAL mode with a busy timeout."""
    path = Path(path) if path is not None else paths.db_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise paths.not_writable(path.parent, exc) from None
    conn = None
    try:
        conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, check_same_thread=False)
        db = Database(conn, execute_plugins=False)
        db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        db.enable_wal()
        db.execute("PRAGMA synchronous = NORMAL")  # safe with WAL: only a power cut can lose the last commit
        migrate(db)
    except sqlite3.DatabaseError as exc:
        if conn is not None:
            conn.close()
        raise _storage_error(exc, path) or exc
    return db


# SQLite's words for a file or folder it may not write, or a file that is not a database.
_READ_ONLY = ("readonly", "read-only", "unable to open", "permission denied")


def _storage_error(exc: sqlite3.DatabaseError, path: Path | None = None) -> paths.StorageError | None:
    """A sentence for a database that cannot be written or read; None for other errors (locks, bugs)."""
    path = path or paths.db_path()
    text = str(exc).lower()
    if any(words in text for words in _READ_ONLY):
        return paths.StorageError(
            f"The database {path} cannot be written ({exc}): make the file and its folder writable "
            f"(for example chmod u+w), or set {paths.HOME_ENV} to a folder you can write to. Nothing was changed."
        )
    if "not a database" in text or "malformed" in text:
        return paths.StorageError(
            f"{path} is not a usable database ({exc}): move it aside (a new one is made) or restore it from a backup."
        )
    if "database or disk is full" in text:
        return paths.StorageError(f"The disk that holds {path} is full: free some space and try again.")
    return None


def migrate(db: Database) -> None:
    """Apply pending migrations; two processes opening a new file at once take turns."""
    if not MIGRATIONS.pending(db):
        return
    with immediate(db):  # the write lock first, so a second process waits and then sees nothing to do
        MIGRATIONS.apply(db)


@contextlib.contextmanager
def immediate(db: Database) -> Iterator[Database]:
    """A transaction that takes the write lock at once (``BEGIN IMMEDIATE``): read-then-write safely."""
    try:
        db.conn.execute("BEGIN IMMEDIATE")
    except sqlite3.DatabaseError as exc:
        raise _storage_error(exc) or exc
    try:
        yield db
    except sqlite3.DatabaseError as exc:
        db.rollback()
        raise _storage_error(exc) or exc
    except BaseException:
        db.rollback()
        raise
    else:
        db.conn.execute("COMMIT")


@contextlib.contextmanager
def _use(db: Database | None) -> Iterator[Database]:
    """``db``, or a connection of our own closed afterwards; read-only files give a StorageError sentence."""
    own = connect() if db is None else None
    try:
        yield db if db is not None else own
    except sqlite3.DatabaseError as exc:
        raise _storage_error(exc) or exc
    finally:
        if own is not None:
            own.close()


def _write(db: Database, sql: str, params: list | tuple = ()) -> int:
    with db.atomic():
        return db.execute(sql, params).rowcount


def _rows(db: Database, sql: str, params: list | tuple = ()) -> list[dict]:
    cursor = db.execute(sql, params)
    names = [c[0] for c in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def _encode(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: (json.dumps(v, sort_keys=True) if k in _JSON_FIELDS and isinstance(v, (dict, list)) else v)
            for k, v in fields.items()}


def _check_fields(table: str, fields: dict[str, Any], db: Database) -> None:
    columns = set(db[table].columns_dict)
    unknown = sorted(set(fields) - columns)
    if unknown:
        raise UserError(f"{table} has no field(s) {', '.join(unknown)}; known fields: {', '.join(sorted(columns))}.")


# --------------------------------------------------------------------------- models

def create_model(name: str, config: dict, dataset: str | list[str], db: Database | None = None,
                 submission_key: str | None = None, plan: dict | None = None,
                 settings_from: dict | None = None) -> str:
    """Register a new run (status ``queued``, not yet in the worker's queue) and return its id.

    Args:
        dataset: the folder the run trains on, or a list of them (stored in ``datasets`` as a JSON list,
            the first also in ``dataset``; read them back with :func:`model_datasets`).
        submission_key: identifies one submission of a form (the dashboard draws each Start form with a
            new key); the check and the insert share one transaction and the column is UNIQUE, so two
            submissions with the same key create one row, however close together they arrive.
        plan: the training plan that chose the config (stored as JSON in the ``plan`` column), or None.
        settings_from: where each setting that is not the default came from, ``{field: source}`` (stored as
            JSON in the ``settings_from`` column; see migration 0007), or None.

    Raises:
        DuplicateSubmissionError: a run with ``submission_key`` exists already (its id in ``.model_id``).
        UserError: an empty name or a config that is not a dict.
    """
    if not isinstance(name, str) or not name.strip():
        raise UserError("A model needs a name: give a short non-empty text such as 'unet-dice-v1'.")
    if not isinstance(config, dict):
        raise UserError(f"config must be a dict of training settings, not {type(config).__name__}.")
    folders = [str(d) for d in dataset] if isinstance(dataset, (list, tuple)) else [str(dataset)]
    if not folders:
        raise UserError("A run needs at least one data set: give the folder of its photographs and vessel masks.")
    model_id = new_id()
    now = utc_now()
    record = {"id": model_id, "name": name.strip(), "status": "queued", "config": json.dumps(config, sort_keys=True),
              "dataset": folders[0], "datasets": json.dumps(folders), "created_at": now, "queued_at": now,
              "total_epochs": config.get("epochs"), "patience": config.get("early_stopping_patience"),
              "monitor": config.get("early_stopping_monitor"), "submission_key": submission_key,
              "plan": json.dumps(plan, sort_keys=True) if plan is not None else None,
              "settings_from": json.dumps(settings_from, sort_keys=True) if settings_from is not None else None}
    with _use(db) as db:
        with immediate(db):
            if submission_key is not None:
                found = db.execute("SELECT id FROM models WHERE submission_key = ?", [submission_key]).fetchone()
                if found:
                    raise DuplicateSubmissionError(found[0])
            db["models"].insert(record)  # a savepoint inside this transaction
    return model_id


def get_model(model_id: str, db: Database | None = None) -> dict:
    """The model's row as a dict; an unknown id raises :class:`UnknownModelError`."""
    with _use(db) as db:
        rows = _rows(db, "SELECT * FROM models WHERE id = ?", [model_id])
    if not rows:
        raise UnknownModelError(f"There is no model with id {model_id!r}; check the id in the model list.")
    return rows[0]


def model_datasets(row: dict) -> list[str]:
    """The folders a run trains on, in order: its ``datasets`` list, or, for a row without one (written by
    an older version), its ``dataset``."""
    listed = row.get("datasets")
    if listed:
        try:
            folders = json.loads(listed) if isinstance(listed, str) else listed
        except json.JSONDecodeError:
            folders = None
        if isinstance(folders, list) and folders and all(isinstance(f, str) for f in folders):
            return folders
    return [row["dataset"]] if row.get("dataset") else []


def list_models(status: str | tuple[str, ...] | None = None, db: Database | None = None) -> list[dict]:
    """Every model, newest first; ``status`` keeps only runs in that status (or any of a tuple)."""
    wanted = (status,) if isinstance(status, str) else status
    with _use(db) as db:
        if not wanted:
            return _rows(db, "SELECT * FROM models ORDER BY created_at DESC, id DESC")
        marks = ", ".join("?" for _ in wanted)
        return _rows(db, f"SELECT * FROM models WHERE status IN ({marks}) ORDER BY created_at DESC, id DESC",
                     list(wanted))


def update_model(model_id: str, db: Database | None = None, only_if_status: tuple[str, ...] | None = None,
                 **fields: Any) -> bool:
    """Set fields of a model's row. With ``only_if_status``, change it only while its status is one of
    those (a compare-and-set) and return whether it changed."""
    if "status" in fields and fields["status"] not in STATUSES:
        raise UserError(f"status {fields['status']!r} is not one of {', '.join(STATUSES)}.")
    if fields.get("stop_reason") not in (None, *STOP_REASONS):
        raise UserError(f"stop_reason {fields['stop_reason']!r} is not one of {', '.join(STOP_REASONS)}.")
    with _use(db) as db:
        get_model(model_id, db=db)
        if not fields:
            return True
        _check_fields("models", fields, db)
        fields = _encode(fields)
        if not only_if_status:
            db["models"].update(model_id, fields)
            return True
        # a compare-and-set, which Table.update cannot express
        sets = ", ".join(f"[{k}] = ?" for k in fields)
        sql = f"UPDATE models SET {sets} WHERE id = ? AND status IN ({', '.join('?' for _ in only_if_status)})"
        return _write(db, sql, [*fields.values(), model_id, *only_if_status]) > 0


def forget_model(model_id: str, db: Database | None = None) -> None:
    """Remove a finished model's rows (epochs, checkpoints, presets); ``engine.housekeeping.delete_model``
    removes its folder of checkpoints too.

    Raises:
        UnknownModelError: no such model.
        UserError: the run is queued, running or stopping (stop it and wait until it has ended).
    """
    with _use(db) as db:
        with immediate(db):
            row = get_model(model_id, db=db)
            if row["status"] in ACTIVE_STATUSES:
                raise UserError(f"Model {model_id!r} is {row['status']}; stop it and wait until it has ended "
                                 "before deleting it.")
            for table in ("epochs", "checkpoints", "presets"):
                db.execute(f"DELETE FROM {table} WHERE model_id = ?", [model_id])
            db.execute("DELETE FROM models WHERE id = ?", [model_id])


def retire_dataset(name: str, db: Database | None = None) -> Path:
    """Take the registered data set ``datasets_dir()/name`` out of use: move it to a hidden folder beside
    it, which is returned for ``engine.housekeeping.delete_dataset`` to remove.

    The check that no run uses it and the folder's move out of sight happen under the registry's write
    lock, so no run can be registered on it in between.

    Raises:
        UserError: ``name`` is no registered data set.
        WrongStateError: a queued, running or stopping run trains on it (the message names the runs).
    """
    root = paths.datasets_dir()
    folder = root / str(name)
    if not name or str(name).startswith(".") or folder.parent != root or not folder.is_dir():
        raise UserError(f"There is no data set {name!r} in {root}; reload the page to see the current list.")
    where = str(folder.resolve())
    with _use(db) as db:
        with immediate(db):
            # any of a run's data sets (``datasets``; ``dataset`` for a row written by an older version)
            users = _rows(db, f"SELECT name, status FROM models WHERE status IN ({', '.join('?' * len(ACTIVE_STATUSES))}) "
                              "AND (dataset = ? OR substr(dataset, 1, ?) = ? OR EXISTS (SELECT 1 FROM "
                              "json_each(CASE WHEN json_valid(datasets) THEN datasets ELSE '[]' END) "
                              "WHERE value = ? OR substr(value, 1, ?) = ?))",
                          [*ACTIVE_STATUSES, where, len(where) + 1, where + os.sep, where, len(where) + 1,
                           where + os.sep])
            if users:
                runs = ", ".join(f"{u['name']} ({u['status']})" for u in users)
                raise WrongStateError(f"Data set {name} is in use by {runs}: stop the run or wait until it has "
                                      "ended, then delete the data set.")
            trash = folder.with_name(f".{folder.name}.deleting-{secrets.token_hex(4)}")
            os.replace(folder, trash)
    return trash


def claim_training_slot(model_id: str, max_running: int, fresh_s: float, worker: str,
                        db: Database | None = None) -> bool | None:
    """Try to move a queued run to ``running`` without exceeding ``max_running`` trainings at once.

    Runs are served first come, first served: a queued run waits while an earlier-queued run whose
    task polled within ``fresh_s`` seconds is still waiting. Returns True when the slot was taken,
    False when the run must wait (its heartbeat is bumped), None when it is no longer queued.
    """
    with _use(db) as db, immediate(db):
        row = get_model(model_id, db=db)
        now = utc_now()
        if row["status"] != "queued":
            return None
        running = db.execute("SELECT count(*) FROM models WHERE status IN ('running', 'stopping')").fetchone()[0]
        cutoff = datetime.fromtimestamp(datetime.now(timezone.utc).timestamp() - fresh_s, timezone.utc)
        ahead = db.execute(
            "SELECT count(*) FROM models WHERE status = 'queued' AND task_id IS NOT NULL AND id != ? "
            "AND (queued_at < ? OR (queued_at = ? AND id < ?)) AND heartbeat_at >= ?",
            [model_id, row["queued_at"], row["queued_at"], model_id,
             cutoff.isoformat(timespec="milliseconds")]).fetchone()[0]
        if running + ahead >= max_running:
            db.execute("UPDATE models SET heartbeat_at = ? WHERE id = ?", [now, model_id])
            return False
        db.execute("UPDATE models SET status = 'running', started_at = ?, heartbeat_at = ?, worker = ?, "
                   "error = NULL, stop_reason = NULL, finished_at = NULL WHERE id = ?",
                   [now, now, worker, model_id])
        return True


def request_stop(model_id: str, db: Database | None = None) -> str:
    """Ask a run to stop. Returns ``"cancelled"`` for a run that had not started (it is now failed with
    stop_reason user_stop) or ``"stopping"`` for a running one; a finished run raises UserError."""
    with _use(db) as db, immediate(db):
        row = get_model(model_id, db=db)
        if row["status"] == "queued":
            db.execute("UPDATE models SET status = 'failed', stop_reason = 'user_stop', finished_at = ?, "
                       "error = 'stopped by the user before it started' WHERE id = ?", [utc_now(), model_id])
            return "cancelled"
        if row["status"] in TRAINING_STATUSES:
            db.execute("UPDATE models SET status = 'stopping' WHERE id = ?", [model_id])
            return "stopping"
        raise WrongStateError(f"Model {model_id!r} has already finished ({row['status']}); there is nothing to stop.")


def fail_stale_model(model_id: str, error: str, stale_before: str | None,
                     db: Database | None = None) -> bool:
    """Mark an abandoned run ``failed`` in one conditional UPDATE, so that of two processes recovering it at
    once (a dashboard and a worker starting) exactly one succeeds.

    Args:
        model_id: the run.
        error: the sentence stored as the run's error.
        stale_before: ISO time; the run changes only while its heartbeat is older than this (or missing).
            None skips that condition (its worker process is known to be gone).
    Returns:
        True when this call changed the row; False when the run had ended, beat again or was recovered already.
    """
    sql = ("UPDATE models SET status = 'failed', eta_s = NULL, finished_at = ?, error = ? "
           "WHERE id = ? AND status IN ('running', 'stopping')")
    params: list = [utc_now(), error, model_id]
    if stale_before is not None:
        sql, params = sql + " AND (heartbeat_at IS NULL OR heartbeat_at < ?)", params + [stale_before]
    with _use(db) as db:
        return _write(db, sql, params) > 0


# --------------------------------------------------------------------------- metrics

def log_epoch(model_id: str, epoch: int, train_loss: float | None, val_loss: float | None,
              val_dice: float | None, lr: float | None, seconds: float | None, db: Database | None = None) -> None:
    """Record one epoch's metrics; logging the same (model, epoch) again replaces the earlier values."""
    if not isinstance(epoch, int) or epoch < 1:
        raise UserError(f"epoch must be a whole number from 1 up, not {epoch!r}.")
    record = {"model_id": model_id, "epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
              "val_dice": val_dice, "lr": lr, "seconds": seconds, "logged_at": utc_now()}
    with _use(db) as db:
        get_model(model_id, db=db)
        db["epochs"].upsert(record, pk=("model_id", "epoch"))


def model_metrics(model_id: str, db: Database | None = None) -> list[dict]:
    """The model's per-epoch metrics in epoch order."""
    with _use(db) as db:
        get_model(model_id, db=db)
        return _rows(db, "SELECT * FROM epochs WHERE model_id = ? ORDER BY epoch", [model_id])


# --------------------------------------------------------------------------- checkpoints

def add_checkpoint(model_id: str, epoch: int | None, path: str | os.PathLike, kind: str, metric: float | None,
                   db: Database | None = None) -> None:
    """Record a checkpoint file; the same path recorded again replaces the earlier row."""
    if kind not in CHECKPOINT_KINDS:
        raise UserError(f"checkpoint kind {kind!r} is not one of {', '.join(CHECKPOINT_KINDS)}.")
    path = Path(path).resolve()
    size = path.stat().st_size if path.exists() else None
    record = {"path": str(path), "model_id": model_id, "epoch": epoch, "kind": kind, "metric": metric,
              "size_bytes": size, "created_at": utc_now()}
    with _use(db) as db:
        get_model(model_id, db=db)
        db["checkpoints"].upsert(record, pk="path")


def _kind_from_name(name: str) -> tuple[str, int | None]:
    stem = Path(name).stem
    if stem in ("best", "last"):
        return stem, None
    if stem.startswith("epoch_") and stem[6:].isdigit():
        return "epoch", int(stem[6:])
    return "epoch", None


def model_checkpoints(model_id: str, db: Database | None = None) -> list[dict]:
    """The checkpoints in this model's own folder, with the rows' epoch and metric where recorded.

    Rows whose file has gone are left out; a ``.pt`` file without a row (a worker killed before it
    wrote the row) is listed with what its name tells. Order: best, last, then epochs newest first.
    """
    with _use(db) as db:
        model = get_model(model_id, db=db)
        rows = _rows(db, "SELECT * FROM checkpoints WHERE model_id = ?", [model_id])
    folder = paths.data_home() / "models" / paths.check_id(model_id, "model id") / "checkpoints"
    by_name = {Path(r["path"]).name: r for r in rows}
    found = []
    files = sorted(folder.glob("*.pt")) if folder.is_dir() else []
    for file in files:
        if file.name.startswith(".") or not file.is_file():
            continue  # temp files of an atomic write in progress
        row = by_name.get(file.name)
        kind, epoch = _kind_from_name(file.name)
        found.append({
            "model_id": model_id, "model_name": model["name"], "name": file.name, "path": str(file.resolve()),
            "kind": row["kind"] if row else kind, "epoch": row["epoch"] if row else epoch,
            "metric": row["metric"] if row else None, "size_bytes": file.stat().st_size,
            "created_at": row["created_at"] if row else None,
        })
    order = {"best": 0, "last": 1, "epoch": 2}
    found.sort(key=lambda c: (order.get(c["kind"], 3), -(c["epoch"] or 0)))
    return found


def forget_checkpoints(model_id: str, names: list[str] | tuple[str, ...], db: Database | None = None) -> int:
    """Remove the rows of a model's checkpoints by file name (after their files were deleted).

    Returns:
        How many rows were removed.
    """
    wanted = set(names)
    with _use(db) as db:
        rows = _rows(db, "SELECT path FROM checkpoints WHERE model_id = ?", [model_id])
        gone = [r["path"] for r in rows if Path(r["path"]).name in wanted]
        with db.atomic():
            for path in gone:
                db.execute("DELETE FROM checkpoints WHERE model_id = ? AND path = ?", [model_id, path])
    return len(gone)


def all_checkpoints(db: Database | None = None) -> list[dict]:
    """The checkpoints of every completed model (newest model first): the global inference list."""
    with _use(db) as db:
        result = []
        for model in list_models(status="completed", db=db):
            for ckpt in model_checkpoints(model["id"], db=db):
                ckpt["best_val_dice"] = model["best_val_dice"]
                result.append(ckpt)
        return result


# --------------------------------------------------------------------------- inference jobs

def create_inference_job(checkpoint_path: str, input_path: str, postprocess: dict, model_id: str | None = None,
                         db: Database | None = None, scale: str = "auto") -> str:
    """Register a batch inference job (status ``queued``) and return its id; ``scale`` is how its
    photographs are resized for the model (``"auto"``, ``"none"`` or a factor, as text)."""
    job_id = new_id()
    record = {"id": job_id, "model_id": model_id, "checkpoint_path": str(checkpoint_path), "scale": str(scale),
              "input_path": str(input_path), "postprocess": json.dumps(postprocess or {}, sort_keys=True),
              "status": "queued", "progress": 0.0, "n_total": 0, "n_done": 0, "n_failed": 0,
              "output_dir": str(paths.data_home() / "inference" / job_id), "created_at": utc_now()}
    with _use(db) as db:
        if model_id is not None and model_id != BASELINE:
            get_model(model_id, db=db)
        db["inference_jobs"].insert(record)
    return job_id


def get_inference_job(job_id: str, db: Database | None = None) -> dict:
    """The job's row; an unknown id raises :class:`UnknownJobError`."""
    with _use(db) as db:
        rows = _rows(db, "SELECT * FROM inference_jobs WHERE id = ?", [job_id])
    if not rows:
        raise UnknownJobError(f"There is no inference job with id {job_id!r}; check the id in the job list.")
    return rows[0]


def update_inference_job(job_id: str, db: Database | None = None, **fields: Any) -> None:
    """Set fields of an inference job's row."""
    if "status" in fields and fields["status"] not in JOB_STATUSES:
        raise UserError(f"job status {fields['status']!r} is not one of {', '.join(JOB_STATUSES)}.")
    with _use(db) as db:
        get_inference_job(job_id, db=db)
        if fields:
            _check_fields("inference_jobs", fields, db)
            db["inference_jobs"].update(job_id, _encode(fields))


def request_cancel(job_id: str, db: Database | None = None) -> str:
    """Cancel a batch inference job: its status becomes ``cancelled`` at once.

    Returns ``"cancelled"`` for a job that had not started (it never will; ``finished_at`` is set now) or
    ``"cancelling"`` for a running one: the worker reads the status before each image, stops there, keeps
    the images written so far and sets ``finished_at``. Raises UnknownJobError for an unknown id and
    WrongStateError for a job that has already ended.
    """
    with _use(db) as db, immediate(db):
        row = get_inference_job(job_id, db=db)
        if row["status"] == "queued":
            db.execute("UPDATE inference_jobs SET status = 'cancelled', finished_at = ?, "
                       "error = 'cancelled by the user before it started' WHERE id = ?", [utc_now(), job_id])
            return "cancelled"
        if row["status"] == "running":
            db.execute("UPDATE inference_jobs SET status = 'cancelled' WHERE id = ?", [job_id])
            return "cancelling"
        raise WrongStateError(f"Inference job {job_id!r} has already ended ({row['status']}); there is nothing "
                              "to cancel.")


def fail_stale_job(job_id: str, error: str, stale_before: str | None, db: Database | None = None) -> bool:
    """:func:`fail_stale_model` for a running inference job: one conditional UPDATE; True when it changed."""
    sql = "UPDATE inference_jobs SET status = 'failed', finished_at = ?, error = ? WHERE id = ? AND status = 'running'"
    params: list = [utc_now(), error, job_id]
    if stale_before is not None:
        sql, params = sql + " AND (heartbeat_at IS NULL OR heartbeat_at < ?)", params + [stale_before]
    with _use(db) as db:
        return _write(db, sql, params) > 0


# A job still read or written by a worker: queued, running, or cancelled while running (the worker sets
# finished_at when it has stopped, before its next image).
_JOB_IN_USE = "(status IN ('queued', 'running') OR (status = 'cancelled' AND finished_at IS NULL))"


def active_inference_jobs(db: Database | None = None) -> list[dict]:
    """Jobs a worker may still read or write: queued, running, or cancelled and not yet stopped."""
    with _use(db) as db:
        return _rows(db, f"SELECT * FROM inference_jobs WHERE {_JOB_IN_USE} ORDER BY created_at DESC")


def forget_inference_job(job_id: str, db: Database | None = None) -> None:
    """Remove a finished inference job's row (``engine.housekeeping.delete_inference_results`` removes its
    output folder too).

    Raises:
        UnknownJobError: no such job.
        WrongStateError: the job is queued or running (cancel it and wait until it has stopped).
    """
    with _use(db) as db:
        with immediate(db):
            row = get_inference_job(job_id, db=db)
            if db.execute(f"DELETE FROM inference_jobs WHERE id = ? AND NOT {_JOB_IN_USE}", [job_id]).rowcount == 0:
                raise WrongStateError(f"Inference job {job_id!r} is {row['status']} and still writing its results: "
                                      "cancel it and wait until it has stopped before deleting it.")


def inference_cancelled(job_id: str, db: Database | None = None) -> bool:
    """Whether the job has been cancelled (read by the worker before each image)."""
    with _use(db) as db:
        row = db.execute("SELECT status FROM inference_jobs WHERE id = ?", [job_id]).fetchone()
    return row is not None and row[0] == "cancelled"


def list_inference_jobs(model_id: str | None = None, limit: int | None = None, db: Database | None = None,
                        status: str | None = None) -> list[dict]:
    """Inference jobs, newest first; only one model's with ``model_id``, only one status with ``status``."""
    where, params = [], []
    if model_id is not None:
        where, params = ["model_id = ?"], [model_id]
    if status is not None:
        where, params = where + ["status = ?"], params + [status]
    sql = "SELECT * FROM inference_jobs" + (" WHERE " + " AND ".join(where) if where else "")
    sql += " ORDER BY created_at DESC, id DESC"
    if limit:
        sql, params = sql + " LIMIT ?", params + [int(limit)]
    with _use(db) as db:
        return _rows(db, sql, params)


# --------------------------------------------------------------------------- presets

def save_preset(model_id: str, name: str, config: dict, db: Database | None = None) -> None:
    """Save (or overwrite) a named post-processing preset for a model (or for ``"baseline"``)."""
    if not isinstance(name, str) or not name.strip():
        raise UserError("A preset needs a name: give a short non-empty text such as 'thin vessels'.")
    if not isinstance(config, dict):
        raise UserError(f"A preset's config must be a dict of post-processing settings, not {type(config).__name__}.")
    now = utc_now()
    with _use(db) as db:
        if model_id != BASELINE:
            get_model(model_id, db=db)
        _write(db, "INSERT INTO presets (model_id, name, config, created_at, updated_at) VALUES (?, ?, ?, ?, ?) "
                   "ON CONFLICT (model_id, name) DO UPDATE SET config = excluded.config, "
                   "updated_at = excluded.updated_at",
               [model_id, name.strip(), json.dumps(config, sort_keys=True), now, now])


def list_presets(model_id: str, db: Database | None = None) -> list[dict]:
    """A model's presets, by name; each ``config`` is a dict."""
    with _use(db) as db:
        rows = _rows(db, "SELECT * FROM presets WHERE model_id = ? ORDER BY name", [model_id])
    for row in rows:
        row["config"] = json.loads(row["config"])
    return rows


# --------------------------------------------------------------------------- what the worker writes while it runs

def model_status(model_id: str, db: Database | None = None) -> str | None:
    """The run's status alone (cheap enough to poll every few batches); None when the row is gone."""
    with _use(db) as db:
        row = db.execute("SELECT status FROM models WHERE id = ?", [model_id]).fetchone()
    return row[0] if row else None


def forget_epochs_from(model_id: str, epoch: int, db: Database | None = None) -> None:
    """Delete the run's epoch rows from ``epoch`` on: a continued run logs them again from its checkpoint."""
    with _use(db) as db:
        _write(db, "DELETE FROM epochs WHERE model_id = ? AND epoch >= ?", [model_id, epoch])


def latest_epoch(model_id: str, db: Database | None = None) -> dict | None:
    """The run's newest epoch row (epoch, train_loss, val_loss, val_dice, lr, seconds), or None."""
    with _use(db) as db:
        rows = _rows(db, "SELECT epoch, train_loss, val_loss, val_dice, lr, seconds FROM epochs "
                         "WHERE model_id = ? ORDER BY epoch DESC LIMIT 1", [model_id])
    return rows[0] if rows else None


def beat_active(model_ids: list[str], job_ids: list[str], db: Database | None = None) -> None:
    """Stamp the heartbeat of the runs (those still running or stopping) and jobs a worker is working on."""
    now = utc_now()
    with _use(db) as db, db.atomic():
        for model_id in model_ids:
            db.execute("UPDATE models SET heartbeat_at = ? WHERE id = ? AND status IN ('running', 'stopping')",
                       [now, model_id])
        for job_id in job_ids:
            db.execute("UPDATE inference_jobs SET heartbeat_at = ? WHERE id = ?", [now, job_id])


def beat_queued(db: Database | None = None) -> None:
    """Stamp the heartbeat of every queued run with a task: a starting worker keeps their place in line."""
    with _use(db) as db:
        _write(db, "UPDATE models SET heartbeat_at = ? WHERE status = 'queued' AND task_id IS NOT NULL", [utc_now()])


# --------------------------------------------------------------------------- worker heartbeat

WORKER_FRESH_S = 30.0  # a worker whose heartbeat is older than this is not running (it beats every few seconds)


def beat_worker(worker_id: str | None = None, db: Database | None = None, *, host: str | None = None,
                pid: int | None = None, device: str | None = None, queues: str | None = None,
                job: str | None = None, kind: str = "local") -> None:
    """Record that a worker process is alive (called every few seconds by each worker).

    Args:
        worker_id: ``host:pid:token`` (default: this process).
        host, pid: where it runs (default: this machine and process); a remote worker names its own.
        device: what it trains on, in words ("cuda: NVIDIA H100", "cpu: AMD EPYC 7B13").
        queues: the queue names it takes jobs from, comma-separated.
        job: what it works on now ("training <model id>", "inference <job id>"), or None when idle.
        kind: ``local`` (writes this registry itself) or ``remote`` (reports over the HTTP API).
    """
    worker_id = worker_id or this_worker_id()
    now = utc_now()
    with _use(db) as db:
        _write(db, "INSERT INTO workers (id, host, pid, started_at, beat_at, device, queues, job, kind) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET beat_at = excluded.beat_at, "
                   "device = coalesce(excluded.device, device), queues = coalesce(excluded.queues, queues), "
                   "job = excluded.job, kind = excluded.kind",
               [worker_id, host or socket.gethostname(), pid if pid is not None else os.getpid(), now, now, device,
                queues, job, kind])


def worker_heartbeat(db: Database | None = None) -> datetime | None:
    """When any worker last reported, or None if no worker ever ran on this data home."""
    with _use(db) as db:
        value = db.execute("SELECT max(beat_at) FROM workers").fetchone()[0]
    return parse_time(value)


def list_workers(max_age_s: float | None = None, db: Database | None = None) -> list[dict]:
    """The workers that ever reported, newest heartbeat first; with ``max_age_s`` only those that reported
    within that many seconds. Each row has ``age_s`` (seconds since its last heartbeat)."""
    with _use(db) as db:
        rows = _rows(db, "SELECT * FROM workers ORDER BY beat_at DESC")
    for row in rows:
        row["age_s"] = age_seconds(row["beat_at"])
    return [r for r in rows if max_age_s is None or (r["age_s"] is not None and r["age_s"] <= max_age_s)]


def forget_workers(older_than_s: float, db: Database | None = None) -> int:
    """Delete the rows of workers silent for longer than ``older_than_s``; returns how many went."""
    cutoff = datetime.fromtimestamp(datetime.now(timezone.utc).timestamp() - older_than_s, timezone.utc)
    with _use(db) as db:
        return _write(db, "DELETE FROM workers WHERE beat_at < ?", [cutoff.isoformat(timespec="milliseconds")])


def claim_inference_job(job_id: str, worker: str, db: Database | None = None) -> bool:
    """Move a queued batch job to ``running`` for ``worker`` in one conditional UPDATE; False when it is no
    longer queued (cancelled, or claimed by another worker)."""
    now = utc_now()
    with _use(db) as db:
        return _write(db, "UPDATE inference_jobs SET status = 'running', started_at = ?, heartbeat_at = ?, "
                          "worker = ? WHERE id = ? AND status = 'queued'", [now, now, worker, job_id]) > 0


def queued_tasks(db: Database | None = None) -> list[dict]:
    """Every queued run and batch job that has a task in a queue: ``{kind: 'model'|'job', id, task_id, queue}``."""
    with _use(db) as db:
        return (_rows(db, "SELECT 'model' AS kind, id, task_id, queue FROM models "
                          "WHERE status = 'queued' AND task_id IS NOT NULL")
                + _rows(db, "SELECT 'job' AS kind, id, task_id, queue FROM inference_jobs "
                            "WHERE status = 'queued' AND task_id IS NOT NULL"))


def replace_task_id(kind: str, key: str, old_task_id: str, new_task_id: str, db: Database | None = None) -> bool:
    """Give a queued run (``kind`` "model") or batch job ("job") a new task id in place of ``old_task_id``
    (its queue entry was lost and it is queued again); False when the row moved on meanwhile."""
    table = {"model": "models", "job": "inference_jobs"}[kind]
    with _use(db) as db:
        return _write(db, f"UPDATE {table} SET task_id = ? WHERE id = ? AND status = 'queued' AND task_id = ?",
                      [new_task_id, key, old_task_id]) > 0
