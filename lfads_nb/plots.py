"""Plotly figures for the tutorials.

Every function returns a ``plotly.graph_objects.Figure`` with a title that says what is
shown and axes labelled with units. Data come in as lfads_nb Datasets / DataArrays and are
selected by coordinate value (a trial id, a neuron id), never by position; an id that does
not exist raises :class:`DataError` naming the valid ones. Figures stay light so notebooks
stay small: one trial at a time, a few neurons, at most ``MAX_TRIALS_3D`` trajectories
unless asked for more.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import xarray as xr
from plotly.subplots import make_subplots

from .data.schema import select_ids, validate
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


def latents_3d(ds: xr.Dataset, trials=None, variable: str = "latents_true",
               color_by: str | None = None) -> go.Figure:
    """3-D latent trajectories, one line per trial, coloured by a per-trial coordinate.

    ``trials``: trial ids (default: the first ``MAX_TRIALS_3D``). ``color_by``: the name of a
    per-trial coordinate; by default ``condition`` where the data have one, else one colour.
    A latent with more than 3 dims is projected onto its top 3 principal components (over the
    shown trials); the title says so and how much variance they keep. A circle marks each
    trial's start.
    """
    da = _variable(ds, variable)
    dim = _feature_dim(da, variable)
    if da.sizes[dim] < 3:
        raise DataError(f"'{variable}' has {da.sizes[dim]} dims along '{dim}'; a 3-D plot needs "
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
    fig = go.Figure()
    shown = set()
    for trial, label, path in zip(da["trial"].values, labels, xyz):
        fig.add_trace(go.Scatter3d(
            x=path[:, 0], y=path[:, 1], z=path[:, 2], mode="lines",
            line=dict(color=colours[label], width=3), legendgroup=str(label),
            name=f"{color_by} {label}" if color_by else "trajectory", showlegend=label not in shown,
            hovertemplate=f"trial {trial}<extra></extra>",
        ))
        shown.add(label)
    fig.add_trace(go.Scatter3d(x=xyz[:, 0, 0], y=xyz[:, 0, 1], z=xyz[:, 0, 2], mode="markers",
                               marker=dict(size=3, color="black"), name="start"))
    fig.update_layout(title=title, scene=dict(xaxis_title=f"{axes[0]} (a.u.)",
                                              yaxis_title=f"{axes[1]} (a.u.)",
                                              zaxis_title=f"{axes[2]} (a.u.)"))
    return fig


# ----------------------------------------------------------------------------- model outputs

def compare_rates(inferred: xr.DataArray, ds: xr.Dataset, trial, neurons=None) -> go.Figure:
    """Inferred vs true rates (Hz) of one trial, one subplot per neuron.

    ``inferred``: (trial, time, neuron) rates in Hz on the time bins of ``ds``, which must
    hold ``rates_true``. ``neurons``: neuron ids (default: the first ``DEFAULT_NEURONS``).
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
        fig.update_yaxes(title_text="rate (Hz)", row=row, col=1)
    fig.update_xaxes(title_text="time (s)", row=len(neurons), col=1)
    fig.update_layout(title=f"Inferred vs true rates, {_trial_caption(ds, trial)}",
                      height=max(300, ROW_HEIGHT * len(neurons)))
    return fig


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

# Panels of the history figure: (title, y-axis label, which columns belong), first match wins.
# Units follow lfads_nb.training: reconstruction NLL per observed entry, KL per trial.
HISTORY_PANELS = (
    ("training objective", "loss", lambda c: c.endswith("loss")),
    ("reconstruction", "NLL per entry (nats)", lambda c: "recon" in c or "nll" in c),
    ("KL divergence", "KL per trial (nats)", lambda c: c.startswith("kl") and not c.endswith("_ramp")),
    ("L2 penalty", "L2", lambda c: c.startswith("l2") and not c.endswith("_ramp")),
    ("learning rate", "learning rate", lambda c: c == "lr" or c.startswith("lr_") or "learning_rate" in c),
    ("regulariser ramps", "ramp weight (0-1)", lambda c: c.endswith("_ramp")),
    ("time per epoch", "seconds", lambda c: c.endswith("seconds")),
    ("other metrics", "value", lambda c: True),
)


