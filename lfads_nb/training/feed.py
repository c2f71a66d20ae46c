"""The feed: what a run reads from its data, the same for one Dataset and for a DataTree of sessions.

``make_feed(data, config)`` is where the two forms of data part ways (through
``lfads_nb.data.sessions_of``, a lone Dataset being one session): a ``Feed`` holds each session's
data as tensors, split into 'train' and 'valid' trials, and gives every run (``train``, population
-based training, Ray) the same things:

- ``shuffle(generator)`` then ``step_trials(step)``: the trials of each step of an epoch (``bins``:
  the leading bins of each trial the epoch's training batches keep, set by ``run_epoch`` from the
  sequence-length curriculum). One
  Dataset is cut into consecutive batches of ``batch_size`` shuffled trials; several sessions are
  mixed in every step (``mixed_step``): each session gives a share of its shuffled trials
  proportional to its size (``batch_size`` trials in all), so an epoch shows every training trial
  exactly once and every step's gradient reaches the shared core from all the sessions at once.
  lfads-torch instead takes ``batch_size / n_sessions`` trials per session and cycles the smaller
  sessions; here a data-poor session is not repeated within an epoch, so its own read-out is not
  fitted more often than its few trials warrant, and the loss weighs every counted entry the same,
  whatever its session.
- ``training_batch(trials, ...)``: the model's input for those trials (a ``Batch``, or one per
  session for a model stitched across sessions), built by the transforms of ``lfads_nb.transforms``
  in their documented order, with the randomness given or drawn (``draw_training_batch``).
- ``validation(batch_size)``: the 'valid' trials as ``(view, Batch)`` pairs, ``view(model)`` being
  the model that reads that session (the model itself for one Dataset, ``model.for_session(name)``
  for sessions).

Masks, per (trial, time, neuron) entry (``lfads_nb.transforms``): NaN in the observed variable is
"not observed" (zero at the encoder, out of every loss); forward-prediction bins are zero at the
encoder and in every loss; sample validation (``sv_fraction``) holds one fixed, seeded set of
entries out of every split, reported on the validation trials as ``valid_sv_nll``; temporal shift
and coordinated dropout redraw every training step and are off at validation and inference.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr

from ..data.artifacts import near_artifacts
from ..data.kinds import kind_of
from ..data.schema import encoder_bins, heldin_mask, observed_variable, sample_validation_mask
from ..data.sessions import sessions_of
from ..errors import ConfigError, DataError
from ..metrics import nll_per_entry
from ..transforms import (Batch, coordinated_dropout, forward_prediction, make_batch, rounded_normal_shifts,
                          sample_validation, sbtt, temporal_shift)


# ---------------------------------------------------------------------------------------------
# One session's data as tensors, and its batches
# ---------------------------------------------------------------------------------------------

@dataclass
class Tensors:
    data: torch.Tensor          # (trial, time, neuron) the observed variable, NaN = not observed
    ext_input: torch.Tensor | None
    heldin: torch.Tensor        # (neuron,) bool
    encoder_bins: torch.Tensor  # (time,) bool, False for forward-prediction bins
    sv_keep: torch.Tensor       # (trial, time, neuron) bool, False = held out for sample validation


def to_tensors(ds: xr.Dataset, sv_fraction: float = 0.0, sv_seed: int = 0, device="cpu",
               dtype: torch.dtype = torch.float32) -> Tensors:
    """A validated Dataset as ``Tensors`` of ``dtype`` on ``device``, with sample validation's fixed mask."""
    device = torch.device(device)
    ext = None
    if "ext_input" in ds:
        ext = torch.as_tensor(ds["ext_input"].values, dtype=dtype, device=device)
    return Tensors(
        data=torch.as_tensor(ds[observed_variable(ds)].values, dtype=dtype, device=device),
        ext_input=ext,
        heldin=torch.as_tensor(heldin_mask(ds), device=device),
        encoder_bins=torch.as_tensor(encoder_bins(ds), device=device),
        sv_keep=torch.as_tensor(sample_validation_mask(ds, sv_fraction, sv_seed), device=device),
    )


