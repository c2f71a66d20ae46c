"""Training LFADS on a Dataset, checkpointing, resuming, and inference back to xarray.

The pieces, in the order a run uses them:

1. ``TrainConfig``: optimiser, schedule, loss weights and ramps, masking (coordinated dropout,
   sample validation), seed and device.
2. ``build_model(ds, **sizes)``: an LFADS sized for the data (neurons, held-out neurons, external
   inputs are read off the Dataset).
3. ``train(model, ds, config)``: Adam with gradient-norm clipping, KL and L2 ramps, learning-rate
   decay on a plateau of the smoothed validation loss, early stopping, and restore of the best
   checkpoint. Every epoch ends with an atomic checkpoint, so a run killed at any point resumes
   from its last epoch and reproduces the uninterrupted run bit for bit.
4. ``infer(model, ds)``: posterior means (or the average over posterior samples) as a Dataset
   aligned to the input trials: the kind's output (``rates`` in Hz, ``emg_mean``, ``events_mean``),
   ``factors``, ``inputs``, ``ic_mean``, ``generator_states``.

The loss is lfads-torch's scale: the mean per-entry reconstruction NLL over the entries the loss
may see, plus ``kl_ramp * (kl_ic_scale KL_ic + kl_co_scale KL_co)`` (nats per trial, averaged
over the batch) plus ``l2_ramp * (l2_gen_scale L2_gen + l2_con_scale L2_con)``.

Masks, per (trial, time, neuron) entry:

- NaN in ``spikes`` means "not observed": zero at the encoder, out of every loss.
- Forward-prediction bins (the last bins, where the ``forward`` time coordinate is True): zero at
  the encoder, in every loss, so ``infer`` predicts them from the dynamics alone.
- Sample validation (``sv_fraction``): one fixed, seeded mask holds out entries in every split.
  They are zeroed at the encoder (the rest rescaled), never trained on, and their NLL on the
  validation trials is reported each epoch as ``valid_sv_nll``.
- Temporal shift (``shift_std``, ``shift_max``, in bins): each training step moves every channel
  of every trial in time by its own rounded-normal number of bins, drawn independently for the
  encoder input and the reconstruction target (``transforms.temporal_shift``), against artifacts
  shared across channels (EMG). Off at validation and inference.
- Coordinated dropout (``cd_rate``): each training step drops a fresh random set of entries from
  the encoder input (the kept ones rescaled) and the reconstruction loss counts only the dropped
  ones, so the model cannot learn to copy its input to its output. Off at validation and
  inference.
"""
from __future__ import annotations

import math
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr

from ..artifacts import artifact_free_nll, near_artifacts
from ..data.kinds import kind_of
from ..data.schema import encoder_bins, heldin_mask, observed_variable, validate
from ..errors import CheckpointError, ConfigError, DataError, TrainingDiverged
from ..metrics import nll_per_entry
from ..models.lfads import LFADS, LFADSConfig
from ..models.multisession import StitchedConfig, StitchedLFADS
from ..models.ndt import NDT, NDTConfig
from ..transforms import (Batch, coordinated_dropout, forward_prediction, make_batch, rounded_normal_shifts,
                          sample_validation, sbtt, temporal_shift)
from .checkpoint import RunState, ema, load_checkpoint, restore_training, save_checkpoint, training_checkpoint


SELECT_BY = ("valid_recon", "valid_sv_nll", "valid_recon_artifact_free")


@dataclass
class TrainConfig:
    """How to train. Epoch counts are in epochs, rates are fractions in [0, 1)."""

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
                     "kl_ramp_epochs", "l2_ramp_epochs", "lr_patience", "early_stop_patience"):
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


def check_shift(shift_max: int, n_time: int) -> None:
    """Refuse a temporal shift that could move a channel by a whole trial of ``n_time`` bins."""
    if shift_max >= n_time:
        raise ConfigError(f"TrainConfig.shift_max={shift_max} bins is not shorter than the trials ({n_time} bins): a "
                          "shift would move whole channels out of the trial. Use a shift_max of a few bins (e.g. 6), "
                          "well under the trial length.")


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
# Dataset -> tensors
# ---------------------------------------------------------------------------------------------

