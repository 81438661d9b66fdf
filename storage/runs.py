"""The runs: the ``models`` table, one row per training run (its config, data sets, plan, status and progress).

Registering a run, reading and changing its row, forgetting it, and the state changes the run lifecycle
makes under the registry's write lock: a slot to train (:func:`claim_training_slot`), a stop
(:func:`request_stop`), an abandoned run failed (:func:`fail_stale_model`). A data set leaves use here too
(:func:`retire_dataset`), under the same lock that registers runs on it. JSON columns (``config``,
``recommended_postprocess``, ``plan``, ``settings_from``, ``datasets``) are stored and returned as JSON text.
"""
from __future__ import annotations

import json
import os
import secrets
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from storage import paths
from storage.connection import (check_fields, encode_json, execute_write, fetch_rows, immediate, new_id, using,
                                utc_now)
from storage.errors import UserError, WrongStateError
from storage.vocabulary import ACTIVE_STATUSES, STATUSES, STOP_REASONS, TRAINING_STATUSES


class UnknownModelError(UserError):
    """No model with the given id exists."""


class DuplicateSubmissionError(UserError):
    """A run was already created with this submission key (a double click on Start); ``model_id`` is that run."""

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        super().__init__(f"This form was submitted already and queued model {model_id}; it was not queued twice. "
                         "Change a setting or reload the page to queue another run.")


# --------------------------------------------------------------------------- a run's row

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
    with using(db) as db:
        with immediate(db):
            if submission_key is not None:
                found = db.execute("SELECT id FROM models WHERE submission_key = ?", [submission_key]).fetchone()
                if found:
                    raise DuplicateSubmissionError(found[0])
            db["models"].insert(record)  # a savepoint inside this transaction
    return model_id


def get_model(model_id: str, db: Database | None = None) -> dict:
    """The model's row as a dict; an unknown id raises :class:`UnknownModelError`."""
    with using(db) as db:
        rows = fetch_rows(db, "SELECT * FROM models WHERE id = ?", [model_id])
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
    with using(db) as db:
        if not wanted:
            return fetch_rows(db, "SELECT * FROM models ORDER BY created_at DESC, id DESC")
        marks = ", ".join("?" for _ in wanted)
        return fetch_rows(db, f"SELECT * FROM models WHERE status IN ({marks}) ORDER BY created_at DESC, id DESC",
                          list(wanted))


def update_model(model_id: str, db: Database | None = None, only_if_status: tuple[str, ...] | None = None,
                 **fields: Any) -> bool:
    """Set fields of a model's row. With ``only_if_status``, change it only while its status is one of
    those (a compare-and-set) and return whether it changed."""
    if "status" in fields and fields["status"] not in STATUSES:
        raise UserError(f"status {fields['status']!r} is not one of {', '.join(STATUSES)}.")
    if fields.get("stop_reason") not in (None, *STOP_REASONS):
        raise UserError(f"stop_reason {fields['stop_reason']!r} is not one of {', '.join(STOP_REASONS)}.")
    with using(db) as db:
        get_model(model_id, db=db)
        if not fields:
            return True
        check_fields("models", fields, db)
        fields = encode_json(fields)
        if not only_if_status:
            db["models"].update(model_id, fields)
            return True
        # a compare-and-set, which Table.update cannot express
        sets = ", ".join(f"[{k}] = ?" for k in fields)
        sql = f"UPDATE models SET {sets} WHERE id = ? AND status IN ({', '.join('?' for _ in only_if_status)})"
        return execute_write(db, sql, [*fields.values(), model_id, *only_if_status]) > 0


def forget_model(model_id: str, db: Database | None = None) -> None:
    """Remove a finished model's rows (epochs, checkpoints, presets); ``engine.housekeeping.delete_model``
    removes its folder of checkpoints too.

    Raises:
        UnknownModelError: no such model.
        UserError: the run is queued, running or stopping (stop it and wait until it has ended).
    """
    with using(db) as db:
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
    with using(db) as db:
        with immediate(db):
            # any of a run's data sets (``datasets``; ``dataset`` for a row written by an older version)
            active = ", ".join("?" * len(ACTIVE_STATUSES))
            users = fetch_rows(db, f"SELECT name, status FROM models WHERE status IN ({active}) "
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


# --------------------------------------------------------------------------- the run lifecycle's state changes

def claim_training_slot(model_id: str, max_running: int, fresh_s: float, worker: str,
                        db: Database | None = None) -> bool | None:
    """Try to move a queued run to ``running`` without exceeding ``max_running`` trainings at once.

    Runs are served first come, first served: a queued run waits while an earlier-queued run whose
    task polled within ``fresh_s`` seconds is still waiting. Returns True when the slot was taken,
    False when the run must wait (its heartbeat is bumped), None when it is no longer queued.
    """
    with using(db) as db, immediate(db):
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


def model_status(model_id: str, db: Database | None = None) -> str | None:
    """The run's status alone (cheap enough to poll every few batches); None when the row is gone."""
    with using(db) as db:
        row = db.execute("SELECT status FROM models WHERE id = ?", [model_id]).fetchone()
    return row[0] if row else None


def request_stop(model_id: str, db: Database | None = None) -> str:
    """Ask a run to stop. Returns ``"cancelled"`` for a run that had not started (it is now failed with
    stop_reason user_stop) or ``"stopping"`` for a running one; a finished run raises UserError."""
    with using(db) as db, immediate(db):
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
    with using(db) as db:
        return execute_write(db, sql, params) > 0
