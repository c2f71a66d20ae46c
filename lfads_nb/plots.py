"""Plotly figures for the tutorials.

Every function returns a ``plotly.graph_objects.Figure`` with a title that says what is
shown and axes labelled with units. Data come in as lfads_nb Datasets / DataArrays and are
selected by coordinate value (a trial id, a neuron id), never by position; an id that does
not exist raises :class:`DataError` naming the valid ones. Figures stay light so notebooks
stay small: one trial at a time, a few neurons, at most ``MAX_TRIALS_3D`` trajectories
unless asked for more.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import xarray as xr
from plotly.subplots import make_subplots

from .data.schema import select_ids, validate
from .dynamics import PCA, flow_field, pca
from .errors import DataError

MAX_TRIALS_3D = 20
DEFAULT_NEURONS = 4
PALETTE = px.colors.qualitative.Plotly
ROW_HEIGHT = 220  # pixels per subplot row in stacked figures


# ----------------------------------------------------------------------------- selection helpers

def _variable(ds: xr.Dataset, variable: str) -> xr.DataArray:
    if variable not in ds.data_vars:
        raise DataError(f"The dataset has no variable {variable!r}; variables: {sorted(ds.data_vars)}.")
    return ds[variable]


def _feature_dim(da: xr.DataArray, name: str) -> str:
    others = [d for d in da.dims if d not in ("trial", "time")]
    if "trial" not in da.dims or "time" not in da.dims or len(others) != 1:
        raise DataError(f"'{name}' has dims {da.dims}; expected ('trial', 'time', <one feature dim>).")
    return others[0]


def _with_units(label: str, da: xr.DataArray) -> str:
    units = da.attrs.get("units")
    return f"{label} ({units})" if units else label


def _trial_caption(ds: xr.Dataset, trial) -> str:
    extra = [f"{c} {ds[c].sel(trial=trial).item()}" for c in ("condition", "split") if c in ds.coords]
    return f"trial {trial}" + (f" ({', '.join(extra)})" if extra else "")


def _same_time(a: xr.DataArray, b: xr.DataArray, names: tuple[str, str]) -> None:
    if a.sizes["time"] != b.sizes["time"] or not np.allclose(a["time"].values, b["time"].values):
        raise DataError(f"'{names[0]}' and '{names[1]}' have different time bins; "
                        "they must share the 'time' coordinate.")


# ----------------------------------------------------------------------------- data views

def raster(ds: xr.Dataset, trial, *, rates: str | None = None) -> go.Figure:
    """Spike raster of one trial: a tick per bin with spikes, time (s) vs neuron.

    ``rates``: the name of a (trial, time, neuron) variable (e.g. ``'rates_true'``) to show
    beside the raster as a heatmap on the same neuron axis. Unobserved (NaN) bins are blank.
    """
    validate(ds)
    one = select_ids(ds, "trial", trial, "ds")
    spikes = one["spikes"].transpose("time", "neuron")
    t_idx, n_idx = np.nonzero(np.nan_to_num(spikes.values) > 0)
    ticks = go.Scatter(
        x=spikes["time"].values[t_idx], y=spikes["neuron"].values[n_idx], mode="markers",
        marker=dict(symbol="line-ns-open", size=8, color="black"),
        customdata=spikes.values[t_idx, n_idx], name="spikes",
        hovertemplate="t = %{x:.3f} s<br>neuron %{y}<br>%{customdata} spike(s)<extra></extra>",
    )
    title = f"Spike raster, {_trial_caption(ds, trial)}"
    if rates is None:
        fig = go.Figure(ticks)
        fig.update_layout(title=title, xaxis_title="time (s)", yaxis_title="neuron", showlegend=False)
        return fig
    if _feature_dim(_variable(ds, rates), rates) != "neuron":
        raise DataError(f"'{rates}' has dims {ds[rates].dims}; the heatmap beside a raster needs "
                        "(trial, time, neuron) rates.")
    da = one[rates].transpose("time", "neuron")
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.04,
                        subplot_titles=("spikes", _with_units(rates, da)))
    fig.add_trace(ticks, row=1, col=1)
    # Heatmaps and 3-D paths go out as float32: half the notebook size, beyond screen precision.
    fig.add_trace(go.Heatmap(x=da["time"].values, y=da["neuron"].values, z=da.values.T.astype(np.float32),
                             colorscale="Viridis", colorbar=dict(title=da.attrs.get("units", ""))),
                  row=1, col=2)
    fig.update_xaxes(title_text="time (s)")
    fig.update_yaxes(title_text="neuron", row=1, col=1)
    fig.update_layout(title=f"{title}, with {rates}", showlegend=False)
    return fig


def rates_heatmap(ds: xr.Dataset, trial, variable: str = "rates_true") -> go.Figure:
    """Heatmap of one trial of a (trial, time, <dim>) variable: time (s) vs its third dim."""
    one = select_ids(_variable(ds, variable), "trial", trial, variable)
    dim = _feature_dim(ds[variable], variable)
    one = one.transpose("time", dim)
    units = one.attrs.get("units", "")
    fig = go.Figure(go.Heatmap(x=one["time"].values, y=one[dim].values, z=one.values.T.astype(np.float32),
                               colorscale="Viridis", colorbar=dict(title=units)))
    fig.update_layout(title=f"{_with_units(variable, one)}, {_trial_caption(ds, trial)}",
                      xaxis_title="time (s)", yaxis_title=dim)
    return fig


def _latent_paths(ds: xr.Dataset, trials, variable: str, color_by: str | None):
    """Shared by the latent plots: (paths (trial, time, 3) float32, axis names, title, trial ids,
    colour label per trial, colour by label, ``color_by``). More than 3 dims are projected onto
    the top 3 principal components of the shown trials."""
    da = _variable(ds, variable)
    dim = _feature_dim(da, variable)
    if da.sizes[dim] < 3:
        raise DataError(f"'{variable}' has {da.sizes[dim]} dims along '{dim}'; a latent plot needs "
                        "at least 3. Use rates_heatmap(ds, trial, variable) instead.")
    if trials is None:
        trials = ds["trial"].values[:MAX_TRIALS_3D].tolist()
    da = select_ids(da, "trial", trials, variable).transpose("trial", "time", dim)
    if color_by is None and "condition" in ds.coords:
        color_by = "condition"
    if color_by is not None and color_by not in ds.coords:
        raise DataError(f"color_by={color_by!r} is not a coordinate; per-trial coordinates: "
                        f"{[c for c in ds.coords if ds[c].dims == ('trial',)]}.")

    points = da.values.reshape(-1, da.sizes[dim]).astype(float)
    if da.sizes[dim] == 3:
        xyz = points
        axes = [f"{dim} {v}" for v in (da[dim].values if dim in da.coords else range(3))]
        title = f"{variable}, {len(trials)} trials"
    else:
        centred = points - points.mean(axis=0)
        _, singular, vt = np.linalg.svd(centred, full_matrices=False)
        xyz = centred @ vt[:3].T
        kept = 100 * (singular[:3] ** 2).sum() / (singular ** 2).sum()
        axes = ["PC1", "PC2", "PC3"]
        title = (f"{variable} ({da.sizes[dim]} dims) projected onto the top 3 principal "
                 f"components ({kept:.0f}% of variance), {len(trials)} trials")
    xyz = xyz.reshape(da.sizes["trial"], da.sizes["time"], 3).astype(np.float32)
    labels = ds[color_by].sel(trial=da["trial"].values).values if color_by else np.zeros(len(trials))
    colours = {value: PALETTE[i % len(PALETTE)] for i, value in enumerate(pd.unique(labels))}
    return xyz, axes, title, da["trial"].values, labels, colours, color_by, da["time"].values


def latents_3d(ds: xr.Dataset, trials=None, variable: str = "latents_true",
               color_by: str | None = None) -> go.Figure:
    """3-D latent trajectories, one line per trial, coloured by a per-trial coordinate.

    ``trials``: trial ids (default: the first ``MAX_TRIALS_3D``). ``color_by``: the name of a
    per-trial coordinate; by default ``condition`` where the data have one, else one colour.
    A latent with more than 3 dims is projected onto its top 3 principal components (over the
    shown trials); the title says so and how much variance they keep. A circle marks each
    trial's start. For a figure readable as a static image prefer :func:`latents_2d`.
    """
    xyz, axes, title, trial_ids, labels, colours, color_by, _ = _latent_paths(ds, trials, variable, color_by)
    fig = go.Figure()
    shown = set()
    for trial, label, path in zip(trial_ids, labels, xyz):
        fig.add_trace(go.Scatter3d(
            x=path[:, 0], y=path[:, 1], z=path[:, 2], mode="lines",
            line=dict(color=colours[label], width=3), legendgroup=str(label),
            name=f"{color_by} {label}" if color_by else "trajectory", showlegend=label not in shown,
            hovertemplate=f"trial {trial}<extra></extra>",
        ))
        shown.add(label)
    fig.add_trace(go.Scatter3d(x=xyz[:, 0, 0], y=xyz[:, 0, 1], z=xyz[:, 0, 2], mode="markers",
                               marker=dict(size=3, color="black"), name="start"))
    fig.update_layout(title=title, height=600, scene=dict(xaxis_title=f"{axes[0]} (a.u.)",
                                                          yaxis_title=f"{axes[1]} (a.u.)",
                                                          zaxis_title=f"{axes[2]} (a.u.)"))
    return fig


def latents_2d(ds: xr.Dataset, trials=None, variable: str = "latents_true",
               color_by: str | None = None) -> go.Figure:
    """Latent trajectories as 2-D small multiples, readable as a static image: the PC1-PC2 plane
    (left; a black dot marks each trial's start) and PC1, PC2, PC3 against time (right), one
    line per trial, coloured by ``color_by`` (default ``condition``). Arguments and projection
    as in :func:`latents_3d`."""
    xyz, axes, title, trial_ids, labels, colours, color_by, time = _latent_paths(ds, trials, variable, color_by)
    fig = make_subplots(rows=3, cols=2, specs=[[{"rowspan": 3}, {}], [None, {}], [None, {}]],
                        column_widths=[0.5, 0.5], shared_xaxes=False, horizontal_spacing=0.1,
                        vertical_spacing=0.06, subplot_titles=[f"{axes[0]} vs {axes[1]}", *[f"{a} over time" for a in axes]])
    shown = set()
    for trial, label, path in zip(trial_ids, labels, xyz):
        style = dict(mode="lines", line=dict(color=colours[label], width=1.5), legendgroup=str(label),
                     hovertemplate=f"trial {trial}<extra></extra>")
        fig.add_scatter(x=path[:, 0], y=path[:, 1], name=f"{color_by} {label}" if color_by else "trajectory",
                        showlegend=label not in shown, row=1, col=1, **style)
        for k in range(3):
            fig.add_scatter(x=time, y=path[:, k], showlegend=False, row=k + 1, col=2, **style)
        shown.add(label)
    fig.add_scatter(x=xyz[:, 0, 0], y=xyz[:, 0, 1], mode="markers", marker=dict(size=6, color="black"),
                    name="start", row=1, col=1)
    fig.update_xaxes(title_text=f"{axes[0]} (a.u.)", row=1, col=1)
    fig.update_yaxes(title_text=f"{axes[1]} (a.u.)", row=1, col=1)
    for k in range(3):
        fig.update_yaxes(title_text=f"{axes[k]} (a.u.)", row=k + 1, col=2)
    fig.update_xaxes(title_text="time (s)", row=3, col=2)
    fig.update_layout(title=title, height=560, legend=dict(orientation="h", yanchor="top", y=-0.12))
    return fig


# ----------------------------------------------------------------------------- model outputs

def compare_rates(inferred: xr.DataArray, ds: xr.Dataset, trial, neurons=None,
                  baseline: xr.DataArray | None = None, baseline_name: str = "smoothed spikes") -> go.Figure:
    """Inferred vs true rates (Hz) of one trial, one subplot per neuron.

    ``inferred``: (trial, time, neuron) rates in Hz on the time bins of ``ds``, which must
    hold ``rates_true``. ``neurons``: neuron ids (default: the first ``DEFAULT_NEURONS``).
    ``baseline``: optional rates of the same shape (e.g. smoothed spikes) drawn as a third,
    dashed trace named ``baseline_name``, so the comparison shows what the model is measured against.
    """
    if not isinstance(inferred, xr.DataArray):
        raise DataError(f"'inferred' must be a DataArray of rates (trial, time, neuron), "
                        f"got {type(inferred).__name__}.")
    true = select_ids(_variable(ds, "rates_true"), "trial", trial, "ds")
    mine = select_ids(inferred, "trial", trial, "inferred")
    _same_time(mine, true, ("inferred", "rates_true"))
    if neurons is None:
        neurons = ds["neuron"].values[:DEFAULT_NEURONS].tolist()
    true = select_ids(true, "neuron", neurons, "ds")
    mine = select_ids(mine, "neuron", neurons, "inferred")
    if baseline is not None:
        base = select_ids(select_ids(baseline, "trial", trial, "baseline"), "neuron", neurons, "baseline")
        _same_time(base, true, ("baseline", "rates_true"))
    fig = make_subplots(rows=len(neurons), cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=[f"neuron {n}" for n in neurons])
    for row, neuron in enumerate(neurons, start=1):
        first = row == 1
        fig.add_trace(go.Scatter(x=true["time"].values, y=true.sel(neuron=neuron).values, mode="lines",
                                 line=dict(color="black"), name="true", legendgroup="true",
                                 showlegend=first), row=row, col=1)
        fig.add_trace(go.Scatter(x=mine["time"].values, y=mine.sel(neuron=neuron).values, mode="lines",
                                 line=dict(color=PALETTE[0]), name="inferred", legendgroup="inferred",
                                 showlegend=first), row=row, col=1)
        if baseline is not None:
            fig.add_trace(go.Scatter(x=base["time"].values, y=base.sel(neuron=neuron).values, mode="lines",
                                     line=dict(color=PALETTE[2], dash="dash"), name=baseline_name,
                                     legendgroup="baseline", showlegend=first), row=row, col=1)
        fig.update_yaxes(title_text="rate (Hz)", row=row, col=1)
    fig.update_xaxes(title_text="time (s)", row=len(neurons), col=1)
    fig.update_layout(title=f"Inferred vs true rates, {_trial_caption(ds, trial)}",
                      height=max(300, ROW_HEIGHT * len(neurons)))
    return fig


def inputs_and_echo(inferred: xr.Dataset, ds: xr.Dataset, trial, echo: xr.DataArray, *,
                    marker_time: float | None = None, echo_max: float | None = None, title: str = "") -> go.Figure:
    """Look inside an LFADS model with a controller: one trial's population spike count (top
    left) and inferred inputs (bottom left, one line per input), and the spike echo by lag
    (right; ``lfads_nb.metrics.spike_echo``). ``inferred``: ``lfads_nb.infer``'s Dataset with
    ``inputs``; ``ds``: the data with ``spikes``; ``marker_time``: a time (s) marked dashed on
    the left, e.g. a true input pulse; ``echo_max``: the echo axis' top, to compare models on
    one scale."""
    spikes = select_ids(_variable(ds, "spikes"), "trial", trial, "ds").sum("neuron")
    inputs = select_ids(_variable(inferred, "inputs"), "trial", trial, "inferred")
    fig = make_subplots(rows=2, cols=2, specs=[[{}, {"rowspan": 2}], [{}, None]], shared_xaxes=True,
                        column_widths=[0.65, 0.35],
                        subplot_titles=["spikes (all neurons)", "spike echo", "inferred inputs"])
    fig.add_bar(x=spikes["time"].values, y=spikes.values, name="spikes", showlegend=False, row=1, col=1)
    input_dim = _feature_dim(inputs.expand_dims(trial=[trial]), "inputs")
    for k in inputs[input_dim].values:
        fig.add_scatter(x=inputs["time"].values, y=inputs.sel({input_dim: k}).values, name=f"input u{k}",
                        mode="lines", row=2, col=1)
    fig.add_bar(x=echo["lag"].values, y=echo.values, name="echo", showlegend=False, row=1, col=2)
    if marker_time is not None:
        for row in (1, 2):
            fig.add_vline(x=marker_time, line_dash="dash", row=row, col=1)
    fig.update_xaxes(title_text="time (s)", row=2, col=1).update_xaxes(title_text="lag (bins)", row=1, col=2)
    fig.update_yaxes(title_text="count", row=1, col=1).update_yaxes(title_text="u (a.u.)", row=2, col=1)
    fig.update_yaxes(title_text="slope (rate error per spike)", row=1, col=2,
                     range=[-0.01, echo_max] if echo_max is not None else None)
    return fig.update_layout(title=title, height=500, legend=dict(orientation="h", y=-0.15))


def decoding(behavior_true: xr.DataArray, behavior_pred: xr.DataArray, trial) -> go.Figure:
    """True vs decoded behaviour (e.g. hand velocity) of one trial, one subplot per behaviour dim.

    Both (trial, time, behavior_dim) on the same time bins, e.g. ``ds['behavior']`` and the
    output of :func:`lfads_nb.metrics.decode_behavior`.
    """
    for name, da in (("behavior_true", behavior_true), ("behavior_pred", behavior_pred)):
        if not isinstance(da, xr.DataArray):
            raise DataError(f"'{name}' must be a DataArray (trial, time, behavior_dim), got {type(da).__name__}.")
    dim = _feature_dim(behavior_true, "behavior_true")
    if _feature_dim(behavior_pred, "behavior_pred") != dim:
        raise DataError(f"'behavior_pred' has dims {behavior_pred.dims}; expected the dims of "
                        f"'behavior_true' {behavior_true.dims}.")
    true = select_ids(behavior_true, "trial", trial, "behavior_true")
    pred = select_ids(behavior_pred, "trial", trial, "behavior_pred")
    _same_time(pred, true, ("behavior_pred", "behavior_true"))
    names = true[dim].values.tolist() if dim in true.coords else list(range(true.sizes[dim]))
    fig = make_subplots(rows=len(names), cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=[f"{dim} {n}" for n in names])
    for i, label in enumerate(names):
        row, first = i + 1, i == 0
        fig.add_trace(go.Scatter(x=true["time"].values, y=true.isel({dim: i}).values, mode="lines",
                                 line=dict(color="black"), name="true", legendgroup="true",
                                 showlegend=first), row=row, col=1)
        fig.add_trace(go.Scatter(x=pred["time"].values, y=pred.isel({dim: i}).values, mode="lines",
                                 line=dict(color=PALETTE[1]), name="decoded", legendgroup="decoded",
                                 showlegend=first), row=row, col=1)
        fig.update_yaxes(title_text=_with_units(str(label), behavior_true), row=row, col=1)
    fig.update_xaxes(title_text="time (s)", row=len(names), col=1)
    fig.update_layout(title=f"True vs decoded behaviour, trial {trial}",
                      height=max(300, ROW_HEIGHT * len(names)))
    return fig


# ----------------------------------------------------------------------------- training and search

# One style per metric of a training history, shared by every figure that draws it (the live
# dashboard, its static copy and ``history``): row key -> (readable label, colour, dash).
# Reconstruction terms are NLL per observed entry; KL per trial and L2 are drawn before weighting.
METRIC_STYLES = {
    "train_loss": ("training objective (recon + weighted KL and L2)", "#7f7f7f", "dot"),
    "train_recon": ("training reconstruction NLL", "#1f77b4", "solid"),
    "valid_recon": ("validation reconstruction NLL", "#d62728", "solid"),
    "valid_recon_smoothed": ("validation NLL, smoothed (drives the lr schedule)", "#ff9896", "dot"),
    "valid_sv_nll": ("sample-validation NLL", "#9467bd", "solid"),
    "valid_truth_nll": ("true rates' NLL on validation (reference)", "#000000", "dot"),
    "kl_ic": ("KL, initial condition", "#2ca02c", "solid"),
    "kl_co": ("KL, inferred inputs", "#17becf", "solid"),
    "l2": ("L2 of recurrent weights", "#8c564b", "solid"),
    "kl_ramp": ("KL weight ramp", "#2ca02c", "dot"),  # dotted: the L2 ramp often lies on top of it
    "l2_ramp": ("L2 weight ramp", "#8c564b", "dash"),
    "lr": ("learning rate", "#ff7f0e", "solid"),
    "train_bins": ("bins of each trial trained on (curriculum)", "#e377c2", "solid"),
    "epoch_seconds": ("seconds per epoch", "#bcbd22", "solid"),
}

# Panels of the history figure: (title, y-axis label, which columns belong), first match wins.
# Units follow lfads_nb.training: reconstruction NLL per observed entry, KL per trial.
HISTORY_PANELS = (
    ("reconstruction (and the objective)", "NLL per entry (nats)",
     lambda c: c.endswith("loss") or "recon" in c or "nll" in c),
    ("KL divergence (before weighting)", "KL per trial (nats)", lambda c: c.startswith("kl") and not c.endswith("_ramp")),
    ("L2 penalty (before weighting)", "L2", lambda c: c.startswith("l2") and not c.endswith("_ramp")),
    ("learning rate", "learning rate", lambda c: c == "lr" or c.startswith("lr_") or "learning_rate" in c),
    ("regulariser ramps", "ramp weight (0-1)", lambda c: c.endswith("_ramp")),
    ("sequence-length curriculum", "bins", lambda c: c == "train_bins"),
    ("time per epoch", "seconds", lambda c: c.endswith("seconds")),
    ("other metrics", "value", lambda c: True),
)


def metric_style(column: str, index: int = 0) -> tuple[str, str, str]:
    """(label, colour, dash) of a history column: ``METRIC_STYLES``, else its name and a palette colour."""
    return METRIC_STYLES.get(column, (column, PALETTE[index % len(PALETTE)], "solid"))


def history(history_df: pd.DataFrame) -> go.Figure:
    """Training curves from a tidy DataFrame: an ``epoch`` column plus one column per metric.

    Columns are grouped into panels by unit (``HISTORY_PANELS``: reconstruction NLL with the
    objective, KL, L2, learning rate, ramps, time, others); whatever numeric columns exist are
    drawn, in ``METRIC_STYLES``' colours and labels. A panel uses a log y axis (ticks as powers of
    ten) when all its values are positive and span more than a factor of 10. NaN entries (metrics
    logged only on some epochs) are skipped.
    """
    if not isinstance(history_df, pd.DataFrame):
        raise DataError(f"history_df must be a pandas DataFrame, got {type(history_df).__name__}.")
    if "epoch" not in history_df.columns:
        hint = " It is the index: use history_df.reset_index()." if history_df.index.name == "epoch" else ""
        raise DataError(f"history_df has no 'epoch' column (columns {list(history_df.columns)}).{hint}")
    columns = [c for c in history_df.columns
               if c != "epoch" and pd.api.types.is_numeric_dtype(history_df[c])]
    if not columns:
        raise DataError("history_df has no numeric metric columns besides 'epoch'.")
    panels, left = [], list(columns)
    for title, label, belongs in HISTORY_PANELS:
        mine = [c for c in left if belongs(str(c).lower())]
        if mine:
            panels.append((title, label, mine))
            left = [c for c in left if c not in mine]

    fig = make_subplots(rows=len(panels), cols=1, shared_xaxes=True, vertical_spacing=0.05,
                        subplot_titles=[p[0] for p in panels])
    n_traces = 0
    for row, (_, label, mine) in enumerate(panels, start=1):
        values = []
        for column in mine:
            keep = history_df[column].notna()
            values.append(history_df.loc[keep, column].to_numpy(dtype=float))
            name, colour, dash = metric_style(str(column), n_traces)
            fig.add_trace(go.Scatter(x=history_df.loc[keep, "epoch"], y=values[-1], mode="lines",
                                     name=name, line=dict(color=colour, dash=dash)), row=row, col=1)
            n_traces += 1
        values = np.concatenate(values)
        log = values.size > 0 and values.min() > 0 and values.max() > 10 * values.min()
        fig.update_yaxes(title_text=label + (" (log)" if log else ""), type="log" if log else "linear",
                         exponentformat="power", dtick=1 if log else None, row=row, col=1)
    fig.update_xaxes(title_text="epoch", row=len(panels), col=1)
    fig.update_layout(title="Training history", height=max(300, ROW_HEIGHT * len(panels)),
                      legend=dict(orientation="h", yanchor="top", y=-0.08 / max(1, len(panels) / 4)))
    return fig


def scatter_metric(table: pd.DataFrame, x: str, y: str, color: str | None = None) -> go.Figure:
    """One point per model from a hyperparameter-search table, e.g. validation NLL vs rate R^2.

    ``table``: one row per model; ``x``, ``y``, ``color``: column names. Hovering a point
    shows every column of its row (the hyperparameters and metrics).
    """
    if not isinstance(table, pd.DataFrame):
        raise DataError(f"table must be a pandas DataFrame, got {type(table).__name__}.")
    for column in (x, y, color):
        if column is not None and column not in table.columns:
            raise DataError(f"table has no column {column!r}; columns: {list(table.columns)}.")
    if table.empty:
        raise DataError("table is empty; it needs one row per model.")
    fig = px.scatter(table, x=x, y=y, color=color, hover_data=list(table.columns))
    by = f", colour: {color}" if color else ""
    fig.update_layout(title=f"{y} vs {x}, one point per model ({len(table)} models{by})",
                      xaxis_title=x, yaxis_title=y)
    return fig


# ----------------------------------------------------------------------------- population-based training

def _pbt_history(history: xr.Dataset) -> xr.Dataset:
    if not isinstance(history, xr.Dataset):
        raise DataError(f"history must be the xarray Dataset of a PBT run (PBTResult.history), got {type(history).__name__}.")
    missing = [v for v in ("fitness", "parent") if v not in history]
    if missing or set(history["fitness"].dims) != {"generation", "member"}:
        raise DataError(f"history lacks {missing or 'the (generation, member) dims'}; pass PBTResult.history "
                        "(one row per generation, one column per member).")
    if history.sizes["generation"] == 0:
        raise DataError("history has no generations yet; plot it after the burn-in ends.")
    return history.transpose("generation", "member")


def _pbt_space(history: xr.Dataset) -> dict:
    """name -> {'low', 'high', 'log', ...} of the tuned hyperparameters, from the run's settings."""
    import json

    if "space" not in history.attrs:
        raise DataError("history has no 'space' attribute (the search space of the run); pass PBTResult.history.")
    return {name: hp for name, hp in json.loads(history.attrs["space"]).items() if name in history}


