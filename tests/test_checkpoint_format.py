"""A checkpoint written before the engine was split into packages still loads, predicts and resumes.

tests/fixtures/old_format.pt was written by ``engine.train.train`` at commit 5124c21 (format_version 1):
a 2-image synthetic data set of 32×32 pixels, ``TrainingConfig(base_channels=2, depth=1, epochs=1,
steps_per_epoch=1, batch_size=1, patch_size=16, calibrate_postprocess=False, device="cpu",
precision="fp32")``. old_format_prediction.npy is what ``predict`` returned for it then, for a seeded
random 32×32 image with a full field of view.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from engine.inference.predict import load_model, predict
from engine.training.checkpoint import check_resume
from engine.training.config import TrainingConfig

FIXTURES = Path(__file__).parent / "fixtures"
OLD = FIXTURES / "old_format.pt"
KEYS = {"arch", "calibration", "config", "early_stopping", "elapsed_seconds", "epoch", "format_version", "history",
        "metrics", "optimizer", "plan", "preprocessing", "recommended_postprocess", "scale", "scheduler",
        "state_dict", "train_state_dict", "versions"}


def test_old_checkpoint_has_the_documented_keys():
    assert set(torch.load(OLD, map_location="cpu", weights_only=True)) == KEYS


def test_old_checkpoint_loads_with_its_config():
    assert load_model(OLD).config.base_channels == 2


def test_old_checkpoint_predicts_what_it_predicted_before():
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    prob = predict(load_model(OLD), image, fov=np.ones((32, 32), np.uint8))
    assert np.allclose(prob, np.load(FIXTURES / "old_format_prediction.npy"), atol=1e-5)


def test_old_checkpoint_can_be_resumed():
    config = TrainingConfig.from_dict(torch.load(OLD, map_location="cpu", weights_only=True)["config"])
    assert check_resume(OLD, config.with_updates(epochs=2))["epoch"] == 1
