"""Timing training on this machine: one real optimisation step of a U-Net at a given shape and precision
(on random input or on the run's own patches) and one validation pass, for :mod:`engine.training.planner`.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import numpy as np
import torch

from engine.training.config import TrainingConfig
from engine.training.plan import PlanError

STEP_SECONDS = 1.5  # one shape's timed steps end after this many seconds (after at least one)
VALIDATION_PIECE = 512  # validation is timed on a square of at most this side and scaled by the pixels


def measure_step_seconds(config: TrainingConfig, patch_size: int, batch_size: int, precision: str,
                         device: str = "cpu", steps: int = 3,
                         batches: Callable[[], tuple[np.ndarray, np.ndarray]] | None = None,
                         max_seconds: float = STEP_SECONDS) -> float:
    """Seconds of one real optimisation step of ``config``'s U-Net at this shape.

    The step is the one train() takes: a batch drawn by ``batches`` (random input without it), the config's
    U-Net (channels-last on a CPU), its loss, AdamW, bfloat16 autocast when ``precision`` is 'bf16', with the
    config's thread count. One warm-up step is not timed; drawing the batch is.

    Args:
        config: the TrainingConfig whose model, loss and thread count are measured.
        patch_size, batch_size: the input shape, (batch_size, channels, patch_size, patch_size).
        precision: 'bf16' or 'fp32'.
        device: a torch device name.
        steps: at most this many timed steps; the median is returned.
        batches: draws one (images, masks) batch as float32 (B, C, P, P) and (B, 1, P, P) arrays.
        max_seconds: timing ends after this many seconds once a step was timed (on a CPU, where the first
            step is timed and left out, once two were); on a busy machine that may be all there is time for.

    Returns:
        The median seconds per step (> 0).

    Raises:
        PlanError: ``precision`` is not 'bf16' or 'fp32', or ``steps`` is below 1.
    """
    from engine.training.checkpoint import build_model
    from engine.training.losses import build_loss

    if precision not in ("bf16", "fp32"):
        raise PlanError(f"precision must be 'bf16' or 'fp32' to be measured, not {precision!r}.")
    if steps < 1:
        raise PlanError(f"steps must be at least 1, not {steps}.")
    dev = torch.device(device)
    threads = torch.get_num_threads()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    try:
        generator = torch.Generator().manual_seed(config.seed)
        model = build_model(config).to(dev)
        if dev.type == "cpu":  # as train() does
            model = model.to(memory_format=torch.channels_last)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
        loss_fn = build_loss(config)
        channels = 3 if config.channel == "rgb" else 1
        if batches is None:
            x = torch.randn(batch_size, channels, patch_size, patch_size, generator=generator)
            y = (torch.rand(batch_size, 1, patch_size, patch_size, generator=generator) > 0.9).float()
            batches = lambda: (x, y)  # noqa: E731
        bf16 = precision == "bf16"

        def step() -> None:
            xb, yb = (torch.as_tensor(a).to(dev) for a in batches())
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(xb)
            loss = loss_fn(logits.float(), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)

        if dev.type != "cpu":
            step()  # a GPU's first step chooses kernels for seconds; a CPU's is timed (1.5-3× a later one) and dropped
        timings: list[float] = []
        least = 2 if dev.type == "cpu" else 1
        while len(timings) < steps + least - 1 and (len(timings) < least or sum(timings) < max_seconds):
            start = time.perf_counter()
            step()
            timings.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    later = timings[1:] if dev.type == "cpu" and len(timings) > 1 else timings
    return max(statistics.median(later), 1e-9)


def data_measure(dataset: Any) -> Callable[..., float]:
    """A ``measure`` for ``plan_training`` that times the run's real steps: batches of the actual
    ``PatchSampler`` (its sampling and augmentation) over a training image of ``dataset`` (of the first set,
    for a list of them).

    One training image is read once (the first of the config's split) and kept for every shape.
    """
    from engine.training.preprocess import normalization_stats, prepare_channels
    from engine.training.sampling import PatchSampler, split_indices

    if isinstance(dataset, (list, tuple)):
        dataset = dataset[0]

    images: dict[tuple, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def measure(config: TrainingConfig, patch_size: int, batch_size: int, precision: str,
                device: str = "cpu") -> float:
        index = split_indices(len(dataset), config.val_fraction, config.seed)[0][0]
        key = (index, config.channel, bool(config.clahe))
        if key not in images:
            image, mask, fov = dataset.raw(index)
            images[key] = (prepare_channels(image, config.channel, config.clahe), mask, fov)
        x, mask, fov = images[key]
        sampler = PatchSampler([x], [mask], [fov], [normalization_stats(x, fov, config.normalization)], patch_size,
                               config.augment, config.max_zoom, config.any_angle)
        rng = np.random.default_rng(config.seed)
        return measure_step_seconds(config, patch_size, batch_size, precision, device,
                                    batches=lambda: sampler.sample(batch_size, rng))
    return measure


def measure_validation_seconds(config: TrainingConfig, sizes: list[tuple[int, int]], device: str = "cpu") -> float:
    """Seconds of one validation pass as train() runs it after every epoch: the config's U-Net in fp32 on
    every tile of every validation image (``sizes``: their (height, width)). One pass over a piece of at
    most ``VALIDATION_PIECE``² pixels is timed (cold on a CPU, so the estimate errs long) and scaled by the
    pixels of the tiles; 0.0 without validation images."""
    from engine.tiling import TILE_SIZE, one_piece, tile_count
    from engine.training.checkpoint import build_model

    if not sizes:
        return 0.0
    dev = torch.device(device)
    threads = torch.get_num_threads()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    try:
        tiles = [(h, w, 1) if one_piece(h, w) else (min(h, TILE_SIZE), min(w, TILE_SIZE), tile_count(h, w))
                 for h, w in sizes]
        tile_pixels = sum(th * tw * n for th, tw, n in tiles)
        side = 2 ** config.depth * max(1, min(VALIDATION_PIECE, max(min(th, tw) for th, tw, _ in tiles)) // 2 ** config.depth)
        model = build_model(config).to(dev).eval()
        x = torch.zeros(1, 3 if config.channel == "rgb" else 1, side, side, device=dev)
        with torch.inference_mode():
            if dev.type != "cpu":  # a GPU's first pass chooses kernels for seconds; a CPU's costs little more
                model(x)
                torch.cuda.synchronize(dev) if dev.type == "cuda" else None
            start = time.perf_counter()
            model(x)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    return seconds * tile_pixels / (side * side)