FITNESS_METRICS = {"valid_recon": "validation NLL", "valid_sv_nll": "sample-validation NLL"}


def fitness_label(history: xr.Dataset) -> str:
    """What a PBT run's fitness is, from its settings: e.g. 'sample-validation NLL (smoothed)', or
    'artifact-free validation NLL (trimmed, smoothed)' with ``PBTConfig(fitness_skips_artifacts=True)``."""
    import json

    settings = json.loads(history.attrs.get("pbt_config", "{}"))
    metric = settings.get("metric")
    if not metric:
        return "fitness (smoothed NLL)"
    if settings.get("fitness_skips_artifacts"):
        return f"artifact-free {FITNESS_METRICS.get(metric, 'validation NLL')} (trimmed, smoothed)"
    return f"{FITNESS_METRICS.get(metric, 'validation NLL')} (smoothed)"


GENERATION_TITLE = "generation (0 = burn-in)"


def _generation_axis(generations: np.ndarray) -> dict:
    """x-axis ticks for generations: whole numbers only (about ten at most)."""
    return dict(tickmode="linear", tick0=0, dtick=max(1, math.ceil(len(generations) / 10)))


def _member_colour(member: int) -> str:
    return PALETTE[member % len(PALETTE)]


def pbt_hyperparameters(history: xr.Dataset) -> go.Figure:
    """Each tuned hyperparameter of a PBT run over generations, one line per member.

    ``history``: ``PBTResult.history`` (dims generation x member; generation 0 is the burn-in).
    A value holds for a whole generation, so lines are steps; a jump at a generation is a
    member that copied a better one and explored from its values. Log-scaled hyperparameters
    (as the search space says) get a log y axis, with the search range as its limits.
    """
    history = _pbt_history(history)
    space = _pbt_space(history)
    if not space:
        raise DataError("history holds no tuned hyperparameters.")
    generations = history["generation"].values
    fig = make_subplots(rows=len(space), cols=1, shared_xaxes=True, vertical_spacing=0.04,
                        subplot_titles=list(space))
    for row, (name, hp) in enumerate(space.items(), start=1):
        for member in history["member"].values:
            fig.add_trace(go.Scatter(
                x=generations, y=history[name].sel(member=member).values, mode="lines+markers",
                line=dict(color=_member_colour(int(member)), shape="hv", width=1.5), marker=dict(size=4),
                name=f"member {member}", legendgroup=str(member), showlegend=row == 1,
                hovertemplate=f"member {member}<br>generation %{{x}}<br>{name} %{{y:.3g}}<extra></extra>"),
                row=row, col=1)
        if hp["log"]:
            fig.update_yaxes(type="log", exponentformat="power", range=[np.log10(hp["low"]), np.log10(hp["high"])],
                             title_text=f"{name} (log)", row=row, col=1)
        else:
            fig.update_yaxes(range=[hp["low"], hp["high"]], title_text=name, row=row, col=1)
    fig.update_xaxes(**_generation_axis(generations))
    fig.update_xaxes(title_text=GENERATION_TITLE, row=len(space), col=1)
    fig.update_layout(title=f"Hyperparameters of {history.sizes['member']} PBT members over generations",
                      height=max(300, 170 * len(space)))
    return fig


