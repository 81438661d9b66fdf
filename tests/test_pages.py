"""Every dashboard page opens, and the Post-processing page, through Streamlit's AppTest against a real
temporary data home (helpers: tests/pages_helpers.py).

AppTest (streamlit 1.67) drives ``st.file_uploader`` directly (``set_value((name, bytes, mime))``),
so uploads go through the same code as in the browser. Fragments re-run as part of ``at.run()``."""
from __future__ import annotations

import json

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from engine.training.synthetic import synthetic_sample
from tests.pages_helpers import fundus_png, open_page, ROOT, TIMEOUT, upload_fundus


PAGES = [
    ("pages/overview.py", "ML Manager"),
    ("pages/train.py", "Train"),
    ("pages/models.py", "Models"),
    ("pages/model_inference.py", "Model inference"),
    ("pages/inference.py", "Inference"),
    ("pages/postprocess.py", "Post-processing"),
]


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
def test_a_page_run_without_app_py_still_draws(home):
    """Streamlit runs a page's file alone for a deep link on a fresh server; ui.runtime then calls
    st.navigation and reruns (test_browser_traps checks the rerun goes through app.py)."""
    at = AppTest.from_file(str(ROOT / "pages" / "models.py"), default_timeout=TIMEOUT).run()
    assert at.title[0].value == "Models"


def test_postprocess_upload_then_slider_changes_the_mask(home):
    at = upload_fundus(open_page("pages/postprocess.py"), size=128)  # at 96 px the opening removes every vessel
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


def test_postprocess_opens_with_threshold_0_6_size_50_opening_and_closing(home):
    at = upload_fundus(open_page("pages/postprocess.py"))
    config = at.session_state["pp__config"]
    assert (config["threshold"], config["min_component_size"], config["apply_opening"], config["apply_closing"]) == (
        0.6, 50, True, True)


def test_postprocess_with_ground_truth_shows_metrics(home):
    at = upload_fundus(open_page("pages/postprocess.py"), truth=True)
    assert not at.error, [e.value for e in at.error]
    labels = [m.label for m in at.metric]
    assert "Dice" in labels and "clDice" in labels
    dice = float(next(m.value for m in at.metric if m.label == "Dice"))
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


def test_step_by_step_rows_add_up_to_the_kept_pixels():
    """The expander's table follows the engine's identity: thresholded + added - removed == kept."""
    from engine.postprocess import PostProcessConfig, enhanced_post_processing
    from ui.tuner import step_rows

    image, truth, fov = synthetic_sample(128, np.random.default_rng(2))
    prob = np.clip(truth.astype(np.float32) * 0.8 + np.random.default_rng(3).random(truth.shape) * 0.3, 0, 1)
    config = PostProcessConfig(threshold=0.5, min_component_size=20, fill_holes_below=10)
    result = enhanced_post_processing(prob, config=config, fov=fov)
    rows = step_rows(result.stats)
    assert sum(n for _, n in rows[:-1]) == rows[-1][1]
    assert rows[-1][1] == int(result.mask.sum())


def test_stats_line_names_what_a_reader_needs_and_hides_the_steps(home):
    at = upload_fundus(open_page("pages/postprocess.py"), size=128)
    line = next(m.value for m in at.markdown if "Vessel pixels kept" in m.value)
    assert [w for w in ("Pixels removed by filters", "Share of image", "Vessel pieces") if w not in line] == []
    assert [e.label for e in at.expander if e.label == "Step by step"] == ["Step by step"]


@pytest.mark.parametrize("field", ["threshold_mode", "connectivity"])
def test_mode_and_connectivity_always_keep_a_selection(home, field):
    at = upload_fundus(open_page("pages/postprocess.py"), size=64)
    assert at.button_group(key=f"pp_{field}").proto.required is True


def test_the_uploaders_state_the_pixel_limit(home):
    at = open_page("pages/postprocess.py")
    assert "40 megapixels" in at.file_uploader(key="pp_image").proto.help


def test_the_upload_size_limit_fits_the_largest_image_accepted():
    """Streamlit's upload limit lets through a 40-megapixel photograph even stored uncompressed (RGBA)."""
    import tomllib

    from engine.imageio import MAX_PIXELS

    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["maxUploadSize"] * 1e6 >= MAX_PIXELS * 4


@pytest.fixture(scope="module")
def large_upload(tmp_path_factory):
    """The Post-processing page with a 1,600×1,600 px photograph: 2.56 million pixels, more than a preview's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ML_MANAGER_HOME", str(tmp_path_factory.mktemp("home")))
        yield upload_fundus(open_page("pages/postprocess.py"), size=1600)


def test_a_large_photograph_is_tuned_on_a_preview_that_says_so(large_upload):
    assert any("Preview at" in c.value and "1,600×1,600" in c.value for c in large_upload.caption)


def test_the_downloaded_mask_of_a_previewed_photograph_has_its_full_size(large_upload):
    from ui.tuner import _full_mask

    assert _full_mask(large_upload.session_state["pp__holder"]).shape == (1600, 1600)


def test_a_small_photograph_is_tuned_at_full_size(home):
    at = upload_fundus(open_page("pages/postprocess.py"), size=128)
    assert not any("Preview at" in c.value for c in at.caption)
