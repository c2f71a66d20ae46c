"""Two-photon calcium imaging of Lorenz-driven neurons, sampled at staggered times (RADICaL).

The chain, every step kept as ground truth (extensions reference, section 2.3; Zhu et al. 2022):

1. **Latent**: the Lorenz attractor (``lorenz.integrate_lorenz``) run at ``lorenz_hz``: time is
   rescaled so that its dominant period, 1.5008 Lorenz time units, lasts 1 / lorenz_hz seconds.
   Each condition starts at its own point on the attractor; its trials share the trajectory.
2. **Rates**: log-linear, log rate_n = log(base_rate) + w_n . z_std, with z_std the latent
   standardised per variable over the dataset and w_n a random unit 3-vector.
3. **Spikes**: Poisson counts in sub-frame bins of ``frame_s / sub_bins`` seconds.
4. **Calcium**: a GCaMP-like kernel on the sub-frame grid: AR(1) c_t = g c_{t-1} + s_t with
   g = exp(-bin / tau_decay), or, with a rise time ``tau_rise`` > 0, the AR(2) kernel
   (d^(k+1) - r^(k+1)) / (d - r) (d, r the per-bin decays) scaled to peak 1.
5. **Fluorescence**: each neuron is read once per frame, at its scan phase (sub-frame bin
   ``k * sub_bins + scan_phase``), F = c + N(0, noise_sd^2), in spike-amplitude units.
6. **Events**: OASIS AR(1) deconvolution of each neuron's frame series
   (``lfads_nb.data.calcium.deconvolve_staggered``, g = exp(-frame_s / tau_decay), ``s_min``),
   placed at the sub-frame bin where it was read; NaN at the other bins.

Calcium and deconvolution start ``history_s`` seconds before each trial, so the first frames
of a trial hold calcium from spikes before it, as in a continuous recording.
"""
from __future__ import annotations

import numpy as np
import xarray as xr

import lfads_nb
from lfads_nb.data.calcium import frame_index, deconvolve_frames, to_subframe

from .common import (
    check_count,
    check_fraction,
    check_positive,
    condition_labels,
    poisson_spikes,
    random_streams,
    stratified_split,
)
from .lorenz import BURN_IN, LATENT_NAMES, integrate_lorenz

LORENZ_PERIOD = 1.5008  # dominant period of the Lorenz attractor, Lorenz time units (dysts)
# One stream per kind of randomness; append new names at the end (see common.random_streams).
STREAMS = ("conditions", "neurons", "split", "spikes", "noise", "scan")


def _calcium(spikes: np.ndarray, bin_width: float, tau_decay: float, tau_rise: float) -> np.ndarray:
    """Calcium (trial, time, neuron) from spike counts on the same grid: AR(1) with decay
    tau_decay, or with tau_rise > 0 the AR(2) difference of exponentials scaled to peak 1."""
    d = np.exp(-bin_width / tau_decay)
    calcium = np.empty(spikes.shape, dtype=np.float32)
    if tau_rise == 0:
        c = np.zeros((spikes.shape[0], spikes.shape[2]))
        for t in range(spikes.shape[1]):
            c = d * c + spikes[:, t]
            calcium[:, t] = c
        return calcium
    r = np.exp(-bin_width / tau_rise)
    k = np.arange(int(np.ceil(10 * tau_decay / bin_width)))
    peak = ((d ** (k + 1) - r ** (k + 1)) / (d - r)).max()
    prev, prev2 = np.zeros((2, spikes.shape[0], spikes.shape[2]))
    for t in range(spikes.shape[1]):
        c = (d + r) * prev - d * r * prev2 + spikes[:, t] / peak
        calcium[:, t], prev2, prev = c, prev, c
    return calcium


