"""Queue commands of ``python -m engine``: ``submit``, ``status``, ``stop`` and ``cancel`` (the worker must be
running for queued trainings to start: ``make worker`` or ``make run``).

    python -m engine submit --data DIR [--config cfg.json] [--set key=value …] [--name NAME]
    python -m engine status [MODEL_ID] [--json]
    python -m engine stop MODEL_ID
    python -m engine cancel JOB_ID

Errors are ValueErrors with a sentence; ``engine.cli.main`` prints them and exits with status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path


def register(subparsers) -> None:
    """Add the queue commands to ``python -m engine``'s sub-command parser."""
    p = subparsers.add_parser("submit", help="queue a training on the background worker; prints the model id")
    p.add_argument("--data", required=True, help="data set folder (DRIVE or images/ + masks/ [+ fov/])")
    p.add_argument("--config", help="JSON file with training options")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one option (repeatable)")
    p.add_argument("--name", help="a name for the model (default: the data folder's name and the time)")
    p.set_defaults(func=cmd_submit)

    p = subparsers.add_parser("status", help="state of one model, or of every model")
    p.add_argument("model_id", nargs="?", metavar="MODEL_ID")
    p.add_argument("--json", action="store_true", help="one JSON object per model, one per line")
    p.set_defaults(func=cmd_status)

    p = subparsers.add_parser("stop", help="stop a running or queued training")
    p.add_argument("model_id", metavar="MODEL_ID")
    p.set_defaults(func=cmd_stop)

    p = subparsers.add_parser("cancel", help="cancel a queued or running batch inference job")
    p.add_argument("job_id", metavar="JOB_ID")
    p.set_defaults(func=cmd_cancel)


def cmd_submit(args: argparse.Namespace) -> int:
    from engine.cli import _read_json  # shared with `train --config`; imported late: cli imports this module
    from engine.jobs import submit_training
    from engine.train import TrainingConfig, parse_set_option

    config = TrainingConfig.from_dict(_read_json(args.config, "config") if args.config else {})
    config = config.with_updates(**dict(parse_set_option(item) for item in args.set or []))
    data = Path(args.data)
    if not data.is_dir():
        raise ValueError(f"The data folder {data} does not exist.")
    name = args.name or f"{data.resolve().name}-{datetime.now():%Y%m%d-%H%M%S}"
    print(submit_training(name, data, config))
    return 0


def _fmt(value, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)


def _line(status: dict) -> str:
    epoch = f"{_fmt(status['epoch'])}/{_fmt(status['total_epochs'])}"
    best = status["best"]
    eta = f"{status['eta_s'] / 60:.1f} min" if status["eta_s"] is not None else "-"
    note = status["stop_reason"] or ""
    if status["error"]:
        note = f"{note} {status['error']}".strip()
    return (f"{status['model_id']:<24} {status['name'][:24]:<24} {status['status']:<10} {epoch:>9} "
            f"{_fmt(best['val_dice'], '.4f'):>9} {eta:>9}  {note}")


def cmd_status(args: argparse.Namespace) -> int:
    from engine.jobs import training_status
    from storage import db as store

    ids = [args.model_id] if args.model_id else [m["id"] for m in store.list_models()]
    statuses = [training_status(model_id) for model_id in ids]
    if args.json:
        for status in statuses:
            print(json.dumps(status, sort_keys=True))
        return 0
    if not statuses:
        print("no models yet: queue one with `python -m engine submit --data DIR`")
        return 0
    print(f"{'model id':<24} {'name':<24} {'status':<10} {'epoch':>9} {'best dice':>9} {'eta':>9}  note")
    for status in statuses:
        print(_line(status))
    beat = store.worker_heartbeat()
    if any(s["status"] in ("queued", "running", "stopping") for s in statuses) and (
            beat is None or store.age_seconds(beat.isoformat()) > 30):
        print("note: no worker has reported in the last 30 s; start one with `make worker`.", file=sys.stderr)
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from engine.jobs import stop_training

    outcome = stop_training(args.model_id)
    if outcome == "cancelled":
        print(f"{args.model_id}: removed from the queue before it started")
    else:
        print(f"{args.model_id}: stopping (it saves last.pt and ends within a few seconds)")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from engine.jobs import cancel_inference

    if cancel_inference(args.job_id) == "cancelled":
        print(f"{args.job_id}: removed from the queue before it started")
    else:
        print(f"{args.job_id}: cancelling (it stops before its next image; the results so far are kept)")
    return 0
