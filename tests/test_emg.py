"""EMG: the synthetic generator against its closed forms, temporal shift exactly, Gamma LFADS and
AutoLFADS with temporal shift on EMG, LFADS HDF5 float EMG files, and bad input."""
import math
import warnings

import numpy as np
import pytest
import torch

import lfads_nb
from data_generators import emg
from lfads_nb import ConfigError, DataError, metrics, plots
from lfads_nb.models.observations import Gamma
from lfads_nb.training import TrainConfig, make_feed
from lfads_nb.data import make_sessions
from lfads_nb.training.feed import validation_batches
from lfads_nb.transforms import make_batch, rounded_normal_shifts, sample_validation, sbtt, temporal_shift

torch.set_num_threads(1)
TINY = dict(gen_dim=8, ic_enc_dim=6, ci_enc_dim=6, con_dim=6, co_dim=2, ic_dim=6, fac_dim=4)


# ----------------------------------------------------------------------------- generator

def test_generator_is_deterministic_and_valid():
    a, b = emg(3, n_trials=20, n_bins=40), emg(3, n_trials=20, n_bins=40)
    xr_equal = a.equals(b)
    assert xr_equal
    assert not a["emg"].equals(emg(4, n_trials=20, n_bins=40)["emg"])
    lfads_nb.validate(a, require_train=True)
    assert a.attrs["kind"] == "emg" and lfads_nb.kind_of(a).output == "emg_mean"
    assert a["emg"].dims == ("trial", "time", "neuron") and a["emg"].shape == (20, 40, 12)
    assert (a["emg"].values > 0).all()  # a Gamma needs positive data
    assert set(a["split"].values) == {"train", "valid"} and (a["split"].values == "valid").sum() == 4
    for name in ("emg_mean_true", "activation_true", "artifact_true", "latents_true", "behavior"):
        assert name in a and np.isfinite(a[name].values).all()


def test_generator_statistics_match_the_closed_forms():
    """Closed forms of the chain (module docstring): every channel's recorded 95th percentile is 1;
    E[emg - artifact] = emg_mean_true; the mean of |N(0, s^2)| over m samples has coefficient of
    variation sqrt(pi / 2 - 1) / sqrt(m) = 0.756 / sqrt(m); with a negligible noise floor
    emg_mean_true equals activation_true; artifacts cover about 1.2 % of entries at 1 event/s
    (0.5 events per 0.5-s trial x 0.6 of the channels x 4 bins / 100 bins = 1.2 %)."""
    for m in (1, 4):
        ds = emg(0, n_trials=300, samples_per_bin=m)
        x, truth, art = (ds[v].values.astype(float) for v in ("emg", "emg_mean_true", "artifact_true"))
        np.testing.assert_allclose(np.percentile(x, 95, axis=(0, 1)), 1.0, rtol=1e-5)
        clean = x - art
        assert clean.mean() / truth.mean() == pytest.approx(1.0, abs=0.01)
        cv = np.std(clean / truth) / np.mean(clean / truth)
        assert cv == pytest.approx(math.sqrt(math.pi / 2 - 1) / math.sqrt(m), rel=0.03)
    assert (art > 0).mean() == pytest.approx(0.012, rel=0.25)
    quiet = emg(0, n_trials=10, noise_floor=1e-9, artifact_rate=0)
    assert (quiet["artifact_true"].values == 0).all()
    np.testing.assert_allclose(quiet["emg_mean_true"], quiet["activation_true"], rtol=1e-5)


def test_generator_artifacts_are_shared_across_channels_and_kinematics_follow_the_latents():
    ds = emg(1, n_trials=200)
    art = ds["artifact_true"].values > 0
    channels_per_artifact_bin = art.sum(-1)[art.any(-1)]
    assert channels_per_artifact_bin.mean() == pytest.approx(0.6 * 12, rel=0.15)  # join probability 0.6
    lat = ds["latents_true"].values.reshape(-1, 3)
    beh = ds["behavior"].values.reshape(-1, 3)
    weights, *_ = np.linalg.lstsq(lat, beh, rcond=None)
    np.testing.assert_allclose(lat @ weights, beh, atol=1e-4)  # an exact linear map of the latents


def test_generator_option_errors():
    for bad in (dict(n_trials=1), dict(samples_per_bin=0), dict(bin_width=-1.0), dict(artifact_rate=-1.0),
                dict(train_fraction=1.0)):
        with pytest.raises(ConfigError):
            emg(0, **bad)


# ----------------------------------------------------------------------------- temporal shift

def _pulse_batch():
    data = torch.zeros(2, 10, 3)
    data[0, 4, 1] = 5.0
    return sbtt(make_batch(data, torch.ones(3, dtype=torch.bool)))


