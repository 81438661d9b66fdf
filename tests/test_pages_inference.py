"""The Model inference and Inference pages through Streamlit's AppTest against a real temporary data home:
checkpoint lists, the tuner's start options and presets, batch jobs (helpers: tests/pages_helpers.py)."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from engine.training.synthetic import synthetic_sample
from tests.pages_helpers import add_model, fundus_png, open_page, tiny_checkpoint, zip_of  # noqa: F401 (a fixture)


# --------------------------------------------------------------------------- inference pages
def test_model_page_lists_only_its_own_checkpoints_while_global_lists_completed(home, tiny_checkpoint):
    done = add_model("done", "completed", tiny_checkpoint, epochs=1)
    training = add_model("training", "running", tiny_checkpoint, epochs=1)
    at = open_page("pages/model_inference.py", query={"model": training})
    options = at.selectbox(key="mi_ckpt").options
    assert len(options) == 1 and options[0].startswith("best.pt")
    assert any("still training" in c.value for c in at.caption)
    from engine.pretrained import PRETRAINED_NAME, pretrained_available

    at = open_page("pages/inference.py")
    models = at.selectbox(key="inf_model")
    pretrained = [PRETRAINED_NAME] if pretrained_available() else []
    assert models.options == [*pretrained, "Classical vesselness (Frangi)", "done (val Dice 0.500)"]
    assert training not in str(models.options)
    at.selectbox(key="inf_model").set_value(done).run()
    assert at.selectbox(key=f"inf_ckpt_{done}").options[0].startswith("best.pt")


def test_a_model_trained_on_every_image_is_listed_without_a_validation_score(home, tiny_checkpoint):
    from storage import db

    model_id = add_model("all-images", "completed", tiny_checkpoint, epochs=1)
    db.update_model(model_id, best_val_dice=None)
    at = open_page("pages/inference.py")
    assert "all-images (no validation images)" in at.selectbox(key="inf_model").options


def test_model_page_upload_opens_the_tuner_with_recommended_settings(home, tiny_checkpoint):
    from storage import db

    model_id = add_model("ready", "completed", tiny_checkpoint, epochs=1)
    at = open_page("pages/model_inference.py", query={"model": model_id})
    image, mask, _ = fundus_png(64)
    at.file_uploader(key="mi_images").set_value([("a.png", image, "image/png"), ("b.png", fundus_png(64, 1)[0], "image/png")])
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.session_state["mi_tuner__config"]["threshold"] == pytest.approx(0.55)  # the model's recommendation
    kept = at.session_state["mi_tuner__kept"]
    at.slider(key="mi_tuner_threshold").set_value(0.05).run()
    at.slider(key="mi_tuner_confidence_threshold").set_value(0.0).run()
    assert at.session_state["mi_tuner__kept"] != kept
    labels = [b.proto.label for b in at.get("download_button")]
    assert "Download the masks of all 2 images (zip)" in labels
    at.text_input(key="mi_preset_name").input("low threshold")
    at.button(key="mi_preset_save").click().run()
    assert db.list_presets(model_id)[0]["config"]["threshold"] == pytest.approx(0.05)


def test_model_page_with_an_unknown_id_says_so(home):
    add_model("some", "completed", epochs=1)
    at = open_page("pages/model_inference.py", query={"model": "nope"})
    assert any("no model with id 'nope'" in e.value for e in at.error)


def test_global_page_runs_the_baseline_on_an_upload(home):
    at = open_page("pages/inference.py")
    at.file_uploader(key="inf_images").set_value(("fundus.png", fundus_png(96)[0], "image/png")).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert len(at.image) == 3


def test_model_page_from_the_sidebar_preselects_the_newest_completed_model(home, tiny_checkpoint):
    import time

    older = add_model("older", "completed", tiny_checkpoint, epochs=1)
    time.sleep(0.01)
    newest_done = add_model("newest-done", "completed", tiny_checkpoint, epochs=1)
    time.sleep(0.01)
    add_model("still-queued", "queued")
    at = open_page("pages/model_inference.py")
    assert at.selectbox(key="mi_model_None").value == newest_done != older
    assert any(s.label == "Checkpoint" for s in at.selectbox)


def test_batch_jobs_name_their_model_checkpoint_and_input(home, tiny_checkpoint):
    from storage import db, paths

    model_id = add_model("vessels-v2", "completed", tiny_checkpoint, epochs=1)
    ckpt = paths.checkpoints_dir(model_id) / "best.pt"
    db.create_inference_job(str(ckpt), "/data/clinic/batch7", {}, model_id=model_id)
    db.create_inference_job("baseline", "/data/clinic/batch8.zip", {}, model_id="baseline")
    at = open_page("pages/inference.py")
    lines = [m.value for m in at.markdown if m.value.startswith("Job ")]
    assert any("vessels-v2 (best.pt) on `clinic/batch7`" in line for line in lines), lines  # with its parent
    assert any("Classical vesselness (Frangi) on `batch8.zip`" in line for line in lines), lines


def test_reset_names_the_start_option_and_returns_to_it(home, tiny_checkpoint):
    model_id = add_model("ready", "completed", tiny_checkpoint, epochs=1)
    at = open_page("pages/model_inference.py", query={"model": model_id})
    at.file_uploader(key="mi_images").set_value(("a.png", fundus_png(64)[0], "image/png")).run()
    at.slider(key="mi_tuner_threshold").set_value(0.2).run()
    reset = at.button(key="mi_tuner_reset")
    assert reset.label == "Reset to: Recommended by training"
    reset.click().run()
    assert at.session_state["mi_tuner__config"]["threshold"] == pytest.approx(0.55)


@pytest.mark.parametrize("monitor, shown", [("val_dice", "val Dice 0.829"), ("val_loss", "val loss 0.829")])
def test_checkpoint_labels_name_their_score(monitor, shown):
    from ui.inference_workspace import checkpoint_label

    label = checkpoint_label({"name": "best.pt", "kind": "best", "epoch": 7, "metric": 0.8291, "size_bytes": 2e6},
                             monitor)
    assert label == f"best.pt (best, epoch 7, {shown}, 2.0 MB)"


def test_recommended_settings_are_a_sentence_not_json(home, tiny_checkpoint):
    model_id = add_model("ready", "completed", tiny_checkpoint, epochs=1)
    at = open_page("pages/inference.py")
    at.selectbox(key="inf_model").set_value(model_id).run()
    assert any(c.value.startswith("Threshold 0.55, opening 3 px") for c in at.caption), [c.value for c in at.caption]
    assert len(at.json) == 0


def test_a_preset_with_a_retired_option_says_what_changed(home, tiny_checkpoint):
    from storage import db

    model_id = add_model("ready", "completed", tiny_checkpoint, epochs=1)
    db.save_preset(model_id, "old blobs", {"threshold": 0.5, "shape_filter": True, "shape_max_area": 300})
    at = open_page("pages/model_inference.py", query={"model": model_id})
    at.selectbox(key=f"mi_start_from_{model_id}").set_value("Preset: old blobs").run()
    assert any("shape_max_area" in i.value for i in at.info), [i.value for i in at.info]


def test_the_same_file_uploaded_twice_is_listed_once(home):
    at = open_page("pages/inference.py")
    image = fundus_png(64)[0]
    at.file_uploader(key="inf_images").set_value([("a.png", image, "image/png"), ("a copy.png", image, "image/png")])
    at.run()
    assert [s.label for s in at.selectbox if s.label == "Image to tune on"] == []


@pytest.mark.parametrize("stems, names", [
    (["a", "b"], ["a_mask.png", "b_mask.png"]),
    (["a", "a", "A"], ["a_mask.png", "a_2_mask.png", "A_3_mask.png"]),
])
def test_mask_names_in_the_zip_never_collide(stems, names):
    from engine.inference.batch import unique_names

    assert unique_names(stems, "_mask.png") == names


def test_the_classical_filter_is_not_called_the_models_map(home):
    at = open_page("pages/inference.py")
    at.selectbox(key="inf_model").set_value("baseline").run()
    assert any("the classical filter's vessel map" in i.value for i in at.info), [i.value for i in at.info]


def test_a_zip_without_images_is_refused_by_its_name_and_nothing_is_queued(home):
    from storage import db

    at = open_page("pages/inference.py")
    at.radio(key="inf_batch_kind").set_value("Zip upload").run()
    at.file_uploader(key="inf_batch_zip").set_value(("no_images.zip", zip_of({"notes.txt": b"hello"}),
                                                     "application/zip")).run()
    at.button(key="inf_batch_go").click().run()
    assert [e.value for e in at.error if "no_images.zip" in e.value] != []
    assert db.list_inference_jobs() == []


def test_a_queued_zip_is_listed_under_its_own_name(home):
    at = open_page("pages/inference.py")
    at.radio(key="inf_batch_kind").set_value("Zip upload").run()
    at.file_uploader(key="inf_batch_zip").set_value(("clinic.zip", zip_of({"a.png": fundus_png(64)[0]}),
                                                     "application/zip")).run()
    at.button(key="inf_batch_go").click().run()
    assert any(m.value.startswith("Job ") and "on `clinic.zip`" in m.value for m in at.markdown), \
        [m.value for m in at.markdown]


def test_a_large_photograph_says_what_is_being_computed(home):
    """The spinner over the probability map names the size the model sees (a large photograph is shrunk)."""
    from engine.fov import estimate_fov
    from engine.pretrained import PRETRAINED_PATH, pretrained_available
    from ui.maps import map_progress_text

    if not pretrained_available():
        pytest.skip(f"the pretrained model file {PRETRAINED_PATH} is absent (make pretrained)")
    import cv2

    image = cv2.resize(synthetic_sample(128, np.random.default_rng(0))[0], (2048, 2048), interpolation=cv2.INTER_LINEAR)
    text = map_progress_text(str(PRETRAINED_PATH.resolve()), 0.0, image, estimate_fov(image), "auto")
    side = int(re.fullmatch(r"Predicting at ([\d,]+)×[\d,]+ px…", text).group(1).replace(",", ""))
    assert side < 2048


@pytest.mark.parametrize("tuned, threshold, words", [
    (False, 0.6, "with the default settings"),
    (True, 0.3, "with the settings on screen"),
])
def test_a_batch_runs_with_the_settings_the_page_shows(home, tmp_path, tuned, threshold, words):
    from storage import db

    folder = tmp_path / "clinic"
    folder.mkdir()
    (folder / "a.png").write_bytes(fundus_png(64)[0])
    at = open_page("pages/inference.py")
    at.selectbox(key="inf_model").set_value("baseline").run()
    if tuned:
        at.file_uploader(key="inf_images").set_value(("a.png", fundus_png(64)[0], "image/png")).run()
        at.slider(key="inf_tuner_threshold").set_value(threshold).run()
        at.run()  # the move re-ran only the tuner and the batch sentence (fragments); a full run draws the rest
    at.text_input(key="inf_batch_folder").input(str(folder)).run()
    at.button(key="inf_batch_go").click().run()
    assert json.loads(db.list_inference_jobs()[0]["postprocess"])["threshold"] == pytest.approx(threshold)
    assert [s.value for s in at.success if words in s.value] != []


def test_a_batch_uses_the_image_scale_on_screen(home, tmp_path):
    from engine.pretrained import pretrained_available
    from storage import db

    if not pretrained_available():
        pytest.skip("the pretrained model file is absent (make pretrained)")
    folder = tmp_path / "clinic"
    folder.mkdir()
    (folder / "a.png").write_bytes(fundus_png(64)[0])
    at = open_page("pages/inference.py")
    at.file_uploader(key="inf_images").set_value(("a.png", fundus_png(64)[0], "image/png")).run()
    at.radio(key="inf_scale").set_value("none").run()
    at.text_input(key="inf_batch_folder").input(str(folder)).run()
    at.button(key="inf_batch_go").click().run()
    assert db.list_inference_jobs()[0]["scale"] == "none"


@pytest.mark.parametrize("synthetic, upload, expected", [
    (False, None, "generate a synthetic data set on the Train page"),   # no folder that does not exist
    (True, None, "synthetic_2x64_seed0/images`"),                       # the folder that exists
    (False, ("notes.png", b"not an image", "image/png"), None),         # the error alone, no hint beside it
])
def test_the_upload_hint_names_a_folder_that_exists_and_leaves_an_error_alone(home, synthetic, upload, expected):
    from engine.training.synthetic import make_synthetic_dataset
    from storage import paths

    if synthetic:
        make_synthetic_dataset(paths.datasets_dir() / "synthetic_2x64_seed0", n_images=2, size=64, seed=0)
    at = open_page("pages/inference.py")
    if upload:
        at.file_uploader(key="inf_images").set_value(upload).run()
    hints = [i.value for i in at.info if i.value.startswith("Upload one or more fundus photographs")]
    assert ([expected in h for h in hints] if expected else hints) == ([True] if expected else [])
