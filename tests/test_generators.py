"""Tests for data_generators: statistics against the published spec, dynamics against closed
forms or an independent integrator, splits, determinism, ground-truth maps, option errors."""

import numpy as np
import pytest
import xarray as xr
from scipy.integrate import solve_ivp

import lfads_nb
from data_generators import (
    chaotic_rnn,
    chaotic_rnn_benchmark,
    integrate_lorenz,
    lorenz,
    lorenz_derivative,
    velocity_readout,
)
from lfads_nb import ConfigError

SMALL = dict(n_conditions=6, trials_per_condition=5)  # 30 trials of 1 s: fast


def split_counts(ds):
    """(n_train, n_valid) per condition, arrays indexed by condition."""
    labels = ds["split"].values.astype(str)
    cond = ds["condition"].values
    conditions = np.unique(cond)
    train = np.array([np.sum((cond == c) & (labels == "train")) for c in conditions])
    valid = np.array([np.sum((cond == c) & (labels == "valid")) for c in conditions])
    return train, valid


def lorenz_field(s, drop_y_term=False):
    """Closed-form Lorenz vector field written out here as the reference (sigma 10, rho 28,
    beta 8/3); ``drop_y_term`` gives the known-wrong variant without -y in dy/dt."""
    x, y, z = s
    return [10 * (y - x), x * (28 - z) - (0 if drop_y_term else y), x * y - 8 / 3 * z]


# ----------------------------------------------------------------------------- chaotic RNN
def test_default_chaotic_set_matches_the_spec():
    ds = chaotic_rnn(seed=0)  # its generation time is measured by benchmarks/generator_speed.py
    lfads_nb.validate(ds, require_train=True)
    assert ds["spikes"].shape == (4000, 100, 50)
    assert ds.attrs["bin_width"] == 0.01 and ds.attrs["generator"] == "chaotic_rnn"
    np.testing.assert_allclose(ds["time"].values[[0, -1]], [0.005, 0.995])

    rates = ds["rates_true"].values.astype(np.float64)
    spikes = ds["spikes"].values
    # Spec: mean rate about 15 Hz (min-max normalised tanh has mean about 0.5 x 30 Hz by the
    # symmetry of x); seeds 0-3 give 14.97-15.08 Hz over 20M bins, so +-0.5 Hz is several
    # times the seed-to-seed spread yet catches a wrong max rate or normalisation.
    assert abs(rates.mean() - 15) < 0.5
    # Spec: about 86 % empty bins; seeds 0-3 give 0.864-0.866.
    zero_fraction = np.mean(spikes == 0)
    assert abs(zero_fraction - 0.86) < 0.01
    # Counts are Poisson(rate x bin_width): P(0) = exp(-rate dt) and E[count] = rate dt, to
    # within 5 standard errors over 2e7 bins (SE 8e-5 and 9e-5).
    assert abs(zero_fraction - np.exp(-rates * 0.01).mean()) < 5 * 8e-5
    assert abs(spikes.mean() - rates.mean() * 0.01) < 5 * 9e-5
    # Min-max map: every trial's every neuron spans exactly [0, 30] Hz.
    np.testing.assert_allclose(rates.min(axis=1), 0, atol=1e-6)
    np.testing.assert_allclose(rates.max(axis=1), 30, rtol=1e-6)
    # 8 train / 2 valid in every condition, 400 conditions x 10 trials.
    train, valid = split_counts(ds)
    assert len(train) == 400 and (train == 8).all() and (valid == 2).all()


def test_minmax_rates_are_normalised_tanh_of_the_latents():
    ds = chaotic_rnn(seed=3, **SMALL)
    activity = np.tanh(ds["latents_true"].values.astype(np.float64))
    lo, hi = activity.min(axis=1, keepdims=True), activity.max(axis=1, keepdims=True)
    np.testing.assert_allclose(ds["rates_true"].values, 30 * (activity - lo) / (hi - lo), atol=1e-3)
    # Trials of a condition share x0 (no inputs): identical latents and rates.
    cond = ds["condition"].values
    first = ds["rates_true"].values[cond == 0]
    assert (first == first[0]).all()


