"""Low-dimensional chaotic attractors observed by Poisson neurons: the data of Sedler, Versteeg &
Pandarinath 2023 ("Expressive architectures enhance interpretability of dynamics-based neural
population models"), for asking whether a model recovers the true latent state.

Three 3-D systems (parameters as in the ``dysts`` package the paper used):

    lorenz     dx = sigma (y - x),   dy = x (rho - z) - y,   dz = x y - beta z     (sigma 10, rho 28, beta 8/3)
    rossler    dx = -y - z,          dy = x + a y,           dz = b + z (x - c)    (a 0.2, b 0.2, c 5.7)
    arneodo    dx = y,               dy = z,                 dz = -a x - b y - c z + d x^3   (a -5.5, b 3.5, c 1, d -1)

Each trial is a segment of ``n_bins`` samples, ``pts_per_period`` samples per characteristic
period of the system (the paper: 100 for Lorenz, 35 for Rossler and Arneodo), from its own
point on the attractor (a random start run for a burn-in; a start whose trajectory escapes to
infinity, which happens to Rossler's, is drawn again). The paper cut one long trajectory
into contiguous segments; independent starts give segments from the same invariant set and let
all trials integrate at once. Observation as the paper's: a readout ``W`` (3 x n_neurons) with
entries U(-0.5, 0.5) of the system's raw state ``s``, each neuron's activity ``s W`` z-scored over
the dataset, log-rate = z-scored activity + log(base_rate) (log-linear), Poisson counts. (Reading
out the z-scored state instead would weigh Rossler's rare z excursions like x and y, and give
counts in the thousands per bin.) ``latents_true`` is the state z-scored per variable.
"""
from __future__ import annotations

import numpy as np
import xarray as xr

from .common import (
    assemble,
    check_choice,
    check_count,
    check_fraction,
    check_positive,
    poisson_spikes,
    random_streams,
    rk4,
    stratified_split,
)
from .lorenz import lorenz_derivative

MAX_STEP = 0.002  # RK4 step in the system's time units (below 1e-6 error per sample for these systems)
BURN_IN_PERIODS = 10.0  # periods from a random start to a point on the attractor
MAX_START_DRAWS = 20  # a start outside the basin (a Rossler trajectory can escape to infinity) is drawn again
LATENT_NAMES = ("x", "y", "z")
STREAMS = ("starts", "neurons", "split", "spikes")


def rossler_derivative(states: np.ndarray, a: float = 0.2, b: float = 0.2, c: float = 5.7) -> np.ndarray:
    """The Rossler vector field at ``states`` (..., 3); returns (..., 3)."""
    x, y, z = np.moveaxis(np.asarray(states, dtype=np.float64), -1, 0)
    return np.stack([-y - z, x + a * y, b + z * (x - c)], axis=-1)


def arneodo_derivative(states: np.ndarray, a: float = -5.5, b: float = 3.5, c: float = 1.0,
                       d: float = -1.0) -> np.ndarray:
    """The Arneodo vector field at ``states`` (..., 3); returns (..., 3)."""
    x, y, z = np.moveaxis(np.asarray(states, dtype=np.float64), -1, 0)
    return np.stack([y, z, -a * x - b * y - c * z + d * x**3], axis=-1)


# name -> (vector field, characteristic period in system time units, start centre, start spread). Lorenz's
# period is dysts' (1.5008); Rossler's and Arneodo's are the dominant period of y in a long run, measured here.
SYSTEMS = {
    "lorenz": (lorenz_derivative, 1.5008, (0.0, 0.0, 25.0), 5.0),
    "rossler": (rossler_derivative, 5.88, (0.0, 0.0, 0.0), 2.0),
    "arneodo": (arneodo_derivative, 3.47, (0.0, 0.0, 0.0), 0.5),
}
DEFAULT_PTS_PER_PERIOD = {"lorenz": 100, "rossler": 35, "arneodo": 35}


