"""OASIS AR(1) deconvolution, staggered sampling and the calcium_2p generator (lfads_nb.data.calcium,
data_generators.calcium).

References: OASIS against scipy's non-negative least squares (the AR(1) problem with s >= 0 is
NNLS on the calcium kernel), against its KKT conditions with an L1 penalty, against brute force
over event supports for s_min > 0, and against the closed form of a noise-free trace.
"""
import itertools
import time

import numpy as np
import pytest
import xarray as xr
from scipy.optimize import nnls

import lfads_nb
from data_generators import calcium_2p
from lfads_nb import ConfigError, DataError
from lfads_nb.data.calcium import deconvolve_staggered, frame_binned, oasis_ar1, sampled_mask

SMALL = dict(n_neurons=12, n_conditions=4, trials_per_condition=5, n_frames=10)


def kernel(T, g):
    """Calcium kernel matrix: c = K s with c_t = sum_{k <= t} g^(t - k) s_k (so s_0 = c_0)."""
    lag = np.subtract.outer(np.arange(T), np.arange(T))
    return np.where(lag >= 0, g ** lag.clip(0), 0.0)


def penalty_shift(T, g):
    """d/dc of sum_t s_t: (1 - g) everywhere but the last sample, 1 there."""
    a = np.full(T, 1 - g)
    a[-1] = 1.0
    return a


def random_problem(rng):
    T, g = int(rng.integers(1, 30)), rng.uniform(0.3, 0.98)
    s = rng.poisson(0.2, T) * rng.uniform(0.5, 2, T)
    y = kernel(T, g) @ s + rng.normal(0, rng.uniform(0.05, 1.0), T) + rng.uniform(-0.5, 0.5)
    return y, g


