"""Training, checkpoints, resume and inference (lfads_nb.training)."""
from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

import lfads_nb
from lfads_nb.dashboard import Progress
from lfads_nb.checkpoint import load_checkpoint
from lfads_nb.data import sample_validation_mask
from lfads_nb.models import build_model, load_model
from lfads_nb.training import TrainConfig, infer, make_feed, train
from lfads_nb.training.loop import validation_metrics

TINY = dict(ic_enc_dim=8, ci_enc_dim=6, con_dim=6, co_dim=2, ic_dim=4, gen_dim=10, fac_dim=3)


def tiny_dataset(n_trials=24, n_time=15, n_neurons=7, seed=0, heldout=0):
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi, (n_trials, 1, 1))
    t = np.arange(n_time)[None, :, None]
    rates = 20 * (1.2 + np.sin(0.4 * t + phase + np.arange(n_neurons)[None, None, :]))  # Hz
    spikes = rng.poisson(rates * 0.01)
    labels = np.where(np.arange(n_trials) % 4 == 0, "valid", "train")
    ds = lfads_nb.make_dataset(spikes, 0.01, split_labels=labels, condition=np.arange(n_trials) % 3,
                               rates_true=rates)
    if heldout:
        ds = ds.assign_coords(heldout=("neuron", np.arange(n_neurons) >= n_neurons - heldout))
    return ds


class Quiet(Progress):
    """Collects what the loop reports, and can ask it to stop."""

    def __init__(self, stop_after_updates=None, raise_after_updates=None):
        self.rows, self.examples, self.finished = [], [], None
        self.stop_after, self.raise_after = stop_after_updates, raise_after_updates

    def start(self, max_epochs):
        pass

    def update(self, row, example):
        self.rows.append(row)
        self.examples.append(example)
        if self.raise_after is not None and len(self.rows) >= self.raise_after:
            raise KeyboardInterrupt  # a kill at the end of an epoch, after its checkpoint

    @property
    def stop_requested(self):
        return self.stop_after is not None and len(self.rows) >= self.stop_after

    def finish(self, history, message):
        self.finished = message


def run(ds, config, **kwargs):
    torch.manual_seed(123)
    model = build_model(ds, **TINY)
    return train(model, ds, config, progress=kwargs.pop("progress", Quiet()), **kwargs)


def config(**kw):
    # CD off (the TrainConfig default is 0.3) unless a test turns it on: these tests predate that default.
    base = dict(max_epochs=4, batch_size=8, kl_ramp_epochs=2, l2_ramp_epochs=2, seed=3, cd_rate=0.0)
    base.update(kw)
    return TrainConfig(**base)


def test_history_is_a_tidy_table_and_loss_falls():
    ds = tiny_dataset()
    result = run(ds, config(max_epochs=12, lr=1e-2))
    h = result.history
    assert isinstance(h, pd.DataFrame) and list(h["epoch"]) == list(range(12))
    for col in ("train_loss", "train_recon", "valid_recon", "kl_ic", "kl_co", "l2", "kl_ramp", "l2_ramp", "lr"):
        assert col in h and np.isfinite(h[col]).all(), col
    assert h["valid_recon"].iloc[-1] < h["valid_recon"].iloc[0]
    assert h["kl_ramp"].iloc[0] < 1 and h["kl_ramp"].iloc[-1] == 1
    assert result.best_epoch == int(h["valid_recon"].idxmin())
    # the truth's NLL on the validation trials, the curves' reference line, is the same every epoch
    valid = lfads_nb.split(ds, "valid")
    expected = lfads_nb.metrics.nll_per_entry(valid.rates_true, valid.spikes, 0.01)
    np.testing.assert_allclose(h["valid_truth_nll"], expected)


