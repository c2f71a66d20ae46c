"""Artifacts in rectified EMG found without truth, and left out as not observed.

EMG artifacts (cable movement, stimulation, heart beats) are brief, much larger than the muscle's
own signal at that moment, and usually hit many channels in the same bin. ``detect_artifacts``
looks for exactly that, in any units and at any bin width, from the data alone:

1. **Local ratio**: each entry over its channel's running median (``window`` bins, centred), so
   a burst of real activity raises the baseline with it while a few-bin artifact does not.
2. **Onsets**: an entry is an artifact onset if its ratio exceeds ``shared_ratio`` in a bin where
   at least ``min_channels`` channels do (a shared event), or if it exceeds ``single_ratio`` on
   its own (an isolated spike far outside the noise of rectified EMG).
3. **Extent**: from each onset the flag spreads to the neighbouring bins of the same channel while
   their ratio stays above ``tail_ratio`` (hysteresis thresholding), at most ``max_extent`` bins,
   so an artifact's decaying tail goes with it.

Why those ratios: a bin of rectified EMG around a mean mu has a coefficient of variation of at
most about 0.76 (one half-normal sample); its ratio to the local median exceeds 3 with
probability below 5 %, so a quarter of the channels passing 3 in one bin by chance is rare, and
a ratio of 10 has a probability below 1e-6. The baseline is the running maximum of the running
median, so the rising edge of a real burst is compared with the burst's own level, not with the
quiet bins before it. On the benchmark recordings (benchmarks/emg_unseen.py and the tutorial's
data) these defaults flag 1 to 5 % of the entries, 87 to 99 % of them on artifacts, and catch
69 to 92 % of the artifact amplitude.

``mask_artifacts`` turns the flags into NaN, which lfads_nb reads as *not observed*: the encoder
sees zero there and the loss leaves them out (``transforms.sbtt``), so LFADS infers the activation
through an artifact from the bins around it instead of reproducing it.

``artifact_free_nll`` is a validation NLL that does not reward reproducing artifacts: the mean
entry NLL over the bins away from the flags (``near_artifacts``), with the largest ``ARTIFACT_TRIM``
share left out (the artifacts the detector missed). PBT's artifact-free fitness
(``PBTConfig(fitness_skips_artifacts=True)``) and checkpoint selection by
``TrainConfig(select_by='valid_recon_artifact_free')`` both compute it here.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import xarray as xr
from scipy.ndimage import maximum_filter, median_filter

from .schema import observed_variable
from ..errors import ConfigError, DataError

DIMS = ("trial", "time", "neuron")
ARTIFACT_TRIM = 0.01  # artifact_free_nll: share of the largest entry NLLs left out besides the bins near flags
NEAR_MARGIN = 2       # near_artifacts: bins either side of a flagged entry that go with it


def detect_artifacts(emg: xr.DataArray, *, window: int = 11, shared_ratio: float = 3.0, min_channels: int | None = None,
                     single_ratio: float = 10.0, tail_ratio: float = 1.5, max_extent: int = 6) -> xr.DataArray:
    """Entries of rectified EMG that look like artifacts, found without truth (module docstring).

    ``emg`` (trial, time, neuron), non-negative, any units (NaN: not observed, never flagged).
    ``window``: bins of the running median (odd); ``min_channels``: channels that must pass
    ``shared_ratio`` in one bin for a shared event (None: a quarter of the channels, at least 2).
    Returns a bool DataArray like ``emg``, True on the flagged entries.
    """
    if not isinstance(emg, xr.DataArray) or tuple(emg.dims) != DIMS:
        raise DataError(f"detect_artifacts needs a DataArray with dims {DIMS}; got "
                        f"{getattr(emg, 'dims', type(emg).__name__)}. Pass ds['emg'].")
    if window < 3 or window % 2 == 0:
        raise ConfigError(f"window must be an odd number of bins >= 3, got {window!r}.")
    if not 1 < tail_ratio <= shared_ratio <= single_ratio:
        raise ConfigError("Need 1 < tail_ratio <= shared_ratio <= single_ratio, got "
                          f"{tail_ratio}, {shared_ratio}, {single_ratio}.")
    x = emg.values.astype(float)
    if np.nanmin(x) < 0:
        raise DataError("detect_artifacts needs rectified (non-negative) EMG; rectify it first (np.abs) or "
                        "shift it so its noise floor is at 0.")
    n_channels = x.shape[-1]
    needed = max(2, int(np.ceil(0.25 * n_channels))) if min_channels is None else int(min_channels)
    if not 1 <= needed <= n_channels:
        raise ConfigError(f"min_channels must be between 1 and the {n_channels} channels, got {min_channels!r}.")
    observed = np.isfinite(x)
    filled = np.where(observed, x, np.nanmedian(x, axis=(0, 1)))
    # the running median, then its running maximum: a burst's level reaches its own rising edge
    baseline = maximum_filter(median_filter(filled, size=(1, window, 1), mode="nearest"), size=(1, window, 1),
                              mode="nearest")
    floor = 0.05 * np.nanmedian(x, axis=(0, 1)) + 1e-12  # a silent stretch must not make its noise infinite
    ratio = np.where(observed, filled / np.maximum(baseline, floor), 0.0)
    high = ratio > shared_ratio
    shared = high.sum(axis=-1, keepdims=True) >= needed
    flagged = (high & shared) | (ratio > single_ratio)
    tail = ratio > tail_ratio
    for direction in (1, -1):  # hysteresis: spread along each channel while the ratio stays high
        grow = flagged.copy()
        for _ in range(max_extent):
            grow = np.roll(grow, direction, axis=1)
            edge = 0 if direction == 1 else -1
            grow[:, edge] = False
            grow &= tail & ~flagged
            if not grow.any():
                break
            flagged |= grow
    return emg.copy(data=flagged).rename("artifact_flag")


def mask_artifacts(ds: xr.Dataset, flags: xr.DataArray | None = None, **detector) -> xr.Dataset:
    """``ds`` with its ``emg`` set to NaN (not observed) on the artifact entries ``flags`` (default:
    ``detect_artifacts(ds['emg'], **detector)``); the flags are kept as ``artifact_flag``."""
    flags = detect_artifacts(ds["emg"], **detector) if flags is None else flags
    out = ds.copy()
    out["emg"] = ds["emg"].where(~flags.values)
    out["emg"].attrs = ds["emg"].attrs
    out["artifact_flag"] = flags
    return out


def near_artifacts(ds: xr.Dataset, margin: int = NEAR_MARGIN) -> xr.DataArray:
    """(trial, time, neuron) bool: every entry of a bin within ``margin`` bins of a flagged entry.

    The flags are ``ds['artifact_flag']`` when ``ds`` holds them (data from ``mask_artifacts``),
    else ``detect_artifacts`` of the recorded EMG (found without truth). The margin and the whole
    bin (every channel) take in the channels and tail bins of an event the detector missed.
    """
    if int(margin) != margin or margin < 0:
        raise ConfigError(f"margin must be a whole number of bins >= 0, got {margin!r}.")
    flags = ds["artifact_flag"] if "artifact_flag" in ds else detect_artifacts(ds[observed_variable(ds)])
    hit = flags.transpose(*DIMS).values.any(-1)
    near = maximum_filter(hit, size=(1, 2 * int(margin) + 1), mode="constant", cval=False)
    return flags.copy(data=np.broadcast_to(near[..., None], flags.shape).copy()).rename("near_artifact")


def artifact_free_nll(entry_nll, batches, skip: torch.Tensor, *, heldout: bool = False,
                      trim: float = ARTIFACT_TRIM) -> torch.Tensor:
    """Validation NLL per entry away from artifacts, trimmed (module docstring).

    ``entry_nll``: batch -> NLL of every entry under the posterior means, (B, T, N) for one model
    (``LFADS.entry_nll``) or (P, B, T, N) for a population. ``batches``: the validation batches
    (the encoder reads them as recorded, artifacts included). ``skip``: (V, T, N) bool, True on
    the entries to leave out (``near_artifacts``) for the V trials of ``batches`` in order.
    ``heldout``: count the sample-validation held-out entries (``valid_sv_nll``) instead of the
    visible ones (``valid_recon``). Each model's mean leaves out its largest ``trim`` share of the
    counted entry NLLs. Returns a 0-d (one model) or (P,) float64 tensor (NaN if nothing counted).
    Call it under ``torch.no_grad()`` with the model in eval mode.
    """
    if not 0 <= trim < 1:
        raise ConfigError(f"trim must be in [0, 1), got {trim!r}.")
    kept, start = [], 0
    for batch in batches:
        n = batch.target.shape[0]
        counted = (batch.heldout if heldout else batch.loss_mask) & ~skip[start:start + n]
        start += n
        kept.append(torch.where(counted, entry_nll(batch), torch.nan).flatten(-3))
    kept = torch.cat(kept, dim=-1).double()
    means = []
    for row in kept.reshape(-1, kept.shape[-1]):
        values = row[~row.isnan()].sort().values
        means.append(values[:max(1, math.ceil((1 - trim) * len(values)))].mean() if len(values)
                     else torch.tensor(math.nan, dtype=torch.float64, device=row.device))
    return torch.stack(means).reshape(kept.shape[:-1])


__all__ = ["ARTIFACT_TRIM", "artifact_free_nll", "detect_artifacts", "mask_artifacts", "near_artifacts"]
