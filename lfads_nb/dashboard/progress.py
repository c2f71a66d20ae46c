"""Training progress: the protocol the training loops report to, and how the live or text
implementation is chosen.

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

Two implementations, chosen by ``lfads_nb.dashboard.make_progress``:

- ``live.LiveDashboard``: ipywidgets and plotly ``FigureWidget``s updated while the cell runs
  (loss curves, ramps and learning rate, one trial's inferred vs true rates, a status line and
  a Stop button). When training ends the widgets are closed and replaced, in the same output, by
  static figures, so a saved notebook shows the run instead of "Error displaying widget".
- ``text.TextProgress``: one flushed line every few epochs and a static plotly figure of the
  history at the end; no widgets, so notebooks executed by papermill or CI store no widget state.

Which one (:func:`choose_live`, ``make_progress(live=None)``): an explicit ``live`` wins; then the environment
variable ``LFADS_NB_LIVE`` ('1' live, '0' text); otherwise live only in a Jupyter frontend
session, that is an IPython kernel whose environment has ``JPY_SESSION_NAME``, which
jupyter_server sets (to the notebook's path) for every kernel it starts for JupyterLab or
Notebook, and only when ipywidgets imports. Kernels started by papermill (through nbclient and
jupyter_client) have ``JPY_PARENT_PID`` but no ``JPY_SESSION_NAME``, so papermill, CI and plain
scripts get text without being told. Other frontends (VS Code) need ``LFADS_NB_LIVE=1``; a
papermill run started from inside a notebook cell inherits ``JPY_SESSION_NAME`` and needs
``LFADS_NB_LIVE=0``.

Population-based training reports to :class:`PBTProgress` in the same way (``epoch``,
``generation``, ``stop_requested``, ``finish``), with the same two implementations and the same
rule (:func:`choose_live`).
"""
from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping

import numpy as np

from ..errors import ConfigError
from . import kernel

# (label, row key) of the one-line summary, in order.
SUMMARY_FIELDS = (("train", "train_recon"), ("valid", "valid_recon"), ("sv", "valid_sv_nll"))


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
        parts.append(f"elapsed {clock(self.elapsed())}")
        return sep.join(parts)


def clock(seconds: float) -> str:
    """0:42, 12:05 or 1:02:03."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


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


def generation_summary(history) -> str:
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



def choose_live(live: bool | None) -> bool:
    """Live widgets or text: ``live`` True/False wins; None decides by ``LFADS_NB_LIVE`` ('1'/'0'),
    else live only in a Jupyter frontend (:func:`lfads_nb.dashboard.kernel.in_jupyter_frontend`) with
    ipywidgets."""
    if live is not None:
        return bool(live)
    switch = os.environ.get("LFADS_NB_LIVE", "").strip()
    if switch not in ("", "0", "1"):
        raise ConfigError(f"LFADS_NB_LIVE={switch!r}: set it to '1' (live dashboard) or '0' (text), or unset it.")
    return switch == "1" if switch else kernel.in_jupyter_frontend() and _widgets_available()


def _widgets_available() -> bool:
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True