def pbt_fitness(history: xr.Dataset) -> go.Figure:
    """Fitness (the run's metric, smoothed over epochs, at each generation's end; lower is better)
    of every member of a PBT run, with the best so far in black. The y axis names the metric."""
    history = _pbt_history(history)
    generations = history["generation"].values
    fitness = history["fitness"].values
    fig = go.Figure()
    for j, member in enumerate(history["member"].values):
        fig.add_trace(go.Scatter(x=generations, y=fitness[:, j], mode="lines+markers", name=f"member {member}",
                                 line=dict(color=_member_colour(int(member)), width=1), marker=dict(size=5),
                                 hovertemplate=f"member {member}<br>generation %{{x}}<br>fitness %{{y:.5f}}<extra></extra>"))
    best = np.fmin.accumulate(np.nanmin(np.where(np.isfinite(fitness), fitness, np.nan), axis=1))
    fig.add_trace(go.Scatter(x=generations, y=best, mode="lines", name="best so far",
                             line=dict(color="black", width=3)))
    units = history["fitness"].attrs.get("units", "")
    label = fitness_label(history)
    fig.update_layout(title=f"Fitness of {history.sizes['member']} PBT members per generation (lower is better)",
                      height=460, xaxis_title=GENERATION_TITLE, yaxis_title=f"{label} ({units})" if units else label)
    fig.update_xaxes(**_generation_axis(generations))
    return fig


