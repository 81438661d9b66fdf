"""Several training scales: what a model of several data sets records, the scale it predicts a photograph at,
the map at the photograph's own resolution, and the inference shortcuts (fused BatchNorm, one-piece tiles)."""
from __future__ import annotations

import copy

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from engine.fov import range_factor, rescale
from engine.inference.predict import LoadedModel, predict, resolve_scale
from engine.tiling import sliding_window_logits
from engine.training.checkpoint import checkpoint_scale_range
from engine.training.config import TrainingConfig
from engine.training.data import load_dataset
from engine.training.loop import train
from engine.training.models import UNet, fuse_for_inference
from engine.training.synthetic import make_synthetic_dataset

torch.set_num_threads(1)


# --------------------------------------------------------------------------- what a checkpoint records

@pytest.fixture(scope="module")
def two_scales(tmp_path_factory):
    """A U-Net trained for a few steps on a set of 128 px photographs and one of 384 px, capped at 300 px."""
    small = make_synthetic_dataset(tmp_path_factory.mktemp("small"), n_images=3, size=128, seed=1)
    large = make_synthetic_dataset(tmp_path_factory.mktemp("large"), n_images=3, size=384, seed=2)
    config = TrainingConfig(base_channels=4, depth=2, batch_size=2, patch_size=32, steps_per_epoch=3, epochs=1,
                            num_threads=1, max_fov_px=300, calibrate_postprocess=False, val_fraction=0.34)
    result = train(config, [small, large], tmp_path_factory.mktemp("run"))
    return torch.load(result.last_checkpoint, weights_only=True), load_dataset(small), load_dataset(large)


def test_the_narrowest_training_scale_is_the_small_set_as_photographed(two_scales):
    ckpt, small, _ = two_scales
    assert checkpoint_scale_range(ckpt)[0] == pytest.approx(small.scales()["median"])


def test_the_widest_training_scale_is_the_cap(two_scales):
    ckpt, _, _ = two_scales
    assert checkpoint_scale_range(ckpt)[1] == 300


def test_the_checkpoint_names_every_data_set(two_scales):
    ckpt, small, large = two_scales
    assert [d["name"] for d in ckpt["scale"]["datasets"]] == [small.name, large.name]


def test_the_wide_set_is_recorded_as_photographed_and_as_trained(two_scales):
    ckpt, _, large = two_scales
    wide = ckpt["scale"]["datasets"][1]
    assert (wide["fov_diameter"], wide["trained_at"]) == (large.scales()["median"], 300)


@pytest.mark.parametrize("record, expected", [
    ({"fov_diameter": 540.0}, (540.0, 540.0)),  # one data set, or a checkpoint from before several
    ({"fov_diameter": 913.0, "fov_range": [540.0, 1200.0]}, (540.0, 1200.0)),
    ({"fov_diameter": 540.0, "fov_range": [1200.0, 540.0]}, (540.0, 540.0)),  # upside down: the one scale
    ({"fov_diameter": 540.0, "fov_range": "wide"}, (540.0, 540.0)),
    ({}, None),
    ("540", None),
])
def test_checkpoint_scale_range_reads_old_and_new_records(record, expected):
    assert checkpoint_scale_range({"scale": record}) == expected


# --------------------------------------------------------------------------- the scale a photograph is predicted at

@pytest.mark.parametrize("diameter, expected", [
    (3263.0, 1200 / 3263),  # an HRF photograph: brought down to the widest training scale, not to DRIVE's
    (1900.0, 1200 / 1900),  # a 2048×2048 camera
    (913.0, 1.0),  # CHASE_DB1: inside the range, as photographed
    (650.0, 1.0),  # a 700×605 camera
    (540.0, 1.0),  # DRIVE
    (300.0, 540 / 300),  # smaller than any training photograph: enlarged to the narrowest scale
    (1250.0, 1.0),  # within SCALE_TOLERANCE of the widest: as it is
    (None, 1.0),  # no visible edge: as it is
])
def test_a_photograph_is_brought_into_the_training_range(diameter, expected):
    assert range_factor(540.0, 1200.0, diameter) == pytest.approx(expected)


def _loaded(model: nn.Module, low: float, high: float) -> LoadedModel:
    return LoadedModel(model.eval(), TrainingConfig(clahe=False), 1, {}, None, None,
                       fov_diameter=low, fov_range=(low, high))


