"""Look inside a trained model: one view with linked parts, for every data kind and model.

``explore(out, ds)`` shows, for one trial at a time,

- the latent trajectories (factors, NDT latents or generator states) of all trials projected on
  their first three principal components (``lfads_nb.dynamics.pca``, the space the fixed-point
  figure uses), drawn as the PC1-PC2 and PC1-PC3 planes (2-D small multiples: readable as static
  images, unlike a 3-D scene, and drawn without WebGL), the selected trial highlighted and a marker
  at the selected time;
- that trial's recorded data (spikes, EMG or calcium events, as a heatmap over channels and time),
  the model's inferred output for a few channels (rates, EMG or event means) with the truth dotted
  where the data hold it, and its inferred inputs (for a model with a controller);
- a condition and trial picker and a time slider: picking or sliding updates every part at once.

In JupyterLab (a Jupyter frontend with ipywidgets) it is a live ipywidgets + plotly view. Under
papermill or nbclient, in scripts and with ``live=False`` (or ``LFADS_NB_LIVE=0``) it shows the
same parts as static figures of the chosen trial and time, and stores no widget state, so a saved
notebook shows them everywhere; the rule is the training dashboard's (``lfads_nb.dashboard.progress.choose_live``).
"""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import xarray as xr
from plotly.subplots import make_subplots

from ..data import kind_of
from ..dynamics import pca
from ..errors import DataError
from .progress import choose_live

LATENT_VARIABLES = ("factors", "latents", "generator_states")  # the first present is drawn
SELECTED, OTHERS, MARKER = "#d62728", "rgba(140,140,140,0.35)", "black"
PLANES = ((0, 1), (0, 2))  # the PC planes drawn: 2-D small multiples read as static images (and need no WebGL)
WIDGET_WIDTHS = (560, 580)  # pixels of the trajectories and the trial figure, side by side in the live view


def explore(out: xr.Dataset, ds: xr.Dataset, live: bool | None = None, *, trial=None, variable: str | None = None,
            n_channels: int = 3, max_background: int = 60) -> "Explorer":
    """The explorer of ``out`` (``lfads_nb.infer``'s output) on ``ds`` (the data it was inferred from).

    ``live``: True for the widget view, False for static figures, None to decide as the training
    dashboard does. ``trial``: the trial id shown first (default: the first). ``variable``: the
    latent variable of ``out`` to project (default: the first of ``factors``, ``latents``,
    ``generator_states`` it holds). ``n_channels``: channels (neurons, muscles) whose inferred
    output is drawn as lines, the most active ones. ``max_background``: trials drawn in grey behind
    the selected one. Returns an :class:`Explorer`; show it as a cell's last expression.
    """
    return Explorer(out, ds, live=choose_live(live), trial=trial, variable=variable, n_channels=n_channels,
                    max_background=max_background)


