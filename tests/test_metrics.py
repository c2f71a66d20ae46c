"""lfads_nb.metrics against hand-computed values and closed forms (each test says which), and against
nlb_tools.evaluation itself on random inputs (skipped where nlb-tools is not installed, failed under CI=true)."""
import math
import os
import warnings

import numpy as np
import pytest
import xarray as xr

from lfads_nb import ConfigError, DataError, make_dataset
import lfads_nb
from lfads_nb import metrics
from lfads_nb.data.kinds import kind_of

DIMS = ("trial", "time", "neuron")


def arr(values, dims=DIMS, **coords):
    """A DataArray with integer coords on every dim unless given."""
    values = np.asarray(values, dtype=float)
    full = {d: np.arange(n) for d, n in zip(dims, values.shape)}
    full.update(coords)
    return xr.DataArray(values, dims=dims, coords=full)


# ----------------------------------------------------------------------------- rate R^2

def test_rate_r2_known_2x2_case():
    # One trial, 2 bins, 2 neurons. Neuron 0: true [0, 2], pred [1, 2]: SS_tot 2, SS_res 1 -> 0.5.
    # Neuron 1: perfect -> 1. Average 0.75.
    true = arr([[[0.0, 1.0], [2.0, 3.0]]])
    pred = arr([[[1.0, 1.0], [2.0, 3.0]]])
    per = metrics.rate_r2_per_neuron(pred, true)
    np.testing.assert_allclose(per.values, [0.5, 1.0])
    assert per.dims == ("neuron",) and list(per["neuron"].values) == [0, 1]
    assert metrics.rate_r2(pred, true) == pytest.approx(0.75)


def test_rate_r2_perfect_and_order_independent():
    rng = np.random.default_rng(0)
    true = arr(rng.uniform(1, 30, (4, 10, 3)))
    assert metrics.rate_r2(true.copy(), true) == pytest.approx(1.0)
    pred = true + rng.normal(0, 2, true.shape)
    pred = pred.clip(min=0)
    # Dims matched by name: a transposed prediction gives the same number.
    assert metrics.rate_r2(pred.transpose("neuron", "trial", "time"), true) == pytest.approx(
        metrics.rate_r2(pred, true))


def test_rate_r2_errors():
    true = arr(np.arange(12.0).reshape(1, 4, 3))
    with pytest.raises(DataError, match="disagree on the 'neuron' coordinate"):
        metrics.rate_r2(true.assign_coords(neuron=[0, 1, 5]), true)
    with pytest.raises(DataError, match="entries along 'time'"):
        metrics.rate_r2(true.isel(time=slice(0, 3)), true)
    with pytest.raises(DataError, match="NaN"):
        metrics.rate_r2(true.where(true != 4), true)
    with pytest.raises(DataError, match="negative"):
        metrics.rate_r2(true - 5, true)
    with pytest.raises(DataError, match="expected"):
        metrics.rate_r2(true.rename(neuron="unit"), true)
    with pytest.raises(DataError, match="is a Dataset"):
        metrics.rate_r2(true.to_dataset(name="rates"), true)
    flat = true.copy()
    flat[..., 2] = 7.0
    with pytest.raises(DataError, match=r"undefined for neurons \[2\]"):
        metrics.rate_r2(true, flat)


# ----------------------------------------------------------------------------- bits per spike

def test_bits_per_spike_hand_case():
    # Spikes [0, 2] in 0.1 s bins; model 5 Hz, 15 Hz -> expected counts 0.5, 1.5; null mean 1.
    # NLL_model = 0.5 + (1.5 - 2 ln 1.5 + ln 2!), NLL_null = 1 + (1 - 0 + ln 2!);
    # difference 2 ln 1.5 over 2 spikes x ln 2 -> log2(1.5).
    spikes = arr([[[0], [2]]])
    rates = arr([[[5.0], [15.0]]])
    assert metrics.bits_per_spike(rates, spikes, 0.1) == pytest.approx(math.log2(1.5), rel=1e-12)


def test_bits_per_spike_null_model_is_zero():
    rng = np.random.default_rng(1)
    spikes = arr(rng.poisson(0.3, (5, 20, 4)))
    null = spikes.mean(("trial", "time")) / 0.01 + 0 * spikes  # each neuron's mean rate, Hz
    assert metrics.bits_per_spike(null, spikes, 0.01) == pytest.approx(0.0, abs=1e-12)


def test_bits_per_spike_of_a_perfect_prediction():
    # Counts [0, 0, 4, 4] predicted exactly (rates = counts / bin_width): null mean 2;
    # NLL_null - NLL_model = (8 - 8 ln 2) - (8 - 8 ln 4) - 2e-9 (zeros -> 1e-9) = 8 ln 2 - 2e-9,
    # over 8 spikes x ln 2 -> 1 bit per spike.
    spikes = arr([[[0], [0], [4], [4]]])
    assert metrics.bits_per_spike(spikes / 0.02, spikes, 0.02) == pytest.approx(1.0, abs=1e-8)


def test_bits_per_spike_spike_under_zero_rate_is_finite():
    # nlb_tools replaces a zero expected count by 1e-9: NLL_model = 1e-9 - ln(1e-9), NLL_null = 1.
    spikes = arr([[[1]]])
    expected = (1 - (1e-9 - math.log(1e-9))) / math.log(2)
    assert metrics.bits_per_spike(arr([[[0.0]]]), spikes, 0.01) == pytest.approx(expected)


