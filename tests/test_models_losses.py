"""U-Net shapes and the losses, checked against MONAI and by properties."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.training import losses as L
from engine.training.models import UNet
from engine.errors import UserError

monai_losses = pytest.importorskip("monai.losses", reason="MONAI is a test-only dependency (requirements-dev.txt)")

torch.set_num_threads(1)


@pytest.mark.parametrize("in_ch, base, depth, h, w", [
    (1, 4, 2, 64, 64), (1, 4, 3, 61, 77), (3, 8, 2, 33, 17), (1, 4, 4, 16, 100), (1, 2, 1, 5, 9),
])
def test_unet_returns_logits_of_the_input_size(in_ch, base, depth, h, w):
    model = UNet(in_ch, base, depth, dropout_rate=0.1).eval()
    with torch.no_grad():
        out = model(torch.randn(2, in_ch, h, w))
    assert out.shape == (2, 1, h, w)


@pytest.mark.parametrize("kwargs", [{"in_channels": 0}, {"base_channels": 0}, {"depth": 0}, {"depth": 7},
                                    {"dropout_rate": 1.0}])
def test_unet_rejects_bad_sizes(kwargs):
    with pytest.raises(UserError, match="UNet needs"):
        UNet(**kwargs)


def _inputs(seed, shape=(3, 1, 32, 32)):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g) * 3
    target = (torch.rand(shape, generator=g) > 0.8).float()
    return logits, target


def _combined_monai(dice_weight, alpha, gamma):
    dice, focal = monai_losses.DiceLoss(sigmoid=True, batch=True), monai_losses.FocalLoss(alpha=alpha, gamma=gamma)
    return lambda x, t: dice_weight * dice(x, t) + (1 - dice_weight) * focal(x, t)


CASES = [
    ("dice batch", lambda x, t: L.dice(x, t), monai_losses.DiceLoss(sigmoid=True, batch=True)),
    ("dice per image", lambda x, t: L.dice(x, t, batch=False), monai_losses.DiceLoss(sigmoid=True)),
    ("tversky 0.5/0.5", lambda x, t: L.tversky(x, t), monai_losses.TverskyLoss(sigmoid=True, batch=True)),
    ("tversky 0.3/0.7", lambda x, t: L.tversky(x, t, 0.3, 0.7),
     monai_losses.TverskyLoss(sigmoid=True, alpha=0.3, beta=0.7, batch=True)),
    ("tversky 0.8/0.2 per image", lambda x, t: L.tversky(x, t, 0.8, 0.2, batch=False),
     monai_losses.TverskyLoss(sigmoid=True, alpha=0.8, beta=0.2)),
    ("focal 0.25/2", lambda x, t: L.focal(x, t, 0.25, 2.0), monai_losses.FocalLoss(alpha=0.25, gamma=2.0)),
    ("focal 0.75/1", lambda x, t: L.focal(x, t, 0.75, 1.0), monai_losses.FocalLoss(alpha=0.75, gamma=1.0)),
    ("focal no alpha", lambda x, t: L.focal(x, t, None, 3.0), monai_losses.FocalLoss(gamma=3.0)),
    ("focal gamma 0 = bce", lambda x, t: L.focal(x, t, None, 0.0), lambda x, t: F.binary_cross_entropy_with_logits(x, t)),
    ("bce", L.bce, lambda x, t: F.binary_cross_entropy_with_logits(x, t)),
    ("combined 0.7", lambda x, t: L.combined_dice_focal(x, t, 0.7, 0.25, 2.0), _combined_monai(0.7, 0.25, 2.0)),
    ("combined 0.2", lambda x, t: L.combined_dice_focal(x, t, 0.2, 0.5, 1.5), _combined_monai(0.2, 0.5, 1.5)),
]


@pytest.mark.parametrize("name, ours, reference", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("seed", [0, 1])
def test_losses_match_monai(name, ours, reference, seed):
    logits, target = _inputs(seed)
    assert abs(float(ours(logits, target)) - float(reference(logits, target))) < 1e-5


def test_dice_is_tversky_one_half():
    logits, target = _inputs(2)
    assert torch.allclose(L.dice(logits, target, smooth=0.0), L.tversky(logits, target, 0.5, 0.5, smooth=0.0))


def test_tversky_alpha_weights_false_positives():
    target = torch.zeros(1, 1, 8, 8)
    target[..., :4, :] = 1
    false_positive = torch.full_like(target, 5.0)  # predicts everything: FPs only
    assert L.tversky(false_positive, target, 0.9, 0.1) > L.tversky(false_positive, target, 0.1, 0.9)


NAMES = ["combined_dice_focal", "dice", "focal", "tversky", "bce"]


@pytest.mark.parametrize("name", NAMES)
def test_good_prediction_has_lower_loss(name):
    target = torch.zeros(2, 1, 16, 16)
    target[:, :, 6:9, :] = 1
    good, bad = (target * 2 - 1) * 4, (1 - 2 * target) * 4
    fn = L.build_loss({"loss_function": name})
    assert float(fn(good, target)) < float(fn(torch.zeros_like(target), target)) < float(fn(bad, target))


@pytest.mark.parametrize("name", NAMES)
def test_losses_give_gradients(name):
    logits, target = _inputs(3)
    logits.requires_grad_(True)
    L.build_loss({"loss_function": name})(logits, target).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(UserError, match=r"\(2, 1, 8, 8\).*\(2, 1, 8, 9\)"):
        L.dice(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 9))


def test_build_loss_uses_config_values_and_rejects_unknown_names():
    loss = L.build_loss({"loss_function": "tversky", "tversky_alpha": 0.2, "tversky_beta": 0.8})
    assert isinstance(loss, L.TverskyLoss) and loss.kwargs == {"alpha": 0.2, "beta": 0.8}
    with pytest.raises(UserError, match="Unknown loss_function 'hinge'"):
        L.build_loss({"loss_function": "hinge"})
