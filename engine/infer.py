"""Loading checkpoints safely and predicting vessel probability maps of any size.

``load_model(path)`` reads a checkpoint with ``torch.load(weights_only=True)``: a corrupt, truncated,
foreign or malicious file gives a :class:`CheckpointError` sentence and runs no code.
``predict(loaded, image_rgb)`` applies the checkpoint's preprocessing and returns float32 (H, W)
probabilities; images larger than one tile are cut into overlapping tiles blended with a Gaussian
window (as nnU-Net does), so memory stays bounded and tile borders do not show.
"""
from __future__ import annotations

import math
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
import torch

from engine.data import preprocess
from engine.fov import estimate_fov, fov_diameter, parse_scale, rescale, scale_factor
from engine.imageio import MIN_SIDE
from engine.models import UNet

FORMAT_VERSION = 1
ARCH = "unet"
TILE_SIZE = 1024  # whole images up to this size go through the network in one piece
TILE_OVERLAP = 0.25  # fraction of a tile shared with its neighbour


class CheckpointError(ValueError):
    """A checkpoint file cannot be used; the message is meant for the user."""


class StopRequested(Exception):
    """Raised inside long loops when ``should_stop()`` turns true."""


@dataclass
class LoadedModel:
    model: torch.nn.Module
    config: Any  # engine.train.TrainingConfig
    epoch: int
    metrics: dict
    recommended_postprocess: dict | None
    path: Path
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    calibration: dict | None = None
    fov_diameter: float | None = None  # the scale of the training images (engine.fov); None: not recorded


def build_model(config: Any) -> UNet:
    """The U-Net a TrainingConfig describes."""
    return UNet(3 if config.channel == "rgb" else 1, config.base_channels, config.depth, config.dropout_rate)


def load_checkpoint_dict(path: str | Path) -> dict:
    """The raw checkpoint dict, loaded with ``weights_only=True``.

    Raises:
        CheckpointError: no file, an empty or damaged file, a pickle that carries code, a dict that is not
            this program's (no weights and config, no or an unknown ``format_version``, another ``arch``),
            or fields of the wrong type (``state_dict`` not tensors, ``config`` / ``metrics`` /
            ``recommended_postprocess`` / ``calibration`` not dicts, ``epoch`` not a whole number ≥ 0).
    """
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise CheckpointError(f"No checkpoint file at {path}: check the path.")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{name} is empty (0 bytes): it is not a checkpoint.")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": we report our own sentence
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "global" not in str(exc).lower() and "reduce" not in str(exc).lower():
            raise CheckpointError(
                f"{name} is not a readable checkpoint (truncated, damaged or another kind of file): "
                "use a .pt file written by this program."
            ) from None
        raise CheckpointError(
            f"{name} contains objects other than weights and settings (possibly code), so it was not loaded: "
            "use a checkpoint written by this program."
        ) from None
    except Exception:  # torch raises many types for damaged files (RuntimeError, EOFError, IndexError, …)
        raise CheckpointError(
            f"{name} is not a readable checkpoint (truncated, damaged or another kind of file): "
            "use a .pt file written by this program."
        ) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "config" not in ckpt:
        raise CheckpointError(f"{name} is not a checkpoint of this program (no weights and config inside).")
    version = ckpt.get("format_version")
    if "format_version" not in ckpt:
        raise CheckpointError(f"{name} is not a checkpoint of this program (it records no checkpoint format): "
                              "use a .pt file written by this program's training.")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{name} has an unknown checkpoint format ({version!r}): "
                              "use a .pt file written by this program's training.")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{name} has checkpoint format {version!r}, newer than this program's ({FORMAT_VERSION}): update the program."
        )
    if ckpt.get("arch") != ARCH:
        raise CheckpointError(f"{name} holds a {ckpt.get('arch')!r} model; this program reads {ARCH!r} models only.")
    _check_fields(ckpt, name)
    return ckpt


def _check_fields(ckpt: dict, name: str) -> None:
    """Refuse a checkpoint whose fields have the wrong types (an edited or foreign file), with a sentence."""
    damaged = "the file is damaged or was edited: use a checkpoint written by this program's training."
    for key in ("state_dict", "train_state_dict"):  # train_state_dict: None when the run kept no moving average
        weights = ckpt.get(key)
        if key == "train_state_dict" and weights is None:
            continue
        if not isinstance(weights, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                    for k, v in weights.items()):
            raise CheckpointError(f"{name}: its weights ({key}) are not a table of tensors; {damaged}")
    if not isinstance(ckpt["config"], dict):
        raise CheckpointError(f"{name}: its settings (config) are not a table of options; {damaged}")
    epoch = ckpt.get("epoch", 0)
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise CheckpointError(f"{name}: its epoch is {epoch!r}, not a whole number of at least 0; {damaged}")
    for key in ("metrics", "recommended_postprocess", "calibration"):
        value = ckpt.get(key)
        if value is not None and not isinstance(value, dict):
            raise CheckpointError(f"{name}: its {key} is a {type(value).__name__}, not a table; {damaged}")


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
    from engine.train import TrainingConfig  # the config class lives with the trainer

    ckpt = load_checkpoint_dict(path)
    name = Path(path).name
    try:
        config = TrainingConfig.from_dict(ckpt["config"])
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{name} has settings this program does not accept ({exc}): it was written by "
                              "another version of the program or edited; use a checkpoint from this version.") from None
    model = build_model(config)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, KeyError, TypeError, ValueError, AttributeError):
        raise CheckpointError(f"{name}: the weights do not fit the model its config describes; the file is damaged.") from None
    device = torch.device(device)
    model.to(device).eval()
    if device.type == "cpu":  # channels-last convolutions are faster on CPUs (oneDNN)
        model.to(memory_format=torch.channels_last)
    return LoadedModel(model, config, ckpt.get("epoch", 0), dict(ckpt.get("metrics") or {}),
                       ckpt.get("recommended_postprocess"), Path(path), device, ckpt.get("calibration"),
                       checkpoint_scale(ckpt))