def test_same_seed_reproduces_and_resume_after_kill_equals_uninterrupted(tmp_path):
    ds = tiny_dataset()
    cfg = config(max_epochs=5, cd_rate=0.2)  # CD draws random masks: the RNG state must survive the restart
    full = run(ds, cfg, checkpoint_dir=tmp_path / "full")
    again = run(ds, cfg, checkpoint_dir=tmp_path / "again")
    pd.testing.assert_frame_equal(full.history.drop(columns="epoch_seconds"),
                                  again.history.drop(columns="epoch_seconds"))

    with pytest.raises(KeyboardInterrupt):
        run(ds, cfg, checkpoint_dir=tmp_path / "killed", progress=Quiet(raise_after_updates=2))
    assert load_checkpoint(tmp_path / "killed" / "last.pt")["run_state"]["epoch"] == 2
    resumed = run(ds, cfg, checkpoint_dir=tmp_path / "killed")
    pd.testing.assert_frame_equal(full.history.drop(columns="epoch_seconds"),
                                  resumed.history.drop(columns="epoch_seconds"))
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_checkpoints_load_with_weights_only_and_rebuild_the_best_model(tmp_path):
    ds = tiny_dataset()
    result = run(ds, config(), checkpoint_dir=tmp_path)
    raw = torch.load(tmp_path / "best.pt", weights_only=True)
    assert raw["run_state"]["best_epoch"] == result.best_epoch
    model = load_model(tmp_path / "best.pt")
    a = infer(model, ds)["rates"]
    b = infer(result.model, ds)["rates"]
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_corrupt_checkpoint_and_changed_settings_are_clear_errors(tmp_path):
    ds = tiny_dataset()
    run(ds, config(max_epochs=1), checkpoint_dir=tmp_path)
    with pytest.raises(lfads_nb.CheckpointError, match="resume=False"):
        run(ds, config(max_epochs=2, lr=1e-3), checkpoint_dir=tmp_path)
    (tmp_path / "last.pt").write_bytes((tmp_path / "last.pt").read_bytes()[:100])
    with pytest.raises(lfads_nb.CheckpointError, match="truncated"):
        run(ds, config(max_epochs=2), checkpoint_dir=tmp_path)
    with pytest.raises(lfads_nb.CheckpointError, match="No checkpoint"):
        load_model(tmp_path / "missing.pt")


def test_stop_request_ends_cleanly_with_best_weights(tmp_path):
    ds = tiny_dataset()
    result = run(ds, config(max_epochs=50), checkpoint_dir=tmp_path, progress=Quiet(stop_after_updates=3))
    assert result.stop_reason == "stop_button"
    assert len(result.history) == 3
    best = torch.load(tmp_path / "best.pt", weights_only=True)["model"]
    for name, value in result.model.state_dict().items():
        assert torch.equal(value, best[name]), name


def test_nan_loss_stops_with_advice_and_keeps_the_last_good_checkpoint(tmp_path):
    ds = tiny_dataset()
    model = build_model(ds, **TINY)
    progress = Quiet()

    class Poison(Quiet):
        def update(self, row, example):
            super().update(row, example)
            if len(self.rows) == 2:  # corrupt the weights after two good epochs
                with torch.no_grad():
                    next(model.parameters()).fill_(float("nan"))

    with pytest.raises(lfads_nb.TrainingDiverged, match="learning rate") as info:
        train(model, ds, config(max_epochs=6), checkpoint_dir=tmp_path, progress=Poison())
    result = info.value.result
    assert result.stop_reason == "diverged" and len(result.history) == 2
    assert all(torch.isfinite(p).all() for p in result.model.parameters())
    assert (tmp_path / "best.pt").exists()
    del progress


def test_early_stopping_after_ramps():
    ds = tiny_dataset()
    result = run(ds, config(max_epochs=200, lr=1e-2, early_stop_patience=2, kl_ramp_epochs=1, l2_ramp_epochs=1))
    assert result.stop_reason == "early_stopping"
    assert len(result.history) - 1 - result.best_epoch == 2