def recorded_batch(tensors: Tensors, idx) -> Batch:
    """The trials ``idx`` as recorded: forward-prediction bins hidden from the encoder
    (``forward_prediction``), unobserved (NaN) entries out of encoder and loss (``sbtt``)."""
    ext = None if tensors.ext_input is None else tensors.ext_input[idx]
    return sbtt(forward_prediction(make_batch(tensors.data[idx], tensors.heldin, ext), tensors.encoder_bins))


def training_batch(tensors: Tensors, idx, sv_fraction: float, cd_rate, cd_uniforms: torch.Tensor | None,
                   shifts: tuple[torch.Tensor, torch.Tensor] | None = None) -> Batch:
    """A training batch: ``forward_prediction`` -> ``sbtt`` -> ``sample_validation`` -> ``temporal_shift``
    (when ``shifts``, the (encoder, target) shifts, are given) -> ``coordinated_dropout`` (when
    ``cd_uniforms`` are given; ``cd_rate`` a number or per-member (P, 1, 1, 1) rates)."""
    batch = sample_validation(recorded_batch(tensors, idx), tensors.sv_keep[idx], sv_fraction)
    if shifts is not None:
        batch = temporal_shift(batch, *shifts)
    return batch if cd_uniforms is None else coordinated_dropout(batch, cd_rate, cd_uniforms)


def first_bins(batch: Batch, n: int) -> Batch:
    """The first ``n`` bins of every trial of a ``Batch``: what the encoder sees, what the loss
    counts and the external inputs, all cut to the same bins, so no part of the model runs past the
    bins the loss counts (the sequence-length curriculum, ``TrainConfig.curriculum_bins``)."""
    if n >= batch.target.shape[-2]:
        return batch
    return batch._replace(**{name: getattr(batch, name)[..., :n, :] for name in
                             ("encoder_data", "target", "encoder_mask", "loss_mask", "heldout")},
                          ext=None if batch.ext is None else batch.ext[:, :n])


def validation_batches(tensors: Tensors, idx, sv_fraction: float, batch_size: int):
    """Validation batches of ``idx``: ``forward_prediction`` -> ``sbtt`` -> ``sample_validation``, ``batch_size``
    trials each. ``loss_mask`` holds the observed entries sample validation kept, ``heldout`` those it hid."""
    for start in range(0, len(idx), batch_size):
        b = idx[start:start + batch_size]
        yield sample_validation(recorded_batch(tensors, b), tensors.sv_keep[b], sv_fraction)


