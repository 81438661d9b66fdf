"""Every dashboard page through Streamlit's AppTest, against a real temporary data home.

AppTest (streamlit 1.67) drives ``st.file_uploader`` directly (``set_value((name, bytes, mime))``),
so uploads go through the same code as in the browser. Fragments re-run as part of ``at.run()``.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from engine.training.synthetic import synthetic_sample
from engine.imageio import encode_png
from engine.errors import UserError

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
def test_a_page_run_without_app_py_still_draws(home):
    """Streamlit runs a page's file alone for a deep link on a fresh server; ui.runtime then calls
    st.navigation and reruns (test_browser_traps checks the rerun goes through app.py)."""
    at = AppTest.from_file(str(ROOT / "pages" / "models.py"), default_timeout=TIMEOUT).run()
    assert at.title[0].value == "Models"


def upload_fundus(at: AppTest, *, truth: bool = False, size: int = 96) -> AppTest:
    image, mask, fov = fundus_png(size)
    at.file_uploader(key="pp_image").set_value(("fundus.png", image, "image/png"))
    if truth:
        at.file_uploader(key="pp_truth").set_value(("fundus_mask.png", mask, "image/png"))
        at.run().radio(key="pp_fov_choice").set_value("upload").run()  # its uploader appears
        at.file_uploader(key="pp_fov").set_value(("fundus_fov.png", fov, "image/png"))
    return at.run()


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


# --------------------------------------------------------------------------- storage fixtures
TINY = dict(base_channels=4, depth=2, batch_size=4, patch_size=32, steps_per_epoch=3, epochs=1, val_fraction=0.25,
            learning_rate=5e-3, num_threads=1, calibrate_postprocess=False)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A real checkpoint of a tiny U-Net trained for one epoch on 64×64 synthetic images."""
    import torch

    from engine.training.synthetic import make_synthetic_dataset
    from engine.training.config import TrainingConfig
    from engine.training.loop import train

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("tiny")
    data = make_synthetic_dataset(root / "synth", n_images=4, size=64, seed=1)
    result = train(TrainingConfig(**TINY), data, root / "out")
    return result.best_checkpoint


def add_model(name: str, status: str, checkpoint: Path | None = None, epochs: int = 0) -> str:
    """A model row in the real registry, with a checkpoint file in its folder and logged epochs."""
    from storage import db, paths

    model_id = db.create_model(name, {"epochs": 10, "early_stopping_patience": 5}, "synthetic")
    db.update_model(model_id, status=status, total_epochs=10, current_epoch=epochs, epochs_run=epochs,
                    best_epoch=min(epochs, 2) or None, best_val_dice=0.5 if epochs else None, patience=5,
                    epochs_since_best=max(0, epochs - 2), recommended_postprocess={"threshold": 0.55})
    if status in ("running", "stopping"):  # a live run beats; one without a heartbeat is recovered as abandoned
        db.update_model(model_id, heartbeat_at=db.utc_now())
    for epoch in range(1, epochs + 1):
        db.log_epoch(model_id, epoch, 1.0 / epoch, 1.1 / epoch, 0.2 + 0.1 * min(epoch, 2), 1e-3, 1.5)
    if checkpoint is not None:
        target = paths.checkpoints_dir(model_id) / "best.pt"
        target.write_bytes(Path(checkpoint).read_bytes())
        db.add_checkpoint(model_id, min(epochs, 2) or 1, target, "best", 0.5)
    return model_id


# --------------------------------------------------------------------------- train page
def test_train_form_queues_a_real_run_on_a_generated_synthetic_set(home):
    from storage import db

    at = open_page("pages/train.py")
    at.radio(key="train_source").set_value("Generate a synthetic data set").run()
    at.number_input(key="train_synth_n").set_value(4)
    at.number_input(key="train_synth_size").set_value(128)  # the default patches are 128 px
    at.button(key="train_synth_go").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.radio(key="train_source").value == "Registered data set"
    assert at.metric[0].value == "4"  # the summary: four image / mask pairs
    at.text_input(key="train_name").input("tiny-from-test")
    at.number_input(key="train_cfg_epochs").set_value(2)
    at.button(key="train_start").click().run()
    assert not at.exception, [e.value for e in at.exception]
    models = db.list_models()
    assert [(m["name"], m["status"], json.loads(m["config"])["epochs"]) for m in models] == [("tiny-from-test", "queued", 2)]
    assert any("Queued model" in s.value for s in at.success)
    # Drawn disabled at once, so a second click cannot queue it again (the double click that arrives
    # before this redraw is tested in a real browser: tests/test_browser_traps.py).
    assert at.button(key="train_start").disabled


