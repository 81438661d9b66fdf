"""The trainer: config validation, early stopping, a real tiny training run, stopping, resume, determinism."""
from __future__ import annotations

import json
import math
import threading
import time

import numpy as np
import pytest
import torch

from engine.postprocess.calibration import CALIBRATION_MIN_GAIN, calibrate_postprocess
from engine.training.synthetic import make_synthetic_dataset
from engine.postprocess import PostProcessConfig
from engine.training.callbacks import EarlyStopping
from engine.training.config import TrainingConfig, TrainingError, parse_set_option
from engine.training.loop import train
from engine.errors import UserError

torch.set_num_threads(1)

TINY = dict(base_channels=4, depth=2, batch_size=4, patch_size=32, steps_per_epoch=6, epochs=3, val_fraction=0.25,
            learning_rate=5e-3, num_threads=1)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("synth"), n_images=4, size=64, seed=1)


@pytest.fixture(scope="module")
def run(synth, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    events: list[dict] = []
    result = train(TrainingConfig(**{**TINY, "epochs": 4}), synth, out, on_event=events.append)
    return result, events, out


# --------------------------------------------------------------------------- config

@pytest.mark.parametrize("field, value, words", [
    ("learning_rate", float("nan"), "finite"),
    ("learning_rate", 0.0, "greater than 0"),
    ("learning_rate", -1e-3, "greater than 0"),
    ("learning_rate", 5.0, "at most 1"),
    ("epochs", 0, "at least 1"),
    ("epochs", -3, "at least 1"),
    ("epochs", 10**9, "at most"),
    ("batch_size", 2.5, "whole number"),
    ("batch_size", True, "whole number"),
    ("dropout_rate", 1.0, "at most 0.9"),
    ("val_fraction", -0.1, "at least 0"),
    ("val_fraction", 0.95, "at most 0.9"),
    ("dice_weight", float("inf"), "finite"),
    ("patch_size", 60, "must be a multiple of"),
    ("loss_function", "hinge", "choose one of"),
    ("lr_schedule", "step", "choose one of"),
    ("early_stopping_monitor", "accuracy", "choose one of"),
    ("channel", "blue", "choose one of"),
    ("device", "tpu", "choose one of"),
    ("clahe", "yes", "true or false"),
    ("weight_decay", "0.1", "a number"),
])
def test_config_validation_says_what_is_wrong(field, value, words):
    with pytest.raises(UserError, match=words) as err:
        TrainingConfig(**{field: value})
    assert field in str(err.value)


def test_config_round_trips_through_json():
    config = TrainingConfig(learning_rate=1e-3, loss_function="tversky", epochs=7)
    assert TrainingConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert TrainingConfig.from_dict({"learning_rate": 1}).learning_rate == 1.0  # JSON ints are fine


def test_config_rejects_unknown_keys_and_is_frozen():
    with pytest.raises(UserError, match="'lr'"):
        TrainingConfig.from_dict({"lr": 0.1})
    with pytest.raises(UserError, match="'colour'"):
        TrainingConfig().with_updates(colour="green")
    assert TrainingConfig().with_updates(epochs=5).epochs == 5
    with pytest.raises(AttributeError):
        TrainingConfig().epochs = 5


@pytest.mark.parametrize("text, expected", [
    ("epochs=12", ("epochs", 12)), ("learning_rate=1e-3", ("learning_rate", 1e-3)), ("clahe=false", ("clahe", False)),
    ("augment=1", ("augment", True)), ("channel=rgb", ("channel", "rgb")), (" dropout_rate = 0.2 ", ("dropout_rate", 0.2)),
])
def test_parse_set_option_types_by_field(text, expected):
    assert parse_set_option(text) == expected


@pytest.mark.parametrize("text, words", [
    ("epochs", "key=value"), ("=3", "key=value"), ("foo=1", "Unknown training option 'foo'"),
    ("epochs=1.5", "whole number"), ("clahe=maybe", "true or false"), ("learning_rate=fast", "a number"),
])
def test_parse_set_option_errors(text, words):
    with pytest.raises(UserError, match=words):
        parse_set_option(text)


# --------------------------------------------------------------------------- early stopping

@pytest.mark.parametrize("monitor, values, patience, stop_at", [
    ("val_dice", [0.5, 0.6, 0.7, 0.8], 2, None),            # always improving
    ("val_dice", [0.5, 0.6, 0.6, 0.6], 2, 4),               # two epochs without improvement
    ("val_dice", [0.5, 0.50005, 0.5, 0.4], 3, 4),           # change below min_delta does not count
    ("val_loss", [1.0, 0.9, 0.95, 0.8, 0.85, 0.9], 2, 6),   # lower is better
    ("val_dice", [0.5, float("nan"), 0.4], 2, 3),           # NaN never improves
    ("val_dice", [0.5, 0.4, 0.3, 0.2, 0.1], 0, None),       # patience 0 = never stop
])
def test_early_stopping_table(monitor, values, patience, stop_at):
    stopper = EarlyStopping(monitor, patience, min_delta=1e-4)
    stopped = None
    for epoch, value in enumerate(values, 1):
        before = stopper.state_dict()
        stop, reason = stopper.evaluate(value)
        assert stopper.state_dict() == before and isinstance(reason, str)  # evaluate has no side effects
        stopper.update(value, epoch)
        if stop:
            stopped = epoch
            break
    assert stopped == stop_at


def test_early_stopping_state_round_trips():
    a = EarlyStopping("val_dice", 3)
    for epoch, v in enumerate([0.1, 0.3, 0.2], 1):
        a.update(v, epoch)
    b = EarlyStopping("val_dice", 3)
    b.load_state_dict(a.state_dict())
    assert b.evaluate(0.25) == a.evaluate(0.25) and (b.best, b.best_epoch, b.wait) == (0.3, 2, 1)


@pytest.mark.parametrize("settings, words", [
    ({"monitor": "accuracy"}, "monitor must be one of val_dice, val_loss"),
    ({"patience": -1}, "patience"),
    ({"min_delta": -0.1}, "min_delta"),
])
def test_early_stopping_refuses_settings_it_cannot_use(settings, words):
    with pytest.raises(ValueError, match=words):
        EarlyStopping(**settings)


def test_early_stopping_docstring_example_stops_at_epoch_four():
    stopper, stopped = EarlyStopping("val_dice", patience=2), None
    for epoch, dice in enumerate([0.50, 0.60, 0.60, 0.59], 1):
        should_end, reason = stopper.evaluate(dice)
        stopper.update(dice, epoch)
        if should_end:
            stopped = (epoch, reason)
            break
    assert stopped == (4, "val_dice did not improve by more than 0.0001 for 2 epochs (best 0.6000 at epoch 2)")


def test_keeping_the_newest_epoch_moves_only_best_epoch():
    stopper = EarlyStopping("val_dice", 3)
    stopper.keep_newest(5)
    restored = EarlyStopping("val_dice", 3)
    restored.load_state_dict(stopper.state_dict())
    assert (restored.best, restored.best_epoch, restored.wait) == (None, 5, 0)


# --------------------------------------------------------------------------- training

@pytest.mark.slow
def test_training_learns_and_reports_events(run):
    result, events, out = run
    assert result.stop_reason == "max_epochs" and result.epochs_run == 4 and len(result.history) == 4
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.best_checkpoint == out / "best.pt" and result.last_checkpoint == out / "last.pt"
    kinds = [e["type"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("epoch_end") == 4 and "calibration" in kinds
    epoch_end = next(e for e in events if e["type"] == "epoch_end")
    for key in ("epoch", "total_epochs", "train_loss", "val_loss", "val_dice", "lr", "seconds", "best_epoch",
                "best_metric", "epochs_since_best", "patience", "is_best"):
        assert key in epoch_end
    assert [e["epoch"] for e in events if e["type"] == "epoch_end"] == [1, 2, 3, 4]


@pytest.mark.slow
def test_a_run_with_fewer_than_three_validation_images_recommends_the_plain_map(run):
    from engine.postprocess.calibration import MIN_CALIBRATION_IMAGES

    result, _, out = run
    calibration = torch.load(out / "best.pt", weights_only=True)["calibration"]
    assert (MIN_CALIBRATION_IMAGES, result.recommended_postprocess["threshold"], calibration["steps"],
            calibration["explanation"][0].startswith("The plain map at 0.5: with 1 validation image,")) == (3, 0.5, [], True)


@pytest.mark.slow
def test_checkpoints_hold_the_contract_fields_and_load_weights_only(run):
    result, _, out = run
    for name in ("best.pt", "last.pt"):
        ckpt = torch.load(out / name, weights_only=True)
        assert {"format_version", "arch", "state_dict", "config", "epoch", "metrics", "versions", "optimizer",
                "scheduler", "early_stopping", "history", "recommended_postprocess"} <= set(ckpt)
        assert ckpt["format_version"] == 1 and ckpt["arch"] == "unet"
        assert TrainingConfig.from_dict(ckpt["config"]).base_channels == 4
        assert PostProcessConfig.from_dict(ckpt["recommended_postprocess"]) is not None
        assert ckpt["calibration"]["dice_after"] >= ckpt["calibration"]["dice_before"]
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 4
    assert result.recommended_postprocess == torch.load(out / "best.pt", weights_only=True)["recommended_postprocess"]
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))


@pytest.mark.slow
def test_same_seed_same_result(synth, tmp_path):
    config = TrainingConfig(**{**TINY, "epochs": 2, "calibrate_postprocess": False})
    a = train(config, synth, tmp_path / "a")
    b = train(config, synth, tmp_path / "b")
    keys = ("train_loss", "val_loss", "val_dice")
    assert [[h[k] for k in keys] for h in a.history] == [[h[k] for k in keys] for h in b.history]
    wa = torch.load(a.last_checkpoint, weights_only=True)["state_dict"]
    wb = torch.load(b.last_checkpoint, weights_only=True)["state_dict"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    warped = train(config.with_updates(max_zoom=1.5, any_angle=True), synth, tmp_path / "c")  # zoom, free rotation
    assert [h["train_loss"] for h in warped.history] != [h["train_loss"] for h in a.history]  # they reach the sampler
    assert torch.load(warped.last_checkpoint, weights_only=True)["config"]["max_zoom"] == 1.5


@pytest.mark.slow
def test_should_stop_ends_training_within_a_second(synth, tmp_path):
    config = TrainingConfig(**{**TINY, "epochs": 1000, "steps_per_epoch": 50})
    asked: list[float] = []

    def should_stop() -> bool:
        if len(asked) or time.monotonic() - started > 1.5:
            asked.append(asked[0] if asked else time.monotonic())
            return True
        return False

    started = time.monotonic()
    result = train(config, synth, tmp_path, should_stop=should_stop)
    assert result.stop_reason == "user_stop" and time.monotonic() - asked[0] < 1.0
    assert (tmp_path / "last.pt").exists()
    assert torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] == result.epochs_run


@pytest.mark.slow
def test_stop_from_another_thread(synth, tmp_path):
    flag = threading.Event()
    timer = threading.Timer(1.0, flag.set)
    timer.start()
    result = train(TrainingConfig(**{**TINY, "epochs": 1000}), synth, tmp_path, should_stop=flag.is_set)
    assert result.stop_reason == "user_stop"


@pytest.mark.slow
def test_resume_continues_from_the_saved_epoch(synth, tmp_path):
    first = train(TrainingConfig(**{**TINY, "epochs": 2, "lr_schedule": "plateau"}), synth, tmp_path)
    events: list[dict] = []
    second = train(TrainingConfig(**{**TINY, "epochs": 4, "lr_schedule": "plateau"}), synth, tmp_path,
                   on_event=events.append, resume_from=first.last_checkpoint)
    assert events[0]["start_epoch"] == 3 and second.epochs_run == 4
    assert [h["epoch"] for h in second.history] == [1, 2, 3, 4]
    assert second.history[:2] == first.history
    with pytest.raises(TrainingError, match="base_channels"):
        train(TrainingConfig(**{**TINY, "epochs": 6, "base_channels": 8}), synth, tmp_path / "x",
              resume_from=second.last_checkpoint)


@pytest.mark.slow
def test_early_stopping_and_epoch_checkpoints(synth, tmp_path):
    config = TrainingConfig(**{**TINY, "epochs": 20, "early_stopping_patience": 1, "min_delta": 1.0,
                               "checkpoint_every": 1, "calibrate_postprocess": False})
    result = train(config, synth, tmp_path)
    assert result.stop_reason == "early_stopping" and result.epochs_run == 2 and result.best_epoch == 1
    assert sorted(p.name for p in tmp_path.glob("epoch_*.pt")) == ["epoch_001.pt", "epoch_002.pt"]
    assert result.recommended_postprocess is None


@pytest.fixture(scope="module")
def all_images_run(synth, tmp_path_factory):
    out = tmp_path_factory.mktemp("all_images")
    result = train(TrainingConfig(**{**TINY, "val_fraction": 0.0, "early_stopping_patience": 1}), synth, out)
    return result, out


def test_without_validation_every_image_trains(all_images_run):
    result, out = all_images_run
    assert torch.load(out / "last.pt", weights_only=True)["config"]["val_fraction"] == 0.0
    assert result.history[0]["val_dice"] is None


def test_without_validation_patience_does_not_stop_the_run(all_images_run):
    result, _ = all_images_run
    assert result.epochs_run == TINY["epochs"]


def test_without_validation_the_newest_epoch_is_best(all_images_run):
    result, out = all_images_run
    assert torch.load(out / "best.pt", weights_only=True)["epoch"] == TINY["epochs"]


def test_without_validation_nothing_is_calibrated(all_images_run):
    result, _ = all_images_run
    assert result.recommended_postprocess is None


@pytest.mark.slow
def test_time_budget_stops_cleanly(synth, tmp_path):
    result = train(TrainingConfig(**{**TINY, "epochs": 1000, "max_minutes": 0.02}), synth, tmp_path)
    assert result.stop_reason == "time_limit" and result.best_checkpoint is not None
    assert math.isfinite(result.history[-1]["val_dice"])


def test_too_small_dataset_is_refused(tmp_path):
    make_synthetic_dataset(tmp_path / "one", n_images=1, size=64)
    with pytest.raises(UserError, match="at least 2"):
        train(TrainingConfig(**TINY), tmp_path / "one", tmp_path / "out")


# --------------------------------------------------------------------------- weight average, precision

def test_weight_average_warms_up_then_follows_slowly():
    from engine.training.callbacks import WeightAverage

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    average = WeightAverage(model, decay=0.99)
    start = average.module[0].weight.clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].running_mean.add_(2.0)
        model[1].num_batches_tracked.add_(5)
    average.update(step=0)  # warm-up: decay min(0.99, 1/10) = 0.1, so 90 % of the new weights
    assert torch.allclose(average.module[0].weight, start + 0.9)
    assert torch.allclose(average.module[1].running_mean, torch.full((2,), 1.8))
    assert int(average.module[1].num_batches_tracked) == 5  # counters are copied, not averaged
    before = average.module[0].weight.clone()
    average.update(step=10_000)  # decay 0.99: 1 % of the remaining gap
    assert torch.allclose(average.module[0].weight, before + 0.01 * (model[0].weight - before))
    assert not any(p.requires_grad for p in average.module.parameters())