def test_bits_per_spike_ignores_unobserved_bins():
    spikes = arr([[[0], [2]]])
    rates = arr([[[5.0], [15.0]]])
    # Two more bins that were not observed (NaN), with NaN and absurd rates: same answer.
    spikes_nan = arr([[[0], [2], [np.nan], [np.nan]]])
    rates_nan = arr([[[5.0], [15.0], [np.nan], [1e6]]])
    assert metrics.bits_per_spike(rates_nan, spikes_nan, 0.1) == pytest.approx(
        metrics.bits_per_spike(rates, spikes, 0.1), rel=1e-12)


def test_co_bps_uses_only_heldout_neurons():
    # Neuron 1 is held out and is the hand case above; neuron 0 (held in) has bad rates.
    spikes = arr([[[3, 0], [0, 2]]]).assign_coords(heldout=("neuron", [False, True]))
    rates = arr([[[0.0, 5.0], [100.0, 15.0]]])
    assert metrics.co_bps(rates, spikes, "heldout", 0.1) == pytest.approx(math.log2(1.5))
    assert metrics.co_bps(rates, spikes, [1], 0.1) == pytest.approx(math.log2(1.5))
    # Rates for the held-out neurons only are enough.
    assert metrics.co_bps(rates.sel(neuron=[1]), spikes, [1], 0.1) == pytest.approx(math.log2(1.5))


def test_bits_per_spike_errors():
    spikes = arr([[[0], [2]]])
    rates = arr([[[5.0], [15.0]]])
    with pytest.raises(DataError, match="negative"):
        metrics.bits_per_spike(-rates, spikes, 0.1)
    with pytest.raises(DataError, match="NaN or infinite values where spikes are observed"):
        metrics.bits_per_spike(rates.where(rates > 10), spikes, 0.1)
    with pytest.raises(DataError, match="no spikes"):
        metrics.bits_per_spike(rates, spikes * 0, 0.1)
    with pytest.raises(ConfigError, match="bin_width"):
        metrics.bits_per_spike(rates, spikes, 0.0)
    with pytest.raises(DataError, match="disagree on the 'trial' coordinate"):
        metrics.bits_per_spike(rates.assign_coords(trial=[7]), spikes, 0.1)
    with pytest.raises(DataError, match=r"neuron ids \[3\] are not in 'rates'"):
        metrics.co_bps(rates, spikes, [3], 0.1)
    with pytest.raises(DataError, match="No coordinate 'heldout'"):
        metrics.co_bps(rates, spikes, "heldout", 0.1)


def test_fp_bps_uses_only_forward_bins():
    # The last two bins are the hand case above; the first (not forward) has a zero rate under 9 spikes.
    spikes = arr([[[9], [0], [2]]]).assign_coords(forward=("time", [False, True, True]))
    rates = arr([[[0.0], [5.0], [15.0]]])
    assert metrics.fp_bps(rates, spikes, "forward", 0.1) == pytest.approx(math.log2(1.5))
    assert metrics.fp_bps(rates.isel(time=[1, 2]), spikes, [1, 2], 0.1) == pytest.approx(math.log2(1.5))


def test_fp_bps_errors():
    spikes = arr([[[0], [2]]], time=[0.05, 0.15])
    rates = arr([[[5.0], [15.0]]], time=[0.05, 0.15])
    with pytest.raises(DataError, match="No coordinate 'forward'.*assign_coords"):
        metrics.fp_bps(rates, spikes, "forward", 0.1)
    with pytest.raises(DataError, match=r"time ids \[0.25\] are not in 'rates'"):
        metrics.fp_bps(rates, spikes, [0.25], 0.1)
    with pytest.raises(DataError, match="No forward-prediction bins selected"):
        metrics.fp_bps(rates, spikes.assign_coords(forward=("time", [False, False])), "forward", 0.1)
    with pytest.raises(DataError, match=r"must be boolean with dims \('time',\)"):
        metrics.fp_bps(rates, spikes.assign_coords(forward=("time", [0, 1])), "forward", 0.1)


# ----------------------------------------------------------------------------- behaviour decoding

def linear_dataset(lag_bins=0, n_trials=30, n_time=25, seed=0):
    """Rates iid in time; behaviour an exact affine map of the rates lag_bins earlier."""
    rng = np.random.default_rng(seed)
    bin_width = 0.02
    rates = rng.uniform(5, 50, (n_trials, n_time, 6))
    weights = rng.normal(0, 1, (6, 2))
    behavior = np.full((n_trials, n_time, 2), np.nan)
    behavior[:, lag_bins:] = rates[:, : n_time - lag_bins] * bin_width @ weights + [0.5, -1.0]
    behavior[:, :lag_bins] = 0.0
    splits = ["train"] * 24 + ["valid"] * 6
    ds = make_dataset(rng.poisson(rates * bin_width), bin_width, split_labels=splits,
                      rates_true=rates, behavior=behavior)
    return ds


def test_velocity_r2_exact_linear_map_is_one():
    ds = linear_dataset()
    r2 = metrics.velocity_r2(ds["rates_true"], ds["behavior"], train_trials="train",
                             test_trials="valid", bin_width=0.02)
    assert r2 == pytest.approx(1.0, abs=1e-3)
    # The same with explicit trial ids.
    r2_ids = metrics.velocity_r2(ds["rates_true"], ds["behavior"], train_trials=range(24),
                                 test_trials=range(24, 30), bin_width=0.02)
    assert r2_ids == pytest.approx(r2)


