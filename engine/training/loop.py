"""The training loop: ``train(config, dataset, out_dir, ...)`` trains a U-Net and writes its checkpoints.

It knows nothing of queues or pages: it reports through named events (see docs/ARCHITECTURE.md) and
polls ``should_stop`` every batch and during validation. What a checkpoint holds is
``engine.training.checkpoint``'s business.

``train`` is a short sequence of named steps over one ``_Run`` (the run's state): ``_set_up`` (data,
model, optimiser, and ``_resume`` from a checkpoint), then per epoch ``_train_epoch`` (``_train_step``
per batch), ``_judge_epoch`` (validation and early stopping) and ``_save_epoch``; ``_save_on_stop``
when the user stops; ``_finish`` (``_calibrate`` and the result).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from engine.errors import StopRequested
from engine.postprocess.calibration import MIN_CALIBRATION_IMAGES, calibrate_postprocess, pooled_dice
from engine.tiling import sliding_window_logits
from engine.training.camera import camera_variants
from engine.training.callbacks import EarlyStopping, LRSchedule, WeightAverage
from engine.training.checkpoint import (TrainingState, build_model, read_training_state, read_weights,
                                        record_calibration, save_checkpoint, scale_record, training_payload)
from engine.training.config import TrainingConfig, TrainingError
from engine.training.data import Dataset, DatasetError, load_datasets
from engine.training.preprocess import normalization_stats
from engine.training.sampling import PatchSampler, split_indices
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



def train(config: TrainingConfig, dataset: str | Path | Dataset | list | tuple, out_dir: str | Path,
          on_event: Callable[[dict], None] | None = None, should_stop: Callable[[], bool] | None = None,
          resume_from: str | Path | None = None, plan: dict | None = None) -> TrainResult:
    """Train a U-Net; writes best.pt / last.pt (and epoch_XXX.pt) to ``out_dir``. See docs/ARCHITECTURE.md.

    ``dataset``: one data set (a folder or a loaded ``Dataset``) or a list of them; each keeps its own
    layout and scale, validation images are held out from every set, and patches come from each set
    equally often unless ``config.balance_datasets`` is off.
    ``plan``: the ``engine.training.planner.Plan.to_dict()`` that chose this config (None: not planned); every
    checkpoint carries it as ``"plan"``. A resumed run without one keeps the checkpoint's.
    """
    if not isinstance(config, TrainingConfig):
        raise TypeError("config must be a TrainingConfig (use TrainingConfig.from_dict for a dict).")
    sets = load_datasets(dataset)
    if sum(len(ds) for ds in sets) < 2:
        raise DatasetError(f"{sets[0].root} has {len(sets[0])} image(s); training needs at least 2 (one held out "
                           "for validation).")
    run = _set_up(config, sets, Path(out_dir), on_event or (lambda event: None), should_stop or (lambda: False),
                  resume_from, plan)
    run.emit(_start_event(run))
    if run.out_of_time():
        run.stop_reason = "time_limit"
    for epoch in range(run.start_epoch, config.epochs + 1):
        if run.stop_reason != "max_epochs" or not _epoch(run, epoch):
            break
    if run.stop_reason == "user_stop":
        _save_on_stop(run)
    return _finish(run)


@dataclass
class _Data:
    """The prepared images: a patch sampler over the training ones, tensors of the validation ones."""
    sampler: PatchSampler
    train_fovs: list[np.ndarray]
    camera_images: list[np.ndarray] | None  # camera shifts: the training photographs, redrawn every epoch
    val_x: list[torch.Tensor]
    val_y: list[torch.Tensor]
    val_masks: list[np.ndarray]
    val_fovs: list[np.ndarray]
    n_train: int
    scale: dict  # what checkpoints record of the training scales (engine.training.checkpoint.scale_record)


@dataclass
class _Run:
    """One run's state, shared by the steps of ``train``."""
    config: TrainingConfig
    out: Path
    emit: Callable[[dict], None]
    should_stop: Callable[[], bool]
    device: torch.device
    autocast_dtype: torch.dtype | None
    data: _Data
    model: torch.nn.Module  # what the optimiser trains
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    stopper: EarlyStopping
    loss_fn: Callable
    plan: dict | None
    average: WeightAverage | None = None
    history: list[dict] = field(default_factory=list)
    start_epoch: int = 1
    elapsed_before: float = 0.0  # seconds the run trained before this resume
    global_step: int = 0
    stop_reason: str = "max_epochs"
    epochs_done: int = 0
    t_start: float = field(default_factory=time.monotonic)

    @property
    def evaluated(self) -> torch.nn.Module:
        """What validates, is saved as ``state_dict`` and predicts: the moving average when there is one."""
        return self.average.module if self.average is not None else self.model

    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.t_start

    def out_of_time(self) -> bool:
        return bool(self.config.max_minutes) and self.elapsed() >= self.config.max_minutes * 60

    @property
    def best_path(self) -> Path:
        return self.out / "best.pt"

    @property
    def last_path(self) -> Path:
        return self.out / "last.pt"