def pbt_lineage(history: xr.Dataset) -> go.Figure:
    """Who copied whom: one dot per member and generation (coloured by its fitness rank within the
    generation, 1 = best, so every generation shows its own leaders), a line from
    the member each one started the generation from (grey: kept its own weights; red: copied a
    better member), and the ancestry of the best member drawn thick."""
    history = _pbt_history(history)
    generations = history["generation"].values
    members = history["member"].values
    parent = history["parent"].values.astype(int)  # parent[g, i]: whom i copied at the start of g
    fitness = history["fitness"].values
    fig = go.Figure()
    for copied, colour, label in ((False, "#bbbbbb", "kept its weights"), (True, "#d62728", "copied a better member")):
        xs, ys = [], []
        for g in range(1, len(generations)):
            for i in range(len(members)):
                if (parent[g, i] != i) == copied:
                    xs += [generations[g - 1], generations[g], None]
                    ys += [members[parent[g, i]], members[i], None]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line=dict(color=colour, width=1.5 if copied else 1),
                                 name=label, hoverinfo="skip"))
    if np.isfinite(fitness).any():  # the ancestry of the best member at its best generation
        g, i = np.unravel_index(np.nanargmin(np.where(np.isfinite(fitness), fitness, np.nan)), fitness.shape)
        path = [(g, i)]
        while g > 0:
            g, i = g - 1, parent[g, i]
            path.append((g, i))
        path.reverse()
        fig.add_trace(go.Scatter(x=[generations[g] for g, _ in path], y=[members[i] for _, i in path],
                                 mode="lines", line=dict(color="black", width=4), name="ancestry of the best"))
    gg, mm = np.meshgrid(generations, members, indexing="ij")
    rank = pd.DataFrame(fitness).rank(axis=1, method="min", na_option="bottom").to_numpy()  # 1 = best
    fig.add_trace(go.Scatter(
        x=gg.ravel(), y=mm.ravel(), mode="markers", name="member", showlegend=False,
        marker=dict(size=9, color=rank.ravel(), colorscale="Viridis_r", cmin=1, cmax=len(members),
                    colorbar=dict(title="rank in<br>generation", x=1.02, y=0.4, len=0.8),
                    line=dict(width=0.5, color="black")),
        customdata=np.stack([parent.ravel(), fitness.ravel(), rank.ravel()], axis=1),
        hovertemplate="generation %{x}, member %{y}<br>started from member %{customdata[0]}"
                      "<br>fitness %{customdata[1]:.5f} (rank %{customdata[2]})<extra></extra>"))
    fig.update_xaxes(**_generation_axis(generations))
    fig.update_layout(title="PBT lineage: whom each member copied at each generation's start",
                      xaxis_title=GENERATION_TITLE, yaxis_title="member",
                      yaxis=dict(tickmode="array", tickvals=members.tolist()),
                      legend=dict(orientation="h", y=-0.2))
    return fig


