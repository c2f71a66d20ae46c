"""Spiking data driven by the Lorenz attractor (the standard 3-D latent benchmark).

Latent state s = (x, y, z) follows the Lorenz equations with sigma 10, rho 28, beta 8/3:

    dx/dt = sigma (y - x),    dy/dt = x (rho - z) - y,    dz/dt = x y - beta z

(one public MATLAB generator drops the -y term of dy/dt; this one keeps it). Time runs at
6 Lorenz time units per second of trial time (the 0.006 per ms of the LFADS demo data), so a
1 s trial covers several loops of the attractor. Each condition starts at its own point on
the attractor; its trials share the latent trajectory and differ only in their spikes.
Latents are centred and scaled by their max |value| over the dataset, then
log-rate = gain W z + log(base_rate) with W entries +-U[1, 2] (gain 1 by default), and spikes are
Poisson counts.
"""
from __future__ import annotations

import numpy as np
import xarray as xr

from .behavior import VELOCITY_DESCRIPTION, VELOCITY_DIMS, velocity_readout
from .common import (
    assemble,
    check_count,
    check_fraction,
    check_positive,
    condition_labels,
    poisson_spikes,
    random_streams,
    rk4,
    stratified_split,
)

SIGMA, RHO, BETA = 10.0, 28.0, 8.0 / 3.0
LORENZ_TIME_PER_SECOND = 6.0  # Lorenz time units per second of trial time
MAX_STEP = 0.002  # RK4 step, Lorenz time units: absolute error below 1e-6 per 20 ms bin
BURN_IN = 20.0  # Lorenz time units from a random start to a point on the attractor
LATENT_NAMES = ("x", "y", "z")
# One stream per kind of randomness; append new names at the end (see common.random_streams).
STREAMS = ("conditions", "neurons", "split", "spikes", "behavior")


def lorenz_derivative(states: np.ndarray) -> np.ndarray:
    """The Lorenz vector field ds/dt at ``states`` (..., 3) = (x, y, z); returns (..., 3)."""
    x, y, z = np.moveaxis(np.asarray(states, dtype=np.float64), -1, 0)
    return np.stack([SIGMA * (y - x), x * (RHO - z) - y, x * y - BETA * z], axis=-1)


def integrate_lorenz(initial_states: np.ndarray, n_samples: int, interval: float) -> np.ndarray:
    """Integrate the Lorenz equations with classical RK4 and sample the trajectories.

    initial_states: (n, 3) starting points. n_samples: samples per trajectory. interval:
    Lorenz time units between samples; each interval is split into equal RK4 steps of at
    most ``MAX_STEP``. Returns (n, n_samples, 3): the states at t = 0, interval, 2 interval, ...
    """
    n_samples = check_count("n_samples", n_samples)
    interval = check_positive("interval", interval, "Lorenz time units")
    return rk4(lorenz_derivative, initial_states, n_samples, interval, MAX_STEP)


