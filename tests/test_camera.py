"""Camera shifts for training (engine.training.camera) and the sampler's camera-shifted variants."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from engine.training.camera import SHIFTS, apply_shift, camera_variants, random_camera
from engine.training.config import TrainingConfig
from engine.training.sampling import PatchSampler
from engine.training.loop import train
from engine.training.synthetic import make_synthetic_dataset
from engine.errors import UserError

torch.set_num_threads(1)
UNIT_STATS = (np.zeros((1, 1, 1), np.float32), np.ones((1, 1, 1), np.float32))


def fundus(size: int = 160) -> np.ndarray:
    """An orange disc with dark lines on a black surround, uint8 RGB."""
    img = np.zeros((size, size, 3), np.uint8)
    cv2.circle(img, (size // 2, size // 2), size // 2 - 6, (200, 110, 50), -1)
    for k in range(5):
        cv2.line(img, (20, 20 + 25 * k), (size - 20, 40 + 20 * k), (120, 50, 20), 2)
    return img


def surround(img: np.ndarray) -> np.ndarray:
    return img[:4, :4].reshape(-1, 3)


@pytest.mark.parametrize("name", list(SHIFTS))
def test_every_shift_changes_the_photograph_but_not_its_shape(name):
    image = fundus(584)  # DRIVE's height: the blur's kernel is sized for it
    out = apply_shift(image, name, 1.0, np.random.default_rng(0))
    assert (out.shape, out.dtype) == (image.shape, np.uint8)
    assert np.abs(out.astype(int) - image).mean() > 0.3


@pytest.mark.parametrize("name", list(SHIFTS))
def test_a_shift_leaves_the_dark_surround_dark(name):
    out = apply_shift(fundus(), name, 1.0, np.random.default_rng(1))
    assert surround(out).mean() < 25


def test_uneven_illumination_is_uneven():
    image = np.full((120, 120, 3), 150, np.uint8)
    out = apply_shift(image, "illumination", 1.0, np.random.default_rng(2)).astype(float)
    quadrants = [out[:60, :60].mean(), out[:60, 60:].mean(), out[60:, :60].mean(), out[60:, 60:].mean()]
    assert max(quadrants) - min(quadrants) > 5


def test_jpeg_at_full_strength_costs_detail():
    image = fundus()
    mild = apply_shift(image, "jpeg", 0.1, np.random.default_rng(3))
    strong = apply_shift(image, "jpeg", 1.0, np.random.default_rng(3))
    assert np.abs(strong.astype(int) - image).mean() > np.abs(mild.astype(int) - image).mean()


@pytest.mark.parametrize("args, words", [
    (("fisheye", 1.0), "Unknown camera shift 'fisheye'"),
    (("blur", 1.5), "strength must be between 0 and 1"),
])
def test_bad_arguments_are_refused_with_a_sentence(args, words):
    with pytest.raises(UserError, match=words):
        apply_shift(fundus(), *args, np.random.default_rng(0))


def test_a_grey_image_is_refused():
    with pytest.raises(UserError, match="RGB uint8"):
        apply_shift(np.zeros((10, 10), np.uint8), "blur", 0.5, np.random.default_rng(0))


def test_random_camera_is_reproducible_by_seed():
    image = fundus()
    a, b = (random_camera(image, np.random.default_rng(7)) for _ in range(2))
    c = random_camera(image, np.random.default_rng(8))
    assert (np.array_equal(a, b), np.array_equal(a, c)) == (True, False)


def test_camera_variants_are_preprocessed_like_the_originals():
    image = fundus()
    fov = (image.max(axis=2) > 0).astype(np.uint8)
    [(x, (mean, std))] = camera_variants([image], [fov], "green", True, "zscore", np.random.default_rng(0))
    assert (x.shape, x.dtype, mean.shape) == ((1, 160, 160), np.float32, (1, 1, 1))


@pytest.mark.parametrize("share, expected", [(0.0, 0.0), (1.0, 1.0)])
def test_the_sampler_takes_the_given_share_of_patches_from_the_variant(share, expected):
    image = np.zeros((1, 64, 64), np.float32)
    variant = np.ones((1, 64, 64), np.float32)
    mask = np.zeros((64, 64), np.uint8)
    sampler = PatchSampler([image], [mask], [np.ones_like(mask)], [UNIT_STATS], 32, augment=False)
    sampler.set_variants([(variant, UNIT_STATS)], share)
    x, _ = sampler.sample(16, np.random.default_rng(0))
    assert x.reshape(16, -1).mean(axis=1).round().mean() == expected


def test_a_variant_of_another_shape_is_refused():
    image = np.zeros((1, 64, 64), np.float32)
    mask = np.zeros((64, 64), np.uint8)
    sampler = PatchSampler([image], [mask], [np.ones_like(mask)], [UNIT_STATS], 32)
    with pytest.raises(UserError, match="cannot stand for an image"):
        sampler.set_variants([(np.zeros((1, 32, 32), np.float32), UNIT_STATS)], 0.5)


def test_camera_augment_out_of_range_is_refused():
    with pytest.raises(UserError, match="camera_augment must be at least 0 and at most 1"):
        TrainingConfig(camera_augment=1.5)


@pytest.mark.slow
def test_camera_augment_reaches_training(tmp_path):
    data = make_synthetic_dataset(tmp_path / "synth", n_images=3, size=64, seed=2)
    tiny = TrainingConfig(base_channels=4, depth=2, batch_size=4, patch_size=32, steps_per_epoch=4, epochs=2,
                          val_fraction=0.34, num_threads=1, calibrate_postprocess=False)
    plain = train(tiny, data, tmp_path / "plain")
    shifted = train(tiny.with_updates(camera_augment=1.0), data, tmp_path / "camera")
    assert [h["train_loss"] for h in shifted.history] != [h["train_loss"] for h in plain.history]
