"""Housekeeping of the data home: disk use, retention of checkpoints, old inference results, stored data
sets and uploads, and online backups.

Retention: every model keeps ``best.pt`` and ``last.pt``; of its ``epoch_XXX.pt`` files only the newest
``keep_epoch_checkpoints()`` stay (``ML_MANAGER_KEEP_EPOCH_CHECKPOINTS``, default 3). The worker prunes after
each epoch checkpoint it records; ``prune`` does it on demand (``python -m engine prune``, ``POST /api/v1/prune``,
the Models and Overview pages).

Nothing a worker still writes or reads is removed: the ``best.pt``/``last.pt`` of a queued, running or stopping
run, any checkpoint a queued or running inference job reads, the output folder of such a job, and data sets or
uploads that such a run or job reads. Each removal deletes the files and the registry rows that name them.

A removal is described by a :class:`Removal`; every deleting function takes ``dry_run`` to plan without deleting.
"""
from __future__ import annotations

import os
import shutil
import sqlite3
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from engine.errors import UserError
from storage import db as store
from storage.db import checkpoint_file
from storage import paths

KEEP_ENV = "ML_MANAGER_KEEP_EPOCH_CHECKPOINTS"
DEFAULT_KEEP = 3  # epoch_XXX.pt files kept per model, besides best.pt and last.pt
ALWAYS_KEPT = ("best.pt", "last.pt")
DISK_KINDS = ("checkpoints", "inference results", "data sets", "uploads", "databases")


class HousekeepingError(UserError):
    """A removal that is refused (the file is in use, is the only best checkpoint, or does not exist);
    the message says why and what to do."""


@dataclass(frozen=True)
class Removal:
    """One thing removed (or, in a dry run, to be removed).

    Attributes:
        kind: ``"checkpoint"``, ``"inference results"``, ``"data set"`` or ``"upload"``.
        owner: the model id, job id, or the entry's name.
        path: the file or folder.
        size_bytes: its size on disk before removal.
    """

    kind: str
    owner: str
    path: str
    size_bytes: int

    def to_dict(self) -> dict:
        return asdict(self)


def keep_epoch_checkpoints() -> int:
    """How many ``epoch_XXX.pt`` files each model keeps (``ML_MANAGER_KEEP_EPOCH_CHECKPOINTS``, default 3).

    Raises:
        HousekeepingError: the variable is not a whole number of 0 or more.
    """
    text = os.environ.get(KEEP_ENV, "").strip()
    if not text:
        return DEFAULT_KEEP
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise HousekeepingError(f"{KEEP_ENV}={text!r} is not valid: set it to a whole number of 0 or more "
                                f"(how many epoch_XXX.pt files each model keeps; default {DEFAULT_KEEP}).")
    return value


def check_keep(keep: object) -> int:
    """``keep`` as a count of epoch checkpoints to keep; HousekeepingError for anything but an int >= 0."""
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
        raise HousekeepingError(f"keep must be a whole number of 0 or more (epoch_XXX.pt files kept per model), "
                                f"not {keep!r}.")
    return keep


def size_of(path: str | os.PathLike) -> int:
    """Bytes used by a file, or by every file below a folder (links are not followed); 0 when missing."""
    path = Path(path)
    try:
        if path.is_symlink() or path.is_file():
            return path.lstat().st_size
    except OSError:
        return 0
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue  # removed while we counted
    return total


def disk_use() -> dict[str, int]:
    """Bytes used in the data home, by kind: ``DISK_KINDS`` (checkpoints, inference results, data sets,
    uploads, databases with their WAL files)."""
    home = paths.data_home()
    dbs = sum(size_of(p) for p in home.glob("*.db*"))
    return {"checkpoints": size_of(home / "models"), "inference results": size_of(home / "inference"),
            "data sets": size_of(home / "datasets"), "uploads": size_of(home / "uploads"), "databases": dbs}


def _in_use() -> tuple[set[str], set[str], list[Path]]:
    """(active model ids, checkpoint files read by active jobs, data paths read or written by active work)."""
    models = store.list_models(status=store.ACTIVE_STATUSES)
    jobs = store.active_inference_jobs()
    checkpoints = {str(file.resolve()) for j in jobs if (file := checkpoint_file(j["checkpoint_path"])) is not None}
    data = [Path(folder) for m in models for folder in store.model_datasets(m)] + [Path(j["input_path"]) for j in jobs]
    return {m["id"] for m in models}, checkpoints, data


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


