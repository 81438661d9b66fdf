"""The post-processing tuner and the inference pages in a real headless chromium, as a new user meets
them: several photographs one after another, metrics at a laptop's width, batch jobs with a trained
model's recommended settings.

The worker and `streamlit run server.py` run on a free port (tests/browser_helpers.py); every image is
a small synthetic photograph, so no test skips for want of DRIVE.
"""
from __future__ import annotations

import json
import re
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from engine.training.synthetic import synthetic_sample
from engine.imageio import encode_png
from tests.browser_helpers import chromium_path, dashboard, move_slider, slider_input, wait_idle

pytestmark = [pytest.mark.slow, pytest.mark.browser]

if chromium_path() is None:
    pytest.skip("no chromium found (install the Debian package 'chromium'; .ci/run does when CI=true)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")


def photograph(path: Path, seed: int, size: int = 128) -> Path:
    image, truth = synthetic_sample(size, np.random.default_rng(seed))[:2]
    path.write_bytes(encode_png(image))
    path.with_name(f"{path.stem}_truth.png").write_bytes(encode_png((truth > 0).astype(np.uint8) * 255))
    return path


def wait_until(condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the page did not reach the expected state in time")
        time.sleep(0.2)


def stats_text(page) -> str:
    return page.locator("[data-testid='stMarkdown']", has_text="Vessel pixels kept").first.inner_text()


def upload(page, path: Path, index: int = 0) -> None:
    page.locator("[data-testid='stFileUploaderDropzoneInput']").nth(index).set_input_files(str(path))


@pytest.fixture
def browser_page(home):
    with dashboard(home) as url, sync_api.sync_playwright() as p:
        from tests.browser_helpers import launch

        browser = launch(p)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.set_default_timeout(60_000)
        yield page, url
        browser.close()


@pytest.mark.timeout(300)
def test_settings_carry_over_to_the_next_photograph(browser_page, tmp_path):
    """Replacing the photograph on Post-processing keeps the tuned settings: the controls show them,
    the mask uses them, and a third photograph is not all vessel."""
    page, url = browser_page
    images = [photograph(tmp_path / f"fundus_{i}.png", seed=i) for i in range(3)]
    page.goto(f"{url}/postprocess")
    upload(page, images[0])
    page.get_by_text("Mask on the image").wait_for()
    wait_idle(page)
    move_slider(page, "Threshold", 5)  # 0.60 -> 0.65
    wait_until(lambda: "0.65" in stats_text(page))
    wait_idle(page)
    for image in images[1:]:
        upload(page, image)
        page.get_by_text(re.compile(image.name.replace(".", r"\."))).first.wait_for()
        page.get_by_text("Mask on the image").wait_for()
        wait_idle(page)
        page.wait_for_timeout(500)
        wait_idle(page)
        assert slider_input(page, "Threshold").get_attribute("value") == "0.65"
        assert "Threshold used: 0.65" in stats_text(page)
        assert page.get_by_role("radiogroup", name="Mode").get_by_role("radio", checked=True).inner_text() == "fixed"
    share = float(re.search(r"Share of image:\s*([\d.]+)", stats_text(page)).group(1))
    assert share < 50


@pytest.mark.timeout(300)
def test_clicking_the_selected_mode_keeps_it(browser_page, tmp_path):
    page, url = browser_page
    page.goto(f"{url}/postprocess")
    upload(page, photograph(tmp_path / "fundus.png", seed=1))
    page.get_by_text("Mask on the image").wait_for()
    wait_idle(page)
    mode = page.get_by_role("radiogroup", name="Mode")
    mode.get_by_role("radio", name="fixed").click()
    page.wait_for_timeout(1000)
    wait_idle(page)
    assert mode.get_by_role("radio", checked=True).inner_text() == "fixed"


@pytest.mark.timeout(300)
def test_metrics_read_in_full_at_1280_px(browser_page, tmp_path):
    """With a ground truth, every metric shows its whole value (no '…') at a laptop's width."""
    page, url = browser_page
    image = photograph(tmp_path / "fundus.png", seed=5, size=256)
    page.goto(f"{url}/postprocess")
    upload(page, image)
    page.get_by_text("Mask on the image").wait_for()
    wait_idle(page)
    upload(page, image.with_name("fundus_truth.png"), index=1)
    page.get_by_text("Metrics against your ground truth").wait_for()
    wait_idle(page)
    metrics = page.locator("[data-testid='stMetric']")
    metrics.first.scroll_into_view_if_needed()
    page.wait_for_timeout(500)
    page.screenshot(path=str(Path(tempfile.gettempdir()) / "ml_manager_metrics_1280.png"))
    shown = {}
    for i in range(metrics.count()):
        label = metrics.nth(i).locator("[data-testid='stMetricLabel']").inner_text().strip()
        value = metrics.nth(i).locator("[data-testid='stMetricValue']")
        fits = value.evaluate("e => [...e.querySelectorAll('*'), e].every(n => n.scrollWidth <= n.clientWidth + 1)")
        shown[label] = (value.inner_text().strip(), fits)
    assert {label: text for label, (text, _) in shown.items() if not re.fullmatch(r"[01]\.\d{3}", text)} == {}
    assert [label for label, (_, fits) in shown.items() if not fits] == []
    assert sorted(shown) == sorted(["Dice", "clDice", "IoU", "Precision", "Sensitivity", "Specificity", "Accuracy",
                                    "ROC AUC (map)"])


@pytest.mark.timeout(420)
def test_batch_job_uses_the_models_recommended_settings_and_records_them(home, browser_page, tmp_path):
    """Switching Inference from the classical filter to the pretrained model starts from its recommended
    settings; a batch over a zip, with no tuner on screen, runs with them, says so, names the zip, and its
    results hold settings.json with them."""
    from engine.inference.predict import load_model
    from engine.postprocess import PostProcessConfig
    from engine.pretrained import PRETRAINED_NAME, PRETRAINED_PATH, pretrained_available
    from engine.vesselness import BASELINE_NAME
    from storage import db
    from tests.browser_helpers import worker

    if not pretrained_available():
        pytest.skip(f"the pretrained model file {PRETRAINED_PATH} is absent (make pretrained)")
    recommended = PostProcessConfig.from_dict(load_model(str(PRETRAINED_PATH)).recommended_postprocess).to_dict()
    archive = tmp_path / "clinic_photos.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(2):
            zf.write(photograph(tmp_path / f"eye_{i}.png", seed=10 + i, size=64), f"eye_{i}.png")
    page, url = browser_page
    with worker(home):
        page.goto(f"{url}/inference")
        page.get_by_text("Start the tuner from").wait_for()
        for name in (BASELINE_NAME, PRETRAINED_NAME):  # the baseline first, as a user trying both would
            page.get_by_role("combobox", name="Model", exact=True).click()
            page.get_by_role("option", name=name).click()
            page.get_by_role("combobox", name="Start the tuner from").wait_for()
            wait_until(lambda: bool(page.get_by_text("trained on the 20 DRIVE training images, with augmentation").count()) == (
                name == PRETRAINED_NAME))
            wait_idle(page)
        page.wait_for_timeout(1000)
        assert page.get_by_role("combobox", name="Start the tuner from").input_value() == "Recommended by training"
        page.get_by_text("Zip upload").click()
        zip_uploader = page.locator("[data-testid='stFileUploader']", has_text="Zip of images")
        zip_uploader.wait_for()
        zip_uploader.locator("[data-testid='stFileUploaderDropzoneInput']").set_input_files(str(archive))
        page.get_by_text("clinic_photos.zip").first.wait_for()
        wait_idle(page)
        page.get_by_role("button", name="Run on all images").click()
        queued = page.get_by_text(re.compile(r"Queued job \S+")).first
        queued.wait_for()
        assert "with the model's recommended settings" in queued.inner_text()
        page.get_by_role("button", name="Download results (zip)").wait_for(timeout=240_000)
        assert page.get_by_text(re.compile(r"on `?clinic_photos\.zip")).count() >= 1
    [job] = db.list_inference_jobs()
    assert json.loads(job["postprocess"]) == recommended
    with zipfile.ZipFile(Path(job["output_dir"]) / "results.zip") as zf:
        settings = json.loads(zf.read("settings.json"))
    assert settings["postprocess"] == recommended
