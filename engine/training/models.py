"""A small U-Net (Ronneberger et al., 2015) for binary segmentation, in the Pytorch-UNet style.

``UNet(in_channels, base_channels, depth, dropout_rate)`` maps (B, C, H, W) images of any size to
(B, 1, H, W) logits: the input is padded to a multiple of ``2**depth`` and the output cropped back.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from engine.errors import UserError


class DoubleConv(nn.Sequential):
    """(3×3 conv → BatchNorm → ReLU) × 2."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(
            nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
        )


    def fused(self) -> "DoubleConv":
        """This block for inference, each BatchNorm folded into the convolution before it (eval mode only):
        the same outputs to float rounding, without two passes over every feature map."""
        conv1, bn1, relu1, conv2, bn2, relu2 = self
        return DoubleConv.__new__(DoubleConv)._from(fuse_conv_bn_eval(conv1, bn1), relu1,
                                                    fuse_conv_bn_eval(conv2, bn2), relu2)

    def _from(self, *layers: nn.Module) -> "DoubleConv":
        nn.Sequential.__init__(self, *layers)
        return self


class Up(nn.Module):
    """Upsample ×2 with a transposed conv, concatenate the skip connection, DoubleConv."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_ch, out_ch, 2, stride=2)
        self.conv = DoubleConv(out_ch * 2, out_ch)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNet(nn.Module):
    """U-Net with ``depth`` down-sampling steps; channels double at each step from ``base_channels``."""

    def __init__(self, in_channels: int = 1, base_channels: int = 16, depth: int = 4, dropout_rate: float = 0.1):
        super().__init__()
        if in_channels < 1 or base_channels < 1 or not 1 <= depth <= 6 or not 0 <= dropout_rate < 1:
            raise UserError(
                f"UNet needs in_channels >= 1, base_channels >= 1, depth 1-6 and dropout_rate in [0, 1); "
                f"got {in_channels}, {base_channels}, {depth}, {dropout_rate}."
            )
        self.depth = depth
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.inc = DoubleConv(in_channels, widths[0])
        self.downs = nn.ModuleList(DoubleConv(widths[i], widths[i + 1]) for i in range(depth))
        self.dropout = nn.Dropout2d(dropout_rate)
        self.ups = nn.ModuleList(Up(widths[i + 1], widths[i]) for i in reversed(range(depth)))
        self.outc = nn.Conv2d(widths[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = 2**self.depth
        pad_h, pad_w = (-h) % m, (-w) % m
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(F.max_pool2d(skips[-1], 2)))
        x = self.dropout(skips.pop())
        for up in self.ups:
            x = up(x, skips.pop())
        return self.outc(x)[..., :h, :w]


def fuse_for_inference(model: UNet) -> UNet:
    """``model`` (in eval mode) with every BatchNorm folded into its convolution, in place; for prediction
    only (the fused model cannot train or be saved as a checkpoint of this format). Returns ``model``."""
    if model.training:
        raise UserError("fuse_for_inference needs a model in eval mode: call model.eval() first.")
    model.inc = model.inc.fused()
    model.downs = nn.ModuleList(block.fused() for block in model.downs)
    for up in model.ups:
        up.conv = up.conv.fused()
    return model
