"""The data home: one folder that holds every database, checkpoint and output.

Layout (``ML_MANAGER_HOME``, default ``./data``)::

    ml_manager.db             run registry (sqlite-utils)
    queue.db                  Huey's queue (SQLite)
    models/<model_id>/checkpoints/best.pt, last.pt, epoch_XXX.pt
    inference/<job_id>/       batch inference outputs
    datasets/<name>/          registered / uploaded / synthetic data sets
    uploads/                  uploaded zips, each under its own name in a folder of a generated name
    logs/                     worker and dashboard logs
"""
from __future__ import annotations

import contextlib
import os
import re
import secrets
from pathlib import Path
from typing import BinaryIO, Iterator
from storage.errors import UserError

HOME_ENV = "ML_MANAGER_HOME"
_SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class StorageError(UserError):
    """The data home or its database cannot be used; the message says what to change."""


def not_writable(path: str | os.PathLike, exc: BaseException | None = None) -> StorageError:
    """The sentence for a data home (or a file in it) that cannot be written."""
    why = f" ({exc.strerror or exc})" if isinstance(exc, OSError) else ""
    return StorageError(
        f"The data home {Path(path)} cannot be written{why}: make it writable (for example chmod u+w), "
        f"or set {HOME_ENV} to a folder you can write to."
    )


def data_home_path() -> Path:
    """Where the data home is (``ML_MANAGER_HOME``, default ``./data``), without creating it."""
    return Path(os.environ.get(HOME_ENV) or "data").expanduser().resolve()


def data_home() -> Path:
    """The data home, created if missing. Read from the environment on every call."""
    home = data_home_path()
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise not_writable(home, exc) from None
    return home


def _subdir(*parts: str) -> Path:
    home = data_home()
    path = home.joinpath(*parts)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise not_writable(home, exc) from None
    return path


def check_id(value: str, what: str = "id") -> str:
    """Refuse ids that could escape their folder (``..``, slashes, empty)."""
    if not isinstance(value, str) or not _SAFE_ID.match(value):
        raise UserError(f"{what} {value!r} is not valid: use letters, digits, '-' or '_' only.")
    return value


def db_path() -> Path:
    return data_home() / "ml_manager.db"


def queue_path() -> Path:
    """Huey's queue file; the data home is checked to be writable first (SQLite would only say
    "unable to open database file", from inside Huey)."""
    home = data_home()
    check_writable(home)
    return home / "queue.db"


_WRITABLE: set[str] = set()  # folders found writable in this process (checked once each)


def check_writable(folder: str | os.PathLike) -> Path:
    """``folder`` if a file can be created in it, else StorageError; a success is remembered."""
    folder = Path(folder)
    if str(folder) in _WRITABLE:
        return folder
    probe = folder / f".write-test.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise not_writable(folder, exc) from None
    _WRITABLE.add(str(folder))
    return folder


def models_dir() -> Path:
    return _subdir("models")


def checkpoints_dir(model_id: str) -> Path:
    return _subdir("models", check_id(model_id, "model id"), "checkpoints")


def inference_dir(job_id: str) -> Path:
    return _subdir("inference", check_id(job_id, "job id"))


def datasets_dir() -> Path:
    return _subdir("datasets")


def uploads_dir() -> Path:
    return _subdir("uploads")


def logs_dir() -> Path:
    return _subdir("logs")


def is_inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """True when ``path`` resolves to ``folder`` or somewhere below it."""
    try:
        Path(path).resolve().relative_to(Path(folder).resolve())
    except ValueError:
        return False
    return True


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: a temp file in the same folder, then os.replace."""
    with atomic_writer(path) as fh:
        fh.write(data)
    return Path(path)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file to write ``path`` through, piece by piece, atomically: the pieces go to a hidden temp file
    in the same folder, which replaces ``path`` only when the block ends without an error (else it is removed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
