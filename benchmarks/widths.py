"""At which field-of-view width should a wide photograph be predicted? The measurement behind the scale rule.

Every photograph of a camera (``--camera``: HRF, CHASE_DB1 or DRIVE from ``../shared/data``; ``--images val``
for the ones the model held out for validation) is predicted with its field of view brought to each width of
``--widths`` (pixels, or "native": as photographed) and the map enlarged back to the photograph's own
size, then scored there as ``python -m engine evaluate`` scores it (threshold 0.5, the supplied FOV masks):
Dice, precision, sensitivity pooled over the FOV, and seconds per photograph (prediction only, warm, flip
test-time augmentation off). The last column is each width's Dice over the rule's own (``auto``).

    .venv/bin/python benchmarks/widths.py --checkpoint engine/weights/drive_unet.pt --camera HRF \\
        [--widths 540,800,1000,1200,1500,2000] [--images all|val] [--threads 2]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)  # benchmarks/queue.py would shadow the standard library's queue

import torch  # noqa: E402

from engine.fov import fov_diameter  # noqa: E402
from engine.inference.predict import load_model, predict, resolve_scale  # noqa: E402
from engine.metrics import RunningMetrics  # noqa: E402
from engine.training.data import load_dataset  # noqa: E402
from engine.training.sampling import split_indices  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
CAMERAS = {"DRIVE": SHARED / "drive" / "training", "CHASE_DB1": SHARED / "chase_db1" / "training",
           "HRF": SHARED / "hrf" / "training"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--camera", choices=tuple(CAMERAS), default="HRF")
    parser.add_argument("--widths", default="540,800,1000,1200,1500,2000")
    parser.add_argument("--images", choices=("all", "val"), default="all")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not CAMERAS[args.camera].is_dir():
        print(f"{CAMERAS[args.camera]} is not here: the measurement needs the shared data sets.", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    loaded = load_model(args.checkpoint)
    ds = load_dataset(CAMERAS[args.camera])
    indices = list(range(len(ds)))
    if args.images == "val":
        indices = split_indices(len(ds), loaded.config.val_fraction, loaded.config.seed)[1]
    columns = ["auto", *[w.strip() for w in args.widths.split(",")]]
    running = {c: RunningMetrics() for c in columns}
    seconds = {c: 0.0 for c in columns}
    for i in indices:
        image, mask, fov = ds.raw(i)
        diameter = fov_diameter(fov) or max(fov.shape)
        for column in columns:
            factor = {"auto": resolve_scale(loaded, fov, "auto"), "native": 1.0}.get(column)
            if factor is None:
                factor = float(column) / diameter
            predict(loaded, image[:64, :64].copy(), fov=None)  # warm
            t0 = time.perf_counter()
            prob = predict(loaded, image, fov=fov, scale=factor)
            seconds[column] += time.perf_counter() - t0
            running[column].add(prob >= 0.5, mask, fov, prob=prob)
        print(f"  {ds.pairs[i].id} done", flush=True)
    auto = running["auto"].result()["dice"]
    print(f"\n{Path(args.checkpoint).name} on {len(indices)} {args.camera} photographs ({args.images}); "
          f"its training widths {loaded.fov_range}\n")
    print("| predicted at (FOV width) | Dice | precision | sensitivity | s / photograph | Dice / auto |")
    print("|---|---:|---:|---:|---:|---:|")
    for column in columns:
        m = running[column].result()
        print(f"| {column} | {m['dice']:.4f} | {m['precision']:.4f} | {m['sensitivity']:.4f} | "
              f"{seconds[column] / len(indices):.2f} | {m['dice'] / auto:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
