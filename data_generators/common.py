"""Pieces every synthetic generator shares: option checks, seeded random streams, the
condition/trial layout with its train/valid split, Poisson sampling and Dataset assembly.

Generators draw each kind of randomness (network weights, initial states, spikes, ...)
from its own stream spawned from one ``seed``, so changing one option (say, the number of
trials) leaves the unrelated draws (say, the network weights) unchanged.
"""
from __future__ import annotations

import numbers

import numpy as np
import xarray as xr

import lfads_nb
from lfads_nb import ConfigError


# ----------------------------------------------------------------------------- option checks
def check_count(name: str, value, minimum: int = 1) -> int:
    """An integer option that must be >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name} must be a whole number >= {minimum}, got {value!r}.")
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}; pass a larger {name}.")
    return int(value)


def check_positive(name: str, value, unit: str = "") -> float:
    """A finite real option that must be > 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a finite number > 0{' (' + unit + ')' if unit else ''}, got {value!r}.")
    return float(value)


def check_fraction(name: str, value) -> float:
    """A real option strictly between 0 and 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < 1:
        raise ConfigError(f"{name} must lie strictly between 0 and 1 (e.g. 0.8), got {value!r}.")
    return float(value)


def check_choice(name: str, value, choices: tuple[str, ...]) -> str:
    """A string option from a fixed set."""
    if value not in choices:
        raise ConfigError(f"Unknown {name} {value!r}; use one of {choices}.")
    return value


def check_seed(seed) -> int:
    """A non-negative integer seed."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer (e.g. seed=0), got {seed!r}.")
    return int(seed)


def random_streams(seed: int, names: tuple[str, ...]) -> dict[str, np.random.Generator]:
    """One independent ``numpy.random.Generator`` per name, all derived from ``seed``.

    Streams are spawned in the order of ``names``: append new names at the end so
    existing streams (and so existing datasets) stay the same.
    """
    children = np.random.SeedSequence(check_seed(seed)).spawn(len(names))
    return {name: np.random.default_rng(child) for name, child in zip(names, children)}


# ----------------------------------------------------------------------------- trials and splits
def condition_labels(n_conditions: int, trials_per_condition: int) -> np.ndarray:
    """Condition of every trial, trials grouped by condition: shape (n_conditions * trials_per_condition,)."""
    return np.repeat(np.arange(n_conditions), trials_per_condition)


def stratified_split(
    n_conditions: int, trials_per_condition: int, train_fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """'train'/'valid' label per trial (trials grouped by condition as in ``condition_labels``).

    Rule: ``n_valid = round((1 - train_fraction) * n_trials)`` trials are 'valid', the rest
    'train'. They are spread over conditions as evenly as possible: every condition gets
    ``n_valid // n_conditions`` valid trials and ``n_valid % n_conditions`` randomly chosen
    conditions get one more; inside a condition the valid trials are picked at random.
    So 10 trials x 0.8 gives exactly 8 train / 2 valid in every condition, and
    100 conditions x 8 trials x 0.8 gives 640 / 160 overall (60 conditions with 2 valid
    trials, 40 with 1).
    """
    check_fraction("train_fraction", train_fraction)
    n_trials = n_conditions * trials_per_condition
    n_valid = int(np.floor((1 - train_fraction) * n_trials + 0.5))
    if n_valid == 0 or n_valid == n_trials:
        raise ConfigError(
            f"train_fraction={train_fraction} of {n_trials} trials leaves "
            f"{'no valid' if n_valid == 0 else 'no train'} trials; use more trials or a "
            "train_fraction nearer 0.5."
        )
    per_condition = np.full(n_conditions, n_valid // n_conditions)
    per_condition[rng.choice(n_conditions, n_valid % n_conditions, replace=False)] += 1
    # Rank of each trial inside its condition under a random order; the lowest ranks are valid.
    rank = np.argsort(np.argsort(rng.random((n_conditions, trials_per_condition)), axis=1), axis=1)
    is_valid = rank < per_condition[:, None]
    return np.where(is_valid.ravel(), "valid", "train")


# ----------------------------------------------------------------------------- dynamics
def rk4(derivative, initial_states: np.ndarray, n_samples: int, interval: float, max_step: float) -> np.ndarray:
    """Classical RK4 of ``derivative`` ((n, d) -> (n, d)) from ``initial_states`` (n, d).

    Samples every ``interval`` time units, each split into equal steps of at most ``max_step``.
    Returns (n, n_samples, d), the states at t = 0, interval, 2 interval, ...
    """
    n_steps = int(np.ceil(interval / max_step))
    h = interval / n_steps
    s = np.array(initial_states, dtype=np.float64)
    out = np.empty((s.shape[0], n_samples, s.shape[-1]))
    out[:, 0] = s
    for k in range(1, n_samples):
        for _ in range(n_steps):
            k1 = derivative(s)
            k2 = derivative(s + 0.5 * h * k1)
            k3 = derivative(s + 0.5 * h * k2)
            k4 = derivative(s + h * k3)
            s = s + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)
        out[:, k] = s
    return out


# ----------------------------------------------------------------------------- observations
def poisson_spikes(rates: np.ndarray, bin_width: float, rng: np.random.Generator) -> np.ndarray:
    """Spike counts per bin, ``Poisson(rate x bin_width)``; ``rates`` in Hz, any shape; int32."""
    return rng.poisson(np.asarray(rates, dtype=np.float64) * bin_width).astype(np.int32)


def assemble(
    spikes: np.ndarray,
    bin_width: float,
    *,
    kind: str = "spikes",
    condition: np.ndarray,
    split_labels: np.ndarray,
    neuron_ids: np.ndarray,
    coords: dict[str, np.ndarray],
    attrs: dict,
    descriptions: dict[str, str],
    **truth: np.ndarray,
) -> xr.Dataset:
    """Build the Dataset of ``kind`` (``spikes`` holds its values) with ``lfads_nb.make_dataset``, add the extra dims' coords
    (``latent``, ``behavior_dim``, ``input``), per-variable descriptions and the generator
    settings in ``attrs`` (netCDF-serialisable scalars and strings only), then validate it."""
    ds = lfads_nb.make_dataset(
        spikes, bin_width, kind, split_labels=split_labels, condition=condition, neuron_ids=neuron_ids, **truth
    )
    ds = ds.assign_coords(coords)
    for var, text in descriptions.items():
        ds[var].attrs["description"] = text
    ds.attrs.update(attrs)
    return lfads_nb.validate(ds)
