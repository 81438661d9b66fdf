"""Train the default config on DRIVE for a fixed wall-clock budget and score it on unseen images.

Split: the 20 DRIVE training images are divided into 16 for training (of which the trainer holds out
``val_fraction`` = 20 %, i.e. 3, for validation, early stopping and post-processing calibration) and 4
test images (default ids 37-40) that training never sees. Reported on the test images, with every FOV
pixel of the 4 images pooled as the papers count: Dice of best.pt at a plain 0.5 threshold, with the
calibrated post-processing and with flip test-time augmentation; Dice of last.pt; and the classical
vesselness baseline (threshold chosen on the 16 training images) for comparison.

``--folds 5`` cross-validates instead: five models, each trained for the budget with 4 consecutive
images held out (21-24, 25-28, ..., 37-40), so every one of the 20 images is scored by a model that
never saw it; the Dice pools the FOV pixels of all 20 (as the papers pool their 20 test images) and
a table shows each fold. The last fold is the single split above.

The run is planned for this machine first, as ``python -m engine train`` plans it (``--no-plan``: train
the options as given); ``--set`` fields are kept, like the options a user sets.

    .venv/bin/python benchmarks/train_drive.py [--minutes 10] [--threads 2] [--folds K] [--set key=value ...]

Prints validation Dice against time, seconds per epoch and patches/s; writes a JSON summary and the
checkpoints to benchmarks/out/ (git-ignored).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Replace this script's folder on the path: benchmarks/queue.py would shadow the standard library's queue.
sys.path[0] = str(ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from engine.postprocess.calibration import pooled_dice  # noqa: E402
from engine.training.data import Dataset, load_dataset  # noqa: E402
from engine.inference.predict import load_model, predict  # noqa: E402
from engine.metrics import pooled_metrics  # noqa: E402
from engine.postprocess import PostProcessConfig, enhanced_post_processing  # noqa: E402
from engine.training.config import TrainingConfig, parse_set_option  # noqa: E402
from engine.training.loop import train  # noqa: E402
from engine.training.planner import plan_training  # noqa: E402
from engine.vesselness import BASELINE_NAME, vesselness_map  # noqa: E402

DRIVE = ROOT.parent / "shared" / "data" / "drive" / "training"


def baseline_maps(ds: Dataset, cache: dict[str, tuple]) -> list[tuple]:
    """(vesselness map, mask, fov) per image. ``cache`` (by image id) is shared by the folds of a
    cross-validation, so each image's map (~0.65 s) is computed once, not once per fold."""
    for i, sample in enumerate(ds.pairs):
        if sample.id not in cache:
            image, mask, fov = ds.raw(i)
            cache[sample.id] = (vesselness_map(image, fov), mask, fov)
    return [cache[sample.id] for sample in ds.pairs]


def baseline_threshold(train_maps: list[tuple]) -> float:
    """The vesselness threshold with the best pooled Dice on the training images (Dice only: the full
    ``pooled_metrics`` also skeletonises every image for clDice, 13x the time over 39 thresholds)."""
    thresholds = np.round(np.arange(0.02, 0.8, 0.02), 2)
    return float(max(thresholds, key=lambda t: pooled_dice_of([(v >= t, m, f) for v, m, f in train_maps])))


def pooled_dice_of(items: list[tuple]) -> float:
    """Dice at 0.5 of ``(map or mask, vessel mask, fov)`` items, FOV pixels pooled. Only Dice: ``pooled_metrics``
    would also skeletonise every image for clDice and rank every pixel for the AUC."""
    preds, masks, fovs = zip(*items)
    return pooled_dice(list(preds), list(masks), list(fovs))


def _cell(value: float | None) -> str:
    """A validation number, or a dash for a run that trained on every image (none to validate on)."""
    return "—" if value is None else f"{value:.4f}"


def print_epoch(e: dict) -> None:
    if e["type"] == "epoch_end":
        print(f"{e['epoch']:5d} {e['elapsed']:9.1f} {e['seconds']:7.1f} {e['patches_per_s']:9.1f} "
              f"{e['train_loss']:10.4f} {_cell(e['val_loss']):>8} {_cell(e['val_dice']):>8} {e['lr']:8.1e}"
              + (" *" if e["is_best"] else ""), flush=True)
    elif e["type"] == "calibration":
        print(f"calibration on validation images: Dice {e['dice_before']:.4f} -> {e['dice_after']:.4f}", flush=True)


