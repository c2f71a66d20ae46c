"""Tests for data_generators.attractors (the Sedler et al. 2023 sets): vector fields against hand
values, the integrator against scipy's solve_ivp, the log-linear readout exactly, determinism,
and errors that name the option."""
import numpy as np
import pytest
from scipy.integrate import solve_ivp

from data_generators import attractor
from data_generators.attractors import STREAMS, SYSTEMS, arneodo_derivative, integrate, rossler_derivative
from data_generators.common import random_streams
from lfads_nb import ConfigError

SMALL = dict(n_trials=40, n_bins=20)


def test_vector_fields_hand_values():
    # Rossler (a, b, c) = (0.2, 0.2, 5.7) at (1, 2, 3): (-2 - 3, 1 + 0.4, 0.2 + 3 (1 - 5.7)).
    np.testing.assert_allclose(rossler_derivative(np.array([1.0, 2.0, 3.0])), [-5.0, 1.4, 0.2 - 14.1])
    # Arneodo (a, b, c, d) = (-5.5, 3.5, 1, -1) at (2, 1, -1): (1, -1, 11 - 3.5 + 1 - 8).
    np.testing.assert_allclose(arneodo_derivative(np.array([2.0, 1.0, -1.0])), [1.0, -1.0, 0.5])


@pytest.mark.parametrize("system", sorted(SYSTEMS))
def test_integrator_matches_an_independent_solver(system):
    """RK4 with fixed steps against scipy's adaptive DOP853 at tight tolerances, over one period."""
    field, period, centre, _ = SYSTEMS[system]
    start = np.asarray(centre) + 0.5
    ours = integrate(field, start[None], 11, period / 10)[0]
    ref = solve_ivp(lambda t, s: field(s), (0, period), start, method="DOP853", rtol=1e-11, atol=1e-11,
                    t_eval=np.linspace(0, period, 11)).y.T
    np.testing.assert_allclose(ours, ref, atol=1e-5)


@pytest.mark.parametrize("system", sorted(SYSTEMS))
def test_rates_are_the_papers_readout_of_the_raw_state(system):
    """The observation model of Sedler et al.'s ChaoticDataModule.prepare_data, rebuilt here from its
    steps: activity = raw state @ W (W ~ U(-0.5, 0.5), neurons sorted by their first weight), each
    neuron's activity z-scored, rate = exp(activity) per bin. Reading out the z-scored state instead
    gives Rossler's rare z excursions the weight of x and y, and counts in the thousands per bin."""
    ds = attractor(system, seed=3, **SMALL)
    raw = ds["latents_true"].values * np.asarray(ds.attrs["state_std"]) + np.asarray(ds.attrs["state_mean"])
    readout = random_streams(3, STREAMS)["neurons"].uniform(-0.5, 0.5, (3, 10))
    activity = raw @ readout[:, np.argsort(readout[0])]
    activity = (activity - activity.mean(axis=(0, 1))) / activity.std(axis=(0, 1))
    np.testing.assert_allclose(ds["rates_true"].values * ds.attrs["bin_width"], np.exp(activity), rtol=1e-5)


@pytest.mark.parametrize("system", sorted(SYSTEMS))
def test_dataset_shape_log_linear_rates_and_truth(system):
    ds = attractor(system, seed=3, **SMALL)
    assert dict(ds.sizes) == {"trial": 40, "time": 20, "neuron": 10, "latent": 3}
    assert ds.attrs["system"] == system and ds["latent"].values.tolist() == ["x", "y", "z"]
    assert (ds["split"].values == "valid").sum() == 8
    latents = ds["latents_true"].values.reshape(-1, 3).astype(float)
    assert np.all(np.isfinite(latents)) and latents.std(axis=0) == pytest.approx(1.0, abs=1e-3)
    # log-linear: log rate is exactly an affine function of the true state
    log_rates = np.log(ds["rates_true"].values.reshape(-1, 10).astype(float))
    design = np.hstack([latents, np.ones((len(latents), 1))])
    residual = log_rates - design @ np.linalg.lstsq(design, log_rates, rcond=None)[0]
    assert np.abs(residual).max() < 1e-4
    # the mean spike count follows the rates
    expected = ds["rates_true"].values.mean() * ds.attrs["bin_width"]
    assert ds["spikes"].values.mean() == pytest.approx(expected, rel=0.1)


def test_determinism_and_seeds():
    a, b = attractor("rossler", seed=1, **SMALL), attractor("rossler", seed=1, **SMALL)
    assert a.identical(b)
    assert not np.array_equal(a["spikes"].values, attractor("rossler", seed=2, **SMALL)["spikes"].values)


def test_starts_that_escape_the_basin_are_drawn_again():
    # Rossler at seed 1 draws starts whose trajectories escape to infinity (the data used to be NaN and
    # the Poisson draw raised "lam value too large"); they are drawn again, and the other trials keep
    # the states they had before the redraw existed (the same first draw of starts).
    ds = attractor("rossler", seed=1, n_trials=1000)
    assert np.isfinite(ds["latents_true"].values).all() and np.isfinite(ds["rates_true"].values).all()
    assert abs(float(ds["latents_true"].mean())) < 1e-6 and float(ds["spikes"].mean()) < 10
    few = attractor("rossler", seed=1, n_trials=20)  # no escape among the first 20 starts
    raw = lambda d: d["latents_true"].values[:20] * d.attrs["state_std"] + d.attrs["state_mean"]  # noqa: E731
    np.testing.assert_allclose(raw(few), raw(ds), atol=1e-5)  # float32 z-scores, undone


@pytest.mark.parametrize("kwargs, name", [
    (dict(system="chua"), "system"), (dict(n_neurons=0), "n_neurons"), (dict(n_trials=1), "n_trials"),
    (dict(bin_width=-1.0), "bin_width"), (dict(pts_per_period=0), "pts_per_period"),
])
def test_bad_options_name_the_option(kwargs, name):
    with pytest.raises(ConfigError, match=name):
        attractor(**kwargs)
