"""The chaotic RNN synthetic set of the original LFADS paper (Sussillo et al. 2016,
Pandarinath et al. 2018), with its input-pulse variant and the simpler benchmark variant.

A random recurrent network, N units with state x (unitless), integrated with Euler steps of
one bin:

    x_k = (1 - dt/tau) x_{k-1} + (dt/tau) (gain W tanh(x_{k-1}) + b u_k),    W ~ N(0, 1/N)

bin k holds the state after k + 1 steps from the condition's initial state x0 ~ N(0, I).
Gain 1.5 gives chaotic but smooth activity, 2.5 faster and harder dynamics. With
``input_pulses`` each trial gets one pulse u_k = 20 at a random bin in the middle half of
the trial along a fixed random direction b ~ N(0, I): trials of one condition then diverge,
which only a model with inferred inputs can explain. Rates come from tanh(x) and spikes are
Poisson counts per bin.
"""
from __future__ import annotations

import numpy as np
import xarray as xr

from lfads_nb import ConfigError

from .behavior import VELOCITY_DESCRIPTION, VELOCITY_DIMS, velocity_readout
from .common import (
    assemble,
    check_choice,
    check_count,
    check_fraction,
    check_positive,
    condition_labels,
    poisson_spikes,
    random_streams,
    stratified_split,
)

RATE_MAPS = ("minmax", "tanh")
PULSE_AMPLITUDE = 20.0  # u_k at the pulse bin (unitless, as in the original input variant)
PULSE_WINDOW = (0.25, 0.75)  # pulse bins lie in this fraction of the trial (0.25-0.75 s for 1 s)
# One stream per kind of randomness; append new names at the end (see common.random_streams).
STREAMS = ("network", "conditions", "inputs", "observed", "split", "spikes", "behavior")


def check_euler_step(bin_width: float, tau: float) -> None:
    """The Euler step (one bin) must not exceed the time constant."""
    if bin_width > tau:
        raise ConfigError(
            f"bin_width ({bin_width} s) exceeds tau ({tau} s): Euler steps longer than the time "
            "constant overshoot; use bin_width <= tau."
        )


def integrate(x0: np.ndarray, weights: np.ndarray, gain: float, alpha: float, n_bins: int,
              drive: np.ndarray | None = None) -> np.ndarray:
    """Euler steps of the network from ``x0`` (trajectory, unit), all trajectories at once.

    ``alpha`` = dt / tau; ``drive`` (trajectory or 1, n_bins, unit) is the input b u_k (None: 0).
    Returns the states (trajectory, n_bins, unit): bin k after k + 1 steps.
    """
    states = np.empty((x0.shape[0], n_bins, x0.shape[1]))
    x = x0
    for k in range(n_bins):
        x = (1 - alpha) * x + alpha * (gain * np.tanh(x) @ weights.T + (0.0 if drive is None else drive[:, k]))
        states[:, k] = x
    return states


def unit_rates(states: np.ndarray, rate_map: str, max_rate: float, gain: float) -> np.ndarray:
    """Rates in Hz (float32) of units with states (trajectory, time, unit), by ``rate_map``."""
    activity = np.tanh(states)
    if rate_map == "minmax":
        activity -= activity.min(axis=1, keepdims=True)
        span = activity.max(axis=1, keepdims=True)
        if not span.all():
            raise ConfigError(
                f"Some units are saturated (tanh(x) constant over a trial) at gain {gain}, so "
                "min-max normalisation is undefined; use a smaller gain or rate_map='tanh'."
            )
        activity /= span
    else:
        activity = 0.5 * (1 + activity)
    return (activity * max_rate).astype(np.float32)


