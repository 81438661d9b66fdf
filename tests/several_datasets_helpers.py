"""Shared by tests/test_several_datasets*.py: two small synthetic data sets of other sizes with a folder
without masks and an empty one (a module-scoped fixture: import it into the module), the data sets a
checkpoint records, and small real subsets of DRIVE and CHASE_DB1 copied in their own layouts."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from engine.training.synthetic import make_synthetic_dataset
from storage import paths

TINY = {"base_channels": 4, "depth": 2, "patch_size": 32, "batch_size": 2, "steps_per_epoch": 2, "epochs": 1,
        "num_threads": 1, "val_fraction": 0.25, "early_stopping_patience": 0, "calibrate_postprocess": False}
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, Path]:
    """Two synthetic data sets of other sizes (64 and 96 px), a folder without masks and an empty one."""
    base = tmp_path_factory.mktemp("sets")
    found = {"a": make_synthetic_dataset(base / "a", n_images=2, size=64, seed=1),
             "b": make_synthetic_dataset(base / "b", n_images=2, size=96, seed=2)}
    found["no_masks"] = shutil.copytree(found["a"] / "images", base / "no_masks" / "images").parent
    (base / "empty").mkdir()
    found["empty"] = base / "empty"
    return found


def checkpoint_sets(model_id: str) -> list[str]:
    ckpt = torch.load(paths.checkpoints_dir(model_id) / "last.pt", weights_only=True)
    return [s["name"] for s in ckpt["scale"]["datasets"]]


def real_subsets(dest: Path) -> list[Path]:
    """Two photographs each of DRIVE's and CHASE_DB1's training halves, in their own layouts, under ``dest``."""
    drive, chase = SHARED / "drive" / "training", SHARED / "chase_db1" / "training"
    if not (drive / "images").is_dir() or not chase.is_dir():
        pytest.skip(f"DRIVE or CHASE_DB1 not found under {SHARED} (they live in ../shared, absent on a fresh clone)")
    out_drive, out_chase = dest / "drive" / "training", dest / "chase_db1" / "training"
    for n in (21, 22):
        for sub, name in (("images", f"{n}_training.tif"), ("1st_manual", f"{n}_manual1.gif"),
                          ("mask", f"{n}_training_mask.gif")):
            (out_drive / sub).mkdir(parents=True, exist_ok=True)
            shutil.copy(drive / sub / name, out_drive / sub / name)
    out_chase.mkdir(parents=True)
    for stem in ("Image_01L", "Image_01R"):
        for suffix in (".jpg", "_1stHO.png", "_2ndHO.png"):
            shutil.copy(chase / f"{stem}{suffix}", out_chase / f"{stem}{suffix}")
    return [out_drive, out_chase]
