"""Does a model trained on DRIVE's 565×584 photographs still see vessels in larger or smaller ones?

DRIVE images the model did not train on (the pretrained model's 4 validation images, or all 20 with
``--images all``) are resized by each factor (the photograph with area averaging or cubic
interpolation, its vessel and FOV masks nearest-neighbour) and saved as JPEG at quality 80, as a
clinic's camera would (the native size is scored both as stored and as JPEG 80, so that what JPEG
costs and what the resizing costs can be told apart). Each is then predicted twice without a FOV mask (the FOV is estimated, as for
a user's photograph): ``scale="none"`` (pixels as they are) and ``scale="auto"`` (resized to the
model's training scale and back). Dice is pooled over the FOV pixels of each factor at threshold 0.5;
"native" is the untouched images. The second table times one 3504×2336 photograph (HRF's size)
through ``predict`` and the recommended post-processing.

    .venv/bin/python benchmarks/scale.py [--checkpoint engine/weights/drive_unet.pt] [--images val|all]
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

from engine.postprocess.calibration import pooled_dice  # noqa: E402
from engine.training.data import load_dataset  # noqa: E402
from engine.training.sampling import split_indices  # noqa: E402
from engine.fov import estimate_fov  # noqa: E402
from engine.inference.predict import load_model, predict, resolve_scale  # noqa: E402
from engine.postprocess import PostProcessConfig, enhanced_post_processing  # noqa: E402
from engine.pretrained import PRETRAINED_PATH  # noqa: E402

DRIVE = ROOT.parent / "shared" / "data" / "drive" / "training"
FACTORS = (0.75, 1.77, 3.0, 6.0)
JPEG_QUALITY = 80


def jpeg(image: np.ndarray, quality: int = JPEG_QUALITY) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1].copy()


def resized(image, mask, fov, factor):
    if factor is None:  # the untouched photograph
        return image, mask, fov
    if factor == 1.0:
        return jpeg(image), mask, fov
    method = cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC
    size = (round(image.shape[1] * factor), round(image.shape[0] * factor))
    nearest = cv2.INTER_NEAREST
    return (jpeg(cv2.resize(image, size, interpolation=method)), cv2.resize(mask, size, interpolation=nearest),
            cv2.resize(fov, size, interpolation=nearest))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(PRETRAINED_PATH))
    parser.add_argument("--images", choices=("val", "all"), default="val")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not DRIVE.is_dir():
        sys.exit(f"{DRIVE} is absent: this benchmark needs the DRIVE training images.")
    torch.set_num_threads(args.threads)
    loaded = load_model(args.checkpoint)
    ds = load_dataset(DRIVE)
    cfg = loaded.config
    indices = range(len(ds)) if args.images == "all" else split_indices(len(ds), cfg.val_fraction, cfg.seed)[1]
    samples = [ds.raw(i) for i in indices]
    print(f"model {Path(args.checkpoint).name}: trained at FOV diameter {loaded.fov_diameter} px; "
          f"{len(samples)} DRIVE images ({', '.join(ds.pairs[i].id for i in indices)}), JPEG quality {JPEG_QUALITY}")

    native = native_jpeg = None
    rows = []
    for factor in (None, 1.0, *FACTORS):
        scored = {"none": ([], [], []), "auto": ([], [], [])}
        chosen, seconds, size = [], 0.0, None
        for image, mask, fov in samples:
            img, msk, true_fov = resized(image, mask, fov, factor)
            size = f"{img.shape[1]}×{img.shape[0]}"
            est = estimate_fov(img)
            for mode in ("none", "auto"):
                start = time.perf_counter()
                prob = predict(loaded, img, fov=est, scale=mode)
                if mode == "auto":
                    seconds += time.perf_counter() - start
                    chosen.append(resolve_scale(loaded, est, "auto"))
                preds, masks, fovs = scored[mode]
                preds.append(prob >= 0.5), masks.append(msk), fovs.append(true_fov)
        dice = {mode: pooled_dice(*scored[mode]) for mode in scored}
        if factor is None:
            native = dice["none"]
        elif factor == 1.0:
            native_jpeg = dice["none"]
        rows.append((factor, size, dice["none"], dice["auto"], np.mean(chosen), seconds / len(samples)))

    print()
    print("| resize | size | Dice, scale none | Dice, scale auto | auto / none | auto − native | "
          "auto − native JPEG 80 | auto resized by | s/image (auto) |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for factor, size, none, auto, chose, sec in rows:
        label = "native (as stored)" if factor is None else "native, JPEG 80" if factor == 1.0 else f"×{factor:g}, JPEG 80"
        print(f"| {label} | {size} | {none:.4f} | {auto:.4f} | {auto / none:.2f} | {auto - native:+.4f} | "
              f"{auto - native_jpeg:+.4f} | ×{chose:.3f} | {sec:.2f} |")

    # One HRF-sized photograph: a DRIVE image enlarged to 2336 px high, padded to 3504 px wide.
    image, _, _ = samples[0]
    big = cv2.resize(image, (round(image.shape[1] * 2336 / image.shape[0]), 2336), interpolation=cv2.INTER_CUBIC)
    pad = 3504 - big.shape[1]
    big = jpeg(cv2.copyMakeBorder(big, 0, 0, pad // 2, pad - pad // 2, cv2.BORDER_CONSTANT, value=(0, 0, 0)))
    post = PostProcessConfig.from_dict(loaded.recommended_postprocess) if loaded.recommended_postprocess \
        else PostProcessConfig()
    print()
    print("| 3504×2336 photograph | FOV estimate s | predict s | post-processing s | total s |")
    print("|---|---:|---:|---:|---:|")
    for mode in ("auto", "none"):
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fov = estimate_fov(big)
            t1 = time.perf_counter()
            prob = predict(loaded, big, fov=fov, scale=mode)
            t2 = time.perf_counter()
            enhanced_post_processing(prob, config=post, fov=fov)
            t3 = time.perf_counter()
            times.append((t1 - t0, t2 - t1, t3 - t2, t3 - t0))
        best = min(times, key=lambda t: t[3])
        print(f"| scale {mode} | {best[0]:.2f} | {best[1]:.2f} | {best[2]:.2f} | {best[3]:.2f} |")


if __name__ == "__main__":
    main()