def test_velocity_r2_lag_aligns_rates_before_behaviour():
    ds = linear_dataset(lag_bins=2)
    kwargs = dict(train_trials="train", test_trials="valid", bin_width=0.02)
    assert metrics.velocity_r2(ds["rates_true"], ds["behavior"], lag=0.04, **kwargs) == pytest.approx(1.0, abs=1e-3)
    # Without the lag the rates (iid in time) say nothing about the behaviour.
    assert metrics.velocity_r2(ds["rates_true"], ds["behavior"], **kwargs) < 0.2


def test_velocity_r2_uniform_average_over_behaviour_dims():
    # Dim 0 exactly linear (R^2 ~ 1), dim 1 independent noise with 100x the variance
    # (R^2 ~ 0): the uniform average is ~0.5; a variance-weighted one would be ~0.
    ds = linear_dataset()
    rng = np.random.default_rng(5)
    behavior = ds["behavior"].copy()
    behavior[..., 1] = rng.normal(0, 100, behavior.shape[:2])
    r2 = metrics.velocity_r2(ds["rates_true"], behavior, train_trials="train", test_trials="valid",
                             bin_width=0.02)
    assert r2 == pytest.approx(0.5, abs=0.05)


def test_decode_behavior_output():
    ds = linear_dataset(lag_bins=2)
    pred = metrics.decode_behavior(ds["rates_true"], ds["behavior"], train_trials="train",
                                   bin_width=0.02, lag=0.04)
    assert pred.dims == ds["behavior"].dims and pred.shape == ds["behavior"].shape
    assert pred.attrs["alpha"] in metrics.RIDGE_ALPHAS
    assert np.isnan(pred.isel(time=[0, 1])).all()  # no rates 40 ms before the first two bins
    np.testing.assert_allclose(pred.isel(time=slice(2, None)), ds["behavior"].isel(time=slice(2, None)),
                               atol=2e-2)


def test_velocity_r2_errors():
    ds = linear_dataset()
    rates, behavior = ds["rates_true"], ds["behavior"]
    with pytest.raises(DataError, match="share trials"):
        metrics.velocity_r2(rates, behavior, train_trials="train", test_trials=[0, 25], bin_width=0.02)
    with pytest.raises(DataError, match="not in the data"):
        metrics.velocity_r2(rates, behavior, train_trials="train", test_trials=[99], bin_width=0.02)
    with pytest.raises(DataError, match="No trials with split == 'test'"):
        metrics.velocity_r2(rates, behavior, train_trials="train", test_trials="test", bin_width=0.02)
    with pytest.raises(ConfigError, match="whole number"):
        metrics.velocity_r2(rates, behavior, train_trials="train", test_trials="valid", bin_width=0.02,
                            lag=0.03)
    with pytest.raises(DataError, match="disagree on the 'time' coordinate"):
        metrics.velocity_r2(rates, behavior.assign_coords(time=behavior.time + 1), train_trials="train",
                            test_trials="valid", bin_width=0.02)


# ----------------------------------------------------------------------------- smoothing

def test_gaussian_kernel_sums_to_one_with_gaussian_shape():
    kernel = metrics.gaussian_kernel(0.01, 0.02)
    assert kernel.sum() == pytest.approx(1.0)
    assert kernel.sizes["offset"] == 2 * 8 + 1  # truncated at 4 sd = 8 bins each side
    np.testing.assert_allclose(kernel.values, kernel.values[::-1])
    centre = kernel.sel(offset=0.0).item()
    assert kernel.values[9] / centre == pytest.approx(math.exp(-0.5 * (0.01 / 0.02) ** 2))


def test_smooth_constant_gives_constant_rate_including_edges():
    spikes = arr(np.full((2, 15, 3), 2.0))
    rates = metrics.smooth_spikes(spikes, 0.05, 0.1)
    np.testing.assert_allclose(rates.values, 40.0)  # 2 spikes per 50 ms bin = 40 Hz, edges too
    assert rates.attrs["units"] == "Hz" and rates.dims == DIMS
    np.testing.assert_array_equal(rates["time"], spikes["time"])


def test_smooth_single_spike_spreads_as_the_kernel():
    bw, sigma = 0.01, 0.02
    counts = np.zeros((1, 41, 1))
    counts[0, 20, 0] = 1
    rates = metrics.smooth_spikes(arr(counts), bw, sigma)
    kernel = metrics.gaussian_kernel(bw, sigma).values
    np.testing.assert_allclose(rates.values[0, 12:29, 0] * bw, kernel)  # interior: plain convolution
    assert (rates.values * bw).sum() == pytest.approx(1.0)  # one spike in, one spike out


def test_smooth_renormalises_at_the_edge():
    # Spike in the first bin, kernel [w, 1, w]/(1 + 2w) with w = exp(-0.5 (bw / sigma)^2):
    # at bin 0 only bins 0 and 1 exist, so the rate is 1 / (1 + w) counts per bin.
    bw, sigma = 0.01, 0.004  # half-width ceil(4 x 0.4) = 2 bins; w2 = exp(-0.5 x 25) tiny
    w1, w2 = math.exp(-0.5 * (bw / sigma) ** 2), math.exp(-0.5 * (2 * bw / sigma) ** 2)
    counts = np.zeros((1, 6, 1))
    counts[0, 0, 0] = 1
    rates = metrics.smooth_spikes(arr(counts), bw, sigma).values[0, :, 0] * bw
    assert rates[0] == pytest.approx(1 / (1 + w1 + w2))
    assert rates[1] == pytest.approx(w1 / (1 + 2 * w1 + w2))