def test_oasis_equals_nnls():
    """With lam = 0 and s_min = 0, OASIS solves min ||K s - y||^2 s.t. s >= 0 exactly: scipy nnls."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        y, g = random_problem(rng)
        c, s = oasis_ar1(y, g)
        s_ref, _ = nnls(kernel(len(y), g), y)
        np.testing.assert_allclose(c, kernel(len(y), g) @ s_ref, atol=1e-9)
        np.testing.assert_allclose(kernel(len(y), g) @ s, c, atol=1e-9)
        assert (s >= 0).all()


def test_oasis_l1_penalty_satisfies_kkt():
    """min 1/2||K s - y||^2 + lam sum(s), s >= 0: gradient K^T(K s - y) + lam is 0 where s > 0
    and >= 0 where s = 0 (the KKT conditions of the convex problem)."""
    rng = np.random.default_rng(1)
    for _ in range(100):
        y, g = random_problem(rng)
        lam = rng.uniform(0.01, 1.0)
        K = kernel(len(y), g)
        _, s = oasis_ar1(y, g, lam=lam)
        grad = K.T @ (K @ s - y) + lam
        assert np.all(np.abs(grad[s > 1e-9]) < 1e-7)
        assert np.all(grad[s <= 1e-9] > -1e-7)
        # and the same as nnls on the shifted data (the penalty is linear in c)
        s_ref, _ = nnls(K, y - lam * penalty_shift(len(y), g))
        np.testing.assert_allclose(K @ s, K @ s_ref, atol=1e-9)


def brute_force_smin(y, g, s_min):
    """The best c over every event support: for each set of pool starts, the least-squares pool
    values; feasible if events at the starts (after the first sample) are >= s_min and c_0 >= 0."""
    T = len(y)
    best = (np.inf, None)
    for support in itertools.product([False, True], repeat=T - 1):
        starts = [0] + [t + 1 for t, on in enumerate(support) if on]
        design = np.zeros((T, len(starts)))
        for j, start in enumerate(starts):
            end = starts[j + 1] if j + 1 < len(starts) else T
            design[start:end, j] = g ** np.arange(end - start)
        for pin in (False, True):  # c_0 free or held at 0
            cols = design[:, 1:] if pin else design
            v = np.linalg.lstsq(cols, y, rcond=None)[0] if cols.shape[1] else np.zeros(0)
            c = cols @ v if cols.shape[1] else np.zeros(T)
            s = c - g * np.concatenate([[0.0], c[:-1]])
            if c[0] < -1e-12 or any(s[t] < s_min - 1e-12 for t in starts[1:]):
                continue
            cost = 0.5 * np.sum((c - y) ** 2)
            if cost < best[0]:
                best = (cost, c)
    return best


def test_oasis_s_min_matches_brute_force_on_small_traces():
    """With s_min > 0 the problem is not convex and OASIS pools greedily. On short traces of
    separated events that start with leftover calcium (as the generator's traces do, after their
    history) it reaches the brute-force optimum over all event supports; from a zero start (the
    first pool held at 0) its events still all respect s_min."""
    rng = np.random.default_rng(2)
    for case in range(60):
        T, g, s_min = 9, rng.uniform(0.6, 0.95), 0.3
        s_true = np.zeros(T)
        s_true[rng.choice(np.arange(1, T), 2, replace=False)] = rng.uniform(0.8, 2.0, 2)
        s_true[0] = rng.uniform(0.5, 1.0) if case < 40 else 0.0
        y = kernel(T, g) @ s_true + rng.normal(0, 0.1, T)
        c, s = oasis_ar1(y, g, s_min=s_min)
        assert np.all((s[1:] == 0) | (s[1:] >= s_min - 1e-12))
        np.testing.assert_allclose(kernel(T, g) @ s, c, atol=1e-12)
        if case < 40:
            cost, _ = brute_force_smin(y, g, s_min)
            assert 0.5 * np.sum((c - y) ** 2) == pytest.approx(cost, rel=1e-9, abs=1e-12)


def test_oasis_noise_free_closed_form_and_batches():
    """A noise-free AR(1) trace deconvolves to its own spikes; traces in a batch are independent."""
    g = 0.9
    s = np.array([0, 0, 1.5, 0, 0, 0, 0.7, 0, 0, 2.0, 0, 0])
    y = kernel(12, g) @ s
    c, e = oasis_ar1(np.stack([y, 2 * y, np.zeros(12)]), g, s_min=0.5)
    np.testing.assert_allclose(e, np.stack([s, 2 * s, np.zeros(12)]), atol=1e-12)
    np.testing.assert_allclose(c[0], y, atol=1e-12)


def test_oasis_bad_input():
    with pytest.raises(ConfigError, match=r"g must lie in \(0, 1\)"):
        oasis_ar1(np.ones(5), 1.2)
    with pytest.raises(ConfigError, match="s_min must be >= 0"):
        oasis_ar1(np.ones(5), 0.9, s_min=-1)
    with pytest.raises(DataError, match="NaN or infinite"):
        oasis_ar1(np.array([1.0, np.nan]), 0.9)


# ---------------------------------------------------------------------------------- staggered sampling

def test_deconvolve_staggered_places_events_at_the_scan_phase():
    rng = np.random.default_rng(3)
    phase = np.array([0, 2, 1])
    mask = sampled_mask(12, phase, 3)
    assert mask.sum(axis=0).tolist() == [4, 4, 4] and mask[2, 1] and mask[1, 2] and mask[0, 0]
    fluo = np.where(mask, rng.uniform(0, 2, (2, 12, 3)), np.nan)
    events = deconvolve_staggered(fluo, phase, 3, 0.8, s_min=0.1)
    observed = ~np.isnan(events)
    assert np.array_equal(observed[:, 3:], np.broadcast_to(mask[3:], (2, 9, 3)))
    assert np.isnan(events[:, :3]).all()  # the first frame is leftover calcium, not an event
    frames = np.stack([fluo[:, k * 3 + phase, np.arange(3)] for k in range(4)], axis=1)
    _, ref = oasis_ar1(np.moveaxis(frames, 1, -1), 0.8, s_min=0.1)
    for k in range(1, 4):  # frame k: neuron n's event at bin 3k + phase[n]
        np.testing.assert_allclose(events[:, 3 * k + phase, np.arange(3)], ref[..., k])


def test_staggered_bad_input():
    mask = sampled_mask(6, [0, 1], 3)
    fluo = np.where(mask, 1.0, np.nan)[None]
    with pytest.raises(DataError, match=r"scan_phase .* outside the frame.*0 \.\. 2"):
        deconvolve_staggered(fluo, [0, 3], 3, 0.8)
    fluo[0, 4, 1] = np.nan  # neuron 1 should be read at bin 4
    with pytest.raises(DataError, match="NaN or infinite at 1 bins where a neuron is sampled"):
        deconvolve_staggered(fluo, [0, 1], 3, 0.8)
    with pytest.raises(DataError, match="not a whole number of frames"):
        sampled_mask(7, [0, 1], 3)


# ---------------------------------------------------------------------------------- generator

def test_calcium_2p_default_builds_fast_with_the_documented_statistics():
    start = time.process_time()
    ds = calcium_2p(0)
    seconds = time.process_time() - start
    assert seconds < 10, f"default calcium_2p took {seconds:.1f} s of CPU"
    assert lfads_nb.kind_of(ds).name == "calcium_events"
    assert ds["events"].shape == (960, 60, 100) and ds.attrs["bin_width"] == pytest.approx(0.01)
    events = ds["events"].values
    assert np.isnan(events).mean() == pytest.approx(2 / 3)
    observed = events[~np.isnan(events)]
    assert 0.55 < (observed == 0).mean() < 0.8  # the reference prototype: 0.69
    assert observed[observed > 0].min() >= ds.attrs["s_min"] - 1e-6
    # events sit exactly where the fluorescence was read, at each neuron's scan phase
    mask = sampled_mask(60, ds["scan_phase"].values, 3)
    assert np.array_equal(~np.isnan(events), np.broadcast_to(mask, events.shape))
    assert np.array_equal(~np.isnan(ds["fluorescence"].values), ~np.isnan(events))
    assert 5 < float(ds["rates_true"].mean()) < 12
    assert lfads_nb.kind_of(ds).default_observation(ds) == {"name": "zig", "s_min": 0.1}


def test_calcium_2p_events_track_spikes_and_latent_speed():
    """Events are a deconvolution of the spikes: per neuron, frame events correlate with the
    frame's spike counts; and lorenz_hz sets the latent's speed (mean |dz/dt| scales with it)."""
    slow, fast = calcium_2p(0, lorenz_hz=3, **SMALL), calcium_2p(0, lorenz_hz=12, **SMALL)
    frames = frame_binned(fast)
    ev, sp = frames["events"].values, frames["spikes_true"].values
    r = [np.corrcoef(ev[..., n].ravel(), sp[..., n].ravel())[0, 1] for n in range(ev.shape[-1])]
    assert np.median(r) > 0.5
    speed = [np.abs(np.diff(d["latents_true"].values, axis=1)).mean() for d in (slow, fast)]
    assert 2.5 < speed[1] / speed[0] < 5.5  # 4x the frequency


def test_calcium_2p_is_deterministic_and_options_are_checked():
    a, b = calcium_2p(1, **SMALL), calcium_2p(1, **SMALL)
    xr.testing.assert_identical(a, b)
    assert not np.array_equal(np.nan_to_num(calcium_2p(2, **SMALL)["events"].values), np.nan_to_num(a["events"].values))
    rise = calcium_2p(1, tau_rise=0.05, **SMALL)
    assert np.nanmax(rise["events"].values) > 0
    with pytest.raises(ConfigError, match="lorenz_hz must be a finite number > 0"):
        calcium_2p(0, lorenz_hz=0)
    with pytest.raises(ConfigError, match="tau_rise .* must be shorter than tau_decay"):
        calcium_2p(0, tau_rise=0.5)


def test_frame_binned_view():
    ds = calcium_2p(0, **SMALL)
    frames = frame_binned(ds)
    assert frames.sizes["time"] == 10 and frames.attrs["bin_width"] == pytest.approx(0.03)
    assert not np.isnan(frames["events"].values).any()
    np.testing.assert_array_equal(frames["events"].values, np.nansum(
        ds["events"].values.reshape(ds.sizes["trial"], 10, 3, -1), axis=2))
    np.testing.assert_allclose(frames["rates_true"].values,
                               ds["rates_true"].values.reshape(ds.sizes["trial"], 10, 3, -1).mean(2), rtol=1e-6)
    assert frames["spikes_true"].sum() == ds["spikes_true"].sum()
    assert "scan_phase" not in frames.coords and list(frames["split"].values) == list(ds["split"].values)


def test_calcium_dataset_bad_input():
    ds = calcium_2p(0, **SMALL)
    bad = ds.assign_coords(scan_phase=("neuron", np.r_[ds["scan_phase"].values[:-1], 5]))
    with pytest.raises(DataError, match="outside the frame"):
        frame_binned(bad)
    with pytest.raises(DataError, match="no attrs\\['sub_bins'\\]"):
        frame_binned(ds.drop_attrs() .assign_attrs(bin_width=0.01, kind="calcium_events"))
    negative = ds.copy(deep=True)
    negative["events"][0, 0, 0] = -0.5
    with pytest.raises(DataError, match="negative values.*clip\\(min=0\\)"):
        lfads_nb.validate(negative)
    high = ds.assign_attrs(s_min=0.5)
    with pytest.raises(DataError, match="s_min'\\] is 0.5 but the smallest event.*Set ds.attrs\\['s_min'\\] to at most"):
        lfads_nb.validate(high)


# ---------------------------------------------------------------------------------- scoring and plots

def test_truth_scores_reward_the_truth_and_penalise_blur():
    """truth_scores is metrics.latent_r2 at the sub-frame bins: the true rates (any per-neuron
    affine map of them) decode the state well; a frame-averaged copy, interpolated back to
    sub-frame bins, decodes it worse at a fast latent; no truth gives NaN."""
    from lfads_nb.data.calcium import on_subframe_time
    from lfads_nb.radical import truth_scores

    ds = calcium_2p(0, lorenz_hz=12, n_neurons=30, n_conditions=8, trials_per_condition=5, n_frames=10)
    exact = truth_scores(3 * ds["rates_true"] + 1, ds)
    assert exact["latent_r2"] == pytest.approx(lfads_nb.metrics.latent_r2(ds["rates_true"], ds["latents_true"]),
                                               abs=1e-3)
    assert exact["latent_r2"] > 0.8
    frames = frame_binned(ds)["rates_true"]
    back = on_subframe_time(frames, ds)
    assert back.sizes["time"] == ds.sizes["time"] and np.isfinite(back.values).all()
    np.testing.assert_allclose(back.isel(time=slice(1, None, 3)).values, frames.values, rtol=1e-5)  # frame centres
    assert truth_scores(frames, ds)["latent_r2"] < exact["latent_r2"] - 0.05
    no_truth = truth_scores(ds["rates_true"], ds.drop_vars(["rates_true", "latents_true"]))
    assert np.isnan(no_truth["latent_r2"])


def test_smoothed_events_picks_a_width_on_training_trials_only():
    from lfads_nb.radical import smoothed_events

    ds = calcium_2p(0, n_neurons=20, n_conditions=4, trials_per_condition=5, n_frames=10)
    valid = ds["split"].values == "valid"
    poisoned = ds.copy(deep=True)
    poisoned["latents_true"][valid] = 0.0  # changing validation truth must not change the choice
    for timing, n_time in (("frame", 10), ("subframe", 30)):
        chosen = smoothed_events(ds, sigmas=(0.0, 0.01, 0.03), timing=timing)
        assert chosen.attrs["sigma"] in (0.0, 0.01, 0.03) and chosen.sizes["time"] == n_time
        assert smoothed_events(poisoned, sigmas=(0.0, 0.01, 0.03), timing=timing).attrs["sigma"] == chosen.attrs["sigma"]


def test_subframe_smoothing_keeps_each_event_at_its_read_time():
    """Width 0 interpolates each neuron linearly between its own reads: at a read bin it is that
    read (in events / s), between two reads their linear blend (reference: numpy.interp on one
    neuron), before the first read held constant. A Gaussian width averages over the reads in
    reach only. On events that are the true rates read at each neuron's scan phase, keeping that
    timing decodes the fast latent better than binning by frame."""
    from lfads_nb.radical import smoothed_events, truth_scores

    ds = calcium_2p(0, lorenz_hz=12, n_neurons=30, n_conditions=8, trials_per_condition=5, n_frames=10)
    frame_s = ds.attrs["frame_s"]
    linear = smoothed_events(ds, sigmas=(0.0,), timing="subframe")
    one = ds["events"].isel(trial=3, neuron=4).values
    read = np.flatnonzero(~np.isnan(one))
    expected = np.interp(np.arange(len(one)), read, one[read]) / frame_s
    np.testing.assert_allclose(linear.isel(trial=3, neuron=4).values, expected, rtol=1e-6)
    assert linear.attrs["units"] == "events / s" and np.isfinite(linear.values).all()
    smooth = smoothed_events(ds, sigmas=(0.02,), timing="subframe")
    assert smooth.attrs["sigma"] == 0.02 and np.isfinite(smooth.values).all()
    constant = ds.copy(deep=True)
    constant["events"] = constant["events"].where(constant["events"].isnull(), 0.6)
    np.testing.assert_allclose(smoothed_events(constant, sigmas=(0.02,), timing="subframe").values, 0.6 / frame_s,
                               rtol=1e-6)
    ideal = ds.copy(deep=True)
    ideal["events"] = ds["rates_true"].where(~ds["events"].isnull())
    frame_r2 = truth_scores(smoothed_events(ideal, sigmas=(0.0,), timing="frame"), ds)["latent_r2"]
    subframe_r2 = truth_scores(smoothed_events(ideal, sigmas=(0.0,), timing="subframe"), ds)["latent_r2"]
    assert subframe_r2 > frame_r2 + 0.02
    with pytest.raises(ConfigError, match="timing must be 'frame'"):
        smoothed_events(ds, timing="scan")
    with pytest.raises(DataError, match="no read in reach"):
        smoothed_events(ds, sigmas=(0.001,), timing="subframe")


def test_calcium_plots():
    """The sampling figure draws the frame boundaries and each neuron's read bins in every row (plotly
    drops shapes added to a subplot before its first trace), zoomed to a few frames; the score
    figure has one marker group per method and no line joining categories."""
    from lfads_nb import plots

    ds = calcium_2p(0, **SMALL)
    fig = plots.calcium_sampling(ds, trial=0)
    assert {t.name for t in fig.data} == {"fluorescence read", "deconvolved event", "true spike",
                                          "true rate (Hz, right axis)"}
    assert "Staggered" in fig.layout.title.text
    shapes = fig.layout.shapes
    rows = {shape.xref for shape in shapes}
    assert len(rows) == 3  # every row has its frame lines and read bands
    assert sum(shape.type == "line" for shape in shapes) == 3 * 6  # 5 frames: 6 boundaries per row
    assert sum(shape.type == "rect" for shape in shapes) == 3 * 5  # one read bin per frame per neuron
    assert fig.layout.xaxis.range[1] - fig.layout.xaxis.range[0] == pytest.approx(5 * 30)
    scores = xr.Dataset({"latent_r2": (("method", "lorenz_hz"), [[0.2, -0.1], [0.5, 0.3], [0.6, 0.5]])},
                        coords={"method": ["smoothing_frame", "lfads_frame", "radical"], "lorenz_hz": [10.0, 5.0]})
    fig = plots.method_scores(scores)
    assert [t.name for t in fig.data] == ["smoothing_frame", "lfads_frame", "radical"]
    assert list(fig.data[2].x) == ["5 Hz", "10 Hz"] and list(fig.data[2].y) == [0.5, 0.6]
    assert all(t.mode == "markers" for t in fig.data) and "latent R²" in fig.layout.yaxis.title.text
    # A recording of events alone (no truth, no fluorescence): its events and sampling pattern
    events_only = ds.drop_vars(["fluorescence", "spikes_true", "rates_true", "latents_true"])
    assert {t.name for t in plots.calcium_sampling(events_only, trial=0).data} == {"deconvolved event"}
    with pytest.raises(DataError, match="needs a sub-frame calcium Dataset"):
        plots.calcium_sampling(ds.drop_vars("scan_phase"), trial=0)


def test_smoothed_events_counts_no_smoothing_and_warns_at_an_edge_of_its_grid(monkeypatch):
    """The smoothing grid may start at 0, the frame-binned events in events/s: nothing lies below
    it, so choosing it does not warn. A positive narrowest or the widest width warns, as
    ``metrics.warn_at_grid_edge`` does for the other smoothing choosers (before, a 10-80 ms grid
    picked its 10 ms edge silently at every tutorial setting)."""
    import warnings

    from lfads_nb import radical
    from lfads_nb.radical import smoothed_events

    ds = calcium_2p(0, n_neurons=20, n_conditions=4, trials_per_condition=5, n_frames=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        none = smoothed_events(ds, sigmas=(0.0, 0.5))
    assert none.attrs["sigma"] == 0.0
    np.testing.assert_allclose(none.values, frame_binned(ds)["events"].values / ds.attrs["frame_s"])
    with pytest.warns(UserWarning, match="low end of the grid"):
        assert smoothed_events(ds, sigmas=(0.015, 0.03)).attrs["sigma"] == 0.015
    # a score that prefers smoother estimates: the widest width wins and is flagged
    monkeypatch.setattr(radical, "latent_r2", lambda est, *args, **kw: -float(est.diff("time").var()))
    with pytest.warns(UserWarning, match="high end of the grid"):
        assert smoothed_events(ds, sigmas=(0.0, 0.03, 0.06)).attrs["sigma"] == 0.06
    with pytest.raises(ConfigError, match="sigmas must be smoothing widths >= 0 s"):
        smoothed_events(ds, sigmas=(-0.01, 0.03))