def run_split(config: TrainingConfig, full: Dataset, test_ids: set[str], out: Path,
              baseline_cache: dict[str, tuple]) -> dict:
    """Train on the images outside ``test_ids`` and score the test images; returns the summary, the maps and
    their Dice."""
    train_set = Dataset(full.root, full.layout, [s for s in full.pairs if s.id not in test_ids])
    test_set = Dataset(full.root, full.layout, [s for s in full.pairs if s.id in test_ids])
    print(f"DRIVE: {len(train_set)} images for training (incl. validation), {len(test_set)} unseen test images "
          f"({', '.join(sorted(test_ids))}); budget {config.max_minutes:g} min, {config.num_threads} threads")
    print(f"{'epoch':>5} {'elapsed s':>9} {'epoch s':>7} {'patches/s':>9} {'train loss':>10} {'val loss':>8} "
          f"{'val dice':>8} {'lr':>8}")
    t0 = time.monotonic()
    result = train(config, train_set, out, on_event=print_epoch)
    train_s = time.monotonic() - t0
    loaded = load_model(result.best_checkpoint)
    images, masks, fovs = zip(*(test_set.raw(i) for i in range(len(test_set))))
    t1 = time.monotonic()
    probs = [predict(loaded, image, fov=fov) for image, fov in zip(images, fovs)]
    predict_s = (time.monotonic() - t1) / len(test_set)
    tta = [predict(loaded, image, tta=True, fov=fov) for image, fov in zip(images, fovs)]
    last_model = load_model(result.last_checkpoint)  # the final weights, for those who pick checkpoints
    last = [predict(last_model, image, fov=fov) for image, fov in zip(images, fovs)]
    pp = PostProcessConfig.from_dict(result.recommended_postprocess) if result.recommended_postprocess else None
    post = [enhanced_post_processing(p, config=pp, fov=f).mask for p, f in zip(probs, fovs)] if pp else None
    maps = {"raw": list(zip(probs, masks, fovs)), "tta": list(zip(tta, masks, fovs)),
            "last": list(zip(last, masks, fovs)), "post": list(zip(post, masks, fovs)) if post else None}
    threshold = baseline_threshold(baseline_maps(train_set, baseline_cache))
    maps["baseline"] = [(v >= threshold, m, f) for v, m, f in baseline_maps(test_set, baseline_cache)]
    dice = {key: pooled_dice_of(items) for key, items in maps.items() if items}
    raw = pooled_metrics(maps["raw"], threshold=0.5)  # for the AUC; its Dice is dice["raw"]
    summary = {
        "budget_minutes": config.max_minutes, "threads": config.num_threads, "train_seconds": train_s,
        "stop_reason": result.stop_reason, "epochs": result.epochs_run, "best_epoch": result.best_epoch,
        "best_val_dice": result.best_metric, "test_ids": sorted(test_ids), "test_dice_raw": dice["raw"],
        "test_auc": raw["roc_auc"], "test_dice_tta": dice["tta"], "test_dice_last_checkpoint": dice["last"],
        "test_dice_postprocessed": dice.get("post"),
        "recommended_postprocess": result.recommended_postprocess, "calibration": result.calibration,
        "baseline": {"name": BASELINE_NAME, "threshold": threshold, "dice": dice["baseline"]},
        "predict_seconds_per_image": predict_s, "config": config.to_dict(),
        "history": [{k: h[k] for k in ("epoch", "elapsed", "seconds", "patches_per_s", "train_loss", "val_loss",
                                        "val_dice", "lr")} for h in result.history],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print()
    print(f"stopped: {result.stop_reason} after {result.epochs_run} epochs, {train_s / 60:.1f} min "
          f"(including calibration); best epoch {result.best_epoch}, val Dice {_cell(result.best_metric)}")
    print(f"unseen test images, pooled FOV pixels: Dice {dice['raw']:.4f} at 0.5, AUC {raw['roc_auc']:.4f}"
          + (f"; Dice {summary['test_dice_postprocessed']:.4f} with the recommended post-processing" if post else "")
          + f"; Dice {summary['test_dice_tta']:.4f} at 0.5 averaging 4 flips (--tta)")
    print(f"last.pt (epoch {result.epochs_run}) on the same images: Dice {summary['test_dice_last_checkpoint']:.4f} "
          "at 0.5")
    print(f"{BASELINE_NAME} on the same images: Dice {dice['baseline']:.4f} (threshold {threshold}); "
          f"U-Net / baseline = {dice['raw'] / dice['baseline']:.2f}")
    print(f"prediction: {predict_s:.2f} s per image; summary: {out / 'summary.json'}", flush=True)
    return {"summary": summary, "maps": maps, "dice": dice}


COLUMNS = (("best.pt", "raw"), ("+ post-proc.", "post"), ("+ flip TTA", "tta"), ("last.pt", "last"),
           ("Frangi", "baseline"))


def cross_validate(config: TrainingConfig, full: Dataset, folds: int, out: Path) -> dict:
    """Train ``folds`` models on consecutive held-out groups; score each image with the model that never saw it."""
    ids = sorted((s.id for s in full.pairs), key=lambda i: (len(i), i))
    groups = [list(g) for g in np.array_split(ids, folds)]
    runs, baseline_cache = [], {}
    for k, group in enumerate(groups, start=1):
        print(f"\n=== fold {k}/{folds}: test images {', '.join(group)}", flush=True)
        runs.append(run_split(config, full, set(group), out / f"fold{k}", baseline_cache))
    pooled = {key: pooled_dice_of([item for r in runs for item in r["maps"][key]])
              for _, key in COLUMNS if all(r["maps"].get(key) for r in runs)}
    print(f"\n{folds}-fold cross-validation, {config.max_minutes:g} min per model, {config.num_threads} threads. "
          "Dice over the FOV pixels of each fold's unseen images\n"
          "(best.pt, flip TTA and last.pt at 0.5; post-proc.: best.pt with its calibrated settings):")
    header = f"{'fold':>4} {'test images':>12} {'epochs':>6} {'val dice':>8} " + " ".join(
        f"{name:>12}" for name, key in COLUMNS if key in pooled)
    print(header)
    for k, (group, r) in enumerate(zip(groups, runs), start=1):
        s = r["summary"]
        cells = [r["dice"][key] for _, key in COLUMNS if key in pooled]
        print(f"{k:4d} {group[0] + '-' + group[-1]:>12} {s['epochs']:6d} {_cell(s['best_val_dice']):>8} "
              + " ".join(f"{c:12.4f}" for c in cells))
    print(f"{'all':>4} {str(len(ids)) + ' images':>12} {'':>6} {'':>8} "
          + " ".join(f"{pooled[key]:12.4f}" for _, key in COLUMNS if key in pooled))
    print(f"U-Net (best.pt) / Frangi baseline = {pooled['raw'] / pooled['baseline']:.2f}")
    full_metrics = pooled_metrics([item for r in runs for item in r["maps"]["raw"]], threshold=0.5)
    predict_s = float(np.mean([r["summary"]["predict_seconds_per_image"] for r in runs]))
    print(f"best.pt over all {len(ids)} images: Dice {full_metrics['dice']:.4f}, AUC {full_metrics['roc_auc']:.4f}, "
          f"clDice {full_metrics['cldice']:.4f}; prediction {predict_s:.2f} s per image")
    summary = {"folds": folds, "budget_minutes": config.max_minutes, "threads": config.num_threads,
               "pooled_dice": pooled, "pooled_auc": full_metrics["roc_auc"], "pooled_cldice": full_metrics["cldice"],
               "predict_seconds_per_image": predict_s, "fold_summaries": [r["summary"] for r in runs], "config": config.to_dict()}
    (out / "cv_summary.json").write_text(json.dumps(summary, indent=2))
    print(f"summary: {out / 'cv_summary.json'}")
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DRIVE), help="DRIVE training folder")
    parser.add_argument("--minutes", type=float, default=10.0, help="wall-clock training budget (per model)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--test-ids", default="37,38,39,40", help="images kept out of training")
    parser.add_argument("--folds", type=int, default=0,
                        help="cross-validate over this many folds of consecutive images instead (ignores --test-ids)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override the default config")
    parser.add_argument("--no-plan", action="store_true",
                        help="train the options as given; by default the run is planned for this machine first, as "
                             "`python -m engine train` does (--set fields are kept)")
    parser.add_argument("--out", default=None, help="output folder (default benchmarks/out/drive_<time>)")
    args = parser.parse_args()

    data = Path(args.data)
    if not (data / "images").is_dir():
        print(f"DRIVE not found at {data}: pass --data.", file=sys.stderr)
        return 2
    full = load_dataset(data)
    if args.folds and not 2 <= args.folds <= len(full) // 2:
        print(f"--folds must be between 2 and {len(full) // 2} for {len(full)} images.", file=sys.stderr)
        return 2
    overrides = dict(parse_set_option(s) for s in args.set)
    config = TrainingConfig().with_updates(max_minutes=args.minutes, num_threads=args.threads, **overrides)
    plan = None
    if not args.no_plan:
        config, plan = plan_training(config, user_fields=set(overrides) | {"max_minutes", "num_threads"}, dataset=full)
        print("plan:", plan.explain(), flush=True)
    out = Path(args.out or ROOT / "benchmarks" / "out" / time.strftime("drive_%Y%m%d_%H%M%S"))
    torch.set_num_threads(args.threads)
    print("config:", json.dumps({k: v for k, v in config.to_dict().items() if v != getattr(TrainingConfig(), k)}
                                or "defaults"), "| defaults:", json.dumps(TrainingConfig().to_dict()))
    if plan is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "plan.json").write_text(json.dumps(plan.to_dict(), indent=2))
    if args.folds:
        cross_validate(config, full, args.folds, out)
    else:
        run_split(config, full, set(args.test_ids.split(",")), out, {})
    return 0


if __name__ == "__main__":
    sys.exit(main())