@dataclass
class _Verdict:
    """What validating an epoch decided."""
    val_loss: float | None
    val_dice: float | None
    monitored: float | None
    should_end: bool
    reason: str
    is_best: bool


def _set_up(c: TrainingConfig, sets: list[Dataset], out: Path, emit: Callable[[dict], None], should_stop: Callable[[], bool],
            resume_from: str | Path | None, plan: dict | None) -> _Run:
    """The run's state before its first epoch: data, model, optimiser and callbacks, resumed when asked."""
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(c.device)
    autocast_dtype = resolve_precision(c.precision, device)
    if c.num_threads:
        torch.set_num_threads(c.num_threads)
    data = _prepare_data(c, sets, device)
    torch.manual_seed(c.seed)
    model = build_model(c).to(device)
    if device.type == "cpu":  # channels-last convolutions are faster on CPUs (oneDNN)
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=c.learning_rate, weight_decay=c.weight_decay)
    run = _Run(c, out, emit, should_stop, device, autocast_dtype, data, model, optimizer, LRSchedule(c, optimizer),
               EarlyStopping(c.early_stopping_monitor, c.early_stopping_patience, c.min_delta), build_loss(c), plan)
    state = read_training_state(resume_from, c) if resume_from is not None else None
    if state is not None:
        _resume(run, state)
    # the average starts from what predicts ("state_dict", loaded above); a run saved with an average
    # kept the optimiser's own weights apart, and the optimiser continues from those
    run.average = WeightAverage(model, c.ema_decay) if c.ema_decay > 0 else None
    if state is not None and state.train_weights is not None:
        model.load_state_dict(state.train_weights)
    run.t_start = time.monotonic()
    return run


def _prepare_data(c: TrainingConfig, sets: list[Dataset], device: torch.device) -> _Data:
    """Split each set's images (seeded), preprocess them once at the set's training scale, and build the patch
    sampler (balanced across sets) and the validation tensors."""
    train_keys, val_keys = [], []  # (set, image) pairs
    for s, ds in enumerate(sets):
        train_idx, val_idx = split_indices(len(ds), c.val_fraction, c.seed)
        train_keys += [(s, i) for i in train_idx]
        val_keys += [(s, i) for i in val_idx]
    prepared = {(s, i): sets[s].arrays(i, c.channel, c.clahe, c.max_fov_px) for s, i in train_keys + val_keys}
    stats = {k: normalization_stats(prepared[k][0], prepared[k][2], c.normalization) for k in prepared}
    sampler = PatchSampler([prepared[k][0] for k in train_keys], [prepared[k][1] for k in train_keys],
                           [prepared[k][2] for k in train_keys], [stats[k] for k in train_keys], c.patch_size, c.augment,
                           c.max_zoom, c.any_angle, groups=[s for s, _ in train_keys] if c.balance_datasets else None)
    camera_images = ([sets[s].scaled(i, c.max_fov_px)[0] for s, i in train_keys]
                     if c.augment and c.camera_augment > 0 else None)
    return _Data(sampler, [prepared[k][2] for k in train_keys], camera_images,
                 [torch.from_numpy((prepared[k][0] - stats[k][0]) / stats[k][1]).to(device) for k in val_keys],
                 [torch.from_numpy(prepared[k][1].astype(np.float32)).to(device) for k in val_keys],
                 [prepared[k][1] for k in val_keys], [prepared[k][2] for k in val_keys], len(train_keys),
                 scale_record(sets, c.max_fov_px))


def _resume(run: _Run, state: TrainingState) -> None:
    """Continue from a checkpoint: weights, optimiser, schedule, early stopping, history and counters."""
    c = run.config
    run.model.load_state_dict(state.weights)
    run.optimizer.load_state_dict(state.optimizer)
    for group in run.optimizer.param_groups:  # a resumed run may change the learning rate settings
        group["initial_lr"] = c.learning_rate
    run.schedule.load_state_dict(state.scheduler)
    run.stopper.load_state_dict(state.early_stopping)
    run.history = list(state.history)
    run.start_epoch, run.epochs_done = state.epoch + 1, state.epoch
    run.elapsed_before = state.elapsed_seconds
    run.global_step = state.epoch * c.steps_per_epoch
    if run.plan is None:
        run.plan = state.plan


