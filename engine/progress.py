"""How far a training run is, read from its registry row (``storage.db.get_model``): the share done and the
time budget, which come from the row's config JSON and its progress columns.

It sits beside the foundations rather than in ``engine.jobs`` because the pages read it at import, and
importing ``engine.jobs`` makes the worker's queue (which checks the data home can be written).
"""
from __future__ import annotations

import json

from storage.db import TRAINING_STATUSES


def run_budget_s(row: dict) -> float | None:
    """A run's time budget in seconds (its config's ``max_minutes``, the rounds of a continued run together);
    None without one."""
    try:
        minutes = float(json.loads(row.get("config") or "{}").get("max_minutes") or 0)
    except (ValueError, TypeError, AttributeError):
        return None
    return minutes * 60 if minutes > 0 else None


def run_progress(row: dict) -> float | None:
    """The share of a run done, in [0, 1]: of its epochs, counting the running epoch's batches, or, for a
    run with a time budget, of that budget when more of it is spent (the budget, not the epoch limit, then
    ends the run); None when the row records no number of epochs yet. A completed run is 1.0 even when
    early stopping ended it."""
    total, done, epoch = row.get("total_epochs"), row.get("epochs_run") or 0, row.get("current_epoch")
    if not total:
        return None
    if row.get("status") == "completed":
        return 1.0
    inside = 0.0
    if row.get("batches") and row.get("status") in TRAINING_STATUSES and epoch and epoch > done:
        inside = (row.get("batch") or 0) / row["batches"]
    share = (done + inside) / total
    budget, trained = run_budget_s(row), row.get("trained_s")
    if budget and trained is not None:
        share = max(share, trained / budget)
    return min(1.0, share)