def test_known_shift_moves_a_known_pulse_and_leaves_no_edge_values():
    batch = _pulse_batch()
    enc = torch.tensor([[0, 2, 0], [0, 0, 0]])
    tgt = torch.tensor([[0, -3, 0], [1, 0, 0]])
    out = temporal_shift(batch, enc, tgt)
    # encoder: channel 1 of trial 0 delayed by 2 bins; target: advanced by 3; independent shifts
    assert out.encoder_data[0, :, 1].tolist() == [0, 0, 0, 0, 0, 0, 5, 0, 0, 0]
    assert out.target[0, :, 1].tolist() == [0, 5, 0, 0, 0, 0, 0, 0, 0, 0]
    # bins whose source lies outside the trial are not observed: hidden and out of the loss
    assert out.encoder_mask[0, :, 1].tolist() == [False] * 2 + [True] * 8
    assert out.loss_mask[0, :, 1].tolist() == [True] * 7 + [False] * 3
    assert out.loss_mask[1, :, 0].tolist() == [False] + [True] * 9
    # unshifted channels are untouched
    assert torch.equal(out.encoder_data[:, :, 2], batch.encoder_data[:, :, 2])
    assert out.encoder_mask[:, :, 2].all() and out.loss_mask[:, :, 2].all()
    same = temporal_shift(batch, torch.zeros_like(enc), torch.zeros_like(enc))
    for a, b in zip(same, batch):
        assert a is b or (torch.equal(torch.as_tensor(a), torch.as_tensor(b)))


def test_masks_move_with_their_values():
    """A sample-validation held-out entry stays hidden and out of the loss wherever it moves."""
    batch = _pulse_batch()
    keep = torch.ones(2, 10, 3, dtype=torch.bool)
    keep[0, 4, 1] = False  # the pulse is held out
    held = sample_validation(batch, keep, 0.1)
    out = temporal_shift(held, torch.tensor([[0, 2, 0], [0, 0, 0]]), torch.tensor([[0, -3, 0], [0, 0, 0]]))
    assert not out.encoder_mask[0, 6, 1] and not out.loss_mask[0, 1, 1] and out.heldout[0, 1, 1]
    assert out.heldout.sum() == 1


def test_rounded_normal_shifts_round_and_clamp_per_member():
    normals = torch.tensor([[0.2, 0.6, -1.4, 10.0]])
    assert rounded_normal_shifts(normals, 1.0, 6).tolist() == [[0, 1, -1, 6]]
    std = torch.tensor([0.0, 2.0]).view(2, 1)
    assert rounded_normal_shifts(normals.expand(2, 4), std, 3).tolist() == [[0, 0, 0, 0], [0, 1, -3, 3]]


def test_population_shifts_give_each_member_its_own_batch():
    batch = _pulse_batch()
    shifts = torch.randint(-2, 3, (4, 2, 2, 3))  # (encoder/target, P, B, N)
    out = temporal_shift(batch, shifts[0], shifts[1])
    assert out.encoder_data.shape == (2, 2, 10, 3)
    for p in range(2):
        one = temporal_shift(batch, shifts[0, p], shifts[1, p])
        for a, b in zip(out, one):
            if isinstance(b, torch.Tensor) and b.dim() == 3:
                assert torch.equal(a[p], b)


def test_shift_is_training_only_and_costs_no_random_numbers_when_off():
    ds = emg(0, n_trials=10, n_bins=30, n_channels=4)
    feed = make_feed(ds, TrainConfig())
    tensors = feed.sessions[None].tensors
    idx = torch.arange(4)
    torch.manual_seed(0)
    off = feed.draw_training_batch({None: idx}, TrainConfig(cd_rate=0.0))
    state = torch.get_rng_state()
    torch.manual_seed(0)
    feed.draw_training_batch({None: idx}, TrainConfig(cd_rate=0.0))
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(0)
    on = feed.draw_training_batch({None: idx}, TrainConfig(cd_rate=0.0, shift_std=3.0))
    assert torch.equal(off.target, tensors.data[idx]) and not torch.equal(on.target, off.target)
    assert not torch.equal(on.encoder_data, on.target)  # independent draws for encoder and target
    valid = next(validation_batches(tensors, idx, 0.0, 8))
    assert torch.equal(valid.target, tensors.data[idx]) and valid.loss_mask.all()