def history(history_df: pd.DataFrame) -> go.Figure:
    """Training curves from a tidy DataFrame: an ``epoch`` column plus one column per metric.

    Columns are grouped into panels by name (``HISTORY_PANELS``: objective, reconstruction,
    KL, L2, learning rate, ramps, time, others); whatever numeric columns exist are drawn. A panel uses a log y axis when all
    its values are positive and span more than a factor of 10. NaN entries (metrics logged
    only on some epochs) are skipped.
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
            fig.add_trace(go.Scatter(x=history_df.loc[keep, "epoch"], y=values[-1], mode="lines",
                                     name=str(column), line=dict(color=PALETTE[n_traces % len(PALETTE)])),
                          row=row, col=1)
            n_traces += 1
        values = np.concatenate(values)
        log = values.size > 0 and values.min() > 0 and values.max() > 10 * values.min()
        fig.update_yaxes(title_text=label + (" (log)" if log else ""), type="log" if log else "linear",
                         row=row, col=1)
    fig.update_xaxes(title_text="epoch", row=len(panels), col=1)
    fig.update_layout(title="Training history", height=max(300, ROW_HEIGHT * len(panels)))
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
            fig.update_yaxes(type="log", range=[np.log10(hp["low"]), np.log10(hp["high"])],
                             title_text=f"{name} (log)", row=row, col=1)
        else:
            fig.update_yaxes(range=[hp["low"], hp["high"]], title_text=name, row=row, col=1)
    fig.update_xaxes(title_text="generation (0 = burn-in)", row=len(space), col=1)
    fig.update_layout(title=f"Hyperparameters of {history.sizes['member']} PBT members over generations",
                      height=max(300, 170 * len(space)))
    return fig


def pbt_fitness(history: xr.Dataset) -> go.Figure:
    """Fitness (smoothed validation NLL at each generation's end; lower is better) of every
    member of a PBT run, with the best so far in black."""
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
    fig.update_layout(title=f"Fitness of {history.sizes['member']} PBT members per generation (lower is better)",
                      xaxis_title="generation (0 = burn-in)",
                      yaxis_title=f"smoothed validation NLL ({units})" if units else "smoothed validation NLL")
    return fig


def pbt_lineage(history: xr.Dataset) -> go.Figure:
    """Who copied whom: one dot per member and generation (coloured by fitness), a line from
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
    fig.add_trace(go.Scatter(
        x=gg.ravel(), y=mm.ravel(), mode="markers", name="member", showlegend=False,
        marker=dict(size=9, color=fitness.ravel(), colorscale="Viridis_r",
                    colorbar=dict(title="fitness", x=1.02, y=0.4, len=0.8), line=dict(width=0.5, color="black")),
        customdata=np.stack([parent.ravel(), fitness.ravel()], axis=1),
        hovertemplate="generation %{x}, member %{y}<br>started from member %{customdata[0]}"
                      "<br>fitness %{customdata[1]:.5f}<extra></extra>"))
    fig.update_layout(title="PBT lineage: whom each member copied at each generation's start",
                      xaxis_title="generation (0 = burn-in)", yaxis_title="member",
                      yaxis=dict(tickmode="array", tickvals=members.tolist()),
                      legend=dict(orientation="h", y=-0.2))
    return fig


# ----------------------------------------------------------------------------- calcium (RADICaL, tutorial 06)

def calcium_sampling(ds: xr.Dataset, trial, neurons=None) -> go.Figure:
    """How staggered two-photon sampling sees a few neurons in one trial of a sub-frame calcium
    Dataset (``data_generators.calcium_2p``): per neuron, the true rate (Hz, right axis), the
    spikes, the fluorescence read once per frame at the neuron's scan phase, and the
    deconvolved events at the same sub-frame bins. Grey bands mark the frames.
    ``neurons``: ids, default the first three with different scan phases."""
    for name in ("events", "fluorescence", "scan_phase"):
        if name not in ds.variables:
            raise DataError(f"ds has no '{name}'; calcium_sampling needs a sub-frame calcium Dataset "
                            "such as data_generators.calcium_2p().")
    if neurons is None:
        phases = ds["scan_phase"].values
        neurons = [ds["neuron"].values[np.flatnonzero(phases == p)[0]].item() for p in np.unique(phases)][:3]
    one = select_ids(select_ids(ds, "trial", trial, "ds"), "neuron", neurons, "ds")
    time = one["time"].values
    frame_s = float(ds.attrs["frame_s"])
    fig = make_subplots(rows=len(neurons), cols=1, shared_xaxes=True, vertical_spacing=0.07,
                        specs=[[{"secondary_y": True}]] * len(neurons),
                        subplot_titles=[f"neuron {n}, scan phase {int(one['scan_phase'].sel(neuron=n))}"
                                        for n in neurons])
    for row, neuron in enumerate(neurons, start=1):
        first = row == 1
        n = one.sel(neuron=neuron)
        for k in range(0, int(round(time[-1] / frame_s)) + 1, 2):
            fig.add_vrect(x0=k * frame_s, x1=(k + 1) * frame_s, fillcolor="lightgrey", opacity=0.3,
                          line_width=0, row=row, col=1)
        read = ~np.isnan(n["fluorescence"].values)
        fig.add_trace(go.Scatter(x=time[read], y=n["fluorescence"].values[read], mode="lines+markers",
                                 line=dict(color=PALETTE[2]), name="fluorescence (one read per frame)",
                                 legendgroup="f", showlegend=first), row=row, col=1)
        fig.add_trace(go.Bar(x=time[read], y=n["events"].values[read], width=0.6 * float(ds.attrs["bin_width"]),
                             marker_color=PALETTE[1], name="deconvolved events", legendgroup="e",
                             showlegend=first), row=row, col=1)
        if "spikes_true" in one:
            spikes = n["spikes_true"].values
            fig.add_trace(go.Scatter(x=time[spikes > 0], y=-0.3 * np.ones((spikes > 0).sum()), mode="markers",
                                     marker=dict(symbol="line-ns-open", size=10, color="black"),
                                     name="true spikes", legendgroup="s", showlegend=first), row=row, col=1)
        if "rates_true" in one:
            fig.add_trace(go.Scatter(x=time, y=n["rates_true"].values, mode="lines",
                                     line=dict(color="grey", dash="dot"), name="true rate (Hz, right axis)",
                                     legendgroup="r", showlegend=first), row=row, col=1, secondary_y=True)
        fig.update_yaxes(title_text="spike amplitudes", row=row, col=1, secondary_y=False)
        fig.update_yaxes(title_text="Hz", row=row, col=1, secondary_y=True)
    fig.update_xaxes(title_text="time (s)", row=len(neurons), col=1)
    fig.update_layout(title=f"Staggered 2-photon sampling, {_trial_caption(ds, trial)} "
                            f"(frames of {frame_s * 1e3:g} ms, shaded every other)",
                      height=max(320, ROW_HEIGHT * len(neurons)), barmode="overlay")
    return fig


def method_scores(scores: xr.Dataset, variable: str = "state_r2", along: str = "lorenz_hz") -> go.Figure:
    """Scores of methods, one line per method against ``along`` (e.g. latent speed in Hz).

    ``scores``: a Dataset with dims (``method``, ``along``) holding ``variable`` (e.g. the
    tutorial 06 scores of several runs concatenated along ``lorenz_hz``); a Dataset with only
    ``method`` gives one point per method.
    """
    if variable not in scores:
        raise DataError(f"scores has no {variable!r}; variables: {sorted(scores.data_vars)}.")
    da = scores[variable]
    if "method" not in da.dims:
        raise DataError(f"'{variable}' has dims {da.dims}; it needs a 'method' dim.")
    if along not in da.dims:
        da = da.expand_dims({along: [scores.attrs.get(along, 0)]})
    fig = go.Figure()
    for i, method in enumerate(da["method"].values):
        line = da.sel({"method": method}).sortby(along)  # not sel(method=...): that is sel's own argument
        fig.add_trace(go.Scatter(x=line[along].values, y=line.values, mode="lines+markers",
                                 name=str(method), line=dict(color=PALETTE[i % len(PALETTE)])))
    fig.update_layout(title=f"{variable} by method against {along} (held-out trials)",
                      xaxis_title=along, yaxis_title=variable)
    return fig
