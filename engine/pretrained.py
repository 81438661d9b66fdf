"""The pretrained vessel model shipped with ML Manager, and how it is rebuilt (``make pretrained``).

It is this program's U-Net trained, through the same multi-data-set training a researcher runs, on three
cameras at once: DRIVE's 20 training photographs (565×584), CHASE_DB1's children 01–10 (20, 999×960) and
HRF's 01–05 of each kind (15, 3504×2336, brought down to ``MAX_FOV_PX``), patches drawn from each set
equally often; a fifth of each set (4 + 4 + 3 photographs) is held out to choose the checkpoint and
calibrate its post-processing. Augmentation imitates other cameras (colour casts, gamma, uneven
illumination, blur or sharpening, JPEG, noise). ``RECIPE`` holds its settings; the number of epochs is
fixed, so that a rebuild does not depend on the machine's speed. Like its training data, it is for
research use. The file holds the averaged weights, the settings, the recommended post-processing and the
training images' scales; it has no optimiser state, so it predicts but cannot be continued.

``python -m engine pretrained --data ../shared/data/drive/training --data ../shared/data/chase_db1/training
--data ../shared/data/hrf/training`` (``make pretrained``; ``train_pretrained`` here) trains it and writes
``engine/weights/drive_unet.pt``, printing its validation Dice.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable, Sequence

PRETRAINED_ID = "pretrained"  # how the API and the CLI name it where a model id is expected
PRETRAINED_NAME = "Pretrained U-Net (DRIVE, CHASE_DB1, HRF)"
PRETRAINED_PATH = Path(__file__).resolve().parent / "weights" / "drive_unet.pt"
EPOCHS = 20  # a fixed count (400 steps each), so that a rebuild does not depend on the machine's speed
# How the shipped model differs from TrainingConfig's defaults (README, "The shipped model", says why).
RECIPE = {
    "base_channels": 8, "patch_size": 64, "batch_size": 32,  # the planner's shape for CPU budgets
    "steps_per_epoch": 400,  # validating 11 photographs takes a while: validate less often
    "val_fraction": 0.2,  # 4 + 4 + 3 photographs of the three sets choose best.pt and calibrate post-processing
    "early_stopping_patience": 0,  # the fixed schedule runs to its end
    "camera_augment": 0.5, "max_zoom": 1.25, "any_angle": True,  # other cameras: colour, light, optics, scale
}
# What a model needs to predict; the optimiser's state is what makes a checkpoint large.
KEPT_KEYS = ("format_version", "arch", "state_dict", "config", "preprocessing", "epoch", "metrics", "versions",
             "recommended_postprocess", "calibration", "scale", "history", "elapsed_seconds", "datasets")


def pretrained_available() -> bool:
    """Whether the shipped model file is present."""
    return PRETRAINED_PATH.is_file()


def pretrained_entry() -> dict | None:
    """The shipped model as a row of the global checkpoint list (the shape of ``storage.db.all_checkpoints``),
    marked ``protected`` (it cannot be deleted); None when the file is absent."""
    from engine.training.checkpoint import load_checkpoint_dict

    if not pretrained_available():
        return None
    ckpt = load_checkpoint_dict(PRETRAINED_PATH)
    dice = (ckpt.get("metrics") or {}).get("val_dice")
    return {"model_id": PRETRAINED_ID, "model_name": PRETRAINED_NAME, "name": PRETRAINED_PATH.name,
            "path": str(PRETRAINED_PATH), "kind": "best", "epoch": ckpt.get("epoch"), "metric": dice,
            "best_val_dice": dice, "size_bytes": PRETRAINED_PATH.stat().st_size, "created_at": None,
            "protected": True, "recommended_postprocess": ckpt.get("recommended_postprocess")}


def export_pretrained(checkpoint: str | Path, dest: str | Path = PRETRAINED_PATH) -> Path:
    """Write the predicting part of ``checkpoint`` (a best.pt) to ``dest``, atomically; returns ``dest``."""
    from engine.training.checkpoint import load_checkpoint_dict, save_checkpoint
    ckpt = load_checkpoint_dict(checkpoint)
    slim = {k: ckpt[k] for k in KEPT_KEYS if k in ckpt}
    slim["name"] = PRETRAINED_NAME
    return save_checkpoint(Path(dest), slim)


def train_pretrained(folders: Sequence[str | Path], dest: str | Path = PRETRAINED_PATH, epochs: int = EPOCHS,
                     threads: int = 0, max_minutes: float = 0.0, on_event: Callable[[dict], None] | None = None):
    """Train the shipped model's recipe on ``folders`` and write its predicting part to ``dest``.

    Args:
        folders: the training data sets (DRIVE, CHASE_DB1 and HRF's training folders make the shipped model).
        epochs: a fixed count (``EPOCHS``), so that a rebuild does not depend on the machine's speed.
        threads: torch CPU threads (0: torch's default).
        max_minutes: also stop after this many minutes (the learning rate annealed by then); 0: every epoch.
        on_event: the training's events (``engine.training.loop.train``).
    Returns:
        (``dest``, the ``TrainResult``).
    Raises:
        DatasetError: a folder is missing or not a usable data set.
    """
    from engine.training.config import TrainingConfig
    from engine.training.loop import train

    config = TrainingConfig(**RECIPE, epochs=epochs, num_threads=threads, max_minutes=max_minutes)
    with tempfile.TemporaryDirectory(prefix="pretrained-") as out:
        result = train(config, [str(folder) for folder in folders], out, on_event=on_event)
        return export_pretrained(result.best_checkpoint, dest), result