def _disc(side: int, diameter: int) -> np.ndarray:
    fov = np.zeros((side, side), np.uint8)
    cv2.circle(fov, (side // 2, side // 2), diameter // 2, 1, -1)
    return fov


def test_resolve_scale_uses_the_range_of_a_model_of_several_sets():
    loaded = _loaded(nn.Conv2d(1, 1, 1), 540.0, 1200.0)
    assert resolve_scale(loaded, _disc(3000, 2900), "auto") == pytest.approx(1200 / 2899, rel=0.01)


class _DarkLines(nn.Module):
    """A fixed 'vessel detector': high logits where the normalised input is well below the photograph's mean."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -6.0 * (x[:, :1] + 1.5)


def _lines_photograph(side: int = 3000, width: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A bright disc of ``side`` px with dark straight vessels ``width`` px wide; (image, vessel mask, fov)."""
    fov = _disc(side, side - 100)
    vessels = np.zeros((side, side), np.uint8)
    for k in range(8):
        y = 500 + 270 * k
        cv2.line(vessels, (300, y), (side - 300, y + 200), 1, width)
    image = np.zeros((side, side, 3), np.uint8)
    image[fov == 1] = (150, 120, 60)
    image[vessels == 1] = (90, 60, 30)
    return image, vessels, fov


def _width(mask: np.ndarray, vessels: np.ndarray) -> float:
    """Mean width of the drawn lines in ``mask``: its area over the lines' length."""
    length = vessels.sum() / 3
    return float(mask.sum() / length)


@pytest.fixture(scope="module")
def lines():
    return _lines_photograph()


def test_a_wide_photograph_keeps_its_thin_vessels_thin(lines):
    image, vessels, fov = lines
    mask = predict(_loaded(_DarkLines(), 540.0, 1200.0), image, fov=fov) >= 0.5
    assert _width(mask, vessels) < 4.5  # drawn 3 px wide


def test_the_full_size_mask_finds_the_drawn_vessels(lines):
    image, vessels, fov = lines
    mask = predict(_loaded(_DarkLines(), 540.0, 1200.0), image, fov=fov) >= 0.5
    assert (mask & (vessels > 0)).sum() / vessels.sum() > 0.9


def test_a_model_of_one_small_scale_draws_them_wider(lines):
    image, vessels, fov = lines  # the rule before several sets: every photograph brought to 540 px
    mask = predict(_loaded(_DarkLines(), 540.0, 540.0), image, fov=fov) >= 0.5
    assert _width(mask, vessels) > 5.0


def test_the_full_size_mask_has_no_staircase_edges(lines):
    image, vessels, fov = lines
    mask = (predict(_loaded(_DarkLines(), 540.0, 1200.0), image, fov=fov) >= 0.5).astype(np.uint8)
    edge_steps = np.abs(np.diff(mask.astype(np.int8), axis=1)).sum(axis=1)  # 0/1 changes along each row
    rows = edge_steps[edge_steps > 0]
    assert np.percentile(rows, 90) <= 16  # 8 lines, two edges each: a staircase would add steps along the rows


# --------------------------------------------------------------------------- inference shortcuts

@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    model = UNet(1, 4, 2)
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 1, 32, 32))  # BatchNorm running statistics that are not the identity
    return model.eval()


def test_fused_batchnorm_gives_the_same_logits(unet):
    x = torch.randn(1, 1, 57, 83)
    with torch.inference_mode():
        assert torch.allclose(unet(x), fuse_for_inference(copy.deepcopy(unet))(x), atol=1e-4)


def test_fusing_a_training_model_is_refused(unet):
    from engine.errors import UserError

    with pytest.raises(UserError, match="eval mode"):
        fuse_for_inference(copy.deepcopy(unet).train())


@pytest.mark.parametrize("h, w, one_piece", [(864, 1296, True), (1024, 1024, True), (1200, 1200, False),
                                             (600, 2100, False)])
def test_an_image_of_little_more_than_a_tile_goes_in_one_piece(h, w, one_piece):
    calls = []

    class Counting(nn.Module):
        def forward(self, x):
            calls.append(x.shape)
            return x[:, :1]

    sliding_window_logits(Counting(), torch.zeros(1, h, w), tile_size=1024)
    assert (len(calls) == 1) == one_piece


def test_a_map_of_a_wide_photograph_is_enlarged_back_to_its_size(lines):
    image, _, fov = lines
    small = rescale(image, 0.1)
    assert predict(_loaded(_DarkLines(), 540.0, 1200.0), small).shape == small.shape[:2]


def test_the_scale_note_names_the_range_of_a_model_of_several_sets():
    from engine.inference.predictor import SHIPPED
    from ui.inference_workspace import scale_note

    note = scale_note(SHIPPED, np.zeros((3000, 3000, 3), np.uint8), _disc(3000, 2900), "auto")
    assert "from 540 to 1,200 px across, so it is shrunk ×0.41" in note