def lorenz(
    seed: int = 0,
    *,
    n_neurons: int = 29,
    n_conditions: int = 65,
    trials_per_condition: int = 24,
    n_bins: int = 50,
    bin_width: float = 0.02,
    base_rate: float = 5.0,
    gain: float = 1.0,
    train_fraction: float = 0.8,
) -> xr.Dataset:
    """Poisson spikes driven by Lorenz latents, with ground truth. Defaults: "Lorenz-29".

    Defaults give the shared Lorenz-29 benchmark shape: 29 neurons, 50 bins of 20 ms (1 s),
    65 conditions x 24 trials = 1560 trials, 1248 train / 312 valid. With base_rate 5 Hz
    the median rate is about 5 Hz, the mean about 8-9 Hz and the 99th percentile about
    60-75 Hz (the max of exp(W z) can reach a few hundred Hz on a few bins).

    Parameters
    ----------
    seed: all randomness derives from it; same seed and options give an identical Dataset.
    n_neurons: number of neurons.
    n_conditions: number of initial states, each a random start run for ``BURN_IN``
        Lorenz time units onto the attractor; trials of a condition share the trajectory.
    trials_per_condition: trials per condition.
    n_bins: time bins per trial.
    bin_width: seconds per bin; the latents are sampled once per bin, ``bin_width * 6``
        Lorenz time units apart, from a finer RK4 integration.
    base_rate: the rate at the centre of the attractor (z = 0), Hz: log-rate = gain W z + log(base_rate).
    gain: scales the log-rate modulation: above 1, sparser, burstier rates, so each spike says
        more about the latent state (``benchmarks/sbtt_curve.py`` uses 1.5 with base_rate 4 Hz to
        match the information in sbtt-demo's Lorenz set).
    train_fraction: fraction of trials labelled 'train', the rest 'valid', spread evenly
        over conditions (rule in ``common.stratified_split``).

    Returns
    -------
    Dataset with dims trial (grouped by condition), time (n_bins), neuron (n_neurons);
    ``spikes`` (int32 counts), ``rates_true`` (Hz), ``latents_true`` (trial, time,
    latent=['x', 'y', 'z']): each Lorenz variable centred over the dataset and divided by
    its max |value|, so within [-1, 1] (attrs ``lorenz_center_<v>`` and ``lorenz_scale_<v>``
    map them back: state = latents_true * scale + center); ``behavior`` (trial, time, behavior_dim=['vx', 'vy']):
    a fixed random linear map of ``latents_true``. Coords ``condition`` and ``split``;
    ``attrs`` record the generator and its settings.
    """
    n_neurons = check_count("n_neurons", n_neurons)
    n_conditions = check_count("n_conditions", n_conditions)
    trials_per_condition = check_count("trials_per_condition", trials_per_condition)
    n_bins = check_count("n_bins", n_bins)
    bin_width = check_positive("bin_width", bin_width, "seconds")
    base_rate = check_positive("base_rate", base_rate, "Hz")
    gain = check_positive("gain", gain, "log-rate scale")
    train_fraction = check_fraction("train_fraction", train_fraction)
    rng = random_streams(seed, STREAMS)

    # One trajectory per condition, from a point on the attractor.
    start = integrate_lorenz(rng["conditions"].standard_normal((n_conditions, 3)), 2, BURN_IN)[:, -1]
    trajectories = integrate_lorenz(start, n_bins, bin_width * LORENZ_TIME_PER_SECOND)
    center = trajectories.mean(axis=(0, 1))
    scale = np.abs(trajectories - center).max(axis=(0, 1))
    latents = (trajectories - center) / scale  # (condition, time, 3)

    # Rates per condition, then trials.
    weights = rng["neurons"].uniform(1, 2, (n_neurons, 3)) * rng["neurons"].choice([-1.0, 1.0], (n_neurons, 3))
    condition = condition_labels(n_conditions, trials_per_condition)
    rates = (base_rate * np.exp(gain * (latents @ weights.T))).astype(np.float32)[condition]
    behavior, _ = velocity_readout(latents, rng["behavior"])

    return assemble(
        poisson_spikes(rates, bin_width, rng["spikes"]),
        bin_width,
        condition=condition,
        split_labels=stratified_split(n_conditions, trials_per_condition, train_fraction, rng["split"]),
        neuron_ids=np.arange(n_neurons),
        coords={"latent": list(LATENT_NAMES), "behavior_dim": list(VELOCITY_DIMS)},
        attrs={
            "generator": "lorenz",
            "description": (
                f"Lorenz latents (sigma {SIGMA:g}, rho {RHO:g}, beta 8/3), {n_neurons} Poisson neurons "
                f"at base rate {base_rate:g} Hz, {n_conditions} conditions x {trials_per_condition} trials"
            ),
            "seed": int(seed),
            "n_conditions": n_conditions,
            "trials_per_condition": trials_per_condition,
            "train_fraction": train_fraction,
            "base_rate": base_rate,
            "gain": gain,
            "lorenz_time_per_second": LORENZ_TIME_PER_SECOND,
            # Lorenz state = latents_true * lorenz_scale_<v> + lorenz_center_<v>, v in x, y, z.
            **{f"lorenz_center_{v}": float(c) for v, c in zip(LATENT_NAMES, center)},
            **{f"lorenz_scale_{v}": float(c) for v, c in zip(LATENT_NAMES, scale)},
        },
        descriptions={
            "latents_true": "Lorenz state, each variable centred and divided by its max |value|",
            "behavior": VELOCITY_DESCRIPTION,
        },
        rates_true=rates,
        latents_true=latents.astype(np.float32)[condition],
        behavior=behavior[condition],
    )
