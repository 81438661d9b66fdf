"""Segmentation losses for one foreground class: plain functions first, thin ``nn.Module`` wrappers on top.

All functions take ``logits`` and ``target`` of the same shape (B, 1, H, W) (any (B, C, ...) works),
apply the sigmoid themselves and return a scalar. Conventions follow MONAI (``sigmoid=True``) so that
the results agree with ``monai.losses`` to floating-point precision:

- Tversky (Salehi et al., 2017): ``1 - (TP + s) / (TP + alpha·FP + beta·FN + s)``; ``alpha`` weights false
  positives, ``beta`` false negatives. MONAI's ``TverskyLoss(sigmoid=True, smooth_nr=s, smooth_dr=s)``.
- Dice (Milletari et al., 2016) is Tversky(0.5, 0.5) with half the smoothing term, which is exactly MONAI's
  ``1 - (2·TP + s) / (ΣP + ΣG + s)`` of ``DiceLoss(sigmoid=True)``. One implementation, not two.
- Focal (Lin et al., 2017): ``-a_t (1 - p_t)^gamma log(p_t)`` averaged over all elements, with ``a_t = alpha``
  on foreground and ``1 - alpha`` on background (MONAI ``FocalLoss(alpha=alpha, gamma=gamma)``).
- ``batch=True`` pools TP/FP/FN over the whole batch before the ratio (MONAI ``batch=True``): patches with
  no vessels then do not produce a loss of 1 each.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import UserError

SMOOTH = 1e-5  # MONAI's default smooth_nr = smooth_dr
LOSS_NAMES = ("combined_dice_focal", "dice", "focal", "tversky", "bce")


def _check(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if logits.shape != target.shape:
        raise UserError(
            f"logits have shape {tuple(logits.shape)} but target has shape {tuple(target.shape)}: they must match."
        )
    if logits.ndim < 3:
        raise UserError(f"expected (B, C, H, W) tensors, got shape {tuple(logits.shape)}.")
    return target.to(logits.dtype)


def tversky(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.5, beta: float = 0.5,
            smooth: float = SMOOTH, batch: bool = True) -> torch.Tensor:
    """Tversky loss; ``alpha`` weights false positives, ``beta`` false negatives."""
    target = _check(logits, target)
    p = torch.sigmoid(logits)
    dims = ([0] if batch else []) + list(range(2, logits.ndim))
    tp = (p * target).sum(dims)
    fp = (p * (1 - target)).sum(dims)
    fn = ((1 - p) * target).sum(dims)
    return (1 - (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)).mean()


def dice(logits: torch.Tensor, target: torch.Tensor, smooth: float = SMOOTH, batch: bool = True) -> torch.Tensor:
    """Soft Dice loss ``1 - (2TP + s) / (ΣP + ΣG + s)`` = Tversky(0.5, 0.5) with smoothing s/2."""
    return tversky(logits, target, 0.5, 0.5, smooth / 2, batch)


def focal(logits: torch.Tensor, target: torch.Tensor, alpha: float | None = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid focal loss averaged over all elements; ``alpha`` weights the foreground (None = no weighting)."""
    target = _check(logits, target)
    bce_el = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    # (1 - p_t)^gamma computed in log space, as MONAI does, to avoid overflow.
    loss = torch.exp(gamma * F.logsigmoid(-logits * (2 * target - 1))) * bce_el
    if alpha is not None:
        loss = (target * alpha + (1 - target) * (1 - alpha)) * loss
    return loss.mean()


def bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy on logits, averaged over all elements."""
    return F.binary_cross_entropy_with_logits(logits, _check(logits, target))


def combined_dice_focal(logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 0.7,
                        focal_alpha: float | None = 0.25, focal_gamma: float = 2.0) -> torch.Tensor:
    """``dice_weight``·Dice + (1 − ``dice_weight``)·Focal."""
    return dice_weight * dice(logits, target) + (1 - dice_weight) * focal(logits, target, focal_alpha, focal_gamma)


class _LossModule(nn.Module):
    """Wraps one of the functions above with fixed keyword arguments."""

    fn: Callable[..., torch.Tensor]

    def __init__(self, **kwargs: Any):
        super().__init__()
        self.kwargs = kwargs

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return type(self).fn(logits, target, **self.kwargs)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.kwargs.items())


class TverskyLoss(_LossModule):
    fn = staticmethod(tversky)


class DiceLoss(_LossModule):
    fn = staticmethod(dice)


class FocalLoss(_LossModule):
    fn = staticmethod(focal)


class BCELoss(_LossModule):
    fn = staticmethod(bce)


class DiceFocalLoss(_LossModule):
    fn = staticmethod(combined_dice_focal)


def build_loss(config: Any) -> nn.Module:
    """The loss named by ``config.loss_function`` (a TrainingConfig or a mapping with the same keys)."""
    get = config.get if isinstance(config, Mapping) else lambda k, d=None: getattr(config, k, d)
    name = get("loss_function", "combined_dice_focal")
    if name == "combined_dice_focal":
        return DiceFocalLoss(dice_weight=get("dice_weight", 0.7), focal_alpha=get("focal_alpha", 0.25),
                             focal_gamma=get("focal_gamma", 2.0))
    if name == "dice":
        return DiceLoss()
    if name == "focal":
        return FocalLoss(alpha=get("focal_alpha", 0.25), gamma=get("focal_gamma", 2.0))
    if name == "tversky":
        return TverskyLoss(alpha=get("tversky_alpha", 0.3), beta=get("tversky_beta", 0.7))
    if name == "bce":
        return BCELoss()
    raise UserError(f"Unknown loss_function {name!r}: choose one of {', '.join(LOSS_NAMES)}.")