def test_smooth_fills_unobserved_bins():
    counts = np.full((1, 10, 2), 3.0)
    counts[0, [0, 4, 5], 0] = np.nan
    counts[0, :, 1] = np.nan  # never observed
    rates = metrics.smooth_spikes(arr(counts), 0.1, 0.2)
    np.testing.assert_allclose(rates.values[0, :, 0], 30.0)
    assert np.isnan(rates.values[0, :, 1]).all()


def test_smooth_errors():
    with pytest.raises(ConfigError, match="sigma"):
        metrics.smooth_spikes(arr(np.ones((1, 3, 1))), 0.01, 0.0)
    with pytest.raises(DataError, match="negative"):
        metrics.smooth_spikes(arr(-np.ones((1, 3, 1))), 0.01, 0.02)


def test_choose_smoothing_sigma_against_true_rates():
    rng = np.random.default_rng(3)
    bw = 0.01
    t = (np.arange(100) + 0.5) * bw
    rates = 100 + 80 * np.sin(2 * np.pi * 1.5 * t)[None, :, None] * np.ones((20, 1, 3))
    spikes = arr(rng.poisson(rates * bw))
    sigmas = [0.005, 0.02, 0.05, 0.5]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an inside optimum: no edge warning
        best, scores = metrics.choose_smoothing_sigma(spikes, bw, sigmas, rates_true=arr(rates))
    expected = [metrics.rate_r2(metrics.smooth_spikes(spikes, bw, s), arr(rates)) for s in sigmas]
    np.testing.assert_allclose(scores.values, expected)
    assert best == sigmas[int(np.argmax(expected))]
    assert best not in (0.005, 0.5)  # too little smoothing and too much both lose


def test_choose_smoothing_sigma_leave_one_bin_out():
    # A constant-rate process: the wider the kernel, the closer to the true constant rate,
    # so held-out bits per spike grows with sigma and the widest sigma wins.
    rng = np.random.default_rng(4)
    spikes = arr(rng.poisson(0.2, (20, 100, 3)))
    with pytest.warns(UserWarning, match="edge of the grid"):  # the optimum is beyond the widest
        best, scores = metrics.choose_smoothing_sigma(spikes, 0.01, [0.01, 0.03, 0.1])
    assert best == 0.1
    assert np.all(np.diff(scores.values) > 0)
    with pytest.raises(ConfigError, match="half a bin"):
        metrics.choose_smoothing_sigma(spikes, 0.01, [0.001])


# ----------------------------------------------------------------------------- PSTH R^2

def psth_spikes():
    # Condition 'a': trials 0-2 (1 neuron, 3 bins of 0.1 s); condition 'b': trial 3 alone.
    counts = np.array([[0, 1, 2], [2, 1, 0], [1, 1, 4], [9, 9, 9]], dtype=float)[:, :, None]
    return arr(counts, time=(np.arange(3) + 0.5) * 0.1).assign_coords(
        condition=("trial", ["a", "a", "a", "b"]))


def test_psth_r2_hand_case_uses_all_trials_of_the_condition():
    # sigma = bw/10: neighbour weight exp(-50), so smoothing is counts / bw. Condition 'a''s
    # PSTH is the mean of trials 0-2, evaluated or not: [10, 10, 20] Hz (mean 13.33, SS_tot
    # 200/3). Trials 0 and 1 are evaluated; their mean rates [10, 15, 20] give SS_res 25, so
    # R^2 = 1 - 25 x 3 / 200 = 0.625.
    spikes = psth_spikes()
    rates = arr([[[15.0], [10.0], [30.0]], [[5.0], [20.0], [10.0]]], time=spikes["time"].values)
    assert metrics.psth_r2(rates, spikes, bin_width=0.1, sigma=0.01) == pytest.approx(0.625, abs=1e-9)


def test_psth_r2_perfect_when_trials_repeat():
    rng = np.random.default_rng(6)
    base = rng.poisson(1.0, (2, 20, 4)).astype(float)
    counts = np.concatenate([base[[0]]] * 3 + [base[[1]]] * 3)
    spikes = arr(counts).assign_coords(condition=("trial", [0, 0, 0, 1, 1, 1]))
    rates = metrics.smooth_spikes(spikes, 0.01, 0.03)
    assert metrics.psth_r2(rates, spikes, bin_width=0.01, sigma=0.03) == pytest.approx(1.0)


def test_psth_r2_scores_a_condition_with_one_trial():
    # Trial 3 is alone in condition 'b': its PSTH is its own smoothed spikes, [90, 90, 90] Hz,
    # predicted exactly, so only the hand case's SS_res of 25 remains, over the stacked targets.
    spikes = psth_spikes()
    rates = arr([[[15.0], [10.0], [30.0]], [[5.0], [20.0], [10.0]], [[90.0], [90.0], [90.0]]],
                time=spikes["time"].values, trial=[0, 1, 3])
    target = np.array([10, 10, 20, 90, 90, 90], dtype=float)
    expected = 1 - 25 / np.sum((target - target.mean()) ** 2)
    assert metrics.psth_r2(rates, spikes, bin_width=0.1, sigma=0.01) == pytest.approx(expected, abs=1e-9)


def test_psth_r2_errors():
    spikes = psth_spikes()
    rates = arr([[[15.0], [10.0], [30.0]]], time=spikes["time"].values)
    with pytest.raises(DataError, match="no 'condition' coordinate"):
        metrics.psth_r2(rates, spikes.drop_vars("condition"), bin_width=0.1)
    with pytest.raises(DataError, match=r"trial ids \[7\] that are not in the data"):
        metrics.psth_r2(rates.assign_coords(trial=[7]), spikes, bin_width=0.1)
    with pytest.raises(DataError, match="NaN or infinite values in bins that condition 'a'"):
        metrics.psth_r2(rates.where(rates > 12), spikes, bin_width=0.1)


