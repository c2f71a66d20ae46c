"""Synthetic EMG with known muscle activation and artifacts (extensions.md section 1.3).

The ground-truth chain, every step returned:

1. **Latents** (locomotion-like): a gait phase phi(t) = 2 pi f t + phi0 whose frequency f is
   drawn per trial, and a slow drive d(t) = exp(0.3 g(t)) with g an Ornstein-Uhlenbeck process
   (time constant ``drive_tau``, unit variance). ``latents_true`` = (cos phi, sin phi, g).
2. **Muscle activation**: K synergies m_k(t) = exp(kappa (cos(phi - theta_k) - 1)) d(t), bursts at
   K evenly spread phases; each channel mixes them with non-negative weights (Dirichlet(0.5)
   columns) plus a 0.05 tonic floor: a_c(t) = sum_k W_kc m_k(t) + 0.05.
3. **Recorded EMG**: the raw signal is a_c(t) eps + sigma_n eta (eps, eta standard normal: the
   motor-unit carrier and the amplifier noise); a bin's value is the mean of |raw| over
   ``samples_per_bin`` samples (rectify, then average to the bin), so its expectation is
   sqrt(2 / pi) sqrt(a^2 + sigma_n^2) and its coefficient of variation about 0.76 / sqrt(samples_per_bin).
4. **Artifacts**: events at Poisson times (``artifact_rate`` per second); each channel joins an
   event with probability 0.6, with amplitude ``artifact_amplitude`` x (the channel's clean 95th
   percentile) x U[0.5, 1.5], decaying by e every bin over 4 bins. High amplitude and shared across
   channels: the events LFADS could explain by over-coupling channels (temporal shift's target).
5. **Normalisation**: each channel divided by the 95th percentile of its recorded EMG over all
   trials and bins (as in the AutoLFADS tutorial data); the truths are divided by the same scale.

Outputs are in these normalised units: ``emg`` (what LFADS sees), ``emg_mean_true`` (its
expectation without artifacts: the activation as the EMG expresses it; the score target),
``activation_true`` (a, over the same scale x sqrt(2 / pi), so it equals ``emg_mean_true`` when
sigma_n is 0), ``artifact_true`` (the amplitude added to each entry, 0 off the events),
``latents_true`` and ``behavior`` (three joint-angle-like signals, a fixed linear map of the
latents).
"""
from __future__ import annotations

import numpy as np

from .behavior import velocity_readout
from .common import assemble, check_count, check_fraction, check_positive, random_streams

STREAMS = ("trials", "drive", "synergies", "carrier", "artifacts", "split", "behavior")
LATENT_NAMES = ("cos_phase", "sin_phase", "drive")
JOINTS = ("hip", "knee", "ankle")
TONIC = 0.05            # activation floor: muscles are never fully silent
KAPPA = 3.0             # burst sharpness of each synergy (von Mises concentration)
DRIVE_GAIN = 0.3        # d = exp(DRIVE_GAIN g)
JOIN_PROBABILITY = 0.6  # chance a channel picks up a given artifact event
ARTIFACT_BINS = 4       # artifact waveform length, decaying by e per bin


