"""End to end in a real headless chromium: the worker and `streamlit run server.py` on a free port,
a tiny model trained from the Train page, its curve, its inference page, an upload and a slider; and
the pretrained model on a photograph of a high-resolution camera's size.

Screenshots of every page go to $ML_MANAGER_SCREENSHOTS when set (`make screenshots` sets it to
docs/screenshots/, the README's pictures), else to a temporary folder: `make test` leaves the tree clean.
"""
from __future__ import annotations

import os
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from engine.training.synthetic import synthetic_sample
from engine.imageio import encode_png
from tests.browser_helpers import ROOT, chromium_path, dashboard, open_expander, set_number, slider_input, wait_idle, worker

pytestmark = [pytest.mark.slow, pytest.mark.browser]
SHOTS = Path(os.environ.get("ML_MANAGER_SCREENSHOTS") or Path(tempfile.gettempdir()) / "ml_manager_screenshots")
DRIVE_IMAGE = ROOT.parent / "shared" / "data" / "drive" / "training" / "images" / "21_training.tif"

if chromium_path() is None:
    pytest.skip("no chromium found (install the Debian package 'chromium'; .ci/run does when CI=true)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

TINY_FORM = {  # expander -> {label: value}: a model that trains in seconds on two CPU cores
    "Basics": {"Epochs": 3, "Batch size": 4, "Patch size": 32, "Steps per epoch": 4},
    "Advanced": {"Base channels": 4, "Depth": 2, "Num threads": 1},
}


def shot(page, name: str, focus=None) -> None:
    """Screenshot of the viewport (Streamlit scrolls inside its own container), ``focus`` scrolled into view.

    Stored as a 256-colour PNG: the README's pictures stay well under 300 KB (a fundus photograph in
    full colour made one 600 KB).
    """
    from PIL import Image

    SHOTS.mkdir(parents=True, exist_ok=True)
    for attempt in range(3 if focus is not None else 0):  # a live fragment may redraw the element meanwhile
        try:
            focus.scroll_into_view_if_needed(timeout=10_000)
            break
        except sync_api.Error:
            if attempt == 2:
                raise
            page.wait_for_timeout(500)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path))
    with Image.open(path) as img:
        small = img.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


def stat_value(page, label: str) -> int | None:
    """The count the tuner shows after ``label:`` in its statistics line (None while not drawn)."""
    line = page.locator("[data-testid='stMarkdown']", has_text="Vessel pixels kept").first
    if not line.count():
        return None
    found = re.search(re.escape(label) + r":\s*([\d,]+)", line.inner_text())
    return int(found.group(1).replace(",", "")) if found else None


