"""Partial observation: which entries of a recording were seen (SBTT's setting)."""
from __future__ import annotations

import numpy as np
import xarray as xr

import lfads_nb
from lfads_nb import ConfigError

from .common import check_seed


def observe_random_neurons(ds: xr.Dataset, n_observed: int, seed: int = 0) -> xr.Dataset:
    """``ds`` with only ``n_observed`` neurons observed in each (trial, bin), the rest NaN.

    The observed neurons of each (trial, time bin) are drawn uniformly without replacement,
    independently across bins and trials, once, from ``seed``: the "bandwidth" protocol of
    sbtt-demo (Zhu, Sedler et al. 2021), where the same mask serves training and validation.
    The observed variable becomes float with NaN where not observed; truth variables are kept
    whole. ``attrs['n_observed']`` records the bandwidth.
    """
    variable = lfads_nb.kind_of(ds).variable
    n_neurons = ds.sizes["neuron"]
    if isinstance(n_observed, bool) or not isinstance(n_observed, (int, np.integer)) or not 1 <= n_observed <= n_neurons:
        raise ConfigError(f"n_observed must be a whole number of neurons from 1 to {n_neurons}, got {n_observed!r}.")
    rng = np.random.default_rng(check_seed(seed))
    rank = np.argsort(rng.random((ds.sizes["trial"], ds.sizes["time"], n_neurons)), axis=-1).argsort(axis=-1)
    values = ds[variable].values.astype(np.float32)
    values[rank >= n_observed] = np.nan
    out = ds.copy()
    out[variable] = (ds[variable].dims, values, ds[variable].attrs)
    out.attrs["n_observed"] = int(n_observed)
    return lfads_nb.validate(out)