def test_shift_longer_than_the_trial_is_refused():
    ds = emg(0, n_trials=10, n_bins=6, n_channels=3)
    model = lfads_nb.build_model(ds, seed=0, **TINY, observation="gamma")
    with pytest.raises(ConfigError, match="shift_max=6 bins is not shorter than the trials"):
        lfads_nb.train(model, ds, TrainConfig(max_epochs=1, shift_std=2.0, shift_max=6), live=False)
    with pytest.raises(ConfigError, match="shift_std"):
        TrainConfig(shift_std=-1.0)
    with pytest.raises(ConfigError, match="shift_max"):
        TrainConfig(shift_max=2.5)
    with pytest.raises(ConfigError, match="encoder and target shifts"):
        temporal_shift(_pulse_batch(), torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 3, dtype=torch.long))


# ----------------------------------------------------------------------------- Gamma LFADS, AutoLFADS

def test_gamma_starts_at_each_channels_moments():
    """Method of moments, closed form: alpha = m^2 / v, beta = m / v, so the mean alpha / beta = m
    and the variance alpha / beta^2 = v."""
    gamma = Gamma(3, fac_dim=2)
    target = torch.distributions.Gamma(torch.tensor([2.0, 5.0, 0.5]), torch.tensor([4.0, 1.0, 2.0])).sample((400, 50))
    gamma.init_from_data(target)
    params = gamma(torch.zeros(1, 1, 2))
    alpha, beta = params[..., 0].exp().squeeze(), params[..., 1].exp().squeeze()
    torch.testing.assert_close(alpha / beta, target.mean((0, 1)), rtol=1e-4, atol=0)
    torch.testing.assert_close(alpha / beta**2, target.var((0, 1), unbiased=False), rtol=1e-3, atol=0)


