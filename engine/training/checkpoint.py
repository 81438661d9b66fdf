"""The checkpoint format: what training writes, what prediction and resuming read.

A checkpoint is a plain dict that loads with ``torch.load(path, weights_only=True)`` (no code runs):
``format_version`` (``FORMAT_VERSION``), ``arch`` (``ARCH``), ``state_dict``, ``train_state_dict``,
``config`` (``TrainingConfig.to_dict()``), ``preprocessing``, ``epoch``, ``metrics``, ``versions``,
``optimizer``, ``scheduler``, ``early_stopping``, ``history``, ``recommended_postprocess``,
``calibration``, ``elapsed_seconds``, ``scale``, ``plan``. Both the training loop and prediction
depend on this module; neither depends on the other. This module alone builds that dict
(``training_payload``) and reads it (``load_checkpoint_dict``, ``read_training_state``, ``read_weights``).
"""
from __future__ import annotations

import io
import math
import pickle
import platform
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.errors import UserError
from engine.fov import FOV_DIAMETER_MEASURE
from engine.training.config import ARCHITECTURE_KEYS, TrainingConfig, TrainingError
from engine.training.models import UNet
from storage.paths import atomic_write_bytes

FORMAT_VERSION = 1
ARCH = "unet"


class CheckpointError(UserError):
    """A checkpoint file cannot be used; the message is meant for the user."""


def build_model(config: Any) -> UNet:
    """The U-Net a TrainingConfig describes."""
    return UNet(3 if config.channel == "rgb" else 1, config.base_channels, config.depth, config.dropout_rate)


# What torch.load(weights_only=True) raises for a truncated, damaged or foreign file besides
# pickle.UnpicklingError (handled first): its zip reader a RuntimeError ("Invalid magic number",
# "failed finding central directory"); its unpickler EOFError, ValueError (UnicodeDecodeError), IndexError,
# KeyError, TypeError, AttributeError, AssertionError and struct.error where a damaged file's bytes stand
# where it expects others (all met fuzzing the zip and legacy formats); OSError when the file cannot be read;
# MemoryError and OverflowError when a damaged size field asks for more than there is.
_DAMAGED_FILE_ERRORS = (RuntimeError, OSError, EOFError, ValueError, IndexError, KeyError, TypeError,
                        AttributeError, AssertionError, struct.error, MemoryError, OverflowError)


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
    except _DAMAGED_FILE_ERRORS:
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