# ----------------------------------------------------------------------------- state R^2

def test_state_r2_affine_recovery_is_one():
    rng = np.random.default_rng(7)
    true = arr(rng.normal(size=(5, 30, 3)), dims=("trial", "time", "latent"))
    mixing = rng.normal(size=(3, 4))
    inferred = arr(true.values @ mixing + 2.0, dims=("trial", "time", "factor"))
    assert metrics.state_r2(inferred, true) == pytest.approx(1.0)


def test_state_r2_direction_true_to_inferred():
    # A 1-D inferred state that is a projection of the 3-D truth is fully explained by it (1.0);
    # the other way round, the 1-D state cannot explain the 3-D truth (< 1).
    rng = np.random.default_rng(8)
    true = arr(rng.normal(size=(5, 30, 3)), dims=("trial", "time", "latent"))
    inferred = arr(true.values @ [[1.0], [-2.0], [0.5]] - 1.0, dims=("trial", "time", "factor"))
    assert metrics.state_r2(inferred, true) == pytest.approx(1.0)
    assert metrics.state_r2(true, inferred) < 0.7


def test_state_r2_unexplained_dim_scores_zero():
    # Inferred dims: two affine images of the truth (R^2 1) and one built orthogonal to
    # [1, truth] in-sample (R^2 exactly 0): average 2/3.
    rng = np.random.default_rng(9)
    x = rng.normal(size=(150, 2))
    design = np.hstack([x, np.ones((150, 1))])
    noise = rng.normal(size=150)
    noise -= design @ np.linalg.lstsq(design, noise, rcond=None)[0]
    inferred = np.column_stack([x @ [1.0, 2.0] + 3, x @ [0.0, -1.0], noise])
    r2 = metrics.state_r2(arr(inferred.reshape(5, 30, 3), dims=("trial", "time", "factor")),
                          arr(x.reshape(5, 30, 2), dims=("trial", "time", "latent")))
    assert r2 == pytest.approx(2 / 3)


def test_state_r2_errors():
    true = arr(np.random.default_rng(0).normal(size=(2, 5, 3)), dims=("trial", "time", "latent"))
    with pytest.raises(DataError, match="entries along 'trial'"):
        metrics.state_r2(true.isel(trial=[0]), true)
    with pytest.raises(DataError, match="one feature dim"):
        metrics.state_r2(true.isel(latent=0), true)


# ----------------------------------------------------------------------------- against nlb_tools

@pytest.fixture(scope="module")
def nlb():
    # `make setup` installs nlb-tools with --no-deps (its metadata pins pandas<=1.3.4 and pulls
    # pynwb); nlb_tools.evaluation itself needs only numpy, scipy, scikit-learn and h5py. Under CI
    # (CI=true) a missing nlb-tools fails these parity tests instead of skipping them unseen.
    try:
        import nlb_tools.evaluation as evaluation
    except ImportError:
        message = "nlb-tools is not installed (make setup installs it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}; CI must run the nlb_tools parity tests.")
        pytest.skip(message)
    return evaluation


def random_counts(rng, shape, bin_width, unobserved=0.05):
    """Rates (Hz, some exactly 0) and Poisson counts from them, a few counts NaN (not observed)."""
    rates = rng.gamma(2.0, 10.0, shape) * (rng.random(shape) > 0.02)
    spikes = rng.poisson(rates * bin_width + 0.05).astype(float)
    spikes[rng.random(shape) < unobserved] = np.nan
    return rates, spikes


def test_bits_per_spike_and_co_bps_match_nlb_tools(nlb):
    rng = np.random.default_rng(11)
    bin_width = 0.005
    rates, spikes = random_counts(rng, (17, 40, 9), bin_width)
    heldout = np.arange(9) >= 6
    spikes_da = arr(spikes).assign_coords(heldout=("neuron", heldout))
    # Dims matched by name: a transposed prediction must not change anything.
    rates_da = arr(rates).transpose("neuron", "time", "trial")
    expected = nlb.bits_per_spike(rates * bin_width, spikes.copy())
    assert metrics.bits_per_spike(rates_da, spikes_da, bin_width) == pytest.approx(expected, rel=1e-10)
    expected_co = nlb.bits_per_spike(rates[..., heldout] * bin_width, spikes[..., heldout])
    assert metrics.co_bps(rates_da, spikes_da, "heldout", bin_width) == pytest.approx(expected_co, rel=1e-10)


def test_fp_bps_matches_nlb_tools(nlb):
    # nlb_tools' fp-bps: bits_per_spike on the forward bins, held-in and held-out neurons together.
    rng = np.random.default_rng(12)
    bin_width, n_time, n_forward = 0.02, 30, 8
    rates, spikes = random_counts(rng, (13, n_time + n_forward, 7), bin_width)
    time = (np.arange(n_time + n_forward) + 0.5) * bin_width
    forward = np.arange(n_time + n_forward) >= n_time
    spikes_da = arr(spikes, time=time).assign_coords(forward=("time", forward))
    rates_da = arr(rates, time=time)
    expected = nlb.bits_per_spike(rates[:, forward] * bin_width, spikes[:, forward])
    assert metrics.fp_bps(rates_da, spikes_da, "forward", bin_width) == pytest.approx(expected, rel=1e-10)
    # The same bins by time value, and rates for the forward bins only.
    assert metrics.fp_bps(rates_da.isel(time=forward), spikes_da, time[forward], bin_width) == pytest.approx(
        expected, rel=1e-10)
    # Not the same as scoring the whole trial.
    assert metrics.bits_per_spike(rates_da, spikes_da, bin_width) != pytest.approx(expected, rel=1e-3)