def test_early_stopping_min_delta_stops_on_a_flat_curve():
    # Validation losses that keep improving by 1e-4 an epoch: any new best restarts the patience
    # (min_delta 0), but improvements of at most min_delta over `patience` epochs end the run.
    from lfads_nb.training.loop import _end_of_epoch, _RunState

    def epochs_to_stop(min_delta):
        cfg = TrainConfig(early_stop_patience=5, early_stop_min_delta=min_delta, kl_ramp_epochs=0, l2_ramp_epochs=0)
        state = _RunState(cfg)
        for epoch in range(100):
            state.epoch = epoch
            new_best = _end_of_epoch(state, {"valid_recon": 1.0 - 1e-4 * epoch}, cfg)
            assert new_best and state.best_epoch == epoch  # the best checkpoint follows every new best
            if state.epochs_since_best >= cfg.early_stop_patience:
                return epoch
        return None

    assert epochs_to_stop(0.0) is None
    assert epochs_to_stop(1e-3) == 5  # epoch 0 restarted the patience; epochs 1-5 improved it by 5e-4 in all
    with pytest.raises(lfads_nb.ConfigError, match="early_stop_min_delta"):
        TrainConfig(early_stop_min_delta=-1e-3)


def test_infer_is_aligned_to_the_input_trials_and_units():
    ds = tiny_dataset(heldout=2)
    result = run(ds, config(max_epochs=2))
    assert result.model.config.encod_dim == 5 and result.model.config.n_neurons == 7
    shuffled = ds.isel(trial=np.random.default_rng(1).permutation(ds.sizes["trial"]))
    out = infer(result.model, shuffled)
    assert list(out["trial"].values) == list(shuffled["trial"].values)
    assert list(out["split"].values) == list(shuffled["split"].values)
    assert out["rates"].dims == ("trial", "time", "neuron") and out["rates"].attrs["units"] == "Hz"
    assert out["factors"].sizes["factor"] == TINY["fac_dim"]
    assert out["inputs"].sizes["inferred_input"] == TINY["co_dim"]
    assert out["ic_mean"].sizes["ic"] == TINY["ic_dim"]
    assert out["generator_states"].sizes["generator"] == TINY["gen_dim"]
    # Rates in Hz: the per-bin expectation of the observation model divided by bin_width.
    model = result.model
    x = torch.as_tensor(shuffled["spikes"].values[:2, :, :5], dtype=torch.float32)
    with torch.no_grad():
        expected = model.observation.mean(model(x, sample=False).obs_params) / 0.01
    np.testing.assert_allclose(out["rates"].values[:2], expected.numpy(), rtol=1e-5)
    sampled = infer(result.model, ds, n_samples=3, seed=1)
    assert not np.allclose(sampled["rates"], infer(result.model, ds)["rates"])
    xr.testing.assert_equal(sampled["rates"], infer(result.model, ds, n_samples=3, seed=1)["rates"])


def test_sample_validation_reports_held_out_nll_and_hides_entries():
    ds = tiny_dataset()
    result = run(ds, config(sv_fraction=0.2, select_by="valid_sv_nll"))
    assert "valid_sv_nll" in result.history and np.isfinite(result.history["valid_sv_nll"]).all()
    keep = sample_validation_mask(ds, 0.2, seed=0)
    assert abs(1 - keep.mean() - 0.2) < 0.03
    # Fixed per trial id: the same entries are held out whatever the trial order.
    np.testing.assert_array_equal(sample_validation_mask(ds.isel(trial=[3, 1]), 0.2, seed=0), keep[[3, 1]])


def test_coordinated_dropout_loss_counts_only_hidden_entries():
    ds = tiny_dataset()
    feed = make_feed(ds, config(cd_rate=0.3))
    torch.manual_seed(0)
    batch = feed.draw_training_batch({None: torch.arange(8)}, config(cd_rate=0.3))
    assert abs(batch.loss_mask.float().mean().item() - 0.3) < 0.05
    assert not (batch.loss_mask & batch.encoder_mask).any()  # counted entries are the hidden ones