@pytest.mark.parametrize("name, expected", [("fp32", None), ("bf16", torch.bfloat16)])
def test_precision_is_resolved_as_asked(name, expected):
    from engine.training.device import resolve_precision

    assert resolve_precision(name, torch.device("cpu")) == expected


def test_auto_precision_uses_bf16_only_where_the_cpu_has_it(cpu_bf16):
    from engine.training.device import resolve_precision

    assert resolve_precision("auto", torch.device("cpu")) == (torch.bfloat16 if cpu_bf16 else None)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_checkpoint_predicts_with_the_average_and_resumes_the_trained_weights(synth, tmp_path, precision):
    config = TrainingConfig(**{**TINY, "epochs": 2, "precision": precision, "calibrate_postprocess": False})
    first = train(config, synth, tmp_path)
    ckpt = torch.load(first.last_checkpoint, weights_only=True)
    averaged, trained = ckpt["state_dict"], ckpt["train_state_dict"]
    assert set(averaged) == set(trained)
    assert not all(torch.equal(averaged[k], trained[k]) for k in averaged)  # the average lags the weights
    events: list[dict] = []
    second = train(config.with_updates(epochs=3), synth, tmp_path, on_event=events.append,
                   resume_from=first.last_checkpoint)
    assert events[0]["start_epoch"] == 3 and second.epochs_run == 3
    assert events[0]["precision"] == precision


