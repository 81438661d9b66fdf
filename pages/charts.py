"""Plotly charts of training runs: loss, validation Dice and learning rate per epoch.

Pure functions of the epoch rows that ``storage.db`` returns; no Streamlit here, so they are tested
directly and the Train and Models pages draw the same figure.
"""
from __future__ import annotations


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


def curves_figure(runs: list[tuple[str, list[dict], int | None]], smoothing: float = 0.0):
    """Plotly figure with loss (train and val), val Dice and learning rate per epoch.

    ``runs`` holds (label, epoch rows from storage, best epoch). With smoothing > 0 each smoothed
    curve is drawn solid over its raw curve drawn faint; the best epoch is marked on the Dice plot.
    """
    import plotly.graph_objects as go
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=3, subplot_titles=("Loss", "Validation Dice", "Learning rate"))
    several = len(runs) > 1
    for i, (label, rows, best_epoch) in enumerate(runs):
        epochs = [r["epoch"] for r in rows]
        palette = qualitative.Plotly
        series = [("train loss", "train_loss", 1, "solid"), ("val loss", "val_loss", 1, "dot"),
                  ("val Dice", "val_dice", 2, "solid"), ("LR", "lr", 3, "solid")]
        for j, (name, field, col, dash) in enumerate(series):
            colour = palette[(i if several else j) % len(palette)]
            raw = [r.get(field) for r in rows]
            full = f"{label}: {name}" if several else name
            if smoothing > 0 and field != "lr":
                fig.add_trace(go.Scatter(x=epochs, y=raw, mode="lines", opacity=0.25, showlegend=False,
                                         line=dict(color=colour, dash=dash), hoverinfo="skip"), row=1, col=col)
                raw = smooth(raw, smoothing)
            fig.add_trace(go.Scatter(x=epochs, y=raw, mode="lines+markers" if len(rows) < 30 else "lines",
                                     name=full, line=dict(color=colour, dash=dash)), row=1, col=col)
        if best_epoch and best_epoch in epochs:
            best = rows[epochs.index(best_epoch)]
            fig.add_trace(go.Scatter(x=[best_epoch], y=[best.get("val_dice")], mode="markers",
                                     marker=dict(symbol="star", size=14, color="gold", line=dict(color="black", width=1)),
                                     name=f"{label}: best epoch {best_epoch}" if several else f"best epoch {best_epoch}"),
                          row=1, col=2)
            fig.add_vline(x=best_epoch, line=dict(color="gold", width=1, dash="dash"), row=1, col=2)
    fig.update_yaxes(range=[0, 1.02], row=1, col=2)  # Dice lives in [0, 1]; a free axis exaggerates noise
    fig.update_yaxes(type="log", dtick=1, exponentformat="e", row=1, col=3)  # 1e-04 at powers of ten, not SI "100µ"
    longest = max((len(rows) for _, rows, _ in runs), default=0)
    fig.update_xaxes(title_text="epoch", dtick=1 if longest <= 10 else None, rangemode="tozero")
    fig.update_layout(height=330, margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.25))
    return fig