def test_the_queued_message_goes_away_when_the_run_ends(home):
    from ui.readers import forget_queries
    from storage import db

    at = open_page("pages/train.py")
    at.radio(key="train_source").set_value("Generate a synthetic data set").run()
    at.number_input(key="train_synth_n").set_value(2)
    at.number_input(key="train_synth_size").set_value(128)
    at.button(key="train_synth_go").click().run()
    at.button(key="train_start").click().run()
    queued = [s.value for s in at.success if "Queued model" in s.value]
    db.update_model(db.list_models()[0]["id"], status="completed", stop_reason="max_epochs")
    forget_queries()
    at.run()
    assert (len(queued), [s.value for s in at.success if "Queued model" in s.value]) == (1, [])


@pytest.mark.parametrize("statuses, shown", [
    (("running", "completed"), "running"),   # the running run, even when it is not the newest
    (("completed", "failed"), "failed"),     # else the newest one
])
def test_a_reloaded_train_page_keeps_the_last_runs_settings_and_shows_it(home, statuses, shown):
    from engine.training.config import TrainingConfig
    from storage import db

    for epochs, status in zip((7, 9), statuses):
        model_id = db.create_model(status, TrainingConfig(epochs=epochs).to_dict(), "synthetic")
        db.update_model(model_id, status=status, heartbeat_at=db.utc_now())  # a live run, not a stale one
    at = open_page("pages/train.py")
    expected = {"running": 7, "failed": 9}[shown]
    assert (at.number_input(key="train_cfg_epochs").value, [h.value for h in at.subheader if h.value.startswith(shown)],
            len(at.warning)) == (expected, [f"{shown} · {shown}"], 0)


def test_train_form_groups_the_options_and_says_10_to_20_is_a_good_patience(home):
    at = open_page("pages/train.py")
    groups = [e.label for e in at.expander]
    assert groups[:5] == ["Basics", "Loss", "Regularisation", "Early stopping and LR", "Advanced"]
    assert at.selectbox(key="train_cfg_loss_function").value == "combined_dice_focal"
    assert "combined_dice_focal" in at.selectbox(key="train_cfg_loss_function").help
    assert "10–20" in at.number_input(key="train_cfg_early_stopping_patience").help


def test_train_zip_upload_with_an_escaping_path_is_refused(home):
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("../../evil.png", b"x")
    at = open_page("pages/train.py")
    at.radio(key="train_source").set_value("Upload a zip").run()
    at.file_uploader(key="train_zip").set_value(("set.zip", buf.getvalue(), "application/zip")).run()
    at.button(key="train_unpack").click().run()
    assert not at.exception
    assert any("leaves its folder" in e.value for e in at.error), [e.value for e in at.error]


def test_monitor_renders_a_runs_logged_epochs(home):
    add_model("watched", "running", epochs=4)
    at = open_page("pages/train.py")
    charts = at.get("plotly_chart")
    assert len(charts) == 1
    figure = json.loads(charts[0].proto.spec)
    dice = next(t for t in figure["data"] if t.get("name") == "val Dice")
    assert dice["x"] == [1, 2, 3, 4]
    assert any("epochs since best: 2 / 5" in c.value for c in at.caption)
    assert any(b.label == "Stop" for b in at.button)


def test_stop_button_asks_the_run_to_stop(home):
    from storage import db

    model_id = add_model("to-stop", "running", epochs=1)
    at = open_page("pages/train.py")
    at.button(key=f"train_stop_{model_id}").click().run()
    assert db.get_model(model_id)["status"] == "stopping"
    assert at.button(key=f"train_stop_{model_id}").label == "stopping…"


