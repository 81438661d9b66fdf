"""Command line: ``python -m engine train|predict|evaluate|synthesize`` (and the queue commands).

Every user error prints one sentence to stderr and exits with status 2; no tracebacks.
"""
from __future__ import annotations

import argparse
import json
import signal
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

EXIT_USER_ERROR = 2


class CliError(ValueError):
    """A problem with the command's arguments; the message is the sentence shown."""


def read_json(path: str, what: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise CliError(f"The {what} file {p} does not exist.")
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CliError(f"The {what} file {p} is not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc}).") from None
    if not isinstance(data, dict):
        raise CliError(f"The {what} file {p} must hold a JSON object.")
    return data


# --------------------------------------------------------------------------- train

class ProgressBar:
    """One text line per epoch: ``epoch 3/60 [#######.....] 28/40 loss 0.4123``, then a summary line."""

    def __init__(self, stream=None, width: int = 24):
        self.stream, self.width = stream or sys.stdout, width
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def __call__(self, event: dict) -> None:
        kind = event["type"]
        if kind == "start":
            print(f"training on {event['n_train']} images, validating on {event['n_val']}, device {event['device']}; "
                  f"epochs {event['start_epoch']}-{event['total_epochs']}", file=self.stream, flush=True)
        elif kind == "batch" and self.tty:
            done = int(self.width * event["step"] / event["steps"])
            bar = "#" * done + "." * (self.width - done)
            print(f"\repoch {event['epoch']} [{bar}] {event['step']}/{event['steps']} loss {event['loss']:.4f}",
                  end="", file=self.stream, flush=True)
        elif kind == "epoch_end":
            bar = "#" * self.width
            mark = " *best*" if event["is_best"] else ""
            print(f"\repoch {event['epoch']}/{event['total_epochs']} [{bar}] train_loss {event['train_loss']:.4f} "
                  f"val_loss {event['val_loss']:.4f} val_dice {event['val_dice']:.4f} lr {event['lr']:.2e} "
                  f"{event['seconds']:.1f}s{mark}", file=self.stream, flush=True)
        elif kind == "calibration":
            r = event["recommended"]
            print(f"post-processing calibrated on validation images: Dice {event['dice_before']:.4f} -> "
                  f"{event['dice_after']:.4f} (threshold {r['threshold']}, min_component_size "
                  f"{r['min_component_size']}, opening {r['apply_opening']}, closing {r['apply_closing']})",
                  file=self.stream, flush=True)
        elif kind == "end":
            print(f"stopped: {event['stop_reason']} after {event['epochs_run']} epochs; best epoch "
                  f"{event['best_epoch']}", file=self.stream, flush=True)


def planned(config: Any, user_fields: set[str], data: Path) -> tuple[Any, Any]:
    """(config, Plan) for ``data`` on this machine; fields in ``user_fields`` (the keys of ``--config``
    and ``--set``) are kept. A folder with fewer than 2 images is not planned for (Plan None): training
    refuses it with a sentence.

    Raises:
        DatasetError: ``data`` is not a usable data set.
    """
    from engine.training.planner import plan_for_folder

    return plan_for_folder(config, user_fields, data)


def user_fields(args: argparse.Namespace) -> set[str]:
    """The training options the command line set: the keys of ``--config`` and of every ``--set``."""
    from engine.training.config import parse_set_option

    keys = set(read_json(args.config, "config")) if args.config else set()
    return keys | {parse_set_option(item)[0] for item in args.set or []}


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
    data = Path(args.data)
    if not data.is_dir():
        raise CliError(f"The data folder {data} does not exist.")
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
        result = train(config, data, args.out, on_event=ProgressBar(), should_stop=lambda: stop["requested"],
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


# --------------------------------------------------------------------------- predict / evaluate

def _postprocess_config(args: argparse.Namespace, loaded) -> Any:
    """The PostProcessConfig chosen by --postprocess / --recommended, or None for a plain threshold."""
    from engine.postprocess import PostProcessConfig

    if getattr(args, "postprocess", None):
        return PostProcessConfig.from_dict(read_json(args.postprocess, "post-processing settings"))
    if getattr(args, "recommended", False):
        if not loaded.recommended_postprocess:
            raise CliError(f"{loaded.path.name} has no recommended post-processing (training was stopped before "
                           "calibration): pass --postprocess settings.json or --threshold instead.")
        return PostProcessConfig.from_dict(loaded.recommended_postprocess)
    return None


def _binarise(prob: np.ndarray, cfg: Any, threshold: float, fov: np.ndarray | None) -> np.ndarray:
    if cfg is None:
        return (prob >= threshold).astype(np.uint8)
    from engine.postprocess import enhanced_post_processing

    return enhanced_post_processing(prob, config=cfg, fov=fov).mask


def _input_images(path: Path) -> list[Path]:
    from engine.imageio import IMAGE_EXTENSIONS, is_image_name

    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and is_image_name(p.name))
        if not files:
            raise CliError(f"{path} holds no images ({', '.join(IMAGE_EXTENSIONS)}, or these gzip-compressed).")
        return files
    raise CliError(f"The input {path} does not exist.")


def cmd_predict(args: argparse.Namespace) -> int:
    from engine.fov import estimate_fov
    from engine.imageio import encode_png, read_image
    from engine.inference.predict import load_model, predict, resolve_scale
    from storage.paths import atomic_write_bytes

    loaded = load_model(args.checkpoint)
    cfg = _postprocess_config(args, loaded)
    files = _input_images(Path(args.input))
    out = Path(args.output)
    existing = next((p for p in (out, *out.parents) if p.exists()), None)  # the folder, or what would hold it
    if existing is not None and not existing.is_dir():
        raise CliError(f"--output must be a folder, but {existing} is a file: give a folder for the PNGs "
                       "(it is created when missing).")
    for path in files:
        image = read_image(path)
        fov = estimate_fov(image)
        prob = predict(loaded, image, tta=args.tta, fov=fov, scale=args.scale)
        mask = _binarise(prob, cfg, args.threshold, fov)  # nothing outside the FOV
        atomic_write_bytes(out / f"{path.stem}_prob.png", encode_png((prob * 255 + 0.5).astype(np.uint8)))
        atomic_write_bytes(out / f"{path.stem}_mask.png", encode_png(mask))
        factor = resolve_scale(loaded, fov, args.scale)
        print(f"{path.name}: {out / (path.stem + '_mask.png')} ({mask.mean() * 100:.1f}% vessel pixels; "
              f"estimated field of view; resized ×{factor:.3g} for the model)")
    return 0


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


def cmd_evaluate(args: argparse.Namespace) -> int:
    from engine.training.data import load_dataset
    from engine.inference.predict import load_model, predict, resolve_scale
    from engine.metrics import pooled_metrics, segmentation_metrics

    loaded = load_model(args.checkpoint)
    cfg = _postprocess_config(args, loaded)
    ds = load_dataset(args.data)
    probs, preds, masks, fovs, per_image = [], [], [], [], []
    for i, sample in enumerate(ds.pairs):
        image, mask, fov = ds.raw(i)  # the supplied FOV mask, or the estimated one
        prob = predict(loaded, image, tta=args.tta, fov=fov, scale=args.scale)
        pred = _binarise(prob, cfg, args.threshold, fov)
        m = segmentation_metrics(pred, mask, fov, threshold=0.5)
        m["roc_auc"] = segmentation_metrics(prob, mask, fov, threshold=args.threshold)["roc_auc"]
        per_image.append({"id": sample.id, **_plain(m), "fov": "supplied" if sample.fov_path else "estimated",
                          "scale_factor": resolve_scale(loaded, fov, args.scale)})
        probs.append(prob), preds.append(pred), masks.append(mask), fovs.append(fov)
    # Pooled over every FOV pixel of the set, as the papers count; AUC always ranks the probabilities.
    pooled = pooled_metrics(list(zip(preds, masks, fovs)), threshold=0.5)
    pooled["roc_auc"] = pooled_metrics(list(zip(probs, masks, fovs)), threshold=args.threshold)["roc_auc"]
    result = {**_plain(pooled), "n_images": len(per_image), "layout": ds.layout, "checkpoint": str(loaded.path),
              "model_fov_diameter": loaded.fov_diameter, "scale": args.scale,
              "postprocess": cfg.to_dict() if cfg is not None else {"threshold": args.threshold},
              "per_image": per_image}
    print(json.dumps(result, indent=2))
    return 0


def cmd_synthesize(args: argparse.Namespace) -> int:
    from engine.training.synthetic import make_synthetic_dataset

    out = make_synthetic_dataset(args.out, n_images=args.n, size=args.size, seed=args.seed)
    print(f"wrote {args.n} synthetic images ({args.size}×{args.size}) to {out}")
    return 0


# --------------------------------------------------------------------------- parser

def _threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number between 0 and 1, not {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), not {text}")
    return value


def _scale(text: str) -> str | float:
    from engine.fov import parse_scale

    try:
        return parse_scale(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("scale ").rstrip(".")) from None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one sentence, not the usage block
        self.exit(EXIT_USER_ERROR, f"{self.prog}: {message}. See --help.\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m engine", description="Train and apply vessel-segmentation models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="train a U-Net on a data set folder")
    p.add_argument("--data", required=True,
                   help="data set folder as downloaded (DRIVE, STARE, CHASE_DB1, HRF) or images/ + masks/ [+ fov/]")
    p.add_argument("--out", required=True, help="folder for best.pt and last.pt")
    p.add_argument("--config", help="JSON file with training options")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one option (repeatable)")
    p.add_argument("--max-minutes", type=float, help="stop cleanly after this many minutes")
    p.add_argument("--no-plan", action="store_true", help="train with the options as given: do not measure "
                   "this machine to choose patch size, batch size, precision and epochs")
    p.add_argument("--resume", metavar="CKPT", help="continue from this last.pt with its own settings (change them "
                   "with --set, e.g. --set epochs=80 to train longer)")
    p.set_defaults(func=cmd_train)

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
        group.add_argument("--recommended", action="store_true", help="use the checkpoint's calibrated settings")
        group.add_argument("--threshold", type=_threshold, default=0.5, help="plain threshold (default 0.5)")
        p.add_argument("--tta", action="store_true", help="average predictions of flipped images")
        p.add_argument("--scale", type=_scale, default="auto",
                       help="resize each image for the model: auto (to the scale of the model's training "
                            "images, the default), none, or a factor such as 0.5")
        p.set_defaults(func=cmd_predict if name == "predict" else cmd_evaluate)

    p = sub.add_parser("synthesize", help="write a synthetic data set (images/, masks/, fov/)")
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=12, help="number of images (default 12)")
    p.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_synthesize)

    try:
        from engine import cli_jobs
    except ImportError:
        cli_jobs = None
    if cli_jobs is not None:
        cli_jobs.register(sub)
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
    except (ValueError, OSError) as exc:  # DatasetError, CheckpointError, ImageReadError, config errors, CliError
        message = str(exc) or type(exc).__name__
        if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
            message = f"{exc.strerror or exc} ({exc.filename})" if exc.filename else str(exc)
        print(f"error: {' '.join(message.split())}", file=sys.stderr)  # one line, whatever the message holds
        return EXIT_USER_ERROR
    except Exception as exc:  # a bug, not a user error: one line here, the traceback in the log
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
    except Exception:  # never let the report of a fault raise a second one
        return None
