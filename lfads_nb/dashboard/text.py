"""Text progress (papermill, CI, scripts): a few flushed lines while training runs and a static
figure at the end; no widgets, so executed notebooks store no widget state."""
from __future__ import annotations

import math
import sys

import plotly.graph_objects as go

from ..errors import ConfigError
from . import kernel
from .figures import history_figure
from .progress import PBTProgress, Progress, clock, generation_summary


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
        if kernel.running_kernel() is not None:
            from IPython.display import display

            display(self.figure)



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
        self._print(f"{generation_summary(history)}  elapsed {clock(self.elapsed())}")

    def finish(self, history, message: str) -> None:
        from ..plots import pbt_fitness

        self._print(message)
        if history.sizes.get("generation", 0):
            self.figure = pbt_fitness(history)
            if kernel.running_kernel() is not None:
                from IPython.display import display

                display(self.figure)