def emg(
    seed: int = 0,
    *,
    n_trials: int = 400,
    n_bins: int = 100,
    n_channels: int = 12,
    n_synergies: int = 3,
    bin_width: float = 0.005,
    step_frequency: tuple[float, float] = (2.5, 3.5),
    drive_tau: float = 0.2,
    samples_per_bin: int = 1,
    noise_floor: float = 0.05,
    artifact_rate: float = 1.0,
    artifact_amplitude: float = 5.0,
    train_fraction: float = 0.8,
):
    """A synthetic EMG Dataset of kind ``emg`` with known activation and artifacts (module docstring).

    Parameters
    ----------
    seed: all randomness derives from it (one named stream per kind of draw).
    n_trials, n_bins, n_channels: sizes; trials are independent step sequences.
    n_synergies: K muscle synergies, bursting at phases 2 pi k / K.
    bin_width: seconds per bin.
    step_frequency: (low, high) Hz, the range of the per-trial gait frequency.
    drive_tau: seconds, time constant of the slow drive.
    samples_per_bin: raw samples averaged per bin after rectification (more = less noise).
    noise_floor: sigma_n, amplifier noise in activation units.
    artifact_rate: artifact events per second (0 for none).
    artifact_amplitude: artifact size in multiples of each channel's clean 95th percentile.
    train_fraction: share of trials labelled 'train', the rest 'valid'.

    Returns
    -------
    Dataset (trial, time, neuron=channel) with ``emg``, ``emg_mean_true``, ``activation_true``,
    ``artifact_true``, ``latents_true`` (latent = cos_phase, sin_phase, drive), ``behavior``
    (behavior_dim = hip, knee, ankle), coords ``split``, ``condition`` (all 0) and
    ``step_frequency`` (Hz, per trial); ``norm_scale`` (per channel) is the divisor of step 5.
    """
    n_trials = check_count("n_trials", n_trials, 2)
    n_bins = check_count("n_bins", n_bins)
    n_channels = check_count("n_channels", n_channels)
    n_synergies = check_count("n_synergies", n_synergies)
    samples_per_bin = check_count("samples_per_bin", samples_per_bin)
    bin_width = check_positive("bin_width", bin_width, "seconds")
    drive_tau = check_positive("drive_tau", drive_tau, "seconds")
    noise_floor = check_positive("noise_floor", noise_floor)
    artifact_amplitude = check_positive("artifact_amplitude", artifact_amplitude)
    train_fraction = check_fraction("train_fraction", train_fraction)
    low, high = (check_positive("step_frequency", f, "Hz") for f in step_frequency)
    if artifact_rate != 0:
        check_positive("artifact_rate", artifact_rate, "events per second")
    rng = random_streams(seed, STREAMS)
    time = (np.arange(n_bins) + 0.5) * bin_width

    # 1. Latents: a phase oscillation and a slow OU drive (exact discretisation).
    frequency = rng["trials"].uniform(min(low, high), max(low, high), n_trials)
    phase = 2 * np.pi * frequency[:, None] * time + rng["trials"].uniform(0, 2 * np.pi, (n_trials, 1))
    decay = np.exp(-bin_width / drive_tau)
    kicks = rng["drive"].standard_normal((n_trials, n_bins)) * np.sqrt(1 - decay**2)
    g = np.empty((n_trials, n_bins))
    g[:, 0] = rng["drive"].standard_normal(n_trials)
    for t in range(1, n_bins):
        g[:, t] = decay * g[:, t - 1] + kicks[:, t]
    latents = np.stack([np.cos(phase), np.sin(phase), g], axis=-1)

    # 2. Synergies -> per-channel activation.
    preferred = 2 * np.pi * np.arange(n_synergies) / n_synergies
    synergies = np.exp(KAPPA * (np.cos(phase[..., None] - preferred) - 1)) * np.exp(DRIVE_GAIN * g)[..., None]
    weights = rng["synergies"].dirichlet(np.full(n_synergies, 0.5), n_channels).T  # (K, C), columns sum to 1
    activation = synergies @ weights + TONIC  # (trial, time, channel)

    # 3. Rectified raw signal, averaged per bin.
    spread = np.sqrt(activation**2 + noise_floor**2)
    raw = rng["carrier"].standard_normal((samples_per_bin,) + activation.shape) * spread
    clean = np.abs(raw).mean(axis=0)
    expected = np.sqrt(2 / np.pi) * spread

    # 4. Artifacts shared across channels.
    artifact = _artifacts(rng["artifacts"], activation.shape, artifact_rate * n_bins * bin_width,
                          artifact_amplitude * np.percentile(clean, 95, axis=(0, 1)))
    recorded = clean + artifact

    # 5. Per-channel normalisation by the recorded 95th percentile.
    scale = np.percentile(recorded, 95, axis=(0, 1))
    behavior, _ = velocity_readout(latents, rng["behavior"], JOINTS)
    n_valid = int(np.floor((1 - train_fraction) * n_trials + 0.5))
    split_labels = np.where(rng["split"].permutation(n_trials) < n_valid, "valid", "train")
    ds = assemble(
        (recorded / scale).astype(np.float32),
        bin_width,
        kind="emg",
        condition=np.zeros(n_trials, dtype=int),
        split_labels=split_labels,
        neuron_ids=np.arange(n_channels),
        coords={"latent": list(LATENT_NAMES), "behavior_dim": list(JOINTS)},
        attrs={
            "generator": "emg",
            "description": (
                f"{n_channels} EMG channels from {n_synergies} gait synergies, {samples_per_bin} rectified "
                f"sample(s) per bin, {artifact_rate:g} artifact events/s at {artifact_amplitude:g} x p95"
            ),
            "seed": int(seed),
            "samples_per_bin": samples_per_bin,
            "noise_floor": noise_floor,
            "artifact_rate": float(artifact_rate),
            "artifact_amplitude": artifact_amplitude,
            "drive_tau": drive_tau,
            "train_fraction": train_fraction,
        },
        descriptions={
            "emg_mean_true": "expected EMG without artifacts, sqrt(2/pi) sqrt(a^2 + sigma_n^2) / norm_scale",
            "latents_true": "gait phase (cos, sin) and the slow drive g",
            "behavior": "joint-angle-like signals: a fixed random linear map of latents_true",
        },
        emg_mean_true=(expected / scale).astype(np.float32),
        latents_true=latents.astype(np.float32),
        behavior=behavior,
    )
    units = np.sqrt(2 / np.pi) / scale
    ds["activation_true"] = (("trial", "time", "neuron"), (activation * units).astype(np.float32),
                             {"description": "muscle activation a x sqrt(2/pi) / norm_scale (EMG units)"})
    ds["artifact_true"] = (("trial", "time", "neuron"), (artifact / scale).astype(np.float32),
                           {"description": "artifact amplitude added to each entry (0 off the events)"})
    ds["norm_scale"] = ("neuron", scale.astype(np.float32))
    return ds.assign_coords(step_frequency=("trial", frequency.astype(np.float32)))


def _artifacts(rng: np.random.Generator, shape: tuple[int, int, int], events_per_trial: float,
               channel_size: np.ndarray) -> np.ndarray:
    """Artifact amplitude per (trial, time, channel): Poisson events at uniform bins, each joined by
    every channel with probability JOIN_PROBABILITY at size channel_size x U[0.5, 1.5], decaying
    exp(-k) over ARTIFACT_BINS bins (cut at the trial's end)."""
    n_trials, n_bins, n_channels = shape
    artifact = np.zeros(shape)
    waveform = np.exp(-np.arange(ARTIFACT_BINS))
    for trial, count in enumerate(rng.poisson(events_per_trial, n_trials)):
        for onset in rng.integers(0, n_bins, count):
            joined = rng.random(n_channels) < JOIN_PROBABILITY
            size = channel_size * rng.uniform(0.5, 1.5, n_channels) * joined
            length = min(ARTIFACT_BINS, n_bins - onset)
            artifact[trial, onset:onset + length] += waveform[:length, None] * size
    return artifact