def chaotic_rnn(
    seed: int = 0,
    *,
    n_units: int = 50,
    gain: float = 1.5,
    tau: float = 0.025,
    bin_width: float = 0.01,
    n_bins: int = 100,
    n_conditions: int = 400,
    trials_per_condition: int = 10,
    train_fraction: float = 0.8,
    rate_map: str = "minmax",
    max_rate: float = 30.0,
    input_pulses: bool = False,
    n_observed: int | None = None,
) -> xr.Dataset:
    """Spikes from a chaotic RNN with full ground truth. Defaults: the original LFADS set.

    Defaults give 400 conditions x 10 trials = 4000 trials of 100 bins x 10 ms (1 s) from
    50 units; 8 train / 2 valid trials in every condition; mean rate about 15 Hz with about
    86 % of bins empty.

    Parameters
    ----------
    seed: all randomness derives from it; same seed and options give an identical Dataset.
    n_units: network size N.
    gain: scale g of the recurrent weights (1.5: the original set; 2.5: the harder one).
    tau: the units' time constant, seconds.
    bin_width: bin width and Euler step dt, seconds (must not exceed ``tau``).
    n_bins: time bins per trial.
    n_conditions: number of initial states x0; trials of a condition share x0, so without
        input pulses they share their rates and differ only in the Poisson spikes.
    trials_per_condition: trials per condition.
    train_fraction: fraction of trials labelled 'train', the rest 'valid', spread evenly
        over conditions (rule in ``common.stratified_split``; 0.8 of 10 gives 8/2 per condition).
    rate_map: 'minmax' (original): each neuron's tanh(x) min-max normalised to [0, 1]
        within each trial, times ``max_rate``; 'tanh': ``0.5 (1 + tanh x) max_rate``.
    max_rate: the top of the rate range, Hz.
    input_pulses: add one pulse per trial (amplitude 20 along a fixed random direction b,
        at a bin drawn uniformly among those whose centre lies in the middle half of the
        trial, 0.25-0.75 s for 1 s trials); recorded as ``inputs_true``.
    n_observed: observe only this many randomly chosen units (None: all). ``spikes`` and
        ``rates_true`` then cover those units, with their unit ids as the ``neuron`` coord;
        ``latents_true`` keeps the full network state (all N units, coord ``latent`` = unit ids).

    Returns
    -------
    Dataset with dims trial (n_conditions * trials_per_condition, grouped by condition),
    time (n_bins, bin centres in s), neuron; variables ``spikes`` (int32 counts),
    ``rates_true`` (Hz), ``latents_true`` (trial, time, latent): the network state x,
    ``behavior`` (trial, time, behavior_dim=['vx', 'vy']): a fixed random linear map of
    ``latents_true`` (``behavior.velocity_readout``), and with ``input_pulses``
    ``inputs_true`` (trial, time, input=['pulse']): u_k. Coords ``condition`` and ``split``;
    ``attrs`` record the generator and its settings.
    """
    n_units = check_count("n_units", n_units)
    gain = check_positive("gain", gain)
    tau = check_positive("tau", tau, "seconds")
    bin_width = check_positive("bin_width", bin_width, "seconds")
    check_euler_step(bin_width, tau)
    rate_map = check_choice("rate_map", rate_map, RATE_MAPS)
    n_bins = check_count("n_bins", n_bins, minimum=2 if rate_map == "minmax" else 1)
    n_conditions = check_count("n_conditions", n_conditions)
    trials_per_condition = check_count("trials_per_condition", trials_per_condition)
    train_fraction = check_fraction("train_fraction", train_fraction)
    max_rate = check_positive("max_rate", max_rate, "Hz")
    if n_observed is not None:
        n_observed = check_count("n_observed", n_observed)
        if n_observed > n_units:
            raise ConfigError(
                f"n_observed={n_observed} exceeds n_units={n_units}; observe at most all units "
                "(n_observed <= n_units, or None for all)."
            )
    rng = random_streams(seed, STREAMS)

    # Network and trials. Trials of a condition share x0, so without pulses they share one
    # trajectory: simulate each distinct trajectory once; `trajectory` maps trial -> row.
    weights = rng["network"].standard_normal((n_units, n_units)) / np.sqrt(n_units)
    condition = condition_labels(n_conditions, trials_per_condition)
    x0 = rng["conditions"].standard_normal((n_conditions, n_units))
    trajectory, drive = condition, None
    if input_pulses:
        n_trials = condition.size
        x0, trajectory = x0[condition], np.arange(n_trials)
        direction = rng["inputs"].standard_normal(n_units)
        centres = (np.arange(n_bins) + 0.5) / n_bins
        window = np.flatnonzero((centres >= PULSE_WINDOW[0]) & (centres <= PULSE_WINDOW[1]))
        pulses = np.zeros((n_trials, n_bins))
        pulses[np.arange(n_trials), rng["inputs"].choice(window, n_trials)] = PULSE_AMPLITUDE
        drive = pulses[:, :, None] * direction

    states = integrate(x0, weights, gain, bin_width / tau, n_bins, drive)

    # Observed units and their rates.
    units = np.arange(n_units)
    if n_observed is not None:
        units = np.sort(rng["observed"].choice(n_units, n_observed, replace=False))
    rates = unit_rates(states[:, :, units], rate_map, max_rate, gain)[trajectory]

    behavior, _ = velocity_readout(states, rng["behavior"])
    truth = {
        "rates_true": rates,
        "latents_true": states.astype(np.float32)[trajectory],
        "behavior": behavior[trajectory],
    }
    coords = {"latent": np.arange(n_units), "behavior_dim": list(VELOCITY_DIMS)}
    descriptions = {
        "latents_true": "network state x of all units (unitless)",
        "behavior": VELOCITY_DESCRIPTION,
    }
    if input_pulses:
        truth["inputs_true"] = pulses[:, :, None].astype(np.float32)  # one row per trial
        coords["input"] = ["pulse"]
        descriptions["inputs_true"] = "input u_k to the network along a fixed random direction"

    attrs = {
        "generator": "chaotic_rnn",
        "description": (
            f"Chaotic RNN: {n_units} units, gain {gain}, tau {tau * 1e3:g} ms, {n_conditions} conditions "
            f"x {trials_per_condition} trials, rate map '{rate_map}' up to {max_rate:g} Hz"
            + (", one input pulse per trial" if input_pulses else "")
            + (f", {n_observed} of {n_units} units observed" if n_observed is not None else "")
        ),
        "seed": int(seed),
        "n_units": n_units,
        "gain": gain,
        "tau": tau,
        "n_conditions": n_conditions,
        "trials_per_condition": trials_per_condition,
        "train_fraction": train_fraction,
        "rate_map": rate_map,
        "max_rate": max_rate,
        "input_pulses": int(bool(input_pulses)),
        "n_observed": n_observed if n_observed is not None else n_units,
    }
    if input_pulses:
        attrs["pulse_amplitude"] = PULSE_AMPLITUDE
    return assemble(
        poisson_spikes(rates, bin_width, rng["spikes"]),
        bin_width,
        condition=condition,
        split_labels=stratified_split(n_conditions, trials_per_condition, train_fraction, rng["split"]),
        neuron_ids=units,
        coords=coords,
        attrs=attrs,
        descriptions=descriptions,
        **truth,
    )


def chaotic_rnn_benchmark(seed: int = 0) -> xr.Dataset:
    """The peer-benchmark chaotic RNN set: gain 2.5, rates ``0.5 (1 + tanh x) x 30 Hz``,
    100 conditions x 8 trials = 800 trials of 1 s (10 ms bins), 640 train / 160 valid
    (train_fraction 0.8 spread evenly over conditions: 60 conditions with 2 valid trials,
    40 with 1)."""
    ds = chaotic_rnn(
        seed, gain=2.5, rate_map="tanh", n_conditions=100, trials_per_condition=8, train_fraction=0.8
    )
    ds.attrs["preset"] = "chaotic_rnn_benchmark"
    return ds