def _diameter(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and 16 <= value <= 100_000:
        return float(value)
    return None


def checkpoint_scale(ckpt: dict) -> float | None:
    """The FOV diameter (pixels) a checkpoint's training images had, or None when it records none."""
    scale = ckpt.get("scale")
    return _diameter(scale.get("fov_diameter")) if isinstance(scale, dict) else None


def checkpoint_scale_range(ckpt: dict) -> tuple[float, float] | None:
    """(narrowest, widest) field of view (pixels) a checkpoint's model was trained at: its data sets' scales,
    the widest brought down to ``max_fov_px``. A checkpoint of one data set (or from before several sets could
    train together) has one scale, so both are its ``fov_diameter``; None when it records none."""
    scale = ckpt.get("scale")
    if not isinstance(scale, dict):
        return None
    bounds = scale.get("fov_range")
    if isinstance(bounds, (list, tuple)) and len(bounds) == 2:
        low, high = (_diameter(v) for v in bounds)
        if low is not None and high is not None and low <= high:
            return low, high
    one = _diameter(scale.get("fov_diameter"))
    return (one, one) if one is not None else None


def scale_record(sets: list, max_fov: float) -> dict[str, Any]:
    """What a checkpoint records of its training scales (``"scale"``), from the run's data sets
    (``engine.training.data.Dataset``; their photographs are decoded once to measure them).

    Returns:
        ``fov_diameter`` (the median of the sets' training scales: what a model of one data set brings every
        photograph to), ``fov_range`` (the narrowest and widest training scale), ``measure`` and ``datasets``
        (per set: ``name``, ``layout``, ``n_images``, ``fov_diameter`` as photographed and ``trained_at``).
    """
    per_set = []
    for ds in sets:
        scales = ds.scales(max_fov)
        per_set.append({"name": ds.name, "layout": ds.layout, "n_images": len(ds),
                        "fov_diameter": scales["median"], "trained_at": scales["target"]})
    known = [s["trained_at"] for s in per_set if s["trained_at"]]
    return {"fov_diameter": float(np.median(known)) if known else None,
            "fov_range": [min(known), max(known)] if known else None,
            "measure": FOV_DIAMETER_MEASURE, "datasets": per_set}



def versions() -> dict[str, str]:
    return {"torch": str(torch.__version__), "numpy": str(np.__version__), "python": platform.python_version()}


def save_checkpoint(path: Path, payload: dict[str, Any]) -> Path:
    buf = io.BytesIO()
    torch.save(payload, buf)
    return atomic_write_bytes(path, buf.getvalue())


def training_payload(*, weights: dict, train_weights: dict | None, config: TrainingConfig, epoch: int,
                     metrics: dict, optimizer: dict, scheduler: dict, early_stopping: dict, history: list[dict],
                     elapsed_seconds: float, scale: dict, plan: dict | None) -> dict[str, Any]:
    """The checkpoint dict training writes after an epoch (see the module docstring for the keys).

    Args:
        weights: what predicts (the moving average's state_dict when the run keeps one).
        train_weights: the optimiser's own weights when the run keeps an average, else None.
        optimizer, scheduler, early_stopping: their ``state_dict()``s, for resuming.
        scale: the training images' scales (:func:`scale_record`).
        plan: the ``Plan.to_dict()`` that chose ``config``, or None.
    """
    return {
        "format_version": FORMAT_VERSION, "arch": ARCH, "state_dict": weights, "train_state_dict": train_weights,
        "config": config.to_dict(),
        "preprocessing": {"channel": config.channel, "clahe": config.clahe, "normalization": config.normalization},
        "epoch": epoch, "metrics": metrics, "versions": versions(), "optimizer": optimizer, "scheduler": scheduler,
        "early_stopping": early_stopping, "history": history, "recommended_postprocess": None, "calibration": None,
        "elapsed_seconds": elapsed_seconds, "scale": scale,
        "plan": plan,
    }


@dataclass(frozen=True)
class TrainingState:
    """What a checkpoint holds for continuing its run; ``read_training_state`` reads it."""

    weights: dict  # "state_dict": what predicts
    train_weights: dict | None  # "train_state_dict": the optimiser's own weights beside a moving average
    optimizer: dict
    scheduler: dict
    early_stopping: dict
    history: list[dict]
    epoch: int  # the last completed epoch
    elapsed_seconds: float
    plan: dict | None


def read_training_state(checkpoint: str | Path, config: TrainingConfig) -> TrainingState:
    """The state to continue ``checkpoint``'s run with ``config``.

    Raises:
        CheckpointError, TrainingError: as ``check_resume``.
    """
    ckpt = check_resume(checkpoint, config)
    return TrainingState(ckpt["state_dict"], ckpt.get("train_state_dict"), ckpt["optimizer"],
                         ckpt.get("scheduler") or {}, ckpt["early_stopping"], list(ckpt.get("history") or []),
                         int(ckpt["epoch"]), float(ckpt.get("elapsed_seconds", 0.0)), ckpt.get("plan"))


def read_weights(checkpoint: str | Path) -> dict:
    """The predicting weights (``state_dict``) of ``checkpoint``, on the CPU. Raises CheckpointError."""
    return load_checkpoint_dict(checkpoint)["state_dict"]


def record_calibration(paths: list[Path], recommended: dict, calibration: dict) -> None:
    """Write the post-processing calibration into each checkpoint of ``paths`` (rewritten atomically)."""
    for path in paths:
        ckpt = load_checkpoint_dict(path)
        ckpt["recommended_postprocess"], ckpt["calibration"] = recommended, calibration
        save_checkpoint(path, ckpt)


def check_resume(checkpoint: str | Path, config: TrainingConfig) -> dict[str, Any]:
    """The checkpoint dict when ``config`` can continue it; otherwise TrainingError saying what to change.

    Refused: an unreadable file (CheckpointError), other architecture or preprocessing settings, no epoch
    left (``epochs`` not above the saved epoch), an early stop that would trigger again at once (patience
    not above the epochs already waited), a time budget already spent.
    """
    ckpt = load_checkpoint_dict(checkpoint)
    missing = [k for k in ("state_dict", "optimizer", "early_stopping", "epoch", "config") if k not in ckpt]
    if missing:
        raise TrainingError(f"{Path(checkpoint).name} lacks {', '.join(missing)}, so training cannot continue "
                            "from it: continue from a last.pt written by this program.")
    changed = [k for k in ARCHITECTURE_KEYS if ckpt["config"].get(k) != getattr(config, k)]
    if changed:
        raise TrainingError(f"Cannot resume: the checkpoint was trained with different {', '.join(changed)}; "
                            "keep those settings as they were.")
    done, waited = int(ckpt["epoch"]), int(ckpt["early_stopping"].get("wait", 0))
    if done >= config.epochs:
        raise TrainingError(f"The checkpoint already ran {done} epoch(s) and epochs is {config.epochs}: "
                            f"raise epochs above {done} to continue.")
    if config.early_stopping_patience and waited >= config.early_stopping_patience:
        raise TrainingError(f"The run already went {waited} epoch(s) without improvement, which reaches "
                            f"early_stopping_patience {config.early_stopping_patience}: raise the patience "
                            f"above {waited} to continue.")
    spent = float(ckpt.get("elapsed_seconds", 0.0)) / 60
    if config.max_minutes and spent >= config.max_minutes:
        raise TrainingError(f"The run already used its time budget ({spent:.1f} of max_minutes "
                            f"{config.max_minutes:g}): raise max_minutes or set it to 0 to continue.")
    return ckpt