def calcium_2p(
    seed: int = 0,
    *,
    lorenz_hz: float = 10.0,
    n_neurons: int = 100,
    n_conditions: int = 32,
    trials_per_condition: int = 30,
    n_frames: int = 20,
    frame_s: float = 0.03,
    sub_bins: int = 3,
    base_rate: float = 5.0,
    tau_decay: float = 0.4,
    tau_rise: float = 0.0,
    noise_sd: float = 0.2,
    s_min: float = 0.1,
    history_s: float = 1.0,
    train_fraction: float = 0.8,
) -> xr.Dataset:
    """Deconvolved two-photon calcium events at sub-frame resolution, with ground truth.

    Defaults follow the SNEL synthetic calcium set and the RADICaL proposal: 100 neurons,
    20 frames of 30 ms (600 ms) in 3 sub-frame bins of 10 ms, 32 conditions x 30 trials,
    GCaMP6-like decay 0.4 s, noise 0.2 spike amplitudes, s_min 0.1.

    Parameters
    ----------
    seed: all randomness derives from it; same seed and options give an identical Dataset.
    lorenz_hz: speed of the latent, dominant Lorenz cycles per second (higher = faster dynamics,
        harder to follow at the frame rate).
    n_neurons, n_conditions, trials_per_condition: sizes; trials of a condition share the latent.
    n_frames: imaging frames per trial. frame_s: frame period, seconds.
    sub_bins: sub-frame bins per frame (scan phases); the data's bin width is frame_s / sub_bins.
    base_rate: rate at the latent's mean, Hz. tau_decay, tau_rise: calcium kernel time constants,
        seconds (tau_rise 0: instantaneous rise, AR(1)). noise_sd: fluorescence noise, in units
        of one spike's calcium peak. s_min: smallest event OASIS returns (events are 0 or >= s_min).
    history_s: seconds simulated before each trial (calcium and deconvolution start there).
    train_fraction: share of 'train' trials per condition, the rest 'valid'.

    Returns
    -------
    Dataset of kind ``calcium_events``, dims (trial, time = n_frames * sub_bins, neuron), bin
    width frame_s / sub_bins: ``events`` (NaN where a neuron was not sampled), ``fluorescence``
    (same NaN pattern), ``spikes_true`` (counts per sub-frame bin), ``rates_true`` (Hz),
    ``latents_true`` (trial, time, latent = x, y, z: each Lorenz variable centred and divided by
    its max |value|, as in ``lorenz``), coords ``scan_phase`` (neuron), ``condition``, ``split``;
    attrs ``frame_s``, ``sub_bins``, ``s_min``, ``tau_decay``, ... The frame-binned view is
    ``lfads_nb.data.calcium.frame_binned(ds)``.
    """
    lorenz_hz = check_positive("lorenz_hz", lorenz_hz, "Hz")
    n_neurons = check_count("n_neurons", n_neurons)
    n_conditions = check_count("n_conditions", n_conditions)
    trials_per_condition = check_count("trials_per_condition", trials_per_condition)
    n_frames = check_count("n_frames", n_frames, 2)
    frame_s = check_positive("frame_s", frame_s, "seconds")
    sub_bins = check_count("sub_bins", sub_bins)
    base_rate = check_positive("base_rate", base_rate, "Hz")
    tau_decay = check_positive("tau_decay", tau_decay, "seconds")
    if tau_rise != 0:
        tau_rise = check_positive("tau_rise", tau_rise, "seconds, or 0 for no rise")
        if tau_rise >= tau_decay:
            raise lfads_nb.ConfigError(f"tau_rise ({tau_rise:g} s) must be shorter than tau_decay ({tau_decay:g} s).")
    noise_sd = check_positive("noise_sd", noise_sd, "spike amplitudes")
    s_min = check_positive("s_min", s_min, "spike amplitudes")
    if history_s != 0:
        history_s = check_positive("history_s", history_s, "seconds, or 0")
    train_fraction = check_fraction("train_fraction", train_fraction)
    rng = random_streams(seed, STREAMS)
    bin_width = frame_s / sub_bins
    history_frames = int(np.ceil(history_s / frame_s))
    n_bins, n_history = n_frames * sub_bins, history_frames * sub_bins

    # Latent per condition: a point on the attractor, then history + trial at lorenz_hz.
    start = integrate_lorenz(rng["conditions"].normal((0, 0, 25), 8, (n_conditions, 3)), 2, BURN_IN)[:, -1]
    states = integrate_lorenz(start, n_history + n_bins, bin_width * LORENZ_PERIOD * lorenz_hz)
    trial_states = states[:, n_history:]
    mean, sd = trial_states.mean(axis=(0, 1)), trial_states.std(axis=(0, 1))
    weights = rng["neurons"].standard_normal((n_neurons, 3))
    weights /= np.linalg.norm(weights, axis=1, keepdims=True)
    condition = condition_labels(n_conditions, trials_per_condition)
    rates = base_rate * np.exp(((states - mean) / sd) @ weights.T)  # (condition, history + time, neuron)

    spikes = poisson_spikes(rates[condition], bin_width, rng["spikes"])
    calcium = _calcium(spikes, bin_width, tau_decay, tau_rise)
    scan_phase = rng["scan"].integers(0, sub_bins, n_neurons)
    frames = np.take_along_axis(calcium, frame_index(n_history + n_bins, scan_phase, sub_bins)[None], axis=1)
    del calcium
    frames += noise_sd * rng["noise"].standard_normal(frames.shape)  # fluorescence, read once per frame
    events = deconvolve_frames(frames, np.exp(-frame_s / tau_decay), s_min)[:, history_frames:]
    fluorescence = frames[:, history_frames:]

    center = trial_states.mean(axis=(0, 1))
    scale = np.abs(trial_states - center).max(axis=(0, 1))
    latents = ((trial_states - center) / scale)[condition]
    trial = slice(n_history, None)
    ds = lfads_nb.make_dataset(
        to_subframe(events.astype(np.float32), scan_phase, sub_bins), bin_width, kind="calcium_events",
        split_labels=stratified_split(n_conditions, trials_per_condition, train_fraction, rng["split"]),
        condition=condition, neuron_ids=np.arange(n_neurons),
        rates_true=rates[:, trial].astype(np.float32)[condition], latents_true=latents.astype(np.float32),
    )
    ds["spikes_true"] = (("trial", "time", "neuron"), spikes[:, trial])
    ds["fluorescence"] = (("trial", "time", "neuron"), to_subframe(fluorescence.astype(np.float32), scan_phase, sub_bins))
    ds = ds.assign_coords(scan_phase=("neuron", scan_phase), latent=list(LATENT_NAMES))
    descriptions = {
        "events": "OASIS AR(1) events at the sub-frame bin each neuron was read, NaN where not read",
        "fluorescence": "calcium + noise at the sub-frame bin each neuron was read (spike amplitudes), NaN elsewhere",
        "spikes_true": "spike counts per sub-frame bin",
        "latents_true": "Lorenz state, each variable centred and divided by its max |value|",
    }
    for name, text in descriptions.items():
        ds[name].attrs["description"] = text
    ds["events"].attrs["units"] = ds["fluorescence"].attrs["units"] = "spike amplitudes"
    ds["scan_phase"].attrs["description"] = "sub-frame bin (0 .. sub_bins - 1) at which the neuron is read"
    ds.attrs.update(
        generator="calcium_2p",
        description=(f"Lorenz latents at {lorenz_hz:g} Hz, {n_neurons} neurons, 2-photon frames of "
                     f"{frame_s * 1e3:g} ms in {sub_bins} sub-frame bins, OASIS events"),
        seed=int(seed), lorenz_hz=lorenz_hz, n_conditions=n_conditions, trials_per_condition=trials_per_condition,
        train_fraction=train_fraction, base_rate=base_rate, frame_s=frame_s, sub_bins=sub_bins,
        tau_decay=tau_decay, tau_rise=float(tau_rise), noise_sd=noise_sd, s_min=s_min, history_s=float(history_s),
        **{f"lorenz_center_{v}": float(c) for v, c in zip(LATENT_NAMES, center)},
        **{f"lorenz_scale_{v}": float(c) for v, c in zip(LATENT_NAMES, scale)},
    )
    return lfads_nb.validate(ds)