def true_fixed_points(ds: xr.Dataset) -> np.ndarray:
    """The fixed points of the system that made ``ds`` (an ``attractor`` Dataset), in the units of its
    ``latents_true`` (z-scored state): (P, 3). Closed forms, parameters as in the vector fields above:
    Lorenz (0, 0, 0) and (+-sqrt(beta (rho - 1)), +-sqrt(beta (rho - 1)), rho - 1); Rossler
    x = (c +- sqrt(c^2 - 4 a b)) / 2, y = -x / a, z = x / a; Arneodo (0, 0, 0) and (+-sqrt(a / d), 0, 0)."""
    if ds.attrs.get("generator") != "attractor" or "state_mean" not in ds.attrs:
        raise ValueError("true_fixed_points needs a Dataset made by data_generators.attractor (it reads the "
                         "system and the z-scoring from ds.attrs).")
    system = ds.attrs["system"]
    if system == "lorenz":
        r = np.sqrt(8.0 / 3.0 * 27.0)
        points = [(0.0, 0.0, 0.0), (r, r, 27.0), (-r, -r, 27.0)]
    elif system == "rossler":
        a, b, c = 0.2, 0.2, 5.7
        points = [(x, -x / a, x / a) for x in ((c - np.sqrt(c * c - 4 * a * b)) / 2, (c + np.sqrt(c * c - 4 * a * b)) / 2)]
    else:
        x = np.sqrt(-5.5 / -1.0)
        points = [(0.0, 0.0, 0.0), (x, 0.0, 0.0), (-x, 0.0, 0.0)]
    return (np.asarray(points) - np.asarray(ds.attrs["state_mean"])) / np.asarray(ds.attrs["state_std"])


def true_jacobians(ds: xr.Dataset) -> np.ndarray:
    """The Jacobians of the system that made ``ds`` (an ``attractor`` Dataset) at its fixed points
    (``true_fixed_points``, same order), in the coordinates of ``latents_true`` and per system time
    unit: (P, 3, 3). With S = diag(state_std), d(latent)/dt = S^-1 f(state_mean + S latent), so the
    Jacobian is S^-1 J S (same eigenvalues as J; eigenvectors scaled by S^-1). Closed forms of J:
    Lorenz [[-sigma, sigma, 0], [rho - z, -1, -x], [y, x, -beta]]; Rossler [[0, -1, -1], [1, a, 0],
    [z, 0, x - c]]; Arneodo [[0, 1, 0], [0, 0, 1], [-a + 3 d x^2, -b, -c]]. One bin lasts
    ``ds.attrs['system_time_per_bin']`` time units: the per-bin growth and rotation are the
    eigenvalues of this times that."""
    std = np.asarray(ds.attrs["state_std"])
    raw = true_fixed_points(ds) * std + np.asarray(ds.attrs["state_mean"])
    x, y, z = raw.T
    one, zero = np.ones_like(x), np.zeros_like(x)
    if ds.attrs["system"] == "lorenz":
        sigma, rho, beta = 10.0, 28.0, 8.0 / 3.0
        rows = [[-sigma * one, sigma * one, zero], [rho - z, -one, -x], [y, x, -beta * one]]
    elif ds.attrs["system"] == "rossler":
        a, c = 0.2, 5.7
        rows = [[zero, -one, -one], [one, a * one, zero], [z, zero, x - c]]
    else:
        a, b, c, d = -5.5, 3.5, 1.0, -1.0
        rows = [[zero, one, zero], [zero, zero, one], [-a + 3 * d * x**2, -b * one, -c * one]]
    jacobians = np.moveaxis(np.asarray(rows, dtype=np.float64), -1, 0)  # (P, 3, 3)
    return jacobians * std[None, None, :] / std[None, :, None]


def integrate(derivative, initial_states: np.ndarray, n_samples: int, interval: float) -> np.ndarray:
    """RK4 of ``derivative`` from ``initial_states`` (n, 3): (n, n_samples, 3), sampled every
    ``interval`` time units (steps of at most ``MAX_STEP``; ``common.rk4``)."""
    return rk4(derivative, initial_states, n_samples, interval, MAX_STEP)


