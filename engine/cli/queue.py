"""Queue and housekeeping commands of ``python -m engine``: ``submit``, ``status``, ``stop``, ``cancel``,
``prune`` and ``backup`` (the worker must be running for queued trainings to start: ``make worker`` or
``make run``).

    python -m engine submit --data DIR [--data DIR …] [--config cfg.json] [--set key=value …] [--name NAME] [--no-plan]
    python -m engine status [MODEL_ID] [--json]
    python -m engine stop MODEL_ID
    python -m engine cancel JOB_ID
    python -m engine prune [MODEL_ID] [--keep N] [--inference-older-than DAYS] [--dry-run]
    python -m engine backup DEST
    python -m engine worker [--server URL] [--queues training,inference] [--device auto|cpu|cuda]
        (the token from ML_MANAGER_TOKEN, --token-file FILE or --token TOKEN)

Errors are UserErrors with a sentence; ``engine.cli.main`` prints them and exits with status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime
from pathlib import Path

from engine.cli.common import CliError, data_folders, planned, read_json, training_options_help, user_fields
from engine.errors import number_or_none


def register(subparsers) -> None:
    """Add the queue commands to ``python -m engine``'s sub-command parser."""
    p = subparsers.add_parser("submit", help="queue a training on the background worker; prints the model id",
                              epilog=training_options_help,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, action="append",
                   help="data set folder as downloaded (DRIVE, STARE, CHASE_DB1, HRF) or images/ + masks/ [+ fov/]; "
                        "give it once per set to train on several, each in its own layout and resolution")
    p.add_argument("--config", help="JSON file with training options")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override one option (repeatable); the options are listed below")
    p.add_argument("--name", help="a name for the model (default: the data folders' names and the time)")
    p.add_argument("--no-plan", action="store_true", help="queue the options as given: do not measure this "
                   "machine to choose patch size, batch size, precision and epochs")
    p.add_argument("--queue", help="with several machines (ML_MANAGER_QUEUE=redis://...): the queue to send it "
                   "to (default training)")
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

    p = subparsers.add_parser("prune", help="delete old epoch checkpoints (and old inference results); "
                                            "prints what it removes and the space freed")
    p.add_argument("model_id", nargs="?", metavar="MODEL_ID", help="only this model (default: every model)")
    p.add_argument("--keep", type=_count, metavar="N",
                   help="epoch_XXX.pt files to keep per model (default: ML_MANAGER_KEEP_EPOCH_CHECKPOINTS, or 3); "
                        "best.pt and last.pt are always kept")
    p.add_argument("--inference-older-than", type=_days, metavar="DAYS",
                   help="also delete finished batch inference results created more than DAYS days ago")
    p.add_argument("--dry-run", action="store_true", help="only print what would be removed")
    p.set_defaults(func=cmd_prune)

    p = subparsers.add_parser("backup", help="copy both databases and every checkpoint to DEST while the "
                                             "dashboard and worker run")
    p.add_argument("dest", metavar="DEST", help="a new or empty folder outside the data home")
    p.set_defaults(func=cmd_backup)

    p = subparsers.add_parser("worker", help="take jobs from the Redis queue, on this machine or on another one "
                                             "(README: Several machines)")
    p.add_argument("--server", default=os.environ.get("ML_MANAGER_SERVER"),
                   help="the dashboard's address, e.g. http://lab-pc:8501 (or ML_MANAGER_SERVER); without it the "
                        "worker writes this machine's data home itself")
    p.add_argument("--token", default=os.environ.get("ML_MANAGER_TOKEN"),
                   help="the dashboard's API token; better ML_MANAGER_TOKEN or --token-file, which other users "
                        "of this machine cannot read in the process list")
    p.add_argument("--token-file", default=os.environ.get("ML_MANAGER_TOKEN_FILE"),
                   help="a file holding the API token, such as a copy of the dashboard's data/api_token "
                        "(or ML_MANAGER_TOKEN_FILE)")
    p.add_argument("--queues", default="training,inference", help="comma-separated queues to take jobs from "
                   "(default training,inference)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="what trainings run on here (default auto: a CUDA GPU when there is one)")
    p.add_argument("--threads", type=int, default=1, help="jobs run at once per queue (default 1)")
    p.set_defaults(func=cmd_worker)


def _count(text: str) -> int:
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"--keep takes a whole number of 0 or more, not {text!r}")
    return int(text)


def _days(text: str) -> float:
    value = number_or_none(text)
    if value is None or value < 0:
        raise argparse.ArgumentTypeError(f"--inference-older-than takes a number of days of 0 or more, not {text!r}")
    return value


