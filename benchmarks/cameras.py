"""How a model holds on photographs of cameras it never saw: DRIVE images through simulated camera shifts.

Held-out DRIVE images (``--test-ids``; the models compared must not have trained on them) are put through
each shift of ``engine.training.camera`` at full strength (the direction of a cast, the place of a
vignette, ... drawn per image with a fixed seed, so every model sees the same photographs), through a
random composite camera ("camera mix": every shift with probability one half, as training draws them),
resized by 0.8 and 1.25 (another sensor size; the masks nearest-neighbour) and rotated by 30° (another
camera's orientation). Each is predicted as a clinician's photograph is: field of view estimated, scale
automatic, threshold 0.5; Dice pools the pixels inside the supplied FOV masks. One column per shift, one
row per model, then the ratios of every row against the first (the reference).

    .venv/bin/python benchmarks/cameras.py --model NAME=CHECKPOINT [--model NAME=CHECKPOINT ...]
        [--test-ids 21,22,23,24,37,38,39,40] [--tta]

With no ``--model`` it scores the shipped model on the 3 DRIVE images it held out for validation.

It is the proxy for data sets that are not here; ``make bench-cameras`` runs it on the shipped model.

``--leave-one-out`` measures the real thing on the three cameras of ``../shared/data`` instead: for each recipe
(``--recipe NAME=key=value,key=value``; the first is the shipped model's recipe) and each camera, a model is
trained through the product's multi-set training on the other two sets for ``--steps`` optimiser steps and
scored on every photograph of the third at its native resolution, as ``python -m engine evaluate --recommended``
scores it (automatic scale, its field-of-view masks or estimated ones, the model's recommended settings): Dice,
precision, sensitivity, AUC and seconds per photograph. ``--reference CHECKPOINT`` adds rows for a model that
trained on none of the photographs scored (e.g. the DRIVE-only model: its CHASE_DB1 and HRF rows), and
``--in-set CHECKPOINT`` scores a model of all three sets on the photographs each set held out for validation (a
second ``--in-set`` model is scored on the first one's).

    .venv/bin/python benchmarks/cameras.py --leave-one-out [--steps 2400] [--recipe NAME=k=v,...]
        [--reference CHECKPOINT] [--in-set CHECKPOINT] [--no-training] [--threads 1]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)  # benchmarks/queue.py would shadow the standard library's queue

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from engine.inference.predict import load_model, predict  # noqa: E402
from engine.postprocess.calibration import pooled_dice  # noqa: E402
from engine.pretrained import PRETRAINED_PATH  # noqa: E402
from engine.training.camera import SHIFTS, apply_shift, random_camera  # noqa: E402
from engine.training.data import load_dataset  # noqa: E402
from engine.training.sampling import split_indices  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
DRIVE = SHARED / "drive" / "training"
CAMERAS = {"DRIVE": DRIVE, "CHASE_DB1": SHARED / "chase_db1" / "training", "HRF": SHARED / "hrf" / "training"}
GEOMETRIC = {"scale ×0.8": ("scale", 0.8), "scale ×1.25": ("scale", 1.25), "rotate 30°": ("rotate", 30.0)}
COLUMNS = ("none", *SHIFTS, "camera mix", *GEOMETRIC)


def shifted(name: str, image: np.ndarray, mask: np.ndarray, fov: np.ndarray, seed: int):
    """(image, mask, fov) of one held-out photograph under the shift ``name`` (a column)."""
    rng = np.random.default_rng([seed, COLUMNS.index(name)])
    if name == "none":
        return image, mask, fov
    if name in SHIFTS:
        return apply_shift(image, name, 1.0, rng), mask, fov
    if name == "camera mix":
        return random_camera(image, rng), mask, fov
    kind, value = GEOMETRIC[name]
    h, w = image.shape[:2]
    if kind == "scale":
        size = (round(w * value), round(h * value))
        method = cv2.INTER_AREA if value < 1 else cv2.INTER_CUBIC
        return (cv2.resize(image, size, interpolation=method), cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST),
                cv2.resize(fov, size, interpolation=cv2.INTER_NEAREST))
    m = cv2.getRotationMatrix2D((w / 2, h / 2), value, 1.0)

    def turn(a, flags):
        return cv2.warpAffine(a, m, (w, h), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return turn(image, cv2.INTER_LINEAR), turn(mask, cv2.INTER_NEAREST), turn(fov, cv2.INTER_NEAREST)


def score(checkpoint: str, samples: list[tuple], tta: bool) -> dict[str, float]:
    """Pooled Dice at 0.5 per column for one model."""
    loaded = load_model(checkpoint)
    row = {}
    for name in COLUMNS:
        preds, masks, fovs = [], [], []
        for seed, (image, mask, fov) in enumerate(samples):
            img, msk, fv = shifted(name, image, mask, fov, seed)
            prob = predict(loaded, img, tta=tta)  # FOV estimated, scale automatic: as for a user's photograph
            preds.append(prob >= 0.5), masks.append(msk), fovs.append(fv)
        row[name] = pooled_dice(preds, masks, fovs)
    return row


def _recommended(predictor):
    from engine.postprocess.config import PostProcessConfig

    settings = predictor.recommended_settings()
    return PostProcessConfig.from_dict(settings) if settings else None


def evaluate_camera(checkpoint: str, camera: str, indices: list[int] | None = None) -> dict:
    """One model on one camera's photographs at their native resolution, as ``evaluate --recommended``."""
    from engine.inference.evaluate import evaluate_dataset
    from engine.inference.predictor import Predictor

    predictor = Predictor.open(checkpoint)
    evaluation = evaluate_dataset(predictor, load_dataset(CAMERAS[camera]), indices, config=_recommended(predictor))
    return {**evaluation.pooled, "seconds": evaluation.seconds_per_image}