def attractor(
    system: str = "lorenz",
    seed: int = 0,
    *,
    n_neurons: int = 10,
    n_trials: int = 1000,
    n_bins: int = 70,
    pts_per_period: int | None = None,
    bin_width: float = 0.01,
    base_rate: float = 100.0,
    train_fraction: float = 0.8,
) -> xr.Dataset:
    """Poisson neurons reading out a 3-D chaotic attractor, with its true state.

    Parameters
    ----------
    system: 'lorenz', 'rossler' or 'arneodo' (vector fields in the module docstring).
    seed: all randomness derives from it; same seed and options give an identical Dataset.
    n_neurons: number of neurons (the paper: 10).
    n_trials: segments, one per trial, each its own condition.
    n_bins: samples per segment (the paper: 70).
    pts_per_period: samples per characteristic period (default: the paper's, 100 for Lorenz,
        35 for the others), so one bin is period / pts_per_period system time units.
    bin_width: seconds per bin (labels the time axis and converts rates to Hz).
    base_rate: the rate where the z-scored activity is 0, Hz. The default 100 Hz at 10 ms bins is
        the paper's exp(activity) expected counts (1 count per bin at the mean activity).
    train_fraction: fraction of trials labelled 'train', the rest 'valid'.

    Returns
    -------
    Dataset with dims trial, time (n_bins), neuron; ``spikes`` (int32), ``rates_true`` (Hz),
    ``latents_true`` (trial, time, latent=['x', 'y', 'z']): the system's state, each variable
    z-scored over the dataset (``attrs['state_mean']`` and ``attrs['state_std']`` undo it).
    ``attrs`` record the system and every setting.
    """
    system = check_choice("system", system, tuple(SYSTEMS))
    n_neurons = check_count("n_neurons", n_neurons)
    n_trials = check_count("n_trials", n_trials, minimum=2)
    n_bins = check_count("n_bins", n_bins)
    pts_per_period = check_count("pts_per_period", DEFAULT_PTS_PER_PERIOD[system] if pts_per_period is None
                                 else pts_per_period)
    bin_width = check_positive("bin_width", bin_width, "seconds")
    base_rate = check_positive("base_rate", base_rate, "Hz")
    train_fraction = check_fraction("train_fraction", train_fraction)
    rng = random_streams(seed, STREAMS)
    derivative, period, centre, spread = SYSTEMS[system]

    states = np.full((n_trials, n_bins, 3), np.nan)  # (trial, time, 3)
    todo = np.arange(n_trials)
    with np.errstate(over="ignore", invalid="ignore"):
        for _ in range(MAX_START_DRAWS):
            starts = np.asarray(centre) + spread * rng["starts"].standard_normal((len(todo), 3))
            on_attractor = integrate(derivative, starts, 2, BURN_IN_PERIODS * period)[:, -1]
            states[todo] = integrate(derivative, on_attractor, n_bins, period / pts_per_period)
            todo = todo[~np.isfinite(states[todo]).all(axis=(1, 2))]  # escaped to infinity: draw again
            if not len(todo):
                break
        else:
            raise RuntimeError(f"{system}: {len(todo)} trials kept escaping from the attractor's basin after "
                               f"{MAX_START_DRAWS} draws of their start.")
    state_mean, state_std = states.mean(axis=(0, 1)), states.std(axis=(0, 1))
    latents = (states - state_mean) / state_std

    readout = rng["neurons"].uniform(-0.5, 0.5, (3, n_neurons))
    readout = readout[:, np.argsort(readout[0])]  # the paper sorts the neurons by their first weight
    activity = states @ readout  # the raw state, as the paper's
    activity = (activity - activity.mean(axis=(0, 1))) / activity.std(axis=(0, 1))
    rates = (base_rate * np.exp(activity)).astype(np.float32)

    return assemble(
        poisson_spikes(rates, bin_width, rng["spikes"]),
        bin_width,
        condition=np.arange(n_trials),
        split_labels=stratified_split(n_trials, 1, train_fraction, rng["split"]),
        neuron_ids=np.arange(n_neurons),
        coords={"latent": list(LATENT_NAMES)},
        attrs={
            "generator": "attractor",
            "system": system,
            "description": (f"{system} attractor, {n_neurons} Poisson neurons with log-linear rates, "
                            f"{n_trials} segments of {n_bins} samples, {pts_per_period} per period"),
            "seed": int(seed),
            "n_trials": n_trials,
            "pts_per_period": pts_per_period,
            "system_period": period,
            "system_time_per_bin": period / pts_per_period,  # the system's time units per bin
            "train_fraction": train_fraction,
            "base_rate": base_rate,
            # latents_true = (state - state_mean) / state_std, per variable (x, y, z)
            "state_mean": state_mean.tolist(),
            "state_std": state_std.tolist(),
        },
        descriptions={"latents_true": f"{system} state, each variable z-scored over the dataset"},
        rates_true=rates,
        latents_true=latents.astype(np.float32),
    )