# ----------------------------------------------------------------------------- EMG

def emg_estimates(ds: xr.Dataset, estimates: dict, trial, channels=None, time_range=None) -> go.Figure:
    """Recorded EMG of one trial (grey), its true expected value ``emg_mean_true`` (black, when
    ``ds`` holds it), its artifact entries (red crosses, when ``ds`` holds ``artifact_true``) and
    each estimate in ``estimates`` (name -> (trial, time, neuron) DataArray in the EMG's units),
    one subplot per channel. ``channels``: channel ids (default: the first ``DEFAULT_NEURONS``);
    ``time_range``: (start, stop) in seconds to zoom on, e.g. around an artifact event.
    """
    pick = {"trial": trial, "neuron": channels if channels is not None else ds["neuron"].values[:DEFAULT_NEURONS].tolist()}
    window = slice(*time_range) if time_range is not None else slice(None)

    def view(da: xr.DataArray, name: str) -> xr.DataArray:
        for dim, ids in pick.items():
            da = select_ids(da, dim, ids, name)
        return da.sel(time=window)

    recorded = view(_variable(ds, "emg"), "ds")
    traces = {name: view(da, name) for name, da in estimates.items()}
    for name, da in traces.items():
        _same_time(da, recorded, (name, "emg"))
    truth = view(ds["emg_mean_true"], "ds") if "emg_mean_true" in ds else None
    hits = view(ds["artifact_true"], "ds") > 0 if "artifact_true" in ds else None
    fig = make_subplots(rows=len(pick["neuron"]), cols=1, shared_xaxes=True, vertical_spacing=0.05,
                        subplot_titles=[f"channel {c}" for c in pick["neuron"]])
    time = recorded["time"].values
    for row, channel in enumerate(pick["neuron"], start=1):
        lines = [("recorded EMG", recorded, dict(color="lightgrey")), ("true activation", truth, dict(color="black"))]
        lines += [(name, da, dict(color=PALETTE[k % len(PALETTE)])) for k, (name, da) in enumerate(traces.items())]
        for name, da, line in lines:
            if da is not None:
                fig.add_trace(go.Scatter(x=time, y=da.sel(neuron=channel).values, mode="lines", line=line, name=name,
                                         legendgroup=name, showlegend=row == 1), row=row, col=1)
        if hits is not None and hits.sel(neuron=channel).any():
            hit = hits.sel(neuron=channel).values
            fig.add_trace(go.Scatter(x=time[hit], y=recorded.sel(neuron=channel).values[hit], mode="markers",
                                     marker=dict(color="red", symbol="x", size=7), name="artifact",
                                     legendgroup="artifact", showlegend=row == 1), row=row, col=1)
        fig.update_yaxes(title_text=_with_units("EMG", recorded), row=row, col=1)
    fig.update_xaxes(title_text="time (s)", row=len(pick["neuron"]), col=1)
    fig.update_layout(title=f"EMG and its estimates, {_trial_caption(ds, trial)}",
                      height=max(300, ROW_HEIGHT * len(pick["neuron"])))
    return fig


# ----------------------------------------------------------------------------- speed against accuracy

SCORE_LABELS = {"rate_r2": "rate R² (validation trials)", "bits_per_spike": "bits per spike (validation trials)",
                "state_r2": "state R² (true → inferred)", "latent_r2": "latent R² (inferred → true, held out)"}


def _ticks_1_2_5(low: float, high: float) -> list[float]:
    """Tick values 1, 2, 5 x 10^k covering [low, high] (both > 0), at least two of them."""
    ticks = [m * 10.0**k for k in range(int(np.floor(np.log10(low))) - 1, int(np.ceil(np.log10(high))) + 1)
             for m in (1, 2, 5)]
    inside = [t for t in ticks if low / 2 <= t <= high * 2]
    return inside if len(inside) >= 2 else ticks


def latency_scores(table: pd.DataFrame, score: str = "rate_r2") -> go.Figure:
    """One labelled point per model: a score (``score`` column, e.g. ``rate_r2``) against the CPU
    milliseconds to infer one trial (``latency_ms`` column, log axis with 1-2-5 ticks in ms).
    ``table``: one row per model, indexed by the model's name."""
    if not isinstance(table, pd.DataFrame):
        raise DataError(f"table must be a pandas DataFrame, got {type(table).__name__}.")
    missing = [c for c in ("latency_ms", score) if c not in table.columns]
    if missing or table.empty:
        raise DataError(f"table needs one row per model and the columns 'latency_ms' and {score!r}; "
                        f"missing {missing or 'rows'}.")
    latency = table["latency_ms"].to_numpy(dtype=float)
    if not (np.isfinite(latency).all() and (latency > 0).all()):
        raise DataError("latency_ms must be positive and finite for every model in the table.")
    fig = go.Figure()
    for i, (name, row) in enumerate(table.iterrows()):
        fig.add_trace(go.Scatter(x=[row["latency_ms"]], y=[row[score]], mode="markers+text", text=[str(name)],
                                 textposition="top center", marker=dict(size=14, color=PALETTE[i % len(PALETTE)]),
                                 name=str(name)))
    ticks = _ticks_1_2_5(latency.min(), latency.max())
    fig.update_xaxes(type="log", tickvals=ticks, ticktext=[f"{t:g} ms" for t in ticks],
                     range=[np.log10(latency.min()) - 0.3, np.log10(latency.max()) + 0.3],
                     title="CPU time to infer one trial (ms, log scale; one thread, posterior means)")
    fig.update_yaxes(title=SCORE_LABELS.get(score, score))
    fig.update_layout(title=f"{SCORE_LABELS.get(score, score).split(' (')[0]} against single-trial inference latency",
                      showlegend=False)
    return fig


