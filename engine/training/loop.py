"""The training loop: ``train(config, dataset, out_dir, ...)`` trains a U-Net and writes its checkpoints.

It knows nothing of queues or pages: it reports through named events (see docs/ARCHITECTURE.md) and
polls ``should_stop`` every batch and during validation. What a checkpoint holds is
``engine.training.checkpoint``'s business.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from engine.errors import StopRequested
from engine.fov import FOV_DIAMETER_MEASURE
from engine.postprocess.calibration import calibrate_postprocess, pooled_dice
from engine.tiling import sliding_window_logits
from engine.training.camera import camera_variants
from engine.training.callbacks import EarlyStopping, LRSchedule, WeightAverage
from engine.training.checkpoint import ARCH, FORMAT_VERSION, build_model, check_resume, save_checkpoint, versions
from engine.training.config import TrainingConfig, TrainingError
from engine.training.data import Dataset, DatasetError, PatchSampler, load_dataset, normalization_stats, split_indices
from engine.training.device import resolve_device, resolve_precision
from engine.training.losses import build_loss


@dataclass
class TrainResult:
    stop_reason: str
    best_epoch: int
    best_metric: float | None
    epochs_run: int
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    history: list[dict] = field(default_factory=list)
    recommended_postprocess: dict | None = None
    calibration: dict | None = None  # dice_before, dice_after, steps



def train(config: TrainingConfig, dataset: str | Path | Dataset, out_dir: str | Path,
          on_event: Callable[[dict], None] | None = None, should_stop: Callable[[], bool] | None = None,
          resume_from: str | Path | None = None, plan: dict | None = None) -> TrainResult:
    """Train a U-Net; writes best.pt / last.pt (and epoch_XXX.pt) to ``out_dir``. See docs/ARCHITECTURE.md.

    ``plan``: the ``engine.training.planner.Plan.to_dict()`` that chose this config (None: not planned); every
    checkpoint carries it as ``"plan"``. A resumed run without one keeps the checkpoint's.
    """
    if not isinstance(config, TrainingConfig):
        raise TypeError("config must be a TrainingConfig (use TrainingConfig.from_dict for a dict).")
    ds = dataset if isinstance(dataset, Dataset) else load_dataset(dataset)
    if len(ds) < 2:
        raise DatasetError(f"{ds.root} has {len(ds)} image(s); training needs at least 2 (one held out for validation).")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    emit = on_event or (lambda event: None)
    stop_requested = should_stop or (lambda: False)
    c = config
    device = resolve_device(c.device)
    autocast_dtype = resolve_precision(c.precision, device)
    if c.num_threads:
        torch.set_num_threads(c.num_threads)

    train_idx, val_idx = split_indices(len(ds), c.val_fraction, c.seed)
    prepared = {i: ds.arrays(i, c.channel, c.clahe) for i in train_idx + val_idx}
    stats = {i: normalization_stats(prepared[i][0], prepared[i][2], c.normalization) for i in prepared}
    sampler = PatchSampler([prepared[i][0] for i in train_idx], [prepared[i][1] for i in train_idx],
                           [prepared[i][2] for i in train_idx], [stats[i] for i in train_idx], c.patch_size, c.augment,
                           c.max_zoom, c.any_angle)
    # camera shifts: the training photographs as other cameras would take them, redrawn every epoch
    camera_images = [ds.scaled(i)[0] for i in train_idx] if c.augment and c.camera_augment > 0 else None
    val_x = [torch.from_numpy((prepared[i][0] - stats[i][0]) / stats[i][1]).to(device) for i in val_idx]
    val_y = [torch.from_numpy(prepared[i][1].astype(np.float32)).to(device) for i in val_idx]
    val_masks = [prepared[i][1] for i in val_idx]
    val_fovs = [prepared[i][2] for i in val_idx]

    torch.manual_seed(c.seed)
    model = build_model(c).to(device)
    if device.type == "cpu":  # channels-last convolutions are faster on CPUs (oneDNN)
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=c.learning_rate, weight_decay=c.weight_decay)
    schedule = LRSchedule(c, optimizer)
    stopper = EarlyStopping(c.early_stopping_monitor, c.early_stopping_patience, c.min_delta)
    loss_fn = build_loss(c)
    history: list[dict] = []
    start_epoch, elapsed_before, global_step = 1, 0.0, 0
    if resume_from is not None:
        ckpt = check_resume(resume_from, c)
        model.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        for group in optimizer.param_groups:  # a resumed run may change the learning rate settings
            group["initial_lr"] = c.learning_rate
        schedule.load_state_dict(ckpt.get("scheduler") or {})
        stopper.load_state_dict(ckpt["early_stopping"])
        history = list(ckpt.get("history") or [])
        start_epoch = int(ckpt["epoch"]) + 1
        elapsed_before = float(ckpt.get("elapsed_seconds", 0.0))
        global_step = int(ckpt["epoch"]) * c.steps_per_epoch
        if plan is None:
            plan = ckpt.get("plan")
    # the average starts from what predicts ("state_dict", loaded above); a run saved with an average
    # kept the optimiser's own weights apart, and the optimiser continues from those
    average = WeightAverage(model, c.ema_decay) if c.ema_decay > 0 else None
    if resume_from is not None and ckpt.get("train_state_dict") is not None:
        model.load_state_dict(ckpt["train_state_dict"])
    evaluated = average.module if average is not None else model

    def payload(epoch: int, metrics: dict) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION, "arch": ARCH, "state_dict": evaluated.state_dict(),
            "train_state_dict": model.state_dict() if average is not None else None, "config": c.to_dict(),
            "preprocessing": {"channel": c.channel, "clahe": c.clahe, "normalization": c.normalization},
            "epoch": epoch, "metrics": metrics, "versions": versions(), "optimizer": optimizer.state_dict(),
            "scheduler": schedule.state_dict(), "early_stopping": stopper.state_dict(), "history": history,
            "recommended_postprocess": None, "calibration": None, "elapsed_seconds": elapsed(),
            "scale": {"fov_diameter": ds.scales()["target"], "measure": FOV_DIAMETER_MEASURE}, "plan": plan,
        }

    t_start = time.monotonic()

    def elapsed() -> float:
        return elapsed_before + time.monotonic() - t_start

    best_path, last_path = out / "best.pt", out / "last.pt"
    emit({"type": "start", "start_epoch": start_epoch, "total_epochs": c.epochs, "steps_per_epoch": c.steps_per_epoch,
          "n_train": len(train_idx), "n_val": len(val_idx), "device": str(device),
          "precision": "bf16" if autocast_dtype is not None else "fp32",
          "best_epoch": stopper.best_epoch, "best_metric": stopper.best, "epochs_since_best": stopper.wait,
          "elapsed_before": elapsed_before})
    stop_reason, epoch_done = "max_epochs", start_epoch - 1
    if c.max_minutes and elapsed() >= c.max_minutes * 60:
        stop_reason = "time_limit"
    for epoch in range(start_epoch, c.epochs + 1):
        if stop_reason != "max_epochs":
            break
        t_epoch = time.monotonic()
        model.train()
        rng = np.random.default_rng([c.seed, epoch])
        if camera_images is not None:
            sampler.set_variants(camera_variants(camera_images, [prepared[i][2] for i in train_idx], c.channel,
                                                 c.clahe, c.normalization, np.random.default_rng([c.seed, epoch, 1])),
                                 c.camera_augment)
        torch.manual_seed(c.seed * 100_003 + epoch)
        losses: list[float] = []
        last_emit = 0.0
        for step in range(1, c.steps_per_epoch + 1):
            if stop_requested():
                stop_reason = "user_stop"
                break
            if c.max_minutes and elapsed() >= c.max_minutes * 60:
                stop_reason = "time_limit"
                break
            xb, yb = (torch.from_numpy(a).to(device) for a in sampler.sample(c.batch_size, rng))
            schedule.before_step(global_step, elapsed())
            with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                logits = model(xb)
            loss = loss_fn(logits.float(), yb)
            if not torch.isfinite(loss):
                raise TrainingError(f"The loss became {loss.item()} at epoch {epoch}, step {step}: "
                                    "lower learning_rate (for example by 10×) and train again.")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if average is not None:
                average.update(global_step)
            global_step += 1
            losses.append(loss.item())
            now = time.monotonic()
            if now - last_emit >= 0.5 or step == c.steps_per_epoch:
                last_emit = now
                emit({"type": "batch", "epoch": epoch, "step": step, "steps": c.steps_per_epoch, "loss": losses[-1]})
        if stop_reason == "user_stop" or not losses:
            break
        if val_idx:
            try:
                val_loss, val_dice, _ = _validate(evaluated, val_x, val_y, val_masks, val_fovs, loss_fn, stop_requested)
            except StopRequested:
                stop_reason = "user_stop"
                break
            monitored = val_dice if c.early_stopping_monitor == "val_dice" else val_loss
            schedule.after_epoch(monitored)
            should_end, reason = stopper.evaluate(monitored)
            is_best = stopper.update(monitored, epoch)
        else:  # every image trains: nothing to judge an epoch by, so the newest weights are the best
            val_loss = val_dice = monitored = None
            should_end, reason, is_best = False, "no validation images: the newest epoch is kept", True
            stopper.best_epoch = epoch
        epoch_done = epoch
        seconds = time.monotonic() - t_epoch
        record = {"type": "epoch_end", "epoch": epoch, "total_epochs": c.epochs, "train_loss": float(np.mean(losses)),
                  "val_loss": val_loss, "val_dice": val_dice, "lr": optimizer.param_groups[0]["lr"],
                  "seconds": seconds, "elapsed": elapsed(), "patches_per_s": len(losses) * c.batch_size / seconds,
                  "best_epoch": stopper.best_epoch, "best_metric": stopper.best,
                  "epochs_since_best": stopper.wait, "patience": c.early_stopping_patience, "is_best": is_best,
                  "steps": len(losses), "reason": reason}
        history.append(record)
        metrics = {k: record[k] for k in ("train_loss", "val_loss", "val_dice")}
        emit(record)
        if is_best:
            save_checkpoint(best_path, payload(epoch, metrics))
            emit({"type": "checkpoint", "kind": "best", "epoch": epoch, "path": str(best_path), "metric": monitored})
        save_checkpoint(last_path, payload(epoch, metrics))
        emit({"type": "checkpoint", "kind": "last", "epoch": epoch, "path": str(last_path), "metric": monitored})
        if c.checkpoint_every and epoch % c.checkpoint_every == 0:
            path = out / f"epoch_{epoch:03d}.pt"
            save_checkpoint(path, payload(epoch, metrics))
            emit({"type": "checkpoint", "kind": "epoch", "epoch": epoch, "path": str(path), "metric": monitored})
        if should_end:
            stop_reason = "early_stopping"

    if stop_reason == "user_stop":
        # Keep the weights trained so far; the epoch number stays that of the last completed epoch.
        last_metrics = {k: history[-1][k] for k in ("train_loss", "val_loss", "val_dice")} if history else {}
        save_checkpoint(last_path, payload(epoch_done, last_metrics))
        emit({"type": "checkpoint", "kind": "last", "epoch": epoch_done, "path": str(last_path),
              "metric": stopper.best})

    recommended = calibration = None
    if stop_reason != "user_stop" and c.calibrate_postprocess and best_path.exists() and val_idx:
        best_ckpt = torch.load(best_path, map_location=device, weights_only=True)
        evaluated.load_state_dict(best_ckpt["state_dict"])
        _, _, probs = _validate(evaluated, val_x, val_y, val_masks, val_fovs, loss_fn, None)
        recommended, calibration = calibrate_postprocess(probs, val_masks, val_fovs)
        for path in (best_path, last_path):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            ckpt["recommended_postprocess"], ckpt["calibration"] = recommended, calibration
            save_checkpoint(path, ckpt)
        emit({"type": "calibration", "recommended": recommended, "dice_before": calibration["dice_before"],
              "dice_after": calibration["dice_after"], "explanation": calibration["explanation"]})
    emit({"type": "end", "stop_reason": stop_reason, "best_epoch": stopper.best_epoch, "best_metric": stopper.best,
          "epochs_run": epoch_done})
    return TrainResult(stop_reason, stopper.best_epoch, stopper.best, epoch_done,
                       best_path if best_path.exists() else None, last_path if last_path.exists() else None,
                       history, recommended, calibration)


def _validate(model, val_x, val_y, masks, fovs, loss_fn, should_stop):
    """(mean loss over images, Dice pooled over FOV pixels at 0.5, probability maps)."""
    was_training = model.training
    model.eval()
    losses, probs = [], []
    try:
        with torch.inference_mode():
            for x, y in zip(val_x, val_y):
                if should_stop is not None and should_stop():
                    raise StopRequested
                logits = sliding_window_logits(model, x, should_stop=should_stop)
                losses.append(float(loss_fn(logits[None, None], y[None, None])))
                probs.append(torch.sigmoid(logits).cpu().numpy())
    finally:
        model.train(was_training)
    return float(np.mean(losses)), pooled_dice([p >= 0.5 for p in probs], masks, fovs), probs
