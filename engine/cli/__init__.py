"""Command line: ``python -m engine train|predict|evaluate|synthesize|pretrained`` and the queue commands.

``main(argv)`` parses and runs one command; ``build_parser()`` is the whole command line. The commands
live in ``engine.cli.train``, ``engine.cli.predict`` and ``engine.cli.queue``. Every user error prints
one sentence to stderr and exits with status 2; no tracebacks.
"""
from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from pathlib import Path
from typing import Sequence

from engine.cli import predict, queue, train
from engine.cli.common import EXIT_USER_ERROR, PLAIN_THRESHOLD, training_options_help
from engine.errors import UserError, number_or_none, user_error


def _threshold(text: str) -> float:
    """``--threshold``: a probability in the post-processing threshold's range ([0, 1], as in the config)."""
    from engine.postprocess.config import FIELDS

    spec = FIELDS["threshold"]
    value = number_or_none(text)
    if value is None:
        raise argparse.ArgumentTypeError(f"must be a number between {spec.low:g} and {spec.high:g}, not {text!r}")
    try:
        return spec.check(value, "threshold")
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("threshold ").rstrip(".")) from None


def _scale(text: str) -> str | float:
    from engine.fov import parse_scale

    try:
        return parse_scale(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("scale ").rstrip(".")) from None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one sentence, not the usage block
        self.exit(EXIT_USER_ERROR, f"{self.prog}: {message}. See --help.\n")

    def format_help(self) -> str:
        if callable(self.epilog):  # made when asked for: the training options' list imports torch
            self.epilog = self.epilog()
        return super().format_help()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m engine", description="Train and apply vessel-segmentation models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="train a U-Net on one or more data set folders", epilog=training_options_help,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, action="append",
                   help="data set folder as downloaded (DRIVE, STARE, CHASE_DB1, HRF) or images/ + masks/ [+ fov/]; "
                        "give it once per set to train on several, each in its own layout and resolution")
    p.add_argument("--out", required=True, help="folder for best.pt and last.pt")
    p.add_argument("--config", help="JSON file with training options")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override one option (repeatable); the options are listed below")
    p.add_argument("--max-minutes", type=float, help="stop cleanly after this many minutes")
    p.add_argument("--no-plan", action="store_true", help="train with the options as given: do not measure "
                   "this machine to choose patch size, batch size, precision and epochs")
    p.add_argument("--resume", metavar="CKPT", help="continue from this last.pt with its own settings (change them "
                   "with --set, e.g. --set epochs=80 to train longer)")
    p.set_defaults(func=train.cmd_train)

    for name, helptext in (("predict", "write probability and mask PNGs"), ("evaluate", "print metrics as JSON")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--checkpoint", required=True, help="a .pt file written by train")
        if name == "predict":
            p.add_argument("--input", required=True, help="an image or a folder of images")
            p.add_argument("--output", required=True, help="folder for NAME_prob.png and NAME_mask.png")
        else:
            p.add_argument("--data", required=True, help="data set folder with vessel masks, in any layout train reads")
        group = p.add_mutually_exclusive_group()
        group.add_argument("--postprocess", help="JSON file with PostProcessConfig settings")
        if name == "predict":
            group.add_argument("--recommended", action="store_true",
                               help="the mask with the model's recommended settings, or the default post-processing "
                                    "where it has none (what predict does unless --raw, --threshold or --postprocess)")
            group.add_argument("--raw", action="store_true", help=f"the mask is the probability map at "
                               f"{PLAIN_THRESHOLD:g}, not post-processed")
            group.add_argument("--threshold", type=_threshold, default=None,
                               help="the mask is the probability map at this threshold (0 to 1), not post-processed")
        else:
            group.add_argument("--recommended", action="store_true",
                               help="score the mask post-processed with the model's recommended settings (the "
                                    "default post-processing where it has none) instead of the plain 0.5 map")
            group.add_argument("--threshold", type=_threshold, default=PLAIN_THRESHOLD,
                               help=f"plain threshold, 0 to 1 (default {PLAIN_THRESHOLD:g})")
        p.add_argument("--tta", action="store_true", help="average predictions of flipped images")
        p.add_argument("--scale", type=_scale, default="auto",
                       help="resize each image for the model: auto (to the scale of the model's training "
                            "images, the default), none, or a factor such as 0.5")
        p.set_defaults(func=predict.cmd_predict if name == "predict" else predict.cmd_evaluate)

    p = sub.add_parser("synthesize", help="write a synthetic data set (images/, masks/, fov/)")
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=12, help="number of images (default 12)")
    p.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=train.cmd_synthesize)

    from engine.pretrained import EPOCHS, PRETRAINED_PATH

    p = sub.add_parser("pretrained", help="re-train the shipped model (make pretrained) from its training sets")
    p.add_argument("--data", required=True, action="append",
                   help="a training data set folder; give it once per set (DRIVE, CHASE_DB1 and HRF's training "
                        "folders make the shipped model)")
    p.add_argument("--dest", default=str(PRETRAINED_PATH), help="where to write the model file")
    p.add_argument("--epochs", type=int, default=EPOCHS)
    p.add_argument("--max-minutes", type=float, default=0.0,
                   help="also stop (the learning rate annealed by then) after this many minutes; 0: run every epoch")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0: torch's default; 1 is faster on a machine busy with other work)")
    p.set_defaults(func=train.cmd_pretrained)

    queue.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted.", file=sys.stderr)
        return 130
    except sqlite3.Error as exc:  # storage turns known cases into sentences; this is the backstop
        print(f"error: the run registry could not be used ({exc}); nothing was changed.", file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception as exc:  # noqa: BLE001 - the command line's last resort: a user's error (or a file the
        #                       user named) is one sentence, a bug one line and its traceback in the log
        error = user_error(exc)
        if error is not None or isinstance(exc, OSError):
            message = str(error if error is not None else exc) or type(exc).__name__
            if error is None and not isinstance(exc, FileNotFoundError):
                message = f"{exc.strerror or exc} ({exc.filename})" if exc.filename else str(exc)
            print(f"error: {' '.join(message.split())}", file=sys.stderr)  # one line, whatever the message holds
            return EXIT_USER_ERROR
        # a bug, not a user error: one line here, the traceback in the log
        where = _log_traceback()
        print(f"error: the command stopped on an unexpected {type(exc).__name__} ({' '.join(str(exc).split())}); "
              f"this is a fault in the program{f', details are in {where}' if where else ''}.", file=sys.stderr)
        return 1


def _log_traceback() -> Path | None:
    """Append the current exception's traceback to logs/cli.log in the data home; None when that fails."""
    import traceback

    try:
        from storage.paths import logs_dir

        log = logs_dir() / "cli.log"
        with open(log, "a", encoding="utf-8", errors="backslashreplace") as out:
            out.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} python -m engine {' '.join(sys.argv[1:])}\n")
            out.write(traceback.format_exc())
        return log
    except (OSError, UserError):  # the log cannot be written: the line printed then names no log
        return None