# ----------------------------------------------------------------------------- latent-state recovery

def state_fit(latents_true: xr.DataArray, inferred: dict, trial, n_dims: int = 3) -> go.Figure:
    """What ``metrics.state_r2`` scores, for one trial and several models: each model's inferred
    state (solid) against its best affine prediction from the TRUE state (dashed).

    ``latents_true`` (trial, time, latent); ``inferred``: {model name: (trial, time, <dim>)}. The
    affine map is fitted over all trials of each model's latents; each model's latents are shown
    on their top ``n_dims`` principal components (over all trials), one row per component and
    one column per model, so a model whose extra dimensions the truth cannot explain shows
    solid lines the dashed ones miss. Titles give each model's state R^2.
    """
    from .metrics import state_r2

    names = list(inferred)
    fig = make_subplots(rows=n_dims, cols=len(names), shared_xaxes=True, vertical_spacing=0.04,
                        horizontal_spacing=0.03,
                        column_titles=[f"{n}: state R² {state_r2(inferred[n], latents_true):.2f}" for n in names])
    for col, name in enumerate(names, start=1):
        da = inferred[name]
        dim = _feature_dim(da, name)
        da = da.transpose("trial", "time", dim)
        true_dim = _feature_dim(latents_true, "latents_true")
        truth = latents_true.sel(trial=da["trial"].values).transpose("trial", "time", true_dim)
        y = da.values.reshape(-1, da.sizes[dim]).astype(float)
        x = np.hstack([truth.values.reshape(-1, truth.shape[-1]).astype(float), np.ones((len(y), 1))])
        centred = y - y.mean(axis=0)
        pcs = np.linalg.svd(centred, full_matrices=False)[2][:n_dims].T  # (dim, n_dims)
        shown = (centred @ pcs).reshape(da.sizes["trial"], da.sizes["time"], -1)
        fitted = ((x @ np.linalg.lstsq(x, y, rcond=None)[0] - y.mean(axis=0)) @ pcs).reshape(shown.shape)
        select_ids(da, "trial", [trial], name)  # a DataError naming the valid ids if the trial is not there
        i = int(np.flatnonzero(da["trial"].values == trial)[0])
        t = da["time"].values
        for k in range(shown.shape[-1]):
            first = col == 1 and k == 0
            fig.add_trace(go.Scatter(x=t, y=shown[i, :, k], mode="lines", line=dict(color=PALETTE[0]),
                                     name="inferred state", legendgroup="inferred", showlegend=first),
                          row=k + 1, col=col)
            fig.add_trace(go.Scatter(x=t, y=fitted[i, :, k], mode="lines", line=dict(color=PALETTE[1], dash="dash"),
                                     name="affine map of the true state", legendgroup="fit", showlegend=first),
                          row=k + 1, col=col)
            if col == 1:
                fig.update_yaxes(title_text=f"PC{k + 1} (a.u.)", row=k + 1, col=1)
    fig.update_xaxes(title_text="time (s)", row=n_dims)
    fig.update_layout(title=f"Inferred state (solid) vs its affine prediction from the true state (dashed), "
                            f"trial {trial}",
                      height=max(300, ROW_HEIGHT * n_dims))
    return fig


def validation_curves(histories: dict) -> go.Figure:
    """Validation NLL per entry against epoch for several models on the same data, one line each,
    with the true rates' NLL (dotted) where the histories have it, and the epochs a curriculum
    trained on fewer bins than whole trials shaded: a curve that is still falling at its last
    epoch belongs to a model that has not finished learning.

    ``histories``: {model name: ``TrainResult.history``} (columns ``epoch``, ``valid_recon``, and
    optionally ``valid_truth_nll`` and ``train_bins``).
    """
    if not isinstance(histories, dict) or not histories:
        raise DataError("histories must be a non-empty dict {model name: TrainResult.history}.")
    for name, h in histories.items():
        if not isinstance(h, pd.DataFrame) or not {"epoch", "valid_recon"} <= set(h.columns):
            raise DataError(f"histories[{name!r}] must be a TrainResult.history with 'epoch' and 'valid_recon' columns.")
    fig = go.Figure()
    for i, (name, h) in enumerate(histories.items()):
        fig.add_trace(go.Scatter(x=h["epoch"] + 1, y=h["valid_recon"], mode="lines", name=name,
                                 line=dict(color=PALETTE[i % len(PALETTE)])))
    first = next(iter(histories.values()))
    if "valid_truth_nll" in first:
        label, colour, dash = METRIC_STYLES["valid_truth_nll"]
        fig.add_hline(y=float(first["valid_truth_nll"].iloc[0]), line=dict(color=colour, dash=dash),
                      annotation_text=label, annotation_position="top right")
    if "train_bins" in first and (first["train_bins"] < first["train_bins"].max()).any():
        last_short = int(first.loc[first["train_bins"] < first["train_bins"].max(), "epoch"].max()) + 1
        fig.add_vrect(x0=0.5, x1=last_short + 0.5, fillcolor="#cccccc", opacity=0.3, line_width=0,
                      annotation_text="curriculum: first bins only", annotation_position="top left")
    low = min(float(h["valid_recon"].min()) for h in histories.values())
    top = max(float(h["valid_recon"].quantile(0.9)) for h in histories.values())
    fig.update_yaxes(title="validation NLL per entry (nats)", range=[low - 0.2 * (top - low), top])
    fig.update_xaxes(title="epoch")
    fig.update_layout(title="Validation NLL of each model, whole trials", legend=dict(orientation="h", y=-0.2))
    return fig


# ----------------------------------------------------------------------------- calcium (RADICaL, tutorial 06)