def test_bad_inputs_are_clear_errors():
    ds = tiny_dataset()
    with pytest.raises(lfads_nb.ConfigError, match="cd_rate"):
        TrainConfig(cd_rate=1.0)
    with pytest.raises(lfads_nb.ConfigError, match="sv_fraction"):
        TrainConfig(select_by="valid_sv_nll")
    with pytest.raises(lfads_nb.DataError, match="no training trials"):
        run(ds.assign_coords(split=("trial", ["valid"] * ds.sizes["trial"])), config())
    with pytest.raises(lfads_nb.DataError, match="no validation trials"):
        run(ds.assign_coords(split=("trial", ["train"] * ds.sizes["trial"])), config())
    model = build_model(ds, **TINY)
    with pytest.raises(lfads_nb.DataError, match="build_model"):
        train(model, ds.isel(neuron=slice(0, 5)), config(), progress=Quiet())
    with pytest.raises(lfads_nb.ConfigError, match="read from the data"):
        build_model(ds, n_neurons=3)


def test_unusable_neurons_or_validation_trials_are_clear_errors():
    ds = tiny_dataset()
    with pytest.raises(lfads_nb.DataError, match="Every neuron is marked held out"):
        build_model(ds.assign_coords(heldout=("neuron", np.ones(7, bool))), **TINY)
    spikes = ds["spikes"].astype(float)
    is_train = ds["split"] == "train"
    never_seen = ds.assign(spikes=spikes.where(~(is_train & (ds["neuron"] == 4))))
    with pytest.raises(lfads_nb.DataError, match=r"Neurons \[4\] have no observed"):
        build_model(never_seen, **TINY)
    blind_validation = ds.assign(spikes=spikes.where(is_train))
    with pytest.raises(lfads_nb.DataError, match="Every entry of the validation trials is NaN"):
        run(blind_validation, config())


def test_inference_output_saves_and_loads_identically(tmp_path):
    ds = tiny_dataset()
    out = infer(run(ds, config(max_epochs=1)).model, ds)
    lfads_nb.save(out, tmp_path / "out.nc")
    xr.testing.assert_identical(lfads_nb.load(tmp_path / "out.nc"), out)


def test_build_model_starts_the_readout_at_the_train_trials_mean_rates():
    ds = tiny_dataset()
    spikes = ds["spikes"].values.astype(float)
    spikes[ds["split"].values == "valid"] += 5  # valid trials must not leak into the init
    ds["spikes"] = (ds["spikes"].dims, spikes.astype(ds["spikes"].dtype))
    model = build_model(ds, **TINY)
    train_mean = spikes[ds["split"].values == "train"].mean(axis=(0, 1))
    np.testing.assert_allclose(model.observation.readout.bias.detach().numpy(), np.log(train_mean), rtol=1e-6)


