"""The field of view and the image scale: the FOV estimate against DRIVE's masks, its robustness,
the scale measure, and prediction at another scale coming back at the image's own size."""
from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from engine.training.data import Dataset, load_dataset
from engine.training.layouts import Sample
from engine.training.synthetic import synthetic_sample
from engine.fov import SCALE_TOLERANCE, estimate_fov, fov_diameter, rescale, scale_factor
from engine.imageio import encode_png, read_image, read_mask
from engine.fov import parse_scale
from engine.inference.predict import LoadedModel, predict, resolve_scale
from engine.training.checkpoint import build_model
from engine.training.config import TrainingConfig
from engine.errors import UserError

torch.set_num_threads(1)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return float((a & b).sum() / (a | b).sum())


def jpeg(image: np.ndarray, quality: int = 80) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1].copy()


@pytest.fixture(scope="module")
def drive_pairs(drive_dir):
    ds = load_dataset(drive_dir)
    return [(read_image(s.image_path), read_mask(s.fov_path)) for s in ds.pairs]


# --------------------------------------------------------------------------- the estimate on DRIVE

def test_estimate_matches_every_drive_fov_mask(drive_pairs):
    worst = min(iou(estimate_fov(image), fov) for image, fov in drive_pairs)
    assert worst >= 0.97, f"lowest IoU {worst:.4f}"


def _dark(image):
    return (image * 0.35).astype(np.uint8)