def calcium_sampling(ds: xr.Dataset, trial, neurons=None, n_frames: int = 5) -> go.Figure:
    """How staggered two-photon sampling sees a few neurons in one trial of a sub-frame calcium
    Dataset (``data_generators.calcium_2p``), zoomed to ``n_frames`` frames in the middle of the
    trial: dashed lines mark the frame boundaries and a shaded band each sub-frame bin at which
    the neuron is read (where its events are not NaN). Per neuron: the fluorescence read there,
    the deconvolved events at the same bins, the true spikes and the true rate (Hz, right axis),
    drawn where ``ds`` holds them (a recording of events alone shows its events and reads).
    ``neurons``: ids, default for each of the first three scan phases its neuron with the most
    event mass in the trial."""
    for name in ("events", "scan_phase"):
        if name not in ds.variables:
            raise DataError(f"ds has no '{name}'; calcium_sampling needs a sub-frame calcium Dataset "
                            "such as data_generators.calcium_2p().")
    if neurons is None:  # per scan phase, the neuron with the most event mass in this trial
        phases = ds["scan_phase"].values
        mass = np.nansum(select_ids(ds, "trial", trial, "ds")["events"].transpose("time", "neuron").values, axis=0)
        neurons = [ds["neuron"].values[np.flatnonzero(phases == p)[np.argmax(mass[phases == p])]].item()
                   for p in np.unique(phases)][:3]
    frame_s, bin_s = float(ds.attrs["frame_s"]), float(ds.attrs["bin_width"])
    total = int(round(ds.sizes["time"] * bin_s / frame_s))
    shown = max(1, min(n_frames, total))
    first = (total - shown) // 2
    start, stop = first * frame_s, (first + shown) * frame_s
    one = select_ids(select_ids(ds, "trial", trial, "ds"), "neuron", neurons, "ds")
    one = one.isel(time=(one["time"].values >= start) & (one["time"].values < stop))
    ms = one["time"].values * 1e3  # bin centres, ms
    fig = make_subplots(rows=len(neurons), cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        specs=[[{"secondary_y": True}]] * len(neurons),
                        subplot_titles=[f"neuron {n}: scan phase {int(one['scan_phase'].sel(neuron=n))}, read in "
                                        f"sub-frame bin {int(one['scan_phase'].sel(neuron=n)) + 1} of each frame"
                                        for n in neurons])
    for row, neuron in enumerate(neurons, start=1):
        legend = row == 1
        n = one.sel(neuron=neuron)
        read = ~np.isnan(n["events"].values)
        if "fluorescence" in one:
            fig.add_trace(go.Scatter(x=ms[read], y=n["fluorescence"].values[read], mode="markers",
                                     marker=dict(color=PALETTE[2], size=9), name="fluorescence read",
                                     legendgroup="f", showlegend=legend), row=row, col=1)
        fig.add_trace(go.Bar(x=ms[read], y=n["events"].values[read], width=0.6 * bin_s * 1e3,
                             marker_color=PALETTE[1], name="deconvolved event", legendgroup="e",
                             showlegend=legend), row=row, col=1)
        if "spikes_true" in one:
            spikes = n["spikes_true"].values
            fig.add_trace(go.Scatter(x=ms[spikes > 0], y=-0.3 * np.ones((spikes > 0).sum()), mode="markers",
                                     marker=dict(symbol="line-ns-open", size=12, color="black"),
                                     name="true spike", legendgroup="s", showlegend=legend), row=row, col=1)
        if "rates_true" in one:
            fig.add_trace(go.Scatter(x=ms, y=n["rates_true"].values, mode="lines",
                                     line=dict(color="grey", dash="dot"), name="true rate (Hz, right axis)",
                                     legendgroup="r", showlegend=legend), row=row, col=1, secondary_y=True)
        # shapes after the traces: plotly skips shapes on a subplot that has no trace yet
        for centre in ms[read]:
            fig.add_vrect(x0=centre - bin_s * 500, x1=centre + bin_s * 500, fillcolor=PALETTE[1], opacity=0.12,
                          line_width=0, row=row, col=1)
        for k in range(first, first + shown + 1):
            fig.add_vline(x=k * frame_s * 1e3, line=dict(color="grey", dash="dash", width=1), row=row, col=1)
        fig.update_yaxes(title_text="spike units", row=row, col=1, secondary_y=False)
        fig.update_yaxes(title_text="Hz", tickformat=".0f", nticks=4, rangemode="tozero", row=row, col=1,
                         secondary_y=True)
    fig.update_xaxes(dtick=bin_s * 1e3, range=[start * 1e3, stop * 1e3])
    fig.update_xaxes(title_text="time (ms)", row=len(neurons), col=1)
    fig.update_layout(title=f"Staggered 2-photon sampling, {_trial_caption(ds, trial)}<br><sup>frames of "
                            f"{frame_s * 1e3:g} ms between dashed lines; each neuron is read once per frame, in "
                            "its shaded sub-frame bin</sup>",
                      height=max(320, ROW_HEIGHT * len(neurons)), barmode="overlay",
                      legend=dict(orientation="h", y=-0.15))
    return fig


# Readable axis and legend labels for the score names the tutorials use.
SCORE_LABELS = {"latent_r2": "latent R² (held-out decoding of the true state)", "rate_r2": "rate R²",
                "lorenz_hz": "latent speed (Lorenz cycles per second)", "session": "session", "method": "method",
                "decoder": "decoder"}


def _categories(values, dim: str) -> list[str]:
    """Tick labels for the values of ``dim``: speeds in Hz, anything else as it is."""
    return [f"{v:g} Hz" if dim == "lorenz_hz" else str(v) for v in values]


def method_scores(scores: xr.Dataset, variable: str = "latent_r2", along: str = "lorenz_hz") -> go.Figure:
    """Scores of methods, one marker per method at each value of ``along`` (e.g. the latent speed,
    or a session), grouped side by side: categories, not a trend, so no line joins them.

    ``scores``: a Dataset with dims (``method``, ``along``) holding ``variable`` (e.g. tutorial
    06's scores over ``lorenz_hz``, tutorial 07's rate R² over ``session``); a Dataset with only
    ``method`` gives one group. The y axis shows every value, negative ones included.
    """
    if variable not in scores:
        raise DataError(f"scores has no {variable!r}; variables: {sorted(scores.data_vars)}.")
    da = scores[variable]
    if "method" not in da.dims:
        raise DataError(f"'{variable}' has dims {da.dims}; it needs a 'method' dim.")
    if along not in da.dims:
        da = da.expand_dims({along: [scores.attrs.get(along, 0)]})
    da = da.sortby(along) if along == "lorenz_hz" else da
    fig = go.Figure()
    for i, method in enumerate(da["method"].values):
        values = da.sel({"method": method})  # not sel(method=...): that is sel's own argument
        fig.add_trace(go.Scatter(x=_categories(values[along].values, along), y=values.values, mode="markers",
                                 name=str(method), marker=dict(color=PALETTE[i % len(PALETTE)], size=11)))
    label, axis = SCORE_LABELS.get(variable, variable), SCORE_LABELS.get(along, along)
    fig.update_layout(title=f"{label.split(' (')[0]} by method and {axis.split(' (')[0]}, validation trials",
                      xaxis_title=axis, yaxis_title=label, scattermode="group",
                      xaxis_type="category")
    return fig


def decoding_scores(latent_r2: xr.DataArray, floor: float = -0.5) -> go.Figure:
    """Decoding scores of several models and decoders per session (tutorial 07): one panel per
    ``method``, one marker per ``decoder`` at each ``session``, grouped. Values below ``floor``
    (a decoder carried to an unrelated space can score -4) are drawn at the floor as a
    down-pointing triangle labelled with the value, so they do not squash the rest."""
    missing = {"method", "decoder", "session"} - set(latent_r2.dims)
    if missing:
        raise DataError(f"latent_r2 needs dims (method, decoder, session); missing {sorted(missing)}.")
    methods = [str(m) for m in latent_r2["method"].values]
    fig = make_subplots(rows=1, cols=len(methods), shared_yaxes=True, subplot_titles=methods,
                        horizontal_spacing=0.04)
    for col, method in enumerate(latent_r2["method"].values, start=1):
        for i, decoder in enumerate(latent_r2["decoder"].values):
            values = latent_r2.sel({"method": method, "decoder": decoder})
            y = values.values.astype(float)
            below = y < floor
            fig.add_trace(go.Scatter(
                x=_categories(values["session"].values, "session"), y=np.where(below, floor, y),
                mode="markers+text", text=[f"{v:.1f}" if b else "" for v, b in zip(y, below)],
                textposition="top center", marker=dict(color=PALETTE[i % len(PALETTE)], size=11,
                                                       symbol=["triangle-down" if b else "circle" for b in below]),
                name=str(decoder), legendgroup=str(decoder), showlegend=col == len(methods),
                hovertemplate="%{x}: R² " + np.char.mod("%.3f", y).astype(object) + "<extra>" + str(decoder) + "</extra>"),
                row=1, col=col)
        fig.update_xaxes(type="category", title_text="session", row=1, col=col)
    top = max(1.0, float(np.nanmax(latent_r2.values)) + 0.05) if np.isfinite(latent_r2.values).any() else 1.0
    fig.update_yaxes(range=[floor - 0.1, top], title_text=SCORE_LABELS["latent_r2"], row=1, col=1)
    fig.update_layout(title=f"Decoding the true network state from each model's factors, validation trials "
                            f"(values below {floor:g} drawn at {floor:g}, labelled)", scattermode="group",
                      legend_title_text="decoder")
    return fig