@dataclass
class _Tensors:
    data: torch.Tensor          # (trial, time, neuron) the observed variable, NaN = not observed
    ext_input: torch.Tensor | None
    heldin: torch.Tensor        # (neuron,) bool
    encoder_bins: torch.Tensor  # (time,) bool, False for forward-prediction bins
    sv_keep: torch.Tensor       # (trial, time, neuron) bool, False = held out for sample validation


def _sv_keep_mask(ds: xr.Dataset, fraction: float, seed: int) -> np.ndarray:
    """The fixed sample-validation mask, seeded per trial id so it does not depend on trial order."""
    shape = (ds.sizes["time"], ds.sizes["neuron"])
    if fraction == 0:
        return np.ones((ds.sizes["trial"],) + shape, dtype=bool)
    ids = ds["trial"].values
    keep = np.empty((len(ids),) + shape, dtype=bool)
    for i, trial_id in enumerate(ids):
        key = int(trial_id) if np.issubdtype(np.asarray(trial_id).dtype, np.integer) else zlib.crc32(str(trial_id).encode())
        keep[i] = np.random.default_rng([seed, key]).random(shape) >= fraction
    return keep


def _to_tensors(ds: xr.Dataset, config: TrainConfig) -> _Tensors:
    device = torch.device(config.device)
    ext = None
    if "ext_input" in ds:
        ext = torch.as_tensor(ds["ext_input"].values, dtype=torch.float32, device=device)
    return _Tensors(
        data=torch.as_tensor(ds[observed_variable(ds)].values.astype(np.float32), device=device),
        ext_input=ext,
        heldin=torch.as_tensor(heldin_mask(ds), device=device),
        encoder_bins=torch.as_tensor(encoder_bins(ds), device=device),
        sv_keep=torch.as_tensor(_sv_keep_mask(ds, config.sv_fraction, config.sv_seed), device=device),
    )


# The model families ``build_model`` and ``load_model`` know: name -> (model class, config class).
MODELS = {"lfads": (LFADS, LFADSConfig), "ndt": (NDT, NDTConfig), "stitchedlfads": (StitchedLFADS, StitchedConfig)}


def _data_sizes(ds: xr.Dataset, family: str) -> dict[str, int]:
    """The config fields read off the data: neurons and held-in neurons, plus the external
    inputs (LFADS) or the trial length (NDT)."""
    sizes = {"n_neurons": ds.sizes["neuron"], "encod_dim": int(heldin_mask(ds).sum())}
    if family == "ndt":
        return {**sizes, "n_bins": ds.sizes["time"]}
    return {**sizes, "ext_input_dim": ds.sizes["ext_input_dim"] if "ext_input" in ds else 0}


def build_model(ds: xr.Dataset, train_config: TrainConfig | None = None, *, seed: int | None = None,
                model: str = "lfads", **sizes) -> LFADS | NDT:
    """A model of the family ``model`` ("lfads" or "ndt") sized for ``ds``: ``sizes`` are its
    config's fields (LFADSConfig: gen_dim, co_dim, generator, ...; NDTConfig: d_model, ...).

    ``seed``: the initial weights' seed (without touching torch's global generator); None draws
    them from the global generator, so ``torch.manual_seed`` before the call reproduces them.

    The observation readout's bias starts at the data (``ObservationModel.init_from_data`` on
    the 'train' trials, or all trials if none is labelled 'train'): for Poisson, each neuron's
    log mean count per bin. This removes an initial plateau where the model only learns the
    mean rates (on the chaotic RNN benchmark, valid rate R^2 0.51 instead of 0.26 at epoch 10).
    Pass the ``train_config`` you will train with when it uses sample validation: the entries it
    holds out are then left out of this start too, so they never influence the model.

    ``ds`` may be a DataTree of sessions: the model is then a ``StitchedLFADS`` (one core, each
    session its own PCR read-in and observation model; ``training.sessions.build_stitched_model``).
    """
    if isinstance(ds, xr.DataTree):
        from .sessions import build_stitched_model

        if model != "lfads":
            raise ConfigError(f"Several sessions are stitched around an LFADS core; model={model!r} takes one Dataset.")
        return build_stitched_model(ds, train_config, seed=seed, **sizes)
    validate(ds)
    if model not in MODELS:
        raise ConfigError(f"Unknown model family {model!r}; use one of {sorted(MODELS)}.")
    model_class, config_class = MODELS[model]
    data_sizes = _data_sizes(ds, model)
    for name in data_sizes:
        if name in sizes:
            raise ConfigError(f"{name} is read from the data; do not pass it to build_model.")
    if not heldin_mask(ds).any():
        raise DataError("Every neuron is marked held out (the 'heldout' coord), so the encoder would see "
                        "nothing. Mark only the neurons to predict as held out, e.g. about a quarter of them.")
    sizes.setdefault("observation", kind_of(ds).default_observation(ds))  # e.g. ZIG with s_min from the data
    config = config_class(**data_sizes, **sizes)
    heldin = torch.as_tensor(heldin_mask(ds))
    if seed is None:
        built = model_class(config, heldin=heldin)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            built = model_class(config, heldin=heldin)
    if model == "ndt":
        built.check_data(ds)
    built.observation.init_from_data(torch.as_tensor(training_data(ds, train_config)))
    return built


