"""The training-curve figure and its smoothing (ui.charts): pure functions, no Streamlit."""
from __future__ import annotations

import math

import pytest

from ui.charts import curves_figure, smooth


@pytest.mark.parametrize("values, weight, expected", [
    ([1.0, 2.0, 3.0], 0.0, [1.0, 2.0, 3.0]),  # no smoothing: unchanged
    ([5.0, 5.0, 5.0], 0.9, [5.0, 5.0, 5.0]),  # bias-corrected: a constant stays that constant from the start
    ([None, 2.0, None, 2.0], 0.6, [None, 2.0, None, 2.0]),  # gaps stay gaps and do not count as values
    ([], 0.5, []),
])
def test_smooth_cases(values, weight, expected):
    assert smooth(values, weight) == pytest.approx(expected)


def test_smooth_damps_a_spike_and_follows_a_step():
    noisy = [1.0] * 5 + [10.0] + [1.0] * 5
    out = smooth(noisy, 0.8)
    assert max(out) < 4.0  # a single spike is damped to under a third
    step = smooth([0.0] * 10 + [1.0] * 40, 0.8)
    assert 0.99 < step[-1] <= 1.0 and all(a <= b for a, b in zip(step[10:], step[11:]))


def _rows(n: int, dice_peak: int) -> list[dict]:
    return [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "val_dice": 0.8 - 0.01 * abs(e - dice_peak),
             "lr": 1e-3 * 0.9 ** e} for e in range(1, n + 1)]


def test_one_run_has_its_four_series_and_marks_the_best_epoch():
    fig = curves_figure([("run a", _rows(12, 7), 7)])
    names = [t.name for t in fig.data]
    assert names[:4] == ["train loss", "val loss", "val Dice", "LR"]
    star = next(t for t in fig.data if t.name == "best epoch 7")
    assert list(star.x) == [7] and math.isclose(star.y[0], 0.8)
    assert tuple(fig.layout.yaxis2.range) == (0, 1.02)
    assert fig.layout.yaxis3.type == "log" and fig.layout.yaxis3.exponentformat == "e"  # "1e-04", not "100µ"


def test_overlaid_runs_are_named_by_run_and_smoothing_adds_faint_raw_curves():
    runs = [("a", _rows(5, 3), 3), ("b", _rows(8, 2), None)]
    plain = curves_figure(runs)
    assert {t.name for t in plain.data} >= {"a: val Dice", "b: val Dice", "a: best epoch 3"}
    assert not any(t.name == "b: best epoch None" for t in plain.data)
    smoothed = curves_figure(runs, smoothing=0.6)
    faint = [t for t in smoothed.data if t.opacity == 0.25]
    assert len(faint) == 2 * 3  # train loss, val loss and Dice per run; the LR is never smoothed
    solid_dice = next(t for t in smoothed.data if t.name == "a: val Dice")
    assert list(solid_dice.y) == pytest.approx(smooth([r["val_dice"] for r in runs[0][1]], 0.6))


@pytest.mark.parametrize("values, expected", [
    ([1e-3, 5e-4, 1e-4], None),               # spans a power of ten: the axis labels 1e-03, 1e-04
    ([3e-4, 9e-4], [3e-4, 5e-4, 9e-4]),       # within one decade: 5e-04 alone would be one label
    ([1e-4, 9e-4], [1e-4, 2e-4, 5e-4]),
    ([1.5e-4, 1.8e-4], [1.5e-4, 1.8e-4]),      # no 1, 2, 5 inside: the ends
    ([None, 0.0], None),
])
def test_lr_ticks(values, expected):
    from ui.charts import lr_ticks

    assert lr_ticks(values) == (None if expected is None else pytest.approx(expected))


def test_an_lr_within_one_decade_gets_tick_labels():
    from ui.charts import curves_figure

    rows = [{"epoch": e, "train_loss": 0.5, "val_loss": 0.5, "val_dice": 0.5, "lr": lr}
            for e, lr in enumerate([3e-4, 6e-4, 9e-4], start=1)]
    assert list(curves_figure([("run", rows, None)]).layout.yaxis3.ticktext) == ["3e-04", "5e-04", "9e-04"]


def test_overlaid_runs_mark_their_best_epochs_in_their_own_colours():
    from ui.charts import curves_figure

    rows = [{"epoch": e, "train_loss": 0.5, "val_loss": 0.5, "val_dice": 0.1 * e, "lr": 1e-3} for e in (1, 2, 3)]
    fig = curves_figure([("a", rows, 2), ("b", rows, 3)])
    stars = [t.marker.color for t in fig.data if t.marker.symbol == "star"]
    assert len(set(stars)) == 2


def _unvalidated(n: int) -> list[dict]:
    return [{"epoch": e, "train_loss": 1 / e, "val_loss": None, "val_dice": None, "lr": 1e-3} for e in range(1, n + 1)]


def test_a_run_without_validation_draws_no_empty_series_or_best_epoch():
    fig = curves_figure([("run a", _unvalidated(4), 4)])
    assert [t.name for t in fig.data] == ["train loss", "LR"]


def test_a_run_without_validation_says_so_in_the_dice_panel():
    fig = curves_figure([("run a", _unvalidated(4), 4)])
    assert "every image trains" in fig.layout.annotations[1].text
