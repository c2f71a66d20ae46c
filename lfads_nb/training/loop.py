"""Training a model on its data, checkpointing, resuming, and inference back to xarray.

The pieces, in the order a run uses them:

1. ``TrainConfig``: optimiser, schedule, loss weights and ramps, masking (coordinated dropout,
   sample validation, temporal shift), seed and device.
2. ``lfads_nb.build_model(ds, model=..., **sizes)`` (``lfads_nb.models.registry``): a model of a
   registered family sized for the data.
3. ``train(model, data, config)``: Adam with gradient-norm clipping, KL and L2 ramps, learning-rate
   decay on a plateau of the smoothed validation loss, early stopping, and restore of the best
   checkpoint. Every epoch ends with an atomic checkpoint, so a run killed at any point resumes
   from its last epoch and reproduces the uninterrupted run bit for bit.
4. ``infer(model, data)``: posterior means (or the average over posterior samples) as a Dataset
   aligned to the input trials: the kind's output (``rates`` in Hz, ``emg_mean``, ``events_mean``)
   and the model's own variables (``output_dims``: LFADS's ``factors``, ``inputs``, ``ic_mean``,
   ``generator_states``; NDT's ``latents``).

One epoch is ``run_epoch``, the same for ``train`` and for population-based training (local or on
Ray): the feed's trials in a shuffled order (``lfads_nb.training.feed``), one ``step`` of a unit per
batch at that step's KL and L2 ramps, then validation (NLL per entry from the model's
``entry_nll``). The unit is ``ModelTrainer`` here (one model, torch's Adam, its randomness from
torch's global generator) and a ``lfads_nb.tune.population.Population`` in PBT.

The loss is lfads-torch's scale: the mean per-entry reconstruction NLL over the entries the loss
may see, plus ``kl_ramp * (kl_ic_scale KL_ic + kl_co_scale KL_co)`` (nats per trial, averaged
over the batch) plus ``l2_ramp * (l2_gen_scale L2_gen + l2_con_scale L2_con)``; which of these
weights a model's objective takes is its family's ``loss_weights``. The masks (unobserved entries,
forward-prediction bins, sample validation, temporal shift, coordinated dropout) are the feed's.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
import xarray as xr
from torch import Tensor

from ..data.artifacts import artifact_free_nll
from ..checkpoint import RunState, ema, load_checkpoint, restore_training, save_checkpoint, training_checkpoint
from ..data.kinds import kind_of
from ..data.schema import validate
from ..data.sessions import sessions_of
from ..errors import ConfigError, TrainingDiverged
from ..models.registry import check_model_data, family_of
from .feed import Feed, make_feed, recorded_batch, session_view, to_tensors


def artifact_free_name(metric: str) -> str:
    """The name ``validation_metrics`` gives a validation ``metric`` measured away from EMG artifacts."""
    return f"{metric}_artifact_free"


SELECT_BY = ("valid_recon", "valid_sv_nll", artifact_free_name("valid_recon"))


@dataclass
class TrainConfig:
    """How to train. Epoch counts are in epochs, rates are fractions in [0, 1).

    The defaults are lfads-torch's schedule, a general start for runs of a few hundred epochs;
    ``lfads_nb.recipes`` keeps the settings the tutorials train their tasks by
    (``chaotic_rnn_training``: tutorial 02's faster schedule; ``attractor_training``)."""

    max_epochs: int = 200
    batch_size: int = 32
    lr: float = 4e-3
    lr_decay: float = 0.95          # multiply lr by this on a validation plateau
    lr_patience: int = 6            # epochs without improvement of the smoothed validation loss
    lr_min: float = 1e-5
    grad_clip: float = 200.0        # max global gradient norm
    kl_ic_scale: float = 1e-4
    kl_co_scale: float = 1e-4
    l2_gen_scale: float = 1e-4
    l2_con_scale: float = 1e-4
    kl_ramp_epochs: int = 50        # KL weight rises linearly from 0 to 1 over these epochs
    l2_ramp_epochs: int = 50
    early_stop_patience: int = 40   # epochs after the ramps without a new best
    early_stop_min_delta: float = 0.0  # a new best counts for early stopping only if it beats the best that last
                                    # restarted the patience by more than this (nats per entry); 0: any new best.
                                    # So a run stops once early_stop_patience epochs improved it by at most this:
                                    # its validation curve has flattened. The best checkpoint is kept either way
    cd_rate: float = 0.3            # coordinated dropout: fraction of entries hidden from the encoder, about
                                    # lfads-torch's / AutoLFADS's value; without it a controller (co_dim > 0)
                                    # can copy spikes through. 0 turns it off
    sv_fraction: float = 0.0        # sample validation: fraction of entries held out everywhere
    shift_std: float = 0.0          # temporal shift: std (bins) of each channel's shift; 0 turns it off.
                                    # Wimalasena et al. 2022 / lfads-torch deEMG: 3
    shift_max: int = 6              # temporal shift: largest shift (bins), shorter than a trial
    curriculum_bins: int = 0        # sequence-length curriculum: the training steps of epoch e use only the first
                                    # min(curriculum_bins * (e // curriculum_epochs + 1), T) bins of each trial
                                    # (Sedler et al. 2023: 5 bins every 150 epochs); 0 uses whole trials. Validation
                                    # always scores whole trials; the lr schedule and early stopping wait for the
                                    # curriculum to reach whole trials
    curriculum_epochs: int = 150    # epochs between two lengthenings of the curriculum
    sv_seed: int = 0
    select_by: str = "valid_recon"  # or "valid_sv_nll" (needs sv_fraction > 0), or "valid_recon_artifact_free"
                                    # (EMG: away from artifacts found without truth, artifacts.artifact_free_nll)
    seed: int = 0
    device: str = "cpu"             # checked when a run starts (check_device), so a GPU config loads anywhere

    def __post_init__(self):
        positive = ("max_epochs", "batch_size", "lr", "lr_min", "grad_clip")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ConfigError(f"TrainConfig.{name} must be positive, got {getattr(self, name)!r}.")
        for name in ("kl_ic_scale", "kl_co_scale", "l2_gen_scale", "l2_con_scale",
                     "kl_ramp_epochs", "l2_ramp_epochs", "lr_patience", "early_stop_patience",
                     "early_stop_min_delta"):
            if getattr(self, name) < 0:
                raise ConfigError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)!r}.")
        if not self.shift_std >= 0:
            raise ConfigError(f"TrainConfig.shift_std must be >= 0 bins (0 = no temporal shift), got {self.shift_std!r}.")
        if isinstance(self.shift_max, bool) or not isinstance(self.shift_max, int) or self.shift_max < 0:
            raise ConfigError(f"TrainConfig.shift_max must be a whole number of bins >= 0, got {self.shift_max!r}.")
        for name, least in (("curriculum_bins", 0), ("curriculum_epochs", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"TrainConfig.{name} must be a whole number >= {least}, got {value!r} "
                                  "(curriculum_bins=0 turns the sequence-length curriculum off).")
        if not 0 < self.lr_decay <= 1:
            raise ConfigError(f"TrainConfig.lr_decay must be in (0, 1], got {self.lr_decay!r}.")
        for name in ("cd_rate", "sv_fraction"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"TrainConfig.{name} must be in [0, 1), got {getattr(self, name)!r}.")
        if self.select_by not in SELECT_BY:
            raise ConfigError(f"TrainConfig.select_by must be one of {SELECT_BY}, got {self.select_by!r}.")
        if self.select_by == "valid_sv_nll" and self.sv_fraction == 0:
            raise ConfigError("select_by='valid_sv_nll' needs sample validation: set sv_fraction > 0.")


def check_device(device: str) -> torch.device:
    """``device`` as a torch.device, or a ConfigError if this machine cannot run on it.

    Called when a run starts, not by TrainConfig: a config written on a GPU machine must still
    load on a CPU-only one (a notebook's first cell, a Ray head, a checkpoint).
    """
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device={device!r} is not a device lfads_nb runs on; use 'cpu', 'cuda' (or 'cuda:N') "
                          "or 'mps'.")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} but no CUDA GPU is available; use device='cpu'.")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device={device!r} but no Apple MPS GPU is available; use device='cpu'.")
    return parsed