@pytest.mark.filterwarnings("ignore:Mean of empty slice")  # where condition 2 has ended
def test_psth_r2_matches_nlb_tools_eval_psth(nlb):
    # eval_psth's inputs: psth (condition, time, neuron) from all of each condition's trials,
    # NaN where a condition's trials end; eval rates (trial, time, neuron); per condition the
    # indices of its eval trials. Uneven trial counts, one condition evaluated on one trial,
    # one with no evaluated trial (eval_psth skips it), one with shorter trials.
    rng = np.random.default_rng(13)
    bin_width, sigma, n_time, n_neurons = 0.01, 0.03, 25, 6
    counts_per_condition = [9, 4, 6, 2, 5]
    evaluated_per_condition = [4, 1, 3, 0, 2]
    condition = np.repeat(np.arange(5), counts_per_condition)
    trial_ids = rng.permutation(np.arange(100, 100 + condition.size))  # ids are not positions
    order = rng.permutation(condition.size)
    condition, trial_ids = condition[order], trial_ids[order]
    spikes = rng.poisson(rng.gamma(2.0, 0.2, (5, 1, n_neurons))[condition],
                         (condition.size, n_time, n_neurons)).astype(float)
    spikes[condition == 2, -4:] = np.nan  # condition 2's trials are 4 bins shorter
    spikes_da = arr(spikes, trial=trial_ids).assign_coords(condition=("trial", condition))
    smoothed = np.where(np.isnan(spikes), np.nan, metrics.smooth_spikes(spikes_da, bin_width, sigma).values)
    psth = np.stack([np.nanmean(smoothed[condition == c], axis=0) for c in range(5)])
    assert np.isnan(psth[2, -4:]).all() and np.isfinite(psth[2, :-4]).all()

    eval_pos = np.concatenate([np.flatnonzero(condition == c)[:k] for c, k in enumerate(evaluated_per_condition)])
    eval_pos = rng.permutation(eval_pos)
    rates = psth[condition[eval_pos]] + rng.gamma(1.0, 5.0, (eval_pos.size, n_time, n_neurons))
    rates[np.isnan(rates)] = 0.0
    eval_cond_idx = [np.flatnonzero(condition[eval_pos] == c) for c in range(5)]
    expected = nlb.eval_psth(psth, rates, eval_cond_idx)

    rates_da = arr(rates, trial=trial_ids[eval_pos])
    rates_da[{"trial": condition[eval_pos] == 2, "time": slice(-4, None)}] = np.nan  # not scored there
    got = metrics.psth_r2(rates_da.transpose("time", "neuron", "trial"), spikes_da, bin_width=bin_width, sigma=sigma)
    assert got == pytest.approx(expected, rel=1e-10)
    assert 0.0 < got < 0.99


@pytest.mark.parametrize("lag_bins", [0, 2])
def test_velocity_r2_matches_nlb_tools(nlb, lag_bins):
    # nlb_tools' velocity_decoding: GridSearchCV(Ridge(), alpha in logspace(-4, 0, 9)), 5-fold,
    # fit on train trials' (time, neuron) counts, Ridge.score on eval trials; samples without
    # behaviour dropped. It has no lag (its tensors are already shifted), so the lagged case
    # gives it rates[:, :T - lag] against behaviour[:, lag:].
    rng = np.random.default_rng(14 + lag_bins)
    bin_width, n_trials, n_time = 0.02, 40, 20
    rates = rng.gamma(2.0, 10.0, (n_trials, n_time, 8))
    behavior = np.full((n_trials, n_time, 2), np.nan)
    behavior[:, lag_bins:] = (rates[:, : n_time - lag_bins] * bin_width @ rng.normal(0, 1, (8, 2))
                              + rng.normal(0, 1.5, (n_trials, n_time - lag_bins, 2)))
    behavior[:, :lag_bins] = 0.0
    behavior[rng.random((n_trials, n_time)) < 0.1] = np.nan  # samples without behaviour
    train = rng.random(n_trials) < 0.7
    ds = make_dataset(rng.poisson(rates * bin_width), bin_width, split_labels=np.where(train, "train", "valid"),
                      rates_true=rates, behavior=behavior)
    got = metrics.velocity_r2(ds["rates_true"], ds["behavior"], train_trials="train", test_trials="valid",
                              bin_width=bin_width, lag=lag_bins * bin_width)
    counts, beh = rates[:, : n_time - lag_bins] * bin_width, behavior[:, lag_bins:]
    everything = np.ones((n_trials, 1), bool)
    expected = nlb.velocity_decoding(counts[train], beh[train], everything[train],
                                     counts[~train], beh[~train], everything[~train])
    assert got == pytest.approx(expected, rel=1e-9)
    assert 0.1 < got < 0.99