def test_gamma_lfads_with_controller_and_shift_trains_and_infers_emg_mean(tmp_path):
    ds = emg(0, n_trials=30, n_bins=40, n_channels=5)
    model = lfads_nb.build_model(ds, seed=0, **TINY)
    assert model.config.observation == "gamma"
    config = TrainConfig(max_epochs=3, batch_size=8, cd_rate=0.0, shift_std=2.0, kl_ramp_epochs=2, l2_ramp_epochs=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # temporal shift counts as protection against copying: no warning
        result = lfads_nb.train(model, ds, config, checkpoint_dir=tmp_path, live=False)
    assert np.isfinite(result.history["valid_recon"]).all()
    out = lfads_nb.infer(result.model, ds)
    assert out["emg_mean"].shape == ds["emg"].shape and (out["emg_mean"].values > 0).all()
    assert out["emg_mean"].attrs["units"] == "a.u."
    reloaded = lfads_nb.load_model(tmp_path / "best.pt")
    np.testing.assert_array_equal(lfads_nb.infer(reloaded, ds)["emg_mean"], out["emg_mean"])


def test_autolfads_tunes_the_shift_std_per_member(tmp_path):
    ds = emg(0, n_trials=30, n_bins=30, n_channels=4)
    space = lfads_nb.EMG_SPACE
    assert "shift_std" in space and "cd_rate" not in space
    result = lfads_nb.pbt(
        ds, space=space, pbt_config=lfads_nb.PBTConfig(population=3, generation_epochs=1, burn_in_epochs=1,
                                                       max_generations=2),
        train_config=TrainConfig(batch_size=10, cd_rate=0.0, kl_ramp_epochs=1, l2_ramp_epochs=1),
        model_sizes=TINY, checkpoint_dir=tmp_path, live=False)
    shift = result.history["shift_std"].values
    assert shift.shape == (3, 3) and (shift > 0).all()
    assert len(np.unique(shift.round(6))) > 1  # explored, member by member
    assert "emg_mean" in lfads_nb.infer(result.model, ds)
    with pytest.raises(ConfigError, match="not shorter than the trials"):
        lfads_nb.pbt(emg(0, n_trials=10, n_bins=5, n_channels=3), space=space, model_sizes=TINY, live=False,
                         pbt_config=lfads_nb.PBTConfig(population=2))


# ----------------------------------------------------------------------------- files and bad input

def test_lfads_h5_round_trip_of_float_emg(tmp_path):
    ds = emg(2, n_trials=15, n_bins=20, n_channels=4)
    path = lfads_nb.export_lfads_h5(ds, tmp_path / "emg.h5")
    back = lfads_nb.load(path, kind="emg")
    assert back.attrs["kind"] == "emg" and back.attrs["bin_width"] == ds.attrs["bin_width"]
    order = np.argsort(back["trial"].values)
    np.testing.assert_array_equal(back["emg"].values[order], ds["emg"].values)
    np.testing.assert_allclose(back["emg_mean_true"].values[order], ds["emg_mean_true"].values, rtol=1e-6)
    assert (back["split"].values[order] == ds["split"].values).all()


def test_bad_emg_is_refused_with_the_fix():
    ds = emg(0, n_trials=6, n_bins=10, n_channels=3)
    negative = ds.copy(deep=True)
    negative["emg"][0, 0, 0] = -0.5
    with pytest.raises(DataError, match="rectified"):
        lfads_nb.validate(negative)
    silent = ds.copy(deep=True)
    silent["emg"][:, :, 1] = 0.0
    with pytest.raises(DataError, match="floor"):
        lfads_nb.validate(silent)
    gappy = ds.copy(deep=True)
    gappy["emg"][0, :3, 0] = np.nan  # NaN = not observed, as for spikes
    lfads_nb.validate(gappy)


# ----------------------------------------------------------------------------- EMG metrics and plots

def _da(values):
    import xarray as xr
    t, n = values.shape[1:]
    return xr.DataArray(values, dims=("trial", "time", "neuron"),
                        coords={"trial": np.arange(values.shape[0]), "time": (np.arange(t) + 0.5) * 0.01,
                                "neuron": np.arange(n)})


def test_activation_r2_and_leakage_closed_forms():
    rng = np.random.default_rng(0)
    truth = _da(rng.gamma(2.0, 0.5, (6, 30, 3)))
    artifact = _da(np.zeros((6, 30, 3)))
    artifact[0, 10, :2] = 4.0
    artifact[3, 20, 1] = 2.0
    assert metrics.activation_r2(truth, truth) == 1.0
    channel_means = truth.mean(["trial", "time"]).broadcast_like(truth).transpose(*truth.dims)
    assert metrics.activation_r2(channel_means, truth) == pytest.approx(0.0, abs=1e-12)
    noisy = truth + _da(rng.normal(0, 0.3, truth.shape))
    where = truth.copy(data=rng.random(truth.shape) > 0.3)
    want = np.mean([1 - ((noisy.values[..., c] - truth.values[..., c])[where.values[..., c]] ** 2).sum()
                    / ((truth.values[..., c][where.values[..., c]] - truth.values[..., c][where.values[..., c]].mean())
                       ** 2).sum() for c in range(3)])
    assert metrics.activation_r2(noisy, truth, where) == pytest.approx(want, rel=1e-12)
    for fraction in (0.0, 0.5, 1.0):
        assert metrics.artifact_leakage(truth + fraction * artifact, truth, artifact) == pytest.approx(fraction)
    free = metrics.artifact_free(artifact, 2)
    assert free.values[0, :, 0].tolist() == [True] * 8 + [False] * 5 + [True] * 17  # every channel alike
    assert free.values[0, :, 2].tolist() == free.values[0, :, 0].tolist() and free.values[1].all()
    with pytest.raises(DataError, match="No truth for the activation R\\^2"):
        metrics.activation_r2(truth, None)
    with pytest.raises(DataError, match="artifact_true"):
        metrics.artifact_leakage(truth, truth, None)


def test_low_pass_width_chosen_without_truth_ranks_like_the_truth():
    """Leave-one-bin-out error = noise variance + the smoother's error against the truth (noise
    independent across bins), so its best width is the truth's best (within one grid step)."""
    ds = emg(0, n_trials=150, artifact_rate=0)
    bw = ds.attrs["bin_width"]
    sigmas = bw * np.array([0.75, 1, 1.5, 2, 3, 4, 6, 8, 12])
    chosen, scores = metrics.choose_emg_smoothing(ds["emg"], bw, sigmas)
    by_truth = [metrics.activation_r2(metrics.smooth_emg(ds["emg"], bw, s), ds["emg_mean_true"]) for s in sigmas]
    assert abs(list(sigmas).index(chosen) - int(np.argmax(by_truth))) <= 1
    assert scores.dims == ("sigma",)
    with pytest.warns(UserWarning, match="low end of the grid|high end of the grid"):
        metrics.choose_emg_smoothing(ds["emg"], bw, sigmas[:2])
    with pytest.raises(ConfigError, match="half a bin"):
        metrics.choose_emg_smoothing(ds["emg"], bw, [bw / 4, bw])


def test_emg_scores_table_and_nan_without_truth():
    ds = emg(0, n_trials=40, n_bins=50, n_channels=4)
    estimates = {"truth": ds["emg_mean_true"], "recorded": ds["emg"],
                 "truth_and_artifacts": ds["emg_mean_true"] + ds["artifact_true"]}
    scores = metrics.emg_scores(ds, estimates)
    assert list(scores["method"].values) == ["truth", "recorded", "truth_and_artifacts"]
    assert set(scores.data_vars) == {"activation_r2", "activation_r2_clean", "artifact_leakage", "kinematics_r2"}
    assert scores["activation_r2"].sel({"method": "truth"}) == 1.0
    assert scores["artifact_leakage"].sel({"method": "truth_and_artifacts"}) == pytest.approx(1.0, abs=1e-5)
    assert scores["artifact_leakage"].sel({"method": "truth"}) == 0.0
    bare = ds.drop_vars(["emg_mean_true", "artifact_true", "behavior"])
    with pytest.warns(UserWarning, match="NaN"):
        empty = metrics.emg_scores(bare, {"recorded": ds["emg"]})
    assert all(np.isnan(empty[v]).all() for v in empty.data_vars)


def test_emg_estimates_figure():
    ds = emg(0, n_trials=10, n_bins=40, n_channels=4)
    trial = int(ds["trial"].values[np.argmax(ds["artifact_true"].max(["time", "neuron"]).values)])
    fig = plots.emg_estimates(ds, {"lowpass": metrics.smooth_emg(ds["emg"], 0.005, 0.01)}, trial, [0, 1],
                              time_range=(0.0, 0.1))
    names = {t.name for t in fig.data}
    assert {"recorded EMG", "true activation", "lowpass"} <= names
    assert all(max(t.x) <= 0.1 for t in fig.data)
    with pytest.raises(DataError):
        plots.emg_estimates(ds, {}, 999)


def test_save_scores_round_trip(tmp_path):
    import xarray as xr

    table = xr.Dataset({"activation_r2": ("method", [0.5, float("nan")])}, coords={"method": ["lowpass", "lfads"]})
    path = lfads_nb.save_scores(table, tmp_path / "scores.nc")
    back = xr.load_dataset(path)
    assert list(back["method"].values) == ["lowpass", "lfads"] and np.isnan(back["activation_r2"].values[1])
    with pytest.raises(DataError, match="xarray.Dataset"):
        lfads_nb.save_scores(table["activation_r2"], tmp_path / "x.nc")


# ----------------------------------------------------------------------------- artifacts found without truth

def test_detector_finds_the_injected_artifacts_and_little_else():
    """Against the generator's own artifact truth: most of the injected amplitude is flagged,
    most flags are on artifacts, and data without artifacts are hardly flagged at all."""
    from lfads_nb.data.artifacts import detect_artifacts, mask_artifacts

    ds = emg(3, n_trials=60, n_bins=100, n_channels=12, artifact_rate=2.0)
    flags = detect_artifacts(ds["emg"]).values
    artifact = ds["artifact_true"].values
    assert artifact[flags].sum() / artifact.sum() > 0.8
    assert (artifact[flags] > 0).mean() > 0.8
    clean = emg(3, n_trials=60, n_bins=100, n_channels=12, artifact_rate=0)
    assert detect_artifacts(clean["emg"]).values.mean() < 0.005
    # in other units and with NaN (not observed) entries: the same flags, NaN never flagged
    scaled = ds["emg"] * 1e3
    scaled[0, :5, 0] = np.nan
    flags_scaled = detect_artifacts(scaled).values
    assert not flags_scaled[0, :5, 0].any()
    assert (flags_scaled[1:] == flags[1:]).all()
    masked = mask_artifacts(ds)
    assert np.isnan(masked["emg"].values[flags]).all() and not np.isnan(masked["emg"].values[~flags]).any()
    assert "emg_mean_true" in masked and masked["artifact_flag"].dtype == bool


def test_detector_bad_input():
    from lfads_nb.data.artifacts import detect_artifacts

    ds = emg(0, n_trials=4, n_bins=20, n_channels=3)
    with pytest.raises(DataError, match="rectified"):
        detect_artifacts(ds["emg"] - 1.0)
    with pytest.raises(DataError, match="dims"):
        detect_artifacts(ds["emg"].transpose("neuron", "time", "trial"))
    with pytest.raises(ConfigError, match="odd"):
        detect_artifacts(ds["emg"], window=4)
    with pytest.raises(ConfigError, match="min_channels"):
        detect_artifacts(ds["emg"], min_channels=5)


def test_artifact_free_fitness_prefers_the_model_that_ignores_artifacts():
    """Controlled case with the real Gamma NLL and the fitness's own mask (``near_artifacts``):
    two estimates of the same data, one the truth, one that reproduces every artifact exactly and,
    as an over-coupled controller does, carries each event on through the shared dynamics (a
    perturbation of every channel decaying over 5 bins, 10 % of the event's mean amplitude). The NLL
    over all entries prefers the artifact copier; the artifact-free fitness prefers the truth."""
    from lfads_nb.data.artifacts import ARTIFACT_TRIM, near_artifacts

    ds = emg(5, n_trials=80, n_bins=100, n_channels=12, samples_per_bin=4, artifact_rate=3.0)
    truth, artifact = (torch.as_tensor(ds[v].values, dtype=torch.float64) for v in ("emg_mean_true", "artifact_true"))
    event = artifact.mean(-1, keepdim=True)  # (trial, time, 1): the event's size, felt by every channel
    carried = sum(0.1 * math.exp(-k / 5) * torch.nn.functional.pad(event, (0, 0, k, 0))[:, :-k] for k in range(1, 30))
    copier = truth + artifact + carried
    data = torch.as_tensor(ds["emg"].values, dtype=torch.float64)
    shape = 4.0  # a Gamma's shape for 4 rectified samples per bin: CV 0.38 ~ 1 / sqrt(shape)

    def nll(mean):  # Gamma(shape, shape / mean) through the model's own NLL
        params = torch.stack([torch.full_like(mean, math.log(shape)), math.log(shape) - mean.log()], -1)
        return Gamma(12).nll(params, data)

    def fitness(mean):  # as artifacts.artifact_free_nll: unflagged entries, the largest ARTIFACT_TRIM left out
        values = nll(mean)[clean].sort().values
        return values[:math.ceil((1 - ARTIFACT_TRIM) * len(values))].mean()

    clean = ~torch.as_tensor(near_artifacts(ds).values)
    assert 0.5 < clean.double().mean() < 0.95
    assert nll(copier).mean() < nll(truth).mean()
    # skipping the flagged bins alone is not enough: the few artifacts the detector missed still pay
    assert nll(copier)[clean].mean() < nll(truth)[clean].mean()
    assert fitness(truth) < fitness(copier)


def test_pbt_fitness_that_skips_artifacts(tmp_path):
    """The artifact-free fitness is the validation NLL over the unflagged entries, computed in the
    population's one validation pass: each member's equals ``artifacts.artifact_free_nll`` of that
    model alone (of the visible entries for 'valid_recon', of the held-out ones for 'valid_sv_nll'),
    with no entry flagged and no trimming it is the model's ``valid_recon`` (the reference path),
    and in a run it is recorded and drives the fitness."""
    import dataclasses

    from lfads_nb.data.artifacts import artifact_free_nll, near_artifacts
    from lfads_nb.tune import pbt as pbt_module
    from lfads_nb.tune.population import Population
    from lfads_nb.training.loop import validation_metrics

    ds = emg(0, n_trials=30, n_bins=30, n_channels=4, artifact_rate=4.0)
    tc = TrainConfig(batch_size=10, cd_rate=0.0, kl_ramp_epochs=1, l2_ramp_epochs=1)
    members = [m.eval() for m in pbt_module.build_members(ds, tc, "lfads", TINY, [1, 2])]
    hps = pbt_module.initial_hparams(lfads_nb.EMG_SPACE, 2, 0)
    for metric, config in (("valid_recon", tc), ("valid_sv_nll", dataclasses.replace(tc, sv_fraction=0.2))):
        feed = make_feed(ds, config)
        valid = feed.sessions[None].valid_idx
        skip = feed.artifact_skip()
        np.testing.assert_array_equal(skip.numpy(), near_artifacts(ds).values[valid.numpy()])
        assert skip.any()
        got = Population(members, config, hps, noise_seed=0, artifact_free=metric).validate(feed)
        assert list(got) == ["valid_recon", *(["valid_sv_nll"] if config.sv_fraction else []),
                             f"{metric}_artifact_free"]
        none = torch.zeros_like(skip)
        for i, member in enumerate(members):
            with torch.no_grad():
                alone = artifact_free_nll(member.entry_nll, [b for _, b in feed.validation(256)], skip,
                                          heldout=metric == "valid_sv_nll")
                reference = artifact_free_nll(member.entry_nll, [b for _, b in feed.validation(256)], none, trim=0.0)
            assert float(got[f"{metric}_artifact_free"][i]) == pytest.approx(float(alone), rel=1e-5)
            assert np.isfinite(float(alone)) and float(alone) != pytest.approx(float(got[metric][i]), rel=1e-5)
            assert float(reference) == pytest.approx(float(validation_metrics(member, feed, 256)["valid_recon"]),
                                                     rel=1e-6)

    config = lfads_nb.PBTConfig(population=2, generation_epochs=1, burn_in_epochs=1, max_generations=1,
                                fitness_skips_artifacts=True)
    result = lfads_nb.pbt(ds, space=lfads_nb.EMG_SPACE, pbt_config=config, train_config=tc, model_sizes=TINY,
                              checkpoint_dir=tmp_path, live=False)
    history = result.history
    assert np.isfinite(history["valid_recon_artifact_free"]).all()
    assert not np.allclose(history["valid_recon_artifact_free"], history["valid_recon"])
    assert history["fitness"].attrs["description"].startswith("valid_recon_artifact_free")
    # the figures name the fitness that was used, and tick generations at whole numbers
    assert plots.fitness_label(history) == "artifact-free validation NLL (trimmed, smoothed)"
    assert plots.pbt_fitness(history).layout.yaxis.title.text.startswith("artifact-free validation NLL")
    for fig in (plots.pbt_fitness(history), plots.pbt_hyperparameters(history), plots.pbt_lineage(history)):
        assert fig.layout.xaxis.dtick == 1 and fig.layout.xaxis.tick0 == 0
    plain = history.copy()
    plain.attrs["pbt_config"] = plain.attrs["pbt_config"].replace('"fitness_skips_artifacts": true',
                                                                  '"fitness_skips_artifacts": false')
    assert plots.fitness_label(plain) == "validation NLL (smoothed)"


def test_gamma_lfads_trains_on_masked_emg_and_fills_the_flagged_entries(tmp_path):
    """Flagged entries are not observed: training and inference run through them and emg_mean
    is finite and positive there too, with the same trials and bins as the data."""
    from lfads_nb.data.artifacts import mask_artifacts

    ds = emg(2, n_trials=30, n_bins=40, n_channels=6, artifact_rate=5.0)
    masked = mask_artifacts(ds)
    flags = masked["artifact_flag"].values
    assert flags.any()
    config = TrainConfig(max_epochs=2, batch_size=10, cd_rate=0.0, shift_std=1.5, shift_max=3, kl_ramp_epochs=1,
                         l2_ramp_epochs=1)
    result = lfads_nb.train(lfads_nb.build_model(masked, config, seed=0, **TINY), masked, config,
                            checkpoint_dir=tmp_path, live=False)
    assert np.isfinite(result.history["valid_recon"]).all()
    mean = lfads_nb.infer(result.model, masked)["emg_mean"]
    assert mean.shape == ds["emg"].shape and np.isfinite(mean.values[flags]).all() and (mean.values > 0).all()


# ----------------------------------------------------------------------------- artifact-free NLL, shared

def test_near_artifacts_spreads_flags_over_whole_bins_and_prefers_the_stored_flags():
    from lfads_nb.data.artifacts import detect_artifacts, mask_artifacts, near_artifacts

    ds = emg(0, n_trials=4, n_bins=20, n_channels=3, artifact_rate=0)
    flags = ds["emg"].copy(data=np.zeros(ds["emg"].shape, bool))
    flags[1, 10, 2] = True
    near = near_artifacts(mask_artifacts(ds, flags), margin=2).values  # the stored artifact_flag
    for channel in range(3):  # the whole bin, every channel, 2 bins either side
        assert near[1, :, channel].tolist() == [False] * 8 + [True] * 5 + [False] * 7
    assert not near[[0, 2, 3]].any()
    noisy = emg(3, n_trials=20, n_bins=60, artifact_rate=3.0)  # no stored flags: detect_artifacts
    detected = detect_artifacts(noisy["emg"]).values.any(-1)
    assert detected.any()
    np.testing.assert_array_equal(near_artifacts(noisy, margin=0).values, np.repeat(detected[..., None], 12, -1))
    with pytest.raises(ConfigError, match="margin"):
        near_artifacts(ds, margin=-1)


def test_artifact_free_nll_is_a_trimmed_mean_over_the_counted_entries():
    """Against numpy, for one model (B, T, N) and a population (P, B, T, N): the entries that the
    loss counts and ``skip`` does not, each model's largest ``trim`` share left out, then the mean."""
    from lfads_nb.data.artifacts import artifact_free_nll

    rng = np.random.default_rng(0)
    V, T, N, P, B = 7, 6, 3, 2, 3
    nll = torch.as_tensor(rng.normal(size=(P, V, T, N)))
    data = torch.ones(V, T, N)
    data[2, 1:3, 0] = float("nan")  # not observed: out of the loss
    skip = torch.as_tensor(rng.random((V, T, N)) < 0.2)
    batches = [sbtt(make_batch(data[s:s + B], torch.ones(N, dtype=torch.bool))) for s in range(0, V, B)]
    counted = (~torch.isnan(data) & ~skip).numpy()

    def entry_nll(population: bool):
        starts = iter(range(0, V, B))
        return lambda batch: (lambda s: nll[:, s:s + batch.target.shape[0]] if population
                              else nll[0, s:s + batch.target.shape[0]])(next(starts))

    for trim in (0.0, 0.1):
        want = []
        for p in range(P):
            values = np.sort(nll[p].numpy()[counted])
            want.append(values[:math.ceil((1 - trim) * len(values))].mean())
        got = artifact_free_nll(entry_nll(True), batches, skip, trim=trim)
        assert got.shape == (P,)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)
        one = artifact_free_nll(entry_nll(False), batches, skip, trim=trim)
        assert one.shape == () and float(one) == pytest.approx(want[0], rel=1e-12)
    with pytest.raises(ConfigError, match="trim"):
        artifact_free_nll(entry_nll(False), batches, skip, trim=1.0)


