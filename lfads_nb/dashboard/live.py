"""The live dashboards (JupyterLab): ipywidgets and plotly ``FigureWidget``s updated while the cell
runs, with a Stop button whose click reaches the running loop (:mod:`lfads_nb.dashboard.kernel`).
When the run ends the widgets are replaced, in the same output, by static figures, so a saved
notebook shows the run instead of "Error displaying widget"."""
from __future__ import annotations

import html
import math
import time
from collections.abc import Mapping

import numpy as np
import plotly.graph_objects as go

from ..errors import ConfigError
from . import kernel
from .figures import curves_figure, example_figure, row_columns, set_curves, set_example, thin
from .progress import PBTProgress, Progress, clock, generation_summary


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
            kernel.handle_widget_messages()
        return self._stop

    def _finish_button(self) -> None:
        self.button.disabled = True
        self.button.description = "Stopped" if self._stop else "Done"

    def _show(self) -> None:
        """Display ``self.widget`` in the running cell (widgets render only in a kernel)."""
        self._handle = None
        if kernel.running_kernel() is not None:
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
            set_curves(self.curves, row_columns(self.rows), self.max_points)
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
        keep = thin(len(self.epochs), self.max_points)
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
        return f"<code>{html.escape(f'{text} · elapsed {clock(self.elapsed())}')}</code>"

    def generation(self, history) -> None:
        from ..plots import fitness_label, pbt_hyperparameters, pbt_lineage

        self.fitness.layout.title.text = f"fitness per member: {fitness_label(history)}, lower is better"
        self.fitness.layout.yaxis.title.text = fitness_label(history)
        self.fitness.add_vline(x=int(history["end_epoch"].values[-1]), line=dict(color="#999999", dash="dot", width=1))
        for old in self.generations.children:
            old.close()
        self.generations.children = [go.FigureWidget(pbt_hyperparameters(history)),
                                     go.FigureWidget(pbt_lineage(history))]
        self.status.value = self._status_html(generation_summary(history))

    def finish(self, history, message: str) -> None:
        """The status, then the fitness figure as a static copy in place of the widgets."""
        from ..plots import pbt_fitness

        self.status.value = self._status_html(message)
        self._finish_button()
        figures = [pbt_fitness(history)] if history.sizes.get("generation", 0) else []
        self._leave_static(f"{message} · elapsed {clock(self.elapsed())}", *figures)

    def _widgets(self):
        return (self.button, self.status, self.fitness, *self.generations.children, self.generations,
                *self.widget.children, self.widget)