def training_data(ds: xr.Dataset, train_config: TrainConfig | None) -> np.ndarray:
    """The observed values (trial, time, neuron) a model may start from: the 'train' trials (all
    if none is labelled 'train'), NaN where sample validation holds entries out. Raises DataError
    for neurons with nothing observed there."""
    spikes = ds[observed_variable(ds)].values.astype(np.float64)
    if train_config is not None and train_config.sv_fraction > 0:
        spikes[~_sv_keep_mask(ds, train_config.sv_fraction, train_config.sv_seed)] = np.nan  # NaN: not used
    is_train = ds["split"].values.astype(str) == "train"
    fit_on = spikes[is_train] if is_train.any() else spikes
    unseen = np.isnan(fit_on).all(axis=(0, 1))
    if unseen.any():
        raise DataError(f"Neurons {ds['neuron'].values[unseen].tolist()} have no observed (non-NaN) entries in the "
                        "training trials, so the model cannot learn them. Drop them, e.g. "
                        "ds.drop_sel(neuron=[...]), or move trials where they were recorded into 'train'.")
    return fit_on


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


# ---------------------------------------------------------------------------------------------
# Batches: the trials of a step, what the encoder sees and what the loss counts
# ---------------------------------------------------------------------------------------------

def _recorded_batch(tensors: _Tensors, idx) -> Batch:
    """The trials ``idx`` as recorded: forward-prediction bins hidden from the encoder
    (``forward_prediction``), unobserved (NaN) entries out of encoder and loss (``sbtt``)."""
    ext = None if tensors.ext_input is None else tensors.ext_input[idx]
    return sbtt(forward_prediction(make_batch(tensors.data[idx], tensors.heldin, ext), tensors.encoder_bins))


def training_batch(tensors: _Tensors, idx, sv_fraction: float, cd_rate, cd_uniforms: torch.Tensor | None,
                   shifts: tuple[torch.Tensor, torch.Tensor] | None = None) -> Batch:
    """A training batch: ``forward_prediction`` -> ``sbtt`` -> ``sample_validation`` -> ``temporal_shift``
    (when ``shifts``, the (encoder, target) shifts, are given) -> ``coordinated_dropout`` (when
    ``cd_uniforms`` are given; ``cd_rate`` a number or per-member (P, 1, 1, 1) rates)."""
    batch = sample_validation(_recorded_batch(tensors, idx), tensors.sv_keep[idx], sv_fraction)
    if shifts is not None:
        batch = temporal_shift(batch, *shifts)
    return batch if cd_uniforms is None else coordinated_dropout(batch, cd_rate, cd_uniforms)