def test_controller_without_coordinated_dropout_warns():
    """A controller with cd_rate 0 can overfit by identity (tutorial 03): say so, name the fix."""
    ds = tiny_dataset()
    with pytest.warns(UserWarning, match=r"cd_rate=0.3"):
        run(ds, config(max_epochs=1, cd_rate=0.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run(ds, config(max_epochs=1, cd_rate=0.3))
        torch.manual_seed(0)
        train(build_model(ds, **dict(TINY, co_dim=0)), ds, config(max_epochs=1), progress=Quiet())


def test_device_is_checked_when_training_starts_not_in_the_config(monkeypatch):
    """A GPU config constructs on a CPU-only machine (a saved config, a Ray head); training refuses it."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    ds = tiny_dataset()
    for device, fix in [("cuda", "no CUDA GPU is available; use device='cpu'"),
                        ("cuda:1", "no CUDA GPU is available; use device='cpu'"),
                        ("mps", "no Apple MPS GPU is available; use device='cpu'"),
                        ("gpu", "not a device lfads_nb runs on; use 'cpu', 'cuda'"),
                        ("meta", "not a device lfads_nb runs on; use 'cpu', 'cuda'")]:
        cfg = config(max_epochs=1, device=device)
        with pytest.raises(lfads_nb.ConfigError, match=re.escape(fix)):
            run(ds, cfg)
    assert lfads_nb.training.check_device("cpu") == torch.device("cpu")


def test_default_config_trains_a_default_controller_without_warnings():
    """build_model's default has a controller; TrainConfig's default CD keeps it from overfitting by identity."""
    ds = tiny_dataset()
    torch.manual_seed(0)
    model = build_model(ds, **TINY)
    assert model.config.co_dim > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train(model, ds, TrainConfig(max_epochs=1), progress=Quiet())


def test_curriculum_counts_the_first_bins_as_the_paper_does():
    # Reference: the paper's formula (Sedler et al. 2023, paper_src/models.py): the first
    # min(points_per_group * (epoch // epochs_per_group + 1), T) bins, 5 every 150 epochs there.
    from lfads_nb.training.loop import curriculum_bins

    config = TrainConfig(curriculum_bins=5, curriculum_epochs=150)
    assert [curriculum_bins(config, e, 70) for e in (0, 149, 150, 299, 300, 1949, 1950, 5000)] == \
        [5, 5, 10, 10, 15, 65, 70, 70]
    assert curriculum_bins(TrainConfig(), 0, 70) == 70  # off by default: whole trials
    for bad in (dict(curriculum_bins=-1), dict(curriculum_bins=2.5), dict(curriculum_epochs=0)):
        with pytest.raises(lfads_nb.ConfigError, match="curriculum"):
            TrainConfig(**bad)


def test_first_bins_cuts_every_part_of_a_batch_to_the_same_bins():
    from lfads_nb.training.feed import first_bins
    from lfads_nb.transforms import coordinated_dropout, make_batch

    data = torch.rand(3, 8, 4)
    batch = coordinated_dropout(make_batch(data, torch.tensor([True, True, True, False]), torch.randn(3, 8, 2)),
                                0.3, torch.rand(3, 8, 4))
    cut = first_bins(batch, 5)
    for name in ("encoder_data", "target", "encoder_mask", "loss_mask", "heldout", "ext"):
        assert torch.equal(getattr(cut, name), getattr(batch, name)[:, :5]), name
    assert torch.equal(cut.heldin, batch.heldin)
    assert first_bins(batch, 8) is batch


def test_curriculum_trains_on_growing_prefixes_and_validates_whole_trials():
    # The steps of epoch e see only the first bins the curriculum counts (no part of the model
    # runs past them); validation scores whole trials; early stopping waits for whole trials.
    ds = tiny_dataset(n_time=6)
    model = build_model(ds, seed=0, **{**TINY, "co_dim": 0})
    seen = []
    loss = model.loss
    model.loss = lambda batch, weights, **kw: (seen.append(batch.target.shape[1]), loss(batch, weights, **kw))[1]
    config = TrainConfig(max_epochs=10, batch_size=8, cd_rate=0.0, kl_ramp_epochs=0, l2_ramp_epochs=0,
                         early_stop_patience=0, curriculum_bins=2, curriculum_epochs=1)
    result = train(model, ds, config, progress=Quiet())
    assert result.history["train_bins"].tolist() == [2, 4, 6]  # patience 0 stops as soon as trials are whole
    assert result.stop_reason == "early_stopping"
    assert seen == [2] * 3 + [4] * 3 + [6] * 3  # 18 training trials in batches of 8: 3 steps an epoch
    whole_trials = validation_metrics(result.model, make_feed(ds, config), 256)["valid_recon"]
    assert result.history["valid_recon"].iloc[result.best_epoch] == pytest.approx(whole_trials)


def test_lr_plateaus_count_only_epochs_on_whole_trials():
    # During a curriculum the whole-trial validation loss may not improve while the model learns
    # short trials; the learning rate must not decay for that.
    from lfads_nb.training.loop import _end_of_epoch, _RunState

    config = TrainConfig(lr=1.0, lr_decay=0.5, lr_patience=2)
    state = _RunState(config)
    state.best_smoothed = -1.0  # nothing will improve on it
    for whole_trials, lr in [(False, 1.0), (False, 1.0), (False, 1.0), (True, 1.0), (True, 0.5), (False, 0.5)]:
        _end_of_epoch(state, {"valid_recon": 1.0}, config, whole_trials)
        assert state.lr == lr