def _start_event(run: _Run) -> dict:
    c, stopper = run.config, run.stopper
    return {"type": "start", "start_epoch": run.start_epoch, "total_epochs": c.epochs,
            "steps_per_epoch": c.steps_per_epoch, "n_train": run.data.n_train, "n_val": len(run.data.val_x),
            "device": str(run.device), "precision": "bf16" if run.autocast_dtype is not None else "fp32",
            "best_epoch": stopper.best_epoch, "best_metric": stopper.best, "epochs_since_best": stopper.wait,
            "elapsed_before": run.elapsed_before}


def _epoch(run: _Run, epoch: int) -> bool:
    """Train, judge and save one epoch; False when the run ends inside it (a user stop, no step left)."""
    t_epoch = time.monotonic()
    losses = _train_epoch(run, epoch)
    if run.stop_reason == "user_stop" or not losses:
        return False
    try:
        verdict = _judge_epoch(run, epoch)
    except StopRequested:
        run.stop_reason = "user_stop"
        return False
    run.epochs_done = epoch
    record = _epoch_record(run, epoch, losses, verdict, time.monotonic() - t_epoch)
    run.history.append(record)
    run.emit(record)
    _save_epoch(run, epoch, record, verdict)
    if verdict.should_end:
        run.stop_reason = "early_stopping"
    return True


def _train_epoch(run: _Run, epoch: int) -> list[float]:
    """The epoch's batch losses; stops early (setting ``run.stop_reason``) on a user stop or the time budget."""
    c = run.config
    run.model.train()
    rng = np.random.default_rng([c.seed, epoch])
    if run.data.camera_images is not None:
        run.data.sampler.set_variants(camera_variants(run.data.camera_images, run.data.train_fovs, c.channel, c.clahe,
                                                      c.normalization, np.random.default_rng([c.seed, epoch, 1])),
                                      c.camera_augment)
    torch.manual_seed(c.seed * 100_003 + epoch)
    losses: list[float] = []
    last_emit = 0.0
    for step in range(1, c.steps_per_epoch + 1):
        if run.should_stop():
            run.stop_reason = "user_stop"
            break
        if run.out_of_time():
            run.stop_reason = "time_limit"
            break
        losses.append(_train_step(run, rng, epoch, step))
        now = time.monotonic()
        if now - last_emit >= 0.5 or step == c.steps_per_epoch:
            last_emit = now
            run.emit({"type": "batch", "epoch": epoch, "step": step, "steps": c.steps_per_epoch, "loss": losses[-1]})
    return losses


