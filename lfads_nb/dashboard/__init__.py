"""Training progress: a live dashboard in JupyterLab, concise text everywhere else.

The training loop talks to a :class:`Progress`::

    progress.start(max_epochs)
    for each epoch:
        for each batch:
            ...
            if progress.stop_requested:   # polled after every batch
                break                     # training ends cleanly, the best checkpoint is kept
        progress.update(row, example)     # once per epoch
    progress.finish(history, message)

``row`` holds ``'epoch'`` (the 0-based epoch index; everything shown counts from 1, so the
row with ``'epoch': 11`` is "epoch 12/100") and that epoch's metrics (``train_loss``,
``train_recon``, ``valid_recon``, ``valid_recon_smoothed``, ``valid_sv_nll``, ``kl_ic``,
``kl_co``, ``l2``, ``kl_ramp``, ``l2_ramp``, ``lr``, ``valid_truth_nll``; absent keys are simply not shown, NaN is
allowed). ``example`` is None or one trial's rates (see :meth:`Progress.update`). ``history``
is the tidy table of all rows, one per epoch.

Two implementations, chosen by :func:`make_progress`:

- :class:`LiveDashboard`: ipywidgets and plotly ``FigureWidget``s updated while the cell runs
  (loss curves, ramps and learning rate, one trial's inferred vs true rates, a status line and
  a Stop button). When training ends the widgets are closed and replaced, in the same output, by
  static figures, so a saved notebook shows the run instead of "Error displaying widget".
- :class:`TextProgress`: one flushed line every few epochs and a static plotly figure of the
  history at the end; no widgets, so notebooks executed by papermill or CI store no widget state.

Which one (``make_progress(live=None)``): an explicit ``live`` wins; then the environment
variable ``LFADS_NB_LIVE`` ('1' live, '0' text); otherwise live only in a Jupyter frontend
session, that is an IPython kernel whose environment has ``JPY_SESSION_NAME``, which
jupyter_server sets (to the notebook's path) for every kernel it starts for JupyterLab or
Notebook, and only when ipywidgets imports. Kernels started by papermill (through nbclient and
jupyter_client) have ``JPY_PARENT_PID`` but no ``JPY_SESSION_NAME``, so papermill, CI and plain
scripts get text without being told. Other frontends (VS Code) need ``LFADS_NB_LIVE=1``; a
papermill run started from inside a notebook cell inherits ``JPY_SESSION_NAME`` and needs
``LFADS_NB_LIVE=0``.

How the Stop button reaches a running loop
------------------------------------------
A click travels as a ``comm_msg`` on the kernel's shell channel. ipykernel handles shell
messages one at a time on the main thread's event loop, and that loop is blocked while a cell
runs, so a click would normally be handled only after training ended. ipykernel 7 reads the
shell socket in a "shell channel" thread and forwards every message for the main shell to the
main thread over an inproc socket, where a ``ZMQStream`` hands it to ``kernel.shell_main``, which
waits for ``kernel._main_asyncio_lock`` (held by the running cell) before it dispatches.
(jupyter-ui-poll, the usual fix, calls ``kernel.do_one_iteration()``, which ipykernel 7.4 no
longer has: it swallows the AttributeError and the click never arrives.)

:func:`handle_widget_messages` (called by :attr:`LiveDashboard.stop_requested` at most every
0.2 s) reads whatever is waiting on that main-thread socket without blocking, from the main
thread that owns it:

- ``comm_open``/``comm_msg``/``comm_close`` are deserialized and passed straight to the comm
  manager's handler (a plain function, as ipykernel itself does for comms that arrive while an
  async cell holds the lock), with the kernel's parent header set to the comm message and put
  back afterwards, so the cell's own output still goes to the cell. The button's handler runs
  there and sets the stop flag.
- Anything else (the next cell's ``execute_request``, completion or inspection requests) is
  never dispatched here: it is handed back unread to the stream's own callback through
  ``io_loop.add_callback``, so when the loop regains control it goes through ``shell_main``
  exactly as if it had just arrived, queues on the same asyncio lock (first come, first served,
  behind the running cell) and runs after the cell. The next cell therefore cannot run inside
  this one. (jupyter-ui-poll reaches the same end differently: it swaps the kernel's
  ``execute_request`` handler for one that stores requests, and replays them after the cell's
  ``post_run_cell`` event.)

Only the header is peeked at first (``Session.deserialize(content=False)`` leaves the signature
unrecorded, so the kernel's later full deserialization does not reject it as a replay).
ipykernel 6 (6.29) has no shell channel thread: the main thread reads ``kernel.shell_stream``
itself, and the same steps apply to that stream (its callback queues the message behind the
running cell). Outside a kernel or off the main thread it does nothing.
"""
from __future__ import annotations

