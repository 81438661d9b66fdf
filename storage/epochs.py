"""The epochs: the ``epochs`` table, one row of metrics per (run, epoch), written by the worker as it trains."""
from __future__ import annotations

from sqlite_utils import Database

from storage.connection import execute_write, fetch_rows, using, utc_now
from storage.errors import UserError
from storage.runs import get_model


def log_epoch(model_id: str, epoch: int, train_loss: float | None, val_loss: float | None,
              val_dice: float | None, lr: float | None, seconds: float | None, db: Database | None = None) -> None:
    """Record one epoch's metrics; logging the same (model, epoch) again replaces the earlier values."""
    if not isinstance(epoch, int) or epoch < 1:
        raise UserError(f"epoch must be a whole number from 1 up, not {epoch!r}.")
    record = {"model_id": model_id, "epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
              "val_dice": val_dice, "lr": lr, "seconds": seconds, "logged_at": utc_now()}
    with using(db) as db:
        get_model(model_id, db=db)
        db["epochs"].upsert(record, pk=("model_id", "epoch"))


def model_metrics(model_id: str, db: Database | None = None) -> list[dict]:
    """The model's per-epoch metrics in epoch order."""
    with using(db) as db:
        get_model(model_id, db=db)
        return fetch_rows(db, "SELECT * FROM epochs WHERE model_id = ? ORDER BY epoch", [model_id])


def latest_epoch(model_id: str, db: Database | None = None) -> dict | None:
    """The run's newest epoch row (epoch, train_loss, val_loss, val_dice, lr, seconds), or None."""
    with using(db) as db:
        rows = fetch_rows(db, "SELECT epoch, train_loss, val_loss, val_dice, lr, seconds FROM epochs "
                              "WHERE model_id = ? ORDER BY epoch DESC LIMIT 1", [model_id])
    return rows[0] if rows else None


def forget_epochs_from(model_id: str, epoch: int, db: Database | None = None) -> None:
    """Delete the run's epoch rows from ``epoch`` on: a continued run logs them again from its checkpoint."""
    with using(db) as db:
        execute_write(db, "DELETE FROM epochs WHERE model_id = ? AND epoch >= ?", [model_id, epoch])