class Explorer:
    """Linked views of one trial. :meth:`select` picks a trial, :meth:`set_time` a time bin; both update
    ``trajectories`` (PCA planes) and ``trial_figure`` (data, output, inputs) and, when live, the
    widgets. ``widget`` is the ipywidgets view (None when static); :meth:`figures` the static copies."""

    def __init__(self, out: xr.Dataset, ds: xr.Dataset, *, live: bool, trial, variable, n_channels: int,
                 max_background: int):
        self.kind = kind_of(ds)
        self.out, self.ds = out, ds
        _check_aligned(out, ds, self.kind.output)
        self.variable = variable or next((v for v in LATENT_VARIABLES if v in out.data_vars), None)
        if self.variable not in out.data_vars:
            raise DataError(f"out has no latent trajectories to explore (looked for {variable or LATENT_VARIABLES}; "
                            f"it holds {sorted(out.data_vars)}). Pass lfads_nb.infer's output of an LFADS or NDT model.")
        latents = out[self.variable].transpose("trial", "time", ...)
        self.basis = pca(latents)
        self.paths = self.basis.project(latents.values)  # (trial, time, 3)
        self.trials = out["trial"].values
        self.time = out["time"].values
        self.conditions = ds["condition"].sel(trial=self.trials).values if "condition" in ds.coords else None
        observed = ds[self.kind.variable].sel(trial=self.trials)
        self.channel_dim = observed.dims[-1]
        activity = np.nan_to_num(observed.values).mean(axis=(0, 1))
        self.channels = np.sort(np.argsort(-activity, kind="stable")[:n_channels])
        self.truth = ds[self.kind.truth] if self.kind.truth in ds.data_vars else None
        self.has_inputs = "inputs" in out.data_vars and out.sizes.get("inferred_input", 0) > 0
        self.background = self.trials[np.linspace(0, len(self.trials) - 1, min(max_background, len(self.trials))).astype(int)]
        self.trial = self.trials[0] if trial is None else _known_trial(trial, self.trials)
        self.time_index = 0
        self.live = live
        self._trajectory_title = f"Latent trajectories ({self.variable}, PCA)"
        inputs = "inferred inputs" if self.has_inputs else "no inferred inputs (autonomous model)"
        self._trial_title = f"Data, inferred {self.kind.output}, {inputs}"
        self.trajectories = self._trajectory_figure()
        self.trial_figure = self._trial_figure_for(self.trial)
        if live:  # sized side by side before they become widgets: no updates reach a widget not yet shown
            self.trajectories.layout.width, self.trial_figure.layout.width = WIDGET_WIDTHS
            self.trajectories, self.trial_figure = go.FigureWidget(self.trajectories), go.FigureWidget(self.trial_figure)
        self.widget = self._widgets() if live else None

    # ---- state --------------------------------------------------------------------------------

    def select(self, trial) -> None:
        """Show trial ``trial`` (a trial id) in every part; the time stays."""
        self.trial = _known_trial(trial, self.trials)
        path = self.paths[self._row()]
        with self.trajectories.batch_update():
            for col, (a, b) in enumerate(PLANES, start=1):
                self.trajectories.update_traces(x=path[:, a], y=path[:, b], selector=dict(name="selected trial"),
                                                row=1, col=col)
        fresh = self._trial_figure_for(self.trial)
        with self.trial_figure.batch_update():
            for old, new in zip(self.trial_figure.data, fresh.data):
                old.update(new.to_plotly_json())
        self.set_time(self.time_index)
        if self.widget is not None and self._trial_picker.value != self.trial:
            self._trial_picker.value = self.trial

    def set_time(self, index: int) -> None:
        """Move the time marker of every part to time bin ``index`` (0-based)."""
        if not 0 <= int(index) < len(self.time):
            raise DataError(f"time index {index} is outside the {len(self.time)} bins (0 to {len(self.time) - 1}).")
        self.time_index = int(index)
        point = self.paths[self._row(), self.time_index]
        with self.trajectories.batch_update():
            for col, (a, b) in enumerate(PLANES, start=1):
                self.trajectories.update_traces(x=[point[a]], y=[point[b]], selector=dict(name="time marker"),
                                                row=1, col=col)
            self.trajectories.layout.title.text = self._title(self._trajectory_title)
        t = float(self.time[self.time_index])
        with self.trial_figure.batch_update():
            for shape in self.trial_figure.layout.shapes:
                shape.x0 = shape.x1 = t
            self.trial_figure.layout.title.text = self._title(self._trial_title)
        if self.widget is not None:
            self._time_label.value = f"t = {t:.3f} s"
            if self._slider.value != self.time_index:
                self._slider.value = self.time_index

    def _row(self) -> int:
        return int(np.flatnonzero(self.trials == self.trial)[0])

    def _title(self, what: str) -> str:
        extra = f", condition {self.conditions[self._row()]}" if self.conditions is not None else ""
        return f"{what}: trial {self.trial}{extra}, t = {float(self.time[self.time_index]):.3f} s"

    # ---- figures ------------------------------------------------------------------------------

    def _trajectory_figure(self) -> go.Figure:
        fig = make_subplots(rows=1, cols=len(PLANES), horizontal_spacing=0.14,
                            subplot_titles=[f"PC{a + 1} vs PC{b + 1}" for a, b in PLANES])
        rows = [int(np.flatnonzero(self.trials == t)[0]) for t in self.background]
        path, point = self.paths[self._row()], self.paths[self._row(), self.time_index]
        gaps = np.full((len(rows), 1), np.nan)  # one trace for all background trials, split by NaN
        for col, (a, b) in enumerate(PLANES, start=1):
            first = col == 1
            fig.add_scatter(x=np.hstack([self.paths[rows, :, a], gaps]).ravel(),
                            y=np.hstack([self.paths[rows, :, b], gaps]).ravel(), mode="lines",
                            line=dict(color=OTHERS, width=1), name=f"other trials ({len(rows)})", legendgroup="others",
                            showlegend=first, hoverinfo="skip", row=1, col=col)
            fig.add_scatter(x=path[:, a], y=path[:, b], mode="lines", line=dict(color=SELECTED, width=3),
                            name="selected trial", legendgroup="selected", showlegend=first, row=1, col=col)
            fig.add_scatter(x=[point[a]], y=[point[b]], mode="markers", marker=dict(size=11, color=MARKER),
                            name="time marker", legendgroup="marker", showlegend=first, row=1, col=col)
            for axis, k in (("x", a), ("y", b)):
                getattr(fig, f"update_{axis}axes")(title_text=f"PC{k + 1} ({100 * self.basis.explained[k]:.0f} % var.)",
                                                   row=1, col=col)
        fig.update_layout(title=self._title(self._trajectory_title), height=560,
                          legend=dict(orientation="h", yanchor="top", y=-0.15))
        return fig

    def _trial_figure_for(self, trial) -> go.Figure:
        one_out = self.out.sel(trial=trial)
        observed = self.ds[self.kind.variable].sel(trial=trial).transpose("time", self.channel_dim)
        output = one_out[self.kind.output].transpose("time", ...)
        rows = 3 if self.has_inputs else 2
        titles = [f"recorded {self.kind.variable}", f"inferred {self.kind.output}"
                  + (" (dotted: true)" if self.truth is not None else ""), "inferred inputs"][:rows]
        fig = make_subplots(rows=rows, cols=1, shared_xaxes=True, vertical_spacing=0.08, subplot_titles=titles,
                            row_heights=[0.4, 0.35, 0.25][:rows])
        fig.add_heatmap(x=self.time, y=observed[self.channel_dim].values, z=observed.values.T.astype(np.float32),
                        colorscale="Greys", showscale=False, name=self.kind.variable, row=1, col=1)
        units = output.attrs.get("units", "")
        for k, channel in enumerate(self.channels):
            colour = f"hsl({int(360 * k / max(len(self.channels), 1))},70%,45%)"
            label = f"{self.channel_dim} {observed[self.channel_dim].values[channel]}"
            fig.add_scatter(x=self.time, y=output.values[:, channel], mode="lines", line=dict(color=colour, width=2),
                            name=f"inferred, {label}", legendgroup=label, row=2, col=1)
            if self.truth is not None:
                true = self.truth.sel(trial=trial).transpose("time", ...).values[:, channel]
                fig.add_scatter(x=self.time, y=true, mode="lines", line=dict(color=colour, width=2, dash="dot"),
                                name=f"true, {label}", legendgroup=label, row=2, col=1)
        if self.has_inputs:
            inputs = one_out["inputs"].transpose("time", "inferred_input")
            for k in range(inputs.shape[1]):
                fig.add_scatter(x=self.time, y=inputs.values[:, k], mode="lines", name=f"input {k}", row=3, col=1)
            fig.update_yaxes(title_text="input (a.u.)", row=3, col=1)
        t = float(self.time[self.time_index])
        for row in range(1, rows + 1):
            fig.add_vline(x=t, line=dict(color=MARKER, width=2, dash="dash"), row=row, col=1)
        fig.update_yaxes(title_text=self.channel_dim, row=1, col=1)
        fig.update_yaxes(title_text=f"{self.kind.output} ({units})" if units else self.kind.output, row=2, col=1)
        fig.update_xaxes(title_text="time (s)", row=rows, col=1)
        fig.update_layout(title=self._title(self._trial_title), height=560,
                          legend=dict(orientation="h", yanchor="top", y=-0.12))
        return fig

    def figures(self) -> list[go.Figure]:
        """Static copies of both figures at the current trial and time."""
        return [go.Figure(self.trajectories), go.Figure(self.trial_figure)]

    # ---- widgets --------------------------------------------------------------------------------

    def _widgets(self):
        import ipywidgets as widgets

        conditions = ["all"] + ([str(c) for c in dict.fromkeys(self.conditions)] if self.conditions is not None else [])
        self._condition_picker = widgets.Dropdown(options=conditions, value="all", description="condition")
        self._trial_picker = widgets.Dropdown(options=[(str(t), t) for t in self.trials], value=self.trial,
                                              description="trial")
        self._slider = widgets.IntSlider(value=0, min=0, max=len(self.time) - 1, description="time bin",
                                         continuous_update=True, layout=widgets.Layout(width="420px"))
        self._time_label = widgets.Label(f"t = {float(self.time[0]):.3f} s")

        def on_condition(change):
            keep = self.trials if change["new"] == "all" else self.trials[self.conditions.astype(str) == change["new"]]
            self._trial_picker.options = [(str(t), t) for t in keep]
            if keep[0] != self.trial:
                self.select(keep[0])

        self._condition_picker.observe(on_condition, names="value")
        self._trial_picker.observe(lambda change: change["new"] is not None and self.select(change["new"]), names="value")
        self._slider.observe(lambda change: self.set_time(change["new"]), names="value")
        controls = widgets.HBox([self._condition_picker, self._trial_picker, self._slider, self._time_label])
        views = widgets.HBox([self.trajectories, self.trial_figure], layout=widgets.Layout(width="100%"))
        return widgets.VBox([controls, views])

    def _ipython_display_(self) -> None:
        from IPython.display import display

        if self.widget is not None:
            display(self.widget)
        else:
            for fig in self.figures():
                display(fig)


def _check_aligned(out: xr.Dataset, ds: xr.Dataset, output: str) -> None:
    if output not in out.data_vars:
        raise DataError(f"out has no '{output}' (the inferred output for {kind_of(ds).name} data); pass "
                        "lfads_nb.infer(model, ds) for the same ds.")
    missing = np.setdiff1d(out["trial"].values, ds["trial"].values)
    if len(missing) or out.sizes["time"] != ds.sizes["time"]:
        raise DataError(f"out and ds must share trials and time bins (out has {out.sizes['trial']} trials x "
                        f"{out.sizes['time']} bins, {len(missing)} trial ids not in ds; ds has {ds.sizes['time']} "
                        "bins): pass the Dataset the inference was run on.")


def _known_trial(trial, trials: np.ndarray):
    match = trials[trials == trial] if np.asarray(trial).dtype.kind == trials.dtype.kind else []
    if len(match) == 0:
        raise DataError(f"trial {trial!r} is not in the inferred trials ({trials[:5].tolist()}...); pick one of them.")
    return match[0]