import html
import json
import math
import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..errors import ConfigError, DataError

# (row key, panel) of the curves figure, panels by unit: reconstruction NLL per entry (1), KL per
# trial before weighting (2), L2 before weighting (3), ramps (4, left) and learning rate (4, right,
# log). Labels and colours are lfads_nb.plots.METRIC_STYLES, the same in every figure.
CURVE_PANELS = (
    ("valid_truth_nll", 1), ("train_loss", 1), ("train_recon", 1), ("valid_recon", 1),
    ("valid_recon_smoothed", 1), ("valid_sv_nll", 1),
    ("kl_ic", 2), ("kl_co", 2), ("l2", 3), ("kl_ramp", 4), ("l2_ramp", 4), ("lr", 4),
)
# (label, row key) of the one-line summary, in order.
SUMMARY_FIELDS = (("train", "train_recon"), ("valid", "valid_recon"), ("sv", "valid_sv_nll"))


# ---------------------------------------------------------------------------------------------
# The protocol, and the summary both implementations print
# ---------------------------------------------------------------------------------------------

class Progress:
    """What the training loop reports to. This base class is silent and never asks to stop.

    Subclasses override :meth:`start`, :meth:`update`, :attr:`stop_requested` and
    :meth:`finish`; the helpers :meth:`summary` and :meth:`best_valid` work on ``self.rows``.
    """

    def __init__(self) -> None:
        self.max_epochs = 0
        self.rows: list[dict[str, float]] = []
        self.started = time.monotonic()

    def start(self, max_epochs: int) -> None:
        """Training begins; it runs at most ``max_epochs`` epochs."""
        self.max_epochs = int(max_epochs)
        self.rows = []
        self.started = time.monotonic()

    def update(self, row: dict[str, float], example: dict | None) -> None:
        """One epoch ended.

        ``row``: ``'epoch'`` (0-based index) and metrics (see the module docstring).
        ``example``: None or ``{'trial': id, 'time': (T,) s, 'neurons': K labels,
        'rates': (T, K) inferred Hz, 'rates_true': (T, K) Hz or None, 'spikes': (T, K) counts}``.
        """
        self.rows.append({k: float(v) for k, v in row.items()})

    @property
    def stop_requested(self) -> bool:
        """Polled after every batch; True ends training cleanly (the best checkpoint is kept)."""
        return False

    def finish(self, history, message: str) -> None:
        """Training ended (``history``: pandas DataFrame, one row per epoch) for ``message``'s reason."""

    def elapsed(self) -> float:
        """Seconds since :meth:`start`."""
        return time.monotonic() - self.started

    def best_valid(self) -> tuple[float, int] | None:
        """(lowest ``valid_recon`` so far, its row's 0-based ``'epoch'``), or None before any finite value."""
        scored = [(r["valid_recon"], int(r["epoch"])) for r in self.rows if math.isfinite(r.get("valid_recon", math.nan))]
        return min(scored) if scored else None

    def summary(self, row: Mapping[str, float], sep: str = "  ") -> str:
        """``epoch 12/100  train 0.412  valid 0.437  lr 4.0e-03  elapsed 0:42`` for ``row``.

        ``train``/``valid``/``sv`` are the reconstruction NLLs (``train_recon``, ``valid_recon``,
        ``valid_sv_nll``); fields whose key the row lacks are left out.
        """
        parts = [f"epoch {int(row['epoch']) + 1}/{self.max_epochs}"]
        parts += [f"{label} {row[key]:.4g}" for label, key in SUMMARY_FIELDS if key in row]
        if "lr" in row:
            parts.append(f"lr {row['lr']:.1e}")
        parts.append(f"elapsed {_clock(self.elapsed())}")
        return sep.join(parts)