# --------------------------------------------------------------------------- checkpoints

def checkpoint_prune_plan(model_id: str, keep: int | None = None) -> list[Removal]:
    """The ``epoch_XXX.pt`` files of a model beyond the newest ``keep`` (default ``keep_epoch_checkpoints()``),
    oldest first, leaving out any file an active inference job reads.

    Raises:
        UnknownModelError: no such model.
    """
    keep = keep_epoch_checkpoints() if keep is None else check_keep(keep)
    ckpts = store.model_checkpoints(model_id)
    _, read_by_jobs, _ = _in_use()
    epochs = sorted((c for c in ckpts if c["name"].startswith("epoch_") and c["name"] not in ALWAYS_KEPT),
                    key=lambda c: (c["epoch"] or 0, c["name"]))
    surplus = epochs[:max(0, len(epochs) - keep)]
    return [Removal("checkpoint", model_id, c["path"], c["size_bytes"]) for c in surplus
            if c["path"] not in read_by_jobs]


def prune_checkpoints(model_id: str, keep: int | None = None, dry_run: bool = False) -> list[Removal]:
    """Delete a model's ``epoch_XXX.pt`` files beyond the newest ``keep`` and their rows (see the plan).

    Returns:
        What was removed (with ``dry_run``, what would be; nothing is changed).
    """
    plan = checkpoint_prune_plan(model_id, keep)
    if not dry_run and plan:
        # Rows first: a crash in between leaves a file without a row, which is still listed (and pruned next
        # time), never a row that names a missing file.
        store.forget_checkpoints(model_id, [Path(item.path).name for item in plan])
        for item in plan:
            Path(item.path).unlink(missing_ok=True)
    return plan


def delete_checkpoint(model_id: str, name: str, dry_run: bool = False) -> Removal:
    """Delete one checkpoint file of a model and its row.

    Args:
        model_id: the model.
        name: the file name as listed by ``storage.db.model_checkpoints`` (``epoch_004.pt``, ``last.pt``).
    Returns:
        What was removed.
    Raises:
        UnknownModelError: no such model.
        HousekeepingError: the file is not the model's, is ``best.pt`` (the model's only best), is the
            ``last.pt`` of a run that is still active, or is read by a queued or running inference job.
    """
    found = [c for c in store.model_checkpoints(model_id) if c["name"] == name]
    if not found:
        raise HousekeepingError(f"Model {model_id!r} has no checkpoint named {name!r}: pick one from its list "
                                "of checkpoints.")
    ckpt = found[0]
    active, read_by_jobs, _ = _in_use()
    if name == "best.pt":
        raise HousekeepingError("best.pt is this model's only best checkpoint and is always kept: delete the "
                                "whole model instead if it is no longer wanted.")
    if name == "last.pt" and model_id in active:
        raise HousekeepingError(f"last.pt is being written by the model's run, which is still active: stop it and "
                                "wait until it has ended before deleting last.pt.")
    if ckpt["path"] in read_by_jobs:
        raise HousekeepingError(f"{name} is read by a batch inference job that has not finished: wait for it "
                                "(or cancel it) before deleting the checkpoint.")
    removal = Removal("checkpoint", model_id, ckpt["path"], ckpt["size_bytes"])
    if not dry_run:
        store.forget_checkpoints(model_id, [name])  # the row first, as in prune_checkpoints
        Path(ckpt["path"]).unlink(missing_ok=True)
    return removal


# --------------------------------------------------------------------------- inference results

def inference_results() -> list[dict]:
    """Every inference job with the disk use of its output folder, newest first.

    Returns:
        Dicts with ``id, model_id, status, created_at, finished_at, size_bytes, in_use`` (bool: a worker
        still writes it).
    """
    home = paths.data_home() / "inference"
    active = {j["id"] for j in store.active_inference_jobs()}
    return [{"id": j["id"], "model_id": j["model_id"], "status": j["status"], "created_at": j["created_at"],
             "finished_at": j["finished_at"], "size_bytes": size_of(home / j["id"]), "in_use": j["id"] in active}
            for j in store.list_inference_jobs()]


