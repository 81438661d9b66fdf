"""Continuing a stopped or failed run from its last.pt: in the engine, through the worker, on the dashboard.

A continued run keeps its epochs, optimiser and schedule state, early-stopping counter and best metric,
and its curve goes on where it ended (metrics rows 1..N, no duplicates). Continuing is exact: two
epochs and then two more give the same history as four epochs in one go.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from engine import jobs
from engine.cli import main as cli_main
from engine.training.synthetic import make_synthetic_dataset
from engine.training.checkpoint import check_resume
from engine.training.config import TrainingConfig, TrainingError
from engine.training.loop import train
from storage import db as store
from storage import paths
from tests.worker_helpers import Worker, load_checkpoint, status_of, wait_for
from engine.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
TINY = {"base_channels": 4, "depth": 2, "patch_size": 32, "batch_size": 2, "steps_per_epoch": 3, "epochs": 2,
        "num_threads": 1, "val_fraction": 0.25, "calibrate_postprocess": False, "lr_schedule": "plateau",
        "plateau_patience": 0, "early_stopping_patience": 5, "min_delta": 1.0}  # min_delta 1: only epoch 1 is best


def metric_keys(history: list[dict]) -> list[tuple]:
    return [(h["epoch"], h["train_loss"], h["val_loss"], h["val_dice"], h["lr"], h["epochs_since_best"])
            for h in history]


def adam_steps(ckpt: dict) -> set[int]:
    return {int(state["step"]) for state in ckpt["optimizer"]["state"].values()}


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("resume") / "synth", n_images=4, size=64, seed=1)


@pytest.fixture(scope="module")
def two_then_four(synth, tmp_path_factory):
    """(2 epochs, then continued to 4) and (4 epochs in one go), as (TrainResult, last.pt) pairs."""
    torch.set_num_threads(1)
    split, whole = tmp_path_factory.mktemp("split"), tmp_path_factory.mktemp("whole")
    first = train(TrainingConfig(**TINY), synth, split)
    first_last = load_checkpoint(split / "last.pt")
    events: list[dict] = []
    second = train(TrainingConfig(**{**TINY, "epochs": 4}), synth, split, on_event=events.append,
                   resume_from=split / "last.pt")
    straight = train(TrainingConfig(**{**TINY, "epochs": 4}), synth, whole)
    return first, first_last, events, second, load_checkpoint(split / "last.pt"), straight, load_checkpoint(
        whole / "last.pt")


# --------------------------------------------------------------------------- engine

def test_continued_training_is_the_same_as_training_in_one_go(two_then_four):
    first, _, events, second, _, straight, _ = two_then_four
    assert (events[0]["start_epoch"], [h["epoch"] for h in second.history], second.history[:2] == first.history,
            metric_keys(second.history) == metric_keys(straight.history)) == (3, [1, 2, 3, 4], True, True)


def test_continued_training_keeps_optimiser_schedule_and_early_stopping_state(two_then_four):
    _, first_last, events, second, second_last, _, straight_last = two_then_four
    assert (adam_steps(first_last), adam_steps(second_last), second_last["scheduler"]["plateau"]["last_epoch"],
            first_last["early_stopping"]["wait"], second_last["early_stopping"], events[0]["epochs_since_best"],
            second.best_epoch, second.best_metric == first_last["early_stopping"]["best"]) == (
        {6}, {12}, 4, 1, straight_last["early_stopping"], 1, 1, True)


def _write_without_optimizer(src: Path, dst: Path) -> None:
    ckpt = load_checkpoint(src)
    del ckpt["optimizer"]
    torch.save(ckpt, dst)


@pytest.mark.parametrize("changes, prepare, words", [
    ({"epochs": 4}, None, "raise epochs above 4"),
    ({"epochs": 3}, None, "raise epochs above 4"),
    ({"epochs": 9, "early_stopping_patience": 3}, None, "raise the patience above 3"),
    ({"epochs": 9, "max_minutes": 1e-4}, None, "raise max_minutes or set it to 0"),
    ({"epochs": 9, "base_channels": 8}, None, "different base_channels"),
    ({"epochs": 9}, lambda src, dst: dst.write_bytes(src.read_bytes()[:5000]), "not a readable checkpoint"),
    ({"epochs": 9}, lambda src, dst: dst.write_bytes(b""), "is empty"),
    ({"epochs": 9}, _write_without_optimizer, "lacks optimizer"),
], ids=["same-epochs", "fewer-epochs", "patience-reached", "time-spent", "architecture", "truncated", "empty",
        "no-optimizer"])
def test_check_resume_says_what_to_change(two_then_four, tmp_path, changes, prepare, words):
    path = Path(two_then_four[3].last_checkpoint)
    if prepare:
        prepare(path, tmp_path / "last.pt")
        path = tmp_path / "last.pt"
    with pytest.raises(UserError, match=words):
        check_resume(path, TrainingConfig(**{**TINY, **changes}))


def test_check_resume_accepts_raised_limits(two_then_four):
    last = two_then_four[3].last_checkpoint
    assert check_resume(last, TrainingConfig(**{**TINY, "epochs": 5, "early_stopping_patience": 4}))["epoch"] == 4


def test_cli_resume_with_no_epoch_left_is_one_sentence(two_then_four, synth, tmp_path, capsys):
    code = cli_main(["train", "--data", str(synth), "--out", str(tmp_path), "--resume",
                     str(two_then_four[3].last_checkpoint), *sum((["--set", f"{k}={v}"] for k, v in TINY.items()), [])])
    err = capsys.readouterr().err
    assert (code, err.startswith("error: The checkpoint already ran 4 epoch(s)"), "Traceback" in err) == (2, True, False)


def test_cli_resume_takes_the_checkpoints_own_settings(two_then_four, synth, tmp_path, capsys):
    last = tmp_path / "last.pt"
    shutil.copy(two_then_four[3].last_checkpoint, last)
    code = cli_main(["train", "--data", str(synth), "--out", str(tmp_path), "--resume", str(last), "--set", "epochs=5"])
    out = capsys.readouterr().out
    history = [h["epoch"] for h in load_checkpoint(last)["history"]]
    assert (code, "epochs 5-5" in out, history, load_checkpoint(last)["config"]["base_channels"]) == (
        0, True, [1, 2, 3, 4, 5], 4)


def test_training_error_is_a_user_error_and_no_value_error():
    assert issubclass(TrainingError, UserError) and not issubclass(TrainingError, ValueError)


# --------------------------------------------------------------------------- worker

def test_stopped_run_continued_through_the_api_has_one_contiguous_curve(tmp_path, monkeypatch, synth):
    home = tmp_path / "home"
    monkeypatch.setenv("ML_MANAGER_HOME", str(home))
    config = {**TINY, "epochs": 10_000, "early_stopping_patience": 0, "lr_schedule": "cosine"}
    with Worker(home):
        model_id = jobs.submit_training("continued", synth, config)
        wait_for(lambda: (store.get_model(model_id)["epochs_run"] or 0) >= 2, 120, what="two epochs")
        assert jobs.stop_training(model_id) == "stopping"
        wait_for(lambda: status_of(model_id) == "completed", 30, what="the stop")
        saved = load_checkpoint(paths.checkpoints_dir(model_id) / "last.pt")["epoch"]
        with pytest.raises(UserError, match=f"raise epochs above {saved}"):
            jobs.start_training(model_id, {**config, "epochs": saved}, resume=True)
        jobs.start_training(model_id, {**config, "epochs": saved + 2}, resume=True)
        with pytest.raises(UserError, match="already queued|is running"):
            jobs.start_training(model_id, {**config, "epochs": saved + 3}, resume=True)
        wait_for(lambda: status_of(model_id) in ("completed", "failed"), 120, what="the continued run")
    row, metrics = store.get_model(model_id), store.model_metrics(model_id)
    last = load_checkpoint(paths.checkpoints_dir(model_id) / "last.pt")
    assert (row["status"], row["stop_reason"], row["epochs_run"], [m["epoch"] for m in metrics],
            [h["epoch"] for h in last["history"]], jobs.training_status(model_id)["progress"]) == (
        "completed", "max_epochs", saved + 2, list(range(1, saved + 3)), list(range(1, saved + 3)), 1.0)


@pytest.mark.parametrize("status, last_pt, words", [
    ("completed", False, "no last.pt to continue from"),
    ("failed", False, "no last.pt to continue from"),
    ("running", True, "is running"),
    ("completed", "corrupt", "not a readable checkpoint"),
], ids=["completed-no-file", "failed-no-file", "running", "corrupt"])
def test_continuing_refuses_with_a_sentence_and_changes_nothing(home, synth, two_then_four, status, last_pt, words):
    model_id = store.create_model("refused", TINY, str(synth))
    store.update_model(model_id, status=status, stop_reason="user_stop")
    target = paths.checkpoints_dir(model_id) / "last.pt"
    if last_pt:
        target.write_bytes(b"junk" if last_pt == "corrupt" else Path(two_then_four[3].last_checkpoint).read_bytes())
    before = (store.get_model(model_id), jobs.current_queue().pending_count())
    with pytest.raises(UserError, match=words):
        jobs.start_training(model_id, {**TINY, "epochs": 9}, resume=True)
    assert (store.get_model(model_id), jobs.current_queue().pending_count()) == before


# --------------------------------------------------------------------------- dashboard

def stopped_model(synth: Path, last_pt: Path | bytes, stop_reason: str = "user_stop") -> str:
    model_id = store.create_model("stopped", TrainingConfig(**TINY).to_dict(), str(synth))
    store.update_model(model_id, status="completed", stop_reason=stop_reason, epochs_run=4, total_epochs=4)
    target = paths.checkpoints_dir(model_id) / "last.pt"
    target.write_bytes(last_pt if isinstance(last_pt, bytes) else last_pt.read_bytes())
    store.add_checkpoint(model_id, 4, target, "last", 0.5)
    return model_id


def open_app(page: str, query: dict | None = None, state: dict | None = None) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.query_params.update(query or {})
    for key, value in (state or {}).items():
        at.session_state[key] = value
    at.run()
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_models_page_continue_button_queues_the_run_with_raised_epochs(home, synth, two_then_four):
    model_id = stopped_model(synth, Path(two_then_four[3].last_checkpoint), "max_epochs")
    at, other_tab = (open_app("pages/models.py", {"model": model_id}) for _ in range(2))
    at.number_input(key=f"models_continue_epochs_{model_id}").set_value(6)
    at.button(key=f"models_continue_go_{model_id}").click().run()
    other_tab.button(key=f"models_continue_go_{model_id}").click().run()  # a second tab still shows the button
    row = store.get_model(model_id)
    assert (not at.exception, row["status"], json.loads(row["config"])["epochs"], row["total_epochs"],
            jobs.current_queue().pending_count(), any("continues up to epoch 6" in s.value for s in at.success),
            any("is already queued" in e.value for e in other_tab.error)) == (True, "queued", 6, 6, 1, True, True)


def test_train_monitor_offers_continue_for_a_stopped_run(home, synth, two_then_four):
    model_id = stopped_model(synth, Path(two_then_four[3].last_checkpoint))
    at = open_app("pages/train.py", state={"train_watch": model_id})
    field = at.number_input(key=f"train_continue_epochs_{model_id}")
    shown = (field.value, field.min)
    field.set_value(7)
    at.button(key=f"train_continue_go_{model_id}").click().run()
    row = store.get_model(model_id)
    assert (shown, row["status"], json.loads(row["config"])["epochs"], jobs.current_queue().pending_count()) == (
        (8, 5), "queued", 7, 1)


def test_a_corrupt_last_pt_gets_a_sentence_instead_of_the_button(home, synth):
    model_id = stopped_model(synth, b"not a checkpoint")
    at = open_app("pages/models.py", {"model": model_id})
    assert (not at.exception, any("cannot be continued" in w.value and "not a readable checkpoint" in w.value
                                  for w in at.warning),
            [b.label for b in at.button if b.label == "Continue training"]) == (True, True, [])


def test_start_button_is_held_after_a_submission_then_gets_a_new_submission_key(home, synth):
    shutil.copytree(synth, paths.datasets_dir() / "synth")
    at = open_app("pages/train.py")
    at.number_input(key="train_cfg_patch_size").set_value(32)  # the synthetic images are smaller than 128 px
    at.text_input(key="train_name").input("held")
    at.button(key="train_start").click().run()
    held, first_key = at.button(key="train_start").disabled, at.session_state["train_form_key"]
    at.session_state["train_submitted_at"] = time.monotonic() - 60  # the hold has run out
    at.run()
    enabled = not at.button(key="train_start").disabled
    # A click on the enabled button is a new submission (the double click's second click, which the
    # browser sends before this redraw, carries the first key: tests/test_browser_traps.py).
    at.button(key="train_start").click().run()
    assert (held, enabled, at.session_state["train_form_key"] != first_key, len(store.list_models())) == (
        True, True, True, 2)


def test_a_run_stopped_before_its_first_epoch_can_be_started_again_from_the_models_page(home, synth):
    model_id = store.create_model("early", {"epochs": 2, "patch_size": 32}, str(synth))
    store.update_model(model_id, status="stopped", stop_reason="user_stop", error=jobs.STOPPED_EARLY)
    at = open_app("pages/models.py", {"model": model_id})
    at.button(key=f"models_continue_restart_{model_id}").click().run()
    assert store.get_model(model_id)["status"] == "queued"
