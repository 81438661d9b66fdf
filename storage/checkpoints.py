"""The checkpoints: the ``checkpoints`` table, one row per checkpoint file a run wrote, and the listing of a
run's checkpoint folder that reads it (a file without a row still shows, a row without a file does not)."""
from __future__ import annotations

import os
from pathlib import Path

from sqlite_utils import Database

from storage import paths
from storage.connection import fetch_rows, using, utc_now
from storage.errors import UserError
from storage.runs import get_model, list_models
from storage.vocabulary import CHECKPOINT_KINDS


def add_checkpoint(model_id: str, epoch: int | None, path: str | os.PathLike, kind: str, metric: float | None,
                   db: Database | None = None) -> None:
    """Record a checkpoint file; the same path recorded again replaces the earlier row."""
    if kind not in CHECKPOINT_KINDS:
        raise UserError(f"checkpoint kind {kind!r} is not one of {', '.join(CHECKPOINT_KINDS)}.")
    path = Path(path).resolve()
    size = path.stat().st_size if path.exists() else None
    record = {"path": str(path), "model_id": model_id, "epoch": epoch, "kind": kind, "metric": metric,
              "size_bytes": size, "created_at": utc_now()}
    with using(db) as db:
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
    with using(db) as db:
        model = get_model(model_id, db=db)
        rows = fetch_rows(db, "SELECT * FROM checkpoints WHERE model_id = ?", [model_id])
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
    with using(db) as db:
        rows = fetch_rows(db, "SELECT path FROM checkpoints WHERE model_id = ?", [model_id])
        gone = [r["path"] for r in rows if Path(r["path"]).name in wanted]
        with db.atomic():
            for path in gone:
                db.execute("DELETE FROM checkpoints WHERE model_id = ? AND path = ?", [model_id, path])
    return len(gone)


def all_checkpoints(db: Database | None = None) -> list[dict]:
    """The checkpoints of every completed model (newest model first): the global inference list."""
    with using(db) as db:
        result = []
        for model in list_models(status="completed", db=db):
            for ckpt in model_checkpoints(model["id"], db=db):
                ckpt["best_val_dice"] = model["best_val_dice"]
                result.append(ckpt)
        return result
