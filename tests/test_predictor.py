"""engine.inference.predictor: a trained checkpoint, the shipped model and the classical filter behind one
interface, with real torch (the shipped engine/weights/drive_unet.pt and a checkpoint trained here)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engine.fov import estimate_fov
from engine.inference.predict import DASHBOARD_TTA, TTA_WORDS, load_model, predict
from engine.inference.predictor import CLASSICAL, SHIPPED, Predictor
from storage.db import checkpoint_file
from engine.pretrained import PRETRAINED_NAME, PRETRAINED_PATH, pretrained_available
from engine.training.checkpoint import CheckpointError, load_checkpoint_dict
from engine.training.config import TrainingConfig
from engine.training.loop import train
from engine.training.synthetic import make_synthetic_dataset, synthetic_sample
from engine.vesselness import BASELINE_NAME, FOV_DIAMETER, baseline_scale
from storage.db import BASELINE

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> str:
    """best.pt of a tiny U-Net trained for two short epochs (calibrated, so it holds recommended settings)."""
    data = make_synthetic_dataset(tmp_path_factory.mktemp("synth"), n_images=3, size=64, seed=2)
    config = TrainingConfig(base_channels=4, depth=2, batch_size=4, patch_size=32, steps_per_epoch=4, epochs=2,
                            num_threads=1)
    return str(train(config, data, tmp_path_factory.mktemp("run")).best_checkpoint)


@pytest.fixture(scope="module")
def photograph() -> tuple[np.ndarray, np.ndarray]:
    image, _, fov = synthetic_sample(96, np.random.default_rng(5))
    return image, (fov > 0).astype(np.uint8)


def _source(which: str, trained: str) -> str:
    if which == "shipped":
        assert pretrained_available(), f"{PRETRAINED_PATH} is missing: it is part of the repository"
    return {"trained": trained, "shipped": SHIPPED, "classical": CLASSICAL}[which]


KINDS = ["trained", "shipped", "classical"]


def test_the_classical_source_is_the_stored_value():
    """Old job rows, presets and API clients name the filter "baseline"."""
    assert CLASSICAL == BASELINE == "baseline"


@pytest.mark.parametrize("which", KINDS)
def test_the_map_has_the_photographs_shape(trained, photograph, which):
    image, fov = photograph
    prediction = Predictor.open(_source(which, trained)).predict(image, fov, scale=0.5)
    assert prediction.map.shape == image.shape[:2]


@pytest.mark.parametrize("which", KINDS)
def test_the_map_is_a_probability(trained, photograph, which):
    image, fov = photograph
    prob = Predictor.open(_source(which, trained)).predict(image, fov).map
    assert (prob.dtype, float(prob.min()) >= 0.0, float(prob.max()) <= 1.0) == (np.float32, True, True)


@pytest.mark.parametrize("which", KINDS)
def test_the_map_is_zero_outside_the_field_of_view(trained, photograph, which):
    image, fov = photograph
    prob = Predictor.open(_source(which, trained)).predict(image, fov, scale="none").map
    assert float(prob[fov == 0].max()) == 0.0


@pytest.mark.parametrize("which", KINDS)
def test_without_a_field_of_view_it_is_estimated(trained, photograph, which):
    image, _ = photograph
    predictor = Predictor.open(_source(which, trained))
    assert np.array_equal(predictor.predict(image).map, predictor.predict(image, estimate_fov(image)).map)


@pytest.mark.parametrize("which, scale, factor", [
    ("trained", "none", 1.0), ("trained", 0.5, 0.5), ("shipped", 2.0, 2.0), ("classical", "none", 1.0),
    ("classical", 0.75, 0.75),
])
def test_the_factor_used_is_returned(trained, photograph, which, scale, factor):
    image, fov = photograph
    assert Predictor.open(_source(which, trained)).predict(image, fov, scale=scale).factor == factor


def test_the_classical_filter_brings_its_fields_of_view_to_its_own_width(photograph):
    image, fov = photograph
    assert Predictor.open(CLASSICAL).predict(image, fov).factor == pytest.approx(baseline_scale(fov))


def test_the_shipped_model_resizes_to_its_training_scale(photograph):
    image, fov = photograph
    shipped = load_model(SHIPPED)
    predictor = Predictor.open(SHIPPED)
    assert (predictor.fov_diameter, predictor.predict(image, fov).factor > 1.0) == (shipped.fov_diameter, True)


def test_a_model_predicts_with_the_dashboards_flips_unless_told(trained, photograph):
    image, fov = photograph
    predictor, loaded = Predictor.open(trained), load_model(trained)
    maps = (predictor.predict(image, fov, scale="none").map, predictor.predict(image, fov, "none", tta=False).map)
    expected = (predict(loaded, image, tta=DASHBOARD_TTA, fov=fov, scale="none"),
                predict(loaded, image, tta=False, fov=fov, scale="none"))
    assert [np.allclose(a, b, atol=1e-6) for a, b in zip(maps, expected)] == [True, True]


@pytest.mark.parametrize("which", ["trained", "shipped"])
def test_the_recommended_settings_are_the_checkpoints(trained, which):
    source = _source(which, trained)
    held = load_checkpoint_dict(source)["recommended_postprocess"]
    assert (held is not None, Predictor(source).recommended_settings()) == (True, held)


def test_the_reasons_are_the_calibrations():
    held = load_checkpoint_dict(_source("shipped", ""))["calibration"]["explanation"]
    assert (len(held) > 0, Predictor(SHIPPED).recommended_reasons()) == (True, held)


def test_the_classical_filter_recommends_nothing():
    assert (Predictor(CLASSICAL).recommended_settings(), Predictor(CLASSICAL).recommended_reasons()) == (None, None)


@pytest.mark.parametrize("which, kind, name, words, tta, scale_control, whose", [
    ("trained", "checkpoint", "best.pt", "best.pt", True, True, "the model's"),
    ("shipped", "shipped", PRETRAINED_NAME, PRETRAINED_PATH.name, True, True, "the model's"),
    ("classical", "classical", BASELINE_NAME, "classical vesselness filter", False, False, "the classical filter's"),
])
def test_it_describes_itself(trained, which, kind, name, words, tta, scale_control, whose):
    p = Predictor(_source(which, trained))
    assert (p.kind, p.name, p.words, p.tta, p.scale_control, p.whose) == (kind, name, words, tta, scale_control, whose)


@pytest.mark.parametrize("which, expected", [
    ("trained", TTA_WORDS if DASHBOARD_TTA else "none"), ("shipped", TTA_WORDS if DASHBOARD_TTA else "none"),
    ("classical", "none"),  # nothing to flip
])
def test_it_says_whether_its_maps_average_flips(trained, which, expected):
    assert Predictor(_source(which, trained)).tta_words == expected


@pytest.mark.parametrize("which, expected", [
    ("trained", "Predicting at 540×540 px…"), ("classical", "Computing the classical vesselness map at 540×540 px…"),
])
def test_its_spinner_words(trained, which, expected):
    assert Predictor(_source(which, trained)).progress_words("540×540 px") == expected


def test_the_filter_knows_the_width_its_sigmas_suit():
    assert Predictor(CLASSICAL).fov_diameter == FOV_DIAMETER


def test_the_shipped_model_is_recognised_by_another_spelling_of_its_path():
    other = PRETRAINED_PATH.parent / ".." / PRETRAINED_PATH.parent.name / PRETRAINED_PATH.name
    assert Predictor(str(other)).kind == "shipped"


def test_describing_reads_no_file(tmp_path):
    assert Predictor(tmp_path / "gone.pt").name == "gone.pt"


def test_opening_a_missing_checkpoint_is_a_sentence(tmp_path):
    with pytest.raises(CheckpointError, match="No checkpoint file at .*gone.pt"):
        Predictor.open(tmp_path / "gone.pt")


@pytest.mark.parametrize("source, expected", [(CLASSICAL, None), ("models/1/checkpoints/best.pt",
                                                                     Path("models/1/checkpoints/best.pt"))])
def test_the_file_a_source_reads(source, expected):
    assert checkpoint_file(source) == expected