def test_checkpoints_chosen_by_the_artifact_free_nll_the_number_pbt_computes(tmp_path):
    """``select_by='valid_recon_artifact_free'``: the history records the artifact-free NLL, the best
    epoch is its minimum, the kept model reproduces the recorded value, and a population holding
    that model twice gives each member the same value (PBT's fitness and the loop share one code)."""
    from lfads_nb.data.artifacts import artifact_free_nll, near_artifacts
    from lfads_nb.tune import pbt as pbt_module
    from lfads_nb.tune.population import Population

    ds = emg(2, n_trials=30, n_bins=40, n_channels=6, artifact_rate=5.0)
    config = TrainConfig(max_epochs=4, batch_size=10, cd_rate=0.0, shift_std=1.0, shift_max=2, kl_ramp_epochs=1,
                         l2_ramp_epochs=1, select_by="valid_recon_artifact_free", early_stop_patience=4)
    result = lfads_nb.train(lfads_nb.build_model(ds, config, seed=0, **TINY), ds, config, checkpoint_dir=tmp_path,
                            live=False)
    history = result.history
    assert np.isfinite(history["valid_recon_artifact_free"]).all()
    assert not np.allclose(history["valid_recon_artifact_free"], history["valid_recon"])
    assert result.best_epoch == int(np.argmin(history["valid_recon_artifact_free"].values))
    feed = make_feed(ds, config)
    tensors, valid = feed.sessions[None].tensors, feed.sessions[None].valid_idx
    skip = torch.as_tensor(near_artifacts(ds).values)[valid]
    with torch.no_grad():
        again = artifact_free_nll(result.model.entry_nll, validation_batches(tensors, valid, 0.0, 256), skip)
    assert float(again) == pytest.approx(history["valid_recon_artifact_free"].iloc[result.best_epoch], rel=1e-6)
    population = Population([result.model, result.model], config,
                            pbt_module.initial_hparams(lfads_nb.EMG_SPACE, 2, 0), noise_seed=0,
                            artifact_free="valid_recon")
    members = population.validate(feed)["valid_recon_artifact_free"]
    np.testing.assert_allclose(members.numpy(), float(again), rtol=1e-5)
    with pytest.raises(ConfigError, match="select_by"):
        TrainConfig(select_by="valid_artifacts")
    sessions = make_sessions({"a": ds, "b": ds})
    with pytest.raises(ConfigError, match="one recording"):  # refused before training starts
        lfads_nb.train(lfads_nb.build_model(sessions, config, seed=0, **TINY), sessions, config, live=False)
    with pytest.raises(ConfigError, match="one recording"):  # PBT's artifact-free fitness: the same refusal
        lfads_nb.pbt(sessions, pbt_config=lfads_nb.PBTConfig(population=2, fitness_skips_artifacts=True),
                     train_config=config, model_sizes=TINY, live=False)


