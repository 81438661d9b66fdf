"""The Train and Models pages through Streamlit's AppTest against a real temporary data home: the
training form, the live monitor, stopping, the models table and deletion (helpers: tests/pages_helpers.py)."""
from __future__ import annotations

import json

import pytest

from engine.errors import UserError
from tests.pages_helpers import add_model, open_page


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
    (("running", "completed"), "running"),   # the running run is watched, even when it is not the newest
    (("completed", "failed"), "failed"),     # else the newest one
])
def test_a_fresh_train_form_opens_on_the_defaults_not_on_the_newest_run(home, statuses, shown):
    from engine.training.config import TrainingConfig
    from storage import db

    for epochs, status in zip((7, 9), statuses):
        model_id = db.create_model(status, TrainingConfig(epochs=epochs, base_channels=8, precision="bf16").to_dict(),
                                   "synthetic", plan={"changed": {"base_channels": 8, "precision": "bf16"}})
        db.update_model(model_id, status=status, heartbeat_at=db.utc_now())  # a live run, not a stale one
    at = open_page("pages/train.py")
    form = [at.number_input(key=f"train_cfg_{k}").value for k in ("epochs", "base_channels")]
    assert (form, at.selectbox(key="train_cfg_precision").value, at.selectbox(key="train_start_from").value,
            [h.value for h in at.subheader if h.value.startswith(shown)]) == (
        [TrainingConfig().epochs, TrainingConfig().base_channels], "auto", "", [f"{shown} · {shown}"])


def _planned_run(db) -> str:
    """A finished run whose user typed epochs 8, steps 20 and 2 minutes, and whose plan chose width 8 and bf16."""
    from engine.training.config import TrainingConfig

    config = TrainingConfig(epochs=8, steps_per_epoch=20, max_minutes=2.0, base_channels=8, precision="bf16")
    model_id = db.create_model("theirs", config.to_dict(), "synthetic",
                               plan={"changed": {"base_channels": 8, "precision": "bf16"}})
    db.update_model(model_id, status="completed", stop_reason="time_limit")
    return model_id


def test_starting_from_a_run_copies_what_its_user_set_and_not_what_its_plan_chose(home):
    from storage import db

    model_id = _planned_run(db)
    at = open_page("pages/train.py")
    at.selectbox(key="train_start_from").set_value(model_id).run()
    form = {k: at.number_input(key=f"train_cfg_{k}").value for k in ("epochs", "steps_per_epoch", "max_minutes",
                                                                      "base_channels")}
    assert (form, at.selectbox(key="train_cfg_precision").value) == (
        {"epochs": 8, "steps_per_epoch": 20, "max_minutes": 2.0, "base_channels": 16}, "auto")


def test_a_run_records_where_each_setting_came_from(home):
    from storage import db

    model_id = _planned_run(db)
    at = open_page("pages/train.py")
    at.radio(key="train_source").set_value("Generate a synthetic data set").run()
    at.number_input(key="train_synth_n").set_value(2)
    at.number_input(key="train_synth_size").set_value(128)
    at.button(key="train_synth_go").click().run()
    at.selectbox(key="train_start_from").set_value(model_id).run()
    at.number_input(key="train_cfg_epochs").set_value(3)
    at.number_input(key="train_cfg_seed").set_value(5).run()
    at.button(key="train_start").click().run()
    new = next(m for m in db.list_models() if m["id"] != model_id)
    assert json.loads(new["settings_from"]) == {"epochs": "typed", "seed": "typed",
                                                "steps_per_epoch": f"copied from run {model_id}",
                                                "max_minutes": f"copied from run {model_id}"}


def test_the_models_page_shows_where_each_setting_came_from(home):
    from engine.training.config import TrainingConfig
    from storage import db

    config = TrainingConfig(epochs=3, base_channels=8)
    model_id = db.create_model("mine", config.to_dict(), "synthetic",
                               settings_from={"epochs": "typed", "base_channels": "planned"})
    at = open_page("pages/models.py", query={"model": model_id})
    table = next(d.value for d in at.dataframe if "from" in d.value.columns)  # AppTest has no dataframe keys
    assert table.to_dict("records") == [
        {"setting": "base channels", "value": "8", "from": "planned for the machine it was measured on"},
        {"setting": "epochs", "value": "3", "from": "typed in the Train form"}]


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