def test_euler_recurrence_tau_and_gain():
    """Reference: the update x_k = (1 - dt/tau) x_{k-1} + (dt/tau) g W tanh(x_{k-1}) with
    dt/tau = 0.4. Least squares recovers W exactly from latents_true (a wrong tau or a
    missing gain leaves a residual or a wrongly scaled W), W ~ N(0, 1/N), and datasets
    with gains 1.5 and 2.5 and the same seed share the same W."""
    recovered = {}
    for gain in (1.5, 2.5):
        ds = chaotic_rnn(seed=5, gain=gain, n_conditions=8, trials_per_condition=1, train_fraction=0.5)
        x = ds["latents_true"].values.astype(np.float64)
        previous = np.tanh(x[:, :-1]).reshape(-1, 50)
        target = ((x[:, 1:] - 0.6 * x[:, :-1]) / (0.4 * gain)).reshape(-1, 50)
        w_t, *_ = np.linalg.lstsq(previous, target, rcond=None)
        assert np.abs(previous @ w_t - target).max() < 1e-4
        recovered[gain] = w_t.T
    np.testing.assert_allclose(recovered[1.5], recovered[2.5], atol=1e-4)
    # 2500 entries: the sample variance has a relative SE of sqrt(2/2500) = 2.8 %; 15 % is ~5 SE.
    assert abs(recovered[1.5].var() * 50 - 1) < 0.15
    # The mean of 2500 entries of std 1/sqrt(50) has SE 1/sqrt(50)/50; allow 5 SE.
    assert abs(recovered[1.5].mean()) < 5 / np.sqrt(50) / 50


def test_input_pulses_one_per_trial_in_the_middle_half_along_a_fixed_direction():
    kwargs = dict(n_conditions=20, trials_per_condition=5)
    ds = chaotic_rnn(seed=1, input_pulses=True, **kwargs)
    plain = chaotic_rnn(seed=1, **kwargs)
    lfads_nb.validate(ds)
    assert ds["inputs_true"].dims == ("trial", "time", "input")
    assert list(ds["input"].values) == ["pulse"]
    u = ds["inputs_true"].values[:, :, 0]
    assert ((u != 0).sum(axis=1) == 1).all(), "exactly one pulse per trial"
    assert set(np.unique(u)) == {0.0, 20.0}
    pulse_bin = np.argmax(u != 0, axis=1)
    pulse_time = ds["time"].values[pulse_bin]
    assert pulse_time.min() >= 0.25 and pulse_time.max() <= 0.75
    assert len(np.unique(pulse_bin)) > 20, "pulse bins are drawn per trial, not fixed"
    assert ds.attrs["input_pulses"] == 1 and plain.attrs["input_pulses"] == 0

    # Same seed: same network and x0, so latents match the pulse-free set up to the pulse,
    # and at the pulse bin jump by (dt/tau) * 20 * b with one b for all trials.
    x, x_plain = ds["latents_true"].values, plain["latents_true"].values
    jumps = []
    for trial, k in enumerate(pulse_bin):
        np.testing.assert_allclose(x[trial, :k], x_plain[trial, :k], atol=1e-5)
        jumps.append(x[trial, k] - x_plain[trial, k])
    jumps = np.array(jumps)
    np.testing.assert_allclose(jumps, np.broadcast_to(jumps[0], jumps.shape), atol=1e-4)
    # |b| for b ~ N(0, I_50) is about sqrt(50) = 7.1, so |jump| = 0.4 * 20 * |b| is about 57.
    assert 30 < np.linalg.norm(jumps[0]) < 85
    # The pulses make trials of a condition differ after their pulses.
    rates = ds["rates_true"].values
    assert not np.allclose(rates[0], rates[1])


def test_tanh_rate_map():
    ds = chaotic_rnn(seed=2, rate_map="tanh", **SMALL)
    rates = ds["rates_true"].values
    assert rates.min() >= 0 and rates.max() <= 30
    expected = 0.5 * (1 + np.tanh(ds["latents_true"].values.astype(np.float64))) * 30
    np.testing.assert_allclose(rates, expected, rtol=1e-5, atol=1e-5)
    assert ds.attrs["rate_map"] == "tanh"