# ---------------------------------------------------------------------------------------------
# One epoch, the same for every run
# ---------------------------------------------------------------------------------------------

def ramp(epoch_position: float, ramp_epochs: int) -> float:
    """A weight rising linearly from 0 to 1 over ``ramp_epochs`` (1 throughout for 0)."""
    return 1.0 if ramp_epochs == 0 else min(1.0, epoch_position / ramp_epochs)


def curriculum_bins(config: TrainConfig, epoch: int, n_time: int) -> int:
    """How many leading bins of each trial the training steps of ``epoch`` (0-based) use: the
    sequence-length curriculum of Sedler et al. 2023, min(curriculum_bins * (epoch //
    curriculum_epochs + 1), n_time); all ``n_time`` bins without a curriculum."""
    if not config.curriculum_bins:
        return n_time
    return min(config.curriculum_bins * (epoch // config.curriculum_epochs + 1), n_time)


def loss_weights(names, config: TrainConfig, kl_ramp, l2_ramp) -> dict:
    """The weights a model's objective takes: the ``TrainConfig`` fields ``names`` (its family's
    ``loss_weights``) and this step's ramps."""
    return {**{n: getattr(config, n) for n in names}, "kl_ramp": kl_ramp, "l2_ramp": l2_ramp}


def validation_nll_sums(nll: Tensor, seen: Tensor, held: Tensor) -> Tensor:
    """(4,) = [NLL over ``seen``, its entry count, NLL over ``held``, its entry count], from (B, T, N)
    entry NLLs and two (B, T, N) bool masks."""
    return torch.stack([(nll * seen).sum(), seen.sum().to(nll.dtype), (nll * held).sum(), held.sum().to(nll.dtype)])


def validation_nll(model, view, batch) -> tuple[Tensor, Tensor]:
    """The NLL of ``view(model)`` (the model that reads the batch's session) of every entry of one
    validation batch, (B, T, N), and its ``validation_nll_sums`` over the entries the loss counts
    and over those sample validation hid."""
    nll = view(model).entry_nll(batch)
    return nll, validation_nll_sums(nll, batch.loss_mask, batch.heldout)


def metrics_from_sums(sums: Tensor, sv_fraction: float) -> dict[str, Tensor]:
    """``valid_recon`` (and with sample validation ``valid_sv_nll``) from validation sums added up."""
    metrics = {"valid_recon": sums[..., 0] / sums[..., 1].clamp(min=1)}
    if sv_fraction > 0:
        metrics["valid_sv_nll"] = sums[..., 2] / sums[..., 3].clamp(min=1)
    return metrics


def validation_batch_size(batch_size: int, members: int = 1) -> int:
    """Trials per validation batch: a model validates at least 256 trials at a time, a population of
    ``members`` (> 1) ``batch_size``, since it holds the activations of every member."""
    return max(batch_size, 256) if members == 1 else batch_size


@torch.no_grad()
def validation_metrics(model, feed: Feed, batch_size: int, artifact_free: str | None = None,
                       batch_nll=validation_nll) -> dict[str, Tensor]:
    """Validation NLL per entry of ``model`` on the feed's 'valid' trials, in one pass: ``valid_recon``
    on the entries the loss counts and, with sample validation, ``valid_sv_nll`` on the held-out
    ones; with ``artifact_free`` (one of those two names) also ``<artifact_free>_artifact_free``
    (``artifacts.artifact_free_nll`` of those entries away from ``feed.artifact_skip()``).

    ``batch_nll(model, view, batch)``: a validation batch's entry NLLs and their sums
    (``validation_nll``); a population passes it vmapped over its members, and every value then
    has a leading member axis."""
    was_training = model.training
    model.eval()
    sums = []

    def entry_nll(view, batch):
        nll, batch_sums = batch_nll(model, view, batch)
        sums.append(batch_sums)
        return nll

    if artifact_free is not None:  # one recording (artifact_skip refuses sessions): one view
        view = session_view(None)
        free = artifact_free_nll(lambda batch: entry_nll(view, batch),
                                 (batch for _, batch in feed.validation(batch_size)), feed.artifact_skip(),
                                 heldout=artifact_free == "valid_sv_nll")
    else:
        for view, batch in feed.validation(batch_size):
            entry_nll(view, batch)
    model.train(was_training)
    metrics = metrics_from_sums(sum(sums), feed.sv_fraction)
    if artifact_free is not None:
        metrics[artifact_free_name(artifact_free)] = free
    return metrics


class NonFiniteLoss(Exception):
    """A step's loss was NaN or infinite (``step``: its index in the epoch)."""

    step = -1


class Epoch(NamedTuple):
    metrics: dict       # name -> the unit's step values averaged over the steps taken, and its validation metrics
    bins: int           # the leading bins of each trial its training steps used (the curriculum's)
    kl_ramp: float      # the ramps of the last step
    l2_ramp: float
    steps: int          # steps taken (fewer than the feed's steps_per_epoch when stopped)
    stopped: bool       # stop() asked to end the run


def run_epoch(unit, feed: Feed, epoch: int, generator: torch.Generator, config: TrainConfig,
              stop=lambda: False) -> Epoch:
    """One epoch of ``unit`` on ``feed``: the trials in an order drawn from ``generator``, one
    ``unit.step(feed, trials, kl_ramp, l2_ramp)`` per batch at the ramps of its position (``epoch``
    epochs done before; ramp lengths from ``config``), ``stop()`` asked after every step (True ends
    the epoch there), then ``unit.validate(feed)``. The training batches keep the first
    ``curriculum_bins`` bins of each trial (all of them without a curriculum); validation scores whole
    trials. A unit's step returns its values (0-d for a model, (P,) for a population), averaged here
    in float64."""
    feed.shuffle(generator)
    feed.bins = curriculum_bins(config, epoch, feed.n_time)
    steps = feed.steps_per_epoch
    sums, stopped = {}, False
    for step in range(steps):
        position = epoch + step / steps
        kl_ramp, l2_ramp = ramp(position, config.kl_ramp_epochs), ramp(position, config.l2_ramp_epochs)
        try:
            values = unit.step(feed, feed.step_trials(step), kl_ramp, l2_ramp)
        except NonFiniteLoss as error:
            error.step = step
            raise
        for name, value in values.items():
            sums[name] = sums.get(name, 0) + value.double()
        stopped = bool(stop())
        if stopped:
            break
    metrics = {name: total / (step + 1) for name, total in sums.items()}
    metrics.update(unit.validate(feed))
    return Epoch(metrics, feed.bins, kl_ramp, l2_ramp, step + 1, stopped)


class ModelTrainer:
    """One model as ``run_epoch``'s unit: ``torch.optim.Adam`` with gradient-norm clipping at
    ``config.grad_clip``; each step's coordinated dropout, temporal shift and model noise are drawn
    from torch's global generator (``Feed.draw_training_batch``, then the model's ``loss``)."""

    def __init__(self, model, config: TrainConfig):
        self.model, self.config = model, config
        self.weights = family_of(model).loss_weights
        self.optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self, feed: Feed, trials: dict, kl_ramp: float, l2_ramp: float) -> dict[str, Tensor]:
        loss, parts = self.model.loss(feed.draw_training_batch(trials, self.config),
                                      loss_weights(self.weights, self.config, kl_ramp, l2_ramp))
        if not torch.isfinite(loss):
            raise NonFiniteLoss()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        return {"train_loss": loss.detach(), **{name: value.detach() for name, value in parts.items()}}

    def validate(self, feed: Feed) -> dict[str, Tensor]:
        return validation_metrics(self.model, feed, validation_batch_size(self.config.batch_size),
                                  "valid_recon" if self.config.select_by == artifact_free_name("valid_recon") else None)


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------

@dataclass
class TrainResult:
    model: object          # with the best checkpoint's weights, in eval mode
    history: pd.DataFrame  # one row per epoch: losses, ramps, lr, time
    best_epoch: int
    stop_reason: str       # 'max_epochs', 'early_stopping', 'stop_button', 'diverged'


class _RunState(RunState):
    """Everything that changes during a run, i.e. what a checkpoint must hold to resume exactly."""

    def __init__(self, config: TrainConfig):
        self.epoch = 0
        self.history: list[dict[str, float]] = []
        self.smoothed: float | None = None
        self.best_smoothed = math.inf        # for the lr schedule
        self.epochs_since_improvement = 0
        self.best_score = math.inf           # for model selection
        self.best_epoch = -1
        self.stop_reference = math.inf       # for early stopping: the best that last restarted its patience
        self.epochs_since_best = 0           # epochs since then
        self.lr = config.lr

    def restore(self, values) -> _RunState:
        super().restore(values)
        if "stop_reference" not in values:  # a checkpoint from before early_stop_min_delta: any new best restarted
            self.stop_reference = self.best_score
        return self


def train(
    model,
    data,
    config: TrainConfig | None = None,
    *,
    checkpoint_dir=None,
    resume: bool = True,
    progress=None,
    live: bool | None = None,
) -> TrainResult:
    """Train ``model`` on the 'train' trials of ``data``, validating on its 'valid' trials.

    ``data``: a Dataset, or a DataTree of sessions (``lfads_nb.data.make_sessions``) for a model
    built on it (a ``StitchedLFADS``; every step then mixes the sessions, ``lfads_nb.training.feed``).
    ``checkpoint_dir``: where ``last.pt`` (every epoch) and ``best.pt`` go; with ``resume``
    a run finds ``last.pt`` there and continues from it. ``progress``: a
    :class:`lfads_nb.dashboard.Progress`; by default the live dashboard in JupyterLab and text
    elsewhere (``live`` forces either). Returns a :class:`TrainResult` whose model holds the best
    checkpoint's weights. A NaN or infinite loss raises :class:`TrainingDiverged` after restoring
    the best weights so far (``err.result`` holds them).
    """
    from ..dashboard import make_progress

    config = config or TrainConfig()
    check_device(config.device)
    family = family_of(model)
    feed = make_feed(data, config)
    check_model_data(model, data, feed.stitched)
    if config.select_by == artifact_free_name("valid_recon"):
        feed.artifact_skip()  # refuses sessions before training starts
    model.check_training(config)

    torch.manual_seed(config.seed)
    model.to(torch.device(config.device)).train()
    trainer = ModelTrainer(model, config)
    shuffle = torch.Generator().manual_seed(config.seed)
    state = _RunState(config)

    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    best_state = None
    if ckpt_dir is not None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        last = ckpt_dir / "last.pt"
        if resume and last.exists():
            state = restore_training(last, state, model, trainer.optimizer, shuffle, config)
        best_path = ckpt_dir / "best.pt"
        if state.best_epoch >= 0 and best_path.exists():
            best_state = load_checkpoint(best_path)["model"]

    progress = progress or make_progress(live)
    progress.start(config.max_epochs)
    truth = feed.truth()
    stop_reason = "max_epochs"

    while state.epoch < config.max_epochs:
        t0 = time.perf_counter()
        trainer.set_lr(state.lr)
        try:
            epoch = run_epoch(trainer, feed, state.epoch, shuffle, config, lambda: progress.stop_requested)
        except NonFiniteLoss as error:
            raise _diverged(model, best_state, state, progress, ckpt_dir, config, error.step) from None
        if epoch.stopped:
            stop_reason = "stop_button"
            if epoch.steps < feed.steps_per_epoch:
                break  # a partial epoch is not recorded; the last checkpoint stands

        row = {"epoch": state.epoch, **{name: float(value) for name, value in epoch.metrics.items()}}
        row.update(kl_ramp=epoch.kl_ramp, l2_ramp=epoch.l2_ramp, train_bins=epoch.bins, lr=state.lr,
                   epoch_seconds=time.perf_counter() - t0, **truth)
        if not math.isfinite(row["valid_recon"]):
            raise _diverged(model, best_state, state, progress, ckpt_dir, config, feed.steps_per_epoch)
        whole_trials = epoch.bins == feed.n_time  # the lr schedule and early stopping wait for the curriculum's end
        improved = _end_of_epoch(state, row, config, whole_trials)
        state.history.append(row)
        state.epoch += 1
        if improved:
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if ckpt_dir is not None:
            if improved:
                save_checkpoint(training_checkpoint(model, family.checkpoint_name, trainer.optimizer, shuffle, state,
                                                    config, best_state), ckpt_dir / "best.pt")
            save_checkpoint(training_checkpoint(model, family.checkpoint_name, trainer.optimizer, shuffle, state,
                                                config), ckpt_dir / "last.pt")
        progress.update(row, feed.example(model))
        if stop_reason == "stop_button":
            break
        if _ramps_done(state.epoch, config) and whole_trials and state.epochs_since_best >= config.early_stop_patience:
            stop_reason = "early_stopping"
            break

    if best_state is not None:
        model.load_state_dict(best_state)
    history = pd.DataFrame(state.history)
    progress.finish(history, f"stopped: {stop_reason}; best epoch {state.best_epoch + 1}")
    return TrainResult(model.eval(), history, state.best_epoch, stop_reason)


def _ramps_done(epoch: int, config: TrainConfig) -> bool:
    return epoch >= max(config.kl_ramp_epochs, config.l2_ramp_epochs)


def _end_of_epoch(state: _RunState, row: dict, config: TrainConfig, whole_trials: bool = True) -> bool:
    """Update the lr schedule and model selection from this epoch's validation; True if a new best.
    A plateau counts only epochs that trained on whole trials (``whole_trials``): during a
    curriculum the whole-trial validation loss may stall while the model learns short ones."""
    valid = row["valid_recon"]
    state.smoothed = ema(state.smoothed, valid)
    row["valid_recon_smoothed"] = state.smoothed
    if state.smoothed < state.best_smoothed:
        state.best_smoothed, state.epochs_since_improvement = state.smoothed, 0
    elif whole_trials:
        state.epochs_since_improvement += 1
        if state.epochs_since_improvement >= config.lr_patience:
            state.lr = max(config.lr_min, state.lr * config.lr_decay)
            state.epochs_since_improvement = 0
    score = row[config.select_by]
    if score < state.stop_reference - config.early_stop_min_delta:
        state.stop_reference, state.epochs_since_best = score, 0
    else:
        state.epochs_since_best += 1
    if score < state.best_score:
        state.best_score, state.best_epoch = score, state.epoch
        return True
    return False


def _diverged(model, best_state, state, progress, ckpt_dir, config, step):
    if best_state is not None:
        model.load_state_dict(best_state)
    history = pd.DataFrame(state.history)
    where = f"epoch {state.epoch}, step {step}"
    kept = f" The best checkpoint (epoch {state.best_epoch}) is kept in {ckpt_dir}." if ckpt_dir else ""
    message = (
        f"The loss became NaN or infinite at {where}.{kept} Try a lower learning rate "
        f"(now {state.lr:.2g}), a smaller grad_clip (now {config.grad_clip:g}), or longer KL/L2 ramps; "
        "check the data for extreme counts."
    )
    progress.finish(history, message)
    err = TrainingDiverged(message)
    err.result = TrainResult(model.eval(), history, state.best_epoch, "diverged")
    return err


# ---------------------------------------------------------------------------------------------
# Inference
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def infer(model, data, *, n_samples: int = 0, batch_size: int = 256, seed: int = 0):
    """Run the trained model on every trial of ``data``.

    ``n_samples`` 0 uses the posterior means; N > 0 averages every output over N posterior
    samples (seeded by ``seed``). Returns a Dataset aligned to ``data`` (same ``trial`` ids,
    ``split``, ``condition``, ``time``, ``neuron``) with the observation mean named by the data's
    kind (``rates`` in Hz, ``emg_mean`` or ``events_mean`` in the data's units) and the model's
    variables (``output_dims``; LFADS: ``factors``, ``inputs`` (inferred u_t), ``ic_mean``
    (posterior mean of g0) and ``generator_states``).

    ``data`` may be a DataTree of sessions for a ``StitchedLFADS``: the result is then a DataTree
    with each session's inference, aligned to that session's Dataset, under its name.
    """
    datasets = sessions_of(data)
    check_model_data(model, data, None not in datasets)
    if n_samples < 0:
        raise ConfigError(f"n_samples must be >= 0 (0 = posterior means), got {n_samples}.")
    outputs = {name: _infer_session(session_view(name)(model), ds, n_samples, batch_size, seed)
               for name, ds in datasets.items()}
    if None in outputs:
        return outputs[None]
    result = xr.DataTree.from_dict(outputs)
    result.attrs.update(data.attrs)
    return result


def _infer_session(model, ds: xr.Dataset, n_samples: int, batch_size: int, seed: int) -> xr.Dataset:
    """``infer`` of one session's Dataset by the model that reads it."""
    device = next(model.parameters()).device
    tensors = to_tensors(ds, device=device)
    bin_width = float(ds.attrs["bin_width"])
    kind = kind_of(ds)
    was_training = model.training
    model.eval()
    generator_state = torch.get_rng_state()
    torch.manual_seed(seed)
    parts = {}
    for start in range(0, ds.sizes["trial"], batch_size):
        batch = recorded_batch(tensors, slice(start, start + batch_size))
        total = None  # running sums over the draws: one draw in memory at a time, not n_samples
        for _ in range(max(n_samples, 1)):
            draw = model.infer_batch(batch, sample=n_samples > 0)
            total = draw if total is None else {name: total[name] + value for name, value in draw.items()}
        for name, value in total.items():
            parts.setdefault(name, []).append((value / max(n_samples, 1)).cpu().numpy())
    torch.set_rng_state(generator_state)
    model.train(was_training)
    joined = {k: np.concatenate(v) for k, v in parts.items()}
    coords = {name: ds.coords[name] for name in ("trial", "time", "neuron", "split", "condition") if name in ds.coords}
    variables = {kind.output: (("trial", "time", "neuron"), kind.to_output(joined.pop("mean"), bin_width),
                               kind.output_attrs(ds))}
    variables.update({name: (model.output_dims[name], values) for name, values in joined.items()})
    return xr.Dataset(variables, coords=coords, attrs={"bin_width": bin_width, "posterior_samples": n_samples})


def inference_latency(model, ds: xr.Dataset, *, repeats: int = 200, warmup: int = 10) -> float:
    """Median milliseconds to infer one trial (posterior means, ``infer_batch(sample=False)``), one
    trial at a time as a live decoder would, on the CPU with torch limited to one thread.

    Timed is the CPU time of the calling thread (``time.thread_time``), so other processes on a
    shared machine do not inflate it; ``repeats`` runs cycle through the trials of ``ds`` after
    ``warmup`` untimed ones. The model is moved to the CPU for the measurement and put back.
    """
    validate(ds)
    model.check_data(ds)
    if repeats < 1 or warmup < 0:
        raise ConfigError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}.")
    device = next(model.parameters()).device
    was_training, threads = model.training, torch.get_num_threads()
    model.to("cpu").eval()
    tensors = to_tensors(ds)
    n = ds.sizes["trial"]
    times = []
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            for i in range(warmup + repeats):
                batch = recorded_batch(tensors, slice(i % n, i % n + 1))
                start = time.thread_time()
                model.infer_batch(batch, sample=False)
                if i >= warmup:
                    times.append(time.thread_time() - start)
    finally:
        torch.set_num_threads(threads)
        model.to(device).train(was_training)
    return 1e3 * float(np.median(times))