def _recipes(texts: list[str]) -> list[tuple[str, dict]]:
    from engine.pretrained import RECIPE
    from engine.training.config import parse_set_option

    recipes = [("shipped recipe", dict(RECIPE))]
    for text in texts:
        name, _, changes = text.partition("=")
        recipe = dict(RECIPE)
        recipe.update(dict(parse_set_option(change) for change in changes.split(",") if change))
        recipes.append((name, recipe))
    return recipes


def leave_one_out(args) -> int:
    """Train on two cameras, score the third (see the module docstring); prints the table."""
    from engine.training.config import TrainingConfig
    from engine.training.loop import train

    missing = [str(path) for path in CAMERAS.values() if not path.is_dir()]
    if missing:
        print(f"The shared data sets are not here ({missing[0]}): leave-one-camera-out needs all three.",
              file=sys.stderr)
        return 2
    out = Path(args.out or ROOT / "benchmarks" / "out" / f"cameras_{time.strftime('%Y%m%d_%H%M%S')}")
    rows = []  # (recipe, camera, how, metrics)
    for reference in args.reference:
        for camera in CAMERAS:
            rows.append((Path(reference).name, camera, "reference", evaluate_camera(reference, camera)))
            print(f"  {Path(reference).name} on {camera}: Dice {rows[-1][3]['dice']:.4f}", flush=True)
    split = load_model(args.in_set[0]).config if args.in_set else None  # every --in-set row on the first's split
    for checkpoint in args.in_set:
        config = split
        for camera in CAMERAS:
            held = split_indices(len(load_dataset(CAMERAS[camera])), config.val_fraction, config.seed)[1]
            rows.append((Path(checkpoint).name, camera, f"its {len(held)} validation photographs",
                         evaluate_camera(checkpoint, camera, held)))
            print(f"  {Path(checkpoint).name} on {camera}'s validation photographs: Dice {rows[-1][3]['dice']:.4f}",
                  flush=True)
    for name, recipe in [] if args.no_training else _recipes(args.recipe):
        for camera in CAMERAS:
            others = [str(path) for other, path in CAMERAS.items() if other != camera]
            steps_per_epoch = min(int(recipe.get("steps_per_epoch", 400)), args.steps)
            config = TrainingConfig(**{**recipe, "steps_per_epoch": steps_per_epoch,
                                       "epochs": max(1, args.steps // steps_per_epoch),
                                       "num_threads": args.threads, "early_stopping_patience": 0})
            t0 = time.monotonic()
            result = train(config, others, out / name.replace(" ", "_") / f"without_{camera}")
            minutes = (time.monotonic() - t0) / 60
            metrics = evaluate_camera(str(result.best_checkpoint), camera)
            rows.append((name, camera, f"trained on the other two, {minutes:.0f} min", metrics))
            print(f"  {name} without {camera}: Dice {metrics['dice']:.4f} ({minutes:.0f} min)", flush=True)
    print("\n| model | scored on | how | Dice | precision | sensitivity | AUC | s / photograph |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for name, camera, how, m in rows:
        auc = f"{m['roc_auc']:.4f}" if m.get("roc_auc") is not None else "–"
        print(f"| {name} | {camera} | {how} | {m['dice']:.4f} | {m['precision']:.4f} | {m['sensitivity']:.4f} | "
              f"{auc} | {m['seconds']:.2f} |")
    if args.reference and len(rows) > len(CAMERAS):
        reference = {camera: m for name, camera, how, m in rows[:len(CAMERAS)]}
        print("\n| model / reference | " + " | ".join(CAMERAS) + " |\n|---|" + "---:|" * len(CAMERAS))
        for name in dict.fromkeys(r[0] for r in rows[len(CAMERAS):]):
            ratios = {camera: m["dice"] / reference[camera]["dice"] for n, camera, how, m in rows if n == name}
            print(f"| {name} | " + " | ".join(f"{ratios.get(c, float('nan')):.3f}" for c in CAMERAS) + " |")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leave-one-out", action="store_true",
                        help="train on two shared cameras and score the third, for each camera and recipe")
    parser.add_argument("--recipe", action="append", default=[], metavar="NAME=KEY=VALUE,...",
                        help="with --leave-one-out: another recipe, as changes to the shipped model's")
    parser.add_argument("--steps", type=int, default=2400, help="with --leave-one-out: optimiser steps per model")
    parser.add_argument("--reference", action="append", default=[], metavar="CHECKPOINT",
                        help="with --leave-one-out: a model scored on every photograph of each camera")
    parser.add_argument("--in-set", action="append", default=[], metavar="CHECKPOINT",
                        help="with --leave-one-out: a model of the three sets, scored on their validation photographs")
    parser.add_argument("--out", default=None, help="with --leave-one-out: where the models are written")
    parser.add_argument("--no-training", action="store_true",
                        help="with --leave-one-out: only the --reference and --in-set rows, no recipe trained")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=CHECKPOINT",
                        help="a row; the first is the reference (default: the shipped model)")
    parser.add_argument("--data", default=str(DRIVE), help="DRIVE training folder")
    parser.add_argument("--test-ids", default=None,
                        help="held-out images (none of the models may have trained on them); default 21-24 and "
                             "37-40, or the shipped model's own validation images when it is the only model")
    parser.add_argument("--tta", action="store_true", help="predict with flip test-time augmentation")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.leave_one_out:
        return leave_one_out(args)
    if not Path(args.data).is_dir():
        print(f"DRIVE not found at {args.data}: pass --data.", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    models = [m.split("=", 1) if "=" in m else (Path(m).stem, m) for m in args.model] or \
        [("shipped model", str(PRETRAINED_PATH))]
    ds = load_dataset(args.data)
    if args.test_ids:
        ids = args.test_ids.split(",")
    elif not args.model:  # the shipped model trained on every DRIVE image but its validation images
        config = load_model(str(PRETRAINED_PATH)).config
        ids = [ds.pairs[i].id for i in split_indices(len(ds), config.val_fraction, config.seed)[1]]
    else:
        ids = ["21", "22", "23", "24", "37", "38", "39", "40"]
    samples = [ds.raw(i) for i, s in enumerate(ds.pairs) if s.id in ids]
    print(f"{len(samples)} held-out DRIVE images ({', '.join(ids)}); Dice pooled over the FOV at 0.5, FOV estimated, "
          f"scale automatic{', flip TTA' if args.tta else ''}")
    rows = {}
    for name, path in models:
        t0 = time.monotonic()
        rows[name] = score(path, samples, args.tta)
        print(f"  {name}: {time.monotonic() - t0:.0f} s", flush=True)
    shifted_cols = COLUMNS[1:]
    header = "| model | " + " | ".join(COLUMNS) + " | mean shifted | worst |"
    print("\n" + header + "\n|---|" + "---:|" * (len(COLUMNS) + 2))
    for name, row in rows.items():
        values = [row[c] for c in shifted_cols]
        print(f"| {name} | " + " | ".join(f"{row[c]:.4f}" for c in COLUMNS)
              + f" | {np.mean(values):.4f} | {min(values):.4f} |")
    reference = next(iter(rows))
    ref = rows[reference]
    for name, row in list(rows.items())[1:]:
        ratios = [row[c] / ref[c] for c in COLUMNS]
        mean_ratio = np.mean([row[c] for c in shifted_cols]) / np.mean([ref[c] for c in shifted_cols])
        print(f"| {name} / {reference} | " + " | ".join(f"{r:.3f}" for r in ratios) + f" | {mean_ratio:.3f} | |")
    for name, row in rows.items():  # how much each shift costs the model itself
        print(f"| {name}: shifted / none | – | " + " | ".join(f"{row[c] / row['none']:.3f}" for c in shifted_cols)
              + " | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