def test_latent_r2_is_the_decoding_direction_held_out():
    # Truth 3-D; inferred = the truth plus 5 dims of pure noise (a large model that contains the
    # true state). Decoding truth from it is perfect on held-out trials (latent_r2 1), but 5 of 8
    # inferred dims are unexplained by the truth, so state_r2 is about 3/8. Reference: hand computation.
    rng = np.random.default_rng(10)
    true = rng.normal(size=(20, 30, 3))
    inferred = np.concatenate([true @ rng.normal(size=(3, 3)), rng.normal(size=(20, 30, 5))], axis=-1)
    split = np.where(np.arange(20) % 4 == 0, "valid", "train")
    true_da = arr(true, dims=("trial", "time", "latent")).assign_coords(split=("trial", split))
    inferred_da = arr(inferred, dims=("trial", "time", "factor"))
    assert metrics.latent_r2(inferred_da, true_da) == pytest.approx(1.0, abs=1e-3)
    assert metrics.state_r2(inferred_da, true_da) == pytest.approx(3 / 8, abs=0.02)
    # A 1-D projection of the truth: fully explained by it, but explains only part of it.
    proj = arr(true @ [[1.0], [0.0], [0.0]], dims=("trial", "time", "factor"))
    assert metrics.state_r2(proj, true_da) == pytest.approx(1.0)
    assert metrics.latent_r2(proj, true_da) == pytest.approx(1 / 3, abs=0.03)
    with pytest.raises(DataError, match="entries along 'trial'"):
        metrics.latent_r2(inferred_da.isel(trial=[0]), true_da)


def test_latent_r2_is_scored_on_trials_the_decoder_did_not_see():
    # Pure noise "inferred" dims: in sample a 40-D least-squares fit explains some of the truth by
    # chance; held out, the ridge decoder cannot (R^2 near 0 or below). Trial ids work as splits.
    rng = np.random.default_rng(3)
    true_da = arr(rng.normal(size=(12, 10, 2)), dims=("trial", "time", "latent"))
    noise_da = arr(rng.normal(size=(12, 10, 40)), dims=("trial", "time", "factor"))
    assert metrics.latent_r2(noise_da, true_da, train_trials=range(8), test_trials=range(8, 12)) < 0.05
    with pytest.raises(DataError, match="share trials"):
        metrics.latent_r2(noise_da, true_da, train_trials=range(8), test_trials=range(6, 12))
    with pytest.raises(DataError, match="no 'split' coordinate"):
        metrics.latent_r2(noise_da, true_da)


def test_nll_per_entry_is_the_poisson_log_pmf_mean_over_observed_entries():
    """Against scipy.stats.poisson.logpmf (closed form), NaN spikes left out."""
    from scipy.stats import poisson

    rng = np.random.default_rng(1)
    rates = rng.uniform(1, 40, (3, 5, 2))
    spikes = rng.poisson(rates * 0.02).astype(float)
    spikes[0, 0, 0] = np.nan
    dims = ("trial", "time", "neuron")
    got = metrics.nll_per_entry(xr.DataArray(rates, dims=dims), xr.DataArray(spikes, dims=dims), 0.02)
    seen = ~np.isnan(spikes)
    np.testing.assert_allclose(got, -poisson.logpmf(spikes[seen], rates[seen] * 0.02).mean())


def test_spike_scores_table_equals_the_metrics_and_is_nan_without_truth():
    # Reference: each entry is the metric function it names, called on the same trials; the true
    # rates score rate R^2 1; without truth only bits per spike is left.
    from data_generators import chaotic_rnn

    ds = chaotic_rnn(0, n_units=12, n_conditions=6, trials_per_condition=5, n_bins=20)
    smoothed = metrics.smooth_spikes(ds["spikes"], 0.01, 0.03)
    scores = metrics.spike_scores(ds, {"truth": ds["rates_true"], "smoothing": smoothed},
                                  latents={"truth": ds["latents_true"]})
    assert list(scores["method"].values) == ["truth", "smoothing"]
    valid = ds.trial.values[ds.split.values == "valid"]
    row = scores.sel({"method": "smoothing"})
    assert row["rate_r2"] == pytest.approx(metrics.rate_r2(smoothed.sel(trial=valid), ds["rates_true"].sel(trial=valid)))
    assert row["bits_per_spike"] == pytest.approx(
        metrics.bits_per_spike(smoothed.sel(trial=valid), ds["spikes"].sel(trial=valid), 0.01))
    assert row["latent_r2"] == pytest.approx(metrics.latent_r2(smoothed, ds["latents_true"]))
    assert row["velocity_r2"] == pytest.approx(metrics.velocity_r2(smoothed, ds["behavior"], train_trials="train",
                                                                   test_trials=valid, bin_width=0.01))
    assert row["psth_r2"] == pytest.approx(metrics.psth_r2(smoothed.sel(trial=valid), ds["spikes"], bin_width=0.01))
    truth = scores.sel({"method": "truth"})
    assert truth["rate_r2"] == 1.0 and truth["state_r2"] == pytest.approx(1.0)
    assert truth["latent_r2"] > 0.99
    bare = ds.drop_vars(["rates_true", "latents_true", "behavior", "condition"])
    empty = metrics.spike_scores(bare, {"smoothing": smoothed.drop_vars("condition")})
    assert np.isfinite(empty["bits_per_spike"]).all()
    assert all(np.isnan(empty[v]).all() for v in empty.data_vars if v != "bits_per_spike")
    assert "rates_true" in empty.attrs["missing"]
    with pytest.raises(ConfigError, match="latents has methods"):
        metrics.spike_scores(ds, {"smoothing": smoothed}, latents={"lfads": smoothed})


# ----------------------------------------------------------------------------- score: one table by data kind