# --------------------------------------------------------------------------- models page
def test_models_page_lists_runs_and_shows_details(home):
    done = add_model("finished", "completed", epochs=3)
    from storage import db

    db.update_model(done, stop_reason="early_stopping")
    at = open_page("pages/models.py", query={"model": done})
    table = at.dataframe[0].value
    assert list(table["name"]) == ["finished"]
    assert list(table["stop reason"]) == ["early stopping (no better validation score for `patience` epochs)"]
    assert any("Ended because: **early stopping" in m.value for m in at.markdown)
    assert len(at.get("plotly_chart")) == 1
    assert any(b.proto.label == "Export metrics (CSV)" for b in at.get("download_button"))


@pytest.mark.parametrize("status, stop_reason, shown", [
    ("completed", "user_stop", "stopped (by you) after epoch 2 of 10"),
    ("stopped", "user_stop", "stopped (by you) after epoch 2 of 10"),
    ("completed", "early_stopping", "completed"),
    ("queued", None, "queued"),
])
def test_models_table_says_who_stopped_a_run(home, status, stop_reason, shown):
    from storage import db

    model_id = add_model("run", status, epochs=2)
    db.update_model(model_id, stop_reason=stop_reason)
    assert list(open_page("pages/models.py").dataframe[0].value["status"]) == [shown]


def test_a_queued_run_has_not_ended(home):
    queued = add_model("waiting", "queued")
    at = open_page("pages/models.py", query={"model": queued})
    assert [m.value for m in at.markdown if "Ended because" in m.value or "Waiting for the worker" in m.value] == [
        "Waiting for the worker to start it · duration — · data set `synthetic`"]


def test_deletion_is_refused_for_a_running_model(home):
    from storage import db

    running = add_model("busy", "running", epochs=2)
    at = open_page("pages/models.py", query={"model": running})
    assert at.button(key="models_delete").disabled
    assert any("stop it" in c.value for c in at.caption)
    with pytest.raises(UserError, match="stop it"):
        db.forget_model(running)  # the storage layer refuses too
    assert db.get_model(running)["status"] == "running"


def test_deletion_with_confirmation_removes_a_finished_model(home):
    from storage import db

    done = add_model("old", "completed", epochs=1)
    at = open_page("pages/models.py", query={"model": done})
    at.button(key="models_delete").click().run()
    at.button(key="models_delete_yes").click().run()
    assert not at.exception
    assert db.list_models() == []
    assert any("Deleted" in s.value for s in at.success)


# --------------------------------------------------------------------------- inference pages
def test_model_page_lists_only_its_own_checkpoints_while_global_lists_completed(home, tiny_checkpoint):
    done = add_model("done", "completed", tiny_checkpoint, epochs=1)
    training = add_model("training", "running", tiny_checkpoint, epochs=1)
    at = open_page("pages/model_inference.py", query={"model": training})
    options = at.selectbox(key="mi_ckpt").options
    assert len(options) == 1 and options[0].startswith("best.pt")
    assert any("still training" in c.value for c in at.caption)
    from engine.pretrained import pretrained_available

    at = open_page("pages/inference.py")
    models = at.selectbox(key="inf_model")
    pretrained = ["Pretrained U-Net (DRIVE)"] if pretrained_available() else []
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


# --------------------------------------------------------------------------- the tuner's words and numbers
def zip_of(files: dict[str, bytes]) -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


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


def test_the_uploaders_state_the_pixel_limit(home):
    at = open_page("pages/postprocess.py")
    assert "40 megapixels" in at.file_uploader(key="pp_image").proto.help


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


def test_the_duration_of_a_continued_run_counts_every_part(home):
    from datetime import datetime, timedelta, timezone

    from ui.formatting import run_duration
    from storage import db as store

    model_id = store.create_model("continued", {}, str(home))
    for epoch in (1, 2):  # the first part: two epochs of 30 s each
        store.log_epoch(model_id, epoch, 0.5, 0.5, 0.7, 1e-3, 30.0)
    start = datetime.now(timezone.utc) + timedelta(hours=1)  # the continued part started after them
    store.update_model(model_id, status="completed", started_at=start.isoformat(),
                       finished_at=(start + timedelta(seconds=10)).isoformat())
    assert run_duration(store.get_model(model_id)) == pytest.approx(70.0)


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


def test_the_upload_size_limit_fits_the_largest_image_accepted():
    """Streamlit's upload limit lets through a 40-megapixel photograph even stored uncompressed (RGBA)."""
    import tomllib

    from engine.imageio import MAX_PIXELS

    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["maxUploadSize"] * 1e6 >= MAX_PIXELS * 4
