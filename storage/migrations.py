"""The run registry's schema, as an ordered list of sqlite-utils migrations.

Each migration is a function that takes a ``sqlite_utils.Database``; sqlite-utils applies the
pending ones in order and records each in its ``_sqlite_migrations`` table, so a database made by
an older version is brought up to date the next time it is opened. Never edit a migration that
has shipped: add a new one below it.
"""
from __future__ import annotations

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

MIGRATIONS = Migrations("ml_manager")


@MIGRATIONS(name="0001_initial")
def initial_schema(db: Database) -> None:
    db["models"].create(
        {
            "id": str,
            "name": str,
            "status": str,              # queued | running | stopping | completed | failed
            "stop_reason": str,         # max_epochs | early_stopping | user_stop | time_limit | NULL
            "config": str,              # TrainingConfig as JSON
            "dataset": str,             # folder the run trains on
            "task_id": str,             # Huey task id of the training task
            "created_at": str,          # ISO-8601 UTC, like every *_at column
            "queued_at": str,           # when it last entered the queue (FIFO order)
            "started_at": str,
            "finished_at": str,
            "best_epoch": int,
            "best_metric": float,       # the monitored metric at best_epoch
            "best_val_dice": float,
            "epochs_run": int,
            "total_epochs": int,
            "epochs_since_best": int,
            "patience": int,
            "monitor": str,
            "error": str,
            "heartbeat_at": str,        # bumped every few seconds while queued-waiting or running
            "worker": str,              # id of the worker process that runs it
            "recommended_postprocess": str,  # PostProcessConfig dict as JSON
            "current_epoch": int,
            "batch": int,
            "batches": int,
            "eta_s": float,
        },
        pk="id",
        not_null={"name", "status", "config", "created_at"},
    )
    db["models"].create_index(["status"])
    db["epochs"].create(
        {
            "model_id": str,
            "epoch": int,
            "train_loss": float,
            "val_loss": float,
            "val_dice": float,
            "lr": float,
            "seconds": float,
            "logged_at": str,
        },
        pk=("model_id", "epoch"),
    )
    db["checkpoints"].create(
        {
            "path": str,
            "model_id": str,
            "epoch": int,
            "kind": str,                # best | last | epoch
            "metric": float,
            "size_bytes": int,
            "created_at": str,
        },
        pk="path",
        not_null={"model_id", "kind"},
    )
    db["checkpoints"].create_index(["model_id"])
    db["inference_jobs"].create(
        {
            "id": str,
            "model_id": str,            # NULL for the classical baseline or a loose checkpoint
            "checkpoint_path": str,     # a .pt file, or "baseline"
            "input_path": str,          # a folder or a .zip
            "postprocess": str,         # PostProcessConfig dict as JSON
            "status": str,              # queued | running | completed | failed
            "progress": float,          # 0..1
            "n_total": int,
            "n_done": int,
            "n_failed": int,
            "output_dir": str,
            "error": str,
            "task_id": str,
            "worker": str,
            "created_at": str,
            "started_at": str,
            "finished_at": str,
            "heartbeat_at": str,
        },
        pk="id",
        not_null={"checkpoint_path", "input_path", "status", "created_at"},
    )
    db["presets"].create(
        {"model_id": str, "name": str, "config": str, "created_at": str, "updated_at": str},
        pk=("model_id", "name"),
    )
    db["workers"].create(
        {"id": str, "host": str, "pid": int, "started_at": str, "beat_at": str},
        pk="id",
    )


@MIGRATIONS(name="0002_submission_key")
def submission_key(db: Database) -> None:
    """One form submission, one run: a run queued from the dashboard's form carries the key that form
    was drawn with, and a second submission with the same key (a double click) creates nothing."""
    db["models"].add_column("submission_key", str)
    db["models"].create_index(["submission_key"], unique=True)  # NULLs (runs from the CLI, the API) never clash


@MIGRATIONS(name="0003_inference_scale")
def inference_scale(db: Database) -> None:
    """A batch job records how its photographs were resized for the model: ``auto``, ``none`` or a factor
    (as text); jobs made before this column ran with ``auto``."""
    db["inference_jobs"].add_column("scale", str)


@MIGRATIONS(name="0004_plan")
def training_plan(db: Database) -> None:
    """A run records the plan that chose its patch size, batch size, precision and epochs for the machine
    and the time budget (``engine.training.planner.Plan.to_dict()`` as JSON); NULL for a run that was not planned."""
    db["models"].add_column("plan", str)


@MIGRATIONS(name="0005_trained_seconds")
def trained_seconds(db: Database) -> None:
    """Seconds a run has trained, every round of a continued run counted (the worker writes it as it trains):
    the progress of a run with a time budget is this share of its budget, not of its epoch limit."""
    db["models"].add_column("trained_s", float)


@MIGRATIONS(name="0006_queues_and_workers")
def queues_and_workers(db: Database) -> None:
    """Several machines: a run and a batch job record the queue they were sent to (NULL: the default one),
    a queued continuation records the checkpoint it starts from (so a lost queue entry can be queued
    again), and a worker's heartbeat names its device, its queues, what it works on and whether it writes this
    registry itself (``local``) or reports over the HTTP API (``remote``)."""
    db["models"].add_column("queue", str)
    db["models"].add_column("resume_from", str)  # the last.pt a queued continuation starts from (NULL: afresh)
    db["inference_jobs"].add_column("queue", str)
    for column in ("device", "queues", "job", "kind"):
        db["workers"].add_column(column, str)


@MIGRATIONS(name="0007_settings_from")
def settings_from(db: Database) -> None:
    """A run records where each of its settings that is not the default came from, as JSON
    ``{field: "typed" | "set" | "planned" | "copied from run <id>"}``: typed in the Train form, sent with an API
    or command-line submission, chosen by the plan for the machine, or copied from an earlier run's settings.
    NULL for a run queued before it was recorded."""
    db["models"].add_column("settings_from", str)


@MIGRATIONS(name="0008_datasets")
def training_datasets(db: Database) -> None:
    """A run trains on a list of data sets: ``datasets`` holds their folders as a JSON list (``dataset`` keeps
    the first, so a reader of one folder still finds one). Runs made before this column trained on their
    ``dataset`` alone, which becomes their list."""
    db["models"].add_column("datasets", str)
    db.execute("UPDATE models SET datasets = json_array(dataset) WHERE dataset IS NOT NULL")