def session_alignment(curves: xr.DataArray, n_components: int = 3) -> go.Figure:
    """Each session's read-in of its PSTHs (``models.multisession.read_in_psths``: (session,
    condition, time, component)): one panel per component, one colour per session, one line per
    condition. Curves that overlap mean the sessions are mapped into one shared space."""
    missing = {"session", "condition", "time", "component"} - set(curves.dims)
    if missing:
        raise DataError(f"curves needs dims (session, condition, time, component); missing {sorted(missing)}.")
    k = min(n_components, curves.sizes["component"])
    fig = make_subplots(rows=k, cols=1, shared_xaxes=True, subplot_titles=[f"component {i + 1}" for i in range(k)])
    for s, session in enumerate(curves["session"].values):
        for c, condition in enumerate(curves["condition"].values):
            for i in range(k):
                fig.add_trace(go.Scatter(
                    x=curves["time"].values, y=curves.sel(session=session, condition=condition).values[:, i],
                    mode="lines", line=dict(color=PALETTE[s % len(PALETTE)], width=1.5), name=str(session),
                    legendgroup=str(session), showlegend=(c == 0 and i == 0)), row=i + 1, col=1)
    fig.update_xaxes(title_text="time (s)", row=k, col=1)
    fig.update_yaxes(title_text="read-in output (a.u.)")
    fig.update_layout(title="Each session's PSTHs through its own read-in (one line per condition)",
                      height=max(500, 220 * k), legend=dict(orientation="h", y=-0.12))
    return fig


# ----------------------------------------------------------------------------- fixed points (lfads_nb.dynamics)

STABILITY_COLOURS = {"stable": "#2ca02c", "saddle": "#ff7f0e", "unstable": "#d62728"}
MODEL_COLOURS = ("#9467bd", "#1f77b4", "#8c564b", "#e377c2")  # one per model, apart from the stability colours


def fixed_points(model, states: xr.DataArray, found: xr.Dataset, *, basis: PCA | None = None,
                 max_trials: int = 30, n_grid: int = 15, title: str | None = None) -> go.Figure:
    """Fixed points over the trajectories and the flow, in 2-D small multiples of PC space: PC1-PC2
    (left) and PC1-PC3 (right). Grey lines: up to ``max_trials`` trials of ``states`` (trial, time,
    generator); arrows: the autonomous flow in each plane through the states' mean (direction and
    relative speed, scaled to the grid); markers: the fixed points, coloured by stability and
    labelled by their number of unstable directions. ``basis``: the PCA (default: :func:`pca` of
    ``states``, as the explorer's; ``lfads_nb.dynamics``)."""
    basis = basis or pca(states)
    paths = basis.project(np.asarray(states.values, dtype=np.float64)[:max_trials])
    points = basis.project(found["state"].values) if found.sizes["fixed_point"] else np.zeros((0, 3))
    planes = ((0, 1), (0, 2))
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                        subplot_titles=[f"PC{a + 1} vs PC{b + 1}" for a, b in planes])
    everything = np.concatenate([paths.reshape(-1, 3), points])
    for col, (a, b) in enumerate(planes, start=1):
        lo, hi = everything[:, [a, b]].min(axis=0), everything[:, [a, b]].max(axis=0)
        pad = 0.1 * np.maximum(hi - lo, 1e-9)
        extent = np.stack([lo - pad, hi + pad], axis=1)
        for k, path in enumerate(paths):
            fig.add_scatter(x=path[:, a], y=path[:, b], mode="lines", line=dict(color="rgba(120,120,120,0.35)", width=1),
                            name="inferred trajectories", legendgroup="traj", showlegend=col == 1 and k == 0,
                            row=1, col=col)
        _add_flow_arrows(fig, *flow_field(model, basis, (a, b), extent, n_grid), extent, n_grid, col, showlegend=col == 1)
        for kind, colour in STABILITY_COLOURS.items():
            pick = found["stability"].values == kind
            if pick.any():
                fig.add_scatter(x=points[pick, a], y=points[pick, b], mode="markers+text",
                                marker=dict(size=13, color=colour, symbol="x", line=dict(width=1, color="black")),
                                text=[f"{n} unstable" for n in found["n_unstable"].values[pick]],
                                textposition="top center", name=f"{kind} fixed point", legendgroup=kind,
                                showlegend=col == 1, row=1, col=col)
        fig.update_xaxes(title_text=f"PC{a + 1} ({100 * basis.explained[a]:.0f} % var.)", row=1, col=col)
        fig.update_yaxes(title_text=f"PC{b + 1} ({100 * basis.explained[b]:.0f} % var.)", row=1, col=col)
    kind = "map F(g) - g" if found.attrs.get("dynamics") == "map" else "field f(g)"
    fig.update_layout(title=title or f"{found.sizes['fixed_point']} fixed points and the autonomous flow ({kind})",
                      height=520, legend=dict(orientation="h", yanchor="top", y=-0.15))
    return fig


def _add_flow_arrows(fig: go.Figure, u, v, du, dv, extent, n_grid: int, col: int, showlegend: bool) -> None:
    """Arrows as line segments with a head, the longest as long as one grid cell."""
    cell = (extent[:, 1] - extent[:, 0]) / max(n_grid - 1, 1)
    length = np.hypot(du / cell[0], dv / cell[1])
    scale = 0.9 / max(float(length.max()), 1e-300)
    tip_u, tip_v = u + du * scale, v + dv * scale
    xs, ys = [], []
    for x0, y0, x1, y1 in zip(u, v, tip_u, tip_v):
        xs += [x0, x1, None]
        ys += [y0, y1, None]
    fig.add_scatter(x=xs, y=ys, mode="lines", line=dict(color="#1f77b4", width=1), name="flow (zero inputs)",
                    legendgroup="flow", showlegend=showlegend, hoverinfo="skip", row=1, col=col)
    fig.add_scatter(x=tip_u, y=tip_v, mode="markers", marker=dict(size=3, color="#1f77b4"), showlegend=False,
                    hoverinfo="skip", row=1, col=col)


def fixed_points_true_space(latents: xr.DataArray, true_points: np.ndarray, found: dict, *,
                            labels: dict | None = None, max_trials: int = 30,
                            title: str = "Fixed points mapped into the true latent space") -> go.Figure:
    """Found fixed points (``found``: model name -> (P, 3) mapped points) against the true ones
    (black circles) over true trajectories (grey), as 2-D small multiples x-y and x-z. Each model
    keeps one colour and symbol in both panels (``MODEL_COLOURS`` in the order of ``found``);
    ``labels`` (model name -> P strings, e.g. the numbers of unstable directions) are written
    beside its markers."""
    paths = np.asarray(latents.transpose("trial", "time", ...).values[:max_trials], dtype=np.float64)
    names = [str(v) for v in latents[latents.dims[-1]].values]
    planes = ((0, 1), (0, 2))
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                        subplot_titles=[f"{names[a]} vs {names[b]}" for a, b in planes])
    symbols = ("x", "diamond", "square", "triangle-up")
    for col, (a, b) in enumerate(planes, start=1):
        for k, path in enumerate(paths):
            fig.add_scatter(x=path[:, a], y=path[:, b], mode="lines", line=dict(color="rgba(120,120,120,0.3)", width=1),
                            name="true trajectories", legendgroup="traj", showlegend=col == 1 and k == 0, row=1, col=col)
        fig.add_scatter(x=true_points[:, a], y=true_points[:, b], mode="markers", name="true fixed points",
                        marker=dict(size=16, color="rgba(0,0,0,0)", line=dict(width=2.5, color="black")),
                        legendgroup="true", showlegend=col == 1, row=1, col=col)
        for m, (model, points) in enumerate(found.items()):
            points = np.asarray(points).reshape(-1, len(names))
            colour = MODEL_COLOURS[m % len(MODEL_COLOURS)]
            text = (labels or {}).get(model)
            fig.add_scatter(x=points[:, a], y=points[:, b], mode="markers+text" if text is not None else "markers",
                            name=f"found by {model}", text=text, textposition="top right",
                            textfont=dict(color=colour), legendgroup=model, showlegend=col == 1, row=1, col=col,
                            marker=dict(size=10, symbol=symbols[m % len(symbols)], color=colour))
        fig.update_xaxes(title_text=f"{names[a]} (z-scored)", row=1, col=col)
        fig.update_yaxes(title_text=f"{names[b]} (z-scored)", row=1, col=col)
    fig.update_layout(title=title, height=520, legend=dict(orientation="h", yanchor="top", y=-0.15))
    return fig