def test_n_observed_is_a_subset_of_the_full_network():
    full = chaotic_rnn(seed=4, **SMALL)
    sub = chaotic_rnn(seed=4, n_observed=20, **SMALL)
    lfads_nb.validate(sub)
    ids = sub["neuron"].values
    assert sub["spikes"].shape == (30, 100, 20) and sub["rates_true"].shape == (30, 100, 20)
    assert len(np.unique(ids)) == 20 and ids.min() >= 0 and ids.max() < 50
    assert (np.diff(ids) > 0).all()
    np.testing.assert_array_equal(sub["rates_true"].values, full["rates_true"].sel(neuron=ids).values)
    # Latents keep the full 50-unit state.
    assert sub.sizes["latent"] == 50
    np.testing.assert_array_equal(sub["latents_true"].values, full["latents_true"].values)
    assert sub.attrs["n_observed"] == 20 and full.attrs["n_observed"] == 50


def test_benchmark_preset():
    ds = chaotic_rnn_benchmark(seed=0)
    lfads_nb.validate(ds, require_train=True)
    assert ds["spikes"].shape == (800, 100, 50)
    labels = ds["split"].values.astype(str)
    assert (labels == "train").sum() == 640 and (labels == "valid").sum() == 160
    # 1.6 valid trials per condition on average: evenly spread, 60 conditions x 2 + 40 x 1.
    train, valid = split_counts(ds)
    assert sorted(np.unique(valid)) == [1, 2] and (valid == 2).sum() == 60
    assert (train + valid == 8).all()
    assert ds.attrs["gain"] == 2.5 and ds.attrs["rate_map"] == "tanh"
    rates = ds["rates_true"].values
    assert rates.min() >= 0 and rates.max() <= 30


# ----------------------------------------------------------------------------- Lorenz
def test_lorenz_vector_field_hand_values():
    # Hand-computed: at (1, 2, 3): 10 (2 - 1) = 10; 1 (28 - 3) - 2 = 23; 1 * 2 - (8/3) 3 = -6.
    np.testing.assert_allclose(lorenz_derivative(np.array([1.0, 2.0, 3.0])), [10, 23, -6])
    # The -y term of dy/dt: at (0, 1, 0) dy/dt = -1 (the generator without it gives 0).
    np.testing.assert_allclose(lorenz_derivative(np.array([0.0, 1.0, 0.0])), [10, -1, 0])
    # Batched states (..., 3) match the closed form point by point.
    states = np.random.default_rng(0).normal(0, 10, (4, 5, 3))
    expected = np.array([lorenz_field(s) for s in states.reshape(-1, 3)]).reshape(states.shape)
    np.testing.assert_allclose(lorenz_derivative(states), expected, rtol=1e-12)


def test_integrator_matches_an_independent_solver():
    """Reference: scipy DOP853 at rtol = atol = 1e-12 on the closed-form field. One 20 ms bin
    (0.12 Lorenz time units) of RK4 must agree to 1e-5; the field without -y misses by far more."""
    start = integrate_lorenz(np.array([[1.0, 2.0, 20.0], [-5.0, -3.0, 30.0]]), 2, 5.0)[:, -1]
    path = integrate_lorenz(start, 11, 0.12)
    for traj in path:
        for k in range(10):
            good = solve_ivp(lambda t, s: lorenz_field(s), (0, 0.12), traj[k], method="DOP853", rtol=1e-12, atol=1e-12)
            wrong = solve_ivp(
                lambda t, s: lorenz_field(s, True), (0, 0.12), traj[k], method="DOP853", rtol=1e-12, atol=1e-12
            )
            assert np.abs(good.y[:, -1] - traj[k + 1]).max() < 1e-5
            assert np.abs(wrong.y[:, -1] - traj[k + 1]).max() > 1e-2
    np.testing.assert_array_equal(path[:, 0], start)


