"""Several sessions recording one chaotic RNN: the multisession set for stitching.

One network (as ``chaotic_rnn``: x_k = (1 - dt/tau) x_{k-1} + (dt/tau) gain W tanh(x_{k-1}), bin k
after k + 1 steps) runs from the same initial state x0 per condition in every session, as when a
task is repeated on several days while the electrodes pick up different neurons. Session s
observes its own subset of the network's units: ``shared_units`` units seen by every session,
then units of its own, disjoint from the other sessions'. Its rates are its units' tanh(x)
mapped as by ``rate_map``, and its spikes Poisson counts drawn for that session alone. So the
sessions share the latent dynamics (``latents_true``: the full network state, the same in every
session for a condition) but no neuron outside ``shared_units``. The original LFADS synthetic
multisession set (tensorflow/models research/lfads, ``run_generate_synth_data.sh``) used 5 sessions
of 20 disjoint units of a 100-unit network; those are the defaults here, with 40 conditions x 10
trials per session (extensions.md section 4.3).
"""
from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np
import xarray as xr

from lfads_nb import ConfigError
from lfads_nb.data import make_sessions

from .behavior import VELOCITY_DESCRIPTION, VELOCITY_DIMS, velocity_readout
from .chaotic_rnn import RATE_MAPS, check_euler_step, integrate, unit_rates
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

# One stream per kind of randomness; append new names at the end (see common.random_streams).
# 'split' and 'spikes' are spawned into one child stream per session.
STREAMS = ("network", "conditions", "units", "split", "spikes", "behavior")


