"""Train the default config on DRIVE for a fixed wall-clock budget and score it on unseen images.

Split: the 20 DRIVE training images are divided into 16 for training (of which the trainer holds out
``val_fraction`` = 20 %, i.e. 3, for validation, early stopping and post-processing calibration) and 4
test images (default ids 37-40) that training never sees. Reported on the test images, with every FOV
pixel of the 4 images pooled as the papers count: Dice of best.pt at a plain 0.5 threshold, with the
calibrated post-processing and with flip test-time augmentation; Dice of last.pt; and the classical
vesselness baseline (threshold chosen on the 16 training images) for comparison.

    .venv/bin/python benchmarks/train_drive.py [--minutes 10] [--threads 2] [--set key=value ...]

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

from engine.data import Dataset, load_dataset  # noqa: E402
from engine.infer import load_model, predict  # noqa: E402
from engine.metrics import pooled_metrics  # noqa: E402
from engine.postprocess import PostProcessConfig, enhanced_post_processing  # noqa: E402
from engine.train import TrainingConfig, parse_set_option, train  # noqa: E402

DRIVE = ROOT.parent / "shared" / "data" / "drive" / "training"


def baseline(train_set: Dataset, test_set: Dataset) -> dict | None:
    """Vesselness (Frangi) Dice on the test images; its threshold is the best one on the training images."""
    try:
        from engine.vesselness import BASELINE_NAME, vesselness_map
    except ImportError:
        return None
    def maps(ds):
        out = []
        for i in range(len(ds)):
            image, mask, fov = ds.raw(i)
            out.append((vesselness_map(image, fov), mask, fov))
        return out
    train_maps = maps(train_set)
    thresholds = np.round(np.arange(0.02, 0.8, 0.02), 2)
    best_t = max(thresholds, key=lambda t: pooled_metrics([(v >= t, m, f) for v, m, f in train_maps])["dice"])
    test = pooled_metrics([(v >= best_t, m, f) for v, m, f in maps(test_set)])
    return {"name": BASELINE_NAME, "threshold": float(best_t), "dice": test["dice"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DRIVE), help="DRIVE training folder")
    parser.add_argument("--minutes", type=float, default=10.0, help="wall-clock training budget")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--test-ids", default="37,38,39,40", help="images kept out of training")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override the default config")
    parser.add_argument("--out", default=None, help="output folder (default benchmarks/out/drive_<time>)")
    args = parser.parse_args()

    data = Path(args.data)
    if not (data / "images").is_dir():
        print(f"DRIVE not found at {data}: pass --data.", file=sys.stderr)
        return 2
    full = load_dataset(data)
    test_ids = set(args.test_ids.split(","))
    train_set = Dataset(full.root, full.layout, [s for s in full.pairs if s.id not in test_ids])
    test_set = Dataset(full.root, full.layout, [s for s in full.pairs if s.id in test_ids])
    config = TrainingConfig().with_updates(max_minutes=args.minutes, num_threads=args.threads,
                                           **dict(parse_set_option(s) for s in args.set))
    out = Path(args.out or ROOT / "benchmarks" / "out" / time.strftime("drive_%Y%m%d_%H%M%S"))
    torch.set_num_threads(args.threads)
    print(f"DRIVE: {len(train_set)} images for training (incl. validation), {len(test_set)} unseen test images "
          f"({', '.join(sorted(test_ids))}); budget {args.minutes:g} min, {args.threads} threads")
    print("config:", json.dumps({k: v for k, v in config.to_dict().items() if v != getattr(TrainingConfig(), k)}
                                or "defaults"), "| defaults:", json.dumps(TrainingConfig().to_dict()))
    print(f"{'epoch':>5} {'elapsed s':>9} {'epoch s':>7} {'patches/s':>9} {'train loss':>10} {'val loss':>8} "
          f"{'val dice':>8} {'lr':>8}")

    def on_event(e: dict) -> None:
        if e["type"] == "epoch_end":
            print(f"{e['epoch']:5d} {e['elapsed']:9.1f} {e['seconds']:7.1f} {e['patches_per_s']:9.1f} "
                  f"{e['train_loss']:10.4f} {e['val_loss']:8.4f} {e['val_dice']:8.4f} {e['lr']:8.1e}"
                  + (" *" if e["is_best"] else ""), flush=True)
        elif e["type"] == "calibration":
            print(f"calibration on validation images: Dice {e['dice_before']:.4f} -> {e['dice_after']:.4f}", flush=True)

    t0 = time.monotonic()
    result = train(config, train_set, out, on_event=on_event)
    train_s = time.monotonic() - t0
    loaded = load_model(result.best_checkpoint)
    images, masks, fovs = zip(*(test_set.raw(i) for i in range(len(test_set))))
    t1 = time.monotonic()
    probs = [predict(loaded, image, fov=fov) for image, fov in zip(images, fovs)]
    predict_s = (time.monotonic() - t1) / len(test_set)
    raw = pooled_metrics(list(zip(probs, masks, fovs)), threshold=0.5)

    def dice_at_half(model, tta: bool = False) -> float:
        test_probs = [predict(model, image, tta=tta, fov=fov) for image, fov in zip(images, fovs)]
        return pooled_metrics(list(zip(test_probs, masks, fovs)), threshold=0.5)["dice"]

    tta_dice = dice_at_half(loaded, tta=True)
    last_dice = dice_at_half(load_model(result.last_checkpoint))  # the final weights, for those who pick checkpoints
    pp = PostProcessConfig.from_dict(result.recommended_postprocess) if result.recommended_postprocess else None
    post = pooled_metrics([(enhanced_post_processing(p, config=pp, fov=f).mask, m, f)
                           for p, m, f in zip(probs, masks, fovs)]) if pp else None
    base = baseline(train_set, test_set)
    summary = {
        "budget_minutes": args.minutes, "threads": args.threads, "train_seconds": train_s,
        "stop_reason": result.stop_reason, "epochs": result.epochs_run, "best_epoch": result.best_epoch,
        "best_val_dice": result.best_metric, "test_ids": sorted(test_ids), "test_dice_raw": raw["dice"],
        "test_auc": raw["roc_auc"], "test_dice_tta": tta_dice, "test_dice_last_checkpoint": last_dice,
        "test_dice_postprocessed": post["dice"] if post else None,
        "recommended_postprocess": result.recommended_postprocess, "calibration": result.calibration,
        "baseline": base, "predict_seconds_per_image": predict_s, "config": config.to_dict(),
        "history": [{k: h[k] for k in ("epoch", "elapsed", "seconds", "patches_per_s", "train_loss", "val_loss",
                                        "val_dice", "lr")} for h in result.history],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print()
    print(f"stopped: {result.stop_reason} after {result.epochs_run} epochs, {train_s / 60:.1f} min "
          f"(including calibration); best epoch {result.best_epoch}, val Dice {result.best_metric:.4f}")
    print(f"unseen test images, pooled FOV pixels: Dice {raw['dice']:.4f} at 0.5, AUC {raw['roc_auc']:.4f}"
          + (f"; Dice {post['dice']:.4f} with the recommended post-processing" if post else "")
          + f"; Dice {tta_dice:.4f} at 0.5 averaging 4 flips (--tta)")
    print(f"last.pt (epoch {result.epochs_run}) on the same images: Dice {last_dice:.4f} at 0.5")
    if base:
        print(f"{base['name']} on the same images: Dice {base['dice']:.4f} (threshold {base['threshold']}); "
              f"U-Net / baseline = {raw['dice'] / base['dice']:.2f}")
    print(f"prediction: {predict_s:.2f} s per image; summary: {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
