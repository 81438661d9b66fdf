"""Loading checkpoints safely and predicting vessel probability maps of any size.

``load_model(path)`` reads a checkpoint with ``torch.load(weights_only=True)``: a corrupt, truncated,
foreign or malicious file gives a :class:`CheckpointError` sentence and runs no code.
``predict(loaded, image_rgb)`` applies the checkpoint's preprocessing and returns float32 (H, W)
probabilities; images larger than one tile are cut into overlapping tiles blended with a Gaussian
window (as nnU-Net does), so memory stays bounded and tile borders do not show.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from engine.errors import UserError
from engine.fov import estimate_fov, fov_diameter, parse_scale, range_factor, rescale
from engine.imageio import MIN_SIDE
from engine.tiling import TILE_SIZE, sliding_window_logits

# The dashboard's pages and batch jobs (from the pages or the API) predict with flip test-time augmentation
# (``predict(tta=True)``); TTA_WORDS is how they say so. The command line takes it as asked (``--tta``).
DASHBOARD_TTA = True
TTA_WORDS = "each map averages the predictions of the photograph and of its three flips (test-time augmentation)"
from engine.training.checkpoint import (CheckpointError, build_model, checkpoint_scale, checkpoint_scale_range,
                                        load_checkpoint_dict)
from engine.training.config import TrainingConfig
from engine.training.data import preprocess
from engine.training.models import fuse_for_inference


@dataclass
class LoadedModel:
    model: torch.nn.Module
    config: TrainingConfig
    epoch: int
    metrics: dict
    recommended_postprocess: dict | None
    path: Path
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    calibration: dict | None = None
    fov_diameter: float | None = None  # the scale of the training images (engine.fov); None: not recorded
    fov_range: tuple[float, float] | None = None  # the narrowest and widest training scale; None: not recorded



def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a checkpoint for inference (model in eval mode).

    Args:
        path: a ``.pt`` file written by training.
        device: where the model runs (``"cpu"``, ``"cuda"``, a ``torch.device``).

    Returns:
        The model with its config, epoch, metrics, recommended post-processing and calibration.

    Raises:
        CheckpointError: the file is missing, damaged, foreign, carries code, or its fields or
            settings are not what this program writes (see :func:`load_checkpoint_dict`).
    """
    ckpt = load_checkpoint_dict(path)
    name = Path(path).name
    try:
        config = TrainingConfig.from_dict(ckpt["config"])
    except (UserError, TypeError) as exc:
        raise CheckpointError(f"{name} has settings this program does not accept ({exc}): it was written by "
                              "another version of the program or edited; use a checkpoint from this version.") from None
    model = build_model(config)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, KeyError, TypeError, ValueError, AttributeError):
        raise CheckpointError(f"{name}: the weights do not fit the model its config describes; the file is damaged.") from None
    device = torch.device(device)
    model = fuse_for_inference(model.to(device).eval())  # about a sixth faster on a CPU
    if device.type == "cpu":  # channels-last convolutions are faster on CPUs (oneDNN)
        model.to(memory_format=torch.channels_last)
    return LoadedModel(model, config, ckpt.get("epoch", 0), dict(ckpt.get("metrics") or {}),
                       ckpt.get("recommended_postprocess"), Path(path), device, ckpt.get("calibration"),
                       checkpoint_scale(ckpt), checkpoint_scale_range(ckpt))



def resolve_scale(loaded: LoadedModel, fov: np.ndarray, scale: str | float = "auto") -> float:
    """The factor an image is resized by before the model sees it (1.0: as it is).

    Args:
        loaded: the model; its ``fov_range`` holds the scales it was trained at.
        fov: the image's field of view (H, W), nonzero inside (supplied or estimated).
        scale: ``"auto"`` (bring the FOV's diameter into the model's training scales when it lies outside them
            by more than ``engine.fov.SCALE_TOLERANCE``: a photograph wider than the widest training scale is
            predicted at that scale and its map enlarged back), ``"none"`` (1.0), or a factor used as given.

    Returns:
        The factor (new size = old size × factor).

    Raises:
        UserError: ``scale`` is not one of the above.
    """
    scale = parse_scale(scale)
    if scale == "none":
        return 1.0
    if scale != "auto":
        return float(scale)
    low, high = loaded.fov_range or (loaded.fov_diameter, loaded.fov_diameter)
    return range_factor(low, high, fov_diameter(fov))