def delete_inference_results(job_id: str, dry_run: bool = False) -> Removal:
    """Delete one finished inference job: its row and its output folder.

    Raises:
        UnknownJobError: no such job.
        WrongStateError: the job is queued or still running.
    """
    store.get_inference_job(job_id)
    # The folder in this data home (a restored backup's rows still name the old home's folders).
    folder = paths.data_home() / "inference" / paths.check_id(job_id, "job id")
    removal = Removal("inference results", job_id, str(folder), size_of(folder))
    if not dry_run:
        store.forget_inference_job(job_id)
        shutil.rmtree(folder, ignore_errors=True)
    elif job_id in {j["id"] for j in store.active_inference_jobs()}:
        raise store.WrongStateError(f"Inference job {job_id!r} is still writing its results: cancel it and wait "
                                    "until it has stopped before deleting it.")
    return removal


def delete_model(model_id: str) -> None:
    """Delete a finished model: its rows (epochs, checkpoints, presets), then its folder of checkpoints.

    Raises:
        UnknownModelError: no such model.
        UserError: the run is queued, running or stopping (stop it and wait until it has ended).
    """
    store.forget_model(model_id)
    models = paths.data_home() / "models"
    folder = models / paths.check_id(model_id, "model id")
    if folder.exists() and paths.is_inside(folder, models):
        shutil.rmtree(folder, ignore_errors=True)


def delete_dataset(name: str) -> None:
    """Delete the registered data set ``datasets_dir()/name`` and all its files: the registry takes it out of
    use under its write lock (``storage.db.retire_dataset``), then its files are removed.

    Raises:
        UserError: ``name`` is no registered data set.
        WrongStateError: a queued, running or stopping run trains on it (the message names the runs).
    """
    shutil.rmtree(store.retire_dataset(name), ignore_errors=True)


def check_days(days: object) -> float:
    """``days`` as a non-negative number of days; HousekeepingError otherwise."""
    if isinstance(days, bool) or not isinstance(days, (int, float)) or not days >= 0 or days == float("inf"):
        raise HousekeepingError(f"The age limit must be a number of days of 0 or more, such as 30, not {days!r}.")
    return float(days)


def delete_old_inference_results(days: float, dry_run: bool = False) -> list[Removal]:
    """Delete every finished inference job created more than ``days`` days ago (jobs in use are kept)."""
    cutoff = (datetime.now(timezone.utc) - timedelta(days=check_days(days))).isoformat(timespec="milliseconds")
    old = [j for j in inference_results() if not j["in_use"] and j["created_at"] < cutoff]
    removed = []
    for job in old:
        try:
            removed.append(delete_inference_results(job["id"], dry_run=dry_run))
        except (store.WrongStateError, store.UnknownJobError):
            continue  # restarted or deleted meanwhile
    return removed


# --------------------------------------------------------------------------- data sets and uploads

def stored_data() -> list[dict]:
    """The data sets (``datasets/``) and uploaded files (``uploads/``) in the data home, largest first.

    Returns:
        Dicts with ``kind`` (``"data set"`` | ``"upload"``), ``name``, ``path``, ``size_bytes`` and ``in_use``
        (a sentence naming the run or job that reads it, or None).
    """
    home = paths.data_home()
    _, _, reads = _in_use()
    entries = []
    for kind, folder in (("data set", home / "datasets"), ("upload", home / "uploads")):
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            if entry.name.startswith("."):
                continue  # an extraction or write in progress
            user = next((str(r) for r in reads if paths.is_inside(r, entry) or paths.is_inside(entry, r)), None)
            name = entry.name
            if kind == "upload" and entry.is_dir():  # uploads/<id>/<the user's file name>: show the user's name
                inside = [p.name for p in entry.iterdir() if not p.name.startswith(".")]
                name = inside[0] if len(inside) == 1 else name
            entries.append({"kind": kind, "name": name, "path": str(entry), "size_bytes": size_of(entry),
                            "in_use": f"read by an active training or inference job ({user})" if user else None})
    return sorted(entries, key=lambda e: -e["size_bytes"])