def _text(image):
    out = image.copy()
    cv2.putText(out, "OD 2026-11-30 FUNDUS CAM", (4, out.shape[0] - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.6,
                (255, 255, 255), 2)
    return out


@pytest.mark.parametrize("name, change, factor", [
    ("a dark fundus", _dark, 1.0),
    ("JPEG quality 60", lambda im: jpeg(im, 60), 1.0),
    ("a text overlay in the surround", _text, 1.0),
    ("enlarged x3 and JPEG 80", lambda im: jpeg(rescale(im, 3.0)), 3.0),
    ("shrunk x0.75 and JPEG 80", lambda im: jpeg(rescale(im, 0.75)), 0.75),
])
def test_estimate_is_robust(drive_pairs, name, change, factor):
    image, fov = drive_pairs[0]
    truth = rescale(fov, factor, "mask")
    assert iou(estimate_fov(change(image)), truth) >= 0.97, name


# --------------------------------------------------------------------------- the estimate, synthetic

def test_estimate_finds_a_synthetic_disc():
    image, _, fov = synthetic_sample(256, np.random.default_rng(3))
    assert iou(estimate_fov(image), fov) >= 0.95


@pytest.mark.parametrize("image", [
    np.full((128, 128, 3), 90, np.uint8),  # flat: no dark surround
    np.zeros((128, 128, 3), np.uint8),  # black
    np.full((128, 128), 200, np.uint8),  # grey, 2-D
])
def test_no_dark_surround_means_the_whole_image(image):
    assert estimate_fov(image).all()


def test_a_crop_of_the_retina_has_no_fov_edge():
    image, _, _ = synthetic_sample(256, np.random.default_rng(4))
    crop = image[64:192, 64:192]
    assert estimate_fov(crop).all()


def test_estimate_refuses_a_non_image():
    with pytest.raises(UserError, match="shape"):
        estimate_fov(np.zeros((4, 4, 4, 4), np.uint8))


# --------------------------------------------------------------------------- the scale measure

def _disc(h: int, w: int, r: int, cy: int | None = None) -> np.ndarray:
    fov = np.zeros((h, w), np.uint8)
    cv2.circle(fov, (w // 2, h // 2 if cy is None else cy), r, 1, -1)
    return fov


@pytest.mark.parametrize("fov, expected", [
    (_disc(300, 300, 100), 201.0),
    (_disc(200, 400, 150), 301.0),  # clipped at the top and bottom: the width is the diameter
    (np.ones((50, 50), np.uint8), None),  # no visible edge
    (np.zeros((50, 50), np.uint8), None),  # empty
])
def test_fov_diameter(fov, expected):
    assert fov_diameter(fov) == expected


@pytest.mark.parametrize("target, diameter, expected", [
    (540.0, 540.0, 1.0),
    (540.0, 540.0 * (1 + SCALE_TOLERANCE * 0.9), 1.0),  # within the tolerance: as it is
    (540.0, 1620.0, 1 / 3),
    (540.0, 270.0, 2.0),
    (None, 1620.0, 1.0),  # the model's scale is unknown
    (540.0, None, 1.0),  # the image's scale is unknown
])
def test_scale_factor(target, diameter, expected):
    assert scale_factor(target, diameter) == pytest.approx(expected)


@pytest.mark.parametrize("text, expected", [("auto", "auto"), ("None", "none"), ("0.5", 0.5), (2, 2.0)])
def test_parse_scale_accepts(text, expected):
    assert parse_scale(text) == expected


@pytest.mark.parametrize("text", ["big", "0", "-1", "nan", "100", True, None])
def test_parse_scale_refuses_with_a_sentence(text):
    with pytest.raises(UserError, match="scale must be auto, none or a resize factor"):
        parse_scale(text)


# --------------------------------------------------------------------------- prediction at another scale

@pytest.fixture(scope="module")
def model_at_240(tmp_path_factory):
    """A small U-Net really trained (briefly) on synthetic photographs whose FOVs are ~241 px across."""
    from engine.training.synthetic import make_synthetic_dataset
    from engine.inference.predict import load_model
    from engine.training.loop import train

    folder = make_synthetic_dataset(tmp_path_factory.mktemp("synth"), n_images=4, size=256, seed=2)
    config = TrainingConfig(base_channels=8, depth=2, batch_size=4, patch_size=64, steps_per_epoch=25, epochs=3,
                            val_fraction=0.25, learning_rate=5e-3, num_threads=1, calibrate_postprocess=False)
    result = train(config, folder, tmp_path_factory.mktemp("run"))
    return load_model(result.last_checkpoint)


@pytest.fixture(scope="module")
def photo():
    image, _, fov = synthetic_sample(256, np.random.default_rng(7))  # FOV ≈ 241 px across
    return image, fov


def test_the_model_records_its_training_scale(model_at_240):
    assert model_at_240.fov_diameter == pytest.approx(241, abs=2)


def test_auto_leaves_an_image_at_the_model_scale_as_it_is(model_at_240, photo):
    image, fov = photo
    assert resolve_scale(model_at_240, fov, "auto") == 1.0


@pytest.mark.parametrize("factor", [3.0, 0.5])
def test_auto_brings_an_image_to_the_model_scale(model_at_240, photo, factor):
    image, fov = photo
    assert resolve_scale(model_at_240, rescale(fov, factor, "mask"), "auto") == pytest.approx(1 / factor, rel=0.02)


def test_the_map_comes_back_at_the_image_size(model_at_240, photo):
    image, _ = photo
    big = rescale(image, 3.0)
    assert predict(model_at_240, big).shape == big.shape[:2]


def _round_trip_dice(model, photo, scale):
    """Dice between the native mask and the mask of the photograph enlarged ×3 (JPEG 80), shrunk back."""
    image, fov = photo
    native = predict(model, image, fov=fov) >= 0.5
    big = jpeg(rescale(image, 3.0))
    back = rescale(predict(model, big, fov=rescale(fov, 3.0, "mask"), scale=scale), 1 / 3, "map") >= 0.5
    return 2 * (native & back).sum() / (native.sum() + back.sum())


def test_scale_round_trip_gives_the_native_mask(model_at_240, photo):
    assert _round_trip_dice(model_at_240, photo, "auto") > 0.75


def test_without_rescaling_the_enlarged_photograph_gives_another_mask(model_at_240, photo):
    assert _round_trip_dice(model_at_240, photo, "none") < _round_trip_dice(model_at_240, photo, "auto") - 0.3


def test_the_map_is_zero_outside_the_field_of_view(model_at_240, photo):
    image, fov = photo
    assert predict(model_at_240, image).max(initial=0, where=estimate_fov(image) == 0) == 0.0


@pytest.mark.parametrize("image, fov, words", [
    (np.zeros((0, 0, 3), np.uint8), None, "at least"),
    (np.zeros((8, 300, 3), np.uint8), None, "at least"),
    (np.zeros((64, 64, 3), np.float32), None, "RGB uint8"),
    (np.zeros((64, 64), np.uint8), None, "RGB uint8"),
    (np.zeros((64, 64, 3), np.uint8), np.ones((32, 32), np.uint8), "32×32"),
    (np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64), np.uint8), "empty"),
])
def test_predict_refuses_bad_shapes_with_a_sentence(model_at_240, image, fov, words):
    with pytest.raises(UserError, match=words):
        predict(model_at_240, image, fov=fov)


# --------------------------------------------------------------------------- training data at one scale

def _write(folder, name, image, mask):
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    (folder / "images" / name).write_bytes(encode_png(image))
    (folder / "masks" / name).write_bytes(encode_png(mask))


@pytest.fixture(scope="module")
def mixed_sizes(tmp_path_factory):
    """Three synthetic photographs of 128, 192 and 384 px, without FOV masks."""
    folder = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(5)
    for i, size in enumerate((128, 192, 384)):
        image, mask, _ = synthetic_sample(size, rng)
        _write(folder, f"im{i}.png", image, mask)
    return load_dataset(folder)


def test_a_mixed_data_set_is_brought_to_its_median_scale(mixed_sizes):
    scales = mixed_sizes.scales()
    assert scales["target"] == pytest.approx(sorted(scales["diameters"])[1])


@pytest.mark.parametrize("index", [0, 1, 2])
def test_every_training_image_has_the_target_scale(mixed_sizes, index):
    _, _, fov = mixed_sizes.arrays(index)
    assert fov_diameter(fov) == pytest.approx(mixed_sizes.scales()["target"], rel=0.03)


def test_images_without_a_fov_mask_get_the_estimate(mixed_sizes):
    _, _, fov = mixed_sizes.raw(0)
    assert fov.mean() < 0.9


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """(data folder without FOV masks, last.pt of a real one-epoch training on it)."""
    from engine.training.loop import train

    folder = tmp_path_factory.mktemp("no_fov")
    rng = np.random.default_rng(6)
    for i in range(3):
        image, mask, _ = synthetic_sample(96, rng)
        _write(folder, f"im{i}.png", image, mask)
    config = TrainingConfig(base_channels=4, depth=2, batch_size=2, patch_size=32, steps_per_epoch=2, epochs=1,
                            val_fraction=0.34, num_threads=1, calibrate_postprocess=False)
    return folder, train(config, folder, tmp_path_factory.mktemp("run")).last_checkpoint


def test_training_records_the_scale_in_the_checkpoint(tiny_run):
    folder, ckpt = tiny_run
    recorded = torch.load(ckpt, weights_only=True)["scale"]["fov_diameter"]
    assert recorded == pytest.approx(load_dataset(folder).scales()["target"])


def test_evaluate_reports_the_estimated_fov_and_the_scale(tiny_run):
    """`python -m engine evaluate` on a data set without FOV masks."""
    folder, ckpt = tiny_run
    out = subprocess.run([sys.executable, "-m", "engine", "evaluate", "--checkpoint", str(ckpt), "--data", str(folder)],
                         capture_output=True, text=True, timeout=120)
    report = json.loads(out.stdout)
    assert [row["fov"] for row in report["per_image"]] == ["estimated"] * 3


def test_the_summary_says_a_mixed_data_set_is_resized(mixed_sizes):
    assert "resized to" in mixed_sizes.scale_summary()


def test_the_summary_gives_drive_its_one_scale(drive_dir):
    assert load_dataset(drive_dir).scale_summary().startswith("Field of view 540 px across")