def _train_step(run: _Run, rng: np.random.Generator, epoch: int, step: int) -> float:
    """One optimiser step on a sampled batch; its loss. Raises TrainingError when the loss is not finite."""
    c, dtype = run.config, run.autocast_dtype
    xb, yb = (torch.from_numpy(a).to(run.device) for a in run.data.sampler.sample(c.batch_size, rng))
    run.schedule.before_step(run.global_step, run.elapsed())
    with torch.autocast(run.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        logits = run.model(xb)
    loss = run.loss_fn(logits.float(), yb)
    if not torch.isfinite(loss):
        raise TrainingError(f"The loss became {loss.item()} at epoch {epoch}, step {step}: "
                            "lower learning_rate (for example by 10×) and train again.")
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    if run.average is not None:
        run.average.update(run.global_step)
    run.global_step += 1
    return loss.item()


def _judge_epoch(run: _Run, epoch: int) -> _Verdict:
    """Validate, step the plateau schedule and early stopping. Raises StopRequested on a user stop."""
    if not run.data.val_x:  # every image trains: nothing to judge an epoch by, so the newest weights are the best
        run.stopper.keep_newest(epoch)
        return _Verdict(None, None, None, False, "no validation images: the newest epoch is kept", True)
    d = run.data
    val_loss, val_dice, _ = _validate(run.evaluated, d.val_x, d.val_y, d.val_masks, d.val_fovs, run.loss_fn,
                                      run.should_stop)
    monitored = val_dice if run.config.early_stopping_monitor == "val_dice" else val_loss
    run.schedule.after_epoch(monitored)
    should_end, reason = run.stopper.evaluate(monitored)
    is_best = run.stopper.update(monitored, epoch)
    return _Verdict(val_loss, val_dice, monitored, should_end, reason, is_best)


def _epoch_record(run: _Run, epoch: int, losses: list[float], verdict: _Verdict, seconds: float) -> dict:
    """The ``epoch_end`` event, which the history keeps."""
    c, stopper = run.config, run.stopper
    return {"type": "epoch_end", "epoch": epoch, "total_epochs": c.epochs, "train_loss": float(np.mean(losses)),
            "val_loss": verdict.val_loss, "val_dice": verdict.val_dice, "lr": run.optimizer.param_groups[0]["lr"],
            "seconds": seconds, "elapsed": run.elapsed(), "patches_per_s": len(losses) * c.batch_size / seconds,
            "best_epoch": stopper.best_epoch, "best_metric": stopper.best,
            "epochs_since_best": stopper.wait, "patience": c.early_stopping_patience, "is_best": verdict.is_best,
            "steps": len(losses), "reason": verdict.reason}


def _save_epoch(run: _Run, epoch: int, record: dict, verdict: _Verdict) -> None:
    """best.pt when the epoch is the best, last.pt always, epoch_XXX.pt every ``checkpoint_every`` epochs."""
    metrics = {k: record[k] for k in ("train_loss", "val_loss", "val_dice")}
    if verdict.is_best:
        _save(run, "best", run.best_path, epoch, metrics, verdict.monitored)
    _save(run, "last", run.last_path, epoch, metrics, verdict.monitored)
    every = run.config.checkpoint_every
    if every and epoch % every == 0:
        _save(run, "epoch", run.out / f"epoch_{epoch:03d}.pt", epoch, metrics, verdict.monitored)


def _save_on_stop(run: _Run) -> None:
    """Keep the weights trained so far; the epoch number stays that of the last completed epoch."""
    last = run.history[-1] if run.history else None
    metrics = {k: last[k] for k in ("train_loss", "val_loss", "val_dice")} if last else {}
    _save(run, "last", run.last_path, run.epochs_done, metrics, run.stopper.best)


def _save(run: _Run, kind: str, path: Path, epoch: int, metrics: dict, metric: float | None) -> None:
    """Write one checkpoint of the run as it stands, then say so (a ``checkpoint`` event)."""
    train_weights = run.model.state_dict() if run.average is not None else None
    save_checkpoint(path, training_payload(
        weights=run.evaluated.state_dict(), train_weights=train_weights, config=run.config, epoch=epoch,
        metrics=metrics, optimizer=run.optimizer.state_dict(), scheduler=run.schedule.state_dict(),
        early_stopping=run.stopper.state_dict(), history=run.history, elapsed_seconds=run.elapsed(),
        scale=run.data.scale, plan=run.plan))
    run.emit({"type": "checkpoint", "kind": kind, "epoch": epoch, "path": str(path), "metric": metric})


def _finish(run: _Run) -> TrainResult:
    """Calibrate post-processing on the best weights (unless stopped by the user), say ``end``, the result."""
    c, stopper = run.config, run.stopper
    recommended = calibration = None
    if run.stop_reason != "user_stop" and c.calibrate_postprocess and run.best_path.exists() and run.data.val_x:
        recommended, calibration = _calibrate(run)
    run.emit({"type": "end", "stop_reason": run.stop_reason, "best_epoch": stopper.best_epoch,
              "best_metric": stopper.best, "epochs_run": run.epochs_done})
    best, last = run.best_path, run.last_path
    return TrainResult(run.stop_reason, stopper.best_epoch, stopper.best, run.epochs_done,
                       best if best.exists() else None, last if last.exists() else None,
                       run.history, recommended, calibration)


def _calibrate(run: _Run) -> tuple[dict, dict]:
    """Search post-processing on the validation images with the best weights; record it in best.pt and last.pt."""
    d, evaluated = run.data, run.evaluated
    evaluated.load_state_dict(read_weights(run.best_path))
    _, _, probs = _validate(evaluated, d.val_x, d.val_y, d.val_masks, d.val_fovs, run.loss_fn, None)
    recommended, calibration = calibrate_postprocess(probs, d.val_masks, d.val_fovs, min_images=MIN_CALIBRATION_IMAGES)
    record_calibration([run.best_path, run.last_path], recommended, calibration)
    run.emit({"type": "calibration", "recommended": recommended, "dice_before": calibration["dice_before"],
              "dice_after": calibration["dice_after"], "explanation": calibration["explanation"]})
    return recommended, calibration


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