def wait_until(condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except TypeError:  # a metric not drawn yet
            pass
        if time.monotonic() > deadline:
            raise AssertionError("the page did not reach the expected state in time")
        time.sleep(0.2)


def overlay_src(page) -> str:
    img = page.locator("[data-testid='stImage'] img").first
    return img.get_attribute("src")


@pytest.mark.timeout(600)
def test_train_watch_and_tune_in_a_real_browser(home, tmp_path):
    image_path = tmp_path / "fundus.png"
    image_path.write_bytes(encode_png(synthetic_sample(128, np.random.default_rng(3))[0]))
    with worker(home), dashboard(home) as url, sync_api.sync_playwright() as p:
        from tests.browser_helpers import launch

        browser = launch(p)
        page = browser.new_page(viewport={"width": 1280, "height": 800})  # a laptop: the README's pictures
        page.set_default_timeout(60_000)

        page.goto(f"{url}/")
        page.get_by_text("The worker is running").wait_for(timeout=60_000)
        first_model = page.get_by_role("link", name=re.compile("Train a first model"))
        first_model.wait_for()
        shot(page, "overview_empty")

        # Train, reached as a new user would, from the Overview's link: generate the synthetic set,
        # shrink the model, start.
        first_model.click()
        page.get_by_text("Generate a synthetic data set").click()
        wait_idle(page)
        set_number(page, "Images", 6)
        set_number(page, "Size (px)", 64)
        wait_idle(page)
        page.get_by_role("button", name="Generate the synthetic data set").click()
        page.get_by_text("Image / mask pairs").wait_for()
        wait_idle(page)
        shot(page, "train_dataset")
        page.get_by_label("Model name").fill("browser-tiny")
        for group, values in TINY_FORM.items():
            open_expander(page, group)
            for label, value in values.items():
                set_number(page, label, value)
        page.get_by_role("button", name="Start training").click()
        queued = page.get_by_text(re.compile(r"Queued model \S+")).first
        queued.wait_for()
        model_id = re.search(r"Queued model (\S+?):", queued.inner_text()).group(1)

        # The live monitor: the curve appears, then the run completes.
        page.locator(".js-plotly-plot").first.wait_for(timeout=240_000)
        shot(page, "train_monitor", page.locator(".js-plotly-plot").first)
        page.get_by_text(re.compile(r"browser-tiny · completed")).wait_for(timeout=300_000)

        page.goto(f"{url}/models?model={model_id}")
        page.locator(".js-plotly-plot").first.wait_for()
        shot(page, "models", page.get_by_text("Details of"))

        # Its inference page: upload, then move the threshold slider and see the mask change.
        page.goto(f"{url}/model_inference?model={model_id}")
        page.locator("[data-testid='stFileUploaderDropzoneInput']").first.set_input_files(str(image_path))
        page.get_by_text("Mask on the image").wait_for()
        wait_idle(page)
        controls = page.locator("[data-testid='stRadio']", has_text="Estimated from the photograph").first
        controls.evaluate("e => e.scrollIntoView({block: 'start'})")  # at 800 px the tuner is below the uploads
        page.wait_for_timeout(500)
        shot(page, "model_inference")
        thumb = slider_input(page, "Threshold")
        shown = {}
        for key, done in (("End", lambda kept, gone: kept == gone == 0), ("Home", lambda kept, gone: kept + gone > 0)):
            thumb.focus()
            thumb.press(key)  # End: threshold 1, no pixel passes; Home: threshold 0, every pixel passes
            wait_until(lambda: done(stat_value(page, "Vessel pixels kept"), stat_value(page, "Pixels removed by filters")))
            wait_idle(page)
            shown[key] = overlay_src(page)
        assert shown["End"] != shown["Home"]  # another mask image is displayed

        # The remaining pages, for the README.
        # Inference: a batch job over the synthetic images, run by the worker, its results as a zip.
        page.goto(f"{url}/inference")
        page.get_by_label("Folder with images").fill(str(home / "datasets" / "synthetic_6x64_seed0" / "images"))
        page.get_by_label("Folder with images").press("Enter")
        wait_idle(page)
        page.get_by_role("button", name="Run on all images").click()
        results = page.get_by_role("button", name="Download results (zip)")
        results.wait_for(timeout=120_000)
        wait_idle(page)
        shot(page, "inference", results)
        page.goto(f"{url}/postprocess")
        upload = DRIVE_IMAGE if DRIVE_IMAGE.exists() else image_path
        page.locator("[data-testid='stFileUploaderDropzoneInput']").first.set_input_files(str(upload))
        page.get_by_text("Mask on the image").wait_for()
        wait_idle(page)
        shot(page, "postprocess")
        page.goto(f"{url}/")
        page.locator("[data-testid='stDataFrame']").first.wait_for()  # the models table (a canvas grid)
        page.wait_for_timeout(1000)
        shot(page, "overview")
        assert not page.get_by_text("Traceback").count()
        browser.close()


def hrf_sized_photograph(path: Path) -> Path:
    """A synthetic fundus photograph the size of an HRF image (3504×2336 JPEG): a 512-px sample enlarged
    to a 3,300-px disc, clipped at the top and bottom and set on a black surround, as such cameras frame it."""
    from PIL import Image

    disc = np.asarray(Image.fromarray(synthetic_sample(512, np.random.default_rng(4))[0]).resize((3300, 3300), Image.BICUBIC))
    frame = np.zeros((2336, 3504, 3), np.uint8)
    top, left = (3300 - 2336) // 2, (3504 - 3300) // 2
    frame[:, left:left + 3300] = disc[top:top + 2336]
    Image.fromarray(frame).save(path, quality=90)
    return path


@pytest.mark.timeout(420)
def test_pretrained_model_on_a_large_photograph_in_a_real_browser(home, tmp_path):
    """The Inference page opens on the pretrained model; a 3504×2336 JPEG is shrunk to the model's scale,
    and the mask, with the field of view's outline, is drawn at the photograph's own size."""
    from engine.pretrained import PRETRAINED_PATH, pretrained_available

    if not pretrained_available():
        pytest.skip(f"the pretrained model file {PRETRAINED_PATH} is absent (make pretrained)")
    photograph = hrf_sized_photograph(tmp_path / "large_fundus.jpg")
    with dashboard(home) as url, sync_api.sync_playwright() as p:
        from tests.browser_helpers import launch

        browser = launch(p)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.set_default_timeout(60_000)
        page.goto(f"{url}/inference")
        page.get_by_text("trained on the 20 DRIVE training images, with augmentation").wait_for()  # offered first: the default
        page.locator("[data-testid='stFileUploaderDropzoneInput']").first.set_input_files(str(photograph))
        page.get_by_text("Mask on the image").wait_for(timeout=240_000)
        wait_idle(page, timeout=240_000)
        note = page.get_by_text(re.compile(r"Automatic: this photograph's field of view is")).first
        assert "shrunk" in note.inner_text()  # the model sees it at its training scale
        controls = page.locator("[data-testid='stRadio']", has_text="Estimated from the photograph").first
        controls.evaluate("e => e.scrollIntoView({block: 'start'})")  # field of view, scale, then the tuner
        page.wait_for_timeout(500)
        shot(page, "your_photographs")
        assert not page.get_by_text("Traceback").count()
        browser.close()