def delete_stored_data(path: str | os.PathLike, dry_run: bool = False) -> Removal:
    """Delete one data set folder or uploaded file listed by :func:`stored_data`.

    Raises:
        HousekeepingError: the path is not a data set or upload of this data home, or active work reads it.
    """
    wanted = str(Path(path))
    entry = next((e for e in stored_data() if e["path"] == wanted), None)
    if entry is None:
        raise HousekeepingError(f"{wanted} is not a data set or upload of the data home {paths.data_home()}: "
                                "pick one from the list.")
    if entry["in_use"]:
        raise HousekeepingError(f"{entry['name']} is {entry['in_use']}: wait until that has ended.")
    removal = Removal(entry["kind"], entry["name"], entry["path"], entry["size_bytes"])
    if not dry_run:
        _remove(Path(entry["path"]))
    return removal


# --------------------------------------------------------------------------- one call for the CLI and the API

def prune(model_id: str | None = None, keep: int | None = None, inference_older_than: float | None = None,
          dry_run: bool = False) -> list[Removal]:
    """Apply retention: epoch checkpoints of one model (or of every model) beyond ``keep``, and, when
    ``inference_older_than`` is given, finished inference jobs older than that many days.

    Returns:
        What was removed (with ``dry_run``, what would be).
    Raises:
        UnknownModelError: ``model_id`` names no model.
        HousekeepingError: a bad ``keep`` or age.
    """
    keep = keep_epoch_checkpoints() if keep is None else check_keep(keep)
    if inference_older_than is not None:
        check_days(inference_older_than)
    ids = [model_id] if model_id is not None else [m["id"] for m in store.list_models()]
    removed = [r for mid in ids for r in prune_checkpoints(mid, keep, dry_run=dry_run)]
    if inference_older_than is not None:
        removed += delete_old_inference_results(inference_older_than, dry_run=dry_run)
    return removed


def freed_bytes(removals: list[Removal]) -> int:
    """Total size of ``removals``."""
    return sum(r.size_bytes or 0 for r in removals)


# --------------------------------------------------------------------------- backup

def backup(dest: str | os.PathLike) -> dict:
    """Copy the data home's databases and checkpoints to ``dest`` while the dashboard and worker run.

    Both databases (the registry and the queue) are copied with SQLite's online backup API, which copies
    a consistent snapshot while other processes write; checkpoint files are copied after (each is replaced
    atomically by the trainer, so a copy is always of a whole file). ``dest`` then is a data home: point
    ``ML_MANAGER_HOME`` at it (or copy it to the data home's place) with the dashboard and worker stopped.

    Args:
        dest: a folder that does not exist yet or is empty, outside the data home.
    Returns:
        ``{"dest": str, "databases": [names], "checkpoints": int, "bytes": int}``.
    Raises:
        HousekeepingError: ``dest`` is inside the data home or is a non-empty folder or a file.
    """
    home, dest = paths.data_home(), Path(dest).expanduser().resolve()
    if paths.is_inside(dest, home):
        raise HousekeepingError(f"The backup folder {dest} is inside the data home {home}: choose a folder "
                                "elsewhere, ideally on another disk.")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise HousekeepingError(f"{dest} already exists and is not an empty folder: give a new folder's path.")
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HousekeepingError(f"Cannot create the backup folder {dest} ({exc.strerror or exc}): choose a "
                                "folder you can write to.") from None
    try:
        return _copy_home(home, dest)
    except OSError as exc:  # a full disk, a folder we may not write
        raise HousekeepingError(f"The backup to {dest} failed ({exc.strerror or exc}): free space there or "
                                "choose another folder, then delete the incomplete backup folder.") from None


def _copy_home(home: Path, dest: Path) -> dict:
    copied_dbs = []
    for source in (paths.db_path(), home / "queue.db"):
        if not source.exists():
            continue
        src = sqlite3.connect(str(source), timeout=store.BUSY_TIMEOUT_S)
        out = sqlite3.connect(str(dest / source.name))
        try:
            src.backup(out)
        finally:
            out.close()
            src.close()
        copied_dbs.append(source.name)
    n, total = 0, sum(size_of(dest / name) for name in copied_dbs)
    for file in sorted((home / "models").glob("*/checkpoints/*.pt")):
        if file.name.startswith("."):
            continue  # an atomic write in progress
        target = dest / file.relative_to(home)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copy2(file, target)
        except FileNotFoundError:
            continue  # pruned while we copied
        n, total = n + 1, total + target.stat().st_size
    return {"dest": str(dest), "databases": copied_dbs, "checkpoints": n, "bytes": total}
