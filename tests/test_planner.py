"""The training planner: a fake measuring table for the choices, one real measurement, the checkpoint's copy."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine.training.synthetic import make_synthetic_dataset
from engine.training.measure import measure_step_seconds
from engine.training.plan import Plan, PlanError
from engine.training.planner import plan_training, replan_for_device
from engine.training.config import TrainingConfig
from engine.training.device import native_bf16
from engine.training.loop import train

TINY = dict(base_channels=4, depth=2, patch_size=32, batch_size=2, num_threads=1)


def table(seconds: dict[tuple[int, int], float]):
    """A measuring function that answers from ``{(patch, batch): seconds}`` and records its calls."""
    def measure(config, patch_size, batch_size, precision, device="cpu"):
        measure.calls.append((patch_size, batch_size, precision))
        return seconds.get((patch_size, batch_size), 1.0)
    measure.calls = []
    return measure


# 128²×8 = 131,072 px; 96²×16 = 147,456 px; 64²×32 = 131,072 px per step
BIG_SLOW = table({(128, 8): 1.0, (96, 16): 1.5, (64, 32): 0.5})   # 64×64 has 2× the throughput
BIG_FAST = table({(128, 8): 0.4, (96, 16): 1.5, (64, 32): 0.8})   # 128×128 has 2× the throughput


@pytest.mark.parametrize("measure, expected", [(BIG_SLOW, (64, 32)), (BIG_FAST, (128, 8))])
def test_the_shape_with_the_most_patch_pixels_per_second_is_chosen(measure, expected):
    config, plan = plan_training(TrainingConfig(precision="fp32"), measure=measure, device="cpu")
    assert (config.patch_size, config.batch_size, plan.patch_size, plan.batch_size) == (*expected, *expected)


def test_every_candidate_is_measured_once():
    measure = table({})
    plan_training(TrainingConfig(precision="fp32"), measure=measure, device="cpu")
    assert measure.calls == [(128, 8, "fp32"), (96, 16, "fp32"), (64, 32, "fp32")]


@pytest.fixture(autouse=True)
def _a_cpu_without_bf16(monkeypatch):
    """What the planner chooses depends on the CPU: every test here plans for a CPU without native bf16
    unless it asks for ``cpu_bf16``, which runs it for both kinds of CPU."""
    from engine.training import device

    monkeypatch.setattr(device, "cpu_bf16", lambda: False)


def test_the_capability_is_pinned_for_every_machine(cpu_bf16):
    assert native_bf16(torch.device("cpu")) == cpu_bf16


def test_auto_precision_measures_the_precisions_the_cpu_runs_natively(cpu_bf16):
    measure = table({})
    config, plan = plan_training(TrainingConfig(), measure=measure, device="cpu")
    expected = ["bf16", "fp32"] if cpu_bf16 else ["fp32"]
    assert sorted({p for _, _, p in measure.calls}) == expected


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_precision_set_in_the_config_is_the_only_one_measured(precision):
    measure = table({})
    plan_training(TrainingConfig(precision=precision), measure=measure, device="cpu")
    assert {p for _, _, p in measure.calls} == {precision}


@pytest.mark.parametrize("user, expected", [
    ({"patch_size": 96}, {"patch_size": 96}),
    ({"batch_size": 4}, {"batch_size": 4}),
    ({"precision": "auto"}, {"precision": "auto"}),
    ({"precision": "bf16"}, {"precision": "bf16"}),
    ({"epochs": 3}, {"epochs": 3}),
    ({"patch_size": 96, "batch_size": 4}, {"patch_size": 96, "batch_size": 4}),
])
def test_a_field_the_user_set_is_never_changed(cpu_bf16, user, expected):
    config = TrainingConfig(max_minutes=10.0).with_updates(**user)
    planned, _ = plan_training(config, user_fields=user, measure=BIG_SLOW, device="cpu")
    assert {k: getattr(planned, k) for k in expected} == expected


def test_a_user_set_shape_is_the_only_one_measured():
    measure = table({})
    plan_training(TrainingConfig(precision="fp32", patch_size=96, batch_size=4),
                  user_fields=("patch_size", "batch_size"), measure=measure, device="cpu")
    assert measure.calls == [(96, 4, "fp32")]


def test_a_budget_raises_epochs_beyond_the_planned_steps():
    config = TrainingConfig(precision="fp32", max_minutes=10.0, steps_per_epoch=250)
    planned, plan = plan_training(config, measure=BIG_SLOW, device="cpu")
    assert (plan.planned_steps, planned.epochs * planned.steps_per_epoch >= plan.planned_steps) == (1080, True)


def test_without_a_budget_epochs_stay_and_no_steps_are_planned():
    planned, plan = plan_training(TrainingConfig(precision="fp32"), measure=BIG_SLOW, device="cpu")
    assert (planned.epochs, plan.planned_steps, plan.max_minutes) == (60, None, None)


def test_patches_larger_than_the_smallest_image_are_not_tried():
    measure = table({})
    plan_training(TrainingConfig(precision="fp32"), measure=measure, device="cpu", dataset=[(100, 120)])
    assert [c[0] for c in measure.calls] == [96, 64]


def test_explain_names_the_choice_the_budget_and_the_comparison():
    def measure(config, patch_size, batch_size, precision, device="cpu"):  # width 8 twice as fast; 64×64 too
        return {(128, 8): 0.5, (96, 16): 0.75, (64, 32): 0.25}[patch_size, batch_size] * config.base_channels / 16
    _, plan = plan_training(TrainingConfig(precision="fp32", max_minutes=10.0), measure=measure,
                            device="cpu", dataset=[(584, 565)] * 20, measure_validation=lambda config, sizes: 2.0)
    text = plan.explain().split(": ", 1)[1]
    assert text == ("64×64 patches, batch 32, U-Net width 8, about 4,511 steps in 10 min (2.0× the patch pixels "
                    "per second of 128×128 × 8); a wider U-Net would get fewer steps (it is slower per step; not "
                    "measured); 250 steps per epoch, so a checkpoint is saved about every 33 s; 10% of the images are "
                    "held out for the validation curve and the recommended settings; the budget, not early stopping, "
                    "ends the run.")


def test_explain_names_the_steps_of_a_wider_width_it_measured():
    _, plan = plan_training(TrainingConfig(precision="fp32", max_minutes=10.0), measure=by_width({16: 0.2, 8: 0.1}),
                            device="cpu")
    assert "; width 16 would get only about 2,700 steps (fewer than 4,000);" in plan.explain()


def test_explain_without_a_budget_names_no_width():
    _, plan = plan_training(TrainingConfig(precision="fp32"), measure=BIG_SLOW, device="cpu")
    assert plan.explain() == ("fp32 on this CPU (measured in 0.0 s): 64×64 patches, batch 32, about 0.5 s per step "
                              "(2.0× the patch pixels per second of 128×128 × 8).")


def by_width(seconds: dict[int, float]):
    """A measuring function that answers from ``{base_channels: seconds}`` whatever the shape."""
    def measure(config, patch_size, batch_size, precision, device="cpu"):
        measure.widths.append(config.base_channels)
        return seconds[config.base_channels]
    measure.widths = []
    return measure


@pytest.mark.parametrize("minutes, seconds, width", [
    (10.0, {16: 0.2, 8: 0.1}, 8),     # 2,700 steps at width 16: too few, the narrower U-Net trains
    (10.0, {16: 0.1, 8: 0.05}, 16),   # a machine twice as fast: 5,400 steps at width 16 are enough
    (60.0, {16: 0.2, 8: 0.1}, 16),    # an hour on the slower machine: 16,200 steps at width 16
    (1.0, {16: 2.0, 8: 1.0}, 8),      # too few steps at every width: the narrowest
])
def test_the_width_is_the_widest_that_gets_enough_steps(minutes, seconds, width):
    planned, plan = plan_training(TrainingConfig(precision="fp32", max_minutes=minutes), measure=by_width(seconds),
                                  device="cpu")
    assert planned.base_channels == width


def test_the_planned_steps_are_those_of_the_chosen_width():
    _, plan = plan_training(TrainingConfig(precision="fp32", max_minutes=10.0), measure=by_width({16: 0.2, 8: 0.1}),
                            device="cpu")
    assert plan.planned_steps == 5400


def test_a_width_the_user_set_is_kept_and_only_it_is_measured():
    measure = by_width({16: 0.2, 8: 0.1, 32: 0.4})
    planned, _ = plan_training(TrainingConfig(precision="fp32", max_minutes=10.0, base_channels=32),
                               user_fields={"base_channels"}, measure=measure, device="cpu")
    assert planned.base_channels == 32
    assert set(measure.widths) == {32}


def test_without_a_budget_the_width_is_not_planned():
    measure = by_width({16: 0.2, 8: 0.1})
    planned, _ = plan_training(TrainingConfig(precision="fp32"), measure=measure, device="cpu")
    assert planned.base_channels == 16
    assert set(measure.widths) == {16}


@pytest.mark.parametrize("minutes, user, expected", [
    (10.0, {}, (0.1, 0)),                                 # a budgeted run: a small split, never stopped early
    (0.0, {}, (0.2, 15)),                                 # a run by epochs keeps the defaults
    (10.0, {"val_fraction": 0.3}, (0.3, 0)),              # the user's choice wins
    (10.0, {"val_fraction": 0.0}, (0.0, 0)),              # ... also training on every image
    (10.0, {"early_stopping_patience": 5}, (0.1, 5)),
])
def test_a_budgeted_run_holds_out_a_small_split_and_runs_to_its_end(minutes, user, expected):
    config = TrainingConfig(precision="fp32", max_minutes=minutes).with_updates(**user)
    planned, _ = plan_training(config, user_fields=user, measure=BIG_SLOW, device="cpu")
    assert (planned.val_fraction, planned.early_stopping_patience) == expected


def test_an_earlier_plan_that_trained_on_every_image_still_says_so():
    _, plan = plan_training(TrainingConfig(precision="fp32", max_minutes=10.0), measure=BIG_SLOW, device="cpu")
    old = Plan.from_dict({**plan.to_dict(), "changed": {**plan.changed, "val_fraction": 0.0}})
    old.changed.pop("early_stopping_patience")
    assert old.explain().endswith("; every image trains and the last epoch is kept.")


def test_a_plan_saved_before_widths_were_planned_still_loads():
    _, plan = plan_training(TrainingConfig(precision="fp32"), measure=BIG_SLOW, device="cpu")
    old = {k: v for k, v in plan.to_dict().items() if k not in ("base_channels", "widths")}
    assert Plan.from_dict(old).base_channels is None


def test_the_plan_survives_json():
    _, plan = plan_training(TrainingConfig(precision="fp32", max_minutes=5.0), measure=BIG_SLOW, device="cpu")
    assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


@pytest.mark.parametrize("data", [[1], {"patch_size": 64, "colour": "red"}, {"patch_size": 64}])
def test_a_bad_plan_dict_is_a_sentence(data):
    with pytest.raises(PlanError):
        Plan.from_dict(data)


def test_an_unknown_user_field_is_a_sentence():
    with pytest.raises(PlanError, match="colour"):
        plan_training(TrainingConfig(), user_fields=("colour",), measure=BIG_SLOW, device="cpu")


def test_the_real_measurement_is_a_positive_number():
    config = TrainingConfig(**TINY)
    assert measure_step_seconds(config, 32, 2, "fp32", device="cpu") > 0


def test_the_checkpoint_carries_the_plan(tmp_path):
    data = make_synthetic_dataset(tmp_path / "data", n_images=3, size=64, seed=1)
    config = TrainingConfig(**TINY, epochs=1, steps_per_epoch=2, val_fraction=0.34, calibrate_postprocess=False,
                            precision="fp32")
    config, plan = plan_training(config, user_fields=TINY, device="cpu")
    train(config, data, tmp_path / "run", plan=plan.to_dict())
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert Plan.from_dict(ckpt["plan"]) == plan


@pytest.mark.parametrize("extra, expected", [([], True), (["--no-plan"], False)])
def test_cli_train_prints_the_plan_unless_told_not_to(tmp_path, capsys, extra, expected):
    from engine.cli import main

    data = make_synthetic_dataset(tmp_path / "data", n_images=3, size=64, seed=1)
    sets = [f"{k}={v}" for k, v in {**TINY, "epochs": 1, "steps_per_epoch": 1, "val_fraction": 0.34,
                                     "calibrate_postprocess": False}.items()]
    code = main(["train", "--data", str(data), "--out", str(tmp_path / "run"), *extra,
                 *[a for s in sets for a in ("--set", s)]])
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert (code, capsys.readouterr().out.startswith("plan: "), ckpt["plan"] is not None) == (0, expected, expected)


def test_the_shape_is_chosen_again_for_the_narrower_width():
    seconds = {(16, 128, 8): 0.3, (16, 64, 32): 0.2, (8, 128, 8): 0.1, (8, 64, 32): 0.15}

    def measure(config, patch_size, batch_size, precision, device="cpu"):
        return seconds.get((config.base_channels, patch_size, batch_size), 10.0)
    planned, plan = plan_training(TrainingConfig(precision="fp32", max_minutes=10.0), measure=measure, device="cpu")
    assert (planned.patch_size, planned.batch_size) == (128, 8)


def test_the_plan_lists_the_shapes_of_the_width_it_chose():
    _, plan = plan_training(TrainingConfig(precision="fp32", max_minutes=10.0), measure=by_width({16: 0.2, 8: 0.1}),
                            device="cpu")
    assert {c["base_channels"] for c in plan.candidates} == {8}


def test_no_shape_is_measured_twice_when_the_width_changes():
    calls = []

    def measure(config, patch_size, batch_size, precision, device="cpu"):
        calls.append((config.base_channels, patch_size, batch_size, precision))
        return {16: 0.2, 8: 0.1}[config.base_channels]
    plan_training(TrainingConfig(precision="fp32", max_minutes=10.0), measure=measure, device="cpu")
    assert len(calls) == len(set(calls))


# --- a run planned on one kind of device, trained on another (a remote GPU worker) ------------------------

CUDA_PLAN = Plan(128, 8, "bf16", 0.01, 128 * 128 * 8 / 0.01, device="cuda", max_minutes=10.0,
                 changed={"precision": "bf16", "base_channels": 16, "epochs": 3000}).to_dict()


def test_a_plan_made_on_this_kind_of_device_is_kept():
    cpu_plan = {**CUDA_PLAN, "device": "cpu"}
    assert replan_for_device(TrainingConfig(max_minutes=10.0), cpu_plan, device="cpu", measure=BIG_SLOW) is None


def test_a_run_without_a_plan_is_not_planned_on_the_worker():
    assert replan_for_device(TrainingConfig(), None, device="cpu", measure=BIG_SLOW) is None


@pytest.mark.parametrize("field, without_bf16, with_bf16", [
    ("device", "cpu", "cpu"),          # the plan now says where it was measured
    ("patch_size", 64, 64),            # the worker's own best shape (BIG_SLOW: 64×64 × 32)
    ("batch_size", 32, 32),
    ("precision", "fp32", "bf16"),     # the first plan's bf16 was planned, so it is planned again here:
])                                     # kept on a CPU that computes bf16 natively (equal times: the first)
def test_a_plan_from_another_device_is_measured_again_here(cpu_bf16, field, without_bf16, with_bf16):
    planned = TrainingConfig(max_minutes=10.0, precision="bf16", epochs=3000, learning_rate=3e-3)
    config, plan = replan_for_device(planned, CUDA_PLAN, device="cpu", measure=BIG_SLOW)
    got = plan.device if field == "device" else getattr(config, field)
    assert got == (with_bf16 if cpu_bf16 else without_bf16)


def test_fields_the_first_plan_did_not_change_are_kept_on_the_worker(cpu_bf16):
    planned = TrainingConfig(max_minutes=10.0, precision="bf16", epochs=3000, learning_rate=3e-3,
                             patch_size=96, batch_size=16)
    config, _ = replan_for_device(planned, {**CUDA_PLAN, "changed": {"precision": "bf16"}}, device="cpu",
                                  measure=BIG_SLOW)
    assert (config.learning_rate, config.patch_size, config.batch_size) == (3e-3, 96, 16)


# --- issue 31: a short measurement of the real run, a choice that agrees with its sentence, frequent checkpoints -

DRIVE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "drive"


@pytest.mark.parametrize("minutes, seconds", [
    (1.0, {16: 0.1, 8: 0.2}),    # a busy moment made the narrower U-Net look slower
    (10.0, {16: 0.2, 8: 0.1}),
    (2.0, {16: 0.3, 8: 0.3}),
])
def test_the_chosen_width_never_gets_fewer_steps_than_a_wider_one(minutes, seconds):
    _, plan = plan_training(TrainingConfig(precision="fp32", max_minutes=minutes), measure=by_width(seconds),
                            device="cpu")
    assert all(plan.planned_steps >= w["planned_steps"] for w in plan.widths
               if w["base_channels"] > plan.base_channels and w["planned_steps"] is not None)


def budgeted(minutes: float, step_s: float, validation_s: float, **user):
    config = TrainingConfig(precision="fp32", max_minutes=minutes, base_channels=16).with_updates(**user)
    return plan_training(config, user_fields={"base_channels", *user}, measure=lambda *args, **kw: step_s,
                         device="cpu", dataset=[(584, 565)] * 20, measure_validation=lambda cfg, sizes: validation_s)


@pytest.mark.parametrize("minutes, step_s, validation_s", [
    (2.0, 0.3, 0.2),      # DRIVE on a busy CPU: 250 steps were 80 s of a 120 s budget
    (10.0, 0.07, 13.0),   # HRF: two 3504×2336 validation images after every epoch
    (10.0, 0.5, 0.0),
    (60.0, 0.1, 1.0),
])
def test_an_epoch_of_a_budgeted_run_takes_at_most_a_tenth_of_the_budget(minutes, step_s, validation_s):
    planned, _ = budgeted(minutes, step_s, validation_s)
    assert planned.steps_per_epoch * step_s + validation_s <= minutes * 60 / 10


@pytest.mark.parametrize("minutes, step_s, validation_s", [(2.0, 0.3, 0.2), (10.0, 0.07, 13.0), (10.0, 0.5, 0.0)])
def test_the_planned_steps_leave_time_for_validation_after_every_epoch(minutes, step_s, validation_s):
    planned, plan = budgeted(minutes, step_s, validation_s)
    epochs = plan.planned_steps / planned.steps_per_epoch
    assert plan.planned_steps * step_s + epochs * validation_s <= minutes * 60


def test_steps_per_epoch_the_user_set_are_kept():
    planned, _ = budgeted(2.0, 0.3, 0.2, steps_per_epoch=250)
    assert planned.steps_per_epoch == 250


@pytest.mark.parametrize("h, w", [(64, 64), (65, 64), (100, 130), (200, 64)])
def test_tile_count_is_the_tiles_validation_runs(h, w):
    from engine.tiling import sliding_window_logits, tile_count

    calls = []

    def model(x):
        calls.append(x.shape)
        return torch.zeros(1, 1, *x.shape[-2:])
    sliding_window_logits(model, torch.zeros(1, h, w), tile_size=64)
    assert tile_count(h, w, tile_size=64) == len(calls)


def test_image_size_reads_the_header(tmp_path):
    from engine.imageio import image_size

    data = make_synthetic_dataset(tmp_path / "data", n_images=2, size=48, seed=1)
    path = sorted((data / "images").iterdir())[0]
    assert image_size(path) == (48, 48)


def test_real_batches_of_the_data_set_are_timed(tmp_path):
    from engine.training.data import load_dataset
    from engine.training.measure import data_measure

    data = load_dataset(make_synthetic_dataset(tmp_path / "data", n_images=3, size=64, seed=1))
    assert data_measure(data)(TrainingConfig(**TINY), 32, 2, "fp32", device="cpu") > 0


@pytest.mark.slow
def test_measuring_drive_is_short_and_prices_validation():
    from engine.training.planner import plan_for_folder

    if not DRIVE.is_dir():
        pytest.skip(f"DRIVE is not at {DRIVE}")
    _, plan = plan_for_folder(TrainingConfig(max_minutes=2.0), set(), DRIVE)
    # about 10 s on two busy cores (the plan it replaced took 40 to 60 s); the bound leaves room for a busier machine
    assert (plan.measured_s < 30, plan.validation_s > 0) == (True, True)


def test_a_folder_is_planned_on_batches_of_its_own_images(tmp_path, monkeypatch):
    import engine.training.planner as planner

    timed = []
    real = planner.data_measure

    def recording(dataset):
        measure = real(dataset)

        def timed_measure(config, patch_size, batch_size, precision, device="cpu"):
            timed.append(patch_size)
            return measure(config, patch_size, batch_size, precision, device=device)
        return timed_measure
    monkeypatch.setattr(planner, "data_measure", recording)
    data = make_synthetic_dataset(tmp_path / "data", n_images=3, size=64, seed=1)
    planner.plan_for_folder(TrainingConfig(**TINY, max_minutes=1.0), set(TINY), data)
    assert timed == [32]


@pytest.mark.parametrize("minutes, seconds, measured", [
    (1.0, {16: 2.0, 8: 1.0}, {8}),          # 54 steps at width 8: width 16, slower, cannot get 4,000
    (60.0, {16: 0.2, 8: 0.1}, {8, 16}),     # 32,400 at width 8: width 16 is measured
])
def test_a_wider_width_is_measured_only_when_the_narrower_gets_enough_steps(minutes, seconds, measured):
    measure = by_width(seconds)
    plan_training(TrainingConfig(precision="fp32", max_minutes=minutes), measure=measure, device="cpu")
    assert set(measure.widths) == measured