def _clock(seconds: float) -> str:
    """0:42, 12:05 or 1:02:03."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


# ---------------------------------------------------------------------------------------------
# Figures (shared by the live dashboard and the static summary)
# ---------------------------------------------------------------------------------------------

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
    keep = _thin(len(epochs), max_points)
    for trace, (key, _) in zip(fig.data, CURVE_PANELS):
        if key in columns:
            trace.update(x=epochs[keep], y=np.asarray(columns[key], dtype=float)[keep], showlegend=True)


def _thin(n: int, max_points: int) -> np.ndarray:
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


# ---------------------------------------------------------------------------------------------
# Text progress (papermill, CI, scripts)
# ---------------------------------------------------------------------------------------------

class TextProgress(Progress):
    """One concise line every ``every`` epochs (default: about 20 lines per run) and the last,
    flushed; at :meth:`finish` the message and a static plotly figure of the history.

    ``stream``: where lines go (default ``sys.stdout`` at the time of printing). The figure is
    kept as ``self.figure`` and displayed when running in a Jupyter kernel.
    """

    def __init__(self, every: int | None = None, stream=None) -> None:
        super().__init__()
        if every is not None and every < 1:
            raise ConfigError(f"TextProgress(every={every}): print every N >= 1 epochs.")
        self.every, self.stream = every, stream
        self.figure: go.Figure | None = None
        self._printed_epoch: int | None = None

    def _print(self, line: str) -> None:
        print(line, file=self.stream or sys.stdout, flush=True)

    def start(self, max_epochs: int) -> None:
        super().start(max_epochs)
        self._printed_epoch = None

    def update(self, row: dict[str, float], example: dict | None) -> None:
        super().update(row, example)
        done = int(row["epoch"]) + 1
        every = self.every or max(1, math.ceil(self.max_epochs / 20))
        if len(self.rows) == 1 or done % every == 0 or done >= self.max_epochs:
            self._print(self.summary(self.rows[-1]))
            self._printed_epoch = int(row["epoch"])

    def finish(self, history, message: str) -> None:
        if self.rows and self._printed_epoch != int(self.rows[-1]["epoch"]):
            self._print(self.summary(self.rows[-1]))
        best = self.best_valid()
        self._print(message + (f"  (best valid {best[0]:.4g} at epoch {best[1] + 1})" if best else ""))
        self.figure = history_figure(history)
        if _kernel() is not None:
            from IPython.display import display

            display(self.figure)


# ---------------------------------------------------------------------------------------------
# Live dashboard (JupyterLab)
# ---------------------------------------------------------------------------------------------

class _StopButton:
    """A Stop button whose click reaches a loop running in the same cell.

    ``stop_requested`` processes pending widget messages (at most every ``poll_interval``
    seconds), as the module docstring explains, so the click is seen while the cell runs.
    """

    poll_interval = 0.2  # seconds between looks for a click

    def _make_stop_button(self, tooltip: str) -> None:
        import ipywidgets as widgets

        self.button = widgets.Button(description="Stop", icon="stop", button_style="danger", tooltip=tooltip)
        self.button.on_click(self._on_stop)
        self._stop = False
        self._last_poll = -math.inf
        self._handle = None  # the dashboard's display, replaced by static copies at the end

    def _on_stop(self, _button) -> None:
        self._stop = True
        self.button.disabled = True
        self.button.description = "Stopping"

    @property
    def stop_requested(self) -> bool:
        now = time.monotonic()
        if not self._stop and now - self._last_poll >= self.poll_interval:
            self._last_poll = now
            handle_widget_messages()
        return self._stop

    def _finish_button(self) -> None:
        self.button.disabled = True
        self.button.description = "Stopped" if self._stop else "Done"

    def _show(self) -> None:
        """Display ``self.widget`` in the running cell (widgets render only in a kernel)."""
        self._handle = None
        if _kernel() is not None:
            from IPython.display import display

            self._handle = display(self.widget, display_id=True)

    def _leave_static(self, status: str, *figures: go.Figure) -> None:
        """Put static figures where the widgets were and close the widgets.

        A saved notebook keeps no widget state, so a widget left in a cell reads "Error displaying
        widget: model not found" when reopened. The first figure replaces the dashboard's output
        in place (same display id), the others follow it, with the status line as text; each
        carries a static copy (lfads_nb.display).
        """
        from ..display import StaticCopyRenderer

        if self._handle is not None:
            from IPython.display import display

            bundles = [StaticCopyRenderer().to_mimebundle(fig.to_dict()) for fig in figures]
            self._handle.update({"text/plain": status}, raw=True)
            for bundle in bundles:
                display(bundle, raw=True)
        for widget in self._widgets():
            widget.close()


class LiveDashboard(_StopButton, Progress):
    """Widgets that update while training runs: status line and Stop button, training curves,
    and one example trial's rates (first ``example_neurons`` neurons of the example).

    Each :meth:`update` is one ``batch_update`` per figure; curves keep at most ``max_points``
    points per trace. ``self.widget`` is the whole dashboard (displayed by :meth:`start` when
    running in a Jupyter kernel).
    """

    def __init__(self, example_neurons: int = 3, max_points: int = 1000) -> None:
        import ipywidgets as widgets

        super().__init__()
        if example_neurons < 1 or max_points < 2:
            raise ConfigError(
                f"LiveDashboard(example_neurons={example_neurons}, max_points={max_points}): "
                "show at least 1 neuron and keep at least 2 points per curve."
            )
        self.max_points = max_points
        self.curves = curves_figure(widget=True)
        self.example = example_figure(example_neurons, widget=True)
        self.status = widgets.HTML("waiting for the first epoch")
        self._make_stop_button("End training after this batch; the best checkpoint is kept")
        self.widget = widgets.VBox([widgets.HBox([self.button, self.status]), self.curves, self.example])

    def start(self, max_epochs: int) -> None:
        super().start(max_epochs)
        self._stop = False
        self.button.disabled, self.button.description = False, "Stop"
        self.status.value = f"training: up to {self.max_epochs} epochs"
        self._show()

    def update(self, row: dict[str, float], example: dict | None) -> None:
        super().update(row, example)
        with self.curves.batch_update():
            set_curves(self.curves, _columns(self.rows), self.max_points)
        if example is not None:
            with self.example.batch_update():
                set_example(self.example, example)
        self.status.value = self._status_html(self.summary(self.rows[-1], sep=" · "))

    def _status_html(self, text: str) -> str:
        best = self.best_valid()
        if best is not None:
            text += f" · best valid {best[0]:.4g} (epoch {best[1] + 1})"
        return f"<code>{html.escape(text)}</code>"

    def finish(self, history, message: str) -> None:
        """Draw the whole run, then replace the widgets with static copies (see ``_leave_static``)."""
        if len(history):  # the whole run, including epochs from before a resume
            with self.curves.batch_update():
                set_curves(self.curves, {k: history[k].to_numpy(dtype=float) for k in history.columns},
                           self.max_points)
        last = f"{self.summary(self.rows[-1], sep=' · ')} · " if self.rows else ""
        self.status.value = self._status_html(f"{last}{message}")
        self._finish_button()
        best = self.best_valid()
        status = f"{last}{message}" + (f" · best valid {best[0]:.4g} (epoch {best[1] + 1})" if best else "")
        self._leave_static(status, go.Figure(self.curves), go.Figure(self.example))

    def _widgets(self):
        return (self.button, self.status, self.curves, self.example, *self.widget.children, self.widget)


def _columns(rows: Sequence[Mapping[str, float]]) -> dict[str, np.ndarray]:
    """Row dicts -> key -> values per row (NaN where a row lacks the key)."""
    keys = dict.fromkeys(k for row in rows for k in row)
    return {k: np.array([row.get(k, math.nan) for row in rows], dtype=float) for k in keys}


# ---------------------------------------------------------------------------------------------
# Widget messages while a cell runs (see the module docstring)
# ---------------------------------------------------------------------------------------------

_COMM_MESSAGES = frozenset({"comm_open", "comm_msg", "comm_close"})


def _kernel():
    """The running IPython kernel, or None (plain Python, terminal IPython)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return getattr(shell, "kernel", None)


