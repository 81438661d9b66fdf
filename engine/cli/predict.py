"""``python -m engine predict`` (probability and mask PNGs) and ``python -m engine evaluate`` (metrics as JSON)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from engine.cli.common import PLAIN_THRESHOLD, CliError, read_json

def _postprocess_config(args: argparse.Namespace, predictor) -> tuple[Any, str]:
    """(PostProcessConfig or None for a plain threshold, words saying which) chosen by the options.

    ``--postprocess`` reads a file; ``--recommended`` (and predict without ``--raw`` or ``--threshold``) takes
    the model's recommended settings, or the default post-processing where it has none.
    """
    from engine.postprocess import PostProcessConfig

    if getattr(args, "postprocess", None):
        return (PostProcessConfig.from_dict(read_json(args.postprocess, "post-processing settings")),
                f"the settings in {args.postprocess}")
    plain = getattr(args, "raw", False) or args.threshold is not None
    if getattr(args, "recommended", False) or (args.command == "predict" and not plain):
        recommended = predictor.recommended_settings()
        if recommended:
            return PostProcessConfig.from_dict(recommended), "the model's recommended settings"
        return PostProcessConfig(), "the default post-processing (the model has no recommended settings)"
    threshold = PLAIN_THRESHOLD if args.threshold is None else args.threshold
    args.threshold = threshold
    return None, f"the probability map at {threshold:g}, not post-processed"
def _input_images(path: Path) -> list[Path]:
    from engine.imageio import IMAGE_EXTENSIONS, list_images

    if path.is_file():
        return [path]
    if path.is_dir():
        files = list_images(path)
        if not files:
            raise CliError(f"{path} holds no images ({', '.join(IMAGE_EXTENSIONS)}, or these gzip-compressed).")
        return files
    raise CliError(f"The input {path} does not exist.")


def cmd_predict(args: argparse.Namespace) -> int:
    from engine.fov import estimate_fov
    from engine.imageio import encode_png, read_image
    from engine.inference.evaluate import binarise
    from engine.inference.predictor import Predictor
    from storage.paths import atomic_write_bytes

    predictor = Predictor.open(args.checkpoint)
    cfg, settings_words = _postprocess_config(args, predictor)
    files = _input_images(Path(args.input))
    out = Path(args.output)
    existing = next((p for p in (out, *out.parents) if p.exists()), None)  # the folder, or what would hold it
    if existing is not None and not existing.is_dir():
        raise CliError(f"--output must be a folder, but {existing} is a file: give a folder for the PNGs "
                       "(it is created when missing).")
    for path in files:
        image = read_image(path)
        fov = estimate_fov(image)
        prediction = predictor.predict(image, fov, scale=args.scale, tta=args.tta)
        prob, factor = prediction.map, prediction.factor
        mask = binarise(prob, cfg, args.threshold, fov)  # nothing outside the FOV
        atomic_write_bytes(out / f"{path.stem}_prob.png", encode_png((prob * 255 + 0.5).astype(np.uint8)))
        atomic_write_bytes(out / f"{path.stem}_mask.png", encode_png(mask))
        print(f"{path.name}: {out / (path.stem + '_mask.png')} ({mask.mean() * 100:.1f}% vessel pixels; "
              f"estimated field of view; resized ×{factor:.3g} for the model"
              f"{'; flip test-time augmentation' if args.tta else ''})")
    print(f"masks: {settings_words}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from engine.inference.evaluate import evaluate_dataset
    from engine.inference.predictor import Predictor
    from engine.training.data import load_dataset

    predictor = Predictor.open(args.checkpoint)
    cfg, settings_words = _postprocess_config(args, predictor)
    ds = load_dataset(args.data)
    # Pooled over every FOV pixel of the set, as the papers count, one photograph at a time (bounded memory).
    evaluation = evaluate_dataset(predictor, ds, config=cfg, threshold=args.threshold, scale=args.scale, tta=args.tta)
    per_image = [{k: v for k, v in row.items() if k != "seconds"} for row in evaluation.per_image]
    result = {**evaluation.pooled, "n_images": len(per_image), "layout": ds.layout,
              "checkpoint": str(Path(predictor.source)),
              "model_fov_diameter": predictor.fov_diameter, "scale": args.scale,
              "postprocess": cfg.to_dict() if cfg is not None else {"threshold": args.threshold},
              "postprocess_used": settings_words, "tta": bool(args.tta),
              "per_image": per_image}
    print(json.dumps(result, indent=2))
    return 0
