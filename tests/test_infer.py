"""Loading checkpoints safely (no code runs) and predicting maps of any size."""
from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import torch

from engine.training.synthetic import make_synthetic_dataset
from engine.inference.predict import load_model, predict
from engine.training.checkpoint import CheckpointError
from engine.training.config import TrainingConfig
from engine.training.loop import train
from engine.errors import UserError

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    data = make_synthetic_dataset(tmp_path_factory.mktemp("synth"), n_images=3, size=64, seed=2)
    config = TrainingConfig(base_channels=4, depth=2, batch_size=4, patch_size=32, steps_per_epoch=4, epochs=2,
                            num_threads=1)
    return train(config, data, tmp_path_factory.mktemp("run")).best_checkpoint


def _image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def test_load_model_exposes_the_contract(checkpoint):
    loaded = load_model(checkpoint)
    assert loaded.path == checkpoint and loaded.epoch >= 1 and "val_dice" in loaded.metrics
    assert loaded.config.base_channels == 4 and not loaded.model.training
    assert loaded.recommended_postprocess is not None and "threshold" in loaded.recommended_postprocess


@pytest.mark.parametrize("h, w", [(64, 64), (37, 91), (17, 16), (150, 130)])
@pytest.mark.parametrize("tta", [False, True])
def test_predict_any_size(checkpoint, h, w, tta):
    prob = predict(load_model(checkpoint), _image(h, w), tta=tta)
    assert prob.shape == (h, w) and prob.dtype == np.float32 and 0 <= prob.min() and prob.max() <= 1


def test_tiles_blend_into_the_whole_image_prediction(checkpoint):
    loaded, image = load_model(checkpoint), _image(150, 170, seed=3)
    whole, tiled = predict(loaded, image), predict(loaded, image, tile_size=64)
    assert np.abs(whole - tiled).mean() < 0.02  # seams would show as large local differences
    assert np.abs(whole - tiled).max() < 0.5


@pytest.mark.parametrize("bad", [np.zeros((8, 8), np.uint8), np.zeros((8, 8, 3), np.float32),
                                 np.zeros((8, 8, 4), np.uint8)])
def test_predict_rejects_non_rgb_input(checkpoint, bad):
    with pytest.raises(UserError, match="RGB uint8"):
        predict(load_model(checkpoint), bad)


class Malicious:
    """Unpickling this would create the marker file (``open(marker, 'w')``)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _write_case(case: str, path, good) -> None:
    raw = good.read_bytes()
    ckpt = torch.load(good, weights_only=True)
    if case == "empty":
        path.write_bytes(b"")
    elif case == "random bytes":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif case == "text":
        path.write_text("hello, not a model\n")
    elif case == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif case == "foreign dict":
        torch.save({"weights": torch.zeros(3)}, path)
    elif case == "other arch":
        torch.save({**ckpt, "arch": "resnet"}, path)
    elif case == "newer format":
        torch.save({**ckpt, "format_version": 99}, path)
    elif case == "weights do not fit":
        torch.save({**ckpt, "config": {**ckpt["config"], "base_channels": 8}}, path)
    elif case == "bad config":
        torch.save({**ckpt, "config": {**ckpt["config"], "learning_rate": -1.0}}, path)
    elif case == "a tensor":
        torch.save(torch.zeros(3), path)


@pytest.mark.parametrize("case, words", [
    ("empty", "empty"), ("random bytes", "not a readable checkpoint"), ("text", "not a readable checkpoint"),
    ("truncated", "not a readable checkpoint"), ("foreign dict", "not a checkpoint of this program"),
    ("other arch", "'resnet'"), ("newer format", "newer than this program"), ("weights do not fit", "do not fit"),
    ("bad config", "learning_rate"), ("a tensor", "not a checkpoint of this program"),
])
def test_bad_checkpoints_give_a_sentence(checkpoint, tmp_path, case, words):
    path = tmp_path / "model.pt"
    _write_case(case, path, checkpoint)
    with pytest.raises(CheckpointError, match=words):
        load_model(path)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="No checkpoint file"):
        load_model(tmp_path / "none.pt")


@pytest.mark.parametrize("how", ["torch.save", "raw pickle", "inside a real checkpoint"])
def test_malicious_pickle_runs_no_code(checkpoint, tmp_path, how):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    if how == "torch.save":
        torch.save({"state_dict": Malicious(marker)}, path)
    elif how == "raw pickle":
        path.write_bytes(pickle.dumps(Malicious(marker)))
    else:
        ckpt = torch.load(checkpoint, weights_only=True)
        buf = io.BytesIO()
        torch.save({**ckpt, "metrics": Malicious(marker)}, buf)
        path.write_bytes(buf.getvalue())
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="not loaded|not a readable"):
        load_model(path)
    assert not marker.exists()