def train_valid_indices(ds: xr.Dataset, needed_for: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of the 'train' and the 'valid' trials of a validated ``ds``. Refuses data whose
    validation trials cannot judge a model; ``needed_for`` says why they are needed."""
    splits = ds["split"].values.astype(str)
    valid = np.flatnonzero(splits == "valid")
    if len(valid) == 0:
        raise DataError(f"The dataset has no validation trials (split == 'valid'); {needed_for}. "
                        "Label about 20 % of trials 'valid'.")
    if np.isnan(ds[observed_variable(ds)].values[valid].astype(float)).all():
        raise DataError("Every entry of the validation trials is NaN (not observed), so their validation loss "
                        "would be meaningless. Label trials with observed entries 'valid'.")
    return torch.as_tensor(np.flatnonzero(splits == "train")), torch.as_tensor(valid)


def check_shift(shift_max: int, n_time: int) -> None:
    """Refuse a temporal shift that could move a channel by a whole trial of ``n_time`` bins."""
    if shift_max >= n_time:
        raise ConfigError(f"TrainConfig.shift_max={shift_max} bins is not shorter than the trials ({n_time} bins): a "
                          "shift would move whole channels out of the trial. Use a shift_max of a few bins (e.g. 6), "
                          "well under the trial length.")


def mixed_step(orders: dict, step: int, steps: int) -> dict:
    """The trials of step ``step`` of ``steps``: from each session's shuffled trials ``orders[s]``
    (n_s of them) its share [step n_s / steps, (step + 1) n_s / steps); sessions whose share
    is empty this step are left out."""
    chosen = {}
    for name, order in orders.items():
        low, high = step * len(order) // steps, (step + 1) * len(order) // steps
        if high > low:
            chosen[name] = order[low:high]
    return chosen


def truth_nll(ds: xr.Dataset, valid_idx: torch.Tensor) -> float | None:
    """NLL per entry of the true rates on the validation trials, for spike data with ``rates_true``
    (the reference line of the training curves); None otherwise."""
    if kind_of(ds).name != "spikes" or "rates_true" not in ds:
        return None
    valid = ds.isel(trial=valid_idx.cpu().numpy())
    try:
        return nll_per_entry(valid["rates_true"], valid["spikes"], float(ds.attrs["bin_width"]))
    except DataError:  # truth with NaN or negative rates: no reference line rather than no training
        return None


# ---------------------------------------------------------------------------------------------
# The feed
# ---------------------------------------------------------------------------------------------

def session_view(name: str | None):
    """The function giving the model that reads session ``name`` (``sessions_of``'s names): the model
    itself for a lone Dataset (None), ``model.for_session(name)`` for a session of a DataTree."""
    if name is None:
        return lambda model: model
    return lambda model: model.for_session(name)


@dataclass
class Session:
    """One session of a feed: its Dataset, tensors, 'train' and 'valid' trials, and ``view``, the
    model that reads it."""

    name: str | None
    ds: xr.Dataset
    tensors: Tensors
    train_idx: torch.Tensor
    valid_idx: torch.Tensor
    view: object
    order: torch.Tensor | None = None


class Feed:
    """A run's view of its data (module docstring). ``data``: a Dataset or a DataTree of sessions;
    ``config`` a ``TrainConfig`` (batch size, sample validation, temporal shift, device);
    ``needed_for`` says in an error why validation trials are needed; ``dtype``: the tensors' (a
    float64 model needs float64 data)."""

    def __init__(self, data, config, needed_for: str, dtype: torch.dtype = torch.float32):
        datasets = sessions_of(data, require_train=True)
        self.stitched = None not in datasets
        if config.shift_std > 0:
            check_shift(config.shift_max, next(iter(datasets.values())).sizes["time"])
        self.batch_size, self.sv_fraction = config.batch_size, config.sv_fraction
        self.sessions = {}
        for name, ds in datasets.items():
            train_idx, valid_idx = train_valid_indices(ds, needed_for)
            tensors = to_tensors(ds, config.sv_fraction, config.sv_seed, config.device, dtype)
            self.sessions[name] = Session(name, ds, tensors, train_idx, valid_idx, session_view(name))
        self.steps_per_epoch = math.ceil(sum(len(s.train_idx) for s in self.sessions.values()) / self.batch_size)
        self.n_time = next(iter(datasets.values())).sizes["time"]
        self.bins = self.n_time  # the leading bins of each trial a training batch keeps (the curriculum's)
        self._skip = None

    def shuffle(self, generator: torch.Generator) -> None:
        """A new order of every session's 'train' trials, drawn from ``generator``."""
        for session in self.sessions.values():
            session.order = session.train_idx[torch.randperm(len(session.train_idx), generator=generator)]

    def step_trials(self, step: int) -> dict:
        """``{session: trial positions}`` of step ``step`` of the epoch (after ``shuffle``)."""
        if not self.stitched:
            order = self.sessions[None].order
            return {None: order[step * self.batch_size:(step + 1) * self.batch_size]}
        return mixed_step({name: s.order for name, s in self.sessions.items()}, step, self.steps_per_epoch)

    def inputs(self, batches: dict):
        """What the model takes for ``{session: Batch}``: the one Batch of a Dataset, or them all
        for a model stitched across sessions."""
        return batches if self.stitched else batches[None]

    def training_batch(self, trials: dict, cd_rate, cd: dict | None, shifts: dict | None):
        """The model's training input for ``trials`` with the given randomness: ``cd`` and ``shifts``
        map each session to its coordinated-dropout uniforms and (encoder, target) shifts (or None)."""
        return self.inputs({name: first_bins(training_batch(self.sessions[name].tensors, idx, self.sv_fraction,
                                                            cd_rate, None if cd is None else cd[name],
                                                            None if shifts is None else shifts[name]), self.bins)
                            for name, idx in trials.items()})

    def draw_training_batch(self, trials: dict, config):
        """``training_batch`` with its randomness drawn from torch's global generator, session by
        session: the coordinated-dropout uniforms (if ``config.cd_rate`` > 0), then the temporal-shift
        normals (if ``config.shift_std`` > 0), one set for the encoder and one for the target."""
        cd, shifts = {}, {}
        for name, idx in trials.items():
            data = self.sessions[name].tensors.data
            cd[name] = torch.rand((len(idx), *data.shape[1:]), device=data.device) if config.cd_rate > 0 else None
            shifts[name] = None
            if config.shift_std > 0:
                normals = torch.randn((2, len(idx), data.shape[-1]), device=data.device)
                shifts[name] = tuple(rounded_normal_shifts(normals, config.shift_std, config.shift_max))
        return self.training_batch(trials, config.cd_rate, cd, shifts)

    def artifact_skip(self) -> torch.Tensor:
        """(valid trials, T, N) bool, True on the entries an artifact-free validation NLL leaves out
        (``artifacts.near_artifacts``: near artifacts found without truth), for one recording."""
        if self.stitched:
            raise ConfigError("The artifact-free validation NLL (select_by='valid_recon_artifact_free', "
                              "PBTConfig.fitness_skips_artifacts) works on one recording; use 'valid_recon' "
                              "(fitness_skips_artifacts=False) for sessions, or run each session on its own.")
        if self._skip is None:
            session = self.sessions[None]
            near = torch.as_tensor(near_artifacts(session.ds).values, device=session.tensors.data.device)
            self._skip = near[session.valid_idx.to(near.device)]
        return self._skip

    def step_sizes(self, trials: dict) -> dict:
        """``{session: (trials, channels)}`` of a step, the shapes its random numbers need."""
        return {name: (len(idx), self.sessions[name].tensors.data.shape[-1]) for name, idx in trials.items()}

    def validation(self, batch_size: int):
        """``(view, Batch)`` of every session's 'valid' trials, ``batch_size`` trials at a time."""
        for session in self.sessions.values():
            for batch in validation_batches(session.tensors, session.valid_idx, self.sv_fraction, batch_size):
                yield session.view, batch

    def truth(self) -> dict[str, float]:
        """``{'valid_truth_nll': ...}``: the true rates' NLL per entry on the validation trials,
        over every session's entries (each session weighted by its entries); empty without truth."""
        truths = {name: truth_nll(s.ds, s.valid_idx) for name, s in self.sessions.items()}
        if any(t is None for t in truths.values()):
            return {}
        weights = {name: len(s.valid_idx) * s.tensors.data[0].numel() for name, s in self.sessions.items()}
        if not self.stitched:
            return {"valid_truth_nll": truths[None]}
        return {"valid_truth_nll": sum(weights[n] * t for n, t in truths.items()) / sum(weights.values())}

    def example(self, model, n_neurons: int = 3) -> dict:
        """One validation trial of the first session, the dashboard's example: the inferred vs true
        observation mean (rates in Hz for spikes; the kind's output and units otherwise) of its most
        active neurons, and the recorded data."""
        session = next(iter(self.sessions.values()))
        ds, trial = session.ds, int(session.valid_idx[0])
        counts = np.nan_to_num(ds[observed_variable(ds)].values[trial])
        neurons = np.argsort(counts.sum(axis=0))[::-1][:n_neurons]  # the most active, so the plot says something
        kind = kind_of(ds)
        was_training = model.training
        model.eval()
        with torch.no_grad():
            mean = session.view(model).infer_batch(recorded_batch(session.tensors, slice(trial, trial + 1)),
                                                   sample=False)["mean"]
        model.train(was_training)
        trial_id = ds["trial"].values[trial].item()
        return {
            "trial": trial_id if session.name is None else f"{trial_id} of {session.name}",
            "time": ds["time"].values,
            "neurons": [ds["neuron"].values[n].item() for n in neurons],
            "rates": kind.to_output(mean, float(ds.attrs["bin_width"]))[0].cpu().numpy()[:, neurons],
            "rates_true": ds[kind.truth].values[trial][:, neurons] if kind.truth in ds else None,
            "spikes": counts[:, neurons],
        }


def make_feed(data, config, needed_for: str = "training needs them for the learning-rate schedule, early "
                                               "stopping and model selection", dtype: torch.dtype = torch.float32) -> Feed:
    """The ``Feed`` of ``data`` (a Dataset or a DataTree of sessions) under ``config`` (``Feed``)."""
    return Feed(data, config, needed_for, dtype)


__all__ = ["Feed", "Session", "Tensors", "check_shift", "first_bins", "make_feed", "mixed_step", "recorded_batch", "session_view", "to_tensors",
           "train_valid_indices", "training_batch", "truth_nll", "validation_batches"]