def handle_widget_messages() -> int:
    """Handle the widget (comm) messages that reached the kernel while the current cell runs.

    Returns how many were handled. Other shell messages are handed back to the kernel, which
    runs them after the current cell. Does nothing outside a kernel or off the main thread.
    """
    kernel = _kernel()
    if kernel is None or threading.current_thread() is not threading.main_thread():
        return 0
    channel_thread = getattr(kernel, "shell_channel_thread", None)
    if channel_thread is not None:  # ipykernel 7: messages for the main shell come over inproc
        stream = channel_thread.manager.get_shell_channel_to_subshell_pair(None).to_stream
    else:
        stream = getattr(kernel, "shell_stream", None)
    if stream is None or stream.socket is None:
        return 0
    import zmq

    handled = 0
    while True:
        try:
            frames = stream.socket.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return handled
        msg_type, idents, parts = _peek(kernel.session, frames)
        if msg_type in _COMM_MESSAGES:
            _handle_comm(kernel, stream, idents, parts)
            handled += 1
        else:  # back to the kernel's own path: it waits for this cell, then runs
            kernel.io_loop.add_callback(stream._recv_callback, frames)


def _peek(session, frames):
    """(msg_type, idents, frames after the delimiter); msg_type None if not a regular message."""
    try:
        idents, parts = session.feed_identities(frames, copy=False)
        return session.deserialize(parts, content=False, copy=False)["header"]["msg_type"], idents, parts
    except Exception:  # e.g. ipykernel's one-frame "stop aborting" marker: the kernel handles it
        return None, None, None


