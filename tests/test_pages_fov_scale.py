"""The dashboard's inference pages on any photograph: the field-of-view choice, the image scale, and the
pretrained model shipped with the program, through Streamlit's AppTest against a real data home.

Tests that need the pretrained model skip, saying so, when engine/weights/drive_unet.pt is absent.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.training.synthetic import synthetic_sample
from engine.errors import UserError
from engine.fov import estimate_fov
from engine.imageio import encode_png
from engine.pretrained import PRETRAINED_NAME, PRETRAINED_PATH, pretrained_available
from tests.pages_helpers import add_model, fundus_png, open_page, tiny_checkpoint  # noqa: F401 (a fixture)

needs_pretrained = pytest.mark.skipif(not pretrained_available(),
                                      reason=f"the pretrained model file {PRETRAINED_PATH} is absent (make pretrained)")


def enlarged_photograph(size: int, factor: int, seed: int) -> np.ndarray:
    """A synthetic fundus photograph of ``size`` px, enlarged ``factor`` times (a higher-resolution camera)."""
    image = synthetic_sample(size, np.random.default_rng(seed))[0]
    return cv2.resize(image, (size * factor, size * factor), interpolation=cv2.INTER_CUBIC)


def captions(at) -> str:
    return " ".join(c.value for c in at.caption)


def maps_computed(home: Path) -> int:
    """How many probability maps the dashboard computed (each is logged once, with its duration)."""
    log = home / "logs" / "dashboard.log"
    return log.read_text().count("probability map") if log.exists() else 0


# --------------------------------------------------------------------------- the pretrained model
@needs_pretrained
def test_inference_page_offers_the_pretrained_model_first(home):
    at = open_page("pages/inference.py")
    assert at.selectbox(key="inf_model").options[0] == PRETRAINED_NAME


@needs_pretrained
def test_pretrained_model_masks_a_synthetic_photograph(home):
    at = open_page("pages/inference.py")
    at.file_uploader(key="inf_images").set_value(("fundus.png", fundus_png(128, seed=5)[0], "image/png")).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.session_state["inf_tuner__kept"] > 0


@needs_pretrained
def test_pretrained_model_opens_the_tuner_with_its_recommended_post_processing(home):
    from engine.inference.predict import load_model
    from engine.postprocess import PostProcessConfig

    recommended = PostProcessConfig.from_dict(load_model(PRETRAINED_PATH).recommended_postprocess).to_dict()
    at = open_page("pages/inference.py")
    at.file_uploader(key="inf_images").set_value(("fundus.png", fundus_png(96, seed=6)[0], "image/png")).run()
    assert at.session_state["inf_tuner__config"] == recommended


@needs_pretrained
def test_batch_job_with_the_pretrained_model_is_queued_and_named(home, tmp_path):
    from storage import db

    folder = tmp_path / "clinic"
    folder.mkdir()
    (folder / "a.png").write_bytes(fundus_png(64)[0])
    at = open_page("pages/inference.py")
    at.text_input(key="inf_batch_folder").input(str(folder)).run()
    at.button(key="inf_batch_go").click().run()
    assert [job["checkpoint_path"] for job in db.list_inference_jobs()] == [str(PRETRAINED_PATH.resolve())]
    assert any(m.value.startswith("Job ") and PRETRAINED_NAME in m.value for m in at.markdown)


@needs_pretrained
def test_models_page_never_offers_the_pretrained_model_for_deletion(home):
    model_id = add_model("mine", "completed", epochs=1)
    at = open_page("pages/models.py")
    assert at.selectbox(key="models_detail").options == [f"mine (completed, {model_id})"]  # a row's details hold Delete


@pytest.mark.parametrize("where, accepted", [
    ("the shipped file", True),
    ("a copy outside the models folder", False),
    ("another file beside it", False),
])
def test_dashboard_loads_the_pretrained_file_and_nothing_else_outside_the_models_folder(home, tmp_path, where, accepted):
    from ui.maps import dashboard_checkpoint

    path = {"the shipped file": PRETRAINED_PATH, "a copy outside the models folder": tmp_path / PRETRAINED_PATH.name,
            "another file beside it": PRETRAINED_PATH.with_name("other.pt")}[where]
    try:
        dashboard_checkpoint(str(path))
        outcome = True
    except UserError:
        outcome = False
    assert outcome is accepted


# --------------------------------------------------------------------------- field of view
def post_processing_with_truth(fov_choice: str):
    """The Post-processing page with a photograph, its ground truth and the given field-of-view choice."""
    image, mask, fov = fundus_png(96, seed=2)
    at = open_page("pages/postprocess.py")
    at.file_uploader(key="pp_image").set_value(("fundus.png", image, "image/png"))
    at.file_uploader(key="pp_truth").set_value(("fundus_mask.png", mask, "image/png"))
    at.run().radio(key="pp_fov_choice").set_value(fov_choice).run()
    if fov_choice == "upload":
        at.file_uploader(key="pp_fov").set_value(("fundus_fov.png", fov, "image/png")).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    return at


@pytest.mark.parametrize("choice, scope", [
    ("estimated", "counted inside the estimated field of view."),
    ("upload", "counted inside your field-of-view mask."),
    ("whole", "counted over the whole image."),
])
def test_metrics_say_which_field_of_view_they_were_counted_in(home, choice, scope):
    assert scope in captions(post_processing_with_truth(choice))


@pytest.mark.parametrize("choice, outlined", [("estimated", True), ("upload", True), ("whole", False)])
def test_overlay_outlines_the_field_of_view_when_there_is_one(home, choice, outlined):
    shown = [c for image in post_processing_with_truth(choice).image for c in image.captions]
    overlay = next(c for c in shown if c.startswith("Mask on the image"))
    assert ("field of view's edge" in overlay) is outlined


@pytest.mark.parametrize("with_fov, differs", [("a disc", True), ("the whole image", False)])
def test_overlay_draws_the_edge_of_a_field_of_view(with_fov, differs):
    from ui.overlays import overlay_bytes

    image, mask, disc = synthetic_sample(64, np.random.default_rng(0))
    fov = disc if with_fov == "a disc" else np.ones_like(disc)
    plain = overlay_bytes(image, "overlay-test", mask, np.zeros_like(mask))
    assert (overlay_bytes(image, "overlay-test", mask, np.zeros_like(mask), fov) != plain) is differs


# --------------------------------------------------------------------------- image scale
def model_page_with(home: Path, checkpoint: Path, image: np.ndarray):
    model_id = add_model("scaled", "completed", checkpoint, epochs=1)
    at = open_page("pages/model_inference.py", query={"model": model_id})
    at.file_uploader(key="mi_images").set_value(("large.png", encode_png(image), "image/png")).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    return at


def test_scale_caption_shows_the_factor_for_an_upscaled_photograph(home, tiny_checkpoint):
    from engine.inference.predict import load_model, resolve_scale

    image = enlarged_photograph(64, 3, seed=8)  # the tiny model was trained on 64-px photographs
    factor = resolve_scale(load_model(tiny_checkpoint), estimate_fov(image), "auto")
    at = model_page_with(home, tiny_checkpoint, image)
    assert f"so it is shrunk ×{factor:.2f} (to " in captions(at)


@pytest.mark.parametrize("mode, factor, words", [
    ("none", None, "As it is: the model sees the photograph at its own size (192×192 px)."),
    ("factor", 0.5, "Resized ×0.50: the model sees 96×96 px, and the map is resized back to 192×192 px."),
])
def test_scale_caption_follows_the_control(home, tiny_checkpoint, mode, factor, words):
    at = model_page_with(home, tiny_checkpoint, enlarged_photograph(64, 3, seed=9))
    at.radio(key="mi_scale").set_value(mode).run()
    if factor is not None:
        at.number_input(key="mi_scale_factor").set_value(factor).run()
    assert words in captions(at)


def test_probability_map_is_computed_again_for_a_new_scale_or_field_of_view_but_not_for_a_slider(home, tiny_checkpoint):
    at = model_page_with(home, tiny_checkpoint, enlarged_photograph(48, 2, seed=10))
    counts = [maps_computed(home)]
    at.slider(key="mi_tuner_threshold").set_value(0.3).run()
    counts.append(maps_computed(home))
    at.radio(key="mi_scale").set_value("none").run()
    counts.append(maps_computed(home))
    at.radio(key="mi_fov_choice").set_value("whole").run()
    counts.append(maps_computed(home))
    assert counts == [1, 1, 2, 3]