def _per_session(name: str, value, n_sessions: int, minimum: int) -> list[int]:
    """An option given as one whole number for every session or one per session."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != n_sessions:
            raise ConfigError(f"{name} has {len(value)} entries but n_sessions is {n_sessions}; give one per "
                              f"session or a single number for all.")
        return [check_count(f"{name}[{i}]", v, minimum) for i, v in enumerate(value)]
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return [check_count(name, value, minimum)] * n_sessions
    raise ConfigError(f"{name} must be a whole number or a list of one per session, got {value!r}.")


def chaotic_rnn_multisession(
    seed: int = 0,
    *,
    n_sessions: int = 5,
    units_per_session: int | Sequence[int] = 20,
    shared_units: int = 0,
    n_units: int = 100,
    gain: float = 1.5,
    tau: float = 0.025,
    bin_width: float = 0.01,
    n_bins: int = 100,
    n_conditions: int = 40,
    trials_per_condition: int | Sequence[int] = 10,
    train_fraction: float = 0.8,
    rate_map: str = "minmax",
    max_rate: float = 30.0,
) -> xr.DataTree:
    """Sessions of spikes from one chaotic RNN, as a DataTree (``lfads_nb.data.make_sessions``).

    Defaults: 5 sessions of 20 disjoint units of a 100-unit network, each 40 conditions x 10
    trials (8 train / 2 valid per condition) of 100 bins x 10 ms.

    Parameters
    ----------
    seed: all randomness derives from it; same seed and options give an identical tree.
    n_sessions: number of sessions.
    units_per_session: units each session observes, one number for all or a list per session
        (unequal sessions); each must be at least ``shared_units``.
    shared_units: units every session observes (the overlap); the rest of each session's units
        are its own. Needs ``shared_units + sum(units_per_session - shared_units) <= n_units``.
    n_units, gain, tau, bin_width, n_bins, rate_map, max_rate: the network and its rates, as in
        ``chaotic_rnn``.
    n_conditions: initial states x0, the same in every session.
    trials_per_condition: trials per condition, one number for all sessions or a list per
        session (e.g. ``[10, 10, 10, 10, 3]`` makes the last session data-poor).
    train_fraction: fraction of each session's trials labelled 'train', the rest 'valid', spread
        over conditions (``common.stratified_split``).

    Returns
    -------
    DataTree with sessions ``session0``, ``session1``, ...: each a Dataset with dims trial
    (grouped by condition), time, neuron (the ids of the network units it observes, sorted);
    ``spikes`` (int32 counts), ``rates_true`` (Hz), ``latents_true`` (trial, time, latent): the
    network state x of all ``n_units`` units, ``behavior`` (trial, time, behavior_dim=['vx',
    'vy']): one fixed random linear map of the state for all sessions; coords ``condition``
    (the same labels in every session) and ``split``. The root's attrs record the settings.
    """
    n_sessions = check_count("n_sessions", n_sessions)
    shared_units = check_count("shared_units", shared_units, minimum=0)
    sizes = _per_session("units_per_session", units_per_session, n_sessions, max(shared_units, 1))
    n_units = check_count("n_units", n_units)
    needed = shared_units + sum(size - shared_units for size in sizes)
    if needed > n_units:
        raise ConfigError(
            f"The sessions need {needed} distinct units ({shared_units} shared + their own) but the network has "
            f"n_units={n_units}; use fewer or smaller sessions, more shared_units, or a larger n_units."
        )
    gain = check_positive("gain", gain)
    tau = check_positive("tau", tau, "seconds")
    bin_width = check_positive("bin_width", bin_width, "seconds")
    check_euler_step(bin_width, tau)
    rate_map = check_choice("rate_map", rate_map, RATE_MAPS)
    n_bins = check_count("n_bins", n_bins, minimum=2 if rate_map == "minmax" else 1)
    n_conditions = check_count("n_conditions", n_conditions)
    repeats = _per_session("trials_per_condition", trials_per_condition, n_sessions, 1)
    train_fraction = check_fraction("train_fraction", train_fraction)
    max_rate = check_positive("max_rate", max_rate, "Hz")
    rng = random_streams(seed, STREAMS)

    weights = rng["network"].standard_normal((n_units, n_units)) / np.sqrt(n_units)
    x0 = rng["conditions"].standard_normal((n_conditions, n_units))
    states = integrate(x0, weights, gain, bin_width / tau, n_bins)  # (condition, time, unit)
    behavior, _ = velocity_readout(states, rng["behavior"])

    order = rng["units"].permutation(n_units)
    shared, own = order[:shared_units], order[shared_units:]
    starts = np.cumsum([0] + [size - shared_units for size in sizes])
    split_streams, spike_streams = rng["split"].spawn(n_sessions), rng["spikes"].spawn(n_sessions)
    settings = {
        "n_units": n_units, "gain": gain, "tau": tau, "n_conditions": n_conditions, "train_fraction": train_fraction,
        "rate_map": rate_map, "max_rate": max_rate, "shared_units": shared_units,
    }
    sessions = {}
    for s in range(n_sessions):
        units = np.sort(np.concatenate([shared, own[starts[s]:starts[s + 1]]]))
        condition = condition_labels(n_conditions, repeats[s])
        rates = unit_rates(states[:, :, units], rate_map, max_rate, gain)[condition]
        sessions[f"session{s}"] = assemble(
            poisson_spikes(rates, bin_width, spike_streams[s]),
            bin_width,
            condition=condition,
            split_labels=stratified_split(n_conditions, repeats[s], train_fraction, split_streams[s]),
            neuron_ids=units,
            coords={"latent": np.arange(n_units), "behavior_dim": list(VELOCITY_DIMS)},
            attrs={"generator": "chaotic_rnn_multisession", "seed": int(seed), "session": s,
                   "trials_per_condition": repeats[s], **settings},
            descriptions={
                "latents_true": "network state x of all units (unitless), shared by every session",
                "behavior": VELOCITY_DESCRIPTION,
            },
            rates_true=rates,
            latents_true=states.astype(np.float32)[condition],
            behavior=behavior[condition],
        )
    description = (
        f"Chaotic RNN ({n_units} units, gain {gain}) seen by {n_sessions} sessions of {sizes} units "
        f"({shared_units} shared), {n_conditions} conditions x {repeats} trials"
    )
    return make_sessions(sessions, generator="chaotic_rnn_multisession", description=description, seed=int(seed),
                         n_sessions=n_sessions, **settings)