def test_lorenz29_shape_split_and_ground_truth():
    ds = lorenz(seed=0)
    lfads_nb.validate(ds, require_train=True)
    assert ds["spikes"].shape == (1560, 50, 29)
    assert ds.attrs["bin_width"] == 0.02
    np.testing.assert_allclose(np.diff(ds["time"].values), 0.02)
    labels = ds["split"].values.astype(str)
    assert (labels == "train").sum() == 1248 and (labels == "valid").sum() == 312
    train, valid = split_counts(ds)
    assert len(valid) == 65 and set(np.unique(valid)) <= {4, 5} and (train + valid == 24).all()

    z = ds["latents_true"].values.astype(np.float64)
    assert list(ds["latent"].values) == ["x", "y", "z"]
    np.testing.assert_allclose(z.mean(axis=(0, 1)), 0, atol=1e-6)
    np.testing.assert_allclose(np.abs(z).max(axis=(0, 1)), 1, rtol=1e-6)
    cond = ds["condition"].values
    assert (z[cond == 3] == z[cond == 3][0]).all(), "trials of a condition share the trajectory"

    # log-rate = W z + log(5 Hz): recovered exactly, with |W| entries in [1, 2].
    log_rates = np.log(ds["rates_true"].values.astype(np.float64) / 5.0).reshape(-1, 29)
    w_t, *_ = np.linalg.lstsq(z.reshape(-1, 3), log_rates, rcond=None)
    assert np.abs(z.reshape(-1, 3) @ w_t - log_rates).max() < 1e-5
    assert np.abs(w_t).min() >= 1 - 1e-5 and np.abs(w_t).max() <= 2 + 1e-5
    assert (w_t > 0).any() and (w_t < 0).any()
    # Sane rates: median near the 5 Hz base rate.
    assert 3 < np.median(ds["rates_true"].values) < 8

    # Mapped back with the recorded centre and scale, consecutive bins follow the correct
    # Lorenz flow for 0.12 time units (20 ms x 6 per s); float32 storage limits this to ~1e-4.
    center = np.array([ds.attrs[f"lorenz_center_{v}"] for v in "xyz"])
    scale = np.array([ds.attrs[f"lorenz_scale_{v}"] for v in "xyz"])
    states = z[cond == 0][0] * scale + center
    for k in range(0, 49, 7):
        good = solve_ivp(lambda t, s: lorenz_field(s), (0, 0.12), states[k], rtol=1e-10, atol=1e-10)
        assert np.abs(good.y[:, -1] - states[k + 1]).max() < 1e-4


def test_lorenz_options_shape():
    ds = lorenz(seed=1, n_neurons=7, n_conditions=4, trials_per_condition=3, n_bins=30, bin_width=0.01, base_rate=10.0)
    lfads_nb.validate(ds)
    assert ds["spikes"].shape == (12, 30, 7)
    assert 6 < np.median(ds["rates_true"].values) < 16
    assert ds.attrs["base_rate"] == 10.0



