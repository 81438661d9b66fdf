"""Shared by the AppTest page tests (tests/test_pages*.py, test_worker_pages.py, test_inference_words.py):
open a page through app.py, synthetic fundus uploads, model rows in the real registry, and a tiny trained
checkpoint (a module-scoped fixture: a test module imports it, and trains it once).

AppTest (streamlit 1.67) drives ``st.file_uploader`` directly (``set_value((name, bytes, mime))``),
so uploads go through the same code as in the browser. Fragments re-run as part of ``at.run()``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from engine.training.synthetic import synthetic_sample
from engine.imageio import encode_png


ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 120  # seconds per script run: first runs import torch and friends on a busy 2-core machine


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


def upload_fundus(at: AppTest, *, truth: bool = False, size: int = 96) -> AppTest:
    image, mask, fov = fundus_png(size)
    at.file_uploader(key="pp_image").set_value(("fundus.png", image, "image/png"))
    if truth:
        at.file_uploader(key="pp_truth").set_value(("fundus_mask.png", mask, "image/png"))
        at.run().radio(key="pp_fov_choice").set_value("upload").run()  # its uploader appears
        at.file_uploader(key="pp_fov").set_value(("fundus_fov.png", fov, "image/png"))
    return at.run()


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


# --------------------------------------------------------------------------- the tuner's words and numbers
def zip_of(files: dict[str, bytes]) -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()
