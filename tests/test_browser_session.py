"""What a page remembers and what it says, in a real headless chromium against `streamlit run server.py`:
the Train form and the uploaded photographs survive a visit to another page, the batch sentence follows the
sliders, and a run with a time budget is continued for more minutes. One dashboard serves the module (no
worker: queued runs stay queued, which is all these tests need).
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest

from engine.imageio import encode_png
from engine.training.synthetic import synthetic_sample
from tests.browser_helpers import (browser_page, chromium_path, launch, served_dashboard, move_slider, open_expander,
                                   set_number, slider_input, wait_idle)

pytestmark = [pytest.mark.slow, pytest.mark.browser]

if chromium_path() is None:
    pytest.skip("no chromium found (install the Debian package 'chromium'; .ci/run does when CI=true)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(base URL, data home) of one dashboard for the module."""
    with served_dashboard(tmp_path_factory, "session") as s:
        yield s


@pytest.fixture
def page(served):
    with browser_page(1280, 800) as page:
        yield page


@pytest.fixture(scope="module")
def photograph(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "fundus.png"
    path.write_bytes(encode_png(synthetic_sample(128, np.random.default_rng(3))[0]))
    return path


def go_to(page, title: str) -> None:
    """Open a page through the sidebar, as a user does (a new URL would start a new browser session)."""
    page.locator("[data-testid='stSidebarNav']").get_by_role("link", name=title, exact=True).click()
    wait_idle(page)


def wait_for_text(locator, pattern: str, timeout: float = 15) -> str:
    """The locator's text once it matches ``pattern`` (or the last text read, after ``timeout`` seconds)."""
    deadline, text = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        text = locator.inner_text()
        if re.search(pattern, text):
            break
        time.sleep(0.2)
    return text


def wait_value(locator, expected: str, timeout: float = 20) -> str:
    """The input's value once it equals ``expected`` (or the last value read, after ``timeout`` seconds)."""
    deadline, value = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        value = locator.input_value()
        if value == expected:
            break
        time.sleep(0.2)
    return value


def test_the_train_form_keeps_what_was_typed_after_another_page(served, page):
    url, _ = served
    page.goto(f"{url}/train")
    page.get_by_role("heading", name="Training monitor").wait_for()
    wait_idle(page)
    page.get_by_label("Model name").fill("kept-name")
    page.get_by_label("Model name").press("Tab")
    open_expander(page, "Early stopping and LR")  # where Max minutes used to be; harmless now
    box = page.get_by_label("Max minutes", exact=True).first
    box.fill("1.5")
    box.press("Tab")
    wait_idle(page)
    go_to(page, "Models")
    page.get_by_role("heading", name="Models").first.wait_for()
    go_to(page, "Train")
    page.get_by_role("heading", name="Training monitor").wait_for()
    wait_idle(page)
    name, minutes = page.get_by_label("Model name"), page.get_by_label("Max minutes", exact=True).first
    # the form is drawn while the page's script runs: read the values once it has drawn them (a busy
    # machine draws slowly), not the first frame
    kept = (wait_value(name, "kept-name"), wait_value(minutes, "1.5"))
    assert kept == ("kept-name", "1.5")


def test_an_uploaded_photograph_stays_after_another_page(served, page, photograph):
    url, _ = served
    page.goto(f"{url}/inference")
    page.locator("[data-testid='stFileUploaderDropzoneInput']").first.set_input_files(str(photograph))
    page.get_by_text("Mask on the image").wait_for()
    wait_idle(page)
    go_to(page, "Models")
    go_to(page, "Inference")
    page.get_by_text("Mask on the image").wait_for(timeout=30_000)
    assert page.get_by_text(re.compile(r"Kept from your last visit to this page: fundus\.png")).count() == 1


def test_the_batch_sentence_says_the_threshold_on_the_slider(served, page, photograph):
    url, _ = served
    page.goto(f"{url}/inference")
    page.locator("[data-testid='stFileUploaderDropzoneInput']").first.set_input_files(str(photograph))
    page.get_by_text("Mask on the image").wait_for()
    wait_idle(page)
    thumb = slider_input(page, "Threshold")
    before = float(thumb.input_value())
    move_slider(page, "Threshold", -7 if before > 0.5 else 7)
    wait_idle(page)
    after = float(thumb.input_value())
    sentence = page.locator("[data-testid='stCaptionContainer']", has_text="Every image is processed").first
    text = wait_for_text(sentence, rf"threshold {after:.2f}\b")
    assert f"threshold {after:.2f}" in text, (before, after, text)


@pytest.fixture(scope="module")
def budgeted_model(served) -> tuple[str, float]:
    """A run with a 30-minute budget that the user stopped after one epoch (a real last.pt): (id, minutes trained)."""
    import torch

    from engine.training.checkpoint import load_checkpoint_dict
    from engine.training.config import TrainingConfig
    from engine.training.loop import train
    from engine.training.synthetic import make_synthetic_dataset
    from storage import db, paths

    _, home = served
    data = make_synthetic_dataset(home / "datasets" / "budget", n_images=3, size=64, seed=1)
    config = TrainingConfig(base_channels=4, depth=2, patch_size=32, batch_size=2, steps_per_epoch=3, epochs=60,
                            num_threads=1, val_fraction=0.0, calibrate_postprocess=False, max_minutes=30.0)
    model_id = db.create_model("budgeted", config.to_dict(), str(data))
    torch.set_num_threads(1)
    result = train(TrainingConfig(**{**config.to_dict(), "epochs": 1}), data, paths.checkpoints_dir(model_id))
    minutes = float(load_checkpoint_dict(result.last_checkpoint)["elapsed_seconds"]) / 60
    db.update_model(model_id, status="completed", stop_reason="user_stop", epochs_run=1, total_epochs=60)
    db.add_checkpoint(model_id, 1, result.last_checkpoint, "last", None)
    return model_id, minutes


def test_a_budgeted_run_is_continued_for_more_minutes(served, page, budgeted_model):
    from storage import db

    url, _ = served
    model_id, minutes = budgeted_model
    page.goto(f"{url}/models?model={model_id}")
    box = page.get_by_label("More minutes of training", exact=True).first
    box.wait_for(timeout=30_000)
    box.fill("2")
    box.press("Tab")
    page.get_by_role("button", name="Continue training").click()
    page.get_by_text("continues for 2 more minutes").wait_for()
    config = json.loads(db.get_model(model_id)["config"])
    assert config["max_minutes"] == pytest.approx(round(minutes + 2, 2))


def test_enter_in_more_minutes_does_not_continue_the_run(served, page, budgeted_model):
    """Enter sets the number; only the button queues the continuation, which says what it adds."""
    import shutil

    from storage import db, paths

    url, _ = served
    source = db.get_model(budgeted_model[0])
    model_id = db.create_model("enter", json.loads(source["config"]), source["dataset"])
    last = paths.checkpoints_dir(model_id) / "last.pt"
    last.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(paths.checkpoints_dir(budgeted_model[0]) / "last.pt", last)
    db.update_model(model_id, status="completed", stop_reason="user_stop", epochs_run=1, total_epochs=60)
    db.add_checkpoint(model_id, 1, last, "last", None)
    page.goto(f"{url}/models?model={model_id}")
    box = page.get_by_label("More minutes of training", exact=True).first
    box.wait_for(timeout=30_000)
    box.fill("0.5")
    box.press("Enter")
    wait_idle(page)
    time.sleep(1)
    wait_idle(page)
    said = page.get_by_text("It adds 0.5 minutes").count()
    assert (db.get_model(model_id)["status"], said) == ("completed", 1)


def test_a_fresh_browser_opens_the_train_form_on_the_defaults_not_on_anothers_run(served):
    """Two people on one dashboard: the first one's run must not set the second one's form."""
    from playwright.sync_api import sync_playwright

    from engine.training.config import TrainingConfig
    from engine.training.synthetic import make_synthetic_dataset
    from storage import db

    url, home = served
    make_synthetic_dataset(home / "datasets" / "shared", n_images=2, size=128, seed=2)
    before = {m["id"] for m in db.list_models()}
    with sync_playwright() as p:
        browser = launch(p)
        try:
            first = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
            first.set_default_timeout(60_000)
            first.goto(f"{url}/train")
            first.get_by_role("heading", name="Training monitor").wait_for()
            wait_idle(first)
            for label, value in (("Epochs", 8), ("Steps per epoch", 20), ("Max minutes", 2)):
                set_number(first, label, value)
                wait_idle(first)
            first.get_by_role("button", name="Start training").click()
            first.get_by_text("Queued model").wait_for()
            second = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()  # no cookies
            second.set_default_timeout(60_000)
            second.goto(f"{url}/train")
            second.get_by_role("heading", name="Training monitor").wait_for()
            wait_idle(second)
            shown = [second.get_by_label(label, exact=True).first.input_value()
                     for label in ("Epochs", "Steps per epoch", "Max minutes")]
        finally:
            browser.close()
    queued = [json.loads(m["config"]) for m in db.list_models() if m["id"] not in before]
    defaults = TrainingConfig()
    assert (shown, [(c["epochs"], c["steps_per_epoch"], c["max_minutes"]) for c in queued]) == (
        [str(defaults.epochs), str(defaults.steps_per_epoch), f"{defaults.max_minutes:g}"], [(8, 20, 2.0)])
