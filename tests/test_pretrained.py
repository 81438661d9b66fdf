"""The pretrained model shipped in engine/weights: it loads and predicts on a fresh clone (no ../shared),
knows its training scale, and scores on the DRIVE images it did not train on."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from engine.training.data import load_dataset
from engine.training.sampling import split_indices
from engine.training.synthetic import synthetic_sample
from engine.fov import rescale
from engine.imageio import encode_png
from engine.inference.predict import load_model, predict
from engine.training.checkpoint import load_checkpoint_dict
from engine.pretrained import (KEPT_KEYS, PRETRAINED_NAME, PRETRAINED_PATH, RECIPE, export_pretrained,
                               pretrained_available)
from engine.training.config import TrainingConfig
from engine.training.loop import train
from tests.conftest import ROOT

torch.set_num_threads(1)
# Its validation Dice on each camera's held-out photographs is in the README's model card; the floors leave
# room for library versions, not for a broken model.
VAL_DICE_FLOORS = {"drive": 0.76, "chase_db1": 0.74, "hrf": 0.74}


@pytest.fixture(scope="module")
def shipped():
    assert pretrained_available(), f"{PRETRAINED_PATH} is missing: it is part of the repository"
    return load_model(PRETRAINED_PATH)


def test_the_shipped_file_is_small():
    assert PRETRAINED_PATH.stat().st_size < 5_000_000


def test_the_shipped_file_holds_no_optimiser_state():
    assert set(load_checkpoint_dict(PRETRAINED_PATH)) <= set(KEPT_KEYS) | {"name"}


def test_it_is_named_for_users():
    assert load_checkpoint_dict(PRETRAINED_PATH)["name"] == PRETRAINED_NAME


def test_it_records_the_narrowest_training_scale_drives(shipped):
    assert shipped.fov_range[0] == pytest.approx(540, abs=10)


def test_it_records_the_widest_training_scale_the_cap(shipped):
    assert shipped.fov_range[1] == pytest.approx(1200)


def test_it_names_its_three_training_sets():
    names = [d["name"] for d in load_checkpoint_dict(PRETRAINED_PATH)["scale"]["datasets"]]
    assert names == ["drive/training", "chase_db1/training", "hrf/training"]


@pytest.mark.parametrize("field", sorted(RECIPE))
def test_the_shipped_file_was_trained_with_the_recipe_make_pretrained_uses(shipped, field):
    assert getattr(shipped.config, field) == RECIPE[field]


def test_its_calibration_explains_the_recommended_settings(shipped):
    explanation = load_checkpoint_dict(PRETRAINED_PATH)["calibration"]["explanation"]
    assert explanation[-1].startswith("The usual advice at its best")


def test_it_has_recommended_post_processing(shipped):
    assert shipped.recommended_postprocess is not None


def test_it_predicts_an_hrf_sized_photograph_at_its_own_size(shipped):
    image, _, _ = synthetic_sample(256, np.random.default_rng(0))
    big = rescale(image, 9.0)  # 2304 px, FOV ~2170 px across: shrunk ×0.55 for the model
    prob = predict(shipped, big)
    assert prob.shape == big.shape[:2]


def test_it_finds_vessels_in_a_synthetic_photograph(shipped):
    image, vessels, fov = synthetic_sample(512, np.random.default_rng(1))
    prob = predict(shipped, image, fov=fov)
    inside = fov > 0
    assert prob[(vessels > 0) & inside].mean() > prob[(vessels == 0) & inside].mean() + 0.2


def test_evaluate_runs_on_a_folder_without_fov_masks(tmp_path):
    for i in range(2):
        image, mask, _ = synthetic_sample(256, np.random.default_rng(10 + i))
        for sub, arr in (("images", image), ("masks", mask)):
            (tmp_path / sub).mkdir(exist_ok=True)
            (tmp_path / sub / f"s{i}.png").write_bytes(encode_png(arr))
    out = subprocess.run([sys.executable, "-m", "engine", "evaluate", "--checkpoint", str(PRETRAINED_PATH),
                          "--data", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert json.loads(out.stdout)["n_images"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("camera", sorted(VAL_DICE_FLOORS))
def test_it_scores_on_the_photographs_of_each_camera_it_did_not_train_on(shipped, camera):
    from engine.postprocess.calibration import pooled_dice

    folder = ROOT.parent / "shared" / "data" / camera / "training"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found (the shared data sets live in ../shared, absent on a fresh clone)")
    ds = load_dataset(folder)
    _, val = split_indices(len(ds), shipped.config.val_fraction, shipped.config.seed)
    preds, masks, fovs = [], [], []
    for i in val:
        image, mask, fov = ds.raw(i)
        preds.append(predict(shipped, image, fov=fov) >= 0.5), masks.append(mask), fovs.append(fov)
    assert pooled_dice(preds, masks, fovs) > VAL_DICE_FLOORS[camera]


def test_export_keeps_what_predicts_and_drops_the_optimiser(tmp_path):
    from engine.training.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "synth", n_images=3, size=64, seed=0)
    config = TrainingConfig(base_channels=4, depth=2, batch_size=2, patch_size=32, steps_per_epoch=2, epochs=1,
                            val_fraction=0.34, num_threads=1, calibrate_postprocess=False)
    result = train(config, data, tmp_path / "run")
    dest = export_pretrained(result.best_checkpoint, tmp_path / "slim.pt")
    assert "optimizer" not in load_checkpoint_dict(dest)
    assert load_model(dest).epoch == 1