def cmd_submit(args: argparse.Namespace) -> int:
    from engine.jobs import submit_training
    from engine.jobs.queue import TRAINING, check_queue
    from engine.training.config import TrainingConfig, parse_set_option

    config = TrainingConfig.from_dict(read_json(args.config, "config") if args.config else {})
    config = config.with_updates(**dict(parse_set_option(item) for item in args.set or []))
    data = data_folders(args.data)
    name = args.name or f"{'+'.join(folder.resolve().name for folder in data)}-{datetime.now():%Y%m%d-%H%M%S}"
    check_queue(args.queue, TRAINING)  # before measuring this machine: a wrong name is refused at once
    plan = None
    if not args.no_plan:
        config, plan = planned(config, user_fields(args), data)
    model_id = submit_training(name, data, config, plan=plan.to_dict() if plan else None, queue=args.queue)
    if plan is not None:  # once queued (a refusal is one line); on stderr: stdout is the model id alone, for scripts
        print(f"plan: {plan.explain()}", file=sys.stderr, flush=True)
    print(model_id)
    return 0


def _fmt(value, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)


def _line(status: dict) -> str:
    epoch = f"{_fmt(status['epoch'])}/{_fmt(status['total_epochs'])}"
    if status.get("budget_s") and status.get("trained_s") is not None:  # the budget ends it, not the epoch limit
        epoch = f"{status['trained_s'] / 60:.1f}/{status['budget_s'] / 60:g} min"
    best = status["best"]
    eta = f"{status['eta_s'] / 60:.1f} min" if status["eta_s"] is not None else "-"
    note = status["stop_reason"] or ""
    if status["error"]:
        note = f"{note} {status['error']}".strip()
    return (f"{status['model_id']:<24} {status['name'][:24]:<24} {status['status']:<10} {epoch:>13} "
            f"{_fmt(best['val_dice'], '.4f'):>9} {eta:>9}  {note}")


def cmd_status(args: argparse.Namespace) -> int:
    from storage import paths

    home = paths.data_home_path()
    if not (home / "ml_manager.db").exists():  # reading the status must not make a data home where there is none
        raise CliError(f"There is no data home at {home} (no ml_manager.db in it): run the command in the folder "
                       f"where `make run` keeps ./data, or set {paths.HOME_ENV} to that data home.")
    from engine.jobs import recover_if_no_worker, training_status  # opens the queue, in the data home
    from storage import db as store

    recover_if_no_worker()  # with no worker up, an abandoned run would otherwise read "running" forever
    ids = [args.model_id] if args.model_id else [m["id"] for m in store.list_models()]
    statuses = [training_status(model_id) for model_id in ids]
    if args.json:
        for status in statuses:
            print(json.dumps(status, sort_keys=True))
        return 0
    if not statuses:
        print("no models yet: queue one with `python -m engine submit --data DIR`")
        return 0
    print(f"{'model id':<24} {'name':<24} {'status':<10} {'epoch or time':>13} {'best dice':>9} {'eta':>9}  note")
    for status in statuses:
        print(_line(status))
    beat = store.worker_heartbeat()
    if any(s["status"] in store.ACTIVE_STATUSES for s in statuses) and (
            beat is None or store.age_seconds(beat.isoformat()) > store.WORKER_FRESH_S):
        print(f"note: no worker has reported in the last {store.WORKER_FRESH_S:.0f} s; start one with `make worker`.",
              file=sys.stderr)
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


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def cmd_prune(args: argparse.Namespace) -> int:
    from engine.housekeeping import freed_bytes, prune
    from storage import paths

    removed = prune(args.model_id, keep=args.keep, inference_older_than=args.inference_older_than,
                    dry_run=args.dry_run)
    home = paths.data_home()
    verb = "would remove" if args.dry_run else "removed"
    for item in removed:
        shown = Path(item.path).relative_to(home) if paths.is_inside(item.path, home) else item.path
        print(f"{verb} {item.kind} {shown} ({_mb(item.size_bytes or 0)})")
    total = _mb(freed_bytes(removed))
    print(f"{len(removed)} item(s); {'would free' if args.dry_run else 'freed'} {total}")
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    from engine.housekeeping import backup

    done = backup(args.dest)
    print(f"backed up {', '.join(done['databases']) or 'no database'} and {done['checkpoints']} checkpoint(s) "
          f"({_mb(done['bytes'])}) to {done['dest']}")
    return 0


def cmd_worker(args) -> int:
    """Run a worker until Ctrl-C (``engine.remote.worker.run_worker``)."""
    import logging

    from engine.remote.worker import run_worker

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(levelname)s:%(name)s:%(threadName)s:%(message)s")
    names = [q.strip() for q in args.queues.split(",") if q.strip()]
    token = args.token
    if not token and args.token_file:
        try:
            token = Path(args.token_file).read_text().strip()
        except OSError as exc:
            raise CliError(f"The token file {args.token_file} cannot be read ({exc.strerror}): copy the "
                           "dashboard's data/api_token there, or set ML_MANAGER_TOKEN.") from None
    return run_worker(args.server, token, names, device=args.device, threads=max(1, args.threads))
