"""Every dashboard page through Streamlit's AppTest, against a real temporary data home.

AppTest (streamlit 1.67) drives ``st.file_uploader`` directly (``set_value((name, bytes, mime))``),
so uploads go through the same code as in the browser. Fragments re-run as part of ``at.run()``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from engine.data import synthetic_sample
from engine.imageio import encode_png

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 120  # seconds per script run: first runs import torch and friends on a busy 2-core machine

PAGES = [
    ("pages/overview.py", "ML Manager"),
    ("pages/train.py", "Train"),
    ("pages/models.py", "Models"),
    ("pages/model_inference.py", "Model inference"),
    ("pages/inference.py", "Inference"),
    ("pages/postprocess.py", "Post-processing"),
]


def open_page(page: str | None = None, query: dict | None = None) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    if query:
        at.query_params.update(query)
    at.run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def fundus_png(size: int = 96, seed: int = 0) -> tuple[bytes, bytes, bytes]:
    """PNG bytes of a synthetic fundus photograph, its vessel mask and its FOV."""
    image, mask, fov = synthetic_sample(size, np.random.default_rng(seed))
    return encode_png(image), encode_png(mask), encode_png(fov)


def texts(at: AppTest) -> str:
    return " ".join(str(e.value) for kind in ("error", "warning", "info", "success") for e in getattr(at, kind))


# --------------------------------------------------------------------------- navigation
@pytest.mark.parametrize("page, title", PAGES, ids=[p for p, _ in PAGES])
def test_every_page_opens_without_error(home, page, title):
    at = open_page(page)
    assert at.title[0].value == title
    assert not at.error, [e.value for e in at.error]


def test_default_page_is_the_overview(home):
    at = open_page()
    assert at.title[0].value == "ML Manager"


# --------------------------------------------------------------------------- post-processing page
def upload_fundus(at: AppTest, *, truth: bool = False, size: int = 96) -> AppTest:
    image, mask, fov = fundus_png(size)
    at.file_uploader(key="pp_image").set_value(("fundus.png", image, "image/png"))
    if truth:
        at.file_uploader(key="pp_truth").set_value(("fundus_mask.png", mask, "image/png"))
        at.file_uploader(key="pp_fov").set_value(("fundus_fov.png", fov, "image/png"))
    return at.run()


def test_postprocess_upload_then_slider_changes_the_mask(home):
    at = upload_fundus(open_page("pages/postprocess.py"))
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert len(at.image) == 3  # overlay, image, probability map
    assert at.session_state["pp__config"]["threshold"] == pytest.approx(0.6)
    at.slider(key="pp_confidence_threshold").set_value(0.0).run()  # leave the threshold alone in charge
    kept_before = at.session_state["pp__kept"]
    at.slider(key="pp_threshold").set_value(0.15).run()
    assert not at.exception
    assert at.session_state["pp__config"]["threshold"] == pytest.approx(0.15)
    assert at.session_state["pp__kept"] > kept_before  # a lower threshold keeps more vessel pixels
    at.toggle(key="pp_apply_opening").set_value(False).run()
    assert at.session_state["pp__config"]["apply_opening"] is False


def test_postprocess_defaults_follow_the_seed_advice(home):
    at = upload_fundus(open_page("pages/postprocess.py"))
    config = at.session_state["pp__config"]
    assert (config["threshold"], config["min_component_size"], config["apply_opening"], config["apply_closing"]) == (
        0.6, 50, True, True)


def test_postprocess_with_ground_truth_shows_metrics(home):
    at = upload_fundus(open_page("pages/postprocess.py"), truth=True)
    assert not at.error, [e.value for e in at.error]
    labels = [m.label for m in at.metric]
    assert "dice" in labels and "cldice" in labels
    dice = float(next(m.value for m in at.metric if m.label == "dice"))
    assert 0.0 <= dice <= 1.0


@pytest.mark.parametrize(
    "name, data, fragment",
    [
        ("broken.png", b"this is not an image", "not an image"),
        ("empty.png", b"", "empty"),
        ("cut.png", fundus_png()[0][:200], "truncated or damaged"),
    ],
    ids=["garbage", "empty", "truncated"],
)
def test_corrupt_upload_shows_a_sentence_not_a_traceback(home, name, data, fragment):
    at = open_page("pages/postprocess.py")
    at.file_uploader(key="pp_image").set_value((name, data, "image/png")).run()
    assert not at.exception
    assert any(fragment in e.value for e in at.error), [e.value for e in at.error]
    assert not at.image


def test_ground_truth_of_another_size_is_refused_with_a_sentence(home):
    at = open_page("pages/postprocess.py")
    at.file_uploader(key="pp_image").set_value(("fundus.png", fundus_png(96)[0], "image/png"))
    at.file_uploader(key="pp_truth").set_value(("small_mask.png", fundus_png(64)[1], "image/png"))
    at.run()
    assert not at.exception
    assert any("64×64" in e.value and "96×96" in e.value for e in at.error), [e.value for e in at.error]
    assert len(at.image) == 3  # the tuner still works without the mismatched mask


def test_settings_download_is_the_config_json(home):
    at = upload_fundus(open_page("pages/postprocess.py"))
    at.slider(key="pp_min_component_size").set_value(120).run()
    assert at.session_state["pp__config"]["min_component_size"] == 120
    labels = [b.proto.label for b in at.get("download_button")]
    assert "Download mask (PNG)" in labels and "Download settings (JSON)" in labels
    assert json.loads(json.dumps(at.session_state["pp__config"]))["min_component_size"] == 120
