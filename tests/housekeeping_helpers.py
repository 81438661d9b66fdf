"""Shared by tests/test_housekeeping*.py: model rows with checkpoint files, inference jobs with results,
in the real registry of the test's data home. Checkpoint files here are plain files: the registry and the
pruning read only names and sizes."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

from storage import db as store
from storage import paths


def model_with_files(names: list[str], status: str = "completed", size: int = 1000) -> str:
    """A model row with checkpoint files of ``size`` bytes (and their rows) in its folder."""
    model_id = store.create_model("m", {"epochs": 3}, "data")
    store.update_model(model_id, status=status)
    for name in names:
        path = paths.checkpoints_dir(model_id) / name
        path.write_bytes(b"x" * size)
        kind, epoch = (name[:-3], None) if name in ("best.pt", "last.pt") else ("epoch", int(name[6:9]))
        store.add_checkpoint(model_id, epoch, path, kind, 0.5)
    return model_id


def checkpoint_names(model_id: str) -> list[str]:
    return sorted(c["name"] for c in store.model_checkpoints(model_id))


def checkpoint_row_names(model_id: str) -> list[str]:
    conn = store.connect()
    try:
        return sorted(Path(p).name for (p,) in conn.execute("SELECT path FROM checkpoints WHERE model_id = ?",
                                                            [model_id]).fetchall())
    finally:
        conn.close()


def epoch_names(*numbers: int) -> list[str]:
    return [f"epoch_{n:03d}.pt" for n in numbers]


# --------------------------------------------------------------------------- inference results, data, disk use

def inference_job(status: str, days_old: float = 0.0, size: int = 2000) -> str:
    job_id = store.create_inference_job("baseline", "in", {}, model_id=store.BASELINE)
    created = (datetime.now(timezone.utc) - timedelta(days=days_old)).isoformat(timespec="milliseconds")
    store.update_inference_job(job_id, status=status, created_at=created,
                               finished_at=None if status in ("queued", "running") else created)
    (paths.inference_dir(job_id) / "mask.png").write_bytes(b"p" * size)
    return job_id