def test_masked_low_pass_renormalises_around_nan_and_fills_long_gaps():
    """smooth_emg on EMG with a masked stretch longer than the kernel's reach: a constant stays
    constant everywhere, and a linear ramp is filled at the gap's centre by its own value (the
    observed bins either side weigh the same)."""
    values = np.ones((1, 30, 2))
    values[0, :, 1] = np.arange(30)
    values[0, 10:19] = np.nan  # bins 10..18 masked: centre 14, observed bins 9 and 19 at 5 bins
    out = metrics.smooth_emg(_da(values), 0.01, 0.01).values  # sigma 1 bin: reach 4 bins
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[0, :, 0], 1.0, rtol=1e-12)
    assert out[0, 14, 1] == pytest.approx(14.0, rel=1e-9)
    kernel = np.exp(-0.5 * np.arange(-4, 5) ** 2)  # bin 23: every bin in reach observed
    assert out[0, 23, 1] == pytest.approx((kernel * np.arange(19, 28)).sum() / kernel.sum(), rel=1e-9)
    near = np.arange(19, 25)  # bin 20: its reach 16..24 holds observed bins 19..24 only, renormalised
    weights = np.exp(-0.5 * (near - 20) ** 2)
    assert out[0, 20, 1] == pytest.approx((weights * near).sum() / weights.sum(), rel=1e-9)