def _window(h: int, w: int, device: torch.device) -> torch.Tensor:
    """Gaussian blending weights (sigma = size/8), floored so borders still count a little."""
    def axis(n: int) -> torch.Tensor:
        t = torch.arange(n, dtype=torch.float32, device=device) - (n - 1) / 2
        return torch.exp(-0.5 * (t / (n / 8)) ** 2)
    win = axis(h)[:, None] * axis(w)[None, :]
    return torch.clamp(win / win.max(), min=1e-3)


def _starts(size: int, tile: int, step: int) -> list[int]:
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, step))
    return starts + [size - tile]


def sliding_window_logits(model: torch.nn.Module, x: torch.Tensor, tile_size: int = TILE_SIZE,
                          overlap: float = TILE_OVERLAP,
                          should_stop: Callable[[], bool] | None = None) -> torch.Tensor:
    """Logits (H, W) for one input (C, H, W); tiles with Gaussian blending when larger than ``tile_size``."""
    _, h, w = x.shape
    if h <= tile_size and w <= tile_size:
        return model(x[None])[0, 0]
    th, tw = min(tile_size, h), min(tile_size, w)
    step = max(1, int(tile_size * (1 - overlap)))
    acc = torch.zeros((h, w), device=x.device)
    norm = torch.zeros((h, w), device=x.device)
    win = _window(th, tw, x.device)
    for y in _starts(h, th, step):
        for x0 in _starts(w, tw, step):
            if should_stop is not None and should_stop():
                raise StopRequested
            out = model(x[None, :, y:y + th, x0:x0 + tw])[0, 0]
            acc[y:y + th, x0:x0 + tw] += out * win
            norm[y:y + th, x0:x0 + tw] += win
    return acc / norm




def checkpoint_scale(ckpt: dict) -> float | None:
    """The FOV diameter (pixels) a checkpoint's training images had, or None when it records none."""
    scale = ckpt.get("scale")
    value = scale.get("fov_diameter") if isinstance(scale, dict) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and 16 <= value <= 100_000:
        return float(value)
    return None


def resolve_scale(loaded: LoadedModel, fov: np.ndarray, scale: str | float = "auto") -> float:
    """The factor an image is resized by before the model sees it (1.0: as it is).

    Args:
        loaded: the model; its ``fov_diameter`` is the scale it was trained at.
        fov: the image's field of view (H, W), nonzero inside (supplied or estimated).
        scale: ``"auto"`` (bring the FOV's diameter to the model's when they differ by more than
            ``engine.fov.SCALE_TOLERANCE``), ``"none"`` (1.0), or a factor used as given.

    Returns:
        The factor (new size = old size × factor).

    Raises:
        ValueError: ``scale`` is not one of the above.
    """
    scale = parse_scale(scale)
    if scale == "none":
        return 1.0
    if scale != "auto":
        return float(scale)
    return scale_factor(loaded.fov_diameter, fov_diameter(fov))


def check_image_and_fov(image_rgb: Any, fov: Any = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(image, fov as uint8 {0,1} or None) after checking their shapes; ValueError with a sentence otherwise."""
    image = np.asarray(image_rgb)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"predict needs an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}.")
    if min(image.shape[:2]) < MIN_SIDE:
        raise ValueError(f"The image is {image.shape[1]}×{image.shape[0]} pixels; it must be at least "
                         f"{MIN_SIDE}×{MIN_SIDE} pixels.")
    if fov is None:
        return image, None
    mask = np.asarray(fov)
    if mask.ndim == 3 and mask.shape[2] in (1, 3, 4):
        mask = mask.max(axis=2)
    if mask.shape != image.shape[:2]:
        raise ValueError(f"The field-of-view mask is {mask.shape[-1]}×{mask.shape[0]} pixels but the image is "
                         f"{image.shape[1]}×{image.shape[0]}: use the mask made for this image.")
    mask = (mask != 0).astype(np.uint8)
    if not mask.any():
        raise ValueError("The field-of-view mask is empty (no pixel inside): use the mask made for this image, "
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
        ValueError: an image or FOV of the wrong shape, type or size, or an unknown ``scale``.
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
