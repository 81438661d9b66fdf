"""``python -m engine train`` (with a progress line per epoch) and ``python -m engine synthesize``."""
from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from engine.cli.common import CliError, data_folders, planned, read_json, user_fields

class ProgressBar:
    """One text line per epoch: ``epoch 3/60 [#######.....] 28/40 loss 0.4123``, then a summary line.

    With a time budget (``budget_s``) the budget ends the run, not the epoch limit the plan raised past it, so
    an epoch's line reads ``epoch 3, 1.2 of 10 min [##......]``: the bar is the share of the budget spent.
    """

    def __init__(self, stream=None, width: int = 24, budget_s: float | None = None):
        self.stream, self.width, self.budget_s = stream or sys.stdout, width, budget_s or None
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def _bar(self, share: float) -> str:
        done = int(self.width * min(1.0, max(0.0, share)))
        return "#" * done + "." * (self.width - done)

    def __call__(self, event: dict) -> None:
        kind = event["type"]
        if kind == "start":
            until = (f"until {self.budget_s / 60:g} minutes have been trained" if self.budget_s
                     else f"epochs {event['start_epoch']}-{event['total_epochs']}")
            print(f"training on {event['n_train']} images, validating on {event['n_val']}, device {event['device']}; "
                  f"{until}", file=self.stream, flush=True)
        elif kind == "batch" and self.tty:
            bar = self._bar(event["step"] / event["steps"])
            print(f"\repoch {event['epoch']} [{bar}] {event['step']}/{event['steps']} loss {event['loss']:.4f}",
                  end="", file=self.stream, flush=True)
        elif kind == "epoch_end":
            mark = " *best*" if event["is_best"] else ""
            if self.budget_s:
                where = f"epoch {event['epoch']}, {event['elapsed'] / 60:.1f} of {self.budget_s / 60:g} min"
                bar = self._bar(event["elapsed"] / self.budget_s)
            else:
                where, bar = f"epoch {event['epoch']}/{event['total_epochs']}", "#" * self.width
            print(f"\r{where} [{bar}] train_loss {event['train_loss']:.4f} "
                  + (f"val_loss {event['val_loss']:.4f} val_dice {event['val_dice']:.4f} "
                     if event["val_dice"] is not None else "(no validation images) ")
                  + f"lr {event['lr']:.2e} "
                  f"{event['seconds']:.1f}s{mark}", file=self.stream, flush=True)
        elif kind == "calibration":
            r = event["recommended"]
            print(f"post-processing calibrated on validation images: Dice {event['dice_before']:.4f} -> "
                  f"{event['dice_after']:.4f} (threshold {r['threshold']}, min_component_size "
                  f"{r['min_component_size']}, opening {r['apply_opening']}, closing {r['apply_closing']})",
                  file=self.stream, flush=True)
            for line in event.get("explanation") or ():
                print(f"  {line}", file=self.stream, flush=True)
        elif kind == "end":
            print(f"stopped: {event['stop_reason']} after {event['epochs_run']} epochs; best epoch "
                  f"{event['best_epoch']}", file=self.stream, flush=True)



def cmd_train(args: argparse.Namespace) -> int:
    from engine.training.config import TrainingConfig, parse_set_option
    from engine.training.loop import train

    if args.config:
        config = TrainingConfig.from_dict(read_json(args.config, "config"))
    elif args.resume:  # continuing: the checkpoint's own settings, changed only by --set
        from engine.training.checkpoint import load_checkpoint_dict

        config = TrainingConfig.from_dict(load_checkpoint_dict(args.resume).get("config") or {})
    else:
        config = TrainingConfig()
    updates = dict(parse_set_option(item) for item in args.set or [])
    if args.max_minutes is not None:
        if not args.max_minutes > 0:
            raise CliError(f"--max-minutes must be a positive number, not {args.max_minutes}.")
        updates["max_minutes"] = float(args.max_minutes)
    config = config.with_updates(**updates)
    data = data_folders(args.data)
    plan = None
    if not args.no_plan and not args.resume:  # a resumed run keeps the shape its checkpoint was trained with
        config, plan = planned(config, user_fields(args), data)
        if plan is not None:
            print(f"plan: {plan.explain()}", flush=True)
    stop = {"requested": False}

    def on_interrupt(signum, frame):  # first Ctrl-C stops cleanly (saving last.pt), a second one aborts
        if stop["requested"]:
            raise KeyboardInterrupt
        stop["requested"] = True
        print("\nstopping after this batch (press Ctrl-C again to abort)…", file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        result = train(config, data, args.out, on_event=ProgressBar(budget_s=config.max_minutes * 60),
                       should_stop=lambda: stop["requested"],
                       resume_from=args.resume, plan=plan.to_dict() if plan else None)
    finally:
        signal.signal(signal.SIGINT, previous)
    if result.best_checkpoint is None and not result.epochs_run:
        print(f"no epoch finished; last checkpoint: {result.last_checkpoint}")
        return 1
    if result.best_checkpoint is None:  # continued into another folder without beating the checkpoint's best
        print(f"no epoch beat the best of the checkpoint it continued; last checkpoint: {result.last_checkpoint}")
        return 0
    print(f"best checkpoint: {result.best_checkpoint}")
    return 0



def cmd_synthesize(args: argparse.Namespace) -> int:
    from engine.training.synthetic import make_synthetic_dataset

    out = make_synthetic_dataset(args.out, n_images=args.n, size=args.size, seed=args.seed)
    print(f"wrote {args.n} synthetic images ({args.size}×{args.size}) to {out}")
    return 0


def cmd_pretrained(args: argparse.Namespace) -> int:
    from engine.pretrained import train_pretrained

    missing = [folder for folder in args.data if not Path(folder).is_dir()]
    if missing:
        raise CliError(f"{missing[0]} does not exist: the shipped model is trained on the DRIVE, CHASE_DB1 and HRF "
                       "training images (../shared/data).")
    dest, result = train_pretrained(args.data, args.dest, args.epochs, args.threads, args.max_minutes,
                                    on_event=ProgressBar())
    minutes = sum(h["seconds"] for h in result.history) / 60
    print(f"wrote {dest} ({dest.stat().st_size / 1e6:.1f} MB): validation Dice {result.best_metric:.4f} at epoch "
          f"{result.best_epoch} of {result.epochs_run}; {minutes:.0f} min of training")
    return 0