def _handle_comm(kernel, stream, idents, parts) -> None:
    """Run one comm message's handler now, as ipykernel does for comms during an async cell."""
    try:
        msg = kernel.session.deserialize(parts, content=True, copy=False)
    except Exception:
        kernel.log.error("Invalid comm message", exc_info=True)
        return
    parent, parent_ident = kernel.get_parent("shell"), kernel._parent_ident["shell"]
    kernel.set_parent(idents, msg, channel="shell")
    try:
        kernel.shell_handlers[msg["header"]["msg_type"]](stream, idents, msg)
    finally:
        kernel.set_parent(parent_ident, parent, channel="shell")


# ---------------------------------------------------------------------------------------------
# Choosing one
# ---------------------------------------------------------------------------------------------

def in_jupyter_frontend() -> bool:
    """True inside a kernel that jupyter_server started (JupyterLab, Notebook), which is where
    widgets render; False in papermill and nbclient kernels, terminal IPython and scripts."""
    return _kernel() is not None and bool(os.environ.get("JPY_SESSION_NAME"))


def make_progress(live: bool | None = None) -> Progress:
    """The live dashboard or text progress: ``live`` True/False wins; None decides by
    ``LFADS_NB_LIVE`` ('1'/'0'), else live only in a Jupyter frontend with ipywidgets."""
    if live is None:
        switch = os.environ.get("LFADS_NB_LIVE", "").strip()
        if switch not in ("", "0", "1"):
            raise ConfigError(f"LFADS_NB_LIVE={switch!r}: set it to '1' (live dashboard) or '0' (text), or unset it.")
        live = switch == "1" if switch else in_jupyter_frontend() and _widgets_available()
    return LiveDashboard() if live else TextProgress()


def _widgets_available() -> bool:
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Population-based training (lfads_nb.tune.pbt.pbt)
# ---------------------------------------------------------------------------------------------