def test_lorenz_gain_scales_the_log_rate_modulation():
    """log(rate / base_rate) = gain W z (closed form): gain 2 doubles every log-rate deviation of
    gain 1 at the same seed (same latents and weights); the default gain 1 is the old set."""
    small = dict(n_neurons=7, n_conditions=4, trials_per_condition=3, n_bins=30)
    plain, doubled = lorenz(seed=1, **small), lorenz(seed=1, gain=2.0, base_rate=3.0, **small)
    np.testing.assert_allclose(np.log(doubled["rates_true"].values / 3.0),
                               2 * np.log(plain["rates_true"].values / 5.0), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(lorenz(seed=1, gain=1.0, **small)["spikes"].values, plain["spikes"].values)
    assert doubled.attrs["gain"] == 2.0
    with pytest.raises(ConfigError, match="gain must be a finite number > 0"):
        lorenz(seed=1, gain=0.0, **small)

# ----------------------------------------------------------------------------- shared
@pytest.mark.parametrize(
    "make",
    [lambda: chaotic_rnn(seed=0, input_pulses=True, **SMALL), lambda: lorenz(seed=0, n_conditions=5, trials_per_condition=4)],
    ids=["chaotic_rnn", "lorenz"],
)
def test_behavior_is_a_fixed_linear_map_of_the_latents(make):
    ds = make()
    assert ds["behavior"].dims == ("trial", "time", "behavior_dim")
    assert list(ds["behavior_dim"].values) == ["vx", "vy"]
    latents = ds["latents_true"].values.astype(np.float64).reshape(-1, ds.sizes["latent"])
    behavior = ds["behavior"].values.astype(np.float64).reshape(-1, 2)
    weights, *_ = np.linalg.lstsq(latents, behavior, rcond=None)
    scale = np.abs(behavior).max()
    assert np.abs(latents @ weights - behavior).max() < 1e-5 * scale
    np.testing.assert_allclose(np.linalg.norm(weights, axis=0), 1, rtol=1e-4)  # unit-norm columns


def test_velocity_readout_is_seeded_and_linear():
    latents = np.random.default_rng(0).normal(size=(3, 4, 6))
    b1, w1 = velocity_readout(latents, np.random.default_rng(7))
    b2, w2 = velocity_readout(latents[:1], np.random.default_rng(7))
    np.testing.assert_array_equal(w1, w2)
    assert b1.shape == (3, 4, 2) and w1.shape == (6, 2)
    np.testing.assert_allclose(b1, latents @ w1, rtol=1e-6, atol=1e-6)
    _, w3 = velocity_readout(latents, np.random.default_rng(8))
    assert not np.allclose(w1, w3)
    b4, w4 = velocity_readout(latents, np.random.default_rng(7), dims=("vx", "vy", "vz"))
    assert b4.shape == (3, 4, 3)


@pytest.mark.parametrize(
    "make",
    [
        lambda seed: chaotic_rnn(seed, input_pulses=True, n_observed=30, **SMALL),
        lambda seed: lorenz(seed, n_conditions=5, trials_per_condition=4),
    ],
    ids=["chaotic_rnn", "lorenz"],
)
def test_determinism(make):
    xr.testing.assert_identical(make(11), make(11))
    a, b = make(11), make(12)
    assert not np.array_equal(a["spikes"].values, b["spikes"].values)
    assert not np.allclose(a["rates_true"].values, b["rates_true"].values)
    assert a.attrs["seed"] == 11 and b.attrs["seed"] == 12


def test_settings_in_attrs_survive_netcdf(tmp_path):
    for ds in (chaotic_rnn(seed=0, input_pulses=True, n_observed=10, **SMALL), lorenz(seed=0, n_conditions=3, trials_per_condition=2)):
        path = tmp_path / f"{ds.attrs['generator']}.nc"
        ds.to_netcdf(path, engine="h5netcdf")
        with xr.open_dataset(path, engine="h5netcdf") as back:
            assert back.attrs == ds.attrs
            np.testing.assert_array_equal(back["spikes"].values, ds["spikes"].values)


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda: chaotic_rnn(n_conditions=-1), "n_conditions"),
        (lambda: chaotic_rnn(trials_per_condition=0), "trials_per_condition"),
        (lambda: chaotic_rnn(n_units=0), "n_units"),
        (lambda: chaotic_rnn(n_conditions=2.5), "n_conditions"),
        (lambda: chaotic_rnn(rate_map="relu"), "rate_map"),
        (lambda: chaotic_rnn(train_fraction=0.0), "train_fraction"),
        (lambda: chaotic_rnn(train_fraction=1.0), "train_fraction"),
        (lambda: chaotic_rnn(train_fraction=1.5), "train_fraction"),
        (lambda: chaotic_rnn(n_observed=51), "n_observed"),
        (lambda: chaotic_rnn(n_observed=0), "n_observed"),
        (lambda: chaotic_rnn(gain=-1.0), "gain"),
        (lambda: chaotic_rnn(max_rate=0.0), "max_rate"),
        (lambda: chaotic_rnn(bin_width=0.05), "bin_width"),
        (lambda: chaotic_rnn(n_bins=1), "n_bins"),
        (lambda: chaotic_rnn(seed=-1), "seed"),
        (lambda: chaotic_rnn(seed=1.5), "seed"),
        (lambda: chaotic_rnn(n_conditions=1, trials_per_condition=2, train_fraction=0.9), "train_fraction"),
        (lambda: lorenz(n_neurons=0), "n_neurons"),
        (lambda: lorenz(base_rate=0.0), "base_rate"),
        (lambda: lorenz(bin_width=-0.02), "bin_width"),
        (lambda: lorenz(n_bins=0), "n_bins"),
        (lambda: lorenz(train_fraction=-0.2), "train_fraction"),
        (lambda: integrate_lorenz(np.zeros((1, 3)), 0, 0.1), "n_samples"),
    ],
)
def test_bad_options_raise_config_error_naming_the_option(make, name):
    with pytest.raises(ConfigError, match=name):
        make()
