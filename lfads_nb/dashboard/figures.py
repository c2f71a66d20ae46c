"""The training dashboard's figures, shared by the live widgets and the static copies: the
training curves (one panel per unit) and one example trial's inferred vs true rates."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..errors import DataError

CURVE_PANELS = (
    ("valid_truth_nll", 1), ("train_loss", 1), ("train_recon", 1), ("valid_recon", 1),
    ("valid_recon_smoothed", 1), ("valid_sv_nll", 1),
    ("kl_ic", 2), ("kl_co", 2), ("l2", 3), ("kl_ramp", 4), ("l2_ramp", 4), ("lr", 4),
)
# (label, row key) of the one-line summary, in order.


def curves_figure(widget: bool = False) -> go.Figure:
    """Empty figure of the training curves, one panel per unit (see ``CURVE_PANELS``).

    Reconstruction NLLs share a linear axis, so a gap between training and validation shows, and
    the true rates' NLL (where the data have truth) is a dotted black reference: a validation NLL
    below it means the model fits noise. KL and L2 are drawn before their weights and ramps.
    Traces follow ``CURVE_PANELS`` in order; :func:`set_curves` fills them. ``widget`` gives a
    ``go.FigureWidget`` that updates in place.
    """
    from ..plots import metric_style

    titles = ("reconstruction: NLL per observed entry (nats)", "KL per trial (nats, before weighting)",
              "L2 of recurrent weights (before weighting)", "weight ramps and learning rate")
    fig = make_subplots(rows=4, cols=1, shared_xaxes=True, row_heights=[0.4, 0.2, 0.2, 0.2],
                        vertical_spacing=0.07, subplot_titles=titles,
                        specs=[[{}], [{}], [{}], [{"secondary_y": True}]])
    for key, panel in CURVE_PANELS:
        label, colour, dash = metric_style(key)
        fig.add_scatter(name=label, x=[], y=[], mode="lines", line=dict(color=colour, dash=dash, width=2.5),
                        showlegend=False, row=panel, col=1, secondary_y=key == "lr")
    decades = dict(type="log", exponentformat="power", dtick=1)  # ticks at powers of ten only
    fig.update_yaxes(title_text="nats", row=1, col=1)
    fig.update_yaxes(title_text="nats", row=2, col=1, **decades)
    fig.update_yaxes(title_text="L2", row=3, col=1)
    fig.update_yaxes(range=[0, 1.05], title_text="ramp", row=4, col=1, secondary_y=False)
    fig.update_yaxes(title_text="learning rate", showgrid=False, row=4, col=1, secondary_y=True, **decades)
    fig.update_xaxes(title_text="epochs completed", row=4, col=1)
    fig.update_layout(height=760, margin=dict(l=60, r=60, t=40, b=40), template="plotly_white",
                      title=dict(text="training curves", font=dict(size=13)),
                      legend=dict(orientation="h", yanchor="top", y=-0.07, xanchor="left", x=0))
    return go.FigureWidget(fig) if widget else fig


def set_curves(fig: go.Figure, columns: Mapping[str, np.ndarray], max_points: int = 1000) -> None:
    """Put ``columns`` (row key -> values per epoch, with ``'epoch'``) into a :func:`curves_figure`.

    x is the number of epochs completed (``epoch + 1``), as in the status line and text lines.
    Keys the columns lack stay empty and out of the legend. At most ``max_points`` points per
    trace (evenly thinned, the last epoch always kept) so a long run stays cheap to redraw.
    """
    epochs = np.asarray(columns.get("epoch", []), dtype=float) + 1
    keep = thin(len(epochs), max_points)
    for trace, (key, _) in zip(fig.data, CURVE_PANELS):
        if key in columns:
            trace.update(x=epochs[keep], y=np.asarray(columns[key], dtype=float)[keep], showlegend=True)


def thin(n: int, max_points: int) -> np.ndarray:
    """Indices of at most ``max_points`` of ``n`` evenly spaced points, always including the last."""
    if n <= max_points:
        return np.arange(n)
    return np.unique(np.append(np.arange(0, n, math.ceil(n / max_points)), n - 1))


def history_figure(history) -> go.Figure:
    """Static figure of a training ``history`` (pandas DataFrame, one row per epoch)."""
    fig = curves_figure()
    if len(history):
        set_curves(fig, {k: history[k].to_numpy(dtype=float) for k in history.columns}, max_points=len(history))
    return fig


def example_figure(n_neurons: int = 3, widget: bool = False) -> go.Figure:
    """Empty figure for one trial: ``n_neurons`` panels of inferred rate, true rate and spikes.

    Each panel has three traces, in this order: inferred (solid), true (dashed), spikes (ticks at
    0 Hz on bins with at least one spike); :func:`set_example` fills them.
    """
    fig = make_subplots(rows=n_neurons, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=[" "] * n_neurons)
    for r in range(1, n_neurons + 1):
        first = r == 1
        fig.add_scatter(name="inferred", x=[], y=[], mode="lines", line=dict(color="#1f77b4"),
                        legendgroup="inferred", showlegend=first, row=r, col=1)
        fig.add_scatter(name="true", x=[], y=[], mode="lines", line=dict(color="#000000", dash="dash"),
                        legendgroup="true", showlegend=first, row=r, col=1)
        fig.add_scatter(name="spikes", x=[], y=[], mode="markers", legendgroup="spikes", showlegend=first,
                        marker=dict(symbol="line-ns-open", size=9, color="#7f7f7f"), row=r, col=1)
        fig.update_yaxes(title_text="Hz", rangemode="tozero", row=r, col=1)
    fig.update_xaxes(title_text="time (s)", row=n_neurons, col=1)
    fig.update_layout(height=110 + 130 * n_neurons, margin=dict(l=60, r=20, t=60, b=40),
                      template="plotly_white", title=dict(text="example trial", font=dict(size=13)))
    return go.FigureWidget(fig) if widget else fig


def set_example(fig: go.Figure, example: Mapping) -> None:
    """Put one ``example`` (see :meth:`Progress.update`) into an :func:`example_figure`.

    Shows the first neurons of the example, as many as the figure has panels.
    """
    time_s = np.asarray(example["time"], dtype=float)
    rates = np.asarray(example["rates"], dtype=float)
    spikes = np.asarray(example["spikes"], dtype=float)
    truth = example.get("rates_true")
    truth = None if truth is None else np.asarray(truth, dtype=float)
    neurons = list(example["neurons"])
    expected = (len(time_s), len(neurons))
    for name, values in (("rates", rates), ("spikes", spikes), ("rates_true", truth)):
        if values is not None and values.shape != expected:
            raise DataError(
                f"example['{name}'] has shape {values.shape}; it must be (time, neuron) = {expected}, "
                "matching example['time'] and example['neurons']."
            )
    for panel in range(len(fig.data) // 3):
        inferred, true, ticks = fig.data[3 * panel:3 * panel + 3]
        if panel >= len(neurons):  # fewer neurons than panels: leave the rest blank
            for trace in (inferred, true, ticks):
                trace.update(x=[], y=[])
            fig.layout.annotations[panel].text = " "
            continue
        inferred.update(x=time_s, y=rates[:, panel])
        true.update(x=time_s if truth is not None else [], y=truth[:, panel] if truth is not None else [])
        fired = np.nan_to_num(spikes[:, panel]) > 0
        ticks.update(x=time_s[fired], y=np.zeros(int(fired.sum())), text=spikes[fired, panel],
                     hovertemplate="%{x:.3f} s: %{text:.0f} spikes<extra></extra>")
        fig.layout.annotations[panel].text = f"neuron {neurons[panel]}"
    fig.layout.title.text = f"trial {example['trial']}: inferred vs true rates"



def row_columns(rows: Sequence[Mapping[str, float]]) -> dict[str, np.ndarray]:
    """Row dicts -> key -> values per row (NaN where a row lacks the key)."""
    keys = dict.fromkeys(k for row in rows for k in row)
    return {k: np.array([row.get(k, math.nan) for row in rows], dtype=float) for k in keys}