def validation_batches(tensors: _Tensors, idx, sv_fraction: float, batch_size: int):
    """Validation batches of ``idx``: ``forward_prediction`` -> ``sbtt`` -> ``sample_validation``, ``batch_size``
    trials each. ``loss_mask`` holds the observed entries sample validation kept, ``heldout`` those it hid."""
    for start in range(0, len(idx), batch_size):
        b = idx[start:start + batch_size]
        yield sample_validation(_recorded_batch(tensors, b), tensors.sv_keep[b], sv_fraction)


# The TrainConfig fields ``LFADS.objective`` weights its terms by (besides the two ramps).
LOSS_WEIGHTS = ("kl_ic_scale", "kl_co_scale", "l2_gen_scale", "l2_con_scale")


def loss_weights(config: TrainConfig, kl_ramp: float, l2_ramp: float) -> dict[str, float]:
    """The weights ``LFADS.objective`` takes, from a TrainConfig and this step's ramps."""
    return {**{n: getattr(config, n) for n in LOSS_WEIGHTS}, "kl_ramp": kl_ramp, "l2_ramp": l2_ramp}


def _training_step_batch(tensors: _Tensors, idx, config: TrainConfig) -> Batch:
    """A training batch with fresh coordinated-dropout uniforms, then temporal-shift normals (one
    set for the encoder, one for the target), from torch's global generator."""
    data = tensors.data
    cd = torch.rand((len(idx), *data.shape[1:]), device=data.device) if config.cd_rate > 0 else None
    shifts = None
    if config.shift_std > 0:
        normals = torch.randn((2, len(idx), data.shape[-1]), device=data.device)
        shifts = tuple(rounded_normal_shifts(normals, config.shift_std, config.shift_max))
    return training_batch(tensors, idx, config.sv_fraction, config.cd_rate, cd, shifts)


@torch.no_grad()
def validation_metrics(model, tensors: _Tensors, idx, sv_fraction: float, batch_size: int) -> dict[str, torch.Tensor]:
    """Validation NLL per entry on the visible entries (``valid_recon``) and, with sample
    validation, on the held-out ones (``valid_sv_nll``), from ``model.validation_sums``: one
    model's are 0-d, a population's (P,)."""
    model.eval()
    sums = sum(model.validation_sums(b) for b in validation_batches(tensors, idx, sv_fraction, batch_size))
    model.train()
    return metrics_from_sums(sums, sv_fraction)


def metrics_from_sums(sums: torch.Tensor, sv_fraction: float) -> dict[str, torch.Tensor]:
    """``valid_recon`` (and with sample validation ``valid_sv_nll``) from ``validation_sums`` added up."""
    metrics = {"valid_recon": sums[..., 0] / sums[..., 1].clamp(min=1)}
    if sv_fraction > 0:
        metrics["valid_sv_nll"] = sums[..., 2] / sums[..., 3].clamp(min=1)
    return metrics


def _validation_metrics(model, tensors, idx, config, batch_size) -> dict[str, float]:
    """``validation_metrics`` of one model, as numbers for the epoch's history row."""
    return {k: float(v) for k, v in validation_metrics(model, tensors, idx, config.sv_fraction, batch_size).items()}


class _SessionFeed:
    """The trials of one Dataset as ``train`` uses them: checked, as tensors, split into train and
    valid, shuffled each epoch into batches of ``batch_size`` (``training.sessions.SessionsFeed`` is
    the same for several sessions)."""

    def __init__(self, model, ds: xr.Dataset, config: TrainConfig):
        validate(ds, require_train=True)
        if config.shift_std > 0:
            check_shift(config.shift_max, ds.sizes["time"])
        model.check_data(ds)
        self.train_idx, self.valid_idx = train_valid_indices(
            ds, "training needs them for the learning-rate schedule, early stopping and model selection")
        self.config = config
        self.tensors = _to_tensors(ds, config)
        self.steps_per_epoch = math.ceil(len(self.train_idx) / config.batch_size)
        self.n_time = ds.sizes["time"]
        self.truth = _truth_nll(ds, self.valid_idx)
        self._example = _example_picker(ds, self.valid_idx)
        self.skip = None  # select_by='valid_recon_artifact_free': the entries near artifacts, left out
        if config.select_by == "valid_recon_artifact_free":
            if not hasattr(model, "entry_nll"):
                raise ConfigError(f"select_by='valid_recon_artifact_free' needs a model with entry_nll (LFADS); "
                                  f"{type(model).__name__} has none. Use select_by='valid_recon'.")
            self.skip = torch.as_tensor(near_artifacts(ds).values, device=config.device)[self.valid_idx]

    def shuffle(self, generator: torch.Generator) -> None:
        self.order = self.train_idx[torch.randperm(len(self.train_idx), generator=generator)]

    def step_batch(self, step: int) -> Batch:
        size = self.config.batch_size
        return _training_step_batch(self.tensors, self.order[step * size:(step + 1) * size], self.config)

    def validation(self, model) -> dict[str, float]:
        size = max(self.config.batch_size, 256)
        row = _validation_metrics(model, self.tensors, self.valid_idx, self.config, size)
        if self.skip is not None:
            model.eval()
            with torch.no_grad():
                row["valid_recon_artifact_free"] = float(artifact_free_nll(
                    model.entry_nll, validation_batches(self.tensors, self.valid_idx, self.config.sv_fraction, size),
                    self.skip))
            model.train()
        return row

    def example(self, model) -> dict:
        return self._example(model, self.tensors)