class PBTProgress:
    """What :func:`lfads_nb.tune.pbt.pbt` reports to. This base class is silent and never asks to stop.

    The PBT loop calls :meth:`epoch` after every epoch, :meth:`generation` after every
    generation, polls :attr:`stop_requested` after every training step, and calls
    :meth:`finish` once at the end. Epochs count from 1 across the whole run; generation 0 is
    the burn-in. The clock starts at the first epoch.
    """

    def __init__(self) -> None:
        self.started: float | None = None

    def epoch(self, generation: int, epoch: int, metrics: Mapping[str, np.ndarray]) -> None:
        """Epoch ``epoch`` of generation ``generation`` ended. ``metrics``: name -> (P,) values per
        member: ``valid_recon``, ``valid_sv_nll``, ``train_loss`` and ``fitness`` (the run's metric,
        smoothed over epochs, what members are judged by; NaN for a diverged member)."""
        if self.started is None:
            self.started = time.monotonic()

    def generation(self, history) -> None:
        """A generation ended; ``history`` is the run's Dataset (generation x member) so far."""

    @property
    def stop_requested(self) -> bool:
        """Polled after every training step; True ends the run after saving (see ``pbt``)."""
        return False

    def finish(self, history, message: str) -> None:
        """The run ended (``history`` as in :meth:`generation`) for ``message``'s reason."""

    def elapsed(self) -> float:
        """Seconds since the first epoch ended (0 before)."""
        return 0.0 if self.started is None else time.monotonic() - self.started


def _best_line(history) -> str:
    """'generation 3 (epoch 80): best fitness 0.41234 (member 5: lr 0.0031 dropout 0.21 ...); 4 members replaced'."""
    last = history.isel(generation=-1)
    fitness = last["fitness"].values
    head = f"generation {int(last['generation'])} (epoch {int(last['end_epoch'])})"
    if not np.isfinite(fitness).any():
        return f"{head}: every member diverged"
    i = int(np.nanargmin(fitness))
    space = json.loads(history.attrs.get("space", "{}"))  # the tuned hyperparameters
    hps = " ".join(f"{name} {float(last[name][i]):.3g}" for name in space if name in history)
    replaced = int((last["parent"].values != np.arange(len(fitness))).sum())
    return f"{head}: best fitness {fitness[i]:.5f} (member {i}: {hps}); {replaced} members started from a better one"


class PBTTextProgress(PBTProgress):
    """One flushed line per generation (its best member and how many members were replaced) and,
    at :meth:`finish`, the message and a static fitness figure (``self.figure``; displayed when
    running in a Jupyter kernel). ``stream``: where lines go (default ``sys.stdout``)."""

    def __init__(self, stream=None) -> None:
        super().__init__()
        self.stream = stream
        self.figure: go.Figure | None = None

    def _print(self, line: str) -> None:
        print(line, file=self.stream or sys.stdout, flush=True)

    def generation(self, history) -> None:
        self._print(f"{_best_line(history)}  elapsed {_clock(self.elapsed())}")

    def finish(self, history, message: str) -> None:
        from ..plots import pbt_fitness

        self._print(message)
        if history.sizes.get("generation", 0):
            self.figure = pbt_fitness(history)
            if _kernel() is not None:
                from IPython.display import display

                display(self.figure)


