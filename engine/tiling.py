"""Whole-image logits from a fully convolutional model, in overlapping tiles when the image is large.

Used by validation during training and by prediction, so both see a model the same way.
"""
from __future__ import annotations

from typing import Callable

import torch

from engine.errors import StopRequested

TILE_SIZE = 1024  # whole images up to this size go through the network in one piece
TILE_OVERLAP = 0.25  # fraction of a tile shared with its neighbour
# An image of up to this many tiles' worth of pixels, no side longer than two tiles, also goes in one piece:
# tiling a 1296×864 image would compute 1.6 times its pixels (the overlaps), for no less memory than one piece.
ONE_PIECE_TILES = 1.25


def _window(h: int, w: int, device: torch.device) -> torch.Tensor:
    """Gaussian blending weights (sigma = size/8), floored so borders still count a little."""
    def axis(n: int) -> torch.Tensor:
        t = torch.arange(n, dtype=torch.float32, device=device) - (n - 1) / 2
        return torch.exp(-0.5 * (t / (n / 8)) ** 2)
    win = axis(h)[:, None] * axis(w)[None, :]
    return torch.clamp(win / win.max(), min=1e-3)


def _starts(size: int, tile: int, step: int) -> list[int]:
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, step))
    return starts + [size - tile]


def one_piece(h: int, w: int, tile_size: int = TILE_SIZE) -> bool:
    """Whether ``sliding_window_logits`` runs the model on an (H, W) image whole, in one piece."""
    return (h <= tile_size and w <= tile_size) or (h * w <= ONE_PIECE_TILES * tile_size ** 2
                                                    and max(h, w) <= 2 * tile_size)


def tile_count(h: int, w: int, tile_size: int = TILE_SIZE, overlap: float = TILE_OVERLAP) -> int:
    """How many tiles ``sliding_window_logits`` runs the model on for an (H, W) image."""
    if one_piece(h, w, tile_size):
        return 1
    step = max(1, int(tile_size * (1 - overlap)))
    return len(_starts(h, min(tile_size, h), step)) * len(_starts(w, min(tile_size, w), step))


def sliding_window_logits(model: torch.nn.Module, x: torch.Tensor, tile_size: int = TILE_SIZE,
                          overlap: float = TILE_OVERLAP,
                          should_stop: Callable[[], bool] | None = None) -> torch.Tensor:
    """Logits (H, W) for one input (C, H, W); tiles with Gaussian blending when larger than ``tile_size``."""
    _, h, w = x.shape
    if one_piece(h, w, tile_size):
        return model(x[None])[0, 0]
    th, tw = min(tile_size, h), min(tile_size, w)
    step = max(1, int(tile_size * (1 - overlap)))
    acc = torch.zeros((h, w), device=x.device)
    norm = torch.zeros((h, w), device=x.device)
    win = _window(th, tw, x.device)
    for y in _starts(h, th, step):
        for x0 in _starts(w, tw, step):
            if should_stop is not None and should_stop():
                raise StopRequested
            out = model(x[None, :, y:y + th, x0:x0 + tw])[0, 0]
            acc[y:y + th, x0:x0 + tw] += out * win
            norm[y:y + th, x0:x0 + tw] += win
    return acc / norm
