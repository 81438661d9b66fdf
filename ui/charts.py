"""Plotly charts of training runs: loss, validation Dice and learning rate per epoch.

Pure functions of the epoch rows that ``storage.db`` returns; no Streamlit here, so they are tested
directly and the Train and Models pages draw the same figure.
"""
from __future__ import annotations

import math


def smooth(values: list[float | None], weight: float) -> list[float | None]:
    """Exponential moving average (TensorBoard-style, bias-corrected); gaps stay gaps."""
    out, avg, n = [], 0.0, 0
    for v in values:
        if v is None:
            out.append(None)
            continue
        n += 1
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight**n) if weight > 0 else v)
    return out


def lr_ticks(values: list[float | None]) -> list[float] | None:
    """Tick positions for the log-scale learning-rate axis when fewer than two powers of ten lie in its range.

    Returns None when the values span two powers of ten or more (the axis then labels those), else the
    values 1, 2 and 5 times a power of ten inside [min, max], with min and max themselves when fewer than
    two of those fall inside, so the axis never shows a single label or none.
    """
    positive = [v for v in values if v is not None and v > 0]
    if not positive:
        return None
    low, high = min(positive), max(positive)
    first, last = math.floor(math.log10(low)), math.floor(math.log10(high))
    if sum(1 for k in range(first, last + 1) if low <= 10.0 ** k <= high) >= 2:
        return None
    ticks = [float(f"{m}e{k}") for k in range(first, last + 1) for m in (1, 2, 5) if low <= float(f"{m}e{k}") <= high]
    return ticks if len(ticks) >= 2 else sorted({low, *ticks, high})


def _sci(value: float) -> str:
    """1.5e-04, 2e-04: the axis's own exponent format, without trailing zeros."""
    mantissa, exponent = f"{value:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{exponent}"


def curves_figure(runs: list[tuple[str, list[dict], int | None]], smoothing: float = 0.0):
    """Plotly figure with loss (train and val), val Dice and learning rate per epoch.

    ``runs`` holds (label, epoch rows from storage, best epoch). With smoothing > 0 each smoothed
    curve is drawn solid over its raw curve drawn faint; the best epoch is marked on the Dice plot.
    """
    import plotly.graph_objects as go
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots

    validated = any(r.get("val_dice") is not None for _, rows, _ in runs for r in rows)
    dice_title = "Validation Dice" if validated else "Validation Dice: none (every image trains)"
    fig = make_subplots(rows=1, cols=3, subplot_titles=("Loss", dice_title, "Learning rate"))
    several = len(runs) > 1
    for i, (label, rows, best_epoch) in enumerate(runs):
        epochs = [r["epoch"] for r in rows]
        palette = qualitative.Plotly
        series = [("train loss", "train_loss", 1, "solid"), ("val loss", "val_loss", 1, "dot"),
                  ("val Dice", "val_dice", 2, "solid"), ("LR", "lr", 3, "solid")]
        for j, (name, field, col, dash) in enumerate(series):
            colour = palette[(i if several else j) % len(palette)]
            raw = [r.get(field) for r in rows]
            if all(v is None for v in raw):  # a run without validation images: no empty legend entry
                continue
            full = f"{label}: {name}" if several else name
            if smoothing > 0 and field != "lr":
                fig.add_trace(go.Scatter(x=epochs, y=raw, mode="lines", opacity=0.25, showlegend=False,
                                         line=dict(color=colour, dash=dash), hoverinfo="skip"), row=1, col=col)
                raw = smooth(raw, smoothing)
            fig.add_trace(go.Scatter(x=epochs, y=raw, mode="lines+markers" if len(rows) < 30 else "lines",
                                     name=full, line=dict(color=colour, dash=dash)), row=1, col=col)
        if best_epoch and best_epoch in epochs and rows[epochs.index(best_epoch)].get("val_dice") is not None:
            best = rows[epochs.index(best_epoch)]
            star = qualitative.Plotly[i % len(qualitative.Plotly)] if several else "gold"  # the run's own colour
            fig.add_trace(go.Scatter(x=[best_epoch], y=[best.get("val_dice")], mode="markers",
                                     marker=dict(symbol="star", size=14, color=star, line=dict(color="black", width=1)),
                                     name=f"{label}: best epoch {best_epoch}" if several else f"best epoch {best_epoch}"),
                          row=1, col=2)
            fig.add_vline(x=best_epoch, line=dict(color=star, width=1, dash="dash"), row=1, col=2)
    fig.update_yaxes(range=[0, 1.02], row=1, col=2)  # Dice lives in [0, 1]; a free axis exaggerates noise
    fig.update_yaxes(type="log", dtick=1, exponentformat="e", row=1, col=3)  # 1e-04 at powers of ten, not SI "100µ"
    ticks = lr_ticks([r.get("lr") for _, rows, _ in runs for r in rows])
    if ticks:  # no power of ten in the range: label 1, 2, 5 x 10^k (or the ends) instead of nothing
        fig.update_yaxes(tickvals=ticks, ticktext=[_sci(v) for v in ticks], row=1, col=3)
    longest = max((len(rows) for _, rows, _ in runs), default=0)
    fig.update_xaxes(title_text="epoch", dtick=1 if longest <= 10 else None, rangemode="tozero")
    fig.update_layout(height=330, margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.25))
    return fig