@pytest.mark.slow
def test_without_the_average_the_checkpoint_holds_the_trained_weights(synth, tmp_path):
    result = train(TrainingConfig(**{**TINY, "epochs": 1, "ema_decay": 0.0, "calibrate_postprocess": False}),
                   synth, tmp_path)
    assert torch.load(result.last_checkpoint, weights_only=True)["train_state_dict"] is None


def _speckled(n_specks: int) -> tuple[list, list, list]:
    """One 200×200 validation image: a true vessel band plus ``n_specks`` isolated false-positive pixels."""
    mask = np.zeros((200, 200), np.uint8)
    mask[95:105, :] = 1
    prob = mask.astype(np.float32) * 0.9
    rng = np.random.default_rng(0)
    ys, xs = rng.integers(0, 45, n_specks) * 2, rng.integers(0, 100, n_specks) * 2  # 2-px grid above the band
    prob[ys, xs] = 0.9
    return [prob], [mask], [np.ones_like(mask)]


def test_calibration_keeps_a_step_only_for_a_real_gain():
    # 400 specks: removing small components lifts Dice from ~0.9 to 1.0, far above the margin.
    rec, cal = calibrate_postprocess(*_speckled(400))
    assert rec["min_component_size"] > 0 and cal["dice_after"] == pytest.approx(1.0)
    assert cal["dice_after"] - cal["dice_before"] >= CALIBRATION_MIN_GAIN
    # 2 specks: the same step gains ~0.0005, which is noise on a few images, so nothing is recommended ...
    rec, cal = calibrate_postprocess(*_speckled(2))
    assert 0 < 1.0 - cal["dice_before"] < CALIBRATION_MIN_GAIN
    assert cal["steps"] == [] and rec["min_component_size"] == 0 and cal["dice_after"] == cal["dice_before"]
    # ... unless the margin is lowered.
    rec, cal = calibrate_postprocess(*_speckled(2), min_gain=1e-6)
    assert rec["min_component_size"] > 0 and cal["dice_after"] > cal["dice_before"]
