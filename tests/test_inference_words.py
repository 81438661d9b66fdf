"""What the Inference page and batch jobs say about how a map was made: the reasons for a model's
recommended settings (the calibration's sentences kept in the checkpoint) and flip test-time augmentation,
through Streamlit's AppTest against a real data home."""
from __future__ import annotations

import pytest

from engine.inference.batch import job_settings
from engine.inference.predict import DASHBOARD_TTA, TTA_WORDS
from engine.postprocess import PostProcessConfig
from engine.pretrained import PRETRAINED_PATH, pretrained_available
from engine.training.checkpoint import load_checkpoint_dict
from storage.db import BASELINE
from tests.pages_helpers import fundus_png, open_page

needs_pretrained = pytest.mark.skipif(not pretrained_available(),
                                      reason=f"the pretrained model file {PRETRAINED_PATH} is absent (make pretrained)")


def captions(at) -> str:
    return " ".join(c.value for c in at.caption)


@needs_pretrained
def test_the_recommended_settings_come_with_their_reasons(home):
    sentences = load_checkpoint_dict(PRETRAINED_PATH)["calibration"]["explanation"]
    at = open_page("pages/inference.py")
    shown = [m.value for m in at.markdown]
    assert all(f"- {s}" in shown for s in sentences)


@needs_pretrained
def test_the_reasons_sit_in_an_expander_named_for_users(home):
    at = open_page("pages/inference.py")
    assert "How these settings differ from the usual advice, and why" in [e.label for e in at.expander]


@needs_pretrained
def test_the_page_says_the_map_averages_flips(home):
    at = open_page("pages/inference.py")
    at.file_uploader(key="inf_images").set_value(("fundus.png", fundus_png(96, seed=6)[0], "image/png")).run()
    assert (TTA_WORDS[0].upper() + TTA_WORDS[1:]) in captions(at)


@needs_pretrained
def test_the_batch_controls_say_the_maps_average_flips(home):
    at = open_page("pages/inference.py")
    assert TTA_WORDS in captions(at)


@pytest.mark.parametrize("checkpoint, expected", [
    ("models/1/checkpoints/best.pt", TTA_WORDS if DASHBOARD_TTA else "none"),
    (BASELINE, "none"),  # the classical filter has nothing to flip
])
def test_a_batch_job_records_its_test_time_augmentation(checkpoint, expected):
    row = {"checkpoint_path": checkpoint, "model_id": None, "input_path": "in", "scale": "auto"}
    assert job_settings(row, PostProcessConfig())["test_time_augmentation"] == expected