# ---------------------------------------------------------------------------------------------
# Checkpoints (lfads_nb.training.checkpoint)
# ---------------------------------------------------------------------------------------------

def load_model(path) -> LFADS | NDT:
    """The model stored in a checkpoint file (e.g. ``run/best.pt``), in eval mode: an LFADS, or
    the family its ``model_family`` names."""
    ckpt = load_checkpoint(path)
    family = ckpt.get("model_family", "lfads")
    if family not in MODELS:
        raise CheckpointError(f"{path} holds a model of family {family!r}, which this lfads_nb does not know "
                              f"({sorted(MODELS)}); load it with the lfads_nb version that wrote it.")
    model_class, config_class = MODELS[family]
    model = model_class(config_class(**ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    return model.eval()


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------

@dataclass
class TrainResult:
    model: LFADS           # with the best checkpoint's weights, in eval mode
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
        self.best_score = math.inf           # for model selection / early stopping
        self.best_epoch = -1
        self.epochs_since_best = 0
        self.lr = config.lr


def _ramp(epoch_position: float, ramp_epochs: int) -> float:
    return 1.0 if ramp_epochs == 0 else min(1.0, epoch_position / ramp_epochs)


def curriculum_bins(config: TrainConfig, epoch: int, n_time: int) -> int:
    """How many leading bins of each trial the training steps of ``epoch`` (0-based) use: the
    sequence-length curriculum of Sedler et al. 2023, min(curriculum_bins * (epoch //
    curriculum_epochs + 1), n_time); all ``n_time`` bins without a curriculum."""
    if not config.curriculum_bins:
        return n_time
    return min(config.curriculum_bins * (epoch // config.curriculum_epochs + 1), n_time)


def first_bins(batch, n: int):
    """The first ``n`` bins of every trial of a ``Batch`` (or of each session's, for a dict of them):
    what the encoder sees, what the loss counts and the external inputs, all cut to the same
    bins, so no part of the model runs past the bins the loss counts."""
    if isinstance(batch, dict):
        return {name: first_bins(b, n) for name, b in batch.items()}
    if n >= batch.target.shape[-2]:
        return batch
    return batch._replace(**{name: getattr(batch, name)[..., :n, :] for name in
                             ("encoder_data", "target", "encoder_mask", "loss_mask", "heldout")},
                          ext=None if batch.ext is None else batch.ext[:, :n])


def train(
    model: LFADS,
    ds: xr.Dataset,
    config: TrainConfig | None = None,
    *,
    checkpoint_dir=None,
    resume: bool = True,
    progress=None,
    live: bool | None = None,
) -> TrainResult:
    """Train ``model`` on the 'train' trials of ``ds``, validating on its 'valid' trials.

    ``checkpoint_dir``: where ``last.pt`` (every epoch) and ``best.pt`` go; with ``resume``
    a run finds ``last.pt`` there and continues from it. ``progress``: a
    :class:`lfads_nb.dashboard.Progress`; by default the live dashboard in JupyterLab and text
    elsewhere (``live`` forces either). Returns a :class:`TrainResult` whose model holds the best
    checkpoint's weights. A NaN or infinite loss raises :class:`TrainingDiverged` after restoring
    the best weights so far (``err.result`` holds them).

    ``ds`` may be a DataTree of sessions (``lfads_nb.data.make_sessions``) for a model built on it
    (a ``StitchedLFADS``); every step then mixes the sessions (``training.sessions.SessionsFeed``).
    """
    from ..dashboard import make_progress
    from .sessions import SessionsFeed

    config = config or TrainConfig()
    check_device(config.device)
    if isinstance(ds, xr.DataTree) and config.select_by == "valid_recon_artifact_free":
        raise ConfigError("select_by='valid_recon_artifact_free' works on one recording; use 'valid_recon' for sessions.")
    feed = (SessionsFeed if isinstance(ds, xr.DataTree) else _SessionFeed)(model, ds, config)
    model.check_training(config)

    torch.manual_seed(config.seed)
    device = torch.device(config.device)
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    shuffle = torch.Generator().manual_seed(config.seed)
    state = _RunState(config)

    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    best_state = None
    if ckpt_dir is not None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        last = ckpt_dir / "last.pt"
        if resume and last.exists():
            state = restore_training(last, state, model, optimizer, shuffle, config)
        best_path = ckpt_dir / "best.pt"
        if state.best_epoch >= 0 and best_path.exists():
            best_state = load_checkpoint(best_path)["model"]

    progress = progress or make_progress(live)
    progress.start(config.max_epochs)
    steps_per_epoch = feed.steps_per_epoch
    stop_reason = "max_epochs"

    while state.epoch < config.max_epochs:
        t0 = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = state.lr
        feed.shuffle(shuffle)
        sums = {}
        bins = curriculum_bins(config, state.epoch, feed.n_time)
        for step in range(steps_per_epoch):
            position = state.epoch + step / steps_per_epoch
            kl_ramp, l2_ramp = _ramp(position, config.kl_ramp_epochs), _ramp(position, config.l2_ramp_epochs)
            loss, parts = model.loss(first_bins(feed.step_batch(step), bins), loss_weights(config, kl_ramp, l2_ramp))
            if not torch.isfinite(loss):
                raise _diverged(model, best_state, state, progress, ckpt_dir, config, step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            for k, v in {"train_loss": loss, **parts}.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            if progress.stop_requested:
                stop_reason = "stop_button"
                break
        if stop_reason == "stop_button" and step < steps_per_epoch - 1:
            break  # a partial epoch is not recorded; the last checkpoint stands

        row = {"epoch": state.epoch}
        row.update({k: v / steps_per_epoch for k, v in sums.items()})
        row.update(feed.validation(model))
        row.update(kl_ramp=kl_ramp, l2_ramp=l2_ramp, train_bins=bins, lr=state.lr, epoch_seconds=time.perf_counter() - t0,
                   **feed.truth)
        if not math.isfinite(row["valid_recon"]):
            raise _diverged(model, best_state, state, progress, ckpt_dir, config, steps_per_epoch)
        whole_trials = bins == feed.n_time  # the lr schedule and early stopping wait for the curriculum's end
        improved = _end_of_epoch(state, row, config, whole_trials)
        state.history.append(row)
        state.epoch += 1
        if improved:
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if ckpt_dir is not None:
            if improved:
                save_checkpoint(training_checkpoint(model, optimizer, shuffle, state, config, best_state), ckpt_dir / "best.pt")
            save_checkpoint(training_checkpoint(model, optimizer, shuffle, state, config), ckpt_dir / "last.pt")
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
    if score < state.best_score:
        state.best_score, state.best_epoch, state.epochs_since_best = score, state.epoch, 0
        return True
    state.epochs_since_best += 1
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


def _truth_nll(ds: xr.Dataset, valid_idx: torch.Tensor) -> dict[str, float]:
    """``{'valid_truth_nll': NLL per entry of the true rates on the validation trials}`` for spike
    data with ``rates_true`` (the reference line of the training curves); empty otherwise."""
    if kind_of(ds).name != "spikes" or "rates_true" not in ds:
        return {}
    valid = ds.isel(trial=valid_idx.cpu().numpy())
    try:
        return {"valid_truth_nll": nll_per_entry(valid["rates_true"], valid["spikes"], float(ds.attrs["bin_width"]))}
    except DataError:  # truth with NaN or negative rates: no reference line rather than no training
        return {}


def _example_picker(ds: xr.Dataset, valid_idx: torch.Tensor, n_neurons: int = 3):
    """A function giving one validation trial's inferred vs true observation mean (rates in Hz
    for spikes; the kind's output and units otherwise) for the dashboard."""
    trial = int(valid_idx[0])
    counts = np.nan_to_num(ds[observed_variable(ds)].values[trial])
    neurons = np.argsort(counts.sum(axis=0))[::-1][:n_neurons]  # the most active, so the plot says something
    bin_width = float(ds.attrs["bin_width"])
    kind = kind_of(ds)
    truth = ds[kind.truth].values[trial][:, neurons] if kind.truth in ds else None

    def example(model, tensors):
        model.eval()
        with torch.no_grad():
            mean = model.infer_batch(_recorded_batch(tensors, slice(trial, trial + 1)), sample=False)["mean"]
            rates = kind.to_output(mean, bin_width)[0].cpu().numpy()
        model.train()
        return {
            "trial": ds["trial"].values[trial].item(),
            "time": ds["time"].values,
            "neurons": [ds["neuron"].values[n].item() for n in neurons],
            "rates": rates[:, neurons],
            "rates_true": truth,
            "spikes": counts[:, neurons],
        }

    return example


# ---------------------------------------------------------------------------------------------
# Inference
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def infer(model: LFADS, ds: xr.Dataset, *, n_samples: int = 0, batch_size: int = 256, seed: int = 0) -> xr.Dataset:
    """Run the trained model on every trial of ``ds``.

    ``n_samples`` 0 uses the posterior means; N > 0 averages every output over N posterior
    samples (seeded by ``seed``). Returns a Dataset aligned to ``ds`` (same ``trial`` ids,
    ``split``, ``condition``, ``time``, ``neuron``) with the observation mean named by the data's
    kind (``rates`` in Hz, ``emg_mean`` or ``events_mean`` in the data's units), ``factors``,
    ``inputs`` (inferred u_t), ``ic_mean`` (posterior mean of g0) and ``generator_states``.

    ``ds`` may be a DataTree of sessions for a ``StitchedLFADS``: the result is then a DataTree
    with each session's inference, aligned to that session's Dataset, under its name.
    """
    if isinstance(ds, xr.DataTree):
        from .sessions import infer_sessions

        return infer_sessions(model, ds, n_samples=n_samples, batch_size=batch_size, seed=seed)
    validate(ds)
    model.check_data(ds)
    if n_samples < 0:
        raise ConfigError(f"n_samples must be >= 0 (0 = posterior means), got {n_samples}.")
    device = next(model.parameters()).device
    config = TrainConfig(device=str(device))
    tensors = _to_tensors(ds, config)
    bin_width = float(ds.attrs["bin_width"])
    kind = kind_of(ds)
    was_training = model.training
    model.eval()
    generator_state = torch.get_rng_state()
    torch.manual_seed(seed)
    parts = {}
    for start in range(0, ds.sizes["trial"], batch_size):
        batch = _recorded_batch(tensors, slice(start, start + batch_size))
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
    out = xr.Dataset(
        variables,
        coords=coords,
        attrs={"bin_width": bin_width, "posterior_samples": n_samples},
    )
    return out


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
    tensors = _to_tensors(ds, TrainConfig())
    n = ds.sizes["trial"]
    times = []
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            for i in range(warmup + repeats):
                batch = _recorded_batch(tensors, slice(i % n, i % n + 1))
                start = time.thread_time()
                model.infer_batch(batch, sample=False)
                if i >= warmup:
                    times.append(time.thread_time() - start)
    finally:
        torch.set_num_threads(threads)
        model.to(device).train(was_training)
    return 1e3 * float(np.median(times))