class PBTLiveDashboard(_StopButton, PBTProgress):
    """Widgets that update while PBT runs: a status line and Stop button, every member's fitness
    after every epoch (dotted lines mark generation ends), and after every generation the
    hyperparameter trajectories and the lineage (``lfads_nb.plots.pbt_hyperparameters`` /
    ``pbt_lineage``). Fitness curves keep at most ``max_points`` points per member.

    ``self.widget`` is the whole dashboard, displayed at the first epoch when running in a
    Jupyter kernel. Stop ends the current generation after the running training step; the run
    records and saves it and returns the best member so far.
    """

    def __init__(self, max_points: int = 500) -> None:
        import ipywidgets as widgets

        super().__init__()
        if max_points < 2:
            raise ConfigError(f"PBTLiveDashboard(max_points={max_points}): keep at least 2 points per curve.")
        self.max_points = max_points
        self.status = widgets.HTML("waiting for the first epoch")
        self._make_stop_button("End PBT after this training step: the generation is saved, "
                               "the best member so far is returned")
        self.fitness = go.FigureWidget(layout=dict(
            height=320, margin=dict(l=60, r=20, t=40, b=40), template="plotly_white",
            title=dict(text="fitness per member (lower is better)", font=dict(size=13)),
            xaxis_title="epoch", yaxis_title="fitness"))
        self.generations = widgets.VBox([])  # hyperparameters and lineage, replaced every generation
        self.widget = widgets.VBox([widgets.HBox([self.button, self.status]), self.fitness, self.generations])
        self.epochs: list[int] = []
        self.values: list[np.ndarray] = []  # fitness per member, one array per epoch

    def epoch(self, generation: int, epoch: int, metrics: Mapping[str, np.ndarray]) -> None:
        if self.started is None:
            self._show()
        super().epoch(generation, epoch, metrics)
        fitness = np.asarray(metrics["fitness"], dtype=float)
        self.epochs.append(int(epoch))
        self.values.append(fitness)
        keep = _thin(len(self.epochs), self.max_points)
        x, y = np.asarray(self.epochs)[keep], np.asarray(self.values)[keep]
        with self.fitness.batch_update():
            for member in range(len(self.fitness.data), len(fitness)):  # traces appear with the first epoch
                self.fitness.add_scatter(name=f"member {member}", mode="lines", line=dict(width=1.5))
            for member, trace in enumerate(self.fitness.data):
                trace.update(x=x, y=y[:, member])
        finite = np.isfinite(fitness)
        best = f" · best fitness {np.nanmin(fitness):.5f} (member {int(np.nanargmin(fitness))})" if finite.any() else ""
        self.status.value = self._status_html(f"generation {generation} · epoch {epoch}{best}")

    def _status_html(self, text: str) -> str:
        return f"<code>{html.escape(f'{text} · elapsed {_clock(self.elapsed())}')}</code>"

    def generation(self, history) -> None:
        from ..plots import fitness_label, pbt_hyperparameters, pbt_lineage

        self.fitness.layout.title.text = f"fitness per member: {fitness_label(history)}, lower is better"
        self.fitness.layout.yaxis.title.text = fitness_label(history)
        self.fitness.add_vline(x=int(history["end_epoch"].values[-1]), line=dict(color="#999999", dash="dot", width=1))
        for old in self.generations.children:
            old.close()
        self.generations.children = [go.FigureWidget(pbt_hyperparameters(history)),
                                     go.FigureWidget(pbt_lineage(history))]
        self.status.value = self._status_html(_best_line(history))

    def finish(self, history, message: str) -> None:
        """The status, then the fitness figure as a static copy in place of the widgets."""
        from ..plots import pbt_fitness

        self.status.value = self._status_html(message)
        self._finish_button()
        figures = [pbt_fitness(history)] if history.sizes.get("generation", 0) else []
        self._leave_static(f"{message} · elapsed {_clock(self.elapsed())}", *figures)

    def _widgets(self):
        return (self.button, self.status, self.fitness, *self.generations.children, self.generations,
                *self.widget.children, self.widget)


def _choose_live(live: bool | None) -> bool:
    """``make_progress``'s rule: ``live`` wins, then ``LFADS_NB_LIVE``, then a Jupyter frontend with ipywidgets."""
    if live is not None:
        return bool(live)
    switch = os.environ.get("LFADS_NB_LIVE", "").strip()
    if switch not in ("", "0", "1"):
        raise ConfigError(f"LFADS_NB_LIVE={switch!r}: set it to '1' (live dashboard) or '0' (text), or unset it.")
    return switch == "1" if switch else in_jupyter_frontend() and _widgets_available()


def make_pbt_progress(live: bool | None = None) -> PBTProgress:
    """The live PBT dashboard or text progress, chosen as :func:`make_progress` chooses."""
    return PBTLiveDashboard() if _choose_live(live) else PBTTextProgress()
