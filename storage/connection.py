"""Opening the run registry, and what every table module shares.

The registry is one SQLite file (``paths.db_path()``) read by the dashboard and written by the worker.
Every connection is in WAL mode with a busy timeout, so a page reading while the worker writes waits a
moment instead of failing with "database is locked". The schema lives in ``storage/migrations.py`` and
is brought up to date whenever a connection opens.

Here: :func:`connect`, :func:`migrate`, :func:`immediate` (a transaction that takes the write lock at
once), :func:`using` (a caller's connection or one of our own), the row helpers the table modules
share (:func:`fetch_rows`, :func:`execute_write`, :func:`encode_json`, :func:`check_fields`) and how the
registry writes times and ids (:func:`utc_now`, :func:`parse_time`, :func:`age_seconds`, :func:`new_id`).
Timestamps are ISO-8601 UTC strings (``2025-01-31T12:00:00.123+00:00``).
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from sqlite_utils import Database

from storage import paths
from storage.errors import UserError
from storage.migrations import MIGRATIONS

BUSY_TIMEOUT_S = 30.0  # how long a connection waits for another writer before giving up
# Columns stored as JSON text: a dict or list written to one of them is encoded by ``encode_json``.
JSON_FIELDS = {"config", "recommended_postprocess", "postprocess", "plan", "settings_from", "datasets"}


# --------------------------------------------------------------------------- times and ids

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


# --------------------------------------------------------------------------- the connection

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
def using(db: Database | None) -> Iterator[Database]:
    """``db``, or a connection of our own closed afterwards; read-only files give a StorageError sentence.

    Every query function of the table modules takes an optional ``db=`` (a connection from :func:`connect`)
    and reads it through this; without one, it opens ``paths.db_path()`` of the current ``ML_MANAGER_HOME``
    and closes it again.
    """
    own = connect() if db is None else None
    try:
        yield db if db is not None else own
    except sqlite3.DatabaseError as exc:
        raise _storage_error(exc) or exc
    finally:
        if own is not None:
            own.close()


# --------------------------------------------------------------------------- row helpers of the table modules

def execute_write(db: Database, sql: str, params: list | tuple = ()) -> int:
    """Run one writing statement in its own transaction; returns how many rows it changed."""
    with db.atomic():
        return db.execute(sql, params).rowcount


def fetch_rows(db: Database, sql: str, params: list | tuple = ()) -> list[dict]:
    """The rows a query returns, each a dict of column -> value."""
    cursor = db.execute(sql, params)
    names = [c[0] for c in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def encode_json(fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` with each dict or list bound for a JSON column (``JSON_FIELDS``) written as JSON text."""
    return {k: (json.dumps(v, sort_keys=True) if k in JSON_FIELDS and isinstance(v, (dict, list)) else v)
            for k, v in fields.items()}


def check_fields(table: str, fields: dict[str, Any], db: Database) -> None:
    """Raise UserError naming the fields that are no column of ``table``."""
    columns = set(db[table].columns_dict)
    unknown = sorted(set(fields) - columns)
    if unknown:
        raise UserError(f"{table} has no field(s) {', '.join(unknown)}; known fields: {', '.join(sorted(columns))}.")