def _fake_inference(ds, output, rng, latent_dim=3):
    """An inference Dataset as lfads_nb.infer writes it: the kind's output and factors."""
    shape = ds[kind_of(ds).variable].shape
    return xr.Dataset({output: (("trial", "time", "neuron"), rng.uniform(1, 20, shape)),
                       "factors": (("trial", "time", "factor"), rng.normal(size=(*shape[:2], latent_dim)))},
                      coords={k: ds.coords[k] for k in ("trial", "time", "neuron")})


def test_score_is_the_kinds_table_built_from_the_metric_functions():
    """Reference: the metric functions themselves (spike_scores, co_bps, fp_bps, emg_scores,
    latent_r2, state_r2) on the same inputs; NaN where the data lack the truth."""
    from data_generators import calcium_2p, chaotic_rnn, emg
    from lfads_nb.data.kinds import kind_of as kind

    rng = np.random.default_rng(0)
    ds = chaotic_rnn(seed=0, n_conditions=6, trials_per_condition=4, n_observed=10, n_bins=20)
    heldout = np.arange(ds.sizes["neuron"]) >= 8
    ds = ds.assign_coords(heldout=("neuron", heldout), forward=("time", np.arange(ds.sizes["time"]) >= 16))
    out = _fake_inference(ds, "rates", rng)
    baseline = metrics.smooth_spikes(ds["spikes"], 0.01, 0.03)
    table = lfads_nb.score({"lfads": out, "smooth": baseline}, ds)
    assert table.attrs["kind"] == "spikes" and list(table.method.values) == ["lfads", "smooth"]
    want = metrics.spike_scores(ds, {"lfads": out["rates"], "smooth": baseline}, latents={"lfads": out["factors"]})
    for name in want.data_vars:
        np.testing.assert_allclose(table[name].values, want[name].values, rtol=1e-12, equal_nan=True)
    valid = ds.trial.values[ds.split.values == "valid"]
    assert table.co_bps.sel({"method": "lfads"}).item() == pytest.approx(metrics.co_bps(
        out["rates"].sel(trial=valid), ds["spikes"].sel(trial=valid), "heldout", 0.01))
    assert table.fp_bps.sel({"method": "smooth"}).item() == pytest.approx(metrics.fp_bps(
        baseline.sel(trial=valid), ds["spikes"].sel(trial=valid), "forward", 0.01))
    one = lfads_nb.score(out, ds)  # one inference: the method is 'model'
    assert list(one.method.values) == ["model"] and one.rate_r2.item() == table.rate_r2.sel({"method": "lfads"}).item()
    bare = lfads_nb.score(out, ds.drop_vars(["rates_true", "latents_true"]).drop_vars(["heldout", "forward"]))
    assert np.isnan([bare[v].item() for v in ("rate_r2", "latent_r2", "state_r2", "co_bps", "fp_bps")]).all()
    assert np.isfinite(bare.bits_per_spike.item())

    recording = emg(0, n_trials=20, n_bins=30, n_channels=4)
    out = _fake_inference(recording, "emg_mean", rng)
    table = lfads_nb.score(out, recording)
    want = metrics.emg_scores(recording, {"model": out["emg_mean"]})
    for name in want.data_vars:
        np.testing.assert_allclose(table[name].values, want[name].values, rtol=1e-12, equal_nan=True)
    valid = recording.trial.values[recording.split.values == "valid"]
    assert table.latent_r2.item() == pytest.approx(metrics.latent_r2(out["factors"], recording["latents_true"]))
    assert table.state_r2.item() == pytest.approx(metrics.state_r2(out["factors"].sel(trial=valid),
                                                                   recording["latents_true"].sel(trial=valid)))

    events = calcium_2p(0, n_neurons=8, n_conditions=4, trials_per_condition=5, n_frames=6)
    assert kind(events).name == "calcium_events"
    out = _fake_inference(events, "events_mean", rng)
    table = lfads_nb.score(out, events)
    assert np.isnan(table.events_r2.item())  # the generator gives the latent truth, not the events'
    assert table.latent_r2.item() == pytest.approx(metrics.latent_r2(out["factors"], events["latents_true"]))

    with pytest.raises(ConfigError, match="no 'rates'"):
        lfads_nb.score(out, ds)
    with pytest.raises(ConfigError, match="at least one"):
        lfads_nb.score({}, ds)


def test_score_takes_the_latents_it_is_told_to():
    """Reference: metrics.latent_r2 and state_r2 of the named variable; a missing one is a ConfigError."""
    from data_generators import chaotic_rnn

    rng = np.random.default_rng(1)
    ds = chaotic_rnn(seed=1, n_conditions=6, trials_per_condition=4, n_observed=10, n_bins=20)
    out = _fake_inference(ds, "rates", rng)
    out["generator_states"] = (("trial", "time", "state"), rng.normal(size=(*out.rates.shape[:2], 7)))
    by_states = lfads_nb.score(out, ds, latents="generator_states")
    valid = ds.trial.values[ds.split.values == "valid"]
    assert by_states.state_r2.item() == pytest.approx(metrics.state_r2(
        out.generator_states.sel(trial=valid), ds.latents_true.sel(trial=valid)), rel=1e-12)
    assert by_states.latent_r2.item() == pytest.approx(metrics.latent_r2(out.generator_states, ds.latents_true),
                                                       rel=1e-12)
    by_factors = lfads_nb.score(out, ds)
    assert by_factors.state_r2.item() != by_states.state_r2.item()
    assert by_factors.rate_r2.item() == by_states.rate_r2.item()
    with pytest.raises(ConfigError, match="no 'generator_states' to score"):
        lfads_nb.score(out.drop_vars("generator_states"), ds, latents="generator_states")