def check_image_and_fov(image_rgb: Any, fov: Any = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(image, fov as uint8 {0,1} or None) after checking their shapes; UserError with a sentence otherwise."""
    image = np.asarray(image_rgb)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise UserError(f"predict needs an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}.")
    if min(image.shape[:2]) < MIN_SIDE:
        raise UserError(f"The image is {image.shape[1]}×{image.shape[0]} pixels; it must be at least "
                         f"{MIN_SIDE}×{MIN_SIDE} pixels.")
    if fov is None:
        return image, None
    mask = np.asarray(fov)
    if mask.ndim == 3 and mask.shape[2] in (1, 3, 4):
        mask = mask.max(axis=2)
    if mask.shape != image.shape[:2]:
        raise UserError(f"The field-of-view mask is {mask.shape[-1]}×{mask.shape[0]} pixels but the image is "
                         f"{image.shape[1]}×{image.shape[0]}: use the mask made for this image.")
    mask = (mask != 0).astype(np.uint8)
    if not mask.any():
        raise UserError("The field-of-view mask is empty (no pixel inside): use the mask made for this image, "
                         "or none to have it estimated.")
    return image, mask


def predict(loaded: LoadedModel, image_rgb: np.ndarray, tta: bool = False, fov: np.ndarray | None = None,
            tile_size: int = TILE_SIZE, scale: str | float = "auto") -> np.ndarray:
    """Vessel probability map for an RGB photograph of any size and scale.

    Args:
        loaded: a model from :func:`load_model`.
        image_rgb: uint8 (H, W, 3).
        tta: also predict the flipped images and average the probabilities (4 passes).
        fov: field-of-view mask (H, W), nonzero inside; estimated with :func:`engine.fov.estimate_fov`
            when None. It sets the normalisation statistics, the scale, and the map is 0 outside it.
        tile_size: larger inputs are cut into overlapping tiles of this side (bounded memory).
        scale: see :func:`resolve_scale`; the image is resized by that factor, predicted, and the
            map resized back, so the result always has the image's own size.

    Returns:
        float32 (H, W) in [0, 1]; 0 outside the FOV.

    Raises:
        UserError: an image or FOV of the wrong shape, type or size, or an unknown ``scale``.
    """
    image, fov = check_image_and_fov(image_rgb, fov)
    if fov is None:
        fov = estimate_fov(image)
    h, w = image.shape[:2]
    factor = resolve_scale(loaded, fov, scale)
    work_image, work_fov = rescale(image, factor), rescale(fov, factor, "mask")
    if not work_fov.any():
        work_fov = np.ones(work_fov.shape, np.uint8)
    prob = _predict_as_is(loaded, work_image, work_fov, tta, tile_size)
    if factor != 1.0:
        prob = cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR)
    prob = np.clip(prob, 0.0, 1.0, out=prob)
    prob[fov == 0] = 0.0
    return prob


def _predict_as_is(loaded: LoadedModel, image: np.ndarray, fov: np.ndarray, tta: bool, tile_size: int) -> np.ndarray:
    cfg = loaded.config
    x = torch.from_numpy(preprocess(image, fov, cfg.channel, cfg.clahe, cfg.normalization)).to(loaded.device)
    flips = [(), (2,), (1,), (1, 2)] if tta else [()]
    prob = torch.zeros(image.shape[:2], device=loaded.device)
    with torch.inference_mode():
        for dims in flips:
            xi = torch.flip(x, dims) if dims else x
            logits = sliding_window_logits(loaded.model, xi, tile_size)
            out = torch.sigmoid(logits)
            prob += torch.flip(out, [d - 1 for d in dims]) if dims else out
    return (prob / len(flips)).cpu().numpy().astype(np.float32)
